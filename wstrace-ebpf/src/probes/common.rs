//! sock/tcp tracepoints attached with every probe set: state transitions,
//! resets and socket destruction. Stable since Linux 4.16; field offsets come
//! from tracefs `format` files via the TP_* globals.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use wstrace_common::{EventKind, ProbeSet, tcp_state};

use crate::{
    kernel::{
        TP_DESTROY_SKADDR, TP_RECV_RESET_SKADDR, TP_SEND_RESET_SKADDR, TP_STATE_NEWSTATE,
        TP_STATE_OLDSTATE, TP_STATE_PROTOCOL, TP_STATE_SKADDR, TP_STATE_SPORT, g, port_traced,
        sk_local_port,
    },
    record,
};

const IPPROTO_TCP: u16 = 6;

#[inline(always)]
fn field<T>(ctx: &TracePointContext, off: &'static u64) -> Result<T, i64> {
    unsafe { ctx.read_at::<T>(g(off) as usize) }.map_err(|e| e as i64)
}

/// Reads the transition; `None` for sockets that are not upgraded ones.
#[inline(always)]
fn upgraded_transition(ctx: &TracePointContext) -> Result<Option<(u64, u8, u8)>, i64> {
    // sport is the local port, host order (TP_fast_assign uses ntohs).
    if !port_traced(field::<u16>(ctx, &TP_STATE_SPORT)?) {
        return Ok(None);
    }
    if field::<u16>(ctx, &TP_STATE_PROTOCOL)? != IPPROTO_TCP {
        return Ok(None);
    }
    let sk = field::<u64>(ctx, &TP_STATE_SKADDR)?;
    if !record::is_upgraded(sk) {
        return Ok(None);
    }
    let old = field::<i32>(ctx, &TP_STATE_OLDSTATE)? as u8;
    let new = field::<i32>(ctx, &TP_STATE_NEWSTATE)? as u8;
    Ok(Some((sk, old, new)))
}

/// State changes only (fentry and kprobe sets see the close in tcp_close).
#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    if let Ok(Some((sk, old, new))) = upgraded_transition(&ctx) {
        record::state_change(sk, old, new);
    }
    0
}

/// Tracepoint set: a transition a local close causes (ESTABLISHED->FIN_WAIT1,
/// CLOSE_WAIT->LAST_ACK, ->CLOSE) runs in the closing process's own context,
/// so it is recorded as a close with stacks. Peer-driven transitions (softirq,
/// or on loopback the peer's process) stay plain state changes; the daemon
/// decides which close came first.
#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state_closer(ctx: TracePointContext) -> u32 {
    if let Ok(Some((sk, old, new))) = upgraded_transition(&ctx) {
        let local_close = matches!(
            (old, new),
            (tcp_state::ESTABLISHED, tcp_state::FIN_WAIT1)
                | (tcp_state::CLOSE_WAIT, tcp_state::LAST_ACK)
                | (
                    tcp_state::ESTABLISHED | tcp_state::CLOSE_WAIT,
                    tcp_state::CLOSE
                )
        );
        if local_close {
            record::close(&ctx, ProbeSet::Tracepoint, sk, old, new);
        } else {
            record::state_change(sk, old, new);
        }
    }
    0
}

#[inline(always)]
fn on_sk_event(ctx: &TracePointContext, off: &'static u64, kind: EventKind) {
    if let Ok(sk) = field::<u64>(ctx, off) {
        if kind == EventKind::Destroy && sk != 0 && port_traced(sk_local_port(sk)) {
            record::forget_head(sk);
        }
        if record::is_upgraded(sk) {
            match kind {
                EventKind::Destroy => record::destroy(sk),
                _ => record::reset(sk, kind),
            }
        }
    }
}

#[tracepoint(category = "tcp", name = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    on_sk_event(&ctx, &TP_SEND_RESET_SKADDR, EventKind::ResetSent);
    0
}

#[tracepoint(category = "tcp", name = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    on_sk_event(&ctx, &TP_RECV_RESET_SKADDR, EventKind::ResetReceived);
    0
}

#[tracepoint(category = "tcp", name = "tcp_destroy_sock")]
pub fn tcp_destroy_sock(ctx: TracePointContext) -> u32 {
    on_sk_event(&ctx, &TP_DESTROY_SKADDR, EventKind::Destroy);
    0
}
