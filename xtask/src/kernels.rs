//! Debian cloud kernels for the kernel matrix, fetched once per machine.
//!
//! Debian's cloud kernels have kprobes, BTF and the function tracer (what the
//! fentry and kprobe probe sets need) and have virtio, loopback networking,
//! tracefs and bpf built in, so the image's vmlinuz alone boots the VM: the
//! modules are not needed. Package names change with every kernel ABI bump,
//! so they are resolved at run time from the suite's `linux-image-cloud-<arch>`
//! metapackage, with apt's own tools and a private sources list and state (the
//! machine's apt configuration is left untouched). arm64 kernels (and the
//! arm64 busybox their VMs run) come the same way, with the private apt
//! state set to that architecture: no `dpkg --add-architecture` needed.

use crate::{paths, process};
use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug)]
pub struct KernelSpec {
    /// Short name used on the command line and in tables, e.g. "6.1".
    pub label: &'static str,
    pub suite: &'static str,
    pub arch: Arch,
    /// Probe sets this kernel cannot have, with why: their scenarios must
    /// all SKIP (wstrace says "not available"), which the matrix accepts
    /// here only.
    pub unavailable: &'static [(&'static str, &'static str)],
}

/// The machine a kernel runs on (Debian's architecture names).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    #[default]
    Amd64,
    Arm64,
}

impl Arch {
    pub fn debian(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The architecture xtask (so this machine) runs on.
    pub fn host() -> Arch {
        if cfg!(target_arch = "aarch64") {
            Arch::Arm64
        } else {
            Arch::Amd64
        }
    }

    /// The image metapackage that names the suite's current cloud kernel.
    fn metapackage(self) -> String {
        format!("linux-image-cloud-{}", self.debian())
    }
}

/// The matrix: the kernel series of Debian's supported releases (5.10 is
/// wstrace's floor: ring buffers need 5.8, BTF-based fentry is reliable there).
/// On arm64, fentry needs the BPF trampoline to be called from the traced
/// kernel function's ftrace site: ftrace direct calls, which arm64 gained in
/// 6.4 (commit 2aa6ac03516d). Before that the attach fails with ENOTSUPP.
const ARM64_NO_FENTRY: &[(&str, &str)] = &[(
    "fentry",
    "arm64 kernels before 6.4 have no ftrace direct calls, so no BPF trampolines on kernel functions",
)];

/// amd64: Debian's supported releases. arm64 rows (a Graviton or Ampere
/// fleet on Debian): bullseye's and bookworm's kernels, and the backports
/// kernel, the first with fentry on arm64.
pub const MATRIX: &[KernelSpec] = &[
    KernelSpec {
        label: "5.10",
        suite: "bullseye",
        arch: Arch::Amd64,
        unavailable: &[],
    },
    KernelSpec {
        label: "6.1",
        suite: "bookworm",
        arch: Arch::Amd64,
        unavailable: &[],
    },
    KernelSpec {
        label: "6.12",
        suite: "bookworm-backports",
        arch: Arch::Amd64,
        unavailable: &[],
    },
    KernelSpec {
        label: "5.10-arm64",
        suite: "bullseye",
        arch: Arch::Arm64,
        unavailable: ARM64_NO_FENTRY,
    },
    KernelSpec {
        label: "6.1-arm64",
        suite: "bookworm",
        arch: Arch::Arm64,
        unavailable: ARM64_NO_FENTRY,
    },
    KernelSpec {
        label: "6.12-arm64",
        suite: "bookworm-backports",
        arch: Arch::Arm64,
        unavailable: &[],
    },
];

/// A fetched kernel as stored in the cache (`kernel.json`).
#[derive(Clone, Serialize, Deserialize)]
pub struct Kernel {
    pub label: String,
    pub suite: String,
    /// Absent in cache entries written before arm64 rows existed: amd64.
    #[serde(default)]
    pub arch: Arch,
    pub package: String,
    pub version: String,
    pub vmlinuz: PathBuf,
}

/// Fetches (or finds cached) kernels, in parallel; any failure fails the whole
/// call, naming the kernel: a kernel missing from the matrix is not a skip.
pub fn fetch_all(specs: &[&'static KernelSpec], refresh: bool) -> Result<Vec<(Kernel, bool)>> {
    let dir = paths::cache_dir()?.join("kernels");
    std::thread::scope(|scope| {
        let handles: Vec<_> = specs
            .iter()
            .map(|spec| {
                let dir = &dir;
                scope.spawn(move || {
                    fetch(spec, dir, refresh).with_context(|| {
                        format!(
                            "fetching the {} kernel ({} {})",
                            spec.label,
                            spec.suite,
                            spec.arch.metapackage()
                        )
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| bail!("kernel fetch thread panicked"))
            })
            .collect()
    })
}

/// Returns the kernel and whether it came from the cache.
fn fetch(spec: &KernelSpec, cache: &Path, refresh: bool) -> Result<(Kernel, bool)> {
    // amd64 entries keep the names they had before arm64 rows existed.
    let name = match spec.arch {
        Arch::Amd64 => spec.suite.to_string(),
        arch => format!("{}-{}", spec.suite, arch.debian()),
    };
    let final_dir = cache.join(&name);
    if !refresh && let Some(kernel) = cached(&final_dir) {
        return Ok((kernel, true));
    }
    let apt = PrivateApt::new(&cache.join("apt").join(&name), spec.suite, spec.arch)?;
    apt.update()?;
    let package = apt.image_package()?;

    // Work in a private temporary directory and rename at the end, so an
    // interrupted or concurrent fetch never leaves a half-filled cache entry.
    let work = cache.join(format!("{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    apt.download(&package, &work)?;
    let deb = find_file(&work, |n| n.ends_with(".deb"))?.with_context(|| {
        format!(
            "`apt-get download {package}` left no .deb in {}",
            work.display()
        )
    })?;
    let version = process::output(Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Version"))?
        .trim()
        .to_string();
    let root = work.join("root");
    process::output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    let boot = root.join("boot");
    let vmlinuz = find_file(&boot, |n| n.starts_with("vmlinuz-"))?
        .with_context(|| format!("{} has no boot/vmlinuz-*", deb.display()))?;
    std::fs::rename(&vmlinuz, work.join("vmlinuz")).context("moving vmlinuz")?;
    // The config documents what the kernel has built in (CONFIG_KPROBES ...).
    if let Some(config) = find_file(&boot, |n| n.starts_with("config-"))? {
        std::fs::rename(&config, work.join("config")).context("moving the kernel config")?;
    }
    std::fs::remove_dir_all(&root).context("removing the unpacked package")?;
    std::fs::remove_file(&deb).context("removing the downloaded package")?;

    let kernel = Kernel {
        label: spec.label.to_string(),
        suite: spec.suite.to_string(),
        arch: spec.arch,
        package,
        version,
        vmlinuz: final_dir.join("vmlinuz"),
    };
    let json = serde_json::to_string_pretty(&kernel)?;
    std::fs::write(work.join("kernel.json"), json).context("writing kernel.json")?;
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir)
            .with_context(|| format!("replacing {}", final_dir.display()))?;
    }
    std::fs::rename(&work, &final_dir)
        .with_context(|| format!("moving {} to {}", work.display(), final_dir.display()))?;
    Ok((kernel, false))
}

fn cached(dir: &Path) -> Option<Kernel> {
    let json = std::fs::read(dir.join("kernel.json")).ok()?;
    let kernel: Kernel = serde_json::from_slice(&json).ok()?;
    kernel.vmlinuz.is_file().then_some(kernel)
}

fn find_file(dir: &Path, pred: impl Fn(&str) -> bool) -> Result<Option<PathBuf>> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    Ok(entries.filter_map(|e| e.ok()).map(|e| e.path()).find(|p| {
        p.file_name()
            .map(|n| pred(&n.to_string_lossy()))
            .unwrap_or(false)
    }))
}

/// apt-get / apt-cache with their own sources list, lists and archive cache,
/// so neither the machine's apt state nor its configured suites are involved.
pub(crate) struct PrivateApt {
    options: Vec<String>,
    suite: String,
    arch: Arch,
}

impl PrivateApt {
    pub(crate) fn new(dir: &Path, suite: &str, arch: Arch) -> Result<Self> {
        for sub in ["lists/partial", "cache/archives/partial"] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
        if !Path::new(keyring).exists() {
            bail!("{keyring} is missing: `apt-get install debian-archive-keyring`");
        }
        let sources = dir.join("sources.list");
        let line = format!("deb [signed-by={keyring}] {} {suite} main\n", mirror());
        std::fs::write(&sources, line).with_context(|| format!("writing {}", sources.display()))?;
        let mut options = vec![
            format!("Dir::Etc::SourceList={}", sources.display()),
            "Dir::Etc::SourceParts=/dev/null".to_string(),
            format!("Dir::State::Lists={}", dir.join("lists").display()),
            format!("Dir::Cache={}", dir.join("cache").display()),
            "Acquire::Languages=none".to_string(),
            // Lists and downloads for that architecture only, whatever the
            // machine's own is.
            format!("APT::Architecture={}", arch.debian()),
            format!("APT::Architectures={}", arch.debian()),
        ];
        // apt drops to the _apt user for downloads, which cannot write into
        // root's home: download as root instead of warning about it.
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            options.push("APT::Sandbox::User=root".to_string());
        }
        Ok(Self {
            options,
            suite: suite.to_string(),
            arch,
        })
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        for option in &self.options {
            cmd.arg("-o").arg(option);
        }
        cmd
    }

    pub(crate) fn update(&self) -> Result<()> {
        process::output(self.command("apt-get").args(["-q", "update"])).with_context(|| {
            format!(
                "apt-get update for {} failed: check network access to {}",
                self.suite,
                mirror()
            )
        })?;
        Ok(())
    }

    /// The versioned image package the suite's metapackage currently depends on.
    fn image_package(&self) -> Result<String> {
        let meta = self.arch.metapackage();
        let out = process::output(self.command("apt-cache").args(["depends", &meta]))?;
        out.lines()
            .filter_map(|l| l.trim().strip_prefix("Depends:"))
            .map(|d| d.trim().trim_start_matches('|').trim().to_string())
            .find(|d| d.starts_with("linux-image-") && *d != meta)
            .with_context(|| {
                format!(
                    "`apt-cache depends {meta}` in {} named no linux-image package:\n{out}",
                    self.suite
                )
            })
    }

    pub(crate) fn download(&self, package: &str, into: &Path) -> Result<()> {
        process::output(
            self.command("apt-get")
                .args(["-q", "download", package])
                .current_dir(into),
        )
        .with_context(|| format!("downloading {package} from {}", self.suite))?;
        Ok(())
    }
}

/// The machine's own Debian mirror (a cloud image's mirror is close and fast).
fn mirror() -> String {
    let deb822 =
        std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
    if let Some(uri) = deb822
        .lines()
        .find_map(|l| l.strip_prefix("URIs:"))
        .and_then(|u| u.split_whitespace().next())
    {
        return uri.to_string();
    }
    let classic = std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    classic
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("deb ") && !l.contains("security"))
        .find_map(|l| l.split_whitespace().find(|w| w.starts_with("http")))
        .map(str::to_string)
        .unwrap_or_else(|| "http://deb.debian.org/debian".to_string())
}

/// A statically linked busybox for `arch`'s VMs: this machine's own for its
/// architecture (busybox-static, installed by setup), else Debian bookworm's
/// busybox-static for that architecture, fetched once into the cache.
pub fn busybox(arch: Arch) -> Result<PathBuf> {
    if arch == Arch::host() {
        let path = which::which("busybox").unwrap_or_else(|_| PathBuf::from("/bin/busybox"));
        if !path.exists() {
            bail!("busybox is missing: run `cargo xtask setup` (installs busybox-static)");
        }
        return Ok(path);
    }
    let cache = paths::cache_dir()?.join("kernels");
    let dir = cache.join(format!("busybox-{}", arch.debian()));
    let bin = dir.join("busybox");
    if bin.is_file() {
        return Ok(bin);
    }
    let suite = "bookworm";
    let apt = PrivateApt::new(
        &cache.join("apt").join(format!("{suite}-{}", arch.debian())),
        suite,
        arch,
    )?;
    apt.update()?;
    let work = cache.join(format!(
        "busybox-{}.tmp-{}",
        arch.debian(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    apt.download("busybox-static", &work)?;
    let deb = find_file(&work, |n| n.ends_with(".deb"))?.with_context(|| {
        format!(
            "`apt-get download busybox-static` left no .deb in {}",
            work.display()
        )
    })?;
    let root = work.join("root");
    process::output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    std::fs::rename(root.join("bin/busybox"), work.join("busybox"))
        .with_context(|| format!("{} has no bin/busybox", deb.display()))?;
    std::fs::remove_dir_all(&root).context("removing the unpacked package")?;
    std::fs::remove_file(&deb).context("removing the downloaded package")?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&work, &dir)
        .with_context(|| format!("moving {} to {}", work.display(), dir.display()))?;
    Ok(bin)
}
