//! The scenarios on this machine's kernel, against the wstrace built by
//! `cargo build --release` (the README's test command builds it first).
//! Needs root, and IPv6 on loopback for the ipv6 scenario: without them the
//! tests fail (see `common::require`).
mod common;

use std::process::Command;

use common::{require, require_root, wstrace_bin};

const SCENARIOS: [&str; 7] = [
    "server_close_after_101_names_the_server",
    "client_close_after_upgrade_reports_peer",
    "http_200_is_not_reported",
    "ipv6_loopback",
    "linger_zero_close_reports_rst",
    "lookalike_101s_are_not_reported",
    "two_ports_and_other_port_ignored",
];

fn check(probe: &str) {
    if !require_root() {
        return;
    }
    // ws-scenario says SKIP for ipv6_loopback on a host without ::1; here
    // that is a missing prerequisite, not a pass.
    let has_v6 = std::net::TcpListener::bind("[::1]:0").is_ok();
    let skip_v6 = !require(
        has_v6,
        "no IPv6 on loopback (cannot bind [::1]): enable it with `sysctl -w net.ipv6.conf.lo.disable_ipv6=0`",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_ws-scenario"))
        .args(["check", "--wstrace"])
        .arg(wstrace_bin())
        .args(["--probe", probe])
        .output()
        .expect("running ws-scenario");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let context = format!(
        "--probe {probe}: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    eprintln!("{stdout}");
    assert!(out.status.success(), "{context}");
    for name in SCENARIOS {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("SCENARIO {name} ")))
            .unwrap_or_else(|| panic!("no line for {name}: {context}"));
        let skip_ok = name == "ipv6_loopback" && skip_v6;
        let verdict = if skip_ok { " SKIP " } else { " PASS " };
        assert!(
            line.contains(verdict),
            "{name}: want{verdict}: {line}\n{context}"
        );
    }
}

#[test]
fn host_scenarios_tracepoint() {
    check("tracepoint");
}

#[test]
fn host_scenarios_auto() {
    check("auto");
}

#[test]
fn host_check_reports_a_usable_probe_set() {
    if !require_root() {
        return;
    }
    let out = Command::new(wstrace_bin())
        .arg("--check")
        .output()
        .expect("wstrace --check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "privileges",
        "kernel BTF",
        "tracefs",
        "probe set fentry",
        "probe set kprobe",
        "probe set tracepoint",
        "--probe auto uses",
    ] {
        assert!(stdout.contains(want), "missing {want:?}:\n{stdout}");
    }
}
