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
use crate::{kernels, paths, process};
use anyhow::{Context as _, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the packages of one PHP come from.
enum Source {
    /// (URL, SHA-256) of each package.
    Pinned(&'static [(&'static str, &'static str)]),
    /// These packages of this Debian suite, with apt.
    Debian {
        suite: &'static str,
        packages: &'static [&'static str],
    },
}

/// One PHP of the tests.
struct Php {
    /// "8.3": the directory under `php/` and the binary's suffix.
    minor: &'static str,
    source: Source,
}

const UBUNTU: &str = "http://archive.ubuntu.com/ubuntu/pool/main";

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
    std::fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
    match &php.source {
        Source::Pinned(pins) => {
            for (path, sha256) in *pins {
                download_pinned(&format!("{UBUNTU}/{path}"), sha256, &debs)?;
            }
        }
        Source::Debian { suite, packages } => {
            let apt = kernels::PrivateApt::new(
                &base.join("apt").join(suite),
                suite,
                kernels::Arch::Amd64,
            )?;
            apt.update()?;
            for p in *packages {
                apt.download(p, &debs)?;
            }
        }
    }
    let root = work.join("root");
    let mut names = Vec::new();
    for deb in std::fs::read_dir(&debs)
        .with_context(|| format!("reading {}", debs.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
    {
        process::output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
        names.push(
            deb.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
        );
    }
    let binary = root.join(format!("usr/bin/php{}", php.minor));
    if !binary.is_file() {
        bail!(
            "the packages ({}) hold no {}",
            names.join(", "),
            binary.display()
        );
    }
    std::fs::remove_dir_all(&debs).context("removing the downloaded packages")?;
    names.sort();
    std::fs::write(work.join("ready"), names.join("\n") + "\n").context("writing ready")?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&work, dir)
        .with_context(|| format!("moving {} to {}", work.display(), dir.display()))
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
