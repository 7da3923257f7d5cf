//! `cargo xtask deb`: the agent's Debian package (cargo-deb), then a check
//! of what is in it: the binary, the hardened systemd unit, its defaults.
use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{build, process, setup};

/// Paths the package must contain (dpkg-deb -c), and why.
const MUST_CONTAIN: &[(&str, &str)] = &[
    ("./usr/sbin/wstrace", "the binary"),
    ("/systemd/system/wstrace.service", "the systemd unit"),
    ("./etc/default/wstrace", "the unit's WSTRACE_ARGS"),
    ("./usr/share/doc/wstrace/README.md", "the documentation"),
];

/// Builds the package for this machine, or for `target` (a triple known to
/// [`build::cross`]) from the cross-built binary.
pub fn run(target: Option<&str>) -> Result<PathBuf> {
    match target {
        Some(_) => setup::for_cross_build()?,
        None => setup::run(setup::For::Run)?,
    }
    match target.map(build::cross).transpose()? {
        Some(cross) => cross.build()?,
        None => build::native()?,
    }
    package(target)
}

/// Packages the binary already built for `target` (this machine's:
/// `target/release/wstrace`), without building it again: `cargo xtask
/// test` packages exactly the binary its tests ran.
pub fn package(target: Option<&str>) -> Result<PathBuf> {
    setup::for_deb()?;
    let cross = target.map(build::cross).transpose()?;
    let mut cmd = build::cargo();
    cmd.args(["deb", "-p", "wstrace", "--no-build"]);
    if let Some(cross) = cross {
        // cargo-deb reads the binary from target/<triple>/<profile>, names
        // the package's architecture after the triple, and strips with the
        // target's own strip (the host's cannot read arm64 objects).
        cmd.args(["--target", cross.triple, "--profile", build::CROSS_PROFILE]);
        cross.configure(&mut cmd);
    }
    let out = process::output(&mut cmd).context("cargo deb")?;
    let deb = out
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .context("cargo deb printed no .deb path")?;
    let listing = process::output(Command::new("dpkg-deb").arg("-c").arg(&deb))?;
    for (path, what) in MUST_CONTAIN {
        if !listing.lines().any(|l| l.ends_with(path)) {
            bail!("{} lacks {what} ({path}):\n{listing}", deb.display());
        }
    }
    let fields = process::output(Command::new("dpkg-deb").arg("-f").arg(&deb))?;
    let want_arch = cross.map_or_else(host_debian_arch, |c| Ok(c.debian_arch.to_string()))?;
    let arch = process::output(
        Command::new("dpkg-deb")
            .arg("-f")
            .arg(&deb)
            .arg("Architecture"),
    )?;
    if arch.trim() != want_arch {
        bail!(
            "{} is for architecture {:?}, not {want_arch}",
            deb.display(),
            arch.trim()
        );
    }
    println!(
        "deb: {} ({} bytes)\n{fields}",
        deb.display(),
        std::fs::metadata(&deb).map(|m| m.len()).unwrap_or(0)
    );
    Ok(deb)
}

/// This machine's Debian architecture (amd64 ...).
fn host_debian_arch() -> Result<String> {
    Ok(
        process::output(Command::new("dpkg").arg("--print-architecture"))?
            .trim()
            .to_string(),
    )
}
