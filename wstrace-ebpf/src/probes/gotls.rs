//! Uprobes on Go's `crypto/tls` (a Go program built with Go >= 1.17, the
//! register ABI), attached by the daemon per server process
//! (`attach::gotls`): the plaintext of `(*Conn).Write` and `(*Conn).Read`.
//!
//! - `(*Conn).Write` entry: the buffer is handed to the OpenSSL path's
//!   thread-local pending write (record.rs): Go writes the records on the
//!   same thread before `Write` returns (a socket that would block parks the
//!   goroutine; a 101 or a control frame fits the socket buffer).
//! - `(*Conn).Read` entry keeps the buffer per goroutine (tgid, `g`
//!   pointer); its "return" probes are uprobes on each RET instruction of
//!   the function (a uretprobe rewrites the return address on the goroutine
//!   stack, which Go moves when it grows: never used on Go). A read may park
//!   the goroutine and resume it on another thread, so the socket comes from
//!   the `tls.Conn` itself: `conn` (a `net.Conn` interface, data word) ->
//!   `*net.TCPConn` (checked by its itab) -> `*netFD` -> `poll.FD.Sysfd`,
//!   then the fd walk, at offsets the daemon gives per process
//!   (`GO_TLS_LAYOUTS`).
//!
//! Checked against Go 1.17 .. 1.22 `crypto/tls/conn.go` and the
//! ABIInternal spec (`cmd/compile/abi-internal.md`):
//! `func (c *Conn) Write(b []byte) (int, error)`,
//! `func (c *Conn) Read(b []byte) (int, error)`; amd64 arguments in AX, BX,
//! CX (receiver, slice pointer, slice length), the first result in AX, the
//! goroutine in R14; arm64 in X0, X1, X2, result X0, goroutine X28.
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{map, uprobe},
    maps::LruHashMap,
    programs::ProbeContext,
};

use wstrace_common::GoTlsLayout;

use crate::{
    kernel::{sk_port_traced, sock_of_fd},
    ptr::{KPtr, UPtr},
    record,
};

/// A goroutine inside `(*Conn).Read`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GoRead {
    /// The `*tls.Conn` receiver.
    pub conn: u64,
    pub buf: u64,
    pub cap: u64,
}

/// (tgid, `g` pointer): a goroutine of one process.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Goroutine {
    pub tgid: u64,
    pub g: u64,
}

/// Goroutine -> the `(*Conn).Read` it is in (entry to a RET). An idle
/// WebSocket's goroutine waits inside Read for its next frame, so there is
/// one entry per open connection: sized as `UPGRADED`. LRU so a missed
/// return (a panic unwinding through Read) cannot leak; past 65536 idle
/// connections the oldest lose their next control frame.
#[map]
static GO_TLS_READS: LruHashMap<Goroutine, GoRead> = LruHashMap::with_max_entries(65536, 0);

/// Process (tgid) -> the offsets of the walk from its `*tls.Conn` to the
/// fd, and the itab a `*net.TCPConn` in a `net.Conn` has there: the daemon
/// adds an entry before it attaches the process's uprobes (from the
/// binary's DWARF, or its table per Go version) and removes it when the
/// process exits. A process without one is not walked. LRU: a missed
/// removal ages out (pids are reused: the daemon overwrites the entry of a
/// process it attaches to).
#[map]
pub static GO_TLS_LAYOUTS: LruHashMap<u32, GoTlsLayout> =
    LruHashMap::with_max_entries(wstrace_common::GO_TLS_PROCESSES, 0);

/// The largest fd a `Sysfd` is believed to be (a garbage read above it is
/// not even walked).
const MAX_FD: u64 = 1 << 24;

#[inline(always)]
fn user_u64(addr: u64) -> Option<u64> {
    UPtr::new(addr).read::<u64>().ok()
}

/// The socket behind a `*tls.Conn`, if it is a traced-port TCP socket of
/// the current process. `conn` is a `net.Conn`: its data word is walked as
/// a `*net.TCPConn` only when its itab word says it is one (a `tls.Conn`
/// over a unix socket or a wrapping conn has another itab, and its data
/// word's fields are not a netFD's).
#[inline(always)]
fn conn_sock(conn: u64) -> Option<KPtr> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let l = unsafe { GO_TLS_LAYOUTS.get(&tgid) }?;
    let (iface, tcpconn_fd, netfd_sysfd, want_itab) =
        (l.conn, l.tcpconn_fd, l.netfd_sysfd, l.tcpconn_itab);
    let iface = conn.wrapping_add(iface);
    if want_itab != 0 && user_u64(iface)? != want_itab {
        return None;
    }
    let tcp = user_u64(iface.wrapping_add(8))?;
    let netfd = user_u64(tcp.wrapping_add(tcpconn_fd))?;
    let fd = user_u64(netfd.wrapping_add(netfd_sysfd))?;
    if fd >= MAX_FD {
        return None;
    }
    let sk = sock_of_fd(fd)?;
    sk_port_traced(sk).then_some(sk)
}

/// Go ABIInternal registers: receiver, slice pointer, slice length, and the
/// goroutine; at a RET the first result is where the receiver was.
#[cfg(bpf_target_arch = "x86_64")]
#[inline(always)]
fn regs(ctx: &ProbeContext) -> [u64; 4] {
    let r = unsafe { &*ctx.regs };
    [r.rax, r.rbx, r.rcx, r.r14]
}

#[cfg(bpf_target_arch = "aarch64")]
#[inline(always)]
fn regs(ctx: &ProbeContext) -> [u64; 4] {
    // `struct user_pt_regs { u64 regs[31]; ... }` heads the context.
    let r = ctx.regs as *const u64;
    unsafe { [*r, *r.add(1), *r.add(2), *r.add(28)] }
}

#[cfg(not(any(bpf_target_arch = "x86_64", bpf_target_arch = "aarch64")))]
#[inline(always)]
fn regs(_ctx: &ProbeContext) -> [u64; 4] {
    [0; 4]
}

/// `(*Conn).Write` entry.
#[uprobe]
pub fn gotls_write(ctx: ProbeContext) -> u32 {
    let [_, buf, len, _] = regs(&ctx);
    record::tls_write_entry(UPtr::new(buf), len, wstrace_common::FLAG_TLS_GO);
    0
}

/// `(*Conn).Read` entry (again after a stack growth: the same values).
#[uprobe]
pub fn gotls_read(ctx: ProbeContext) -> u32 {
    let [conn, buf, cap, g] = regs(&ctx);
    if buf == 0 || g == 0 {
        return 0;
    }
    let key = Goroutine {
        tgid: bpf_get_current_pid_tgid() >> 32,
        g,
    };
    let _ = GO_TLS_READS.insert(&key, &GoRead { conn, buf, cap }, 0);
    // The ciphertext reads this thread makes inside are not frames.
    record::tls_read_entry(UPtr::new(buf), cap, UPtr::NULL);
    0
}

/// A RET of `(*Conn).Read`: `n` plaintext bytes at the entry's buffer.
#[uprobe]
pub fn gotls_read_ret(ctx: ProbeContext) -> u32 {
    let [n, _, _, g] = regs(&ctx);
    let key = Goroutine {
        tgid: bpf_get_current_pid_tgid() >> 32,
        g,
    };
    let Some(r) = GO_TLS_READS.get_ptr(&key) else {
        return 0;
    };
    let GoRead { conn, buf, cap } = unsafe { *r };
    let _ = GO_TLS_READS.remove(&key);
    record::tls_read_abandon();
    let n = n as i64;
    if n <= 0 {
        return 0;
    }
    if let Some(sk) = conn_sock(conn) {
        record::tls_plaintext_read(
            sk,
            UPtr::new(buf),
            cap,
            n as u64,
            false,
            wstrace_common::FLAG_TLS_GO,
        );
    }
    0
}
