//! Sockets the tests make: a free port, the upgrade request, an upgraded
//! connection.
use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    time::Duration,
};

/// The plain upgrade request the tests send.
pub const UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// A loopback port free right now (the kernel's pick; another process may
/// take it before the caller binds it, which the caller's bind then says).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
        .port()
}

/// Connects to 127.0.0.1:`port`, sends [`UPGRADE`] and reads the response
/// head byte by byte (so no frame after it is consumed); panics unless it
/// is a 101. Returns the open connection.
pub fn upgraded(port: u16) -> TcpStream {
    upgraded_with(port, UPGRADE)
}

/// [`upgraded`] with another request (e.g. one with a Sec-WebSocket-Key,
/// which real WebSocket libraries require).
pub fn upgraded_with(port: u16, request: &[u8]) -> TcpStream {
    let mut c = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    c.write_all(request).expect("send the upgrade");
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = c.read(&mut b).expect("read the 101");
        assert_eq!(n, 1, "server closed before answering: {head:?}");
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101 "),
        "not a 101: {:?}",
        String::from_utf8_lossy(&head)
    );
    c
}

/// One upgrade request, then read until the server closes.
pub fn upgrade_once(port: u16) {
    let mut c = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    c.write_all(UPGRADE).expect("send the upgrade");
    let mut buf = [0u8; 512];
    while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
}
