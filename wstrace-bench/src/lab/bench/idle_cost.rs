//! Section 9 of BENCHMARKS.md: what N idle upgraded connections cost when
//! both their ends are on the traced host (2N upgraded sockets: the
//! server's, local port P, and the client's, remote port P; `--port P`
//! follows both). The load is `ws-bench idle-serve` / `idle-connect`: each
//! connection its own `Sec-WebSocket-Key` (so its own chain digest), held
//! idle, then closed by the server at a set pace, each client closing its
//! end on the server's FIN.
//!
//! Measured: the kernel maps wstrace holds (`bpftool map show`:
//! `max_entries`, `bytes_memlock`) at idle and with every connection open;
//! the daemon's RSS at idle, with every connection open, and its peak
//! (VmHWM); the upgrades it counted (`wstrace_upgrades_total`, 2N); the
//! reports per side on its stdout; and every loss by reason
//! (`wstrace_lost_events_total`).

use super::{BenchArgs, Bins, status_kib};
use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Connections opened a second (all clients together): idle connections
/// arriving, not a burst of upgrades (the churn benchmark, §2, is that).
const OPEN_PER_SEC: u32 = 2_500;
/// Connections the server closes a second: a pace a host closes idle
/// connections at, not a churn burst (the churn benchmark, §2, is that).
const CLOSE_PER_SEC: u32 = 2_500;
/// Connections per load process: a process holds its sockets' fds, and
/// without CAP_SYS_RESOURCE (containers) RLIMIT_NOFILE stops at its hard
/// limit (20,000 on the machine these numbers came from). N connections
/// take N / this servers (sharing the port, SO_REUSEPORT) and as many
/// clients.
const PER_PROCESS: usize = 12_500;
/// A server's fd allowance: its share of a port's connections is the
/// kernel's hash, a little over `PER_PROCESS` at times.
const SERVER_NOFILE: u64 = 19_500;
/// Loopback source addresses the client spreads over (127.0.0.2 ..): each
/// gives at most the ephemeral port range (28,232 by default).
const SOURCES: u8 = 8;

/// One wstrace map, as the kernel states it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MapRow {
    pub name: String,
    pub kind: String,
    pub max_entries: u64,
    pub bytes_memlock: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct IdleCost {
    pub connections: usize,
    /// Server processes (sharing the port) and as many client processes.
    pub processes: usize,
    pub max_sockets: u32,
    pub close_per_sec: u32,
    /// When, where, the probe set and the host load.
    pub measured: String,
    /// The maps at idle (before any connection) and with all open.
    pub maps_idle: Vec<MapRow>,
    pub maps_open: Vec<MapRow>,
    pub rss_idle_mib: f64,
    pub rss_open_mib: f64,
    pub rss_peak_mib: f64,
    pub opened: u64,
    /// `wstrace_upgrades_total` once every connection was open.
    pub upgrades_open: u64,
    pub reports_server: u64,
    pub reports_client: u64,
    pub lost: BTreeMap<String, u64>,
    /// Losses by reason once every connection was open (before any close).
    #[serde(default)]
    pub lost_open: BTreeMap<String, u64>,
    /// The kernel's `recursion_misses` per wstrace program (those above 0):
    /// runs it skipped, which `recursion_miss` above sums.
    #[serde(default)]
    pub recursion_by_program: BTreeMap<String, u64>,
    pub open_secs: f64,
    pub close_secs: f64,
}

/// Maps held by process `pid` (its fdinfo names their ids), by bpftool.
fn maps_of(pid: u32) -> Result<Vec<MapRow>> {
    let mut ids = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))?.flatten() {
        let info = std::fs::read_to_string(fd.path()).unwrap_or_default();
        if let Some(id) = info
            .lines()
            .find_map(|l| l.strip_prefix("map_id:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            ids.push(id);
        }
    }
    let out = Command::new("bpftool")
        .args(["-j", "map", "show"])
        .output()
        .context("running bpftool map show")?;
    let all: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).context("bpftool's JSON")?;
    let mut rows: Vec<MapRow> = all
        .iter()
        .filter(|m| m["id"].as_u64().is_some_and(|id| ids.contains(&id)))
        .map(|m| MapRow {
            name: m["name"].as_str().unwrap_or("?").to_string(),
            kind: m["type"].as_str().unwrap_or("?").to_string(),
            max_entries: m["max_entries"].as_u64().unwrap_or(0),
            bytes_memlock: m["bytes_memlock"].as_u64().unwrap_or(0),
        })
        .collect();
    rows.sort_by_key(|m| std::cmp::Reverse(m.bytes_memlock));
    Ok(rows)
}

fn rss_mib(pid: u32, key: &str) -> f64 {
    status_kib(pid, key).unwrap_or(0.0) / 1024.0
}

/// Reads one `--metrics` counter family, summed over its labels.
fn counter(addr: std::net::SocketAddr, name: &str) -> Result<u64> {
    Ok(sum_counter(
        &wstrace_scenarios::harness::tracer::scrape(addr)?,
        name,
    ))
}

/// A counter family in a Prometheus exposition, summed over its labels.
fn sum_counter(body: &str, name: &str) -> u64 {
    body.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Polls `f` every 100 ms until it is true or `timeout` passes.
fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    f()
}

/// A child killed (and reaped) when dropped.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A child's stdout lines, on a channel.
fn lines_of(c: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    if let Some(out) = c.stdout.take() {
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
    }
    rx
}

fn expect_line(
    rx: &std::sync::mpsc::Receiver<String>,
    prefix: &str,
    timeout: Duration,
) -> Result<String> {
    let deadline = Instant::now() + timeout;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) if l.starts_with(prefix) => return Ok(l),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    bail!("no `{prefix}` line within {timeout:?}")
}

pub fn run(bins: &Bins, args: &BenchArgs) -> Result<IdleCost> {
    let n = args.idle_conns;
    // Both ends upgraded: 2N sockets in UPGRADED, with room to spare.
    let max_sockets = u32::try_from((2 * n + 2 * n / 10).max(65_536)).unwrap_or(u32::MAX);
    let dir = bins.work.join("idle");
    std::fs::create_dir_all(&dir)?;
    let close_file = dir.join("close-now");
    let _ = std::fs::remove_file(&close_file);
    let ready = dir.join("wstrace.ready");
    let _ = std::fs::remove_file(&ready);
    let metrics =
        std::net::SocketAddr::from(([127, 0, 0, 1], wstrace_scenarios::harness::free_port()));
    let k = n.div_ceil(PER_PROCESS).max(1);
    let close_per_server = (CLOSE_PER_SEC as usize / k).max(1);
    let mut servers = Vec::new();
    for _ in 0..k {
        let mut server = Reaped(
            Command::new(&bins.load)
                .args(["idle-serve", "--port", &args.idle_port.to_string()])
                .args(["--nofile", &SERVER_NOFILE.to_string()])
                .arg("--close-file")
                .arg(&close_file)
                .args(["--close-per-sec", &close_per_server.to_string()])
                .stdout(Stdio::piped())
                .spawn()
                .context("starting ws-bench idle-serve")?,
        );
        let lines = lines_of(&mut server.0);
        expect_line(&lines, "READY", Duration::from_secs(10))?;
        servers.push((server, lines));
    }

    let stderr_path = dir.join("wstrace.stderr");
    let mut w = Reaped(
        Command::new(&bins.wstrace)
            .args([
                "--port",
                &args.idle_port.to_string(),
                "--probe",
                &args.probe,
            ])
            .args(["--format", "json", "--tls", "off"])
            .args(["--max-sockets", &max_sockets.to_string()])
            .arg("--ready-file")
            .arg(&ready)
            .args(["--metrics", &metrics.to_string()])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path)?)
            .spawn()
            .context("starting wstrace")?,
    );
    let wpid = w.0.id();
    // Count reports per side as they come, keeping none of them.
    let (server_n, client_n) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    if let Some(out) = w.0.stdout.take() {
        let (s, c) = (server_n.clone(), client_n.clone());
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if l.contains(r#""side":"client""#) {
                    c.fetch_add(1, Ordering::Relaxed);
                } else if l.contains(r#""side":"server""#) {
                    s.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    let attached = wait_until(Duration::from_secs(120), || {
        std::fs::read_to_string(&ready).is_ok_and(|t| t.lines().any(|l| l == format!("pid={wpid}")))
    });
    if !attached {
        bail!(
            "wstrace did not attach: {}",
            std::fs::read_to_string(&stderr_path).unwrap_or_default()
        );
    }
    let probe_set = std::fs::read_to_string(&ready)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("probes=").map(str::to_string))
        .unwrap_or_default();
    std::thread::sleep(Duration::from_secs(2));
    let mut out = IdleCost {
        connections: n,
        processes: k,
        max_sockets,
        close_per_sec: CLOSE_PER_SEC,
        measured: format!(
            "{}, kernel {}, probe set {probe_set}, host load average {} at the start",
            super::command_text("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            super::command_text("uname", &["-r"]),
            super::load_average()
        ),
        maps_idle: maps_of(wpid)?,
        rss_idle_mib: rss_mib(wpid, "VmRSS"),
        ..IdleCost::default()
    };

    let start = Instant::now();
    let mut clients = Vec::new();
    for i in 0..k {
        let conns = n / k + usize::from(i < n % k);
        let mut client = Reaped(
            Command::new(&bins.load)
                .args(["idle-connect", "--port", &args.idle_port.to_string()])
                .args(["--conns", &conns.to_string()])
                .args(["--sources", &SOURCES.to_string()])
                .args(["--per-sec", &(OPEN_PER_SEC as usize / k).max(1).to_string()])
                .args(["--nofile", &(conns as u64 + 512).to_string()])
                .stdout(Stdio::piped())
                .spawn()
                .context("starting ws-bench idle-connect")?,
        );
        let lines = lines_of(&mut client.0);
        clients.push((client, lines));
    }
    for (_, lines) in &clients {
        let open = expect_line(lines, "OPEN", Duration::from_secs(1800))?;
        out.opened += open
            .trim_start_matches("OPEN ")
            .trim()
            .parse::<u64>()
            .unwrap_or(0);
    }
    out.open_secs = start.elapsed().as_secs_f64();
    // Every 101 counted (both sides), then what holding them costs.
    let want = 2 * out.opened;
    wait_until(Duration::from_secs(300), || {
        counter(metrics, "wstrace_upgrades_total").unwrap_or(0) >= want
    });
    std::thread::sleep(Duration::from_secs(5));
    out.upgrades_open = counter(metrics, "wstrace_upgrades_total")?;
    out.rss_open_mib = rss_mib(wpid, "VmRSS");
    out.maps_open = maps_of(wpid)?;
    out.lost_open = wstrace_scenarios::harness::tracer::parse_lost_events(
        &wstrace_scenarios::harness::tracer::scrape(metrics)?,
    );
    println!(
        "  idle      {} connections open in {:.1} s: {} upgrades counted, daemon RSS {:.1} MiB (idle {:.1})",
        out.opened, out.open_secs, out.upgrades_open, out.rss_open_mib, out.rss_idle_mib
    );

    let start = Instant::now();
    std::fs::write(&close_file, b"")?;
    for (_, lines) in &clients {
        expect_line(lines, "{", Duration::from_secs(1800))
            .context("a client did not see every close")?;
    }
    let done = wait_until(Duration::from_secs(600), || {
        server_n.load(Ordering::Relaxed) + client_n.load(Ordering::Relaxed) >= want
    });
    out.close_secs = start.elapsed().as_secs_f64();
    // Late reports (a chain's hold) and the loss counters settle.
    std::thread::sleep(Duration::from_secs(3));
    out.reports_server = server_n.load(Ordering::Relaxed);
    out.reports_client = client_n.load(Ordering::Relaxed);
    out.rss_peak_mib = rss_mib(wpid, "VmHWM");
    let body = wstrace_scenarios::harness::tracer::scrape(metrics)?;
    out.lost = wstrace_scenarios::harness::tracer::parse_lost_events(&body);
    if let Ok(stats) = super::kernel_cost::prog_stats() {
        for id in super::kernel_cost::prog_ids_of(wpid) {
            if let Some(p) = stats.get(&id).filter(|p| p.recursion_misses > 0) {
                *out.recursion_by_program.entry(p.name.clone()).or_default() += p.recursion_misses;
            }
        }
    }
    println!(
        "  idle      closed in {:.1} s: reports server {} client {} (of {} each{}), lost {:?}, peak RSS {:.1} MiB",
        out.close_secs,
        out.reports_server,
        out.reports_client,
        out.opened,
        if done { "" } else { ", timed out" },
        out.lost,
        out.rss_peak_mib
    );
    unsafe { libc::kill(wpid as i32, libc::SIGINT) };
    let _ = w.0.wait();
    drop(clients);
    drop(servers);
    Ok(out)
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

pub fn render(t: &IdleCost) -> String {
    let mut md = format!(
        "{}\n\n\
         {} WebSocket connections opened to one server port on this host and held idle, both ends traced \
         (`wstrace --port P` follows the server's socket, local port P, and the client's, remote port P: \
         {} upgraded sockets), each connection with its own `Sec-WebSocket-Key`, opened at {} a second, \
         then closed by the server at {} a second (each client closes its end on the server's FIN). `wstrace --max-sockets {}` (the \
         default, 65,536, is too small for this: see below). Load: {} `ws-bench idle-serve` processes \
         sharing the port (SO_REUSEPORT) and {} `idle-connect` ones, from 8 loopback source addresses (a \
         process holds its sockets' fds, and without CAP_SYS_RESOURCE, as in this container, RLIMIT_NOFILE \
         stops at its hard limit, 20,000). Measured {}. Reproduce with `sudo -E cargo xtask bench --only \
         idle` (`--idle-conns N`).\n\n",
        super::IDLE_COST_HEADING,
        t.connections,
        2 * t.connections,
        OPEN_PER_SEC,
        t.close_per_sec,
        t.max_sockets,
        t.processes,
        t.processes,
        t.measured
    );
    let lost_text = |lost: &BTreeMap<String, u64>| {
        if lost.values().all(|v| *v == 0) {
            "0".to_string()
        } else {
            lost.iter()
                .filter(|(_, v)| **v > 0)
                .map(|(k, v)| format!("{v} {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    md.push_str(
        "| connections open | upgrades counted | reports server / client | lost (by all open) | daemon RSS idle → all open → peak MiB | open / close s |\n\
         |-:|-:|-:|-|-:|-:|\n",
    );
    md.push_str(&format!(
        "| {} | {} | {} / {} | {} ({}) | {:.1} → {:.1} → {:.1} | {:.0} / {:.0} |\n",
        t.opened,
        t.upgrades_open,
        t.reports_server,
        t.reports_client,
        lost_text(&t.lost),
        lost_text(&t.lost_open),
        t.rss_idle_mib,
        t.rss_open_mib,
        t.rss_peak_mib,
        t.open_secs,
        t.close_secs
    ));
    if !t.recursion_by_program.is_empty() {
        let complete = t.reports_server == t.opened && t.reports_client == t.opened;
        md.push_str(&format!(
            "\nRuns the kernel skipped (`recursion_miss`), by program: {}. These are raw tracepoints, \
             whose guard is per program: on loopback a close's FIN reaches the peer socket in a softirq \
             that can interrupt the closing task's own run of the same program (a state change, or a \
             socket's destruction), and the nested run is skipped.{}\n",
            t.recursion_by_program
                .iter()
                .map(|(k, v)| format!("`{k}` {v}"))
                .collect::<Vec<_>>()
                .join(", "),
            if complete {
                " No report was missing for it: every socket's close was reported, from its other \
                 events."
            } else {
                ""
            }
        ));
    }
    md.push_str(
        "\nThe kernel maps (`bpftool map show`; hash and LRU maps are preallocated, so their memory is \
         fixed at load by `max_entries`; the ring buffers are counted once), largest first:\n\n\
         | map | type | max_entries | MiB at idle | MiB with all open |\n|-|-|-:|-:|-:|\n",
    );
    let (mut idle_total, mut open_total) = (0, 0);
    for m in &t.maps_idle {
        let open = t
            .maps_open
            .iter()
            .find(|o| o.name == m.name)
            .map_or(m.bytes_memlock, |o| o.bytes_memlock);
        idle_total += m.bytes_memlock;
        open_total += open;
        if m.bytes_memlock >= 1 << 20 {
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                m.name,
                m.kind,
                m.max_entries,
                mib(m.bytes_memlock),
                mib(open)
            ));
        }
    }
    md.push_str(&format!(
        "| all {} maps | | | {} | {} |\n",
        t.maps_idle.len(),
        mib(idle_total),
        mib(open_total)
    ));
    md.push_str(
        "\nWhat bounds the sockets held: `UPGRADED` and `ACCEPTED` are sized by `--max-sockets` (plus 128 \
         per CPU of LRU slack); at the default 65,536 a host with more than ~32,000 connections whose \
         two ends are both traced evicts the oldest sockets (counted as `max_sockets`). The daemon's \
         tables follow the same number (its chain table too: at a fixed 65,536 chains, 100,000 \
         connections each with its own Key had evicted 34,464 chains, counted as `chain_evicted`). \
         `HEAD_BYTES` (65,536, LRU) holds what a socket's first read was until it is upgraded or \
         freed; an upgraded socket no longer needs its entry. `PEER_WRITERS` (16,384, LRU) holds who \
         wrote each request until the daemon reads it at the server's 101: it bounds how far the \
         daemon may fall behind the kernel before a peer is looked up the slow way (the fallback's \
         own bound is in README, *peer*), not how many sockets may be open. The daemon's RSS grows \
         by what it keeps per open upgraded socket (its matcher entry, request head, chain member), \
         freed at the close.\n",
    );
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_states_counts_losses_rss_and_map_totals() {
        let map = |name: &str, bytes| MapRow {
            name: name.into(),
            kind: "lru_hash".into(),
            max_entries: 262_144,
            bytes_memlock: bytes,
        };
        let t = IdleCost {
            connections: 100,
            processes: 1,
            max_sockets: 65_536,
            close_per_sec: 2_500,
            measured: "now".into(),
            maps_idle: vec![map("UPGRADED", 4 << 20), map("TINY", 1024)],
            maps_open: vec![map("UPGRADED", 4 << 20), map("TINY", 1024)],
            rss_idle_mib: 20.0,
            rss_open_mib: 30.0,
            rss_peak_mib: 40.0,
            opened: 100,
            upgrades_open: 200,
            reports_server: 100,
            reports_client: 99,
            lost: BTreeMap::from([("ring_full".into(), 1), ("max_sockets".into(), 0)]),
            lost_open: BTreeMap::new(),
            recursion_by_program: BTreeMap::new(),
            open_secs: 3.0,
            close_secs: 4.0,
        };
        let md = render(&t);
        assert!(md.starts_with(super::super::IDLE_COST_HEADING), "{md}");
        assert!(
            md.contains("| 100 | 200 | 100 / 99 | 1 ring_full (0) | 20.0 → 30.0 → 40.0 | 3 / 4 |"),
            "{md}"
        );
        assert!(
            md.contains("| UPGRADED | lru_hash | 262144 | 4.0 | 4.0 |"),
            "{md}"
        );
        assert!(!md.contains("| TINY |"), "{md}");
        assert!(md.contains("| all 2 maps | | | 4.0 | 4.0 |"), "{md}");
    }

    #[test]
    fn counters_sum_over_labels() {
        let body = "# HELP wstrace_upgrades_total x\nwstrace_upgrades_total 7\nwstrace_upgrades_total_more 9\nwstrace_closes_total{a=\"b\"} 2\nwstrace_closes_total{a=\"c\"} 3\n";
        assert_eq!(sum_counter(body, "wstrace_closes_total"), 5);
        assert_eq!(sum_counter(body, "wstrace_upgrades_total"), 7);
    }
}
