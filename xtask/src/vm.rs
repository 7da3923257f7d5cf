//! `cargo xtask vm`: the kernel matrix.
//!
//! Boots each Debian cloud kernel (5.10, 6.1, 6.12, for amd64 and arm64:
//! they have kprobes and fentry, which this machine's own kernel lacks)
//! once in QEMU, runs `ws-scenario check` for every probe set in that one
//! boot, and fails naming kernel, probe set and scenario for every FAIL or
//! missing result. arm64 VMs run the arm64 build (`cargo xtask build
//! --target aarch64-unknown-linux-gnu`) under qemu-system-aarch64.

use crate::initramfs::{self, Step};
use crate::kernels::Arch;
use crate::matrix::{self, KernelRun, MatrixResults, StepRun};
use crate::{gotls, kernels, paths, process, qemu, setup, table};
use anyhow::{Context as _, Result, bail};
use clap::Args;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The probe sets `ws-scenario check --probe` is run with, in this order.
const PROBE_SETS: &[&str] = &["fentry", "kprobe", "tracepoint", "auto"];

/// Options shared by `vm` and `test`.
#[derive(Args, Clone, Default)]
pub struct MatrixOpts {
    /// Only boot this kernel (repeatable): 5.10, 6.1, 6.12, 5.10-arm64, 6.1-arm64, 6.12-arm64, a suite, or an architecture (amd64, arm64) [default: all]
    #[arg(long = "kernel", value_name = "VERSION")]
    pub kernels: Vec<String>,
    /// VMs run at once [default: number of CPUs, at most the number of kernels]
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
    /// Seconds one command may run inside a VM before it is killed
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub step_timeout: u64,
    /// Seconds one VM may run before QEMU is killed [default: all steps' timeouts + 120]
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Resolve and download the kernels again even when cached
    #[arg(long)]
    pub refresh_kernels: bool,
    /// Echo every VM's serial console (prefixed by its kernel)
    #[arg(long, short)]
    pub verbose: bool,
}

#[derive(Args, Clone, Default)]
pub struct VmArgs {
    #[command(flatten)]
    pub matrix: MatrixOpts,
    /// Run this shell command in each VM instead of the scenarios (busybox sh)
    #[arg(long, value_name = "SHELL")]
    pub cmd: Option<String>,
    /// Put this binary in the amd64 VMs' /bin (repeatable) [default: target/release/wstrace and target/release/ws-scenario; arm64 VMs: target/aarch64-unknown-linux-gnu/cross/...]
    #[arg(long = "bin", value_name = "PATH")]
    pub bins: Vec<PathBuf>,
    /// Write the kernel × probe-set table into FILE between the kernel-matrix markers
    /// (printed instead when FILE has none)
    #[arg(long, value_name = "FILE")]
    pub write_table: Option<PathBuf>,
    /// With --write-table: take the results of the last run (target/vm-results.json), boot nothing
    #[arg(long, requires = "write_table")]
    pub from_results: bool,
}

pub fn results_path() -> PathBuf {
    paths::target_dir().join("vm-results.json")
}

pub fn run(args: &VmArgs) -> Result<()> {
    if args.from_results {
        let path = results_path();
        let json = std::fs::read(&path)
            .with_context(|| format!("reading {}: run `cargo xtask vm` first", path.display()))?;
        let results: MatrixResults = serde_json::from_slice(&json)
            .with_context(|| format!("{} is not a results file", path.display()))?;
        return write_table(args, &results);
    }
    let prepared = prepare(args)?;
    let runs = prepared.boot()?;
    prepared.finish(args, runs, None)
}

/// A matrix ready to boot: kernels fetched, each architecture's initramfs
/// built (so the binaries have been read: a build may replace them now).
/// `cargo xtask test` prepares this machine's architecture first and boots
/// its VMs while the other architectures' binaries are still being built
/// ([`prepare_first`], [`Prepared::add_rest`]).
pub struct Prepared {
    start: Instant,
    steps: Vec<Step>,
    /// Every kernel of the matrix, in its order (the results' order).
    labels: Vec<String>,
    /// VMs not started yet, each with its architecture's initramfs; the
    /// slowest first.
    queue: Mutex<VecDeque<(kernels::Kernel, PathBuf)>>,
    /// Architectures still to be prepared ([`Prepared::add_rest`]): while
    /// there are, a slot with nothing to boot waits instead of ending.
    rest: Mutex<Vec<Arch>>,
    vm_dir: PathBuf,
    timeout: Duration,
    jobs: usize,
    /// How many of the `jobs` may boot a VM now: `cargo xtask test` boots
    /// one VM while it builds and runs the host tests, and all of them once
    /// those are done ([`Prepared::allow_jobs`]).
    allowed: AtomicUsize,
    /// No more VMs are started (the run has already failed).
    cancelled: AtomicBool,
    verbose: bool,
    scenarios: bool,
    /// The host build of the Go crypto/tls scenarios' program (scenario runs only).
    host_go: Option<PathBuf>,
}

/// Checks, fetches the kernels and builds the initramfs: everything before
/// the first boot.
pub fn prepare(args: &VmArgs) -> Result<Prepared> {
    prepare_first(args, None)
}

/// As [`prepare`], for the kernels of architecture `first` only when given
/// (the others, which may lack their binaries yet, come with
/// [`Prepared::add_rest`], and [`Prepared::boot`] waits for them).
pub fn prepare_first(args: &VmArgs, first: Option<Arch>) -> Result<Prepared> {
    if args.cmd.is_none() {
        // The host row, run last, loads BPF: fail now, not after the VMs.
        setup::require_root(
            "cargo xtask vm",
            "its host row runs `ws-scenario check`, which loads BPF programs",
        )?;
    }
    let start = Instant::now();
    let steps = plan_steps(args.cmd.as_deref());
    let specs = select_kernels(&args.matrix.kernels)?;
    let mut arches: Vec<Arch> = specs.iter().map(|s| s.arch).collect();
    arches.sort_by_key(|a| a.debian());
    arches.dedup();
    let (now, rest): (Vec<Arch>, Vec<Arch>) =
        arches.iter().partition(|&&a| first.is_none_or(|f| f == a));
    let mut host_go = None;
    let mut queue = VecDeque::new();
    for (arch, items, go) in stage(args, &steps, &specs, &now)? {
        if arch == Arch::host() {
            host_go = go;
        }
        // The slowest VMs first (arm64 is emulated instruction by
        // instruction with no help from the host's x86 CPU), so that they
        // do not run alone at the end while the other job slots idle.
        if arch == Arch::host() {
            queue.extend(items);
        } else {
            for item in items.into_iter().rev() {
                queue.push_front(item);
            }
        }
    }
    // The host row runs the same Go scenarios with the host's build.
    if args.cmd.is_none() && host_go.is_none() {
        host_go = Some(gotls::build(Arch::host())?[0].clone());
    }
    let timeout = Duration::from_secs(
        args.matrix
            .timeout
            .unwrap_or(args.matrix.step_timeout * steps.len() as u64 + 120),
    );
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let jobs = args
        .matrix
        .jobs
        .unwrap_or(cpus)
        .clamp(1, specs.len().max(1));
    Ok(Prepared {
        start,
        steps,
        labels: specs.iter().map(|s| s.label.to_string()).collect(),
        queue: Mutex::new(queue),
        rest: Mutex::new(rest),
        vm_dir: paths::target_dir().join("vm"),
        timeout,
        jobs,
        allowed: AtomicUsize::new(jobs),
        cancelled: AtomicBool::new(false),
        verbose: args.matrix.verbose,
        scenarios: args.cmd.is_none(),
        host_go,
    })
}

/// One architecture's kernels with its initramfs, and its build of the Go
/// scenarios' program (scenario runs).
type Staged = (Arch, Vec<(kernels::Kernel, PathBuf)>, Option<PathBuf>);

/// Binaries, kernels and initramfs of the kernels in `specs` of `arches`.
fn stage(
    args: &VmArgs,
    steps: &[Step],
    specs: &[&'static kernels::KernelSpec],
    arches: &[Arch],
) -> Result<Vec<Staged>> {
    let mut out = Vec::new();
    for &arch in arches {
        let mut bins = binaries_for(args, arch)?;
        // The Go crypto/tls scenarios' program, static, per architecture
        // (in --cmd VMs too: `ws-scenario check --go-tls /bin/ws-go-tls`).
        bins.extend(gotls::build(arch)?);
        qemu::qemu_binary(arch)?;
        // ws-scenario finds the stripped build beside it.
        let go = bins
            .iter()
            .find(|b| b.file_name().is_some_and(|n| n == gotls::PROGRAM))
            .cloned()
            .filter(|_| args.cmd.is_none());
        let mine: Vec<&'static kernels::KernelSpec> =
            specs.iter().copied().filter(|s| s.arch == arch).collect();
        let (fetched, took) =
            process::timed(|| kernels::fetch_all(&mine, args.matrix.refresh_kernels));
        let fetched = fetched?;
        for (k, cached) in &fetched {
            let how = if *cached { "cached" } else { "downloaded" };
            println!(
                "vm: kernel {}: {} {} ({how})",
                k.label, k.package, k.version
            );
        }
        println!(
            "vm: {} kernels ready in {}",
            arch.debian(),
            process::secs(took)
        );

        let vm_dir = paths::target_dir().join("vm");
        // amd64 keeps the name it had before arm64 VMs existed.
        let initrd = match arch {
            Arch::Amd64 => vm_dir.join("initrd.gz"),
            arch => vm_dir.join(format!("initrd-{}.gz", arch.debian())),
        };
        let (built, took) = process::timed(|| {
            initramfs::build(&initrd, arch, &bins, steps, args.matrix.step_timeout)
        });
        let built =
            built.with_context(|| format!("building the {} VMs' initramfs", arch.debian()))?;
        println!(
            "vm: initramfs {}: {} binaries, {} libraries, busybox; {:.1} MB -> {:.1} MB in {}",
            initrd.display(),
            built.binaries,
            built.libraries,
            built.uncompressed_bytes as f64 / 1e6,
            built.compressed_bytes as f64 / 1e6,
            process::secs(took)
        );
        let items = fetched
            .into_iter()
            .map(|(k, _)| (k, initrd.clone()))
            .collect();
        out.push((arch, items, go));
    }
    Ok(out)
}

impl Prepared {
    /// VMs that may run at once: at most `--jobs` (or the CPUs).
    pub fn allow_jobs(&self, n: usize) {
        self.allowed.store(n.clamp(1, self.jobs), Ordering::SeqCst);
    }

    /// Starts no more VMs (those running finish): the run has failed.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }

    /// Fetches the kernels and builds the initramfs of the architectures
    /// [`prepare_first`] left out (their binaries are built now), and
    /// queues their VMs ahead of those waiting: they are the slowest.
    pub fn add_rest(&self, args: &VmArgs) -> Result<()> {
        let rest: Vec<Arch> = self.rest.lock().map(|r| r.clone()).unwrap_or_default();
        let specs = select_kernels(&args.matrix.kernels)?;
        let staged = stage(args, &self.steps, &specs, &rest);
        // Whatever happened, nothing more will come: idle slots may end.
        if let Ok(mut r) = self.rest.lock() {
            r.clear();
        }
        let staged = staged?;
        if let Ok(mut queue) = self.queue.lock() {
            for (_, items, _) in staged {
                for item in items.into_iter().rev() {
                    queue.push_front(item);
                }
            }
        }
        Ok(())
    }

    /// Whether [`Prepared::add_rest`] is still to come.
    fn more_to_come(&self) -> bool {
        self.rest.lock().map(|r| !r.is_empty()).unwrap_or(false)
    }

    /// Boots every VM (`jobs` at a time, or fewer while [`allow_jobs`] says
    /// so) and collects their runs.
    ///
    /// [`allow_jobs`]: Prepared::allow_jobs
    pub fn boot(&self) -> Result<Vec<KernelRun>> {
        let allowed = self.allowed.load(Ordering::SeqCst);
        let now = if allowed < self.jobs {
            format!(" ({allowed} until the host tests end)")
        } else {
            String::new()
        };
        println!(
            "vm: booting {} kernel(s) ({} at a time{now}, TCG, timeout {} s each)",
            self.labels.len(),
            self.jobs,
            self.timeout.as_secs()
        );
        boot_all(self)
    }

    /// The scenario steps on this machine's own kernel (the matrix's host
    /// row): its kernel is the locked-down kind (tracepoints only here), the
    /// case the VMs cannot show.
    pub fn host_row(&self) -> Result<KernelRun> {
        host_run(&self.steps, self.host_go.as_deref())
    }

    /// The host row (for the scenarios; `host` when run already), then
    /// results file, table and verdict.
    pub fn finish(
        &self,
        args: &VmArgs,
        mut runs: Vec<KernelRun>,
        host: Option<KernelRun>,
    ) -> Result<()> {
        if self.scenarios {
            let host = match host {
                Some(host) => host,
                None => self.host_row()?,
            };
            runs.insert(0, host);
        }
        let results = MatrixResults {
            mode: if self.scenarios {
                "scenarios"
            } else {
                "command"
            }
            .to_string(),
            generated_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            kernels: runs,
        };
        let path = results_path();
        std::fs::write(&path, serde_json::to_string_pretty(&results)?)
            .with_context(|| format!("writing {}", path.display()))?;

        if !self.scenarios {
            print_command_output(&results);
        }
        println!("\n{}", table::markdown(&results));
        print_where_time_went(&results);
        println!(
            "vm: results in {}; total {}",
            path.display(),
            process::secs(self.start.elapsed())
        );
        write_table(args, &results)?;

        let failures = matrix::failures(&results);
        if !failures.is_empty() {
            print_failed_output(&results, self.scenarios);
            eprintln!("\nvm: KERNEL MATRIX FAILED:");
            for f in &failures {
                eprintln!("  - {f}");
            }
            bail!(
                "{} failure(s) in the kernel matrix (details above and in {})",
                failures.len(),
                path.display()
            );
        }
        println!("vm: kernel matrix passed");
        Ok(())
    }
}

/// The scenario steps run on this machine's own kernel, as a row of the
/// table labelled "host" (`run` has checked for root).
fn host_run(steps: &[Step], go_tls: Option<&Path>) -> Result<KernelRun> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .ok();
    let bin = paths::target_dir().join("release");
    let started = Instant::now();
    let mut runs = Vec::new();
    for step in steps {
        let t = Instant::now();
        let mut cmd = std::process::Command::new(bin.join("ws-scenario"));
        cmd.args(["check", "--wstrace"])
            .arg(bin.join("wstrace"))
            .args(["--probe", &step.name]);
        if let Some(go) = go_tls {
            cmd.arg("--go-tls").arg(go);
        }
        let out = process::capture(&mut cmd).context("running ws-scenario on the host")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut output: Vec<String> = Vec::new();
        let mut scenarios = Vec::new();
        for line in stdout.lines() {
            match matrix::parse_scenario(line) {
                Some(s) => scenarios.push(s),
                None => output.push(line.to_string()),
            }
        }
        output.extend(
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .map(str::to_string),
        );
        let code = out.status.code().unwrap_or(-1);
        println!(
            "vm: [host] --probe {}: exit {code} in {:.1} s",
            step.name,
            t.elapsed().as_secs_f64()
        );
        runs.push(StepRun {
            name: step.name.clone(),
            exit_status: Some(code),
            seconds: Some(t.elapsed().as_secs_f64()),
            scenarios,
            output,
        });
    }
    Ok(KernelRun {
        label: "host".into(),
        suite: "this machine".into(),
        package: "running kernel".into(),
        version: String::new(),
        release,
        boot_seconds: Some(0.0),
        wall_seconds: started.elapsed().as_secs_f64(),
        timed_out: false,
        completed: true,
        planned_steps: steps.iter().map(|s| s.name.clone()).collect(),
        // Whatever this machine lacks is reported as "not available".
        unavailable: Vec::new(),
        steps: runs,
        notes: Vec::new(),
        kernel_messages: Vec::new(),
        log: PathBuf::from("(host: no serial log)"),
    })
}

/// One step per probe set, or the user's command. `ws-scenario check` gives
/// wstrace a symbolization budget an emulated guest on a loaded host needs
/// (its SYMBOLIZE_TIMEOUT).
fn plan_steps(cmd: Option<&str>) -> Vec<Step> {
    match cmd {
        Some(cmd) => vec![Step {
            name: "cmd".into(),
            script: format!("{cmd}\n"),
        }],
        None => PROBE_SETS
            .iter()
            .map(|probe| Step {
                name: probe.to_string(),
                script: format!(
                    // An emulated guest verifies the programs in software: on a
                    // busy 2-CPU host the tracepoint set's start-up neared the
                    // checker's default 60 s (seen with VMs beside the host tests).
                    "/bin/ws-scenario check --wstrace /bin/wstrace --probe {probe} --ready-timeout 180 --go-tls /bin/{}\n",
                    gotls::PROGRAM
                ),
            })
            .collect(),
    }
}

/// Binaries for the /bin of `arch`'s VMs. Explicit ones (amd64 only) must
/// exist; the defaults must exist for the scenarios, and are taken where
/// present for --cmd.
fn binaries_for(args: &VmArgs, arch: Arch) -> Result<Vec<PathBuf>> {
    if !args.bins.is_empty() && arch == Arch::host() {
        for bin in &args.bins {
            if !bin.is_file() {
                bail!("--bin {}: no such file", bin.display());
            }
        }
        return Ok(args.bins.clone());
    }
    let (release, build) = match arch {
        _ if arch == Arch::host() => (
            paths::target_dir().join("release"),
            "cargo build --release".to_string(),
        ),
        Arch::Arm64 => (
            crate::build::AARCH64.release_dir(),
            format!(
                "cargo xtask build --target {}",
                crate::build::AARCH64.triple
            ),
        ),
        Arch::Amd64 => bail!("amd64 VMs need an amd64 build: run the matrix on amd64"),
    };
    let defaults = [release.join("wstrace"), release.join("ws-scenario")];
    let (present, missing): (Vec<PathBuf>, Vec<PathBuf>) =
        defaults.into_iter().partition(|p| p.is_file());
    if !missing.is_empty() {
        let names: Vec<String> = missing.iter().map(|p| p.display().to_string()).collect();
        if args.cmd.is_none() {
            bail!(
                "{} missing: build them first with `{build}`",
                names.join(" and ")
            );
        }
        println!("vm: note: {} not built, not in the VM", names.join(" and "));
    }
    Ok(present)
}

fn select_kernels(wanted: &[String]) -> Result<Vec<&'static kernels::KernelSpec>> {
    if wanted.is_empty() {
        return Ok(kernels::MATRIX.iter().collect());
    }
    let mut out: Vec<&'static kernels::KernelSpec> = Vec::new();
    for w in wanted {
        let matches: Vec<&'static kernels::KernelSpec> = kernels::MATRIX
            .iter()
            .filter(|s| s.label == w || s.suite == w || s.arch.debian() == w)
            .collect();
        if matches.is_empty() {
            let known: Vec<&str> = kernels::MATRIX.iter().map(|s| s.label).collect();
            bail!(
                "unknown kernel {w:?}: choose from {}, a suite, amd64 or arm64",
                known.join(", ")
            );
        }
        for spec in matches {
            if !out.iter().any(|o| o.label == spec.label) {
                out.push(spec);
            }
        }
    }
    // In the matrix's order, whatever the order asked.
    out.sort_by_key(|s| kernels::MATRIX.iter().position(|m| m.label == s.label));
    Ok(out)
}

/// Boots every queued kernel, `jobs` at a time, with its architecture's
/// initramfs (waiting for kernels [`Prepared::add_rest`] is still to
/// queue); results in the matrix's order.
fn boot_all(p: &Prepared) -> Result<Vec<KernelRun>> {
    let done: Mutex<Vec<KernelRun>> = Mutex::new(Vec::new());
    let errors: Mutex<Vec<anyhow::Error>> = Mutex::new(Vec::new());
    let planned: Vec<String> = p.steps.iter().map(|s| s.name.clone()).collect();
    std::thread::scope(|scope| {
        for slot in 0..p.jobs {
            let (done, errors, planned) = (&done, &errors, &planned);
            scope.spawn(move || {
                loop {
                    if p.cancelled.load(Ordering::SeqCst) {
                        break;
                    }
                    // A slot past what is allowed waits (the host is
                    // building or testing), as does one with nothing to
                    // boot while more kernels are to come; either stops
                    // once the queue has run dry for good.
                    let next = if slot >= p.allowed.load(Ordering::SeqCst) {
                        None
                    } else {
                        p.queue.lock().ok().and_then(|mut q| q.pop_front())
                    };
                    let Some((kernel, initrd)) = next else {
                        let empty = p.queue.lock().map(|q| q.is_empty()).unwrap_or(true);
                        if empty && !p.more_to_come() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(200));
                        continue;
                    };
                    match boot_with_retry(p, &kernel, &initrd, planned) {
                        Ok(run) => {
                            println!(
                                "vm: [{}] {} (at {})",
                                kernel.label,
                                one_line(&run),
                                process::secs(p.start.elapsed())
                            );
                            if let Ok(mut done) = done.lock() {
                                done.push(run);
                            }
                        }
                        Err(err) => {
                            if let Ok(mut errors) = errors.lock() {
                                errors
                                    .push(err.context(format!("booting kernel {}", kernel.label)));
                            }
                        }
                    }
                }
            });
        }
    });
    let errors = errors.into_inner().unwrap_or_default();
    if let Some(first) = errors.into_iter().next() {
        return Err(first);
    }
    let mut runs = done.into_inner().unwrap_or_default();
    runs.sort_by_key(|r| p.labels.iter().position(|l| *l == r.label));
    Ok(runs)
}

/// Boots attempts before a kernel that dies before /init runs counts as failed.
const BOOT_ATTEMPTS: usize = 3;

/// Boots `kernel`, again if it died before /init started. Nothing of ours
/// has run by then, so such a death is the emulator's, not a result (the
/// known one, TCG mis-emulating `cmpxchg16b`, is avoided in `qemu::boot`;
/// this is the backstop). Every retry is kept as a note, so a flake stays
/// visible in the output. A crash after /init started is never retried.
fn boot_with_retry(
    p: &Prepared,
    kernel: &kernels::Kernel,
    initrd: &Path,
    planned: &[String],
) -> Result<KernelRun> {
    let mut retries = Vec::new();
    for attempt in 1..=BOOT_ATTEMPTS {
        let mut run = boot_one(p, kernel, initrd, planned)?;
        let died_before_init = run.boot_seconds.is_none() && !run.timed_out;
        if !died_before_init || attempt == BOOT_ATTEMPTS {
            run.notes.splice(0..0, retries);
            return Ok(run);
        }
        let serial = std::fs::read_to_string(&run.log).unwrap_or_default();
        let why = serial
            .lines()
            .find(|l| l.contains("Oops") || l.contains("Kernel panic"))
            .map(|l| l.trim().to_string())
            .unwrap_or_else(|| "no /init output".into());
        println!(
            "vm: [{}] boot {attempt} died before /init ({why}); booting again",
            kernel.label
        );
        retries.push(format!("boot {attempt} died before /init: {why}"));
    }
    anyhow::bail!(
        "kernel {} did not boot in {BOOT_ATTEMPTS} attempts",
        kernel.label
    )
}

fn boot_one(
    p: &Prepared,
    kernel: &kernels::Kernel,
    initrd: &Path,
    planned: &[String],
) -> Result<KernelRun> {
    let log = p.vm_dir.join(format!("serial-{}.log", kernel.label));
    let outcome = qemu::boot(&qemu::Boot {
        arch: kernel.arch,
        vmlinuz: &kernel.vmlinuz,
        initrd,
        timeout: p.timeout,
        log: log.clone(),
        echo_prefix: p.verbose.then(|| format!("[{}] ", kernel.label)),
    })?;
    let parsed = matrix::parse_serial(&outcome.serial);
    let mut notes = parsed.notes;
    if !outcome.stderr.trim().is_empty() {
        notes.push(format!("qemu: {}", outcome.stderr.trim()));
    }
    Ok(KernelRun {
        label: kernel.label.clone(),
        suite: kernel.suite.clone(),
        package: kernel.package.clone(),
        version: kernel.version.clone(),
        release: parsed.release,
        boot_seconds: parsed.boot_seconds,
        wall_seconds: outcome.wall.as_secs_f64(),
        timed_out: outcome.timed_out,
        completed: parsed.completed,
        planned_steps: planned.to_vec(),
        unavailable: kernels::MATRIX
            .iter()
            .find(|s| s.label == kernel.label)
            .map(|s| {
                s.unavailable
                    .iter()
                    .map(|(set, why)| (set.to_string(), why.to_string()))
                    .collect()
            })
            .unwrap_or_default(),
        steps: parsed.steps,
        notes,
        kernel_messages: parsed.kernel_messages,
        log,
    })
}

/// "6.1.0-50-cloud-amd64: booted in 2.1 s, 4/4 steps in 9.3 s, 11.8 s wall"
fn one_line(run: &KernelRun) -> String {
    let boot = run
        .boot_seconds
        .map(|s| format!("booted in {s:.1} s"))
        .unwrap_or_else(|| "did not boot".into());
    let finished = run.steps.iter().filter(|s| s.exit_status.is_some()).count();
    let step_secs: f64 = run.steps.iter().filter_map(|s| s.seconds).sum();
    let mut line = format!(
        "{}: {boot}, {finished}/{} steps in {step_secs:.1} s, {:.1} s wall",
        run.release.as_deref().unwrap_or(&run.package),
        run.planned_steps.len(),
        run.wall_seconds
    );
    if run.timed_out {
        line.push_str(", TIMED OUT");
    }
    for note in &run.notes {
        line.push_str(&format!("; note: {note}"));
    }
    line
}

/// Each VM's wall time, boot and steps: where the matrix's time goes; then
/// per step what `ws-scenario check` said of its parts (servers, each
/// wstrace's start-up, the clients and reports it waited for). Per scenario
/// there is no time to give: one wstrace traces a step's scenarios together.
fn print_where_time_went(results: &MatrixResults) {
    for k in &results.kernels {
        let steps: Vec<String> = k
            .steps
            .iter()
            .map(|s| {
                let secs = s.seconds.map(|t| format!("{t:.0} s")).unwrap_or("-".into());
                format!("{} {secs}", s.name)
            })
            .collect();
        println!(
            "vm: time: [{}] {:.0} s wall, boot {}, steps: {}",
            k.label,
            k.wall_seconds,
            k.boot_seconds
                .map(|b| format!("{b:.1} s"))
                .unwrap_or("-".into()),
            steps.join(", ")
        );
        for step in &k.steps {
            for line in &step.output {
                if let Some(rest) = line.trim().strip_prefix(matrix::TIME_PREFIX) {
                    println!("vm: time: [{}] {}:{rest}", k.label, step.name);
                }
            }
        }
    }
}

fn print_command_output(results: &MatrixResults) {
    for k in &results.kernels {
        for step in &k.steps {
            let rc = step
                .exit_status
                .map(|rc| rc.to_string())
                .unwrap_or_else(|| "none".into());
            println!(
                "\n--- kernel {} ({}), exit status {rc}:",
                k.label,
                k.release.as_deref().unwrap_or("?")
            );
            for line in &step.output {
                println!("{line}");
            }
        }
    }
}

/// What failing steps printed besides their SCENARIO lines (wstrace's own
/// errors, ws-scenario's diagnostics), so a CI log shows why without the
/// serial log; plus the console's last lines for VMs that did not finish
/// (a panic, a hang).
fn print_failed_output(results: &MatrixResults, steps_too: bool) {
    const TAIL: usize = 40;
    for k in &results.kernels {
        for step in k.steps.iter().filter(|_| steps_too) {
            let failed =
                step.exit_status != Some(0) || step.scenarios.iter().any(|s| s.status == "FAIL");
            if !failed || step.output.is_empty() {
                continue;
            }
            let skip = step.output.len().saturating_sub(TAIL);
            eprintln!(
                "\n--- kernel {}, probe set {}: output (last {TAIL} lines):",
                k.title(),
                step.name
            );
            for line in &step.output[skip..] {
                eprintln!("{line}");
            }
        }
        if !k.completed {
            let serial = std::fs::read_to_string(&k.log).unwrap_or_default();
            let lines: Vec<&str> = serial.lines().collect();
            let skip = lines.len().saturating_sub(TAIL);
            eprintln!(
                "\n--- kernel {}: last {TAIL} lines of the serial console ({}):",
                k.title(),
                k.log.display()
            );
            for line in &lines[skip..] {
                eprintln!("{line}");
            }
        }
    }
}

fn write_table(args: &VmArgs, results: &MatrixResults) -> Result<()> {
    let Some(file) = &args.write_table else {
        return Ok(());
    };
    let md = table::markdown(results);
    if table::write_into(file, &md)? {
        println!("vm: kernel-matrix table written into {}", file.display());
    } else {
        println!(
            "vm: {} has no `{}` / `{}` markers; the table:\n\n{md}",
            file.display(),
            table::BEGIN,
            table::END
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(wanted: &[&str]) -> Vec<&'static str> {
        let wanted: Vec<String> = wanted.iter().map(|w| w.to_string()).collect();
        select_kernels(&wanted)
            .unwrap()
            .iter()
            .map(|s| s.label)
            .collect()
    }

    #[test]
    fn kernels_are_selected_by_label_suite_or_architecture() {
        assert_eq!(labels(&[]).len(), kernels::MATRIX.len());
        assert_eq!(labels(&["6.1"]), ["6.1"]);
        assert_eq!(labels(&["6.1-arm64"]), ["6.1-arm64"]);
        assert_eq!(labels(&["bookworm"]), ["6.1", "6.1-arm64"]);
        assert_eq!(
            labels(&["arm64"]),
            ["5.10-arm64", "6.1-arm64", "6.12-arm64"]
        );
        // Matrix order, each once.
        assert_eq!(labels(&["6.12", "5.10", "6.12"]), ["5.10", "6.12"]);
        let err = select_kernels(&["4.19".to_string()]).unwrap_err();
        assert!(err.to_string().contains("unknown kernel \"4.19\""), "{err}");
    }
}
