//! The receive path: a read's entry and exit, the request head before the
//! upgrade, the client side's 101, and received control frames after it.
use aya_ebpf::helpers::bpf_get_current_pid_tgid;
use wstrace_common::{
    DATA_CAP, DIR_RECEIVED, FLAG_CLIENT_SIDE, FLAG_UPGRADE_READ, FirstRead, HEAD_BUDGET, ProbeSet,
    UPGRADE_PREFIX_LEN, classify_first_read, is_upgrade_response, probe_log,
};

use crate::record::{
    classify::{control_frame_in, first_bytes},
    data::{continue_frame, emit_data, expect_rest, resume_window_open},
    tls::{note_tls_read, tls_socket_read},
    upgrade::mark_upgraded,
};
use crate::{
    debug,
    kernel::{client_port_traced, sk_port_traced},
    maps::{
        HEAD_BYTES, HEAD_NOT_HTTP, HEAD_RESPONSE, HEAD_TLS, PENDING_READS, PendingRead, UPGRADED,
    },
    ptr::{KPtr, UPtr},
};

/// Entry of a read on `sk`: remember where its bytes go and how many fit
/// there contiguously (`cap`: a copy never reads past the buffer), if the
/// socket is on a traced port (checked first: other sockets touch no map)
/// and its reads may still matter ([`reads_done`]: one lookup).
#[inline(always)]
pub fn read_entry(sk: KPtr, buf: UPtr, cap: u64) {
    if sk.is_null() || buf.is_null() || !sk_port_traced(sk) || reads_done(sk) {
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
                // connected to a traced port. `read_entry` let in either
                // end of a traced connection; a socket let in by its local
                // port alone is a server's, whose 101 is written, not read.
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

/// Has `sk` nothing more to give its reads before an upgrade: classified as
/// no request, or its head budget spent? Not TLS sockets: each of their raw
/// reads says which socket the thread's `SSL_read` is using.
#[inline(always)]
fn reads_done(sk: KPtr) -> bool {
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
pub fn known_not_http(sk: KPtr) -> bool {
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
fn starts_with_101(buf: UPtr, len: u64) -> bool {
    if len < UPGRADE_PREFIX_LEN as u64 {
        return false;
    }
    let mut head = [0u8; UPGRADE_PREFIX_LEN];
    buf.read_buf(&mut head).is_ok() && is_upgrade_response(&head)
}

#[inline(always)]
fn classify_first_read_at(buf: UPtr, len: u64) -> First {
    if len < 4 {
        return match buf.read::<u8>() {
            Ok(0x16) => First::Tls,
            _ => First::Short,
        };
    }
    match buf.read::<u32>() {
        Ok(w) if w as u8 == 0x16 => First::Tls,
        Ok(w) => First::Class(classify_first_read(w)),
        Err(_) => First::Short,
    }
}
