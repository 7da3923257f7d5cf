//! What the root-only integration tests share: the prerequisite checks
//! (`require*`, which fail a test unless WSTRACE_TEST_ALLOW_SKIP=1), the binaries,
//! a scenario server, one upgrade, and a running wstrace whose output is
//! collected line by line.
#![allow(dead_code)] // each test crate uses its own subset

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

pub const UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// Set to 1, a test whose environment is incomplete (not root, a tool
/// missing) passes as skipped instead of failing. CI never sets it: there a
/// missing prerequisite is a failure, so the suite cannot pass untested.
pub const ALLOW_SKIP: &str = "WSTRACE_TEST_ALLOW_SKIP";

/// The running test's name (libtest names each test's thread after it).
fn test_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_string()
}

/// True when `ok`. Otherwise panics with `missing` (what is missing and how
/// to provide it), unless WSTRACE_TEST_ALLOW_SKIP=1: then prints
/// `SKIPPED: <test>: <missing>` and returns false, and the caller skips
/// what needs it (usually the whole test: `if !require(..) { return; }`).
#[must_use]
pub fn require(ok: bool, missing: &str) -> bool {
    if ok {
        return true;
    }
    let test = test_name();
    if std::env::var_os(ALLOW_SKIP).is_some_and(|v| v == "1") {
        // Straight to stderr (libtest captures eprintln! of passing tests),
        // in one write so parallel tests do not interleave.
        let line = format!("SKIPPED: {test}: {missing}\n");
        let _ = std::io::stderr().write_all(line.as_bytes());
        return false;
    }
    panic!("{test}: {missing} (or set {ALLOW_SKIP}=1 to skip it instead of failing)");
}

/// Root, to load BPF (CAP_BPF/CAP_PERFMON); see [`require`].
#[must_use]
pub fn require_root() -> bool {
    // SAFETY: plain getter.
    let root = unsafe { libc::geteuid() } == 0;
    require(
        root,
        "needs root to load BPF (CAP_BPF/CAP_PERFMON): run `cargo xtask test` as root",
    )
}

/// The first of `paths` that is a file; see [`require`] for when there is
/// none (`what` names it, `how` says how to install it).
#[must_use]
pub fn require_file(what: &str, paths: &[PathBuf], how: &str) -> Option<PathBuf> {
    let found = paths.iter().find(|p| p.is_file()).cloned();
    let tried: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    let missing = format!("{what} missing (looked at {}): {how}", tried.join(", "));
    if require(found.is_some(), &missing) {
        found
    } else {
        None
    }
}

/// `name` from $PATH or an sbin directory (not on every user's PATH); see
/// [`require`] for when it is nowhere (`how` says how to install it).
#[must_use]
pub fn require_tool(name: &str, how: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    let missing = format!("{name} is not on $PATH or in /usr/local/sbin, /usr/sbin: {how}");
    if require(found.is_some(), &missing) {
        found
    } else {
        None
    }
}

/// ~/.cache/wstrace (or $XDG_CACHE_HOME/wstrace), where `cargo xtask
/// setup` puts the test dependencies.
fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .expect("HOME or XDG_CACHE_HOME")
        .join("wstrace")
}

/// The venv's python3 (with `websockets`); see `common::require`.
pub fn require_venv_python() -> Option<PathBuf> {
    require_file(
        "the test venv's python3",
        &[cache_dir().join("venv/bin/python3")],
        "run `cargo xtask setup` (creates the venv with websockets)",
    )
}

/// `node` and the `node_modules` directory holding the npm package `ws`
/// (for NODE_PATH); see `common::require`.
pub fn require_node_ws() -> Option<(PathBuf, PathBuf)> {
    let node = require_tool("node", "apt-get install nodejs (cargo xtask setup)")?;
    let modules = cache_dir().join("node/node_modules");
    require_file(
        "the npm package ws",
        &[modules.join("ws/package.json")],
        "run `cargo xtask setup` (installs ws with npm into ~/.cache/wstrace/node)",
    )?;
    Some((node, modules))
}

pub fn target() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

pub fn wstrace_bin() -> PathBuf {
    let p = target().join("release/wstrace");
    assert!(
        p.is_file(),
        "{} missing: run `cargo build --release`",
        p.display()
    );
    p
}

/// A child killed when dropped, so no failing assertion leaks one.
pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `ws-scenario serve` on 127.0.0.1 with `args` (e.g. `--mode close-after101`).
pub fn server(args: &[&str]) -> (Kill, u16) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ws-scenario"));
    c.args(["serve", "--bind", "127.0.0.1"]).args(args);
    spawn_ready(&mut c)
}

/// Spawns a test server that prints `READY <port>` once listening.
pub fn spawn_ready(cmd: &mut Command) -> (Kill, u16) {
    let mut c = cmd.stdout(Stdio::piped()).spawn().expect("server");
    let mut line = String::new();
    BufReader::new(c.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("READY");
    let port = line
        .trim()
        .strip_prefix("READY ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("server did not print READY <port>: {line:?}"));
    (Kill(c), port)
}

/// One upgrade request, then read until the server closes.
pub fn upgrade_once(port: u16) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    c.write_all(UPGRADE).expect("send");
    let mut buf = [0u8; 512];
    while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
}

/// The symbolization budget tests run wstrace with unless they test the
/// budget itself: they check named frames, and the first symbolization of
/// a binary (parsing its debug info) can take longer than the 2 s default
/// on a loaded 2-CPU host.
pub const SYMBOLIZE_TIMEOUT: &str = "--symbolize-timeout=60";

/// A running `wstrace --format json`, its stdout and stderr collected.
pub struct Tracer {
    pub child: Kill,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    stdout_done: Option<std::thread::JoinHandle<()>>,
}

impl Tracer {
    /// Starts wstrace on `port` and returns once it says it is tracing.
    pub fn start(port: u16, extra: &[&str]) -> Tracer {
        Tracer::start_format(port, "json", extra)
    }

    /// `start` with `--format FORMAT` (`text` or `json`). Unless `extra`
    /// sets one, wstrace gets [`SYMBOLIZE_TIMEOUT`].
    pub fn start_format(port: u16, format: &str, extra: &[&str]) -> Tracer {
        let port = port.to_string();
        let mut args = vec!["--port", port.as_str()];
        args.extend_from_slice(extra);
        Tracer::start_args(format, &args)
    }

    /// wstrace with no `--port` (every port), `--format json` and `extra`.
    pub fn start_all_ports(extra: &[&str]) -> Tracer {
        Tracer::start_args("json", extra)
    }

    /// wstrace with `--format json` and exactly `args` (ports included).
    pub fn start_args_json(args: &[&str]) -> Tracer {
        Tracer::start_args("json", args)
    }

    /// wstrace with `--format FORMAT` and exactly `args` (plus
    /// [`SYMBOLIZE_TIMEOUT`] unless `args` sets one).
    fn start_args(format: &str, args: &[&str]) -> Tracer {
        let budget = if args.iter().any(|a| a.starts_with("--symbolize-timeout")) {
            None
        } else {
            Some(SYMBOLIZE_TIMEOUT)
        };
        let mut c = Command::new(wstrace_bin())
            .args(["--format", format])
            .args(budget)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("wstrace");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let out = c.stdout.take().expect("stdout");
        let sink = stdout.clone();
        let stdout_done = std::thread::spawn(move || {
            let mut r = BufReader::new(out);
            loop {
                // Raw lines, the trailing newline kept: a torn last line shows.
                let mut line = String::new();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => sink.lock().expect("lock").push(line),
                }
            }
        });
        let (tx, rx) = mpsc::channel();
        let err = c.stderr.take().expect("stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("{line}");
                if line.contains("wstrace: tracing port") {
                    let _ = tx.send(());
                }
                sink.lock().expect("lock").push(line);
            }
        });
        let mut t = Tracer {
            child: Kill(c),
            stdout,
            stderr,
            stdout_done: Some(stdout_done),
        };
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = t.child.0.kill();
            panic!("wstrace did not attach:\n{}", t.stderr_text());
        }
        t
    }

    pub fn pid(&self) -> i32 {
        self.child.0.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Waits for exit and for stdout to be drained.
    pub fn wait(&mut self) -> ExitStatus {
        let status = self.child.0.wait().expect("wait");
        if let Some(t) = self.stdout_done.take() {
            let _ = t.join();
        }
        status
    }

    /// Raw stdout lines so far (each with its newline, unless torn).
    pub fn raw_lines(&self) -> Vec<String> {
        self.stdout.lock().expect("lock").clone()
    }

    /// Every stdout line parsed; panics on a torn or invalid one.
    pub fn reports(&self) -> Vec<serde_json::Value> {
        self.raw_lines()
            .iter()
            .enumerate()
            .map(|(i, l)| {
                assert!(l.ends_with('\n'), "line {} is torn: {l:?}", i + 1);
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("line {} is not JSON ({e}): {l}", i + 1))
            })
            .collect()
    }

    /// Polls until `n` reports are in or `timeout` passes.
    pub fn wait_for_reports(&self, n: usize, timeout: Duration) -> Vec<serde_json::Value> {
        let start = Instant::now();
        while self.raw_lines().len() < n && start.elapsed() < timeout {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.reports()
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().expect("lock").join("\n")
    }

    /// The kernel's ids of the BPF programs this process holds, from its fd
    /// table (`/proc/<pid>/fdinfo/*` has a `prog_id:` line for program and
    /// link fds).
    pub fn prog_ids(&self) -> Vec<u32> {
        let mut ids = Vec::new();
        let dir = format!("/proc/{}/fdinfo", self.pid());
        for e in std::fs::read_dir(&dir).expect("fdinfo").flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            for l in text.lines() {
                if let Some(id) = l.strip_prefix("prog_id:") {
                    if let Ok(id) = id.trim().parse() {
                        ids.push(id);
                    }
                }
            }
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

/// Ids of every BPF program loaded in the kernel right now (the kernel's own
/// view, as `bpftool prog` lists it).
pub fn loaded_prog_ids() -> Vec<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .collect()
}

/// Waits (programs are freed after an RCU grace period) until none of `ids`
/// is loaded; returns the ones still there after `timeout`.
pub fn wait_unloaded(ids: &[u32], timeout: Duration) -> Vec<u32> {
    let start = Instant::now();
    loop {
        let loaded = loaded_prog_ids();
        let left: Vec<u32> = ids.iter().copied().filter(|i| loaded.contains(i)).collect();
        if left.is_empty() || start.elapsed() > timeout {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Serializes a test binary's root tests: each starts its own wstrace, and
/// assertions about the kernel's global program list (or one report per
/// run) would see another test's tracer.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}
