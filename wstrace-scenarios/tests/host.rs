//! The scenarios on this machine's kernel, against the wstrace built by
//! `cargo build --release` (the README's test command builds it first).
//! Needs root: without it the test prints a loud SKIPPED banner and returns.
use std::{path::PathBuf, process::Command};

const SCENARIOS: [&str; 7] = [
    "server_close_after_101_names_the_server",
    "client_close_after_upgrade_reports_peer",
    "http_200_is_not_reported",
    "ipv6_loopback",
    "linger_zero_close_reports_rst",
    "lookalike_101s_are_not_reported",
    "two_ports_and_other_port_ignored",
];

fn wstrace() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = target.join("release/wstrace");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --release` first (cargo xtask test does)",
        path.display()
    );
    path
}

fn is_root() -> bool {
    // SAFETY: plain getter.
    unsafe { libc::geteuid() == 0 }
}

fn check(probe: &str) {
    if !is_root() {
        eprintln!(
            "\n!!!!!!!!\n!!! SKIPPED: host scenarios with --probe {probe}: wstrace needs root (CAP_BPF/CAP_PERFMON); run `cargo xtask test` as root !!!\n!!!!!!!!\n"
        );
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_ws-scenario"))
        .args(["check", "--wstrace"])
        .arg(wstrace())
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
    let has_v6 = std::net::TcpListener::bind("[::1]:0").is_ok();
    for name in SCENARIOS {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("SCENARIO {name} ")))
            .unwrap_or_else(|| panic!("no line for {name}: {context}"));
        let skip_ok = name == "ipv6_loopback" && !has_v6;
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
    if !is_root() {
        eprintln!("\n!!! SKIPPED: wstrace --check needs root to try the probe sets !!!\n");
        return;
    }
    let out = Command::new(wstrace())
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
