//! How a server ended, where only this host can make it happen: the OOM
//! killer in a memory-limited cgroup (the kernel matrix covers the crash,
//! the kill by a known process and the exit without close in every probe
//! set: `ws-scenario check`).
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

mod common;

use common::{Tracer, require, require_root, server};

/// The memory cgroup this test runs in, as a directory we may create a
/// child in: cgroup v1's memory hierarchy, or v2 with the memory controller.
fn own_memory_cgroup() -> Option<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in own.lines() {
        let mut f = line.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        let rel = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "memory") {
            let dir = Path::new("/sys/fs/cgroup/memory").join(rel);
            if dir.join("memory.limit_in_bytes").exists() {
                return Some(dir);
            }
        }
        if controllers.is_empty() {
            for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
                let dir = Path::new(root).join(rel);
                let enabled = std::fs::read_to_string(dir.join("cgroup.subtree_control"))
                    .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"));
                if enabled {
                    return Some(dir);
                }
            }
        }
    }
    None
}

/// A child memory cgroup limited to `bytes`, removed when dropped.
struct LimitedCgroup(PathBuf);

impl LimitedCgroup {
    fn new(parent: &Path, bytes: u64) -> std::io::Result<Self> {
        let dir = parent.join(format!("wstrace-oom-{}", std::process::id()));
        std::fs::create_dir(&dir)?;
        let cg = LimitedCgroup(dir);
        let v1 = cg.0.join("memory.limit_in_bytes");
        if v1.exists() {
            std::fs::write(&v1, bytes.to_string())?;
            // With swap accounting, swap must not let the hog escape.
            let memsw = cg.0.join("memory.memsw.limit_in_bytes");
            if memsw.exists() {
                std::fs::write(memsw, bytes.to_string())?;
            }
        } else {
            std::fs::write(cg.0.join("memory.max"), bytes.to_string())?;
            std::fs::write(cg.0.join("memory.swap.max"), "0").or_else(|e| {
                // No swap controller: nothing to escape to.
                if cg.0.join("memory.swap.max").exists() {
                    Err(e)
                } else {
                    Ok(())
                }
            })?;
        }
        Ok(cg)
    }

    fn add(&self, pid: u32) -> std::io::Result<()> {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string())
    }
}

impl Drop for LimitedCgroup {
    fn drop(&mut self) {
        // Empty by now (its one process was killed); retried briefly while
        // the kernel finishes tearing the process down.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn oom_killed_server_is_process_killed_by_the_oom_killer() {
    if !require_root() {
        return;
    }
    let parent = own_memory_cgroup();
    if !require(
        parent.is_some(),
        "no memory cgroup to create a limited child in (cgroup v1 memory hierarchy, or v2 with the memory controller enabled for this test's cgroup)",
    ) {
        return;
    }
    let cg = LimitedCgroup::new(&parent.expect("checked"), 64 << 20)
        .unwrap_or_else(|e| panic!("creating a memory-limited cgroup: {e}"));
    let (srv, port) = server(&["--mode", "hog-after101"]);
    cg.add(srv.0.id())
        .unwrap_or_else(|e| panic!("moving the server into {}: {e}", cg.0.display()));
    let t = Tracer::start(port, &[]);
    common::upgrade_once(port);
    // This test's socket read the 101: the client side, which sees the
    // OOM kill as the server's close.
    let (r, client) = t.wait_for_both_ends(port, Duration::from_secs(20));
    assert_eq!(client["closed_by"], "peer", "{client:#}");
    assert_eq!(
        client["upgraded_by"]["pid"].as_u64(),
        Some(u64::from(std::process::id())),
        "{client:#}"
    );
    let r = &r;
    assert_eq!(r["pid"].as_u64(), Some(u64::from(srv.0.id())), "{r:#}");
    assert_eq!(r["closed_at_exit"], true, "{r:#}");
    assert_eq!(r["diagnosis"]["code"], "process_killed", "{r:#}");
    assert_eq!(r["process_end"]["signal"], "SIGKILL", "{r:#}");
    assert_eq!(r["process_end"]["killed_by"], "oom_killer", "{r:#}");
    assert!(
        r["diagnosis"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("OOM killer")),
        "{r:#}"
    );
    drop(srv);
}
