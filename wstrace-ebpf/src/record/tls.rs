//! TLS: plaintext from uprobes on SSL_write / SSL_read, tied to the
//! socket the same thread writes or reads next (no OpenSSL struct offsets).
use aya_ebpf::helpers::bpf_get_current_pid_tgid;
use wstrace_common::{DATA_CAP, FLAG_TLS_OPENSSL, HEAD_BUDGET, ProbeSet};

use crate::record::{
    classify::{Write, classify_write, is_control_frame_start},
    data::emit_data,
    upgrade::{is_upgraded, mark_upgraded},
};
use crate::{
    kernel::config,
    maps::{
        HEAD_BYTES, HEAD_TLS, TLS_LAST_READ, TLS_READS, TLS_WRITES, TlsRead, TlsWrite, UPGRADED,
    },
    ptr::{KPtr, UPtr},
};

/// `TlsWrite::kind`: the plaintext is a 101, or a control frame.
pub const TLS_UPGRADE: u8 = 1;
pub const TLS_CONTROL_FRAME: u8 = 2;

/// `SSL_write`/`SSL_write_ex` entry: if the plaintext is a 101 or a control
/// frame, remember it for this thread's next write on a traced-port socket.
/// Every other buffer costs one 8-byte read.
#[inline(always)]
pub fn tls_write_entry(buf: UPtr, len: u64, library: u32) {
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
pub fn tls_socket_write(sk: KPtr, w: TlsWrite, socket_len: u64, probe: ProbeSet) {
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
pub fn tls_read_entry(buf: UPtr, cap: u64, readbytes: UPtr) {
    if buf.is_null() {
        return;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    let r = TlsRead {
        buf,
        cap,
        readbytes,
        sk: KPtr::NULL,
    };
    let _ = TLS_READS.insert(tid, r, 0);
}

/// A socket read by a thread inside `SSL_read` carries ciphertext: note
/// the socket for the plaintext and tell the caller to copy nothing.
#[inline(always)]
pub(super) fn tls_socket_read(sk: KPtr) -> bool {
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
pub(super) fn note_tls_read(sk: KPtr) {
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
        if n != 1 || readbytes.is_null() {
            return;
        }
        match readbytes.read::<u64>() {
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
    let (sk, read_ahead) = if !sk.is_null() {
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
pub fn tls_plaintext_read(sk: KPtr, buf: UPtr, cap: u64, n: u64, read_ahead: bool, library: u32) {
    let len = if n < cap { n } else { cap };
    if UPGRADED.get_ptr(sk).is_some() {
        // Read ahead is only trusted for the request head: a later read on
        // this thread may belong to any of its connections.
        if read_ahead {
            return;
        }
        let first = buf.read::<u8>().unwrap_or(0);
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
