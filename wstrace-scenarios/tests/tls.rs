//! wss:// (TLS) servers: the kernel sees only ciphertext, so the 101, the
//! request head and close frames are read from the server's TLS library
//! with uprobes on OpenSSL's SSL_write/SSL_read (this host has uprobes even
//! without kprobes). A Python `ssl` server (the system's libssl.so.3) with a
//! self-signed certificate made here by `openssl req`, driven by a Python
//! `ssl` client; real sockets, the real probes, wstrace started after the
//! server (TLS uprobes are attached to the servers found at start-up).
//!
//! Needs root, Debian's /usr/bin/python3 (stdlib `ssl`), the openssl tool,
//! nginx and node (`cargo xtask setup`): a missing one FAILS unless
//! WSTRACE_TEST_ALLOW_SKIP=1.
mod common;

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use common::{
    Barrier, Kill, Tracer, TracerOptions, free_port, require_file, require_node_ws, require_root,
    require_tool, serial,
};
use serde_json::Value;

const PYTHON: &str = "/usr/bin/python3";

/// A WebSocket server over Python's `ssl` (OpenSSL's libssl): TLS
/// handshake, request head, 101, then by `mode`: `close` closes at once;
/// `goaway` sends a close frame 1001 "restarting" and closes after the
/// client's answer; `wait-close` waits for the client's close frame,
/// echoes it and closes. Prints `READY <port> <address of SSL_write_ex in
/// this process>`.
const SERVER: &str = r#"
import ctypes, socket, ssl, struct, sys
cert, key, mode = sys.argv[1:4]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", int(sys.argv[4]) if len(sys.argv) > 4 else 0))
ls.listen(64)
lib = ctypes.CDLL(ssl._ssl.__file__).SSL_write_ex
print("READY", ls.getsockname()[1], ctypes.cast(lib, ctypes.c_void_p).value, flush=True)

def head(s):
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(4096)
        if not d:
            break
        buf += d
    return buf

while True:
    c, _ = ls.accept()
    try:
        s = ctx.wrap_socket(c, server_side=True)
        head(s)
        s.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
        if mode == "goaway":
            reason = b"restarting"
            s.sendall(bytes([0x88, 2 + len(reason)]) + struct.pack("!H", 1001) + reason)
            s.recv(4096)
        elif mode == "wait-close":
            while True:
                d = s.recv(4096)
                if not d or d[0] == 0x88:
                    break
            s.sendall(bytes([0x88, 2]) + struct.pack("!H", 1000))
        s.close()
    except (OSError, ssl.SSLError) as e:
        print("server:", e, file=sys.stderr, flush=True)
"#;

/// A WebSocket client over Python's `ssl`: `http10` sends an HTTP/1.0
/// upgrade and reads until the server closes; `close1000` sends an
/// HTTP/1.1 upgrade, then a masked close frame 1000 "bye", and reads until
/// the server closes; `answer` (HTTP/1.1) echoes a close frame it gets;
/// `quit` (HTTP/1.1) closes right after the 101; `wait` (HTTP/1.1) reads
/// until the server closes.
const CLIENT: &str = r#"
import os, socket, ssl, struct, sys
port, mode = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")
version = "HTTP/1.0" if mode == "http10" else "HTTP/1.1"
s.sendall(("GET /ws?token=SECRET " + version + "\r\nHost: localhost\r\nConnection: Upgrade\r\n"
           "Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           "Sec-WebSocket-Version: 13\r\nCookie: session=TOPSECRET\r\n\r\n").encode())
s.settimeout(5)
got = s.recv(4096)
assert got.startswith(b"HTTP/1.1 101 "), got
if mode == "quit":
    s.close()
    sys.exit(0)
if mode == "close1000":
    payload = struct.pack("!H", 1000) + b"bye"
    mask = os.urandom(4)
    s.sendall(bytes([0x88, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
try:
    while True:
        d = s.recv(4096)
        if not d:
            break
        if mode == "answer" and d[0] == 0x88:
            mask = os.urandom(4)
            s.sendall(bytes([0x88, 0x82]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(d[2:4])))
except (OSError, ssl.SSLError):
    pass
s.close()
"#;

struct Setup {
    dir: PathBuf,
    python: PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Root, python3, openssl; a temp dir (world-readable, so nothing depends
/// on root's home) with the scripts and a fresh self-signed certificate.
fn setup(name: &str) -> Option<Setup> {
    if !require_root() {
        return None;
    }
    let python = require_file(
        "python3",
        &[PathBuf::from(PYTHON)],
        "apt-get install python3",
    )?;
    let openssl = require_tool("openssl", "apt-get install openssl")?;
    let dir = std::env::temp_dir().join(format!("wstrace-tls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("server.py"), SERVER).expect("server script");
    std::fs::write(dir.join("client.py"), CLIENT).expect("client script");
    let out = Command::new(openssl)
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stdout(Stdio::null())
        .output()
        .expect("openssl req");
    assert!(
        out.status.success(),
        "openssl req failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(Setup { dir, python })
}

/// The server in `mode`: its process, port and SSL_write_ex address.
fn start_server(s: &Setup, mode: &str) -> (Kill, u16, u64) {
    start_server_on(s, mode, 0)
}

/// `start_server` on `port` (0: any).
fn start_server_on(s: &Setup, mode: &str, port: u16) -> (Kill, u16, u64) {
    let mut c = Command::new(&s.python)
        .arg(s.dir.join("server.py"))
        .arg(s.dir.join("cert.pem"))
        .arg(s.dir.join("key.pem"))
        .arg(mode)
        .arg(port.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 server");
    let mut line = String::new();
    BufReader::new(c.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("READY line");
    let mut f = line.split_whitespace();
    assert_eq!(f.next(), Some("READY"), "server said {line:?}");
    let port = f.next().and_then(|p| p.parse().ok()).expect("port");
    let addr = f.next().and_then(|p| p.parse().ok()).expect("address");
    (Kill(c), port, addr)
}

fn run_client(s: &Setup, port: u16, mode: &str) {
    let out = Command::new(&s.python)
        .arg(s.dir.join("client.py"))
        .arg(port.to_string())
        .arg(mode)
        .output()
        .expect("python3 client");
    assert!(
        out.status.success(),
        "client {mode} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The first byte of process `pid`'s memory at `addr` (root reads any).
fn byte_at(pid: u32, addr: u64) -> u8 {
    use std::os::unix::fs::FileExt as _;
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).expect("open /proc/pid/mem");
    let mut b = [0u8; 1];
    mem.read_exact_at(&mut b, addr).expect("read /proc/pid/mem");
    b[0]
}

const INT3: u8 = 0xcc;

fn frames(r: &Value) -> Vec<(String, u64)> {
    r["frames"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|f| {
                    (
                        f["direction"].as_str().unwrap_or_default().to_string(),
                        f["code"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn python_ssl_server_closing_after_an_http10_upgrade_is_named_from_the_plaintext() {
    let Some(s) = setup("http10") else { return };
    let _g = serial();
    let (server, port, ssl_write) = start_server(&s, "close");
    let pid = server.0.id();
    // A process mapping the same libssl that serves no traced port.
    let (bystander, _, bystander_ssl_write) = start_server(&s, "close");
    let t = Tracer::start(port, &[]);
    let stderr = t.stderr_text();
    assert!(
        stderr.contains(&format!(
            "wstrace: tls: pid {pid} (python3): OpenSSL covered: uprobes on SSL_read, SSL_read_ex, SSL_write, SSL_write_ex in /"
        )) && stderr.contains("libssl.so"),
        "no coverage line for the server:\n{stderr}"
    );
    // The breakpoint is in the server's copy of SSL_write_ex only: a
    // process that serves no traced port runs libssl untouched.
    assert_eq!(byte_at(pid, ssl_write), INT3, "no uprobe in the server");
    assert_ne!(
        byte_at(bystander.0.id(), bystander_ssl_write),
        INT3,
        "a process serving no traced port got a uprobe"
    );

    for _ in 0..3 {
        run_client(&s, port, "http10");
    }
    // The server side's reports: a TLS client on this host is the client
    // side only where its library's reads are probed.
    let reports = t.wait_for_server_reports(3, Duration::from_secs(20));
    assert_eq!(reports.len(), 3, "{}", t.stderr_text());
    for r in &reports {
        assert_eq!(r["tls"], "openssl", "{r}");
        assert_eq!(r["closed_by"], "local", "{r}");
        assert_eq!(r["how"], "fin", "{r}");
        assert_eq!(r["pid"], pid, "{r}");
        assert_eq!(r["upgraded_by"]["pid"], pid, "{r}");
        assert_eq!(r["diagnosis"]["code"], "http10_upgrade", "{r}");
        // The request head is the plaintext, redacted as any other.
        assert_eq!(r["request"]["version"], "HTTP/1.0", "{r}");
        assert_eq!(r["request"]["upgrade"], "websocket", "{r}");
        let text = r.to_string();
        assert!(
            !text.contains("TOPSECRET") && !text.contains("SECRET "),
            "secret printed: {r}"
        );
        // The 101 write is discounted in its TLS record form.
        assert_eq!(r["bytes_sent_after_upgrade"], 0, "{r}");
        // Frame objects: the close's function, in libc.
        let stack = r["user_stack"].as_array().cloned().unwrap_or_default();
        assert!(
            stack.iter().any(|f| {
                f["function"].as_str().is_some_and(|n| n.contains("close"))
                    && f["module"].as_str().is_some_and(|m| m.contains("libc"))
            }),
            "the close is not in the user stack: {stack:#?}"
        );
    }
    drop(bystander);
}

#[test]
fn close_frames_inside_tls_are_read_in_both_directions() {
    let Some(s) = setup("frames") else { return };
    let _g = serial();
    let (goaway, goaway_port, _) = start_server(&s, "goaway");
    let (waiter, waiter_port, _) = start_server(&s, "wait-close");
    let ports = format!("{goaway_port}");
    let t = Tracer::start(waiter_port, &["--port", &ports]);
    let stderr = t.stderr_text();
    for p in [&goaway, &waiter] {
        assert!(
            stderr.contains(&format!(
                "wstrace: tls: pid {} (python3): OpenSSL covered",
                p.0.id()
            )),
            "server {} not covered:\n{stderr}",
            p.0.id()
        );
    }
    run_client(&s, goaway_port, "answer");
    run_client(&s, waiter_port, "close1000");
    // The server side's reports: a TLS client on this host is the client
    // side only where its library's reads are probed.
    let reports = t.wait_for_server_reports(2, Duration::from_secs(20));
    assert_eq!(reports.len(), 2, "{}", t.stderr_text());
    let by_port = |p: u16| {
        reports
            .iter()
            .find(|r| {
                r["local"]
                    .as_str()
                    .is_some_and(|l| l.ends_with(&format!(":{p}")))
            })
            .unwrap_or_else(|| panic!("no report for port {p}: {reports:#?}"))
    };
    let r = by_port(goaway_port);
    assert_eq!(r["tls"], "openssl", "{r}");
    assert_eq!(r["diagnosis"]["code"], "server_close_frame", "{r}");
    assert_eq!(frames(r).first(), Some(&("sent".to_string(), 1001)), "{r}");
    assert!(
        r.to_string().contains("restarting"),
        "close reason missing: {r}"
    );
    let r = by_port(waiter_port);
    assert_eq!(r["tls"], "openssl", "{r}");
    assert_eq!(r["diagnosis"]["code"], "client_close_frame", "{r}");
    assert_eq!(
        frames(r).first(),
        Some(&("received".to_string(), 1000)),
        "{r}"
    );
    assert!(r.to_string().contains("bye"), "close reason missing: {r}");
}

#[test]
fn with_tls_off_nothing_is_probed_and_the_server_goes_unreported() {
    let Some(s) = setup("off") else { return };
    let _g = serial();
    let (server, port, ssl_write) = start_server(&s, "close");
    let barrier = Barrier::start();
    let t = TracerOptions::new()
        .ports(&[port, barrier.port])
        .args(&["--tls", "off"])
        .start()
        .unwrap_or_else(|e| panic!("wstrace did not attach: {e:#}"));
    assert!(
        !t.stderr_text().contains("wstrace: tls:"),
        "{}",
        t.stderr_text()
    );
    assert_ne!(
        byte_at(server.0.id(), ssl_write),
        INT3,
        "uprobe with --tls off"
    );
    run_client(&s, port, "http10");
    // Ciphertext only: no 101 is seen, so nothing is reported. The
    // barrier's plaintext close comes after the TLS one, and its report
    // must arrive: the TLS close's would have been before it.
    let reports = barrier.cross(&t, Duration::from_secs(20));
    assert!(reports.is_empty(), "{reports:#?}");
}

/// Debian's nginx terminating TLS on its own port and proxying /ws to
/// `backend` (plaintext), with `extra` in the location.
fn nginx_tls_edge(s: &Setup, backend: u16, extra: &str) -> Option<(Kill, u16)> {
    use std::os::unix::process::CommandExt as _;
    let bin = require_tool(
        "nginx",
        "run `cargo xtask setup` (installs Debian's nginx-light)",
    )?;
    let port = free_port();
    let d = s.dir.join("nginx");
    std::fs::create_dir_all(d.join("tmp")).expect("nginx dir");
    let (dd, sd) = (d.display(), s.dir.display());
    let conf = format!(
        "worker_processes 1;\nerror_log {dd}/error.log;\npid {dd}/nginx.pid;\nevents {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {dd}/tmp; proxy_temp_path {dd}/tmp;\n  \
         fastcgi_temp_path {dd}/tmp; uwsgi_temp_path {dd}/tmp; scgi_temp_path {dd}/tmp;\n  \
         server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {sd}/cert.pem;\n    \
         ssl_certificate_key {sd}/key.pem;\n    location /ws {{\n      proxy_pass http://127.0.0.1:{backend};\n      \
         proxy_set_header Upgrade $http_upgrade;\n      proxy_set_header Connection \"upgrade\";\n      {extra}\n    }}\n  }}\n}}\n"
    );
    std::fs::write(d.join("nginx.conf"), conf).expect("nginx.conf");
    let child = Command::new(bin)
        .args(["-p", &d.display().to_string(), "-c"])
        .arg(d.join("nginx.conf"))
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("nginx");
    let g = Kill(child);
    let start = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "nginx did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Some((g, port))
}

/// The backend that closes HTTP/1.0 upgrades right after its 101 (as
/// Swoole does); HTTP/1.1 ones stay open until the peer closes.
fn swoole_backend() -> (Kill, u16) {
    common::server(&["--mode", "swoole"])
}

/// The pids of nginx's workers (children of the master).
fn children(master: u32) -> Vec<u64> {
    std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn report_on(reports: &[Value], port: u16) -> Vec<&Value> {
    reports
        .iter()
        .filter(|r| {
            r["local"]
                .as_str()
                .is_some_and(|l| l.ends_with(&format!(":{port}")))
        })
        .collect()
}

/// nginx as the TLS edge without `proxy_http_version 1.1`: the backend
/// closes the HTTP/1.0 upgrade nginx sends it, and nginx then closes the
/// client's wss:// connection. Both ports traced at once: the backend's
/// report says http10_upgrade with nginx in front, the TLS port's says
/// nginx's worker closed the client's connection after its 101, read
/// from nginx's own SSL_write, and after the backend's close.
#[test]
fn nginx_tls_edge_without_proxy_http_version_two_reports_that_agree() {
    let Some(s) = setup("nginx10") else { return };
    let _g = serial();
    let (backend, bport) = swoole_backend();
    let Some((nginx, nport)) = nginx_tls_edge(&s, bport, "") else {
        return;
    };
    let workers = children(nginx.0.id());
    assert_eq!(workers.len(), 1, "nginx workers: {workers:?}");
    let t = Tracer::start(nport, &["--port", &bport.to_string()]);
    assert!(
        t.stderr_text().contains(&format!(
            "wstrace: tls: pid {} (nginx): OpenSSL covered",
            workers[0]
        )),
        "{}",
        t.stderr_text()
    );
    const N: usize = 3;
    for _ in 0..N {
        run_client(&s, nport, "wait");
    }
    // The server side's reports: a TLS client on this host is the client
    // side only where its library's reads are probed.
    let reports = t.wait_for_server_reports(2 * N, Duration::from_secs(20));
    let back = report_on(&reports, bport);
    let edge = report_on(&reports, nport);
    assert_eq!(
        (back.len(), edge.len()),
        (N, N),
        "{reports:#?}\n{}",
        t.stderr_text()
    );
    for r in &back {
        assert_eq!(r["tls"], Value::Null, "{r}");
        assert_eq!(r["diagnosis"]["code"], "http10_upgrade", "{r}");
        assert_eq!(r["pid"], backend.0.id(), "{r}");
        assert_eq!(r["diagnosis"]["front"]["kind"], "nginx", "{r}");
        assert_eq!(r["request"]["version"], "HTTP/1.0", "{r}");
    }
    for r in &edge {
        assert_eq!(r["tls"], "openssl", "{r}");
        // nginx sends its close_notify and closes at once; the client may
        // answer the close_notify with its FIN before nginx's close runs.
        // Either way nginx's worker closed its end, unasked by the client.
        assert!(
            matches!(r["closed_by"].as_str(), Some("local" | "peer")),
            "{r}"
        );
        assert_eq!(r["pid"], workers[0], "nginx's worker closed it: {r}");
        assert_eq!(r["upgraded_by"]["pid"], workers[0], "{r}");
        // The client's own request, HTTP/1.1, read from nginx's SSL_read.
        assert_eq!(r["request"]["version"], "HTTP/1.1", "{r}");
        assert!(!r.to_string().contains("TOPSECRET"), "{r}");
    }
    // They agree: each client connection closed by nginx after the
    // backend closed nginx's upstream connection.
    let close_ts = |r: &&Value| r["ts"].as_str().unwrap_or_default().to_string();
    let mut b: Vec<String> = back.iter().map(close_ts).collect();
    let mut e: Vec<String> = edge.iter().map(close_ts).collect();
    b.sort();
    e.sort();
    for (b, e) in b.iter().zip(&e) {
        assert!(b <= e, "backend close {b} after the edge's {e}");
    }
}

/// With `proxy_http_version 1.1` the backend keeps the upgrade open and
/// the client leaves first: both reports say the peer closed first (the
/// client on the TLS port, nginx on the backend's).
#[test]
fn nginx_tls_edge_with_proxy_http_version_peer_closed_first_on_both() {
    let Some(s) = setup("nginx11") else { return };
    let _g = serial();
    let (_backend, bport) = swoole_backend();
    let Some((nginx, nport)) = nginx_tls_edge(&s, bport, "proxy_http_version 1.1;") else {
        return;
    };
    let workers = children(nginx.0.id());
    let t = Tracer::start(nport, &["--port", &bport.to_string()]);
    const N: usize = 3;
    for _ in 0..N {
        run_client(&s, nport, "quit");
    }
    // The server side's reports: a TLS client on this host is the client
    // side only where its library's reads are probed.
    let reports = t.wait_for_server_reports(2 * N, Duration::from_secs(20));
    let back = report_on(&reports, bport);
    let edge = report_on(&reports, nport);
    assert_eq!(
        (back.len(), edge.len()),
        (N, N),
        "{reports:#?}\n{}",
        t.stderr_text()
    );
    for r in &back {
        assert_eq!(r["tls"], Value::Null, "{r}");
        assert_eq!(r["closed_by"], "peer", "{r}");
        assert_eq!(r["request"]["version"], "HTTP/1.1", "{r}");
    }
    for r in &edge {
        assert_eq!(r["tls"], "openssl", "{r}");
        assert_eq!(r["closed_by"], "peer", "{r}");
        assert_eq!(r["upgraded_by"]["pid"], workers[0], "{r}");
        assert_eq!(r["request"]["version"], "HTTP/1.1", "{r}");
    }
}

/// A TLS server that starts listening after wstrace (a deploy restarts
/// it) is covered too: the daemon has dropped CAP_SYS_ADMIN by then, and
/// its uprobe helper (forked before the drop) opens the probes. The late
/// server gets a breakpoint and its close after the 101 is reported from
/// the plaintext; a late process mapping the same libssl that serves no
/// traced port gets none.
#[test]
fn a_tls_server_started_after_wstrace_is_covered_by_the_uprobe_helper() {
    let Some(s) = setup("later") else { return };
    let _g = serial();
    let port = free_port();
    let t = Tracer::start(port, &[]);
    let early = t.stderr_text();
    assert!(
        !early.contains("no uprobe helper"),
        "the helper did not start:\n{early}"
    );
    // The helper is a child of the daemon, with CAP_SYS_ADMIN (21),
    // CAP_SYS_PTRACE (19), CAP_DAC_READ_SEARCH (2) and nothing else.
    let helper = helper_of(t.pid() as u32).expect("no wstrace-uprobe child of the daemon");
    let status = std::fs::read_to_string(format!("/proc/{helper}/status")).expect("status");
    assert!(
        status.contains("CapEff:\t0000000000280004")
            && status.contains("CapBnd:\t0000000000280004")
            && status.contains("NoNewPrivs:\t1"),
        "the helper keeps more than it needs:\n{status}"
    );

    let (server, _, ssl_write) = start_server_on(&s, "close", port);
    let (bystander, _, bystander_ssl_write) = start_server(&s, "close");
    let pid = server.0.id();
    let want = format!(
        "wstrace: tls: pid {pid} (python3): OpenSSL covered: uprobes on SSL_read, SSL_read_ex, SSL_write, SSL_write_ex in /"
    );
    // Listeners are looked for every 2 s.
    let start = std::time::Instant::now();
    while !t.stderr_text().contains(&want) && start.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let stderr = t.stderr_text();
    assert!(
        stderr.contains(&want),
        "the late server is not covered:\n{stderr}"
    );
    assert!(!stderr.contains("restart wstrace"), "{stderr}");
    assert_eq!(
        byte_at(pid, ssl_write),
        INT3,
        "no uprobe in the late server"
    );
    assert_ne!(
        byte_at(bystander.0.id(), bystander_ssl_write),
        INT3,
        "a late process serving no traced port got a uprobe"
    );

    run_client(&s, port, "http10");
    // The server side's reports: a TLS client on this host is the client
    // side only where its library's reads are probed.
    let reports = t.wait_for_server_reports(1, Duration::from_secs(20));
    assert_eq!(reports.len(), 1, "{}", t.stderr_text());
    let r = &reports[0];
    assert_eq!(r["tls"], "openssl", "{r}");
    assert_eq!(r["closed_by"], "local", "{r}");
    assert_eq!(r["pid"], pid, "{r}");
    assert_eq!(r["upgraded_by"]["pid"], pid, "{r}");
    assert_eq!(r["diagnosis"]["code"], "http10_upgrade", "{r}");
    assert_eq!(r["request"]["version"], "HTTP/1.0", "{r}");
    assert!(!r.to_string().contains("TOPSECRET"), "secret printed: {r}");

    // The server exits: its probes are closed with it (the next scan).
    drop(server);
    drop(bystander);
}

/// The daemon's child named `wstrace-uprobe`.
fn helper_of(daemon: u32) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let status = std::fs::read_to_string(e.path().join("status")).ok()?;
        let ppid = status.lines().find_map(|l| l.strip_prefix("PPid:"))?.trim();
        (status.starts_with("Name:\twstrace-uprobe") && ppid == daemon.to_string()).then_some(pid)
    })
}

/// A Node `https` server with npm's `ws` (installed by `cargo xtask setup`)
/// and its documented heartbeat: every 200 ms, terminate() each client whose
/// last ping got no pong, and ping the rest. Node links OpenSSL in
/// (nodesource) or uses libssl (Debian): either is covered. Encrypts into
/// memory and writes from libuv, so the 101 and the head are tied by thread.
const NODE_SERVER: &str = r#"
const https = require('https'), fs = require('fs');
const { WebSocketServer } = require('ws');
const [cert, key] = process.argv.slice(2);
const srv = https.createServer({cert: fs.readFileSync(cert), key: fs.readFileSync(key)});
const wss = new WebSocketServer({ server: srv });
wss.on('connection', ws => {
  ws.isAlive = true;
  ws.on('pong', () => { ws.isAlive = true; });
});
const interval = setInterval(() => {
  wss.clients.forEach(ws => {
    if (ws.isAlive === false) return ws.terminate();
    ws.isAlive = false;
    ws.ping();
  });
}, 200);
wss.on('close', () => clearInterval(interval));
srv.listen(0, '127.0.0.1', () => console.log('READY', srv.address().port));
"#;

#[test]
fn node_https_server_terminating_a_client_that_missed_a_pong_is_named() {
    let Some(s) = setup("node") else { return };
    let Some((node, modules)) = require_node_ws() else {
        return;
    };
    let _g = serial();
    std::fs::write(s.dir.join("server.js"), NODE_SERVER).expect("server.js");
    let mut c = Command::new(node)
        .current_dir(&s.dir)
        .env("NODE_PATH", &modules)
        .arg(s.dir.join("server.js"))
        .arg(s.dir.join("cert.pem"))
        .arg(s.dir.join("key.pem"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("node");
    let mut line = String::new();
    BufReader::new(c.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("READY line");
    let server = Kill(c);
    let port: u16 = line
        .trim()
        .strip_prefix("READY ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("node said {line:?}"));
    let pid = server.0.id();
    let t = Tracer::start(port, &[]);
    assert!(
        t.stderr_text()
            .contains(&format!("wstrace: tls: pid {pid} (node): OpenSSL covered")),
        "{}",
        t.stderr_text()
    );
    // The client reads and never answers a ping.
    run_client(&s, port, "wait");
    // The server side's reports: a TLS client on this host is the client
    // side only where its library's reads are probed.
    let reports = t.wait_for_server_reports(1, Duration::from_secs(20));
    assert_eq!(reports.len(), 1, "{}", t.stderr_text());
    let r = &reports[0];
    assert_eq!(r["tls"], "openssl", "{r}");
    assert_eq!(r["closed_by"], "local", "{r}");
    assert_eq!(r["pid"], pid, "node closed it: {r}");
    assert_eq!(r["upgraded_by"]["pid"], pid, "{r}");
    assert_eq!(r["request"]["version"], "HTTP/1.1", "{r}");
    assert_eq!(frames(r), Vec::new(), "a ping is no close frame: {r}");
    // The ping went out inside TLS (SSL_write) and is counted.
    assert_eq!(r["heartbeat"]["pings_sent"], 1, "{r}");
    assert_eq!(r["heartbeat"]["pongs_received"], 0, "{r}");
    assert_eq!(r["diagnosis"]["code"], "heartbeat_timeout", "{r}");
    // Terminated at the tick after its ping: at least one interval after
    // the 101 (the first ping comes at the next tick, 0-200 ms in).
    assert!(
        r["ms_after_upgrade"].as_f64().unwrap_or(0.0) >= 200.0,
        "{r}"
    );
    assert!(!r.to_string().contains("TOPSECRET"), "{r}");
}

/// A `nobody` server that maps hostile files named like libssl (run with
/// setpriv): an ELF whose section headers lie past its end, then replaced on
/// disk by a FIFO; a sparse 2 GiB file; an ELF claiming a 1 GiB symbol
/// table. The directory's name holds an escape sequence. Then it answers
/// plaintext upgrades.
const HOSTILE_SERVER: &str = r#"
import mmap, os, socket, struct, sys
d = os.path.join(sys.argv[1], "evil\x1b[31mdir")
os.makedirs(d)
def elf(shoff, shnum, sections=b"", shstrndx=0):
    h = bytearray(64)
    h[0:4] = b"\x7fELF"; h[4] = 2; h[5] = 1; h[6] = 1
    struct.pack_into("<HHI", h, 16, 3, 62, 1)
    struct.pack_into("<Q", h, 0x28, shoff)
    struct.pack_into("<HHH", h, 0x3a, 64, shnum, shstrndx)
    return bytes(h) + sections
maps = []
def keep(name, data=None, size=4096):
    p = os.path.join(d, name)
    with open(p, "wb") as f:
        if data: f.write(data)
        f.truncate(max(size, len(data or b"")))
    f = open(p, "rb")
    maps.append(mmap.mmap(f.fileno(), 4096, prot=mmap.PROT_READ | mmap.PROT_EXEC))
    return p
lying = keep("libssl.so.3", elf(1 << 40, 1000))
os.unlink(lying); os.mkfifo(lying)
keep("libssl.so.1.1", size=2 << 30)
null = bytes(64)
dynsym = struct.pack("<IIQQQQIIQQ", 0, 11, 0, 0, 0, 1 << 30, 2, 0, 8, 24)
strtab = struct.pack("<IIQQQQIIQQ", 0, 3, 0, 0, 256, 1, 0, 0, 1, 0)
keep("libssl.so.9", elf(64, 3, null + dynsym + strtab, 2))
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0))
s.listen()
print("READY", s.getsockname()[1], flush=True)
while True:
    c, _ = s.accept()
    c.recv(4096)
    c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    c.close()
"#;

#[test]
fn hostile_libssl_look_alikes_of_a_nobody_server_are_refused_not_followed() {
    use std::os::unix::fs::PermissionsExt as _;
    let Some(s) = setup("hostile") else { return };
    let Some(setpriv) = require_tool("setpriv", "apt-get install util-linux") else {
        return;
    };
    let _g = serial();
    let dir = s.dir.join("nobody");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::set_permissions(&s.dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let script = s.dir.join("hostile.py");
    std::fs::write(&script, HOSTILE_SERVER).expect("script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let mut c = Command::new(setpriv);
    c.args([
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
        "/usr/bin/python3",
    ])
    .arg(&script)
    .arg(&dir);
    let (server, port) = common::spawn_ready(&mut c);
    let pid = server.0.id();
    // Attaches (no hang on the FIFO now at the path, no 2 GiB read).
    let t = Tracer::start(port, &[]);
    let stderr = t.stderr_text();
    let who = format!("wstrace: warning: tls: pid {pid} (python3): ");
    for (file, why) in [
        ("libssl.so.3 (deleted) was not read: ", ""),
        (
            "libssl.so.1.1 was not read: ",
            "not a readable regular file of at most 1 GiB",
        ),
        (
            "libssl.so.9 was not read: ",
            "its symbol table is larger than 64 MiB",
        ),
    ] {
        let line = stderr
            .lines()
            .find(|l| l.starts_with(&who) && l.contains(file))
            .unwrap_or_else(|| panic!("no warning for {file}:\n{stderr}"));
        assert!(line.contains(why), "{line}");
        // The directory's escape sequence is shown, not sent to the terminal.
        assert!(line.contains("evil\\x1b[31mdir/"), "{line}");
    }
    assert!(!stderr.contains('\x1b'), "raw escape on stderr:\n{stderr}");
    assert!(
        stderr.contains(&format!(
            "wstrace: tls: pid {pid} (python3): no OpenSSL-compatible TLS library"
        )),
        "{stderr}"
    );
    // And the plaintext server is traced as ever.
    common::upgrade_once(port);
    // Both ends: this test's socket read the 101 (the client side).
    let (r, client) = t.wait_for_both_ends(port, Duration::from_secs(20));
    assert_eq!(client["closed_by"], "peer", "{client}");
    let reports = [r];
    assert_eq!(reports[0]["closed_by"], "local", "{}", reports[0]);
    assert_eq!(reports[0]["tls"], Value::Null, "{}", reports[0]);
}

/// A function under rustls' crate path, as a Rust program that links
/// rustls keeps thousands of in its symbol table (legacy mangling; the
/// name is a plain C identifier, so a C compiler can define it).
const RUSTLS_STAND_IN: &str =
    "int _ZN6rustls4conn10connection6Writer5write17h0123456789abcdefE(int x) { return x + 1; }\n";

/// A server with rustls linked in (its TLS is in its own code, which
/// wstrace does not cover) is named at start-up in one line, and its plain
/// traffic is still reported. The stand-in is tests/c/deep_close.c linked
/// with one function under rustls' crate path (see [`RUSTLS_STAND_IN`]).
#[test]
fn a_server_linking_rustls_is_named_at_start_up_as_not_covered() {
    if !require_root() {
        return;
    }
    let Some(cc) = require_tool(
        "cc",
        "install a C compiler: apt-get install gcc (`cargo xtask setup` does)",
    ) else {
        return;
    };
    let _g = serial();
    let dir = common::target().join("c");
    std::fs::create_dir_all(&dir).expect("mkdir target/c");
    let stub = dir.join("rustls_stand_in.c");
    std::fs::write(&stub, RUSTLS_STAND_IN).expect("write the stand-in");
    let bin = dir.join("rustls_server");
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/c/deep_close.c");
    let built = Command::new(&cc)
        .args(["-O2", "-g", "-o"])
        .arg(&bin)
        .arg(&src)
        .arg(&stub)
        .status()
        .expect("cc");
    assert!(built.success(), "cc failed on {}", src.display());
    let (server, port) = common::spawn_ready(Command::new(&bin).arg("0"));
    let t = Tracer::start(port, &[]);
    let stderr = t.stderr_text();
    let line = stderr
        .lines()
        .find(|l| l.starts_with(&format!("wstrace: tls: pid {} (", server.0.id())))
        .unwrap_or_else(|| panic!("no tls line for the server:\n{stderr}"));
    assert!(
        line.ends_with("only plaintext is seen; not covered: rustls"),
        "{line}"
    );
    common::upgrade_once(port);
    // Both ends: this test's socket read the 101 (the client side).
    let (r, client) = t.wait_for_both_ends(port, Duration::from_secs(10));
    assert_eq!(client["closed_by"], "peer", "{client}");
    let reports = [r];
    assert_eq!(reports[0]["pid"], server.0.id(), "{}", reports[0]);
}
