//! Tracepoint-only set: sees the 101 at the write-family syscalls.
//!
//! Syscall tracepoint records are `struct trace_entry` (8 bytes), `int nr`,
//! padding, then the arguments as 8-byte slots: argument i is at 16 + 8*i on
//! every kernel. The fd -> sock walk (`kernel::sock_of_fd`) finds the socket.
//! Not covered here: io_uring, sendfile/splice and sendmmsg (documented).
use aya_ebpf::{
    EbpfContext, helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use wstrace_common::{ProbeSet, probe_log, server_slot};

use crate::{
    debug,
    kernel::{config, server_port_traced, sk_is_tcp, sk_port_traced, sock_of_fd},
    maps::{SERVER_SLOTS, SERVERS},
    ptr::{Iovec, KPtr, UPtr},
    record,
};

#[inline(always)]
fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

/// This process may read requests on a traced port from now on (the
/// daemon adds listeners the same way, attach::ServerSet).
#[inline(always)]
fn note_server() {
    let tgid = current_tgid();
    let _ = SERVERS.insert(tgid, 1, 0);
    if let Some(slot) = SERVER_SLOTS.get_ptr_mut(server_slot(tgid)) {
        // First come keeps the slot; a later server that falls on it is
        // found by the SERVERS lookup in `is_server`. Slots are never
        // emptied, so a server's slot is never 0.
        unsafe {
            if *slot == 0 {
                *slot = tgid;
            }
        }
    }
}

/// Argument `i` of a sys_enter record (or `ret` of a sys_exit one, i = 0),
/// loaded straight from the record: a tracepoint program may read its own
/// context at any aligned constant offset, so this is one load where
/// `read_at` is a helper call. On unrelated traffic these loads are most of
/// what a program does, so they must be the cheapest thing it can do.
#[inline(always)]
fn arg(ctx: &TracePointContext, i: usize) -> u64 {
    // SAFETY: the record of every syscall tracepoint has its argument slots
    // at 16 + 8*i (i < 6); `i` is a constant at every call site, so the load
    // is `*(u64 *)(ctx + 16 + 8i)` with the context pointer unmodified, as
    // the verifier requires of context accesses.
    unsafe { core::ptr::read((ctx.as_ptr() as *const u64).add(2 + i)) }
}

/// Only processes that serve a traced port (or wrote a request to one: the
/// client side) read bytes we care about: checked before anything else, so every other read on the machine stops
/// after one inlined array load (maps::SERVER_SLOTS).
#[inline(always)]
fn is_server() -> bool {
    let tgid = current_tgid();
    match SERVER_SLOTS.get(server_slot(tgid)) {
        Some(&t) if t == tgid => true,
        // No server ever fell on this slot.
        Some(&0) | None => false,
        // Another server holds the slot: ask the exact set.
        Some(_) => SERVERS.get_ptr(tgid).is_some(),
    }
}

/// Data check first (cheap, rules out nearly every write), then the fd walk,
/// and only then what the write means (`record::on_socket_write`: the port
/// filter by `kernel::sk_port_traced`'s rule, then the maps). `iov`, `vlen`:
/// a writev's iovecs, whose second is read only when a control frame runs
/// past the first.
#[inline(always)]
fn on_write(fd: u64, buf: UPtr, len: u64, iov: UPtr, vlen: u64) {
    let kind = record::classify_write(buf, len);
    let mut tls = None;
    if kind == record::Write::Other {
        if debug::on() {
            note_misplaced_101(fd, buf, len);
        }
        // TLS records carry nothing readable: a server's thread inside an
        // SSL_write of a 101 or a control frame says what they hold. Taken
        // here, by the thread's first write that looks like nothing,
        // whatever its fd: what the fd walk costs is paid only then.
        if config!(tls) != 0 && is_server() {
            tls = record::take_tls_write();
        }
        // A write that looks like nothing may still continue a control
        // frame cut by the last one: walked to its socket only while one
        // may be.
        if tls.is_none() && !record::resume_window_open() {
            return;
        }
    }
    let Some(sk) = sock_of_fd(fd) else { return };
    let written = record::on_socket_write(
        sk,
        kind,
        buf,
        len,
        len,
        // The `--port` rule (`kernel`): a 101 on the server's side only,
        // anything else on either side of a traced connection. Here, in
        // each set's closure, not in `on_socket_write`: an `||` of the two
        // in there made 5.10's verifier refuse fentry/kprobe tcp_sendmsg
        // ("invalid read from stack R10 off=-120").
        || {
            if kind == record::Write::Upgrade {
                server_port_traced(sk)
            } else {
                sk_port_traced(sk)
            }
        },
        || tls,
        || {
            if vlen > 1 {
                Some(first_iovec(iov.add(size_of::<Iovec>() as u64)))
            } else {
                None
            }
        },
        ProbeSet::Tracepoint,
    );
    match written {
        // A worker handed its sockets by another process (fd passing) is
        // known from its first 101 on.
        record::Written::Upgrade => note_server(),
        // A process that writes a request to a traced port may read a 101
        // back (the client side): its reads are walked too.
        record::Written::Request => note_server(),
        _ => {}
    }
}

/// `--debug-probes`, a write that is no 101 at its start: one that holds a
/// 101 further in, or cuts a status line before its code, is logged with
/// its socket (the fd walk is paid only then).
#[inline(always)]
fn note_misplaced_101(fd: u64, buf: UPtr, len: u64) {
    let at = debug::misplaced_101(buf, len);
    if at == u64::MAX {
        return;
    }
    let sk = sock_of_fd(fd).unwrap_or(KPtr::NULL);
    if at == 0 {
        debug::note(probe_log::IGNORED_SPLIT, sk, len);
    } else {
        debug::note(probe_log::IGNORED_NOT_AT_START, sk, at);
    }
}

/// Read-family entry in a process that serves a traced port (callers check
/// [`is_server`] first): the fd walk finds the socket and `read_entry`
/// filters by port before touching a map.
#[inline(always)]
fn on_read(fd: u64, buf: UPtr, cap: u64) {
    // The fd may be any socket: a UNIX or UDP one has no tcp_destroy_sock to
    // forget it by, and its would-be port (read at inet_sock's offsets) may
    // look traced, so its classification would sit in the maps for good.
    if let Some(sk) = sock_of_fd(fd)
        && sk_is_tcp(sk)
    {
        record::read_entry(sk, buf, cap);
    }
}

/// accept/accept4 exit: a connection accepted on a traced port makes its
/// process a server (one fd walk per accepted connection).
#[inline(always)]
fn on_accept_exit(ctx: &TracePointContext) {
    let ret = arg(ctx, 0) as i64;
    if ret < 0 {
        return;
    }
    if let Some(sk) = sock_of_fd(ret as u64)
        && server_port_traced(sk)
    {
        note_server();
    }
}

/// accept and accept4 exits (attached to both: wstrace_common::SYSCALL_TRACEPOINTS).
#[tracepoint(category = "syscalls", name = "sys_exit_accept")]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    on_accept_exit(&ctx);
    0
}

/// sys_exit_* records: `ret` follows `trace_entry` and `nr` at offset 16.
/// Only a server has reads pending (`on_read`), so the same gate spares
/// every other read on the machine the pending-read lookup.
#[inline(always)]
fn on_read_exit(ctx: &TracePointContext) {
    if is_server() {
        record::read_exit(arg(ctx, 0) as i64, ProbeSet::Tracepoint);
    }
}

/// read(fd, buf, count), and recvfrom(fd, ubuf, size, flags, addr,
/// addr_len) (recv() is recvfrom() here): the same three leading slots, so
/// one program on both tracepoints (wstrace_common::SYSCALL_TRACEPOINTS).
#[tracepoint(category = "syscalls", name = "sys_enter_read")]
pub fn sys_enter_read(ctx: TracePointContext) -> u32 {
    if is_server() {
        on_read(arg(&ctx, 0), UPtr::new(arg(&ctx, 1)), arg(&ctx, 2));
    }
    0
}

/// readv(fd, vec, vlen): the first iovec.
#[tracepoint(category = "syscalls", name = "sys_enter_readv")]
pub fn sys_enter_readv(ctx: TracePointContext) -> u32 {
    if arg(&ctx, 2) > 0 && is_server() {
        let (base, len) = first_iovec(UPtr::new(arg(&ctx, 1)));
        on_read(arg(&ctx, 0), base, len);
    }
    0
}

/// recvmsg(fd, msg, flags): the first iovec of the user msghdr.
#[tracepoint(category = "syscalls", name = "sys_enter_recvmsg")]
pub fn sys_enter_recvmsg(ctx: TracePointContext) -> u32 {
    let msg = UPtr::new(arg(&ctx, 1));
    if !msg.is_null() && is_server() {
        let iov = msg_iov(msg);
        if iov.len > 0 {
            let (base, len) = first_iovec(iov.iov);
            on_read(arg(&ctx, 0), base, len);
        }
    }
    0
}

/// `msg_iov` and `msg_iovlen` of a user `struct msghdr` (uapi; at 16 on
/// 64-bit: after `msg_name` and `msg_namelen`).
#[repr(C)]
#[derive(Clone, Copy)]
struct MsgIov {
    iov: UPtr,
    len: u64,
}

#[inline(always)]
fn msg_iov(msg: UPtr) -> MsgIov {
    msg.add(16).read::<MsgIov>().unwrap_or(MsgIov {
        iov: UPtr::NULL,
        len: 0,
    })
}

/// The exits of read, recvfrom, readv and recvmsg: only `ret` is read,
/// so one program on the four tracepoints (wstrace_common::SYSCALL_TRACEPOINTS).
#[tracepoint(category = "syscalls", name = "sys_exit_read")]
pub fn sys_exit_read(ctx: TracePointContext) -> u32 {
    on_read_exit(&ctx);
    0
}

/// First iovec of a user `struct iovec *`.
#[inline(always)]
fn first_iovec(iov: UPtr) -> (UPtr, u64) {
    if iov.is_null() {
        return (UPtr::NULL, 0);
    }
    let v = iov.read::<Iovec>().unwrap_or(Iovec::EMPTY);
    (v.base, v.len)
}

/// Syscall numbers of writev and sendmsg (each architecture's own table:
/// x86_64 `syscall_64.tbl`, arm64 the generic `unistd.h`).
#[cfg(bpf_target_arch = "x86_64")]
const NR_WRITEV: i32 = 20;
#[cfg(bpf_target_arch = "x86_64")]
const NR_SENDMSG: i32 = 46;
#[cfg(bpf_target_arch = "aarch64")]
const NR_WRITEV: i32 = 66;
#[cfg(bpf_target_arch = "aarch64")]
const NR_SENDMSG: i32 = 211;
#[cfg(not(any(bpf_target_arch = "x86_64", bpf_target_arch = "aarch64")))]
compile_error!("the write family's syscall numbers are known for x86_64 and aarch64 only");

/// The write family, one program on four tracepoints
/// (wstrace_common::SYSCALL_TRACEPOINTS): write(fd, buf, count) and
/// sendto(fd, buff, len, flags, addr, addr_len) (send() is sendto() here)
/// have the buffer in their second and third slots; writev(fd, vec, vlen)
/// has the head of its first iovec, sendmsg(fd, msg, flags) that of its
/// user `struct msghdr`'s first iovec (uapi, 64-bit: msg_iov at 16,
/// msg_iovlen at 24). Which one fired is the record's `__syscall_nr` (at
/// 8, after `struct trace_entry`, whose own fields a tracepoint program
/// may not load).
///
/// One program, not three: what follows the buffer's discovery (the 101,
/// request, control frame and TLS decision) is what the verifier spends its
/// time on, and it is verified once here (three programs took 43 s of the
/// set's 47 s to load on 5.10 under QEMU's emulation).
#[tracepoint(category = "syscalls", name = "sys_enter_write")]
pub fn sys_enter_write(ctx: TracePointContext) -> u32 {
    // SAFETY: `int __syscall_nr` at 8 in every sys_enter record; a
    // constant-offset context load.
    let nr = unsafe { core::ptr::read((ctx.as_ptr() as *const i32).add(2)) };
    // (iovecs, how many) for writev and sendmsg; None for write/sendto.
    let vec = if nr == NR_WRITEV {
        Some((UPtr::new(arg(&ctx, 1)), arg(&ctx, 2)))
    } else if nr == NR_SENDMSG {
        let msg = UPtr::new(arg(&ctx, 1));
        if msg.is_null() {
            return 0;
        }
        let m = msg_iov(msg);
        Some((m.iov, m.len))
    } else {
        None
    };
    // One call site: `on_write` is inlined, and a second would be a second
    // copy for the verifier to walk.
    let (buf, len, iov, vlen) = match vec {
        None => (UPtr::new(arg(&ctx, 1)), arg(&ctx, 2), UPtr::NULL, 0),
        Some((iov, vlen)) if vlen > 0 && !iov.is_null() => {
            let (base, len) = first_iovec(iov);
            (base, len, iov, vlen)
        }
        Some(_) => return 0,
    };
    on_write(arg(&ctx, 0), buf, len, iov, vlen);
    0
}
