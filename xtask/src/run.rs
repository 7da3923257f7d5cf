//! `cargo xtask run [-- ARGS]`: the README's "run the tracer" command. Sets
//! up the toolchain if needed, builds, and runs `target/release/wstrace`
//! with ARGS (default: `demo`, the built-in story, so a first run needs no
//! server of the user's). wstrace needs root for BPF: when xtask is not root
//! it runs wstrace under sudo, saying so.
use crate::{paths, process, setup};
use anyhow::{Context as _, Result};
use clap::Args;
use std::process::Command;

#[derive(Args)]
pub struct RunArgs {
    /// Arguments for wstrace, after `--` (e.g. `-- --port 1215 --format json`) [default: demo]
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub fn run(args: &RunArgs) -> Result<()> {
    // Only what running needs: not the test lab (QEMU, chromium ...).
    setup::run(setup::For::Run)?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    process::run(
        Command::new(cargo)
            // wstrace alone: not the test scenarios, nor xtask in release.
            .args(["build", "--release", "-p", "wstrace"])
            .current_dir(paths::repo_root()),
    )?;
    let wstrace = paths::target_dir().join("release/wstrace");
    let wstrace_args: Vec<String> = if args.args.is_empty() {
        vec!["demo".into()]
    } else {
        args.args.clone()
    };
    let mut cmd = if unsafe { libc::geteuid() } == 0 {
        Command::new(&wstrace)
    } else {
        let sudo = which::which("sudo").context(
            "wstrace needs root (CAP_BPF and CAP_PERFMON) and sudo is not installed: run this as root",
        )?;
        eprintln!("xtask: wstrace needs root for BPF; running it with sudo");
        let mut c = Command::new(sudo);
        c.arg(&wstrace);
        c
    };
    cmd.args(&wstrace_args);
    process::run(&mut cmd)
}
