//! wstrace as root against what other users control (issue 14): a server
//! run as `nobody` with an executable path holding a newline and ESC, a comm
//! with bidi controls and a close reason with an OSC sequence; a client
//! sending control characters in the request; a flood of connections on the
//! metrics port under the fd limit systemd gives. Needs root and setpriv,
//! prlimit and /usr/bin/python3 (fails without them unless
//! WSTRACE_TEST_ALLOW_SKIP=1).
mod common;

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    Kill, Tracer, WorldReadableDir, as_nobody, free_port, install_executable, require,
    require_root, serial, spawn_ready, upgrade_once,
};

/// Root, setpriv, prlimit and the system python3 (see `common::require`).
fn can_run(_test: &str) -> bool {
    require_root()
        && ["/usr/bin/setpriv", "/usr/bin/prlimit", "/usr/bin/python3"]
            .into_iter()
            .all(|t| require(Path::new(t).is_file(), &format!("needs {t}")))
}

/// A fresh directory everyone can read (nobody runs programs from it),
/// removed when the returned guard drops.
fn world_readable_dir(name: &str) -> (WorldReadableDir, PathBuf) {
    let d = WorldReadableDir::new(&format!("hostile-{name}"));
    let p = d.path().to_path_buf();
    (d, p)
}

/// Sets its comm with prctl, answers every request with a 101 and a close
/// frame whose reason holds an OSC title sequence and U+202E, then closes.
const HOSTILE_SERVER: &str = r#"
import ctypes, socket, sys
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(16)
print("READY", s.getsockname()[1], flush=True)
while True:
    c, _ = s.accept()
    data = b""
    while b"\r\n\r\n" not in data:
        d = c.recv(4096)
        if not d:
            break
        data += d
    c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n")
    payload = (1000).to_bytes(2, "big") + "bye\x1b]0;pwned\x07\u202e".encode()
    c.sendall(bytes([0x88, len(payload)]) + payload)
    c.close()
"#;

/// What the server's comm becomes (15 bytes at most).
const COMM: &str = "ws\u{202e}\u{2066}evil";
/// Its executable's file name: a newline, ESC and a forged report line.
const EXE_NAME: &str = "py\n\x1b[31mFAKE CLOSE";

#[test]
fn hostile_exe_comm_request_and_reason_are_escaped_in_text_json_and_report() {
    if !can_run("hostile_exe_comm_request_and_reason_are_escaped_in_text_json_and_report") {
        return;
    }
    let _serial = serial();
    let (dir, d) = world_readable_dir("names");
    let exe = d.join(EXE_NAME);
    install_executable(Path::new("/usr/bin/python3"), &exe);
    let script = dir.write("server.py", HOSTILE_SERVER);
    let (_srv, port) = spawn_ready(as_nobody(&exe).arg(&script).arg(COMM));

    let (_log_dir, log_dir) = world_readable_dir("names-log");
    let log = log_dir.join("closes.jsonl");
    let mut t = Tracer::start_format(
        port,
        "text",
        &["--color", "never", "--output", &log.display().to_string()],
    );
    let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    c.write_all(
        "GET /ws\x1b[2J\u{202e}x HTTP/1.1\r\nHost: h\x1b]0;t\x07\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nUser-Agent: ua\u{202e}\x08\r\nSec-WebSocket-Version: 13\r\n\r\n"
            .as_bytes(),
    )
    .expect("send");
    let mut buf = [0u8; 512];
    while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
    drop(c);
    let start = Instant::now();
    while !t.raw_lines().iter().any(|l| l.contains("frame:"))
        && start.elapsed() < Duration::from_secs(20)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    t.signal(libc::SIGTERM);
    assert!(t.wait().success(), "{}", t.stderr_text());

    // Text: the report is exactly its lines, nothing raw in any of them.
    let out = t.raw_lines().concat();
    eprintln!("{out}");
    for (i, l) in out.lines().enumerate() {
        assert!(
            !l.chars().any(|c| c.is_control()
                || ('\u{2066}'..='\u{2069}').contains(&c)
                || ('\u{202a}'..='\u{202e}').contains(&c)),
            "line {} has a raw control or bidi character: {l:?}",
            i + 1
        );
        assert!(!l.starts_with("FAKE"), "forged line: {l:?}");
    }
    let shown_exe = format!("{}/py\\x0a\\x1b[31mFAKE CLOSE", d.display());
    let shown_comm = "ws\\u{202e}\\u{2066}evil";
    // Two reports, one per end: the server's (its closer is the hostile
    // process) and this test's socket's (it read the 101: the client side).
    let lines_of = |what: &str| -> Vec<&str> {
        out.lines()
            .filter(|l| l.trim_start().starts_with(what))
            .collect()
    };
    let closers = lines_of("closer:");
    assert!(
        closers
            .iter()
            .any(|l| l.contains(shown_comm) && l.contains(&shown_exe)),
        "closer lines: {closers:?}"
    );
    let requests = lines_of("request:");
    assert!(
        requests.iter().any(
            |request| request.contains("GET /ws\\x1b[2J\\u{202e}x HTTP/1.1")
                && request.contains("Host: h\\x1b]0;t\\x07")
                && request.contains("User-Agent: ua\\u{202e}\\x08")
        ),
        "request lines: {requests:?}"
    );
    let frame = out
        .lines()
        .find(|l| l.trim_start().starts_with("frame:"))
        .unwrap_or_else(|| panic!("no frame line in\n{out}"));
    assert!(
        frame.contains("bye\\u{1b}]0;pwned\\u{7}") && frame.contains("\\u{202e}"),
        "frame line: {frame:?}"
    );

    // JSON (--output): C1 and bidi written as \u escapes, decoding to the
    // original text.
    let json = std::fs::read_to_string(&log).expect("log");
    assert!(json.contains(r"ws\u202e\u2066evil"), "{json}");
    assert!(json.contains(r"py\n\u001b[31mFAKE CLOSE"), "{json}");
    assert!(
        !json.contains('\u{202e}') && !json.contains('\x1b'),
        "{json}"
    );
    let v: serde_json::Value = json
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .find(|v| common::is_server_on(v, port))
        .unwrap_or_else(|| panic!("no server-side line: {json}"));
    assert_eq!(v["comm"], COMM);
    assert_eq!(v["exe"], exe.display().to_string());

    // `wstrace report` on that log: the closing process on one line, escaped.
    let report = Command::new(common::wstrace_bin())
        .arg("report")
        .arg(&log)
        .output()
        .expect("wstrace report");
    assert!(report.status.success());
    let text = String::from_utf8_lossy(&report.stdout);
    assert!(
        text.lines()
            .any(|l| l.contains(shown_comm) && l.contains(&shown_exe)),
        "{text}"
    );
    assert!(
        !text.contains('\x1b') && !text.contains('\u{202e}'),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// Opens N connections to the port, holds them for S seconds, exits.
const FLOOD: &str = r#"
import socket, sys, time
port, n, hold = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
socks = []
for _ in range(n):
    s = socket.socket()
    s.setblocking(False)
    try:
        s.connect(("127.0.0.1", port))
    except BlockingIOError:
        pass
    socks.append(s)
print("OPENED", len(socks), flush=True)
time.sleep(hold)
"#;

/// `GET /metrics`: the status line, or "" when refused.
fn scrape(port: u16) -> String {
    let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(3)));
    let _ = c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    out.lines().next().unwrap_or("").to_string()
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the comm, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

/// The share of one core `pid` used over `window`, in percent.
fn cpu_percent(pid: i32, window: Duration) -> f64 {
    let (c0, t0) = (cpu_ticks(pid), Instant::now());
    std::thread::sleep(window);
    (cpu_ticks(pid) - c0) as f64 / ticks_per_second() as f64 / t0.elapsed().as_secs_f64() * 100.0
}

fn ticks_per_second() -> u64 {
    // SAFETY: plain getter.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as u64
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Every line of FILE.N ... FILE.1, FILE.
fn all_log_lines(log: &Path) -> Vec<String> {
    let mut files: Vec<PathBuf> = (1..=1000)
        .map(|i| PathBuf::from(format!("{}.{i}", log.display())))
        .filter(|p| p.exists())
        .collect();
    files.reverse();
    files.push(log.to_path_buf());
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn metrics_flood_under_1024_fds_stays_cheap_and_output_keeps_rotating() {
    if !can_run("metrics_flood_under_1024_fds_stays_cheap_and_output_keeps_rotating") {
        return;
    }
    let _serial = serial();
    let (_srv, port) = common::server(&["--mode", "close-after101"]);
    let mport = free_port();
    let (_d, d) = world_readable_dir("flood");
    let log = d.join("closes.jsonl");
    let mut t = Tracer::start(
        port,
        &[
            "--metrics",
            &format!("127.0.0.1:{mport}"),
            "--output",
            &log.display().to_string(),
            "--rotate-size",
            "16K",
            "--rotate-keep",
            "1000",
        ],
    );
    // The limit systemd gives a service by default.
    let ok = Command::new("/usr/bin/prlimit")
        .args(["--pid", &t.pid().to_string(), "--nofile=1024:1024"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "prlimit --pid failed");
    assert!(
        scrape(mport).starts_with("HTTP/1.1 200"),
        "scrape before the flood"
    );
    // What the daemon uses with nothing to do, on this (shared) machine.
    let idle = cpu_percent(t.pid(), Duration::from_secs(3));

    // 3000 connections held for 12 s by nobody (with a limit of its own
    // high enough to hold them).
    let mut flood = Command::new("/usr/bin/prlimit");
    flood
        .args(["--nofile=8192:8192", "/usr/bin/setpriv"])
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .args([
            "/usr/bin/python3",
            "-c",
            FLOOD,
            &mport.to_string(),
            "3000",
            "12",
        ])
        .current_dir(&d)
        .stdout(Stdio::piped());
    let mut flood = Kill(flood.spawn().expect("flooder"));
    let mut line = String::new();
    BufReader::new(flood.0.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("OPENED");
    assert_eq!(
        line.trim(),
        "OPENED 3000",
        "the flooder could not open them all"
    );

    // The daemon's CPU over 4 s of flood, with no traced traffic.
    std::thread::sleep(Duration::from_millis(500));
    let (c0, t0) = (cpu_ticks(t.pid()), Instant::now());
    let mut max_fds = 0;
    while t0.elapsed() < Duration::from_secs(4) {
        max_fds = max_fds.max(open_fds(t.pid()));
        std::thread::sleep(Duration::from_millis(100));
    }
    let cpu =
        (cpu_ticks(t.pid()) - c0) as f64 / ticks_per_second() as f64 / t0.elapsed().as_secs_f64()
            * 100.0;
    eprintln!(
        "daemon CPU: {idle:.1}% of a core idle, {cpu:.1}% during the flood; at most {max_fds} fds open"
    );
    let busy = scrape(mport);
    eprintln!("scrape during the flood: {busy:?}");

    // Traced closes during the flood reach --output through rotations.
    const N: usize = 300;
    for _ in 0..N {
        upgrade_once(port);
    }
    // Two lines per connection: the server's socket and this test's (it
    // read the 101: the client side).
    let start = Instant::now();
    while all_log_lines(&log).len() < 2 * N && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    max_fds = max_fds.max(open_fds(t.pid()));
    let lines = all_log_lines(&log).len();
    let _ = flood.0.wait();

    // After the flood: scrapes are served again.
    let start = Instant::now();
    let mut after = scrape(mport);
    while !after.starts_with("HTTP/1.1 200") && start.elapsed() < Duration::from_secs(8) {
        std::thread::sleep(Duration::from_millis(200));
        after = scrape(mport);
    }
    t.signal(libc::SIGTERM);
    assert!(t.wait().success());
    let stderr = t.stderr_text();

    // A spinning accept loop takes most of a core; the flood may cost a
    // few % over what the daemon uses idle.
    assert!(
        cpu < idle + 5.0,
        "daemon used {cpu:.1}% of a core during the flood ({idle:.1}% idle)"
    );
    assert!(max_fds < 200, "daemon held {max_fds} fds during the flood");
    assert_eq!(
        lines,
        2 * N,
        "every close, both ends, in --output:\n{stderr}"
    );
    assert!(
        PathBuf::from(format!("{}.1", log.display())).exists(),
        "the log rotated during the flood"
    );
    assert!(
        !stderr.contains("Too many open files") && !stderr.contains("stdout only"),
        "{stderr}"
    );
    assert!(
        after.starts_with("HTTP/1.1 200"),
        "scrape after the flood: {after:?}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// A client run as nobody: upgrades, then sends one segment holding a close
/// frame with a 126-byte payload (control frames carry at most 125) and a
/// valid ping, and closes.
const BAD_CLOSE_THEN_PING: &str = r#"
import socket, sys
port = int(sys.argv[1])
c = socket.create_connection(("127.0.0.1", port))
c.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n")
data = b""
while b"\r\n\r\n" not in data:
    d = c.recv(4096)
    if not d:
        sys.exit("no 101")
    data += d
key = b"\x01\x02\x03\x04"
bad = bytes([0x88, 0x80 | 126, 0, 126]) + key + bytes(b ^ key[i % 4] for i, b in enumerate(b"\x03\xe8" + b"x" * 124))
ping = bytes([0x89, 0x80 | 2]) + key + bytes(b ^ key[i % 4] for i, b in enumerate(b"hi"))
c.sendall(bad + ping)
import time
time.sleep(0.3)
c.close()
print("SENT", flush=True)
"#;

/// Issue 25, item 6: one malformed control frame in a segment skips its own
/// bytes only: the valid ping after it in the same read still counts.
#[test]
fn a_malformed_close_frame_does_not_hide_the_ping_after_it() {
    if !can_run("a_malformed_close_frame_does_not_hide_the_ping_after_it") {
        return;
    }
    let _serial = serial();
    let (_srv, port) = common::server(&["--mode", "wait-for-peer"]);
    let (_dir, d) = world_readable_dir("badframe");
    let script = d.join("client.py");
    std::fs::write(&script, BAD_CLOSE_THEN_PING).expect("script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let t = Tracer::start(port, &[]);
    let out = as_nobody(Path::new("/usr/bin/python3"))
        .arg(&script)
        .arg(port.to_string())
        .output()
        .expect("client");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("SENT"),
        "client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The server's socket; the client's (it read the 101 in one recv: the
    // client side) is the one that sent the bad close and the ping.
    let (r, c) = t.wait_for_both_ends(port, Duration::from_secs(20));
    assert_eq!(c["closed_by"], "local", "{c:#}");
    assert_eq!(c["heartbeat"]["pings_sent"], 1, "{c:#}");
    let r = &r;
    assert_eq!(r["closed_by"], "peer", "{r:#}");
    assert_eq!(r["heartbeat"]["pings_received"], 1, "{r:#}");
    assert_ne!(r["diagnosis"]["code"], "idle_timeout", "{r:#}");
    let _ = std::fs::remove_dir_all(&d);
}

/// Creates PATH with O_CREAT|O_EXCL in a loop for S seconds, writing a
/// forged line into it when it wins; prints how often it won.
const TAKE_THE_NAME: &str = r#"
import os, sys, time
path, secs = sys.argv[1], float(sys.argv[2])
won = 0
end = time.time() + secs
while time.time() < end:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except OSError:
        continue
    os.write(fd, b'{"forged": true}\n')
    os.close(fd)
    won += 1
print("WON", won, flush=True)
"#;

/// Issue 25, item 5: a nobody loop on `open(O_CREAT|O_EXCL)` of the log's
/// name never gets it during rotations (in sticky /tmp-like directory), and
/// no file grows past --rotate-size.
#[test]
fn rotation_never_hands_the_log_name_to_another_user() {
    if !can_run("rotation_never_hands_the_log_name_to_another_user") {
        return;
    }
    let _serial = serial();
    let (_srv, port) = common::server(&["--mode", "close-after101"]);
    let (_dir, d) = world_readable_dir("rotname");
    let logs = d.join("logs");
    std::fs::create_dir(&logs).expect("mkdir");
    // Like /tmp: everyone may create, only owners remove.
    std::fs::set_permissions(&logs, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    let log = logs.join("wslog.jsonl");
    let script = d.join("take.py");
    std::fs::write(&script, TAKE_THE_NAME).expect("script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let mut t = Tracer::start(
        port,
        &[
            "--output",
            &log.display().to_string(),
            "--rotate-size",
            "32K",
            "--rotate-keep",
            "3",
        ],
    );
    let taker = as_nobody(Path::new("/usr/bin/python3"))
        .arg(&script)
        .arg(&log)
        .arg("10")
        .stdout(Stdio::piped())
        .spawn()
        .expect("taker");
    let taker = Kill(taker);
    // ~50 rotations (a report with its frame objects is ~6 KB, so a file
    // holds ~5) while the loop runs.
    let n = 300;
    for _ in 0..n {
        upgrade_once(port);
        std::thread::sleep(Duration::from_millis(20));
    }
    // Both ends of each connection: the server's socket and this test's
    // (it read the 101: the client side).
    t.wait_for_ends(port, n, Duration::from_secs(30));
    let mut taker = taker;
    let mut won = String::new();
    taker
        .0
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut won)
        .expect("taker output");
    t.signal(libc::SIGTERM);
    assert!(t.wait().success(), "{}", t.stderr_text());
    assert_eq!(won.trim(), "WON 0", "the nobody loop took the log's name");
    use std::os::unix::fs::MetadataExt as _;
    let mut rotated = 0;
    for e in std::fs::read_dir(&logs).expect("ls").filter_map(Result::ok) {
        let m = e.metadata().expect("meta");
        let name = e.file_name().to_string_lossy().into_owned();
        assert_eq!(m.uid(), 0, "{name} is owned by uid {}", m.uid());
        assert!(m.len() <= 32 * 1024, "{name} is {} bytes (> 32K)", m.len());
        rotated += usize::from(name.starts_with("wslog.jsonl."));
    }
    assert!(
        rotated >= 3,
        "only {rotated} rotated files: too few reports ({n})"
    );
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(!text.contains("forged"), "{text}");
    let _ = std::fs::remove_dir_all(&d);
}

/// Names itself nginx (prctl), binds a client socket to 127.0.0.2:PORT
/// (the real server listens on 127.0.0.1:PORT), has its own listener send
/// an HTTP/1.0 upgrade with `Via: 1.1 nginx` to that client socket, answers
/// `HTTP/1.1 101` on it and closes; N times.
const FORGE_NGINX: &str = r#"
import ctypes, socket, sys
ctypes.CDLL(None).prctl(15, b"nginx", 0, 0, 0)
port, n = int(sys.argv[1]), int(sys.argv[2])
done = 0
for _ in range(n):
    l = socket.socket()
    l.bind(("127.0.0.2", 0))
    l.listen(1)
    c = socket.socket()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    c.bind(("127.0.0.2", port))
    c.connect(l.getsockname())
    a, _ = l.accept()
    a.sendall(b"GET /spoof HTTP/1.0\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\nVia: 1.1 nginx\r\n\r\n")
    got = b""
    while b"\r\n\r\n" not in got:
        got += c.recv(4096)
    c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    c.close()
    a.recv(4096)
    a.close()
    l.close()
    done += 1
print("FORGED", done, flush=True)
"#;

/// Issue 25, item 3: a nobody process calling itself nginx cannot forge a
/// server's report (a client socket bound to the traced port is no server
/// socket: only one a listener on the port accepted is), and the victim's
/// real closes keep their reports; no report names nginx without an nginx
/// executable. Its own socket that read the 101 from the one bound to the
/// port is, truthfully, the client side of a connection to the port
/// (`--port` follows both ends, the client's by its remote port): reported
/// under the forger's own executable, never as nginx's.
#[test]
fn a_client_socket_on_the_traced_port_forges_no_report() {
    if !can_run("a_client_socket_on_the_traced_port_forges_no_report") {
        return;
    }
    let _serial = serial();
    let (_srv, port) = common::server(&["--mode", "close-after101"]);
    let (_dir, d) = world_readable_dir("forge");
    let script = d.join("forge.py");
    std::fs::write(&script, FORGE_NGINX).expect("script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let mport = free_port();
    let t = Tracer::start(port, &["--metrics", &format!("127.0.0.1:{mport}")]);
    let forger = as_nobody(Path::new("/usr/bin/python3"))
        .arg(&script)
        .arg(port.to_string())
        .arg("5")
        .output()
        .expect("forger");
    assert!(
        String::from_utf8_lossy(&forger.stdout).contains("FORGED 5"),
        "the forger did not run: {}",
        String::from_utf8_lossy(&forger.stderr)
    );
    for _ in 0..3 {
        upgrade_once(port);
    }
    // The three real connections, both ends (this test's sockets read the
    // 101: the client side), and the forger's five sockets that read a
    // 101 from one bound to the port: client sides, nothing more.
    let start = Instant::now();
    let (servers, clients) = loop {
        let reports = t.reports();
        let (servers, clients): (Vec<_>, Vec<_>) =
            reports.into_iter().partition(common::is_server_side);
        if (servers.len() >= 3 && clients.len() >= 8) || start.elapsed() > Duration::from_secs(20) {
            break (servers, clients);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Whatever else arrives late would show here too.
    std::thread::sleep(Duration::from_millis(500));
    let reports = t.reports();
    assert_eq!(reports.len(), 11, "{reports:#?}\n{}", t.stderr_text());
    assert_eq!(servers.len(), 3, "{servers:#?}");
    for r in &servers {
        let local = r["local"].as_str().unwrap_or_default();
        assert!(local.starts_with("127.0.0.1:"), "a forged report: {r:#}");
        assert!(common::is_server_on(r, port), "{r:#}");
    }
    let forged: Vec<&serde_json::Value> = clients
        .iter()
        .filter(|r| r["upgraded_by"]["pid"].as_u64() != Some(u64::from(std::process::id())))
        .collect();
    assert_eq!((clients.len(), forged.len()), (8, 5), "{clients:#?}");
    for r in &forged {
        assert!(common::is_client_of(r, port), "{r:#}");
        let remote = r["remote"].as_str().unwrap_or_default();
        assert!(remote.starts_with("127.0.0.2:"), "{r:#}");
        // Its own name is what it chose; its executable is its own.
        let exe = r["exe"].as_str().unwrap_or_default();
        assert!(exe.starts_with("/usr/bin/python3"), "{r:#}");
    }
    for r in &reports {
        assert_ne!(r["diagnosis"]["front"]["kind"], "nginx", "{r:#}");
        let fix = r["diagnosis"]["fix"].as_str().unwrap_or_default();
        assert!(!fix.contains("proxy_http_version"), "{r:#}");
    }
    let metrics = {
        let mut c = TcpStream::connect(("127.0.0.1", mport)).expect("metrics");
        c.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("scrape");
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        out
    };
    assert!(
        metrics.contains("wstrace_upgrades_total 11"),
        "the forged 101s were counted as upgrades:\n{metrics}"
    );
    // Ignored, and said: each forged 101 is counted, never silent.
    assert!(
        metrics.contains("wstrace_lost_events_total{reason=\"not_accepted\"} 5"),
        "the 5 forged 101s were not counted as not_accepted:\n{metrics}"
    );
    let _ = std::fs::remove_dir_all(&d);
}
