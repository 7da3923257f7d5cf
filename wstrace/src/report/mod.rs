//! `wstrace report FILE...`: post-mortem summary of recorded JSON lines
//! (`--output` logs, rotated files, gzip'd or not, from one host or many):
//! closes per diagnosis with the fix, per closing program, pid or host, the
//! most common closing user stacks, lifetime percentiles and a per-minute
//! time line; as text or JSON, and as one HTML page. Malformed lines are
//! counted and named by file and line number, never fatal.
//!
//! Input is streamed (gzip too) with a cap per line, so memory stays flat
//! whatever the files hold; only regular files are read. `--html` is
//! written as `output::safe_file` describes (no symlink followed, only our
//! own regular file, mode 0640).
use std::{
    io::{BufRead, BufReader, Write as _},
    os::unix::fs::FileTypeExt as _,
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::{Context as _, Result, bail};
use rustix::fs::{Mode, OFlags};

use crate::output::{escape::text as esc, safe_file};

// Counting, chains and the page are pure: `wstrace-core`.
pub use wstrace_core::report::{html, summary};

use summary::{Filters, GroupBy, Summary, render, render_json};

/// What `wstrace report` prints on stdout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SummaryFormat {
    #[default]
    Text,
    /// One JSON object: the summary itself, for other tools.
    Json,
}

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
    /// Group the closers by executable, by process, or by host (the
    /// reports' `host`, else the log's file name).
    #[arg(long, value_enum, default_value_t = GroupBy::Program)]
    pub by: GroupBy,
    /// The summary on stdout as text or as one JSON object.
    #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
    pub format: SummaryFormat,
    /// Also write one self-contained HTML page: each diagnosis with its fix
    /// and an example, closes per minute, closing programs, hosts, a flame
    /// graph of the close stacks and a sortable, filterable table of closes.
    #[arg(long, value_name = "OUT")]
    pub html: Option<PathBuf>,
}

fn parse_time(s: &str) -> Result<SystemTime, String> {
    humantime::parse_rfc3339_weak(s)
        .map_err(|e| format!("{s:?}: {e} (want e.g. 2026-11-24T03:00:00Z)"))
}

/// Opens a recorded log for reading: a regular file only, opened
/// O_NONBLOCK so that a FIFO (or a device such as /dev/zero) is refused
/// at once instead of hanging or streaming forever.
fn open_input(path: &Path) -> Result<std::fs::File> {
    let shown = esc(&path.to_string_lossy()).into_owned();
    let file = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map(std::fs::File::from)
    .map_err(std::io::Error::from)
    .with_context(|| format!("cannot read {shown}"))?;
    let kind = file
        .metadata()
        .with_context(|| format!("cannot stat {shown}"))?
        .file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        bail!(
            "{shown} is {what}, not a regular file: `wstrace report` reads recorded log files; save the data to a file first"
        );
    }
    Ok(file)
}

/// The lines of `path`, gunzipped as they are read when the file starts
/// with the gzip magic (several concatenated members are read in turn).
fn open_lines(path: &Path) -> Result<Box<dyn BufRead>> {
    let shown = esc(&path.to_string_lossy()).into_owned();
    let mut raw = BufReader::with_capacity(64 * 1024, open_input(path)?);
    let magic = raw
        .fill_buf()
        .with_context(|| format!("cannot read {shown}"))?
        .starts_with(&[0x1f, 0x8b]);
    Ok(if magic {
        Box::new(BufReader::with_capacity(
            64 * 1024,
            flate2::bufread::MultiGzDecoder::new(raw),
        ))
    } else {
        Box::new(raw)
    })
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
        let lines = open_lines(path)?;
        s.add_reader(&path.display().to_string(), lines, &f);
    }
    match args.format {
        SummaryFormat::Text => print!("{}", render(&s, args.top, args.by)),
        SummaryFormat::Json => print!("{}", render_json(&s, args.top, args.by)),
    }
    if let Some(out) = &args.html {
        let page = crate::report::html::page(&s);
        let shown = esc(&out.to_string_lossy()).into_owned();
        let mut file = safe_file::open_write(out, false)
            .map_err(|e| anyhow::anyhow!("cannot write the HTML report: {e:#}"))?;
        file.write_all(page.as_bytes())
            .with_context(|| format!("writing {shown}"))?;
        eprintln!("wstrace report: wrote {shown}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::summary::*;
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/report");

    fn summary_of(path: &Path, f: &Filters) -> Summary {
        let mut s = Summary::default();
        s.add_reader("sample.jsonl", open_lines(path).expect("open"), f);
        s
    }

    fn summary(f: &Filters) -> Summary {
        summary_of(&Path::new(FIXTURES).join("sample.jsonl"), f)
    }

    fn dir(name: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let d = std::env::temp_dir().join(format!("wstrace-report-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("dir");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        d
    }

    /// Golden: the committed sample log renders exactly as committed.
    /// Regenerate with `WSTRACE_BLESS=1 cargo test -p wstrace report`.
    #[test]
    fn golden_sample() {
        let out = render(&summary(&Filters::default()), 5, GroupBy::Program);
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

    /// The fleet sample (see `make_fleet.py`), its files named relative to
    /// the fixtures so the goldens do not depend on the checkout's path.
    fn fleet(f: &Filters) -> Summary {
        let mut s = Summary::default();
        for name in [
            "fleet/web-1.jsonl",
            "fleet/web-2.jsonl",
            "fleet/edge-3/closes.jsonl",
        ] {
            let lines = open_lines(&Path::new(FIXTURES).join(name)).expect("open");
            s.add_reader(name, lines, f);
        }
        s
    }

    /// `out` equals the committed golden `name` (rewritten with
    /// `WSTRACE_BLESS=1`).
    fn golden(name: &str, out: &str) {
        let golden = Path::new(FIXTURES).join(name);
        if std::env::var_os("WSTRACE_BLESS").is_some() {
            std::fs::write(&golden, out).expect("bless");
        }
        let want = std::fs::read_to_string(&golden).expect("golden file");
        assert!(
            out == want,
            "{name} changed; if intended, rerun with WSTRACE_BLESS=1 cargo test -p wstrace report"
        );
    }

    /// Golden: the fleet as text by program, pid and host, as JSON and as
    /// HTML, exactly as committed.
    #[test]
    fn golden_fleet() {
        let s = fleet(&Filters::default());
        golden("fleet.by-program.txt", &render(&s, 5, GroupBy::Program));
        golden("fleet.by-pid.txt", &render(&s, 5, GroupBy::Pid));
        golden("fleet.by-host.txt", &render(&s, 5, GroupBy::Host));
        golden("fleet.summary.json", &render_json(&s, 5, GroupBy::Program));
        golden("fleet.report.html", &html::page(&s));
    }

    #[test]
    fn fleet_groups_by_program_host_and_pid() {
        let s = fleet(&Filters::default());
        assert_eq!(s.closes, 40);
        assert_eq!(s.malformed, 2);
        let programs: Vec<(&str, u64, usize)> = s
            .by_program
            .sorted()
            .into_iter()
            .map(|(k, g)| (k, g.closes, g.pids()))
            .collect();
        assert_eq!(
            programs[..3],
            [
                ("/usr/bin/php8.2", 18, 6),
                ("/usr/sbin/nginx", 8, 4),
                ("/usr/bin/node", 6, 2)
            ]
        );
        let hosts: Vec<(&str, u64)> = s
            .by_host
            .sorted()
            .into_iter()
            .map(|(k, g)| (k, g.closes))
            .collect();
        // edge-3's agent writes no `host`: its file names it.
        assert_eq!(
            hosts,
            [("web-1", 16), ("web-2", 14), ("edge-3/closes.jsonl", 10)]
        );
        let top = s.by_diagnosis.sorted()[0];
        assert_eq!(top, ("http10_upgrade", 16));
        let ex = &s.examples["http10_upgrade"];
        assert_eq!(ex.request_line.as_deref(), Some("GET /ws HTTP/1.0"));
        // The text names every group on one line, escaped.
        let text = render(&s, 5, GroupBy::Program);
        for l in text.lines() {
            assert!(!l.chars().any(crate::output::escape::is_unsafe), "{l:?}");
        }
        assert!(text.contains("/usr/bin/php8.2  (php, 6 pids)"), "{text}");
        assert!(text.contains("ws-gw\\x1b[31m\\x0d"), "{text}");
        // The JSON is one object that decodes to the same numbers.
        let v: serde_json::Value =
            serde_json::from_str(&render_json(&s, 5, GroupBy::Host)).expect("JSON");
        assert_eq!(v["closes"], 40);
        assert_eq!(v["by"], "host");
        assert_eq!(v["groups"][0]["key"], "web-1");
        assert_eq!(v["by_diagnosis"][0]["code"], "http10_upgrade");
        assert_eq!(
            v["by_diagnosis"][0]["example"]["request_line"],
            "GET /ws HTTP/1.0"
        );
        assert_eq!(
            v["per_minute"].as_array().map(|a| a
                .iter()
                .map(|m| m["closes"].as_u64().unwrap_or(0))
                .sum::<u64>()),
            Some(40)
        );
    }

    /// The fleet's hostile values (markup in a frame, ESC and CR in a comm,
    /// a bidi override in an exe, an OSC sequence in a close reason) leave
    /// no markup and no raw control character in the page.
    #[test]
    fn hostile_fleet_values_are_inert_in_the_page() {
        let page = html::page(&fleet(&Filters::default()));
        assert_eq!(
            page.matches("<script").count(),
            1,
            "only the page's own script"
        );
        assert!(!page.contains("<script>alert"));
        assert!(page.contains("drop&lt;/title&gt;&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains("reason &quot;server restart \\x1b]0;pwned\\x07&quot;"));
        assert!(page.contains("ws-gw\\x1b[31m\\x0d"));
        assert!(page.contains("ws-gw\\u{202e}exe.sh"));
        let raw: Vec<char> = page
            .chars()
            .filter(|&c| c != '\n' && crate::output::escape::is_unsafe(c))
            .collect();
        assert!(raw.is_empty(), "{raw:?}");
    }

    #[test]
    fn source_hosts_drop_rotation_and_gzip_suffixes() {
        assert_eq!(
            summary::source_host("/srv/logs/web1/closes.jsonl.2.gz"),
            "web1/closes.jsonl"
        );
        assert_eq!(
            summary::source_host("web1/closes.jsonl"),
            "web1/closes.jsonl"
        );
        assert_eq!(summary::source_host("closes.jsonl"), "closes.jsonl");
        assert_eq!(summary::source_host("closes.jsonl.gz"), "closes.jsonl");
        assert_eq!(summary::source_host("v1.2"), "v1");
    }

    #[test]
    fn malformed_and_truncated_lines_are_counted_with_line_numbers() {
        let s = summary(&Filters::default());
        let lines: Vec<u64> = s.malformed_first.iter().map(|m| m.1).collect();
        assert_eq!(lines, [4, 8], "{:?}", s.malformed_first);
        assert_eq!(s.malformed, 2);
        assert_eq!(s.closes, 6);
    }

    #[test]
    fn filters() {
        let by_port = summary(&Filters {
            port: Some(8080),
            ..Filters::default()
        });
        assert_eq!(by_port.closes, 1);
        let by_pid = summary(&Filters {
            pid: Some(4242),
            ..Filters::default()
        });
        assert_eq!(by_pid.closes, 4);
        let since = parse_time("2026-11-24T03:01:00Z").ok();
        let late = summary(&Filters {
            since,
            ..Filters::default()
        });
        assert_eq!(late.closes, 2);
        let until = parse_time("2026-11-24T03:01:00Z").ok();
        let early = summary(&Filters {
            until,
            ..Filters::default()
        });
        assert_eq!(early.closes, 4);
        assert!(parse_time("yesterday").is_err());
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(data).expect("gz");
        gz.finish().expect("gz")
    }

    #[test]
    fn gzip_concatenated_gzip_and_truncated_gzip() {
        let sample = Path::new(FIXTURES).join("sample.jsonl");
        let text = std::fs::read(&sample).expect("fixture");
        let plain = render(
            &summary_of(&sample, &Filters::default()),
            5,
            GroupBy::Program,
        );
        let d = dir("gz");
        let bytes = gzip(&text);
        std::fs::write(d.join("a.jsonl.gz"), &bytes).expect("write");
        assert_eq!(
            render(
                &summary_of(&d.join("a.jsonl.gz"), &Filters::default()),
                5,
                GroupBy::Program
            ),
            plain
        );
        // Two members (`cat a.gz b.gz`): both are read.
        let (head, tail) = text.split_at(text.len() / 2);
        let mut two = gzip(head);
        two.extend(gzip(tail));
        std::fs::write(d.join("two.jsonl.gz"), &two).expect("write");
        assert_eq!(
            render(
                &summary_of(&d.join("two.jsonl.gz"), &Filters::default()),
                5,
                GroupBy::Program
            ),
            plain
        );
        // Cut in the middle (a crash while compressing): the start counts,
        // and the cut is named.
        std::fs::write(d.join("b.jsonl.gz"), &bytes[..bytes.len() / 2]).expect("write");
        let s = summary_of(&d.join("b.jsonl.gz"), &Filters::default());
        assert!(s.closes < 6, "{}", s.closes);
        assert!(
            s.malformed_first
                .iter()
                .any(|m| m.2.contains("the input ends early")),
            "{:?}",
            s.malformed_first
        );
    }

    #[test]
    fn fifos_devices_and_directories_are_refused_at_once() {
        let d = dir("fifo");
        let fifo = d.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: a valid C string; mkfifo only creates the node.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        let start = std::time::Instant::now();
        for (path, what) in [
            (fifo.as_path(), "is a FIFO"),
            (Path::new("/dev/zero"), "is a device"),
            (d.as_path(), "is a directory"),
        ] {
            let e = open_lines(path).err().expect("refused");
            let msg = format!("{e:#}");
            assert!(
                msg.contains(what) && msg.contains("not a regular file"),
                "{msg}"
            );
            assert!(!msg.contains("  "), "one space between words: {msg}");
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn html_output_refuses_a_symlink() {
        let d = dir("html");
        let victim = d.join("victim");
        std::fs::write(&victim, "precious\n").expect("write");
        std::os::unix::fs::symlink(&victim, d.join("out.html")).expect("symlink");
        let args = ReportArgs {
            files: vec![Path::new(FIXTURES).join("sample.jsonl")],
            since: None,
            until: None,
            port: None,
            pid: None,
            top: 5,
            by: GroupBy::Program,
            format: SummaryFormat::Text,
            html: Some(d.join("out.html")),
        };
        let msg = format!("{:#}", run(&args).expect_err("refused"));
        assert!(
            msg.contains("cannot write the HTML report") && msg.contains("symbolic link"),
            "{msg}"
        );
        assert_eq!(
            std::fs::read_to_string(&victim).expect("read"),
            "precious\n"
        );
    }

    /// `objects.jsonl` is a close logged with frame objects (the shape since
    /// frames became data), with other offsets and addresses than the
    /// string frames of `sample.jsonl`'s php closes: read together, the
    /// two shapes count as one closing stack and one flame-graph path.
    #[test]
    fn frame_objects_and_old_string_frames_group_together() {
        let f = Filters::default();
        let mut s = summary(&f);
        let objects = Path::new(FIXTURES).join("objects.jsonl");
        s.add_reader("objects.jsonl", open_lines(&objects).expect("open"), &f);
        assert_eq!((s.closes, s.malformed), (7, 2));
        assert_eq!(
            s.stacks.sorted()[0],
            (
                "__GI___close (/usr/lib/x86_64-linux-gnu/libc.so.6)\nswoole_close_fd (/usr/lib/php/swoole.so)",
                5
            )
        );
        let php: Vec<(&FlamePath, u64)> =
            s.folded.paths().filter(|(p, _)| p.comm == "php").collect();
        assert_eq!(php.len(), 1, "{php:#?}");
        assert_eq!(php[0].1, 5);
        let functions: Vec<&str> = php[0]
            .0
            .frames
            .iter()
            .map(|f| f.function.as_deref().unwrap_or("?"))
            .collect();
        assert_eq!(
            functions,
            [
                "swoole_close_fd",
                "__GI___close",
                "tcp_close",
                "__tcp_close"
            ]
        );
        // The object line alone reports as its string twin does.
        let mut alone = Summary::default();
        alone.add_reader("objects.jsonl", open_lines(&objects).expect("open"), &f);
        let text = render(&alone, 5, GroupBy::Program);
        assert!(
            text.contains(
                "__GI___close (/usr/lib/x86_64-linux-gnu/libc.so.6)\n           swoole_close_fd (/usr/lib/php/swoole.so)"
            ),
            "{text}"
        );
        assert!(html::page(&alone).contains("data-name=\"__tcp_close\""));
    }

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 51.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert!(percentile(&[], 50.0).is_nan());
    }
}
