//! What the kernel event does not carry: which program a pid is, its
//! symbolized and unwound stacks, the process at the other end, idle time.
pub mod hz;
pub mod maps;
pub mod peer;
pub mod process;
pub mod symbolize;
pub mod unwind;
