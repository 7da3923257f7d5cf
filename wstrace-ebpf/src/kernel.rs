//! Reading kernel memory at offsets the daemon resolved from BTF.
//!
//! The daemon patches one [`KernelConfig`], `CONFIG`, into the object before
//! loading; `ABSENT` marks a field this kernel lacks. Fields are read with
//! [`config!`], a `read_volatile`, so LLVM cannot fold in the compile-time
//! default before the daemon's value is patched in.
use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel, generated as helpers};
use wstrace_common::{ABSENT, AF_INET, AF_INET6, KernelConfig, SockTuple, port_bit};

use crate::maps::TRACED_PORTS;

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

/// The in-kernel port filter: the first thing every program checks, before
/// touching any map. With no `--port` (all ports) one load of a patched
/// constant; else one bit of the port bitmap, an array lookup the verifier
/// inlines (a bounds check and a load, no call), for any number of ports.
#[inline(always)]
pub fn port_traced(port: u16) -> bool {
    if port == 0 {
        return false;
    }
    if config!(all_ports) != 0 {
        return true;
    }
    let (word, mask) = port_bit(port);
    match TRACED_PORTS.get(word) {
        Some(bits) => *bits & mask != 0,
        None => false,
    }
}

/// The `--port` rule, decided here once for every program that filters:
/// `--port P` follows both ends of a connection to P. A socket whose
/// *local* port is P is the server's side (it reads the request and
/// writes the 101: [`server_port_traced`]); one whose *remote* port is P is
/// a client's side (a process on this host that connected to P: it writes
/// the request and reads the 101: [`client_port_traced`]). Everything that
/// follows a socket once it is upgraded (its frames, state changes, close,
/// resets, destruction, TLS plaintext) takes either ([`sk_port_traced`]).
/// With every port traced (no `--port`), every socket with a local port.
#[inline(always)]
pub fn sk_port_traced(sk: u64) -> bool {
    server_port_traced(sk) || (config!(all_ports) == 0 && client_port_traced(sk))
}

/// The server's side of a connection to a traced port: a 101 written here
/// counts ([`sk_port_traced`]).
#[inline(always)]
pub fn server_port_traced(sk: u64) -> bool {
    port_traced(sk_local_port(sk))
}

/// The client's side of a connection to a traced port: a request written or
/// a 101 read here counts ([`sk_port_traced`]).
#[inline(always)]
pub fn client_port_traced(sk: u64) -> bool {
    port_traced(sk_remote_port(sk))
}

/// `*(T *)(base + off)` in kernel memory; fails for a NULL base or an
/// absent field.
#[inline(always)]
pub fn read<T>(base: u64, off: u64) -> Result<T, i64> {
    if base == 0 || off == ABSENT {
        return Err(-1);
    }
    unsafe { bpf_probe_read_kernel((base + off) as *const T).map_err(|e| e as i64) }
}

/// Local port of a socket (host order), 0 when unreadable.
///
/// `skc_num` first; once `tcp_set_state(TCP_CLOSE)` has unhashed the socket
/// it is 0 (inet_put_port), and the transition's tracepoint, the RST sent
/// after it and the socket's destruction all come later. `inet_sport` (network
/// order) keeps the port until the socket is freed.
#[inline(always)]
pub fn sk_local_port(sk: u64) -> u16 {
    match read::<u16>(sk, config!(skc_num)).unwrap_or(0) {
        0 => u16::from_be(read::<u16>(sk, config!(inet_sport)).unwrap_or(0)),
        port => port,
    }
}

/// Remote port of a socket (host order), 0 when unreadable.
#[inline(always)]
pub fn sk_remote_port(sk: u64) -> u16 {
    u16::from_be(read::<u16>(sk, config!(skc_dport)).unwrap_or(0))
}

/// The socket's hard error (`sk_err`), 0 when none or unreadable.
#[inline(always)]
pub fn sk_err(sk: u64) -> u32 {
    read::<u32>(sk, config!(sk_err)).unwrap_or(0)
}

#[inline(always)]
pub fn sk_state(sk: u64) -> u8 {
    read::<u8>(sk, config!(skc_state)).unwrap_or(0)
}

/// True unless the kernel says the socket is not TCP (UDP sockets have local
/// ports too). Kernels where `sk_protocol` is a bitfield skip the check.
#[inline(always)]
pub fn sk_is_tcp(sk: u64) -> bool {
    let off = config!(sk_protocol);
    if off == ABSENT {
        return true;
    }
    read::<u16>(sk, off).map(|p| p == 6).unwrap_or(false)
}

/// Writes the socket's addresses into `*t` (ring-buffer memory, so every
/// byte is written: unreadable or absent fields become zeros).
#[inline(always)]
pub unsafe fn fill_tuple(t: *mut SockTuple, sk: u64) {
    let family = read::<u16>(sk, config!(skc_family)).unwrap_or(0);
    unsafe {
        (*t).family = family;
        (*t).lport = sk_local_port(sk);
        (*t).rport = u16::from_be(read::<u16>(sk, config!(skc_dport)).unwrap_or(0));
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
        read_into((&raw mut (*t).laddr).cast(), n, sk, l);
        read_into((&raw mut (*t).raddr).cast(), n, sk, r);
    }
}

/// Copies `len` bytes of kernel memory at `base + off` to `dst`; leaves
/// `dst` as it was for a NULL base or an absent field.
#[inline(always)]
unsafe fn read_into(dst: *mut u8, len: u32, base: u64, off: u64) {
    if base == 0 || off == ABSENT {
        return;
    }
    // On failure the helper zeroes `dst`, which is what the caller wants.
    unsafe { helpers::bpf_probe_read_kernel(dst.cast(), len, (base + off) as *const _) };
}

/// PF_EXITING (include/linux/sched.h): the task is in do_exit.
const PF_EXITING: u32 = 0x4;

#[inline(always)]
pub fn current_task_exiting() -> bool {
    let task = unsafe { bpf_get_current_task() };
    read::<u32>(task, config!(task_flags))
        .map(|f| f & PF_EXITING != 0)
        .unwrap_or(false)
}

/// The current task's `exit_code` (set by do_exit before it closes the
/// task's files), if this kernel's layout is known.
#[inline(always)]
pub fn current_exit_code() -> Option<u32> {
    let task = unsafe { bpf_get_current_task() };
    read::<u32>(task, config!(task_exit_code)).ok()
}

/// Start time of the current process (its group leader), ns since boot; 0
/// if unknown.
#[inline(always)]
pub fn current_process_start_ns() -> u64 {
    let task = unsafe { bpf_get_current_task() };
    read::<u64>(task, config!(task_group_leader))
        .and_then(|leader| read::<u64>(leader, config!(task_start_time)))
        .unwrap_or(0)
}

/// The `struct sock *` behind file descriptor `fd` of the current task:
/// task->files->fdt->fd[fd]->private_data (a `struct socket *`)->sk.
/// A non-socket file's private_data is something else entirely, so the walk
/// only trusts it when `socket->file` points back at the same file.
#[inline(always)]
pub fn sock_of_fd(fd: u64) -> Option<u64> {
    let task = unsafe { bpf_get_current_task() };
    let files = read::<u64>(task, config!(task_files)).ok()?;
    let fdt = read::<u64>(files, config!(files_fdt)).ok()?;
    let max_fds = read::<u32>(fdt, config!(fdt_max_fds)).ok()? as u64;
    if fd >= max_fds {
        return None;
    }
    let fd_array = read::<u64>(fdt, config!(fdt_fd)).ok()?;
    let file = unsafe { bpf_probe_read_kernel((fd_array + fd * 8) as *const u64) }.ok()?;
    let socket = read::<u64>(file, config!(file_private_data)).ok()?;
    let back = read::<u64>(socket, config!(socket_file)).ok()?;
    if back != file {
        return None;
    }
    let sk = read::<u64>(socket, config!(socket_sk)).ok()?;
    if sk == 0 { None } else { Some(sk) }
}

/// The user address of the first byte a `struct msghdr *` carries
/// (`msg->msg_iter`), for user-backed iterators (ITER_UBUF, ITER_IOVEC), and
/// how many bytes are contiguous there: the first iovec's length (a copy
/// past it would read whatever memory follows), or unbounded for ITER_UBUF
/// (the caller's length bounds it).
#[inline(always)]
pub fn msghdr_user_buf(msg: u64) -> Option<(u64, u64)> {
    let msg_iter = config!(msghdr_iter);
    if msg == 0 || msg_iter == ABSENT {
        return None;
    }
    let iter = msg + msg_iter;
    let kind = (read::<u8>(iter, config!(iter_type)).ok()? as u64) & config!(iter_type_mask);
    if kind == config!(iter_ubuf_value) {
        Some((read::<u64>(iter, config!(iter_ubuf)).ok()?, u64::MAX))
    } else if kind == config!(iter_iovec_value) {
        let iov = read::<u64>(iter, config!(iter_iov)).ok()?;
        // struct iovec { iov_base; iov_len; } (uapi, stable).
        let v = unsafe { bpf_probe_read_kernel(iov as *const [u64; 2]) }.ok()?;
        Some((v[0], v[1]))
    } else {
        None
    }
}

/// The second iovec of a `struct msghdr *` whose first one the caller found
/// shorter than the write (so a second exists): base and length. Read only
/// when a control frame runs past the first (a writev of a frame header and
/// its payload).
#[inline(always)]
pub fn msghdr_second_iovec(msg: u64) -> Option<(u64, u64)> {
    let msg_iter = config!(msghdr_iter);
    if msg == 0 || msg_iter == ABSENT {
        return None;
    }
    let iter = msg + msg_iter;
    let kind = (read::<u8>(iter, config!(iter_type)).ok()? as u64) & config!(iter_type_mask);
    if kind != config!(iter_iovec_value) {
        return None;
    }
    let iov = read::<u64>(iter, config!(iter_iov)).ok()?;
    let v = unsafe { bpf_probe_read_kernel((iov + 16) as *const [u64; 2]) }.ok()?;
    Some((v[0], v[1]))
}
