//! Data events: the bytes of control frames (and request heads) copied
//! from user memory, and the continuation of a frame cut between two
//! reads or writes.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use wstrace_common::{
    DATA_CAP, DIR_RECEIVED, DIR_SENT, DataEventOf, EventKind, FLAG_CONTINUES, FLAG_TLS_OPENSSL,
    SMALL_DATA_CAP,
};

use crate::record::{
    emit::{fill_header, reserve},
    upgrade::is_upgraded,
};
use crate::{
    maps::{RESUME, RESUME_UNTIL, SockDir},
    ptr::{KPtr, UPtr},
};

const _: () = assert!(FLAG_TLS_OPENSSL & 1 == 0 && wstrace_common::FLAG_TLS_GO & 1 == 0);

/// Copies up to `DATA_CAP` of the `len` bytes at user address `buf` into a
/// data event that also says `total`, the bytes the read or write moved in
/// all (more than were copied: the daemon knows it has only the start).
/// `dir_flags`: the direction (`DIR_RECEIVED` 0, `DIR_SENT` 1) or'd with
/// the header flags (`FLAG_CONTINUES`), one argument: a BPF function takes
/// five at most.
const _: () = assert!(DIR_RECEIVED == 0 && DIR_SENT == 1 && FLAG_CONTINUES & 1 == 0);
pub(super) fn emit_data(sk: KPtr, buf: UPtr, len: u64, total: u64, dir_flags: u32) {
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
fn emit_data_in<const N: usize>(sk: KPtr, buf: UPtr, len: u64, total: u64, dir_flags: u32) {
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
        let rc = buf.copy_to((*ev).data.as_mut_ptr().cast(), n);
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
pub(super) fn expect_rest(sk: KPtr, dir: u32, missing: u64) {
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
pub(super) fn continue_frame(sk: KPtr, dir: u32, buf: UPtr, len: u64, total: u64) -> bool {
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
    sk: KPtr,
    buf: UPtr,
    len: u64,
    total: u64,
    control: Option<u32>,
    second: Option<(UPtr, u64)>,
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
        && !buf2.is_null()
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
