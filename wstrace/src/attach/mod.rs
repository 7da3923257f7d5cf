//! Loading the eBPF object and attaching one probe set, chosen by trying.
//!
//! `auto` tries fentry, then kprobe, then tracepoint, and keeps the first set
//! that loads *and* attaches (feature probes are too coarse; see
//! libbpf-tools' `fentry_can_attach`). Each attempt loads a fresh object, so
//! a half-attached set never lingers: dropping `Ebpf` detaches everything.
use std::path::Path;

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::PerCpuArray,
    programs::{FEntry, FExit, KProbe, TracePoint},
};
use wstrace_common::{MAX_PORTS, ProbeSet, globals};

pub mod btf;
pub mod check;
pub mod privileges;
pub mod tracefs;

use btf::KernelOffsets;

/// The object built by build.rs from wstrace-ebpf.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/wstrace"));

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProbeChoice {
    /// The best set that loads and attaches: fentry, then kprobe, then tracepoint.
    Auto,
    /// fentry on tcp_sendmsg/tcp_close (BTF trampolines; needs the function tracer).
    Fentry,
    /// kprobe on tcp_sendmsg/tcp_close (needs CONFIG_KPROBES).
    Kprobe,
    /// Tracepoints only: syscall write family + sock/tcp tracepoints (locked-down kernels).
    Tracepoint,
}

impl ProbeChoice {
    fn candidates(self) -> &'static [ProbeSet] {
        match self {
            Self::Auto => &[ProbeSet::Fentry, ProbeSet::Kprobe, ProbeSet::Tracepoint],
            Self::Fentry => &[ProbeSet::Fentry],
            Self::Kprobe => &[ProbeSet::Kprobe],
            Self::Tracepoint => &[ProbeSet::Tracepoint],
        }
    }
}

/// The kernel LRU's per-CPU local free list target (LOCAL_FREE_TARGET).
const LRU_LOCAL_FREE: u32 = 128;

pub struct Settings<'a> {
    pub ports: &'a [u16],
    /// Upgraded sockets the kernel map holds (LRU beyond).
    pub max_sockets: u32,
    /// Ring buffer size in bytes (power of two, multiple of the page size).
    pub ring_bytes: u32,
    /// User stack bytes copied per close for dwarf unwinding; 0 = none.
    pub user_stack_bytes: u32,
}

pub struct Attached {
    pub ebpf: Ebpf,
    pub set: ProbeSet,
    /// Why better sets were skipped (auto), one line each.
    pub skipped: Vec<String>,
    /// What this set cannot see on this kernel.
    pub limits: Vec<String>,
}

impl Attached {
    /// Detaches and unloads every program, keeping the maps: after this no
    /// new event can enter the ring buffer, so what is in it is all there is
    /// to read, and the lost-event counter is final.
    pub fn detach_all(&mut self) {
        for (_, prog) in self.ebpf.programs_mut() {
            // An error here means the program was not loaded: nothing to undo.
            let _ = match prog {
                aya::programs::Program::TracePoint(p) => p.unload(),
                aya::programs::Program::KProbe(p) => p.unload(),
                aya::programs::Program::FEntry(p) => p.unload(),
                aya::programs::Program::FExit(p) => p.unload(),
                _ => Ok(()),
            };
        }
    }
}

/// Shared tracepoints: (program, category, name).
const COMMON: [(&str, &str, &str); 3] = [
    ("tcp_send_reset", "tcp", "tcp_send_reset"),
    ("tcp_receive_reset", "tcp", "tcp_receive_reset"),
    ("tcp_destroy_sock", "tcp", "tcp_destroy_sock"),
];

/// Tracepoint set: the write-family syscalls that can carry a 101 or a close
/// frame, the read family (entry and exit) that carries the request head
/// and the peer's close frames, and accept (which processes serve a traced
/// port, so reads elsewhere are skipped cheaply).
const SYSCALLS: [&str; 14] = [
    "sys_enter_write",
    "sys_enter_sendto",
    "sys_enter_writev",
    "sys_enter_sendmsg",
    "sys_enter_read",
    "sys_enter_recvfrom",
    "sys_enter_readv",
    "sys_enter_recvmsg",
    "sys_exit_read",
    "sys_exit_recvfrom",
    "sys_exit_readv",
    "sys_exit_recvmsg",
    "sys_exit_accept",
    "sys_exit_accept4",
];

pub fn attach(
    choice: ProbeChoice,
    settings: &Settings<'_>,
    offsets: &KernelOffsets,
    tracefs_root: &Path,
) -> Result<Attached> {
    if EBPF_OBJECT.is_empty() {
        bail!(
            "this wstrace binary was built without its eBPF programs (AYA_BUILD_SKIP was set): rebuild with `cargo build --release`"
        );
    }
    let tp_globals = tracepoint_globals(tracefs_root)?;
    let mut skipped = Vec::new();
    for &set in choice.candidates() {
        match try_set(set, settings, offsets, &tp_globals, tracefs_root) {
            Ok(ebpf) => {
                return Ok(Attached {
                    ebpf,
                    set,
                    skipped,
                    limits: limits(set, tracefs_root),
                });
            }
            Err(e) => skipped.push(format!("{}: {}", set.name(), explain(set, &e))),
        }
    }
    match choice {
        ProbeChoice::Auto => bail!(
            "no probe set could be attached on this kernel:\n  {}",
            skipped.join("\n  ")
        ),
        _ => Err(anyhow!("{}", skipped.join("; ")))
            .context("the requested probe set cannot be attached (try --probe auto)"),
    }
}

/// What the chosen set does not cover, said once at start-up.
fn limits(set: ProbeSet, root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if set == ProbeSet::Tracepoint {
        out.push(
            "tracepoint set: 101 responses and request heads are seen in the write/send/writev/sendmsg and read/recv/readv/recvmsg syscalls; io_uring, sendfile, sendmmsg and recvmmsg are not covered; request heads are read in processes that listen on, accept on or have upgraded on a traced port (a worker given its sockets by another process shows none on its first upgrade)"
                .into(),
        );
    }
    if !tracefs::event_exists(root, "tcp", "tcp_destroy_sock") {
        out.push(
            "tcp:tcp_destroy_sock is missing: reports rely on state changes and timers".into(),
        );
    }
    out
}

/// The kernel's refusal, translated into what it means for this set.
fn explain(set: ProbeSet, e: &anyhow::Error) -> String {
    let raw = one_line(e);
    let hint = match set {
        ProbeSet::Fentry
            if raw.contains("Operation not permitted") || raw.contains("os error 524") =>
        {
            Some(
                "fentry is not available on this kernel: it refused BTF trampolines (ftrace locked, or no CONFIG_FUNCTION_TRACER / DYNAMIC_FTRACE_WITH_DIRECT_CALLS)",
            )
        }
        ProbeSet::Kprobe if raw.contains("kprobe/type") || raw.contains("kprobe_events") => {
            Some("kprobes are not available on this kernel (CONFIG_KPROBES is off)")
        }
        _ => None,
    };
    match hint {
        Some(h) => format!("{h} [{raw}]"),
        None => raw,
    }
}

fn one_line(e: &anyhow::Error) -> String {
    let s = format!("{e:#}");
    let mut lines = s.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or_default();
    // A verifier log starts with its first instruction and ends with the
    // reason it gave up: keep the reason (last two lines), not the start.
    let text = match first.split_once("Verifier output:") {
        Some((what, _)) => {
            let tail: Vec<&str> = lines.collect();
            let reason = tail[tail.len().saturating_sub(2)..].join(" | ");
            if reason.is_empty() {
                what.trim_end().trim_end_matches('.').to_string()
            } else {
                format!("{what}verifier: {reason}")
            }
        }
        None => first.to_string(),
    };
    truncate_chars(&text, 400)
}

fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

fn tracepoint_globals(root: &Path) -> Result<Vec<(&'static str, u64)>> {
    use globals::*;
    let f = |cat: &str, name: &str, field: &str| tracefs::field_offset(root, cat, name, field);
    Ok(vec![
        (TP_STATE_SKADDR, f("sock", "inet_sock_set_state", "skaddr")?),
        (
            TP_STATE_OLDSTATE,
            f("sock", "inet_sock_set_state", "oldstate")?,
        ),
        (
            TP_STATE_NEWSTATE,
            f("sock", "inet_sock_set_state", "newstate")?,
        ),
        (TP_STATE_SPORT, f("sock", "inet_sock_set_state", "sport")?),
        (
            TP_STATE_PROTOCOL,
            f("sock", "inet_sock_set_state", "protocol")?,
        ),
        (TP_SEND_RESET_SKADDR, f("tcp", "tcp_send_reset", "skaddr")?),
        (
            TP_RECV_RESET_SKADDR,
            f("tcp", "tcp_receive_reset", "skaddr")?,
        ),
        (
            TP_DESTROY_SKADDR,
            f("tcp", "tcp_destroy_sock", "skaddr").unwrap_or(globals::ABSENT),
        ),
    ])
}

fn try_set(
    set: ProbeSet,
    settings: &Settings<'_>,
    offsets: &KernelOffsets,
    tp_globals: &[(&'static str, u64)],
    root: &Path,
) -> Result<Ebpf> {
    match set {
        ProbeSet::Fentry | ProbeSet::Kprobe => {
            if let Some(why) = &offsets.sendmsg_path_missing {
                bail!("cannot read the tcp_sendmsg/tcp_recvmsg buffers on this kernel: {why}");
            }
        }
        ProbeSet::Tracepoint => {
            if let Some(why) = &offsets.fd_walk_missing {
                bail!("cannot map a file descriptor to its socket on this kernel: {why}");
            }
            for sc in SYSCALLS {
                if !tracefs::event_exists(root, "syscalls", sc) {
                    bail!("tracepoint syscalls:{sc} is missing (CONFIG_FTRACE_SYSCALLS)");
                }
            }
        }
    }
    let mut ports = [0u64; MAX_PORTS];
    for (slot, &p) in ports.iter_mut().zip(settings.ports) {
        *slot = u64::from(p);
    }
    let mut loader = EbpfLoader::new();
    for (name, value) in offsets.globals.iter().chain(tp_globals) {
        loader.override_global(name, value, true);
    }
    for (name, value) in globals::PORTS.iter().zip(ports.iter()) {
        loader.override_global(name, value, true);
    }
    let user_stack_bytes = u64::from(settings.user_stack_bytes);
    loader.override_global(globals::USER_STACK_BYTES, &user_stack_bytes, true);
    let cpus: u32 = aya::util::nr_cpus()
        .map_err(|(path, e)| anyhow::anyhow!("reading {path}: {e}"))?
        .try_into()
        .unwrap_or(u32::MAX);
    // The copy is built in a scratch slot per CPU (indexed by CPU id).
    let scratch_slots = if user_stack_bytes > 0 { cpus } else { 1 };
    // The kernel's LRU is not exact: each CPU keeps a local free list of up
    // to 128 nodes, and a full small map evicts from it, not strictly the
    // oldest socket. With that slack per CPU the kernel keeps at least the
    // `--max-sockets` newest sockets, which the daemon tracks exactly (and
    // counts the rest as evicted). Measured: 64 over 300 open sockets
    // reported 30-55 without it.
    let upgraded_entries = settings
        .max_sockets
        .saturating_add(LRU_LOCAL_FREE.saturating_mul(cpus));
    loader
        .map_max_entries("UPGRADED", upgraded_entries)
        .map_max_entries("EVENTS", settings.ring_bytes)
        .map_max_entries("CLOSE_SCRATCH", scratch_slots);
    let mut ebpf = loader
        .load(EBPF_OBJECT)
        .context("loading the eBPF object")?;

    let state_prog = match set {
        // Only the tracepoint set has no tcp_close hook: the closing
        // transition itself records the closer.
        ProbeSet::Tracepoint => "inet_sock_set_state_closer",
        _ => "inet_sock_set_state",
    };
    attach_tracepoint(&mut ebpf, state_prog, "sock", "inet_sock_set_state")?;
    for (prog, cat, name) in COMMON {
        if prog == "tcp_destroy_sock" && !tracefs::event_exists(root, cat, name) {
            continue; // older kernels; see limits()
        }
        attach_tracepoint(&mut ebpf, prog, cat, name)?;
    }
    match set {
        ProbeSet::Fentry => {
            let btf = Btf::from_sys_fs().context("reading kernel BTF for fentry")?;
            for (prog, func) in [
                ("fentry_tcp_sendmsg", "tcp_sendmsg"),
                ("fentry_tcp_close", "tcp_close"),
                ("fentry_tcp_recvmsg", "tcp_recvmsg"),
            ] {
                let p: &mut FEntry = program(&mut ebpf, prog)?;
                p.load(func, &btf)
                    .with_context(|| format!("loading fentry/{func}"))?;
                p.attach()
                    .with_context(|| format!("attaching fentry/{func}"))?;
            }
            // One fexit program per parameter count (see fentry.rs); btf.rs
            // only lets this set through with a count that has one.
            let nargs = offsets
                .get(globals::TCP_RECVMSG_NARGS)
                .unwrap_or(globals::ABSENT);
            let p: &mut FExit = program(&mut ebpf, &format!("fexit_tcp_recvmsg{nargs}"))?;
            p.load("tcp_recvmsg", &btf)
                .context("loading fexit/tcp_recvmsg")?;
            p.attach().context("attaching fexit/tcp_recvmsg")?;
        }
        ProbeSet::Kprobe => {
            for (prog, func) in [
                ("kprobe_tcp_sendmsg", "tcp_sendmsg"),
                ("kprobe_tcp_close", "tcp_close"),
                ("kprobe_tcp_recvmsg", "tcp_recvmsg"),
                ("kretprobe_tcp_recvmsg", "tcp_recvmsg"),
            ] {
                let p: &mut KProbe = program(&mut ebpf, prog)?;
                p.load().with_context(|| format!("loading kprobe/{func}"))?;
                p.attach(func, 0)
                    .with_context(|| format!("attaching kprobe/{func}"))?;
            }
        }
        ProbeSet::Tracepoint => {
            for sc in SYSCALLS {
                attach_tracepoint(&mut ebpf, sc, "syscalls", sc)?;
            }
        }
    }
    Ok(ebpf)
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the eBPF object (build mismatch)"))?;
    p.try_into()
        .with_context(|| format!("program {name} has an unexpected type"))
}

fn attach_tracepoint(ebpf: &mut Ebpf, prog: &str, category: &str, name: &str) -> Result<()> {
    let p: &mut TracePoint = program(ebpf, prog)?;
    p.load()
        .with_context(|| format!("loading tracepoint program {prog}"))?;
    p.attach(category, name)
        .with_context(|| format!("attaching tracepoint {category}:{name}"))?;
    Ok(())
}

/// The map of processes the tracepoint set reads requests for (see
/// wstrace-ebpf maps::SERVERS), taken out of `ebpf` for the daemon to add
/// listeners to; `None` if the object has none (build mismatch).
pub fn take_servers(ebpf: &mut Ebpf) -> Option<aya::maps::HashMap<aya::maps::MapData, u32, u8>> {
    aya::maps::HashMap::try_from(ebpf.take_map("SERVERS")?).ok()
}

/// Runs the kernel skipped, summed over the loaded programs: a program is
/// not run when another BPF program is already running on that CPU in a
/// context it cannot nest in (`recursion_misses` in the program's fdinfo,
/// Linux 5.12+; 0 where the kernel does not say). Each skipped run may be a
/// missed event. Read before [`Attached::detach_all`], which closes the fds.
pub fn recursion_misses(ebpf: &Ebpf) -> u64 {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    ebpf.programs()
        .filter_map(|(_, p)| p.fd().ok())
        .filter_map(|fd| {
            let raw = fd.as_fd().as_raw_fd();
            std::fs::read_to_string(format!("/proc/self/fdinfo/{raw}")).ok()
        })
        .map(|info| fdinfo_field(&info, "recursion_misses"))
        .sum()
}

/// A `name:\tvalue` line of an fdinfo file; 0 if absent.
fn fdinfo_field(info: &str, name: &str) -> u64 {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok())
        .unwrap_or(0)
}

/// Sum of the per-CPU "ring buffer full" counters.
pub fn lost_events(ebpf: &Ebpf) -> u64 {
    let Some(map) = ebpf.map("LOST") else {
        return 0;
    };
    let Ok(arr) = PerCpuArray::<_, u64>::try_from(map) else {
        return 0;
    };
    arr.get(&0, 0).map(|v| v.iter().sum()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_fields() {
        let info = "pos:\t0\nprog_id:\t42\nrun_cnt:\t7\nrecursion_misses:\t3\n";
        assert_eq!(fdinfo_field(info, "recursion_misses"), 3);
        assert_eq!(fdinfo_field(info, "run_cnt"), 7);
        assert_eq!(fdinfo_field(info, "verified_insns"), 0);
    }
}
