//! Reading kernel memory at offsets the daemon resolved from BTF.
//!
//! The daemon patches one [`KernelConfig`], `CONFIG`, into the object before
//! loading; `ABSENT` marks a field this kernel lacks. Fields are read with
//! [`config!`], a `read_volatile`, so LLVM cannot fold in the compile-time
//! default before the daemon's value is patched in.
use wstrace_common::{ABSENT, AF_INET, AF_INET6, KernelConfig, SockTuple, port_bit};

use crate::{
    maps::TRACED_PORTS,
    ptr::{Iovec, KPtr, UPtr},
};

/// Ports, sizes and this kernel's offsets; see [`KernelConfig`].
#[unsafe(no_mangle)]
pub static CONFIG: KernelConfig = KernelConfig::DEFAULT;

/// `config!(field)`: the daemon's value of `CONFIG.field`.
macro_rules! config {
    ($($field:tt)+) => {
        $crate::kernel::volatile(&$crate::kernel::CONFIG.$($field)+)
    };
}
pub(crate) use config;

/// A volatile read of a field of `CONFIG`: LLVM must load it at run time.
#[inline(always)]
pub fn volatile<T: Copy>(v: &'static T) -> T {
    unsafe { core::ptr::read_volatile(v) }
}

/// One port of `--port`? One bit of the port bitmap, an array lookup the
/// verifier inlines (a bounds check and a load, no call), for any number of
/// ports. Only asked with `--port` given: the rules below answer every
/// socket first when every port is traced.
#[inline(always)]
fn port_in_set(port: u16) -> bool {
    if port == 0 {
        return false;
    }
    let (word, mask) = port_bit(port);
    match TRACED_PORTS.get(word) {
        Some(bits) => *bits & mask != 0,
        None => false,
    }
}

// The `--port` rule, decided here once for every program that filters (the
// first thing each checks, before touching any map). `--port P` narrows what
// no `--port` follows to the connections to P, both of their ends on this
// host: the socket whose *local* port is P is the server's side (it reads
// the request and writes the 101: [`server_port_traced`]); one whose *remote*
// port is P is a client's side (a process on this host that connected to P:
// it writes the request and reads the 101: [`client_port_traced`]); what
// follows either once it is upgraded (frames, state changes, close, resets,
// destruction, TLS plaintext) takes either end ([`sk_port_traced`]). With no
// `--port` every socket is traced and each rule is one load of a patched
// constant: no port is read.

/// The server's side of a connection to a traced port: a 101 written here,
/// a connection accepted here, count.
#[inline(always)]
pub fn server_port_traced(sk: KPtr) -> bool {
    config!(all_ports) != 0 || port_in_set(sk_local_port(sk))
}

/// The client's side of a connection to a traced port: a request written
/// here, a 101 read here as the first response, count.
#[inline(always)]
pub fn client_port_traced(sk: KPtr) -> bool {
    config!(all_ports) != 0 || port_in_set(sk_remote_port(sk))
}

/// Either end of a connection to a traced port: what follows a socket
/// (its reads, frames, state changes, close, reset, destruction, TLS
/// plaintext) counts on both.
#[inline(always)]
pub fn sk_port_traced(sk: KPtr) -> bool {
    server_port_traced(sk) || client_port_traced(sk)
}

/// Local port of a socket (host order), 0 when unreadable.
///
/// `skc_num` first; once `tcp_set_state(TCP_CLOSE)` has unhashed the socket
/// it is 0 (inet_put_port), and the transition's tracepoint, the RST sent
/// after it and the socket's destruction all come later. `inet_sport` (network
/// order) keeps the port until the socket is freed.
#[inline(always)]
pub fn sk_local_port(sk: KPtr) -> u16 {
    match sk.field::<u16>(config!(skc_num)).unwrap_or(0) {
        0 => u16::from_be(sk.field::<u16>(config!(inet_sport)).unwrap_or(0)),
        port => port,
    }
}

/// Remote port of a socket (host order), 0 when unreadable.
#[inline(always)]
pub fn sk_remote_port(sk: KPtr) -> u16 {
    u16::from_be(sk.field::<u16>(config!(skc_dport)).unwrap_or(0))
}

/// The socket's hard error (`sk_err`), 0 when none or unreadable.
#[inline(always)]
pub fn sk_err(sk: KPtr) -> u32 {
    sk.field::<u32>(config!(sk_err)).unwrap_or(0)
}

#[inline(always)]
pub fn sk_state(sk: KPtr) -> u8 {
    sk.field::<u8>(config!(skc_state)).unwrap_or(0)
}

/// True unless the kernel says the socket is not TCP (UDP sockets have local
/// ports too). Kernels where `sk_protocol` is a bitfield skip the check.
#[inline(always)]
pub fn sk_is_tcp(sk: KPtr) -> bool {
    let off = config!(sk_protocol);
    if off == ABSENT {
        return true;
    }
    sk.field::<u16>(off).map(|p| p == 6).unwrap_or(false)
}

/// Writes the socket's addresses into `*t` (ring-buffer memory, so every
/// byte is written: unreadable or absent fields become zeros).
#[inline(always)]
pub unsafe fn fill_tuple(t: *mut SockTuple, sk: KPtr) {
    let family = sk.field::<u16>(config!(skc_family)).unwrap_or(0);
    unsafe {
        (*t).family = family;
        (*t).lport = sk_local_port(sk);
        (*t).rport = u16::from_be(sk.field::<u16>(config!(skc_dport)).unwrap_or(0));
        (*t)._pad = 0;
        (*t).laddr = [0; 16];
        (*t).raddr = [0; 16];
        let (l, r, n) = if family == AF_INET {
            (config!(skc_rcv_saddr), config!(skc_daddr), 4)
        } else if family == AF_INET6 {
            (config!(skc_v6_rcv_saddr), config!(skc_v6_daddr), 16)
        } else {
            return;
        };
        // Straight into the entry: no 16-byte temporaries on the BPF stack.
        // On failure the helper zeroes the address, which is what the
        // caller wants.
        sk.copy_field_to(l, (&raw mut (*t).laddr).cast(), n);
        sk.copy_field_to(r, (&raw mut (*t).raddr).cast(), n);
    }
}

/// PF_EXITING (include/linux/sched.h): the task is in do_exit.
const PF_EXITING: u32 = 0x4;

#[inline(always)]
pub fn current_task_exiting() -> bool {
    KPtr::current_task()
        .field::<u32>(config!(task_flags))
        .map(|f| f & PF_EXITING != 0)
        .unwrap_or(false)
}

/// The current task's `exit_code` (set by do_exit before it closes the
/// task's files), if this kernel's layout is known.
#[inline(always)]
pub fn current_exit_code() -> Option<u32> {
    KPtr::current_task()
        .field::<u32>(config!(task_exit_code))
        .ok()
}

/// Start time of the current process (its group leader), ns since boot; 0
/// if unknown.
#[inline(always)]
pub fn current_process_start_ns() -> u64 {
    KPtr::current_task()
        .field::<KPtr>(config!(task_group_leader))
        .and_then(|leader| leader.field::<u64>(config!(task_start_time)))
        .unwrap_or(0)
}

/// The `struct sock *` behind file descriptor `fd` of the current task:
/// task->files->fdt->fd[fd]->private_data (a `struct socket *`)->sk.
/// A non-socket file's private_data is something else entirely, so the walk
/// only trusts it when `socket->file` points back at the same file.
#[inline(always)]
pub fn sock_of_fd(fd: u64) -> Option<KPtr> {
    let files = KPtr::current_task()
        .field::<KPtr>(config!(task_files))
        .ok()?;
    let fdt = files.field::<KPtr>(config!(files_fdt)).ok()?;
    let max_fds = fdt.field::<u32>(config!(fdt_max_fds)).ok()? as u64;
    if fd >= max_fds {
        return None;
    }
    let fd_array = fdt.field::<KPtr>(config!(fdt_fd)).ok()?;
    let file = fd_array.add(fd * 8).read::<KPtr>().ok()?;
    let socket = file.field::<KPtr>(config!(file_private_data)).ok()?;
    let back = socket.field::<KPtr>(config!(socket_file)).ok()?;
    if back != file {
        return None;
    }
    let sk = socket.field::<KPtr>(config!(socket_sk)).ok()?;
    if sk.is_null() { None } else { Some(sk) }
}

/// The user address of the first byte a `struct msghdr *` carries
/// (`msg->msg_iter`), for user-backed iterators (ITER_UBUF, ITER_IOVEC), and
/// how many bytes are contiguous there: the first iovec's length (a copy
/// past it would read whatever memory follows), or unbounded for ITER_UBUF
/// (the caller's length bounds it).
#[inline(always)]
pub fn msghdr_user_buf(msg: KPtr) -> Option<(UPtr, u64)> {
    let msg_iter = config!(msghdr_iter);
    if msg.is_null() || msg_iter == ABSENT {
        return None;
    }
    let iter = msg.add(msg_iter);
    let kind = (iter.field::<u8>(config!(iter_type)).ok()? as u64) & config!(iter_type_mask);
    if kind == config!(iter_ubuf_value) {
        Some((iter.field::<UPtr>(config!(iter_ubuf)).ok()?, u64::MAX))
    } else if kind == config!(iter_iovec_value) {
        // The kernel's copy of the caller's iovecs (import_iovec).
        let iov = iter.field::<KPtr>(config!(iter_iov)).ok()?;
        let v = iov.read::<Iovec>().ok()?;
        Some((v.base, v.len))
    } else {
        None
    }
}

/// The second iovec of a `struct msghdr *` whose first one the caller found
/// shorter than the write (so a second exists): base and length. Read only
/// when a control frame runs past the first (a writev of a frame header and
/// its payload).
#[inline(always)]
pub fn msghdr_second_iovec(msg: KPtr) -> Option<(UPtr, u64)> {
    let msg_iter = config!(msghdr_iter);
    if msg.is_null() || msg_iter == ABSENT {
        return None;
    }
    let iter = msg.add(msg_iter);
    let kind = (iter.field::<u8>(config!(iter_type)).ok()? as u64) & config!(iter_type_mask);
    if kind != config!(iter_iovec_value) {
        return None;
    }
    let iov = iter.field::<KPtr>(config!(iter_iov)).ok()?;
    let v = iov.add(size_of::<Iovec>() as u64).read::<Iovec>().ok()?;
    Some((v.base, v.len))
}
