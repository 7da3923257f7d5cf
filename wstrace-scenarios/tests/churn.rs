//! Fleet-scale churn (issue 29): behind a proxy that downgrades the upgrade
//! to HTTP/1.0 every browser reconnects every few seconds, and a backend
//! sees ~20,000 upgrade+close a second. Every close must still be reported
//! (stack detail degrades first: a call site over its copy budget names its
//! last copy), and a flood from one client must not hide another server's
//! close. Real kernel (tracepoint set, which this host has), real servers
//! (`ws-scenario serve --mode close-after101`), real sockets, default
//! (dwarf) stacks, JSON lines on stdout as a collector (and the benchmark)
//! reads them. Needs root (see `common::require`).
mod common;

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use common::{TracerOptions, UPGRADE, require_root, serial, server, upgrade_once};

/// How long the flood runs, and how many client loops make it (8 loops
/// keep a one-thread server busy on this 2-CPU host: the host's maximum).
const FLOOD: Duration = Duration::from_secs(8);
const LOOPS: usize = 8;

/// Upgrade-and-wait-for-close loops until `stop`; returns the connections
/// that got their 101 (each one close the server made: one report due).
fn flood(port: u16, stop: Arc<AtomicBool>) -> u64 {
    let mut done = 0u64;
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) else {
            continue;
        };
        let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
        if c.write_all(UPGRADE).is_err() {
            continue;
        }
        let mut head = Vec::new();
        while let Ok(n) = c.read(&mut buf) {
            if n == 0 {
                break;
            }
            if head.len() < 16 {
                head.extend_from_slice(&buf[..n]);
            }
        }
        if head.starts_with(b"HTTP/1.1 101 ") {
            done += 1;
        }
    }
    done
}

fn count_lines(path: &Path) -> usize {
    std::fs::File::open(path)
        .map(|f| BufReader::new(f).lines().count())
        .unwrap_or(0)
}

/// Issue 29's acceptance test. Ignored until it passes: on the 2-CPU
/// development host, shared with other builds, this test's client reaches
/// 15-24k/s and the daemon, on the same CPUs, falls behind. Before the fair
/// share (load 5-10): 100,528 of 162,183, 181,481 of 189,137 and 167,016 of
/// 190,744 reported, the rest lost to a full ring. With it (2026-12-07, load
/// average 11-12, 35-54 us of daemon CPU per report): 81,470 of 123,478
/// reported at 15.4k/s, 86,890 events `over_budget` (the flooded server's,
/// named), 0 `ring_full`; 176,848 connections (22.1k/s) in another run.
/// With small data records and one heap arena (2026-12-07 15:30, load
/// average 17-28 from seven parallel builds): `ws-bench churn` reached
/// only 0.8-3.9k/s; runs at 0.8-1.9k/s were exact (6,474, 13,078, 14,926
/// reported of as many), runs at 1.6-3.9k/s lost 1,236-4,644 connections
/// `over_budget` while the daemon got ~11% of a CPU (perf). This test at
/// 15:44 (load 10-16): 28,814 of 54,943 reported at 6.9k/s, 52,661 events
/// `over_budget` (16,445 connections of the flooded server not traced),
/// the victim's report there with its named stack. Session 9 (19:38, load
/// 2-3, through the harness with reports to a file): 56,399 of 56,399 at
/// 7.0k/s and 77,843 of 77,843 at 9.7k/s reported, nothing lost, the
/// victim's stack named, 56,335/77,771 closes `same_as`. This host cannot
/// tell whether the daemon keeps up at 20k/s; beside the kernel matrix's
/// VMs (CI) it would be starved, so it stays out of `cargo xtask test`. That the victim's
/// close survives a flood whatever the daemon's speed is
/// `a_flood_cannot_crowd_out_another_servers_close` (not ignored).
/// Run it with `cargo test --release -p wstrace-scenarios --test churn --
/// --ignored`.
#[test]
#[ignore = "issue 29 not done: the daemon still loses events at this host's maximum churn rate"]
fn every_close_is_reported_under_churn_and_a_victims_close_keeps_its_stack() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let (_flooded, port) = server(&["--mode", "close-after101"]);
    let (victim_srv, victim) = server(&["--mode", "close-after101"]);
    let victim_pid = victim_srv.0.id();
    let dir = std::env::temp_dir().join(format!("wstrace-churn-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let log = dir.join("closes.jsonl");
    // JSON lines on stdout, as a collector reads them (and the benchmark),
    // into a file: 150,000 reports are too many to hold in the test. Not
    // echoed: per-tick loss warnings would flood the test's output.
    let mut t = TracerOptions::new()
        .ports(&[port, victim])
        .format("json")
        .arg("--probe")
        .arg("tracepoint")
        .metrics()
        .echo(false)
        .stdout_file(&log)
        .start()
        .unwrap_or_else(|e| panic!("wstrace did not attach: {e:#}"));
    let stop = Arc::new(AtomicBool::new(false));
    let loops: Vec<_> = (0..LOOPS)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || flood(port, stop))
        })
        .collect();
    // The victim closes once, in the middle of the flood.
    std::thread::sleep(FLOOD / 2);
    upgrade_once(victim);
    std::thread::sleep(FLOOD / 2);
    stop.store(true, Ordering::Relaxed);
    let flooded: u64 = loops
        .into_iter()
        .map(|l| l.join().expect("flood loop"))
        .sum();
    let want = flooded as usize + 1;
    eprintln!(
        "churn: {flooded} connections in {} s ({:.0}/s) + 1 victim",
        FLOOD.as_secs(),
        flooded as f64 / FLOOD.as_secs_f64()
    );

    // No timing assertion: the daemon may lag; it must not lose anything.
    // The wait ends when every report is in (both ends of each connection:
    // the flood's sockets read the 101, the client side), or nothing came
    // for 30 s.
    let (mut seen, mut progress) = (0, Instant::now());
    while seen < 2 * want && progress.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(500));
        let n = count_lines(&log);
        if n > seen {
            (seen, progress) = (n, Instant::now());
        }
    }
    // Losses from the metrics while it runs; then its clean exit.
    let lost = t.lost_events().expect("metrics");
    let status = t.interrupt(Duration::from_secs(60)).expect("wstrace exits");
    let stderr = t.stderr_text();
    assert!(status.success(), "{stderr}");

    // One pass over the reports (too many to keep): counts, and the victim's.
    let local = format!("127.0.0.1:{victim}");
    let (mut reports, mut clients) = (0usize, 0usize);
    let (mut same_as, mut elided, mut dropped) = (0usize, 0usize, 0usize);
    let mut victims = Vec::new();
    let f = std::fs::File::open(&log).expect("report file");
    for (i, line) in BufReader::new(f).lines().map_while(Result::ok).enumerate() {
        let r: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("line {} is not JSON ({e}): {line}", i + 1));
        if common::is_client_side(&r) {
            // This test's own sockets: closed by the servers.
            assert_eq!(r["closed_by"], "peer", "{r}");
            clients += 1;
            continue;
        }
        assert!(common::is_server_side(&r), "{r}");
        reports += 1;
        match r["user_stack_copy"].as_str() {
            Some("same_as") => {
                same_as += 1;
                // Shown with the site's copy's unwind, and the rate.
                assert_eq!(r["user_stack_unwind"], "dwarf", "{r}");
                assert!(r["user_stack_elided_rate"].as_u64() > Some(0), "{r}");
                assert!(r["user_stack_same_as_ms_before"].is_u64(), "{r}");
                assert!(
                    r["user_stack"].as_array().is_some_and(|s| !s.is_empty()),
                    "{r}"
                );
            }
            Some("elided") => elided += 1,
            Some("dropped") => dropped += 1,
            _ => {}
        }
        if r["local"] == local.as_str() {
            victims.push(r);
        }
    }
    // The victim's close: reported, with its own copy, named frames.
    assert_eq!(victims.len(), 1, "the victim's one close");
    let v = &victims[0];
    assert_eq!(v["pid"].as_u64(), Some(u64::from(victim_pid)), "{v}");
    assert_eq!(
        v["user_stack_copy"],
        serde_json::Value::Null,
        "the victim is its own call site, within its budget: {v}"
    );
    assert_eq!(v["user_stack_unwind"], "dwarf", "{v}");
    let named = v["user_stack"].as_array().is_some_and(|s| {
        s.iter()
            .filter_map(|f| f["function"].as_str())
            .any(|f| f.contains("ws_scenario::serve::serve_one"))
    });
    assert!(named, "the victim's user stack names its closer: {v}");

    assert_eq!(
        reports, want,
        "one server-side report per connection ({flooded} flooded + 1 victim); stderr: {stderr}"
    );
    assert_eq!(
        clients, want,
        "one client-side report per connection ({flooded} flooded + 1 victim); stderr: {stderr}"
    );
    assert!(
        lost.values().all(|&n| n == 0),
        "no event may be lost: {lost:?}\n{stderr}"
    );

    // Stack detail degraded, and said so: the flooded server's closes past
    // its budget name its last copy, and the count is on stderr.
    assert!(
        same_as > flooded as usize / 2,
        "most flooded closes share their site's copy: {same_as} of {flooded}"
    );
    let said = format!(
        "were reported without a user stack copy of their own: {} over their call site's",
        same_as + elided
    );
    assert!(stderr.contains(&said), "{said:?} in {stderr}");
    eprintln!("churn: same_as {same_as}, elided {elided}, dropped {dropped}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Connections the fairness test floods with while wstrace is stopped: each
/// leaves ~2-3 KiB of events (request head, 101, close, state changes), so
/// 6,000 are several times the 4 MiB ring; without the fair share the ring
/// fills and the victim's close is lost.
const STALLED_FLOOD: usize = 6000;

/// Opens `n` upgraded connections to `port`, each closed by the server
/// (`close-after101`), from 4 threads; returns how many got their 101.
fn flood_count(port: u16, n: usize) -> usize {
    let per = n / 4;
    let loops: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(move || (0..per).map(|_| flood_one(port)).sum::<usize>()))
        .collect();
    loops.into_iter().map(|l| l.join().expect("flood")).sum()
}

/// One upgrade, then reads until the server's close: 1 if it got its 101.
fn flood_one(port: u16) -> usize {
    let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
    if c.write_all(UPGRADE).is_err() {
        return 0;
    }
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while let Ok(n) = c.read(&mut buf) {
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n.min(64)]);
    }
    usize::from(head.starts_with(b"HTTP/1.1 101 "))
}

/// Issue 29, fair under attack, deterministically: wstrace is stopped
/// (SIGSTOP: it reads nothing, as a daemon starved of CPU), a client floods
/// one server with several ring-fulls of upgrade+close, then a second server
/// closes one connection. Past half the ring the flooded server (and the
/// flooding client) only get their fair share, so the victim's events still
/// fit: once wstrace runs again its close is reported, with its own stack,
/// and what the flood lost is counted as `over_budget` and named by pid,
/// with no event lost to a full ring. The budget is in ring read, not in
/// time, so the flood's speed does not matter.
#[test]
fn a_flood_cannot_crowd_out_another_servers_close() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let (flooded_srv, flooded) = server(&["--mode", "close-after101"]);
    let (victim_srv, victim) = server(&["--mode", "close-after101"]);
    let (flooded_pid, victim_pid) = (flooded_srv.0.id(), victim_srv.0.id());
    let mut t = TracerOptions::new()
        .ports(&[flooded, victim])
        .format("json")
        .metrics()
        .start()
        .unwrap_or_else(|e| panic!("wstrace did not attach: {e:#}"));
    t.signal(libc::SIGSTOP);
    let got = flood_count(flooded, STALLED_FLOOD);
    upgrade_once(victim);
    t.signal(libc::SIGCONT);
    eprintln!("fairness: {got} flood connections while wstrace was stopped");
    assert!(got > STALLED_FLOOD / 2, "the flood ran: {got}");

    // The victim server's report (its client, this test, is the flooding
    // process: its own reports are over their fair share).
    let (reports, found) =
        t.wait_for_report(Duration::from_secs(60), |r| common::is_server_on(r, victim));
    let stderr = t.stderr_text();
    assert!(found, "the victim's close was not reported: {stderr}");
    let v = reports
        .iter()
        .find(|r| common::is_server_on(r, victim))
        .expect("found above");
    assert_eq!(v["pid"].as_u64(), Some(u64::from(victim_pid)), "{v}");
    assert_eq!(
        v["user_stack_copy"],
        serde_json::Value::Null,
        "its own copy: {v}"
    );
    let named = v["user_stack"].as_array().is_some_and(|s| {
        s.iter().any(|f| {
            f["function"]
                .as_str()
                .is_some_and(|n| n.contains("ws_scenario::serve::serve_one"))
        })
    });
    assert!(named, "the victim's user stack names its closer: {v}");

    // The flood's losses: counted by reason, none to a full ring, and the
    // flooded server named with what it lost.
    let lost = t.lost_events().expect("metrics");
    let over = lost.get("over_budget").copied().unwrap_or(0);
    assert!(
        over > 0,
        "the flood went past half the ring: {lost:?}\n{stderr}"
    );
    assert_eq!(
        lost.get("ring_full").copied().unwrap_or(0),
        0,
        "{lost:?}\n{stderr}"
    );
    let said = format!("pid {flooded_pid}: ");
    let _ = t.interrupt(Duration::from_secs(30));
    let stderr = t.stderr_text();
    assert!(
        stderr
            .lines()
            .any(|l| l.contains(&said) && l.contains("[over_budget]")),
        "the flooded server named with its losses ({said:?}): {stderr}"
    );
    eprintln!("fairness: {} reports, lost {lost:?}", reports.len());
}
