//! The kernel × probe-set table for README.md, generated from vm results.

use crate::matrix::{self, KernelRun, MatrixResults, StepRun};
use anyhow::{Context as _, Result};
use std::collections::BTreeSet;
use std::path::Path;

pub const BEGIN: &str = "<!-- kernel-matrix:begin -->";
pub const END: &str = "<!-- kernel-matrix:end -->";

pub fn markdown(results: &MatrixResults) -> String {
    // Columns: step names in the order the VMs ran them (probe sets in scenario mode).
    let mut columns: Vec<&str> = Vec::new();
    for k in &results.kernels {
        for name in &k.planned_steps {
            if !columns.contains(&name.as_str()) {
                columns.push(name);
            }
        }
    }
    let all = matrix::scenario_names(results);
    let first = if results.mode == "scenarios" {
        "kernel \\ probe set"
    } else {
        "kernel \\ step"
    };
    let mut s = format!("| {first} | {} |\n", columns.join(" | "));
    s.push_str(&format!("|---|{}\n", "---|".repeat(columns.len())));
    for k in &results.kernels {
        let cells: Vec<String> = columns.iter().map(|c| cell(k, c, &all)).collect();
        s.push_str(&format!(
            "| {} ({}) | {} |\n",
            k.label,
            kernel_name(k),
            cells.join(" | ")
        ));
    }
    s.push_str(&format!(
        "\nhost: the machine `cargo xtask vm` ran on (CI's kernel: tracepoints only); the others are \
         Debian cloud kernels booted in QEMU (TCG); `-arm64` rows run the arm64 build on arm64 \
         kernels (`qemu-system-aarch64 -machine virt -cpu max`). Results of {}. Cells: scenarios \
         passed / run; `auto` → the set it chose; \"not available\": the kernel lacks that set's \
         hooks, and wstrace says so at start-up",
        date(results.generated_unix)
    ));
    // One sentence per (set, reason), naming every kernel it applies to.
    let mut reasons: Vec<(&str, &str, Vec<&str>)> = Vec::new();
    for k in &results.kernels {
        for (set, why) in &k.unavailable {
            match reasons.iter_mut().find(|(s, w, _)| s == set && w == why) {
                Some((_, _, labels)) => labels.push(&k.label),
                None => reasons.push((set, why, vec![&k.label])),
            }
        }
    }
    let known: Vec<String> = reasons
        .iter()
        .map(|(set, why, labels)| format!("{} {set}: {why}", labels.join(" and ")))
        .collect();
    if known.is_empty() {
        s.push_str(".\n");
    } else {
        s.push_str(&format!(" ({}).\n", known.join("; ")));
    }
    s
}

fn kernel_name(k: &KernelRun) -> String {
    match &k.release {
        Some(release) => format!("{}, `{release}`", k.suite),
        None => format!("{}, {}", k.suite, k.package),
    }
}

fn cell(k: &KernelRun, column: &str, all: &BTreeSet<&str>) -> String {
    let Some(step) = k.steps.iter().find(|s| s.name == column) else {
        return if k.planned_steps.iter().any(|p| p == column) {
            "did not run".into()
        } else {
            "—".into()
        };
    };
    let Some(rc) = step.exit_status else {
        return "did not finish".into();
    };
    if step.scenarios.is_empty() {
        return if rc == 0 {
            "ok".into()
        } else {
            format!("exit {rc}")
        };
    }
    cell_for_scenarios(step, all)
}

fn cell_for_scenarios(step: &StepRun, all: &BTreeSet<&str>) -> String {
    let count = |status: &str| step.scenarios.iter().filter(|s| s.status == status).count();
    let (pass, skip) = (count("PASS"), count("SKIP"));
    // A scenario without a line counts as run and failed.
    let mut bad: Vec<String> = step
        .scenarios
        .iter()
        .filter(|s| s.status == "FAIL")
        .map(|s| s.name.clone())
        .collect();
    for name in all {
        if !step.scenarios.iter().any(|s| s.name == *name) {
            bad.push(format!("{name} missing"));
        }
    }
    let run = pass + bad.len();
    if !bad.is_empty() {
        return format!("**FAIL** {pass}/{run} ({})", bad.join(", "));
    }
    if run == 0 {
        return "not available".into();
    }
    let mut cell = if skip > 0 {
        format!("PASS {pass}/{run} ({skip} skipped)")
    } else {
        format!("PASS {pass}/{run}")
    };
    // `auto`: which set it chose there (ws-scenario prints `chose=<set>`).
    if let Some(chose) = step.scenarios.iter().find_map(|s| {
        s.detail
            .split_whitespace()
            .find_map(|w| w.strip_prefix("chose="))
    }) {
        cell.push_str(&format!(" → {chose}"));
    }
    cell
}

/// Replaces what is between the markers in `file`; Ok(false) when the file has
/// no markers (the caller prints the table instead).
pub fn write_into(file: &Path, table: &str) -> Result<bool> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let (Some(begin), Some(end)) = (text.find(BEGIN), text.find(END)) else {
        return Ok(false);
    };
    if end < begin {
        anyhow::bail!(
            "{}: {END} comes before {BEGIN}: fix the markers",
            file.display()
        );
    }
    let new = format!("{}{BEGIN}\n{table}{}", &text[..begin], &text[end..]);
    std::fs::write(file, new).with_context(|| format!("writing {}", file.display()))?;
    Ok(true)
}

/// YYYY-MM-DD (UTC) of a Unix time, without a date crate (Howard Hinnant's civil_from_days).
fn date(unix: u64) -> String {
    let z = (unix / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(1_795_435_200), "2026-11-23");
    }

    #[test]
    fn markers_are_replaced() {
        let dir = std::env::temp_dir().join(format!("xtask-table-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("README.md");
        std::fs::write(&file, format!("a\n{BEGIN}\nold\n{END}\nb\n")).unwrap();
        assert!(write_into(&file, "| t |\n").unwrap());
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            format!("a\n{BEGIN}\n| t |\n{END}\nb\n")
        );
        std::fs::write(&file, "no markers\n").unwrap();
        assert!(!write_into(&file, "| t |\n").unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
