//! Why a probe set did not attach, classified where the failure arises.
//!
//! Each failed step becomes an [`AttachFailure`]: what wstrace was doing,
//! the [`FailureKind`] (taken from the `aya` error variant and the errno it
//! carries, never from its message text) and the kernel's or aya's own words.
//! What the user reads, and whether `auto` moves on to the next set, comes
//! from the kind; the words are kept so nothing the kernel said is lost.
use std::{fmt, io};

use aya::{
    BtfError, EbpfError,
    maps::MapError,
    programs::{ProgramError, kprobe::KProbeError, trace_point::TracePointError},
    sys::SyscallError,
};
use wstrace_common::ProbeSet;

use super::{ProbeChoice, program::LookupError};

/// The kernel's internal "not supported" errno: BPF syscalls return it to
/// user space unchanged, e.g. for fentry without ftrace direct calls.
pub const ENOTSUPP: i32 = 524;

/// What kind of refusal a step met.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The verifier rejected a program; the detail ends with its reason.
    Verifier,
    /// The function or tracepoint to hook does not exist on this kernel.
    HookMissing,
    /// The kernel lacks the mechanism: ENOTSUPP (524) or EOPNOTSUPP from a
    /// BPF syscall, or no kprobe PMU.
    NotSupported,
    /// EPERM/EACCES outside the verifier: missing capabilities, lockdown,
    /// or an ftrace locked by the administrator.
    PermissionDenied,
    /// The kernel's BTF lacks struct fields this set reads, or tracefs lacks
    /// a tracepoint it needs (found before loading anything).
    KernelLacks,
    /// The embedded eBPF object does not match this binary.
    BuildMismatch,
    /// Anything else (map creation, BTF parsing, ...): the detail says what.
    Other,
}

/// One failed step of attaching a probe set.
#[derive(Debug)]
pub struct AttachFailure {
    pub set: ProbeSet,
    pub kind: FailureKind,
    /// What wstrace was doing ("loading fentry/tcp_sendmsg"), or for checks
    /// made before loading, what is missing.
    pub step: String,
    /// The kernel's or aya's words, on one line; may be empty.
    pub detail: String,
}

/// Longest detail kept: a verifier log is cut to its reason anyway.
const MAX_DETAIL_CHARS: usize = 400;

impl AttachFailure {
    pub fn new(set: ProbeSet, kind: FailureKind, step: impl Into<String>, detail: String) -> Self {
        Self {
            set,
            kind,
            step: step.into(),
            detail: truncate_chars(&detail, MAX_DETAIL_CHARS),
        }
    }

    /// A check made before loading failed: nothing from the kernel to add.
    pub fn lacks(set: ProbeSet, what: impl Into<String>) -> Self {
        Self::new(set, FailureKind::KernelLacks, what, String::new())
    }

    /// A program the set needs is not in the object, or not of its type.
    pub fn from_lookup(set: ProbeSet, e: &LookupError) -> Self {
        match e {
            LookupError::Missing(_) => Self::new(
                set,
                FailureKind::BuildMismatch,
                format!("{e} (build mismatch)"),
                String::new(),
            ),
            LookupError::WrongType(_, source) => Self::from_program(set, e.to_string(), source),
        }
    }

    /// `aya::Ebpf::load` (the whole object: maps, then relocations) failed.
    pub fn from_object(set: ProbeSet, step: impl Into<String>, e: &EbpfError) -> Self {
        let (kind, detail) = match e {
            EbpfError::ProgramError(p) => return Self::from_program(set, step, p),
            EbpfError::MapError(m) => (map_kind(m), chain(e)),
            // A global or map the daemon names that the object lacks, or of
            // another size: the object and this binary disagree.
            EbpfError::ParseError(_) => (FailureKind::BuildMismatch, chain(e)),
            _ => (FailureKind::Other, chain(e)),
        };
        Self::new(set, kind, step, detail)
    }

    /// A program's load or attach failed.
    pub fn from_program(set: ProbeSet, step: impl Into<String>, e: &ProgramError) -> Self {
        let (kind, detail) = match e {
            ProgramError::LoadError {
                io_error,
                verifier_log,
            } => load_failure(io_error, &verifier_log.to_string()),
            ProgramError::SyscallError(SyscallError { io_error, .. })
            | ProgramError::IOError(io_error) => (errno_kind(io_error), chain(e)),
            ProgramError::TracePointError(TracePointError::FileError { io_error, .. }) => {
                (file_kind(io_error, FailureKind::HookMissing), chain(e))
            }
            // aya reads the kprobe PMU's type from sysfs first: no such file
            // means the kernel has no kprobes at all.
            ProgramError::KProbeError(KProbeError::FileError { io_error, .. }) => {
                (file_kind(io_error, FailureKind::NotSupported), chain(e))
            }
            // fentry/fexit look their target function up in the kernel's BTF.
            ProgramError::Btf(BtfError::UnknownBtfTypeName { .. }) => {
                (FailureKind::HookMissing, chain(e))
            }
            ProgramError::MapError(m) => (map_kind(m), chain(e)),
            ProgramError::UnexpectedProgramType => (FailureKind::BuildMismatch, chain(e)),
            _ => (FailureKind::Other, chain(e)),
        };
        Self::new(set, kind, step, detail)
    }

    /// What went wrong, without the set's name: the kernel's words, led by
    /// what they mean for this set where that is known.
    pub fn reason(&self) -> String {
        let raw = self.step_and_detail();
        match self.hint() {
            Some(h) => format!("{h} [{raw}]"),
            None => raw,
        }
    }

    /// The step and the kernel's words alone, without the set's hint: for a
    /// program that is not the set's own (the interpreter walk), whose
    /// failure says nothing about the set.
    pub fn step_and_detail(&self) -> String {
        if self.detail.is_empty() {
            self.step.clone()
        } else {
            format!("{}: {}", self.step, self.detail)
        }
    }

    /// What this kind of failure means for this set, where it says more than
    /// the kernel's words do.
    fn hint(&self) -> Option<&'static str> {
        use FailureKind::*;
        match (self.set, self.kind) {
            // arm64 attaches trampolines to kernel functions through ftrace
            // direct calls, which came in 6.4: before that (Debian's 5.10
            // and 6.1) it is the usual reason, not a configuration.
            (ProbeSet::Fentry, PermissionDenied | NotSupported)
                if cfg!(target_arch = "aarch64") =>
            {
                Some(
                    "fentry is not available on this kernel: it refused BTF trampolines (arm64 kernels have them on kernel functions from 6.4, with CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS; or ftrace locked)",
                )
            }
            (ProbeSet::Fentry, PermissionDenied | NotSupported) => Some(
                "fentry is not available on this kernel: it refused BTF trampolines (ftrace locked, or no CONFIG_FUNCTION_TRACER / DYNAMIC_FTRACE_WITH_DIRECT_CALLS)",
            ),
            (ProbeSet::Kprobe, NotSupported) => {
                Some("kprobes are not available on this kernel (CONFIG_KPROBES is off)")
            }
            _ => None,
        }
    }
}

/// `fentry: <reason>`: one line per set, as `auto` reports the sets it skipped.
impl fmt::Display for AttachFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.set.name(), self.reason())
    }
}

/// Why `attach` returned no probe set.
#[derive(Debug)]
pub enum AttachError {
    /// The binary was built without its eBPF object (`AYA_BUILD_SKIP`).
    NoObject,
    /// The kernel config could not be completed before loading (a tracefs
    /// `format` file unreadable or without a field every set needs).
    Config(anyhow::Error),
    /// Every candidate set failed; one failure per set, in the order tried.
    NoProbeSet {
        choice: ProbeChoice,
        failures: Vec<AttachFailure>,
    },
}

impl fmt::Display for AttachError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoObject => f.write_str(
                "this wstrace binary was built without its eBPF programs (AYA_BUILD_SKIP was set): rebuild with `cargo build --release`",
            ),
            Self::Config(e) => write!(f, "{e:#}"),
            Self::NoProbeSet {
                choice: ProbeChoice::Auto,
                failures,
            } => {
                f.write_str("no probe set could be attached on this kernel:")?;
                for failure in failures {
                    write!(f, "\n  {failure}")?;
                }
                Ok(())
            }
            Self::NoProbeSet { failures, .. } => {
                f.write_str("the requested probe set cannot be attached (try --probe auto): ")?;
                let lines: Vec<String> = failures.iter().map(ToString::to_string).collect();
                f.write_str(&lines.join("; "))
            }
        }
    }
}

impl std::error::Error for AttachError {}

/// A failed BPF_PROG_LOAD: the verifier's rejection when it wrote a log and
/// returned one of its own errnos, else whatever the errno says.
fn load_failure(io_error: &io::Error, log: &str) -> (FailureKind, String) {
    let reason = verifier_reason(log);
    let verifier = !reason.is_empty()
        && matches!(
            io_error.raw_os_error(),
            Some(libc::EACCES | libc::EINVAL | libc::E2BIG | libc::EFAULT | libc::ENOSPC)
        );
    let kind = if verifier {
        FailureKind::Verifier
    } else {
        errno_kind(io_error)
    };
    let detail = if reason.is_empty() {
        format!("the BPF_PROG_LOAD syscall returned {io_error}")
    } else {
        format!("the BPF_PROG_LOAD syscall returned {io_error}. verifier: {reason}")
    };
    (kind, detail)
}

/// A verifier log starts with the first instruction and ends with the
/// reason it gave up, then its statistics (`processed N insns`, and on
/// 5.x kernels `stack depth` and the state counts after it): the last two
/// lines before the statistics that follow `processed`, and that line.
fn verifier_reason(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let is_stat = |l: &&str| {
        l.starts_with("processed ")
            || l.starts_with("verification time")
            || l.starts_with("stack depth")
    };
    let first_stat = lines.iter().position(is_stat).unwrap_or(lines.len());
    let processed = lines.iter().find(|l| l.starts_with("processed "));
    let mut out: Vec<&str> = lines[first_stat.saturating_sub(2)..first_stat].to_vec();
    out.extend(processed);
    out.join(" | ")
}

fn errno_kind(e: &io::Error) -> FailureKind {
    match e.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => FailureKind::PermissionDenied,
        Some(ENOTSUPP | libc::EOPNOTSUPP) => FailureKind::NotSupported,
        // perf_event_open for a kprobe on a function the kernel lacks.
        Some(libc::ENOENT) => FailureKind::HookMissing,
        _ => FailureKind::Other,
    }
}

/// A sysfs/tracefs file aya needed: missing means `missing`.
fn file_kind(e: &io::Error, missing: FailureKind) -> FailureKind {
    match e.kind() {
        io::ErrorKind::NotFound => missing,
        io::ErrorKind::PermissionDenied => FailureKind::PermissionDenied,
        _ => FailureKind::Other,
    }
}

fn map_kind(e: &MapError) -> FailureKind {
    match e {
        MapError::CreateError { io_error, .. } => errno_kind(io_error),
        MapError::SyscallError(SyscallError { io_error, .. }) => errno_kind(io_error),
        _ => FailureKind::Other,
    }
}

/// An error and its sources, `a: b: c` (as anyhow's `{:#}`): aya's own
/// errors say only which call failed, their sources say why.
pub fn with_sources(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// [`with_sources`], first line only (a verifier log's listing follows it).
fn chain(e: &dyn std::error::Error) -> String {
    with_sources(e)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn errno(n: i32) -> io::Error {
        io::Error::from_raw_os_error(n)
    }

    fn syscall(call: &'static str, n: i32) -> ProgramError {
        ProgramError::SyscallError(SyscallError {
            call,
            io_error: errno(n),
        })
    }

    #[test]
    fn fentry_refused_by_a_locked_ftrace_says_fentry_is_not_available() {
        let (kind, detail) = load_failure(&errno(libc::EPERM), "");
        assert_eq!(kind, FailureKind::PermissionDenied);
        let f = AttachFailure::new(ProbeSet::Fentry, kind, "loading fentry/tcp_sendmsg", detail);
        assert_eq!(
            f.to_string(),
            "fentry: fentry is not available on this kernel: it refused BTF trampolines (ftrace locked, or no CONFIG_FUNCTION_TRACER / DYNAMIC_FTRACE_WITH_DIRECT_CALLS) [loading fentry/tcp_sendmsg: the BPF_PROG_LOAD syscall returned Operation not permitted (os error 1)]"
        );
    }

    #[test]
    fn a_program_missing_or_of_another_type_is_a_build_mismatch() {
        let missing = AttachFailure::from_lookup(
            ProbeSet::Kprobe,
            &LookupError::Missing("kprobe_tcp_close".into()),
        );
        assert_eq!(missing.kind, FailureKind::BuildMismatch);
        assert_eq!(
            missing.step,
            "program kprobe_tcp_close missing from the eBPF object (build mismatch)"
        );
        let wrong = AttachFailure::from_lookup(
            ProbeSet::Kprobe,
            &LookupError::WrongType(
                "kprobe_tcp_close".into(),
                ProgramError::UnexpectedProgramType,
            ),
        );
        assert_eq!(wrong.kind, FailureKind::BuildMismatch);
        assert_eq!(
            wrong.step,
            "program kprobe_tcp_close has an unexpected type"
        );
        assert!(
            !wrong.detail.is_empty(),
            "the type error is kept: {wrong:?}"
        );
    }

    #[test]
    fn enotsupp_524_at_attach_is_not_supported() {
        let f = AttachFailure::from_program(
            ProbeSet::Fentry,
            "attaching fentry/tcp_close",
            &syscall("bpf_raw_tracepoint_open", ENOTSUPP),
        );
        assert_eq!(f.kind, FailureKind::NotSupported);
        assert!(
            f.reason()
                .starts_with("fentry is not available on this kernel")
        );
        assert!(f.reason().contains("os error 524"), "{}", f.reason());
    }

    #[test]
    fn a_program_not_the_sets_own_is_said_without_the_sets_hint() {
        // The interpreter walk's tracepoint refused while the fentry set
        // loads: fentry itself is fine, only the walk's limit is said.
        let f = AttachFailure::from_program(
            ProbeSet::Fentry,
            "attaching tracepoint syscalls:sys_enter_close",
            &syscall("perf_event_open", ENOTSUPP),
        );
        assert!(f.reason().starts_with("fentry is not available"));
        assert!(
            f.step_and_detail().starts_with(
                "attaching tracepoint syscalls:sys_enter_close: `perf_event_open` failed"
            ),
            "{}",
            f.step_and_detail()
        );
        assert!(f.step_and_detail().contains("os error 524"));
    }

    #[test]
    fn missing_kprobe_pmu_means_no_kprobes() {
        let e = ProgramError::KProbeError(KProbeError::FileError {
            filename: PathBuf::from("/sys/bus/event_source/devices/kprobe/type"),
            io_error: io::Error::from(io::ErrorKind::NotFound),
        });
        let f = AttachFailure::from_program(ProbeSet::Kprobe, "attaching kprobe/tcp_sendmsg", &e);
        assert_eq!(f.kind, FailureKind::NotSupported);
        assert!(
            f.reason()
                .starts_with("kprobes are not available on this kernel (CONFIG_KPROBES is off) [attaching kprobe/tcp_sendmsg: `/sys/bus/event_source/devices/kprobe/type`"),
            "{}",
            f.reason()
        );
    }

    #[test]
    fn missing_tracepoint_and_kprobe_target_are_missing_hooks() {
        let e = ProgramError::TracePointError(TracePointError::FileError {
            filename: PathBuf::from("/sys/kernel/tracing/events/tcp/tcp_destroy_sock/id"),
            io_error: io::Error::from(io::ErrorKind::NotFound),
        });
        let f = AttachFailure::from_program(ProbeSet::Tracepoint, "attaching", &e);
        assert_eq!(f.kind, FailureKind::HookMissing);
        let f = AttachFailure::from_program(
            ProbeSet::Kprobe,
            "attaching kprobe/tcp_sendmsg",
            &syscall("perf_event_open", libc::ENOENT),
        );
        assert_eq!(f.kind, FailureKind::HookMissing);
        // No hint: kprobes work, the function is what is missing.
        assert_eq!(
            f.reason(),
            "attaching kprobe/tcp_sendmsg: `perf_event_open` failed: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn verifier_rejection_keeps_the_reason_not_the_listing() {
        let log = "0: (79) r1 = *(u64 *)(r1 +0)\n1: (b7) r0 = 0\n\nR1 invalid mem access 'scalar'\nprocessed 2 insns\n";
        let (kind, detail) = load_failure(&errno(libc::EACCES), log);
        assert_eq!(kind, FailureKind::Verifier);
        assert_eq!(
            detail,
            "the BPF_PROG_LOAD syscall returned Permission denied (os error 13). verifier: 1: (b7) r0 = 0 | R1 invalid mem access 'scalar' | processed 2 insns"
        );
        // 5.10 puts the verification time and stack depth before
        // `processed`: the reason is still in.
        let log = "10: (85) call bpf_probe_read_user#112\nR2 min value is negative\nverification time 558112 usec\nstack depth 120+0\nprocessed 2570 insns (limit 1000000) max_states_per_insn 4\n";
        let (_, detail) = load_failure(&errno(libc::EACCES), log);
        assert!(
            detail.ends_with("verifier: 10: (85) call bpf_probe_read_user#112 | R2 min value is negative | processed 2570 insns (limit 1000000) max_states_per_insn 4"),
            "{detail}"
        );
        // EACCES without a log is not the verifier.
        assert_eq!(
            load_failure(&errno(libc::EACCES), "").0,
            FailureKind::PermissionDenied
        );
        let f = AttachFailure::new(ProbeSet::Fentry, kind, "loading fentry/tcp_close", detail);
        assert!(!f.reason().contains("not available"), "{}", f.reason());
    }

    #[test]
    fn checks_before_loading_read_as_before() {
        let f = AttachFailure::lacks(
            ProbeSet::Tracepoint,
            "tracepoint syscalls:sys_enter_write is missing (CONFIG_FTRACE_SYSCALLS)",
        );
        assert_eq!(
            f.to_string(),
            "tracepoint: tracepoint syscalls:sys_enter_write is missing (CONFIG_FTRACE_SYSCALLS)"
        );
    }

    #[test]
    fn attach_error_lists_every_set_tried() {
        let failures = || {
            vec![
                AttachFailure::new(
                    ProbeSet::Fentry,
                    FailureKind::PermissionDenied,
                    "loading fentry/tcp_sendmsg",
                    "x".into(),
                ),
                AttachFailure::lacks(ProbeSet::Kprobe, "y"),
            ]
        };
        let auto = AttachError::NoProbeSet {
            choice: ProbeChoice::Auto,
            failures: failures(),
        }
        .to_string();
        assert!(
            auto.starts_with(
                "no probe set could be attached on this kernel:\n  fentry: fentry is not available"
            ) && auto.ends_with("\n  kprobe: y"),
            "{auto}"
        );
        let one = AttachError::NoProbeSet {
            choice: ProbeChoice::Kprobe,
            failures: failures().split_off(1),
        }
        .to_string();
        assert_eq!(
            one,
            "the requested probe set cannot be attached (try --probe auto): kprobe: y"
        );
    }

    #[test]
    fn long_details_are_cut() {
        let f = AttachFailure::new(ProbeSet::Kprobe, FailureKind::Other, "s", "é".repeat(1000));
        assert_eq!(f.detail.chars().count(), MAX_DETAIL_CHARS + 3);
    }
}
