//! Checking up front what the kernel will refuse later, so the user reads one
//! clear line instead of an EPERM from deep inside a load; and, once the
//! probes are attached, giving up what the rest of the run does not need.
use anyhow::{Result, bail};
use rustix::io::Errno;
use rustix::thread::{CapabilitySet, CapabilitySets};

const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SETPCAP: u32 = 8;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYSLOG: u32 = 34;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;
const CAP_CHECKPOINT_RESTORE: u32 = 40;

fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

pub fn has_tracing_caps(caps: u64) -> bool {
    let has = |c: u32| caps & (1u64 << c) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
}

pub fn check() -> Result<()> {
    match effective_caps() {
        Some(caps) if has_tracing_caps(caps) => Ok(()),
        Some(_) => bail!(
            "wstrace needs root (or CAP_BPF and CAP_PERFMON) to load eBPF programs: run it with sudo"
        ),
        // No /proc: let the load itself report.
        None => Ok(()),
    }
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; later ones use
/// memcg and do not need this. Failure is only worth a word on old kernels.
pub fn raise_memlock() -> Option<String> {
    let unlimited = rustix::process::Rlimit {
        current: None,
        maximum: None,
    };
    let Err(err) = rustix::process::setrlimit(rustix::process::Resource::Memlock, unlimited) else {
        return None;
    };
    let err = std::io::Error::from(err);
    match kernel_version() {
        Some(v) if v < (5, 11) => Some(format!(
            "could not raise RLIMIT_MEMLOCK ({err}); kernel {}.{} accounts BPF maps against it, so loading may fail: run as root with CAP_SYS_RESOURCE or `ulimit -l unlimited`",
            v.0, v.1
        )),
        _ => None,
    }
}

/// What the run needs after the probes attach, each found by running the
/// daemon's /proc reads as root with the set reduced (README, "Privileges"):
/// the closer is usually another user's process.
const KEEP_AFTER_ATTACH: [(u32, &str); 4] = [
    // /proc/<pid>/{exe,maps,root,fd/*} of another user's process
    // (ptrace_may_access): exe, command line owner, stacks, the peer.
    (CAP_SYS_PTRACE, "CAP_SYS_PTRACE"),
    // /proc/<pid>/{map_files,fd} are 0500 directories owned by that user;
    // binaries and debug files readable by their owner only.
    (CAP_DAC_READ_SEARCH, "CAP_DAC_READ_SEARCH"),
    // Opening /proc/<pid>/map_files/* (the mapped file itself, even deleted
    // or in another mount namespace); without it symbolization falls back to
    // the path in maps.
    (CAP_CHECKPOINT_RESTORE, "CAP_CHECKPOINT_RESTORE"),
    // /proc/kallsyms shows addresses only to an opener with CAP_SYSLOG
    // (unless kernel.perf_event_paranoid <= 1): without it every kernel
    // frame prints as `[unknown] 0xffff…`. It is read on the first kernel
    // stack, after the drop.
    (CAP_SYSLOG, "CAP_SYSLOG"),
];

/// Kept only if the kernel refuses map access through an already open fd
/// without it: before 6.5, every bpf() command needs it when
/// `kernel.unprivileged_bpf_disabled` is set (CAP_SYS_ADMIN before 5.8).
const KEEP_FOR_MAPS: [(u32, &str); 2] = [(CAP_BPF, "CAP_BPF"), (CAP_SYS_ADMIN, "CAP_SYS_ADMIN")];

/// One thread's capability sets, 64 bits each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CapSets {
    effective: u64,
    permitted: u64,
    inheritable: u64,
}

/// The calling thread's sets (capabilities are per thread).
fn capget() -> std::io::Result<CapSets> {
    let s = rustix::thread::capabilities(None)?;
    Ok(CapSets {
        effective: s.effective.bits(),
        permitted: s.permitted.bits(),
        inheritable: s.inheritable.bits(),
    })
}

/// Sets the calling thread's capabilities (capabilities are per thread).
fn capset(sets: CapSets) -> std::io::Result<()> {
    rustix::thread::set_capabilities(
        None,
        CapabilitySets {
            effective: CapabilitySet::from_bits_retain(sets.effective),
            permitted: CapabilitySet::from_bits_retain(sets.permitted),
            inheritable: CapabilitySet::from_bits_retain(sets.inheritable),
        },
    )?;
    Ok(())
}

fn set_no_new_privs() -> std::io::Result<()> {
    rustix::thread::set_no_new_privs(true)?;
    Ok(())
}

/// For helper threads that hold what they need already (the ring reader,
/// the metrics server): no capabilities, no new privileges. Capabilities
/// are per thread, so the daemon's drop does not reach threads started
/// before it.
pub fn drop_all_in_this_thread() {
    drop_bounding_set(0);
    let _ = capset(CapSets {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    });
    let _ = set_no_new_privs();
}

/// For a thread that reads other processes' files and nothing else (the
/// symbolizer's worker, which may start before the daemon's drop):
/// [`KEEP_AFTER_ATTACH`] where held, nothing else, no new privileges.
pub fn keep_file_access_only_in_this_thread() {
    let Ok(now) = capget() else {
        return;
    };
    let keep = KEEP_AFTER_ATTACH
        .iter()
        .fold(0u64, |m, (c, _)| m | (1u64 << c))
        & now.permitted;
    if now.effective & (1u64 << CAP_SETPCAP) != 0 {
        drop_bounding_set(keep);
    }
    let _ = capset(CapSets {
        effective: keep,
        permitted: keep,
        inheritable: 0,
    });
    let _ = set_no_new_privs();
}

/// What the uprobe helper (uprobe_helper.rs) keeps: CAP_SYS_ADMIN, which
/// opening a uprobe perf event through a `/proc/<pid>/map_files/` link
/// needs (measured on 6.18: CAP_PERFMON with CAP_BPF gets EACCES), and the
/// two a root process needs to look into another user's
/// `/proc/<pid>/map_files/` at all (its owner-only directory; the ptrace
/// access check), which the daemon keeps too.
const KEEP_IN_UPROBE_HELPER: [u32; 3] = [CAP_SYS_ADMIN, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH];

/// Whether this process can start the uprobe helper: it holds
/// CAP_SYS_ADMIN now (before the drop).
pub fn can_open_uprobes() -> bool {
    effective_caps().is_some_and(|c| c & (1u64 << CAP_SYS_ADMIN) != 0)
}

/// In the uprobe helper, right after fork (one thread): keeps
/// [`KEEP_IN_UPROBE_HELPER`] where held and nothing else (bounding set
/// included), no ambient capabilities, no new privileges. An error means
/// the helper must not serve.
pub fn keep_uprobe_helper_only() -> std::io::Result<()> {
    let now = capget()?;
    let keep = KEEP_IN_UPROBE_HELPER
        .iter()
        .fold(0u64, |m, c| m | (1u64 << c))
        & now.permitted;
    if keep & (1u64 << CAP_SYS_ADMIN) == 0 {
        return Err(Errno::PERM.into());
    }
    narrow_to(keep, now.permitted)?;
    // Checked, not assumed: a capset that did less than asked is an error.
    if capget()?.permitted != keep {
        return Err(Errno::PERM.into());
    }
    Ok(())
}

/// After the probes attach: keeps [`KEEP_AFTER_ATTACH`] (and CAP_BPF only
/// where map access needs it), drops every other capability from all sets
/// and the bounding set, sets no_new_privs, and says on stderr what was kept.
/// A failure is a warning: tracing goes on with what the process has.
/// `maps_usable`: whether map commands on an already open fd still work
/// with the sets as they are (`attach::Attached::maps_usable`).
pub fn drop_after_attach(maps_usable: impl Fn() -> bool) {
    match drop_to_needed(maps_usable) {
        Ok(kept) if kept.is_empty() => {
            eprintln!("wstrace: privileges: kept no capability; dropped the rest")
        }
        Ok(kept) => eprintln!(
            "wstrace: privileges: kept {}; dropped the rest",
            kept.join(", ")
        ),
        Err(e) => eprintln!(
            "wstrace: warning: privileges: could not drop capabilities ({e}); running with all it was given"
        ),
    }
    // A symbolizer worker started a moment ago drops to file access as its
    // first step: give such threads a moment before calling one a holdout
    // (a real holdout is still there 200 ms later).
    let mut holdout = threads_with_more_than_main();
    for _ in 0..10 {
        if holdout.is_none() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        holdout = threads_with_more_than_main();
    }
    if let Some(t) = holdout {
        eprintln!(
            "wstrace: warning: privileges: thread {t} still holds capabilities the daemon dropped"
        );
    }
}

fn drop_to_needed(maps_usable: impl Fn() -> bool) -> std::io::Result<Vec<&'static str>> {
    let now = capget()?;
    let has = |c: u32| now.permitted & (1u64 << c) != 0;
    let mut kept: Vec<(u32, &str)> = KEEP_AFTER_ATTACH
        .into_iter()
        .filter(|(c, _)| has(*c))
        .collect();
    let mask = |kept: &[(u32, &str)]| kept.iter().fold(0u64, |m, (c, _)| m | (1u64 << c));
    // Effective first, permitted kept: a capability found missing can
    // still be raised again.
    let trial = |kept: &[(u32, &str)]| {
        capset(CapSets {
            effective: mask(kept),
            permitted: now.permitted,
            inheritable: 0,
        })
    };
    trial(&kept)?;
    if !maps_usable() {
        for extra in KEEP_FOR_MAPS.into_iter().filter(|(c, _)| has(*c)) {
            kept.push(extra);
            trial(&kept)?;
            if maps_usable() {
                break;
            }
            kept.pop();
        }
    }
    narrow_to(mask(&kept), now.permitted)?;
    Ok(kept.into_iter().map(|(_, n)| n).collect())
}

/// Drops every capability outside `keep` from the calling thread's bounding
/// set; needs CAP_SETPCAP in the effective set, does nothing without it.
/// Keeps exactly `keep` in the effective and permitted sets (from
/// `permitted`, what the process holds now), drops the rest of the bounding
/// set where CAP_SETPCAP allows it, clears inheritable and ambient, and sets
/// no_new_privs: the one narrowing both the daemon (after attach) and the
/// uprobe helper (after fork) do.
fn narrow_to(keep: u64, permitted: u64) -> std::io::Result<()> {
    if permitted & (1u64 << CAP_SETPCAP) != 0 {
        capset(CapSets {
            effective: keep | (1u64 << CAP_SETPCAP),
            permitted,
            inheritable: 0,
        })?;
        drop_bounding_set(keep);
    }
    capset(CapSets {
        effective: keep,
        permitted: keep,
        inheritable: 0,
    })?;
    // Inheritable is empty, so no ambient capability is left; say so anyway.
    let _ = rustix::thread::clear_ambient_capability_set();
    set_no_new_privs()
}

fn drop_bounding_set(keep: u64) {
    for c in 0..=last_cap() {
        if keep & (1u64 << c) == 0 {
            // EINVAL (a capability this kernel lacks) and EPERM (no
            // CAP_SETPCAP) leave it as is.
            let _ = rustix::thread::remove_capability_from_bounding_set(
                CapabilitySet::from_bits_retain(1u64 << c),
            );
        }
    }
}

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63)
        .min(63)
}

/// The first thread of this process whose permitted set is larger than the
/// calling thread's (a thread started before the drop that did not drop).
fn threads_with_more_than_main() -> Option<String> {
    let mine = capget().ok()?.permitted;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let prm = status
            .lines()
            .find_map(|l| l.strip_prefix("CapPrm:"))
            .and_then(|h| u64::from_str_radix(h.trim(), 16).ok());
        if prm.is_some_and(|p| p & !mine != 0) {
            return Some(task.file_name().to_string_lossy().into_owned());
        }
    }
    None
}

pub fn kernel_version() -> Option<(u32, u32)> {
    let rel = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    parse_release(&rel)
}

pub fn parse_release(rel: &str) -> Option<(u32, u32)> {
    let mut it = rel.trim().split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps() {
        assert!(has_tracing_caps(1 << CAP_SYS_ADMIN));
        assert!(has_tracing_caps((1 << CAP_BPF) | (1 << CAP_PERFMON)));
        assert!(!has_tracing_caps(1 << CAP_BPF));
        assert!(!has_tracing_caps(0));
    }

    #[test]
    fn releases() {
        assert_eq!(parse_release("6.18.44-fc-v669\n"), Some((6, 18)));
        assert_eq!(parse_release("5.10.0-32-cloud-amd64"), Some((5, 10)));
        assert_eq!(parse_release("garbage"), None);
    }
}
