//! `wstrace report FILE...`: post-mortem summary of recorded JSON lines
//! (`--output` logs, rotated files, gzip'd or not): closes per diagnosis and
//! per closer, the most common closing user stacks, lifetime percentiles and
//! a per-minute time line. Malformed lines are counted and named by file and
//! line number, never fatal.
use std::{
    io::{BufRead as _, BufReader, Read},
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::{Context as _, Result};

pub mod html;
pub mod summary;

use summary::{Filters, Summary, render};

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
        let page = crate::report::html::page(&s, args.top)?;
        std::fs::write(out, page).with_context(|| format!("writing {}", out.display()))?;
        eprintln!("wstrace report: wrote {}", out.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::summary::*;
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
