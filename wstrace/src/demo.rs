//! `wstrace demo`: the story in one command, on loopback.
//!
//! A built-in server behaves like Swoole does: it closes HTTP/1.0 connections
//! that lack `Connection: keep-alive` right after its response, even a 101.
//! A built-in client upgrades once as HTTP/1.0 (what nginx sends upstream
//! without `proxy_http_version 1.1;`) and once as HTTP/1.1, and the real
//! probes trace both.
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Shutdown, TcpListener, TcpStream},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result};

use crate::{cli::DemoArgs, daemon};

const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// How long the HTTP/1.1 client keeps its WebSocket open before closing it.
const HOLD: Duration = Duration::from_millis(300);

pub async fn run(args: &DemoArgs) -> Result<()> {
    let listener =
        TcpListener::bind("127.0.0.1:0").context("binding the demo server on loopback")?;
    let port = listener.local_addr()?.port();
    thread::Builder::new()
        .name("ws-demo-server".into())
        .spawn(move || serve(listener))
        .context("starting the demo server")?;
    eprintln!(
        "wstrace demo: server on 127.0.0.1:{port} closes HTTP/1.0 upgrades right after the 101 (like Swoole);"
    );
    eprintln!(
        "wstrace demo: client upgrades once as HTTP/1.0 (what nginx sends without `proxy_http_version 1.1;`, here sent straight by the client, so the fix is the client's) and once as HTTP/1.1."
    );
    // Both ends of each connection are on this host (in this process):
    // `--port` follows the server's socket and the client's, which reads
    // the 101, so two connections are four reports.
    let ports = crate::model::Ports::Only(vec![port]);
    let opts = daemon::Options {
        ports: &ports,
        scope: crate::model::Scope::default(),
        common: &args.common,
        count: Some(4),
        duration: Some(Duration::from_secs(20)),
        log: None,
        metrics: None,
        otlp: None,
    };
    let printed = daemon::run(opts, move |_, _| {
        let _ = thread::Builder::new()
            .name("ws-demo-client".into())
            .spawn(move || {
                if let Err(e) = drive(port) {
                    eprintln!("wstrace demo: client failed: {e:#}");
                }
            });
    })
    .await?;
    eprintln!(
        "wstrace demo: {printed} close report(s), each connection from both ends (the server's socket, and the \
         client's: \"client side\"). The HTTP/1.0 upgrade was closed by the server (closed by LOCAL on the server's \
         side) right after the 101; the HTTP/1.1 one stayed open until the client closed it (closed by PEER on the \
         server's side)."
    );
    Ok(())
}

fn serve(listener: TcpListener) {
    // Started before the daemon drops its capabilities, in the daemon's own
    // process: a server needs none, so it drops them itself (or the daemon
    // would rightly warn that a thread still holds them).
    crate::hardening::privileges::keep_file_access_only_in_this_thread();
    for conn in listener.incoming().flatten() {
        let _ = thread::Builder::new()
            .name("ws-demo-server".into())
            .spawn(move || handle(conn));
    }
}

/// Reads the request head; answers 101; closes at once for HTTP/1.0 without
/// keep-alive, otherwise waits for the client to close first.
fn handle(conn: TcpStream) {
    let mut reader = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if line == "\r\n" => break,
            Ok(_) => head.push(line.to_ascii_lowercase()),
        }
    }
    let http10 = head
        .first()
        .is_some_and(|l| l.trim_end().ends_with("http/1.0"));
    let keep_alive = head
        .iter()
        .any(|l| l.starts_with("connection:") && l.contains("keep-alive"));
    let mut conn = conn;
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {ACCEPT}\r\n\r\n"
    );
    if conn.write_all(response.as_bytes()).is_err() {
        return;
    }
    if http10 && !keep_alive {
        close_http10_after_response(conn);
        return;
    }
    let mut sink = [0u8; 512];
    while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
    drop(conn);
}

/// Named so the user stack in the report points at the decision.
#[inline(never)]
fn close_http10_after_response(conn: TcpStream) {
    drop(conn);
}

fn upgrade_request(version: &str, port: u16) -> String {
    format!(
        "GET /ws HTTP/{version}\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

fn drive(port: u16) -> Result<()> {
    // HTTP/1.0: the server closes; read until EOF.
    let mut c = TcpStream::connect(("127.0.0.1", port)).context("connecting (HTTP/1.0)")?;
    c.write_all(upgrade_request("1.0", port).as_bytes())?;
    let mut buf = Vec::new();
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    let _ = c.read_to_end(&mut buf);
    drop(c);
    // HTTP/1.1: stays open; the client closes first.
    let mut c = TcpStream::connect(("127.0.0.1", port)).context("connecting (HTTP/1.1)")?;
    c.write_all(upgrade_request("1.1", port).as_bytes())?;
    let mut first = [0u8; 256];
    let _ = c.read(&mut first)?;
    thread::sleep(HOLD);
    c.shutdown(Shutdown::Both)?;
    Ok(())
}
