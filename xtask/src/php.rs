//! The PHP interpreters of the PHP frame tests (`tests/interp.rs`), one per
//! minor version wstrace names frames of: unmodified distribution builds,
//! downloaded as `.deb`s and unpacked under `~/.cache/wstrace/php/<minor>/`
//! (`cargo xtask setup`). 8.2 is Debian bookworm's own, installed with apt.
//!
//! Where a PHP needs a newer glibc than this machine's (bookworm: 2.36),
//! its release's `libc6` is unpacked beside it and the test runs the PHP
//! binary through that release's own loader (`ld-linux-x86-64.so.2
//! --library-path …`): the binary is the distribution's, byte for byte.
//!
//! Checked before use: the Ubuntu packages come from the frozen release
//! pockets (never rebuilt, never removed from the pool) and are pinned by
//! SHA-256; the Debian trixie ones follow the suite's point releases, so
//! they are fetched with apt against the signed release file
//! (`kernels::PrivateApt`), which checks each package's SHA-256.
use std::path::Path;

use anyhow::{Context as _, Result, bail};

use crate::distro::{self, Source};
use crate::paths;

/// One PHP of the tests.
struct Php {
    /// "8.3": the directory under `php/` and the binary's suffix.
    minor: &'static str,
    source: Source,
}

const PHPS: &[Php] = &[
    // Ubuntu 22.04 (jammy): glibc 2.35 and libraries bookworm has.
    Php {
        minor: "8.1",
        source: Source::Pinned(&[(
            "p/php8.1/php8.1-cli_8.1.2-1ubuntu2_amd64.deb",
            "4e14ff4e4bcc89299d9c135185740efb2c60a7494bb44d69361bf00591fdab1e",
        )]),
    },
    // Ubuntu 24.04 (noble): needs glibc 2.38, so noble's 2.39 with it.
    Php {
        minor: "8.3",
        source: Source::Pinned(&[
            (
                "p/php8.3/php8.3-cli_8.3.6-0maysync1_amd64.deb",
                "8cb7461dd06fb214b30c060b80b1c6f95d1ff5e2656fdadf215e50b9f299f196",
            ),
            (
                "g/glibc/libc6_2.39-0ubuntu8_amd64.deb",
                "af36c7ac770770fe3d3c10e85d6bc538e76e57570ba7db7d397fb9f654783ef3",
            ),
        ]),
    },
    // Debian 13 (trixie): needs glibc 2.38, so trixie's with it.
    Php {
        minor: "8.4",
        source: Source::Debian {
            suite: "trixie",
            packages: &["php8.4-cli", "libc6"],
        },
    },
];

/// Debian packages the PHP tests need from this machine's own release:
/// bookworm's PHP, and curl for the pinned downloads.
pub const APT_PACKAGES: &[(&str, &str)] = &[
    (
        "php8.2-cli",
        "the PHP 8.2 server of the PHP frame tests (and the libraries the other PHPs link)",
    ),
    ("curl", "downloads the pinned Ubuntu PHP packages"),
];

/// `cargo xtask setup`'s step: every PHP of [`PHPS`] unpacked.
pub fn ensure() -> Result<String> {
    if std::env::consts::ARCH != "x86_64" {
        return Ok("skipped: the PHP test packages are pinned for amd64".into());
    }
    let base = paths::cache_dir()?.join("php");
    let mut done = Vec::new();
    for php in PHPS {
        let dir = base.join(php.minor);
        if dir.join("ready").is_file() {
            done.push(format!("{} present", php.minor));
            continue;
        }
        fetch(php, &base, &dir).with_context(|| format!("fetching PHP {}", php.minor))?;
        done.push(format!("{} unpacked", php.minor));
    }
    Ok(format!("{} ({})", done.join(", "), base.display()))
}

/// Downloads and unpacks `php` into `dir` through a private work
/// directory renamed at the end (an interrupted run leaves no half entry).
fn fetch(php: &Php, base: &Path, dir: &Path) -> Result<()> {
    let work = base.join(format!("{}.tmp-{}", php.minor, std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let debs = work.join("debs");
    let got = distro::download(&php.source, &base.join("apt"), &debs)?;
    let root = work.join("root");
    let names = distro::extract(&got, &root)?;
    let binary = root.join(format!("usr/bin/php{}", php.minor));
    if !binary.is_file() {
        bail!(
            "the packages ({}) hold no {}",
            names.join(", "),
            binary.display()
        );
    }
    std::fs::remove_dir_all(&debs).context("removing the downloaded packages")?;
    std::fs::write(work.join("ready"), names.join("\n") + "\n").context("writing ready")?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&work, dir)
        .with_context(|| format!("moving {} to {}", work.display(), dir.display()))
}
