//! Socket state events: TCP transitions, resets and destruction of upgraded
//! sockets, and the accepted mark that says which sockets may be upgraded.
use wstrace_common::{DIR_RECEIVED, DIR_SENT, EventHeader, EventKind, tcp_state};

use crate::record::emit::{emit_header, fill_header, reserve};
use crate::{
    kernel::{server_port_traced, sk_err, sk_port_traced},
    maps::{ACCEPTED, HEAD_BYTES, RESUME, SockDir, UPGRADED},
    ptr::KPtr,
};

/// A TCP state transition of an upgraded socket. A move to CLOSE carries
/// `sk_err`: the kernel sets it before closing a socket on its own (a
/// timeout, a reset received, an abort), and not for a local close.
pub fn state_change(sk: KPtr, old_state: u8, new_state: u8) {
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

pub fn reset(sk: KPtr, kind: EventKind) {
    emit_header(kind, 0, sk, 0, 0);
}

/// The kernel is destroying an upgraded socket: forget it (its address may be
/// reused by the next socket) and tell the daemon.
pub fn destroy(sk: KPtr) {
    let _ = UPGRADED.remove(sk);
    forget_resume(sk);
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
pub fn forget_head(sk: KPtr) {
    let _ = HEAD_BYTES.remove(sk);
    let _ = ACCEPTED.remove(sk);
}

/// A state change of any TCP socket, for the two that start a connection:
/// SYN_RECV -> ESTABLISHED (a listener's child completing its handshake, a
/// passive open) and SYN_SENT -> ESTABLISHED (a connect(), an active open).
///
/// Either way the socket is new, so whatever the maps hold under its
/// address belonged to an earlier socket there whose end was not seen (one
/// destroyed while its port no longer read as traced, or a socket of
/// another protocol whose memory the kernel reused): left in place, it made
/// this one's first read look already classified, or its 101 already seen,
/// and its report was silently lost (seen in all-ports runs: a test
/// client's 101 skipped as "head done" at its very first read). So it is
/// forgotten first (either end of a connection to a traced port: both
/// ends' sockets are followed). Then a passive open on a traced port is
/// marked accepted: only those sockets may be upgraded as a server's.
#[inline(always)]
pub fn connection_established(sk: KPtr, old_state: i32, new_state: i32) {
    let passive = old_state == tcp_state::SYN_RECV as i32;
    if new_state != tcp_state::ESTABLISHED as i32
        || !(passive || old_state == tcp_state::SYN_SENT as i32)
        || sk.is_null()
        || !sk_port_traced(sk)
    {
        return;
    }
    forget_head(sk);
    let _ = UPGRADED.remove(sk);
    forget_resume(sk);
    if passive && server_port_traced(sk) {
        let _ = ACCEPTED.insert(sk, 1, 0);
    }
}

/// Drops `sk`'s partial control frames, both directions.
#[inline(always)]
fn forget_resume(sk: KPtr) {
    for dir in [DIR_RECEIVED, DIR_SENT] {
        let _ = RESUME.remove(&SockDir {
            sk,
            dir: dir as u64,
        });
    }
}
