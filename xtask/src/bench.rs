//! `cargo xtask bench`: installs the benchmark's tools, builds, and runs the
//! lab, which lives in `wstrace-bench` (`wstrace-bench lab`: measure, results
//! as JSON; `wstrace-bench render`: BENCHMARKS.md from them). xtask only
//! sets up and builds here, as everywhere.

use crate::{build, paths, process, setup};
use anyhow::{Result, bail};
use clap::Args;
use std::process::Command;

#[derive(Args)]
pub struct BenchArgs {
    /// Print BENCHMARKS.md's new text but leave the file as it is.
    #[arg(long)]
    pub no_write: bool,
    /// Arguments for `wstrace-bench lab` (`--rounds N`, `--secs S`,
    /// `--probe SET`, `--only PART`; see `target/release/wstrace-bench lab --help`)
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "LAB ARGS"
    )]
    pub lab: Vec<String>,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the benchmark loads BPF programs and attaches strace: run it as root (sudo -E cargo xtask bench)"
        );
    }
    // `--no-write` after a lab argument lands among the lab's: take it there too.
    let no_write = args.no_write || args.lab.iter().any(|a| a == "--no-write");
    let lab: Vec<&String> = args.lab.iter().filter(|a| *a != "--no-write").collect();
    // The lab boots the kernel-matrix VMs (section 6): the test set-up.
    setup::run(setup::For::Test)?;
    println!(
        "setup: benchmark tools: {}",
        setup::ensure_packages(&[
            ("bpftrace", "the bpftrace baseline"),
            ("strace", "the strace baseline"),
            ("bpftool", "per-program run-time stats (section 5)"),
        ])?
    );
    process::run(build::cargo().args([
        "build",
        "--release",
        "-p",
        "wstrace",
        "-p",
        "wstrace-bench",
    ]))?;
    let bench = paths::target_dir().join("release/wstrace-bench");
    let results = paths::target_dir().join("bench/results.json");
    process::run(
        Command::new(&bench)
            .arg("lab")
            .arg("--results")
            .arg(&results)
            .args(&lab),
    )?;
    let mut render = Command::new(&bench);
    render.arg("render").arg("--results").arg(&results);
    if !no_write {
        render
            .arg("--write")
            .arg(paths::repo_root().join("BENCHMARKS.md"));
    }
    process::run(&mut render)
}
