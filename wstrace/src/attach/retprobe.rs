//! A kretprobe made through tracefs `kprobe_events`, where its instance
//! count can be set, with a kprobe program attached to it.
//!
//! Why not aya's `KProbe::attach`: it goes through the kprobe PMU, which
//! gives a kretprobe the kernel's default number of instances — one per
//! possible CPU on kernels built without CONFIG_PREEMPTION (Debian's 5.10),
//! max(10, 2 × CPUs) otherwise. Every task inside the probed function holds
//! one until it returns, and a task blocked in `tcp_recvmsg` (any socket on
//! the machine, a blocking-I/O server's idle threads) stays inside. Once
//! they are all held, returns are missed: a server's request head is not
//! seen, so a 101-looking response body to a plain GET was reported as an
//! upgrade (5.10 kprobe set, 2 runs in 5 of the kernel matrix). tracefs's
//! `r<N>:` syntax asks for `N` instances, up to the kernel's limit
//! ([`MAXACTIVE`]), and the kernel counts the returns it still misses in
//! `kprobe_profile` ([`RetProbe::missed`]).
//!
//! The event lives in tracefs until removed: [`Drop`] removes it, and
//! [`remove_stale`] removes the ones a killed run left behind.
use std::{
    fs::OpenOptions,
    io::Write as _,
    os::fd::{AsFd as _, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::programs::KProbe;

use super::perf::{PERF_TYPE_TRACEPOINT, PerfEventAttr, PerfLink, attach_program};

/// KRETPROBE_MAXACTIVE_MAX: the most instances tracefs accepts. About 64
/// bytes each (256 KiB in all), allocated when the probe is registered.
pub const MAXACTIVE: u32 = 4096;

/// The tracefs event group every wstrace run creates its events in.
const GROUP: &str = "wstrace";

/// A registered kretprobe event with a program attached (through a perf
/// event on it). Dropping it detaches the program and removes the event.
pub struct RetProbe {
    root: PathBuf,
    event: String,
    link: Option<PerfLink>,
}

impl RetProbe {
    /// Creates `wstrace/<event>` as a kretprobe on `func` with
    /// [`MAXACTIVE`] instances and attaches `prog`, a loaded kprobe
    /// program, to it: what the kprobe set and the benchmark floor both do
    /// for `tcp_recvmsg`'s return.
    pub fn attach(root: &Path, func: &str, prog: &KProbe) -> Result<Self> {
        let fd = prog
            .fd()
            .with_context(|| format!("the program for {func}'s return is not loaded"))?;
        Self::attach_fd(root, func, fd.as_fd())
    }

    fn attach_fd(root: &Path, func: &str, prog: BorrowedFd<'_>) -> Result<Self> {
        if func.is_empty() || !func.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            bail!("`{func}` is not a kernel function name");
        }
        let event = event_name(std::process::id(), func, unique_suffix());
        write_command(root, &format!("r{MAXACTIVE}:{GROUP}/{event} {func}"))
            .with_context(|| format!("creating kretprobe {GROUP}/{event} on {func}"))?;
        // From here on, dropping `probe` removes the event on any error.
        let mut probe = Self {
            root: root.to_path_buf(),
            event,
            link: None,
        };
        let id_path = root
            .join("events")
            .join(GROUP)
            .join(&probe.event)
            .join("id");
        let id: u64 = std::fs::read_to_string(&id_path)
            .with_context(|| format!("reading {}", id_path.display()))?
            .trim()
            .parse()
            .with_context(|| format!("parsing {}", id_path.display()))?;
        let perf = open_tracepoint_event(id)?;
        probe.link = Some(attach_program(perf, prog).context("on the kretprobe")?);
        Ok(probe)
    }

    /// Returns the kernel could not hand to the program since the probe
    /// was made (no free instance, or a probe already running on the CPU),
    /// from tracefs `kprobe_profile`; 0 if it cannot be read.
    pub fn missed(&self) -> u64 {
        std::fs::read_to_string(self.root.join("kprobe_profile"))
            .ok()
            .and_then(|t| profile_missed(&t, &self.event))
            .unwrap_or(0)
    }
}

impl Drop for RetProbe {
    fn drop(&mut self) {
        // The event cannot be removed while the perf event holds it.
        drop(self.link.take());
        if let Err(e) = write_command(&self.root, &format!("-:{GROUP}/{}", self.event)) {
            // The next run removes it (remove_stale); it costs nothing
            // meanwhile: an event no one enables is not armed.
            eprintln!(
                "wstrace: warning: could not remove kretprobe {GROUP}/{} from {}: {e:#}",
                self.event,
                self.root.join("kprobe_events").display()
            );
        }
    }
}

/// Removes the `wstrace/` events runs killed before their clean-up left in
/// tracefs. Events of runs still going are in use, and the kernel refuses
/// to remove them (EBUSY): those stay. Returns how many were removed.
pub fn remove_stale(root: &Path) -> usize {
    let Ok(list) = std::fs::read_to_string(root.join("kprobe_events")) else {
        return 0;
    };
    stale_events(&list)
        .filter(|event| write_command(root, &format!("-:{GROUP}/{event}")).is_ok())
        .count()
}

/// The names of the events in group `wstrace` in a `kprobe_events` listing
/// (lines like `r4096:wstrace/wstrace_42_1f_tcp_recvmsg tcp_recvmsg`).
fn stale_events(list: &str) -> impl Iterator<Item = &str> {
    list.lines().filter_map(|line| {
        let def = line.split_whitespace().next()?;
        let (_, name) = def.split_once(':')?;
        let event = name.strip_prefix(GROUP)?.strip_prefix('/')?;
        event.starts_with("wstrace_").then_some(event)
    })
}

/// `wstrace_<pid>_<suffix>_<func>`: the pid says whose it is, the suffix
/// keeps two runs apart whose pids collide (other pid namespaces).
fn event_name(pid: u32, func: &str, suffix: u32) -> String {
    format!("wstrace_{pid}_{suffix:x}_{func}")
}

fn unique_suffix() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_nsec as u32) ^ (ts.tv_sec as u32).rotate_left(16)
}

/// The nmissed column of `event`'s line in `kprobe_profile` (`  <event>
/// <nhit> <nmissed>`; older kernels print the bare event name, newer ones
/// `group/event`).
fn profile_missed(profile: &str, event: &str) -> Option<u64> {
    let qualified = format!("{GROUP}/{event}");
    profile.lines().find_map(|line| {
        let mut cols = line.split_whitespace();
        let name = cols.next()?;
        if name != event && name != qualified {
            return None;
        }
        let _hits = cols.next()?;
        cols.next()?.parse().ok()
    })
}

/// Appends one command to `kprobe_events`. Appending matters: opening it
/// for writing without O_APPEND clears every kprobe event on the machine.
fn write_command(root: &Path, command: &str) -> Result<()> {
    let path = root.join("kprobe_events");
    let mut f = OpenOptions::new()
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    f.write_all(format!("{command}\n").as_bytes())
        .with_context(|| format!("writing `{command}` to {}", path.display()))
}

/// A perf event on trace event `id`, every process, CPU 0: a program
/// attached to it runs on every CPU (the kernel runs a kprobe event's
/// programs before it looks at the CPU's perf events).
fn open_tracepoint_event(id: u64) -> Result<OwnedFd> {
    let attr = PerfEventAttr {
        sample_period: 1,
        wakeup_events: 1,
        ..PerfEventAttr::new(PERF_TYPE_TRACEPOINT, id)
    };
    // SAFETY: a tracepoint attr carries no pointer.
    unsafe { super::perf::open(&attr, -1, 0) }
        .map_err(|e| anyhow!(e))
        .context("perf_event_open on the kretprobe event")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names_carry_pid_suffix_and_function() {
        assert_eq!(
            event_name(42, "tcp_recvmsg", 0x1f),
            "wstrace_42_1f_tcp_recvmsg"
        );
        // MAX_EVENT_NAME_LEN is 64.
        assert!(event_name(u32::MAX, "tcp_recvmsg", u32::MAX).len() < 64);
    }

    #[test]
    fn stale_events_are_only_wstrace_ones() {
        let list = "r4096:wstrace/wstrace_42_1f_tcp_recvmsg tcp_recvmsg\n\
                    p:kprobes/mine tcp_sendmsg\n\
                    r:wstrace/someone_elses tcp_close\n\
                    r16:wstrace/wstrace_7_a_tcp_recvmsg tcp_recvmsg\n\
                    garbage\n";
        let got: Vec<&str> = stale_events(list).collect();
        assert_eq!(
            got,
            ["wstrace_42_1f_tcp_recvmsg", "wstrace_7_a_tcp_recvmsg"]
        );
    }

    #[test]
    fn missed_is_read_from_either_profile_format() {
        let old = "  wstrace_42_1f_tcp_recvmsg                          1234               5\n";
        let new = "  wstrace/wstrace_42_1f_tcp_recvmsg                  1234               7\n";
        assert_eq!(profile_missed(old, "wstrace_42_1f_tcp_recvmsg"), Some(5));
        assert_eq!(profile_missed(new, "wstrace_42_1f_tcp_recvmsg"), Some(7));
        assert_eq!(profile_missed(new, "wstrace_42_1f_tcp"), None);
    }

    #[test]
    fn function_names_are_checked_before_tracefs_is_written() {
        let dir = std::env::temp_dir().join("wstrace-retprobe-test-nonexistent");
        // SAFETY: a closed-over fd number is never used: the name check fails first.
        let fd = unsafe { BorrowedFd::borrow_raw(0) };
        for bad in ["", "tcp_recvmsg\nr:x/y z", "a b", "../x"] {
            let err = RetProbe::attach_fd(&dir, bad, fd)
                .err()
                .map(|e| e.to_string());
            assert!(
                err.as_deref()
                    .is_some_and(|e| e.contains("not a kernel function name")),
                "{bad:?}: {err:?}"
            );
        }
    }
}
