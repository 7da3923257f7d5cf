//! `--debug-probes`: the programs' decision log, through aya-log.
//!
//! Every call site is `debug::note(code, sk, arg)`, gated by
//! `CONFIG.debug_probes`. `CONFIG` is read-only data the loader freezes, so
//! the verifier knows the gate's value: with the flag off the branch is dead
//! and the log code is never run (zero cost, measured with bpf_stats in
//! README.md). A line is numbers only (`wstrace_common::probe_log`): a log
//! argument of variable length (a `&str` reason) is rejected by the 5.10
//! verifier, and the daemon renders the text from the code. Each CPU logs at
//! most `LINES_PER_SECOND` lines a second; the rest are counted in
//! `LOG_BUDGET` for the daemon to say how many were dropped.
use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns};
use aya_log_ebpf::info;
use wstrace_common::{
    UPGRADE_PREFIX_LEN,
    probe_log::{LINES_PER_SECOND, SCAN_BYTES},
};

use crate::{
    kernel::{config, sk_local_port, sk_remote_port},
    maps::LOG_BUDGET,
    ptr::{KPtr, UPtr},
};

/// Is the decision log on (`--debug-probes`)?
#[inline(always)]
pub fn on() -> bool {
    config!(debug_probes) != 0
}

/// Logs decision `code` (`probe_log::*`) about socket `sk` (0: not known)
/// with its number `arg`, if the log is on.
#[inline(always)]
pub fn note(code: u32, sk: KPtr, arg: u64) {
    if on() {
        log(code, sk, arg);
    }
}

/// Out of line: one copy of the log's code, not one per call site (each
/// would add to every program's size and verification).
#[inline(never)]
fn log(code: u32, sk: KPtr, arg: u64) {
    if !within_budget() {
        return;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let (local, remote) = if !sk.is_null() {
        (sk_local_port(sk), sk_remote_port(sk))
    } else {
        (0, 0)
    };
    // "d CODE PID LOCAL_PORT REMOTE_PORT ARG": parsed by the daemon
    // (`probe_log::Decision`). Not the socket's address: a kernel pointer
    // in a log defeats KASLR. The context argument is unused by aya-log's
    // ring-buffer path.
    info!(&(), "d {} {} {} {} {}", code, tgid, local, remote, arg);
}

/// Takes one line from this CPU's budget; counts it dropped when spent.
#[inline(always)]
fn within_budget() -> bool {
    let Some(b) = LOG_BUDGET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: a helper without arguments; `b` points into this CPU's value
    // of the per-CPU array.
    unsafe {
        let now = bpf_ktime_get_ns();
        if now.wrapping_sub((*b).window_ns) >= 1_000_000_000 {
            (*b).window_ns = now;
            (*b).lines = 0;
        }
        if (*b).lines < LINES_PER_SECOND {
            (*b).lines += 1;
            true
        } else {
            (*b).dropped += 1;
            false
        }
    }
}

/// A write whose first bytes are no 101 (debug only): the offset in its
/// first `SCAN_BYTES` where a 101 status line starts, 0 when the write is
/// an HTTP/1.x status line cut before its code (a 101 split across
/// writes), `u64::MAX` for neither. One user copy and a bounded scan: the
/// cost of asking, paid only with the log on.
#[inline(never)]
pub fn misplaced_101(buf: UPtr, len: u64) -> u64 {
    if buf.is_null() || len < 8 {
        return u64::MAX;
    }
    if len < UPGRADE_PREFIX_LEN as u64 {
        // `HTTP/1.x` and nothing after the code's first digits.
        // A failed read is no finding.
        return match buf.read::<u64>() {
            Ok(w) if w & 0x00FF_FFFF_FFFF_FFFF == u64::from_le_bytes(*b"HTTP/1.\0") => 0,
            _ => u64::MAX,
        };
    }
    // A write shorter than the scan is read as far anyway: bytes past it
    // are never looked at (`end`), and a read that fails is no finding.
    let mut b = [0u8; SCAN_BYTES];
    if buf.read_buf(&mut b).is_err() {
        return u64::MAX;
    }
    let end = if len < SCAN_BYTES as u64 {
        len as usize
    } else {
        SCAN_BYTES
    };
    // Bounded: at most SCAN_BYTES - 13 offsets, each a byte compare unless
    // it holds an `H`.
    let mut i = 1;
    while i + UPGRADE_PREFIX_LEN <= SCAN_BYTES && i + UPGRADE_PREFIX_LEN <= end {
        if b[i] == b'H'
            && b[i + 1] == b'T'
            && b[i + 2] == b'T'
            && b[i + 3] == b'P'
            && b[i + 4] == b'/'
            && b[i + 5] == b'1'
            && b[i + 6] == b'.'
            && (b[i + 7] == b'1' || b[i + 7] == b'0')
            && b[i + 8] == b' '
            && b[i + 9] == b'1'
            && b[i + 10] == b'0'
            && b[i + 11] == b'1'
            && b[i + 12] == b' '
        {
            return i as u64;
        }
        i += 1;
    }
    u64::MAX
}
