//! Every map the programs share. Sizes are defaults; the daemon may resize
//! them before loading (`EbpfLoader::map_max_entries`).
use aya_ebpf::{
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
};
use wstrace_common::{
    BUDGET_PROCESSES, HEAD_BUDGET, INTERP_PROCESSES, INTERP_STASHED, InterpConfig, InterpStack,
    PORT_WORDS, PeerWriter, ProcessBudget, SERVER_SLOTS as SERVER_SLOT_COUNT, STACK_SITES,
    SiteBudget, SockTuple, StackRecord, lost, probe_log::LogBudget,
};

use crate::ptr::{KPtr, UPtr};

/// A read in flight on a traced-port socket: where its bytes will land.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingRead {
    pub sk: KPtr,
    pub buf: UPtr,
    /// Bytes that fit at `buf` contiguously (the first iovec of a readv).
    pub cap: u64,
}

/// A thread inside `SSL_write` with a buffer worth recording (a 101 status
/// line or a control frame), waiting for the socket write that carries it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsWrite {
    /// Plaintext buffer and length given to `SSL_write`.
    pub buf: UPtr,
    pub len: u64,
    /// Which library's write: `FLAG_TLS_OPENSSL` or `FLAG_TLS_GO`.
    pub library: u32,
    /// `record::tls::TLS_UPGRADE` or `record::tls::TLS_CONTROL_FRAME`.
    pub kind: u8,
    pub _pad: [u8; 3],
}

/// A thread inside `SSL_read`: where the plaintext lands, and the socket
/// the thread read ciphertext from meanwhile (NULL until it does).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsRead {
    pub buf: UPtr,
    pub cap: u64,
    /// `SSL_read_ex`'s `size_t *readbytes` (NULL for `SSL_read`).
    pub readbytes: UPtr,
    pub sk: KPtr,
}

/// `--debug-probes`: each CPU's log budget (`crate::debug`); the daemon
/// sums `dropped` to say how many lines the rate limit cost.
#[map]
pub static LOG_BUDGET: PerCpuArray<LogBudget> = PerCpuArray::with_max_entries(1, 0);

/// Events to the daemon, in order across CPUs.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// The `--port` values, one bit per port (`wstrace_common::port_bit`),
/// filled by the daemon before it attaches; unused when every port is
/// traced (`KernelConfig::all_ports`). A map, not a global: a global array
/// indexed at run time is folded by LLVM before the daemon patches it.
#[map]
pub static TRACED_PORTS: Array<u64> = Array::with_max_entries(PORT_WORDS, 0);

/// `struct sock *` -> ktime of the 101 write. Only upgraded sockets on a
/// traced port live here; LRU so a flood of never-closed sockets cannot fill it.
#[map]
pub static UPGRADED: LruHashMap<KPtr, u64> = LruHashMap::with_max_entries(65536, 0);

/// `struct sock *` of sockets a listener on a traced port accepted (the
/// kernel moved them SYN_RECV -> ESTABLISHED: a passive open). Only these
/// can be upgraded server sockets: a client socket bound to the traced
/// port on another address (say 127.0.0.2:P) that writes a 101 is not one.
/// Removed when the socket is destroyed (its address may be reused); LRU
/// as the backstop. The daemon sizes it like UPGRADED (`--max-sockets`).
#[map]
pub static ACCEPTED: LruHashMap<KPtr, u8> = LruHashMap::with_max_entries(65536, 0);

/// Events the kernel could not send, per CPU, indexed by reason
/// (`wstrace_common::lost`). The daemon sums and reports them: a lost event
/// is never silent.
#[map]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(lost::REASONS, 0);

/// Process (tgid) -> its event budget while `EVENTS` is past half full
/// (`record::emit::fair_share`), and what it lost over it. LRU.
#[map]
pub static PROCESS_BUDGETS: LruHashMap<u32, ProcessBudget> =
    LruHashMap::with_max_entries(BUDGET_PROCESSES, 0);

/// Thread id -> the read it is in (entry to exit). Only reads on traced-port
/// sockets get here; LRU so a missed exit cannot leak.
#[map]
pub static PENDING_READS: LruHashMap<u32, PendingRead> = LruHashMap::with_max_entries(16384, 0);

/// `struct sock *` -> what its first read said and the bytes of request
/// head copied so far, for traced-port sockets not (yet) upgraded (Pixie's
/// `conn_info_map`): a socket whose first read was no request (a database
/// connection, the client end of HTTP) costs one lookup per read and no
/// copy from then on, and a busy plain-HTTP port is bounded by the head
/// budget. Value: bytes copied, or'd with the `HEAD_*` class bits below.
/// LRU: an evicted socket is classified again by its next read (from the
/// middle of its stream: a false "request" there costs one budgeted copy).
#[map]
pub static HEAD_BYTES: LruHashMap<KPtr, u32> = LruHashMap::with_max_entries(65536, 0);

/// `HEAD_BYTES` bit of a socket whose first bytes were a TLS handshake
/// record: raw reads are never copied (it is over the budget), and the
/// bytes counted below it are plaintext from `SSL_read`.
pub const HEAD_TLS: u32 = 0x8000_0000;

/// `HEAD_BYTES` value of a socket whose first read began with `HTTP`: the
/// client end of an HTTP connection, whose reads carry no request head.
/// Its writes are still classified (a keep-alive client's next request).
pub const HEAD_RESPONSE: u32 = 0x2000_0000;

/// `HEAD_BYTES` value of a socket whose first read was neither a request,
/// a response nor a TLS handshake: not HTTP. Its later reads stop at
/// `record::receive::reads_done`, its writes in the fentry and kprobe sets
/// at `record::known_not_http`: one lookup each, no copy.
pub const HEAD_NOT_HTTP: u32 = 0x4000_0000;

// Both classes read as "budget spent" wherever the count is compared.
const _: () = assert!(HEAD_RESPONSE >= HEAD_BUDGET && HEAD_NOT_HTTP >= HEAD_BUDGET);
const _: () = assert!(HEAD_RESPONSE & HEAD_TLS == 0 && HEAD_NOT_HTTP & HEAD_TLS == 0);

/// A socket and a direction (`DIR_RECEIVED`, `DIR_SENT`). Two fields, not
/// `sk | dir`: in the fentry set `sk` is a BTF pointer, on which the
/// verifier refuses bitwise operators.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SockDir {
    pub sk: KPtr,
    pub dir: u64,
}

/// Socket and direction -> bytes still missing of a control frame that the
/// socket's last read or write in that direction cut short: the next one
/// continues it and is copied too. Only upgraded sockets with a cut control
/// frame get here (rare: a frame header written on its own); LRU, and
/// emptied at destroy.
#[map]
pub static RESUME: LruHashMap<SockDir, u32> = LruHashMap::with_max_entries(1024, 0);

/// Index 0: until when (ktime ns) an entry of RESUME may be waiting, 0 when
/// none is. Writes that look like nothing else check it before walking to
/// their socket: one load on every write of the machine while it is 0.
#[map]
pub static RESUME_UNTIL: Array<u64> = Array::with_max_entries(1, 0);

/// Processes (tgid) that may read a request on a traced port: they accepted
/// a connection on one, listen on one (the daemon adds those), or wrote a
/// 101 on one. The tracepoint set walks fd -> sock on a read only for these:
/// every other read on the machine costs one lookup instead of the walk.
#[map]
pub static SERVERS: LruHashMap<u32, u8> = LruHashMap::with_max_entries(4096, 0);

/// Client-side socket tuple -> who wrote a request on it: the process at
/// the other end of a traced connection when both ends are on this host.
/// Only sockets whose *remote* port is traced and whose write starts with
/// `GET ` get here; LRU, so plain HTTP traffic to a traced port (whose
/// entries the daemon never asks for) cannot grow it.
#[map]
pub static PEER_WRITERS: LruHashMap<SockTuple, PeerWriter> = LruHashMap::with_max_entries(16384, 0);

/// Processes (tgid) that wrote a 101: the only targets whose signals are
/// recorded (every other signal on the machine costs one lookup). LRU.
#[map]
pub static UPGRADERS: LruHashMap<u32, u8> = LruHashMap::with_max_entries(4096, 0);

/// A direct-mapped front for SERVERS, read on every read-family syscall on
/// the machine: slot `server_slot(tgid)` holds the first server tgid that
/// fell there (0: none ever did). An array lookup is inlined by the verifier
/// (a load and a compare, no call), where a hash lookup is a call and a hash;
/// only a process whose slot another server holds pays the SERVERS lookup.
#[map]
pub static SERVER_SLOTS: Array<u32> = Array::with_max_entries(SERVER_SLOT_COUNT, 0);

/// One slot per CPU (indexed by CPU id) where a user stack copy is built
/// before it is sent cut to size: ~32 KiB is too big for the BPF stack and
/// for a per-CPU map value. The daemon sizes it to the possible CPUs when
/// the copy is on, and leaves 1 entry otherwise.
#[map]
pub static STACK_SCRATCH: Array<StackRecord> = Array::with_max_entries(1, 0);

/// User stack copies ([`StackRecord`]), apart from `EVENTS`: a close never
/// waits for, or is dropped for, a 16 KiB copy. The daemon sizes it.
#[map]
pub static STACKS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// Call site hash -> its stack copy budget (`ustack::copy_for_close`).
/// LRU: a process that makes up new call sites only evicts old budgets.
#[map]
pub static SITE_BUDGETS: LruHashMap<u64, SiteBudget> = LruHashMap::with_max_entries(STACK_SITES, 0);

/// Per CPU: how many stack copies this CPU has numbered (`StackRecord::id`).
#[map]
pub static STACK_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Thread id -> the `SSL_write` of a 101 or a control frame it is in, until
/// its next write on a traced-port socket. Only processes the daemon put
/// uprobes on get here, and only for those two kinds of buffer; LRU.
#[map]
pub static TLS_WRITES: LruHashMap<u32, TlsWrite> = LruHashMap::with_max_entries(4096, 0);

/// Thread id -> the `SSL_read` it is in (entry to return). LRU so a missed
/// return cannot leak.
#[map]
pub static TLS_READS: LruHashMap<u32, TlsRead> = LruHashMap::with_max_entries(16384, 0);

/// Thread id -> the traced-port TLS socket (first bytes a handshake, not
/// upgraded yet) it last read outside `SSL_read`: where an `SSL_read` that
/// reads no socket itself got its bytes (nginx reads ahead: the request
/// arrives with the handshake's last read). Taken when used; LRU.
#[map]
pub static TLS_LAST_READ: LruHashMap<u32, KPtr> = LruHashMap::with_max_entries(4096, 0);

/// Process (tgid) -> how to walk its interpreter's frames at a close
/// (`interp::stash`). The daemon adds the Python processes it finds
/// listening or upgrading; a close of any other process costs this lookup.
/// LRU: the daemon never has to clean it (pids are reused: a stale entry
/// costs a failed walk of the new process, which ends in a status).
#[map]
pub static INTERP_PROCS: LruHashMap<u32, InterpConfig> =
    LruHashMap::with_max_entries(INTERP_PROCESSES, 0);

/// Per CPU: the walk being written (`interp::stash`), too big for the
/// stack.
#[map]
pub static INTERP_SCRATCH: PerCpuArray<InterpStack> = PerCpuArray::with_max_entries(1, 0);

/// Per thread id: the interpreter frames walked at the entry of its
/// close(2)/shutdown(2), taken by the close program inside that call and
/// removed at its exit. LRU: a thread killed inside the call leaves an
/// entry that ages out.
#[map]
pub static INTERP_STASH: LruHashMap<u32, InterpStack> =
    LruHashMap::with_max_entries(INTERP_STASHED, 0);

/// Per CPU: the 64-byte window of one interpreter frame being read
/// (`interp::stash`), in a map value so its words can be picked at offsets
/// the daemon chose.
#[map]
pub static INTERP_WINDOW: PerCpuArray<[u64; 16]> = PerCpuArray::with_max_entries(1, 0);
