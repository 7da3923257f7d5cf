//! Many idle upgraded connections, both ends on this host (issue 24): every
//! upgrade is tracked and nothing is lost. At 10,000 connections the daemon
//! used to read the server's whole fd table at each client-side 101 (to
//! name the peer): O(sockets) per upgrade, the ring stayed past half full
//! and the fair share dropped most upgrades (3,677 of 20,000 tracked).
//! Real kernel (tracepoint set on this host), a real asyncio server and
//! client (Debian's python3), distinct Sec-WebSocket-Keys. Needs root (see
//! `common::require`).
mod common;

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use common::{Barrier, Kill, TracerOptions, require_root, require_tool, spawn_ready};

/// Connections: 2 upgraded sockets each. Past the point where the old
/// daemon fell behind, and set up in seconds here.
const CONNECTIONS: u64 = 6000;

/// `server`: answers each upgrade with the Accept due and holds it open
/// (prints `READY <port>`); `client N PORT`: opens N upgraded connections
/// (256 at a time), prints `UP <n>` and holds them.
const SCRIPT: &str = r#"
import asyncio, base64, hashlib, os, resource, sys
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held = []
async def handle(r, w):
    head = await r.readuntil(b"\r\n\r\n")
    key = [l.split(b":", 1)[1].strip() for l in head.split(b"\r\n")
           if l.lower().startswith(b"sec-websocket-key:")][0]
    acc = base64.b64encode(hashlib.sha1(key + GUID).digest())
    w.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + acc + b"\r\n\r\n")
    await w.drain()
    held.append(w)
    await r.read()
async def server():
    s = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=4096)
    print("READY", s.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()
async def one(port, sem):
    async with sem:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16))
        w.write(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
        head = await r.readuntil(b"\r\n\r\n")
        if head.startswith(b"HTTP/1.1 101 "):
            held.append(w)
async def client(n, port):
    sem = asyncio.Semaphore(256)
    await asyncio.gather(*(one(port, sem) for _ in range(n)))
    print("UP", len(held), flush=True)
    await asyncio.Event().wait()
if sys.argv[1] == "server":
    asyncio.run(server())
else:
    asyncio.run(client(int(sys.argv[2]), int(sys.argv[3])))
"#;

#[test]
fn every_idle_upgrade_is_tracked_on_both_ends() {
    if !require_root() {
        return;
    }
    let Some(python) = require_tool("python3", "apt-get install python3") else {
        return;
    };
    let _serial = common::serial();
    let barrier = Barrier::start();
    let (_server, port) = spawn_ready(Command::new(&python).args(["-c", SCRIPT, "server"]));
    // `--port` the server's and the barrier's: both ends of each connection
    // to them are followed (the server's socket and the client's, which
    // read the 101), and nobody else's on this shared host is counted.
    let t = TracerOptions::new()
        .ports(&[port, barrier.port])
        .metrics()
        .echo(false)
        .start()
        .unwrap_or_else(|e| panic!("wstrace did not attach: {e:#}"));

    let mut client = Kill(
        Command::new(&python)
            .args(["-c", SCRIPT, "client", &CONNECTIONS.to_string()])
            .arg(port.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the python client"),
    );
    let mut line = String::new();
    let out = client.0.stdout.take().expect("piped");
    let _ = BufReader::new(out).read_line(&mut line);
    assert_eq!(
        line.trim(),
        format!("UP {CONNECTIONS}"),
        "the client did not open every connection"
    );

    // Reports come in kernel order: once the barrier's close is reported,
    // every upgrade before it has been read.
    barrier.cross(&t, Duration::from_secs(60));
    let upgrades = t.counter("wstrace_upgrades_total").expect("metrics");
    let lost = t.lost_events().expect("metrics");
    // Both ends of every connection, and the barrier's server end (its
    // client end may come after its close).
    assert!(
        (2 * CONNECTIONS + 1..=2 * CONNECTIONS + 2).contains(&upgrades),
        "{upgrades} upgrades tracked, {} due; lost: {lost:?}\n{}",
        2 * CONNECTIONS + 1,
        t.stderr_text()
    );
    assert!(
        lost.values().all(|&n| n == 0),
        "lost: {lost:?}\n{}",
        t.stderr_text()
    );
    assert!(
        t.reports().iter().all(|r| {
            common::report_local_port(r) != Some(port) && !common::is_client_of(r, port)
        }),
        "an idle connection was reported closed"
    );
}
