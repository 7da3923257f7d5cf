//! Where the lab finds its binaries and puts its results: beside itself in
//! cargo's target directory (`target/release/wstrace-bench`).

use anyhow::{Context as _, Result};
use std::path::PathBuf;

/// The directory this binary was built into (target/release): wstrace and
/// ws-bench are built there with it.
pub fn release_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating wstrace-bench's own binary")?;
    exe.parent()
        .map(PathBuf::from)
        .context("wstrace-bench's binary has no directory")
}

/// Cargo's target directory (results, the kernel matrix's results file).
pub fn target_dir() -> Result<PathBuf> {
    let release = release_dir()?;
    Ok(release.parent().map(PathBuf::from).unwrap_or(release))
}

/// The workspace root, where `cargo xtask vm` runs (the VM cost section).
pub fn repo_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(PathBuf::from)
        .unwrap_or(manifest_dir)
}
