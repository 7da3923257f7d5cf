//! `cargo xtask build [--target TRIPLE]`: the release binaries (wstrace with
//! its eBPF object, and ws-scenario) for this machine or, cross-compiled,
//! for another architecture.
//!
//! A cross build is an ordinary `cargo build --target`: wstrace's build
//! script (aya-build) compiles the eBPF object with `bpf_target_arch` set to
//! the target's architecture, which is what selects the kernel-side register
//! layout (wstrace-ebpf/src/ustack.rs) and aya's probe argument access. The
//! linker and C compiler are given to cargo here, per invocation, through
//! `CARGO_TARGET_<TRIPLE>_LINKER` and `CC_<triple>`, not in a committed
//! `.cargo/config.toml`, which would apply to every build on every machine.
use crate::{paths, process, setup};
use anyhow::{Result, bail};
use clap::Args;
use std::path::PathBuf;
use std::process::Command;

#[derive(Args, Clone, Default)]
pub struct BuildArgs {
    /// Cross-compile for this target triple (e.g. aarch64-unknown-linux-gnu) [default: this machine]
    #[arg(long, value_name = "TRIPLE")]
    pub target: Option<String>,
}

/// A target wstrace can be cross-built for from an x86_64 Debian machine.
pub struct Cross {
    pub triple: &'static str,
    /// Debian's name of the architecture (package names, `.deb` files).
    pub debian_arch: &'static str,
    /// The cross C toolchain's prefix: `<prefix>-gcc` links, `<prefix>-strip` strips.
    pub tool_prefix: &'static str,
    /// The Debian packages with that toolchain and the target's libc.
    pub gcc_package: &'static str,
}

pub const AARCH64: Cross = Cross {
    triple: "aarch64-unknown-linux-gnu",
    debian_arch: "arm64",
    tool_prefix: "aarch64-linux-gnu",
    gcc_package: "gcc-aarch64-linux-gnu and libc6-dev-arm64-cross",
};

/// The cargo profile of cross builds: release with line tables only in
/// wstrace's own code (see the workspace Cargo.toml).
pub const CROSS_PROFILE: &str = "cross";

/// Every cross target (what `setup` installs toolchains for).
pub const CROSS_TARGETS: &[&Cross] = &[&AARCH64];

pub fn cross(triple: &str) -> Result<&'static Cross> {
    match CROSS_TARGETS.iter().find(|c| c.triple == triple) {
        Some(c) => Ok(c),
        None => {
            let known: Vec<&str> = CROSS_TARGETS.iter().map(|c| c.triple).collect();
            bail!(
                "unsupported --target {triple}: choose from {} (or none, for this machine)",
                known.join(", ")
            )
        }
    }
}

impl Cross {
    /// Where cargo puts this target's binaries (the `cross` profile).
    pub fn release_dir(&self) -> PathBuf {
        paths::target_dir().join(self.triple).join(CROSS_PROFILE)
    }

    /// Points `cmd` (a cargo invocation) at this target's cross linker and C
    /// compiler, for this one command.
    pub fn configure(&self, cmd: &mut Command) {
        let upper = self.triple.to_uppercase().replace('-', "_");
        let lower = self.triple.replace('-', "_");
        let gcc = format!("{}-gcc", self.tool_prefix);
        cmd.env(format!("CARGO_TARGET_{upper}_LINKER"), &gcc)
            .env(format!("CC_{lower}"), &gcc)
            .env(format!("AR_{lower}"), format!("{}-ar", self.tool_prefix));
    }

    /// `cargo build --profile cross --target <triple>` of wstrace and
    /// ws-scenario.
    pub fn build(&self) -> Result<()> {
        let gcc = format!("{}-gcc", self.tool_prefix);
        if which::which(&gcc).is_err() {
            bail!(
                "{gcc} (the {} linker) is missing: run `cargo xtask setup` (installs {})",
                self.triple,
                self.gcc_package
            );
        }
        let mut cmd = cargo();
        cmd.args([
            "build",
            "--profile",
            CROSS_PROFILE,
            "--target",
            self.triple,
            "-p",
            "wstrace",
            "-p",
            "wstrace-scenarios",
        ]);
        self.configure(&mut cmd);
        process::run(&mut cmd)?;
        let dir = self.release_dir();
        for bin in ["wstrace", "ws-scenario"] {
            if !dir.join(bin).is_file() {
                bail!(
                    "cargo built for {} but {} is missing",
                    self.triple,
                    dir.join(bin).display()
                );
            }
        }
        Ok(())
    }
}

/// The cargo that runs xtask (CARGO is set by `cargo run`), so the same toolchain.
pub fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(paths::repo_root());
    cmd
}

/// This machine's release build of what runs and is tested (wstrace, its
/// eBPF object included, and ws-scenario). Not xtask: it runs from the
/// debug build `cargo xtask` makes, so a release build of its binary was
/// compile time (on every clean clone) for nothing.
pub fn native() -> Result<()> {
    process::run(cargo().args([
        "build",
        "--release",
        "-p",
        "wstrace",
        "-p",
        "wstrace-scenarios",
    ]))
}

pub fn run(args: &BuildArgs) -> Result<()> {
    match &args.target {
        None => {
            setup::run(setup::For::Run)?;
            native()
        }
        Some(triple) => {
            setup::for_cross_build()?;
            let cross = cross(triple)?;
            cross.build()?;
            println!(
                "build: {} and {} for {}",
                cross.release_dir().join("wstrace").display(),
                cross.release_dir().join("ws-scenario").display(),
                cross.triple
            );
            Ok(())
        }
    }
}
