//! The nightly toolchain's LLVM and a bpf-linker built against it.
//!
//! bpf-linker links the eBPF crate's LLVM bitcode, which rustc +nightly emits
//! with its own LLVM: the two must agree on the LLVM major version. No prebuilt
//! bpf-linker can be downloaded here, so it is built from crates.io against the
//! nightly toolchain's own libLLVM (exactly the LLVM rustc uses).

use crate::{paths, process};
use anyhow::{Context as _, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// What `rustc +nightly -vV` and its sysroot say about nightly's LLVM.
pub struct NightlyLlvm {
    /// e.g. "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)"
    pub rustc: String,
    /// e.g. "22.1.4"
    pub version: String,
    pub major: u32,
    /// `<sysroot>/lib`: holds libLLVM; rustup puts it on LD_LIBRARY_PATH for nightly cargo.
    pub lib_dir: PathBuf,
}

pub fn nightly_llvm() -> Result<NightlyLlvm> {
    let vv = process::output(Command::new("rustc").args(["+nightly", "-vV"])).context(
        "asking the nightly rustc for its LLVM version (is the nightly toolchain installed?)",
    )?;
    let rustc = vv.lines().next().unwrap_or_default().trim().to_string();
    let version = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))
        .map(|v| v.trim().to_string())
        .context("`rustc +nightly -vV` printed no `LLVM version:` line")?;
    let major = version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("cannot read an LLVM major version from {version:?}"))?;
    let sysroot = process::output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let lib_dir = PathBuf::from(sysroot.trim()).join("lib");
    Ok(NightlyLlvm {
        rustc,
        version,
        major,
        lib_dir,
    })
}

impl NightlyLlvm {
    /// The real libLLVM shared object in the sysroot. Both `libLLVM.so.<ver>-rust-...`
    /// and `libLLVM-<major>-rust-....so` may exist; the latter is sometimes a
    /// linker script, so only an actual ELF file qualifies.
    pub fn libllvm(&self) -> Result<PathBuf> {
        let entries = std::fs::read_dir(&self.lib_dir)
            .with_context(|| format!("reading the nightly sysroot {}", self.lib_dir.display()))?;
        let mut candidates: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                let name = file_name(p);
                (name.starts_with("libLLVM.so.")
                    || (name.starts_with("libLLVM-") && name.ends_with(".so")))
                    && is_elf(p)
            })
            .collect();
        // Prefer the soname-style name: it is what a linked binary records as NEEDED.
        candidates.sort_by_key(|p| !file_name(p).starts_with("libLLVM.so."));
        candidates.into_iter().next().with_context(|| {
            format!(
                "no libLLVM shared library in {}: reinstall the nightly toolchain (`rustup toolchain install nightly --force`)",
                self.lib_dir.display()
            )
        })
    }
}

/// The result of looking at an installed bpf-linker.
pub enum Installed {
    Missing,
    /// Present and usable with nightly's LLVM; the text describes it.
    Usable(String),
    /// Present but must be rebuilt; the text says why.
    Unusable(String),
}

pub fn bpf_linker_path() -> Option<PathBuf> {
    which::which("bpf-linker").ok().or_else(|| {
        paths::cargo_bin_dir()
            .map(|d| d.join("bpf-linker"))
            .filter(|p| p.exists())
    })
}

pub fn check_bpf_linker(llvm: &NightlyLlvm) -> Installed {
    let Some(path) = bpf_linker_path() else {
        return Installed::Missing;
    };
    // Run it the way the eBPF build does: under `cargo +nightly`, where rustup has
    // put the nightly sysroot's lib dir on LD_LIBRARY_PATH.
    let mut cmd = Command::new(&path);
    cmd.arg("--version")
        .env("LD_LIBRARY_PATH", ld_library_path(&llvm.lib_dir));
    let version = match process::capture(&mut cmd) {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        Ok(out) => {
            return Installed::Unusable(format!(
                "{} does not run: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Err(err) => return Installed::Unusable(format!("{} does not run: {err}", path.display())),
    };
    match linked_llvm_major(&path) {
        Ok(Some(major)) if major == llvm.major => {
            Installed::Usable(format!("{version}, LLVM {major}"))
        }
        Ok(Some(major)) => Installed::Unusable(format!(
            "{version} is built for LLVM {major}, nightly rustc uses LLVM {}",
            llvm.major
        )),
        // Statically linked LLVM: its version cannot be read from the binary.
        Ok(None) => Installed::Usable(format!(
            "{version}, LLVM linked statically (version not checked)"
        )),
        Err(err) => Installed::Unusable(format!("cannot read {}: {err:#}", path.display())),
    }
}

/// Builds and installs bpf-linker against nightly's libLLVM.
pub fn build_bpf_linker(llvm: &NightlyLlvm) -> Result<()> {
    let libllvm = llvm.libllvm()?;
    // bpf-linker's build looks for `$LLVM_PREFIX/lib/libLLVM.so` and records that
    // lib dir as the binary's RUNPATH. A second link named like the library itself
    // (its soname) lets the installed binary also run outside `cargo +nightly`.
    let prefix = paths::cache_dir()?.join(format!("llvm-{}", llvm.major));
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    for name in ["libLLVM.so".to_string(), file_name(&libllvm)] {
        let link = lib.join(&name);
        if link.symlink_metadata().is_ok() {
            std::fs::remove_file(&link).with_context(|| format!("replacing {}", link.display()))?;
        }
        std::os::unix::fs::symlink(&libllvm, &link)
            .with_context(|| format!("linking {} -> {}", link.display(), libllvm.display()))?;
    }
    let mut cmd = Command::new("cargo");
    cmd.args([
        "+nightly",
        "install",
        "bpf-linker",
        "--force",
        "--no-default-features",
        "--features",
    ])
    .arg(format!("llvm-{}", llvm.major))
    .env("LLVM_PREFIX", &prefix)
    // Outside the repository, so its .cargo/config.toml (rustflags) does not apply.
    .current_dir(&prefix);
    process::run(&mut cmd).context(
        "building bpf-linker failed: it needs a C++ toolchain (`apt-get install g++`) and network access to crates.io",
    )
}

/// The LLVM major of the libLLVM a binary is dynamically linked against
/// (`libLLVM.so.22.1-rust-...` or `libLLVM-22...`); None when it links none.
fn linked_llvm_major(binary: &Path) -> Result<Option<u32>> {
    for needed in elf_needed(binary)? {
        let rest = needed
            .strip_prefix("libLLVM.so.")
            .or_else(|| needed.strip_prefix("libLLVM-"))
            .or_else(|| needed.strip_prefix("libLLVM."));
        if let Some(rest) = rest {
            let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            let major = digits
                .parse()
                .with_context(|| format!("unexpected libLLVM name {needed:?}"))?;
            return Ok(Some(major));
        }
    }
    Ok(None)
}

/// DT_NEEDED entries of an ELF file.
pub fn elf_needed(binary: &Path) -> Result<Vec<String>> {
    use object::read::elf::{Dyn as _, ElfFile64, FileHeader as _, SectionHeader as _};
    let data = std::fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    let elf = ElfFile64::<object::Endianness>::parse(&*data).context("not a 64-bit ELF file")?;
    let endian = elf.endian();
    let sections = elf.elf_header().sections(endian, &*data)?;
    let mut needed = Vec::new();
    for section in sections.iter() {
        let Some((entries, strings_index)) = section.dynamic(endian, &*data)? else {
            continue;
        };
        let strings = sections.strings(endian, &*data, strings_index)?;
        for entry in entries {
            if entry.tag(endian) == object::elf::DT_NEEDED {
                let name = entry.string(endian, strings)?;
                needed.push(String::from_utf8_lossy(name).into_owned());
            }
        }
    }
    Ok(needed)
}

fn ld_library_path(first: &Path) -> std::ffi::OsString {
    let mut value = first.as_os_str().to_owned();
    if let Some(old) = std::env::var_os("LD_LIBRARY_PATH").filter(|v| !v.is_empty()) {
        value.push(":");
        value.push(old);
    }
    value
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn is_elf(p: &Path) -> bool {
    use std::io::Read as _;
    let mut magic = [0u8; 4];
    std::fs::File::open(p)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}
