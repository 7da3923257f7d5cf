//! Loading the eBPF object and attaching one probe set, chosen by trying.
//!
//! `auto` tries fentry, then kprobe, then tracepoint, and keeps the first set
//! that loads *and* attaches (feature probes are too coarse; see
//! libbpf-tools' `fentry_can_attach`). Each attempt loads a fresh object, so
//! a half-attached set never lingers: dropping `Ebpf` detaches everything.
//!
//! The programs learn ports, sizes and this kernel's layout from one
//! [`KernelConfig`], built once per `attach` ([`kernel_config`]: BTF offsets
//! from `btf`, tracepoint fields from `tracefs`) and patched into every
//! attempt's object as its `CONFIG` global. Failures are typed
//! ([`AttachFailure`], [`AttachError`]): what the user reads comes from their
//! kind.
use std::path::Path;

use anyhow::Result;
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{HashMap, PerCpuArray},
    programs::{FEntry, FExit, KProbe, RawTracePoint, TracePoint},
};
use wstrace_common::{ABSENT, KernelConfig, ProbeSet, ProcessBudget, SYSCALL_TRACEPOINTS};

use crate::model::Ports;

pub mod btf;
pub mod error;
pub mod floor;
pub mod gotls;
pub mod perf;
pub mod program;
pub mod retprobe;
pub mod timing;
pub mod tls;
pub mod tracefs;
pub mod uprobe;

use btf::KernelOffsets;
pub use error::{AttachError, AttachFailure, FailureKind};
use retprobe::RetProbe;
use timing::timed;

/// The object built by build.rs from wstrace-ebpf.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/wstrace"));

/// `--tls`: whether wss:// servers get uprobes (the attach stage opens them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsMode {
    Auto,
    Off,
}

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
    pub ports: &'a Ports,
    /// Upgraded sockets the kernel map holds (LRU beyond).
    pub max_sockets: u32,
    /// Ring buffer size in bytes (power of two, multiple of the page size).
    pub ring_bytes: u32,
    /// User stack bytes copied per close for dwarf unwinding; 0 = none.
    pub user_stack_bytes: u32,
    /// Load the TLS uprobe programs (attached per process later, `tls`).
    pub tls: bool,
    /// `--debug-probes`: the programs log their decisions (aya-log).
    pub debug_probes: bool,
}

pub struct Attached {
    pub ebpf: Ebpf,
    pub set: ProbeSet,
    /// Why better sets were skipped (auto); each displays as one line.
    pub skipped: Vec<AttachFailure>,
    /// What this set cannot see on this kernel.
    pub limits: Vec<String>,
    /// The kprobe set's tcp_recvmsg kretprobe, made through tracefs (see
    /// retprobe.rs); `None` for other sets, or where tracefs refused it.
    pub retprobe: Option<RetProbe>,
    /// The TLS uprobe programs are loaded (`Settings::tls`), ready to attach.
    pub tls_loaded: bool,
}

impl Attached {
    /// Detaches and unloads every program, keeping the maps: after this no
    /// new event can enter the ring buffer, so what is in it is all there is
    /// to read, and the lost-event counter is final.
    pub fn detach_all(&mut self) {
        self.retprobe = None;
        for (_, prog) in self.ebpf.programs_mut() {
            // An error here means the program was not loaded: nothing to undo.
            let _ = match prog {
                aya::programs::Program::TracePoint(p) => p.unload(),
                aya::programs::Program::RawTracePoint(p) => p.unload(),
                aya::programs::Program::KProbe(p) => p.unload(),
                aya::programs::Program::FEntry(p) => p.unload(),
                aya::programs::Program::FExit(p) => p.unload(),
                aya::programs::Program::UProbe(p) => p.unload(),
                _ => Ok(()),
            };
        }
    }

    /// Whether map commands on an open fd still work (the LOST counters: a
    /// lookup, gated like the SERVERS updates the run makes).
    pub fn maps_usable(&self) -> bool {
        let Some(map) = self.ebpf.map("LOST") else {
            return true;
        };
        let Ok(arr) = aya::maps::PerCpuArray::<_, u64>::try_from(map) else {
            return true;
        };
        match arr.get(&0, 0) {
            Ok(_) => true,
            Err(aya::maps::MapError::SyscallError(e)) => {
                e.io_error.raw_os_error() != Some(libc::EPERM)
            }
            Err(_) => true,
        }
    }
}

/// Shared socket events, raw tracepoints (see wstrace-ebpf probes/common.rs
/// for why): (program, category, name).
const COMMON: [(&str, &str, &str); 3] = [
    ("tcp_send_reset", "tcp", "tcp_send_reset"),
    ("tcp_receive_reset", "tcp", "tcp_receive_reset"),
    ("tcp_destroy_sock", "tcp", "tcp_destroy_sock"),
];

/// Shared tracepoints that only add to a report (who sent the signal that
/// ended a server, the OOM killer): attached where the kernel has them and
/// their fields were found, and said otherwise (`limits`).
const ENDINGS: [(&str, &str, &str); 2] = [
    ("signal_generate", "signal", "signal_generate"),
    ("oom_mark_victim", "oom", "mark_victim"),
];

/// Whether the config holds every field `prog` (of [`ENDINGS`]) reads.
fn ending_fields_known(config: &KernelConfig, prog: &str) -> bool {
    match prog {
        "signal_generate" => [
            config.tp_signal_sig,
            config.tp_signal_code,
            config.tp_signal_pid,
            config.tp_signal_result,
        ]
        .iter()
        .all(|&f| f != ABSENT),
        _ => config.tp_oom_pid != ABSENT,
    }
}

pub fn attach(
    choice: ProbeChoice,
    settings: &Settings<'_>,
    offsets: &KernelOffsets,
    tracefs_root: &Path,
) -> Result<Attached, AttachError> {
    if EBPF_OBJECT.is_empty() {
        return Err(AttachError::NoObject);
    }
    let config = kernel_config(settings, offsets, tracefs_root);
    let cpus: u32 = aya::util::nr_cpus()
        .map_err(|(path, e)| AttachError::Config(anyhow::anyhow!("reading {path}: {e}")))?
        .try_into()
        .unwrap_or(u32::MAX);
    // One loader for every attempt: creating one parses the kernel's BTF
    // (megabytes), which `auto` used to do once per set it tried.
    let mut loader = timed(
        || "kernel BTF for the object".into(),
        || object_loader(settings, &config, cpus),
    );
    let mut vmlinux: Option<Btf> = None;
    let mut skipped = Vec::new();
    for &set in choice.candidates() {
        match try_set(
            set,
            &config,
            settings.ports,
            &mut loader,
            &mut vmlinux,
            offsets,
            tracefs_root,
        ) {
            Ok(mut loaded) => {
                let mut limits = limits(set, tracefs_root);
                limits.extend(loaded.limits);
                let tls_loaded = settings.tls
                    && match timed(|| "load TLS uprobes".into(), || tls::load(&mut loaded.ebpf)) {
                        Ok(()) => true,
                        Err(e) => {
                            limits.push(format!("TLS (wss://) is not covered: {e}"));
                            false
                        }
                    };
                return Ok(Attached {
                    ebpf: loaded.ebpf,
                    set,
                    skipped,
                    limits,
                    retprobe: loaded.retprobe,
                    tls_loaded,
                });
            }
            Err(e) => skipped.push(e),
        }
    }
    Err(AttachError::NoProbeSet {
        choice,
        failures: skipped,
    })
}

/// What the chosen set does not cover, said once at start-up.
fn limits(set: ProbeSet, root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if set == ProbeSet::Tracepoint {
        out.push(
            "tracepoint set: 101 responses and request heads are seen in the write/send/writev/sendmsg and read/recv/readv/recvmsg syscalls; io_uring, sendfile, sendmmsg and recvmmsg are not covered; reads are followed in processes that listen on, accept on or have upgraded on a traced port, or wrote a request to one (the client side) (a worker given its sockets by another process shows none on its first upgrade)"
                .into(),
        );
    }
    for (_, cat, name) in ENDINGS {
        if !tracefs::event_exists(root, cat, name) {
            out.push(format!(
                "{cat}:{name} is missing: reports of servers that were killed do not name the sender or the OOM killer"
            ));
        }
    }
    if !tracefs::event_exists(root, "tcp", "tcp_destroy_sock") {
        out.push(
            "tcp:tcp_destroy_sock is missing: reports rely on state changes and timers".into(),
        );
    }
    out
}

/// The config the programs run with: ports and the stack-copy size from
/// `settings`, struct offsets from the kernel's BTF (`offsets`), tracepoint
/// record fields from tracefs.
fn kernel_config(settings: &Settings<'_>, offsets: &KernelOffsets, root: &Path) -> KernelConfig {
    let mut config = offsets.config;
    // The named ports go in the TRACED_PORTS bitmap after the load.
    config.all_ports = u64::from(*settings.ports == Ports::All);
    config.user_stack_bytes = u64::from(settings.user_stack_bytes);
    config.tls = u64::from(settings.tls);
    config.debug_probes = u64::from(settings.debug_probes);
    for &(slot, category, name, field) in TRACEPOINT_FIELDS {
        // ABSENT when missing: `ending_fields_known` then leaves the
        // program out, and `limits` says what that costs.
        *slot(&mut config) = tracefs::field_offset(root, category, name, field).unwrap_or(ABSENT);
    }
    config
}

/// Where a tracepoint field's offset goes in the config.
type TpSlot = fn(&mut KernelConfig) -> &mut u64;

/// (config field, category, tracepoint, field): the optional report
/// enrichments ([`ENDINGS`]); the socket events are raw tracepoints.
#[rustfmt::skip]
const TRACEPOINT_FIELDS: &[(TpSlot, &str, &str, &str)] = &[
    (|c| &mut c.tp_signal_sig, "signal", "signal_generate", "sig"),
    (|c| &mut c.tp_signal_code, "signal", "signal_generate", "code"),
    (|c| &mut c.tp_signal_pid, "signal", "signal_generate", "pid"),
    (|c| &mut c.tp_signal_result, "signal", "signal_generate", "result"),
    (|c| &mut c.tp_oom_pid, "oom", "mark_victim", "pid"),
];

/// The user stack copies' ring (`STACKS`): each call site sends at most
/// `STACK_COPIES_PER_SITE` copies a second, so 2 MiB (~120 copies of
/// 16 KiB, ~60 at the 32 KiB maximum) rides out a burst of new sites while
/// the reader catches up (a copy that finds it full is dropped, the close
/// still sent); one page when no copy is made (a ring cannot be empty).
pub fn stack_ring_bytes(user_stack_bytes: u64) -> u32 {
    if user_stack_bytes > 0 {
        2 * 1024 * 1024
    } else {
        4096
    }
}

/// The object loader with the daemon's settings: the kernel config, and
/// map sizes from the ports' needs and the CPU count.
fn object_loader<'a>(
    settings: &Settings<'_>,
    config: &'a KernelConfig,
    cpus: u32,
) -> EbpfLoader<'a> {
    // The copy is built in a scratch slot per CPU (indexed by CPU id).
    let scratch_slots = if config.user_stack_bytes > 0 { cpus } else { 1 };
    // The kernel's LRU is not exact: each CPU keeps a local free list of up
    // to 128 nodes, and a full small map evicts from it, not strictly the
    // oldest socket. With that slack per CPU the kernel keeps at least the
    // `--max-sockets` newest sockets, which the daemon tracks exactly (and
    // counts the rest as evicted). Measured: 64 over 300 open sockets
    // reported 30-55 without it.
    let upgraded_entries = settings
        .max_sockets
        .saturating_add(LRU_LOCAL_FREE.saturating_mul(cpus));
    let mut loader = EbpfLoader::new();
    loader
        .override_global("CONFIG", config, true)
        .map_max_entries("UPGRADED", upgraded_entries)
        // Every upgraded server socket stays in ACCEPTED until destroyed:
        // at the default 65,536 entries, more idle upgraded connections
        // than that made the LRU evict fresh accepts too, whose 101 was then
        // ignored ("no listener accepted the socket").
        .map_max_entries("ACCEPTED", upgraded_entries)
        .map_max_entries("EVENTS", settings.ring_bytes)
        .map_max_entries("STACK_SCRATCH", scratch_slots)
        .map_max_entries("STACKS", stack_ring_bytes(config.user_stack_bytes));
    loader
}

/// Where aya attaches kprobes (the kprobe PMU); absent without CONFIG_KPROBES.
const KPROBE_PMU_TYPE: &str = "/sys/bus/event_source/devices/kprobe/type";

/// A set's object, loaded and attached.
struct Loaded {
    ebpf: Ebpf,
    retprobe: Option<RetProbe>,
    /// What this attach could not do as asked (said with the set's limits).
    limits: Vec<String>,
}

fn try_set(
    set: ProbeSet,
    config: &KernelConfig,
    ports: &Ports,
    loader: &mut EbpfLoader<'_>,
    vmlinux: &mut Option<Btf>,
    offsets: &KernelOffsets,
    root: &Path,
) -> Result<Loaded, AttachFailure> {
    match set {
        ProbeSet::Fentry | ProbeSet::Kprobe => {
            if let Some(why) = &offsets.sendmsg_path_missing {
                return Err(AttachFailure::lacks(
                    set,
                    format!(
                        "cannot read the tcp_sendmsg/tcp_recvmsg buffers on this kernel: {why}"
                    ),
                ));
            }
            // Said before loading anything: the same failure the attach
            // would end in, without the load it would cost.
            if set == ProbeSet::Kprobe && !Path::new(KPROBE_PMU_TYPE).exists() {
                return Err(AttachFailure::new(
                    set,
                    FailureKind::NotSupported,
                    "attaching kprobe/tcp_sendmsg",
                    format!("`{KPROBE_PMU_TYPE}`: No such file or directory"),
                ));
            }
        }
        ProbeSet::Tracepoint => {
            if let Some(why) = &offsets.fd_walk_missing {
                return Err(AttachFailure::lacks(
                    set,
                    format!("cannot map a file descriptor to its socket on this kernel: {why}"),
                ));
            }
            // The write-family syscalls that can carry a 101 or a close
            // frame, the read family (entry and exit) that carries the
            // request head and the peer's close frames, and accept (which
            // processes serve a traced port, so reads elsewhere are skipped
            // cheaply); several per program where the bodies are the same.
            for sc in SYSCALL_TRACEPOINTS.iter().flat_map(|(_, hooks)| *hooks) {
                if !tracefs::event_exists(root, "syscalls", sc) {
                    return Err(AttachFailure::lacks(
                        set,
                        format!("tracepoint syscalls:{sc} is missing (CONFIG_FTRACE_SYSCALLS)"),
                    ));
                }
            }
        }
    }
    // The set's own hooks first: they are what a kernel refuses (fentry
    // without trampolines), and a refusal then costs no tracepoint attach.
    let mut loaded = Loaded {
        ebpf: timed(|| "load object (maps)".into(), || loader.load(EBPF_OBJECT))
            .map_err(|e| AttachFailure::from_object(set, "loading the eBPF object", &e))?,
        retprobe: None,
        limits: Vec::new(),
    };
    // Before any program runs: an attached program would see no port.
    fill_port_bitmap(&mut loaded.ebpf, ports)
        .map_err(|e| AttachFailure::new(set, FailureKind::Other, "filling the port bitmap", e))?;
    attach_set_hooks(&mut loaded, set, vmlinux, offsets, root)?;
    let ebpf = &mut loaded.ebpf;
    let state_prog = match set {
        // Only the tracepoint set has no tcp_close hook: the closing
        // transition itself records the closer.
        ProbeSet::Tracepoint => "inet_sock_set_state_closer",
        _ => "inet_sock_set_state",
    };
    attach_raw_tracepoint(ebpf, set, state_prog, "inet_sock_set_state")?;
    for (prog, cat, name) in COMMON {
        if prog == "tcp_destroy_sock" && !tracefs::event_exists(root, cat, name) {
            continue; // older kernels; see limits()
        }
        attach_raw_tracepoint(ebpf, set, prog, name)?;
    }
    for (prog, cat, name) in ENDINGS {
        if ending_fields_known(config, prog) && tracefs::event_exists(root, cat, name) {
            attach_tracepoint(ebpf, set, prog, cat, &[name])?;
        }
    }
    if let Err(why) = attach_interp_walk(ebpf, set, root) {
        loaded.limits.push(format!(
            "Python and PHP functions are not shown in stacks (the native stack still is): {}",
            why.step_and_detail()
        ));
    }
    Ok(loaded)
}

/// The syscall tracepoints where the interpreter walk runs (entry of
/// close(2) and shutdown(2)) and where it is dropped (their exit)
/// (wstrace-ebpf `probes::interp`).
const INTERP_ENTRIES: [&str; 2] = ["sys_enter_close", "sys_enter_shutdown"];
const INTERP_EXITS: [&str; 2] = ["sys_exit_close", "sys_exit_shutdown"];

/// The interpreter walk's programs, on the entry and exit of close(2) and
/// shutdown(2), with every set: the walk is verified on its own there, not
/// once per path of each close program (see wstrace-ebpf `interp`). A
/// failure is said at start-up (a limit) and costs only the interpreter
/// frames, not the set.
fn attach_interp_walk(ebpf: &mut Ebpf, set: ProbeSet, root: &Path) -> Result<(), AttachFailure> {
    for name in INTERP_ENTRIES.iter().chain(&INTERP_EXITS) {
        if !tracefs::event_exists(root, "syscalls", name) {
            return Err(AttachFailure::lacks(
                set,
                format!("tracepoint syscalls:{name} is missing (CONFIG_FTRACE_SYSCALLS)"),
            ));
        }
    }
    attach_tracepoint(ebpf, set, "interp_stash", "syscalls", &INTERP_ENTRIES)?;
    attach_tracepoint(ebpf, set, "interp_unstash", "syscalls", &INTERP_EXITS)
}

/// Sets the `--port` bits in the object's TRACED_PORTS map (nothing with
/// every port traced: the kernel checks `all_ports` first).
fn fill_port_bitmap(ebpf: &mut Ebpf, ports: &Ports) -> Result<(), String> {
    let words = ports.bitmap_words();
    if words.is_empty() {
        return Ok(());
    }
    let map = ebpf
        .map_mut("TRACED_PORTS")
        .ok_or("the eBPF object has no TRACED_PORTS map (build mismatch)")?;
    let mut bitmap: aya::maps::Array<_, u64> =
        aya::maps::Array::try_from(map).map_err(|e| format!("TRACED_PORTS: {e}"))?;
    for (word, bits) in words {
        bitmap
            .set(word, bits, 0)
            .map_err(|e| format!("TRACED_PORTS[{word}]: {e}"))?;
    }
    Ok(())
}

/// Loads and attaches what only `set` has: fentry/fexit, kprobes, or the
/// syscall tracepoints.
fn attach_set_hooks(
    loaded: &mut Loaded,
    set: ProbeSet,
    vmlinux: &mut Option<Btf>,
    offsets: &KernelOffsets,
    root: &Path,
) -> Result<(), AttachFailure> {
    let ebpf = &mut loaded.ebpf;
    match set {
        ProbeSet::Fentry => {
            if vmlinux.is_none() {
                *vmlinux = Some(
                    timed(|| "read kernel BTF".into(), Btf::from_sys_fs).map_err(|e| {
                        AttachFailure::new(
                            set,
                            FailureKind::Other,
                            "reading kernel BTF for fentry",
                            e.to_string(),
                        )
                    })?,
                );
            }
            let Some(btf) = vmlinux.as_ref() else {
                return Err(AttachFailure::lacks(set, "no kernel BTF for fentry"));
            };
            fentry_can_attach(ebpf, set, btf)?;
            for (prog, func) in [
                ("fentry_tcp_sendmsg", "tcp_sendmsg"),
                ("fentry_tcp_close", "tcp_close"),
                ("fentry_tcp_recvmsg", "tcp_recvmsg"),
            ] {
                let p: &mut FEntry = program(ebpf, set, prog)?;
                timed(|| format!("load {prog}"), || p.load(func, btf)).map_err(|e| {
                    AttachFailure::from_program(set, format!("loading fentry/{func}"), &e)
                })?;
                timed(|| format!("attach {prog}"), || p.attach()).map_err(|e| {
                    AttachFailure::from_program(set, format!("attaching fentry/{func}"), &e)
                })?;
            }
            // One fexit program per parameter count (see fentry.rs); btf.rs
            // only lets this set through with a count that has one.
            let Some(nargs) = offsets.tcp_recvmsg_nargs else {
                return Err(AttachFailure::lacks(
                    set,
                    "no tcp_recvmsg parameter count for fexit/tcp_recvmsg",
                ));
            };
            let p: &mut FExit = program(ebpf, set, &format!("fexit_tcp_recvmsg{nargs}"))?;
            timed(
                || "load fexit_tcp_recvmsg".into(),
                || p.load("tcp_recvmsg", btf),
            )
            .map_err(|e| AttachFailure::from_program(set, "loading fexit/tcp_recvmsg", &e))?;
            timed(|| "attach fexit_tcp_recvmsg".into(), || p.attach())
                .map_err(|e| AttachFailure::from_program(set, "attaching fexit/tcp_recvmsg", &e))?;
        }
        ProbeSet::Kprobe => {
            for (prog, func) in [
                ("kprobe_tcp_sendmsg", "tcp_sendmsg"),
                ("kprobe_tcp_close", "tcp_close"),
                ("kprobe_tcp_recvmsg", "tcp_recvmsg"),
            ] {
                let p: &mut KProbe = program(ebpf, set, prog)?;
                timed(|| format!("load {prog}"), || p.load()).map_err(|e| {
                    AttachFailure::from_program(set, format!("loading kprobe/{func}"), &e)
                })?;
                timed(|| format!("attach {prog}"), || p.attach(func, 0)).map_err(|e| {
                    AttachFailure::from_program(set, format!("attaching kprobe/{func}"), &e)
                })?;
            }
            attach_recvmsg_return(loaded, set, root)?;
        }
        ProbeSet::Tracepoint => {
            for (prog, hooks) in SYSCALL_TRACEPOINTS {
                // One load (one verification) per program, an attach per hook.
                attach_tracepoint(ebpf, set, prog, "syscalls", hooks)?;
            }
        }
    }
    Ok(())
}

/// Whether this kernel attaches fentry programs at all, asked with a
/// near-empty one on tcp_sendmsg (the benchmark floor's), attached and
/// detached at once, as libbpf-tools' `fentry_can_attach` does: arm64
/// kernels before 6.4 verify a whole fentry program only to refuse its
/// trampoline, and `auto` paid that verification (7 s of a 5.10 arm64
/// VM's start-up under emulation) before trying kprobes.
fn fentry_can_attach(ebpf: &mut Ebpf, set: ProbeSet, btf: &Btf) -> Result<(), AttachFailure> {
    let p: &mut FEntry = program(ebpf, set, "floor_fe_send")?;
    timed(|| "fentry probe".into(), || p.load("tcp_sendmsg", btf))
        .map_err(|e| AttachFailure::from_program(set, "loading fentry/tcp_sendmsg", &e))?;
    let link = p
        .attach()
        .map_err(|e| AttachFailure::from_program(set, "attaching fentry/tcp_sendmsg", &e))?;
    // Gone before the real programs attach: nothing of it stays on the hook.
    let _ = p.detach(link);
    let _ = p.unload();
    Ok(())
}

/// The return of tcp_recvmsg (where a read's bytes are known) through a
/// tracefs kretprobe with room for every task inside tcp_recvmsg at once
/// (retprobe.rs); where tracefs refuses, aya's kretprobe with the kernel's
/// default room, said in the limits.
fn attach_recvmsg_return(
    loaded: &mut Loaded,
    set: ProbeSet,
    root: &Path,
) -> Result<(), AttachFailure> {
    const FUNC: &str = "tcp_recvmsg";
    let p: &mut KProbe = program(&mut loaded.ebpf, set, "kretprobe_tcp_recvmsg")?;
    timed(|| "load kretprobe_tcp_recvmsg".into(), || p.load())
        .map_err(|e| AttachFailure::from_program(set, "loading kretprobe/tcp_recvmsg", &e))?;
    retprobe::remove_stale(root);
    match timed(
        || "attach kretprobe_tcp_recvmsg".into(),
        || RetProbe::attach(root, FUNC, p),
    ) {
        Ok(r) => loaded.retprobe = Some(r),
        Err(why) => {
            p.attach(FUNC, 0).map_err(|e| {
                AttachFailure::from_program(set, "attaching kretprobe/tcp_recvmsg", &e)
            })?;
            loaded.limits.push(format!(
                "kprobe set: the tcp_recvmsg return probe has the kernel's default room ({why:#}); while more tasks than that are inside tcp_recvmsg at once (blocked readers count), request heads and received close frames are missed"
            ));
        }
    }
    Ok(())
}

fn program<'a, T>(ebpf: &'a mut Ebpf, set: ProbeSet, name: &str) -> Result<&'a mut T, AttachFailure>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    program::program(ebpf, name).map_err(|e| AttachFailure::from_lookup(set, &e))
}

/// Loads tracepoint program `prog` and attaches it to `category:name` for
/// each of `names` (one program may serve several tracepoints).
fn attach_tracepoint(
    ebpf: &mut Ebpf,
    set: ProbeSet,
    prog: &str,
    category: &str,
    names: &[&str],
) -> Result<(), AttachFailure> {
    let p: &mut TracePoint = program(ebpf, set, prog)?;
    timed(|| format!("load {prog}"), || p.load()).map_err(|e| {
        AttachFailure::from_program(set, format!("loading tracepoint program {prog}"), &e)
    })?;
    for name in names {
        timed(|| format!("attach {name}"), || p.attach(category, name)).map_err(|e| {
            AttachFailure::from_program(set, format!("attaching tracepoint {category}:{name}"), &e)
        })?;
    }
    Ok(())
}

fn attach_raw_tracepoint(
    ebpf: &mut Ebpf,
    set: ProbeSet,
    prog: &str,
    name: &str,
) -> Result<(), AttachFailure> {
    let p: &mut RawTracePoint = program(ebpf, set, prog)?;
    timed(|| format!("load {prog}"), || p.load()).map_err(|e| {
        AttachFailure::from_program(set, format!("loading raw tracepoint program {prog}"), &e)
    })?;
    timed(|| format!("attach {name}"), || p.attach(name)).map_err(|e| {
        AttachFailure::from_program(set, format!("attaching raw tracepoint {name}"), &e)
    })?;
    Ok(())
}

/// The processes the tracepoint set reads requests for (wstrace-ebpf
/// maps::SERVERS and its direct-mapped front SERVER_SLOTS), for the daemon
/// to add listeners to exactly as the kernel adds the processes that accept.
pub struct ServerSet {
    set: aya::maps::HashMap<aya::maps::MapData, u32, u8>,
    slots: aya::maps::Array<aya::maps::MapData, u32>,
}

impl ServerSet {
    /// Adds `pid`. Fails only if SERVERS is full of live entries (it is
    /// LRU): the process is then added by its next accept or 101.
    pub fn insert(&mut self, pid: u32) -> Result<(), aya::maps::MapError> {
        self.set.insert(pid, 1, 0)?;
        let slot = wstrace_common::server_slot(pid);
        // The kernel's rule: the first server on a slot keeps it. (A race
        // with a program filling it at the same moment leaves either pid,
        // both in SERVERS: the read gate asks SERVERS when the slot is not
        // the reader's own.)
        if self.slots.get(&slot, 0)? == 0 {
            self.slots.set(slot, pid, 0)?;
        }
        Ok(())
    }
}

/// Takes the server maps out of `ebpf`; `None` if the object has none
/// (build mismatch).
pub fn take_servers(ebpf: &mut Ebpf) -> Option<ServerSet> {
    Some(ServerSet {
        set: aya::maps::HashMap::try_from(ebpf.take_map("SERVERS")?).ok()?,
        slots: aya::maps::Array::try_from(ebpf.take_map("SERVER_SLOTS")?).ok()?,
    })
}

/// The Python processes whose frames the kernel walks at a close
/// (wstrace-ebpf maps::INTERP_PROCS); `None` if the object has none.
/// Spelled out, not `enrich::InterpProcs`: attach comes before enrich.
pub fn take_interp_procs(
    ebpf: &mut Ebpf,
) -> Option<aya::maps::HashMap<aya::maps::MapData, u32, wstrace_common::InterpConfig>> {
    aya::maps::HashMap::try_from(ebpf.take_map("INTERP_PROCS")?).ok()
}

/// The kernel's record of who wrote each request on the client side of a
/// traced connection (wstrace-ebpf maps::PEER_WRITERS), taken out of `ebpf`
/// for the daemon to name peers with; `None` if the object has none.
pub fn take_peer_writers(
    ebpf: &mut Ebpf,
) -> Option<
    aya::maps::HashMap<aya::maps::MapData, wstrace_common::SockTuple, wstrace_common::PeerWriter>,
> {
    aya::maps::HashMap::try_from(ebpf.take_map("PEER_WRITERS")?).ok()
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

/// Sum of the per-CPU counters of events the kernel could not send for
/// `reason` (`wstrace_common::lost`).
pub fn lost_events(ebpf: &Ebpf, reason: u32) -> u64 {
    let Some(map) = ebpf.map("LOST") else {
        return 0;
    };
    let Ok(arr) = PerCpuArray::<_, u64>::try_from(map) else {
        return 0;
    };
    arr.get(&reason, 0).map(|v| v.iter().sum()).unwrap_or(0)
}

/// The processes (tgid) that lost events over their fair share of the
/// ring (`PROCESS_BUDGETS` entries with drops), at most the map's size.
pub fn over_budget_processes(ebpf: &Ebpf) -> Vec<(u32, ProcessBudget)> {
    let Some(map) = ebpf.map("PROCESS_BUDGETS") else {
        return Vec::new();
    };
    let Ok(m) = HashMap::<_, u32, ProcessBudget>::try_from(map) else {
        return Vec::new();
    };
    m.iter()
        .filter_map(Result::ok)
        .filter(|(_, b)| b.dropped > 0)
        .take(wstrace_common::BUDGET_PROCESSES as usize)
        .collect()
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

    /// A tracefs-like directory holding `format` files for `events`
    /// (category, name, fields in order; each 8 bytes after the 8-byte
    /// common header). Removed when dropped.
    struct FakeTracefs(std::path::PathBuf);

    impl FakeTracefs {
        fn new(test: &str, events: &[(&str, &str, &[&str])]) -> Self {
            let root = std::env::temp_dir().join(format!(
                "wstrace-test-tracefs-{}-{test}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&root);
            for (category, name, fields) in events {
                let dir = root.join("events").join(category).join(name);
                std::fs::create_dir_all(&dir).expect("temp dir");
                let mut format = format!("name: {name}\nformat:\n");
                for (i, field) in fields.iter().enumerate() {
                    format.push_str(&format!(
                        "\tfield:u64 {field};\toffset:{};\tsize:8;\tsigned:0;\n",
                        8 + 8 * i
                    ));
                }
                std::fs::write(dir.join("format"), format).expect("format file");
            }
            Self(root)
        }
    }

    impl Drop for FakeTracefs {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const SIGNAL: (&str, &str, &[&str]) = (
        "signal",
        "signal_generate",
        &["sig", "code", "pid", "result"],
    );

    fn offsets() -> KernelOffsets {
        KernelOffsets {
            config: KernelConfig {
                skc_num: 14,
                ..KernelConfig::DEFAULT
            },
            tcp_recvmsg_nargs: Some(5),
            sendmsg_path_missing: None,
            fd_walk_missing: None,
        }
    }

    #[test]
    fn kernel_config_holds_ports_sizes_btf_and_tracepoint_fields() {
        let tracefs = FakeTracefs::new("full", &[SIGNAL, ("oom", "mark_victim", &["pid"])]);
        let settings = Settings {
            ports: &Ports::from_args(&[1215, 8080]),
            max_sockets: 64,
            ring_bytes: 1 << 16,
            user_stack_bytes: 4096,
            tls: true,
            debug_probes: true,
        };
        let c = kernel_config(&settings, &offsets(), &tracefs.0);
        assert_eq!(c.all_ports, 0, "named ports go in the bitmap");
        assert_eq!(c.user_stack_bytes, 4096);
        assert_eq!(c.tls, 1);
        assert_eq!(c.debug_probes, 1);
        assert_eq!(c.skc_num, 14, "BTF offsets are kept");
        assert_eq!(c.task_files, ABSENT, "and so is what BTF lacked");
        assert_eq!(
            (
                c.tp_signal_sig,
                c.tp_signal_code,
                c.tp_signal_pid,
                c.tp_signal_result
            ),
            (8, 16, 24, 32)
        );
        assert_eq!(c.tp_oom_pid, 8);
        assert!(ending_fields_known(&c, "signal_generate"));
        assert!(ending_fields_known(&c, "oom_mark_victim"));
    }

    #[test]
    fn kernel_config_without_an_ending_tracepoint_leaves_its_program_out() {
        let tracefs = FakeTracefs::new("no-oom", &[SIGNAL]);
        let settings = Settings {
            ports: &Ports::All,
            max_sockets: 64,
            ring_bytes: 1 << 16,
            user_stack_bytes: 0,
            tls: false,
            debug_probes: false,
        };
        let c = kernel_config(&settings, &offsets(), &tracefs.0);
        assert_eq!(c.all_ports, 1, "no --port: every port");
        assert_eq!(c.debug_probes, 0, "the decision log is off by default");
        assert_eq!(c.tp_oom_pid, ABSENT);
        assert!(!ending_fields_known(&c, "oom_mark_victim"));
        assert!(ending_fields_known(&c, "signal_generate"));
    }
}
