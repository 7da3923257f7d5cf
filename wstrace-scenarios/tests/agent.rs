//! wstrace as a fleet agent, against real connections: `--output` loses
//! nothing through size rotation under a burst and leaves only whole lines
//! after SIGTERM mid-burst; `--metrics` scrapes pass Prometheus's own
//! `promtool check metrics`. Needs root (loud SKIPPED banner otherwise).
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

const UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n";

fn root_or_skip(test: &str) -> bool {
    // SAFETY: plain getter.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    eprintln!(
        "\n!!! SKIPPED: {test}: needs root (CAP_BPF/CAP_PERFMON); run `cargo xtask test` as root !!!\n"
    );
    false
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wstrace_bin() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let p = target.join("release/wstrace");
    assert!(
        p.is_file(),
        "{} missing: run `cargo build --release`",
        p.display()
    );
    p
}

fn server() -> (Kill, u16) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ws-scenario"))
        .args(["serve", "--bind", "127.0.0.1", "--mode", "close-after101"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("server");
    let mut line = String::new();
    BufReader::new(c.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("READY");
    let port = line
        .trim()
        .strip_prefix("READY ")
        .and_then(|p| p.parse().ok())
        .expect("port");
    (Kill(c), port)
}

fn wstrace(port: u16, log: &Path) -> Kill {
    wstrace_with(
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

fn wstrace_with(port: u16, extra: &[&str]) -> Kill {
    let mut c = Command::new(wstrace_bin())
        .args(["--port", &port.to_string(), "--format", "json"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wstrace");
    let (tx, rx) = mpsc::channel();
    let err = c.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            eprintln!("{line}");
            if line.contains("wstrace: tracing port") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("wstrace attached");
    Kill(c)
}

fn upgrade_once(port: u16) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    c.write_all(UPGRADE).expect("send");
    let mut buf = [0u8; 512];
    while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
}

/// Every line of FILE.N ... FILE.1, FILE (oldest first), each parsed.
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
    if !root_or_skip("rotation_under_a_burst_loses_nothing") {
        return;
    }
    const N: usize = 300;
    let (_srv, port) = server();
    let log = dir("burst").join("closes.jsonl");
    let w = wstrace(port, &log);
    for _ in 0..N {
        upgrade_once(port);
    }
    let start = Instant::now();
    while all_lines(&log).len() < N && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(w.0.id() as i32, libc::SIGTERM) };
    let mut w = w;
    let status = w.0.wait().expect("wait");
    assert!(status.success(), "wstrace exit {status}");
    let lines = all_lines(&log);
    assert_eq!(lines.len(), N, "lines written vs connections made");
    let mut remotes: Vec<&str> = lines
        .iter()
        .map(|v| v["remote"].as_str().unwrap_or(""))
        .collect();
    remotes.sort();
    remotes.dedup();
    assert_eq!(remotes.len(), N, "one line per connection");
    assert!(
        PathBuf::from(format!("{}.1", log.display())).exists(),
        "rotation happened"
    );
}

#[test]
fn sigterm_during_a_burst_leaves_whole_lines() {
    if !root_or_skip("sigterm_during_a_burst_leaves_whole_lines") {
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
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(w.0.id() as i32, libc::SIGTERM) };
    let mut w = w;
    let status = w.0.wait().expect("wait");
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
    if !root_or_skip("metrics_scrape_passes_promtool") {
        return;
    }
    let promtool = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .expect("promtool missing: run `cargo xtask setup` (installs Debian's prometheus package)");
    let (_srv, port) = server();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    let addr = listener.local_addr().expect("addr").to_string();
    drop(listener);
    let _w = wstrace_with(port, &["--metrics", &addr]);
    for _ in 0..3 {
        upgrade_once(port);
    }
    let start = Instant::now();
    let mut body = scrape(&addr);
    while !body.contains("wstrace_closes_total{") && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
        body = scrape(&addr);
    }
    assert!(body.contains("wstrace_upgrades_total 3"), "{body}");
    assert!(
        body.contains(
            "wstrace_closes_total{closed_by=\"local\",how=\"fin\",diagnosis=\"unknown\"} 3"
        ),
        "{body}"
    );
    assert!(
        body.contains("wstrace_connection_lifetime_seconds_count 3"),
        "{body}"
    );
    assert!(body.contains("wstrace_lost_events_total 0"), "{body}");
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
