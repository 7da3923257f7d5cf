//! `wstrace report FILE...`: post-mortem summary of recorded JSON lines
//! (`--output` logs, rotated files, gzip'd or not): closes per diagnosis and
//! per closer, the most common closing user stacks, lifetime percentiles and
//! a per-minute time line. Malformed lines are counted and named by file and
//! line number, never fatal.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{BufRead as _, BufReader, Read},
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::{Context as _, Result};
use serde_json::Value;

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// Recorded JSON-lines files (from --output or --format json); .gz is read too.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Only closes at or after this time (RFC 3339, e.g. 2026-11-24T03:00:00Z).
    #[arg(long, value_parser = parse_time)]
    pub since: Option<SystemTime>,
    /// Only closes before this time (RFC 3339).
    #[arg(long, value_parser = parse_time)]
    pub until: Option<SystemTime>,
    /// Only this local port.
    #[arg(long)]
    pub port: Option<u16>,
    /// Only closes by this process id.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Most common closing stacks to show.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    /// Also write one self-contained HTML page: flame graph of the close
    /// stacks, lifetime histogram, this summary.
    #[arg(long, value_name = "OUT")]
    pub html: Option<PathBuf>,
}

fn parse_time(s: &str) -> Result<SystemTime, String> {
    humantime::parse_rfc3339_weak(s)
        .map_err(|e| format!("{s:?}: {e} (want e.g. 2026-11-24T03:00:00Z)"))
}

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

fn read_file(path: &Path) -> Result<String> {
    let mut raw = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut raw))
        .with_context(|| format!("reading {}", path.display()))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut text = Vec::new();
        // A truncated .gz (a crash while compressing) still yields its start.
        let mut r = BufReader::new(flate2::read::MultiGzDecoder::new(&raw[..]));
        let mut buf = Vec::new();
        while let Ok(n) = r.read_until(b'\n', &mut buf) {
            if n == 0 {
                break;
            }
            text.append(&mut buf);
        }
        raw = text;
    }
    Ok(String::from_utf8_lossy(&raw).into_owned())
}

pub fn run(args: &ReportArgs) -> Result<()> {
    let f = Filters {
        since: args.since,
        until: args.until,
        port: args.port,
        pid: args.pid,
    };
    let mut s = Summary::default();
    for path in &args.files {
        let text = read_file(path)?;
        s.add_text(&path.display().to_string(), &text, &f);
    }
    print!("{}", render(&s, args.top));
    if let Some(out) = &args.html {
        let page = crate::report_html::page(&s, args.top)?;
        std::fs::write(out, page).with_context(|| format!("writing {}", out.display()))?;
        eprintln!("wstrace report: wrote {}", out.display());
    }
    Ok(())
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

fn percentile(sorted: &[f64], p: f64) -> f64 {
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

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/report");

    fn none() -> Filters {
        Filters {
            since: None,
            until: None,
            port: None,
            pid: None,
        }
    }

    fn summary(f: &Filters) -> Summary {
        let mut s = Summary::default();
        let path = Path::new(FIXTURES).join("sample.jsonl");
        let text = read_file(&path).expect("fixture");
        s.add_text("sample.jsonl", &text, f);
        s
    }

    /// Golden: the committed sample log renders exactly as committed.
    /// Regenerate with `WSTRACE_BLESS=1 cargo test -p wstrace report`.
    #[test]
    fn golden_sample() {
        let out = render(&summary(&none()), 5);
        let golden = Path::new(FIXTURES).join("sample.report.txt");
        if std::env::var_os("WSTRACE_BLESS").is_some() {
            std::fs::write(&golden, &out).expect("bless");
        }
        let want = std::fs::read_to_string(&golden).expect("golden file");
        assert_eq!(
            out, want,
            "report output changed; if intended, rerun with WSTRACE_BLESS=1"
        );
    }

    #[test]
    fn malformed_and_truncated_lines_are_counted_with_line_numbers() {
        let s = summary(&none());
        let lines: Vec<u64> = s.malformed.iter().map(|m| m.1).collect();
        assert_eq!(lines, [4, 8], "{:?}", s.malformed);
        assert_eq!(s.closes.len(), 6);
    }

    #[test]
    fn filters() {
        let by_port = summary(&Filters {
            port: Some(8080),
            ..none()
        });
        assert_eq!(by_port.closes.len(), 1);
        let by_pid = summary(&Filters {
            pid: Some(4242),
            ..none()
        });
        assert_eq!(by_pid.closes.len(), 4);
        let since = parse_time("2026-11-24T03:01:00Z").ok();
        let late = summary(&Filters { since, ..none() });
        assert_eq!(late.closes.len(), 2);
        let until = parse_time("2026-11-24T03:01:00Z").ok();
        let early = summary(&Filters { until, ..none() });
        assert_eq!(early.closes.len(), 4);
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn gzip_and_truncated_gzip() {
        use std::io::Write as _;
        let text = read_file(&Path::new(FIXTURES).join("sample.jsonl")).expect("fixture");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(text.as_bytes()).expect("gz");
        let bytes = gz.finish().expect("gz");
        let d = std::env::temp_dir().join(format!("wstrace-report-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("dir");
        std::fs::write(d.join("a.jsonl.gz"), &bytes).expect("write");
        assert_eq!(read_file(&d.join("a.jsonl.gz")).expect("read"), text);
        std::fs::write(d.join("b.jsonl.gz"), &bytes[..bytes.len() / 2]).expect("write");
        let partial = read_file(&d.join("b.jsonl.gz")).expect("read what is there");
        assert!(text.starts_with(&partial));
    }

    #[test]
    fn frame_keys_drop_offsets_and_lines() {
        assert_eq!(
            frame_key("__GI___close+0x3a (/lib/libc.so.6) at ./io/close.c:27"),
            "__GI___close (/lib/libc.so.6)"
        );
        assert_eq!(frame_key("tcp_close+0x1f"), "tcp_close");
        assert_eq!(
            frame_key("f [inlined] (/bin/x) at a.rs:3"),
            "f [inlined] (/bin/x)"
        );
        assert_eq!(frame_key("[unknown]"), "[unknown]");
    }

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 51.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert!(percentile(&[], 50.0).is_nan());
    }
}
