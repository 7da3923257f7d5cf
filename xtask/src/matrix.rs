//! Kernel-matrix results: parsing a VM's serial console into per-step results,
//! judging them, and the JSON kept in target/vm-results.json.
//!
//! Scenario lines follow ws-scenario's contract:
//! `SCENARIO <name> probe=<set> kernel=<uname -r> PASS|FAIL|SKIP <detail>`.

use crate::initramfs::MARK;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::PathBuf;

/// ws-scenario's lines saying where a step's time went (its check.rs
/// `TIME_PREFIX`): kept in a step's output, printed by `cargo xtask vm`.
pub const TIME_PREFIX: &str = "ws-scenario: time:";

#[derive(Serialize, Deserialize)]
pub struct MatrixResults {
    /// "scenarios" (ws-scenario per probe set) or "command" (--cmd).
    pub mode: String,
    pub generated_unix: u64,
    pub kernels: Vec<KernelRun>,
}

#[derive(Serialize, Deserialize)]
pub struct KernelRun {
    pub label: String,
    pub suite: String,
    pub package: String,
    pub version: String,
    /// `uname -r` inside the VM; None when it never got that far.
    pub release: Option<String>,
    /// Guest uptime when /init started the steps: the boot time.
    pub boot_seconds: Option<f64>,
    /// Host wall time of the whole QEMU run.
    pub wall_seconds: f64,
    pub timed_out: bool,
    /// /init printed its end marker (every step ran, nothing crashed).
    pub completed: bool,
    /// The steps /init was given, in order, whether or not they ran.
    pub planned_steps: Vec<String>,
    /// Probe sets this kernel cannot have (the arm64 5.10 kernel has no BPF
    /// trampolines, so no fentry), with why: their scenarios may SKIP.
    #[serde(default)]
    pub unavailable: Vec<(String, String)>,
    pub steps: Vec<StepRun>,
    /// /init's notes (mounts that failed ...).
    pub notes: Vec<String>,
    /// Kernel warnings and errors (dmesg levels 0-4) at the end of the run.
    pub kernel_messages: Vec<String>,
    pub log: PathBuf,
}

#[derive(Serialize, Deserialize)]
pub struct StepRun {
    pub name: String,
    /// None when the step started but its end marker never came.
    pub exit_status: Option<i32>,
    pub seconds: Option<f64>,
    pub scenarios: Vec<ScenarioLine>,
    /// Everything else the step printed.
    pub output: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct ScenarioLine {
    pub name: String,
    pub probe: String,
    pub kernel: String,
    pub status: String,
    pub detail: String,
}

/// What the serial console says, before being attached to a kernel.
#[derive(Default)]
pub struct Parsed {
    pub release: Option<String>,
    pub boot_seconds: Option<f64>,
    pub completed: bool,
    pub steps: Vec<StepRun>,
    pub notes: Vec<String>,
    pub kernel_messages: Vec<String>,
}

pub fn parse_serial(lines: &[String]) -> Parsed {
    let mut p = Parsed::default();
    let mut in_dmesg = false;
    let mut step_start: Option<f64> = None;
    let mut open_step: Option<StepRun> = None;
    for line in lines {
        // Tolerate anything the console put in front of a marker.
        if let Some(at) = line.find(MARK) {
            let rest = line[at + MARK.len()..].trim();
            let (word, args) = rest.split_once(' ').unwrap_or((rest, ""));
            match word {
                "begin" => {
                    p.release = field(args, "kernel").map(str::to_string);
                    p.boot_seconds = field(args, "uptime").and_then(|u| u.parse().ok());
                    step_start = p.boot_seconds;
                }
                "note:" => p.notes.push(args.to_string()),
                "step-begin" => {
                    if let Some(step) = open_step.take() {
                        p.steps.push(step);
                    }
                    open_step = Some(StepRun {
                        name: args.trim().to_string(),
                        exit_status: None,
                        seconds: None,
                        scenarios: Vec::new(),
                        output: Vec::new(),
                    });
                }
                "step-end" => {
                    let uptime: Option<f64> = field(args, "uptime").and_then(|u| u.parse().ok());
                    if let Some(mut step) = open_step.take() {
                        step.exit_status = field(args, "rc").and_then(|rc| rc.parse().ok());
                        step.seconds = uptime.zip(step_start).map(|(end, start)| end - start);
                        p.steps.push(step);
                    }
                    step_start = uptime;
                }
                "dmesg-begin" => in_dmesg = true,
                "end" => {
                    in_dmesg = false;
                    p.completed = true;
                }
                _ => {}
            }
            continue;
        }
        if in_dmesg {
            p.kernel_messages.push(line.clone());
        } else if let Some(step) = open_step.as_mut() {
            match parse_scenario(line) {
                Some(scenario) => step.scenarios.push(scenario),
                None => step.output.push(line.clone()),
            }
        }
    }
    if let Some(step) = open_step.take() {
        p.steps.push(step);
    }
    p
}

/// `key=value` among space-separated words.
fn field<'a>(args: &'a str, key: &str) -> Option<&'a str> {
    args.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

pub fn parse_scenario(line: &str) -> Option<ScenarioLine> {
    let line = line.trim();
    let rest = line.strip_prefix("SCENARIO ")?;
    let mut words = rest.splitn(5, ' ');
    let name = words.next()?.to_string();
    let probe = words.next()?.strip_prefix("probe=")?.to_string();
    let kernel = words.next()?.strip_prefix("kernel=")?.to_string();
    let status = words.next()?.to_string();
    if !matches!(status.as_str(), "PASS" | "FAIL" | "SKIP") {
        return None;
    }
    let detail = words.next().unwrap_or("").trim().to_string();
    Some(ScenarioLine {
        name,
        probe,
        kernel,
        status,
        detail,
    })
}

impl KernelRun {
    /// "6.1 (6.1.0-50-cloud-amd64)"
    pub fn title(&self) -> String {
        format!(
            "{} ({})",
            self.label,
            self.release.as_deref().unwrap_or(&self.package)
        )
    }
}

/// Every scenario seen anywhere in the matrix. ws-scenario prints one line per
/// scenario it knows, so one seen anywhere but missing from a step is a failure there.
pub fn scenario_names(results: &MatrixResults) -> BTreeSet<&str> {
    results
        .kernels
        .iter()
        .flat_map(|k| &k.steps)
        .flat_map(|s| &s.scenarios)
        .map(|s| s.name.as_str())
        .collect()
}

/// Everything wrong with a run, one sentence each, naming kernel, probe set
/// and scenario. Empty means the matrix passed.
pub fn failures(results: &MatrixResults) -> Vec<String> {
    let scenario_mode = results.mode == "scenarios";
    let all_scenarios = scenario_names(results);
    let mut out = Vec::new();
    for k in &results.kernels {
        let log = k.log.display();
        if k.timed_out {
            out.push(format!(
                "kernel {}: timed out after {:.0} s (serial log: {log})",
                k.title(),
                k.wall_seconds
            ));
        } else if !k.completed {
            out.push(format!("kernel {}: the VM stopped before /init finished (crash or panic? serial log: {log})", k.title()));
        }
        for planned in &k.planned_steps {
            let Some(step) = k.steps.iter().find(|s| &s.name == planned) else {
                out.push(format!("kernel {}: step {planned} never ran", k.title()));
                continue;
            };
            let what = if scenario_mode {
                format!("probe set {planned}")
            } else {
                format!("step {planned}")
            };
            let Some(rc) = step.exit_status else {
                out.push(format!(
                    "kernel {}, {what}: started but did not finish (serial log: {log})",
                    k.title()
                ));
                continue;
            };
            if !scenario_mode {
                if rc != 0 {
                    out.push(format!(
                        "kernel {}, {what}: exited with status {rc} (serial log: {log})",
                        k.title()
                    ));
                }
                continue;
            }
            let failed: Vec<&ScenarioLine> = step
                .scenarios
                .iter()
                .filter(|s| s.status == "FAIL")
                .collect();
            for s in &failed {
                out.push(format!(
                    "kernel {}, probe set {planned}: scenario {} FAILED: {}",
                    k.title(),
                    s.name,
                    s.detail
                ));
            }
            // Debian's cloud kernels have fentry, kprobes and IPv6: a
            // skip there hides a regression. Only the host may lack a set,
            // and a kernel a set is known not to exist on (KernelSpec::unavailable).
            let known_unavailable = k.unavailable.iter().any(|(set, _)| set == planned);
            if k.label != "host" && !known_unavailable {
                for s in step.scenarios.iter().filter(|s| s.status == "SKIP") {
                    out.push(format!(
                        "kernel {}, probe set {planned}: scenario {} SKIPPED, but this kernel supports every probe set: {}",
                        k.title(),
                        s.name,
                        s.detail
                    ));
                }
            }
            if step.scenarios.is_empty() {
                out.push(format!(
                    "kernel {}, probe set {planned}: no SCENARIO lines (exit status {rc}; serial log: {log})",
                    k.title()
                ));
                continue;
            }
            if rc != 0 && failed.is_empty() {
                out.push(format!(
                    "kernel {}, probe set {planned}: ws-scenario exited with status {rc} without a FAIL line (serial log: {log})",
                    k.title()
                ));
            }
            for name in &all_scenarios {
                if !step.scenarios.iter().any(|s| s.name == *name) {
                    out.push(format!("kernel {}, probe set {planned}: scenario {name} missing (no SCENARIO line)", k.title()));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(str::to_string).collect()
    }

    #[test]
    fn scenario_lines_are_parsed() {
        let s = parse_scenario("SCENARIO server-close probe=fentry kernel=6.1.0-50-cloud-amd64 FAIL no close event seen\r")
            .unwrap();
        assert_eq!(s.name, "server-close");
        assert_eq!(s.probe, "fentry");
        assert_eq!(s.kernel, "6.1.0-50-cloud-amd64");
        assert_eq!(s.status, "FAIL");
        assert_eq!(s.detail, "no close event seen");
        assert!(parse_scenario("SCENARIO x probe=a kernel=b MAYBE").is_none());
        assert!(parse_scenario("SCENARIO x probe=a kernel=b PASS").is_some());
    }

    #[test]
    fn serial_console_is_split_into_steps() {
        let serial = lines(
            "[    0.000000] Linux version ...\n\
             @@wstrace-vm note: debugfs not mounted\n\
             @@wstrace-vm begin kernel=6.1.0-50-cloud-amd64 uptime=2.50\n\
             @@wstrace-vm step-begin fentry\n\
             SCENARIO a probe=fentry kernel=6.1.0-50-cloud-amd64 PASS ok\n\
             SCENARIO b probe=fentry kernel=6.1.0-50-cloud-amd64 PASS ok\n\
             wstrace: tracing port 1215 with fentry probes\n\
             @@wstrace-vm step-end fentry rc=0 uptime=4.00\n\
             @@wstrace-vm step-begin kprobe\n\
             SCENARIO a probe=kprobe kernel=6.1.0-50-cloud-amd64 FAIL no report\n\
             @@wstrace-vm step-end kprobe rc=1 uptime=5.00\n\
             @@wstrace-vm dmesg-begin\n\
             <4>[    3.0] something\n\
             @@wstrace-vm end uptime=5.10",
        );
        let p = parse_serial(&serial);
        assert_eq!(p.release.as_deref(), Some("6.1.0-50-cloud-amd64"));
        assert_eq!(p.boot_seconds, Some(2.5));
        assert!(p.completed);
        assert_eq!(p.notes, ["debugfs not mounted"]);
        assert_eq!(p.steps.len(), 2);
        assert_eq!(p.steps[0].scenarios.len(), 2);
        assert_eq!(
            p.steps[0].output,
            ["wstrace: tracing port 1215 with fentry probes"]
        );
        assert_eq!(p.steps[0].seconds, Some(1.5));
        assert_eq!(p.steps[1].exit_status, Some(1));
        assert_eq!(p.kernel_messages.len(), 1);

        let results = MatrixResults {
            mode: "scenarios".into(),
            generated_unix: 0,
            kernels: vec![KernelRun {
                label: "6.1".into(),
                suite: "bookworm".into(),
                package: "linux-image-6.1.0-50-cloud-amd64".into(),
                version: "6.1.176-1".into(),
                release: p.release,
                boot_seconds: p.boot_seconds,
                wall_seconds: 6.0,
                timed_out: false,
                completed: p.completed,
                planned_steps: vec!["fentry".into(), "kprobe".into(), "tracepoint".into()],
                unavailable: Vec::new(),
                steps: p.steps,
                notes: p.notes,
                kernel_messages: p.kernel_messages,
                log: PathBuf::from("x.log"),
            }],
        };
        let f = failures(&results);
        assert_eq!(f.len(), 3, "{f:#?}");
        assert!(f[0].contains("kprobe") && f[0].contains("scenario a FAILED"));
        assert!(f[1].contains("kprobe") && f[1].contains("scenario b missing"));
        assert!(f[2].contains("step tracepoint never ran"));
    }
}
