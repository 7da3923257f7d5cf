//! The one place where the kernel programs and the daemon agree on bytes.
//!
//! Every event the eBPF side writes into the ring buffer starts with an
//! [`EventHeader`]; close events carry two stacks after it ([`CloseEvent`]).
//! User stack copies have a ring of their own ([`StackRecord`]).
//! Kernel struct offsets and tracepoint field offsets are not known at compile
//! time: the daemon resolves them from the running kernel (BTF, tracefs) and
//! passes them in, with the ports and sizes, as one [`KernelConfig`].
#![no_std]

/// Words of the in-kernel port bitmap (the `TRACED_PORTS` array map): one
/// bit per TCP port, so `--port` takes any number of ports and the kernel
/// still answers "is this port traced?" with one inlined array load.
pub const PORT_WORDS: u32 = 1024;

/// Where port `port`'s bit lives in the port bitmap: (word, mask). Kernel and
/// daemon both use it, so the rule lives here.
#[inline(always)]
pub fn port_bit(port: u16) -> (u32, u64) {
    ((port >> 6) as u32, 1u64 << (port & 63))
}

/// What the first four bytes a socket ever reads say about it: the kernel
/// classifies each socket once, on its first read, and remembers the class
/// (Pixie's per-connection state), so that a socket that is not HTTP costs
/// one map lookup per read from then on, never a copy of its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstRead {
    /// An HTTP request line (a method and a space): its head is captured.
    Request,
    /// `HTTP`: a response, so this is the client end of an HTTP connection.
    Response,
    /// Anything else: not HTTP/1.x (a database protocol, TLS is told apart
    /// before this, an HTTP/2 preface's `PRI ` included).
    Other,
}

/// The first four bytes of a line, as one little-endian integer.
const fn word(b: &[u8; 4]) -> u32 {
    u32::from_le_bytes(*b)
}

/// Classifies a socket's first read from its first four bytes, as one
/// little-endian integer: a handful of integer compares in the kernel.
/// Request methods are RFC 9110's (section 9) and PATCH (RFC 5789): only
/// `GET` can upgrade to a WebSocket (RFC 6455 section 4.1), but a
/// keep-alive connection's first request may be any of them.
#[inline(always)]
pub fn classify_first_read(w: u32) -> FirstRead {
    const GET: u32 = word(b"GET ");
    const POST: u32 = word(b"POST");
    const PUT: u32 = word(b"PUT ");
    const HEAD: u32 = word(b"HEAD");
    const DELETE: u32 = word(b"DELE");
    const OPTIONS: u32 = word(b"OPTI");
    const PATCH: u32 = word(b"PATC");
    const CONNECT: u32 = word(b"CONN");
    const TRACE: u32 = word(b"TRAC");
    // A PROXY protocol v1 line (HAProxy's `send-proxy`) comes before the
    // request on the same connection.
    const PROXY: u32 = word(b"PROX");
    const HTTP: u32 = word(b"HTTP");
    match w {
        GET | POST | PUT | HEAD | DELETE | OPTIONS | PATCH | CONNECT | TRACE | PROXY => {
            FirstRead::Request
        }
        HTTP => FirstRead::Response,
        _ => FirstRead::Other,
    }
}

/// Frames kept per stack (kernel and user each). 64 covers deep server stacks
/// while keeping a close event near 1 KiB.
pub const STACK_DEPTH: usize = 64;

/// Bytes copied per data event: a whole request head in one read (nginx
/// reads client headers 1 KiB at a time, browsers send 0.5-2 KiB), and any
/// WebSocket close frame (2-14 header bytes + up to 125). Equal to the
/// per-socket head budget, so one read never has to be cut below it.
pub const DATA_CAP: usize = 2048;

/// Bytes of request head captured per socket before its upgrade, at most
/// (the kernel stops copying reads on a socket past this).
pub const HEAD_BUDGET: u32 = 2048;

/// Bytes of the first write a socket must start with to count as upgraded:
/// `HTTP/1.1 101 ` (the space rules out `1010`).
pub const UPGRADE_PREFIX_LEN: usize = 13;

/// The tracepoint set's syscall programs and the `syscalls:` tracepoints
/// each is attached to. Syscalls whose records put what a program reads in
/// the same slots (read and recvfrom; every read-family exit, which reads
/// `ret` only; accept and accept4) share one program: the kernel verifies
/// each loaded program once, and under QEMU's software emulation
/// verification is most of the set's start-up. The write family shares one
/// too, though writev's and sendmsg's buffers are found differently: the
/// program tells them apart by the record's syscall number, because the decision that follows
/// (101, request, control frame, TLS) is what the verifier spends its time
/// on, and three programs had it verified three times (43 of the set's 47
/// s on 5.10 under TCG). One table for the
/// attach code (wstrace) and the kernel-cost benchmark, which measures per
/// program and so per group of these tracepoints.
pub const SYSCALL_TRACEPOINTS: [(&str, &[&str]); 6] = [
    (
        "sys_enter_write",
        &[
            "sys_enter_write",
            "sys_enter_sendto",
            "sys_enter_writev",
            "sys_enter_sendmsg",
        ],
    ),
    ("sys_enter_read", &["sys_enter_read", "sys_enter_recvfrom"]),
    ("sys_enter_readv", &["sys_enter_readv"]),
    ("sys_enter_recvmsg", &["sys_enter_recvmsg"]),
    (
        "sys_exit_read",
        &[
            "sys_exit_read",
            "sys_exit_recvfrom",
            "sys_exit_readv",
            "sys_exit_recvmsg",
        ],
    ),
    ("sys_exit_accept", &["sys_exit_accept", "sys_exit_accept4"]),
];

/// Slots of the kernel's direct-mapped server filter (the `SERVER_SLOTS`
/// map in front of `SERVERS`); a power of two.
pub const SERVER_SLOTS: u32 = 65536;

/// The slot of process `tgid` in the server filter. Kernel and daemon both
/// fill it, so the rule lives here.
#[inline(always)]
pub fn server_slot(tgid: u32) -> u32 {
    tgid & (SERVER_SLOTS - 1)
}

/// `sk_state` values (include/net/tcp_states.h), stable since Linux 2.x.
pub mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
}

/// True when `head` is the start of an HTTP/1.x 101 status line.
#[inline(always)]
pub fn is_upgrade_response(head: &[u8; UPGRADE_PREFIX_LEN]) -> bool {
    // Byte-by-byte so the eBPF build stays a handful of compares.
    head[0] == b'H'
        && head[1] == b'T'
        && head[2] == b'T'
        && head[3] == b'P'
        && head[4] == b'/'
        && head[5] == b'1'
        && head[6] == b'.'
        && (head[7] == b'1' || head[7] == b'0')
        && head[8] == b' '
        && head[9] == b'1'
        && head[10] == b'0'
        && head[11] == b'1'
        && head[12] == b' '
}

#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The local end wrote an HTTP 101 response: the socket is now traced.
    Upgrade = 1,
    /// A TCP state transition of a traced socket (no process context).
    State = 2,
    /// A local process closed (or, in the tracepoint set, moved to a closing
    /// state) a traced socket: carries pid/tid/comm and both stacks.
    Close = 3,
    /// The local end sent a RST on a traced socket.
    ResetSent = 4,
    /// A RST arrived from the peer on a traced socket.
    ResetReceived = 5,
    /// The kernel destroyed the socket: its state is gone.
    Destroy = 6,
    /// Bytes read before the upgrade (the request head), or, after it, a
    /// read or write that starts with (or continues) a WebSocket control
    /// frame: close, ping or pong. A [`DataEvent`].
    Data = 7,
    /// A process that wrote a 101 was sent a signal that ends a process by
    /// default, or chosen by the OOM killer: a [`SignalEvent`]. The header's
    /// pid/tid/comm are the sender's (the current task); `sk` is 0.
    Signal = 8,
    /// A thread of a process that wrote a 101 faulted (SIGSEGV, SIGBUS,
    /// SIGILL, SIGFPE) or aborted (SIGABRT it sent itself): a
    /// [`CloseEvent`] taken in that thread at the signal, whose stacks are
    /// where it crashed; `sk` is 0 and `arg` the signal.
    Crash = 9,
}

impl EventKind {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Upgrade,
            2 => Self::State,
            3 => Self::Close,
            4 => Self::ResetSent,
            5 => Self::ResetReceived,
            6 => Self::Destroy,
            7 => Self::Data,
            8 => Self::Signal,
            9 => Self::Crash,
            _ => return None,
        })
    }
}

/// Which family of kernel hooks produced an event.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeSet {
    Fentry = 1,
    Kprobe = 2,
    Tracepoint = 3,
}

impl ProbeSet {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Fentry,
            2 => Self::Kprobe,
            3 => Self::Tracepoint,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Fentry => "fentry",
            Self::Kprobe => "kprobe",
            Self::Tracepoint => "tracepoint",
        }
    }
}

/// The first bytes of a request write on the client side of a traced
/// connection: an HTTP upgrade is always a GET.
pub const REQUEST_PREFIX: [u8; 4] = *b"GET ";

/// Who wrote a request on the client side of a connection to a traced port
/// (a socket whose *remote* port is traced), recorded by the kernel in the
/// writer's own context and keyed by that socket's [`SockTuple`]: the daemon
/// joins it to the server's socket (the same tuple, ends swapped) when both
/// ends are on this host, however soon the client closes or exits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerWriter {
    pub pid: u32,
    pub tid: u32,
    /// Start time of the writer's process (ns since boot, 0 if unknown).
    pub process_start_ns: u64,
    pub comm: [u8; 16],
}

/// `EventHeader::flags`: the task was exiting (`PF_EXITING`), so the close
/// came from process exit and there is no user stack to walk.
pub const FLAG_TASK_EXITING: u32 = 1;

/// `EventHeader::flags` of an exiting task's close: `arg` holds the task's
/// `exit_code`, in wait(2) status form (signal in bits 0-6, 0x80 core
/// dumped, exit status in bits 8-15). `do_exit` sets it before it closes
/// the task's files.
pub const FLAG_EXIT_CODE: u32 = 2;

/// `EventHeader::flags` of a Data event after the upgrade: the kernel
/// copied this read or write because it continues a control frame that the
/// previous one in the same direction cut short (its bytes need not start
/// a frame).
pub const FLAG_CONTINUES: u32 = 4;

/// `EventHeader::flags` of an Upgrade or Data event: the bytes were the
/// plaintext of an OpenSSL-compatible `SSL_write`/`SSL_read` (a uprobe on
/// the server's TLS library), tied to the socket that thread wrote or read
/// next; the socket itself carried TLS records.
pub const FLAG_TLS_OPENSSL: u32 = 8;

/// `EventHeader::flags` of an Upgrade event: the local end *read* the 101
/// (the first bytes its socket ever read), so it is the client side of the
/// WebSocket (a process that opened it, or a proxy's upstream connection).
pub const FLAG_CLIENT_SIDE: u32 = 16;

/// `EventHeader::flags` of a Data event: the read that carried a client
/// side's 101 (right after its Upgrade event), copied whole: the response
/// head, and the first frames when the server sent them in the same segment
/// (a close right after the handshake).
pub const FLAG_UPGRADE_READ: u32 = 32;

/// Kernel functions that run the tracer's own program, not the code it
/// traces, as name prefixes: the BPF program itself (`bpf_prog_<tag>_<name>`),
/// fentry trampolines (`bpf_trampoline_<id>`), the tracepoint glue
/// (`__traceiter_*`, `__bpf_trace_*`, `bpf_trace_run<N>`, `perf_trace_*`),
/// the kprobe path (`trace_call_bpf`, `kprobe_perf_func`,
/// `kprobe_dispatcher`, `kprobe_ftrace_handler`, `aggr_pre_handler`, and
/// the ftrace and int3 machinery under it), and the stack helper itself.
/// The daemon drops them from the top of the kernel stacks the programs
/// take; the scenario tests check that none is left there.
pub const TRACER_FRAME_PREFIXES: &[&str] = &[
    "bpf_prog_",
    "bpf_trampoline_",
    "bpf_trace_run",
    "__bpf_trace_",
    "__traceiter_",
    "perf_trace_",
    "trace_call_bpf",
    "bpf_get_stack",
    "__bpf_get_stack",
    "bpf_get_task_stack",
    "kprobe_perf_func",
    "kprobe_dispatcher",
    "kprobe_ftrace_handler",
    "aggr_pre_handler",
    "opt_pre_handler",
    "optimized_callback",
    "kprobe_int3_handler",
    "exc_int3",
    "asm_exc_int3",
    "arch_ftrace_ops_list_func",
    "ftrace_ops_list_func",
    "ftrace_regs_caller",
    "ftrace_caller",
    "ftrace_call",
];

/// Is kernel function `name` the tracer's own (see [`TRACER_FRAME_PREFIXES`])?
pub fn is_tracer_function(name: &str) -> bool {
    TRACER_FRAME_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// `EventHeader::flags` of an Upgrade or Data event: as
/// [`FLAG_TLS_OPENSSL`], for Go's `crypto/tls` (`(*Conn).Write` and
/// `(*Conn).Read` uprobes).
pub const FLAG_TLS_GO: u32 = 64;

/// How the kernel walks one Go process's `*tls.Conn` to its fd
/// (wstrace-ebpf probes/gotls.rs, `GO_TLS_LAYOUTS`, keyed by tgid): the
/// daemon reads the offsets from the binary's DWARF, or from its table per
/// Go version (`enrich::gotls`). Byte offsets; the kernel reads nothing it
/// is not told the place of.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoTlsLayout {
    /// `crypto/tls.Conn.conn`: a `net.Conn` interface (itab word, then
    /// data word).
    pub conn: u64,
    /// From a `*net.TCPConn` to its `*netFD`: `TCPConn.conn` (the embedded
    /// `net.conn`) plus `net.conn.fd`.
    pub tcpconn_fd: u64,
    /// From a `*netFD` to the fd: `netFD.pfd` plus `poll.FD.Sysfd`.
    pub netfd_sysfd: u64,
    /// Where `go:itab.*net.TCPConn,net.Conn` is in this process (load bias
    /// applied): the itab word of a `net.Conn` holding a `*net.TCPConn`.
    /// 0 when the binary has no symbol table to say: the data word is then
    /// walked unchecked (and the fd it ends at must be a traced socket).
    pub tcpconn_itab: u64,
}

/// Go processes with `GO_TLS_LAYOUTS` entries at once (LRU beyond: more
/// than the processes given TLS uprobes, `attach::tls::MAX_PROCESSES`).
pub const GO_TLS_PROCESSES: u32 = 1024;

/// `SignalEvent::oom`: the OOM killer chose the target (`oom:mark_victim`).
pub const SIGNAL_OOM_VICTIM: u32 = 1;

/// A signal sent to, or an OOM kill of, a process that wrote a 101.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SignalEvent {
    pub header: EventHeader,
    /// The task the signal was sent to (its pid as the kernel numbers
    /// threads: the process id for a signal to the whole process).
    pub target_pid: u32,
    /// Signal number (SIGKILL for an OOM kill).
    pub signal: u32,
    /// `si_code`: SI_USER (0) from kill(2), SI_KERNEL (0x80) from the
    /// kernel, SI_TKILL (-6) from tgkill, > 0 for a fault.
    pub code: i32,
    /// [`SIGNAL_OOM_VICTIM`] or 0.
    pub oom: u32,
}

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Addresses as the kernel stores them (network order bytes); IPv4 uses the
/// first four bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockTuple {
    pub family: u16,
    /// Host order.
    pub lport: u16,
    /// Host order.
    pub rport: u16,
    pub _pad: u16,
    pub laddr: [u8; 16],
    pub raddr: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    /// [`EventKind`] as u8.
    pub kind: u8,
    /// [`ProbeSet`] as u8.
    pub probe: u8,
    /// For State/Close: the state before (Close in fentry/kprobe sets: the
    /// state at `tcp_close` entry).
    pub old_state: u8,
    /// For State/Close: the state after; 0 when not known (fentry/kprobe close).
    pub new_state: u8,
    /// Process (tgid) and thread of the current task. Meaningful only where
    /// the event says so: State events may fire in softirq context.
    pub pid: u32,
    pub tid: u32,
    pub flags: u32,
    /// Upgrade: length of the write that carried the 101. Data: length of
    /// the read or write, of which `DataEvent::len` bytes were copied.
    /// State to CLOSE and Destroy: the socket's `sk_err` (why the kernel
    /// closed it).
    /// Close with [`FLAG_EXIT_CODE`]: the task's exit code.
    pub arg: u32,
    /// Low 32 bits of jiffies when the event fired, and the socket's
    /// `tcp_sock.lsndtime` (last data sent) and `icsk_ack.lrcvtime` (last data
    /// received), also jiffies: the daemon derives idle time before a close
    /// without any per-message probe.
    pub jiffies: u32,
    pub last_send_jiffies: u32,
    pub last_recv_jiffies: u32,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// Kernel address of the `struct sock`: the socket's identity while it lives.
    pub sk: u64,
    /// `tcp_sock.bytes_received` / `bytes_acked` when the event fired.
    pub bytes_received: u64,
    pub bytes_acked: u64,
    /// Start time (ns since boot) of the current process (its thread-group
    /// leader): with `pid`, the process's identity, since pids are reused.
    /// 0 when unknown (the kernel's BTF lacks the fields).
    pub process_start_ns: u64,
    pub tuple: SockTuple,
    pub comm: [u8; 16],
}

/// `DataEvent::direction`
pub const DIR_RECEIVED: u32 = 0;
pub const DIR_SENT: u32 = 1;

/// Bytes of one read (before the upgrade) or of a read or write holding a
/// control frame (after it), in a record of `N` data bytes: the kernel
/// sends the smallest class that holds the bytes ([`SmallDataEvent`] or
/// [`DataEvent`]), and the daemon reads `len` bytes after the fixed part
/// whatever the record's class, bounded by the record's length.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DataEventOf<const N: usize> {
    pub header: EventHeader,
    /// Bytes valid in `data`.
    pub len: u32,
    /// [`DIR_RECEIVED`] or [`DIR_SENT`], as seen from the local end.
    pub direction: u32,
    pub data: [u8; N],
}

/// A data record with room for [`DATA_CAP`] bytes.
pub type DataEvent = DataEventOf<DATA_CAP>;

/// Bytes of the small data record class: a churn load's request head
/// (~200 bytes) and every close frame (at most 131 bytes) fit, so the
/// record that every upgrade carries takes 656 bytes of the ring instead
/// of 2,184: the ring holds three times as many connections' events, and
/// the daemon copies a third of the bytes.
pub const SMALL_DATA_CAP: usize = 512;

/// A data record with room for [`SMALL_DATA_CAP`] bytes.
pub type SmallDataEvent = DataEventOf<SMALL_DATA_CAP>;

/// Bytes before `data` in a data record of any class.
pub const DATA_EVENT_FIXED: usize = core::mem::size_of::<EventHeader>() + 8;

/// A close with the call path that caused it.
///
/// Always small (~1.2 KiB) and always sent on `EVENTS`: the user stack copy
/// for dwarf unwinding, when one is made, travels apart on the `STACKS`
/// ring as a [`StackRecord`] named by `stack_id`, so a burst of copies can
/// only cost stack detail, never the close itself.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CloseEvent {
    pub header: EventHeader,
    /// Bytes `bpf_get_stack` wrote, or a negative errno.
    pub kernel_stack_len: i64,
    pub user_stack_len: i64,
    pub kernel_stack: [u64; STACK_DEPTH],
    pub user_stack: [u64; STACK_DEPTH],
    /// [`stack_copy`] status: what became of this close's user stack copy.
    pub stack_copy: u32,
    /// With [`stack_copy::SAME_AS`] / [`stack_copy::ELIDED`]: copies this
    /// call site was refused in its last full second (or, in its first
    /// second, so far): the rate at which its stacks are elided.
    pub elided_rate: u32,
    /// The [`StackRecord::id`] this close's copy was sent as
    /// ([`stack_copy::COPIED`]) or, with [`stack_copy::SAME_AS`], the id of
    /// the last copy made for the same call site; 0 otherwise.
    pub stack_id: u64,
    /// The interpreter's own call stack of the closing thread, when its
    /// process is in `INTERP_PROCS` (Python): read at the close, named later.
    pub interp: InterpStack,
}

/// Interpreter frames the kernel copies per close: the innermost ones, the
/// ones that name the code that closed.
pub const INTERP_FRAMES: usize = 32;

/// `InterpStack::status`
pub mod interp {
    /// The process is not an interpreter the daemon registered: no walk.
    pub const NONE: u32 = 0;
    /// The chain ended (a null `previous`) within the budget.
    pub const OK: u32 = 1;
    /// [`super::INTERP_FRAMES`] frames copied and the chain went on.
    pub const TRUNCATED: u32 = 2;
    /// No thread state of the interpreter belongs to the closing thread
    /// (it never ran Python, or more threads than the walk looks at).
    pub const NO_THREAD: u32 = 3;
    /// A pointer of the chain could not be read (unmapped, paged out, or
    /// garbage): the walk stopped there, with the frames before it.
    pub const READ_FAILED: u32 = 4;
    /// The chain came back to a frame it had just left (a loop).
    pub const LOOP: u32 = 5;
}

/// One interpreter frame as the kernel saw it: the code object and the
/// interpreter's instruction pointer into it, both addresses in the
/// process; the daemon reads names and lines from them afterwards.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct InterpFrame {
    pub code: u64,
    pub instr: u64,
}

/// The interpreter frames of a close, innermost first.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct InterpStack {
    /// [`interp`] status.
    pub status: u32,
    /// Frames valid in `frames`.
    pub count: u32,
    /// Bit i: frame i is an entry frame (CPython 3.11 `is_entry`: the
    /// outermost Python frame of one `_PyEval_EvalFrameDefault` call), so
    /// the daemon knows which frames each native interpreter frame ran.
    pub entry_mask: u32,
    pub _pad: u32,
    pub frames: [InterpFrame; INTERP_FRAMES],
}

impl InterpStack {
    /// No walk (status NONE, no frames).
    pub const EMPTY: Self = Self {
        status: interp::NONE,
        count: 0,
        entry_mask: 0,
        _pad: 0,
        frames: [InterpFrame { code: 0, instr: 0 }; INTERP_FRAMES],
    };
}

/// How the kernel walks one process's interpreter stack (the daemon fills
/// it from the binary; `INTERP_PROCS`). All byte offsets; the kernel reads
/// nothing it is not told the place of.
///
/// Python: `*(runtime + interp_head)` is the main interpreter,
/// `*(interp + threads_head)` its first thread state; thread states chain
/// by `tstate_next` and name their thread by `tstate_tid` (a 32-bit tid at
/// that offset); `*(*(tstate + tstate_frame_ptr) + frame_ptr_current)` is
/// the innermost frame (3.11, 3.12: through `tstate->cframe`), or, when
/// `frame_ptr_current` is [`ABSENT`], `*(tstate + tstate_frame_ptr)` is
/// (3.13 `tstate->current_frame`, 3.10 `tstate->frame`). PHP (non-ZTS):
/// `threads_head` is [`ABSENT`] and `*(runtime + frame_ptr_current)` is the
/// innermost frame (`executor_globals.current_execute_data`). A frame's
/// fields are read as one window of `window_len` bytes (at most
/// [`INTERP_WINDOW_MAX`]) from `frame + frame_window`, in which `code`,
/// `previous` and `instr` are the (8-byte aligned) places of those words
/// and `entry` that of the entry byte: the frame is marked in the entry
/// mask when that byte equals `entry_value` (3.11 `is_entry` == 1; 3.12+
/// `owner` == `FRAME_OWNED_BY_CSTACK`, the shim frame each interpreter
/// loop call starts with).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InterpConfig {
    pub runtime: u64,
    pub interp_head: u64,
    pub threads_head: u64,
    pub tstate_next: u64,
    pub tstate_tid: u64,
    pub tstate_frame_ptr: u64,
    pub frame_ptr_current: u64,
    pub frame_window: u64,
    pub code: u64,
    pub previous: u64,
    pub instr: u64,
    /// [`ABSENT`] when the version has no entry mark.
    pub entry: u64,
    /// Value: the entry byte's value that marks a frame.
    pub entry_value: u64,
    /// Value: bytes of the window read (1..=[`INTERP_WINDOW_MAX`]); every
    /// place above lies within them.
    pub window_len: u64,
    /// [`ABSENT`] when thread states name their kernel thread (3.11+:
    /// `native_thread_id`, compared as a u64 with the tid). 3.10's name
    /// only their `pthread_t` (`thread_id`, at `tstate_tid`): then this is
    /// the offset in the runtime of `main_thread` (the main thread's
    /// `pthread_t`), and only the main thread (tid == pid) is walked, from
    /// the thread state whose `thread_id` equals it.
    pub main_thread: u64,
}

/// Bytes of a frame the kernel reads at most (its window map's size less
/// one: the length is masked with this, which the verifier can bound).
pub const INTERP_WINDOW_MAX: u64 = 127;

/// Thread states the kernel looks at to find the closing thread's.
pub const INTERP_THREADS: u32 = 16;

/// Interpreter processes the kernel walks the stacks of.
pub const INTERP_PROCESSES: u32 = 1024;

/// Threads of interpreter processes inside close(2)/shutdown(2) at once
/// whose walks the kernel holds (LRU beyond that).
pub const INTERP_STASHED: u32 = 1024;

/// `CloseEvent::stack_copy`
pub mod stack_copy {
    /// No copy asked for (`--user-stack fp`), or the task had no user
    /// address space (closing at exit).
    pub const NONE: u32 = 0;
    /// Copied and sent on the `STACKS` ring as `stack_id`.
    pub const COPIED: u32 = 1;
    /// The call site is over its budget ([`STACK_COPIES_PER_SITE`] a
    /// second): not copied; `stack_id` is the site's last copy.
    pub const SAME_AS: u32 = 2;
    /// Over budget and the site's last copy is unknown (its own copy was
    /// dropped): not copied, no reference.
    pub const ELIDED: u32 = 3;
    /// Within budget, but the `STACKS` ring was full: the copy was dropped
    /// (the close itself was still sent).
    pub const DROPPED: u32 = 4;
}

/// User stack copies each call site may send per second before its closes
/// refer to its last copy instead. A call site is the closing process, the
/// top of its kernel stack and the top of its frame-pointer user stack: a
/// server closing 20,000 sockets a second from one loop sends 8 copies, and
/// another process (or another path in the same one) keeps its own budget.
pub const STACK_COPIES_PER_SITE: u32 = 8;

/// Call sites whose budgets the kernel keeps (LRU).
pub const STACK_SITES: u32 = 4096;

/// Bytes of user stack a close may carry for unwinding in userspace
/// (`--user-stack-size` is capped here): 32 KiB holds the frames of deep
/// C++/PHP/Rust server stacks, and the copy is made only when asked.
pub const USER_STACK_MAX: usize = 32768;

/// `UserStackHeader::status`
pub mod ustack {
    /// Registers read, `len` bytes copied from `start` up.
    pub const OK: u32 = 0;
    /// The task's user registers were not found (no user context, or a
    /// kernel stack layout this build does not know): no copy.
    pub const NO_REGS: u32 = 1;
    /// Registers read, but not one byte of stack at `start` was readable.
    pub const READ_FAILED: u32 = 2;

    /// Bytes below `sp` the copy starts at. A frameless leaf's caller may
    /// keep its frame record there: Go on arm64 saves the frame pointer
    /// at SP-8 of its own frame, so in `syscall.Syscall6` (no frame of its
    /// own) the first record the unwinder reads is 8 bytes below `sp`.
    /// Copied from `sp` up, the walk stopped at the first frame (seen on
    /// 5.10 arm64, whose kernel frame-pointer walk also stops there: it
    /// wants 16-byte aligned records).
    pub const BELOW_SP: u64 = 16;
}

/// What a close carries for unwinding with `.eh_frame` in userspace: the
/// user registers at the syscall (the unwind starts there) and the bytes
/// from `start` ([`ustack::BELOW_SP`] below `sp`) up. Sent in a [`StackRecord`], of which only the first `len`
/// stack bytes are sent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct UserStackHeader {
    /// The user program counter (x86_64 `rip`, arm64 `pc`).
    pub ip: u64,
    pub sp: u64,
    /// The frame pointer (x86_64 `rbp`, arm64 `x29`).
    pub fp: u64,
    /// The link register (arm64 `x30`: the return address of a leaf
    /// function that has not saved it yet); 0 on x86_64, which has none.
    pub lr: u64,
    /// The address of the first byte copied.
    pub start: u64,
    /// Bytes copied (valid in `StackRecord::bytes`).
    pub len: u32,
    /// [`ustack`] status.
    pub status: u32,
}

/// A user stack copy on the `STACKS` ring; the record sent is this struct
/// cut after `regs.len` bytes of `bytes`. The kernel sends it before the
/// close that names it (`CloseEvent::stack_id`) is submitted, so a reader
/// that sees the close finds the copy already on its ring.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct StackRecord {
    /// Unique while the daemon runs: `(cpu + 1) << 48 | n`, never 0.
    pub id: u64,
    pub regs: UserStackHeader,
    pub bytes: [u8; USER_STACK_MAX],
}

/// One call site's stack copy budget (the kernel's `STACK_SITES` map).
/// Updated without locks from every CPU: a race can let a site send a copy
/// or two over its budget, never lose a close.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SiteBudget {
    /// ktime (ns) the current one-second window began.
    pub window_start_ns: u64,
    /// The site's last copy sent ([`StackRecord::id`]), 0 = none yet.
    pub last_id: u64,
    /// Copies sent and closes elided in the current window.
    pub copies: u32,
    pub elided: u32,
    /// Closes elided in the previous window (the rate reported).
    pub prev_elided: u32,
    pub _pad: u32,
}

/// Why the kernel could not send an event: the `LOST` per-CPU counters'
/// indexes (the daemon's `wstrace_lost_events_total{reason}`).
pub mod lost {
    /// `EVENTS` was full.
    pub const RING_FULL: u32 = 0;
    /// `EVENTS` was past half full and the process had used its
    /// [`super::FAIR_SHARE_EVENTS`].
    pub const OVER_BUDGET: u32 = 1;
    /// A 101 written on a socket no listener accepted while wstrace ran
    /// (`ACCEPTED`): a connection older than wstrace, one the process
    /// opened itself, or one the map evicted. Not traced: counted, so an
    /// upgrade is never ignored in silence.
    pub const NOT_ACCEPTED: u32 = 2;
    /// A 101 seen, but the kernel refused its socket a place in
    /// `UPGRADED` (an LRU map: only when it cannot allocate): not traced.
    pub const MAP_FULL: u32 = 3;
    pub const REASONS: u32 = 4;
}

/// Events a process may add to `EVENTS` while the ring is past half full,
/// per [`FAIR_SHARE_WINDOW`]th of the ring the daemon reads meanwhile. One
/// process that floods the ring (a server closing 20,000 sockets a second,
/// or one a remote client makes churn on purpose) loses its own events,
/// counted, and the other half of the ring stays for everyone else's
/// closes. The window is the daemon's progress, not time: a stalled daemon
/// refills no one's budget, so however long a flood lasts the upper half
/// holds the closes of the other processes (256 closes of ~1.2 KiB from
/// each of 6 processes fill the 2 MiB upper half of the 4 MiB ring).
pub const FAIR_SHARE_EVENTS: u32 = 256;

/// A process's budget starts again once the daemon has read this fraction
/// (1/N) of the ring since its window began.
pub const FAIR_SHARE_WINDOW: u64 = 8;

/// Processes whose event budgets the kernel keeps (LRU: a process evicted
/// starts a fresh budget; a flood of new processes is still held back by
/// the ring itself).
pub const BUDGET_PROCESSES: u32 = 4096;

/// One process's (tgid) event budget, and what it lost over it (the
/// `PROCESS_BUDGETS` map; the daemon reads the totals to say "pid X: N
/// closes not reported"). Updated without locks from every CPU: a race can
/// let a process send an event or two over its budget.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessBudget {
    /// The ring's consumer position (bytes the daemon had read) when the
    /// current window began.
    pub window_cons_pos: u64,
    /// Events sent in the current window while the ring was past half.
    pub events: u32,
    /// Totals since the entry was made: events not sent (any kind), and of
    /// them closes, and upgrades (connections never traced).
    pub dropped: u32,
    pub dropped_closes: u32,
    pub dropped_upgrades: u32,
}

/// `--debug-probes`: the kernel programs' decision log ("why wasn't my
/// connection reported?"). Each line the kernel writes (through aya-log)
/// is numbers only: a decision code, the process, the socket's ports and
/// address, and one number whose meaning depends on the code. The daemon
/// renders the text from this table: a kernel log call with a string of
/// variable length is rejected by the 5.10 verifier, and the numbers keep
/// the line typed up to the edge.
pub mod probe_log {
    /// A 101 was written at the start of a write on an accepted socket:
    /// traced as the server side. Arg: bytes written.
    pub const UPGRADE_SERVER: u32 = 1;
    /// A 101 was the first response read on a socket: traced as the
    /// client side. Arg: bytes read.
    pub const UPGRADE_CLIENT: u32 = 2;
    /// A 101 written on a socket no listener accepted while wstrace ran
    /// (a connection older than wstrace, or a socket the process
    /// connected itself). Arg: bytes written.
    pub const IGNORED_NOT_ACCEPTED: u32 = 3;
    /// A 101 written on a socket that is not TCP. Arg: bytes written.
    pub const IGNORED_NOT_TCP: u32 = 4;
    /// A 101 written on a socket whose local port is not traced (`--port`).
    /// Arg: bytes written.
    pub const IGNORED_PORT: u32 = 5;
    /// A 101 written, but the upgraded-socket map refused the socket.
    /// Arg: bytes written.
    pub const IGNORED_MAP_FULL: u32 = 6;
    /// A 101 written, but its event could not be sent (ring full, or the
    /// process over its fair share). Arg: bytes written.
    pub const IGNORED_LOST: u32 = 7;
    /// A write holds a 101 status line, but not at its start (only a 101
    /// that starts a write is seen). Arg: the 101's offset in the write.
    pub const IGNORED_NOT_AT_START: u32 = 8;
    /// A write begins an HTTP/1.x status line but ends before its status
    /// code: a 101 split across writes is not seen. Arg: bytes written.
    pub const IGNORED_SPLIT: u32 = 9;
    /// A socket's first read is a request head: copied (the request a
    /// 101 answers). Arg: bytes read.
    pub const FIRST_READ_REQUEST: u32 = 10;
    /// A socket's first read is an HTTP response other than a 101: its
    /// reads are not copied again. Arg: bytes read.
    pub const FIRST_READ_RESPONSE: u32 = 11;
    /// A socket's first read is not HTTP: its reads and (fentry, kprobe)
    /// writes cost one lookup from now on. Arg: bytes read.
    pub const FIRST_READ_NOT_HTTP: u32 = 12;
    /// A socket's first read is a TLS handshake: heads come from the TLS
    /// library's uprobes, if any. Arg: bytes read.
    pub const FIRST_READ_TLS: u32 = 13;
    /// A request (`GET `) written on a socket whose remote port is traced:
    /// the writer is remembered as the peer. Arg: bytes written.
    pub const REQUEST_WRITTEN: u32 = 14;

    /// What a code means, for the daemon's line (None: unknown code).
    pub fn describe(code: u32) -> Option<&'static str> {
        Some(match code {
            UPGRADE_SERVER => "wrote a 101: traced (server side)",
            UPGRADE_CLIENT => "read a 101 as its first response: traced (client side)",
            IGNORED_NOT_ACCEPTED => {
                "101 ignored: no listener accepted this socket while wstrace ran (a connection older than wstrace, or one the process opened itself)"
            }
            IGNORED_NOT_TCP => "101 ignored: not a TCP socket",
            IGNORED_PORT => "101 ignored: its local port is not traced (--port)",
            IGNORED_MAP_FULL => {
                "101 ignored: the upgraded-socket map refused it (raise --max-sockets)"
            }
            IGNORED_LOST => {
                "101 ignored: its event was lost (ring full, or the process over its fair share)"
            }
            IGNORED_NOT_AT_START => {
                "101 ignored: not at the start of the write (only a write that starts with the status line is seen)"
            }
            IGNORED_SPLIT => {
                "status line split: the write ends before the status code, so a 101 in the next write is not seen"
            }
            FIRST_READ_REQUEST => "first read is a request head: copied",
            FIRST_READ_RESPONSE => "first read is an HTTP response, not a 101: not followed",
            FIRST_READ_NOT_HTTP => "first read is not HTTP: not followed",
            FIRST_READ_TLS => "first read is a TLS handshake: heads come from the TLS library",
            REQUEST_WRITTEN => "wrote a request to a traced port: noted as the peer",
            _ => return None,
        })
    }

    /// The name of what `arg` counts, per code.
    pub fn arg_name(code: u32) -> &'static str {
        match code {
            IGNORED_NOT_AT_START => "at byte",
            FIRST_READ_REQUEST | FIRST_READ_RESPONSE | FIRST_READ_NOT_HTTP | FIRST_READ_TLS
            | UPGRADE_CLIENT => "read",
            _ => "wrote",
        }
    }

    /// Lines each CPU may log per second; the rest are counted
    /// ([`LogBudget::dropped`]) and the daemon says how many.
    pub const LINES_PER_SECOND: u32 = 100;

    /// Bytes of a write searched for a misplaced 101 (debug only).
    pub const SCAN_BYTES: usize = 64;

    /// One CPU's log budget (the `LOG_BUDGET` per-CPU array).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default)]
    pub struct LogBudget {
        /// ktime (ns) the current one-second window began.
        pub window_ns: u64,
        /// Lines logged in the current window.
        pub lines: u32,
        pub _pad: u32,
        /// Lines not logged over the budget, in all.
        pub dropped: u64,
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, no padding holes that matter, all bit patterns valid.
    unsafe impl aya::Pod for super::EventHeader {}
    unsafe impl aya::Pod for super::CloseEvent {}
    unsafe impl<const N: usize> aya::Pod for super::DataEventOf<N> {}
    unsafe impl aya::Pod for super::InterpConfig {}
    // SAFETY: `repr(C)` u64s only, no padding.
    unsafe impl aya::Pod for super::GoTlsLayout {}
    unsafe impl aya::Pod for super::SignalEvent {}
    unsafe impl aya::Pod for super::UserStackHeader {}
    // SAFETY: `repr(C)` integers only, without padding.
    unsafe impl aya::Pod for super::SiteBudget {}
    unsafe impl aya::Pod for super::ProcessBudget {}
    // SAFETY: `repr(C)` integers and byte arrays; `_pad` makes the padding
    // explicit (the kernel zeroes it), so a key's bytes are its value.
    unsafe impl aya::Pod for super::SockTuple {}
    unsafe impl aya::Pod for super::PeerWriter {}
    // SAFETY: `repr(C)` integers only, without padding (see its definition).
    unsafe impl aya::Pod for super::KernelConfig {}
    unsafe impl aya::Pod for super::probe_log::LogBudget {}
}

/// The marker for "this kernel has no such field" in a [`KernelConfig`]
/// offset: the eBPF side then skips the read (or the whole feature).
pub const ABSENT: u64 = u64::MAX;

/// Everything the kernel programs learn from the daemon: the traced ports,
/// sizes, and the layout of this kernel's structs and tracepoint records.
///
/// The eBPF object holds one `CONFIG` of this type; the daemon fills a copy
/// (struct offsets from the kernel's BTF in `attach::btf`, tracepoint field
/// offsets from tracefs in `attach`) and patches it in before loading with
/// `EbpfLoader::override_global("CONFIG", ..)`. Adding a field is two edits:
/// the field here, and the line in the daemon that fills it. Until filled,
/// a field is [`ABSENT`] (see [`KernelConfig::DEFAULT`]).
///
/// Offsets are byte offsets from the start of the named kernel struct (or
/// tracepoint record); fields that are values say so. Every field after
/// `ports` is a `u64`, so the layout has no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelConfig {
    /// Value: 1 when every port is traced (no `--port`); 0 when only the
    /// ports set in the `TRACED_PORTS` bitmap are ([`port_bit`]).
    pub all_ports: u64,
    /// Value: bytes of user stack to copy at a close (0 = off).
    pub user_stack_bytes: u64,

    // struct sock / sock_common
    pub skc_family: u64,
    pub skc_state: u64,
    /// Local port, host order; 0 once the socket is unhashed.
    pub skc_num: u64,
    /// Remote port, network order.
    pub skc_dport: u64,
    pub skc_rcv_saddr: u64,
    pub skc_daddr: u64,
    pub skc_v6_rcv_saddr: u64,
    pub skc_v6_daddr: u64,
    pub sk_protocol: u64,
    /// `sock.sk_err` (int): the hard error the kernel set before it closed
    /// the socket itself (ETIMEDOUT, ECONNRESET ...); 0 for a local close.
    pub sk_err: u64,
    // struct tcp_sock
    pub tcp_bytes_received: u64,
    pub tcp_bytes_acked: u64,
    /// Jiffies of the last data sent.
    pub tcp_lsndtime: u64,
    /// `inet_conn.icsk_ack.lrcvtime`: jiffies of the last data received.
    pub icsk_lrcvtime: u64,
    /// `inet_sock.inet_sport`: the local port (network order), still set
    /// after the socket is unhashed (which zeroes `skc_num` before the final
    /// transitions).
    pub inet_sport: u64,

    // struct task_struct
    pub task_flags: u64,
    /// `group_leader` and `start_time`: the process's start time, which
    /// tells a reused pid from the process it once was.
    pub task_group_leader: u64,
    pub task_start_time: u64,
    /// `stack`: the base of the task's kernel stack, at whose top the user
    /// registers of the current syscall are saved.
    pub task_stack: u64,
    /// Value: `sizeof(struct pt_regs)`, the block of saved user registers
    /// at the top of that stack (arm64: it grew and shrank across kernels).
    pub pt_regs_size: u64,
    /// `exit_code` (int): how an exiting task ends, wait(2) status form.
    pub task_exit_code: u64,

    // fd -> struct sock walk (tracepoint set)
    pub task_files: u64,
    pub files_fdt: u64,
    pub fdt_max_fds: u64,
    pub fdt_fd: u64,
    pub file_private_data: u64,
    pub socket_sk: u64,
    pub socket_file: u64,

    // msghdr / iov_iter (fentry and kprobe tcp_sendmsg/tcp_recvmsg)
    pub msghdr_iter: u64,
    /// `iov_iter.iter_type` (u8, 5.14+) or the low byte of `iov_iter.type`.
    pub iter_type: u64,
    /// Value: the bits of the byte at `iter_type` that hold the iterator type.
    pub iter_type_mask: u64,
    /// Value: `ITER_UBUF` of `enum iter_type` (6.0+), or ABSENT.
    pub iter_ubuf_value: u64,
    /// Value: `ITER_IOVEC` of `enum iter_type`.
    pub iter_iovec_value: u64,
    /// `iov_iter.ubuf` (6.0+).
    pub iter_ubuf: u64,
    /// `iov_iter.__iov` (6.4+) or `iov_iter.iov`.
    pub iter_iov: u64,

    // tracepoint record fields, from tracefs `format` files (the socket
    // events are raw tracepoints: their arguments need no offsets)
    /// `signal:signal_generate`: signal, si_code, target pid, result.
    pub tp_signal_sig: u64,
    pub tp_signal_code: u64,
    pub tp_signal_pid: u64,
    pub tp_signal_result: u64,
    /// `oom:mark_victim`: the victim's pid.
    pub tp_oom_pid: u64,

    /// Value: 1 when the TLS uprobes are loaded (`--tls auto`): socket
    /// reads and writes of a thread inside `SSL_read`/`SSL_write` are
    /// then matched to that call; 0 skips the lookup.
    pub tls: u64,
    /// Value: 1 under `--debug-probes`: the programs log their decisions
    /// ([`probe_log`]); 0 (the default) and the verifier, which sees a
    /// frozen constant, drops the log statements from the loaded programs.
    pub debug_probes: u64,
}

const _: () = assert!(core::mem::size_of::<KernelConfig>().is_multiple_of(8));

impl KernelConfig {
    /// No port traced (an empty bitmap, `all_ports` 0), no stack copy, and every offset and value
    /// [`ABSENT`]: what the eBPF object holds until the daemon patches it,
    /// and where the daemon starts filling in.
    pub const DEFAULT: Self = {
        const WORDS: usize = core::mem::size_of::<KernelConfig>() / 8;
        // SAFETY: KernelConfig is `repr(C)` integers only, so every bit
        // pattern is valid, and it is exactly WORDS u64s (transmute checks
        // the sizes at compile time).
        let mut c: Self = unsafe { core::mem::transmute([ABSENT; WORDS]) };
        c.all_ports = 0;
        c.user_stack_bytes = 0;
        c.tls = 0;
        c.debug_probes = 0;
        c
    };
}

impl Default for KernelConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    fn head(s: &[u8]) -> [u8; UPGRADE_PREFIX_LEN] {
        let mut h = [0u8; UPGRADE_PREFIX_LEN];
        h.copy_from_slice(&s[..UPGRADE_PREFIX_LEN]);
        h
    }

    #[test]
    fn recognises_101_status_lines() {
        assert!(is_upgrade_response(&head(
            b"HTTP/1.1 101 Switching Protocols\r\n"
        )));
        assert!(is_upgrade_response(&head(
            b"HTTP/1.0 101 Switching Protocols\r\n"
        )));
    }

    #[test]
    fn rejects_other_statuses_and_lookalikes() {
        assert!(!is_upgrade_response(&head(b"HTTP/1.1 200 OK\r\n\r\n")));
        assert!(!is_upgrade_response(&head(b"HTTP/1.1 1010 Nope\r\n")));
        assert!(!is_upgrade_response(&head(b"HTTP/2.0 101 Switching")));
        assert!(!is_upgrade_response(&head(b"http/1.1 101 switching")));
        assert!(!is_upgrade_response(&head(b"GET / HTTP/1.1\r\nHost:")));
    }

    #[test]
    fn kernel_config_default_is_absent_except_ports_and_sizes() {
        let c = KernelConfig::DEFAULT;
        assert_eq!(c.all_ports, 0, "no port is traced until the daemon says");
        assert_eq!(c.user_stack_bytes, 0);
        assert_eq!(c.skc_family, ABSENT);
        assert_eq!(c.iter_type_mask, ABSENT);
        assert_eq!(c.tp_signal_sig, ABSENT);
        assert_eq!(
            c.tls, 0,
            "TLS matching is off until the daemon loads the uprobes"
        );
        assert_eq!(KernelConfig::default(), c);
    }

    #[test]
    fn port_bits_cover_every_port_once() {
        let mut seen = std::collections::HashSet::new();
        for port in 0..=u16::MAX {
            let (word, mask) = port_bit(port);
            assert!(word < PORT_WORDS, "port {port} outside the bitmap");
            assert_eq!(mask.count_ones(), 1);
            assert!(seen.insert((word, mask)), "port {port} shares a bit");
        }
        assert_eq!(port_bit(1215), (18, 1 << 63));
        assert_eq!(port_bit(64), (1, 1));
    }

    fn first(s: &[u8; 4]) -> FirstRead {
        classify_first_read(u32::from_le_bytes(*s))
    }

    #[test]
    fn first_reads_are_classified_by_their_first_four_bytes() {
        for m in [
            b"GET ", b"POST", b"PUT ", b"HEAD", b"DELE", b"OPTI", b"PATC", b"CONN", b"TRAC",
            b"PROX",
        ] {
            assert_eq!(first(m), FirstRead::Request, "{:?}", m);
        }
        assert_eq!(first(b"HTTP"), FirstRead::Response);
        // An HTTP/2 preface, TLS, lower case, a database's startup packet,
        // and a WebSocket frame are not request heads.
        assert_eq!(first(b"PRI "), FirstRead::Other);
        assert_eq!(first(&[0x16, 3, 1, 0]), FirstRead::Other);
        assert_eq!(first(b"get "), FirstRead::Other);
        assert_eq!(first(&[0, 0, 0, 8]), FirstRead::Other);
        assert_eq!(first(&[0x81, 0x85, 1, 2]), FirstRead::Other);
        assert_eq!(first(b"GETX"), FirstRead::Other);
    }

    #[test]
    fn layout_is_stable() {
        // The kernel and the daemon read these with the same definitions, but
        // a size change is worth noticing in review.
        assert_eq!(core::mem::size_of::<SockTuple>(), 40);
        assert_eq!(core::mem::size_of::<EventHeader>(), 128);
        assert_eq!(core::mem::size_of::<DataEvent>(), 128 + 8 + DATA_CAP);
        assert_eq!(
            core::mem::size_of::<SmallDataEvent>(),
            DATA_EVENT_FIXED + SMALL_DATA_CAP
        );
        assert_eq!(core::mem::offset_of!(DataEvent, data), DATA_EVENT_FIXED);
        assert_eq!(
            core::mem::size_of::<CloseEvent>(),
            128 + 16 + 2 * 8 * STACK_DEPTH + 16 + 16 + 16 * INTERP_FRAMES
        );
        assert_eq!(core::mem::size_of::<UserStackHeader>(), 48);
        assert_eq!(core::mem::size_of::<PeerWriter>(), 32);
        assert_eq!(core::mem::size_of::<SignalEvent>(), 128 + 16);
        assert_eq!(core::mem::size_of::<StackRecord>(), 8 + 48 + USER_STACK_MAX);
        assert_eq!(core::mem::size_of::<SiteBudget>(), 32);
        assert_eq!(core::mem::size_of::<ProcessBudget>(), 24);
    }
}
