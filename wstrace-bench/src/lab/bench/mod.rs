//! `wstrace-bench lab` (run by `cargo xtask bench`): what wstrace costs, as ratios against a no-tracer
//! baseline measured in the same run (so a slower or busier machine moves
//! both sides, not the ratio). Not part of `cargo xtask test`: it needs an
//! otherwise idle machine and minutes of wall time.
//!
//! Eight measurements, each repeated `--rounds` times with the variants
//! interleaved (none, wstrace, ... then again), medians reported:
//! 1. steady: WebSocket echo at the highest rate the machine sustains, with
//!    no tracer / wstrace / the equivalent bpftrace script / `strace -f`;
//! 2. churn: upgrade + immediate server close as fast as possible: reports
//!    must equal connections, lost events must be 0;
//! 3. unrelated: the echo load on a port wstrace is *not* tracing (the
//!    in-kernel port filter at work): the cost must be within noise;
//! 4. the daemon's own CPU time and peak RSS (wait4 rusage), and the
//!    close-to-report latency (client's EOF to the report line's arrival);
//! 5. in-kernel cost per program by the kernel's own stats, beside the
//!    bpftrace script and a near-empty program on the same hooks
//!    (kernel_cost.rs);
//! 6. the same for the fentry and kprobe sets in the kernel-matrix VMs
//!    (vm_cost.rs);
//! 7. what the TLS uprobes cost a server terminating TLS itself
//!    (tls_cost.rs);
//! 8. what the interpreter walk costs per close of a Python server, by the
//!    kernel's stats beside a near-empty program (interp_cost.rs);
//! 9. what N idle upgraded connections, both ends traced, cost the kernel
//!    maps and the daemon, and whether every close is reported
//!    (idle_cost.rs).
//!
//! Results: target/bench/results.json (every run's numbers, typed); the
//! renderer (render.rs, `wstrace-bench render`) makes BENCHMARKS.md of it.

mod idle_cost;
mod interp_cost;
mod kernel_cost;
pub mod render;
mod tls_cost;
mod vm_cost;

use crate::{paths, process};
use anyhow::{Context as _, Result, bail};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

/// The port the load runs on and wstrace traces.
const TRACED_PORT: u16 = 18801;
/// The port the "unrelated traffic" load runs on (not traced).
const OTHER_PORT: u16 = 18802;
/// Churn runs use the ports after this one, one each.
const CHURN_PORT_BASE: u16 = 18810;

/// Goals from the issue: throughput cost, churn-rate cost, daemon RSS.
const STEADY_GOAL_MAX_COST: f64 = 0.02;
const CHURN_GOAL_MAX_COST: f64 = 0.03;
const RSS_GOAL_MIB: f64 = 48.0;

#[derive(Args, Clone)]
pub struct BenchArgs {
    /// Times each measurement is repeated (variants interleaved); medians are reported.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Measured seconds per run (after one second of warm-up for the echo load).
    #[arg(long, default_value_t = 5.0)]
    pub secs: f64,
    /// Probe set for wstrace (as `wstrace --probe`).
    #[arg(long, default_value = "auto")]
    pub probe: String,
    /// Where the results go (JSON) [default: target/bench/results.json]
    #[arg(long, value_name = "FILE")]
    pub results: Option<PathBuf>,
    /// Run only part of the benchmark; the other part's section of
    /// BENCHMARKS.md is kept as it is.
    #[arg(long, value_enum, default_value_t = Only::All)]
    pub only: Only,
    /// Idle upgraded connections held open (section 9; 2 sockets each).
    #[arg(long, default_value_t = 100_000)]
    pub idle_conns: usize,
    /// The idle server's port (section 9; traced).
    #[arg(long, default_value_t = 18890)]
    pub idle_port: u16,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Only {
    /// Everything (sections 1-9).
    #[default]
    All,
    /// The load measurements: throughput, churn, unrelated traffic, the daemon (sections 1-4).
    Load,
    /// The in-kernel cost per program on this host (section 5).
    KernelCost,
    /// The fentry and kprobe sets' cost per program in the kernel-matrix VMs (section 6).
    VmCost,
    /// The TLS uprobes' cost to a Python ssl server and to a Go server: CPU per write, the programs' ns (section 7).
    Tls,
    /// Section 7's Go half alone: the Go crypto/tls uprobes' cost to a Go server.
    #[value(name = "gotls")]
    #[serde(rename = "gotls")]
    GoTls,
    /// The interpreter walk's programs on close(2), under a Python server's closes (section 8).
    Interp,
    /// N idle upgraded connections, both ends traced: map memory, daemon RSS, every close reported (section 9).
    Idle,
}

/// The headings that start sections 5 and 6: where a partial run splices.
const KERNEL_COST_HEADING: &str = "## 5. In-kernel cost per program";
const VM_COST_HEADING: &str = "## 6. In-kernel cost per program in the kernel-matrix VMs";
const TLS_COST_HEADING: &str =
    "## 7. TLS uprobes (`--tls auto`): cost to a server terminating TLS itself";
/// Section 7's Go half, spliced on its own by `--only gotls`.
const GO_TLS_COST_HEADING: &str = "### Go `crypto/tls`: the same load on a Go server";
const INTERP_COST_HEADING: &str = "## 8. Interpreter frames: the walk at close(2), in the kernel";
const IDLE_COST_HEADING: &str =
    "## 9. Idle upgraded connections, both ends traced: memory, and every close reported";

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Tracer {
    None,
    /// No tracer again, right after the first: the A/A pair that says how
    /// far two identical runs differ on this machine.
    Repeat,
    Wstrace,
    /// wstrace without the per-close user stack copy (frame pointers only):
    /// what the dwarf unwinding costs under churn.
    WstraceFp,
    Bpftrace,
    Strace,
}

impl Tracer {
    fn is_wstrace(self) -> bool {
        matches!(self, Tracer::Wstrace | Tracer::WstraceFp)
    }

    fn name(self) -> &'static str {
        match self {
            Tracer::None => "none",
            Tracer::Repeat => "none again (A/A)",
            Tracer::Wstrace => "wstrace",
            Tracer::WstraceFp => "wstrace --user-stack fp",
            Tracer::Bpftrace => "bpftrace script",
            Tracer::Strace => "strace -f",
        }
    }
}

/// One echo-load run.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Steady {
    msgs_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    /// The tracer process's own cost (wstrace only).
    daemon: Option<Rusage>,
}

/// One churn run.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Churn {
    connections: u64,
    failed: u64,
    per_sec: f64,
    reports: u64,
    lost: u64,
    close_to_report_p50_us: Option<f64>,
    close_to_report_p99_us: Option<f64>,
    daemon: Option<Rusage>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct Rusage {
    cpu_secs: f64,
    wall_secs: f64,
    /// VmHWM just before the stop signal. Not wait4's ru_maxrss: that
    /// counts the forked child before its exec, i.e. this process's size.
    max_rss_mib: f64,
}

impl Rusage {
    fn with_peak(self, peak: Option<f64>) -> Rusage {
        Rusage {
            max_rss_mib: peak.unwrap_or(self.max_rss_mib),
            ..self
        }
    }
}

/// Everything one lab run measured: what results.json holds and the
/// renderer reads.
#[derive(Default, Serialize, Deserialize)]
pub struct Results {
    /// The part that was measured: the renderer keeps BENCHMARKS.md's other
    /// sections when it is not `all`.
    only: Only,
    date: String,
    machine: String,
    kernel: String,
    probe_set: String,
    rounds: usize,
    secs: f64,
    steady: Vec<(Tracer, Vec<Steady>)>,
    churn: Vec<(Placement, Tracer, Vec<Churn>)>,
    unrelated: Vec<(Tracer, Vec<Steady>)>,
    kernel_cost: Option<kernel_cost::KernelCost>,
    vm_cost: Option<vm_cost::VmCost>,
    tls_cost: Option<tls_cost::TlsCost>,
    #[serde(default)]
    go_tls_cost: Option<tls_cost::GoTlsCost>,
    #[serde(default)]
    interp_cost: Option<interp_cost::InterpCost>,
    #[serde(default)]
    idle_cost: Option<idle_cost::IdleCost>,
}

struct Bins {
    wstrace: PathBuf,
    load: PathBuf,
    work: PathBuf,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the benchmark loads BPF programs and attaches strace: run it as root (sudo -E cargo xtask bench)"
        );
    }
    // NaN is refused too: `secs >= 1.0` is false for it.
    if args.rounds == 0 || args.secs.partial_cmp(&1.0).is_none_or(|o| o.is_lt()) {
        bail!("--rounds must be at least 1 and --secs at least 1.0");
    }
    // `cargo xtask bench` installs these and builds the binaries first.
    let tools: &[(&str, &str)] = match args.only {
        Only::All | Only::Load => &[
            ("bpftrace", "the bpftrace baseline"),
            ("strace", "the strace baseline"),
            ("bpftool", "per-program run-time stats (section 5)"),
            ("taskset", "the pinned churn runs"),
        ],
        Only::KernelCost => &[
            (
                "bpftrace",
                "the bpftrace baseline and the near-empty programs",
            ),
            ("bpftool", "per-program run-time stats (section 5)"),
        ],
        Only::VmCost => &[],
        Only::Tls | Only::GoTls => &[
            (
                "bpftrace",
                "the near-empty uprobes beside wstrace's (section 7)",
            ),
            ("bpftool", "the uprobes' run-time stats (section 7)"),
            ("go", "building the Go server of section 7 (golang-go)"),
        ],
        Only::Interp => &[
            (
                "bpftrace",
                "the near-empty close(2) programs beside wstrace's (section 8)",
            ),
            ("bpftool", "the programs' run-time stats (section 8)"),
        ],
        Only::Idle => &[("bpftool", "the maps' sizes (section 9)")],
    };
    for (tool, why) in tools {
        if which::which(tool).is_err() {
            bail!(
                "{tool} is missing ({why}): run `cargo xtask bench`, which installs it, or `apt-get install {tool}`"
            );
        }
    }
    let work = paths::target_dir()?.join("bench");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let release = paths::release_dir()?;
    let bins = Bins {
        wstrace: release.join("wstrace"),
        load: release.join("ws-bench"),
        work: work.clone(),
    };
    for bin in [&bins.wstrace, &bins.load] {
        if !bin.is_file() {
            bail!(
                "{} is missing: build it with `cargo build --release -p wstrace -p wstrace-bench` (or run `cargo xtask bench`)",
                bin.display()
            );
        }
    }
    warn_if_busy();

    let mut res = Results {
        only: args.only,
        date: command_text("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        machine: machine(),
        kernel: command_text("uname", &["-r"]),
        rounds: args.rounds,
        secs: args.secs,
        ..Default::default()
    };
    let steady_variants = [
        Tracer::None,
        Tracer::Wstrace,
        Tracer::Bpftrace,
        Tracer::Strace,
    ];
    let pair = [Tracer::None, Tracer::Wstrace, Tracer::WstraceFp];
    let mut steady: Vec<(Tracer, Vec<Steady>)> =
        steady_variants.iter().map(|t| (*t, Vec::new())).collect();
    let mut churn: Vec<(Placement, Tracer, Vec<Churn>)> = [Placement::Shared, Placement::Pinned]
        .iter()
        .flat_map(|p| pair.iter().map(move |t| (*p, *t, Vec::new())))
        .collect();
    // bpftrace too: it shows what the syscall tracepoints themselves cost
    // every process once enabled, whatever program runs on them.
    let mut unrelated: Vec<(Tracer, Vec<Steady>)> = [
        Tracer::None,
        Tracer::Repeat,
        Tracer::Wstrace,
        Tracer::Bpftrace,
    ]
    .iter()
    .map(|t| (*t, Vec::new()))
    .collect();
    let mut probe_set = String::new();
    let mut churn_port = CHURN_PORT_BASE;

    // The first load run after a build is slow (page cache, CPU frequency,
    // lazily built kernel state): run one and throw it away.
    if !matches!(
        args.only,
        Only::VmCost | Only::Tls | Only::GoTls | Only::Interp | Only::Idle
    ) {
        println!("\n==> bench: warm-up run (discarded)");
        steady_run(&bins, args, Tracer::None, TRACED_PORT, &mut probe_set)
            .context("warm-up run")?;
    }

    if matches!(args.only, Only::All | Only::Load) {
        for round in 1..=args.rounds {
            println!("\n==> bench: round {round} of {}", args.rounds);
            for (tracer, runs) in steady.iter_mut() {
                let r = steady_run(&bins, args, *tracer, TRACED_PORT, &mut probe_set)
                    .with_context(|| format!("steady echo with {}", tracer.name()))?;
                println!(
                    "  steady    {:<16} {:>9.0} msgs/s  p99 {:>6.0} µs",
                    tracer.name(),
                    r.msgs_per_sec,
                    r.p99_us
                );
                runs.push(r);
            }
            for (place, tracer, runs) in churn.iter_mut() {
                // A port of its own per run: the server's TIME_WAIT sockets of
                // earlier runs (one per connection, for 60 s) cannot collide.
                churn_port += 1;
                let r = churn_run(&bins, args, *tracer, churn_port, *place, &mut probe_set)
                    .with_context(|| format!("churn with {} ({place:?})", tracer.name()))?;
                println!(
                    "  churn     {:<16} {:<7} {:>9.0} upgrades/s  reports {}/{}  lost {}",
                    tracer.name(),
                    format!("{place:?}").to_lowercase(),
                    r.per_sec,
                    r.reports,
                    r.connections,
                    r.lost
                );
                runs.push(r);
            }
            for (tracer, runs) in unrelated.iter_mut() {
                let r = steady_run(&bins, args, *tracer, OTHER_PORT, &mut probe_set)
                    .with_context(|| format!("unrelated traffic with {}", tracer.name()))?;
                println!(
                    "  unrelated {:<16} {:>9.0} msgs/s  p99 {:>6.0} µs",
                    tracer.name(),
                    r.msgs_per_sec,
                    r.p99_us
                );
                runs.push(r);
            }
        }
        res.probe_set = probe_set;
        res.steady = steady;
        res.churn = churn;
        res.unrelated = unrelated;
    }
    if matches!(args.only, Only::All | Only::KernelCost) {
        println!(
            "\n==> bench: in-kernel cost per program ({} rounds)",
            args.rounds
        );
        let k = kernel_cost::run(&bins, args)?;
        if res.probe_set.is_empty() {
            res.probe_set = k.probe_set.clone();
        }
        res.kernel_cost = Some(k);
    }
    if matches!(args.only, Only::All | Only::VmCost) {
        println!("\n==> bench: fentry and kprobe sets in the kernel-matrix VMs");
        res.vm_cost = Some(vm_cost::run(&bins.wstrace, &bins.load)?);
    }
    if matches!(args.only, Only::All | Only::Tls) {
        println!(
            "\n==> bench: TLS uprobes on a Python ssl server ({} rounds)",
            args.rounds
        );
        res.tls_cost = Some(tls_cost::run(&bins, args)?);
    }
    if matches!(args.only, Only::All | Only::Tls | Only::GoTls) {
        println!(
            "\n==> bench: Go crypto/tls uprobes on a Go server ({} rounds)",
            args.rounds
        );
        res.go_tls_cost = Some(tls_cost::run_go(&bins, args)?);
    }
    if matches!(args.only, Only::All | Only::Interp) {
        println!(
            "\n==> bench: the interpreter walk under a Python server's closes ({} rounds)",
            args.rounds
        );
        res.interp_cost = Some(interp_cost::run(&bins, args)?);
    }
    if matches!(args.only, Only::All | Only::Idle) {
        println!(
            "\n==> bench: {} idle upgraded connections, both ends traced",
            args.idle_conns
        );
        res.idle_cost = Some(idle_cost::run(&bins, args).context("idle connections")?);
    }

    let json_path = args
        .results
        .clone()
        .unwrap_or_else(|| work.join("results.json"));
    std::fs::write(&json_path, serde_json::to_string_pretty(&res)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    println!("bench: results in {}", json_path.display());
    Ok(())
}

/// The bpftrace script a user would write for the same question: remember
/// (pid, fd) when a write starts with a 101, print the closer's stacks when
/// that fd is closed, and the TCP state changes on the port.
fn bpftrace_script_text(port: u16) -> String {
    format!(
        r#"// What a bpftrace user would write instead of `wstrace --port {port}` (tracepoints only).
tracepoint:syscalls:sys_enter_sendto /args->len >= 13/ {{
  if (strncmp(str(args->buff, 13), "HTTP/1.1 101 ", 13) == 0) {{ @up[pid, args->fd] = nsecs; }}
}}
tracepoint:syscalls:sys_enter_write /args->count >= 13/ {{
  if (strncmp(str(args->buf, 13), "HTTP/1.1 101 ", 13) == 0) {{ @up[pid, args->fd] = nsecs; }}
}}
tracepoint:syscalls:sys_enter_close /@up[pid, args->fd]/ {{
  printf("close pid=%d tid=%d comm=%s ms=%d\n%s%s\n", pid, tid, comm,
         (nsecs - @up[pid, args->fd]) / 1000000, kstack, ustack);
  delete(@up[pid, args->fd]);
}}
tracepoint:sock:inet_sock_set_state /args->protocol == 6 && args->sport == {port} && (args->newstate == 4 || args->newstate == 7 || args->newstate == 8)/ {{
  printf("state sport=%d dport=%d %d->%d pid=%d\n", args->sport, args->dport, args->oldstate, args->newstate, pid);
}}
BEGIN {{ printf("READY\n"); }}
"#
    )
}

/// A child process whose stdout/stderr lines are collected by threads.
struct Proc {
    child: Child,
    started: Instant,
    /// stdout lines with the CLOCK_MONOTONIC ns of their arrival.
    lines: mpsc::Receiver<(u64, String)>,
    stderr: Arc<Mutex<String>>,
    name: String,
    reaped: bool,
    /// wstrace's `--metrics` address, for its loss counters.
    metrics: Option<std::net::SocketAddr>,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command) -> Result<Proc> {
        let shown = process::display(cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("could not start `{shown}`"))?;
        let (tx, rx) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if tx.send((mono_ns(), line)).is_err() {
                        break;
                    }
                }
            });
        }
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(mut err) = child.stderr.take() {
            let sink = stderr.clone();
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut s) = sink.lock() {
                        s.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
            });
        }
        Ok(Proc {
            child,
            started: Instant::now(),
            lines: rx,
            stderr,
            name: name.to_string(),
            reaped: false,
            metrics: None,
        })
    }

    /// Waits until `path` (wstrace's `--ready-file`) names this process
    /// (`pid=<pid>`; a stale file names another): attached. Returns the
    /// file's text.
    fn wait_ready_file(&mut self, path: &Path, timeout: Duration) -> Result<String> {
        let want = format!("pid={}", self.child.id());
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if text.lines().any(|l| l == want) {
                return Ok(text);
            }
            if let Some(status) = self.child.try_wait()? {
                self.reaped = true;
                bail!(
                    "{} exited ({status}) before attaching: {}",
                    self.name,
                    self.stderr_text().trim()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
        bail!(
            "{} did not write {} within {}: {}",
            self.name,
            path.display(),
            process::secs(timeout),
            self.stderr_text().trim()
        )
    }

    /// `wstrace_lost_events_total` summed over reasons, from the process's
    /// `--metrics` (see [`spawn_wstrace`]).
    fn lost_events(&self) -> Result<u64> {
        let addr = self
            .metrics
            .with_context(|| format!("{} was started without --metrics", self.name))?;
        let body = wstrace_scenarios::harness::tracer::scrape(addr)?;
        Ok(wstrace_scenarios::harness::tracer::parse_lost_events(&body)
            .values()
            .sum())
    }

    fn stderr_text(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits for a stdout line containing `needle` (or stderr, if `on_stderr`).
    fn wait_for(&self, needle: &str, on_stderr: bool, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if on_stderr {
                if let Some(line) = self.stderr_text().lines().find(|l| l.contains(needle)) {
                    return Ok(line.to_string());
                }
                thread::sleep(Duration::from_millis(20));
            } else if let Ok((_, line)) = self.lines.recv_timeout(Duration::from_millis(20))
                && line.contains(needle)
            {
                return Ok(line);
            }
        }
        bail!(
            "{} did not print {needle:?} within {}: {}",
            self.name,
            process::secs(timeout),
            self.stderr_text().trim()
        )
    }

    /// Signals the process, then wait4s for its exit and rusage.
    fn stop(&mut self, signal: i32) -> Result<Rusage> {
        let pid = self.child.id() as i32;
        unsafe { libc::kill(pid, signal) };
        let mut status = 0;
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // bpftrace detaching its programs took over 20 s on a loaded 2-CPU
        // host (load average 9-11): a slow exit is not a failure to exit.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // SAFETY: our own child; status and ru are valid out-pointers.
            let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
            if r == pid {
                self.reaped = true;
                break;
            }
            if r < 0 {
                bail!(
                    "waiting for {}: {}",
                    self.name,
                    std::io::Error::last_os_error()
                );
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("{} did not exit within 60 s of signal {signal}", self.name);
            }
            thread::sleep(Duration::from_millis(10));
        }
        let wall = self.started.elapsed().as_secs_f64();
        // Let the reader threads drain the pipes the process left behind.
        thread::sleep(Duration::from_millis(50));
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        let usage = Rusage {
            cpu_secs: tv(ru.ru_utime) + tv(ru.ru_stime),
            wall_secs: wall,
            max_rss_mib: ru.ru_maxrss as f64 / 1024.0,
        };
        let exited_ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
        let by_our_signal = libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == signal;
        if !exited_ok && !by_our_signal {
            bail!(
                "{} ended badly (wait status {status:#x}): {}",
                self.name,
                self.stderr_text().trim()
            );
        }
        Ok(usage)
    }

    /// VmHWM (peak resident set since exec) in MiB.
    fn peak_rss_mib(&self) -> Option<f64> {
        Some(status_kib(self.child.id(), "VmHWM")? / 1024.0)
    }

    /// Every stdout line received so far (after stop(): all of them).
    fn drain_lines(&self) -> Vec<(u64, String)> {
        self.lines.try_iter().collect()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A process stop() did not reap (servers, error paths): no strays.
        // A reaped pid must not be signalled: it may belong to someone else now.
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `program`, or `taskset -c CPU program` to keep it on one CPU.
fn on_cpu(program: impl AsRef<std::ffi::OsStr>, cpu: Option<u32>) -> Command {
    match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpu.to_string()]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Where the load and the tracer run in a churn measurement.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Placement {
    /// Everything free to run anywhere: the tracer competes with the load for CPUs.
    Shared,
    /// Server and client on CPU 0, the tracer on CPU 1: what remains is the
    /// cost the probes add to the traced processes themselves.
    Pinned,
}

impl Placement {
    fn load_cpu(self) -> Option<u32> {
        (self == Placement::Pinned).then_some(0)
    }
    fn tracer_cpu(self) -> Option<u32> {
        (self == Placement::Pinned).then_some(1)
    }
}

fn server(bins: &Bins, mode: &str, port: u16, cpu: Option<u32>) -> Result<Proc> {
    let p = Proc::spawn(
        &format!("ws-bench serve --mode {mode}"),
        on_cpu(&bins.load, cpu).args([
            "--threads",
            "1",
            "serve",
            "--mode",
            mode,
            "--port",
            &port.to_string(),
        ]),
    )?;
    p.wait_for("READY", false, Duration::from_secs(10))?;
    Ok(p)
}

/// Spawns wstrace (`cmd`, tracing `port`) with a `--ready-file` in the work
/// directory and `--metrics` on a free loopback port: ready and losses are
/// read from those, not from its stderr. Returns it and the ready file.
fn spawn_wstrace(bins: &Bins, port: u16, cmd: &mut Command) -> Result<(Proc, PathBuf)> {
    let ready = bins.work.join(format!("wstrace-{port}.ready"));
    let metrics =
        std::net::SocketAddr::from(([127, 0, 0, 1], wstrace_scenarios::harness::free_port()));
    cmd.arg("--ready-file")
        .arg(&ready)
        .arg("--metrics")
        .arg(metrics.to_string());
    let mut p = Proc::spawn("wstrace", cmd)?;
    p.metrics = Some(metrics);
    Ok((p, ready))
}

/// Starts `tracer` and returns once it is attached.
fn start_tracer(
    bins: &Bins,
    args: &BenchArgs,
    tracer: Tracer,
    port: u16,
    server_pid: u32,
    cpu: Option<u32>,
    probe_set: &mut String,
) -> Result<Option<Proc>> {
    let p = match tracer {
        Tracer::None | Tracer::Repeat => return Ok(None),
        Tracer::Wstrace | Tracer::WstraceFp => {
            let mut cmd = on_cpu(&bins.wstrace, cpu);
            // Port 0: no --port (every port, the default).
            if port != 0 {
                cmd.args(["--port", &port.to_string()]);
            }
            cmd.args(["--probe", &args.probe, "--format", "json"]);
            if tracer == Tracer::WstraceFp {
                cmd.args(["--user-stack", "fp"]);
            }
            let (mut p, ready) = spawn_wstrace(bins, port, &mut cmd)?;
            let content = p.wait_ready_file(&ready, Duration::from_secs(30))?;
            // "probes=tracepoint\npid=1234"
            if let Some(set) = content.lines().find_map(|l| l.strip_prefix("probes=")) {
                *probe_set = set.to_string();
            }
            p
        }
        Tracer::Bpftrace => {
            let script = bins.work.join(format!("wstrace-equivalent-{port}.bt"));
            std::fs::write(&script, bpftrace_script_text(port))
                .with_context(|| format!("writing {}", script.display()))?;
            let p = Proc::spawn("bpftrace", on_cpu("bpftrace", cpu).arg(&script))?;
            p.wait_for("READY", false, Duration::from_secs(60))?;
            p
        }
        Tracer::Strace => {
            let out = bins.work.join("strace.out");
            let p = Proc::spawn(
                "strace",
                on_cpu("strace", cpu)
                    .args(["-f", "-e", "trace=network,close", "-o"])
                    .arg(&out)
                    .args(["-p", &server_pid.to_string()]),
            )?;
            p.wait_for("attached", true, Duration::from_secs(30))?;
            p
        }
    };
    Ok(Some(p))
}

fn steady_run(
    bins: &Bins,
    args: &BenchArgs,
    tracer: Tracer,
    port: u16,
    probe_set: &mut String,
) -> Result<Steady> {
    let srv = server(bins, "echo", port, None)?;
    let t = start_tracer(
        bins,
        args,
        tracer,
        TRACED_PORT,
        srv.child.id(),
        None,
        probe_set,
    )?;
    let out = process::output(Command::new(&bins.load).args([
        "--threads",
        "1",
        "steady",
        "--port",
        &port.to_string(),
        "--secs",
        &args.secs.to_string(),
    ]))?;
    let daemon = match t {
        Some(mut p) => {
            let peak = p.peak_rss_mib();
            let usage = p.stop(libc::SIGINT)?;
            tracer.is_wstrace().then(|| usage.with_peak(peak))
        }
        None => None,
    };
    drop(srv);
    let v: serde_json::Value = serde_json::from_str(out.trim())
        .with_context(|| format!("ws-bench steady printed {out:?}"))?;
    let num = |k: &str| v.get(k).and_then(serde_json::Value::as_f64).unwrap_or(0.0);
    Ok(Steady {
        msgs_per_sec: num("msgs_per_sec"),
        p50_us: num("p50_us"),
        p99_us: num("p99_us"),
        daemon,
    })
}

/// Concurrent upgrade loops in the churn client.
const CHURN_CONC: &str = "8";

fn churn_run(
    bins: &Bins,
    args: &BenchArgs,
    tracer: Tracer,
    port: u16,
    place: Placement,
    probe_set: &mut String,
) -> Result<Churn> {
    let srv = server(bins, "churn", port, place.load_cpu())?;
    let mut t = start_tracer(
        bins,
        args,
        tracer,
        port,
        srv.child.id(),
        place.tracer_cpu(),
        probe_set,
    )?;
    let eof_log = bins.work.join("churn-eofs.txt");
    let out = process::output(
        on_cpu(&bins.load, place.load_cpu())
            .args(["--threads", "1", "churn", "--port", &port.to_string()])
            .args([
                "--conc",
                CHURN_CONC,
                "--secs",
                &args.secs.to_string(),
                "--eof-log",
            ])
            .arg(&eof_log),
    )?;
    drop(srv);
    let v: serde_json::Value = serde_json::from_str(out.trim())
        .with_context(|| format!("ws-bench churn printed {out:?}"))?;
    let num = |k: &str| v.get(k).and_then(serde_json::Value::as_f64).unwrap_or(0.0);
    let mut run = Churn {
        connections: num("connections") as u64,
        failed: num("failed") as u64,
        per_sec: num("per_sec"),
        reports: 0,
        lost: 0,
        close_to_report_p50_us: None,
        close_to_report_p99_us: None,
        daemon: None,
    };
    let Some(p) = t.as_mut() else { return Ok(run) };
    // Let the reports catch up (every upgraded socket closes, so each one
    // has a report coming), then stop wstrace, which prints the rest.
    let expected = (run.connections + run.failed) as usize;
    // Only (arrival, client port) is kept: a whole run's JSON is ~100 MiB.
    let mut reports: Vec<(u64, u16)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while reports.len() < expected && Instant::now() < deadline {
        if let Ok((at, line)) = p.lines.recv_timeout(Duration::from_millis(50)) {
            reports.extend(remote_port(&line).map(|port| (at, port)));
        }
    }
    let peak = p.peak_rss_mib();
    // The counters as the daemon last polled them, after the reports caught
    // up (or 10 s): what it lost during the load.
    run.lost = p.lost_events()?;
    run.daemon = Some(p.stop(libc::SIGINT)?.with_peak(peak));
    reports.extend(
        p.drain_lines()
            .iter()
            .filter_map(|(at, line)| Some((*at, remote_port(line)?))),
    );
    run.reports = reports.len() as u64;
    let eofs = std::fs::read_to_string(&eof_log)
        .with_context(|| format!("reading {}", eof_log.display()))?;
    let mut lat = close_to_report_us(&eofs, &reports);
    lat.sort_by(f64::total_cmp);
    run.close_to_report_p50_us = percentile(&lat, 0.50);
    run.close_to_report_p99_us = percentile(&lat, 0.99);
    Ok(run)
}

/// The remote port (the client's) of a JSON report line of the server
/// side (`"remote":"127.0.0.1:43462"` or `"[::1]:43462"`); None for the
/// client side's report: `--port` follows ws-bench's own sockets too (they
/// read the 101), and churn counts one report per connection, the server's.
fn remote_port(line: &str) -> Option<u16> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v.get("side")?.as_str()? != "server" {
        return None;
    }
    v.get("remote")?.as_str()?.rsplit(':').next()?.parse().ok()
}

/// Pairs each report (arrival ns, client port), in arrival order, with the
/// client's EOF for that port (client ports are reused within a run, so per
/// port in order) and returns the gaps in µs. The client sees EOF within
/// microseconds of the server's close, so this is close-to-report latency.
fn close_to_report_us(eof_log: &str, reports: &[(u64, u16)]) -> Vec<f64> {
    let mut by_port: HashMap<u16, Vec<u64>> = HashMap::new();
    for line in eof_log.lines() {
        let mut it = line.split_whitespace();
        if let (Some(Ok(port)), Some(Ok(ns))) =
            (it.next().map(str::parse), it.next().map(str::parse))
        {
            by_port.entry(port).or_default().push(ns);
        }
    }
    let mut queues: HashMap<u16, VecDeque<u64>> = by_port
        .into_iter()
        .map(|(p, mut v)| {
            v.sort_unstable();
            (p, v.into())
        })
        .collect();
    let mut sorted = reports.to_vec();
    sorted.sort_unstable();
    sorted
        .iter()
        .filter_map(|(at, port)| {
            let eof = queues.get_mut(port)?.pop_front()?;
            Some(at.saturating_sub(eof) as f64 / 1000.0)
        })
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i.min(sorted.len() - 1)).copied()
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`, `RssAnon` ...);
/// None when the process is gone or the kernel has no such field.
fn status_kib(pid: u32, key: &str) -> Option<f64> {
    parse_status_kib(
        &std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
        key,
    )
}

fn parse_status_kib(status: &str, key: &str) -> Option<f64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Median over rounds of `f` where it has a value; None where it has none.
fn med<R>(rounds: &[R], f: impl Fn(&R) -> Option<f64>) -> Option<f64> {
    let v: Vec<f64> = rounds.iter().filter_map(f).collect();
    (!v.is_empty()).then(|| median(v))
}

fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().collect();
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5).unwrap_or(0.0)
}

/// CLOCK_MONOTONIC in ns, the clock ws-bench's EOF log uses.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn command_text(cmd: &str, args: &[&str]) -> String {
    process::output(Command::new(cmd).args(args))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// "AMD EPYC 7B13, 2 CPUs, 23.5 GiB".
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split(':').nth(1))
        .map(str::trim)
        .unwrap_or("unknown CPU");
    let cpus = thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_kib: f64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0.0);
    format!("{model}, {cpus} CPUs, {:.1} GiB", mem_kib / 1024.0 / 1024.0)
}

/// Benchmarks on a busy machine measure the machine: say so up front.
fn warn_if_busy() {
    let load: f64 = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    if load > 0.5 {
        println!(
            "bench: WARNING: load average is {load:.2}; results are only comparable on an idle machine"
        );
    }
}

/// The host's 1-minute load average, said next to measurements that other
/// work on the host skews (in-kernel ns, emulated CPUs).
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_are_read_by_their_whole_name() {
        let status = "Name:\tws\nVmHWM:\t   2048 kB\nRssAnon:\t  512 kB\nVmRSS:\t 1024 kB\n";
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(2048.0));
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(1024.0));
        // "Rss" is not the start of "RssAnon".
        assert_eq!(parse_status_kib(status, "Rss"), None);
        assert_eq!(parse_status_kib(status, "Name"), None);
        assert!(status_kib(std::process::id(), "VmHWM").is_some_and(|k| k > 0.0));
    }

    #[test]
    fn close_to_report_pairs_reused_ports_in_order() {
        let eofs = "40000 1000000\n40001 1500000\n40000 9000000\n";
        // Reports arrive 0.2 ms after each EOF; port 40000 was used twice.
        let reports = [(1_200_000, 40000), (1_700_000, 40001), (9_200_000, 40000)];
        assert_eq!(
            close_to_report_us(eofs, &reports),
            vec![200.0, 200.0, 200.0]
        );
    }

    #[test]
    fn reports_without_an_eof_are_left_out_not_invented() {
        let reports = [(5, 1), (6, 2)];
        assert!(close_to_report_us("1 4\nbad line\n", &reports) == vec![0.001]);
    }

    #[test]
    fn remote_port_reads_v4_and_v6() {
        assert_eq!(
            remote_port(r#"{"side":"server","remote":"127.0.0.1:43462"}"#),
            Some(43462)
        );
        assert_eq!(
            remote_port(r#"{"side":"server","remote":"[::1]:8080"}"#),
            Some(8080)
        );
        assert_eq!(remote_port("not json"), None);
    }

    #[test]
    fn remote_port_skips_the_client_side() {
        // ws-bench's own socket, followed with `--port` too: its remote
        // port is the server's, and no connection's report.
        assert_eq!(
            remote_port(r#"{"side":"client","remote":"127.0.0.1:8080"}"#),
            None
        );
        assert_eq!(remote_port(r#"{"remote":"127.0.0.1:43462"}"#), None);
    }
}
