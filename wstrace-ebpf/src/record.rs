//! The one recording path every probe set feeds: mark a socket upgraded, and
//! turn what happens to an upgraded socket into ring-buffer events.
use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_USER_STACK, BPF_RB_AVAIL_DATA, BPF_RB_CONS_POS, BPF_RB_RING_SIZE},
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user_buf,
        generated::{
            bpf_get_current_comm as bpf_get_current_comm_raw, bpf_get_stack, bpf_jiffies64,
            bpf_probe_read_user,
        },
    },
    maps::ring_buf::RingBufEntry,
};
use wstrace_common::{
    CloseEvent, DATA_CAP, DIR_RECEIVED, DIR_SENT, DataEventOf, EventHeader, EventKind,
    FLAG_CONTINUES, FLAG_EXIT_CODE, FLAG_TASK_EXITING, FLAG_TLS_OPENSSL, HEAD_BUDGET, PeerWriter,
    ProbeSet, REQUEST_PREFIX, SMALL_DATA_CAP, STACK_DEPTH, SignalEvent, SockTuple,
    UPGRADE_PREFIX_LEN, is_upgrade_response,
};
use wstrace_common::{FAIR_SHARE_EVENTS, FAIR_SHARE_WINDOW, ProcessBudget, lost};
use wstrace_common::{
    FLAG_CLIENT_SIDE, FLAG_UPGRADE_READ, FirstRead, classify_first_read, probe_log,
};

use crate::{
    debug,
    kernel::{
        client_port_traced, config, current_exit_code, current_process_start_ns,
        current_task_exiting, fill_tuple, read, server_port_traced, sk_err, sk_is_tcp,
        sk_port_traced,
    },
    maps::{
        ACCEPTED, EVENTS, HEAD_BYTES, LOST, PEER_WRITERS, PENDING_READS, PROCESS_BUDGETS,
        PendingRead, RESUME, RESUME_UNTIL, SockDir, TLS_LAST_READ, TLS_READS, TLS_WRITES, TlsRead,
        TlsWrite, UPGRADED, UPGRADERS,
    },
    ustack,
};

/// Counts one event not sent, by `wstrace_common::lost` reason.
pub(crate) fn count_lost(reason: u32) {
    if let Some(lost) = LOST.get_ptr_mut(reason) {
        unsafe { *lost += 1 };
    }
}

/// May the current process add a `kind` event to `EVENTS`? Always while the
/// ring is under half full (one helper call each for its size and fill);
/// past half, only within its `FAIR_SHARE_EVENTS` per window (an eighth of
/// the ring read by the daemon), so a process that floods the ring cannot
/// crowd out another's close: what it loses is counted
/// (`lost::OVER_BUDGET`) and totalled in its budget entry for the daemon
/// to name it.
#[inline(always)]
fn fair_share(kind: EventKind) -> bool {
    let size = EVENTS.query(BPF_RB_RING_SIZE as u64);
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) < size / 2 {
        return true;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let read = EVENTS.query(BPF_RB_CONS_POS as u64);
    let Some(b) = PROCESS_BUDGETS.get_ptr_mut(&tgid) else {
        let fresh = ProcessBudget {
            window_cons_pos: read,
            events: 1,
            ..ProcessBudget::default()
        };
        // Without an entry (the map refused one) the event is sent: the
        // ring's own limit still holds.
        let _ = PROCESS_BUDGETS.insert(&tgid, &fresh, 0);
        return true;
    };
    unsafe {
        if read.wrapping_sub((*b).window_cons_pos) >= size / FAIR_SHARE_WINDOW {
            (*b).window_cons_pos = read;
            (*b).events = 0;
        }
        if (*b).events < FAIR_SHARE_EVENTS {
            (*b).events += 1;
            return true;
        }
        (*b).dropped += 1;
        if kind as u8 == EventKind::Close as u8 {
            (*b).dropped_closes += 1;
        } else if kind as u8 == EventKind::Upgrade as u8 {
            (*b).dropped_upgrades += 1;
        }
    }
    count_lost(lost::OVER_BUDGET);
    false
}

/// Reserves a `T` in `EVENTS` for a `kind` event, if the process is within
/// its fair share (`fair_share`) and the ring has room; counts it lost
/// otherwise.
#[inline(always)]
fn reserve<T: 'static>(kind: EventKind) -> Option<RingBufEntry<T>> {
    if !fair_share(kind) {
        return None;
    }
    let entry = EVENTS.reserve::<T>(0);
    if entry.is_none() {
        count_lost(lost::RING_FULL);
    }
    entry
}

/// Fills `*h`, which points into a reserved ring-buffer entry, field by field.
///
/// Why in place: building the 120-byte header on the BPF stack and copying it
/// in cost more than the 512-byte combined stack limit once a close's call
/// chain was added (kernels before 6.x have no private-stack relief), and the
/// verifier rejected the programs on 5.10-6.12. Ring-buffer memory is not
/// zeroed, so every field is written, padding included.
#[inline(always)]
unsafe fn fill_header(
    h: *mut EventHeader,
    kind: EventKind,
    probe: u8,
    sk: u64,
    old_state: u8,
    new_state: u8,
) {
    let pid_tgid = bpf_get_current_pid_tgid();
    unsafe {
        (*h).kind = kind as u8;
        (*h).probe = probe;
        (*h).old_state = old_state;
        (*h).new_state = new_state;
        (*h).pid = (pid_tgid >> 32) as u32;
        (*h).tid = pid_tgid as u32;
        (*h).flags = 0;
        (*h).arg = 0;
        (*h).jiffies = bpf_jiffies64() as u32;
        (*h).last_send_jiffies = read::<u32>(sk, config!(tcp_lsndtime)).unwrap_or(0);
        (*h).last_recv_jiffies = read::<u32>(sk, config!(icsk_lrcvtime)).unwrap_or(0);
        (*h).ts_ns = bpf_ktime_get_ns();
        (*h).sk = sk;
        (*h).bytes_received = read::<u64>(sk, config!(tcp_bytes_received)).unwrap_or(0);
        (*h).bytes_acked = read::<u64>(sk, config!(tcp_bytes_acked)).unwrap_or(0);
        (*h).process_start_ns = current_process_start_ns();
        fill_tuple(&raw mut (*h).tuple, sk);
        if bpf_get_current_comm_raw((&raw mut (*h).comm).cast(), 16) != 0 {
            (*h).comm = [0; 16];
        }
    }
}

/// An event that is just a header: reserve, fill in place, submit.
#[inline(always)]
fn emit_header(kind: EventKind, probe: u8, sk: u64, old_state: u8, new_state: u8) {
    let Some(mut entry) = reserve::<EventHeader>(kind) else {
        return;
    };
    unsafe { fill_header(entry.as_mut_ptr(), kind, probe, sk, old_state, new_state) };
    entry.submit(0);
}

/// What a write's first bytes say about it.
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// An HTTP/1.x 101 status line: the socket is being upgraded.
    Upgrade,
    /// A WebSocket control frame (close, ping or pong) starts at the first
    /// byte, or right after a first text or binary frame (only meaningful
    /// on upgraded sockets). `missing`: its bytes beyond the write (0: it
    /// ends inside), which the next write of the socket carries.
    ControlFrame {
        missing: u32,
    },
    /// Starts with `GET `: a request, if the socket's remote port is traced.
    Request,
    Other,
}

/// WebSocket frames start with FIN|opcode: 0x88 close, 0x89 ping, 0x8A pong
/// (control frames are never fragmented, so FIN is always set).
const WS_CLOSE: u8 = 0x88;
const WS_PONG: u8 = 0x8A;

/// The longest control frame: 2 header bytes, a client's 4-byte mask key
/// and at most 125 payload bytes.
const MAX_CONTROL: u64 = 131;

/// Is `b` the first byte of a close, ping or pong frame? One compare: the
/// three are consecutive. Data frames (0x81 text, 0x82 binary, fragments)
/// are not: a busy socket pays nothing per message.
#[inline(always)]
fn is_control_frame_start(b: u8) -> bool {
    b.wrapping_sub(WS_CLOSE) <= WS_PONG - WS_CLOSE
}

/// Bytes of the control frame whose second byte is `b1` that lie beyond the
/// `have` (>= 1) bytes there are of it; with only its first byte, the most
/// a control frame can have.
#[inline(always)]
fn control_missing(b1: u8, have: u64) -> u32 {
    let total = if have < 2 {
        MAX_CONTROL
    } else {
        2 + if b1 & 0x80 != 0 { 4 } else { 0 } + (b1 & 0x7F) as u64
    };
    if total > have {
        (total - have) as u32
    } else {
        0
    }
}

/// Does a control frame start in the `len` bytes at user address `buf`,
/// whose first bytes are `head` (little-endian; bytes 0-1 always, 2-3 when
/// `ext` is set)? At the first byte, or right after a first final text or
/// binary frame (a close after the last message, in one write). Returns the
/// bytes of it that lie beyond `len`.
///
/// The look past a data frame costs one 2-byte copy, and only for writes
/// that hold more than one frame whose first is short enough for the
/// control frame to fit in the copy (DATA_CAP); a socket that writes one
/// message per write never pays it.
#[inline(always)]
fn control_frame_in(buf: u64, len: u64, head: u64, ext: bool) -> Option<u32> {
    let b0 = head as u8;
    let b1 = (head >> 8) as u8;
    if is_control_frame_start(b0) {
        return Some(control_missing(b1, len));
    }
    // FIN text or binary; RSV1 may be set (permessage-deflate).
    let op = b0 & 0xBF;
    if (op != 0x81 && op != 0x82) || len < 2 {
        return None;
    }
    let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
    let at = match b1 & 0x7F {
        127 => return None,
        126 if !ext => return None,
        126 => 4 + mask + u16::from_be_bytes([(head >> 16) as u8, (head >> 24) as u8]) as u64,
        n => 2 + mask + n as u64,
    };
    if at >= len || at + MAX_CONTROL > DATA_CAP as u64 {
        return None;
    }
    let next = if at + 2 <= len {
        unsafe { aya_ebpf::helpers::bpf_probe_read_user((buf + at) as *const u16) }.ok()?
    } else {
        unsafe { aya_ebpf::helpers::bpf_probe_read_user((buf + at) as *const u8) }.ok()? as u16
    };
    if !is_control_frame_start(next as u8) {
        return None;
    }
    Some(control_missing((next >> 8) as u8, len - at))
}

/// The first 8 (or, for shorter buffers, 2 or 1) bytes at `buf`, as one
/// little-endian integer, and whether bytes 2-3 are in it.
#[inline(always)]
fn first_bytes(buf: u64, len: u64) -> Option<(u64, bool)> {
    unsafe {
        if len >= 8 {
            let w = aya_ebpf::helpers::bpf_probe_read_user(buf as *const u64).ok()?;
            Some((w, true))
        } else if len >= 2 {
            let w = aya_ebpf::helpers::bpf_probe_read_user(buf as *const u16).ok()?;
            Some((w as u64, false))
        } else {
            let w = aya_ebpf::helpers::bpf_probe_read_user(buf as *const u8).ok()?;
            Some((w as u64, false))
        }
    }
}

/// The first 8 bytes of a 101 status line, as one little-endian integer.
const HTTP_1_1: u64 = u64::from_le_bytes(*b"HTTP/1.1");
const HTTP_1_0: u64 = u64::from_le_bytes(*b"HTTP/1.0");

/// Classifies a write from its first bytes. Runs on every write on the
/// machine (before the fd walk and the port check, which cost more), so the
/// common case is one 8-byte copy compared as integers: the full status line
/// is read only when those 8 bytes are `HTTP/1.x`.
#[inline(always)]
pub fn classify_write(buf: u64, len: u64) -> Write {
    if buf == 0 || len == 0 {
        return Write::Other;
    }
    let Some((word, ext)) = first_bytes(buf, len) else {
        return Write::Other;
    };
    if let Some(missing) = control_frame_in(buf, len, word, ext) {
        return Write::ControlFrame { missing };
    }
    if len < 8 {
        return Write::Other;
    }
    if word as u32 == u32::from_le_bytes(REQUEST_PREFIX) {
        return Write::Request;
    }
    if len < UPGRADE_PREFIX_LEN as u64 || (word != HTTP_1_1 && word != HTTP_1_0) {
        return Write::Other;
    }
    let mut head = [0u8; UPGRADE_PREFIX_LEN];
    if unsafe { bpf_probe_read_user_buf(buf as *const u8, &mut head) }.is_err() {
        return Write::Other;
    }
    if is_upgrade_response(&head) {
        Write::Upgrade
    } else {
        Write::Other
    }
}

/// The local end of `sk` wrote a 101: start tracing the socket. Callers have
/// already checked the port. `flags`: [`FLAG_TLS_OPENSSL`] when the 101 was
/// seen in `SSL_write`, else 0.
pub fn mark_upgraded(sk: u64, write_len: u64, probe: ProbeSet, flags: u32) {
    // A server socket is one a listener on the port accepted: a client
    // socket bound to the port writing a 101 forges nothing. The client
    // side (it *read* the 101 on a socket it connected) is never accepted;
    // a process that fakes its own server only misleads about itself.
    if !sk_is_tcp(sk) {
        debug::note(probe_log::IGNORED_NOT_TCP, sk, write_len);
        return;
    }
    if flags & FLAG_CLIENT_SIDE == 0 && ACCEPTED.get_ptr(sk).is_none() {
        count_lost(lost::NOT_ACCEPTED);
        debug::note(probe_log::IGNORED_NOT_ACCEPTED, sk, write_len);
        return;
    }
    let Some(mut entry) = reserve::<EventHeader>(EventKind::Upgrade) else {
        debug::note(probe_log::IGNORED_LOST, sk, write_len);
        return;
    };
    let h = entry.as_mut_ptr();
    let ts_ns = unsafe {
        fill_header(h, EventKind::Upgrade, probe as u8, sk, 0, 0);
        (*h).arg = write_len as u32;
        (*h).flags = flags;
        (*h).ts_ns
    };
    if UPGRADED.insert(sk, ts_ns, 0).is_err() {
        entry.discard(0);
        count_lost(lost::MAP_FULL);
        debug::note(probe_log::IGNORED_MAP_FULL, sk, write_len);
        return;
    }
    debug::note(
        if flags & FLAG_CLIENT_SIDE != 0 {
            probe_log::UPGRADE_CLIENT
        } else {
            probe_log::UPGRADE_SERVER
        },
        sk,
        write_len,
    );
    // The head is complete once the server answers it.
    let _ = HEAD_BYTES.remove(sk);
    // Its signals count from now on (how it ends may explain the close).
    let _ = UPGRADERS.insert((bpf_get_current_pid_tgid() >> 32) as u32, 1, 0);
    entry.submit(0);
}

/// The current task wrote a request on `sk`, the client side of a
/// connection to a traced port (callers checked the remote port): remember
/// who, by the socket's tuple, for the daemon to name the peer with. Written
/// in the writer's own context, so it holds however soon the client closes.
#[inline(always)]
pub fn note_request_writer(sk: u64) {
    let mut key = SockTuple::default();
    // Every byte of the key is written (zeros where unreadable), so the
    // daemon can build the same bytes from the server's tuple.
    unsafe { fill_tuple(&raw mut key, sk) };
    let pid_tgid = bpf_get_current_pid_tgid();
    let mut w = PeerWriter {
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        process_start_ns: current_process_start_ns(),
        comm: [0; 16],
    };
    if unsafe { bpf_get_current_comm_raw((&raw mut w.comm).cast(), 16) } != 0 {
        w.comm = [0; 16];
    }
    let _ = PEER_WRITERS.insert(&key, &w, 0);
    debug::note(probe_log::REQUEST_WRITTEN, sk, 0);
}

/// Is `sk` a traced, upgraded socket? Port first: unrelated sockets never
/// reach the map.
#[inline(always)]
pub fn is_upgraded(sk: u64) -> bool {
    sk != 0 && sk_tuple_port_ok(sk) && UPGRADED.get_ptr(sk).is_some()
}

/// With every port traced, the port is not even read; else either end's
/// port (`kernel::sk_port_traced`: the client side of a connection to a
/// traced port is followed too).
#[inline(always)]
fn sk_tuple_port_ok(sk: u64) -> bool {
    config!(all_ports) != 0 || sk_port_traced(sk)
}

/// A TCP state transition of an upgraded socket. A move to CLOSE carries
/// `sk_err`: the kernel sets it before closing a socket on its own (a
/// timeout, a reset received, an abort), and not for a local close.
pub fn state_change(sk: u64, old_state: u8, new_state: u8) {
    let Some(mut entry) = reserve::<EventHeader>(EventKind::State) else {
        return;
    };
    let h = entry.as_mut_ptr();
    unsafe {
        fill_header(h, EventKind::State, 0, sk, old_state, new_state);
        if new_state == wstrace_common::tcp_state::CLOSE {
            (*h).arg = sk_err(sk);
        }
    }
    entry.submit(0);
}

/// A process is closing an upgraded socket: who, and the call path.
/// `new_state` is 0 when the caller runs before the transition (tcp_close).
///
/// The close is built in place in `EVENTS`; a user stack copy, when asked
/// for (`user_stack_bytes`) and within its call site's budget, goes to the
/// `STACKS` ring before the close is submitted (`ustack::copy_for_close`).
pub fn close<C: EbpfContext>(ctx: &C, probe: ProbeSet, sk: u64, old_state: u8, new_state: u8) {
    let Some(mut entry) = reserve::<CloseEvent>(EventKind::Close) else {
        return;
    };
    let ev = entry.as_mut_ptr();
    unsafe {
        fill_close(
            ctx,
            ev,
            EventKind::Close,
            probe as u8,
            sk,
            old_state,
            new_state,
        );
        ustack::copy_for_close(ev);
    }
    entry.submit(0);
}

/// The current thread of a process that wrote a 101 faulted or aborted
/// (`signal`): its stacks now, at the signal, are where it crashed; by
/// the time its sockets close at exit its memory is gone. A close event's
/// layout (and its user stack copy, under the same per-site budget).
pub fn crash<C: EbpfContext>(ctx: &C, signal: u32) {
    let Some(mut entry) = reserve::<CloseEvent>(EventKind::Crash) else {
        return;
    };
    let ev = entry.as_mut_ptr();
    unsafe {
        fill_close(ctx, ev, EventKind::Crash, 0, 0, 0, 0);
        (*ev).header.arg = signal;
        ustack::copy_for_close(ev);
    }
    entry.submit(0);
}

/// Fills a close (or crash) event (header and both frame-pointer stacks)
/// at `ev`.
#[inline(always)]
unsafe fn fill_close<C: EbpfContext>(
    ctx: &C,
    ev: *mut CloseEvent,
    kind: EventKind,
    probe: u8,
    sk: u64,
    old_state: u8,
    new_state: u8,
) {
    const STACK_BYTES: u32 = (STACK_DEPTH * 8) as u32;
    unsafe {
        let h = &raw mut (*ev).header;
        fill_header(h, kind, probe, sk, old_state, new_state);
        if current_task_exiting() {
            (*h).flags |= FLAG_TASK_EXITING;
            // How the process ended: exit status, or the signal that ended it.
            if let Some(code) = current_exit_code() {
                (*h).flags |= FLAG_EXIT_CODE;
                (*h).arg = code;
            }
        }
        (*ev).kernel_stack_len = bpf_get_stack(
            ctx.as_ptr(),
            (*ev).kernel_stack.as_mut_ptr().cast(),
            STACK_BYTES,
            0,
        );
        (*ev).user_stack_len = bpf_get_stack(
            ctx.as_ptr(),
            (*ev).user_stack.as_mut_ptr().cast(),
            STACK_BYTES,
            BPF_F_USER_STACK as u64,
        );
        crate::interp::take(&raw mut (*ev).interp);
    }
}

/// Is `tgid` a process that wrote a 101 (its signals are recorded)?
#[inline(always)]
pub fn is_upgrader(tgid: u32) -> bool {
    UPGRADERS.get_ptr(tgid).is_some()
}

/// A signal (or an OOM kill) aimed at a process that wrote a 101: the
/// header names the current task, the sender.
pub fn signal(target_pid: u32, signal: u32, code: i32, oom: u32) {
    let Some(mut entry) = reserve::<SignalEvent>(EventKind::Signal) else {
        return;
    };
    let ev = entry.as_mut_ptr();
    unsafe {
        fill_header(&raw mut (*ev).header, EventKind::Signal, 0, 0, 0, 0);
        (*ev).target_pid = target_pid;
        (*ev).signal = signal;
        (*ev).code = code;
        (*ev).oom = oom;
    }
    entry.submit(0);
}

pub fn reset(sk: u64, kind: EventKind) {
    emit_header(kind, 0, sk, 0, 0);
}

const _: () = assert!(FLAG_TLS_OPENSSL & 1 == 0 && wstrace_common::FLAG_TLS_GO & 1 == 0);

/// Copies up to `DATA_CAP` of the `len` bytes at user address `buf` into a
/// data event that also says `total`, the bytes the read or write moved in
/// all (more than were copied: the daemon knows it has only the start).
/// `dir_flags`: the direction (`DIR_RECEIVED` 0, `DIR_SENT` 1) or'd with
/// the header flags (`FLAG_CONTINUES`), one argument: a BPF function takes
/// five at most.
const _: () = assert!(DIR_RECEIVED == 0 && DIR_SENT == 1 && FLAG_CONTINUES & 1 == 0);
fn emit_data(sk: u64, buf: u64, len: u64, total: u64, dir_flags: u32) {
    // The smallest record class that holds the bytes: under churn every
    // upgrade's request head fits the small one, a third of the ring space.
    if len <= SMALL_DATA_CAP as u64 {
        emit_data_in::<SMALL_DATA_CAP>(sk, buf, len, total, dir_flags);
    } else {
        emit_data_in::<DATA_CAP>(sk, buf, len, total, dir_flags);
    }
}

/// `emit_data` in a record of `N` data bytes (copies at most `N`).
#[inline(always)]
fn emit_data_in<const N: usize>(sk: u64, buf: u64, len: u64, total: u64, dir_flags: u32) {
    let direction = dir_flags & 1;
    let flags = dir_flags & !1;
    let Some(mut entry) = reserve::<DataEventOf<N>>(EventKind::Data) else {
        return;
    };
    let ev = entry.as_mut_ptr();
    // Bounded for the verifier: 0 < n <= N.
    let n = if len > N as u64 { N as u32 } else { len as u32 };
    unsafe {
        fill_header(&raw mut (*ev).header, EventKind::Data, 0, sk, 0, 0);
        (*ev).header.flags = flags;
        (*ev).header.arg = if total > u32::MAX as u64 {
            u32::MAX
        } else {
            total as u32
        };
        (*ev).direction = direction;
        let rc = bpf_probe_read_user((*ev).data.as_mut_ptr().cast(), n, buf as *const _);
        (*ev).len = if rc == 0 { n } else { 0 };
    }
    entry.submit(0);
}

/// How long a cut control frame waits for the read or write that continues
/// it: the two halves of a split write come microseconds apart.
const RESUME_WINDOW_NS: u64 = 1_000_000_000;

/// May a cut control frame be waiting for its rest (see `maps::RESUME`)?
/// One array load while none is; the clock is read only when one was cut
/// in the last second.
#[inline(always)]
pub fn resume_window_open() -> bool {
    let Some(until) = RESUME_UNTIL.get_ptr_mut(0) else {
        return false;
    };
    let u = unsafe { *until };
    if u == 0 {
        return false;
    }
    // SAFETY: a helper without arguments.
    if unsafe { bpf_ktime_get_ns() } < u {
        return true;
    }
    // Closed: later writes skip the clock.
    unsafe { *until = 0 };
    false
}

/// The control frame `sk`'s last read or write in `dir` began is `missing`
/// bytes short: the next one carries the rest.
#[inline(always)]
fn expect_rest(sk: u64, dir: u32, missing: u64) {
    let key = SockDir {
        sk,
        dir: dir as u64,
    };
    if RESUME.insert(&key, &(missing as u32), 0).is_ok()
        && let Some(until) = RESUME_UNTIL.get_ptr_mut(0)
    {
        // SAFETY: `until` points into the map's value; the helper takes no
        // arguments.
        unsafe { *until = bpf_ktime_get_ns() + RESUME_WINDOW_NS };
    }
}

/// If `sk`'s last read or write in `dir` cut a control frame, this one
/// (`total` bytes, `len` of them at `buf`) continues it: copied, flagged
/// [`FLAG_CONTINUES`]. True when it was.
#[inline(always)]
fn continue_frame(sk: u64, dir: u32, buf: u64, len: u64, total: u64) -> bool {
    let key = SockDir {
        sk,
        dir: dir as u64,
    };
    let Some(m) = RESUME.get_ptr(&key) else {
        return false;
    };
    let missing = unsafe { *m } as u64;
    emit_data(sk, buf, len, total, dir | FLAG_CONTINUES);
    if total >= missing {
        let _ = RESUME.remove(&key);
    } else {
        let _ = RESUME.insert(&key, &((missing - total) as u32), 0);
    }
    true
}

/// A write on a traced-port socket that holds a control frame (`missing`:
/// its bytes beyond the write), or, with None, one that may continue a
/// control frame cut before: recorded if the socket is upgraded. Data
/// frames are not: idle time comes from the socket's own timestamps, so
/// busy sockets pay nothing per message; pings come every few seconds.
///
/// `len` bytes at `buf` are contiguous, of `total` written; `second` is the
/// next piece of the same write (a writev's second iovec: a frame header
/// and its payload in two buffers), copied as the frame's continuation.
#[inline(always)]
pub fn frames_written(
    sk: u64,
    buf: u64,
    len: u64,
    total: u64,
    control: Option<u32>,
    second: Option<(u64, u64)>,
) {
    if !is_upgraded(sk) {
        return;
    }
    if resume_window_open() && continue_frame(sk, DIR_SENT, buf, len, total) {
        return;
    }
    let Some(missing) = control else {
        return;
    };
    if missing == 0 {
        emit_data(sk, buf, len, total, DIR_SENT);
        return;
    }
    // The frame runs past this buffer: all of it was copied (the daemon
    // keeps it for its rest), and the rest comes next.
    emit_data(sk, buf, len, len, DIR_SENT);
    let mut missing = missing as u64;
    if let Some((buf2, len2)) = second
        && buf2 != 0
        && len2 != 0
    {
        emit_data(sk, buf2, len2, len2, DIR_SENT | FLAG_CONTINUES);
        if len2 >= missing {
            return;
        }
        missing -= len2;
    }
    expect_rest(sk, DIR_SENT, missing);
}

/// Entry of a read on `sk`: remember where its bytes go and how many fit
/// there contiguously (`cap`: a copy never reads past the buffer), if the
/// socket is on a traced port (checked first: other sockets touch no map)
/// and its reads may still matter ([`reads_done`]: one lookup).
#[inline(always)]
pub fn read_entry(sk: u64, buf: u64, cap: u64) {
    if sk == 0 || buf == 0 || !sk_port_traced(sk) || reads_done(sk) {
        return;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    let _ = PENDING_READS.insert(tid, PendingRead { sk, buf, cap }, 0);
}

/// Exit of a read that returned `ret`: before the upgrade, copy the request
/// head (bounded per socket), or, when the socket's first read is a 101,
/// mark it upgraded as the client side; after it, reads that hold a control
/// frame (close, ping, pong: at the start or after a first data frame) or
/// continue one the last read cut.
#[inline(always)]
pub fn read_exit(ret: i64, probe: ProbeSet) {
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(p) = PENDING_READS.get_ptr(tid) else {
        return;
    };
    let PendingRead { sk, buf, cap } = unsafe { *p };
    let _ = PENDING_READS.remove(tid);
    // Ciphertext read inside SSL_read: its plaintext is copied at the
    // return instead (a record body may start with any byte, a close
    // frame's 0x88 included).
    if tls_socket_read(sk) {
        return;
    }
    if ret <= 0 {
        return;
    }
    let total = ret as u64;
    let len = if total < cap { total } else { cap };
    if UPGRADED.get_ptr(sk).is_some() {
        if resume_window_open() && continue_frame(sk, DIR_RECEIVED, buf, len, total) {
            return;
        }
        let Some((head, ext)) = first_bytes(buf, len) else {
            return;
        };
        if let Some(missing) = control_frame_in(buf, len, head, ext) {
            if missing == 0 || len < total {
                emit_data(sk, buf, len, total, DIR_RECEIVED);
            } else {
                emit_data(sk, buf, len, len, DIR_RECEIVED);
                expect_rest(sk, DIR_RECEIVED, missing as u64);
            }
        }
        return;
    }
    let copied = match HEAD_BYTES.get_ptr(sk) {
        Some(c) => unsafe { *c },
        None => 0,
    };
    if copied & HEAD_TLS != 0 {
        note_tls_read(sk);
        return;
    }
    if copied >= HEAD_BUDGET {
        return;
    }
    if copied == 0 {
        // The socket's first read says what it is, once.
        match classify_first_read_at(buf, len) {
            First::Tls => {
                // A ClientHello: the head will come in plaintext from
                // SSL_read, if the process's TLS library has uprobes;
                // ciphertext is no head.
                let _ = HEAD_BYTES.insert(sk, HEAD_TLS, 0);
                note_tls_read(sk);
                debug::note(probe_log::FIRST_READ_TLS, sk, total);
                return;
            }
            First::Class(FirstRead::Response) => {
                // The client end of an HTTP connection: a 101 as its first
                // response makes it the client side of a WebSocket, if it
                // connected to a traced port (the `--port` rule).
                if starts_with_101(buf, len) && client_port_traced(sk) {
                    mark_upgraded(sk, total, probe, FLAG_CLIENT_SIDE);
                    // The server's first frames may share the segment (a
                    // close right after the handshake): the daemon finds
                    // them after the head.
                    emit_data(sk, buf, len, total, DIR_RECEIVED | FLAG_UPGRADE_READ);
                } else {
                    let _ = HEAD_BYTES.insert(sk, HEAD_RESPONSE, 0);
                    debug::note(probe_log::FIRST_READ_RESPONSE, sk, total);
                }
                return;
            }
            First::Class(FirstRead::Other) => {
                let _ = HEAD_BYTES.insert(sk, HEAD_NOT_HTTP, 0);
                debug::note(probe_log::FIRST_READ_NOT_HTTP, sk, total);
                return;
            }
            First::Class(FirstRead::Request) => {
                debug::note(probe_log::FIRST_READ_REQUEST, sk, total);
            }
            // Too short to tell: copied as a head.
            First::Short => {}
        }
    }
    let _ = HEAD_BYTES.insert(sk, copied + len.min(DATA_CAP as u64) as u32, 0);
    emit_data(sk, buf, len, total, DIR_RECEIVED);
}

/// `HEAD_BYTES` bit of a socket whose first bytes were a TLS handshake
/// record: raw reads are never copied (it is over the budget), and the
/// bytes counted below it are plaintext from `SSL_read`.
const HEAD_TLS: u32 = 0x8000_0000;

/// `HEAD_BYTES` value of a socket whose first read began with `HTTP`: the
/// client end of an HTTP connection, whose reads carry no request head.
/// Its writes are still classified (a keep-alive client's next request).
pub const HEAD_RESPONSE: u32 = 0x2000_0000;

/// `HEAD_BYTES` value of a socket whose first read was neither a request,
/// a response nor a TLS handshake: not HTTP. Its later reads stop at
/// [`reads_done`], its writes in the fentry and kprobe sets at
/// [`known_not_http`]: one lookup each, no copy.
pub const HEAD_NOT_HTTP: u32 = 0x4000_0000;

// Both classes read as "budget spent" wherever the count is compared.
const _: () = assert!(HEAD_RESPONSE >= HEAD_BUDGET && HEAD_NOT_HTTP >= HEAD_BUDGET);
const _: () = assert!(HEAD_RESPONSE & HEAD_TLS == 0 && HEAD_NOT_HTTP & HEAD_TLS == 0);

/// Has `sk` nothing more to give its reads before an upgrade: classified as
/// no request, or its head budget spent? Not TLS sockets: each of their raw
/// reads says which socket the thread's `SSL_read` is using.
#[inline(always)]
fn reads_done(sk: u64) -> bool {
    match HEAD_BYTES.get_ptr(sk) {
        Some(c) => {
            let c = unsafe { *c };
            c & HEAD_TLS == 0 && c >= HEAD_BUDGET
        }
        None => false,
    }
}

/// Was `sk`'s first read neither HTTP nor TLS? Such a socket never answers
/// a request with a 101 (the fentry and kprobe sets skip its writes: one
/// lookup instead of the msghdr walk and a user copy).
#[inline(always)]
pub fn known_not_http(sk: u64) -> bool {
    matches!(HEAD_BYTES.get_ptr(sk), Some(c) if unsafe { *c } == HEAD_NOT_HTTP)
}

/// A first read, by its first bytes.
enum First {
    /// The first byte of a TLS handshake record (0x16): what a client's
    /// first byte is on a TLS connection, and no HTTP request's (nginx
    /// peeks at exactly one byte to tell TLS from plaintext).
    Tls,
    Class(FirstRead),
    /// Under four bytes (or unreadable): nothing to tell by.
    Short,
}

/// Do the `len` bytes at user address `buf` start with a 101 status line?
#[inline(always)]
fn starts_with_101(buf: u64, len: u64) -> bool {
    if len < UPGRADE_PREFIX_LEN as u64 {
        return false;
    }
    let mut head = [0u8; UPGRADE_PREFIX_LEN];
    unsafe { bpf_probe_read_user_buf(buf as *const u8, &mut head) }.is_ok()
        && is_upgrade_response(&head)
}

#[inline(always)]
fn classify_first_read_at(buf: u64, len: u64) -> First {
    if len < 4 {
        return match unsafe { aya_ebpf::helpers::bpf_probe_read_user(buf as *const u8) } {
            Ok(0x16) => First::Tls,
            _ => First::Short,
        };
    }
    match unsafe { aya_ebpf::helpers::bpf_probe_read_user(buf as *const u32) } {
        Ok(w) if w as u8 == 0x16 => First::Tls,
        Ok(w) => First::Class(classify_first_read(w)),
        Err(_) => First::Short,
    }
}

// --- TLS: plaintext from uprobes on SSL_write / SSL_read, tied to the
// socket the same thread writes or reads next (no OpenSSL struct offsets).

/// `TlsWrite::kind`: the plaintext is a 101, or a control frame.
pub const TLS_UPGRADE: u8 = 1;
pub const TLS_CONTROL_FRAME: u8 = 2;

/// `SSL_write`/`SSL_write_ex` entry: if the plaintext is a 101 or a control
/// frame, remember it for this thread's next write on a traced-port socket.
/// Every other buffer costs one 8-byte read.
#[inline(always)]
pub fn tls_write_entry(buf: u64, len: u64, library: u32) {
    let kind = match classify_write(buf, len) {
        Write::Upgrade => TLS_UPGRADE,
        Write::ControlFrame { .. } => TLS_CONTROL_FRAME,
        _ => return,
    };
    let tid = bpf_get_current_pid_tgid() as u32;
    let w = TlsWrite {
        buf,
        len,
        library,
        kind,
        _pad: [0; 3],
    };
    let _ = TLS_WRITES.insert(tid, w, 0);
}

/// On a write to a traced-port socket whose bytes say nothing (TLS
/// records): the `SSL_write` this thread is in, if it holds a 101 or a
/// control frame; taken, so it applies to one socket only.
#[inline(always)]
pub fn take_tls_write() -> Option<TlsWrite> {
    if config!(tls) == 0 {
        return None;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    let w = unsafe { *TLS_WRITES.get_ptr(tid)? };
    let _ = TLS_WRITES.remove(tid);
    Some(w)
}

/// The socket write that carries a remembered `SSL_write`: `socket_len`
/// is the ciphertext length (what the byte counters count).
#[inline(always)]
pub fn tls_socket_write(sk: u64, w: TlsWrite, socket_len: u64, probe: ProbeSet) {
    if w.kind == TLS_UPGRADE {
        mark_upgraded(sk, socket_len, probe, w.library);
    } else if is_upgraded(sk) {
        emit_data(
            sk,
            w.buf,
            w.len,
            w.len,
            wstrace_common::DIR_SENT | w.library,
        );
    }
}

/// `SSL_read`/`SSL_read_ex` entry: where the plaintext will land.
#[inline(always)]
pub fn tls_read_entry(buf: u64, cap: u64, readbytes: u64) {
    if buf == 0 {
        return;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    let r = TlsRead {
        buf,
        cap,
        readbytes,
        sk: 0,
    };
    let _ = TLS_READS.insert(tid, r, 0);
}

/// A socket read by a thread inside `SSL_read` carries ciphertext: note
/// the socket for the plaintext and tell the caller to copy nothing.
#[inline(always)]
fn tls_socket_read(sk: u64) -> bool {
    if config!(tls) == 0 {
        return false;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    match TLS_READS.get_ptr_mut(tid) {
        Some(r) => {
            unsafe { (*r).sk = sk };
            true
        }
        None => false,
    }
}

/// This thread read ciphertext from TLS socket `sk` outside `SSL_read`.
#[inline(always)]
fn note_tls_read(sk: u64) {
    if config!(tls) != 0 {
        let tid = bpf_get_current_pid_tgid() as u32;
        let _ = TLS_LAST_READ.insert(tid, sk, 0);
    }
}

/// `SSL_read`/`SSL_read_ex` return, `n` plaintext bytes at the entry's
/// buffer (`n <= 0`: none): before the upgrade they are the request head
/// (budgeted like raw reads), after it a control frame is copied.
#[inline(always)]
pub fn tls_read_return(n: i64, ex: bool) {
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(p) = TLS_READS.get_ptr(tid) else {
        return;
    };
    let TlsRead {
        buf,
        cap,
        readbytes,
        sk,
    } = unsafe { *p };
    let _ = TLS_READS.remove(tid);
    // SSL_read_ex returns 1 on success and the count through `readbytes`.
    let n = if ex {
        if n != 1 || readbytes == 0 {
            return;
        }
        match unsafe { aya_ebpf::helpers::bpf_probe_read_user(readbytes as *const u64) } {
            Ok(v) => v,
            Err(_) => return,
        }
    } else if n <= 0 {
        return;
    } else {
        n as u64
    };
    if n == 0 {
        return;
    }
    // No socket read in this call: the library had the bytes already,
    // read ahead with the handshake's last read on this thread (nginx).
    let (sk, read_ahead) = if sk != 0 {
        (sk, false)
    } else {
        match TLS_LAST_READ.get_ptr(tid) {
            Some(s) => {
                let s = unsafe { *s };
                let _ = TLS_LAST_READ.remove(tid);
                (s, true)
            }
            // Nothing read on a traced-port TLS socket: another port.
            None => return,
        }
    };
    tls_plaintext_read(sk, buf, cap, n, read_ahead, FLAG_TLS_OPENSSL);
}

/// The thread left the TLS library's read by another way than its return
/// probe (Go: a RET probe, maybe on another thread than the entry's).
#[inline(always)]
pub fn tls_read_abandon() {
    let tid = bpf_get_current_pid_tgid() as u32;
    let _ = TLS_READS.remove(tid);
}

/// `n` plaintext bytes a TLS library read from traced-port socket `sk`
/// into `buf` (`cap` of them fit there): before the upgrade they are the
/// request head (budgeted like raw reads), after it a control frame is
/// copied. `read_ahead`: the socket is only this thread's last one read,
/// trusted for the head alone. `library`: `FLAG_TLS_OPENSSL` or
/// `FLAG_TLS_GO`.
#[inline(always)]
pub fn tls_plaintext_read(sk: u64, buf: u64, cap: u64, n: u64, read_ahead: bool, library: u32) {
    let len = if n < cap { n } else { cap };
    if UPGRADED.get_ptr(sk).is_some() {
        // Read ahead is only trusted for the request head: a later read on
        // this thread may belong to any of its connections.
        if read_ahead {
            return;
        }
        let first =
            unsafe { aya_ebpf::helpers::bpf_probe_read_user(buf as *const u8) }.unwrap_or(0);
        if is_control_frame_start(first) {
            emit_data(sk, buf, len, n, wstrace_common::DIR_RECEIVED | library);
        }
        return;
    }
    let copied = match HEAD_BYTES.get_ptr(sk) {
        Some(c) => (unsafe { *c }) & !HEAD_TLS,
        None => 0,
    };
    if copied >= HEAD_BUDGET {
        return;
    }
    let _ = HEAD_BYTES.insert(sk, HEAD_TLS | (copied + len.min(DATA_CAP as u64) as u32), 0);
    emit_data(sk, buf, len, n, wstrace_common::DIR_RECEIVED | library);
}

/// The kernel is destroying an upgraded socket: forget it (its address may be
/// reused by the next socket) and tell the daemon.
pub fn destroy(sk: u64) {
    let _ = UPGRADED.remove(sk);
    for dir in [DIR_RECEIVED, DIR_SENT] {
        let _ = RESUME.remove(&SockDir {
            sk,
            dir: dir as u64,
        });
    }
    let Some(mut entry) = reserve::<EventHeader>(EventKind::Destroy) else {
        return;
    };
    let h = entry.as_mut_ptr();
    unsafe {
        fill_header(h, EventKind::Destroy, 0, sk, 0, 0);
        // Why the kernel closed it, if it did: the daemon's fallback when
        // the ->CLOSE transition itself was not seen (a tracepoint run
        // skipped because another BPF program was running on that CPU).
        (*h).arg = sk_err(sk);
    }
    entry.submit(0);
}

/// A traced-port socket is going away: drop its request-head budget and
/// its accepted mark (the address may be reused by any next socket).
#[inline(always)]
pub fn forget_head(sk: u64) {
    let _ = HEAD_BYTES.remove(sk);
    let _ = ACCEPTED.remove(sk);
}

/// A state change of any TCP socket: SYN_RECV -> ESTABLISHED on a traced
/// port is a listener's child completing its handshake (a passive open;
/// an active open goes SYN_SENT -> ESTABLISHED). Only such sockets may be
/// marked upgraded.
#[inline(always)]
pub fn note_accepted(sk: u64, old_state: i32, new_state: i32) {
    if old_state == wstrace_common::tcp_state::SYN_RECV as i32
        && new_state == wstrace_common::tcp_state::ESTABLISHED as i32
        && sk != 0
        && (config!(all_ports) != 0 || server_port_traced(sk))
    {
        let _ = ACCEPTED.insert(sk, 1, 0);
    }
}
