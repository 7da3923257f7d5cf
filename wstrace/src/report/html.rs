//! `wstrace report --html OUT`: one self-contained page (no network, no
//! external files): the text summary, a flame graph of the close stacks
//! (inferno: user frames from `main` down to the syscall, then the kernel's)
//! and a histogram of connection lifetimes.
use std::fmt::Write as _;

use anyhow::{Context as _, Result};
use serde_json::Value;

use crate::report::summary::{Summary, frame_key, render};

/// Folded stacks, one line per close path with its count:
/// `comm;outermost user frame;...;close;[k] tcp_close;... N`.
pub fn folded(s: &Summary) -> Vec<String> {
    let mut counts: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for v in &s.closes {
        let frames = |k: &str| -> Vec<String> {
            v.get(k)
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).map(frame_key).collect())
                .unwrap_or_default()
        };
        let mut path = vec![
            v.get("comm")
                .and_then(Value::as_str)
                .unwrap_or("(no local process)")
                .to_string(),
        ];
        // Stacks are innermost first; a flame graph wants the root first.
        path.extend(frames("user_stack").into_iter().rev());
        path.extend(
            frames("kernel_stack")
                .into_iter()
                .rev()
                .map(|f| format!("[k] {f}")),
        );
        // ';' separates frames in the folded format.
        let line = path
            .iter()
            .map(|f| f.replace(';', ":"))
            .collect::<Vec<_>>()
            .join(";");
        *counts.entry(line).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect()
}

fn flamegraph_svg(lines: &[String]) -> Result<String> {
    if lines.is_empty() {
        return Ok("<p>No close stacks in the selected reports.</p>".into());
    }
    let mut opt = inferno::flamegraph::Options::default();
    opt.title = "Where upgraded sockets were closed".into();
    opt.count_name = "closes".into();
    let mut svg = Vec::new();
    inferno::flamegraph::from_lines(&mut opt, lines.iter().map(String::as_str), &mut svg)
        .context("drawing the flame graph")?;
    Ok(String::from_utf8_lossy(&svg).into_owned())
}

/// Buckets of the lifetime histogram: upper bounds in ms and labels.
const BUCKETS: &[(f64, &str)] = &[
    (1.0, "<1 ms"),
    (10.0, "<10 ms"),
    (100.0, "<100 ms"),
    (1000.0, "<1 s"),
    (10_000.0, "<10 s"),
    (60_000.0, "<1 min"),
    (600_000.0, "<10 min"),
    (3_600_000.0, "<1 h"),
    (f64::INFINITY, "≥1 h"),
];

fn lifetime_svg(s: &Summary) -> String {
    let mut counts = vec![0usize; BUCKETS.len()];
    for ms in s
        .closes
        .iter()
        .filter_map(|v| v.get("ms_after_upgrade").and_then(Value::as_f64))
    {
        let i = BUCKETS
            .iter()
            .position(|(max, _)| ms < *max)
            .unwrap_or(BUCKETS.len() - 1);
        counts[i] += 1;
    }
    let most = counts.iter().copied().max().unwrap_or(0).max(1);
    let (w, h, bar) = (760, 220, 760 / BUCKETS.len());
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" id=\"lifetimes\" width=\"{w}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">",
        h + 40
    );
    for (i, ((_, label), c)) in BUCKETS.iter().zip(&counts).enumerate() {
        let bh = c * h / most;
        let x = i * bar;
        let _ = write!(
            svg,
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{bh}\" fill=\"#4a7ebb\"><title>{label}: {c}</title></rect>\
             <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{label}</text><text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{c}</text>",
            x + 4,
            h - bh,
            bar - 8,
            x + bar / 2,
            h + 16,
            x + bar / 2,
            (h - bh).saturating_sub(4).max(12)
        );
    }
    svg.push_str("</svg>");
    svg
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub fn page(s: &Summary, top: usize) -> Result<String> {
    let flame = flamegraph_svg(&folded(s))?;
    Ok(format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>wstrace report</title>\
         <style>body{{font-family:sans-serif;margin:1.5em;max-width:1250px}}pre{{background:#f6f6f6;padding:1em;overflow-x:auto}}\
         #flamegraph svg{{width:100%;height:auto}}</style></head><body>\
         <h1>wstrace report</h1>\
         <h2>Close stacks</h2><div id=\"flamegraph\">{flame}</div>\
         <h2>Lifetime after the 101</h2>{}\
         <h2>Summary</h2><pre>{}</pre></body></html>\n",
        lifetime_svg(s),
        escape(&render(s, top))
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn summary() -> Summary {
        let mut s = Summary::default();
        for (comm, ms) in [("php", 0.4), ("php", 0.5), ("nginx", 60_000.0)] {
            s.closes.push(json!({
                "comm": comm, "ms_after_upgrade": ms,
                "user_stack": ["__close+0x1 (/lib/libc.so.6)", "handle;conn+0x2 (/bin/x)", "main+0x3 (/bin/x)"],
                "kernel_stack": ["__tcp_close+0x2", "tcp_close+0x1f"],
            }));
        }
        s
    }

    #[test]
    fn folded_stacks_are_root_first_and_counted() {
        let f = folded(&summary());
        assert_eq!(f.len(), 2);
        assert_eq!(
            f[1],
            "php;main (/bin/x);handle:conn (/bin/x);__close (/lib/libc.so.6);[k] tcp_close;[k] __tcp_close 2"
        );
        assert!(f[0].starts_with("nginx;") && f[0].ends_with(" 1"));
    }

    #[test]
    fn page_is_self_contained() {
        let html = page(&summary(), 5).expect("page");
        assert!(html.contains("<svg") && html.contains("id=\"lifetimes\""));
        assert!(html.contains("Where upgraded sockets were closed"));
        assert!(
            !html.contains("src=\"http") && !html.contains("href=\"http"),
            "no external resources"
        );
        let empty = page(&Summary::default(), 5).expect("page");
        assert!(empty.contains("No close stacks"));
    }
}
