//! `--debug-probes`: the kernel programs' decision lines ("why wasn't my
//! connection reported?"), with the real programs in the real kernel
//! (tracepoint set, the one this host has). Two 101s that are ignored for
//! known reasons: one on a connection accepted before wstrace started, one
//! written after a `100 Continue` in the same write. With the flag, each
//! gets its reason line; without it, no probe line at all. The barrier
//! (a traced close's report) and wstrace's clean exit (which prints the
//! kernel's last lines) come before every assertion. Needs root.
mod common;

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    time::Duration,
};

use common::{Barrier, Tracer, TracerOptions, UPGRADE, require_root};

const SWITCHING: &[u8] =
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";

/// Bytes before the 101 in the second case's one write.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The server end reads the request head, then writes `response` in one
/// write.
fn answer(server: &mut TcpStream, response: &[u8]) {
    server
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = server.read(&mut b).expect("read the request");
        assert_eq!(n, 1, "client closed before its request ended");
        head.push(b[0]);
    }
    server.write_all(response).expect("write the response");
}

/// Both ignored 101s on `listener`'s port; `old` was accepted before
/// wstrace started. Returns the client ports (old, new).
fn ignored_101s(listener: &TcpListener, old: (TcpStream, TcpStream)) -> (u16, u16) {
    let (mut old_client, mut old_server) = old;
    old_client.write_all(UPGRADE).expect("send the upgrade");
    answer(&mut old_server, SWITCHING);

    let port = listener.local_addr().expect("addr").port();
    let mut new_client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let (mut new_server, _) = listener.accept().expect("accept");
    new_client.write_all(UPGRADE).expect("send the upgrade");
    let mut response = CONTINUE.to_vec();
    response.extend_from_slice(SWITCHING);
    answer(&mut new_server, &response);
    (
        old_client.local_addr().expect("addr").port(),
        new_client.local_addr().expect("addr").port(),
    )
}

/// A listener with one connection accepted now (before wstrace starts).
fn listener_with_old_connection() -> (TcpListener, (TcpStream, TcpStream)) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    (listener, (client, server))
}

fn start(ports: &[u16], debug: bool) -> Tracer {
    let mut o = TracerOptions::new()
        .ports(ports)
        .args(&["--probe", "tracepoint"]);
    if debug {
        o = o.arg("--debug-probes");
    }
    o.start()
        .unwrap_or_else(|e| panic!("wstrace did not attach: {e:#}"))
}

#[test]
fn debug_probes_say_why_a_101_was_ignored() {
    if !require_root() {
        return;
    }
    let (listener, old) = listener_with_old_connection();
    let port = listener.local_addr().expect("addr").port();
    let barrier = Barrier::start();
    let mut t = start(&[port, barrier.port], true);
    let (old_port, new_port) = ignored_101s(&listener, old);
    let reports = barrier.cross(&t, Duration::from_secs(20));
    t.interrupt(Duration::from_secs(20)).expect("clean exit");
    let stderr = t.stderr_text();
    let pid = std::process::id();
    let probe_lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("wstrace: probe: "))
        .collect();

    // Neither ignored connection was reported, from either end (this
    // test's clients never read the 101).
    for r in &reports {
        assert_ne!(
            common::report_local_port(r),
            Some(port),
            "an ignored 101 was reported: {r}"
        );
        assert!(
            !common::is_client_of(r, port),
            "an ignored 101 was reported from the client's end: {r}"
        );
    }
    let mine = |client_port: u16| {
        let socket = format!(" socket :{port} ⇄ :{client_port}: ");
        probe_lines
            .iter()
            .copied()
            .filter(|l| {
                l.starts_with(&format!("wstrace: probe: pid {pid} ")) && l.contains(&socket)
            })
            .collect::<Vec<_>>()
    };
    let old_lines = mine(old_port);
    assert!(
        old_lines.iter().any(|l| l
            .contains("101 ignored: no listener accepted this socket while wstrace ran")
            && l.ends_with(&format!("(wrote {} bytes)", SWITCHING.len()))),
        "no reason line for the connection accepted before wstrace: {old_lines:?}\n{stderr}"
    );
    let new_lines = mine(new_port);
    assert!(
        new_lines
            .iter()
            .any(|l| l.contains("101 ignored: not at the start of the write")
                && l.ends_with(&format!("(at byte {})", CONTINUE.len()))),
        "no reason line for the 101 after a 100 Continue: {new_lines:?}\n{stderr}"
    );
    // The barrier's connection: its server's first read classified, its
    // 101 traced, both said.
    assert!(
        probe_lines
            .iter()
            .any(|l| l.contains(&format!(" socket :{} ⇄ :", barrier.port))
                && l.contains("wrote a 101: traced (server side)")),
        "{probe_lines:?}"
    );
    assert!(
        probe_lines
            .iter()
            .any(|l| l.contains(&format!(" socket :{} ⇄ :", barrier.port))
                && l.contains("first read is a request head: copied")),
        "{probe_lines:?}"
    );
    // And its client's end, this test's socket (`--port` follows both
    // ends of a connection to a traced port): the 101 it read.
    assert!(
        probe_lines
            .iter()
            .any(|l| l.starts_with(&format!("wstrace: probe: pid {pid} "))
                && l.contains(&format!(" ⇄ :{}: ", barrier.port))
                && l.contains("read a 101 as its first response: traced (client side)")),
        "{probe_lines:?}"
    );
}

#[test]
fn without_the_flag_no_probe_line_is_printed() {
    if !require_root() {
        return;
    }
    let (listener, old) = listener_with_old_connection();
    let port = listener.local_addr().expect("addr").port();
    let barrier = Barrier::start();
    let mut t = start(&[port, barrier.port], false);
    ignored_101s(&listener, old);
    barrier.cross(&t, Duration::from_secs(20));
    t.interrupt(Duration::from_secs(20)).expect("clean exit");
    let stderr = t.stderr_text();
    assert!(
        !stderr.lines().any(|l| l.starts_with("wstrace: probe:")),
        "a probe line without --debug-probes:\n{stderr}"
    );
}
