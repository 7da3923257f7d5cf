//! Reading kernel memory at offsets the daemon resolved from BTF.
//!
//! Offsets are `u64` globals; `ABSENT` marks a field this kernel lacks.
//! Globals are read with `read_volatile` so LLVM cannot fold in the
//! compile-time default (0) before the daemon's value is patched in.
use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel, generated as helpers};
use wstrace_common::{AF_INET, AF_INET6, MAX_PORTS, SockTuple, globals::ABSENT};

macro_rules! globals {
    ($($name:ident),* $(,)?) => {
        $(
            #[unsafe(no_mangle)]
            pub static $name: u64 = ABSENT;
        )*
    };
}

// Names must match wstrace_common::globals.
globals!(
    OFF_SKC_FAMILY,
    OFF_SKC_STATE,
    OFF_SKC_NUM,
    OFF_SKC_DPORT,
    OFF_SKC_RCV_SADDR,
    OFF_SKC_DADDR,
    OFF_SKC_V6_RCV_SADDR,
    OFF_SKC_V6_DADDR,
    OFF_SK_PROTOCOL,
    OFF_TCP_BYTES_RECEIVED,
    OFF_TCP_BYTES_ACKED,
    OFF_TCP_LSNDTIME,
    OFF_ICSK_LRCVTIME,
    OFF_INET_SPORT,
    TCP_RECVMSG_NARGS,
    OFF_TASK_FILES,
    OFF_TASK_FLAGS,
    OFF_TASK_GROUP_LEADER,
    OFF_TASK_START_TIME,
    OFF_TASK_STACK,
    OFF_FILES_FDT,
    OFF_FDT_MAX_FDS,
    OFF_FDT_FD,
    OFF_FILE_PRIVATE_DATA,
    OFF_SOCKET_SK,
    OFF_SOCKET_FILE,
    OFF_MSGHDR_ITER,
    OFF_ITER_TYPE,
    ITER_TYPE_MASK,
    ITER_UBUF_VALUE,
    ITER_IOVEC_VALUE,
    OFF_ITER_UBUF,
    OFF_ITER_IOV,
    TP_STATE_SKADDR,
    TP_STATE_OLDSTATE,
    TP_STATE_NEWSTATE,
    TP_STATE_SPORT,
    TP_STATE_PROTOCOL,
    TP_SEND_RESET_SKADDR,
    TP_RECV_RESET_SKADDR,
    TP_DESTROY_SKADDR,
);

// Ports default to 0 (= unused slot), not ABSENT.
#[unsafe(no_mangle)]
pub static PORT0: u64 = 0;
#[unsafe(no_mangle)]
pub static PORT1: u64 = 0;
#[unsafe(no_mangle)]
pub static PORT2: u64 = 0;
#[unsafe(no_mangle)]
pub static PORT3: u64 = 0;
#[unsafe(no_mangle)]
pub static PORT4: u64 = 0;
#[unsafe(no_mangle)]
pub static PORT5: u64 = 0;
#[unsafe(no_mangle)]
pub static PORT6: u64 = 0;
#[unsafe(no_mangle)]
pub static PORT7: u64 = 0;

const _: () = assert!(
    MAX_PORTS == 8,
    "PORTn globals and port_traced() list 8 slots"
);

#[inline(always)]
pub fn g(v: &'static u64) -> u64 {
    unsafe { core::ptr::read_volatile(v) }
}

/// The in-kernel port filter: the first thing every program checks, before
/// touching any map. Eight compares against patched constants.
#[inline(always)]
pub fn port_traced(port: u16) -> bool {
    let p = port as u64;
    p != 0
        && (p == g(&PORT0)
            || p == g(&PORT1)
            || p == g(&PORT2)
            || p == g(&PORT3)
            || p == g(&PORT4)
            || p == g(&PORT5)
            || p == g(&PORT6)
            || p == g(&PORT7))
}

/// `*(T *)(base + off)` in kernel memory; fails for a NULL base or an
/// absent field.
#[inline(always)]
pub fn read<T>(base: u64, off: &'static u64) -> Result<T, i64> {
    let off = g(off);
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
    match read::<u16>(sk, &OFF_SKC_NUM).unwrap_or(0) {
        0 => u16::from_be(read::<u16>(sk, &OFF_INET_SPORT).unwrap_or(0)),
        port => port,
    }
}

#[inline(always)]
pub fn sk_state(sk: u64) -> u8 {
    read::<u8>(sk, &OFF_SKC_STATE).unwrap_or(0)
}

/// True unless the kernel says the socket is not TCP (UDP sockets have local
/// ports too). Kernels where `sk_protocol` is a bitfield skip the check.
#[inline(always)]
pub fn sk_is_tcp(sk: u64) -> bool {
    if g(&OFF_SK_PROTOCOL) == ABSENT {
        return true;
    }
    read::<u16>(sk, &OFF_SK_PROTOCOL)
        .map(|p| p == 6)
        .unwrap_or(false)
}

/// Writes the socket's addresses into `*t` (ring-buffer memory, so every
/// byte is written: unreadable or absent fields become zeros).
#[inline(always)]
pub unsafe fn fill_tuple(t: *mut SockTuple, sk: u64) {
    let family = read::<u16>(sk, &OFF_SKC_FAMILY).unwrap_or(0);
    unsafe {
        (*t).family = family;
        (*t).lport = sk_local_port(sk);
        (*t).rport = u16::from_be(read::<u16>(sk, &OFF_SKC_DPORT).unwrap_or(0));
        (*t)._pad = 0;
        (*t).laddr = [0; 16];
        (*t).raddr = [0; 16];
        let (l, r, n) = if family == AF_INET {
            (&OFF_SKC_RCV_SADDR, &OFF_SKC_DADDR, 4)
        } else if family == AF_INET6 {
            (&OFF_SKC_V6_RCV_SADDR, &OFF_SKC_V6_DADDR, 16)
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
unsafe fn read_into(dst: *mut u8, len: u32, base: u64, off: &'static u64) {
    let off = g(off);
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
    read::<u32>(task, &OFF_TASK_FLAGS)
        .map(|f| f & PF_EXITING != 0)
        .unwrap_or(false)
}

/// Start time of the current process (its group leader), ns since boot; 0
/// if unknown.
#[inline(always)]
pub fn current_process_start_ns() -> u64 {
    let task = unsafe { bpf_get_current_task() };
    read::<u64>(task, &OFF_TASK_GROUP_LEADER)
        .and_then(|leader| read::<u64>(leader, &OFF_TASK_START_TIME))
        .unwrap_or(0)
}

/// The `struct sock *` behind file descriptor `fd` of the current task:
/// task->files->fdt->fd[fd]->private_data (a `struct socket *`)->sk.
/// A non-socket file's private_data is something else entirely, so the walk
/// only trusts it when `socket->file` points back at the same file.
#[inline(always)]
pub fn sock_of_fd(fd: u64) -> Option<u64> {
    let task = unsafe { bpf_get_current_task() };
    let files = read::<u64>(task, &OFF_TASK_FILES).ok()?;
    let fdt = read::<u64>(files, &OFF_FILES_FDT).ok()?;
    let max_fds = read::<u32>(fdt, &OFF_FDT_MAX_FDS).ok()? as u64;
    if fd >= max_fds {
        return None;
    }
    let fd_array = read::<u64>(fdt, &OFF_FDT_FD).ok()?;
    let file = unsafe { bpf_probe_read_kernel((fd_array + fd * 8) as *const u64) }.ok()?;
    let socket = read::<u64>(file, &OFF_FILE_PRIVATE_DATA).ok()?;
    let back = read::<u64>(socket, &OFF_SOCKET_FILE).ok()?;
    if back != file {
        return None;
    }
    let sk = read::<u64>(socket, &OFF_SOCKET_SK).ok()?;
    if sk == 0 { None } else { Some(sk) }
}

/// The user address of the first byte a `struct msghdr *` carries
/// (`msg->msg_iter`), for user-backed iterators (ITER_UBUF, ITER_IOVEC).
#[inline(always)]
pub fn msghdr_user_buf(msg: u64) -> Option<u64> {
    if msg == 0 || g(&OFF_MSGHDR_ITER) == ABSENT {
        return None;
    }
    let iter = msg + g(&OFF_MSGHDR_ITER);
    let kind = (read::<u8>(iter, &OFF_ITER_TYPE).ok()? as u64) & g(&ITER_TYPE_MASK);
    if kind == g(&ITER_UBUF_VALUE) {
        read::<u64>(iter, &OFF_ITER_UBUF).ok()
    } else if kind == g(&ITER_IOVEC_VALUE) {
        let iov = read::<u64>(iter, &OFF_ITER_IOV).ok()?;
        // iovec.iov_base is the first member (uapi, stable).
        unsafe { bpf_probe_read_kernel(iov as *const u64) }.ok()
    } else {
        None
    }
}
