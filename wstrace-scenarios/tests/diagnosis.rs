//! Diagnosis against real software on this host: Debian's nginx in front of a
//! Swoole-like backend (`ws-scenario serve --mode swoole`), and the Python
//! `websockets` library closing with 1011. Each test starts its own wstrace
//! (tracepoint/auto probes, whatever this kernel has) on the backend's port.
//!
//! Needs root, nginx (Debian's nginx-light) and the venv with `websockets`;
//! `cargo xtask setup` installs both. A missing one is a failure that says
//! what to run (see `common::require`).
use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

mod common;

use common::{
    Barrier, Kill as Proc, Tracer, TracerOptions, WorldReadableDir, free_port,
    nobody_python_server, read_ready, require_nobody_python, require_root, require_tool,
    require_venv_python, spawn_group as spawn,
};
use serde_json::Value;

/// wstrace on the backend's port (the harness's launcher), JSON reports.
fn wstrace(port: u16) -> Tracer {
    Tracer::start(port, &[])
}

const UPGRADE: &str = "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nCookie: session=TOPSECRET\r\n\r\n";

/// Debian's nginx; see `common::require`.
fn require_nginx() -> Option<PathBuf> {
    require_tool(
        "nginx",
        "run `cargo xtask setup` (installs Debian's nginx-light)",
    )
}

/// nginx (`bin`) proxying /ws on its own port to `backend`.
fn nginx(bin: &Path, dir: &Path, backend: u16, extra: &str) -> (Proc, u16) {
    let port = free_port();
    std::fs::create_dir_all(dir.join("tmp")).expect("nginx dir");
    let d = dir.display();
    let conf = format!(
        "worker_processes 1;\nerror_log {d}/error.log;\npid {d}/nginx.pid;\nevents {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp;\n  \
         fastcgi_temp_path {d}/tmp; uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;\n  \
         server {{\n    listen 127.0.0.1:{port};\n    location /ws {{\n      proxy_pass http://127.0.0.1:{backend};\n      \
         proxy_set_header Upgrade $http_upgrade;\n      proxy_set_header Connection \"upgrade\";\n      {extra}\n    }}\n  }}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).expect("nginx.conf");
    let p = spawn(
        Command::new(bin)
            .args(["-p", &dir.display().to_string(), "-c"])
            .arg(dir.join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null()),
    );
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "nginx did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (p, port)
}

fn backend() -> (Proc, u16) {
    let mut p = spawn(
        Command::new(env!("CARGO_BIN_EXE_ws-scenario"))
            .args(["serve", "--bind", "127.0.0.1", "--mode", "swoole"])
            .stdout(Stdio::piped()),
    );
    let port = read_ready(&mut p);
    (p, port)
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wstrace-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("tempdir");
    d
}

/// Upgrades through `port`; returns the connection and the status line.
fn upgrade(port: u16) -> (TcpStream, String) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    c.write_all(UPGRADE.as_bytes()).expect("send");
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && c.read(&mut b).unwrap_or(0) == 1 {
        head.push(b[0]);
    }
    let status = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    (c, status)
}

/// True when `peer` (a report's `peer` object) is a worker of the nginx
/// master `nginx`: comm `nginx`, its parent the master.
fn is_nginx_worker(peer: &Value, nginx: &Proc) -> bool {
    let Some(pid) = peer["pid"].as_u64() else {
        return false;
    };
    // /proc/<pid>/stat: "pid (comm) state ppid ...", comm may hold spaces.
    let ppid = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|st| {
            st.rsplit_once(") ")?
                .1
                .split_whitespace()
                .nth(1)?
                .parse::<u32>()
                .ok()
        });
    peer["comm"] == "nginx" && ppid == Some(nginx.0.id())
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for k in path {
        cur = &cur[*k];
    }
    cur.as_str().unwrap_or("")
}

/// nginx closes its upstream connection within microseconds of the
/// backend's close after the 101, before the daemon even reads the upgrade:
/// the kernel's record of who wrote the request names it every time (the
/// userspace lookup it replaced named nginx in 0-3 of 10 such closes).
const FAST_CLOSES: usize = 10;

#[test]
fn nginx_without_proxy_http_version_is_http10_upgrade() {
    if !require_root() {
        return;
    }
    let Some(nginx_bin) = require_nginx() else {
        return;
    };
    let (backend, bport) = backend();
    let w = wstrace(bport);
    let dir = tempdir("http10");
    let (nginx, nport) = nginx(&nginx_bin, &dir, bport, "");
    // Clients stay connected: the backend must close first, as in the field.
    let mut clients = Vec::new();
    for _ in 0..FAST_CLOSES {
        let (c, status) = upgrade(nport);
        assert!(status.contains("101"), "nginx answered {status:?}");
        clients.push(c);
    }
    // Both ends of each connection to the backend: its socket (the server
    // side) and nginx's upstream socket, which read the 101 (the client
    // side), closed by the backend.
    let (reports, upstream) = w.wait_for_ends(bport, FAST_CLOSES, Duration::from_secs(10));
    for u in &upstream {
        assert_eq!(s(u, &["closed_by"]), "peer", "{u:#}");
        assert_eq!(s(u, &["upgraded_by", "comm"]), "nginx", "{u:#}");
    }
    for r in &reports {
        assert_eq!(s(r, &["diagnosis", "code"]), "http10_upgrade", "{r:#}");
        assert!(
            s(r, &["diagnosis", "fix"]).contains("proxy_http_version 1.1;"),
            "{r:#}"
        );
        assert_eq!(s(r, &["closed_by"]), "local");
        assert_eq!(
            r["pid"].as_u64(),
            Some(u64::from(backend.0.id())),
            "closer is the backend: {r:#}"
        );
        assert_eq!(s(r, &["request", "version"]), "HTTP/1.0");
        assert_eq!(
            s(r, &["request", "connection"]).to_ascii_lowercase(),
            "upgrade"
        );
        // The connection is nginx's to the backend.
        assert_eq!(s(r, &["local"]), format!("127.0.0.1:{bport}"), "{r:#}");
        let remote = s(r, &["remote"]);
        assert!(
            remote.starts_with("127.0.0.1:") && remote != format!("127.0.0.1:{bport}"),
            "{r:#}"
        );
        assert!(
            is_nginx_worker(&r["peer"], &nginx),
            "the peer is nginx's worker: {r:#}"
        );
        assert_eq!(s(r, &["peer", "source"]), "kernel", "{r:#}");
        // What sits in front rests on the peer's program: nginx's own fix.
        let front = &r["diagnosis"]["front"];
        assert_eq!(
            (s(front, &["kind"]), s(front, &["evidence"])),
            ("nginx", "peer_process"),
            "{r:#}"
        );
        assert!(r["peer"]["tid"].as_u64().is_some(), "{r:#}");
        // The Cookie never appears, in any form.
        assert!(!r.to_string().contains("TOPSECRET"), "{r}");
    }
}

#[test]
fn a_direct_http10_client_gets_the_client_fix_not_nginx() {
    if !require_root() {
        return;
    }
    // No proxy at all: this test process sends the HTTP/1.0 upgrade itself.
    let (backend, bport) = backend();
    let w = wstrace(bport);
    let mut c = TcpStream::connect(("127.0.0.1", bport)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    c.write_all(UPGRADE.replace("HTTP/1.1", "HTTP/1.0").as_bytes())
        .expect("send");
    let mut answer = Vec::new();
    let _ = c.read_to_end(&mut answer);
    assert!(
        answer.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    // The socket stays open until the report is in: the peer is this process.
    let reports = w.wait_for_server_reports(1, Duration::from_secs(10));
    drop(c);
    assert_eq!(reports.len(), 1, "{reports:#?}");
    let r = &reports[0];
    // This test's socket read the 101 (in one read): the client side, closed
    // by the backend.
    let (_, client) = w.wait_for_both_ends(bport, Duration::from_secs(10));
    assert_eq!(s(&client, &["closed_by"]), "peer", "{client:#}");
    assert_eq!(
        client["upgraded_by"]["pid"].as_u64(),
        Some(u64::from(std::process::id())),
        "{client:#}"
    );
    assert_eq!(s(r, &["diagnosis", "code"]), "http10_upgrade", "{r:#}");
    assert_eq!(r["pid"].as_u64(), Some(u64::from(backend.0.id())), "{r:#}");
    assert_eq!(
        r["peer"]["pid"].as_u64(),
        Some(u64::from(std::process::id())),
        "the peer is this test process: {r:#}"
    );
    let front = &r["diagnosis"]["front"];
    assert_eq!(
        (s(front, &["kind"]), s(front, &["evidence"])),
        ("client", "peer_process"),
        "{r:#}"
    );
    let fix = s(r, &["diagnosis", "fix"]);
    assert!(
        fix.contains("connected directly") && fix.contains("RFC 6455"),
        "{r:#}"
    );
    assert!(
        !fix.contains("nginx") && !fix.contains("proxy_"),
        "no proxy fix without a proxy: {r:#}"
    );
}

#[test]
fn nginx_with_http11_keeps_the_socket_then_names_nginx() {
    if !require_root() {
        return;
    }
    let Some(nginx_bin) = require_nginx() else {
        return;
    };
    let (_backend, bport) = backend();
    let barrier = Barrier::start();
    let w = TracerOptions::new()
        .ports(&[bport, barrier.port])
        .start()
        .unwrap_or_else(|e| panic!("wstrace did not attach: {e:#}"));
    let dir = tempdir("http11");
    let (nginx, nport) = nginx(&nginx_bin, &dir, bport, "proxy_http_version 1.1;");
    let (c, status) = upgrade(nport);
    let upgraded = Instant::now();
    assert!(status.contains("101"), "nginx answered {status:?}");
    // Fixed config: nothing closes while the client stays. The barrier's
    // close, made after the upgrade, must be reported; a close of the
    // backend's socket right after the 101 would have been reported first.
    // Nothing but the barrier's connection: not the backend's socket nor
    // nginx's upstream one.
    let early = barrier.cross(&w, Duration::from_secs(10));
    assert!(
        early.is_empty(),
        "closed while the client was connected: {early:#?}"
    );
    // Close half-way between whole seconds of idle: on a loaded host the
    // barrier can take over a second, and a peer that closes an idle
    // socket just past a whole second is what a configured timeout looks
    // like (`idle_timeout`, by design), not the client leaving.
    let past = upgraded.elapsed().as_millis() % 1000;
    std::thread::sleep(Duration::from_millis(((1500 - past) % 1000) as u64));
    drop(c);
    // The backend's socket, closed by nginx, and nginx's upstream socket
    // (the client side: it read the 101), closed by nginx.
    let (r, up) = w.wait_for_both_ends(bport, Duration::from_secs(10));
    assert_eq!(s(&up, &["closed_by"]), "local", "{up:#}");
    assert_eq!(s(&up, &["upgraded_by", "comm"]), "nginx", "{up:#}");
    let r = &r;
    assert_eq!(s(r, &["closed_by"]), "peer", "{r:#}");
    assert_eq!(s(r, &["diagnosis", "code"]), "peer_closed_first", "{r:#}");
    assert_eq!(s(r, &["peer", "comm"]), "nginx", "{r:#}");
    assert!(is_nginx_worker(&r["peer"], &nginx), "{r:#}");
    assert_eq!(s(r, &["peer", "source"]), "kernel", "{r:#}");
    assert_eq!(s(r, &["request", "version"]), "HTTP/1.1");
}

#[test]
fn nginx_proxy_read_timeout_is_idle_timeout() {
    if !require_root() {
        return;
    }
    let Some(nginx_bin) = require_nginx() else {
        return;
    };
    let (_backend, bport) = backend();
    let w = wstrace(bport);
    let dir = tempdir("idle");
    let (nginx, nport) = nginx(
        &nginx_bin,
        &dir,
        bport,
        "proxy_http_version 1.1;\n      proxy_read_timeout 2s;",
    );
    let (_c, status) = upgrade(nport);
    assert!(status.contains("101"), "nginx answered {status:?}");
    // The backend's socket and nginx's upstream socket (the client side:
    // it read the 101), which nginx closed on its timeout.
    let (r, up) = w.wait_for_both_ends(bport, Duration::from_secs(15));
    assert_eq!(s(&up, &["closed_by"]), "local", "{up:#}");
    assert_eq!(s(&up, &["upgraded_by", "comm"]), "nginx", "{up:#}");
    let r = &r;
    assert_eq!(s(r, &["diagnosis", "code"]), "idle_timeout", "{r:#}");
    assert_eq!(s(r, &["closed_by"]), "peer", "nginx closed first: {r:#}");
    assert_eq!(s(r, &["peer", "comm"]), "nginx", "{r:#}");
    assert!(is_nginx_worker(&r["peer"], &nginx), "{r:#}");
    assert_eq!(s(r, &["peer", "source"]), "kernel", "{r:#}");
    let idle = r["idle_ms"].as_u64().expect("idle_ms");
    assert!(
        (1500..=3500).contains(&idle),
        "idle {idle} ms for a 2 s timeout: {r:#}"
    );
    assert!(s(r, &["diagnosis", "message"]).contains("nginx"), "{r:#}");
}

const PY_SERVER: &str = r#"
import asyncio, websockets
async def handler(ws):
    await ws.close(code=1011, reason="backend exploded")
async def main():
    async with websockets.serve(handler, "127.0.0.1", 0) as server:
        print("READY", server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Future()
asyncio.run(main())
"#;

#[test]
fn python_websockets_close_1011_is_server_close_frame() {
    if !require_root() {
        return;
    }
    let Some(python) = require_venv_python() else {
        return;
    };
    let mut py = spawn(
        Command::new(python)
            .args(["-c", PY_SERVER])
            .stdout(Stdio::piped()),
    );
    let port = read_ready(&mut py);
    let w = wstrace(port);
    let (mut c, status) = upgrade(port);
    assert!(status.contains("101"), "websockets answered {status:?}");
    // Read the server's close frame, then close without answering: the
    // library's closing handshake then ends on our FIN.
    let mut buf = [0u8; 64];
    let _ = c.read(&mut buf);
    drop(c);
    // The server's report: `upgrade` reads the 101 byte by byte, so this
    // test's socket is no client side.
    let reports = w.wait_for_server_reports(1, Duration::from_secs(15));
    assert_eq!(reports.len(), 1, "{reports:#?}");
    let r = &reports[0];
    assert_eq!(s(r, &["diagnosis", "code"]), "server_close_frame", "{r:#}");
    let f = &r["frames"][0];
    assert_eq!(
        (s(f, &["direction"]), f["code"].as_u64()),
        ("sent", Some(1011)),
        "{r:#}"
    );
    assert_eq!(s(f, &["reason"]), "backend exploded");
    assert!(
        s(r, &["diagnosis", "message"]).contains("1011 (internal server error)"),
        "{r:#}"
    );
}

/// A browser-like upgrade of `size` bytes whose `session=` cookie holds
/// `secret` at `at` (a byte offset into the request), padded by a long
/// User-Agent before it.
fn big_upgrade(size: usize, at: usize, secret: &str) -> Vec<u8> {
    let start = "GET /ws?access_token=QUERYSECRET HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nUser-Agent: Mozilla/5.0 (X11; ";
    let cookie = "\r\nCookie: session=";
    let pad = at.saturating_sub(start.len() + cookie.len() + 1).max(1);
    let mut r = format!("{start}{}){cookie}{secret}", "x".repeat(pad));
    r.push_str("\r\nX-Filler: ");
    let filler = size.saturating_sub(r.len() + 4).max(1);
    r.push_str(&"f".repeat(filler));
    r.push_str("\r\n\r\n");
    r.into_bytes()
}

#[test]
fn nginx_on_the_traced_port_never_splices_a_secret_into_a_header() {
    if !require_root() {
        return;
    }
    let Some(nginx_bin) = require_nginx() else {
        return;
    };
    // nginx reads client headers into a 1 KiB buffer, so a long request
    // arrives in reads that the kernel copies only in part. The traced port
    // is nginx's own: its client-facing sockets are the upgraded ones.
    let (_backend, bport) = backend();
    let dir = tempdir("splice");
    let (_nginx, nport) = nginx(&nginx_bin, &dir, bport, "proxy_http_version 1.1;");
    let w = wstrace(nport);
    let secret = "OiJIUzI1NiJ9.SESSIONSECRET.abcdefghij";
    let mut cases = 0;
    for size in [1071, 2048, 4096, 8000] {
        for at in (512..size.min(4096)).step_by(512) {
            let mut c = TcpStream::connect(("127.0.0.1", nport)).expect("connect");
            c.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            c.write_all(&big_upgrade(size, at, secret)).expect("send");
            let mut b = [0u8; 12];
            c.read_exact(&mut b).expect("status line");
            assert_eq!(&b, b"HTTP/1.1 101", "nginx upgraded");
            drop(c);
            cases += 1;
        }
    }
    // nginx's client-facing sockets: the server side. (This test's own
    // sockets read 12 bytes first, too few to say 101: no client side.)
    // No secret in any report, whichever end.
    let reports = w.wait_for_server_reports(cases, Duration::from_secs(20));
    assert_eq!(reports.len(), cases, "{reports:#?}");
    for r in &w.reports() {
        let text = r.to_string();
        for piece in secret.as_bytes().windows(8) {
            let piece = std::str::from_utf8(piece).expect("ascii");
            assert!(!text.contains(piece), "{piece:?} leaked: {r:#}");
        }
        assert!(!text.contains("QUERYSECRET"), "{r:#}");
    }
    for r in &reports {
        let text = r.to_string();
        // No piece of a secret, in any field: not the cookie (8+ bytes of
        // it), not the query value.
        for piece in secret.as_bytes().windows(8) {
            let piece = std::str::from_utf8(piece).expect("ascii");
            assert!(!text.contains(piece), "{piece:?} leaked: {r:#}");
        }
        assert!(!text.contains("QUERYSECRET"), "{r:#}");
        // Every header shown is whole, hidden or marked cut: the User-Agent
        // is either exactly as sent or `[cut]`.
        let headers = r["request"]["headers"].as_array().expect("headers");
        for h in headers {
            let (name, value) = (h[0].as_str().unwrap_or(""), h[1].as_str().unwrap_or(""));
            if name.eq_ignore_ascii_case("user-agent") {
                assert!(
                    value == "[cut]"
                        || (value.starts_with("Mozilla/5.0 (X11; x") && value.ends_with("x)")),
                    "User-Agent joined from pieces: {value:?}"
                );
            }
        }
        // `complete` means seen whole: then the last header is there.
        let complete = r["request"]["complete"].as_bool() == Some(true);
        let has_last = headers.iter().any(|h| h[0].as_str() == Some("X-Filler"));
        assert!(
            !complete || has_last,
            "complete but the last header is missing: {r:#}"
        );
    }
}

/// A Sec-WebSocket-Key of this run's own: chains are linked by the
/// handshake, and every wstrace on the host (no `--port`) sees other
/// tests' connections, many of them with the RFC's example Key.
fn fresh_key() -> String {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("/dev/urandom");
    // Any 16 bytes, base64: hex is a valid base64 alphabet subset, 24 chars.
    let hex: String = b[..12].iter().map(|x| format!("{x:02x}")).collect();
    hex[..22].to_string() + "=="
}

/// Upgrades through `port` with `key`, reading the 101 in one read (as
/// every WebSocket client does): the client side is classified by its
/// first read.
fn upgrade_with_key(port: u16, key: &str) -> (TcpStream, String) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    c.write_all(req.as_bytes()).expect("send");
    let mut buf = [0u8; 2048];
    let n = c.read(&mut buf).unwrap_or(0);
    (c, String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// The reports of the four sockets on the backend's and nginx's ports
/// (a wstrace with no `--port` sees other tests' connections too).
fn chain_reports(w: &Tracer, bport: u16, nport: u16) -> Vec<Value> {
    let ours = |r: &Value| {
        let (l, rm) = (s(r, &["local"]), s(r, &["remote"]));
        [bport, nport]
            .iter()
            .any(|p| l.ends_with(&format!(":{p}")) || rm.ends_with(&format!(":{p}")))
    };
    let mut reports = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        reports = w.reports().into_iter().filter(|r| ours(r)).collect();
        if reports.len() >= 4 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(reports.len(), 4, "browser, nginx x2, backend: {reports:#?}");
    reports
}

/// [backend, nginx upstream, nginx edge, browser] of `chain_reports`.
fn chain_sockets(reports: &[Value], bport: u16, nport: u16) -> [&Value; 4] {
    let find = |side: &str, local_port: Option<u16>, remote_port: Option<u16>| {
        reports
            .iter()
            .find(|r| {
                s(r, &["side"]) == side
                    && local_port.is_none_or(|p| s(r, &["local"]) == format!("127.0.0.1:{p}"))
                    && remote_port.is_none_or(|p| s(r, &["remote"]) == format!("127.0.0.1:{p}"))
            })
            .unwrap_or_else(|| {
                panic!("no {side} report on {local_port:?}/{remote_port:?}: {reports:#?}")
            })
    };
    [
        find("server", Some(bport), None),
        find("client", None, Some(bport)),
        find("server", Some(nport), None),
        find("client", None, Some(nport)),
    ]
}

/// The seed case, with no `--port`: nginx without `proxy_http_version 1.1`
/// in front of a server that closes HTTP/1.0 upgrades. The four sockets of
/// one browser connection (browser, nginx's two, the backend's) are one
/// chain; the edge's report carries the backend's close as its root cause.
#[test]
fn chain_without_port_links_nginx_edge_to_the_backend_close() {
    if !require_root() {
        return;
    }
    let Some(nginx_bin) = require_nginx() else {
        return;
    };
    let (backend, bport) = backend();
    let w = Tracer::start_all_ports(&[]);
    let dir = tempdir("chain");
    let (nginx, nport) = nginx(&nginx_bin, &dir, bport, "");
    let key = fresh_key();
    let (mut c, head) = upgrade_with_key(nport, &key);
    assert!(head.starts_with("HTTP/1.1 101"), "nginx answered {head:?}");
    // The backend closes; nginx then closes our side: read to the end and
    // close, as a browser does.
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    drop(c);
    let reports = chain_reports(&w, bport, nport);
    let [back, up, edge, browser] = chain_sockets(&reports, bport, nport);
    // The backend hop: the http10 story, the backend the closer.
    assert_eq!(
        s(back, &["diagnosis", "code"]),
        "http10_upgrade",
        "{back:#}"
    );
    assert_eq!(s(back, &["closed_by"]), "local", "{back:#}");
    assert_eq!(
        back["pid"].as_u64(),
        Some(u64::from(backend.0.id())),
        "{back:#}"
    );
    // One chain id on all four, linked by the handshake, two hops.
    let id = s(back, &["chain", "id"]);
    assert_eq!(id.len(), 16, "{back:#}");
    for (r, hop) in [(back, 1), (up, 1), (edge, 0), (browser, 0)] {
        assert_eq!(s(r, &["chain", "id"]), id, "{r:#}");
        assert_eq!(s(r, &["chain", "linked_by"]), "handshake", "{r:#}");
        assert_eq!(r["chain"]["hop"].as_u64(), Some(hop), "{r:#}");
        assert_eq!(r["chain"]["hops"].as_u64(), Some(2), "{r:#}");
        assert_eq!(r["chain"]["closed_first_hop"].as_u64(), Some(1), "{r:#}");
        // The nonces are never printed.
        assert!(!r.to_string().contains(&key), "the Key leaked: {r}");
    }
    assert_eq!(
        edge["chain"]["upstream"]["pid"].as_u64(),
        Some(u64::from(backend.0.id())),
        "{edge:#}"
    );
    // The edge: nginx closed the browser's side after the backend closed
    // nginx's upstream connection; the root cause and its fix.
    assert_eq!(s(edge, &["closed_by"]), "local", "{edge:#}");
    assert_eq!(s(edge, &["comm"]), "nginx", "{edge:#}");
    assert!(is_nginx_worker(&edge["upgraded_by"], &nginx), "{edge:#}");
    assert_eq!(
        s(edge, &["diagnosis", "code"]),
        "upstream_closed",
        "{edge:#}"
    );
    assert!(
        s(edge, &["diagnosis", "fix"]).contains("proxy_http_version 1.1;"),
        "{edge:#}"
    );
    let cause = &edge["diagnosis"]["cause"];
    assert_eq!(
        cause["pid"].as_u64(),
        Some(u64::from(backend.0.id())),
        "{edge:#}"
    );
    assert_eq!(s(cause, &["code"]), "http10_upgrade", "{edge:#}");
    assert!(
        cause["ms_before"].as_f64().is_some_and(|ms| ms >= 0.0),
        "{edge:#}"
    );
    // The browser's own socket: the client side, closed by its peer.
    assert_eq!(s(browser, &["closed_by"]), "peer", "{browser:#}");
    assert_eq!(
        browser["upgraded_by"]["pid"].as_u64(),
        Some(u64::from(std::process::id())),
        "{browser:#}"
    );
    report_joins_the_chain_across_two_host_logs(
        &dir,
        [back, up, edge, browser],
        id,
        backend.0.id(),
    );
}

/// `wstrace report` on these real reports split into two hosts' logs (the
/// backend's report as host `web-1`, nginx's and the browser's as `edge`):
/// one chain joined across the two, rooted at the backend's close with its
/// diagnosis and fix, whichever log comes first.
fn report_joins_the_chain_across_two_host_logs(
    dir: &Path,
    [back, up, edge, browser]: [&Value; 4],
    id: &str,
    backend_pid: u32,
) {
    let log = |name: &str, host: &str, reports: &[&Value]| {
        let path = dir.join(name);
        let text: String = reports
            .iter()
            .map(|r| {
                let mut r = (*r).clone();
                r["host"] = Value::String(host.into());
                format!("{r}\n")
            })
            .collect();
        std::fs::write(&path, text).expect("write log");
        path
    };
    let web = log("web-1.jsonl", "web-1", &[back]);
    let edge_log = log("edge.jsonl", "edge", &[up, edge, browser]);
    for files in [[&web, &edge_log], [&edge_log, &web]] {
        let out = Command::new(common::wstrace_bin())
            .args(["report", "--format", "json"])
            .args(files)
            .output()
            .expect("wstrace report");
        assert!(out.status.success(), "{out:?}");
        let v: Value = serde_json::from_slice(&out.stdout).expect("report JSON");
        let chains = &v["chains"];
        assert_eq!(chains["count"], 1, "{chains:#}");
        assert_eq!(chains["joined"], 1, "{chains:#}");
        let c = &chains["list"][0];
        assert_eq!(c["id"], id, "{c:#}");
        assert_eq!(c["hosts"], serde_json::json!(["edge", "web-1"]), "{c:#}");
        let root = &c["root"];
        assert_eq!(root["host"], "web-1", "{c:#}");
        assert_eq!(root["pid"].as_u64(), Some(u64::from(backend_pid)), "{c:#}");
        assert_eq!(root["code"], "http10_upgrade", "{c:#}");
        assert!(
            s(root, &["fix"]).contains("proxy_http_version 1.1;"),
            "{c:#}"
        );
        let hops: Vec<(String, String)> = c["hops"]
            .as_array()
            .expect("hops")
            .iter()
            .map(|h| (s(h, &["host"]).to_string(), s(h, &["side"]).to_string()))
            .collect();
        let want = [
            ("edge", "client"),
            ("edge", "server"),
            ("edge", "client"),
            ("web-1", "server"),
        ];
        assert_eq!(
            hops,
            want.map(|(a, b)| (a.to_string(), b.to_string())),
            "browser, nginx edge, nginx upstream, backend: {c:#}"
        );
    }
}

/// nginx's `proxy_read_timeout` closes both of its sockets: one story, with
/// nginx as the first closer and the other hop citing it.
#[test]
fn chain_proxy_read_timeout_is_one_story_with_nginx_first() {
    if !require_root() {
        return;
    }
    let Some(nginx_bin) = require_nginx() else {
        return;
    };
    let (_backend, bport) = backend();
    let w = Tracer::start_all_ports(&[]);
    let dir = tempdir("chain-idle");
    let (nginx, nport) = nginx(
        &nginx_bin,
        &dir,
        bport,
        "proxy_http_version 1.1;\n      proxy_read_timeout 2s;",
    );
    let key = fresh_key();
    let (mut c, head) = upgrade_with_key(nport, &key);
    assert!(head.starts_with("HTTP/1.1 101"), "nginx answered {head:?}");
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    drop(c);
    let reports = chain_reports(&w, bport, nport);
    let [back, up, edge, browser] = chain_sockets(&reports, bport, nport);
    let id = s(back, &["chain", "id"]);
    for r in [back, up, edge, browser] {
        assert_eq!(s(r, &["chain", "id"]), id, "{r:#}");
        assert_eq!(s(r, &["chain", "linked_by"]), "handshake", "{r:#}");
    }
    // nginx closed both of its sockets.
    for r in [up, edge] {
        assert_eq!(s(r, &["closed_by"]), "local", "{r:#}");
        assert_eq!(s(r, &["comm"]), "nginx", "{r:#}");
        assert!(is_nginx_worker(&r["upgraded_by"], &nginx), "{r:#}");
    }
    // Whichever it closed first is the root, and names the timeout; the
    // other hop's report cites it.
    let first = edge["chain"]["closed_first_hop"]
        .as_u64()
        .expect("a first hop");
    let (root, other) = if first == 1 { (up, edge) } else { (edge, up) };
    assert_eq!(s(root, &["diagnosis", "code"]), "idle_timeout", "{root:#}");
    let want = if first == 1 {
        "upstream_closed"
    } else {
        "downstream_closed"
    };
    assert_eq!(s(other, &["diagnosis", "code"]), want, "{other:#}");
    let cause = &other["diagnosis"]["cause"];
    assert_eq!(s(cause, &["comm"]), "nginx", "{other:#}");
    assert_eq!(s(cause, &["code"]), "idle_timeout", "{other:#}");
}

/// Sends the Key it is given straight to the backend, reads the 101 and
/// holds the connection: as `nobody`, a local user replaying another
/// connection's handshake.
const REPLAY_KEY: &str = r#"
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % sys.argv[2]).encode())
s.recv(2048)
print("READY 1", flush=True)
time.sleep(60)
"#;

/// A client that reuses the Key of a proxied connection (another user's,
/// straight to the backend) must not link it: the digest spans unrelated
/// connections, every report of it says `ambiguous`, and the edge keeps
/// its own diagnosis instead of borrowing the backend's.
#[test]
fn chain_a_replayed_key_links_nothing() {
    if !require_nobody_python() {
        return;
    }
    let Some(nginx_bin) = require_nginx() else {
        return;
    };
    let (_backend, bport) = backend();
    let w = Tracer::start_all_ports(&[]);
    let dir = tempdir("chain-replay");
    let (_nginx, nport) = nginx(&nginx_bin, &dir, bport, "");
    let key = fresh_key();
    // The replay goes to a second backend (the first serves one connection
    // at a time): a connection that shares nothing with the chain but the Key.
    let (_other_backend, other_port) = backend();
    let attack_dir = WorldReadableDir::new("chain-replay");
    let (_attacker, _) = nobody_python_server(
        &attack_dir,
        "replay.py",
        REPLAY_KEY,
        &[&other_port.to_string(), &key],
    );
    let (mut c, head) = upgrade_with_key(nport, &key);
    assert!(head.starts_with("HTTP/1.1 101"), "nginx answered {head:?}");
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    drop(c);
    let reports = chain_reports(&w, bport, nport);
    let [back, up, edge, browser] = chain_sockets(&reports, bport, nport);
    for r in [back, up, edge, browser] {
        assert_eq!(s(r, &["chain", "linked_by"]), "ambiguous", "{r:#}");
        assert!(r["chain"]["hop"].is_null(), "{r:#}");
        assert!(r["diagnosis"]["cause"].is_null(), "{r:#}");
        assert!(!r.to_string().contains(&key), "the Key leaked: {r}");
    }
    assert_eq!(
        s(back, &["diagnosis", "code"]),
        "http10_upgrade",
        "{back:#}"
    );
    assert_ne!(
        s(edge, &["diagnosis", "code"]),
        "upstream_closed",
        "{edge:#}"
    );
}

/// Debian's HAProxy; see `common::require`.
fn require_haproxy() -> Option<PathBuf> {
    require_tool(
        "haproxy",
        "run `cargo xtask setup --for test` (installs Debian's haproxy)",
    )
}

/// HAProxy (`bin`, in the foreground: `-db`) in HTTP mode on its own port,
/// proxying everything to `backend`. `timeout tunnel` governs an upgraded
/// connection once the 101 has passed; client/server timeouts are long so
/// that only the tunnel timeout can close an idle WebSocket.
fn haproxy(bin: &Path, dir: &Path, backend: u16, tunnel: &str) -> (Proc, u16) {
    let port = free_port();
    let conf = format!(
        "global\n  maxconn 64\n  nbthread 1\n\
         defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  \
         timeout server 60s\n  timeout tunnel {tunnel}\n\
         frontend fe\n  bind 127.0.0.1:{port}\n  default_backend be\n\
         backend be\n  server s1 127.0.0.1:{backend}\n"
    );
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(&cfg, conf).expect("haproxy.cfg");
    let p = spawn(
        Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdout(Stdio::null()),
    );
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "haproxy did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (p, port)
}

/// HAProxy's `timeout tunnel` closes both of its sockets of an idle
/// WebSocket: one chain across the hops (no `--port`), HAProxy the closer of
/// both, the first of its closes the root (`idle_timeout`) and the other
/// hop citing it.
#[test]
fn chain_haproxy_tunnel_timeout_is_one_story_with_haproxy_first() {
    if !require_root() {
        return;
    }
    let Some(haproxy_bin) = require_haproxy() else {
        return;
    };
    let (backend, bport) = backend();
    let w = Tracer::start_all_ports(&[]);
    let dir = tempdir("chain-haproxy");
    let (proxy, hport) = haproxy(&haproxy_bin, &dir, bport, "2s");
    let key = fresh_key();
    let (mut c, head) = upgrade_with_key(hport, &key);
    assert!(
        head.starts_with("HTTP/1.1 101"),
        "haproxy answered {head:?}"
    );
    // Idle until HAProxy's tunnel timeout closes our side.
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    drop(c);
    let reports = chain_reports(&w, bport, hport);
    let [back, up, edge, browser] = chain_sockets(&reports, bport, hport);
    let id = s(back, &["chain", "id"]);
    assert_eq!(id.len(), 16, "{back:#}");
    for (r, hop) in [(back, 1), (up, 1), (edge, 0), (browser, 0)] {
        assert_eq!(s(r, &["chain", "id"]), id, "{r:#}");
        assert_eq!(s(r, &["chain", "linked_by"]), "handshake", "{r:#}");
        assert_eq!(r["chain"]["hop"].as_u64(), Some(hop), "{r:#}");
        assert_eq!(r["chain"]["hops"].as_u64(), Some(2), "{r:#}");
        assert!(!r.to_string().contains(&key), "the Key leaked: {r}");
    }
    // HAProxy (one process, one thread) closed both of its sockets.
    for r in [up, edge] {
        assert_eq!(s(r, &["closed_by"]), "local", "{r:#}");
        assert_eq!(s(r, &["comm"]), "haproxy", "{r:#}");
        assert_eq!(r["pid"].as_u64(), Some(u64::from(proxy.0.id())), "{r:#}");
    }
    // The backend and the client were closed by their peer, HAProxy.
    assert_eq!(s(back, &["closed_by"]), "peer", "{back:#}");
    assert_eq!(
        back["upgraded_by"]["pid"].as_u64(),
        Some(u64::from(backend.0.id())),
        "{back:#}"
    );
    assert_eq!(s(browser, &["closed_by"]), "peer", "{browser:#}");
    // Both ends see HAProxy's timeout, not a peer that reset them: the
    // backend by its own rules, the client by its own or (when HAProxy
    // closed the upstream first: every run here) through the chain.
    assert_eq!(s(back, &["diagnosis", "code"]), "idle_timeout", "{back:#}");
    let d = &browser["diagnosis"];
    assert!(
        s(d, &["code"]) == "idle_timeout"
            || (s(d, &["code"]) == "upstream_closed"
                && s(d, &["cause", "code"]) == "idle_timeout"
                && s(d, &["cause", "comm"]) == "haproxy"),
        "{browser:#}"
    );
    let first = edge["chain"]["closed_first_hop"]
        .as_u64()
        .expect("a first hop");
    let (root, other) = if first == 1 { (up, edge) } else { (edge, up) };
    assert_eq!(s(root, &["diagnosis", "code"]), "idle_timeout", "{root:#}");
    let want = if first == 1 {
        "upstream_closed"
    } else {
        "downstream_closed"
    };
    assert_eq!(s(other, &["diagnosis", "code"]), want, "{other:#}");
    let cause = &other["diagnosis"]["cause"];
    assert_eq!(s(cause, &["comm"]), "haproxy", "{other:#}");
    assert_eq!(s(cause, &["code"]), "idle_timeout", "{other:#}");
}

/// Debian's Apache httpd; see `common::require`.
fn require_apache() -> Option<PathBuf> {
    require_tool(
        "apache2",
        "run `cargo xtask setup --for test` (installs Debian's apache2)",
    )
}

/// Apache httpd (`bin -X`: one process, in the foreground) on its own port
/// with mod_proxy_wstunnel relaying /ws to `backend`. The config loads only
/// what it needs from Debian's module directory; Apache refuses to serve
/// as root, so its children run as nobody.
fn apache(bin: &Path, dir: &Path, backend: u16) -> (Proc, u16) {
    let port = free_port();
    let d = dir.display();
    let m = "/usr/lib/apache2/modules";
    let conf = format!(
        "ServerRoot {d}\nServerName localhost\nPidFile {d}/httpd.pid\nDefaultRuntimeDir {d}\n\
         Mutex file:{d}\nListen 127.0.0.1:{port}\nUser nobody\nGroup nogroup\nErrorLog {d}/error.log\n\
         LoadModule mpm_event_module {m}/mod_mpm_event.so\n\
         LoadModule authz_core_module {m}/mod_authz_core.so\n\
         LoadModule proxy_module {m}/mod_proxy.so\n\
         LoadModule proxy_http_module {m}/mod_proxy_http.so\n\
         LoadModule proxy_wstunnel_module {m}/mod_proxy_wstunnel.so\n\
         ProxyPass /ws ws://127.0.0.1:{backend}/ws\n"
    );
    let cfg = dir.join("httpd.conf");
    std::fs::write(&cfg, conf).expect("httpd.conf");
    let p = spawn(
        Command::new(bin)
            .arg("-X")
            .arg("-f")
            .arg(&cfg)
            .stdout(Stdio::null()),
    );
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "apache2 did not listen on {port}: {}",
            std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (p, port)
}

/// The Python `websockets` library going away: close 1001, then (once the
/// peer answered the close frame) the TCP close, as the RFC has servers do.
const PY_GOING_AWAY: &str = r#"
import asyncio, websockets
async def handler(ws):
    await ws.close(code=1001, reason="going away")
async def main():
    async with websockets.serve(handler, "127.0.0.1", 0) as server:
        print("READY", server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Future()
asyncio.run(main())
"#;

/// Apache's mod_proxy_wstunnel relays the backend's 101 unchanged, so the
/// handshake links its two sockets: a backend that goes away (1001) is the
/// root cause named in the report of Apache's client-facing socket.
#[test]
fn chain_apache_wstunnel_edge_carries_the_backend_going_away() {
    if !require_root() {
        return;
    }
    let Some(apache_bin) = require_apache() else {
        return;
    };
    let Some(python) = require_venv_python() else {
        return;
    };
    let mut py = spawn(
        Command::new(python)
            .args(["-c", PY_GOING_AWAY])
            .stdout(Stdio::piped()),
    );
    let bport = read_ready(&mut py);
    let w = Tracer::start_all_ports(&[]);
    let dir = tempdir("chain-apache");
    let (_apache, aport) = apache(&apache_bin, &dir, bport);
    let key = fresh_key();
    let (mut c, head) = upgrade_with_key(aport, &key);
    assert!(head.starts_with("HTTP/1.1 101"), "apache answered {head:?}");
    // Answer the relayed close frame as a browser does (masked, zero mask,
    // code 1001), so that the backend closes the TCP connection first.
    let mut frame = [0u8; 64];
    let _ = c.read(&mut frame);
    c.write_all(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe9])
        .expect("close reply");
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    drop(c);
    let reports = chain_reports(&w, bport, aport);
    let [back, up, edge, browser] = chain_sockets(&reports, bport, aport);
    let id = s(back, &["chain", "id"]);
    assert_eq!(id.len(), 16, "{back:#}");
    for (r, hop) in [(back, 1), (up, 1), (edge, 0), (browser, 0)] {
        assert_eq!(s(r, &["chain", "id"]), id, "{r:#}");
        assert_eq!(s(r, &["chain", "linked_by"]), "handshake", "{r:#}");
        assert_eq!(r["chain"]["hop"].as_u64(), Some(hop), "{r:#}");
        assert_eq!(r["chain"]["hops"].as_u64(), Some(2), "{r:#}");
        assert_eq!(r["chain"]["closed_first_hop"].as_u64(), Some(1), "{r:#}");
        assert!(!r.to_string().contains(&key), "the Key leaked: {r}");
    }
    // The backend went away.
    assert_eq!(s(back, &["closed_by"]), "local", "{back:#}");
    assert_eq!(back["pid"].as_u64(), Some(u64::from(py.0.id())), "{back:#}");
    assert_eq!(
        s(back, &["diagnosis", "code"]),
        "server_close_frame",
        "{back:#}"
    );
    // Apache closed the browser's side after it, citing it.
    assert_eq!(s(edge, &["closed_by"]), "local", "{edge:#}");
    assert_eq!(s(edge, &["comm"]), "apache2", "{edge:#}");
    assert_eq!(
        s(edge, &["diagnosis", "code"]),
        "upstream_closed",
        "{edge:#}"
    );
    let cause = &edge["diagnosis"]["cause"];
    assert_eq!(
        cause["pid"].as_u64(),
        Some(u64::from(py.0.id())),
        "{edge:#}"
    );
    assert_eq!(s(cause, &["code"]), "server_close_frame", "{edge:#}");
    assert!(
        s(edge, &["diagnosis", "message"]).contains("1001"),
        "{edge:#}"
    );
}
