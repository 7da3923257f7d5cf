pub mod common;
pub mod fentry;
pub mod floor;
pub mod gotls;
pub mod interp;
pub mod kprobe;
mod shared;
pub mod tls;
pub mod tracepoint;
