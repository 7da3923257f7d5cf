//! `cargo xtask setup`: bootstrap a fresh machine (Debian bookworm with rustup).
//!
//! What is installed depends on what for ([`For`]): running wstrace needs
//! only the toolchain that builds it (nightly, rust-src, bpf-linker); a
//! cross build adds its target and linker; a `.deb` adds cargo-deb; the
//! tests add everything else (QEMU, chromium, nginx, prometheus, the venv,
//! npm's ws ...). `cargo xtask run` asks for the first only, so a fresh
//! machine shows the demo without downloading the test lab.
//!
//! Every step first checks whether its work is already done, so a second run
//! is a quick no-op and CI can call it unconditionally.

use crate::{llvm, process};
use anyhow::{Context as _, Result, bail};
use std::process::Command;
use std::time::Instant;

/// What setup installs for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum For {
    /// Building and running wstrace on this machine: the nightly toolchain,
    /// rust-src and bpf-linker.
    Run,
    /// Everything the tests, cross builds and packages need as well.
    #[default]
    Test,
}

#[derive(clap::Args)]
pub struct SetupArgs {
    /// What to install for: `run` (build and run wstrace) or `test`
    /// (everything `cargo xtask test` needs).
    #[arg(long = "for", value_enum, default_value_t = For::Test)]
    pub purpose: For,
}

/// Debian packages the arm64 cross build needs.
const CROSS_APT_PACKAGES: &[(&str, &str)] = &[
    (
        "gcc-aarch64-linux-gnu",
        "links the arm64 build (`cargo xtask build --target aarch64-unknown-linux-gnu`)",
    ),
    (
        "libc6-dev-arm64-cross",
        "the arm64 C runtime and libc the arm64 build links against (and its VMs load)",
    ),
];

/// Debian packages the tests need, with why (printed when installing).
const APT_PACKAGES: &[(&str, &str)] = &[
    ("qemu-system-x86", "boots the kernel matrix"),
    (
        "qemu-system-arm",
        "boots the arm64 rows of the kernel matrix",
    ),
    ("busybox-static", "userland of the kernel-matrix VMs"),
    ("nginx-light", "the real proxy of the diagnosis tests"),
    (
        "haproxy",
        "a second real proxy of the chain tests (its `timeout tunnel` closes both hops)",
    ),
    (
        "apache2",
        "a third real proxy of the chain tests (mod_proxy_wstunnel relays the backend's 101)",
    ),
    (
        "podman",
        "runs the container of the container-names test (an image imported from a rootfs tarball)",
    ),
    (
        "runc",
        "podman's runtime in that test: crun refuses hosts with hybrid cgroup v1/v2",
    ),
    (
        "nodejs",
        "a Node https server (OpenSSL linked in) of the TLS tests",
    ),
    ("openssl", "makes the TLS tests' self-signed certificates"),
    (
        "curl",
        "fetches Ubuntu's CPython packages (pinned SHA-256) for the interpreter tests",
    ),
    (
        "python3-venv",
        "a venv for the Python WebSocket server of the diagnosis tests",
    ),
    (
        "prometheus",
        "promtool, which validates the --metrics exposition in the tests",
    ),
    ("chromium", "renders `wstrace report --html` in the tests"),
    (
        "chromium-driver",
        "drives chromium (WebDriver) to click through `wstrace report --html` in the tests",
    ),
    (
        "systemd",
        "systemd-analyze, which rates the unit's sandboxing in the tests",
    ),
    (
        "gcc",
        "builds the C server without frame pointers of the user-stack tests",
    ),
    (
        "g++",
        "builds the C++ server with a hot/cold split function of the user-stack tests",
    ),
    (
        "golang-go",
        "builds the Go crypto/tls WebSocket server of the TLS tests (Go 1.19, register ABI)",
    ),
    (
        "golang-github-gorilla-websocket-dev",
        "gorilla/websocket for that Go server, built offline in GOPATH mode",
    ),
    (
        "gdb",
        "the backtrace the crash-stack test compares wstrace's \"where it crashed\" with",
    ),
];

/// PyPI packages for the diagnosis tests, installed into [`venv_dir`].
/// `opentelemetry-proto`: the official OTLP protobuf definitions, with
/// which the OTLP test's receiver decodes what `--otlp` sends (a receiver
/// built on our own reading of the format would prove nothing).
const PIP_PACKAGES: &[&str] = &["websockets==13.1", "opentelemetry-proto==1.39.1"];

/// What the venv must import (one module per [`PIP_PACKAGES`] entry).
const PIP_IMPORTS: &str =
    "import websockets, opentelemetry.proto.collector.logs.v1.logs_service_pb2";

/// npm packages for the heartbeat tests, installed into [`node_dir`]:
/// (name, pinned version). `ws` is the most used Node WebSocket library;
/// its documented heartbeat (`terminate()` after a missed pong) is tested
/// as operators run it.
const NPM_PACKAGES: &[(&str, &str)] = &[("ws", "8.23.0")];

pub fn run(purpose: For) -> Result<()> {
    let start = Instant::now();
    toolchain()?;
    if purpose == For::Test {
        step("clippy and rustfmt", ensure_lint_components)?;
        cross_steps()?;
        step("Debian packages", || ensure_packages(APT_PACKAGES))?;
        step("Python test venv", ensure_venv)?;
        step("Node test packages", ensure_node_modules)?;
        step(
            "CPython 3.10, 3.12, 3.13 for the interpreter tests",
            crate::pythons::ensure,
        )?;
        step("PHP test packages", || {
            ensure_packages(crate::php::APT_PACKAGES)?;
            crate::php::ensure()
        })?;
        step("cargo-deb", ensure_cargo_deb)?;
    }
    println!("setup: done in {}", process::secs(start.elapsed()));
    Ok(())
}

/// What building wstrace for this machine needs.
fn toolchain() -> Result<()> {
    step("rustup", check_rustup)?;
    step("nightly toolchain", ensure_nightly)?;
    step("nightly rust-src", ensure_rust_src)?;
    step("bpf-linker", ensure_bpf_linker)
}

fn cross_steps() -> Result<()> {
    step("rust cross targets", ensure_rust_targets)?;
    step("cross toolchain packages", || {
        ensure_packages(CROSS_APT_PACKAGES)
    })
}

/// What a cross build needs: the toolchain, the targets' standard
/// libraries and the cross linker.
pub fn for_cross_build() -> Result<()> {
    toolchain()?;
    cross_steps()
}

/// What `cargo xtask deb` needs besides the build: cargo-deb.
pub fn for_deb() -> Result<()> {
    step("cargo-deb", ensure_cargo_deb)
}

/// Runs one step and prints `setup: <name>: <what happened> (<time>)`.
fn step(name: &str, f: impl FnOnce() -> Result<String>) -> Result<()> {
    let (result, elapsed) = process::timed(f);
    let what = result.with_context(|| format!("setup step `{name}`"))?;
    println!("setup: {name}: {what} ({})", process::secs(elapsed));
    Ok(())
}

fn check_rustup() -> Result<String> {
    let out = process::output(Command::new("rustup").arg("--version")).context(
        "rustup is needed (the eBPF crate builds with the nightly toolchain): install it from https://rustup.rs",
    )?;
    Ok(out.lines().next().unwrap_or("present").trim().to_string())
}

fn ensure_nightly() -> Result<String> {
    if let Ok(llvm) = llvm::nightly_llvm() {
        return Ok(format!("present ({}, LLVM {})", llvm.rustc, llvm.version));
    }
    println!("setup: nightly toolchain: missing, installing (rustup toolchain install nightly)");
    process::run(Command::new("rustup").args([
        "toolchain",
        "install",
        "nightly",
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))
    .context(
        "installing the nightly toolchain failed: check network access to static.rust-lang.org",
    )?;
    let llvm = llvm::nightly_llvm()?;
    Ok(format!("installed ({}, LLVM {})", llvm.rustc, llvm.version))
}

fn ensure_rust_src() -> Result<String> {
    // Asking rustup what is installed is local and fast; `component add` may go online.
    let installed = process::output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))?;
    if installed.lines().any(|l| l.trim().starts_with("rust-src")) {
        return Ok("present".into());
    }
    process::output(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
    .context("adding rust-src to the nightly toolchain failed (needed for `-Z build-std=core`)")?;
    Ok("installed".into())
}

/// The standard library of every cross target (`build::CROSS_TARGETS`) for
/// the toolchain that builds the daemon.
/// The test run's `fmt` and `clippy` phases use the toolchain that runs
/// xtask; rustup's minimal profile leaves both components out.
fn ensure_lint_components() -> Result<String> {
    let installed =
        process::output(Command::new("rustup").args(["component", "list", "--installed"]))?;
    let missing: Vec<&str> = ["clippy", "rustfmt"]
        .into_iter()
        .filter(|c| {
            !installed
                .lines()
                .any(|l| l.trim().starts_with(&format!("{c}-")))
        })
        .collect();
    if missing.is_empty() {
        return Ok("present".into());
    }
    process::output(
        Command::new("rustup")
            .args(["component", "add"])
            .args(&missing),
    )
    .with_context(|| {
        format!(
            "`rustup component add {}` failed: check network access to static.rust-lang.org",
            missing.join(" ")
        )
    })?;
    Ok(format!("installed {}", missing.join(", ")))
}

fn ensure_rust_targets() -> Result<String> {
    let wanted: Vec<&str> = crate::build::CROSS_TARGETS
        .iter()
        .map(|c| c.triple)
        .collect();
    // Local and fast; `target add` may go online.
    let installed =
        process::output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|t| !installed.lines().any(|l| l.trim() == *t))
        .collect();
    if missing.is_empty() {
        return Ok(format!("present ({})", wanted.join(", ")));
    }
    process::output(
        Command::new("rustup")
            .args(["target", "add"])
            .args(&missing),
    )
    .with_context(|| {
        format!(
            "`rustup target add {}` failed: check network access to static.rust-lang.org",
            missing.join(" ")
        )
    })?;
    Ok(format!("installed {}", missing.join(", ")))
}

fn ensure_bpf_linker() -> Result<String> {
    let llvm = llvm::nightly_llvm()?;
    let why = match llvm::check_bpf_linker(&llvm) {
        llvm::Installed::Usable(what) => return Ok(format!("present ({what})")),
        llvm::Installed::Missing => "not installed".to_string(),
        llvm::Installed::Unusable(why) => why,
    };
    println!(
        "setup: bpf-linker: {why}; building it against nightly's LLVM {} (about a minute)",
        llvm.major
    );
    llvm::build_bpf_linker(&llvm)?;
    match llvm::check_bpf_linker(&llvm) {
        llvm::Installed::Usable(what) => Ok(format!("built ({what})")),
        llvm::Installed::Missing => bail!(
            "bpf-linker was built but is not on PATH: add ~/.cargo/bin (or $CARGO_HOME/bin) to PATH"
        ),
        llvm::Installed::Unusable(why) => {
            bail!("bpf-linker was rebuilt but is still unusable: {why}")
        }
    }
}

/// Installs whichever of `packages` (name, why) are missing.
pub fn ensure_packages(packages: &[(&str, &str)]) -> Result<String> {
    let missing: Vec<&str> = packages
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        let all: Vec<&str> = packages.iter().map(|(p, _)| *p).collect();
        return Ok(format!("present ({})", all.join(", ")));
    }
    let install_line = format!(
        "apt-get install -y --no-install-recommends {}",
        missing.join(" ")
    );
    if !is_root() {
        bail!(
            "missing {}: run as root, or run `sudo {install_line}` first",
            missing.join(", ")
        );
    }
    for (pkg, why) in packages.iter().filter(|(p, _)| missing.contains(p)) {
        println!("setup: Debian packages: installing {pkg} ({why})");
    }
    if apt_install(&missing).is_err() {
        // Usually stale package lists on a fresh machine: refresh them once and retry.
        println!("setup: Debian packages: install failed, running apt-get update and retrying");
        process::output(apt_get().arg("update"))
            .context("apt-get update failed: check network access to the Debian mirror")?;
        apt_install(&missing).with_context(|| format!("`{install_line}` failed"))?;
    }
    Ok(format!("installed {}", missing.join(", ")))
}

/// cargo-deb builds the agent's .deb (`cargo xtask deb`, part of the tests).
const CARGO_DEB_VERSION: &str = "3.8.0";

fn ensure_cargo_deb() -> Result<String> {
    if let Ok(v) = process::output(Command::new("cargo").args(["deb", "--version"])) {
        return Ok(format!("present ({})", v.trim()));
    }
    println!("setup: cargo-deb: missing, installing {CARGO_DEB_VERSION} (about a minute)");
    process::run(Command::new("cargo").args([
        "install",
        "--locked",
        "cargo-deb",
        "--version",
        CARGO_DEB_VERSION,
    ]))
    .context("installing cargo-deb from crates.io")?;
    Ok(format!("installed {CARGO_DEB_VERSION}"))
}

/// Where the diagnosis tests find their Python (with `websockets`).
pub fn venv_dir() -> Result<std::path::PathBuf> {
    Ok(crate::paths::cache_dir()?.join("venv"))
}

fn ensure_venv() -> Result<String> {
    let venv = venv_dir()?;
    let python = venv.join("bin/python3");
    let check = |py: &std::path::Path| {
        Command::new(py)
            .args(["-c", PIP_IMPORTS])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if check(&python) {
        return Ok(format!("present ({})", venv.display()));
    }
    // Debian's python3 (python3-venv), not whatever python3 is first on PATH.
    process::run(
        Command::new("/usr/bin/python3")
            .args(["-m", "venv"])
            .arg(&venv),
    )
    .context("creating the Python venv (python3-venv)")?;
    process::run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(PIP_PACKAGES),
    )
    .context("installing the test packages from PyPI")?;
    if !check(&python) {
        bail!(
            "{} cannot import websockets and opentelemetry-proto after installing them",
            python.display()
        );
    }
    Ok(format!(
        "created {} with {}",
        venv.display(),
        PIP_PACKAGES.join(", ")
    ))
}

/// Where the heartbeat tests find their npm packages (`node_modules` in it).
pub fn node_dir() -> Result<std::path::PathBuf> {
    Ok(crate::paths::cache_dir()?.join("node"))
}

/// The version of npm package `name` installed under `dir`, from its
/// package.json (no node process: this is the fast path of every run).
fn npm_installed_version(dir: &std::path::Path, name: &str) -> Option<String> {
    let manifest = dir.join("node_modules").join(name).join("package.json");
    let text = std::fs::read_to_string(manifest).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["version"].as_str().map(str::to_string)
}

fn ensure_node_modules() -> Result<String> {
    let dir = node_dir()?;
    let wanted: Vec<String> = NPM_PACKAGES
        .iter()
        .map(|(name, version)| format!("{name}@{version}"))
        .collect();
    let missing: Vec<&String> = NPM_PACKAGES
        .iter()
        .zip(&wanted)
        .filter(|((name, version), _)| {
            npm_installed_version(&dir, name).as_deref() != Some(*version)
        })
        .map(|(_, spec)| spec)
        .collect();
    if missing.is_empty() {
        return Ok(format!(
            "present ({}: {})",
            dir.display(),
            wanted.join(", ")
        ));
    }
    // Debian's nodejs package leaves npm out (Debian package `npm`);
    // NodeSource's nodejs ships it. Either provides the same command.
    process::output(Command::new("npm").arg("--version")).context(
        "npm is missing (the heartbeat tests install the `ws` package with it): \
         run `apt-get install npm` (Debian's nodejs leaves it out), or install a Node.js that ships npm",
    )?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    process::output(
        Command::new("npm")
            .args(["install", "--prefix"])
            .arg(&dir)
            .args(["--no-audit", "--no-fund", "--save-exact"])
            .args(&missing),
    )
    .with_context(|| {
        format!(
            "`npm install --prefix {} {}` failed: check network access to the npm registry",
            dir.display(),
            wanted.join(" ")
        )
    })?;
    for (name, version) in NPM_PACKAGES {
        let got = npm_installed_version(&dir, name);
        if got.as_deref() != Some(*version) {
            bail!(
                "npm installed {name} {} into {}, not the pinned {version}",
                got.as_deref().unwrap_or("(nothing)"),
                dir.display()
            );
        }
    }
    Ok(format!(
        "installed {} into {}",
        missing
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        dir.display()
    ))
}

fn apt_install(packages: &[&str]) -> Result<String> {
    process::output(
        apt_get()
            .args(["install", "-y", "--no-install-recommends"])
            .args(packages),
    )
}

fn apt_get() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.arg("-q").env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

fn dpkg_installed(package: &str) -> bool {
    process::output(Command::new("dpkg-query").args(["-W", "-f=${db:Status-Status}", package]))
        .map(|status| status.trim() == "installed")
        .unwrap_or(false)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Fails at once unless root: `command` needs it for `why`, and run as
/// another user it would only fail later, or skip what it cannot do.
pub fn require_root(command: &str, why: &str) -> Result<()> {
    if !is_root() {
        // SAFETY: getuid has no preconditions and cannot fail.
        let uid = unsafe { libc::getuid() };
        bail!("`{command}` must run as root ({why}); it is running as uid {uid}");
    }
    Ok(())
}
