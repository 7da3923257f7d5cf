//! Section 8 of BENCHMARKS.md: what the interpreter walk (issue 26) costs
//! in the kernel. wstrace walks a registered Python or PHP process's frame
//! chain at the entry of close(2) and shutdown(2) (`interp_stash`) and
//! drops the walk at their exit (`interp_unstash`); both programs run on
//! every close(2) on the host, and for any process that is not a
//! registered interpreter they are one map lookup.
//!
//! The load: a Python server (`/usr/bin/python3`, a plain socket server
//! closing each upgraded connection in `drop_client()`, three Python frames
//! deep) on a traced port, and a client making [`CONNECTIONS`] upgrade +
//! close connections. With `kernel.bpf_stats_enabled=1`, wstrace and a
//! near-empty bpftrace program on the same two tracepoints (`{ }`) run at
//! once; the kernel's `run_time_ns / run_cnt` per program, side by side,
//! and the whole walk cost per connection. The runs include every other
//! close(2) on the host in that window (the client's own, one per
//! connection, are lookups).

use super::kernel_cost::{Delta, StatsOn, ns, prog_ids_of, prog_stats};
use super::{BenchArgs, Bins, Proc, spawn_wstrace};
use crate::process;
use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The port the Python server listens on (traced).
const INTERP_PORT: u16 = 18880;
/// Upgrade + close connections per round.
const CONNECTIONS: u32 = 5_000;
const PYTHON: &str = "/usr/bin/python3";

/// The server: accepts, reads the request head, writes a 101 and closes
/// in `drop_client()` (called from `handle()`, from `main()`).
const SERVER: &str = r#"
import socket, sys
def drop_client(c):
    c.close()
def handle(c):
    c.recv(4096)
    c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    drop_client(c)
def main():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(sys.argv[1])))
    s.listen(512)
    print("READY", flush=True)
    while True:
        c, _ = s.accept()
        handle(c)
main()
"#;

/// The client: `n` connections, each an upgrade request, read to the
/// server's close, then closed.
const CLIENT: &str = r#"
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
req = (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
       b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
for _ in range(n):
    c = socket.create_connection(("127.0.0.1", port))
    c.sendall(req)
    while c.recv(4096):
        pass
    c.close()
"#;

/// (wstrace program, tracepoint) pairs: what wstrace puts on close(2)
/// (and, not loaded here, shutdown(2)); attach/mod.rs.
const HOOKS: [(&str, &str); 2] = [
    ("interp_stash", "sys_enter_close"),
    ("interp_unstash", "sys_exit_close"),
];

/// One program on a close(2) tracepoint, beside the near-empty one.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HookRow {
    pub hook: String,
    pub program: String,
    pub wstrace: Delta,
    pub empty: Option<Delta>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct InterpCost {
    /// Per round: the programs' counters over the load.
    pub rounds: Vec<Vec<HookRow>>,
    pub connections: u32,
    /// When, where and at what host load.
    pub measured: String,
    pub python: String,
}

struct Files {
    dir: PathBuf,
}

impl Files {
    fn new(work: &Path) -> Result<Files> {
        let dir = work.join("interp");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("server.py"), SERVER)?;
        std::fs::write(dir.join("client.py"), CLIENT)?;
        Ok(Files { dir })
    }

    fn server(&self) -> Result<Proc> {
        let p = Proc::spawn(
            "python3 server",
            Command::new(PYTHON)
                .arg(self.dir.join("server.py"))
                .arg(INTERP_PORT.to_string()),
        )?;
        p.wait_for("READY", false, Duration::from_secs(10))?;
        Ok(p)
    }

    fn client(&self, n: u32) -> Result<()> {
        process::run(
            Command::new(PYTHON)
                .arg(self.dir.join("client.py"))
                .args([INTERP_PORT.to_string(), n.to_string()]),
        )
        .context("the python3 client")
    }
}

fn round(bins: &Bins, args: &BenchArgs, files: &Files) -> Result<Vec<HookRow>> {
    let srv = files.server()?;
    let (mut w, ready) = spawn_wstrace(
        bins,
        INTERP_PORT,
        Command::new(&bins.wstrace).args([
            "--port",
            &INTERP_PORT.to_string(),
            "--probe",
            &args.probe,
            "--format",
            "json",
            "--tls",
            "off",
        ]),
    )?;
    w.wait_ready_file(&ready, Duration::from_secs(60))?;
    // One connection first: its report must name the Python function, or
    // the walk is not running and the numbers would be lookups only.
    files.client(1)?;
    w.wait_for("drop_client", false, Duration::from_secs(30))
        .context("the warm-up close shows no Python frame: the walk did not run")?;
    // One bpftrace per tracepoint: its programs are told apart by process.
    let mut empties = Vec::new();
    for (_, tp) in HOOKS {
        let script = format!("tracepoint:syscalls:{tp} {{ }}\nBEGIN {{ printf(\"READY\\n\"); }}\n");
        let p = Proc::spawn(
            "bpftrace (near-empty tracepoint)",
            Command::new("bpftrace").arg("-e").arg(&script),
        )?;
        p.wait_for("READY", false, Duration::from_secs(60))?;
        empties.push(p);
    }
    let before = prog_stats()?;
    files.client(CONNECTIONS)?;
    let after = prog_stats()?;
    let delta = |id: u32| Delta::between(before.get(&id), after.get(&id));
    let ws_ids = prog_ids_of(w.child.id());
    let mut rows = Vec::new();
    for (i, (prog, tp)) in HOOKS.iter().enumerate() {
        let Some(id) = ws_ids.iter().copied().find(|id| {
            after.get(id).is_some_and(|p| {
                p.name == *prog || p.name == prog.chars().take(15).collect::<String>()
            })
        }) else {
            bail!("wstrace (pid {}) holds no program {prog}", w.child.id());
        };
        // bpftrace's BEGIN program ran before `before`: the tracepoint's is
        // the one the load ran.
        let empty = prog_ids_of(empties[i].child.id())
            .into_iter()
            .map(delta)
            .max_by_key(|d| d.run_cnt);
        rows.push(HookRow {
            hook: format!("syscalls:{tp}"),
            program: prog.to_string(),
            wstrace: delta(id),
            empty,
        });
    }
    for p in empties.iter_mut() {
        p.stop(libc::SIGINT)?;
    }
    w.stop(libc::SIGINT)?;
    drop(srv);
    Ok(rows)
}

pub fn run(bins: &Bins, args: &BenchArgs) -> Result<InterpCost> {
    if !Path::new(PYTHON).is_file() {
        bail!("{PYTHON} is missing (apt-get install python3): the server is Python");
    }
    let files = Files::new(&bins.work)?;
    let mut out = InterpCost {
        connections: CONNECTIONS,
        measured: format!(
            "{}, kernel {}, host load average {} at the start",
            super::command_text("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            super::command_text("uname", &["-r"]),
            super::load_average()
        ),
        python: super::command_text(PYTHON, &["--version"]),
        ..InterpCost::default()
    };
    let _stats = StatsOn::new()?;
    for r in 1..=args.rounds {
        let rows =
            round(bins, args, &files).with_context(|| format!("interpreter walk, round {r}"))?;
        for row in &rows {
            println!(
                "  interp    {:<24} round {r}: wstrace {} ns/run ({} runs), near-empty {} ns/run",
                row.hook,
                ns(row.wstrace.ns_per_run()),
                row.wstrace.run_cnt,
                ns(row.empty.as_ref().and_then(Delta::ns_per_run))
            );
        }
        out.rounds.push(rows);
    }
    Ok(out)
}

fn median(v: Vec<f64>) -> Option<f64> {
    (!v.is_empty()).then(|| super::median(v))
}

/// Median over rounds of `f` of the row for `hook`.
fn per_round(t: &InterpCost, hook: usize, f: impl Fn(&HookRow) -> Option<f64>) -> Option<f64> {
    median(
        t.rounds
            .iter()
            .filter_map(|r| r.get(hook))
            .filter_map(&f)
            .collect(),
    )
}

pub fn render(t: &InterpCost) -> String {
    let mut md = format!(
        "{}\n\n\
         A Python server (`{}`, `/usr/bin/python3`) on a traced port closes each upgraded connection three \
         Python frames deep (`drop_client` ← `handle` ← `main`); its client makes {} upgrade + close \
         connections per round. wstrace walks a registered interpreter's frames at the entry of close(2) and \
         shutdown(2) (`interp_stash`) and drops the walk at their exit (`interp_unstash`); both run on every \
         close(2) on the host, where any other process costs them one map lookup. The kernel's own accounting \
         (`kernel.bpf_stats_enabled=1`; `run_time_ns / run_cnt`), with a near-empty bpftrace program (`{{ }}`) \
         on the same tracepoint attached at once: both ran on every close(2) in the window (the client's \
         own, one per connection, and any other process's). Measured {}; {} rounds, values are medians. \
         Reproduce with `sudo -E cargo xtask bench --only interp`.\n\n",
        super::INTERP_COST_HEADING,
        t.python,
        t.connections,
        t.measured,
        t.rounds.len()
    );
    md.push_str(
        "| tracepoint | wstrace program | runs | wstrace ns/run | near-empty ns/run | wstrace ÷ near-empty |\n\
         |-|-|-:|-:|-:|-:|\n",
    );
    let mut per_conn = 0.0;
    let mut per_conn_empty = 0.0;
    for (i, (prog, tp)) in HOOKS.iter().enumerate() {
        let runs = per_round(t, i, |r| Some(r.wstrace.run_cnt as f64));
        let ws = per_round(t, i, |r| r.wstrace.ns_per_run());
        let empty = per_round(t, i, |r| r.empty.as_ref().and_then(Delta::ns_per_run));
        per_conn += per_round(t, i, |r| Some(r.wstrace.run_time_ns as f64)).unwrap_or(0.0);
        per_conn_empty +=
            per_round(t, i, |r| r.empty.as_ref().map(|e| e.run_time_ns as f64)).unwrap_or(0.0);
        let ratio = match (ws, empty) {
            (Some(w), Some(e)) if e > 0.0 => format!("{:.2}×", w / e),
            _ => "—".to_string(),
        };
        md.push_str(&format!(
            "| `{tp}` | {prog} | {} | {} | {} | {ratio} |\n",
            runs.map_or("—".to_string(), |r| format!("{r:.0}")),
            ns(ws),
            ns(empty)
        ));
    }
    let n = f64::from(t.connections.max(1));
    md.push_str(&format!(
        "\nPer connection (both programs, every close(2) in the window, divided by the {} connections): \
         wstrace {:.0} ns, near-empty {:.0} ns. That is the walk's whole in-kernel cost: once per close, \
         never per message; the close program itself only copies the walk (one `bpf_probe_read_kernel` of \
         {} bytes).\n",
        t.connections,
        per_conn / n,
        per_conn_empty / n,
        std::mem::size_of::<wstrace_common::InterpStack>()
    ));
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(prog: &str, ns: u64, runs: u64, empty_ns: u64) -> HookRow {
        HookRow {
            hook: "syscalls:sys_enter_close".into(),
            program: prog.into(),
            wstrace: Delta {
                name: prog.into(),
                hook: String::new(),
                run_time_ns: ns,
                run_cnt: runs,
                recursion_misses: 0,
            },
            empty: Some(Delta {
                name: "sys_enter_close".into(),
                hook: String::new(),
                run_time_ns: empty_ns,
                run_cnt: runs,
                recursion_misses: 0,
            }),
        }
    }

    #[test]
    fn render_gives_each_hook_its_ratio_and_the_cost_per_connection() {
        let t = InterpCost {
            rounds: vec![vec![
                row("interp_stash", 2_000_000, 10_000, 500_000),
                row("interp_unstash", 1_000_000, 10_000, 500_000),
            ]],
            connections: 5_000,
            measured: "now".into(),
            python: "Python 3.11.2".into(),
        };
        let md = render(&t);
        assert!(md.starts_with(super::super::INTERP_COST_HEADING), "{md}");
        assert!(
            md.contains("| interp_stash | 10000 | 200 | 50 | 4.00× |"),
            "{md}"
        );
        assert!(
            md.contains("| interp_unstash | 10000 | 100 | 50 | 2.00× |"),
            "{md}"
        );
        assert!(md.contains("wstrace 600 ns, near-empty 200 ns"), "{md}");
    }
}
