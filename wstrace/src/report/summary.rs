//! The post-mortem summary: recorded reports filtered, counted per
//! diagnosis and closer, the top closing stacks, lifetime percentiles and a
//! time line. Pure (text in, text out), so it is unit-tested on strings.
use std::{collections::BTreeMap, fmt::Write as _, time::SystemTime};

use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
pub struct Filters {
    pub since: Option<SystemTime>,
    pub until: Option<SystemTime>,
    pub port: Option<u16>,
    pub pid: Option<u32>,
}

/// What the summary is built from; pure, so it is unit-tested on strings.
#[derive(Default, Debug)]
pub struct Summary {
    pub lines: u64,
    pub closes: Vec<Value>,
    /// (file, line number, why) of lines that are not reports.
    pub malformed: Vec<(String, u64, String)>,
    pub filtered_out: u64,
}

impl Summary {
    pub fn add_text(&mut self, name: &str, text: &str, f: &Filters) {
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            self.lines += 1;
            let v: Value = match serde_json::from_str(line) {
                Ok(v) => v,
                Err(e) => {
                    self.malformed
                        .push((name.to_string(), i as u64 + 1, e.to_string()));
                    continue;
                }
            };
            if v.get("closed_by").and_then(Value::as_str).is_none() {
                self.malformed.push((
                    name.to_string(),
                    i as u64 + 1,
                    "not a close report (no closed_by)".into(),
                ));
                continue;
            }
            if keep(&v, f) {
                self.closes.push(v);
            } else {
                self.filtered_out += 1;
            }
        }
    }
}

fn ts(v: &Value) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(v.get("ts")?.as_str()?).ok()
}

fn local_port(v: &Value) -> Option<u16> {
    v.get("local")?.as_str()?.rsplit_once(':')?.1.parse().ok()
}

fn keep(v: &Value, f: &Filters) -> bool {
    let t = ts(v);
    if let Some(since) = f.since {
        if t.is_none_or(|t| t < since) {
            return false;
        }
    }
    if let Some(until) = f.until {
        if t.is_none_or(|t| t >= until) {
            return false;
        }
    }
    if f.port.is_some() && local_port(v) != f.port {
        return false;
    }
    if f.pid.is_some() && v.get("pid").and_then(Value::as_u64) != f.pid.map(u64::from) {
        return false;
    }
    true
}

fn count_by<'a>(closes: &'a [Value], key: impl Fn(&'a Value) -> String) -> Vec<(String, usize)> {
    let mut m: BTreeMap<String, usize> = BTreeMap::new();
    for v in closes {
        *m.entry(key(v)).or_default() += 1;
    }
    let mut out: Vec<(String, usize)> = m.into_iter().collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    out
}

/// A frame without its offset: `close+0x3a (/lib/libc.so.6) at x.c:27` ->
/// `close (/lib/libc.so.6)`, so the same path groups across builds.
pub fn frame_key(frame: &str) -> String {
    let (sym, rest) = match frame.find(" (") {
        Some(i) => (&frame[..i], &frame[i..]),
        None => (frame, ""),
    };
    let sym = match sym.rfind("+0x") {
        Some(i) => &sym[..i],
        None => sym,
    };
    let rest = match rest.find(") at ") {
        Some(i) => &rest[..=i],
        None => rest,
    };
    format!("{sym}{rest}")
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn str_of<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("?")
}

pub fn render(s: &Summary, top: usize) -> String {
    let mut o = String::new();
    let n = s.closes.len();
    let _ = writeln!(
        o,
        "wstrace report: {n} closes ({} lines read, {} filtered out, {} malformed)",
        s.lines,
        s.filtered_out,
        s.malformed.len()
    );
    let times: Vec<SystemTime> = s.closes.iter().filter_map(ts).collect();
    if let (Some(first), Some(last)) = (times.iter().min(), times.iter().max()) {
        let _ = writeln!(
            o,
            "from {} to {}",
            humantime::format_rfc3339_seconds(*first),
            humantime::format_rfc3339_seconds(*last)
        );
    }
    let pct = |c: usize| {
        if n == 0 {
            0.0
        } else {
            c as f64 * 100.0 / n as f64
        }
    };

    let _ = writeln!(o, "\nby diagnosis:");
    for (code, c) in count_by(&s.closes, |v| {
        v.pointer("/diagnosis/code")
            .and_then(Value::as_str)
            .unwrap_or("(none)")
            .to_string()
    }) {
        let fix = s
            .closes
            .iter()
            .find(|v| v.pointer("/diagnosis/code").and_then(Value::as_str) == Some(code.as_str()))
            .and_then(|v| v.pointer("/diagnosis/fix"))
            .and_then(Value::as_str);
        let _ = writeln!(o, "  {c:>6} {:>5.1}%  {code}", pct(c));
        if let Some(fix) = fix {
            let _ = writeln!(o, "                 fix: {fix}");
        }
    }

    let _ = writeln!(o, "\nby side and how:");
    for (k, c) in count_by(&s.closes, |v| {
        format!(
            "closed by {} ({})",
            str_of(v, "closed_by"),
            str_of(v, "how")
        )
    }) {
        let _ = writeln!(o, "  {c:>6} {:>5.1}%  {k}", pct(c));
    }

    let _ = writeln!(o, "\nby closing process:");
    for (k, c) in count_by(&s.closes, |v| match v.get("pid").and_then(Value::as_u64) {
        Some(pid) => format!(
            "{} (pid {pid}) {}",
            str_of(v, "comm"),
            v.get("exe").and_then(Value::as_str).unwrap_or("")
        ),
        None => "(no local process)".into(),
    })
    .into_iter()
    .take(10)
    {
        let _ = writeln!(o, "  {c:>6} {:>5.1}%  {}", pct(c), k.trim_end());
    }

    let _ = writeln!(o, "\ntop closing user stacks:");
    let stacks = count_by(&s.closes, |v| {
        v.get("user_stack")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(frame_key)
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    });
    for (stack, c) in stacks.into_iter().filter(|(k, _)| !k.is_empty()).take(top) {
        let _ = writeln!(o, "  {c:>6} {:>5.1}%", pct(c));
        for frame in stack.lines() {
            let _ = writeln!(o, "           {frame}");
        }
    }

    let mut life: Vec<f64> = s
        .closes
        .iter()
        .filter_map(|v| v.get("ms_after_upgrade").and_then(Value::as_f64))
        .collect();
    life.sort_by(f64::total_cmp);
    if !life.is_empty() {
        let _ = writeln!(
            o,
            "\nlifetime after the 101 (ms): p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}",
            percentile(&life, 50.0),
            percentile(&life, 90.0),
            percentile(&life, 99.0),
            life[life.len() - 1]
        );
    }

    let per_minute = count_by(&s.closes, |v| match ts(v) {
        Some(t) => humantime::format_rfc3339_seconds(t).to_string()[..16].to_string(),
        None => "(no time)".into(),
    });
    let mut minutes: Vec<(String, usize)> = per_minute;
    minutes.sort();
    if !minutes.is_empty() {
        let _ = writeln!(o, "\nper minute (UTC):");
        let most = minutes.iter().map(|m| m.1).max().unwrap_or(1).max(1);
        for (m, c) in minutes {
            let bar = "#".repeat((c * 40).div_ceil(most));
            let _ = writeln!(o, "  {m}  {c:>6} {bar}");
        }
    }

    if !s.malformed.is_empty() {
        let _ = writeln!(o, "\nmalformed lines (skipped):");
        for (file, line, why) in s.malformed.iter().take(20) {
            let _ = writeln!(o, "  {file}:{line}: {why}");
        }
        if s.malformed.len() > 20 {
            let _ = writeln!(o, "  ... and {} more", s.malformed.len() - 20);
        }
    }
    o
}
