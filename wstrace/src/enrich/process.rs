//! The process table: every process the daemon has seen, with the facts
//! fleet logs need, read from /proc while it lives: executable, command line
//! (bounded, secret-looking arguments redacted), cgroup path and container id.
use std::collections::HashMap;
use std::io::Read as _;
use std::time::{Duration, Instant};

use crate::model::ProcInfo;
use crate::redact::{Redactor, redact_cmdline};

/// How long a process that has exited is kept: its last closes may still
/// be in flight (queued, or waiting in the matcher for the peer's side).
pub const EXITED_GRACE: Duration = Duration::from_secs(30);

/// Processes described at once, at most.
const MAX_ENTRIES: usize = 4096;

/// Bytes of text (exe, command line, cgroup, comm) held for all processes at
/// once, at most: 4096 processes with long command lines fit.
const MAX_BYTES: usize = 8 << 20;

/// Bytes of `/proc/<pid>/cmdline` read, at most: a local user controls it
/// and can make it megabytes long; the start says which program it is.
pub const CMDLINE_MAX: u64 = 4096;

/// Which process an event came from: pids are reused, the pair is not.
/// `start_ns` is 0 when this kernel's BTF does not say where the start time
/// is, or for a process found by scanning `/proc` before any event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProcessKey {
    pub pid: u32,
    pub start_ns: u64,
}

/// What the table knows of one process.
#[derive(Debug)]
struct Process {
    start_ns: u64,
    /// The comm of the event that read `info`.
    comm: String,
    info: ProcInfo,
    /// When the process was last seen, as the table's event count (not a
    /// clock: two events within a clock tick still order).
    last_seen: u64,
    /// When a prune first found `/proc/<pid>` gone.
    gone_since: Option<Instant>,
}

impl Process {
    fn bytes(&self) -> usize {
        let i = &self.info;
        self.comm.len()
            + [&i.exe, &i.cmdline, &i.cgroup, &i.container_id]
                .iter()
                .map(|s| s.as_ref().map_or(0, String::len))
                .sum::<usize>()
    }
}

/// What [`ProcessTable::observe`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// First event from this process: its facts were read now.
    New,
    /// Known already (re-read if the comm changed: exec or thread name).
    Known,
    /// The pid named another process before (another start time): what was
    /// cached for the old one is gone, and so must everything keyed by pid.
    Reused,
}

/// The one table of processes the daemon has seen, keyed by pid and
/// checked against the process start time every event carries. It owns
/// what is known about each process (comm, executable, command line,
/// cgroup), read from `/proc` at the process's first event so a process
/// that exits right after a close is still described, and one eviction rule
/// bounded by entries and bytes. Per-pid state elsewhere (the symbolizer's
/// maps and unwind tables) lives exactly as long as the process's entry
/// here: the caller forgets it for every pid this table drops.
#[derive(Default)]
pub struct ProcessTable {
    procs: HashMap<u32, Process>,
    bytes: usize,
    events: u64,
}

impl ProcessTable {
    /// Records an event from `key` (with the comm it carried), reading the
    /// process's facts from `/proc` if they are not known yet. Returns what
    /// was found and the pids dropped to stay within bounds.
    pub fn observe(
        &mut self,
        key: ProcessKey,
        comm: &str,
        redactor: &Redactor,
    ) -> (Seen, Vec<u32>) {
        self.observe_with(key, comm, || read(key.pid, redactor))
    }

    fn observe_with(
        &mut self,
        key: ProcessKey,
        comm: &str,
        read: impl FnOnce() -> ProcInfo,
    ) -> (Seen, Vec<u32>) {
        self.events += 1;
        let now = self.events;
        let seen = match self.procs.get_mut(&key.pid) {
            None => Seen::New,
            Some(p) if p.start_ns != 0 && key.start_ns != 0 && p.start_ns != key.start_ns => {
                Seen::Reused
            }
            Some(p) => {
                p.last_seen = now;
                if p.start_ns == 0 {
                    p.start_ns = key.start_ns;
                }
                if p.comm == comm {
                    return (Seen::Known, Vec::new());
                }
                // Another comm: an exec or a thread name. Re-read, but keep
                // the old facts if the process is gone (a closer that exited
                // keeps what was read while it lived).
                let fresh = read();
                if fresh.exe.is_some() {
                    let old = p.bytes();
                    p.comm = comm.to_string();
                    p.info = fresh;
                    let new = p.bytes();
                    self.bytes = (self.bytes + new).saturating_sub(old);
                }
                return (Seen::Known, self.evict_over_bounds(key.pid));
            }
        };
        if let Some(old) = self.procs.remove(&key.pid) {
            self.bytes = self.bytes.saturating_sub(old.bytes());
        }
        let p = Process {
            start_ns: key.start_ns,
            comm: comm.to_string(),
            info: read(),
            last_seen: now,
            gone_since: None,
        };
        self.bytes += p.bytes();
        self.procs.insert(key.pid, p);
        (seen, self.evict_over_bounds(key.pid))
    }

    /// Is `pid` in the table?
    pub fn knows(&self, pid: u32) -> bool {
        self.procs.contains_key(&pid)
    }

    /// What is known of `pid` (empty if nothing).
    pub fn info(&self, pid: u32) -> ProcInfo {
        self.procs
            .get(&pid)
            .map(|p| p.info.clone())
            .unwrap_or_default()
    }

    /// Drops processes that exited more than `grace` ago; returns their pids.
    pub fn prune_exited(&mut self, grace: Duration) -> Vec<u32> {
        let now = Instant::now();
        let mut gone = Vec::new();
        for (pid, p) in self.procs.iter_mut() {
            if std::path::Path::new(&format!("/proc/{pid}")).exists() {
                p.gone_since = None;
            } else if now.duration_since(*p.gone_since.get_or_insert(now)) >= grace {
                gone.push(*pid);
            }
        }
        for pid in &gone {
            self.remove(*pid);
        }
        gone
    }

    fn remove(&mut self, pid: u32) {
        if let Some(p) = self.procs.remove(&pid) {
            self.bytes = self.bytes.saturating_sub(p.bytes());
        }
    }

    /// Over a bound, drops the least recently seen processes (never `keep`,
    /// the one just recorded).
    fn evict_over_bounds(&mut self, keep: u32) -> Vec<u32> {
        let mut dropped = Vec::new();
        while self.procs.len() > MAX_ENTRIES || (self.bytes > MAX_BYTES && self.procs.len() > 1) {
            let oldest = self
                .procs
                .iter()
                .filter(|(pid, _)| **pid != keep)
                .min_by_key(|(_, p)| p.last_seen)
                .map(|(pid, _)| *pid);
            let Some(pid) = oldest else { break };
            self.remove(pid);
            dropped.push(pid);
        }
        dropped
    }
}

/// Reads a process's facts; anything unreadable (gone, a kernel thread) is
/// left out. Every read is bounded: the command line to [`CMDLINE_MAX`].
fn read(pid: u32, redactor: &Redactor) -> ProcInfo {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.display().to_string());
    let cmdline = read_bounded(&format!("/proc/{pid}/cmdline"), CMDLINE_MAX)
        .filter(|b| !b.is_empty())
        .map(|b| redact_cmdline(&split_cmdline(&b), redactor));
    let cgroup_text = read_bounded(&format!("/proc/{pid}/cgroup"), 4096)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let cgroup = cgroup_path(&cgroup_text);
    // Every hierarchy's line is searched (on hybrid v1/v2 hosts the
    // unified line is `/`); the names come from the runtime's state files,
    // once per container.
    let container = crate::enrich::container::shared()
        .lock()
        .ok()
        .and_then(|mut c| c.of_cgroup(&cgroup_text));
    let container_id = container
        .as_ref()
        .map(|c| c.id.clone())
        .or_else(|| cgroup.as_deref().and_then(container_id));
    ProcInfo {
        exe,
        cmdline,
        cgroup,
        container_id,
        container,
    }
}

/// The first `max` bytes of a /proc file.
fn read_bounded(path: &str, max: u64) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(max)
        .read_to_end(&mut buf)
        .ok()?;
    Some(buf)
}

/// NUL-separated arguments.
pub fn split_cmdline(raw: &[u8]) -> Vec<String> {
    raw.split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// The process's cgroup: the unified (v2) line `0::/path`, else the first
/// v1 line's path.
pub fn cgroup_path(text: &str) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let v2 = lines.iter().find_map(|l| l.strip_prefix("0::"));
    let any = lines.iter().find_map(|l| l.splitn(3, ':').nth(2));
    v2.or(any)
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
}

/// A 64-hex-digit container id in a cgroup path (Docker, containerd/CRI,
/// CRI-O, Podman and Kubernetes' kubepods layouts all embed one).
pub fn container_id(path: &str) -> Option<String> {
    path.split(['/', '-', '.', ':'])
        .find(|part| part.len() == 64 && part.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_string)
}

/// This host's name, for events shipped off the host.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exe(path: &str) -> ProcInfo {
        ProcInfo {
            exe: Some(path.into()),
            ..ProcInfo::default()
        }
    }

    fn key(pid: u32, start_ns: u64) -> ProcessKey {
        ProcessKey { pid, start_ns }
    }

    #[test]
    fn a_new_comm_rereads_but_a_gone_process_keeps_its_description() {
        let mut t = ProcessTable::default();
        let (seen, _) = t.observe_with(key(7, 1), "server", || exe("/srv/server"));
        assert_eq!(seen, Seen::New);
        // Same comm: cached, /proc not read again.
        let (seen, _) = t.observe_with(key(7, 1), "server", || panic!("re-read"));
        assert_eq!(seen, Seen::Known);
        // Another comm on a live process (exec, thread name): re-read.
        t.observe_with(key(7, 1), "sleep", || exe("/usr/bin/sleep"));
        assert_eq!(t.info(7).exe.as_deref(), Some("/usr/bin/sleep"));
        // Another comm but the process is gone: keep what was read alive.
        t.observe_with(key(7, 1), "worker", ProcInfo::default);
        assert_eq!(t.info(7).exe.as_deref(), Some("/usr/bin/sleep"));
        // Unknown and gone: recorded as unknown.
        t.observe_with(key(8, 1), "x", ProcInfo::default);
        assert_eq!(t.info(8), ProcInfo::default());
    }

    #[test]
    fn another_start_time_is_another_process() {
        let mut t = ProcessTable::default();
        t.observe_with(key(7, 100), "php", || exe("/usr/bin/php"));
        // Same pid and comm, another start time: the pid was reused.
        let (seen, _) = t.observe_with(key(7, 200), "php", || exe("/usr/bin/php8.2"));
        assert_eq!(seen, Seen::Reused);
        assert_eq!(t.info(7).exe.as_deref(), Some("/usr/bin/php8.2"));
        // A start time of 0 (unknown) never counts as a reuse, and a process
        // first found without one adopts the first it sees.
        let (seen, _) = t.observe_with(key(9, 0), "nginx", || exe("/usr/sbin/nginx"));
        assert_eq!(seen, Seen::New);
        let (seen, _) = t.observe_with(key(9, 300), "nginx", || panic!("re-read"));
        assert_eq!(seen, Seen::Known);
        let (seen, _) = t.observe_with(key(9, 301), "nginx", || exe("/usr/sbin/nginx"));
        assert_eq!(seen, Seen::Reused);
    }

    #[test]
    fn bounded_by_entries_and_bytes_least_recently_seen_first() {
        let mut t = ProcessTable::default();
        let mut dropped = Vec::new();
        for pid in 1..=(MAX_ENTRIES as u32 + 10) {
            let (_, d) = t.observe_with(key(pid, 1), "w", ProcInfo::default);
            dropped.extend(d);
        }
        assert_eq!(t.procs.len(), MAX_ENTRIES);
        assert_eq!(dropped, (1..=10).collect::<Vec<u32>>());
        // Big facts: the byte bound holds whatever the entry count.
        let mut t = ProcessTable::default();
        let big = || ProcInfo {
            cmdline: Some("x".repeat(CMDLINE_MAX as usize)),
            ..ProcInfo::default()
        };
        for pid in 1..=4000 {
            t.observe_with(key(pid, 1), "w", big);
        }
        assert!(t.bytes <= MAX_BYTES, "{} bytes held", t.bytes);
        assert!(t.knows(4000), "the newest process is kept");
    }

    #[test]
    fn bounded_reads_of_proc_files() {
        // This process's own cmdline, cut to 4 bytes.
        let b = read_bounded("/proc/self/cmdline", 4).expect("readable");
        assert_eq!(b.len(), 4);
        assert_eq!(read_bounded("/proc/0/nonexistent", 4), None);
    }

    #[test]
    fn cmdline_is_read_redacted() {
        let r = Redactor::default();
        assert_eq!(
            redact_cmdline(&split_cmdline(b"nginx: worker process\0"), &r),
            "nginx: worker process"
        );
        assert_eq!(
            redact_cmdline(&split_cmdline(b"node\0app.js\0--jwt\0eyJhbGciOi\0"), &r),
            "node app.js --jwt [redacted]"
        );
    }

    #[test]
    fn cmdline_split() {
        assert_eq!(split_cmdline(b"a\0b c\0\0"), ["a", "b c"]);
        assert!(split_cmdline(b"").is_empty());
    }

    #[test]
    fn cgroups_and_container_ids() {
        let id = "3f1b0c6a9e2d4b5f8a7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a";
        let docker = format!("0::/system.slice/docker-{id}.scope\n");
        assert_eq!(
            cgroup_path(&docker).as_deref(),
            Some(format!("/system.slice/docker-{id}.scope").as_str())
        );
        assert_eq!(
            container_id(&cgroup_path(&docker).expect("path")).as_deref(),
            Some(id)
        );
        let k8s = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/cri-containerd-{id}.scope"
        );
        assert_eq!(container_id(&k8s).as_deref(), Some(id));
        let v1 = format!("12:pids:/docker/{id}\n11:memory:/docker/{id}\n");
        assert_eq!(
            cgroup_path(&v1).as_deref(),
            Some(format!("/docker/{id}").as_str())
        );
        assert_eq!(
            container_id("/user.slice/user-0.slice/session-1.scope"),
            None
        );
        assert_eq!(cgroup_path(""), None);
        assert_eq!(cgroup_path("0::/\n").as_deref(), Some("/"));
    }
}
