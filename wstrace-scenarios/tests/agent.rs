//! wstrace as a fleet agent, against real connections: `--output` loses
//! nothing through size rotation under a burst and leaves only whole lines
//! after SIGTERM mid-burst; `--metrics` scrapes pass Prometheus's own
//! `promtool check metrics`. Needs root, and promtool for the scrape test:
//! without them the tests fail (see `common::require`).
mod common;

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{Tracer, require_root, require_tool, upgrade_once};

fn server() -> (common::Kill, u16) {
    common::server(&["--mode", "close-after101"])
}

fn wstrace(port: u16, log: &Path) -> Tracer {
    Tracer::start(
        port,
        &[
            "--output",
            &log.display().to_string(),
            "--rotate-size",
            "16K",
            "--rotate-keep",
            "1000",
        ],
    )
}

/// Whole lines in FILE.N ... FILE.1, FILE while wstrace may still be
/// writing: a read that races a write can end inside the line being
/// written (a regular file's write is not atomic to a reader), so the
/// current file's unfinished tail is not counted. What was written is
/// checked whole by [`all_lines`] once wstrace has exited.
fn lines_so_far(log: &Path) -> usize {
    // Oldest first: a rotation between two reads then shifts files past the
    // reader (a line missed, counted at the next poll), never onto a file
    // still to read (a line counted twice would end the wait early).
    let mut n = 0;
    for i in (1..=1000).rev() {
        let rotated = PathBuf::from(format!("{}.{i}", log.display()));
        if let Ok(text) = std::fs::read_to_string(&rotated) {
            n += text.matches('\n').count();
        }
    }
    n + std::fs::read_to_string(log)
        .map(|t| t.matches('\n').count())
        .unwrap_or(0)
}

/// Every line of FILE.N ... FILE.1, FILE (oldest first), each parsed; only
/// once wstrace has exited (see [`lines_so_far`]).
fn all_lines(log: &Path) -> Vec<serde_json::Value> {
    let mut files: Vec<PathBuf> = (1..=1000)
        .map(|i| PathBuf::from(format!("{}.{i}", log.display())))
        .filter(|p| p.exists())
        .collect();
    files.reverse();
    files.push(log.to_path_buf());
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "{} ends mid-line",
            f.display()
        );
        for (i, line) in text.lines().enumerate() {
            let v = serde_json::from_str(line).unwrap_or_else(|e| {
                panic!(
                    "{}:{}: torn or invalid line ({e}): {line}",
                    f.display(),
                    i + 1
                )
            });
            out.push(v);
        }
    }
    out
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wstrace-eventlog-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("dir");
    d
}

#[test]
fn rotation_under_a_burst_loses_nothing() {
    if !require_root() {
        return;
    }
    const N: usize = 300;
    let (_srv, port) = server();
    let log = dir("burst").join("closes.jsonl");
    let w = wstrace(port, &log);
    for _ in 0..N {
        upgrade_once(port);
    }
    // Two lines per connection: the server's socket and this test's, which
    // read the 101 (the client side).
    let start = Instant::now();
    while lines_so_far(&log) < 2 * N && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut w = w;
    w.signal(libc::SIGTERM);
    let status = w.wait();
    assert!(status.success(), "wstrace exit {status}");
    let lines = all_lines(&log);
    assert_eq!(
        lines.len(),
        2 * N,
        "lines written vs connections made (both ends)"
    );
    // One server-side line per connection (its remote, the client's
    // address, differs), and one client-side line for each of them (its
    // local address is that server line's remote).
    let ends = |server: bool, key: &str| -> Vec<&str> {
        let mut v: Vec<&str> = lines
            .iter()
            .filter(|l| {
                if server {
                    common::is_server_on(l, port)
                } else {
                    common::is_client_of(l, port)
                }
            })
            .map(|l| l[key].as_str().unwrap_or(""))
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let remotes = ends(true, "remote");
    assert_eq!(remotes.len(), N, "one server line per connection");
    assert_eq!(
        ends(false, "local"),
        remotes,
        "one client line per connection"
    );
    assert!(
        PathBuf::from(format!("{}.1", log.display())).exists(),
        "rotation happened"
    );
}

#[test]
fn sigterm_during_a_burst_leaves_whole_lines() {
    if !require_root() {
        return;
    }
    let (_srv, port) = server();
    let log = dir("sigterm").join("closes.jsonl");
    let w = wstrace(port, &log);
    let burst = std::thread::spawn(move || {
        for _ in 0..400 {
            upgrade_once(port);
        }
    });
    // SIGTERM once the burst's reports are being written, not after a
    // guess at how long that takes (a loaded host may take longer than
    // the burst's first moments to write the first line).
    // (Sizes, not lines: a line may be half-written at this moment.)
    let written = || {
        std::fs::metadata(&log).is_ok_and(|m| m.len() > 0)
            || PathBuf::from(format!("{}.1", log.display())).exists()
    };
    let start = Instant::now();
    while !written() && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut w = w;
    w.signal(libc::SIGTERM);
    let status = w.wait();
    let _ = burst.join();
    assert!(status.success(), "wstrace exit {status}");
    let lines = all_lines(&log);
    assert!(
        !lines.is_empty(),
        "some reports were written before SIGTERM"
    );
}

fn scrape(addr: &str) -> String {
    let mut c = TcpStream::connect(addr).expect("connect to --metrics");
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    let mut resp = String::new();
    c.read_to_string(&mut resp).expect("read");
    let (head, body) = resp.split_once("\r\n\r\n").expect("HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

#[test]
fn metrics_scrape_passes_promtool() {
    if !require_root() {
        return;
    }
    let Some(promtool) = require_tool(
        "promtool",
        "run `cargo xtask setup` (installs Debian's prometheus package)",
    ) else {
        return;
    };
    let (_srv, port) = server();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    let addr = listener.local_addr().expect("addr").to_string();
    drop(listener);
    let _w = Tracer::start(port, &["--metrics", &addr]);
    for _ in 0..3 {
        upgrade_once(port);
    }
    // Until all six closes are counted (the first alone raced the asserts):
    // both ends of each connection, the server's and this test's socket,
    // which read the 101 (the client side).
    let start = Instant::now();
    let mut body = scrape(&addr);
    while !body.contains("wstrace_connection_lifetime_seconds_count 6")
        && start.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(100));
        body = scrape(&addr);
    }
    assert!(body.contains("wstrace_upgrades_total 6"), "{body}");
    // The server closed: local on its side, the peer on the client's.
    assert!(
        body.contains(
            "wstrace_closes_total{closed_by=\"local\",how=\"fin\",diagnosis=\"unknown\"} 3"
        ),
        "{body}"
    );
    assert!(
        body.contains(
            "wstrace_closes_total{closed_by=\"peer\",how=\"fin\",diagnosis=\"server_closed_without_close_frame\"} 3"
        ),
        "{body}"
    );
    assert!(
        body.contains("wstrace_connection_lifetime_seconds_count 6"),
        "{body}"
    );
    // Every loss reason is exported from the start, at 0 here.
    for reason in [
        "ring_full",
        "recursion_miss",
        "max_sockets",
        "orphan_event",
        "not_an_upgrade",
        "log_unwritten",
    ] {
        assert!(
            body.contains(&format!(
                "wstrace_lost_events_total{{reason=\"{reason}\"}} 0"
            )),
            "{reason}: {body}"
        );
    }
    assert!(body.contains("wstrace_probe_set{probe="), "{body}");
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    check
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("feed promtool");
    let out = check.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
