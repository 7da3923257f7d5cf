//! `--format json`: one object per close, one line each. Keys are a contract
//! with log pipelines; add keys, never rename them.
use serde_json::{Value, json};

use super::{View, rfc3339};

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
        "closed_at_exit": c.map(|c| c.at_exit),
        "ms_after_upgrade": (r.ms_after_upgrade() * 1000.0).round() / 1000.0,
        "bytes_sent_after_upgrade": r.bytes_sent_after_upgrade,
        "bytes_received_after_upgrade": r.bytes_received_after_upgrade,
        "kernel_stack": v.kernel_stack,
        "user_stack": v.user_stack,
        "upgraded_by": { "pid": r.upgrader.pid, "tid": r.upgrader.tid, "comm": r.upgrader.comm },
        "probe": r.probe.name(),
        "notes": r.notes,
    })
}

pub fn render(v: &View<'_>) -> String {
    to_value(v).to_string()
}
