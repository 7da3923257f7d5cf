//! Where things live: the repository, its target directory, the download cache.

use anyhow::{Context as _, Result};
use std::path::PathBuf;

/// The workspace root (xtask is one of its members).
pub fn repo_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(PathBuf::from)
        .unwrap_or(manifest_dir)
}

/// Cargo's target directory, honouring CARGO_TARGET_DIR like cargo does.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                repo_root().join(dir)
            }
        }
        None => repo_root().join("target"),
    }
}

/// ~/.cache/wstrace (or $XDG_CACHE_HOME/wstrace): downloads and builds kept across
/// runs and clones, so a machine fetches each kernel once.
pub fn cache_dir() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let home = std::env::var_os("HOME").filter(|v| !v.is_empty()).context(
                "HOME is not set: set HOME (or XDG_CACHE_HOME) so downloads can be cached",
            )?;
            PathBuf::from(home).join(".cache")
        }
    };
    Ok(base.join("wstrace"))
}

/// ~/.cargo/bin (or $CARGO_HOME/bin): where `cargo install` puts binaries.
pub fn cargo_bin_dir() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("CARGO_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(home).join("bin"));
    }
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(|h| PathBuf::from(h).join(".cargo/bin"))
}
