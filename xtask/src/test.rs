//! `cargo xtask test`: the one command that tests everything, run by CI on a
//! fresh clone (`.ci/run`). Phases run in order and stop at the first failure;
//! a summary with each phase's time is printed either way.

use crate::kernels::Arch;
use crate::{paths, process, setup, vm};
use anyhow::{Result, anyhow, bail};
use clap::Args;
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct TestArgs {
    /// Skip the kernel matrix (QEMU). Says so loudly: the run is then incomplete.
    #[arg(long)]
    pub no_vm: bool,
    /// Boot the kernel matrix's VMs after the host tests instead of beside
    /// them (the order before they overlapped: to compare the two, or on a
    /// machine too small for both)
    #[arg(long, conflicts_with = "no_vm")]
    pub vms_after_tests: bool,
    #[command(flatten)]
    pub matrix: vm::MatrixOpts,
}

enum Outcome {
    Passed(Duration),
    Failed(Duration, anyhow::Error),
    Skipped(&'static str),
    NotRun,
}

pub fn run(args: &TestArgs) -> Result<()> {
    // Tests that cannot run fail rather than skip, so check before any phase.
    setup::require_root(
        "cargo xtask test",
        "the integration tests load BPF programs with CAP_BPF/CAP_PERFMON, and setup installs Debian packages",
    )?;
    let started = Instant::now();
    let vm_args = vm::VmArgs {
        matrix: args.matrix.clone(),
        ..Default::default()
    };
    let mut run = Run::default();
    run.phase("setup", || setup::run(setup::For::Test));
    // Formatting first: it takes a second and needs no build.
    run.phase("fmt", || cargo(&["fmt", "--all", "--check"]));
    // The binaries and every test binary in one cargo run: wstrace,
    // ws-scenario and ws-bench come out of it as they are tested, packaged
    // and booted in the VMs. Built apart (`cargo build`, then `cargo test`),
    // the dev-dependencies' and the bench lab's features unify differently
    // in the second run and wstrace was compiled twice (about 2 of the 6.8
    // build minutes of a clean clone, measured at a869a73).
    run.phase("build", build);
    if args.no_vm || args.vms_after_tests {
        host_phases(&mut run);
        run.phase("cargo test", cargo_test);
        if args.vms_after_tests {
            run.phase("kernel matrix", || vm::run(&vm_args));
        }
        package_phases(&mut run);
    } else {
        // The kernel matrix's VMs boot as soon as the host's binaries are
        // built: the amd64 VMs beside clippy and the arm64 build, the arm64
        // ones once built; one VM at a time until the host tests are done
        // (an emulated guest starved of CPU misses its own timeouts; the
        // host tests spend much of their time waiting on servers, reports
        // and timers), then all `--jobs`. Neither sees the other (the VMs
        // have their own kernels). The matrix's host row, which shares this
        // kernel with the tests, runs after them, beside the last VMs, as
        // do the packages.
        let prepared = run.phase_value("kernels, initramfs", || {
            vm::prepare_first(&vm_args, Some(Arch::host()))
        });
        let prepared = prepared.as_ref();
        if let Some(prepared) = prepared {
            prepared.allow_jobs(1);
        }
        let (vms, host) = std::thread::scope(|scope| {
            let vms = prepared.map(|p| scope.spawn(|| process::timed(|| p.boot())));
            host_phases(&mut run);
            if let Some(prepared) = prepared {
                run.phase("initramfs arm64", || prepared.add_rest(&vm_args));
            }
            run.phase("cargo test", cargo_test);
            if let Some(prepared) = prepared {
                if run.failed {
                    // The run has failed: the VMs running finish, no more
                    // start (as phases after a failure do not run), and
                    // none waits for the arm64 ones.
                    prepared.cancel();
                }
                prepared.allow_jobs(usize::MAX);
            }
            let host = prepared.and_then(|p| run.phase_value("host row", || p.host_row()));
            package_phases(&mut run);
            (vms.map(|v| v.join()), host)
        });
        let vm_runs = match vms {
            None => None,
            Some(Ok((Ok(_), _))) if run.failed => {
                run.record(
                    "  (VMs, alongside)",
                    Outcome::Skipped("stopped: an earlier phase failed"),
                );
                None
            }
            Some(Ok((Ok(runs), took))) => {
                run.record("  (VMs, alongside)", Outcome::Passed(took));
                Some(runs)
            }
            Some(Ok((Err(err), took))) => {
                run.record("  (VMs, alongside)", Outcome::Failed(took, err));
                None
            }
            Some(Err(_)) => {
                run.record(
                    "  (VMs, alongside)",
                    Outcome::Failed(Duration::ZERO, anyhow!("the VM thread panicked")),
                );
                None
            }
        };
        match (prepared, vm_runs) {
            (Some(prepared), Some(runs)) => {
                run.phase("kernel matrix", || prepared.finish(&vm_args, runs, host));
            }
            _ => run.record("kernel matrix", Outcome::NotRun),
        }
    }
    if args.no_vm {
        banner(
            "KERNEL MATRIX SKIPPED (--no-vm): kprobe/fentry probe sets, kernels 5.10/6.1/6.12 and arm64 are NOT tested",
        );
        run.record("kernel matrix", Outcome::Skipped("--no-vm"));
    }

    println!("\n==> test summary");
    for (name, outcome) in &run.outcomes {
        match outcome {
            Outcome::Passed(t) => println!("  {name:<20} ok       {:>9}", process::secs(*t)),
            Outcome::Failed(t, err) => {
                println!("  {name:<20} FAILED   {:>9}  {err:#}", process::secs(*t))
            }
            Outcome::Skipped(why) => println!("  {name:<20} SKIPPED  {:>9}  ({why})", "-"),
            Outcome::NotRun => println!("  {name:<20} not run"),
        }
    }
    // Wall time: the VMs overlap the host tests, so phases do not add up.
    println!(
        "  {:<20}          {:>9}",
        "total (wall)",
        process::secs(started.elapsed())
    );
    if run.failed {
        bail!("tests failed (see the summary above)");
    }
    if args.no_vm {
        banner("tests passed, but WITHOUT the kernel matrix (--no-vm)");
    }
    Ok(())
}

/// Lints and the arm64 binaries: what the host builds after its own
/// binaries, beside the first VMs.
fn host_phases(run: &mut Run) {
    // Every host crate, every target (tests, benches, the bench lab),
    // warnings as errors. The eBPF crate only builds for the bpf target
    // (its object is built, not linted, by wstrace's build script, which
    // AYA_BUILD_SKIP turns off here).
    run.phase("clippy", clippy);
    // The arm64 binaries, cross-compiled (eBPF object for
    // bpf_target_arch "aarch64"): built from a clean clone like the rest.
    run.phase("build arm64", || crate::build::AARCH64.build());
}

/// The .debs, of the binaries the tests ran, as built above (not rebuilt
/// with the features of a plain `cargo build`).
fn package_phases(run: &mut Run) {
    run.phase("package", || crate::deb::package(None).map(|_| ()));
    run.phase("package arm64", || {
        crate::deb::run(Some(crate::build::AARCH64.triple)).map(|_| ())
    });
}

/// Phases in order; after the first failure the rest are recorded as not run.
#[derive(Default)]
struct Run {
    outcomes: Vec<(&'static str, Outcome)>,
    failed: bool,
}

impl Run {
    fn phase(&mut self, name: &'static str, phase: impl FnOnce() -> Result<()>) {
        self.phase_value(name, phase);
    }

    fn phase_value<T>(
        &mut self,
        name: &'static str,
        phase: impl FnOnce() -> Result<T>,
    ) -> Option<T> {
        if self.failed {
            self.outcomes.push((name, Outcome::NotRun));
            return None;
        }
        println!("\n==> test: {name}");
        let (result, took) = process::timed(phase);
        match result {
            Ok(value) => {
                self.outcomes.push((name, Outcome::Passed(took)));
                Some(value)
            }
            Err(err) => {
                self.failed = true;
                self.outcomes.push((name, Outcome::Failed(took, err)));
                None
            }
        }
    }

    fn record(&mut self, name: &'static str, outcome: Outcome) {
        if matches!(outcome, Outcome::Failed(..)) {
            self.failed = true;
        }
        self.outcomes.push((name, outcome));
    }
}

/// What `cargo test` builds and runs in release: every package but xtask
/// (a debug build: `cargo xtask` is `cargo run`, so its dependencies are
/// built already) and the eBPF crate (bpf target only: wstrace's build
/// script builds it).
const RELEASE_PACKAGES: [&str; 5] = [
    "--workspace",
    "--exclude",
    "xtask",
    "--exclude",
    "wstrace-ebpf",
];

/// The build phase: binaries and test binaries. `--bins --tests` selects
/// the same targets as `cargo test`, so features unify as they will there
/// and the test phase compiles nothing; unlike `cargo test --no-run` it
/// requests the binaries themselves, so cargo writes
/// `target/release/wstrace.d`, by which the scenario tests check that the
/// binary is newer than its sources.
fn build() -> Result<()> {
    let mut release = vec!["build", "--release", "--bins", "--tests"];
    release.extend(RELEASE_PACKAGES);
    cargo(&release)?;
    cargo(&["test", "-p", "xtask", "--no-run"])
}

/// Unit tests and the host integration tests (they need root: CI runs as
/// root): the release packages, then xtask's own tests in its debug build.
fn cargo_test() -> Result<()> {
    let mut release = vec!["test", "--release"];
    release.extend(RELEASE_PACKAGES);
    cargo(&release)?;
    cargo(&["test", "-p", "xtask"])
}

fn cargo(args: &[&str]) -> Result<()> {
    // The cargo that runs xtask (CARGO is set by `cargo run`), so the same toolchain.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    process::run(
        Command::new(cargo)
            .args(args)
            .current_dir(paths::repo_root()),
    )
}

fn clippy() -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    process::run(
        Command::new(cargo)
            .args([
                "clippy",
                "--workspace",
                "--exclude",
                "wstrace-ebpf",
                "--all-targets",
            ])
            .args(["--", "-D", "warnings"])
            .env("AYA_BUILD_SKIP", "1")
            .current_dir(paths::repo_root()),
    )
}

fn banner(text: &str) {
    let rule = "!".repeat(text.len() + 8);
    println!("\n{rule}\n!!! {text} !!!\n{rule}");
}
