//! `--format json`: one object per close, one line each. Keys are a contract
//! with log pipelines; add keys, never rename them.
use serde_json::{Value, json};

use super::{View, direction_name, rfc3339};
use crate::{http::RequestHead, wsframe::close_code_meaning};

pub fn to_value(v: &View<'_>) -> Value {
    let r = v.report;
    let c = r.closer.as_ref();
    json!({
        "ts": rfc3339(v.ts),
        "local": r.local.to_string(),
        "remote": r.remote.to_string(),
        "closed_by": r.closed_by.as_str(),
        "how": r.how.as_str(),
        "pid": c.map(|c| c.pid),
        "tid": c.map(|c| c.tid),
        "comm": c.map(|c| c.comm.as_str()),
        "exe": v.exe,
        "cmdline": v.process.cmdline,
        "cgroup": v.process.cgroup,
        "container_id": v.process.container_id,
        "host": v.host,
        "closed_at_exit": c.map(|c| c.at_exit),
        "ms_after_upgrade": (r.ms_after_upgrade() * 1000.0).round() / 1000.0,
        "bytes_sent_after_upgrade": r.bytes_sent_after_upgrade,
        "bytes_received_after_upgrade": r.bytes_received_after_upgrade,
        "kernel_stack": v.kernel_stack,
        "user_stack": v.user_stack,
        "upgraded_by": { "pid": r.upgrader.pid, "tid": r.upgrader.tid, "comm": r.upgrader.comm },
        "probe": r.probe.name(),
        "notes": r.notes,
        "request": v.request.as_ref().map(request),
        "frames": v.frames.iter().map(|(d, f)| json!({
            "direction": direction_name(*d),
            "code": f.code,
            "meaning": f.code.map(close_code_meaning),
            "reason": f.reason,
        })).collect::<Vec<_>>(),
        "idle_ms": v.idle_ms,
        "peer": v.peer.as_ref().map(|p| json!({ "pid": p.pid, "comm": p.comm })),
        "diagnosis": v.diagnosis,
    })
}

/// The request head: the fields diagnosis uses by name, then every header
/// (sensitive values already replaced by "[redacted]").
fn request(h: &RequestHead) -> Value {
    let hdr = |n: &str| h.header(n);
    json!({
        "method": h.method,
        "target": h.target,
        "version": h.version.as_str(),
        "connection": hdr("connection"),
        "upgrade": hdr("upgrade"),
        "sec_websocket_version": hdr("sec-websocket-version"),
        "host": hdr("host"),
        "x_forwarded_for": hdr("x-forwarded-for"),
        "user_agent": hdr("user-agent"),
        "complete": h.complete,
        "headers": h.headers.iter().map(|(n, v)| json!([n, v])).collect::<Vec<_>>(),
    })
}

pub fn render(v: &View<'_>) -> String {
    to_value(v).to_string()
}
