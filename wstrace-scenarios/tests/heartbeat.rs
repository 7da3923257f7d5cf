//! Heartbeats and the frames around a close, against real servers on this
//! host: a raw Python server (Debian's /usr/bin/python3, stdlib only) that
//! pings and gives up on a client that stopped answering, the Python
//! `websockets` library's keepalive, and close frames where they are hard
//! to see (after a text frame in one write, split across two writes or two
//! iovecs of one sendmsg, both directions). Each test starts its own wstrace on
//! the server's port; the client here speaks the protocol by hand, so what
//! it answers and when is exact.
//!
//! Needs root, /usr/bin/python3 and (for the library tests) node with the
//! npm package `ws` and the venv with `websockets`, which `cargo xtask
//! setup` installs.
use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::PathBuf,
    process::Command,
    time::Duration,
};

mod common;

use common::{
    Tracer, WorldReadableDir, require_file, require_node_ws, require_root, require_venv_python,
    serial, spawn_ready, upgraded_with,
};
use serde_json::Value;

/// A valid client handshake (a library server checks the key).
const UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

fn system_python() -> Option<PathBuf> {
    require_file(
        "/usr/bin/python3",
        &[PathBuf::from("/usr/bin/python3")],
        "apt-get install python3",
    )
}

/// A server that pings every 100 ms and closes (no close frame) once 3
/// pings in a row went unanswered, as ws's `terminate()` or a Go read
/// deadline does: the socket is simply closed.
const PINGING_SERVER: &str = r#"
import select, socket, sys, time
l = socket.socket()
l.bind(("127.0.0.1", 0))
l.listen(1)
print("READY", l.getsockname()[1], flush=True)
c, _ = l.accept()
head = b""
while b"\r\n\r\n" not in head:
    d = c.recv(1024)
    if not d:
        sys.exit(1)
    head += d
c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
missed, buf = 0, b""
while missed < 3:
    c.sendall(b"\x89\x00")
    missed += 1
    deadline = time.monotonic() + 0.1
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([c], [], [], left)[0]:
            continue
        d = c.recv(1024)
        if not d:
            sys.exit(0)
        buf += d
        while len(buf) >= 2:
            size = 2 + (4 if buf[1] & 0x80 else 0) + (buf[1] & 0x7F)
            if len(buf) < size:
                break
            if buf[0] == 0x8A:
                missed = 0
            buf = buf[size:]
c.close()
time.sleep(5)
"#;

/// One frame from the server (unmasked, 7-bit length): (first byte, payload).
fn read_frame(c: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    c.read_exact(&mut h).ok()?;
    assert!(h[1] & 0x80 == 0 && h[1] < 126, "frame header {h:?}");
    let mut p = vec![0u8; h[1] as usize];
    c.read_exact(&mut p).ok()?;
    Some((h[0], p))
}

/// A client's (masked) pong carrying `payload`.
fn pong(payload: &[u8]) -> Vec<u8> {
    let key = [0x12, 0x34, 0x56, 0x78];
    let mut f = vec![0x8A, 0x80 | payload.len() as u8];
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    path.iter()
        .fold(v, |v, k| &v[*k])
        .as_str()
        .unwrap_or_else(|| panic!("{path:?} missing in {v:#}"))
}

fn n(v: &Value, key: &str) -> u64 {
    v["heartbeat"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("heartbeat.{key} missing in {v:#}"))
}

#[test]
fn a_client_that_stops_answering_pings_is_heartbeat_timeout_by_the_server() {
    if !require_root() {
        return;
    }
    let Some(python) = system_python() else {
        return;
    };
    let _serial = serial();
    let (server, port) = spawn_ready(Command::new(python).args(["-c", PINGING_SERVER]));
    let w = Tracer::start(port, &[]);
    let mut c = upgraded_with(port, UPGRADE);
    // Answer the first two pings, then go silent (a frozen tab) and read
    // until the server gives up.
    let mut pings = 0;
    while let Some((b0, payload)) = read_frame(&mut c) {
        assert_eq!(b0, 0x89, "only pings come");
        pings += 1;
        if pings <= 2 {
            c.write_all(&pong(&payload)).expect("pong");
        }
    }
    assert_eq!(pings, 5, "2 answered, then 3 missed");
    // The server's report: this test read the 101 byte by byte, so its
    // socket is no client side (a 101 is followed as one when it is the
    // first response a socket reads).
    let reports = w.wait_for_server_reports(1, Duration::from_secs(15));
    assert_eq!(reports.len(), 1, "{reports:#?}");
    let r = &reports[0];
    assert_eq!(s(r, &["diagnosis", "code"]), "heartbeat_timeout", "{r:#}");
    assert_eq!(
        (s(r, &["closed_by"]), s(r, &["how"])),
        ("local", "fin"),
        "{r:#}"
    );
    assert_eq!(r["pid"].as_u64(), Some(u64::from(server.0.id())), "{r:#}");
    assert_eq!(
        (
            n(r, "pings_sent"),
            n(r, "pongs_received"),
            n(r, "unanswered_pings_sent")
        ),
        (5, 2, 3),
        "{r:#}"
    );
    assert_eq!(
        (n(r, "pings_received"), n(r, "pongs_sent")),
        (0, 0),
        "{r:#}"
    );
    let last_pong = r["heartbeat"]["last_pong_received_ms"]
        .as_f64()
        .expect("last pong");
    let last_ping = r["heartbeat"]["last_ping_sent_ms"]
        .as_f64()
        .expect("last ping");
    assert!(last_pong < last_ping, "{r:#}");
    assert!(
        r["frames"].as_array().is_some_and(|f| f.is_empty()),
        "{r:#}"
    );
    let msg = s(r, &["diagnosis", "message"]);
    assert!(
        msg.contains("sent 3 pings that the client")
            && msg.contains("after 2 pongs earlier")
            && msg.contains("without a close frame")
            && msg.contains("stopped answering pings"),
        "{msg}"
    );
}

/// ws's heartbeat as its README documents it (the pattern Node servers
/// copy): every interval, `terminate()` each client whose `isAlive` is
/// still false, else clear it and `ping()`; a pong sets it again. The
/// interval (ms) is the first argument.
const WS_HEARTBEAT_SERVER: &str = r#"
const { WebSocketServer } = require('ws');
const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
function heartbeat() { this.isAlive = true; }
wss.on('connection', function connection(ws) {
  ws.isAlive = true;
  ws.on('error', console.error);
  ws.on('pong', heartbeat);
});
const interval = setInterval(function ping() {
  wss.clients.forEach(function each(ws) {
    if (ws.isAlive === false) return ws.terminate();
    ws.isAlive = false;
    ws.ping();
  });
}, Number(process.argv[1]));
wss.on('close', function close() { clearInterval(interval); });
wss.on('listening', () => console.log('READY', wss.address().port));
"#;

const WS_INTERVAL_MS: u64 = 200;

#[test]
fn node_ws_terminate_of_a_client_that_never_pongs_is_heartbeat_timeout_by_node() {
    if !require_root() {
        return;
    }
    let Some((node, modules)) = require_node_ws() else {
        return;
    };
    let _serial = serial();
    let (server, port) = spawn_ready(Command::new(node).env("NODE_PATH", &modules).args([
        "-e",
        WS_HEARTBEAT_SERVER,
        &WS_INTERVAL_MS.to_string(),
    ]));
    let w = Tracer::start(port, &[]);
    let mut c = upgraded_with(port, UPGRADE);
    // A frozen client: reads everything, answers nothing, until ws gives up.
    let mut pings = 0;
    let end = loop {
        let mut h = [0u8; 2];
        match c.read(&mut h[..1]) {
            // terminate() destroys the socket: the kernel says how here
            // (a FIN reads as end of stream, an RST as a reset error).
            Ok(0) => break "fin",
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break "rst",
            Err(e) => panic!("reading from ws: {e}"),
            Ok(_) => {}
        }
        c.read_exact(&mut h[1..]).expect("frame header");
        assert_eq!(h, [0x89, 0x00], "ws sends only empty pings here");
        pings += 1;
    };
    // ws pings at one tick and terminates at the next: one ping, no pong.
    assert_eq!(pings, 1, "ws terminated after {pings} pings");
    // Nothing was left unread on either side, so destroy() is a plain
    // close(): the kernel sends a FIN, not an RST.
    assert_eq!(end, "fin", "how the client saw terminate()");
    // The server's report: this test read the 101 byte by byte, so its
    // socket is no client side (a 101 is followed as one when it is the
    // first response a socket reads).
    let reports = w.wait_for_server_reports(1, Duration::from_secs(15));
    assert_eq!(reports.len(), 1, "{reports:#?}");
    let r = &reports[0];
    assert_eq!(s(r, &["diagnosis", "code"]), "heartbeat_timeout", "{r:#}");
    assert_eq!(
        (s(r, &["closed_by"]), s(r, &["how"])),
        ("local", "fin"),
        "{r:#}"
    );
    let pid = u64::from(server.0.id());
    assert_eq!(r["pid"].as_u64(), Some(pid), "node closed it: {r:#}");
    assert_eq!(r["upgraded_by"]["pid"].as_u64(), Some(pid), "{r:#}");
    assert_eq!(s(r, &["comm"]), "node", "{r:#}");
    assert_eq!(
        (
            n(r, "pings_sent"),
            n(r, "pongs_received"),
            n(r, "unanswered_pings_sent")
        ),
        (1, 0, 1),
        "{r:#}"
    );
    assert_eq!(
        (n(r, "pings_received"), n(r, "pongs_sent")),
        (0, 0),
        "{r:#}"
    );
    assert!(r["heartbeat"]["last_pong_received_ms"].is_null(), "{r:#}");
    assert!(
        r["frames"].as_array().is_some_and(|f| f.is_empty()),
        "terminate() sends no close frame: {r:#}"
    );
    // The ping comes at a tick after the upgrade and terminate() one tick
    // later: the connection lived at least one interval.
    let lifetime = r["ms_after_upgrade"].as_f64().expect("ms_after_upgrade");
    let last_ping = r["heartbeat"]["last_ping_sent_ms"]
        .as_f64()
        .expect("last ping");
    assert!(
        lifetime >= WS_INTERVAL_MS as f64 && lifetime - last_ping >= WS_INTERVAL_MS as f64 * 0.9,
        "lifetime {lifetime} ms, ping at {last_ping} ms: {r:#}"
    );
    let msg = s(r, &["diagnosis", "message"]);
    assert!(
        msg.contains(&format!("node (pid {pid}) sent 1 ping that the client"))
            && msg.contains("no pong ever came back")
            && msg.contains("without a close frame")
            && msg.contains("stopped answering pings"),
        "{msg}"
    );
}

/// The same heartbeat written as a server's own code: a named function
/// that terminates the clients that did not answer the last ping. The
/// interval (ms) is the first argument.
const REAPING_SERVER_JS: &str = r#"const { WebSocketServer } = require('ws');
const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
wss.on('connection', (ws) => {
  ws.isAlive = true;
  ws.on('error', console.error);
  ws.on('pong', () => { ws.isAlive = true; });
});
function reapDeadClients() {
  for (const ws of wss.clients) {
    if (ws.isAlive === false) { ws.terminate(); continue; }
    ws.isAlive = false;
    ws.ping();
  }
}
setInterval(reapDeadClients, Number(process.argv[2]));
wss.on('listening', () => console.log('READY', wss.address().port));
"#;

/// Runs [`REAPING_SERVER_JS`] as `server.js` under node with `flags`,
/// freezes one client until the server terminates it, and returns the
/// report with wstrace's stderr, the script's path and node's pid.
fn node_reaping_close(flags: &[&str]) -> (Value, String, PathBuf, u32) {
    let (out, script, pid) = node_reaping_close_as(flags, "json");
    match out {
        Reaped::Json(r, stderr) => (r, stderr, script, pid),
        Reaped::Text(..) => unreachable!("asked for json"),
    }
}

enum Reaped {
    Json(Value, String),
    /// The text output and wstrace's stderr.
    Text(String, String),
}

/// [`node_reaping_close`] with wstrace printing `format` (json or text).
fn node_reaping_close_as(flags: &[&str], format: &str) -> (Reaped, PathBuf, u32) {
    let Some((node, modules)) = require_node_ws() else {
        panic!("node with ws is required");
    };
    let dir = WorldReadableDir::new("node-jit");
    let script = dir.write("server.js", REAPING_SERVER_JS);
    let (server, port) = spawn_ready(
        Command::new(node)
            // Whatever files node's flags make (V8's isolate log) stay in
            // the test's directory.
            .current_dir(dir.path())
            .env("NODE_PATH", &modules)
            .args(flags)
            .arg(&script)
            .arg(WS_INTERVAL_MS.to_string()),
    );
    let pid = server.0.id();
    let w = Tracer::start_format(port, format, &[]);
    let mut c = upgraded_with(port, UPGRADE);
    // Frozen: read until ws terminates the connection, answer nothing.
    let mut buf = [0u8; 64];
    while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
    // The server's report: this test read the 101 byte by byte, so its
    // socket is no client side (a 101 is followed as one when it is the
    // first response a socket reads).
    let out = if format == "json" {
        let reports = w.wait_for_server_reports(1, Duration::from_secs(15));
        assert_eq!(reports.len(), 1, "{reports:#?}");
        Reaped::Json(reports[0].clone(), w.stderr_text())
    } else {
        let start = std::time::Instant::now();
        let text = loop {
            let text = w.raw_lines().concat();
            if text.contains("reapDeadClients") || start.elapsed() > Duration::from_secs(15) {
                break text;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        Reaped::Text(text, w.stderr_text())
    };
    drop(w);
    drop(server);
    // node leaves its perf map behind.
    let _ = std::fs::remove_file(format!("/tmp/perf-{pid}.map"));
    (out, script, pid)
}

/// Issue 26, item 1: JavaScript compiled after the 101 (the heartbeat's
/// `terminate()`, first called at the close) is named at the close: the
/// perf map is read again, from where the last read stopped, when a frame
/// lies in generated code it did not name. V8's names give the function,
/// its script and the line the function starts on.
#[test]
fn node_js_frames_compiled_after_the_101_are_named_from_the_perf_map() {
    if !require_root() || require_node_ws().is_none() {
        return;
    }
    let _serial = serial();
    let (r, stderr, script, pid) =
        node_reaping_close(&["--perf-basic-prof", "--interpreted-frames-native-stack"]);
    assert_eq!(r["pid"].as_u64(), Some(u64::from(pid)), "{r:#}");
    let (stack, terminate, reap) = terminate_called_by_reap(&r, &stderr);
    for i in [terminate, reap] {
        let f = &stack[i];
        assert_eq!(
            (s(f, &["kind"]), s(f, &["language"])),
            ("jit", "javascript"),
            "{f}"
        );
        assert_eq!(f["module"], format!("/tmp/perf-{pid}.map"), "{f}");
    }
    assert!(
        s(&stack[terminate], &["file"]).ends_with("/ws/lib/websocket.js"),
        "{}",
        stack[terminate]
    );
    assert_eq!(
        (s(&stack[reap], &["file"]), stack[reap]["line"].as_u64()),
        (
            script.to_str().expect("utf-8 path"),
            Some(line_of("function reapDeadClients"))
        ),
        "{r:#}"
    );
    assert!(!stderr.contains("note: stacks"), "no hint needed: {stderr}");
}

/// The user stack of a [`REAPING_SERVER_JS`] close and where in it its
/// `terminate` and `reapDeadClients` frames are; fails unless both are
/// there, `terminate` called by (inside) `reapDeadClients`.
fn terminate_called_by_reap(r: &Value, stderr: &str) -> (Vec<Value>, usize, usize) {
    let stack = r["user_stack"].as_array().cloned().unwrap_or_default();
    let at = |name: &str| {
        stack
            .iter()
            .position(|f| f["function"] == name)
            .unwrap_or_else(|| panic!("no {name} frame in {r:#}\n{stderr}"))
    };
    let (terminate, reap) = (at("terminate"), at("reapDeadClients"));
    assert!(
        terminate < reap,
        "terminate is called by reapDeadClients: {r:#}"
    );
    (stack, terminate, reap)
}

/// The line of [`REAPING_SERVER_JS`] that starts with `prefix` (1-based).
fn line_of(prefix: &str) -> u64 {
    REAPING_SERVER_JS
        .lines()
        .position(|l| l.starts_with(prefix))
        .expect("the line") as u64
        + 1
}

/// Issue 26, item 1, without any node flag: node writes no perf map, and
/// the JavaScript frames are named all the same, from the function objects
/// V8 keeps in each frame (through node's own `v8dbg_*` layout symbols):
/// `terminate` in ws's websocket.js, called by the server's own
/// `reapDeadClients`, at the line each function starts on.
#[test]
fn node_js_frames_are_named_without_any_node_flag() {
    if !require_root() || require_node_ws().is_none() {
        return;
    }
    let _serial = serial();
    let (r, stderr, script, pid) = node_reaping_close(&[]);
    assert_eq!(r["pid"].as_u64(), Some(u64::from(pid)), "{r:#}");
    assert!(
        !std::path::Path::new(&format!("/tmp/perf-{pid}.map")).exists(),
        "no perf map without flags"
    );
    let (stack, terminate, reap) = terminate_called_by_reap(&r, &stderr);
    for i in [terminate, reap] {
        let f = &stack[i];
        assert_eq!(f["language"], "javascript", "{f}");
        assert!(
            f["kind"] == "interpreted" || f["kind"] == "jit",
            "a V8 frame: {f}"
        );
        assert!(f["module"].is_null(), "{f}");
        assert!(f["address"].is_string(), "{f}");
    }
    let t = &stack[terminate];
    assert!(s(t, &["file"]).ends_with("/ws/lib/websocket.js"), "{t}");
    // The line `terminate() {` starts on in the installed ws.
    let websocket_js = std::fs::read_to_string(s(t, &["file"])).expect("ws's websocket.js");
    let terminate_line = websocket_js
        .lines()
        .position(|l| l.trim_start().starts_with("terminate() {"))
        .expect("terminate() in websocket.js") as u64
        + 1;
    assert_eq!(t["line"].as_u64(), Some(terminate_line), "{t}");
    assert_eq!(
        (s(&stack[reap], &["file"]), stack[reap]["line"].as_u64()),
        (
            script.to_str().expect("utf-8 path"),
            Some(line_of("function reapDeadClients"))
        ),
        "{r:#}"
    );
    // No interpreter trampoline left where a JavaScript frame was named:
    // every trampoline frame between the close and reapDeadClients is one.
    assert!(
        stack[..reap]
            .iter()
            .all(|f| f["function"] != "Builtins_InterpreterEntryTrampoline"),
        "{r:#}"
    );
    assert!(r["interp_stack_note"].is_null(), "{r:#}");
    assert!(
        !stderr.contains("note: stacks"),
        "no perf map hint when the frames are named: {stderr}"
    );

    // The text stack names them the same way, node's own frames folded.
    let (out, script, _) = node_reaping_close_as(&[], "text");
    let Reaped::Text(text, stderr) = out else {
        unreachable!("asked for text")
    };
    let base = script.file_name().and_then(|f| f.to_str()).expect("name");
    assert!(
        text.contains(&format!(
            "reapDeadClients  {base}:{}",
            line_of("function reapDeadClients")
        )) || text.contains(&format!(
            "reapDeadClients  {}:{}",
            script.display(),
            line_of("function reapDeadClients")
        )),
        "{text}\n{stderr}"
    );
    assert!(text.contains("terminate  "), "{text}");
    assert!(text.contains("websocket.js:"), "{text}");
}

/// `websockets` pings every 0.5 s and gives up 1.2 s after an unanswered
/// one: it sends a close frame 1011 "keepalive ping timeout" and half-closes.
const KEEPALIVE_SERVER: &str = r#"
import asyncio, websockets
async def handler(ws):
    await ws.wait_closed()
async def main():
    async with websockets.serve(handler, "127.0.0.1", 0, ping_interval=0.5,
                                ping_timeout=1.2, close_timeout=1) as server:
        print("READY", server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Future()
asyncio.run(main())
"#;

#[test]
fn python_websockets_keepalive_timeout_is_heartbeat_timeout_not_a_server_error() {
    if !require_root() {
        return;
    }
    let Some(python) = require_venv_python() else {
        return;
    };
    let _serial = serial();
    let (_server, port) = spawn_ready(Command::new(python).args(["-c", KEEPALIVE_SERVER]));
    let w = Tracer::start(port, &[]);
    let mut c = upgraded_with(port, UPGRADE);
    // Never answer: read pings until the close frame, then the FIN.
    let mut close = None;
    while let Some((b0, payload)) = read_frame(&mut c) {
        if b0 == 0x88 {
            close = Some(payload);
        }
    }
    let close = close.expect("websockets sent a close frame");
    assert_eq!(&close[..2], &1011u16.to_be_bytes(), "{close:?}");
    drop(c);
    // The server's report: this test read the 101 byte by byte, so its
    // socket is no client side (a 101 is followed as one when it is the
    // first response a socket reads).
    let reports = w.wait_for_server_reports(1, Duration::from_secs(15));
    assert_eq!(reports.len(), 1, "{reports:#?}");
    let r = &reports[0];
    assert_eq!(s(r, &["diagnosis", "code"]), "heartbeat_timeout", "{r:#}");
    assert_eq!(s(r, &["closed_by"]), "local", "{r:#}");
    assert!(n(r, "unanswered_pings_sent") >= 1, "{r:#}");
    assert_eq!(n(r, "pongs_received"), 0, "{r:#}");
    let f = &r["frames"][0];
    assert_eq!(
        (s(f, &["direction"]), f["code"].as_u64(), s(f, &["reason"])),
        ("sent", Some(1011), "keepalive ping timeout"),
        "{r:#}"
    );
    let msg = s(r, &["diagnosis", "message"]);
    assert!(
        msg.contains("with a close frame 1011") && msg.contains("no pong ever came back"),
        "{msg}"
    );
}

/// A server that answers the upgrade (with the Accept a real client checks)
/// and then reads and drops everything: it never answers a ping nor the
/// client's close frame (a hand-rolled server without pongs, or one whose
/// WebSocket layer is stuck while its socket is still read), and closes at
/// the client's FIN.
const SILENT_SERVER: &str = r#"
import base64, hashlib, socket, sys
l = socket.socket()
l.bind(("127.0.0.1", 0))
l.listen(1)
print("READY", l.getsockname()[1], flush=True)
c, _ = l.accept()
head = b""
while b"\r\n\r\n" not in head:
    d = c.recv(1024)
    if not d:
        sys.exit(1)
    head += d
key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
           if line.lower().startswith(b"sec-websocket-key:"))
accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
while c.recv(4096):
    pass
c.close()
"#;

/// The `websockets` client with a 200 ms keepalive: one ping, 300 ms for
/// its pong, then it fails the connection with 1011 "keepalive ping
/// timeout", waits 300 ms for the server's close frame and closes.
/// Prints its pid, then what it sent when the connection closed.
const KEEPALIVE_CLIENT: &str = r#"
import asyncio, os, sys, websockets
async def main(port):
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws", ping_interval=0.2,
                                  ping_timeout=0.3, close_timeout=0.3) as ws:
        try:
            await ws.recv()
        except websockets.ConnectionClosed as e:
            print("CLOSED", os.getpid(), e.sent.code, e.sent.reason, flush=True)
asyncio.run(main(int(sys.argv[1])))
"#;

#[test]
fn python_websockets_client_giving_up_on_a_silent_server_is_peer_heartbeat_timeout() {
    if !require_root() {
        return;
    }
    let Some(python) = system_python() else {
        return;
    };
    let Some(venv_python) = require_venv_python() else {
        return;
    };
    let _serial = serial();
    let (server, port) = spawn_ready(Command::new(python).args(["-c", SILENT_SERVER]));
    let w = Tracer::start(port, &[]);
    let out = Command::new(venv_python)
        .args(["-c", KEEPALIVE_CLIENT, &port.to_string()])
        .output()
        .expect("the websockets client");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let client_pid: u64 = said
        .trim()
        .strip_prefix("CLOSED ")
        .and_then(|rest| rest.strip_suffix(" 1011 keepalive ping timeout"))
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("the client did not time out its ping: {said:?}"));
    // Both ends: the client's socket (it read the 101) is the client side,
    // whose own pings went unanswered: it gave up, the server never
    // answered (`heartbeat_timeout` in the client's words).
    let (r, c) = w.wait_for_both_ends(port, Duration::from_secs(15));
    assert_eq!(c["upgraded_by"]["pid"].as_u64(), Some(client_pid), "{c:#}");
    assert_eq!(s(&c, &["closed_by"]), "local", "{c:#}");
    assert_eq!(s(&c, &["diagnosis", "code"]), "heartbeat_timeout", "{c:#}");
    assert_eq!(
        (n(&c, "pings_sent"), n(&c, "pongs_received")),
        (1, 0),
        "{c:#}"
    );
    assert_eq!(
        (
            s(&c["frames"][0], &["direction"]),
            c["frames"][0]["code"].as_u64()
        ),
        ("sent", Some(1011)),
        "{c:#}"
    );
    let r = &r;
    assert_eq!(
        s(r, &["diagnosis", "code"]),
        "peer_heartbeat_timeout",
        "{r:#}"
    );
    assert_eq!(
        (s(r, &["closed_by"]), s(r, &["how"])),
        ("peer", "fin"),
        "{r:#}"
    );
    // The peer is the client process itself, recorded by the kernel when
    // it wrote its request; the local end is the server.
    assert_eq!(r["peer"]["pid"].as_u64(), Some(client_pid), "{r:#}");
    assert_eq!(s(r, &["peer", "source"]), "kernel", "{r:#}");
    assert_eq!(r["pid"].as_u64(), Some(u64::from(server.0.id())), "{r:#}");
    // websockets keeps one ping in flight: the first went unanswered.
    assert_eq!(
        (
            n(r, "pings_received"),
            n(r, "pongs_sent"),
            n(r, "unanswered_pings_received")
        ),
        (1, 0, 1),
        "{r:#}"
    );
    assert_eq!(
        (n(r, "pings_sent"), n(r, "pongs_received")),
        (0, 0),
        "{r:#}"
    );
    let frames = r["frames"].as_array().expect("frames");
    assert_eq!(frames.len(), 1, "only the client's close frame: {r:#}");
    assert_eq!(
        (
            s(&frames[0], &["direction"]),
            frames[0]["code"].as_u64(),
            s(&frames[0], &["reason"])
        ),
        ("received", Some(1011), "keepalive ping timeout"),
        "{r:#}"
    );
    let msg = s(r, &["diagnosis", "message"]);
    assert!(
        msg.starts_with(&format!("the client (python3 (pid {client_pid})"))
            && msg.contains("sent 1 ping that")
            && msg.contains("no pong ever came back")
            && msg.contains("the server stopped answering pings"),
        "{msg}"
    );
}

/// One connection per request path, how the close frame 4001 "kicked"
/// travels: `/text-then-close` a text frame and the close in one write,
/// `/split-close` the close in two writes 50 ms apart, `/iovec-close` its
/// header and payload as two iovecs of one sendmsg; `/read` reads what the
/// client sends until it closes.
const FRAMES_SERVER: &str = r#"
import socket, sys, time
CLOSE = b"\x88\x08" + (4001).to_bytes(2, "big") + b"kicked"
l = socket.socket()
l.bind(("127.0.0.1", 0))
l.listen(8)
print("READY", l.getsockname()[1], flush=True)
while True:
    c, _ = l.accept()
    head = b""
    while b"\r\n\r\n" not in head:
        d = c.recv(1024)
        if not d:
            break
        head += d
    path = head.split(b" ")[1] if head.count(b" ") > 1 else b""
    c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
    if path == b"/text-then-close":
        c.sendall(b"\x81\x05hello" + CLOSE)
    elif path == b"/split-close":
        c.sendall(CLOSE[:3])
        time.sleep(0.05)
        c.sendall(CLOSE[3:])
    elif path == b"/iovec-close":
        c.sendmsg([CLOSE[:2], CLOSE[2:]])
    else:
        while c.recv(4096):
            pass
    c.close()
"#;

fn request(path: &str) -> Vec<u8> {
    String::from_utf8_lossy(UPGRADE)
        .replacen("GET /ws ", &format!("GET {path} "), 1)
        .into_bytes()
}

/// A client's masked frame.
fn masked(b0: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0xA5, 0x5A, 0x3C, 0xC3];
    let mut f = vec![b0, 0x80 | payload.len() as u8];
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

/// Connects with `path`, reads the 101, then runs `then` on the socket.
fn connect(port: u16, path: &str, then: impl FnOnce(&mut TcpStream)) -> u16 {
    let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    c.set_nodelay(true).expect("nodelay");
    c.write_all(&request(path)).expect("send the upgrade");
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        c.read_exact(&mut b).expect("reading the 101");
        head.push(b[0]);
    }
    let local = c.local_addr().expect("local").port();
    then(&mut c);
    local
}

fn read_to_end(c: &mut TcpStream) {
    let mut buf = [0u8; 512];
    while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
}

#[test]
fn close_frames_are_seen_after_a_text_frame_and_split_across_writes() {
    if !require_root() {
        return;
    }
    let Some(python) = system_python() else {
        return;
    };
    let _serial = serial();
    let (_server, port) = spawn_ready(Command::new(python).args(["-c", FRAMES_SERVER]));
    let w = Tracer::start(port, &[]);
    let mut close = (1008u16).to_be_bytes().to_vec();
    close.extend_from_slice(b"policy");
    let client_close = masked(0x88, &close);
    let cases: Vec<(&str, u16, &str, u64, &str)> = vec![
        (
            "sent after a text frame",
            connect(port, "/text-then-close", read_to_end),
            "sent",
            4001,
            "kicked",
        ),
        (
            "sent in two writes",
            connect(port, "/split-close", read_to_end),
            "sent",
            4001,
            "kicked",
        ),
        (
            "sent as two iovecs",
            connect(port, "/iovec-close", read_to_end),
            "sent",
            4001,
            "kicked",
        ),
        (
            "received after a text frame",
            connect(port, "/read", |c| {
                let mut w = masked(0x81, b"bye");
                w.extend_from_slice(&client_close);
                c.write_all(&w).expect("text and close");
                std::thread::sleep(Duration::from_millis(100));
            }),
            "received",
            1008,
            "policy",
        ),
        (
            "received in two writes",
            connect(port, "/read", |c| {
                c.write_all(&client_close[..5]).expect("close, first part");
                std::thread::sleep(Duration::from_millis(50));
                c.write_all(&client_close[5..]).expect("close, the rest");
                std::thread::sleep(Duration::from_millis(100));
            }),
            "received",
            1008,
            "policy",
        ),
    ];
    // The server's reports: `connect` reads the 101 byte by byte, so its
    // sockets are no client side.
    let reports = w.wait_for_server_reports(cases.len(), Duration::from_secs(15));
    assert_eq!(reports.len(), cases.len(), "{reports:#?}");
    for (what, client_port, dir, code, reason) in cases {
        let r = reports
            .iter()
            .find(|r| s(r, &["remote"]).ends_with(&format!(":{client_port}")))
            .unwrap_or_else(|| {
                panic!("{what}: no report for client port {client_port}: {reports:#?}")
            });
        let f = &r["frames"][0];
        assert_eq!(
            (s(f, &["direction"]), f["code"].as_u64(), s(f, &["reason"])),
            (dir, Some(code), reason),
            "{what}: {r:#}"
        );
        let want = if dir == "sent" {
            "server_close_frame"
        } else {
            "client_close_frame"
        };
        assert_eq!(s(r, &["diagnosis", "code"]), want, "{what}: {r:#}");
    }
}
