//! One close as an OpenTelemetry log record: the body and attributes,
//! pure (no SDK state), so every mapping is unit-tested.
//!
//! There is no OpenTelemetry convention for WebSocket events yet
//! (semantic-conventions issue #2841 proposes one): the attributes follow
//! the conventions that exist (`server.*`, `client.*`, `network.*`,
//! `process.*`, `thread.*`, `container.*`, `error.type`), and everything
//! wstrace adds is under `wstrace.*`, named as the JSON keys are.
use std::net::SocketAddr;

use opentelemetry::{Key, logs::AnyValue};

use crate::model::{ClosedBy, Side};
use crate::output::{escape, text, view::View};

/// The event name of every record (`event.name`).
pub const EVENT_NAME: &str = "websocket.close";

/// Bytes kept of any one string value (a hostile process names itself, or
/// a client sends a header, up to the limits of the kernel and HTTP: a
/// collector or backend may refuse a record with a 10 MB attribute, and
/// all of the batch with it).
pub const MAX_VALUE: usize = 4096;

/// Frames kept of each stack.
const MAX_FRAMES: usize = 64;

/// `s` escaped as text output is (control and bidi characters visible) and
/// cut to [`MAX_VALUE`] bytes on a character boundary, marked with `…`.
pub fn bounded(s: &str) -> String {
    let cut = if s.len() > MAX_VALUE {
        let mut end = MAX_VALUE;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        &s[..end]
    } else {
        s
    };
    let mut out = escape::text(cut).into_owned();
    if cut.len() < s.len() {
        out.push('…');
    }
    out
}

/// The record's body: the first line of the text report with the
/// diagnosis, e.g. `127.0.0.1:8080 <-> 127.0.0.1:50000 closed by local
/// (fin) 0.026 ms after 101: http10_upgrade: ...`.
pub fn body(v: &View<'_>) -> String {
    let r = v.report;
    bounded(&format!(
        "{} <-> {} closed by {} ({}) {:.3} ms after 101{}: {}: {}",
        r.local,
        r.remote,
        r.closed_by.as_str(),
        r.how.as_str(),
        r.ms_after_upgrade(),
        match r.side {
            Side::Server => "",
            Side::Client => " (client side)",
        },
        v.diagnosis.code,
        v.diagnosis.message
    ))
}

fn s(v: &str) -> AnyValue {
    AnyValue::String(bounded(v).into())
}

fn int(v: impl Into<i64>) -> AnyValue {
    AnyValue::Int(v.into())
}

fn ip_type(a: &SocketAddr) -> &'static str {
    if a.is_ipv4() { "ipv4" } else { "ipv6" }
}

fn stack(lines: Vec<String>) -> AnyValue {
    let n = lines.len();
    let mut kept: Vec<AnyValue> = lines.iter().take(MAX_FRAMES).map(|l| s(l)).collect();
    if n > MAX_FRAMES {
        kept.push(AnyValue::String(
            format!("… {} more frames", n - MAX_FRAMES).into(),
        ));
    }
    AnyValue::ListAny(Box::new(kept))
}

/// The record's attributes, in the order a reader scans (where, who, why).
pub fn attributes(v: &View<'_>) -> Vec<(Key, AnyValue)> {
    let r = v.report;
    let mut a: Vec<(Key, AnyValue)> = Vec::with_capacity(40);
    let mut put = |k: &'static str, val: AnyValue| a.push((Key::from_static_str(k), val));
    // The server is the end that wrote the 101.
    let (server, client) = match r.side {
        Side::Server => (r.local, r.remote),
        Side::Client => (r.remote, r.local),
    };
    put("server.address", s(&server.ip().to_string()));
    put("server.port", int(server.port()));
    put("client.address", s(&client.ip().to_string()));
    put("client.port", int(client.port()));
    put("network.local.address", s(&r.local.ip().to_string()));
    put("network.local.port", int(r.local.port()));
    put("network.peer.address", s(&r.remote.ip().to_string()));
    put("network.peer.port", int(r.remote.port()));
    put("network.transport", s("tcp"));
    put("network.type", s(ip_type(&r.local)));
    put("network.protocol.name", s("websocket"));
    if let Some(c) = &r.closer {
        put("process.pid", int(c.pid));
        put("thread.id", int(c.tid));
        put("thread.name", s(&c.comm));
        put("wstrace.closed_at_exit", AnyValue::Boolean(c.at_exit));
    }
    if let Some(exe) = &v.exe {
        put("process.executable.path", s(exe));
    }
    if let Some(cmdline) = &v.process.cmdline {
        // Already redacted (option values named like secrets never shown).
        put("process.command_line", s(cmdline));
    }
    if let Some(id) = &v.process.container_id {
        put("container.id", s(id));
    }
    if let Some(c) = &v.process.container {
        for (k, val) in [
            ("container.name", &c.name),
            ("container.image.name", &c.image),
            ("k8s.pod.name", &c.pod_name),
            ("k8s.pod.uid", &c.pod_uid),
            ("k8s.namespace.name", &c.namespace),
            ("k8s.container.name", &c.k8s_container),
        ] {
            if let Some(val) = val {
                put(k, s(val));
            }
        }
        if let Some(rt) = c.runtime {
            put("container.runtime", s(rt));
        }
    }
    put("error.type", s(v.diagnosis.code));
    put("wstrace.diagnosis.message", s(&v.diagnosis.message));
    if let Some(fix) = &v.diagnosis.fix {
        put("wstrace.fix", s(fix));
    }
    put("wstrace.closed_by", s(r.closed_by.as_str()));
    put("wstrace.how", s(r.how.as_str()));
    put("wstrace.side", s(r.side.as_str()));
    // The chain id joins this record with the other hops' records, on this
    // host and on the others (the same key everywhere).
    if let Some(c) = &r.chain {
        put("wstrace.chain.id", s(&c.id));
        put("wstrace.chain.linked_by", s(c.linked_by.as_str()));
        if let Some(hop) = c.hop {
            put("wstrace.chain.hop", int(hop));
        }
        if let Some(root) = c.root {
            put("wstrace.chain.closed_first_hop", int(root.hop));
        }
    }
    put("wstrace.probe", s(r.probe.name()));
    put(
        "wstrace.ms_after_upgrade",
        AnyValue::Double((r.ms_after_upgrade() * 1000.0).round() / 1000.0),
    );
    put(
        "wstrace.bytes_sent_after_upgrade",
        int(i64::try_from(r.bytes_sent_after_upgrade).unwrap_or(i64::MAX)),
    );
    put(
        "wstrace.bytes_received_after_upgrade",
        int(i64::try_from(r.bytes_received_after_upgrade).unwrap_or(i64::MAX)),
    );
    if let Some(idle) = v.idle_ms {
        put(
            "wstrace.idle_ms",
            int(i64::try_from(idle).unwrap_or(i64::MAX)),
        );
    }
    put("wstrace.upgraded_by.pid", int(r.upgrader.pid));
    put("wstrace.upgraded_by.comm", s(&r.upgrader.comm));
    if let Some(k) = r.kernel_close {
        put("wstrace.kernel_reason", s(k.reason()));
        put("wstrace.kernel_error", s(&k.error_name()));
    }
    if let Some(p) = &v.peer {
        put("wstrace.peer.pid", int(p.pid));
        put("wstrace.peer.comm", s(&p.comm));
        if let Some(exe) = &p.exe {
            put("wstrace.peer.exe", s(&exe.path));
        }
    }
    if let Some(front) = &v.diagnosis.front {
        put("wstrace.front", s(&front.describe()));
    }
    if let Some(tls) = r.tls {
        put("wstrace.tls", s(tls));
    }
    put("wstrace.host", s(v.host));
    // Stacks as the text report's compact lines (the JSON log keeps the
    // frame objects): what an operator reads in a log viewer.
    if !v.kernel_stack.is_empty() {
        let lines = v
            .kernel_stack
            .iter()
            .map(crate::output::frame::compact)
            .collect();
        put("wstrace.kernel_stack", stack(lines));
    }
    if !v.user_stack.is_empty() {
        put(
            "wstrace.user_stack",
            stack(text::compact_stack(&v.user_stack)),
        );
    }
    a
}

/// WARN for a close the local end or the kernel made (someone here ended
/// it), INFO for a peer's.
pub fn severity(v: &View<'_>) -> opentelemetry::logs::Severity {
    match v.report.closed_by {
        ClosedBy::Peer => opentelemetry::logs::Severity::Info,
        ClosedBy::Local | ClosedBy::Kernel => opentelemetry::logs::Severity::Warn,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_and_bounded() {
        assert_eq!(bounded("nginx"), "nginx");
        assert_eq!(bounded("a\x1b[2Jb\nc"), "a\\x1b[2Jb\\x0ac");
        let huge = "é".repeat(5_000_000); // 10 MB
        let b = bounded(&huge);
        assert!(b.len() <= MAX_VALUE + '…'.len_utf8(), "{}", b.len());
        assert!(b.ends_with('…'));
        assert!(bounded(&"x".repeat(MAX_VALUE)).len() == MAX_VALUE);
    }

    #[test]
    fn long_stacks_are_cut_and_say_so() {
        let AnyValue::ListAny(l) = stack((0..100).map(|i| format!("f{i}")).collect()) else {
            panic!("not a list");
        };
        assert_eq!(l.len(), MAX_FRAMES + 1);
        assert_eq!(l[MAX_FRAMES], AnyValue::String("… 36 more frames".into()));
    }
}
