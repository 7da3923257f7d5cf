pub mod common;
mod shared;
pub mod fentry;
pub mod kprobe;
pub mod tracepoint;
