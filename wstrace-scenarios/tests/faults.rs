//! Faults against the real binary and the real kernel: signals and SIGKILL
//! mid-burst, more upgraded sockets than `--max-sockets`, a closer that exits
//! or execs right after its close, a pid reused by another program, and bad
//! input. Each asserts both what was
//! printed and what the kernel holds afterwards (its own list of loaded BPF
//! programs). Needs root: without it the tests fail (see `common::require`).
//!
//! The tests run one at a time (`common::serial`): "nothing left loaded" compares the
//! kernel's global program list, which a parallel test's wstrace would change.
mod common;

use std::{
    collections::HashSet,
    net::TcpStream,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    Tracer, TracerOptions, leaked_since, loaded_prog_ids, require_root, serial, server,
    upgrade_once, upgraded, wait_unloaded, wstrace_bin,
};

/// Upgrades in a background thread until `n` are done.
fn burst(port: u16, n: usize) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for _ in 0..n {
            upgrade_once(port);
        }
    })
}

#[test]
fn sigint_and_sigterm_mid_burst_leave_whole_reports_and_nothing_loaded() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    for (name, sig) in [("SIGINT", libc::SIGINT), ("SIGTERM", libc::SIGTERM)] {
        let (_srv, port) = server(&["--mode", "close-after101"]);
        let mut t = Tracer::start(port, &[]);
        let ids = t.prog_ids();
        assert!(!ids.is_empty(), "{name}: wstrace holds no BPF programs?");
        let load = burst(port, 2000);
        // Mid-burst: reports are flowing when the signal lands.
        let seen = t.wait_for_reports(50, Duration::from_secs(20)).len();
        assert!(seen >= 50, "{name}: only {seen} reports before the signal");
        t.signal(sig);
        let status = t.wait();
        let _ = load.join();
        assert!(status.success(), "{name}: wstrace exit {status}");
        // `reports()` panics on a torn or non-JSON line.
        let reports = t.reports();
        // Each connection has two ends on this host: the server's socket
        // and the burst's (it read the 101: the client side). An end is its
        // side, the client's address and its close time: the server closes
        // first, so the client keeps no TIME_WAIT and the kernel may give a
        // later connection of the burst the same client port.
        let ends: HashSet<(bool, &str, &str)> = reports
            .iter()
            .map(|r| {
                let server = common::is_server_on(r, port);
                let client = if server { &r["remote"] } else { &r["local"] };
                (
                    server,
                    client.as_str().unwrap_or(""),
                    r["ts"].as_str().unwrap_or(""),
                )
            })
            .collect();
        assert_eq!(ends.len(), reports.len(), "{name}: a report printed twice");
        for r in &reports {
            if common::is_server_on(r, port) {
                assert_eq!(r["closed_by"], "local", "{name}: {r}");
            } else {
                assert!(common::is_client_of(r, port), "{name}: {r}");
                // The server closed first, unless the report says its close
                // was never seen: a socket destroyed while the probes were
                // being detached (the daemon then says `local`, its guess).
                let unseen = r["notes"].as_array().is_some_and(|n| {
                    n.iter()
                        .any(|n| n == "the kernel destroyed the socket without a close being seen")
                });
                if !unseen {
                    assert_eq!(r["closed_by"], "peer", "{name}: {r}");
                }
            }
        }
        let left = wait_unloaded(&ids, Duration::from_secs(5));
        assert!(
            left.is_empty(),
            "{name}: programs {left:?} still loaded after exit (of {ids:?})"
        );
        let stderr = t.stderr_text();
        assert!(
            !stderr.contains("lost"),
            "{name}: events lost (the kernel side is detached before the last read):\n{stderr}"
        );
        eprintln!(
            "{name}: {} whole reports, {} programs unloaded",
            reports.len(),
            ids.len()
        );
    }
}

#[test]
fn sigkill_mid_burst_then_a_new_run_works_at_once() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let (_srv, port) = server(&["--mode", "close-after101"]);
    let mut t = Tracer::start(port, &[]);
    let ids = t.prog_ids();
    let load = burst(port, 1000);
    t.wait_for_reports(20, Duration::from_secs(20));
    t.signal(libc::SIGKILL);
    let _ = t.wait();
    let _ = load.join();
    // The kernel releases everything with the last fd: no cleanup step exists
    // that SIGKILL could skip.
    let left = wait_unloaded(&ids, Duration::from_secs(5));
    assert!(left.is_empty(), "programs {left:?} outlived SIGKILL");

    let started = Instant::now();
    let second = Tracer::start(port, &[]);
    eprintln!("second run attached {:?} after the kill", started.elapsed());
    upgrade_once(port);
    // The new run reports the next close, from both ends.
    let (r, client) = second.wait_for_both_ends(port, Duration::from_secs(10));
    assert_eq!(r["closed_by"], "local", "{r}");
    assert_eq!(client["closed_by"], "peer", "{client}");
}

#[test]
fn more_upgraded_sockets_than_max_sockets_are_evicted_and_counted() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    const OPEN: usize = 300;
    const CAP: usize = 64;
    let (_srv, port) = server(&["--mode", "hold"]);
    let mut t = TracerOptions::new()
        .port(port)
        .args(&["--max-sockets", &CAP.to_string()])
        .metrics()
        .start()
        .unwrap_or_else(|e| panic!("wstrace did not attach: {e:#}"));
    let conns: Vec<TcpStream> = (0..OPEN).map(|_| upgraded(port)).collect();
    // Let the daemon see every upgrade before the closes start.
    std::thread::sleep(Duration::from_millis(500));
    drop(conns);
    let reports = t.wait_for_reports(CAP, Duration::from_secs(10));
    // Every close reported or counted: wait until the metrics account for
    // all of them, then read the evictions from there (not stderr prose).
    let start = Instant::now();
    let evicted = loop {
        let lost = t
            .lost_events()
            .unwrap_or_else(|e| panic!("metrics: {e:#}\n{}", t.stderr_text()));
        let evicted = lost.get("max_sockets").copied().unwrap_or(0) as usize;
        if t.raw_lines().len() + evicted >= OPEN || start.elapsed() > Duration::from_secs(10) {
            break evicted;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    t.signal(libc::SIGTERM);
    let status = t.wait();
    assert!(status.success(), "wstrace exit {status} (crash?)");
    let reports = if reports.len() < t.raw_lines().len() {
        t.reports()
    } else {
        reports
    };
    let stderr = t.stderr_text();
    eprintln!(
        "{OPEN} upgraded sockets, --max-sockets {CAP}: {} reported, {evicted} evicted",
        reports.len()
    );
    assert!(
        evicted >= OPEN - CAP,
        "only {evicted} evictions counted for {OPEN} sockets over a cap of {CAP}"
    );
    assert!(reports.len() <= CAP, "more reports than tracked sockets");
    // The kernel map has per-CPU LRU slack, so it forgets only sockets the
    // daemon already evicted: the newest CAP are all reported.
    assert!(
        reports.len() >= CAP - 2,
        "the newest {CAP} sockets are still traced: only {} reports",
        reports.len()
    );
    for r in &reports {
        assert_eq!(r["closed_by"], "peer", "{r}");
    }
    assert!(
        stderr.contains("raise --max-sockets"),
        "the warning says what to do:\n{stderr}"
    );
}

#[test]
fn a_closer_that_exits_or_execs_at_once_is_named_and_symbolized() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    for after in ["exit", "exec"] {
        let (mut srv, port) = server(&["--mode", "close-after101", "--once", after]);
        let pid = srv.0.id() as u64;
        let t = Tracer::start(port, &[]);
        upgrade_once(port);
        // One report per end: the server's, and this test's socket's (the
        // client side: it read the 101), closed by the server.
        let (r, client) = t.wait_for_both_ends(port, Duration::from_secs(10));
        assert_eq!(client["closed_by"], "peer", "{after}: {client}");
        let r = &r;
        assert_eq!(r["pid"], pid, "{after}: {r}");
        assert_eq!(r["comm"], "ws-scenario", "{after}: {r}");
        assert!(
            r["exe"]
                .as_str()
                .is_some_and(|e| e.ends_with("/ws-scenario")),
            "{after}: the closing program, not what replaced it: {r}"
        );
        let user: Vec<&str> = r["user_stack"]
            .as_array()
            .map(|a| a.iter().filter_map(|f| f["function"].as_str()).collect())
            .unwrap_or_default();
        // Frames of the program that is gone (exit) or replaced (exec):
        // resolved from what was read while it lived. (close_connection
        // itself may be a tail call, so the caller is what shows.)
        assert!(
            user.iter().any(|f| f.contains("close")),
            "{after}: user stack has the close: {user:#?}"
        );
        assert!(
            user.iter()
                .any(|f| f.contains("ws_scenario::serve::serve_one")),
            "{after}: user stack names the server's function: {user:#?}"
        );
        if after == "exit" {
            let _ = srv.0.wait();
        }
    }
}

/// `ws-scenario serve` on 127.0.0.1:`port` from `exe`, with pid `want` if
/// the kernel can be made to hand it out (ns_last_pid, retried while other
/// processes take the pid first): the child and whether it got `want`.
fn serve_with_pid(exe: &std::path::Path, port: u16, want: u32) -> (common::Kill, bool) {
    for _ in 0..50 {
        // Root in the initial pid namespace may set the last pid handed out.
        let _ = std::fs::write("/proc/sys/kernel/ns_last_pid", (want - 1).to_string());
        let mut c = Command::new(exe)
            .args(["serve", "--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--mode", "close-after101"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the second server");
        if c.id() != want {
            let _ = c.kill();
            let _ = c.wait();
            continue;
        }
        let mut line = String::new();
        let mut out = std::io::BufReader::new(c.stdout.take().expect("stdout"));
        std::io::BufRead::read_line(&mut out, &mut line).expect("READY");
        assert!(line.starts_with("READY "), "second server: {line:?}");
        return (common::Kill(c), true);
    }
    panic!("could not get pid {want} back from the kernel in 50 tries");
}

/// A pid reused moments after its first owner exited is described as the
/// new process. The hard case is a reuse by the same program (same comm, as
/// with worker respawns): the comm gives nothing away, yet the command line
/// (and in a fleet the cgroup and container) may differ, and the old
/// process's cached description must not be reported for the new one.
#[test]
fn a_reused_pid_is_described_as_its_new_process() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let (mut first, _) = server(&[
        "--port",
        &port.to_string(),
        "--mode",
        "close-after101",
        "--once",
        "exit",
    ]);
    let pid = first.0.id();
    let t = Tracer::start(port, &[]);
    upgrade_once(port);
    // Both ends: the server's socket and this test's (the client side).
    t.wait_for_both_ends(port, Duration::from_secs(10));
    // Reaped: the pid is free for the kernel to hand out again.
    let _ = first.0.wait();
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_ws-scenario"));
    let (_second, got) = serve_with_pid(exe, port, pid);
    assert!(got);
    upgrade_once(port);
    let (reports, _) = t.wait_for_ends(port, 2, Duration::from_secs(10));
    let (old, new) = (&reports[0], &reports[1]);
    assert_eq!((&old["pid"], &new["pid"]), (&pid.into(), &pid.into()));
    assert_eq!(
        (&old["comm"], &new["comm"]),
        (&"ws-scenario".into(), &"ws-scenario".into())
    );
    let cmdline = |r: &serde_json::Value| r["cmdline"].as_str().unwrap_or_default().to_string();
    assert!(cmdline(old).contains("--once exit"), "{old}");
    assert!(
        !cmdline(new).contains("--once"),
        "the new process's command line, not the old one's: {new}"
    );
    let user: Vec<&str> = new["user_stack"]
        .as_array()
        .map(|a| a.iter().filter_map(|f| f["function"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        user.iter()
            .any(|f| f.contains("ws_scenario::serve::serve_one")),
        "symbolized from the new process's maps: {user:#?}"
    );
}

/// Runs wstrace to completion with `args` and returns (exit code, stderr).
fn run_fails(args: &[&str], uid: Option<u32>) -> (i32, String) {
    use std::os::unix::process::CommandExt as _;
    let mut cmd = Command::new(wstrace_bin());
    cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    let out = cmd.output().expect("run wstrace");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_input_is_one_clear_line_and_nothing_loaded() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let before: HashSet<u32> = loaded_prog_ids().into_iter().collect();
    let unwritable = "/proc/wstrace-cannot-write-here/closes.jsonl";
    // (args, run as uid, what the first line must say)
    let cases: &[(&[&str], Option<u32>, &[&str])] = &[
        (&["--port", "70000"], None, &["70000", "--port"]),
        (&["--port", "0"], None, &["--port", "0"]),
        (&["--port", "80", "--bogus"], None, &["--bogus"]),
        (
            &["--port", "80", "--probe", "uprobe"],
            None,
            &["uprobe", "--probe"],
        ),
        (
            &["--port", "80", "--max-sockets", "3"],
            None,
            &["--max-sockets"],
        ),
        (
            &["--port", "80", "--output", unwritable],
            None,
            &[unwritable],
        ),
        (&["--port", "80"], Some(65534), &["root", "CAP_BPF"]),
    ];
    for (args, uid, must) in cases {
        let (code, stderr) = run_fails(args, *uid);
        assert_ne!(code, 0, "{args:?} exited 0:\n{stderr}");
        let first = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        assert!(
            first.starts_with("wstrace: error: ") || first.starts_with("error: "),
            "{args:?}: first line is not an error line: {stderr}"
        );
        for m in *must {
            assert!(
                first.contains(m),
                "{args:?}: {first:?} does not mention {m:?}"
            );
        }
        if first.starts_with("wstrace: error: ") {
            assert_eq!(
                stderr.trim_end().lines().count(),
                1,
                "{args:?}: one line: {stderr}"
            );
        }
        eprintln!("{args:?} (uid {uid:?}) -> exit {code}: {first}");
    }
    // tracefs not mounted (hidden in a private mount namespace): wstrace
    // mounts it itself, as a tracer should on a minimal host, and traces.
    let script = format!(
        "umount -l /sys/kernel/tracing 2>/dev/null; umount -l /sys/kernel/debug/tracing 2>/dev/null; \
         if grep -q tracefs /proc/self/mounts; then echo 'tracefs still mounted' >&2; exit 99; fi; \
         {} --port 80 --duration 1 && grep -q tracefs /proc/self/mounts && echo mounted-by-wstrace >&2",
        wstrace_bin().display()
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("unshare (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Exit 0 after --duration: it attached (a failed start exits 1).
    assert!(
        out.status.success() && stderr.contains("mounted-by-wstrace"),
        "without tracefs mounted ({}):\n{stderr}",
        out.status
    );

    // Other tracers on a shared host load programs meanwhile: only new
    // programs no live process holds are left behind by these runs.
    let new = leaked_since(&before, Duration::from_secs(5));
    assert!(
        new.is_empty(),
        "programs left loaded by failed runs (held by no process): {new:?}"
    );
}
