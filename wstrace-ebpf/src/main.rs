//! wstrace kernel programs.
//!
//! Three probe sets share one recording path (`record`): they differ only in
//! how they see the 101 being written and the process closing the socket.
//! - `probes::fentry`   : fentry on tcp_sendmsg / tcp_close (BTF trampolines)
//! - `probes::kprobe`   : kprobe on the same functions
//! - `probes::tracepoint`: syscall tracepoints + sock/tcp tracepoints only,
//!   for locked-down kernels with neither kprobes nor ftrace.
//! `probes::common` (sock/tcp tracepoints for state changes, resets and
//! socket destruction) is attached with every set.
//!
//! Kernel struct offsets, tracepoint field offsets and the traced ports are
//! one `KernelConfig` global (`kernel::CONFIG`) that the daemon fills in from
//! the running kernel's BTF and tracefs before loading, so one object runs on
//! 5.10 .. 6.18 without CO-RE.
#![no_std]
#![no_main]

mod debug;
mod interp;
mod kernel;
mod maps;
mod probes;
mod ptr;
mod record;
mod ustack;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
