//! What the root-only integration tests share. Everything that starts
//! wstrace, gates on prerequisites or makes sockets is defined once, in the
//! `wstrace_scenarios::harness` library (also used by `ws-scenario check`
//! in the VMs and by wstrace's own tests), and re-exported here under the
//! names the tests use. Only what needs this crate's test-only inputs stays
//! here: the `ws-scenario` binary (`CARGO_BIN_EXE_ws-scenario`) and the
//! kernel's program list (aya, a dev-dependency).
#![allow(dead_code, unused_imports)] // each test crate uses its own subset

use std::{
    process::Command,
    time::{Duration, Instant},
};

pub use wstrace_scenarios::harness::{
    ALLOW_SKIP, Kill, SYMBOLIZE_TIMEOUT, Tracer, TracerOptions, UPGRADE, free_port,
    nobody::{
        ExtractedPython, WorldReadableDir, as_nobody, as_nobody_with_libc, nobody_python,
        nobody_python_server, require_extracted_python, require_nobody_python,
    },
    process::{install_executable, read_ready, spawn_group, write_executable},
    report::{
        is_client_of, is_client_side, is_server_on, is_server_side,
        local_port as report_local_port, remote_port as report_remote_port,
    },
    require, require_file, require_node_ws, require_ok, require_root, require_root_because,
    require_tool, require_venv_python, spawn_ready, target, upgrade_once, upgraded, upgraded_with,
    wstrace_bin,
};

/// `ws-scenario serve` on 127.0.0.1 with `args` (e.g. `--mode close-after101`).
pub fn server(args: &[&str]) -> (Kill, u16) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ws-scenario"));
    c.args(["serve", "--bind", "127.0.0.1"]).args(args);
    spawn_ready(&mut c)
}

/// A traced port whose close must be reported: the positive barrier after
/// which a test may assert that something else was not reported (wstrace
/// reports closes in the order the kernel saw them).
pub struct Barrier {
    _server: Kill,
    pub port: u16,
}

impl Barrier {
    /// A `close-after101` server; trace [`Barrier::port`] too.
    pub fn start() -> Barrier {
        let (server, port) = server(&["--mode", "close-after101"]);
        Barrier {
            _server: server,
            port,
        }
    }

    /// One close on the barrier's port, then waits (up to `timeout`) for
    /// its server side's report; panics if it does not come. Returns every
    /// other report so far: not the barrier connection's own, from either
    /// end (its client, this test, read the 101: the client side, which may
    /// come before or after the server's).
    pub fn cross(&self, t: &Tracer, timeout: Duration) -> Vec<serde_json::Value> {
        upgrade_once(self.port);
        let port = self.port;
        let (mut reports, found) = t.wait_for_report(timeout, |r| is_server_on(r, port));
        assert!(
            found,
            "the barrier's close on port {port} was not reported within {timeout:?}:\n{}",
            t.stderr_text()
        );
        reports.retain(|r| !is_server_on(r, port) && !is_client_of(r, port));
        reports
    }
}

/// Ids of every BPF program loaded in the kernel right now (the kernel's own
/// view, as `bpftool prog` lists it).
pub fn loaded_prog_ids() -> Vec<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .collect()
}

/// Waits (programs are freed after an RCU grace period) until none of `ids`
/// is loaded; returns the ones still there after `timeout`.
pub fn wait_unloaded(ids: &[u32], timeout: Duration) -> Vec<u32> {
    let start = Instant::now();
    loop {
        let loaded = loaded_prog_ids();
        let left: Vec<u32> = ids.iter().copied().filter(|i| loaded.contains(i)).collect();
        if left.is_empty() || start.elapsed() > timeout {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Ids of the BPF programs some live process holds a program or link fd
/// of (`prog_id:` in `/proc/<pid>/fdinfo/<fd>`): another tracer's on a
/// shared host, or a test's own.
pub fn prog_ids_held() -> std::collections::HashSet<u32> {
    let mut held = std::collections::HashSet::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return held;
    };
    for p in procs.flatten() {
        // Processes come and go while we read: whatever is gone is skipped.
        let Ok(fds) = std::fs::read_dir(p.path().join("fdinfo")) else {
            continue;
        };
        for fd in fds.flatten() {
            let text = std::fs::read_to_string(fd.path()).unwrap_or_default();
            held.extend(
                text.lines()
                    .filter_map(|l| l.strip_prefix("prog_id:"))
                    .filter_map(|id| id.trim().parse::<u32>().ok()),
            );
        }
    }
    held
}

/// Programs loaded now that were not in `before` and that no live process
/// holds (so nothing will ever unload them: leaked, e.g. pinned), after
/// waiting up to `timeout` for the RCU grace period that frees a closed
/// program. Programs other tracers on the host load meanwhile are held by
/// them and do not count.
pub fn leaked_since(before: &std::collections::HashSet<u32>, timeout: Duration) -> Vec<u32> {
    let start = Instant::now();
    loop {
        let held = prog_ids_held();
        let mut left: Vec<u32> = loaded_prog_ids()
            .into_iter()
            .filter(|id| !before.contains(id) && !held.contains(id))
            .collect();
        if left.is_empty() || start.elapsed() > timeout {
            left.sort_unstable();
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Serializes a test binary's root tests: each starts its own wstrace, and
/// assertions about the kernel's global program list (or one report per
/// run) would see another test's tracer.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}
