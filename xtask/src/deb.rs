//! `cargo xtask deb`: the agent's Debian package (cargo-deb), then a check
//! of what is in it: the binary, the hardened systemd unit, its defaults.
use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{paths, process, setup};

/// Paths the package must contain (dpkg-deb -c), and why.
const MUST_CONTAIN: &[(&str, &str)] = &[
    ("./usr/sbin/wstrace", "the binary"),
    ("/systemd/system/wstrace.service", "the systemd unit"),
    ("./etc/default/wstrace", "the unit's WSTRACE_ARGS"),
    ("./usr/share/doc/wstrace/README.md", "the documentation"),
];

pub fn run() -> Result<PathBuf> {
    setup::run()?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = paths::repo_root();
    process::run(
        Command::new(&cargo)
            .args(["build", "--release"])
            .current_dir(&root),
    )?;
    let out = process::output(
        Command::new(&cargo)
            .args(["deb", "-p", "wstrace", "--no-build"])
            .current_dir(&root),
    )
    .context("cargo deb")?;
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
    println!(
        "deb: {} ({} bytes)\n{fields}",
        deb.display(),
        std::fs::metadata(&deb).map(|m| m.len()).unwrap_or(0)
    );
    Ok(deb)
}
