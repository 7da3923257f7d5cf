//! `wstrace report --html OUT`: one self-contained page (no network, no
//! external files): the text summary, a flame graph of the close stacks
//! (inferno: user frames from `main` down to the syscall, then the kernel's)
//! and a histogram of connection lifetimes.
use std::fmt::Write as _;

use anyhow::{Context as _, Result};

use crate::report::summary::{LIFETIME_BUCKETS, Summary, render};

/// Folded stacks, one line per close path with its count:
/// `comm;outermost user frame;...;close;[k] tcp_close;... N` (counted by
/// `Summary::add_close`).
pub fn folded(s: &Summary) -> Vec<String> {
    let mut lines: Vec<String> = s
        .folded
        .by_key()
        .into_iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    if s.folded.other > 0 {
        lines.push(format!("(other stacks) {}", s.folded.other));
    }
    lines
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

fn lifetime_svg(s: &Summary) -> String {
    let counts = s
        .lifetime_buckets
        .map(|c| usize::try_from(c).unwrap_or(usize::MAX));
    let most = counts.iter().copied().max().unwrap_or(0).max(1);
    let (w, h, bar) = (760, 220, 760 / LIFETIME_BUCKETS.len());
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" id=\"lifetimes\" width=\"{w}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">",
        h + 40
    );
    for (i, ((_, label), c)) in LIFETIME_BUCKETS.iter().zip(&counts).enumerate() {
        let bh = (c.saturating_mul(h) / most).min(h);
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
            s.add_close(&json!({
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
