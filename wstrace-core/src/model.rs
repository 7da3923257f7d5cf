//! The types every stage shares: decoded kernel events, the per-socket close
//! report, stack frames, user-stack walks and process facts.
//!
//! Stages import from here and never from each other's internals, so the
//! flow attach -> pipeline (read, decode, match) -> enrich -> diagnose ->
//! output has no cycles. Types only: no I/O, no parsing.
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use wstrace_common::{EventKind, ProbeSet};

// --- Decoded kernel events (pipeline::decode makes them) ---

#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub kind: EventKind,
    /// Probe set byte as the program wrote it (0 for the shared programs).
    pub probe: u8,
    pub old_state: u8,
    pub new_state: u8,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub task_exiting: bool,
    pub arg: u32,
    pub ts_ns: u64,
    pub sk: u64,
    pub bytes_received: u64,
    pub bytes_acked: u64,
    /// The process's start time (ns since boot; 0 if unknown): with `pid`,
    /// which process this was, since pids are reused.
    pub process_start_ns: u64,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// jiffies now, and of the last data sent / received on the socket.
    pub jiffies: JiffiesSample,
    /// Only for `Close`.
    /// Boxed: only a close has stacks (240 bytes), and every event waiting
    /// in the reader's queue would otherwise carry their space (an event
    /// was 472 bytes, 240 without them; the queue holds thousands).
    pub stacks: Option<Box<Stacks>>,
    /// Only for `Data`.
    pub data: Option<Data>,
    /// Close by an exiting task: its `exit_code` (wait(2) status form), when
    /// the kernel's layout let the program read it.
    pub exit_code: Option<u32>,
    /// Only for `Signal`.
    pub signal: Option<SignalSent>,
    /// Upgrade and Data: the bytes came from this TLS library's plaintext
    /// (`openssl`: uprobes on SSL_write/SSL_read; `go`: on crypto/tls's
    /// `(*Conn).Write`/`Read`), not from the socket; `None` otherwise.
    pub tls: Option<&'static str>,
    /// Upgrade: the local end read the 101 (the client side).
    pub client_side: bool,
}

/// Which end of the WebSocket the local socket is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Side {
    /// It wrote the 101: the server (or a proxy's side facing the client).
    #[default]
    Server,
    /// It read the 101: the client (or a proxy's upstream connection).
    Client,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Server => "server",
            Side::Client => "client",
        }
    }
}

/// A signal sent to a process that wrote a 101 (the event's pid/comm are
/// the sender's), or the OOM killer choosing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignalSent {
    pub target_pid: u32,
    pub signal: u32,
    /// `si_code` (0: kill(2) from a process; 0x80: the kernel).
    pub code: i32,
    pub oom: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct JiffiesSample {
    pub now: u32,
    pub last_send: u32,
    pub last_recv: u32,
}

impl JiffiesSample {
    /// Jiffies since the last data in either direction (wrapping u32
    /// arithmetic, like the kernel's own); None when the kernel gave none.
    pub fn idle(&self) -> Option<u32> {
        if self.last_send == 0 && self.last_recv == 0 {
            return None;
        }
        let since_send = self.now.wrapping_sub(self.last_send);
        let since_recv = self.now.wrapping_sub(self.last_recv);
        Some(since_send.min(since_recv))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Read by the local end (from the peer).
    Received,
    /// Written by the local end.
    Sent,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Data {
    pub direction: Direction,
    pub bytes: Vec<u8>,
    /// Bytes the read or write moved in all; more than `bytes.len()` when
    /// the kernel copied only the start (0: not said).
    pub total: u32,
    /// After the upgrade: the kernel copied this read or write because it
    /// continues a control frame the previous one of that direction cut.
    pub continues: bool,
    /// The read that carried a client side's 101: the response head, then
    /// perhaps frames.
    pub upgrade_read: bool,
}

/// Pings one end sent and the pongs that came back, as the frames seen
/// after the upgrade show them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pings {
    pub pings: u32,
    pub pongs: u32,
    pub last_ping_ns: Option<u64>,
    pub last_pong_ns: Option<u64>,
    /// Pings since the last pong: a pong answers every ping before it
    /// (RFC 6455 §5.5.3 lets an end answer only the latest one).
    pub unanswered: u32,
    /// When the oldest of those was sent.
    pub first_unanswered_ns: Option<u64>,
}

impl Pings {
    pub fn ping(&mut self, ts_ns: u64) {
        self.pings = self.pings.saturating_add(1);
        self.last_ping_ns = Some(ts_ns);
        self.unanswered = self.unanswered.saturating_add(1);
        self.first_unanswered_ns.get_or_insert(ts_ns);
    }

    /// A pong, asked for or not (RFC 6455 allows unsolicited pongs as a
    /// one-way heartbeat): the other end is alive.
    pub fn pong(&mut self, ts_ns: u64) {
        self.pongs = self.pongs.saturating_add(1);
        self.last_pong_ns = Some(ts_ns);
        self.unanswered = 0;
        self.first_unanswered_ns = None;
    }
}

/// Heartbeats after the upgrade, both ways.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Heartbeat {
    /// Pings the local end sent, and the pongs it received.
    pub local: Pings,
    /// Pings the peer sent, and the pongs the local end sent back.
    pub peer: Pings,
}

/// Raw addresses, innermost first. `Err(errno)` when the kernel could not
/// walk that stack (e.g. EFAULT for a task without a user address space).
#[derive(Clone, Debug, PartialEq)]
pub struct Stacks {
    pub kernel: Result<Vec<u64>, i64>,
    pub user: Result<Vec<u64>, i64>,
    /// Registers and stack bytes for dwarf unwinding, when the close
    /// carried them (`--user-stack dwarf|auto`).
    pub user_copy: Option<UserStackCopy>,
    /// The dwarf unwind of `user_copy` (made as soon as the event is read,
    /// and the copy dropped: reports in flight hold ~1 KiB, not 16), or of
    /// the copy a [`CopyFate::SameAs`] names.
    pub dwarf: Option<Unwound>,
    /// What the kernel did about this close's user stack copy.
    pub fate: CopyFate,
    /// Set by the enrich stage when the close had no copy of its own.
    pub shared: Option<SharedStack>,
    /// The interpreter's frames of the closing thread (Python), as the
    /// kernel copied them at the close.
    pub interp: InterpCapture,
}

/// The interpreter frames a close carried: raw addresses in the process,
/// named by the enrich stage (`enrich::python`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InterpCapture {
    /// `wstrace_common::interp` status.
    pub status: u32,
    /// (code object, instruction pointer), innermost first.
    pub frames: Vec<(u64, u64)>,
    /// Bit i: frame i is the outermost of one interpreter loop call.
    pub entry_mask: u32,
}

/// What became of a close's user stack copy (`--user-stack dwarf|auto`):
/// each call site sends a few copies a second (kernel-side budget), the
/// rest of its closes name its last one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CopyFate {
    /// No copy asked for, or none possible (the task was exiting).
    #[default]
    None,
    /// Copied, sent as stack `id` (`user_copy` holds it once the reader
    /// joined it).
    Copied { id: u64 },
    /// Over its site's budget: the site's last copy, `id`, stands for it;
    /// `rate`: closes a second whose copy the site was refused.
    SameAs { id: u64, rate: u32 },
    /// Over budget with no earlier copy to name.
    Elided { rate: u32 },
    /// Within budget, but the stack ring was full.
    Dropped,
}

impl CopyFate {
    /// The `wstrace_stacks_elided_total` reason this close counts under.
    pub fn elided_reason(self) -> Option<&'static str> {
        match self {
            Self::SameAs { .. } | Self::Elided { .. } => Some("budget"),
            Self::Dropped => Some("ring_full"),
            Self::None | Self::Copied { .. } => None,
        }
    }
}

/// How a report's user stack stands in for a copy it did not get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SharedStack {
    /// The unwind of the same call site's copy made `age_ms` earlier.
    SameAs { id: u64, age_ms: u64, rate: u32 },
    /// No copy of this site is at hand (over budget before any was kept,
    /// or the kept one was evicted): the frame-pointer walk is shown.
    Elided { rate: u32 },
    /// The stack ring was full: the frame-pointer walk is shown.
    Dropped,
}

impl SharedStack {
    /// What the text output says after "user stack".
    pub fn describe(self) -> String {
        match self {
            Self::SameAs { age_ms, rate, .. } => format!(
                "same as the copy made {age_ms} ms earlier at this call site (elided rate: {rate}/s)"
            ),
            Self::Elided { rate } => format!("elided (rate: {rate}/s)"),
            Self::Dropped => "stack copy dropped: the stack ring was full".into(),
        }
    }

    /// The JSON `user_stack_copy` value.
    pub fn name(self) -> &'static str {
        match self {
            Self::SameAs { .. } => "same_as",
            Self::Elided { .. } => "elided",
            Self::Dropped => "dropped",
        }
    }
}

/// The closing thread's user registers at the syscall and the stack bytes
/// from `sp` up, as the kernel copied them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserStackCopy {
    pub ip: u64,
    pub sp: u64,
    /// Frame pointer (x86_64 `rbp`, arm64 `x29`).
    pub fp: u64,
    /// Link register (arm64 `x30`; 0 on x86_64).
    pub lr: u64,
    /// The address of `bytes[0]` (a little below `sp`: see
    /// `wstrace_common::ustack::BELOW_SP`).
    pub start: u64,
    /// `wstrace_common::ustack` status.
    pub status: u32,
    pub bytes: Vec<u8>,
}

// --- One report per closed socket (pipeline::matcher makes them) ---

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClosedBy {
    Local,
    Peer,
    /// The kernel ended the connection on its own (a timeout, an abort):
    /// no process here closed it.
    Kernel,
}

impl ClosedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Peer => "peer",
            Self::Kernel => "kernel",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum How {
    Fin,
    Rst,
    /// Neither: the kernel dropped the connection (a timeout sends nothing).
    Abort,
}

impl How {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fin => "fin",
            Self::Rst => "rst",
            Self::Abort => "abort",
        }
    }
}

/// Why the kernel closed a socket itself, from the `sk_err` it set first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelClose {
    pub errno: u32,
}

impl KernelClose {
    /// `tcp_timeout` (retransmission, keepalive or TCP_USER_TIMEOUT: ETIMEDOUT,
    /// or the ICMP error that came before it), `reset_received`
    /// (ECONNRESET/EPIPE), `aborted` (ECONNABORTED: `ss -K`, SOCK_DESTROY).
    pub fn reason(self) -> &'static str {
        match self.errno {
            ECONNRESET | EPIPE => "reset_received",
            ECONNABORTED => "aborted",
            _ => "tcp_timeout",
        }
    }

    /// The errno's name, as errno(3) gives it.
    pub fn error_name(self) -> String {
        let name = match self.errno {
            EPIPE => "EPIPE",
            ECONNRESET => "ECONNRESET",
            ECONNABORTED => "ECONNABORTED",
            ETIMEDOUT => "ETIMEDOUT",
            EHOSTUNREACH => "EHOSTUNREACH",
            ENETUNREACH => "ENETUNREACH",
            ECONNREFUSED => "ECONNREFUSED",
            EPROTO => "EPROTO",
            _ => return format!("errno {}", self.errno),
        };
        name.to_string()
    }

    /// A reset from the peer (the peer, not the kernel, ended it).
    pub fn is_reset(self) -> bool {
        matches!(self.errno, ECONNRESET | EPIPE)
    }
}

// Linux errno values (asm-generic/errno*.h), as `sk_err` holds them.
const EPIPE: u32 = 32;
const EPROTO: u32 = 71;
const ENETUNREACH: u32 = 101;
const ECONNABORTED: u32 = 103;
const ECONNRESET: u32 = 104;
const ETIMEDOUT: u32 = 110;
const ECONNREFUSED: u32 = 111;
const EHOSTUNREACH: u32 = 113;

/// The process that closed the local end, as the kernel saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct Closer {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    /// The close ran in do_exit: the process ended without closing it itself.
    pub at_exit: bool,
    /// With `at_exit`: the task's exit code (wait(2) status form), if read.
    pub exit_code: Option<u32>,
    pub stacks: Stacks,
}

/// The process that wrote the 101.
#[derive(Clone, Debug, PartialEq)]
pub struct Upgrader {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CloseReport {
    pub sk: u64,
    /// Monotonic ns of the first close (FIN or RST, either side).
    pub close_ts_ns: u64,
    pub upgrade_ts_ns: u64,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub closed_by: ClosedBy,
    pub how: How,
    pub closer: Option<Closer>,
    pub upgrader: Upgrader,
    pub bytes_sent_after_upgrade: u64,
    pub bytes_received_after_upgrade: u64,
    pub probe: ProbeSet,
    /// Bytes the local end read before it answered 101: the request head.
    pub request_head: Vec<u8>,
    /// Close frames seen after the upgrade, in order: (direction, raw bytes).
    pub close_frames: Vec<(Direction, Vec<u8>)>,
    /// Pings and pongs seen after the upgrade.
    pub heartbeat: Heartbeat,
    /// Socket timestamps at the first close (for idle time).
    pub jiffies_at_close: Option<JiffiesSample>,
    /// Anything the reader must know to read the report right.
    pub notes: Vec<String>,
    /// The kernel closed the socket itself (timeout, reset, abort): why.
    pub kernel_close: Option<KernelClose>,
    /// The connection was TLS and its 101 and request were read from this
    /// TLS library's plaintext (`openssl`, `go`); `None` for plaintext sockets.
    pub tls: Option<&'static str>,
    /// Which end the local socket is: it wrote the 101 or read it.
    pub side: Side,
    /// The proxy chain this socket is a hop of, when its handshake was seen
    /// on another followed socket too (`pipeline::chain`).
    pub chain: Option<Chain>,
}

// --- Proxy chains (pipeline::chain links them) ---

/// What linked a socket to the others of its chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkedBy {
    /// The same handshake (Sec-WebSocket-Key / Accept) on every hop.
    Handshake,
    /// A proxy that rewrites the handshake: one of its threads read the
    /// upstream 101 and then wrote the downstream one (the same-thread
    /// hand-off); hops within a handshake are still linked by it.
    Thread,
    /// The handshake's digest was seen on connections that do not form one
    /// chain (a reused Key, a forged Accept): nothing is linked.
    Ambiguous,
}

impl LinkedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkedBy::Handshake => "handshake",
            LinkedBy::Thread => "thread",
            LinkedBy::Ambiguous => "ambiguous",
        }
    }
}

/// One hop of a chain, as its neighbours name it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HopRef {
    /// 0 is the hop nearest the client.
    pub hop: u32,
    /// The hop's server end (the address the client end connected to).
    pub server: SocketAddr,
    pub client: SocketAddr,
    /// The process that answered on that hop, when its socket is on this host.
    pub pid: Option<u32>,
    pub comm: Option<String>,
}

/// The chain's first close: which hop, and the socket whose report says why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainRoot {
    pub hop: u32,
    pub sk: u64,
}

/// A socket's place in its proxy chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// A keyed digest of the handshake: the same on every hop and host.
    pub id: String,
    /// This socket's hop (0 nearest the client); `None` when ambiguous.
    pub hop: Option<u32>,
    /// Hops seen on this host.
    pub hops: Option<u32>,
    /// The next hop toward the server, and toward the client.
    pub upstream: Option<HopRef>,
    pub downstream: Option<HopRef>,
    pub linked_by: LinkedBy,
    /// The hop that closed first.
    pub root: Option<ChainRoot>,
}

impl CloseReport {
    pub fn ms_after_upgrade(&self) -> f64 {
        self.close_ts_ns.saturating_sub(self.upgrade_ts_ns) as f64 / 1e6
    }
}

// --- Stack frames (enrich makes them; output and report render them) ---

/// One frame of a kernel or user stack, as data: every printer renders it
/// (text, JSON, the folded storm, `wstrace report` and its page), none
/// parses it back. Innermost first in a stack; a function inlined at an
/// address comes before the function it was inlined into, with the same
/// `address`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(default)]
pub struct Frame {
    /// The function's name (demangled), `None` when nothing named the
    /// address (the text shows `[unknown] 0x…`).
    pub function: Option<String>,
    /// Offset of the captured address from the function's start; `None`
    /// for an inlined frame (it has no start of its own) and unknown ones.
    pub offset: Option<u64>,
    /// The file mapped at the address (user frames), as the process's maps
    /// name it.
    pub module: Option<String>,
    /// Source file and line, when debug info gave them.
    pub file: Option<String>,
    pub line: Option<u32>,
    /// Inlined into the next frame of the stack (same address).
    pub inlined: bool,
    pub kind: FrameKind,
    /// The source language, when the symbolizer knows it (`null` today for
    /// native code; interpreter frames will say theirs).
    pub language: Option<Language>,
    /// The captured address (a return address for all but the innermost
    /// frame), as raw dumps show it; `None` only in frames read back from
    /// logs that predate frame objects.
    #[serde(with = "hex_address")]
    pub address: Option<u64>,
    /// Why an unknown frame has no name, when that is not simply a missing
    /// symbol.
    pub unresolved: Option<Unresolved>,
}

/// What ran at a frame.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum FrameKind {
    Kernel,
    /// Machine code from a file the process mapped.
    #[default]
    Native,
    /// Code a runtime generated (named by its perf map).
    Jit,
    /// A function of an interpreted language (PHP, Python, JS), from the
    /// interpreter's own state.
    Interpreted,
}

/// Source languages a frame can be in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    C,
    Cpp,
    Rust,
    Go,
    JavaScript,
    Php,
    Python,
}

/// Why the symbolizer gave a frame no name although it might have one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unresolved {
    /// Its process's files kept the symbolizer past its budget.
    TimedOut,
    /// No symbolizer worker was available (too many stuck, or it died).
    Unavailable,
}

impl Unresolved {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TimedOut => "symbolization timed out",
            Self::Unavailable => "symbolization unavailable",
        }
    }
}

impl Frame {
    /// Is this CPython's interpreter loop's own native frame (where Python
    /// frames ran)? Enrich splices the script frames in beside it; the
    /// compact text drops it.
    pub fn is_python_eval_loop(&self) -> bool {
        self.kind != FrameKind::Interpreted
            && self.function.as_deref() == Some("_PyEval_EvalFrameDefault")
    }

    /// Is this PHP's executor loop's own native frame (where PHP frames ran)?
    pub fn is_php_exec_loop(&self) -> bool {
        self.kind != FrameKind::Interpreted && self.function.as_deref() == Some("execute_ex")
    }

    /// A frame nothing could name.
    pub fn unknown(kind: FrameKind, address: u64, module: Option<&str>) -> Self {
        Self {
            kind,
            address: Some(address),
            module: module.map(str::to_string),
            ..Self::default()
        }
    }
}

/// Addresses as `"0x…"` strings in JSON: a kernel address does not fit the
/// 53 bits a JSON number keeps in most readers.
mod hex_address {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(addr: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match addr {
            // Written straight into the output, no String per frame.
            Some(a) => s.collect_str(&format_args!("{a:#x}")),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        // Anything but a well-formed hex string reads as no address: a log
        // line is data from outside, and one odd field must not cost the
        // whole report.
        let v = Option::<serde_json::Value>::deserialize(d)?;
        Ok(v.as_ref()
            .and_then(serde_json::Value::as_str)
            .and_then(|s| s.strip_prefix("0x"))
            .and_then(|h| u64::from_str_radix(h, 16).ok()))
    }
}

// --- User stacks (enrich::unwind makes them) ---

/// How an unwind ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// The unwind rules said this was the outermost frame.
    Complete,
    /// The next return address lies above the copied bytes: a larger
    /// `--user-stack-size` would show more.
    Truncated,
    /// The walk could not go on (no unwind information for a frame, or the
    /// rules led outside the stack): the frames before are trustworthy.
    Stopped(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unwound {
    /// Innermost first: `ip`, then return addresses (as the frame-pointer
    /// walk gives them, so both symbolize the same way).
    pub addrs: Vec<u64>,
    pub end: End,
    /// The words just below the frame pointer of the frames that may be a
    /// JavaScript engine's (V8 keeps the running function there), read
    /// from the copy while it exists: the copy is dropped after the unwind.
    pub fp_slots: Vec<FpSlots>,
    /// JavaScript frames read through those slots right after the unwind
    /// (before the garbage collector moves the function objects): the
    /// frame's index in `addrs`, and the frame named (`enrich/node.rs`).
    pub js: Vec<(usize, Frame)>,
}

/// Words below one frame's frame pointer, as the stack copy held them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FpSlots {
    /// Index of the frame in `Unwound::addrs`.
    pub frame: usize,
    pub fp: u64,
    /// `below[i]` is the word at `fp - 8 * (i + 1)`.
    pub below: [u64; FP_SLOTS],
}

/// Words kept below a frame pointer: V8's frame slots (context, function,
/// argument count, bytecode array and offset) lie within 40 bytes of it.
pub const FP_SLOTS: usize = 6;

/// Which walk a report shows as the user stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Walk {
    /// The dwarf unwind of the stack copy.
    Dwarf,
    /// The kernel's frame-pointer walk.
    FramePointers,
}

impl Walk {
    pub fn name(self) -> &'static str {
        match self {
            Self::Dwarf => "dwarf",
            Self::FramePointers => "fp",
        }
    }
}

/// How `user_stack` was walked (see `unwind::choose`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserWalk {
    /// `None` when there is no user stack (closed at process exit, no closer).
    pub walk: Option<Walk>,
    /// How the dwarf unwind ended (dwarf only).
    pub end: Option<End>,
    /// Why dwarf was asked for and not used.
    pub note: Option<String>,
    /// Why there is no user stack at all (e.g. closed at process exit).
    pub none: Option<&'static str>,
    /// The close had no stack copy of its own (call-site budget, full ring).
    pub shared: Option<SharedStack>,
    /// How the kernel's walk of the interpreter's frames ended, when it
    /// did not simply reach the outermost frame (Python).
    pub interp_note: Option<String>,
}

impl UserWalk {
    /// `complete`, `truncated` or `stopped: <why>` for dwarf walks;
    /// `none: <why>` when there is no user stack.
    pub fn end_str(&self) -> Option<String> {
        if let Some(why) = self.none {
            return Some(format!("none: {why}"));
        }
        self.end.as_ref().map(|e| match e {
            End::Complete => "complete".to_string(),
            End::Truncated => "truncated".to_string(),
            End::Stopped(why) => format!("stopped: {why}"),
        })
    }

    /// What the text output puts after "user stack".
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        match self.walk {
            Some(Walk::Dwarf) => parts.push("dwarf".into()),
            Some(Walk::FramePointers) => parts.push("frame pointers".into()),
            None => {}
        }
        match &self.end {
            Some(End::Truncated) => parts.push(
                "truncated: the stack copy ended before the outermost frame; raise --user-stack-size"
                    .into(),
            ),
            Some(End::Stopped(why)) => parts.push(format!("unwinding stopped: {why}")),
            Some(End::Complete) | None => {}
        }
        if let Some(n) = &self.note {
            parts.push(n.clone());
        }
        if let Some(shared) = self.shared {
            parts.push(shared.describe());
        }
        if let Some(why) = self.none {
            parts.push(format!("none: {why}"));
        }
        if let Some(n) = &self.interp_note {
            parts.push(n.clone());
        }
        parts.join("; ")
    }
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Sent => "sent",
            Direction::Received => "received",
        }
    }
}

// --- How a closing process ended (enrich makes it) ---

/// Who sent the signal that ended a process.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // `OomKiller` is the kernel's own name for it.
pub enum Killer {
    /// A process (kill(2), tgkill(2), ...).
    Process { pid: u32, comm: String },
    /// The OOM killer.
    OomKiller,
    /// The kernel itself (e.g. a fault, or a parent's death signal).
    Kernel,
    /// The process itself (raise(3), abort(3): a failed assertion).
    Itself,
}

/// Where a process crashed: the user stack of the thread that faulted (or
/// aborted), taken by the kernel in that thread at the signal, while its
/// memory still existed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Crash {
    pub tid: u32,
    pub signal: u32,
    /// Innermost first; the faulting instruction's function first.
    pub stack: Vec<Frame>,
}

/// How a process that closed a socket at its exit ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProcessEnd {
    /// Ended by a signal (`core_dumped`: the kernel wrote a core file).
    Signaled {
        signal: u32,
        core_dumped: bool,
        /// Who sent it, when the kernel saw it being sent.
        killer: Option<Killer>,
    },
    /// exit(2)/exit_group(2) with this status, without closing the socket.
    Exited {
        status: u32,
        /// A stop signal (SIGTERM, SIGINT, SIGHUP, SIGQUIT) it was sent
        /// before, and who sent it: a shutdown it handled by exiting.
        after_signal: Option<(u32, Option<Killer>)>,
    },
}

impl ProcessEnd {
    /// From a task's `exit_code` (wait(2) status form).
    pub fn from_exit_code(code: u32) -> Self {
        match code & 0x7f {
            0 => Self::Exited {
                status: (code >> 8) & 0xff,
                after_signal: None,
            },
            signal => Self::Signaled {
                signal,
                core_dumped: code & 0x80 != 0,
                killer: None,
            },
        }
    }
}

/// The name of a signal number as kill -l prints it (x86_64), or `SIG<n>`.
pub fn signal_name(sig: u32) -> String {
    const NAMES: [&str; 32] = [
        "",
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    match NAMES.get(sig as usize) {
        Some(n) if !n.is_empty() => (*n).to_string(),
        _ => format!("SIG{sig}"),
    }
}

/// Signals that mean the program crashed (a fault or an abort), not that
/// someone stopped it.
pub fn is_crash_signal(sig: u32) -> bool {
    // SIGQUIT SIGILL SIGTRAP SIGABRT SIGBUS SIGFPE SIGSEGV SIGSYS
    matches!(sig, 3 | 4 | 5 | 6 | 7 | 8 | 11 | 31)
}

// --- Processes (enrich makes them) ---

/// The process at the other end of a connection whose both ends are on
/// this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerProcess {
    pub pid: u32,
    /// The thread that wrote the request (kernel source only).
    pub tid: Option<u32>,
    pub comm: String,
    pub source: PeerSource,
    /// Its executable, read from /proc/PID/exe when it was found (the comm
    /// is whatever the process named itself with prctl).
    pub exe: Option<PeerExe>,
}

/// A peer's executable: what names a proxy, never the comm alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerExe {
    pub path: String,
    /// Owned by root and writable by no one else: a binary a local user
    /// could not have made, copied under a proxy's name, or replaced.
    pub root_owned: bool,
}

/// Which lookup named the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerSource {
    /// The kernel recorded the process that wrote the request on the
    /// client side of the connection: no race with the peer's close.
    Kernel,
    /// Found in userspace at the 101 (sock_diag, then /proc/<pid>/fd): only
    /// while the peer's socket still exists, the fallback.
    SocketTable,
}

impl PeerSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kernel => "kernel",
            Self::SocketTable => "socket_table",
        }
    }
}

/// What is known about a process besides its pid and comm.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcInfo {
    pub exe: Option<String>,
    pub cmdline: Option<String>,
    pub cgroup: Option<String>,
    pub container_id: Option<String>,
    /// The container (and Kubernetes pod) it runs in, named from the
    /// runtime's state (`enrich::container`); shared by its processes.
    pub container: Option<std::sync::Arc<Container>>,
}

/// A container and, on Kubernetes, its pod: names as the runtime and the
/// kubelet wrote them (chosen by whoever created them: escaped at output,
/// cut to 256 bytes when read).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    /// `docker`, `containerd`, `cri-o`, `podman`; None when the cgroup
    /// does not say and no state file was found.
    pub runtime: Option<&'static str>,
    pub name: Option<String>,
    pub image: Option<String>,
    pub pod_uid: Option<String>,
    pub pod_name: Option<String>,
    pub namespace: Option<String>,
    /// The container's name in its pod spec.
    pub k8s_container: Option<String>,
}

// --- What is traced ---

/// The local ports whose sockets are followed: every port (no `--port`,
/// the default), or the ports named, any number of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ports {
    All,
    Only(Vec<u16>),
}

impl Ports {
    /// From the `--port` values: none means every port.
    pub fn from_args(ports: &[u16]) -> Self {
        if ports.is_empty() {
            return Self::All;
        }
        let mut v = ports.to_vec();
        v.sort_unstable();
        v.dedup();
        Self::Only(v)
    }

    pub fn contains(&self, port: u16) -> bool {
        match self {
            Self::All => port != 0,
            Self::Only(v) => v.binary_search(&port).is_ok(),
        }
    }

    /// The kernel's port bitmap (`TRACED_PORTS`): (word, bits) for each word
    /// with a port set; empty for every port (the kernel then skips it).
    pub fn bitmap_words(&self) -> Vec<(u32, u64)> {
        let Self::Only(ports) = self else {
            return Vec::new();
        };
        let mut words: Vec<(u32, u64)> = Vec::new();
        for &p in ports {
            let (word, mask) = wstrace_common::port_bit(p);
            match words.iter_mut().find(|(w, _)| *w == word) {
                Some((_, bits)) => *bits |= mask,
                None => words.push((word, mask)),
            }
        }
        words
    }
}

impl std::fmt::Display for Ports {
    /// "ports (all)", or "port 1215,8080": the start-up line's words,
    /// which scripts wait for as `tracing port`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::All => f.write_str("ports (all)"),
            Self::Only(v) => {
                f.write_str("port ")?;
                for (i, p) in v.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{p}")?;
                }
                Ok(())
            }
        }
    }
}

/// `--pid` and `--exe`: which processes' upgraded sockets are reported
/// (the process that wrote the 101). Empty lists narrow nothing; with both
/// given a process matching either is reported.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope {
    pub pids: Vec<u32>,
    /// A path (with a `/`) matches the executable's full path; a bare name
    /// matches its file name.
    pub exes: Vec<String>,
}

impl Scope {
    pub fn is_everything(&self) -> bool {
        self.pids.is_empty() && self.exes.is_empty()
    }

    /// Is the process `pid`, whose executable is `exe` (if known), in scope?
    pub fn admits(&self, pid: u32, exe: Option<&str>) -> bool {
        if self.is_everything() || self.pids.contains(&pid) {
            return true;
        }
        let Some(exe) = exe else {
            return false;
        };
        // /proc/PID/exe of a deleted binary ends in " (deleted)".
        let exe = exe.strip_suffix(" (deleted)").unwrap_or(exe);
        let name = exe.rsplit('/').next().unwrap_or(exe);
        self.exes.iter().any(|want| {
            if want.contains('/') {
                want == exe
            } else {
                want == name
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_port_means_every_port() {
        let all = Ports::from_args(&[]);
        assert_eq!(all, Ports::All);
        assert!(all.contains(1215) && all.contains(65535) && !all.contains(0));
        assert!(all.bitmap_words().is_empty(), "the kernel needs no bitmap");
        assert_eq!(all.to_string(), "ports (all)");
    }

    #[test]
    fn any_number_of_ports_fill_the_bitmap() {
        // More than the 8 slots the kernel filter used to have.
        let named: Vec<u16> = (0..40)
            .map(|i| 1000 + i * 37)
            .chain([1215, 1215, 65535])
            .collect();
        let ports = Ports::from_args(&named);
        for &p in &named {
            assert!(ports.contains(p), "{p}");
        }
        assert!(!ports.contains(1001) && !ports.contains(80));
        let words = ports.bitmap_words();
        let set: u32 = words.iter().map(|(_, b)| b.count_ones()).sum();
        assert_eq!(set, 42, "each distinct port once");
        let has = |p: u16| {
            let (w, m) = wstrace_common::port_bit(p);
            words.iter().any(|&(ww, bits)| ww == w && bits & m != 0)
        };
        assert!(named.iter().all(|&p| has(p)));
        assert!(!has(1001) && !has(80));
        assert_eq!(Ports::from_args(&[8080, 80]).to_string(), "port 80,8080");
    }

    #[test]
    fn scope_narrows_by_pid_or_executable() {
        let all = Scope::default();
        assert!(all.admits(7, None), "no --pid/--exe: everything");
        let s = Scope {
            pids: vec![42],
            exes: vec!["nginx".into(), "/opt/app/bin/server".into()],
        };
        assert!(s.admits(42, None));
        assert!(s.admits(9, Some("/usr/sbin/nginx")));
        assert!(s.admits(9, Some("/usr/sbin/nginx (deleted)")));
        assert!(s.admits(9, Some("/opt/app/bin/server")));
        assert!(!s.admits(9, Some("/srv/server")), "a path must match whole");
        assert!(!s.admits(9, Some("/usr/bin/nginx-debug")));
        assert!(!s.admits(9, None), "unknown executable, other pid");
    }

    #[test]
    fn kernel_closes_are_named_by_their_errno() {
        let k = |errno| KernelClose { errno };
        assert_eq!(k(110).reason(), "tcp_timeout");
        assert_eq!(k(113).reason(), "tcp_timeout");
        assert_eq!(k(113).error_name(), "EHOSTUNREACH");
        assert_eq!(k(104).reason(), "reset_received");
        assert_eq!(k(32).reason(), "reset_received");
        assert!(k(104).is_reset() && !k(110).is_reset());
        assert_eq!(k(103).reason(), "aborted");
        assert_eq!(k(999).error_name(), "errno 999");
    }

    #[test]
    fn exit_codes_read_like_wait_status() {
        assert_eq!(
            ProcessEnd::from_exit_code(3 << 8),
            ProcessEnd::Exited {
                status: 3,
                after_signal: None
            }
        );
        assert_eq!(
            ProcessEnd::from_exit_code(0),
            ProcessEnd::Exited {
                status: 0,
                after_signal: None
            }
        );
        assert_eq!(
            ProcessEnd::from_exit_code(11 | 0x80),
            ProcessEnd::Signaled {
                signal: 11,
                core_dumped: true,
                killer: None
            }
        );
        assert_eq!(
            ProcessEnd::from_exit_code(9),
            ProcessEnd::Signaled {
                signal: 9,
                core_dumped: false,
                killer: None
            }
        );
        assert_eq!(signal_name(11), "SIGSEGV");
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(31), "SIGSYS");
        assert_eq!(signal_name(40), "SIG40");
        assert_eq!(signal_name(0), "SIG0");
        assert!(is_crash_signal(11) && is_crash_signal(6) && !is_crash_signal(9));
    }

    #[test]
    fn frames_are_json_objects_with_hex_addresses_and_read_back() {
        let f = Frame {
            function: Some("tcp_close".into()),
            offset: Some(0x1f),
            kind: FrameKind::Kernel,
            address: Some(0xffffffff81234567),
            ..Frame::default()
        };
        let json = serde_json::to_string(&f).expect("serialize");
        assert_eq!(
            json,
            r#"{"function":"tcp_close","offset":31,"module":null,"file":null,"line":null,"inlined":false,"kind":"kernel","language":null,"address":"0xffffffff81234567","unresolved":null}"#
        );
        assert_eq!(serde_json::from_str::<Frame>(&json).expect("read back"), f);
        let u = Frame {
            unresolved: Some(Unresolved::TimedOut),
            ..Frame::unknown(FrameKind::Native, 0x55, Some("/bin/x"))
        };
        let back: Frame =
            serde_json::from_str(&serde_json::to_string(&u).expect("serialize")).expect("read");
        assert_eq!(back, u);
        // Missing fields default; an address that is not "0x<hex>" is none.
        for bad in [r#""ffff""#, r#""0xzz""#, "12", "null", r#""0x""#] {
            let f: Frame = serde_json::from_str(&format!(r#"{{"function":"f","address":{bad}}}"#))
                .expect("lenient");
            assert_eq!(
                (f.function.as_deref(), f.address, f.kind),
                (Some("f"), None, FrameKind::Native)
            );
        }
    }

    #[test]
    fn no_user_stack_says_why_in_end_and_description() {
        let w = UserWalk {
            none: Some("closed at process exit"),
            ..UserWalk::default()
        };
        assert_eq!(w.end_str().as_deref(), Some("none: closed at process exit"));
        assert_eq!(w.describe(), "none: closed at process exit");
        let dwarf = UserWalk {
            walk: Some(Walk::Dwarf),
            end: Some(End::Complete),
            ..UserWalk::default()
        };
        assert_eq!(dwarf.end_str().as_deref(), Some("complete"));
        assert_eq!(dwarf.describe(), "dwarf");
    }

    #[test]
    fn a_close_without_its_own_stack_copy_says_so() {
        let same = UserWalk {
            walk: Some(Walk::Dwarf),
            end: Some(End::Complete),
            shared: Some(SharedStack::SameAs {
                id: 7,
                age_ms: 120,
                rate: 19_874,
            }),
            ..UserWalk::default()
        };
        assert_eq!(
            same.describe(),
            "dwarf; same as the copy made 120 ms earlier at this call site (elided rate: 19874/s)"
        );
        let elided = UserWalk {
            walk: Some(Walk::FramePointers),
            shared: Some(SharedStack::Elided { rate: 40 }),
            ..UserWalk::default()
        };
        assert_eq!(elided.describe(), "frame pointers; elided (rate: 40/s)");
        assert_eq!(SharedStack::Dropped.name(), "dropped");
        assert_eq!(
            CopyFate::SameAs { id: 1, rate: 2 }.elided_reason(),
            Some("budget")
        );
        assert_eq!(CopyFate::Elided { rate: 2 }.elided_reason(), Some("budget"));
        assert_eq!(CopyFate::Dropped.elided_reason(), Some("ring_full"));
        assert_eq!(CopyFate::Copied { id: 1 }.elided_reason(), None);
        assert_eq!(CopyFate::None.elided_reason(), None);
    }
}
