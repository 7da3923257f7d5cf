//! Marking a socket upgraded (the 101 seen), and the request writer of a
//! client socket the daemon names the peer by.
use aya_ebpf::helpers::{
    bpf_get_current_pid_tgid, generated::bpf_get_current_comm as bpf_get_current_comm_raw,
};
use wstrace_common::{
    EventHeader, EventKind, FLAG_CLIENT_SIDE, PeerWriter, ProbeSet, SockTuple, lost, probe_log,
};

use crate::record::emit::{count_lost, fill_header, reserve};
use crate::{
    debug,
    kernel::{current_process_start_ns, fill_tuple, sk_is_tcp, sk_port_traced},
    maps::{ACCEPTED, HEAD_BYTES, PEER_WRITERS, UPGRADED, UPGRADERS},
    ptr::KPtr,
};

/// The local end of `sk` wrote a 101: start tracing the socket. Callers have
/// already checked the port. `flags`: [`FLAG_TLS_OPENSSL`] when the 101 was
/// seen in `SSL_write`, else 0.
pub fn mark_upgraded(sk: KPtr, write_len: u64, probe: ProbeSet, flags: u32) {
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
pub fn note_request_writer(sk: KPtr) {
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
pub fn is_upgraded(sk: KPtr) -> bool {
    !sk.is_null() && sk_port_traced(sk) && UPGRADED.get_ptr(sk).is_some()
}
