//! `cargo xtask test`: the one command that tests everything, run by CI on a
//! fresh clone (`.ci/run`). Phases run in order and stop at the first failure;
//! a summary with each phase's time is printed either way.

use crate::{paths, process, setup, vm};
use anyhow::{Result, bail};
use clap::Args;
use std::process::Command;
use std::time::Duration;

#[derive(Args)]
pub struct TestArgs {
    /// Skip the kernel matrix (QEMU). Says so loudly: the run is then incomplete.
    #[arg(long)]
    pub no_vm: bool,
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
    type Phase<'a> = (&'static str, Box<dyn FnOnce() -> Result<()> + 'a>);
    let phases: Vec<Phase> = vec![
        ("setup", Box::new(|| setup::run(setup::For::Test))),
        // Formatting first: it takes a second and needs no build.
        ("fmt", Box::new(|| cargo(&["fmt", "--all", "--check"]))),
        // Default members: everything but the eBPF crate, which only builds for
        // the bpf target and is built (and embedded) by wstrace's build script.
        ("build", Box::new(crate::build::native)),
        // Every host crate, every target (tests, benches, the bench load),
        // warnings as errors. The eBPF crate only builds for the bpf target
        // (its object is built, not linted, by wstrace's build script, which
        // AYA_BUILD_SKIP turns off here).
        ("clippy", Box::new(clippy)),
        // The arm64 binaries, cross-compiled (eBPF object for
        // bpf_target_arch "aarch64"): built from a clean clone like the rest.
        ("build arm64", Box::new(|| crate::build::AARCH64.build())),
        // Unit tests and the host integration tests (they need root: CI runs as root).
        ("cargo test", Box::new(|| cargo(&["test", "--release"]))),
        ("package", Box::new(|| crate::deb::run(None).map(|_| ()))),
        (
            "package arm64",
            Box::new(|| crate::deb::run(Some(crate::build::AARCH64.triple)).map(|_| ())),
        ),
        (
            "kernel matrix",
            Box::new(|| {
                vm::run(&vm::VmArgs {
                    matrix: args.matrix.clone(),
                    ..Default::default()
                })
            }),
        ),
    ];

    let mut outcomes: Vec<(&str, Outcome)> = Vec::new();
    let mut failed = false;
    for (name, phase) in phases {
        if failed {
            outcomes.push((name, Outcome::NotRun));
            continue;
        }
        if name == "kernel matrix" && args.no_vm {
            banner(
                "KERNEL MATRIX SKIPPED (--no-vm): kprobe/fentry probe sets, kernels 5.10/6.1/6.12 and arm64 are NOT tested",
            );
            outcomes.push((name, Outcome::Skipped("--no-vm")));
            continue;
        }
        println!("\n==> test: {name}");
        let (result, took) = process::timed(phase);
        match result {
            Ok(()) => outcomes.push((name, Outcome::Passed(took))),
            Err(err) => {
                failed = true;
                outcomes.push((name, Outcome::Failed(took, err)));
            }
        }
    }

    println!("\n==> test summary");
    let mut total = Duration::ZERO;
    for (name, outcome) in &outcomes {
        match outcome {
            Outcome::Passed(t) => {
                total += *t;
                println!("  {name:<14} ok       {:>9}", process::secs(*t));
            }
            Outcome::Failed(t, err) => {
                total += *t;
                println!("  {name:<14} FAILED   {:>9}  {err:#}", process::secs(*t));
            }
            Outcome::Skipped(why) => println!("  {name:<14} SKIPPED  {:>9}  ({why})", "-"),
            Outcome::NotRun => println!("  {name:<14} not run",),
        }
    }
    println!("  {:<14}          {:>9}", "total", process::secs(total));
    if failed {
        bail!("tests failed (see the summary above)");
    }
    if args.no_vm {
        banner("tests passed, but WITHOUT the kernel matrix (--no-vm)");
    }
    Ok(())
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
