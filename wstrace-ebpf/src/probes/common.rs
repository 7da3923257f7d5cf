//! sock/tcp events attached with every probe set: state transitions, resets
//! and socket destruction, as raw tracepoints (their `TP_PROTO` arguments:
//! the socket first, stable since Linux 4.16); signals and the OOM killer as
//! tracepoints, with field offsets from tracefs `format` files (the `tp_*`
//! fields of the kernel config).
//!
//! Why raw: a classic tracepoint's program is skipped when it fires while
//! any other tracing program runs on the CPU (the kernel's per-CPU
//! `bpf_prog_active` guard). A retransmission timeout or a reset runs in
//! softirq, which can interrupt one of the syscall programs on any
//! syscall: the transition was then never seen and the close was charged to
//! nobody. A raw tracepoint's guard is per program (none before 5.19), so
//! only the same program nesting in itself is skipped.
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use wstrace_common::{EventKind, ProbeSet, SIGNAL_OOM_VICTIM, tcp_state};

use crate::{
    kernel::{config, sk_err, sk_port_traced},
    ptr::KPtr,
    record,
};

#[inline(always)]
fn field<T>(ctx: &TracePointContext, off: u64) -> Result<T, i64> {
    unsafe { ctx.read_at::<T>(off as usize) }.map_err(|e| e as i64)
}

/// `TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)`;
/// `None` for sockets that are not upgraded ones.
#[inline(always)]
fn upgraded_transition(ctx: &RawTracePointContext) -> Option<(KPtr, u8, u8)> {
    let sk = KPtr::new(ctx.arg(0));
    record::connection_established(sk, ctx.arg(1), ctx.arg(2));
    // Port first, then the lookup (is_upgraded). Only TCP sockets are ever
    // marked, and only inet sockets reach this event, so no protocol check.
    if !record::is_upgraded(sk) {
        return None;
    }
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    Some((sk, old as u8, new as u8))
}

/// State changes only (fentry and kprobe sets see the close in tcp_close).
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: RawTracePointContext) -> i32 {
    if let Some((sk, old, new)) = upgraded_transition(&ctx) {
        record::state_change(sk, old, new);
    }
    0
}

/// Tracepoint set: a transition a local close causes (ESTABLISHED->FIN_WAIT1,
/// CLOSE_WAIT->LAST_ACK, ->CLOSE) runs in the closing process's own context,
/// so it is recorded as a close with stacks. Peer-driven transitions (softirq,
/// or on loopback the peer's process) stay plain state changes; the daemon
/// decides which close came first.
///
/// ->CLOSE is also how the kernel ends a connection on its own: a reset
/// received, a retransmission/keepalive/user timeout, an abort. Those run in
/// softirq or timer context, on whatever task was interrupted, and set
/// `sk_err` first (tcp_reset, tcp_write_err, tcp_abort), which a local close
/// never does (tcp_disconnect sets it only after the transition): so with
/// `sk_err` set, no task closed it, and none is charged with it.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state_closer(ctx: RawTracePointContext) -> i32 {
    if let Some((sk, old, new)) = upgraded_transition(&ctx) {
        let local_close = match (old, new) {
            (tcp_state::ESTABLISHED, tcp_state::FIN_WAIT1)
            | (tcp_state::CLOSE_WAIT, tcp_state::LAST_ACK) => true,
            (tcp_state::ESTABLISHED | tcp_state::CLOSE_WAIT, tcp_state::CLOSE) => sk_err(sk) == 0,
            _ => false,
        };
        if local_close {
            record::close(&ctx, ProbeSet::Tracepoint, sk, old, new);
        } else {
            record::state_change(sk, old, new);
        }
    }
    0
}

/// The three events whose first argument is the socket. tcp_send_reset's
/// socket may be NULL (a reset for no socket), a request or a timewait
/// socket: none of those is ever marked upgraded.
#[inline(always)]
fn on_sk_event(ctx: &RawTracePointContext, kind: EventKind) {
    let sk = KPtr::new(ctx.arg(0));
    if sk.is_null() {
        return;
    }
    if kind == EventKind::Destroy && sk_port_traced(sk) {
        record::forget_head(sk);
    }
    if record::is_upgraded(sk) {
        match kind {
            EventKind::Destroy => record::destroy(sk),
            _ => record::reset(sk, kind),
        }
    }
}

/// `TP_PROTO(const struct sock *sk, const struct sk_buff *skb)`, with a
/// third argument (the reason) since 6.10.
#[raw_tracepoint(tracepoint = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: RawTracePointContext) -> i32 {
    on_sk_event(&ctx, EventKind::ResetSent);
    0
}

/// `TP_PROTO(struct sock *sk)`.
#[raw_tracepoint(tracepoint = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: RawTracePointContext) -> i32 {
    on_sk_event(&ctx, EventKind::ResetReceived);
    0
}

/// `TP_PROTO(struct sock *sk)`.
#[raw_tracepoint(tracepoint = "tcp_destroy_sock")]
pub fn tcp_destroy_sock(ctx: RawTracePointContext) -> i32 {
    on_sk_event(&ctx, EventKind::Destroy);
    0
}

/// Signals that end a process by default (signal(7): Term and Core), below
/// 32: SIGCHLD, SIGCONT, SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU, SIGURG and
/// SIGWINCH do not, and are the bulk of a machine's signals.
#[inline(always)]
fn may_end_a_process(sig: i32) -> bool {
    (1..32).contains(&sig) && !matches!(sig, 17..=23 | 28)
}

const SIGKILL: u32 = 9;
/// `result` of signal_generate: TRACE_SIGNAL_IGNORED.
const SIGNAL_IGNORED: i32 = 1;

/// A signal on its way to a task, in the sender's context (a kill(2), or
/// the kernel for a fault). Signal number first, then the one-lookup check
/// that the target wrote a 101: everything else leaves at once.
/// Checked against `TRACE_EVENT(signal_generate, int sig, struct
/// kernel_siginfo *info, struct task_struct *task, int group, int result)`,
/// 5.10 to 6.18; fields from tracefs.
#[tracepoint(category = "signal", name = "signal_generate")]
pub fn signal_generate(ctx: TracePointContext) -> u32 {
    let Ok(sig) = field::<i32>(&ctx, config!(tp_signal_sig)) else {
        return 0;
    };
    if !may_end_a_process(sig) {
        return 0;
    }
    let Ok(target) = field::<i32>(&ctx, config!(tp_signal_pid)) else {
        return 0;
    };
    if field::<i32>(&ctx, config!(tp_signal_result)).unwrap_or(0) == SIGNAL_IGNORED {
        return 0;
    }
    // The target is a thread id, the process's own only for its first
    // thread. A signal to the running thread itself (a fault is raised in
    // the faulting thread, abort() signals its own) is checked against
    // the current tgid, and recorded for the process.
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let to_itself = target as u32 == pid_tgid as u32 && record::is_upgrader(tgid);
    // A crash: the running thread's stacks are where it crashed.
    if to_itself && is_crash(sig) {
        record::crash(&ctx, sig as u32);
    }
    let target = if to_itself {
        tgid
    } else if record::is_upgrader(target as u32) {
        target as u32
    } else {
        return 0;
    };
    let code = field::<i32>(&ctx, config!(tp_signal_code)).unwrap_or(0);
    record::signal(target, sig as u32, code, 0);
    0
}

/// SIGILL, SIGABRT, SIGBUS, SIGFPE, SIGSEGV: a program's own crash.
#[inline(always)]
fn is_crash(sig: i32) -> bool {
    matches!(sig, 4 | 6 | 7 | 8 | 11)
}

/// The OOM killer chose a victim (right after sending it SIGKILL, in the
/// allocating task's context: that task is not who killed it).
#[tracepoint(category = "oom", name = "mark_victim")]
pub fn oom_mark_victim(ctx: TracePointContext) -> u32 {
    let Ok(pid) = field::<i32>(&ctx, config!(tp_oom_pid)) else {
        return 0;
    };
    if record::is_upgrader(pid as u32) {
        record::signal(pid as u32, SIGKILL, 0, SIGNAL_OOM_VICTIM);
    }
    0
}
