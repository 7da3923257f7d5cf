//! Facts about a process for fleet logs, read from /proc while it lives:
//! executable, command line (with secret-looking arguments redacted), cgroup
//! path and container id.
use std::collections::HashMap;

use crate::redact::{Redactor, redact_cmdline};
use crate::model::ProcInfo;

/// Per-pid cache: a process that exits right after its close is still
/// described (it was read at the 101 or at the close event).
///
/// Each entry remembers the comm of the event that read it. A different comm
/// for the same pid means a reused pid, an exec, or just another thread: the
/// entry is re-read, but only kept if the re-read found a live process, so a
/// closer that has exited keeps what was read while it lived. A close by the
/// old program of a process that exec'd since keeps its comm, hence the old
/// (right) description.
#[derive(Default)]
pub struct Processes {
    info: HashMap<u32, (String, ProcInfo)>,
}

impl Processes {
    const MAX: usize = 4096;

    pub fn note(&mut self, pid: u32, comm: &str, redactor: &Redactor) {
        self.note_with(pid, comm, || read(pid, redactor));
    }

    fn note_with(&mut self, pid: u32, comm: &str, read: impl FnOnce() -> ProcInfo) {
        let known = match self.info.get(&pid) {
            Some((c, _)) if c == comm => return,
            Some(_) => true,
            None => false,
        };
        let fresh = read();
        if known && fresh.exe.is_none() {
            return;
        }
        if self.info.len() >= Self::MAX {
            self.info.clear();
        }
        self.info.insert(pid, (comm.to_string(), fresh));
    }

    /// Drop what is known of `pid` (it now names another process).
    pub fn forget(&mut self, pid: u32) {
        self.info.remove(&pid);
    }

    pub fn get(&self, pid: u32) -> ProcInfo {
        self.info
            .get(&pid)
            .map(|(_, i)| i.clone())
            .unwrap_or_default()
    }
}

fn read(pid: u32, redactor: &Redactor) -> ProcInfo {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.display().to_string());
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .filter(|b| !b.is_empty())
        .map(|b| redact_cmdline(&split_cmdline(&b), redactor));
    let cgroup_text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let cgroup = cgroup_path(&cgroup_text);
    let container_id = cgroup.as_deref().and_then(container_id);
    ProcInfo {
        exe,
        cmdline,
        cgroup,
        container_id,
    }
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

    #[test]
    fn a_new_comm_rereads_but_a_gone_process_keeps_its_description() {
        let mut p = Processes::default();
        p.note_with(7, "server", || exe("/srv/server"));
        // Same comm: cached, /proc not read again.
        p.note_with(7, "server", || panic!("re-read"));
        // Another comm on a live pid (reuse or exec): re-read.
        p.note_with(7, "sleep", || exe("/usr/bin/sleep"));
        assert_eq!(p.get(7).exe.as_deref(), Some("/usr/bin/sleep"));
        // Another comm but the process is gone: keep what was read alive.
        p.note_with(7, "worker", ProcInfo::default);
        assert_eq!(p.get(7).exe.as_deref(), Some("/usr/bin/sleep"));
        // Unknown and gone: recorded as unknown.
        p.note_with(8, "x", ProcInfo::default);
        assert_eq!(p.get(8), ProcInfo::default());
    }

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn cmdline_secrets_are_hidden() {
        let r = Redactor::default();
        let line = redact_cmdline(
            &args(&[
                "php",
                "server.php",
                "--db-password=hunter2",
                "--api-token",
                "abc",
                "--port",
                "1215",
                "redis://app:pw1@cache:6379",
                "-v",
            ]),
            &r,
        );
        assert_eq!(
            line,
            "php server.php --db-password=[redacted] --api-token [redacted] --port 1215 redis://app:[redacted]@cache:6379 -v"
        );
        let r = Redactor::new(&["tenant".into()]).expect("valid");
        assert_eq!(
            redact_cmdline(&args(&["x", "--tenant=acme"]), &r),
            "x --tenant=[redacted]"
        );
        assert_eq!(
            redact_cmdline(&args(&["nginx: worker process"]), &Redactor::default()),
            "nginx: worker process"
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
