//! `ws-bench`: the load `cargo xtask bench` measures wstrace under.
//!
//! - `serve --mode echo`: a tokio-tungstenite WebSocket echo server;
//! - `serve --mode churn`: answers every request with a 101 and closes at
//!   once (the story's server, as fast as it can go);
//! - `serve --mode tcp-echo`: echoes raw bytes, no HTTP at all (what most
//!   of a host's traffic looks like to a tracer that watches every port);
//! - `steady`: N WebSocket connections (`--raw`: plain TCP connections to a
//!   `tcp-echo` server), each keeping `depth` small messages in flight;
//!   prints messages/s and latency percentiles as JSON;
//! - `churn`: upgrade-and-wait-for-close loops; prints connections/s and can
//!   log when each connection saw its close (for close-to-report latency);
//! - `idle-serve` / `idle-connect`: N upgraded connections held idle (both
//!   ends on this host, from several loopback source addresses), each with
//!   its own `Sec-WebSocket-Key`, then closed by the server: what N idle
//!   sockets cost the tracer's maps and daemon.
//!
//! Every client result is one JSON object on stdout.
use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand, ValueEnum};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
#[command(name = "ws-bench", about = "Load generators for wstrace's benchmarks")]
struct Cli {
    /// Runtime worker threads.
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Echo,
    Churn,
    /// Raw TCP echo: no HTTP, no WebSocket.
    TcpEcho,
}

#[derive(Subcommand)]
enum Command {
    /// Serve on 127.0.0.1:PORT (0: any); prints `READY <port>`.
    Serve {
        #[arg(long, default_value_t = 0)]
        port: u16,
        #[arg(long, value_enum)]
        mode: Mode,
    },
    /// Echo traffic over upgraded connections.
    Steady {
        #[arg(long)]
        port: u16,
        #[arg(long, default_value_t = 32)]
        conns: usize,
        /// Messages in flight per connection.
        #[arg(long, default_value_t = 8)]
        depth: usize,
        #[arg(long, default_value_t = 32)]
        size: usize,
        /// Measured seconds (after one second of warm-up).
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        /// Plain TCP messages of `size` bytes to a `tcp-echo` server, no
        /// handshake: traffic that is not HTTP.
        #[arg(long)]
        raw: bool,
    },
    /// Upgrade, then wait for the server's close, as fast as possible.
    Churn {
        #[arg(long)]
        port: u16,
        /// Concurrent connection loops.
        #[arg(long, default_value_t = 8)]
        conc: usize,
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        /// Write `<client port> <CLOCK_MONOTONIC ns of the EOF>` per connection.
        #[arg(long)]
        eof_log: Option<PathBuf>,
    },
    /// Serve on 127.0.0.1:PORT: answer each upgrade request with a 101
    /// (the Accept for its Key) and hold the socket, idle; once `close_file`
    /// exists, close every held socket (in accept order), print `CLOSED n`
    /// and exit. Prints `READY <port>`.
    IdleServe {
        #[arg(long, default_value_t = 0)]
        port: u16,
        #[arg(long)]
        close_file: PathBuf,
        /// Sockets closed a second once closing (0: all at once).
        #[arg(long, default_value_t = 0)]
        close_per_sec: u32,
        /// File descriptors to allow (RLIMIT_NOFILE is raised to it).
        #[arg(long, default_value_t = 16384)]
        nofile: u64,
    },
    /// Open `conns` upgraded connections to an `idle-serve` server (each
    /// from 127.0.0.2, 127.0.0.3, ... in turn: a source address gives at
    /// most the ephemeral port range), print `OPEN n`, then read each to
    /// the server's close and close it; prints `{"opened":n,"closed":n}`.
    IdleConnect {
        #[arg(long)]
        port: u16,
        #[arg(long)]
        conns: usize,
        /// Loopback source addresses to spread the connections over.
        #[arg(long, default_value_t = 8)]
        sources: u8,
        /// Connections opened a second (0: as fast as they go).
        #[arg(long, default_value_t = 0)]
        per_sec: u32,
        #[arg(long, default_value_t = 16384)]
        nofile: u64,
    },
    /// Print every loaded BPF program's kernel run stats, one line each:
    /// `PROG <id> <name> <run_time_ns> <run_cnt>` (needs root, and
    /// kernel.bpf_stats_enabled=1 for the counts to move). Used inside the
    /// kernel-matrix VMs, which have no bpftool.
    ProgStats,
}

const UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
const RESPONSE_101: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build();
    let result = rt
        .context("starting the tokio runtime")
        .and_then(|rt| rt.block_on(run(cli.command)));
    if let Err(e) = result {
        eprintln!("ws-bench: error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cmd: Command) -> Result<()> {
    match cmd {
        Command::Serve { port, mode } => serve(port, mode).await,
        Command::ProgStats => prog_stats(),
        Command::Steady {
            port,
            conns,
            depth,
            size,
            secs,
            raw,
        } => steady(port, conns, depth, size, secs, raw).await,
        Command::Churn {
            port,
            conc,
            secs,
            eof_log,
        } => churn(port, conc, secs, eof_log).await,
        Command::IdleServe {
            port,
            close_file,
            close_per_sec,
            nofile,
        } => idle_serve(port, &close_file, close_per_sec, nofile).await,
        Command::IdleConnect {
            port,
            conns,
            sources,
            per_sec,
            nofile,
        } => idle_connect(port, conns, sources, per_sec, nofile).await,
    }
}

/// Raises RLIMIT_NOFILE to `want`: the soft limit up to the hard one,
/// the hard one too where allowed (CAP_SYS_RESOURCE); fails when `want` is
/// past what this process may have (run more processes instead).
fn raise_nofile(want: u64) -> Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid rlimit pointers.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    let raised = libc::rlimit {
        rlim_cur: want,
        rlim_max: want.max(lim.rlim_max),
    };
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        return Ok(());
    }
    if want <= lim.rlim_max {
        let soft = libc::rlimit {
            rlim_cur: want,
            rlim_max: lim.rlim_max,
        };
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft) } == 0 {
            return Ok(());
        }
    }
    anyhow::bail!(
        "raising RLIMIT_NOFILE to {want} (hard limit {}): {} (without CAP_SYS_RESOURCE, spread the sockets over more processes)",
        lim.rlim_max,
        std::io::Error::last_os_error()
    )
}

/// The request head's `Sec-WebSocket-Key` value.
fn ws_key(head: &[u8]) -> Option<&[u8]> {
    let text = std::str::from_utf8(head).ok()?;
    text.split("\r\n").find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("sec-websocket-key")
            .then(|| value.trim().as_bytes())
    })
}

/// Reads until the end of an HTTP head (at most 4 KiB).
async fn read_head(conn: &mut TcpStream) -> Result<Vec<u8>> {
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).await?;
        if n == 0 || head.len() > 4096 {
            anyhow::bail!("no whole HTTP head ({} bytes)", head.len());
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(head)
}

async fn idle_serve(
    port: u16,
    close_file: &std::path::Path,
    close_per_sec: u32,
    nofile: u64,
) -> Result<()> {
    raise_nofile(nofile)?;
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.set_reuseaddr(true)?;
    // Several servers may share the port (one process holds only as many
    // sockets as its RLIMIT_NOFILE): the kernel spreads the connections.
    sock.set_reuseport(true)?;
    sock.bind(SocketAddr::from(([127, 0, 0, 1], port)))
        .with_context(|| format!("binding 127.0.0.1:{port}"))?;
    let listener = sock.listen(4096)?;
    println!("READY {}", listener.local_addr()?.port());
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::<TcpStream>::new()));
    let into = held.clone();
    let accepting = tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                // Out of descriptors, say: wait, as a server would.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let into = into.clone();
            tokio::spawn(async move {
                let Ok(head) = read_head(&mut conn).await else {
                    return;
                };
                let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(
                    ws_key(&head).unwrap_or_default(),
                );
                let response = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                );
                if conn.write_all(response.as_bytes()).await.is_ok()
                    && let Ok(mut v) = into.lock()
                {
                    v.push(conn);
                }
            });
        }
    });
    while !close_file.exists() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    accepting.abort();
    let conns = std::mem::take(&mut *held.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    let n = conns.len();
    // Dropping a stream closes its socket: one close(2) each, in order,
    // in batches of a hundredth of a second's worth.
    let batch = (close_per_sec as usize / 100).max(1);
    let start = Instant::now();
    let mut conns = conns.into_iter();
    let mut closed = 0usize;
    loop {
        let before = closed;
        for c in conns.by_ref().take(if close_per_sec == 0 {
            usize::MAX
        } else {
            batch
        }) {
            drop(c);
            closed += 1;
        }
        if closed == before {
            break;
        }
        if close_per_sec > 0 {
            let due = Duration::from_secs_f64(closed as f64 / f64::from(close_per_sec));
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    }
    println!("CLOSED {n}");
    Ok(())
}

async fn idle_connect(
    port: u16,
    conns: usize,
    sources: u8,
    per_sec: u32,
    nofile: u64,
) -> Result<()> {
    raise_nofile(nofile)?;
    let server = SocketAddr::from(([127, 0, 0, 1], port));
    let sources = sources.clamp(1, 250);
    let mut open = Vec::with_capacity(conns);
    let start = Instant::now();
    for i in 0..conns {
        if per_sec > 0 {
            let due = Duration::from_secs_f64(i as f64 / f64::from(per_sec));
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        let source = SocketAddr::from(([127, 0, 0, 2 + (i % sources as usize) as u8], 0));
        let sock = tokio::net::TcpSocket::new_v4()?;
        sock.bind(source)
            .with_context(|| format!("binding {source} (connection {i})"))?;
        let mut conn = sock
            .connect(server)
            .await
            .with_context(|| format!("connecting from {source} (connection {i})"))?;
        let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
        let request = format!(
            "GET /idle HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        conn.write_all(request.as_bytes()).await?;
        let head = read_head(&mut conn).await?;
        if !head.starts_with(b"HTTP/1.1 101 ") {
            anyhow::bail!("connection {i}: no 101");
        }
        open.push(conn);
    }
    println!("OPEN {}", open.len());
    let mut closed = 0usize;
    let mut buf = [0u8; 64];
    for mut conn in open {
        // The server's close: EOF (or a reset).
        while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {}
        drop(conn);
        closed += 1;
    }
    println!("{{\"opened\":{conns},\"closed\":{closed}}}");
    Ok(())
}

/// CLOCK_MONOTONIC in ns: the clock bpf_ktime_get_ns and other processes
/// share, so times can be compared across processes.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

async fn serve(port: u16, mode: Mode) -> Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("binding 127.0.0.1:{port}"))?;
    println!("READY {}", listener.local_addr()?.port());
    loop {
        let (conn, _) = listener.accept().await.context("accept")?;
        let _ = conn.set_nodelay(true);
        tokio::spawn(async move {
            // A failed connection is the client's business; keep serving.
            let _ = match mode {
                Mode::Echo => echo(conn).await,
                Mode::Churn => upgrade_and_close(conn).await,
                Mode::TcpEcho => tcp_echo(conn).await,
            };
        });
    }
}

async fn echo(conn: TcpStream) -> Result<()> {
    let mut ws = tokio_tungstenite::accept_async(conn).await?;
    while let Some(msg) = ws.next().await {
        match msg? {
            m @ (Message::Binary(_) | Message::Text(_)) => ws.send(m).await?,
            Message::Close(_) => break,
            _ => {}
        }
    }
    Ok(())
}

async fn tcp_echo(mut conn: TcpStream) -> Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        conn.write_all(&buf[..n]).await?;
    }
}

async fn upgrade_and_close(mut conn: TcpStream) -> Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    conn.write_all(RESPONSE_101).await?;
    Ok(())
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn steady(
    port: u16,
    conns: usize,
    depth: usize,
    size: usize,
    secs: f64,
    raw: bool,
) -> Result<()> {
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(1);
    let until = measure_from + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let url = format!("ws://127.0.0.1:{port}/");
        let tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .with_context(|| format!("connecting to {url}"))?;
        let _ = tcp.set_nodelay(true);
        if raw {
            tasks.push(tokio::spawn(one_raw_conn(
                tcp,
                depth,
                size,
                measure_from,
                until,
            )));
            continue;
        }
        let (ws, _) = tokio_tungstenite::client_async(url.as_str(), tcp)
            .await
            .with_context(|| format!("upgrading {url}"))?;
        tasks.push(tokio::spawn(one_conn(ws, depth, size, measure_from, until)));
    }
    let mut lat = Vec::new();
    let mut echoes_total = 0u64;
    for t in tasks {
        let (l, all) = t.await.context("client task")??;
        lat.extend(l);
        echoes_total += all;
    }
    lat.sort_unstable();
    let out = serde_json::json!({
        "msgs": lat.len(),
        // Every echo of the run, warm-up included: what per-message costs
        // counted over the whole process (e.g. BPF program stats) divide by.
        "echoes_total": echoes_total,
        "secs": secs,
        "msgs_per_sec": lat.len() as f64 / secs,
        "p50_us": percentile(&lat, 0.50),
        "p99_us": percentile(&lat, 0.99),
        "conns": conns,
        "depth": depth,
        "size": size,
    });
    println!("{out}");
    Ok(())
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

/// Keeps `depth` messages in flight; returns the round-trip µs of every echo
/// received inside the measured window, and the number of echoes received in all.
async fn one_conn(
    mut ws: Ws,
    depth: usize,
    size: usize,
    from: Instant,
    until: Instant,
) -> Result<(Vec<u32>, u64)> {
    let msg = |size: usize| {
        let mut p = vec![0u8; size.max(8)];
        p[..8].copy_from_slice(&mono_ns().to_le_bytes());
        Message::Binary(p.into())
    };
    for _ in 0..depth {
        ws.feed(msg(size)).await?;
    }
    ws.flush().await?;
    let mut lat = Vec::new();
    let mut all = 0u64;
    while let Some(m) = ws.next().await {
        let now = Instant::now();
        if let Message::Binary(b) = m? {
            all += 1;
            if now >= from && b.len() >= 8 {
                let sent = u64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8]));
                lat.push((mono_ns().saturating_sub(sent) / 1000) as u32);
            }
        }
        if now >= until {
            break;
        }
        ws.send(msg(size)).await?;
    }
    let _ = ws.close(None).await;
    Ok((lat, all))
}

/// [`one_conn`] over plain TCP: `size`-byte messages (a send timestamp in
/// the first 8 bytes), `depth` in flight, each echo read whole.
async fn one_raw_conn(
    mut tcp: TcpStream,
    depth: usize,
    size: usize,
    from: Instant,
    until: Instant,
) -> Result<(Vec<u32>, u64)> {
    let size = size.max(8);
    let msg = || {
        let mut p = vec![0u8; size];
        p[..8].copy_from_slice(&mono_ns().to_le_bytes());
        p
    };
    for _ in 0..depth {
        tcp.write_all(&msg()).await?;
    }
    let mut lat = Vec::new();
    let mut all = 0u64;
    let mut back = vec![0u8; size];
    loop {
        tcp.read_exact(&mut back).await?;
        let now = Instant::now();
        all += 1;
        if now >= from {
            let sent = u64::from_le_bytes(back[..8].try_into().unwrap_or([0; 8]));
            lat.push((mono_ns().saturating_sub(sent) / 1000) as u32);
        }
        if now >= until {
            break;
        }
        tcp.write_all(&msg()).await?;
    }
    Ok((lat, all))
}

async fn churn(port: u16, conc: usize, secs: f64, eof_log: Option<PathBuf>) -> Result<()> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..conc {
        tasks.push(tokio::spawn(async move {
            let mut eofs: Vec<(u16, u64)> = Vec::new();
            let mut failed = 0u64;
            let mut buf = [0u8; 1024];
            while Instant::now() < until {
                let Ok(mut c) = TcpStream::connect(addr).await else {
                    failed += 1;
                    continue;
                };
                let local = c.local_addr().map(|a| a.port()).unwrap_or(0);
                if c.write_all(UPGRADE).await.is_err() {
                    failed += 1;
                    continue;
                }
                let mut got_101 = false;
                loop {
                    match c.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(n) => got_101 |= buf[..n].starts_with(b"HTTP/1.1 101 "),
                        Err(_) => break,
                    }
                }
                if got_101 {
                    eofs.push((local, mono_ns()));
                } else {
                    failed += 1;
                }
            }
            (eofs, failed)
        }));
    }
    let mut eofs = Vec::new();
    let mut failed = 0;
    for t in tasks {
        let (e, f) = t.await.context("churn task")?;
        eofs.extend(e);
        failed += f;
    }
    if let Some(path) = eof_log {
        let text: String = eofs.iter().map(|(p, t)| format!("{p} {t}\n")).collect();
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let out = serde_json::json!({
        "connections": eofs.len(),
        "failed": failed,
        "secs": secs,
        "per_sec": eofs.len() as f64 / secs,
    });
    println!("{out}");
    Ok(())
}

fn prog_stats() -> Result<()> {
    for info in aya::programs::loaded_programs() {
        let info = info.context("reading a loaded program's info")?;
        // Names are the kernel's 15-byte copies: no spaces, but keep the
        // line format safe anyway.
        let name: String = String::from_utf8_lossy(info.name())
            .chars()
            .map(|c| if c.is_ascii_graphic() { c } else { '?' })
            .collect();
        println!(
            "PROG {} {} {} {}",
            info.id(),
            if name.is_empty() { "-" } else { &name },
            info.run_time().as_nanos(),
            info.run_count()
        );
    }
    Ok(())
}
