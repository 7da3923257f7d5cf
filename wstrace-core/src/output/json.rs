//! `--format json`: one object per close, one line each. Keys are a contract
//! with log pipelines; add keys, never rename them.
//!
//! Serialized straight from borrowed structs, in the order a reader scans
//! (when, where, who, how long, stacks, why): a `serde_json::Value` would
//! allocate a map node per key, a quarter of the daemon's time at 20k closes
//! a second.
use std::{cell::RefCell, collections::VecDeque, sync::Arc};

use serde::Serialize;
use serde_json::value::RawValue;

use crate::diagnose::Diagnosis;
use crate::model::{
    Container, Crash, Frame as StackFrame, Heartbeat, HopRef, Killer, ProcessEnd, SharedStack,
    signal_name,
};
use crate::output::escape;
use crate::output::view::{View, rfc3339};
use crate::protocol::{http::RequestHead, wsframe::close_code_meaning};

#[derive(Serialize)]
struct Line<'a> {
    ts: String,
    local: String,
    remote: String,
    closed_by: &'static str,
    how: &'static str,
    pid: Option<u32>,
    tid: Option<u32>,
    comm: Option<&'a str>,
    exe: Option<&'a str>,
    cmdline: Option<&'a str>,
    cgroup: Option<&'a str>,
    container_id: Option<&'a str>,
    /// The container the closer runs in, named from its runtime's state.
    container: Option<ContainerJson<'a>>,
    /// Its Kubernetes pod, when it runs in one.
    k8s: Option<K8sJson<'a>>,
    host: &'a str,
    closed_at_exit: Option<bool>,
    ms_after_upgrade: f64,
    bytes_sent_after_upgrade: u64,
    bytes_received_after_upgrade: u64,
    /// Frame objects (`model::Frame`), innermost first.
    kernel_stack: &'a RawValue,
    /// The frames as rendered for an earlier report of the same stack
    /// (`RENDERED`), or now.
    user_stack: &'a RawValue,
    /// The kernel could not walk the stack: its errno (the stack is empty).
    kernel_stack_errno: Option<i64>,
    user_stack_errno: Option<i64>,
    /// `dwarf` or `fp`; null without a user stack.
    user_stack_unwind: Option<&'static str>,
    /// dwarf: `complete`, `truncated` or `stopped: <why>`.
    user_stack_end: Option<String>,
    /// Why dwarf unwinding was asked for and not used.
    user_stack_note: Option<&'a str>,
    /// How the walk of the interpreter's frames (Python) ended, when it
    /// did not reach the outermost frame.
    interp_stack_note: Option<&'a str>,
    /// The close had no stack copy of its own: `same_as` (the unwind shown
    /// is its call site's last copy's), `elided` (over budget, no copy at
    /// hand: the frame-pointer walk) or `dropped` (stack ring full).
    user_stack_copy: Option<&'static str>,
    /// With `same_as`: how much earlier that copy was made.
    user_stack_same_as_ms_before: Option<u64>,
    /// With `same_as`/`elided`: closes a second whose copy the site was refused.
    user_stack_elided_rate: Option<u32>,
    upgraded_by: Proc<'a>,
    /// `server` (the local end wrote the 101) or `client` (it read it).
    side: &'static str,
    probe: &'static str,
    /// The TLS library the 101 and request were read from (`openssl`);
    /// null for plaintext.
    tls: Option<&'static str>,
    notes: &'a [String],
    request: Option<Request<'a>>,
    frames: Vec<Frame<'a>>,
    /// Pings and pongs after the upgrade, both ways.
    heartbeat: HeartbeatJson,
    idle_ms: Option<u64>,
    peer: Option<Peer<'a>>,
    /// How the closing process ended, when it closed at its exit.
    process_end: Option<ProcessEndJson<'a>>,
    /// The kernel closed the socket itself: `tcp_timeout`,
    /// `reset_received` or `aborted`, and the error it set (`ETIMEDOUT`).
    kernel_reason: Option<&'static str>,
    kernel_error: Option<String>,
    /// The proxy chain this socket is a hop of (null: none seen).
    chain: Option<ChainJson<'a>>,
    diagnosis: &'a Diagnosis,
}

#[derive(Serialize)]
struct ChainJson<'a> {
    /// Keyed digest of the handshake: the same on every hop and host.
    id: &'a str,
    /// 0 nearest the client; null when `ambiguous`.
    hop: Option<u32>,
    hops: Option<u32>,
    upstream: Option<&'a HopRef>,
    downstream: Option<&'a HopRef>,
    /// `handshake` or `ambiguous` (the digest was seen on unrelated
    /// connections: nothing linked).
    linked_by: &'static str,
    /// The hop that closed first.
    closed_first_hop: Option<u32>,
}

#[derive(Serialize)]
struct ProcessEndJson<'a> {
    /// `signal` or `exit`.
    how: &'static str,
    signal: Option<String>,
    signal_number: Option<u32>,
    core_dumped: Option<bool>,
    exit_status: Option<u32>,
    /// For an exit: the stop signal (SIGTERM ...) it was sent before.
    after_signal: Option<String>,
    /// `process` (see `sent_by`), `oom_killer`, `kernel`, `self`, or null
    /// when the sender was not seen (for an exit: who sent `after_signal`).
    killed_by: Option<&'static str>,
    sent_by: Option<SentBy<'a>>,
    /// For a crash: the thread that faulted (or aborted) and its user
    /// stack at the signal, innermost first (null when not seen).
    crash_tid: Option<u32>,
    crash_stack: Option<&'a [StackFrame]>,
}

#[derive(Serialize)]
struct ContainerJson<'a> {
    id: &'a str,
    name: Option<&'a str>,
    image: Option<&'a str>,
    /// `docker`, `containerd`, `cri-o` or `podman`.
    runtime: Option<&'static str>,
}

#[derive(Serialize)]
struct K8sJson<'a> {
    namespace: Option<&'a str>,
    pod: Option<&'a str>,
    pod_uid: Option<&'a str>,
    container: Option<&'a str>,
}

fn container_json(c: &Container) -> (ContainerJson<'_>, Option<K8sJson<'_>>) {
    let k8s = (c.pod_uid.is_some() || c.pod_name.is_some()).then_some(K8sJson {
        namespace: c.namespace.as_deref(),
        pod: c.pod_name.as_deref(),
        pod_uid: c.pod_uid.as_deref(),
        container: c.k8s_container.as_deref(),
    });
    (
        ContainerJson {
            id: &c.id,
            name: c.name.as_deref(),
            image: c.image.as_deref(),
            runtime: c.runtime,
        },
        k8s,
    )
}

#[derive(Serialize)]
struct SentBy<'a> {
    pid: u32,
    comm: &'a str,
}

fn killer_json(killer: Option<&Killer>) -> (Option<&'static str>, Option<SentBy<'_>>) {
    let kind = killer.map(|k| match k {
        Killer::Process { .. } => "process",
        Killer::OomKiller => "oom_killer",
        Killer::Kernel => "kernel",
        Killer::Itself => "self",
    });
    let sent_by = match killer {
        Some(Killer::Process { pid, comm }) => Some(SentBy { pid: *pid, comm }),
        _ => None,
    };
    (kind, sent_by)
}

fn process_end<'a>(e: &'a ProcessEnd, crash: Option<&'a Crash>) -> ProcessEndJson<'a> {
    match e {
        ProcessEnd::Exited {
            status,
            after_signal,
        } => {
            let (killed_by, sent_by) =
                killer_json(after_signal.as_ref().and_then(|(_, k)| k.as_ref()));
            ProcessEndJson {
                how: "exit",
                signal: None,
                signal_number: None,
                core_dumped: None,
                exit_status: Some(*status),
                after_signal: after_signal.as_ref().map(|(sig, _)| signal_name(*sig)),
                killed_by,
                sent_by,
                crash_tid: None,
                crash_stack: None,
            }
        }
        ProcessEnd::Signaled {
            signal,
            core_dumped,
            killer,
        } => {
            let (killed_by, sent_by) = killer_json(killer.as_ref());
            ProcessEndJson {
                how: "signal",
                signal: Some(signal_name(*signal)),
                signal_number: Some(*signal),
                core_dumped: Some(*core_dumped),
                exit_status: None,
                after_signal: None,
                killed_by,
                sent_by,
                crash_tid: crash.map(|c| c.tid),
                crash_stack: crash.map(|c| c.stack.as_slice()),
            }
        }
    }
}

#[derive(Serialize)]
struct Proc<'a> {
    pid: u32,
    tid: u32,
    comm: &'a str,
}

#[derive(Serialize)]
struct Peer<'a> {
    pid: u32,
    /// The thread that wrote the request (null when not from the kernel).
    tid: Option<u32>,
    /// Its executable from /proc/PID/exe (null when it could not be read).
    exe: Option<&'a str>,
    comm: &'a str,
    /// `kernel` (it recorded the request's writer) or `socket_table`
    /// (looked up at the 101, the fallback).
    source: &'static str,
}

/// Counts, and times in ms after the upgrade (null: none seen). `sent` and
/// `received` as seen from the local end (the server): its own pings and
/// the pongs it got back, the client's pings and the pongs it sent back.
#[derive(Serialize)]
struct HeartbeatJson {
    pings_sent: u32,
    pongs_received: u32,
    /// Pings sent since the last pong received.
    unanswered_pings_sent: u32,
    last_ping_sent_ms: Option<f64>,
    last_pong_received_ms: Option<f64>,
    pings_received: u32,
    pongs_sent: u32,
    unanswered_pings_received: u32,
    last_ping_received_ms: Option<f64>,
    last_pong_sent_ms: Option<f64>,
}

fn heartbeat(h: &Heartbeat, upgrade_ts_ns: u64) -> HeartbeatJson {
    let ms =
        |ts: Option<u64>| ts.map(|t| (t.saturating_sub(upgrade_ts_ns) as f64 / 1e3).round() / 1e3);
    HeartbeatJson {
        pings_sent: h.local.pings,
        pongs_received: h.local.pongs,
        unanswered_pings_sent: h.local.unanswered,
        last_ping_sent_ms: ms(h.local.last_ping_ns),
        last_pong_received_ms: ms(h.local.last_pong_ns),
        pings_received: h.peer.pings,
        pongs_sent: h.peer.pongs,
        unanswered_pings_received: h.peer.unanswered,
        last_ping_received_ms: ms(h.peer.last_ping_ns),
        last_pong_sent_ms: ms(h.peer.last_pong_ns),
    }
}

#[derive(Serialize)]
struct Frame<'a> {
    direction: &'static str,
    code: Option<u16>,
    meaning: Option<&'static str>,
    reason: &'a str,
}

/// The request head: the fields diagnosis uses by name, then every header
/// (sensitive values already replaced by "[redacted]").
#[derive(Serialize)]
struct Request<'a> {
    method: &'a str,
    target: &'a str,
    version: &'a str,
    connection: Option<&'a str>,
    upgrade: Option<&'a str>,
    sec_websocket_version: Option<&'a str>,
    host: Option<&'a str>,
    x_forwarded_for: Option<&'a str>,
    user_agent: Option<&'a str>,
    complete: bool,
    headers: Vec<[&'a str; 2]>,
}

fn request(h: &RequestHead) -> Request<'_> {
    Request {
        method: &h.method,
        target: &h.target,
        version: h.version.as_str(),
        connection: h.header("connection"),
        upgrade: h.header("upgrade"),
        sec_websocket_version: h.header("sec-websocket-version"),
        host: h.header("host"),
        x_forwarded_for: h.header("x-forwarded-for"),
        user_agent: h.header("user-agent"),
        complete: h.complete,
        headers: h
            .headers
            .iter()
            .map(|(n, v)| [n.as_str(), v.as_str()])
            .collect(),
    }
}

fn line<'a>(v: &'a View<'a>, kernel_stack: &'a RawValue, user_stack: &'a RawValue) -> Line<'a> {
    let r = v.report;
    let c = r.closer.as_ref();
    let (container, k8s) = match v.process.container.as_deref().map(container_json) {
        Some((c, k)) => (Some(c), k),
        None => (None, None),
    };
    Line {
        ts: rfc3339(v.ts),
        local: r.local.to_string(),
        remote: r.remote.to_string(),
        closed_by: r.closed_by.as_str(),
        how: r.how.as_str(),
        pid: c.map(|c| c.pid),
        tid: c.map(|c| c.tid),
        comm: c.map(|c| c.comm.as_str()),
        exe: v.exe.as_deref(),
        cmdline: v.process.cmdline.as_deref(),
        cgroup: v.process.cgroup.as_deref(),
        container_id: v.process.container_id.as_deref(),
        container,
        k8s,
        host: v.host,
        closed_at_exit: c.map(|c| c.at_exit),
        ms_after_upgrade: (r.ms_after_upgrade() * 1000.0).round() / 1000.0,
        bytes_sent_after_upgrade: r.bytes_sent_after_upgrade,
        bytes_received_after_upgrade: r.bytes_received_after_upgrade,
        kernel_stack,
        user_stack,
        kernel_stack_errno: v.kernel_stack_errno,
        user_stack_errno: v.user_stack_errno,
        user_stack_unwind: v.user_walk.walk.map(|w| w.name()),
        user_stack_end: v.user_walk.end_str(),
        user_stack_note: v.user_walk.note.as_deref(),
        interp_stack_note: v.user_walk.interp_note.as_deref(),
        user_stack_copy: v.user_walk.shared.map(|s| s.name()),
        user_stack_same_as_ms_before: match v.user_walk.shared {
            Some(SharedStack::SameAs { age_ms, .. }) => Some(age_ms),
            _ => None,
        },
        user_stack_elided_rate: match v.user_walk.shared {
            Some(SharedStack::SameAs { rate, .. } | SharedStack::Elided { rate }) => Some(rate),
            _ => None,
        },
        upgraded_by: Proc {
            pid: r.upgrader.pid,
            tid: r.upgrader.tid,
            comm: &r.upgrader.comm,
        },
        side: r.side.as_str(),
        probe: r.probe.name(),
        tls: r.tls,
        notes: &r.notes,
        request: v.request.as_ref().map(request),
        frames: v
            .frames
            .iter()
            .map(|(d, f)| Frame {
                direction: d.as_str(),
                code: f.code,
                meaning: f.code.map(close_code_meaning),
                reason: &f.reason,
            })
            .collect(),
        heartbeat: heartbeat(&r.heartbeat, r.upgrade_ts_ns),
        idle_ms: v.idle_ms,
        peer: v.peer.as_ref().map(|p| Peer {
            pid: p.pid,
            tid: p.tid,
            exe: p.exe.as_ref().map(|e| e.path.as_str()),
            comm: &p.comm,
            source: p.source.as_str(),
        }),
        process_end: v.ending.as_ref().map(|e| process_end(e, v.crash.as_ref())),
        kernel_reason: r.kernel_close.map(|k| k.reason()),
        kernel_error: r.kernel_close.map(|k| k.error_name()),
        chain: r.chain.as_ref().map(|c| ChainJson {
            id: &c.id,
            hop: c.hop,
            hops: c.hops,
            upstream: c.upstream.as_ref(),
            downstream: c.downstream.as_ref(),
            linked_by: c.linked_by.as_str(),
            closed_first_hop: c.root.map(|r| r.hop),
        }),
        diagnosis: &v.diagnosis,
    }
}

/// One line of JSON. Besides what JSON requires, C1 controls, DEL and bidi
/// controls in strings are written as `\uXXXX` (`escape::JsonFormatter`):
/// the line is safe to print on a terminal as it is.
pub fn render(v: &View<'_>) -> String {
    RENDERED.with_borrow_mut(|rendered| {
        // Both stacks from the cache: the symbolizer hands out one `Arc`
        // per distinct stack, so each is escaped once, not per report.
        rendered_stack(rendered, &v.kernel_stack);
        rendered_stack(rendered, &v.user_stack);
        let (kernel, user) = (
            cached(rendered, &v.kernel_stack),
            cached(rendered, &v.user_stack),
        );
        // Serializing plain structs of strings and numbers cannot fail; if it
        // ever did, an empty object keeps the one-object-per-line contract.
        escape::to_json_string(&line(v, kernel, user)).unwrap_or_else(|_| "{}".into())
    })
}

/// Stacks rendered lately, kept with the frames they came from. At
/// 20,000 closes a second from one call site every report shows the same
/// kernel and user stacks (the symbolizer's caches hand out one `Arc` for
/// each): their frames, a third of a report's rendering, are escaped and
/// written once. Holding
/// the `Arc` keeps its address from being reused by other frames.
const RENDERED_MAX: usize = 16;

/// Frames and their JSON, newest first.
type Rendered = VecDeque<(Arc<[StackFrame]>, Box<RawValue>)>;

thread_local! {
    static RENDERED: RefCell<Rendered> = const { RefCell::new(VecDeque::new()) };
}

/// `frames` as a JSON array, from `rendered` when the same frames (the same
/// allocation) were rendered lately.
/// Either way it is then first (the most recent are the last evicted).
fn rendered_stack(rendered: &mut Rendered, frames: &Arc<[StackFrame]>) {
    match rendered.iter().position(|(f, _)| Arc::ptr_eq(f, frames)) {
        Some(i) => {
            if let Some(hit) = rendered.remove(i) {
                rendered.push_front(hit);
            }
        }
        None => {
            // The same escaping as the rest of the line; an array of frame
            // objects is always valid JSON ("[]" if it ever were not).
            let json = escape::to_json_string(&**frames)
                .ok()
                .and_then(|s| RawValue::from_string(s).ok())
                .unwrap_or_else(empty_array);
            if rendered.len() >= RENDERED_MAX {
                rendered.pop_back();
            }
            rendered.push_front((frames.clone(), json));
        }
    }
}

/// `[]`, for a stack not in the cache (never: `rendered_stack` moves what
/// it hands out to the front, and the cache holds more than two).
static EMPTY: std::sync::LazyLock<Box<RawValue>> = std::sync::LazyLock::new(empty_array);

/// The JSON of `frames`, rendered by `rendered_stack` just before.
fn cached<'r>(rendered: &'r Rendered, frames: &Arc<[StackFrame]>) -> &'r RawValue {
    rendered
        .iter()
        .find(|(f, _)| Arc::ptr_eq(f, frames))
        .map_or_else(|| &**EMPTY, |(_, json)| &**json)
}

fn empty_array() -> Box<RawValue> {
    RawValue::from_string("[]".to_string()).unwrap_or_else(|_| unreachable!("[] is JSON"))
}
