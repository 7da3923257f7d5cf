//! The client side of the scenarios.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{Context as _, Result};

pub const UPGRADE_REQUEST: &[u8] = b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
pub const PLAIN_REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";

/// What the client does once the server answered.
#[derive(Clone, Copy, Debug)]
pub enum Then {
    /// Read until the server closes (EOF, or the RST's error), then close.
    ReadToEnd,
    /// Hold the connection this long, then close first.
    CloseAfter(Duration),
    /// SIGKILL the server (this pid; the checker fills it in) once its 101
    /// arrived, then read to the end.
    KillServer(u32),
    /// SIGTERM the server (pid filled in by the checker), then read to the end.
    TermServer(u32),
    /// Close with SO_LINGER {1, 0}: the server receives an RST.
    Reset,
    /// Stop acknowledging (a socket filter that drops every segment to this
    /// socket: the kernel never sees them, so never ACKs), tell the server
    /// with one byte, and keep the socket open until the checker exits, so
    /// the server's kernel can only time the connection out.
    GoSilent,
}

/// Connects, sends `request`, reads the response head, then `then`.
pub fn exchange(addr: SocketAddr, request: &[u8], then: Then) -> Result<()> {
    let mut conn = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    conn.write_all(request).context("sending the request")?;
    let head = crate::serve::read_head(&mut conn)?;
    if head.is_empty() {
        anyhow::bail!("{addr} closed without answering");
    }
    match then {
        Then::ReadToEnd => {
            let mut buf = [0u8; 512];
            // An RST ends the read with ECONNRESET: that is the end too.
            while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
        }
        Then::CloseAfter(d) => std::thread::sleep(d),
        Then::Reset => crate::serve::set_linger_zero(&conn)?,
        Then::GoSilent => {
            drop_everything_received(&conn)?;
            conn.write_all(b"x").context("sending the go byte")?;
            // Never closed: a FIN would make it a peer close.
            std::mem::forget(conn);
            return Ok(());
        }
        Then::KillServer(pid) | Then::TermServer(pid) => {
            let sig = match then {
                Then::TermServer(_) => libc::SIGTERM,
                _ => libc::SIGKILL,
            };
            // SAFETY: signalling the scenario's own server child by pid.
            if unsafe { libc::kill(pid as i32, sig) } != 0 {
                anyhow::bail!("kill {pid}: {}", std::io::Error::last_os_error());
            }
            let mut buf = [0u8; 512];
            while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
        }
    }
    drop(conn);
    Ok(())
}

/// A classic BPF socket filter that accepts nothing (`ret #0`).
fn drop_everything_received(conn: &TcpStream) -> Result<()> {
    use std::os::fd::AsRawFd as _;
    let mut drop_all = [libc::sock_filter {
        code: 0x06, // BPF_RET | BPF_K
        jt: 0,
        jf: 0,
        k: 0,
    }];
    let prog = libc::sock_fprog {
        len: 1,
        filter: drop_all.as_mut_ptr(),
    };
    // SAFETY: valid fd; `prog` points at one instruction that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&raw const prog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        anyhow::bail!("SO_ATTACH_FILTER: {}", std::io::Error::last_os_error());
    }
    Ok(())
}
