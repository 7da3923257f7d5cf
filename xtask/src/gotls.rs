//! The Go crypto/tls scenarios' program (wstrace-scenarios/go/ws-go-tls):
//! built per VM architecture by Debian's Go and gorilla/websocket, in GOPATH
//! mode (no module proxy, no network), static (no cgo), so it runs in the
//! VMs as it is. Go's build cache (kept with the test suite's, in
//! ~/.cache/wstrace/go-build) makes every build after the first a link.
use crate::kernels::Arch;
use crate::{paths, process};
use anyhow::{Context as _, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Its file name: /bin/ws-go-tls in the VMs, and its comm in reports.
pub const PROGRAM: &str = "ws-go-tls";

/// The same program built `-ldflags=-s -w` (no symbol table, no DWARF:
/// wstrace finds `crypto/tls` through `.gopclntab`), beside it in the VMs
/// (`ws-scenario check` looks for it next to `--go-tls`).
pub const STRIPPED: &str = "ws-go-tls-stripped";

const GORILLA: &str = "/usr/share/gocode/src/github.com/gorilla/websocket/conn.go";

/// Builds the program for `arch` into target/go/<arch>/: [ws-go-tls,
/// ws-go-tls-stripped].
pub fn build(arch: Arch) -> Result<[PathBuf; 2]> {
    Ok([
        build_one(arch, PROGRAM, "")?,
        build_one(arch, STRIPPED, "-s -w")?,
    ])
}

fn build_one(arch: Arch, name: &str, ldflags: &str) -> Result<PathBuf> {
    let src = paths::repo_root().join("wstrace-scenarios/go/ws-go-tls/main.go");
    let out = paths::target_dir()
        .join("go")
        .join(arch.debian())
        .join(name);
    if !Path::new(GORILLA).is_file() {
        bail!(
            "gorilla/websocket is missing ({GORILLA}): apt-get install golang-github-gorilla-websocket-dev (or cargo xtask setup --for test)"
        );
    }
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let cache = paths::cache_dir()?.join("go-build");
    let (built, took) = process::timed(|| {
        process::capture(
            Command::new("go")
                .arg("build")
                .arg(format!("-ldflags={ldflags}"))
                .arg("-o")
                .arg(&out)
                .arg(&src)
                .env("GOARCH", arch.debian())
                .env("GOOS", "linux")
                .env("CGO_ENABLED", "0")
                .env("GO111MODULE", "off")
                .env("GOPATH", "/usr/share/gocode")
                .env("GOCACHE", &cache)
                .env("GOFLAGS", ""),
        )
    });
    let built = built.context(
        "running go (the Go crypto/tls scenarios): apt-get install golang-go (or cargo xtask setup --for test)",
    )?;
    if !built.status.success() {
        bail!(
            "go build {} for {} failed: {}",
            src.display(),
            arch.debian(),
            String::from_utf8_lossy(&built.stderr).trim()
        );
    }
    println!(
        "vm: {name} ({}) built in {}",
        arch.debian(),
        process::secs(took)
    );
    Ok(out)
}
