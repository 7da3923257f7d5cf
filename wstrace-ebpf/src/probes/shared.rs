//! What the fentry and kprobe sets do at tcp_sendmsg / tcp_close entry.
use aya_ebpf::EbpfContext;
use wstrace_common::{ProbeSet, probe_log};

use crate::{
    debug,
    kernel::{
        client_port_traced, msghdr_second_iovec, msghdr_user_buf, server_port_traced,
        sk_port_traced, sk_state,
    },
    ptr::{KPtr, UPtr},
    record,
};

/// Port filter first: with `--port`, every other socket on the host leaves
/// after two reads (the rule of `kernel::sk_port_traced`: local port, the
/// server's side, which alone may write a 101; remote port, a client's
/// side, which writes the request and, once it read a 101, frames); then
/// the socket's class; then the bytes, and what they mean
/// (`record::on_socket_write`).
#[inline(always)]
pub fn on_tcp_sendmsg(sk: KPtr, msg: KPtr, size: u64, probe: ProbeSet) {
    if sk.is_null() {
        return;
    }
    let server_side = server_port_traced(sk);
    if !server_side && !client_port_traced(sk) {
        if debug::on() {
            note_untraced_write(sk, msg, size);
        }
        return;
    }
    // A socket whose first read was not HTTP never writes a 101 or a
    // request: one lookup here instead of the msghdr walk and a user copy
    // (what every write of the host would cost with all ports traced).
    if record::known_not_http(sk) {
        return;
    }
    let Some((buf, first)) = msghdr_user_buf(msg) else {
        return;
    };
    let len = size.min(first);
    let kind = record::classify_write(buf, len);
    if kind == record::Write::Other && debug::on() {
        note_misplaced_101(sk, buf, len);
    }
    record::on_socket_write(
        sk,
        kind,
        buf,
        len,
        size,
        // Past the port filter above, a write counts on either side of the
        // connection, except a 101: the server's side only. The rule is
        // applied here, not in `on_socket_write` (see the tracepoint set's).
        || server_side || kind != record::Write::Upgrade,
        record::take_tls_write,
        // Cut at the first iovec while the write goes on: the rest of the
        // frame is in the second.
        || {
            if size > len {
                msghdr_second_iovec(msg)
            } else {
                None
            }
        },
        probe,
    );
}

/// `--debug-probes`, a write on a socket of no traced port: logged if it
/// is a 101 (the msghdr walk and copy are paid only with the log on).
#[inline(never)]
fn note_untraced_write(sk: KPtr, msg: KPtr, size: u64) {
    if let Some((buf, first)) = msghdr_user_buf(msg)
        && record::classify_write(buf, size.min(first)) == record::Write::Upgrade
    {
        debug::note(probe_log::IGNORED_PORT, sk, size);
    }
}

/// `--debug-probes`, a write that is no 101 at its start: one that holds a
/// 101 further in, or cuts a status line before its code, is logged.
#[inline(always)]
fn note_misplaced_101(sk: KPtr, buf: UPtr, len: u64) {
    let at = debug::misplaced_101(buf, len);
    if at == u64::MAX {
        return;
    }
    if at == 0 {
        debug::note(probe_log::IGNORED_SPLIT, sk, len);
    } else {
        debug::note(probe_log::IGNORED_NOT_AT_START, sk, at);
    }
}

/// tcp_recvmsg entry: where the bytes will land and how many fit there
/// (`len`, and the first iovec's length) (port filter first).
#[inline(always)]
pub fn on_tcp_recvmsg_entry(sk: KPtr, msg: KPtr, len: u64) {
    if sk.is_null() || !sk_port_traced(sk) {
        return;
    }
    if let Some((buf, first)) = msghdr_user_buf(msg) {
        record::read_entry(sk, buf, len.min(first));
    }
}

/// The process context of close(): `old_state` tells the daemon whether the
/// peer had closed first (CLOSE_WAIT) or not (ESTABLISHED).
#[inline(always)]
pub fn on_tcp_close<C: EbpfContext>(ctx: &C, sk: KPtr, probe: ProbeSet) {
    if record::is_upgraded(sk) {
        record::close(ctx, probe, sk, sk_state(sk), 0);
    }
}
