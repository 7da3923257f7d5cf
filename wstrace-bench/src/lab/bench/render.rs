//! BENCHMARKS.md from the lab's results (target/bench/results.json): pure
//! text, no measurement. `wstrace-bench render` runs it on a results file;
//! a partial run (`--only`) is spliced into the file's other sections.

use super::{
    CHURN_CONC, CHURN_GOAL_MAX_COST, GO_TLS_COST_HEADING, IDLE_COST_HEADING, INTERP_COST_HEADING,
    KERNEL_COST_HEADING, OTHER_PORT, Only, Placement, RSS_GOAL_MIB, Results, Rusage,
    STEADY_GOAL_MAX_COST, Steady, TLS_COST_HEADING, TRACED_PORT, Tracer, VM_COST_HEADING,
    idle_cost, interp_cost, kernel_cost, median, tls_cost, vm_cost,
};

/// BENCHMARKS.md for `res`: the whole file for a full run; for a partial
/// one (`--only`), `old` (the file as it is) with that part's sections
/// replaced.
pub fn markdown(res: &Results, old: &str) -> String {
    match res.only {
        Only::All => render(res),
        only => splice(old, &render(res), only),
    }
}

/// Per-round ratio variant/baseline (same round), median over rounds.
fn ratio(base: &[f64], variant: &[f64]) -> f64 {
    median(
        base.iter()
            .zip(variant)
            .filter(|(b, _)| **b > 0.0)
            .map(|(b, v)| v / b),
    )
}

/// Per-round ratios' range, shown beside the median so the noise is in
/// plain sight: "0.944 (0.85–1.04)".
fn ratio_text(base: &[f64], variant: &[f64]) -> String {
    let per_round: Vec<f64> = base
        .iter()
        .zip(variant)
        .filter(|(b, _)| **b > 0.0)
        .map(|(b, v)| v / b)
        .collect();
    let min = per_round.iter().copied().fold(f64::INFINITY, f64::min);
    let max = per_round.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if per_round.len() < 2 {
        format!("{:.3}", ratio(base, variant))
    } else {
        format!("{:.3} ({min:.2}–{max:.2})", ratio(base, variant))
    }
}

/// "met (cost 0.4%)" / "MISSED by 1.3 points (cost 3.3%, goal ≤ 2%)"; a
/// negative cost is noise in the tracer's favour.
fn cost_goal(ratio: f64, max_cost: f64) -> String {
    let cost = 1.0 - ratio;
    if cost <= max_cost {
        format!(
            "met (cost {:.1}%, goal ≤ {:.0}%)",
            cost * 100.0,
            max_cost * 100.0
        )
    } else {
        format!(
            "**MISSED** by {:.1} points (cost {:.1}%, goal ≤ {:.0}%)",
            (cost - max_cost) * 100.0,
            cost * 100.0,
            max_cost * 100.0
        )
    }
}

fn render(r: &Results) -> String {
    let mut md = String::new();
    let push = |md: &mut String, s: String| {
        md.push_str(&s);
        md.push('\n');
    };
    push(&mut md, "# Benchmarks\n".into());
    push(
        &mut md,
        "What wstrace costs the host it traces, each number a ratio against a no-tracer baseline \
         measured in the same run. Reproduce on an otherwise idle machine with\n\n    \
         sudo -E cargo xtask bench\n\n(root: it loads BPF programs and attaches strace; it \
         installs bpftrace and strace if missing, builds release binaries, and rewrites this \
         file; `--no-write` only prints). The lab is `wstrace-bench lab`, which writes every \
         number to `target/bench/results.json`; `wstrace-bench render` writes this file from \
         that. Load generator and servers: `ws-bench` (tokio-tungstenite on loopback).\n"
            .into(),
    );
    push(&mut md, "| | |\n|-|-|".into());
    push(&mut md, format!("| date | {} |", r.date));
    push(&mut md, format!("| machine | {} |", r.machine));
    push(&mut md, format!("| kernel | {} |", r.kernel));
    push(&mut md, format!("| wstrace probe set | {} |", r.probe_set));
    push(
        &mut md,
        format!(
            "| method | {} rounds × {} s per run, variants interleaved within each round; values are medians, ratios are medians of per-round ratios to that round's baseline, with their range over the rounds in brackets |\n",
            r.rounds, r.secs
        ),
    );

    // 1. steady
    push(
        &mut md,
        "## 1. Steady state: WebSocket echo on the traced port\n".into(),
    );
    push(
        &mut md,
        "32 upgraded connections, 8 messages of 32 bytes in flight on each; one server thread, one client thread. \
         The bpftrace script is the equivalent a user would write (`target/bench/wstrace-equivalent-18801.bt`: 101 \
         prefix check on every send/write, stacks on close of a marked fd, state changes on the port); \
         strace is `strace -f -e trace=network,close -o FILE -p <server>`.\n"
            .into(),
    );
    push(
        &mut md,
        "| tracer | msgs/s | vs none | p50 µs | p99 µs | p99 vs none | goal (wstrace ≤ 2% throughput) |\n|-|-:|-:|-:|-:|-:|-|".into(),
    );
    let base = |runs: &[(Tracer, Vec<Steady>)], f: fn(&Steady) -> f64| -> Vec<f64> {
        runs.iter()
            .find(|(t, _)| *t == Tracer::None)
            .map(|(_, v)| v.iter().map(f).collect())
            .unwrap_or_default()
    };
    let base_tput = base(&r.steady, |s| s.msgs_per_sec);
    let base_p99 = base(&r.steady, |s| s.p99_us);
    for (t, runs) in &r.steady {
        let tput: Vec<f64> = runs.iter().map(|s| s.msgs_per_sec).collect();
        let p99: Vec<f64> = runs.iter().map(|s| s.p99_us).collect();
        let rt = ratio(&base_tput, &tput);
        let goal = match t {
            Tracer::Wstrace => cost_goal(rt, STEADY_GOAL_MAX_COST),
            Tracer::None => "baseline".into(),
            _ => "(comparison)".into(),
        };
        push(
            &mut md,
            format!(
                "| {} | {:.0} | {} | {:.0} | {:.0} | {:.2} | {goal} |",
                t.name(),
                median(tput.iter().copied()),
                ratio_text(&base_tput, &tput),
                median(runs.iter().map(|s| s.p50_us)),
                median(p99.iter().copied()),
                ratio(&base_p99, &p99),
            ),
        );
    }

    // 2. churn
    push(
        &mut md,
        format!(
            "\n## 2. Churn: upgrade, then the server closes at once\n\n{CHURN_CONC} client loops connect, send an upgrade request, read the 101 and wait for the server's FIN; \
             the server (one thread) writes the 101 and closes. Every connection is one report wstrace must print. \
             Shared placement is the worst case: the load alone saturates both CPUs, so every cycle the daemon spends \
             on a report is taken from it. Pinned placement leaves the daemon a CPU of its own, so the ratio is what the \
             probes cost the traced processes themselves (the daemon's CPU is in section 4). \
             `wstrace` runs with its defaults, so closes carry a 16 KiB copy of the closing thread's stack for dwarf \
             unwinding, 8 a second per call site (the rest name the site's last copy); `wstrace --user-stack fp` is the \
             same without any copy.\n"
        ),
    );
    push(
        &mut md,
        "| placement | tracer | upgrades/s | vs none | reports / connections | lost events | close→report p50 / p99 | goal (≤ 3% slower, equal counts, 0 lost) |\n|-|-|-:|-:|-:|-:|-:|-|".into(),
    );
    for place in [Placement::Shared, Placement::Pinned] {
        let place_name = match place {
            Placement::Shared => "shared: load and tracer on any CPU",
            Placement::Pinned => "pinned: load on CPU 0, tracer on CPU 1",
        };
        let base_churn: Vec<f64> = r
            .churn
            .iter()
            .find(|(p, t, _)| *p == place && *t == Tracer::None)
            .map(|(_, _, v)| v.iter().map(|c| c.per_sec).collect())
            .unwrap_or_default();
        for (_, t, runs) in r.churn.iter().filter(|(p, _, _)| *p == place) {
            let rate: Vec<f64> = runs.iter().map(|c| c.per_sec).collect();
            let rt = ratio(&base_churn, &rate);
            let conns: u64 = runs.iter().map(|c| c.connections + c.failed).sum();
            let reports: u64 = runs.iter().map(|c| c.reports).sum();
            let lost: u64 = runs.iter().map(|c| c.lost).sum();
            let (counts, lat, goal) = if t.is_wstrace() {
                let p50 = median(runs.iter().filter_map(|c| c.close_to_report_p50_us));
                let p99 = median(runs.iter().filter_map(|c| c.close_to_report_p99_us));
                let mut goal = cost_goal(rt, CHURN_GOAL_MAX_COST);
                if reports == conns {
                    goal.push_str("; counts equal");
                } else {
                    goal.push_str(&format!(
                        "; **reports ≠ connections** ({reports} vs {conns})"
                    ));
                }
                if lost > 0 {
                    goal.push_str(&format!("; **{lost} events lost**"));
                }
                (
                    format!("{reports} / {conns}"),
                    format!("{:.2} ms / {:.2} ms", p50 / 1000.0, p99 / 1000.0),
                    goal,
                )
            } else {
                (format!("- / {conns}"), "-".into(), "baseline".into())
            };
            push(
                &mut md,
                format!(
                    "| {place_name} | {} | {:.0} | {} | {counts} | {} | {lat} | {goal} |",
                    t.name(),
                    median(rate.iter().copied()),
                    ratio_text(&base_churn, &rate),
                    if t.is_wstrace() {
                        lost.to_string()
                    } else {
                        "-".into()
                    },
                ),
            );
        }
    }

    // 3. unrelated
    push(
        &mut md,
        format!(
            "\n## 3. Unrelated traffic: the same echo load on port {OTHER_PORT} while wstrace traces port {TRACED_PORT}\n\n\
             Every send on the machine still fires wstrace's probes; the in-kernel port filter must make them cost nothing measurable. \
             Noise is measured, not assumed: each round runs the no-tracer load twice (A/A), and the largest gap between the two is shown; the cost counts as within noise unless every round ran slower than its own baseline. The bpftrace script (same tracepoints, \
             no port filter needed for unrelated ports) shows the cost of enabling syscall tracepoints at all.\n"
        ),
    );
    push(
        &mut md,
        "| tracer | msgs/s | vs none | p99 µs | goal (cost within noise) |\n|-|-:|-:|-:|-|".into(),
    );
    let base_u = base(&r.unrelated, |s| s.msgs_per_sec);
    // Noise: the largest difference between two identical runs of a round.
    let repeat: Vec<f64> = r
        .unrelated
        .iter()
        .find(|(t, _)| *t == Tracer::Repeat)
        .map(|(_, v)| v.iter().map(|s| s.msgs_per_sec).collect())
        .unwrap_or_default();
    let noise = base_u
        .iter()
        .zip(&repeat)
        .filter(|(b, _)| **b > 0.0)
        .map(|(b, a)| (1.0 - a / b).abs())
        .fold(0.0, f64::max);
    for (t, runs) in &r.unrelated {
        let tput: Vec<f64> = runs.iter().map(|s| s.msgs_per_sec).collect();
        let rt = ratio(&base_u, &tput);
        let goal = match t {
            Tracer::Bpftrace => "(comparison)".to_string(),
            Tracer::Wstrace => {
                // Within noise means: not consistently on one side. If every
                // round ran slower than its own baseline, that is a cost,
                // however wide the A/A gap (a sign test: 5 of 5 by chance
                // is 1 in 32).
                let slower = base_u.iter().zip(&tput).filter(|(b, v)| v < b).count();
                let cost = 1.0 - rt;
                if slower < tput.len() || cost <= 0.0 {
                    format!(
                        "met: {slower} of {} rounds slower, cost {:.1}%, A/A noise {:.1}%",
                        tput.len(),
                        cost * 100.0,
                        noise * 100.0
                    )
                } else {
                    format!(
                        "**MISSED**: all {} rounds slower, cost {:.1}% (A/A noise {:.1}%)",
                        tput.len(),
                        cost * 100.0,
                        noise * 100.0
                    )
                }
            }
            Tracer::Repeat => format!("A/A: largest round-to-round gap {:.1}%", noise * 100.0),
            _ => "baseline".to_string(),
        };
        push(
            &mut md,
            format!(
                "| {} | {:.0} | {} | {:.0} | {goal} |",
                t.name(),
                median(tput.iter().copied()),
                ratio_text(&base_u, &tput),
                median(runs.iter().map(|s| s.p99_us)),
            ),
        );
    }

    // 4. daemon
    push(
        &mut md,
        "\n## 4. The daemon's own cost\n\nwait4 rusage of the wstrace process over the whole run (attach, load, detach); \
         CPU % is of one core over its wall time. Peak RSS counts the ring buffer twice (the kernel maps its pages \
         twice so records can wrap): 8 MiB for the 4 MiB events ring, and with stack copies 4 MiB more for the \
         2 MiB stack-copy ring; a daemon that falls behind also holds up to 8 MiB of copied records rather than \
         losing them. Issue 29's goal for churn with default stacks is ≤ 64 MiB.\n"
            .into(),
    );
    push(
        &mut md,
        "| run | wstrace CPU s | CPU % | peak RSS MiB | goal (RSS ≤ 48 MiB) |\n|-|-:|-:|-:|-|"
            .into(),
    );
    let wst = |runs: &[Option<Rusage>]| -> Option<(f64, f64, f64)> {
        let u: Vec<Rusage> = runs.iter().flatten().copied().collect();
        if u.is_empty() {
            return None;
        }
        Some((
            median(u.iter().map(|x| x.cpu_secs)),
            median(u.iter().map(|x| x.cpu_secs / x.wall_secs.max(1e-9) * 100.0)),
            u.iter().map(|x| x.max_rss_mib).fold(0.0, f64::max),
        ))
    };
    // Churn runs of one tracer variant, both placements.
    let churn_daemon = |tracer: Tracer| -> Vec<Option<Rusage>> {
        r.churn
            .iter()
            .filter(|(_, t, _)| *t == tracer)
            .flat_map(|(_, _, v)| v.iter().map(|s| s.daemon))
            .collect()
    };
    let rows: Vec<(&str, Vec<Option<Rusage>>)> = vec![
        (
            "steady echo",
            r.steady
                .iter()
                .filter(|(t, _)| *t == Tracer::Wstrace)
                .flat_map(|(_, v)| v.iter().map(|s| s.daemon))
                .collect(),
        ),
        ("churn", churn_daemon(Tracer::Wstrace)),
        ("churn, --user-stack fp", churn_daemon(Tracer::WstraceFp)),
        (
            "unrelated traffic",
            r.unrelated
                .iter()
                .filter(|(t, _)| *t == Tracer::Wstrace)
                .flat_map(|(_, v)| v.iter().map(|s| s.daemon))
                .collect(),
        ),
    ];
    for (name, usage) in rows {
        if let Some((cpu, pct, rss)) = wst(&usage) {
            let goal = if rss <= RSS_GOAL_MIB {
                "met".to_string()
            } else {
                format!("**MISSED** by {:.1} MiB", rss - RSS_GOAL_MIB)
            };
            push(
                &mut md,
                format!("| {name} | {cpu:.2} | {pct:.1} | {rss:.1} (max) | {goal} |"),
            );
        }
    }
    if let Some(k) = &r.kernel_cost {
        md.push('\n');
        md.push_str(&kernel_cost::render(k));
    }
    if let Some(v) = &r.vm_cost {
        md.push('\n');
        md.push_str(&vm_cost::render(v));
    }
    if let Some(t) = &r.tls_cost {
        md.push('\n');
        md.push_str(&tls_cost::render(t));
    }
    if let Some(t) = &r.go_tls_cost {
        md.push('\n');
        md.push_str(&tls_cost::render_go(t));
    }
    if let Some(t) = &r.interp_cost {
        md.push('\n');
        md.push_str(&interp_cost::render(t));
    }
    if let Some(t) = &r.idle_cost {
        md.push('\n');
        md.push_str(&idle_cost::render(t));
    }
    md
}

/// BENCHMARKS.md after a partial run: the new part from `new`, the rest
/// kept from `old` (sections 1-4, section 5 from [`KERNEL_COST_HEADING`],
/// section 6 from [`VM_COST_HEADING`], section 7 from [`TLS_COST_HEADING`],
/// section 8 from [`INTERP_COST_HEADING`], section 9 from
/// [`IDLE_COST_HEADING`]).
fn splice(old: &str, new: &str, only: Only) -> String {
    const HEADINGS: [&str; 6] = [
        KERNEL_COST_HEADING,
        VM_COST_HEADING,
        TLS_COST_HEADING,
        GO_TLS_COST_HEADING,
        INTERP_COST_HEADING,
        IDLE_COST_HEADING,
    ];
    const PARTS: usize = HEADINGS.len() + 1;
    // Each part runs from its heading to the next heading found after it.
    let split = |text: &str| -> [String; PARTS] {
        let starts: Vec<Option<usize>> = HEADINGS.iter().map(|h| text.find(h)).collect();
        let end_of = |from: usize| {
            starts
                .iter()
                .flatten()
                .copied()
                .filter(|&p| p > from)
                .min()
                .unwrap_or(text.len())
        };
        let first = starts.iter().flatten().copied().min().unwrap_or(text.len());
        let mut parts: [String; PARTS] = Default::default();
        parts[0] = text[..first].to_string();
        for (i, s) in starts.iter().enumerate() {
            if let Some(s) = *s {
                parts[i + 1] = text[s..end_of(s)].to_string();
            }
        }
        parts
    };
    let old = split(old);
    let new = split(new);
    let take_new = match only {
        Only::All => [true; PARTS],
        Only::Load => [true, false, false, false, false, false, false],
        Only::KernelCost => [false, true, false, false, false, false, false],
        Only::VmCost => [false, false, true, false, false, false, false],
        // Section 7 whole: the OpenSSL half and the Go half.
        Only::Tls => [false, false, false, true, true, false, false],
        Only::GoTls => [false, false, false, false, true, false, false],
        Only::Interp => [false, false, false, false, false, true, false],
        Only::Idle => [false, false, false, false, false, false, true],
    };
    let kept: Vec<&str> = (0..PARTS)
        .map(|i| if take_new[i] { &new[i] } else { &old[i] })
        .map(|p| p.trim_end())
        .filter(|p| !p.is_empty())
        .collect();
    format!("{}\n", kept.join("\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_renderer_reads_what_the_lab_writes() {
        // What `wstrace-bench lab --only tls` would write if it had measured
        // nothing: through JSON and back, then rendered and spliced.
        let lab = Results {
            only: Only::Tls,
            ..Default::default()
        };
        let json = serde_json::to_string(&lab).unwrap();
        assert!(json.contains(r#""only":"tls""#), "{json}");
        let back: Results = serde_json::from_str(&json).unwrap();
        let old = format!("# Benchmarks\n## 1. kept\n\n{TLS_COST_HEADING}\nold tls\n");
        let md = markdown(&back, &old);
        assert!(md.contains("## 1. kept"), "{md}");
        let full = markdown(
            &Results {
                only: Only::All,
                ..back
            },
            &old,
        );
        assert!(full.starts_with("# Benchmarks") && !full.contains("## 1. kept"));
    }

    #[test]
    fn a_partial_run_keeps_the_other_part() {
        let old = format!("# B\n## 1. old load\n\n{KERNEL_COST_HEADING}\nold cost\n");
        let new = format!("# B\n## 1. new load\n\n{KERNEL_COST_HEADING}\nnew cost\n");
        let load_only = splice(&old, "# B\n## 1. new load\n", Only::Load);
        assert!(load_only.contains("new load") && load_only.contains("old cost"));
        let cost_only = splice(&old, &new, Only::KernelCost);
        assert!(cost_only.contains("old load") && cost_only.contains("new cost"));
        assert!(!cost_only.contains("old cost") && !cost_only.contains("new load"));
        let first = splice("", &new, Only::KernelCost);
        assert!(first.contains("new cost"));
        let old3 = format!("{old}\n{VM_COST_HEADING}\nold vm\n");
        let vm_only = splice(&old3, &format!("{VM_COST_HEADING}\nnew vm\n"), Only::VmCost);
        assert!(vm_only.contains("old load") && vm_only.contains("old cost"));
        assert!(vm_only.contains("new vm") && !vm_only.contains("old vm"));
        let cost_again = splice(&old3, &new, Only::KernelCost);
        assert!(cost_again.contains("new cost") && cost_again.contains("old vm"));
        let tls_first = splice(&old3, &format!("{TLS_COST_HEADING}\nnew tls\n"), Only::Tls);
        assert!(tls_first.contains("old cost") && tls_first.contains("old vm"));
        assert!(tls_first.trim_end().ends_with("new tls"), "{tls_first}");
        let old4 = format!("{old3}\n{TLS_COST_HEADING}\nold tls\n");
        let vm_again = splice(&old4, &format!("{VM_COST_HEADING}\nnew vm\n"), Only::VmCost);
        assert!(
            vm_again.contains("new vm") && !vm_again.contains("old vm"),
            "{vm_again}"
        );
        assert!(
            vm_again.contains("old tls") && vm_again.contains("old cost"),
            "{vm_again}"
        );
        let tls_again = splice(&old4, &format!("{TLS_COST_HEADING}\nnew tls\n"), Only::Tls);
        assert!(tls_again.contains("new tls") && !tls_again.contains("old tls"));
        assert!(tls_again.contains("old vm"), "{tls_again}");
        let old5i = format!("{old4}\n{IDLE_COST_HEADING}\nold idle\n");
        let idle = splice(
            &old5i,
            &format!("{IDLE_COST_HEADING}\nnew idle\n"),
            Only::Idle,
        );
        assert!(
            idle.contains("new idle") && !idle.contains("old idle"),
            "{idle}"
        );
        assert!(
            idle.contains("old tls") && idle.contains("old load"),
            "{idle}"
        );
        let tls_keeps_idle = splice(&old5i, &format!("{TLS_COST_HEADING}\nnew tls\n"), Only::Tls);
        assert!(tls_keeps_idle.contains("old idle"), "{tls_keeps_idle}");
        // Section 7's Go half: spliced alone by --only gotls, with the
        // OpenSSL half by --only tls; section 8 stays after it.
        let old5 =
            format!("{old4}\n{GO_TLS_COST_HEADING}\nold go\n\n{INTERP_COST_HEADING}\nold interp\n");
        let go_only = splice(
            &old5,
            &format!("{GO_TLS_COST_HEADING}\nnew go\n"),
            Only::GoTls,
        );
        assert!(
            go_only.contains("old tls") && go_only.contains("new go"),
            "{go_only}"
        );
        assert!(!go_only.contains("old go") && go_only.contains("old interp"));
        assert!(go_only.find("new go") < go_only.find(INTERP_COST_HEADING));
        assert!(go_only.find("old tls") < go_only.find("new go"));
        let both = splice(
            &old5,
            &format!("{TLS_COST_HEADING}\nnew tls\n\n{GO_TLS_COST_HEADING}\nnew go\n"),
            Only::Tls,
        );
        assert!(
            both.contains("new tls") && both.contains("new go"),
            "{both}"
        );
        assert!(!both.contains("old tls") && !both.contains("old go"));
        assert!(both.contains("old interp") && both.contains("old vm"));
    }

    #[test]
    fn goals_say_by_how_much_they_are_missed() {
        assert!(cost_goal(0.99, 0.02).starts_with("met (cost 1.0%"));
        assert!(cost_goal(0.967, 0.02).contains("MISSED** by 1.3 points"));
        assert_eq!(ratio(&[100.0, 200.0, 100.0], &[99.0, 196.0, 100.0]), 0.99);
    }
}
