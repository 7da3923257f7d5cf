//! The server side of the scenarios: one behaviour per process, so every
//! report can be checked against a known pid, and a single thread, so the
//! closing tid is that pid too.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
};

use anyhow::{Context as _, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Answer 101 and close at once (the story's server with an HTTP/1.0 request).
    CloseAfter101,
    /// Answer 101, then wait for the client to close first.
    WaitForPeer,
    /// Answer a plain 200 and close: must never be reported.
    Http200,
    /// Answer 101, then close with SO_LINGER {1, 0}: an RST instead of a FIN.
    Linger0,
    /// Like Swoole: answer 101, then close at once if the request was HTTP/1.0
    /// without `Connection: keep-alive`; otherwise keep the connection until
    /// the peer closes.
    Swoole,
    /// `HTTP/1.1 1010 ...`: a status that starts like 101 but is not.
    Status1010,
    /// A 200 whose body, in its own write, is the text of a 101 response.
    BodyWith101,
    /// The 101 response written one byte per write(2), then close.
    ByteAtATime,
    /// Like WaitForPeer, with a thread per connection: many upgraded
    /// sockets live at once (the others serve one connection at a time).
    Hold,
    /// Answer 101, then die of SIGSEGV (the default action, no core file)
    /// with the connection open.
    CrashAfter101,
    /// Answer 101, then exit(3) without closing the connection.
    ExitAfter101,
    /// With TCP_USER_TIMEOUT set, answer 101, wait for one byte from the
    /// client (sent once it stopped acknowledging), write a frame, and wait:
    /// the kernel times the connection out (ETIMEDOUT), then close.
    TimeoutAfter101,
    /// Exit(0) on SIGTERM (a graceful stop that forgets its connections),
    /// answer 101, then wait: the checker sends the SIGTERM.
    ExitOnSigterm,
    /// Answer 101, ping every 100 ms without reading a pong (the client
    /// never answers), and close after the third: a heartbeat timeout.
    PingNoPong,
    /// Answer 101, then write a text frame and the first 3 bytes of a close
    /// frame 4001 "kicked" in one write, and the rest of it in a second
    /// write 20 ms later; then close.
    SplitCloseFrame,
    /// Answer 101, then allocate memory until killed (in a memory-limited
    /// cgroup: the OOM killer's victim).
    HogAfter101,
    /// A WebSocket proxy in one thread (`--upstream`): reads a client's
    /// request, sends it to the upstream server, relays the upstream's
    /// response and then the bytes both ways; closes the client's side when
    /// the upstream closes (and the upstream when the client does). The
    /// handshake passes unchanged unless `--rewrite-key`.
    Relay,
}

/// Where a `Relay` forwards to, and how.
#[derive(Clone, Copy, Debug)]
pub struct Upstream {
    pub addr: SocketAddr,
    /// Send the upstream a Key of the relay's own (and answer the client
    /// with the Accept due for its Key): a proxy that rewrites the
    /// handshake, so no nonce is the same on both hops.
    pub rewrite_key: bool,
}

/// TCP_USER_TIMEOUT of `TimeoutAfter101`: short, so the scenario is too.
const USER_TIMEOUT_MS: u32 = 1000;

/// The close code of `SplitCloseFrame`.
pub const SPLIT_CLOSE_CODE: u16 = 4001;

/// The exit status of `ExitAfter101`.
pub const EXIT_STATUS: i32 = 3;

/// What a `--once` server does right after closing its one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AfterOne {
    /// Exit at once: `/proc/<pid>` is gone microseconds after the close.
    Exit,
    /// exec(2) `sleep 30`: same pid, a different program mapped.
    Exec,
}

pub const RESPONSE_101: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
const RESPONSE_200: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
const HEAD_CAP: usize = 8192;

pub fn run(
    addr: SocketAddr,
    mode: Mode,
    once: Option<AfterOne>,
    upstream: Option<Upstream>,
) -> Result<()> {
    if (mode == Mode::Relay) != upstream.is_some() {
        anyhow::bail!("--upstream goes with --mode relay, and only with it");
    }
    let listener = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    let port = listener.local_addr()?.port();
    println!("READY {port}");
    std::io::stdout().flush()?;
    if let Some(after) = once {
        let (conn, _) = listener.accept().context("accepting")?;
        serve_one(conn, mode, upstream)?;
        return match after {
            AfterOne::Exit => std::process::exit(0),
            AfterOne::Exec => {
                use std::os::unix::process::CommandExt as _;
                Err(std::process::Command::new("sleep").arg("30").exec()).context("exec sleep")
            }
        };
    }
    for conn in listener.incoming() {
        if mode == Mode::Hold {
            if let Ok(conn) = conn {
                std::thread::spawn(move || serve_one(conn, Mode::WaitForPeer, None));
            }
            continue;
        }
        // One bad connection must not end the server: the checker decides.
        if let Ok(conn) = conn
            && let Err(e) = serve_one(conn, mode, upstream)
        {
            eprintln!("ws-scenario serve: connection: {e:#}");
        }
    }
    Ok(())
}

fn serve_one(mut conn: TcpStream, mode: Mode, upstream: Option<Upstream>) -> Result<()> {
    let head = read_head(&mut conn)?;
    match mode {
        Mode::Relay => {
            let up = upstream.context("--mode relay needs --upstream")?;
            return relay(conn, &head, up);
        }
        Mode::Swoole => {
            // Like Swoole, the Accept the request's Key is due (a proxy
            // relays it, and wstrace links the chain's hops by it).
            conn.write_all(&response_101_for(&head))?;
            if !closes_http10(&head) {
                let mut buf = [0u8; 512];
                while conn.read(&mut buf)? > 0 {}
            }
        }
        Mode::CloseAfter101 => {
            // One write: the kernel sees the status line in the first bytes.
            conn.write_all(RESPONSE_101)?;
        }
        Mode::WaitForPeer | Mode::Hold => {
            conn.write_all(RESPONSE_101)?;
            let mut buf = [0u8; 512];
            while conn.read(&mut buf)? > 0 {}
        }
        Mode::Http200 => conn.write_all(RESPONSE_200)?,
        Mode::Status1010 => {
            conn.write_all(b"HTTP/1.1 1010 Not A Thing\r\nContent-Length: 0\r\n\r\n")?
        }
        Mode::BodyWith101 => {
            conn.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                    RESPONSE_101.len()
                )
                .as_bytes(),
            )?;
            conn.write_all(RESPONSE_101)?;
        }
        Mode::ByteAtATime => {
            for b in RESPONSE_101 {
                conn.write_all(std::slice::from_ref(b))?;
            }
        }
        Mode::Linger0 => {
            conn.write_all(RESPONSE_101)?;
            set_linger_zero(&conn)?;
        }
        Mode::CrashAfter101 => {
            conn.write_all(RESPONSE_101)?;
            crash();
        }
        Mode::TimeoutAfter101 => {
            set_user_timeout(&conn, USER_TIMEOUT_MS)?;
            conn.write_all(RESPONSE_101)?;
            let mut go = [0u8; 1];
            conn.read_exact(&mut go)
                .context("waiting for the client's go")?;
            // A text frame "hi" the client will never acknowledge.
            conn.write_all(&[0x81, 0x02, b'h', b'i'])?;
            let mut buf = [0u8; 512];
            // Ends with ETIMEDOUT once the kernel gives up.
            while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
        }
        Mode::ExitOnSigterm => {
            extern "C" fn stop(_: libc::c_int) {
                // SAFETY: _exit is async-signal-safe; no destructor runs,
                // so the connection is left for the kernel to close.
                unsafe { libc::_exit(0) }
            }
            // SAFETY: installing a handler that only calls _exit.
            unsafe { libc::signal(libc::SIGTERM, stop as *const () as libc::sighandler_t) };
            conn.write_all(RESPONSE_101)?;
            let mut buf = [0u8; 512];
            while conn.read(&mut buf)? > 0 {}
        }
        Mode::HogAfter101 => {
            conn.write_all(RESPONSE_101)?;
            let mut hog: Vec<Vec<u8>> = Vec::new();
            loop {
                // Touched, so the pages are really charged to the cgroup.
                hog.push(vec![1u8; 8 << 20]);
                std::hint::black_box(&hog);
            }
        }
        Mode::PingNoPong => {
            conn.write_all(RESPONSE_101)?;
            for _ in 0..3 {
                conn.write_all(&[0x89, 0x00])?;
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
        Mode::SplitCloseFrame => {
            conn.write_all(RESPONSE_101)?;
            let mut close = vec![0x88, 0x08];
            close.extend_from_slice(&SPLIT_CLOSE_CODE.to_be_bytes());
            close.extend_from_slice(b"kicked");
            let mut first = vec![0x81, 0x05];
            first.extend_from_slice(b"hello");
            first.extend_from_slice(&close[..3]);
            conn.write_all(&first)?;
            std::thread::sleep(std::time::Duration::from_millis(20));
            conn.write_all(&close[3..])?;
        }
        Mode::ExitAfter101 => {
            conn.write_all(RESPONSE_101)?;
            // process::exit runs no destructors: the socket is still open
            // and the kernel closes it in do_exit.
            std::process::exit(EXIT_STATUS);
        }
    }
    close_connection(conn);
    Ok(())
}

/// A 101 whose `Sec-WebSocket-Accept` answers the head's
/// `Sec-WebSocket-Key` (RFC 6455 §4.2.2); [`RESPONSE_101`] without one.
pub fn response_101_for(head: &[u8]) -> Vec<u8> {
    let Some(key) = header(head, "sec-websocket-key") else {
        return RESPONSE_101.to_vec();
    };
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        accept_for(&key)
    )
    .into_bytes()
}

/// The value of header `name` (any case) in an HTTP head.
fn header(head: &[u8], name: &str) -> Option<String> {
    String::from_utf8_lossy(head).lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// The Accept due for `key`: base64(SHA-1(key ‖ GUID)).
fn accept_for(key: &str) -> String {
    use sha1::{Digest as _, Sha1};
    let sha = Sha1::new()
        .chain_update(key.as_bytes())
        .chain_update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11")
        .finalize();
    base64(&sha)
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            out.push(if i <= c.len() {
                T[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

/// A fresh `Sec-WebSocket-Key` (16 random bytes, base64): a handshake of
/// this run's own, shared with no other connection on the host.
pub fn fresh_key() -> Result<String> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("reading /dev/urandom")?;
    Ok(base64(&b))
}

/// `head` with the value of header `name` replaced by `value` (the head
/// unchanged when it has no such header).
fn with_header(head: &[u8], name: &str, value: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let mut out = String::with_capacity(text.len() + value.len());
    for (i, line) in text.split_inclusive("\r\n").enumerate() {
        match line.split_once(':') {
            Some((n, _)) if i > 0 && n.trim().eq_ignore_ascii_case(name) => {
                out.push_str(n);
                out.push_str(": ");
                out.push_str(value);
                out.push_str("\r\n");
            }
            _ => out.push_str(line),
        }
    }
    out.into_bytes()
}

/// How long the relay waits for either side before giving up on the
/// connection (a scenario relays one short-lived WebSocket).
const RELAY_IDLE_MS: i32 = 60_000;

/// One proxied WebSocket, all in the calling thread: the thread that read
/// the client's request writes the upstream request, reads the upstream's
/// 101 and writes it to the client (what a same-thread hand-off link
/// sees), then pumps bytes until one side closes.
fn relay(mut down: TcpStream, head: &[u8], to: Upstream) -> Result<()> {
    if head.is_empty() {
        return Ok(());
    }
    let mut up =
        TcpStream::connect(to.addr).with_context(|| format!("connecting to {}", to.addr))?;
    let client_key = header(head, "sec-websocket-key");
    let request = match (&client_key, to.rewrite_key) {
        (Some(_), true) => with_header(head, "sec-websocket-key", &fresh_key()?),
        _ => head.to_vec(),
    };
    // One write each way: wstrace classifies a socket by its first bytes.
    up.write_all(&request)
        .context("sending the upstream request")?;
    let response = read_head(&mut up)?;
    if response.is_empty() {
        close_connection(down);
        return Ok(());
    }
    let response = match (&client_key, to.rewrite_key) {
        (Some(k), true) => with_header(&response, "sec-websocket-accept", &accept_for(k)),
        _ => response,
    };
    down.write_all(&response)
        .context("relaying the upstream response")?;
    pump(down, up)
}

/// Copies bytes both ways until a side closes (or errs, or is idle too
/// long); the other side is closed right after, from the same thread.
fn pump(mut down: TcpStream, mut up: TcpStream) -> Result<()> {
    let mut buf = [0u8; 4096];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: down.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: up.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds for the two open sockets.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, RELAY_IDLE_MS) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("poll");
        }
        if n == 0 {
            // Idle: give up, the client's side first.
            close_connection(down);
            return Ok(());
        }
        if fds[1].revents != 0 {
            match up.read(&mut buf) {
                Ok(n) if n > 0 => {
                    if down.write_all(&buf[..n]).is_err() {
                        close_connection(up);
                        return Ok(());
                    }
                }
                // The upstream closed: close the client's side.
                _ => {
                    close_connection(down);
                    return Ok(());
                }
            }
        }
        if fds[0].revents != 0 {
            match down.read(&mut buf) {
                Ok(n) if n > 0 => {
                    if up.write_all(&buf[..n]).is_err() {
                        close_connection(down);
                        return Ok(());
                    }
                }
                // The client closed: close the upstream.
                _ => {
                    close_connection(up);
                    return Ok(());
                }
            }
        }
    }
}

/// HTTP/1.0 without `Connection: keep-alive`: Swoole's "close after the
/// response" case.
fn closes_http10(head: &[u8]) -> bool {
    let text = String::from_utf8_lossy(head).to_ascii_lowercase();
    let http10 = text
        .lines()
        .next()
        .is_some_and(|l| l.trim_end().ends_with("http/1.0"));
    let keep_alive = text
        .lines()
        .filter_map(|l| l.strip_prefix("connection:"))
        .any(|v| v.split(',').any(|t| t.trim() == "keep-alive"));
    http10 && !keep_alive
}

/// Reads up to the blank line ending the request head.
pub fn read_head(conn: &mut TcpStream) -> Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < HEAD_CAP {
        let n = conn.read(&mut buf).context("reading the request head")?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(head)
}

fn set_user_timeout(conn: &TcpStream, ms: u32) -> Result<()> {
    // SAFETY: valid fd and a correctly sized option value.
    let rc = unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            (&raw const ms).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("setsockopt(TCP_USER_TIMEOUT)");
    }
    Ok(())
}

pub fn set_linger_zero(conn: &TcpStream) -> Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd and a correctly sized option value.
    let rc = unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("setsockopt(SO_LINGER)");
    }
    Ok(())
}

/// A named frame for the user stack the scenarios look for: the close(2) of
/// the server's socket happens here.
#[inline(never)]
pub fn close_connection(conn: TcpStream) {
    drop(std::hint::black_box(conn));
}

/// Dies of SIGSEGV like a faulting C server: the default action (Rust's
/// runtime installs a handler for stack overflows), and no core file left
/// behind by a test.
fn crash() -> ! {
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on our own process; raise() does not return
    // once SIGSEGV has its default action.
    unsafe {
        libc::setrlimit(libc::RLIMIT_CORE, &no_core);
        libc::signal(libc::SIGSEGV, libc::SIG_DFL);
        libc::raise(libc::SIGSEGV);
    }
    unreachable!("SIGSEGV with its default action ends the process")
}
