//! A restart storm: a server killed with thousands of upgraded connections
//! open. Every connection is one JSON object in `--output`; the text output
//! folds them into one summary (the closer, the count, the first and last
//! 4-tuple, one stack). Real kernel, real server (`ws-scenario serve --mode
//! hold`), real sockets. Needs root (see `common::require`).
mod common;

use std::{
    collections::HashSet,
    net::TcpStream,
    time::{Duration, Instant},
};

use common::{Tracer, require, require_root, serial, server, upgraded};

const N: usize = 2000;

/// Room for N client sockets here and N server sockets in the child (which
/// inherits the limit). False (after `require`) when the hard limit is lower.
fn raise_nofile(want: u64) -> bool {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if lim.rlim_cur < want {
        lim.rlim_cur = want.min(lim.rlim_max);
        // SAFETY: valid pointer to an initialised rlimit.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    }
    require(
        lim.rlim_cur >= want,
        &format!(
            "needs {want} open files (RLIMIT_NOFILE hard limit is {}): raise it (ulimit -Hn)",
            lim.rlim_max
        ),
    )
}

fn json_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn a_server_killed_with_thousands_open_is_one_summary_in_text_and_each_in_json() {
    if !require_root() || !raise_nofile(2 * N as u64 + 256) {
        return;
    }
    let _serial = serial();
    let (mut srv, port) = server(&["--mode", "hold"]);
    let pid = srv.0.id();
    let dir = std::env::temp_dir().join(format!("wstrace-storm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let log = dir.join("closes.jsonl");
    let mut t = Tracer::start_format(
        port,
        "text",
        &["--color", "never", "--output", &log.display().to_string()],
    );
    let conns: Vec<TcpStream> = (0..N).map(|_| upgraded(port)).collect();
    // The kernel closes all N at the server's exit.
    let _ = srv.0.kill();
    let _ = srv.0.wait();
    drop(conns);

    let start = Instant::now();
    while json_lines(&log).len() < N && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(200));
    }
    // The fold prints once the storm has been quiet a moment.
    while !t.raw_lines().iter().any(|l| l.contains(" CLOSES "))
        && start.elapsed() < Duration::from_secs(70)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    t.signal(libc::SIGTERM);
    assert!(t.wait().success(), "{}", t.stderr_text());

    // JSON: every connection, once, closed by the server at its exit.
    let reports = json_lines(&log);
    assert_eq!(reports.len(), N, "stderr: {}", t.stderr_text());
    let remotes: HashSet<&str> = reports
        .iter()
        .map(|r| r["remote"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(remotes.len(), N, "each connection once");
    for r in &reports {
        assert_eq!(r["closed_by"], "local", "{r}");
        assert_eq!(r["pid"].as_u64(), Some(u64::from(pid)), "{r}");
        assert_eq!(r["closed_at_exit"], true, "{r}");
    }

    // Text: one summary, nothing else.
    let out = t.raw_lines().concat();
    let headers: Vec<&str> = out.lines().filter(|l| !l.starts_with(' ')).collect();
    assert_eq!(headers.len(), 1, "one block in text:\n{out}");
    let want = format!(
        "ws-scenario (pid {pid}): {N} upgraded connections closed by LOCAL (FIN) at its exit, within"
    );
    assert!(
        headers[0].contains(" CLOSES ") && headers[0].contains(&want),
        "summary {:?} should say {want:?}",
        headers[0]
    );
    for what in [
        "  first:    127.0.0.1:",
        "  last:     127.0.0.1:",
        "kernel stack",
    ] {
        assert!(out.contains(what), "{what:?} missing in\n{out}");
    }
    assert!(
        out.lines().count() < 150,
        "a summary, not {N} reports:\n{out}"
    );
    eprintln!("{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
