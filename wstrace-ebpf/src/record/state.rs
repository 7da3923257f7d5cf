//! Socket state events: TCP transitions, resets and destruction of upgraded
//! sockets, and the accepted mark that says which sockets may be upgraded.
use wstrace_common::{DIR_RECEIVED, DIR_SENT, EventHeader, EventKind};

use crate::record::emit::{emit_header, fill_header, reserve};
use crate::{
    kernel::{server_port_traced, sk_err},
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
pub fn forget_head(sk: KPtr) {
    let _ = HEAD_BYTES.remove(sk);
    let _ = ACCEPTED.remove(sk);
}

/// A state change of any TCP socket: SYN_RECV -> ESTABLISHED on a traced
/// port is a listener's child completing its handshake (a passive open;
/// an active open goes SYN_SENT -> ESTABLISHED): the server's side, by
/// local port. Only such sockets may be marked upgraded as a server's.
#[inline(always)]
pub fn note_accepted(sk: KPtr, old_state: i32, new_state: i32) {
    if old_state == wstrace_common::tcp_state::SYN_RECV as i32
        && new_state == wstrace_common::tcp_state::ESTABLISHED as i32
        && !sk.is_null()
        && server_port_traced(sk)
    {
        let _ = ACCEPTED.insert(sk, 1, 0);
    }
}
