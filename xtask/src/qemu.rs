//! Booting one kernel in QEMU and capturing its serial console.
//!
//! Software emulation (TCG) only: /dev/kvm exists on the development machines
//! but nested KVM hangs at boot there. TCG boots these kernels in seconds,
//! arm64 ones too (`qemu-system-aarch64 -machine virt`, the kernel's own
//! EFI-stub Image booted directly with `-kernel`).

use crate::kernels::Arch;
use anyhow::{Context as _, Result, bail};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct Boot<'a> {
    pub arch: Arch,
    pub vmlinuz: &'a Path,
    pub initrd: &'a Path,
    pub timeout: Duration,
    /// The serial console is copied here as it arrives.
    pub log: PathBuf,
    /// When set, serial lines are also echoed to stdout with this prefix.
    pub echo_prefix: Option<String>,
}

pub struct Outcome {
    pub serial: Vec<String>,
    pub wall: Duration,
    pub timed_out: bool,
    /// QEMU's own complaints (bad options, missing files ...).
    pub stderr: String,
}

pub fn qemu_binary(arch: Arch) -> Result<PathBuf> {
    let (binary, package) = match arch {
        Arch::Amd64 => ("qemu-system-x86_64", "qemu-system-x86"),
        Arch::Arm64 => ("qemu-system-aarch64", "qemu-system-arm"),
    };
    which::which(binary).with_context(|| {
        format!("{binary} is missing: run `cargo xtask setup` (installs {package})")
    })
}

/// The machine, CPU and console of `arch`'s VMs.
fn machine_args(arch: Arch) -> (&'static [&'static str], &'static str) {
    match arch {
        // `-cx16`: QEMU 7.2's TCG (Debian bookworm) sometimes corrupts
        // EFLAGS around `cmpxchg16b` when a timer interrupt lands next to
        // it; SLUB uses that instruction on every allocation, so the guest
        // double-faults in kmem_cache_alloc. Under CPU load 3 of 8 runs of
        // the 6.12 kernel died that way with `-cpu max`, 0 of 18 without
        // CX16 (SLUB then takes its locked slow path). Nothing wstrace
        // tests depends on CX16.
        Arch::Amd64 => (&["-cpu", "max,-cx16"], "console=ttyS0"),
        // `virt`: the generic board with a PL011 UART (ttyAMA0). `max`: every
        // feature TCG emulates, pointer authentication included (Debian's
        // arm64 code signs return addresses with it), with QEMU's cheap
        // implementation-defined PAC algorithm instead of QARMA, whose
        // emulation makes every signed call several times slower.
        Arch::Arm64 => (
            &["-machine", "virt", "-cpu", "max,pauth-impdef=on"],
            "console=ttyAMA0",
        ),
    }
}

pub fn boot(b: &Boot) -> Result<Outcome> {
    let qemu = qemu_binary(b.arch)?;
    let (machine, console) = machine_args(b.arch);
    let mut log =
        std::fs::File::create(&b.log).with_context(|| format!("creating {}", b.log.display()))?;
    let start = Instant::now();
    let mut child = Command::new(&qemu)
        .args(["-accel", "tcg"])
        .args(machine)
        .args(["-m", "1024", "-smp", "1"])
        .arg("-kernel")
        .arg(b.vmlinuz)
        .arg("-initrd")
        .arg(b.initrd)
        // panic=-1 reboots at once on a panic (e.g. /init dying), and
        // -no-reboot turns that reboot into QEMU exiting: no hang.
        .arg("-append")
        .arg(format!("{console} panic=-1 quiet"))
        .args(["-nographic", "-no-reboot", "-net", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", qemu.display()))?;

    let stdout = child.stdout.take().context("qemu stdout not captured")?;
    let stderr = child.stderr.take().context("qemu stderr not captured")?;
    let echo = b.echo_prefix.clone();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        // The console emits \r\n and may emit bytes that are not UTF-8.
        for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
            let line = strip_terminal_controls(&String::from_utf8_lossy(&line));
            let _ = writeln!(log, "{line}");
            if let Some(prefix) = &echo {
                println!("{prefix}{line}");
            }
            lines.push(line);
        }
        lines
    });
    let stderr_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
        s
    });

    let mut timed_out = false;
    loop {
        if child.try_wait().context("waiting for qemu")?.is_some() {
            break;
        }
        if start.elapsed() > b.timeout {
            timed_out = true;
            // Our own child, killed by its handle; reaped right below.
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let wall = start.elapsed();
    let serial = reader.join().unwrap_or_default();
    let stderr = stderr_reader.join().unwrap_or_default();
    if serial.is_empty() && !stderr.trim().is_empty() {
        bail!("qemu failed: {}", stderr.trim());
    }
    Ok(Outcome {
        serial,
        wall,
        timed_out,
        stderr,
    })
}

/// Drops terminal escape sequences (SeaBIOS clears the screen) and other
/// control characters, which would garble logs and marker matching.
fn strip_terminal_controls(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                // CSI: ESC [ parameters final-byte; otherwise ESC plus one char.
                if chars.next() == Some('[') {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
            }
            '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn terminal_controls_are_dropped() {
        let line = "\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (version 1.16)\r";
        assert_eq!(
            super::strip_terminal_controls(line),
            "SeaBIOS (version 1.16)"
        );
    }
}
