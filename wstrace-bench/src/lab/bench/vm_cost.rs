//! Section 6 of BENCHMARKS.md: what the fentry and kprobe sets' programs
//! cost per run, inside the kernel-matrix VMs (this host has neither). The
//! kernel's own accounting (`kernel.bpf_stats_enabled=1`), read with
//! `ws-bench prog-stats` (the VMs have no bpftool), for wstrace and for a
//! near-empty program on each of the same hooks (`wstrace floor`), both
//! attached at once under the same echo loads. QEMU emulates the CPU in
//! software, so absolute nanoseconds mean little: the ratios to the floor
//! are the result.

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

use super::{
    kernel_cost::{Delta, ProgStat},
    med,
};
use crate::{paths, process};

/// The part of the kernel matrix's results file (`cargo xtask vm`,
/// target/vm-results.json) this reads: each VM's output lines.
#[derive(Deserialize)]
struct MatrixResults {
    kernels: Vec<KernelRun>,
}

#[derive(Deserialize)]
struct KernelRun {
    label: String,
    steps: Vec<StepRun>,
}

#[derive(Deserialize)]
struct StepRun {
    output: Vec<String>,
}

/// The kernels measured: the oldest and newest of the matrix.
const KERNELS: [&str; 2] = ["5.10", "6.12"];
const SETS: [&str; 2] = ["fentry", "kprobe"];
const TRACED_PORT: u16 = 18801;
const OTHER_PORT: u16 = 18802;
/// Seconds of echo per load (after ws-bench's one second of warm-up).
const LOAD_SECS: u32 = 3;
/// Rounds of both loads per set; medians are reported. An emulated CPU
/// descheduled by a busy host inside a program inflates that run's time,
/// and a median of rounds keeps one such stretch from being the result.
const ROUNDS: u32 = 3;

/// (hook, wstrace's program per set, the floor's per set), names as the
/// kernel keeps them (15 bytes).
const HOOKS: [(&str, [&str; 2], [&str; 2]); 4] = [
    (
        "tcp_sendmsg",
        ["fentry_tcp_send", "kprobe_tcp_send"],
        ["floor_fe_send", "floor_kp_send"],
    ),
    (
        "tcp_recvmsg",
        ["fentry_tcp_recv", "kprobe_tcp_recv"],
        ["floor_fe_recv", "floor_kp_recv"],
    ),
    (
        "tcp_recvmsg return",
        ["fexit_tcp_recvm", "kretprobe_tcp_r"],
        ["floor_fx_recv", "floor_kr_recv"],
    ),
    (
        "tcp_close",
        ["fentry_tcp_clos", "kprobe_tcp_clos"],
        ["floor_fe_close", "floor_kp_close"],
    ),
];

/// The script each VM runs: both echo servers, then per set the floor and
/// wstrace attached at once, stats before and after each load. Every line
/// the harness reads starts with `VMCOST <set> <phase>`.
fn script() -> String {
    format!(
        r#"echo 1 > /proc/sys/kernel/bpf_stats_enabled
ws-bench serve --port {TRACED_PORT} --mode echo > /tmp/srv1 2>&1 &
ws-bench serve --port {OTHER_PORT} --mode echo > /tmp/srv2 2>&1 &
sleep 1
for set in {sets}; do
  rm -f /tmp/ready.w /tmp/ready.f
  wstrace floor --probe $set --ready-file /tmp/ready.f 2> /tmp/floor.err &
  F=$!
  wstrace --probe $set --port {TRACED_PORT} --format json --ready-file /tmp/ready.w > /dev/null 2> /tmp/w.err &
  W=$!
  i=0
  while [ $i -lt 600 ] && {{ [ ! -e /tmp/ready.w ] || [ ! -e /tmp/ready.f ]; }}; do sleep 0.2; i=$((i+1)); done
  if [ ! -e /tmp/ready.w ] || [ ! -e /tmp/ready.f ]; then
    echo "VMCOST $set unavailable $(tail -n 1 /tmp/w.err) $(tail -n 1 /tmp/floor.err)"
    kill $W $F 2> /dev/null; wait $W $F 2> /dev/null
    continue
  fi
  for r in {rounds}; do
    ws-bench prog-stats | sed "s/^/VMCOST $set r$r-before /"
    ws-bench steady --port {OTHER_PORT} --conns 8 --secs {LOAD_SECS} | sed "s/^/VMCOST $set r$r-load-unrelated /"
    ws-bench prog-stats | sed "s/^/VMCOST $set r$r-after-unrelated /"
    ws-bench steady --port {TRACED_PORT} --conns 8 --secs {LOAD_SECS} | sed "s/^/VMCOST $set r$r-load-traced /"
    ws-bench prog-stats | sed "s/^/VMCOST $set r$r-after-traced /"
  done
  kill -INT $W $F; wait $W $F
done
echo 0 > /proc/sys/kernel/bpf_stats_enabled
"#,
        sets = SETS.join(" "),
        rounds = (1..=ROUNDS)
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    )
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Row {
    pub hook: String,
    pub runs_per_echo: f64,
    pub wstrace_ns: Option<f64>,
    pub floor_ns: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SetCost {
    pub kernel: String,
    pub set: String,
    /// Why the set did not run (the kernel lacks it), if it did not.
    pub unavailable: Option<String>,
    /// (load name, echoes over the rounds, median rows, median wstrace and
    /// floor ns per echo).
    pub loads: Vec<(String, u64, Vec<Row>, f64, f64)>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VmCost {
    pub measured: String,
    pub sets: Vec<SetCost>,
}

pub fn run(wstrace: &Path, load: &Path) -> Result<VmCost> {
    // The VMs are xtask's (kernels, initramfs, QEMU): it boots them with
    // this script as their command and the two binaries in their /bin.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.current_dir(paths::repo_root()).args([
        "xtask",
        "vm",
        "--step-timeout",
        "600",
        "--cmd",
        &script(),
    ]);
    for k in KERNELS {
        cmd.args(["--kernel", k]);
    }
    cmd.arg("--bin").arg(wstrace).arg("--bin").arg(load);
    process::run(&mut cmd).context("running the cost script in the kernel-matrix VMs")?;
    let path = paths::target_dir()?.join("vm-results.json");
    let json = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let results: MatrixResults = serde_json::from_slice(&json)
        .with_context(|| format!("{} is not a results file", path.display()))?;
    let mut out = VmCost {
        // The host's load says how far to trust the run (see render).
        measured: format!(
            "{}, host load average {}",
            super::command_text("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            super::load_average()
        ),
        sets: Vec::new(),
    };
    for k in &results.kernels {
        let lines: Vec<&str> = k
            .steps
            .iter()
            .flat_map(|s| s.output.iter().map(String::as_str))
            .collect();
        for set in SETS {
            out.sets.push(
                parse_set(&k.label, set, &lines)
                    .with_context(|| format!("kernel {} set {set}", k.label))?,
            );
        }
    }
    Ok(out)
}

/// run_time_ns and run_cnt per program name, from `PROG` lines.
fn snapshot(lines: &[&str], set: &str, phase: &str) -> BTreeMap<String, ProgStat> {
    let prefix = format!("VMCOST {set} {phase} PROG ");
    let mut m = BTreeMap::new();
    for l in lines {
        let Some(rest) = l.trim().strip_prefix(&prefix) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if let [_id, name, ns, cnt] = f[..]
            && let (Ok(ns), Ok(cnt)) = (ns.parse::<u64>(), cnt.parse::<u64>())
        {
            let e = m.entry(name.to_string()).or_insert_with(|| ProgStat {
                name: name.to_string(),
                ..Default::default()
            });
            e.run_time_ns += ns;
            e.run_cnt += cnt;
        }
    }
    m
}

fn echoes(lines: &[&str], set: &str, phase: &str) -> Result<u64> {
    let prefix = format!("VMCOST {set} {phase} ");
    let line = lines
        .iter()
        .find_map(|l| l.trim().strip_prefix(&prefix))
        .with_context(|| format!("no {phase} load result"))?;
    let v: serde_json::Value =
        serde_json::from_str(line).with_context(|| format!("load result `{line}`"))?;
    v.get("echoes_total")
        .and_then(serde_json::Value::as_u64)
        .filter(|&n| n > 0)
        .with_context(|| format!("no echoes in `{line}`"))
}

fn parse_set(kernel: &str, set: &str, lines: &[&str]) -> Result<SetCost> {
    let mut out = SetCost {
        kernel: kernel.to_string(),
        set: set.to_string(),
        ..Default::default()
    };
    let unavailable = format!("VMCOST {set} unavailable");
    if let Some(l) = lines.iter().find(|l| l.trim().starts_with(&unavailable)) {
        out.unavailable = Some(l.trim()[unavailable.len()..].trim().to_string());
        return Ok(out);
    }
    let i = SETS.iter().position(|s| *s == set).unwrap_or(0);
    for load in ["unrelated", "traced"] {
        let mut rounds: Vec<Round> = Vec::new();
        for r in 1..=ROUNDS {
            let from = if load == "unrelated" {
                format!("r{r}-before")
            } else {
                format!("r{r}-after-unrelated")
            };
            let before = snapshot(lines, set, &from);
            if before.is_empty() {
                bail!("no program stats for round {r} (did the script run?)");
            }
            let after = snapshot(lines, set, &format!("r{r}-after-{load}"));
            let n = echoes(lines, set, &format!("r{r}-load-{load}"))?;
            let delta = |name: &str| Delta::between(before.get(name), after.get(name));
            let rows: Vec<Row> = HOOKS
                .iter()
                .map(|(hook, ours, floors)| {
                    let w = delta(ours[i]);
                    Row {
                        hook: hook.to_string(),
                        runs_per_echo: w.run_cnt as f64 / n as f64,
                        wstrace_ns: w.ns_per_run(),
                        floor_ns: delta(floors[i]).ns_per_run(),
                    }
                })
                .collect();
            // Every program of each side, the shared tracepoints included.
            let total = |floor: bool| -> f64 {
                after
                    .keys()
                    .filter(|name| name.starts_with("floor_") == floor)
                    .map(|name| delta(name).run_time_ns)
                    .sum::<u64>() as f64
                    / n as f64
            };
            rounds.push((n, rows, total(false), total(true)));
        }
        let rows = (0..HOOKS.len())
            .map(|h| Row {
                hook: HOOKS[h].0.to_string(),
                runs_per_echo: med(&rounds, |r| Some(r.1[h].runs_per_echo)).unwrap_or(0.0),
                wstrace_ns: med(&rounds, |r| r.1[h].wstrace_ns),
                floor_ns: med(&rounds, |r| r.1[h].floor_ns),
            })
            .collect();
        let echoes = rounds.iter().map(|r| r.0).sum();
        out.loads.push((
            load.to_string(),
            echoes,
            rows,
            med(&rounds, |r| Some(r.2)).unwrap_or(0.0),
            med(&rounds, |r| Some(r.3)).unwrap_or(0.0),
        ));
    }
    Ok(out)
}

/// One round of one load: (echoes, rows, wstrace ns per echo, floor ns per echo).
type Round = (u64, Vec<Row>, f64, f64);

fn ns(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.0}"))
}

pub fn render(v: &VmCost) -> String {
    let mut md = String::from("## 6. In-kernel cost per program in the kernel-matrix VMs\n\n");
    md.push_str(&format!(
        "The fentry and kprobe sets need hooks this host does not have, so they are measured inside the kernel-matrix VMs (Debian kernels {kernels}, QEMU TCG, one CPU): the kernel's own accounting (`kernel.bpf_stats_enabled=1`), read with `ws-bench prog-stats`, for wstrace and for a near-empty program on each of the same hooks (`wstrace floor`, made the same way: trampolines, kprobes, the tracefs kretprobe), both attached at once under the same echo load ({LOAD_SECS} s, 8 connections). The CPU is emulated, so absolute nanoseconds are not the host's: compare the ratio to the floor. \"Total per echo\" adds every program of the process, the shared sock/tcp tracepoints included. Medians of {ROUNDS} rounds; run it on an otherwise idle host (a descheduled emulated CPU inflates a program's run time). Measured {}. Reproduce with `sudo -E cargo xtask bench --only vm-cost`.\n",
        v.measured,
        kernels = KERNELS.join(" and "),
    ));
    for load in ["unrelated", "traced"] {
        md.push_str(&format!(
            "\n### echo load on {}\n\n| kernel | set | hook | runs per echo | wstrace ns/run | floor ns/run | × floor |\n|-|-|-|-:|-:|-:|-:|\n",
            if load == "unrelated" {
                format!("port {OTHER_PORT}, which wstrace does not trace")
            } else {
                format!("the traced port {TRACED_PORT}")
            }
        ));
        let mut totals = String::new();
        for s in &v.sets {
            if let Some(why) = &s.unavailable {
                md.push_str(&format!(
                    "| {} | {} | not available: {} | | | | |\n",
                    s.kernel,
                    s.set,
                    why.replace('|', "/")
                ));
                continue;
            }
            let Some((_, n, rows, w, f)) = s.loads.iter().find(|l| l.0 == load) else {
                continue;
            };
            for r in rows {
                let ratio = match (r.wstrace_ns, r.floor_ns) {
                    (Some(w), Some(f)) if f > 0.0 => format!("{:.2}", w / f),
                    _ => "-".into(),
                };
                md.push_str(&format!(
                    "| {} | {} | {} | {:.2} | {} | {} | {ratio} |\n",
                    s.kernel,
                    s.set,
                    r.hook,
                    r.runs_per_echo,
                    ns(r.wstrace_ns),
                    ns(r.floor_ns)
                ));
            }
            totals.push_str(&format!(
                "| {} | {} | {n} | {w:.0} | {f:.0} | {} |\n",
                s.kernel,
                s.set,
                if *f > 0.0 {
                    format!("{:.2}", w / f)
                } else {
                    "-".into()
                }
            ));
        }
        md.push_str(&format!(
            "\nTotal in-kernel ns per echo:\n\n| kernel | set | echoes | wstrace | floor | × floor |\n|-|-|-:|-:|-:|-:|\n{totals}"
        ));
    }
    md.push_str(WHY);
    md
}

/// What the ratios above pay for (the numbers are regenerated; the causes
/// change with code).
const WHY: &str = "
### What the ratios pay for

- **`tcp_sendmsg`, `tcp_recvmsg` entry on unrelated sockets.** Socket fields read with `bpf_probe_read_kernel` and compared with the traced ports: the local port, and on `tcp_sendmsg` the remote port too (a client on this host writing its request to a traced port is the peer wstrace names). Without CO-RE in aya these reads are helper calls, not direct loads.
- **`tcp_recvmsg` return.** A per-thread lookup of the pending read its entry recorded (none for unrelated sockets).
- **`tcp_close` on upgraded sockets (traced load).** The kernel and user call chains and, by default, a 16 KiB copy of the closing thread's stack for dwarf unwinding: hundreds of times an empty program, once per upgraded connection, never per message.
- Noise: the VMs' CPU is emulated, and a host busy with other work deschedules it inside programs, which inflates their run time (compare the host load average above across runs).
";

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<String> {
        let mut l = vec![];
        for (phase, k) in [
            ("r1-before", 0u64),
            ("r1-after-unrelated", 1),
            ("r1-after-traced", 3),
            ("r2-before", 3),
            ("r2-after-unrelated", 4),
            ("r2-after-traced", 6),
            ("r3-before", 6),
            ("r3-after-unrelated", 7),
            ("r3-after-traced", 9),
        ] {
            l.push(format!(
                "VMCOST fentry {phase} PROG 1 fentry_tcp_send {} {}",
                300 * k * 100,
                100 * k
            ));
            l.push(format!(
                "VMCOST fentry {phase} PROG 2 floor_fe_send {} {}",
                100 * k * 100,
                100 * k
            ));
            l.push(format!(
                "VMCOST fentry {phase} PROG 3 inet_sock_set_s {} {}",
                50 * k,
                k
            ));
        }
        for r in 1..=3 {
            l.push(format!(
                r#"VMCOST fentry r{r}-load-unrelated {{"echoes_total":50}}"#
            ));
            l.push(format!(
                r#"VMCOST fentry r{r}-load-traced {{"echoes_total":100}}"#
            ));
        }
        l.push("VMCOST kprobe unavailable wstrace: error: kprobes are not available".into());
        l
    }

    #[test]
    fn deltas_per_load_and_floor_ratio() {
        let owned = sample();
        let lines: Vec<&str> = owned.iter().map(String::as_str).collect();
        let s = parse_set("6.12", "fentry", &lines).unwrap();
        let (name, n, rows, w, f) = &s.loads[0];
        assert_eq!((name.as_str(), *n), ("unrelated", 150));
        assert_eq!(rows[0].hook, "tcp_sendmsg");
        assert_eq!(rows[0].runs_per_echo, 2.0);
        assert_eq!(
            (rows[0].wstrace_ns, rows[0].floor_ns),
            (Some(300.0), Some(100.0))
        );
        // 30000 + 50 ns of wstrace programs over 50 echoes; 10000 of floor.
        assert_eq!((*w, *f), (601.0, 200.0));
        // The traced load counts from the unrelated load's end.
        let (_, n, rows, _, _) = &s.loads[1];
        assert_eq!((*n, rows[0].runs_per_echo), (300, 2.0));
        let k = parse_set("6.12", "kprobe", &lines).unwrap();
        assert!(k.unavailable.as_deref().unwrap().contains("kprobes"));
        let md = render(&VmCost {
            measured: "now".into(),
            sets: vec![s, k],
        });
        assert!(
            md.contains("| 6.12 | fentry | tcp_sendmsg | 2.00 | 300 | 100 | 3.00 |"),
            "{md}"
        );
        assert!(md.contains("not available"), "{md}");
    }

    #[test]
    fn a_script_that_never_ran_is_an_error_not_an_empty_table() {
        assert!(parse_set("5.10", "fentry", &[]).is_err());
    }
}
