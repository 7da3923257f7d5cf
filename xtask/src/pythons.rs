//! CPython interpreters of other releases for the interpreter-frame tests
//! (wstrace-scenarios `tests/interp.rs`): each distribution's own,
//! unmodified binary and standard library, extracted (never installed)
//! into `~/.cache/wstrace/python/<version>/`, with that release's glibc
//! where the interpreter needs a newer one than this machine's (the tests
//! then run it through that glibc's own loader).
//! Fetched and checked as `distro.rs` says.
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

use crate::distro::{self, Source};
use crate::paths;
struct Interpreter {
    version: &'static str,
    source: Source,
}

/// The interpreters: the `python3.X-minimal` binary, its standard library
/// (`libpython3.X-minimal`, `-stdlib`) and, where needed, its glibc.
const INTERPRETERS: &[Interpreter] = &[
    Interpreter {
        version: "3.13",
        // Debian trixie: glibc 2.41.
        source: Source::Debian {
            suite: "trixie",
            packages: &[
                "python3.13-minimal",
                "libpython3.13-minimal",
                "libpython3.13-stdlib",
                "libc6",
            ],
        },
    },
    Interpreter {
        version: "3.12",
        // Ubuntu noble (24.04) as released: 3.12.3-1, glibc 2.39.
        source: Source::Pinned(&[
            (
                "p/python3.12/python3.12-minimal_3.12.3-1_amd64.deb",
                "af9ce0b1da62af10ae8984d27638a7f6901cb20a2893fbedb72dc52fa53c87bc",
            ),
            (
                "p/python3.12/libpython3.12-minimal_3.12.3-1_amd64.deb",
                "28ddd9458eee6592895865de205ee8bd173fc4107e3efd9be214ecb4dbb2b151",
            ),
            (
                "p/python3.12/libpython3.12-stdlib_3.12.3-1_amd64.deb",
                "d5428fb7fc16f2b930d6df489bdb69a94f72adb7ed21541c9e76f2d5c2a444e1",
            ),
            (
                "g/glibc/libc6_2.39-0ubuntu8_amd64.deb",
                "af36c7ac770770fe3d3c10e85d6bc538e76e57570ba7db7d397fb9f654783ef3",
            ),
        ]),
    },
    Interpreter {
        version: "3.10",
        // Ubuntu jammy (22.04) as released: 3.10.4-3; its glibc (2.35) is
        // older than bookworm's, so this machine's serves.
        source: Source::Pinned(&[
            (
                "p/python3.10/python3.10-minimal_3.10.4-3_amd64.deb",
                "beb041e53740a7720e4289f0caf3e418469951cd66bb5efbefb298e6b016a187",
            ),
            (
                "p/python3.10/libpython3.10-minimal_3.10.4-3_amd64.deb",
                "e83f695339a6b6b691ccfe11e50a54693606371d294351bdeaaedf2fcc1ba09a",
            ),
            (
                "p/python3.10/libpython3.10-stdlib_3.10.4-3_amd64.deb",
                "9f631dd658cf253c4a0016d17072056218d8f839383fb41c28fbba1f860364d4",
            ),
        ]),
    },
];

/// Where interpreter `version` is extracted (`usr/bin/python<version>` in it).
fn dir(version: &str) -> Result<PathBuf> {
    Ok(paths::cache_dir()?.join("python").join(version))
}

/// The file that says an extraction finished (written last).
const COMPLETE: &str = "COMPLETE";

/// `cargo xtask setup`'s step: every interpreter present, or fetched.
pub fn ensure() -> Result<String> {
    if std::env::consts::ARCH != "x86_64" {
        // The pins and the tests' library paths are amd64's.
        return Ok("skipped: the interpreter tests run on x86_64 only".into());
    }
    let mut done = Vec::new();
    for i in INTERPRETERS {
        let d = dir(i.version)?;
        if d.join(COMPLETE).is_file() {
            done.push(format!("{} present", i.version));
            continue;
        }
        fetch(i, &d).with_context(|| format!("fetching CPython {}", i.version))?;
        done.push(format!("{} fetched", i.version));
    }
    Ok(format!("{} ({})", done.join(", "), dir("")?.display()))
}

/// Downloads and extracts `i` into `d` through a private work directory,
/// the extracted tree renamed into place at the end (an interrupted run
/// leaves no half entry).
fn fetch(i: &Interpreter, d: &Path) -> Result<()> {
    let work = dir("")?.join(format!("{}.tmp-{}", i.version, std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let debs = work.join("debs");
    let got = distro::download(&i.source, &dir("apt")?, &debs)?;
    let root = work.join("root");
    let names = distro::extract(&got, &root)?;
    let python = root.join(format!("usr/bin/python{}", i.version));
    if !python.is_file() {
        bail!("the packages held no {}", python.display());
    }
    std::fs::remove_dir_all(&debs).context("removing the downloaded packages")?;
    std::fs::write(root.join(COMPLETE), names.join("\n") + "\n")?;
    let _ = std::fs::remove_dir_all(d);
    std::fs::create_dir_all(d.parent().unwrap_or(Path::new("/")))?;
    std::fs::rename(&root, d).with_context(|| format!("moving to {}", d.display()))?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
