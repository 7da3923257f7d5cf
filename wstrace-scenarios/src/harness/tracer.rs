//! The one wstrace launcher of the tests and of `ws-scenario check`.
//!
//! - Ready means the `--ready-file` appeared with the child's pid in it,
//!   never a line of stderr prose.
//! - Losses come from `--metrics` (`wstrace_lost_events_total{reason}`),
//!   never from stderr prose.
//! - The binary: cargo gives `CARGO_BIN_EXE_<name>` only to the tests of
//!   the package that owns the binary, and `wstrace` is another package;
//!   building it from inside a test would run cargo under cargo (the same
//!   target dir, its lock, minutes of a silent test). So [`wstrace_bin`]
//!   takes `target/release/wstrace` and fails when any file cargo built it
//!   from is newer than it. Those files are cargo's own list, the dep-info
//!   `target/release/wstrace.d` written beside the binary (every source of
//!   the crate and its path dependencies, the build script's
//!   rerun-if-changed inputs: the eBPF crate, bpf-linker), so a file cargo
//!   does not rebuild for (a `#[cfg(test)]` module) never makes it stale,
//!   and the tests never run a binary older than its sources.
//!   `ws-scenario check` is handed its binary (`--wstrace`; in the VMs
//!   there are no sources).
use std::{
    collections::BTreeMap,
    ffi::OsString,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail};

use super::{Kill, free_port};

/// The symbolization budget wstrace gets unless the caller gives one: the
/// tests check named frames, not the budget, and the first symbolization
/// of a binary (parsing its debug info) can take longer than the 2 s
/// default on a loaded 2-CPU host or in an emulated (TCG) guest.
pub const SYMBOLIZE_TIMEOUT: &str = "--symbolize-timeout=60";

/// How long wstrace may take to load and attach (QEMU TCG is slow).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The workspace's target directory ($CARGO_TARGET_DIR or `target/`).
pub fn target() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The inputs of a makefile-style dep-info file (`target: a b\ c ...`),
/// as cargo writes it beside each artifact.
pub fn dep_info_inputs(text: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for line in text.lines() {
        // The target ends at the first ": " (or a trailing ':').
        let Some(i) = line
            .find(": ")
            .or_else(|| line.strip_suffix(':').map(str::len))
        else {
            continue;
        };
        let mut word = String::new();
        let mut chars = line[i + 1..].chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(next) = chars.next() {
                        word.push(next);
                    }
                }
                ' ' | '\t' => {
                    if !word.is_empty() {
                        out.push(PathBuf::from(std::mem::take(&mut word)));
                    }
                }
                c => word.push(c),
            }
        }
        if !word.is_empty() {
            out.push(PathBuf::from(word));
        }
    }
    out
}

/// The newest file under `paths` (directories walked; missing paths
/// skipped) and its modification time.
pub fn newest_file(paths: &[PathBuf]) -> Option<(PathBuf, SystemTime)> {
    let mut newest: Option<(PathBuf, SystemTime)> = None;
    let mut stack: Vec<PathBuf> = paths.to_vec();
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(dir) = std::fs::read_dir(&p) {
                stack.extend(dir.flatten().map(|e| e.path()));
            }
        } else if let Ok(t) = meta.modified()
            && newest.as_ref().is_none_or(|(_, n)| t > *n)
        {
            newest = Some((p, t));
        }
    }
    newest
}

/// `bin` if it is at least as new as every input its dep-info (`bin.d`)
/// lists.
pub fn fresh(bin: &Path) -> Result<PathBuf> {
    let how = "run `cargo build --release -p wstrace` before the tests (`cargo xtask test` does)";
    let built = std::fs::metadata(bin)
        .and_then(|m| m.modified())
        .with_context(|| format!("{} missing: {how}", bin.display()))?;
    let dep_info = bin.with_extension("d");
    let text = std::fs::read_to_string(&dep_info).with_context(|| {
        format!(
            "{} missing (cargo writes it with the binary): {how}",
            dep_info.display()
        )
    })?;
    if let Some((file, changed)) = newest_file(&dep_info_inputs(&text))
        && changed > built
    {
        bail!(
            "{} is older than {} (changed after the last build): {how}",
            bin.display(),
            file.display()
        );
    }
    Ok(bin.to_path_buf())
}

/// `target/release/wstrace`, checked to be newer than its sources; panics
/// (a failed test) with what to run otherwise.
pub fn wstrace_bin() -> PathBuf {
    fresh(&target().join("release/wstrace")).unwrap_or_else(|e| panic!("{e:#}"))
}

/// How to start one wstrace: ports, format, extra arguments, environment.
pub struct TracerOptions {
    bin: PathBuf,
    ports: Vec<u16>,
    format: String,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    ready_file: Option<PathBuf>,
    metrics: bool,
    echo: bool,
    ready_timeout: Duration,
    stdout_file: Option<PathBuf>,
}

impl TracerOptions {
    /// The freshly built `target/release/wstrace` ([`wstrace_bin`]).
    pub fn new() -> TracerOptions {
        TracerOptions::with_binary(wstrace_bin())
    }

    /// `bin` as given (the VMs hand theirs to `ws-scenario check`).
    pub fn with_binary(bin: PathBuf) -> TracerOptions {
        TracerOptions {
            bin,
            ports: Vec::new(),
            format: "json".into(),
            args: Vec::new(),
            env: Vec::new(),
            ready_file: None,
            metrics: false,
            echo: true,
            ready_timeout: READY_TIMEOUT,
            stdout_file: None,
        }
    }

    pub fn port(mut self, port: u16) -> Self {
        self.ports.push(port);
        self
    }

    pub fn ports(mut self, ports: &[u16]) -> Self {
        self.ports.extend_from_slice(ports);
        self
    }

    /// `--format` (`json`, the default, or `text`).
    pub fn format(mut self, format: &str) -> Self {
        self.format = format.into();
        self
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<S: Into<OsString> + Clone>(mut self, args: &[S]) -> Self {
        self.args.extend(args.iter().cloned().map(Into::into));
        self
    }

    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The `--ready-file` path (default: one in a private temporary
    /// directory). A stale file there is fine: ready is the child's pid.
    pub fn ready_file(mut self, path: &Path) -> Self {
        self.ready_file = Some(path.to_path_buf());
        self
    }

    /// Serve `--metrics` on a free loopback port, for
    /// [`Tracer::lost_events`].
    pub fn metrics(mut self) -> Self {
        self.metrics = true;
        self
    }

    /// Echo wstrace's stderr as it comes (default: yes; libtest shows it
    /// for failing tests only).
    pub fn echo(mut self, echo: bool) -> Self {
        self.echo = echo;
        self
    }

    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// wstrace's stdout into the file `path` (created or truncated), as a
    /// log collector reads it, instead of into memory: for runs with more
    /// reports than a test can hold. [`Tracer::reports`] is then empty.
    pub fn stdout_file(mut self, path: &Path) -> Self {
        self.stdout_file = Some(path.to_path_buf());
        self
    }

    fn has_arg(&self, name: &str) -> bool {
        self.args.iter().any(|a| {
            let a = a.to_string_lossy();
            a == name || a.starts_with(&format!("{name}="))
        })
    }

    /// Starts wstrace and returns once its ready file names it, or the
    /// error (it exited, or did not attach in time) with its last stderr.
    pub fn start(self) -> Result<Tracer> {
        let private = TempDir::new("tracer")?;
        let ready = self
            .ready_file
            .clone()
            .unwrap_or_else(|| private.0.join("wstrace.ready"));
        let mut cmd = Command::new(&self.bin);
        for p in &self.ports {
            cmd.arg("--port").arg(p.to_string());
        }
        cmd.args(["--format", &self.format]);
        if !self.has_arg("--symbolize-timeout") {
            cmd.arg(SYMBOLIZE_TIMEOUT);
        }
        let metrics = if self.metrics && !self.has_arg("--metrics") {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            cmd.arg("--metrics").arg(addr.to_string());
            Some(addr)
        } else {
            None
        };
        cmd.arg("--ready-file").arg(&ready);
        cmd.args(&self.args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        {
            use std::os::unix::process::CommandExt as _;
            // Its own group: the uprobe helper it forks dies with it.
            cmd.process_group(0);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(match &self.stdout_file {
                Some(path) => Stdio::from(
                    std::fs::File::create(path)
                        .with_context(|| format!("creating {}", path.display()))?,
                ),
                None => Stdio::piped(),
            })
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let err = child.stderr.take().context("wstrace's stderr")?;
        let sink = stdout.clone();
        // None with `stdout_file`: the file has it.
        let stdout_done = child.stdout.take().map(|out| {
            std::thread::spawn(move || {
                let mut r = BufReader::new(out);
                loop {
                    // Raw lines, the trailing newline kept: a torn last line shows.
                    let mut line = String::new();
                    match r.read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => lock(&sink).push(line),
                    }
                }
            })
        });
        // A second descriptor of the stderr pipe, to ask how much is
        // still unread (see `wait_stderr_drained`).
        let stderr_pipe = {
            use std::os::fd::AsFd as _;
            err.as_fd()
                .try_clone_to_owned()
                .context("dup of wstrace's stderr")?
        };
        let progress = Arc::new(StderrProgress::default());
        let (sink, echo, seen) = (stderr.clone(), self.echo, progress.clone());
        let stderr_done = std::thread::spawn(move || {
            let mut err = err;
            let mut buf = [0u8; 8192];
            let mut partial: Vec<u8> = Vec::new();
            let push = |bytes: &[u8]| {
                let line = String::from_utf8_lossy(bytes).into_owned();
                if echo {
                    eprintln!("{line}");
                }
                lock(&sink).push(line);
            };
            loop {
                let n = match err.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                seen.read.fetch_add(n, Ordering::SeqCst);
                partial.extend_from_slice(&buf[..n]);
                while let Some(i) = partial.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = partial.drain(..=i).collect();
                    push(&line[..i]);
                }
                seen.stored.fetch_add(n, Ordering::SeqCst);
            }
            if !partial.is_empty() {
                push(&partial);
            }
        });
        let mut t = Tracer {
            stderr_pipe,
            stderr_progress: progress,
            child: Kill(child),
            stdout,
            stderr,
            stdout_done,
            stderr_done: Some(stderr_done),
            metrics,
            ready_content: String::new(),
            _private: private,
        };
        t.ready_content = t.wait_ready(&ready, self.ready_timeout)?;
        // Everything wstrace printed before it said ready (the privilege
        // drop, TLS coverage) is in `stderr_text()` when `start` returns.
        t.wait_stderr_drained(Duration::from_secs(5));
        Ok(t)
    }
}

impl Default for TracerOptions {
    fn default() -> Self {
        TracerOptions::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A private temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Result<TempDir> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "wstrace-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        Ok(TempDir(d))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running wstrace, its stdout and stderr collected line by line.
pub struct Tracer {
    pub child: Kill,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    stdout_done: Option<JoinHandle<()>>,
    stderr_done: Option<JoinHandle<()>>,
    stderr_pipe: std::os::fd::OwnedFd,
    stderr_progress: Arc<StderrProgress>,
    metrics: Option<SocketAddr>,
    ready_content: String,
    _private: TempDir,
}

/// Bytes of wstrace's stderr read from the pipe, and stored as lines.
#[derive(Default)]
struct StderrProgress {
    read: AtomicUsize,
    stored: AtomicUsize,
}

impl Tracer {
    /// Waits (up to `timeout`) until the stderr pipe is empty and every
    /// byte read from it is stored, twice 10 ms apart (a read can return
    /// between the two checks of one round).
    fn wait_stderr_drained(&self, timeout: Duration) {
        use std::os::fd::AsRawFd as _;
        let start = Instant::now();
        let mut quiet_rounds = 0;
        while quiet_rounds < 2 && start.elapsed() < timeout {
            let mut unread: libc::c_int = 0;
            // SAFETY: FIONREAD writes one int; the descriptor is ours.
            let r =
                unsafe { libc::ioctl(self.stderr_pipe.as_raw_fd(), libc::FIONREAD, &mut unread) };
            let p = &self.stderr_progress;
            let caught_up = p.read.load(Ordering::SeqCst) == p.stored.load(Ordering::SeqCst);
            quiet_rounds = if r == 0 && unread == 0 && caught_up {
                quiet_rounds + 1
            } else {
                0
            };
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `wstrace --port PORT --format json EXTRA…`, returned once attached;
    /// panics (fails the test) if it does not attach.
    pub fn start(port: u16, extra: &[&str]) -> Tracer {
        Tracer::start_format(port, "json", extra)
    }

    /// `start` with `--format FORMAT` (`text` or `json`). Unless `extra`
    /// sets one, wstrace gets [`SYMBOLIZE_TIMEOUT`].
    pub fn start_format(port: u16, format: &str, extra: &[&str]) -> Tracer {
        TracerOptions::new()
            .port(port)
            .format(format)
            .args(extra)
            .start()
            .unwrap_or_else(|e| panic!("wstrace did not attach: {e:#}"))
    }

    /// `wstrace --format json EXTRA…` with no `--port`: every port.
    pub fn start_all_ports(extra: &[&str]) -> Tracer {
        Tracer::start_args_json(extra)
    }

    /// `wstrace --format json ARGS…` (ports, if any, in `args`).
    pub fn start_args_json(args: &[&str]) -> Tracer {
        TracerOptions::new()
            .args(args)
            .start()
            .unwrap_or_else(|e| panic!("wstrace did not attach: {e:#}"))
    }

    /// Polls for `path` to hold `pid=<child's pid>` (a stale file from an
    /// earlier run names another pid), failing early if the child exits.
    fn wait_ready(&mut self, path: &Path, timeout: Duration) -> Result<String> {
        let want = format!("pid={}", self.child.0.id());
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if text.lines().any(|l| l == want) {
                return Ok(text);
            }
            if let Some(status) = self.child.0.try_wait().context("waiting for wstrace")? {
                // Its stderr ends with it: take all of it for the error.
                if let Some(h) = self.stderr_done.take() {
                    let _ = h.join();
                }
                bail!(
                    "wstrace exited ({status}) before attaching:\n{}",
                    self.stderr_text()
                );
            }
            if start.elapsed() > timeout {
                bail!(
                    "wstrace did not attach within {timeout:?} (no {want} in {}):\n{}",
                    path.display(),
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the ready file said (`probes=<set>`, `pid=<pid>`).
    pub fn ready_content(&self) -> &str {
        &self.ready_content
    }

    /// The probe set wstrace attached (from the ready file).
    pub fn probe_set(&self) -> Option<&str> {
        self.ready_content
            .lines()
            .find_map(|l| l.strip_prefix("probes="))
    }

    pub fn pid(&self) -> i32 {
        self.child.0.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Waits for exit and for stdout and stderr to be drained.
    pub fn wait(&mut self) -> ExitStatus {
        let status = self.child.0.wait().expect("wait for wstrace");
        for h in [self.stdout_done.take(), self.stderr_done.take()]
            .into_iter()
            .flatten()
        {
            let _ = h.join();
        }
        status
    }

    /// SIGINT (wstrace's clean exit: detach, flush pending reports), then
    /// waits up to `timeout` for the exit and the rest of its output.
    pub fn interrupt(&mut self, timeout: Duration) -> Result<ExitStatus> {
        self.signal(libc::SIGINT);
        let start = Instant::now();
        loop {
            if self.child.0.try_wait()?.is_some() {
                return Ok(self.wait());
            }
            if start.elapsed() > timeout {
                bail!("wstrace did not exit within {timeout:?} of SIGINT");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Raw stdout lines so far (each with its newline, unless torn).
    pub fn raw_lines(&self) -> Vec<String> {
        lock(&self.stdout).clone()
    }

    /// Every stdout line parsed; panics on a torn or invalid one.
    pub fn reports(&self) -> Vec<serde_json::Value> {
        self.try_reports().unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Every stdout line parsed, or which one is torn or not JSON.
    pub fn try_reports(&self) -> Result<Vec<serde_json::Value>> {
        self.raw_lines()
            .iter()
            .enumerate()
            .map(|(i, l)| {
                if !l.ends_with('\n') {
                    bail!("line {} is torn: {l:?}", i + 1);
                }
                serde_json::from_str(l).with_context(|| format!("line {} is not JSON: {l}", i + 1))
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

    /// The server side's reports so far ([`super::report::is_server_side`]):
    /// a client on this host that read the 101 in one read is followed too,
    /// with or without `--port`, and has its own report.
    pub fn server_reports(&self) -> Vec<serde_json::Value> {
        let mut r = self.reports();
        r.retain(super::report::is_server_side);
        r
    }

    /// Polls until `n` server-side reports are in or `timeout` passes;
    /// returns the server side's reports ([`Tracer::server_reports`]).
    pub fn wait_for_server_reports(&self, n: usize, timeout: Duration) -> Vec<serde_json::Value> {
        let start = Instant::now();
        loop {
            let reports = self.server_reports();
            if reports.len() >= n || start.elapsed() > timeout {
                return reports;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Both ends of the one connection a test made to its server on `port`
    /// from this host, (server side, client side): see
    /// [`Tracer::wait_for_ends`].
    pub fn wait_for_both_ends(
        &self,
        port: u16,
        timeout: Duration,
    ) -> (serde_json::Value, serde_json::Value) {
        let (mut server, mut client) = self.wait_for_ends(port, 1, timeout);
        (server.remove(0), client.remove(0))
    }

    /// Both ends of the `n` connections a test made to its server on `port`
    /// from this host, (server sides, client sides): each client read the
    /// 101 in one read (e.g. [`super::upgrade_once`]), so wstrace follows its
    /// socket too. Waits up to `timeout` for `n` of each; panics unless
    /// there are exactly `n` of each.
    pub fn wait_for_ends(
        &self,
        port: u16,
        n: usize,
        timeout: Duration,
    ) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
        use super::report::{is_client_of, is_server_on};
        let start = Instant::now();
        let (server, client) = loop {
            let reports = self.reports();
            let server: Vec<_> = reports
                .iter()
                .filter(|r| is_server_on(r, port))
                .cloned()
                .collect();
            let client: Vec<_> = reports
                .iter()
                .filter(|r| is_client_of(r, port))
                .cloned()
                .collect();
            if (server.len() >= n && client.len() >= n) || start.elapsed() > timeout {
                break (server, client);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let stderr = self.stderr_text();
        assert_eq!(
            server.len(),
            n,
            "server-side reports on :{port}: {server:#?}\nstderr: {stderr}"
        );
        assert_eq!(
            client.len(),
            n,
            "client-side reports of :{port}: {client:#?}\nstderr: {stderr}"
        );
        (server, client)
    }

    /// Polls until a report satisfies `pred` or `timeout` passes; returns
    /// every report so far and whether one did.
    pub fn wait_for_report(
        &self,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> (Vec<serde_json::Value>, bool) {
        let start = Instant::now();
        loop {
            let reports = self.reports();
            let found = reports.iter().any(&pred);
            if found || start.elapsed() > timeout {
                return (reports, found);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stderr_text(&self) -> String {
        lock(&self.stderr).join("\n")
    }

    /// `wstrace_lost_events_total` by reason, scraped from `--metrics`
    /// ([`TracerOptions::metrics`]): what wstrace lost or evicted so far.
    pub fn lost_events(&self) -> Result<BTreeMap<String, u64>> {
        let addr = self
            .metrics
            .context("this wstrace was started without TracerOptions::metrics")?;
        let body = scrape(addr)?;
        Ok(parse_lost_events(&body))
    }

    /// A counter without labels (e.g. `wstrace_upgrades_total`) from
    /// `--metrics` ([`TracerOptions::metrics`]); 0 when not exposed yet.
    pub fn counter(&self, name: &str) -> Result<u64> {
        let addr = self
            .metrics
            .context("this wstrace was started without TracerOptions::metrics")?;
        let body = scrape(addr)?;
        Ok(body
            .lines()
            .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .filter_map(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
            .sum())
    }

    /// The sum of [`Tracer::lost_events`].
    pub fn lost_events_total(&self) -> Result<u64> {
        Ok(self.lost_events()?.values().sum())
    }

    /// The kernel's ids of the BPF programs this process holds, from its fd
    /// table (`/proc/<pid>/fdinfo/*` has a `prog_id:` line for program and
    /// link fds).
    pub fn prog_ids(&self) -> Vec<u32> {
        let mut ids = Vec::new();
        let dir = format!("/proc/{}/fdinfo", self.pid());
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir}: {e}"));
        for e in entries.flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            for l in text.lines() {
                if let Some(id) = l.strip_prefix("prog_id:")
                    && let Ok(id) = id.trim().parse()
                {
                    ids.push(id);
                }
            }
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

/// `GET /metrics` from wstrace's metrics server: the body.
pub fn scrape(addr: SocketAddr) -> Result<String> {
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to wstrace's metrics on {addr}"))?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: wstrace\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    c.read_to_string(&mut out)
        .with_context(|| format!("reading wstrace's metrics from {addr}"))?;
    let (head, body) = out
        .split_once("\r\n\r\n")
        .with_context(|| format!("no HTTP response from {addr}: {out:?}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("metrics on {addr} answered {:?}", head.lines().next());
    }
    Ok(body.to_string())
}

/// `wstrace_lost_events_total{reason="R"} N` lines of a Prometheus text
/// exposition, by reason.
pub fn parse_lost_events(exposition: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("wstrace_lost_events_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once('}') else {
            continue;
        };
        let reason = labels
            .split(',')
            .find_map(|l| l.trim().strip_prefix("reason=\""))
            .and_then(|r| r.strip_suffix('"'))
            .unwrap_or("");
        if let Ok(n) = value.trim().parse::<f64>() {
            *out.entry(reason.to_string()).or_insert(0) += n as u64;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_events_by_reason() {
        let text = "# HELP wstrace_lost_events Events lost.\n\
                    # TYPE wstrace_lost_events counter\n\
                    wstrace_lost_events_total{reason=\"ring_full\"} 12\n\
                    wstrace_lost_events_total{reason=\"max_sockets\"} 3\n\
                    wstrace_lost_events_total_created 1.7e9\n\
                    wstrace_reports_total 9\n\
                    # EOF\n";
        let lost = parse_lost_events(text);
        assert_eq!(lost.get("ring_full"), Some(&12));
        assert_eq!(lost.get("max_sockets"), Some(&3));
        assert_eq!(lost.len(), 2);
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("wstrace-harness-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("src/deep")).expect("dir");
        d
    }

    fn set_mtime(p: &Path, secs: u64) {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        std::fs::File::options()
            .write(true)
            .open(p)
            .and_then(|f| f.set_modified(t))
            .expect("set mtime");
    }

    #[test]
    fn dep_info_inputs_unescape_spaces() {
        let d = "/t/release/wstrace: /w/src/main.rs /w/src/a\\ b.rs /w/ebpf\n\n/w/src/main.rs:\n";
        assert_eq!(
            dep_info_inputs(d),
            vec![
                PathBuf::from("/w/src/main.rs"),
                PathBuf::from("/w/src/a b.rs"),
                PathBuf::from("/w/ebpf"),
            ]
        );
    }

    #[test]
    fn a_binary_older_than_any_input_is_refused() {
        let d = scratch("fresh");
        let (bin, old, new, unlisted) = (
            d.join("wstrace"),
            d.join("src/a.rs"),
            d.join("src/deep/b.rs"),
            d.join("test_only.rs"),
        );
        for p in [&bin, &old, &new, &unlisted] {
            std::fs::write(p, "x").expect("write");
        }
        // The directory is walked; a missing input is skipped.
        let inputs = format!(
            "{}: {} {}\n",
            bin.display(),
            d.join("src").display(),
            d.join("gone.rs").display()
        );
        std::fs::write(d.join("wstrace.d"), inputs).expect("dep-info");
        set_mtime(&old, 1_000);
        set_mtime(&new, 3_000);
        set_mtime(&bin, 2_000);
        set_mtime(&unlisted, 9_000);
        let msg = format!("{:#}", fresh(&bin).expect_err("stale"));
        assert!(
            msg.contains("b.rs") && msg.contains("cargo build --release -p wstrace"),
            "{msg}"
        );
        // A file the binary is not built from (a test module) never counts.
        set_mtime(&bin, 3_000);
        assert_eq!(fresh(&bin).expect("fresh"), bin);
        std::fs::remove_file(d.join("wstrace.d")).expect("rm");
        let msg = format!("{:#}", fresh(&bin).expect_err("no dep-info"));
        assert!(msg.contains("wstrace.d missing"), "{msg}");
        let msg = format!("{:#}", fresh(&d.join("nothing")).expect_err("missing"));
        assert!(msg.contains("missing"), "{msg}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
