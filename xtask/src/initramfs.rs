//! The kernel-matrix VM's whole userland: a gzip'd cpio archive with
//! busybox-static, the binaries under test (plus the shared libraries and the
//! dynamic loader `ldd` names for them) and an /init script that prepares the
//! kernel interfaces wstrace needs, runs the test steps and powers off.

use crate::cpio::{Archive, Entry};
use crate::kernels::{self, Arch};
use crate::{llvm, process};
use anyhow::{Context as _, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Prefix of the lines /init prints around the steps; the harness parses them.
pub const MARK: &str = "@@wstrace-vm";

/// One command run inside the VM, output framed by markers.
pub struct Step {
    /// Unique, no spaces (used in markers): "fentry", "cmd" ...
    pub name: String,
    /// Shell script run by busybox sh.
    pub script: String,
}

pub struct Built {
    pub binaries: usize,
    pub libraries: usize,
    pub uncompressed_bytes: usize,
    pub compressed_bytes: u64,
}

/// Builds the userland for VMs of `arch`; `binaries` must be built for it.
pub fn build(
    out: &Path,
    arch: Arch,
    binaries: &[PathBuf],
    steps: &[Step],
    step_timeout_secs: u64,
) -> Result<Built> {
    let mut archive = Archive::default();
    // (path in the VM, file on this machine)
    let mut libraries: Vec<(String, PathBuf)> = Vec::new();
    let libs_of = |binary: &Path| -> Result<Vec<(String, PathBuf)>> {
        if arch == Arch::host() {
            Ok(shared_libraries(binary)?
                .into_iter()
                .map(|l| (l.to_string_lossy().into_owned(), l))
                .collect())
        } else {
            cross_libraries(binary, arch)
        }
    };

    let busybox = kernels::busybox(arch)?;
    archive.add(
        "/bin/busybox",
        Entry::File {
            data: read(&busybox)?,
            executable: true,
        },
    );
    libraries.extend(libs_of(&busybox)?);

    for binary in binaries {
        let name = binary
            .file_name()
            .with_context(|| format!("{} is not a file path", binary.display()))?
            .to_string_lossy()
            .into_owned();
        archive.add(
            &format!("/bin/{name}"),
            Entry::File {
                // The traced Go server keeps its DWARF: the Go scenarios
                // check the frames' language and source lines, which come
                // from it (stripped, its frames were bare symbol names).
                // Its stripped build is stripped already: as it is.
                data: if name == crate::gotls::PROGRAM || name == crate::gotls::STRIPPED {
                    read(binary)?
                } else {
                    without_debug_info(binary, arch, out)?
                },
                executable: true,
            },
        );
        libraries.extend(libs_of(binary)?);
    }
    libraries.sort();
    libraries.dedup();
    for (path, lib) in &libraries {
        // Stored under the path ldd reported (or the cross loader searches),
        // which is where the binaries' interpreter and search path look;
        // symlinks are followed by the read.
        archive.add(
            path,
            Entry::File {
                data: read(lib)?,
                executable: true,
            },
        );
    }

    // One symlink per busybox applet, but never over a binary under test.
    // The list is the host busybox's (a foreign one cannot run here): the
    // same Debian version, so the same applets.
    for applet in busybox_applets(&kernels::busybox(Arch::host())?)? {
        let path = format!("/bin/{applet}");
        if !archive.contains(&path) {
            archive.add(&path, Entry::Symlink("busybox".into()));
        }
    }
    for dir in ["/usr/bin", "/usr/sbin", "/sbin"] {
        archive.add(dir, Entry::Symlink("/bin".into()));
    }
    for dir in ["/proc", "/sys", "/dev", "/tmp", "/run", "/root", "/var/tmp"] {
        archive.add(dir, Entry::Dir);
    }
    // The kernel opens /dev/console for init's stdio before /init mounts devtmpfs.
    archive.add("/dev/console", Entry::CharDevice { major: 5, minor: 1 });
    archive.add("/dev/null", Entry::CharDevice { major: 1, minor: 3 });
    // Name resolution without DNS: "localhost" must resolve for loopback tests.
    archive.add(
        "/etc/hosts",
        text("127.0.0.1 localhost\n::1 localhost ip6-localhost\n"),
    );
    archive.add(
        "/etc/nsswitch.conf",
        text("hosts: files\npasswd: files\ngroup: files\n"),
    );
    archive.add(
        "/etc/passwd",
        text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"),
    );
    archive.add("/etc/group", text("root:x:0:\nnogroup:x:65534:\n"));

    for (i, step) in steps.iter().enumerate() {
        archive.add(
            &format!("/steps/{i}.sh"),
            Entry::File {
                data: step.script.clone().into_bytes(),
                executable: true,
            },
        );
    }
    archive.add(
        "/init",
        Entry::File {
            data: init_script(steps, step_timeout_secs).into_bytes(),
            executable: true,
        },
    );

    let uncompressed_bytes = archive.data_bytes();
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // Written under a temporary name and renamed: a concurrent run may be
    // booting the previous archive.
    let tmp = out.with_extension(format!("tmp-{}", std::process::id()));
    let file =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    // Fast compression: the archive is rebuilt on every run, and the kernel's
    // decompression time hardly depends on the level.
    let mut gz =
        flate2::write::GzEncoder::new(std::io::BufWriter::new(file), flate2::Compression::fast());
    archive
        .write(&mut gz)
        .and_then(|()| gz.finish())
        .and_then(|mut w| std::io::Write::flush(&mut w))
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, out)
        .with_context(|| format!("moving {} to {}", tmp.display(), out.display()))?;
    let compressed_bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    Ok(Built {
        binaries: binaries.len(),
        libraries: libraries.len(),
        uncompressed_bytes,
        compressed_bytes,
    })
}

fn init_script(steps: &[Step], step_timeout_secs: u64) -> String {
    let mut s = String::from(
        r#"#!/bin/sh
# /init of the kernel-matrix VM, generated by `cargo xtask vm`.
export PATH=/bin HOME=/root TMPDIR=/tmp
uptime() { cut -d' ' -f1 /proc/uptime; }
note() { echo "@@wstrace-vm note: $*"; }
mount -t devtmpfs devtmpfs /dev || note "devtmpfs not mounted"
mount -t proc proc /proc || note "proc not mounted"
mount -t sysfs sysfs /sys || note "sysfs not mounted"
# What wstrace needs: tracefs (tracepoint formats, kprobe events), bpffs, debugfs.
mount -t tracefs tracefs /sys/kernel/tracing || note "tracefs not mounted"
mount -t debugfs debugfs /sys/kernel/debug || note "debugfs not mounted"
mount -t bpf bpf /sys/fs/bpf || note "bpffs not mounted"
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
ip link set lo up || note "lo not up"
# Kernel messages printed mid-line would garble result lines: keep the console
# for the steps and print the kernel's warnings and errors at the end instead.
echo 1 > /proc/sys/kernel/printk
echo "@@wstrace-vm begin kernel=$(uname -r) uptime=$(uptime)"
"#,
    );
    for (i, step) in steps.iter().enumerate() {
        s.push_str(&format!(
            "echo \"{MARK} step-begin {name}\"\n\
             timeout -s KILL {step_timeout_secs} sh /steps/{i}.sh </dev/null 2>&1\n\
             echo \"{MARK} step-end {name} rc=$? uptime=$(uptime)\"\n",
            name = step.name
        ));
    }
    s.push_str(&format!(
        "echo \"{MARK} dmesg-begin\"\n\
         dmesg -r | grep '^<[0-4]>' | tail -n 60\n\
         echo \"{MARK} end uptime=$(uptime)\"\n\
         poweroff -f\n"
    ));
    s
}

fn text(s: &str) -> Entry {
    Entry::File {
        data: s.as_bytes().to_vec(),
        executable: false,
    }
}

/// `binary` without its DWARF (`strip --strip-debug`: the symbol table and
/// `.eh_frame` stay). The VMs check the stacks of the servers wstrace
/// traces (ws-go-tls keeps its DWARF for that), never wstrace's own, and the release wstrace's debug info is
/// four fifths of it (55 MB -> 10 MB): the archive to compress, the guest
/// kernel to unpack under emulation and the VM's memory all shrink. Where
/// no strip is installed the binary goes in as it is, said once.
fn without_debug_info(binary: &Path, arch: Arch, out: &Path) -> Result<Vec<u8>> {
    let strip = match arch {
        _ if arch == Arch::host() => "strip".to_string(),
        Arch::Arm64 => format!("{}-strip", crate::build::AARCH64.tool_prefix),
        Arch::Amd64 => "x86_64-linux-gnu-strip".to_string(),
    };
    let name = binary
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = out.with_extension(format!("{name}-{}.stripped", std::process::id()));
    if let Some(dir) = tmp.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let stripped = process::capture(
        Command::new(&strip)
            .arg("--strip-debug")
            .arg("-o")
            .arg(&tmp)
            .arg(binary),
    );
    let data = match stripped {
        Ok(o) if o.status.success() => read(&tmp),
        Ok(o) => Err(anyhow::anyhow!(
            "`{strip} --strip-debug {}` failed: {}",
            binary.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(err) => {
            println!(
                "vm: note: {strip} not found ({err}): {} goes into the VMs with its debug info",
                binary.display()
            );
            read(binary)
        }
    };
    let _ = std::fs::remove_file(&tmp);
    data
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn busybox_applets(busybox: &Path) -> Result<Vec<String>> {
    let list = process::output(Command::new(busybox).arg("--list"))?;
    Ok(list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.contains('/'))
        .map(str::to_string)
        .collect())
}

/// Where Debian's cross toolchains keep a foreign architecture's libc and
/// loader (libc6-<arch>-cross, a dependency of gcc-<triple>), and where the
/// VM's loader looks for them.
fn cross_sysroot(arch: Arch) -> Result<(PathBuf, &'static str)> {
    match arch {
        Arch::Arm64 => Ok((
            PathBuf::from("/usr/aarch64-linux-gnu/lib"),
            "/lib/aarch64-linux-gnu",
        )),
        Arch::Amd64 => bail!("no cross sysroot for amd64 is configured (build on amd64)"),
    }
}

/// Shared libraries and dynamic loader of a foreign-architecture binary
/// (`ldd` cannot run its loader): its PT_INTERP and, transitively, its
/// DT_NEEDED libraries, found in the cross toolchain's sysroot.
fn cross_libraries(binary: &Path, arch: Arch) -> Result<Vec<(String, PathBuf)>> {
    let (sysroot, vm_dir) = cross_sysroot(arch)?;
    let mut out: Vec<(String, PathBuf)> = Vec::new();
    if let Some(interp) = elf_interpreter(binary)? {
        let name = Path::new(&interp)
            .file_name()
            .with_context(|| format!("{}: odd PT_INTERP {interp:?}", binary.display()))?;
        let host = sysroot.join(name);
        if !host.is_file() {
            bail!(
                "{} needs the loader {interp}, not in {}: run `cargo xtask setup` (installs the cross toolchain)",
                binary.display(),
                sysroot.display()
            );
        }
        out.push((interp, host));
    }
    let mut todo = llvm::elf_needed(binary)?;
    let mut seen: Vec<String> = Vec::new();
    while let Some(name) = todo.pop() {
        if seen.contains(&name) || name.contains('/') {
            continue;
        }
        let host = sysroot.join(&name);
        if !host.is_file() {
            bail!(
                "{} needs {name}, not in {}: install that library's {}-cross package",
                binary.display(),
                sysroot.display(),
                arch.debian()
            );
        }
        todo.extend(llvm::elf_needed(&host)?);
        out.push((format!("{vm_dir}/{name}"), host));
        seen.push(name);
    }
    Ok(out)
}

/// The PT_INTERP of an ELF file (None: statically linked).
fn elf_interpreter(binary: &Path) -> Result<Option<String>> {
    use object::read::elf::{ElfFile64, FileHeader as _, ProgramHeader as _};
    let data = std::fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    let elf = ElfFile64::<object::Endianness>::parse(&*data)
        .with_context(|| format!("{} is not a 64-bit ELF file", binary.display()))?;
    let endian = elf.endian();
    for ph in elf.elf_header().program_headers(endian, &*data)? {
        if let Some(interp) = ph.interpreter(endian, &*data)? {
            return Ok(Some(String::from_utf8_lossy(interp).into_owned()));
        }
    }
    Ok(None)
}

/// Shared libraries and dynamic loader of a binary, from `ldd`; empty for
/// static binaries.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    if !binary.is_file() {
        bail!("{} does not exist", binary.display());
    }
    let out = process::capture(Command::new("ldd").arg(binary))
        .context("running ldd (part of libc-bin) to find shared libraries")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stdout.contains("not a dynamic executable")
        || stderr.contains("not a dynamic executable")
        || stdout.contains("statically linked")
    {
        return Ok(Vec::new());
    }
    if !out.status.success() {
        bail!("`ldd {}` failed: {}", binary.display(), stderr.trim());
    }
    parse_ldd(&stdout).with_context(|| format!("shared libraries of {}", binary.display()))
}

fn parse_ldd(out: &str) -> Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in out.lines().map(str::trim) {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vDSO has no file.
        let target = line.split_once("=>").map(|(_, t)| t.trim()).unwrap_or(line);
        if target.starts_with("not found") {
            bail!("`{line}`: install the missing library");
        }
        if let Some(path) = target
            .split_whitespace()
            .next()
            .filter(|p| p.starts_with('/'))
        {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_is_parsed() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        let libs = parse_ldd(out).unwrap();
        assert_eq!(
            libs,
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").is_err());
    }
}
