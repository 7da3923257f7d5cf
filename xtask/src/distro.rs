//! Other releases' packages for the tests (the interpreters of
//! `pythons.rs` and `php.rs`): downloaded, checked and extracted with
//! `dpkg-deb -x` (never installed), so a test runs a distribution's own,
//! unmodified binary.
//!
//! Debian's come through a private apt (`kernels::PrivateApt`), which checks
//! the archive's signature and every package's hash, so a point release
//! that replaces a package is followed. Ubuntu's come from release pockets
//! that never change, by URL and pinned SHA-256 (this machine has no Ubuntu
//! archive key to check their index with).
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{kernels, process};

/// Where one test binary's packages come from.
pub enum Source {
    /// These packages of this Debian suite, with apt.
    Debian {
        suite: &'static str,
        packages: &'static [&'static str],
    },
    /// (path under [`UBUNTU`], SHA-256) of each package.
    Pinned(&'static [(&'static str, &'static str)]),
}

pub const UBUNTU: &str = "http://archive.ubuntu.com/ubuntu/pool/main";

/// Downloads `source`'s packages into `debs` (a Debian suite's apt state
/// kept under `apt_dir/<suite>`); returns their files.
pub fn download(source: &Source, apt_dir: &Path, debs: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(debs).with_context(|| format!("creating {}", debs.display()))?;
    match source {
        Source::Debian { suite, packages } => {
            let apt = kernels::PrivateApt::new(&apt_dir.join(suite), suite, kernels::Arch::Amd64)?;
            apt.update()?;
            for p in *packages {
                apt.download(p, debs)?;
            }
            let mut got = Vec::new();
            for e in
                std::fs::read_dir(debs).with_context(|| format!("reading {}", debs.display()))?
            {
                got.push(e?.path());
            }
            Ok(got)
        }
        Source::Pinned(pins) => pins
            .iter()
            .map(|(path, sha256)| download_pinned(&format!("{UBUNTU}/{path}"), sha256, debs))
            .collect(),
    }
}

/// Extracts every package of `debs` into `root`; returns their file names,
/// sorted (what a finished extraction's marker file lists).
pub fn extract(debs: &[PathBuf], root: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for deb in debs {
        process::output(Command::new("dpkg-deb").arg("-x").arg(deb).arg(root))?;
        names.push(
            deb.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
        );
    }
    names.sort();
    Ok(names)
}

/// Downloads `url` into `into` and checks its SHA-256; a mismatch deletes
/// it and fails.
fn download_pinned(url: &str, sha256: &str, into: &Path) -> Result<PathBuf> {
    let name = url.rsplit('/').next().unwrap_or("package.deb");
    let file = into.join(name);
    process::output(
        Command::new("curl")
            .args(["--fail", "--silent", "--show-error", "--location", "-o"])
            .arg(&file)
            .arg(url),
    )
    .with_context(|| format!("downloading {url}: check network access to archive.ubuntu.com"))?;
    let out = process::output(Command::new("sha256sum").arg(&file))?;
    let got = out.split_whitespace().next().unwrap_or_default();
    if got != sha256 {
        let _ = std::fs::remove_file(&file);
        bail!("{url} has SHA-256 {got}, not the pinned {sha256}");
    }
    Ok(file)
}
