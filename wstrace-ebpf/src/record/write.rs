//! What a write on a socket means: one decision for every probe set. The
//! fentry and kprobe sets reach it from tcp_sendmsg (the socket first, its
//! ports checked before the bytes are read), the tracepoint set from the
//! write-family syscalls (the bytes first, the fd walked to its socket only
//! for a write that may matter). Each set's own part is that order, the
//! cheapest test first on its hook; what a 101, a request, a control frame
//! or TLS records on a socket lead to is decided here.
use wstrace_common::{ProbeSet, probe_log};

use crate::{
    debug,
    kernel::client_port_traced,
    maps::TlsWrite,
    ptr::{KPtr, UPtr},
    record::{
        classify::Write,
        data::{frames_written, resume_window_open},
        tls::{TLS_UPGRADE, tls_socket_write},
        upgrade::{mark_upgraded, note_request_writer},
    },
};

/// What [`on_socket_write`] saw, for the caller's own bookkeeping (the
/// tracepoint set learns its servers from it).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// A 101 on the server side, in the clear or in the `SSL_write` the
    /// thread is in (whether the socket could be marked or not).
    Upgrade,
    /// A request on the client side of a connection to a traced port.
    Request,
    Nothing,
}

/// A write of `total` bytes on `sk`, the first `len` of them contiguous at
/// `buf`, whose first bytes are `kind` ([`super::classify_write`]):
/// - a request, on a socket whose remote port is traced (the client side;
///   with every port traced, of any connection): its writer is noted;
/// - where `traced` says the write counts (asked only for what is not a
///   request, so a client's request never reads it; the caller applies the
///   `--port` rule of `kernel::sk_port_traced`: a 101 on the server's side
///   only, frames and TLS records on either side of a traced connection):
///   a 101 marks the socket upgraded; a control frame is recorded, with
///   `second` (the write's next piece, asked only when the frame runs past
///   `buf`) as its continuation; anything else is the plaintext of the
///   `SSL_write` the thread is in (`tls`, asked only then), or else perhaps
///   the rest of a control frame the socket's last write cut.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn on_socket_write(
    sk: KPtr,
    kind: Write,
    buf: UPtr,
    len: u64,
    total: u64,
    traced: impl FnOnce() -> bool,
    tls: impl FnOnce() -> Option<TlsWrite>,
    second: impl FnOnce() -> Option<(UPtr, u64)>,
    probe: ProbeSet,
) -> Written {
    if kind == Write::Request {
        if client_port_traced(sk) {
            note_request_writer(sk);
            return Written::Request;
        }
        return Written::Nothing;
    }
    if !traced() {
        if kind == Write::Upgrade {
            debug::note(probe_log::IGNORED_PORT, sk, total);
        }
        return Written::Nothing;
    }
    let control = match kind {
        Write::Upgrade => {
            mark_upgraded(sk, total, probe, 0);
            return Written::Upgrade;
        }
        Write::ControlFrame { missing } => Some(missing),
        _ => {
            // TLS records: what they hold is the SSL_write's plaintext.
            if let Some(w) = tls() {
                tls_socket_write(sk, w, total, probe);
                return if w.kind == TLS_UPGRADE {
                    Written::Upgrade
                } else {
                    Written::Nothing
                };
            }
            if !resume_window_open() {
                return Written::Nothing;
            }
            None
        }
    };
    let second = match control {
        Some(missing) if missing > 0 => second(),
        _ => None,
    };
    // One call site for both (a control frame, a continuation): it is
    // inlined, and with two the tracepoint set's write programs were 11%
    // longer.
    frames_written(sk, buf, len, total, control, second);
    Written::Nothing
}
