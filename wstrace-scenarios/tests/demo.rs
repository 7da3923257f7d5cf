//! `wstrace demo`, what `cargo xtask run` (README's first command) shows a
//! new user: the real probes on loopback, two closes seen from both ends
//! (four reports), and nothing to worry about on stderr.
mod common;

use common::{SYMBOLIZE_TIMEOUT, require_root, serial, wstrace_bin};
use serde_json::Value;
use std::process::Command;

#[test]
fn the_demo_reports_both_closes_with_named_kernel_frames_and_no_privilege_warning() {
    if !require_root() {
        return;
    }
    let _g = serial();
    let out = Command::new(wstrace_bin())
        .args(["demo", "--format", "json", SYMBOLIZE_TIMEOUT])
        .output()
        .expect("running wstrace demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "wstrace demo failed:\n{stderr}");
    // The demo's own server thread starts before the daemon drops its
    // capabilities; it must not be left holding them.
    assert!(!stderr.contains("warning: privileges"), "{stderr}");
    let reports: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    // Two connections, each from both ends: the demo's client reads the
    // 101 in its first read, so its sockets are the client side.
    assert_eq!(reports.len(), 4, "want four reports:\n{stdout}\n{stderr}");
    let by = |side: &str, closed_by: &str| {
        reports
            .iter()
            .find(|r| r["side"] == side && r["closed_by"] == closed_by)
            .unwrap_or_else(|| panic!("no {side}-side close by {closed_by}:\n{stdout}"))
    };
    // The client's ends: the HTTP/1.0 one closed by the server, the
    // HTTP/1.1 one by the client itself.
    let client = by("client", "peer");
    assert_eq!(client["upgraded_by"]["comm"], "ws-demo-client", "{client}");
    by("client", "local");
    let by = |closed_by: &str| by("server", closed_by);
    let local = by("local");
    assert_eq!(local["diagnosis"]["code"], "http10_upgrade", "{local}");
    assert_eq!(local["request"]["version"], "HTTP/1.0", "{local}");
    // Frame objects; an unknown frame has a null function.
    let kernel: Vec<&str> = local["kernel_stack"]
        .as_array()
        .map(|a| a.iter().filter_map(|f| f["function"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        kernel
            .iter()
            .any(|f| f.contains("tcp_") || f.contains("inet_")),
        "kernel frames not named: {kernel:#?}"
    );
    // The stack starts at the kernel's own code, not at the tracer's
    // program and the tracepoint glue that ran it.
    assert!(
        !kernel.first().is_some_and(|f| {
            [
                "bpf_",
                "__bpf_trace",
                "__traceiter_",
                "perf_trace_",
                "trace_call_bpf",
            ]
            .iter()
            .any(|p| f.starts_with(p))
        }),
        "the kernel stack starts with the tracer's frames: {kernel:#?}"
    );
    let peer = by("peer");
    assert_eq!(peer["diagnosis"]["code"], "peer_closed_first", "{peer}");
}
