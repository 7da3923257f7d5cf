//! Section 7 of BENCHMARKS.md: what the TLS uprobes (`--tls auto`, issue
//! 17) cost a server that terminates TLS itself. A Python `ssl` server
//! (the system's libssl) and client, on a port wstrace traces; each round
//! runs, interleaved:
//! 1. wstrace `--tls off`, then `--tls auto`: the server's own CPU time
//!    (`time.process_time_ns`, which other load on the host disturbs less
//!    than wall time) per 16-byte `SSL_write` (a burst the client drains)
//!    and per echo (SSL_read + SSL_write: three uprobe hits), and their
//!    ratio: the whole cost of a hit, trap and single-step included;
//! 2. with `kernel.bpf_stats_enabled=1`, wstrace `--tls auto` and a
//!    near-empty bpftrace uprobe (`{ }`, `-p` the server) on the same
//!    functions, attached at once under the same echo load: the kernel's
//!    `run_time_ns / run_cnt` per program, side by side (the floor is what
//!    any program on that uprobe costs).
//!
//! Processes serving no traced port stay free of uprobes
//! (wstrace-scenarios/tests/tls.rs checks it): only the server pays this.

use super::kernel_cost::{Delta, StatsOn, ns, prog_ids_of, prog_stats};
use super::{BenchArgs, Bins, Proc, median, spawn_wstrace};
use crate::process;
use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The port the TLS server listens on (traced).
const TLS_PORT: u16 = 18870;
/// SSL_write calls in the burst, and echoes, per run.
const WRITES: u32 = 20_000;
const ECHOES: u32 = 10_000;
const PYTHON: &str = "/usr/bin/python3";

/// The server: TLS handshake, request head, 101, then a burst of
/// [`WRITES`] 16-byte binary frames (one `sendall`, i.e. one SSL_write,
/// each) and [`ECHOES`] echoes of what the client sends; prints its CPU
/// time per write and per echo.
const SERVER: &str = r#"
import socket, ssl, sys, time
cert, key, port, writes, echoes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", port))
ls.listen(8)
print("READY", flush=True)
c, _ = ls.accept()
s = ctx.wrap_socket(c, server_side=True)
buf = b""
while b"\r\n\r\n" not in buf:
    d = s.recv(4096)
    if not d:
        sys.exit("no request")
    buf += d
s.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
frame = bytes([0x82, 14]) + b"b" * 14
t0 = time.process_time_ns()
for _ in range(writes):
    s.sendall(frame)
t1 = time.process_time_ns()
s.recv(64)  # the client's "burst read" mark
t2 = time.process_time_ns()
for _ in range(echoes):
    d = s.recv(64)
    s.sendall(d)
t3 = time.process_time_ns()
print("RESULT", (t1 - t0) / writes, (t3 - t2) / echoes, flush=True)
s.close()
"#;

/// The client: the upgrade, drains the burst, then echoes one masked
/// 16-byte frame at a time.
const CLIENT: &str = r#"
import socket, ssl, sys
port, writes, echoes = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")
s.sendall(b"GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
          b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
buf = b""
while b"\r\n\r\n" not in buf:
    buf += s.recv(4096)
rest = len(buf) - (buf.index(b"\r\n\r\n") + 4)
want = writes * 16 - rest
while want > 0:
    d = s.recv(65536)
    if not d:
        sys.exit("server closed during the burst")
    want -= len(d)
msg = bytes([0x82, 0x8a]) + b"\x01\x02\x03\x04" + b"m" * 10
s.sendall(msg)
for _ in range(echoes):
    s.sendall(msg)
    got = 0
    while got < len(msg):
        d = s.recv(64)
        if not d:
            sys.exit("server closed during the echoes")
        got += len(d)
s.close()
"#;

/// One `--tls off`/`--tls auto` run: the server's CPU ns per call.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CpuRun {
    pub write_ns: f64,
    pub echo_ns: f64,
}

/// One wstrace program on a uprobe, beside the near-empty one.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UprobeRow {
    pub hook: String,
    /// wstrace's name for it (the kernel keeps 15 bytes).
    pub program: String,
    pub wstrace: Delta,
    pub empty: Option<Delta>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TlsCost {
    pub off: Vec<CpuRun>,
    pub auto: Vec<CpuRun>,
    /// Per round: the programs' counters over the echo load.
    pub programs: Vec<Vec<UprobeRow>>,
    pub echoes: u32,
    pub writes: u32,
    /// When, where and at what host load.
    pub measured: String,
    pub libssl: String,
}

/// (wstrace program, uprobe function, return probe): what wstrace puts on
/// a Python `ssl` server (it calls the `_ex` variants; attach/tls.rs).
const HOOKS: [(&str, &str, bool); 3] = [
    ("tls_ssl_write", "SSL_write_ex", false),
    ("tls_ssl_read_ex", "SSL_read_ex", false),
    ("tls_ssl_read_ex_ret", "SSL_read_ex", true),
];

struct Files {
    dir: PathBuf,
}

impl Files {
    fn new(work: &Path) -> Result<Files> {
        let dir = work.join("tls");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("server.py"), SERVER)?;
        std::fs::write(dir.join("client.py"), CLIENT)?;
        if !dir.join("cert.pem").is_file() {
            process::run(
                Command::new("openssl")
                    .args([
                        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
                    ])
                    .args(["-subj", "/CN=localhost", "-keyout"])
                    .arg(dir.join("key.pem"))
                    .arg("-out")
                    .arg(dir.join("cert.pem")),
            )
            .context("making a self-signed certificate (Debian package openssl)")?;
        }
        Ok(Files { dir })
    }

    fn server(&self) -> Result<Proc> {
        let p = Proc::spawn(
            "python3 ssl server",
            Command::new(PYTHON)
                .arg(self.dir.join("server.py"))
                .arg(self.dir.join("cert.pem"))
                .arg(self.dir.join("key.pem"))
                .args([TLS_PORT.to_string(), WRITES.to_string(), ECHOES.to_string()]),
        )?;
        p.wait_for("READY", false, Duration::from_secs(10))?;
        Ok(p)
    }

    fn client(&self) -> Result<()> {
        process::run(Command::new(PYTHON).arg(self.dir.join("client.py")).args([
            TLS_PORT.to_string(),
            WRITES.to_string(),
            ECHOES.to_string(),
        ]))
        .context("the python3 ssl client")
    }
}

/// wstrace on [`TLS_PORT`] with `--tls tls`; with `auto`, returns once the
/// server (started before it) is covered.
fn wstrace(bins: &Bins, args: &BenchArgs, tls: &str, server: u32) -> Result<Proc> {
    let needle = format!("tls: pid {server} (python3): OpenSSL covered");
    wstrace_on(bins, args, tls, TLS_PORT, &needle).map(|(p, _)| p)
}

/// wstrace on `port` with `--tls tls`; with `auto`, returns once its
/// stderr has a line with `covered` (the server's coverage line), and that
/// line.
fn wstrace_on(
    bins: &Bins,
    args: &BenchArgs,
    tls: &str,
    port: u16,
    covered: &str,
) -> Result<(Proc, String)> {
    let (mut p, ready) = spawn_wstrace(
        bins,
        port,
        Command::new(&bins.wstrace).args([
            "--port",
            &port.to_string(),
            "--probe",
            &args.probe,
            "--format",
            "json",
            "--tls",
            tls,
        ]),
    )?;
    p.wait_ready_file(&ready, Duration::from_secs(30))?;
    let mut line = String::new();
    if tls == "auto" {
        line = p
            .wait_for(covered, true, Duration::from_secs(10))
            .context("the server got no TLS uprobes")?;
    }
    Ok((p, line))
}

fn cpu_run(bins: &Bins, args: &BenchArgs, files: &Files, tls: &str) -> Result<CpuRun> {
    let srv = files.server()?;
    let mut w = wstrace(bins, args, tls, srv.child.id())?;
    files.client()?;
    let line = srv.wait_for("RESULT", false, Duration::from_secs(60))?;
    w.stop(libc::SIGINT)?;
    drop(srv);
    let mut f = line.split_whitespace().skip(1).map(str::parse::<f64>);
    match (f.next(), f.next()) {
        (Some(Ok(write_ns)), Some(Ok(echo_ns))) => Ok(CpuRun { write_ns, echo_ns }),
        _ => bail!("the server printed {line:?}"),
    }
}

/// The path of the libssl the server maps (for bpftrace's probes).
fn libssl_of(pid: u32) -> Result<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .with_context(|| format!("reading /proc/{pid}/maps"))?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| {
            p.rsplit('/')
                .next()
                .is_some_and(|n| n.starts_with("libssl.so"))
        })
        .map(str::to_string)
        .context("the python3 server maps no libssl.so")
}

fn programs_round(
    bins: &Bins,
    args: &BenchArgs,
    files: &Files,
) -> Result<(Vec<UprobeRow>, String)> {
    let srv = files.server()?;
    let pid = srv.child.id();
    let libssl = libssl_of(pid)?;
    let mut w = wstrace(bins, args, "auto", pid)?;
    // One bpftrace per near-empty uprobe: its programs are then told
    // apart by process, whatever bpftrace names them.
    let mut empties = Vec::new();
    for (_, func, ret) in HOOKS {
        let kind = if ret { "uretprobe" } else { "uprobe" };
        let script = format!("{kind}:{libssl}:{func} {{ }}\nBEGIN {{ printf(\"READY\\n\"); }}\n");
        let p = Proc::spawn(
            "bpftrace (near-empty uprobe)",
            Command::new("bpftrace")
                .args(["-p", &pid.to_string(), "-e"])
                .arg(&script),
        )?;
        p.wait_for("READY", false, Duration::from_secs(60))?;
        empties.push(p);
    }
    let before = prog_stats()?;
    files.client()?;
    srv.wait_for("RESULT", false, Duration::from_secs(60))?;
    let after = prog_stats()?;
    let delta = |id: u32| Delta::between(before.get(&id), after.get(&id));
    let ws_ids = prog_ids_of(w.child.id());
    let mut rows = Vec::new();
    for (i, (prog, func, ret)) in HOOKS.iter().enumerate() {
        // bpftool prints the full name where the program has BTF, and
        // the kernel's 15-byte copy otherwise, where `tls_ssl_read_ex_ret`
        // is `tls_ssl_read_ex` too: wstrace loads its TLS programs in one
        // order (attach/tls.rs, entry before return), so ids ascend in it
        // and the n-th program of a cut name is the n-th hook with that name.
        let short = |p: &str| p.chars().take(15).collect::<String>();
        let named = |name: &str| -> Vec<u32> {
            ws_ids
                .iter()
                .copied()
                .filter(|id| after.get(id).is_some_and(|p| p.name == name))
                .collect()
        };
        let nth = HOOKS[..i]
            .iter()
            .filter(|(p, _, _)| short(p) == short(prog))
            .count();
        let full = named(prog);
        let found = if full.is_empty() {
            named(&short(prog)).get(nth).copied()
        } else {
            full.first().copied()
        };
        let Some(id) = found else {
            bail!("wstrace (pid {}) holds no program {prog}", w.child.id());
        };
        // bpftrace's BEGIN program ran before `before`: the uprobe's is
        // the one the load ran.
        let empty = prog_ids_of(empties[i].child.id())
            .into_iter()
            .map(delta)
            .max_by_key(|d| d.run_cnt);
        rows.push(UprobeRow {
            hook: format!("{}{func}", if *ret { "return of " } else { "" }),
            program: prog.to_string(),
            wstrace: delta(id),
            empty,
        });
    }
    for p in empties.iter_mut() {
        p.stop(libc::SIGINT)?;
    }
    w.stop(libc::SIGINT)?;
    drop(srv);
    Ok((rows, libssl))
}

pub fn run(bins: &Bins, args: &BenchArgs) -> Result<TlsCost> {
    if !Path::new(PYTHON).is_file() {
        bail!("{PYTHON} is missing (apt-get install python3): the TLS server is Python's ssl");
    }
    let files = Files::new(&bins.work)?;
    let mut out = TlsCost {
        echoes: ECHOES,
        writes: WRITES,
        measured: format!(
            "{}, kernel {}, host load average {} at the start",
            super::command_text("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            super::command_text("uname", &["-r"]),
            super::load_average()
        ),
        ..TlsCost::default()
    };
    for round in 1..=args.rounds {
        for tls in ["off", "auto"] {
            let r = cpu_run(bins, args, &files, tls)
                .with_context(|| format!("TLS cost, --tls {tls}, round {round}"))?;
            println!(
                "  tls       --tls {tls:<4} round {round}: server CPU {:.1} µs per SSL_write, {:.1} µs per echo",
                r.write_ns / 1000.0,
                r.echo_ns / 1000.0
            );
            if tls == "off" {
                out.off.push(r);
            } else {
                out.auto.push(r);
            }
        }
    }
    let _stats = StatsOn::new()?;
    for round in 1..=args.rounds {
        let (rows, libssl) = programs_round(bins, args, &files)
            .with_context(|| format!("TLS cost, per-program stats, round {round}"))?;
        for r in &rows {
            println!(
                "  tls       {:<22} round {round}: wstrace {} ns/run, near-empty {} ns/run",
                r.hook,
                ns(r.wstrace.ns_per_run()),
                ns(r.empty.as_ref().and_then(Delta::ns_per_run))
            );
        }
        out.libssl = libssl;
        out.programs.push(rows);
    }
    Ok(out)
}

/// The Go server's port (traced).
const GO_TLS_PORT: u16 = 18871;

/// The Go server: the kernel matrix's ws-go-tls in its `bench` mode (the
/// same load as [`SERVER`], through Go's own `crypto/tls`).
const GO_SOURCE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../wstrace-scenarios/go/ws-go-tls/main.go"
);

/// What wstrace puts on a Go server (attach/gotls.rs), and the function
/// the near-empty bpftrace uprobe goes on for the row: bpftrace (0.17,
/// built without offset support) places no probe inside a function, so
/// the RETs' row has the `Read` entry's near-empty program as its floor
/// (the same empty program on a uprobe of the same process).
const GO_HOOKS: [(&str, &str, &str); 3] = [
    (
        "gotls_write",
        "crypto/tls.(*Conn).Write",
        "crypto/tls.(*Conn).Write",
    ),
    (
        "gotls_read",
        "crypto/tls.(*Conn).Read",
        "crypto/tls.(*Conn).Read",
    ),
    (
        "gotls_read_ret",
        "RETs of crypto/tls.(*Conn).Read",
        "crypto/tls.(*Conn).Read",
    ),
];

/// The Go half of section 7 (`--only gotls`, or with `--only tls`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct GoTlsCost {
    pub off: Vec<CpuRun>,
    pub auto: Vec<CpuRun>,
    pub programs: Vec<Vec<UprobeRow>>,
    pub echoes: u32,
    pub writes: u32,
    pub measured: String,
    /// `go version` of the toolchain that built the server.
    pub go: String,
    /// wstrace's start-up line for the server (version, RETs, offsets).
    pub coverage: String,
}

/// Builds ws-go-tls into the work dir (Debian's Go and gorilla/websocket,
/// GOPATH mode, offline, as the tests do).
fn build_go(work: &Path) -> Result<(PathBuf, String)> {
    let dir = work.join("tls");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let out = dir.join("ws-go-tls");
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    process::run(
        Command::new("go")
            .args(["build", "-o"])
            .arg(&out)
            .arg(GO_SOURCE)
            .current_dir(&dir)
            .env("GO111MODULE", "off")
            .env("GOPATH", "/usr/share/gocode")
            .env("GOCACHE", home.join(".cache/wstrace/go-build"))
            .env("GOFLAGS", "")
            .env("CGO_ENABLED", "0"),
    )
    .context(
        "building ws-go-tls (apt-get install golang-go golang-github-gorilla-websocket-dev)",
    )?;
    let version = super::command_text("go", &["version"]);
    Ok((out, version))
}

fn go_server(bin: &Path) -> Result<Proc> {
    let p = Proc::spawn(
        "ws-go-tls bench server",
        Command::new(bin).args([
            "bench".to_string(),
            GO_TLS_PORT.to_string(),
            WRITES.to_string(),
            ECHOES.to_string(),
        ]),
    )?;
    p.wait_for("READY", false, Duration::from_secs(10))?;
    Ok(p)
}

fn go_client(files: &Files) -> Result<()> {
    process::run(Command::new(PYTHON).arg(files.dir.join("client.py")).args([
        GO_TLS_PORT.to_string(),
        WRITES.to_string(),
        ECHOES.to_string(),
    ]))
    .context("the python3 ssl client (Go server)")
}

fn go_needle(pid: u32) -> String {
    format!("tls: pid {pid} (ws-go-tls): Go ")
}

fn go_cpu_run(
    bins: &Bins,
    args: &BenchArgs,
    files: &Files,
    bin: &Path,
    tls: &str,
) -> Result<(CpuRun, String)> {
    let srv = go_server(bin)?;
    let (mut w, line) = wstrace_on(bins, args, tls, GO_TLS_PORT, &go_needle(srv.child.id()))?;
    if tls == "auto" && !line.contains("crypto/tls covered") {
        bail!("the Go server is not covered: {line}");
    }
    go_client(files)?;
    let result = srv.wait_for("RESULT", false, Duration::from_secs(60))?;
    w.stop(libc::SIGINT)?;
    drop(srv);
    let mut f = result.split_whitespace().skip(1).map(str::parse::<f64>);
    match (f.next(), f.next()) {
        (Some(Ok(write_ns)), Some(Ok(echo_ns))) => Ok((CpuRun { write_ns, echo_ns }, line)),
        _ => bail!("the Go server printed {result:?}"),
    }
}

fn go_programs_round(
    bins: &Bins,
    args: &BenchArgs,
    files: &Files,
    bin: &Path,
) -> Result<Vec<UprobeRow>> {
    let srv = go_server(bin)?;
    let pid = srv.child.id();
    let (mut w, _) = wstrace_on(bins, args, "auto", GO_TLS_PORT, &go_needle(pid))?;
    // One bpftrace per function (Write, Read): its programs told apart by
    // process.
    let mut empties = Vec::new();
    for func in ["crypto/tls.(*Conn).Write", "crypto/tls.(*Conn).Read"] {
        let script = format!(
            "uprobe:{}:\"{func}\" {{ }}\nBEGIN {{ printf(\"READY\\n\"); }}\n",
            bin.display()
        );
        let p = Proc::spawn(
            "bpftrace (near-empty uprobe)",
            Command::new("bpftrace")
                .args(["-p", &pid.to_string(), "-e"])
                .arg(&script),
        )?;
        p.wait_for("READY", false, Duration::from_secs(60))?;
        empties.push((func, p));
    }
    let before = prog_stats()?;
    go_client(files)?;
    srv.wait_for("RESULT", false, Duration::from_secs(60))?;
    let after = prog_stats()?;
    let delta = |id: u32| Delta::between(before.get(&id), after.get(&id));
    let ws_ids = prog_ids_of(w.child.id());
    let mut rows = Vec::new();
    for (prog, hook, floor_on) in GO_HOOKS {
        // gotls_read_ret is 14 bytes: the kernel's copy is whole.
        let Some(id) = ws_ids
            .iter()
            .copied()
            .find(|id| after.get(id).is_some_and(|p| p.name == prog))
        else {
            bail!("wstrace (pid {}) holds no program {prog}", w.child.id());
        };
        let empty = empties
            .iter()
            .find(|(f, _)| *f == floor_on)
            .and_then(|(_, p)| {
                prog_ids_of(p.child.id())
                    .into_iter()
                    .map(delta)
                    .max_by_key(|d| d.run_cnt)
            });
        rows.push(UprobeRow {
            hook: hook.to_string(),
            program: prog.to_string(),
            wstrace: delta(id),
            empty,
        });
    }
    for (_, p) in empties.iter_mut() {
        p.stop(libc::SIGINT)?;
    }
    w.stop(libc::SIGINT)?;
    drop(srv);
    Ok(rows)
}

/// The Go half: a Go server under the same load, `--tls off` vs `auto`,
/// then the programs beside near-empty uprobes.
pub fn run_go(bins: &Bins, args: &BenchArgs) -> Result<GoTlsCost> {
    if !Path::new(PYTHON).is_file() {
        bail!("{PYTHON} is missing (apt-get install python3): the TLS client is Python's ssl");
    }
    let files = Files::new(&bins.work)?;
    let (bin, go) = build_go(&bins.work)?;
    let mut out = GoTlsCost {
        echoes: ECHOES,
        writes: WRITES,
        go,
        measured: format!(
            "{}, kernel {}, host load average {} at the start",
            super::command_text("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            super::command_text("uname", &["-r"]),
            super::load_average()
        ),
        ..GoTlsCost::default()
    };
    for round in 1..=args.rounds {
        for tls in ["off", "auto"] {
            let (r, line) = go_cpu_run(bins, args, &files, &bin, tls)
                .with_context(|| format!("Go TLS cost, --tls {tls}, round {round}"))?;
            println!(
                "  gotls     --tls {tls:<4} round {round}: server CPU {:.1} µs per (*Conn).Write, {:.1} µs per echo",
                r.write_ns / 1000.0,
                r.echo_ns / 1000.0
            );
            if tls == "off" {
                out.off.push(r);
            } else {
                // The line names the server's path: the file name only.
                out.coverage = line
                    .split_once("): ")
                    .map_or(line.as_str(), |(_, rest)| rest)
                    .replace(&bin.display().to_string(), "ws-go-tls");
                out.auto.push(r);
            }
        }
    }
    let _stats = StatsOn::new()?;
    for round in 1..=args.rounds {
        let rows = go_programs_round(bins, args, &files, &bin)
            .with_context(|| format!("Go TLS cost, per-program stats, round {round}"))?;
        for r in &rows {
            println!(
                "  gotls     {:<32} round {round}: wstrace {} ns/run, near-empty {} ns/run",
                r.hook,
                ns(r.wstrace.ns_per_run()),
                ns(r.empty.as_ref().and_then(Delta::ns_per_run))
            );
        }
        out.programs.push(rows);
    }
    Ok(out)
}

/// The Go subsection of section 7 (from [`super::GO_TLS_COST_HEADING`]).
pub fn render_go(t: &GoTlsCost) -> String {
    let mut md = format!(
        "{}\n\n\
         The same client and load against a Go server (`ws-go-tls bench`, wstrace-scenarios/go/ws-go-tls, built by \
         {}) terminating TLS with Go's own `crypto/tls`: wstrace's uprobes on the entries of `(*Conn).Write` and \
         `(*Conn).Read` and on each RET instruction of `Read` (no uretprobes on Go). wstrace said: `{}`. Measured {}; \
         {} rounds, values are medians; the server's CPU time is its own (`getrusage`, user + system). Reproduce with \
         `sudo -E cargo xtask bench --only gotls` (or with the OpenSSL half, `--only tls`).\n\n\
         | per call | `--tls off` µs | `--tls auto` µs | auto ÷ off (range over rounds) | added per uprobe hit µs |\n|-|-:|-:|-:|-:|\n",
        super::GO_TLS_COST_HEADING,
        if t.go.is_empty() { "go" } else { &t.go },
        t.coverage.replace('`', "'"),
        t.measured,
        t.off.len()
    );
    type Row = (&'static str, fn(&CpuRun) -> f64, f64);
    let rows: [Row; 2] = [
        ("`(*Conn).Write` (1 hit)", |r| r.write_ns, 1.0),
        (
            "echo (3 hits: `Read` entry and RET, `Write`)",
            |r| r.echo_ns,
            3.0,
        ),
    ];
    for (name, f, hits) in rows {
        let (Some(off), Some(auto)) = (med(t.off.iter().map(f)), med(t.auto.iter().map(f))) else {
            continue;
        };
        let ratio_text = ratio(&t.off, &t.auto, f).map_or("—".into(), |(m, lo, hi)| {
            format!("{m:.2}× ({lo:.2}–{hi:.2})")
        });
        md.push_str(&format!(
            "| {name} | {:.1} | {:.1} | {ratio_text} | {:.1} |\n",
            off / 1000.0,
            auto / 1000.0,
            (auto - off) / hits / 1000.0
        ));
    }
    md.push_str(
        "\nThe programs over the echo load, beside a near-empty bpftrace uprobe (`{ }`, `-p` the server) attached at \
         once. bpftrace 0.17 here places no probe inside a function (built without offset support), so the RETs' \
         floor is the `Read` entry's near-empty program: the same empty program on a uprobe of the same process.\n\n\
         | uprobe | wstrace program | runs | wstrace ns/run | near-empty ns/run | wstrace ÷ near-empty |\n|-|-|-:|-:|-:|-:|\n",
    );
    program_rows(&mut md, &t.programs);
    md
}

/// The per-program table's rows: medians over rounds.
fn program_rows(md: &mut String, programs: &[Vec<UprobeRow>]) {
    let Some(first) = programs.first() else {
        return;
    };
    for (i, row) in first.iter().enumerate() {
        let of = |f: &dyn Fn(&UprobeRow) -> Option<f64>| {
            med(programs.iter().filter_map(|r| r.get(i)).filter_map(f))
        };
        let ws = of(&|r| r.wstrace.ns_per_run());
        let floor = of(&|r| r.empty.as_ref().and_then(Delta::ns_per_run));
        let runs = of(&|r| Some(r.wstrace.run_cnt as f64));
        let ratio = match (ws, floor) {
            (Some(w), Some(f)) if f > 0.0 => format!("{:.2}×", w / f),
            _ => "—".into(),
        };
        md.push_str(&format!(
            "| `{}` | {} | {} | {} | {} | {ratio} |\n",
            row.hook,
            row.program,
            runs.map_or("—".into(), |r| format!("{r:.0}")),
            ns(ws),
            ns(floor)
        ));
    }
}

fn med(v: impl IntoIterator<Item = f64>) -> Option<f64> {
    let v: Vec<f64> = v.into_iter().collect();
    (!v.is_empty()).then(|| median(v))
}

/// Median over rounds of the per-round ratio auto ÷ off (rounds are
/// interleaved, so each ratio compares runs minutes apart at most).
fn ratio(off: &[CpuRun], auto: &[CpuRun], f: impl Fn(&CpuRun) -> f64) -> Option<(f64, f64, f64)> {
    let r: Vec<f64> = off
        .iter()
        .zip(auto)
        .filter(|(o, _)| f(o) > 0.0)
        .map(|(o, a)| f(a) / f(o))
        .collect();
    let lo = r.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = r.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Some((med(r.iter().copied())?, lo, hi))
}

pub fn render(t: &TlsCost) -> String {
    let mut md = format!(
        "{}\n\n\
         A Python `ssl` server (`{}`) on a traced port, covered by wstrace's uprobes on `SSL_write_ex` (entry) and \
         `SSL_read_ex` (entry and return); its client on the same host. Measured {}; {} rounds, values are medians. \
         Processes serving no traced port get no uprobe (`wstrace-scenarios/tests/tls.rs` checks that a process \
         mapping the same libssl has no breakpoint), so only the traced server pays this. Reproduce with \
         `sudo -E cargo xtask bench --only tls`.\n",
        super::TLS_COST_HEADING,
        if t.libssl.is_empty() {
            "libssl"
        } else {
            &t.libssl
        },
        t.measured,
        t.off.len()
    );
    md.push_str(&format!(
        "\n### The server's CPU time per call, `--tls off` vs `--tls auto`\n\n\
         The server's own CPU time (`time.process_time_ns`) over a burst of {} 16-byte `SSL_write`s and {} echoes \
         (`SSL_read` + `SSL_write`: three uprobe hits), with wstrace `--tls off` and `--tls auto` interleaved. This is \
         the whole cost of a hit: the trap into the kernel, the program, and (libssl 3's `SSL_*_ex` start with an \
         instruction the kernel cannot emulate) a single-step.\n\n\
         | per call | `--tls off` µs | `--tls auto` µs | auto ÷ off (range over rounds) | added per uprobe hit µs |\n|-|-:|-:|-:|-:|\n",
        t.writes, t.echoes
    ));
    type Row = (&'static str, fn(&CpuRun) -> f64, f64);
    let rows: [Row; 2] = [
        ("`SSL_write` (1 hit)", |r| r.write_ns, 1.0),
        ("echo (3 hits)", |r| r.echo_ns, 3.0),
    ];
    for (name, f, hits) in rows {
        let (Some(off), Some(auto)) = (med(t.off.iter().map(f)), med(t.auto.iter().map(f))) else {
            continue;
        };
        let ratio_text = ratio(&t.off, &t.auto, f).map_or("—".into(), |(m, lo, hi)| {
            format!("{m:.2}× ({lo:.2}–{hi:.2})")
        });
        md.push_str(&format!(
            "| {name} | {:.1} | {:.1} | {ratio_text} | {:.1} |\n",
            off / 1000.0,
            auto / 1000.0,
            (auto - off) / hits / 1000.0
        ));
    }
    md.push_str(
        "\n### The programs themselves\n\n\
         The kernel's own accounting (`kernel.bpf_stats_enabled=1`; `run_time_ns / run_cnt`) over the echo load, \
         with wstrace `--tls auto` and a near-empty bpftrace uprobe (`{ }`, `-p` the server) on the same function \
         attached at once: both ran on every hit. This is the program only, not the trap around it (above).\n\n\
         | uprobe | wstrace program | runs | wstrace ns/run | near-empty ns/run | wstrace ÷ near-empty |\n|-|-|-:|-:|-:|-:|\n",
    );
    program_rows(&mut md, &t.programs);
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_is_the_median_of_per_round_ratios() {
        let run = |w: f64| CpuRun {
            write_ns: w,
            echo_ns: 0.0,
        };
        let off = [run(10.0), run(20.0), run(10.0)];
        let auto = [run(20.0), run(30.0), run(40.0)];
        assert_eq!(ratio(&off, &auto, |r| r.write_ns), Some((2.0, 1.5, 4.0)));
        // A zero baseline says nothing: left out, not divided by.
        assert_eq!(ratio(&off, &auto, |r| r.echo_ns), None);
    }

    #[test]
    fn render_says_what_was_measured() {
        let t = TlsCost {
            off: vec![CpuRun {
                write_ns: 6000.0,
                echo_ns: 30000.0,
            }],
            auto: vec![CpuRun {
                write_ns: 15000.0,
                echo_ns: 57000.0,
            }],
            programs: vec![vec![UprobeRow {
                hook: "SSL_write_ex".into(),
                program: "tls_ssl_write".into(),
                wstrace: Delta {
                    name: "tls_ssl_write".into(),
                    hook: String::new(),
                    run_time_ns: 300_000,
                    run_cnt: 1000,
                    recursion_misses: 0,
                },
                empty: Some(Delta {
                    name: "uprobe".into(),
                    hook: String::new(),
                    run_time_ns: 60_000,
                    run_cnt: 1000,
                    recursion_misses: 0,
                }),
            }]],
            echoes: ECHOES,
            writes: WRITES,
            measured: "now, host load average 0.5".into(),
            libssl: "/usr/lib/libssl.so.3".into(),
        };
        let md = render(&t);
        assert!(md.starts_with(super::super::TLS_COST_HEADING), "{md}");
        assert!(
            md.contains("| `SSL_write` (1 hit) | 6.0 | 15.0 | 2.50× (2.50–2.50) | 9.0 |"),
            "{md}"
        );
        assert!(
            md.contains("| echo (3 hits) | 30.0 | 57.0 | 1.90× (1.90–1.90) | 9.0 |"),
            "{md}"
        );
        assert!(
            md.contains("| `SSL_write_ex` | tls_ssl_write | 1000 | 300 | 60 | 5.00× |"),
            "{md}"
        );
        assert!(md.contains("host load average 0.5"), "{md}");
    }

    #[test]
    fn render_go_says_what_was_measured() {
        let delta = |name: &str, ns: u64| Delta {
            name: name.into(),
            hook: String::new(),
            run_time_ns: ns * 1000,
            run_cnt: 1000,
            recursion_misses: 0,
        };
        let t = GoTlsCost {
            off: vec![CpuRun {
                write_ns: 4000.0,
                echo_ns: 20000.0,
            }],
            auto: vec![CpuRun {
                write_ns: 7000.0,
                echo_ns: 29000.0,
            }],
            programs: vec![vec![UprobeRow {
                hook: "RETs of crypto/tls.(*Conn).Read".into(),
                program: "gotls_read_ret".into(),
                wstrace: delta("gotls_read_ret", 500),
                empty: Some(delta("uprobe", 50)),
            }]],
            echoes: ECHOES,
            writes: WRITES,
            measured: "now, host load average 0.5".into(),
            go: "go version go1.19.8 linux/amd64".into(),
            coverage: "Go go1.19.8 (amd64) crypto/tls covered: `x`".into(),
        };
        let md = render_go(&t);
        assert!(md.starts_with(super::super::GO_TLS_COST_HEADING), "{md}");
        assert!(
            md.contains("| `(*Conn).Write` (1 hit) | 4.0 | 7.0 | 1.75× (1.75–1.75) | 3.0 |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| echo (3 hits: `Read` entry and RET, `Write`) | 20.0 | 29.0 | 1.45× (1.45–1.45) | 3.0 |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| `RETs of crypto/tls.(*Conn).Read` | gotls_read_ret | 1000 | 500 | 50 | 10.00× |"
            ),
            "{md}"
        );
        // Backquotes in wstrace's line would end the code span early.
        assert!(md.contains("crypto/tls covered: 'x'"), "{md}");
        assert!(md.contains("go1.19.8 linux/amd64"), "{md}");
    }
}
