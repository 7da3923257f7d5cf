//! Tracepoint-only set: sees the 101 at the write-family syscalls.
//!
//! Syscall tracepoint records are `struct trace_entry` (8 bytes), `int nr`,
//! padding, then the arguments as 8-byte slots: argument i is at 16 + 8*i on
//! every kernel. The fd -> sock walk (`kernel::sock_of_fd`) finds the socket.
//! Not covered here: io_uring, sendfile/splice and sendmmsg (documented).
use aya_ebpf::{
    helpers::bpf_probe_read_user, macros::tracepoint, programs::TracePointContext,
};
use wstrace_common::ProbeSet;

use crate::{
    kernel::{port_traced, sk_local_port, sock_of_fd},
    record,
};

#[inline(always)]
fn arg(ctx: &TracePointContext, i: usize) -> u64 {
    unsafe { ctx.read_at::<u64>(16 + 8 * i) }.unwrap_or(0)
}

/// Data check first (cheap, rules out nearly every write), then the fd walk,
/// then the port filter, and only then the map.
#[inline(always)]
fn on_write(fd: u64, buf: u64, len: u64) {
    if !record::user_buf_is_upgrade(buf, len) {
        return;
    }
    let Some(sk) = sock_of_fd(fd) else { return };
    if !port_traced(sk_local_port(sk)) {
        return;
    }
    record::mark_upgraded(sk, len, ProbeSet::Tracepoint);
}

/// First iovec of a user `struct iovec *` (uapi: iov_base, iov_len).
#[inline(always)]
fn first_iovec(iov: u64) -> (u64, u64) {
    if iov == 0 {
        return (0, 0);
    }
    let v = unsafe { bpf_probe_read_user(iov as *const [u64; 2]) }.unwrap_or([0, 0]);
    (v[0], v[1])
}

/// write(fd, buf, count)
#[tracepoint(category = "syscalls", name = "sys_enter_write")]
pub fn sys_enter_write(ctx: TracePointContext) -> u32 {
    on_write(arg(&ctx, 0), arg(&ctx, 1), arg(&ctx, 2));
    0
}

/// sendto(fd, buff, len, flags, addr, addr_len); send() is sendto() here.
#[tracepoint(category = "syscalls", name = "sys_enter_sendto")]
pub fn sys_enter_sendto(ctx: TracePointContext) -> u32 {
    on_write(arg(&ctx, 0), arg(&ctx, 1), arg(&ctx, 2));
    0
}

/// writev(fd, vec, vlen): the head of the first iovec.
#[tracepoint(category = "syscalls", name = "sys_enter_writev")]
pub fn sys_enter_writev(ctx: TracePointContext) -> u32 {
    if arg(&ctx, 2) > 0 {
        let (base, len) = first_iovec(arg(&ctx, 1));
        on_write(arg(&ctx, 0), base, len);
    }
    0
}

/// sendmsg(fd, msg, flags): user `struct msghdr` (uapi, x86_64: msg_iov at 16,
/// msg_iovlen at 24).
#[tracepoint(category = "syscalls", name = "sys_enter_sendmsg")]
pub fn sys_enter_sendmsg(ctx: TracePointContext) -> u32 {
    let msg = arg(&ctx, 1);
    if msg != 0 {
        let iov = unsafe { bpf_probe_read_user((msg + 16) as *const [u64; 2]) }.unwrap_or([0, 0]);
        if iov[1] > 0 {
            let (base, len) = first_iovec(iov[0]);
            on_write(arg(&ctx, 0), base, len);
        }
    }
    0
}
