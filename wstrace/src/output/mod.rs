//! Rendering close reports: `text` for people at a terminal, `json` for
//! machines (one object per line), `logfile` for `--output`, `metrics` for
//! Prometheus, `otlp` for an OpenTelemetry collector.
pub mod logfile;
pub mod metrics;
pub mod otlp;
pub mod ready;
pub mod safe_file;
// The rendering itself is pure: `wstrace-core`.
pub use wstrace_core::output::{
    ColorChoice, Format, View, escape, fold, frame, json, render, text, view,
};

use std::io::{IsTerminal as _, Write as _};

use anyhow::{Context as _, Result};

/// The `wstrace_lost_events_total` reason of lines `--output` could not
/// keep (more than the log holds in memory while it cannot write or rotate).
pub const LOG_UNWRITTEN: &str = "log_unwritten";

/// Where reports go: stdout in the chosen format, `--output` as JSON lines,
/// and the metrics. One `emit` per report.
pub struct Outputs {
    format: Format,
    color: bool,
    /// `--full-stacks`: text shows every user frame as JSON has it.
    full_stacks: bool,
    /// `--output`.
    log: Option<logfile::LogFile>,
    /// The log's lost lines already counted in the metrics.
    log_lost_counted: u64,
    metrics: Option<metrics::Metrics>,
    /// `--otlp`: log records and OTLP metrics.
    otlp: Option<otlp::Otlp>,
    /// Text reports held to fold storms into one summary (`None`: JSON, or
    /// `--no-fold`).
    folder: Option<fold::Folder>,
    /// Reports emitted so far (each connection counts, folded or not).
    pub printed: u64,
    /// Whole reports not yet written to stdout: written together when the
    /// daemon has taken what the reader had queued (`flush_stdout`), so a
    /// churn of 20,000 reports a second is not 20,000 writes.
    pending: String,
}

/// Stdout bytes held at most before they are written anyway.
const STDOUT_BATCH: usize = 64 * 1024;

impl Outputs {
    pub fn new(
        format: Format,
        color: ColorChoice,
        fold: bool,
        full_stacks: bool,
        log: Option<logfile::LogFile>,
        metrics: Option<metrics::Metrics>,
        otlp: Option<otlp::Otlp>,
    ) -> Self {
        let color = match color {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => std::io::stdout().is_terminal(),
        };
        Self {
            format,
            color,
            full_stacks,
            log,
            log_lost_counted: 0,
            metrics,
            otlp,
            folder: (fold && format == Format::Text).then(fold::Folder::default),
            printed: 0,
            pending: String::new(),
        }
    }

    /// The probe set in use, for the `wstrace_probe_set` gauge.
    pub fn probe_set(&self, name: &str) {
        if let Some(m) = &self.metrics {
            m.probe_set
                .get_or_create(&metrics::ProbeLabels { probe: name.into() })
                .set(1);
        }
        if let Some(o) = &self.otlp {
            o.probe_set(name);
        }
    }

    pub fn upgrade_seen(&self) {
        if let Some(m) = &self.metrics {
            m.upgrades.inc();
        }
        if let Some(o) = &self.otlp {
            o.upgrade_seen();
        }
    }

    pub fn events_lost(&self, reason: &str, n: u64) {
        if let Some(m) = &self.metrics {
            m.lost_events
                .get_or_create(&metrics::LostLabels {
                    reason: reason.into(),
                })
                .inc_by(n);
        }
        if let Some(o) = &self.otlp {
            o.events_lost(reason, n);
        }
    }

    /// Records the OTLP pipeline lost since the last look, into
    /// `wstrace_lost_events_total{reason="otlp"}`.
    fn count_otlp_lost(&mut self) {
        if let Some(n) = self.otlp.as_mut().map(otlp::Otlp::take_lost)
            && n > 0
        {
            self.events_lost(otlp::OTLP_LOST, n);
        }
    }

    /// `n` more closes without a stack copy of their own (`reason`:
    /// `budget` or `ring_full`), for `wstrace_stacks_elided_total`.
    pub fn stacks_elided(&self, reason: &str, n: u64) {
        if let Some(m) = &self.metrics {
            m.stacks_elided
                .get_or_create(&metrics::LostLabels {
                    reason: reason.into(),
                })
                .inc_by(n);
        }
        if let Some(o) = &self.otlp {
            o.stacks_elided(reason, n);
        }
    }

    /// One report to every output. Fails only when stdout cannot be written.
    pub fn emit(&mut self, v: &View<'_>) -> Result<()> {
        let r = v.report;
        if let Some(m) = &self.metrics {
            m.closes
                .get_or_create(&metrics::CloseLabels {
                    closed_by: r.closed_by.as_str().into(),
                    how: r.how.as_str().into(),
                    diagnosis: v.diagnosis.code.into(),
                })
                .inc();
            m.lifetime.observe(r.ms_after_upgrade() / 1000.0);
        }
        // Queued for the export thread: never waits for the collector.
        if let Some(o) = &self.otlp {
            o.emit(v);
        }
        self.count_otlp_lost();
        // A failed write is a warning: the log holds the line and retries
        // by itself, and says when writing works again.
        // JSON on stdout and in the log is the same line: rendered once.
        let json = (self.log.is_some() || self.format == Format::Json).then(|| json::render(v));
        if let Some(log) = &mut self.log
            && let Some(line) = &json
            && let Err(e) = log.append(line)
        {
            eprintln!("wstrace: warning: {e:#}");
        }
        if let Some(lost) = self.log.as_ref().map(|l| l.lost_total)
            && lost > self.log_lost_counted
        {
            self.events_lost(LOG_UNWRITTEN, lost - self.log_lost_counted);
            self.log_lost_counted = lost;
        }
        let text = match json {
            Some(line) if self.format == Format::Json => line,
            _ => render(self.format, self.color, self.full_stacks, v),
        };
        self.printed += 1;
        match &mut self.folder {
            Some(folder) => {
                let ready = folder.add(v, text, std::time::Instant::now());
                self.print_ready(ready)
            }
            None => {
                self.queue_print(text);
                Ok(())
            }
        }
    }

    /// Prints the folded storms (and lone reports) whose moment is over:
    /// the daemon calls this on its timer.
    pub fn tick(&mut self) -> Result<()> {
        self.count_otlp_lost();
        if let Some(folder) = &mut self.folder {
            let ready = folder.due(std::time::Instant::now());
            self.print_ready(ready)?;
        }
        self.flush_stdout()
    }

    fn print_ready(&mut self, ready: Vec<fold::Ready>) -> Result<()> {
        for r in ready {
            let text = match r {
                fold::Ready::One(text) => text,
                fold::Ready::Storm(s) => text::render_storm(&s, self.color),
            };
            self.queue_print(text);
        }
        Ok(())
    }

    /// Holds one report (or summary) for stdout, whole, with its newline.
    fn queue_print(&mut self, text: String) {
        if self.pending.is_empty() {
            self.pending = text;
        } else {
            self.pending.push_str(&text);
        }
        if !self.pending.ends_with('\n') {
            self.pending.push('\n');
        }
        if self.pending.len() >= STDOUT_BATCH
            && let Err(e) = self.flush_stdout()
        {
            // Said here; the daemon's next flush_stdout fails the run.
            eprintln!("wstrace: error: {e:#}");
        }
    }

    /// Writes the reports held for stdout in one write, flushed: a pipe
    /// reader never sees half of one. The daemon calls this after each
    /// batch of records and on its timer.
    pub fn flush_stdout(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let text = std::mem::take(&mut self.pending);
        print(&text)
    }

    /// Prints what is still folded and syncs `--output` to disk (at exit).
    pub fn finish(&mut self) {
        if let Some(folder) = &mut self.folder {
            let ready = folder.flush();
            if let Err(e) = self.print_ready(ready) {
                eprintln!("wstrace: error: {e:#}");
            }
        }
        if let Err(e) = self.flush_stdout() {
            eprintln!("wstrace: error: {e:#}");
        }
        if let Some(log) = &mut self.log
            && let Err(e) = log.sync()
        {
            eprintln!("wstrace: error: {e:#}");
        }
        if let Some(o) = &self.otlp {
            let lost = o.shutdown();
            if lost > 0 {
                eprintln!(
                    "wstrace: in total: {lost} report(s) not delivered to the OTLP collector (queue full, or refused or unreachable after retries) [{}]",
                    otlp::OTLP_LOST
                );
            }
        }
    }
}

/// Whole reports (each ending in a newline) to stdout in one write,
/// flushed: a pipe reader never sees half of one.
fn print(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .context("writing a report to stdout")?;
    out.flush().context("flushing stdout")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::{
        Diagnosis,
        front::{Front, Sender},
    };
    use crate::enrich::Enriched;
    use crate::model::{
        CloseReport, ClosedBy, Closer, Direction, Frame, FrameKind, How, Killer, PeerProcess,
        PeerSource, ProcInfo, ProcessEnd, Stacks, Upgrader, UserWalk,
    };
    use crate::protocol::{
        http::{HttpVersion, RequestHead},
        wsframe::CloseFrame,
    };

    /// Every character a hostile process or client could put in a field.
    const EVIL: &str =
        "a\x1b[2J\x1b]0;pwned\x07\r\n\x08\0\t\x7f\u{9b}\u{85}\u{202e}\u{2066}\u{200f}z";

    fn evil(field: &str) -> String {
        format!("{field}{EVIL}")
    }

    fn hostile_report() -> CloseReport {
        let stacks = Stacks {
            kernel: Ok(vec![1]),
            user: Ok(vec![2]),
            user_copy: None,
            dwarf: None,
            fate: Default::default(),
            shared: None,
            interp: Default::default(),
        };
        CloseReport {
            sk: 1,
            close_ts_ns: 2_000_000,
            upgrade_ts_ns: 1_000_000,
            local: "127.0.0.1:8080".parse().expect("addr"),
            remote: "127.0.0.1:40000".parse().expect("addr"),
            closed_by: ClosedBy::Local,
            how: How::Fin,
            closer: Some(Closer {
                pid: 10,
                tid: 11,
                comm: evil("comm"),
                at_exit: false,
                exit_code: None,
                stacks,
            }),
            upgrader: Upgrader {
                pid: 10,
                tid: 10,
                comm: evil("upgrader"),
            },
            bytes_sent_after_upgrade: 0,
            bytes_received_after_upgrade: 0,
            probe: wstrace_common::ProbeSet::Tracepoint,
            request_head: Vec::new(),
            close_frames: Vec::new(),
            heartbeat: Default::default(),
            jiffies_at_close: None,
            notes: vec![evil("note")],
            kernel_close: None,
            tls: None,
            side: crate::model::Side::Server,
            chain: Some(crate::model::Chain {
                id: "00000000000000aa".into(),
                hop: Some(0),
                hops: Some(2),
                upstream: Some(crate::model::HopRef {
                    hop: 1,
                    server: "127.0.0.1:1215".parse().expect("addr"),
                    client: "127.0.0.1:40001".parse().expect("addr"),
                    pid: Some(7),
                    comm: Some(evil("hopcomm")),
                }),
                downstream: None,
                linked_by: crate::model::LinkedBy::Handshake,
                root: Some(crate::model::ChainRoot { hop: 1, sk: 999 }),
            }),
        }
    }

    #[test]
    fn otlp_attributes_carry_the_chain() {
        use opentelemetry::logs::AnyValue;
        let r = hostile_report();
        let v = hostile_view(&r);
        let attrs = otlp::record::attributes(&v);
        let get = |k: &str| {
            attrs
                .iter()
                .find(|(key, _)| key.as_str() == k)
                .map(|(_, v)| v.clone())
        };
        let text = |v: &str| Some(AnyValue::String(v.to_string().into()));
        assert_eq!(get("wstrace.chain.id"), text("00000000000000aa"));
        assert_eq!(get("wstrace.chain.linked_by"), text("handshake"));
        assert_eq!(get("wstrace.chain.hop"), Some(AnyValue::Int(0)));
        assert_eq!(
            get("wstrace.chain.closed_first_hop"),
            Some(AnyValue::Int(1))
        );
    }

    fn hostile_view(r: &CloseReport) -> View<'_> {
        View {
            enriched: Enriched {
                report: r,
                ts: std::time::SystemTime::UNIX_EPOCH,
                exe: Some(evil("/tmp/exe")),
                process: ProcInfo {
                    exe: Some(evil("/tmp/exe")),
                    cmdline: Some(evil("cmdline")),
                    cgroup: Some(evil("cgroup")),
                    container_id: Some(evil("ctr")),
                    container: Some(std::sync::Arc::new(crate::model::Container {
                        id: evil("ctr"),
                        runtime: Some("podman"),
                        name: Some(evil("cname")),
                        image: Some(evil("cimage")),
                        pod_uid: None,
                        pod_name: Some(evil("cpod")),
                        namespace: Some(evil("cns")),
                        k8s_container: Some(evil("ck8s")),
                    })),
                },
                host: "host",
                kernel_stack: vec![Frame {
                    function: Some(evil("ksym")),
                    offset: Some(1),
                    kind: FrameKind::Kernel,
                    address: Some(1),
                    ..Frame::default()
                }]
                .into(),
                user_stack: vec![Frame {
                    function: Some(evil("usym")),
                    offset: Some(2),
                    module: Some(evil("/tmp/module")),
                    file: Some(evil("src.rs")),
                    line: Some(3),
                    address: Some(2),
                    ..Frame::default()
                }]
                .into(),
                kernel_stack_errno: None,
                user_stack_errno: None,
                user_walk: UserWalk::default(),
                request: Some(RequestHead {
                    method: evil("GET"),
                    target: evil("/path"),
                    version: HttpVersion::Other(evil("HTTP/9")),
                    headers: vec![
                        ("Host".into(), evil("host")),
                        ("User-Agent".into(), evil("ua")),
                        ("X-Other".into(), evil("other")),
                    ],
                    complete: true,
                }),
                frames: vec![(
                    Direction::Sent,
                    CloseFrame {
                        code: Some(1000),
                        reason: evil("reason"),
                    },
                )],
                idle_ms: None,
                peer: Some(PeerProcess {
                    pid: 12,
                    tid: Some(13),
                    comm: evil("peer"),
                    source: PeerSource::Kernel,
                    exe: None,
                }),
                ending: Some(ProcessEnd::Signaled {
                    signal: 9,
                    core_dumped: false,
                    killer: Some(Killer::Process {
                        pid: 14,
                        comm: evil("killer"),
                    }),
                }),
                crash: None,
            },
            diagnosis: Diagnosis {
                code: "unknown",
                message: evil("message"),
                fix: Some(evil("fix")),
                also: vec![crate::diagnose::Finding {
                    code: "http10_upgrade",
                    message: evil("also"),
                    fix: Some(evil("alsofix")),
                }],
                front: Some(Front {
                    kind: "proxy",
                    evidence: "forwarding_header",
                    detail: evil("detail"),
                    sender: Sender::OtherProxy(Some(evil("fwd"))),
                }),
                cause: None,
            },
        }
    }

    #[test]
    fn text_report_escapes_every_hostile_field() {
        let r = hostile_report();
        let v = hostile_view(&r);
        for color in [false, true] {
            let out = text::render(&v, color, true);
            // Colour is ours: strip our own SGR codes, nothing else may remain.
            let ours = out
                .replace("\x1b[0m", "")
                .replace("\x1b[1;31m", "")
                .replace("\x1b[1m", "")
                .replace("\x1b[33m", "")
                .replace("\x1b[2m", "");
            let lines: Vec<&str> = ours.lines().collect();
            for l in &lines {
                assert!(
                    !l.chars().any(escape::is_unsafe),
                    "raw control in {l:?}\n{out}"
                );
            }
            let shown = escape::text(EVIL).into_owned();
            for field in [
                "comm", "upgrader", "/tmp/exe", "cmdline", "ksym", "usym", "GET", "/path",
                "HTTP/9", "host", "ua", "peer", "message", "fix", "note", "also", "alsofix", "fwd",
                "detail", "cname", "cimage", "cpod", "cns", "ck8s", "hopcomm",
            ] {
                let want = format!("{field}{shown}");
                assert!(
                    lines.iter().any(|l| l.contains(&want)),
                    "{field} not shown escaped on one line:\n{ours}"
                );
            }
            assert!(ours.contains("\"reasona\\u{1b}[2J"), "{ours}");
            // A secondary finding's fix is shown under it.
            assert!(
                lines.iter().any(|l| l.starts_with("  also fix: alsofix")),
                "{ours}"
            );
            // The container id is cut to 12 bytes, escaped after the cut.
            assert!(ours.contains("podman ctra\\x1b[2J\\x1b]0;)"), "{ours}");
            assert!(ours.contains("\\u{202e}"), "{ours}");
        }
    }

    #[test]
    fn json_user_stack_rendered_once_is_the_same_line() {
        let r = hostile_report();
        let v = hostile_view(&r);
        let first = json::render(&v);
        // The same frames again (from the render cache): the same line,
        // still escaped; other frames with the same content: the same too.
        assert_eq!(json::render(&v), first);
        let mut copy = hostile_view(&r);
        copy.enriched.user_stack = v.user_stack.to_vec().into();
        assert_eq!(json::render(&copy), first);
        let back: serde_json::Value = serde_json::from_str(&first).expect("valid JSON");
        assert_eq!(back["user_stack"][0]["function"], evil("usym"));
        assert!(first.contains("usym") && !first.chars().any(escape::is_unsafe));
        // Another stack is its own.
        copy.enriched.user_stack = Vec::new().into();
        let none = json::render(&copy);
        let back: serde_json::Value = serde_json::from_str(&none).expect("valid JSON");
        assert_eq!(back["user_stack"], serde_json::json!([]));
    }

    #[test]
    fn a_chain_hop_after_the_first_close_is_a_short_story_escaped() {
        let r = hostile_report();
        let mut v = hostile_view(&r);
        v.diagnosis.code = "upstream_closed";
        v.diagnosis.cause = Some(crate::diagnose::chain::HopCause {
            hop: 1,
            pid: Some(7),
            comm: Some(evil("causecomm")),
            server: "127.0.0.1:1215".parse().expect("addr"),
            client: "127.0.0.1:40001".parse().expect("addr"),
            code: "http10_upgrade",
            message: evil("causemsg"),
            fix: Some(evil("causefix")),
            ms_before: 0.1,
            close_ts_ns: 1,
        });
        v.diagnosis.fix = Some(evil("causefix"));
        let out = text::render(&v, false, true);
        let lines: Vec<&str> = out.lines().collect();
        for l in &lines {
            assert!(!l.chars().any(escape::is_unsafe), "raw control in {l:?}");
        }
        // Header, why, fix, chain: the full report is the first close's.
        assert_eq!(lines.len(), 4, "{out}");
        assert!(
            lines[1].starts_with("  why:      upstream_closed: "),
            "{out}"
        );
        assert!(lines[2].starts_with("  fix:      causefix"), "{out}");
        assert!(
            lines[3].starts_with("  chain:    00000000000000aa hop 0/2 (linked by handshake): client 127.0.0.1:40000 ⇄ [upgrader"),
            "{out}"
        );
        assert!(lines[3].ends_with("— hop 1 closed first"), "{out}");
        let json = json::render(&v);
        assert!(!json.chars().any(escape::is_unsafe), "{json}");
        let back: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(back["diagnosis"]["cause"]["comm"], evil("causecomm"));
        assert_eq!(back["diagnosis"]["cause"]["ms_before"], 0.1);
        assert_eq!(back["chain"]["upstream"]["comm"], evil("hopcomm"));
        assert_eq!(back["chain"]["upstream"]["server"], "127.0.0.1:1215");
        assert_eq!(back["chain"]["closed_first_hop"], 1);
        assert_eq!(back["chain"]["linked_by"], "handshake");
    }

    #[test]
    fn json_report_escapes_c1_and_bidi() {
        let r = hostile_report();
        let v = hostile_view(&r);
        let out = json::render(&v);
        assert!(!out.chars().any(escape::is_unsafe), "{out}");
        assert!(out.contains(r#""comm":"comma\u001b[2J"#), "{out}");
        assert!(out.contains("\\u202e") && out.contains("\\u009b") && out.contains("\\u2066"));
        let back: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
        assert_eq!(back["comm"], evil("comm"));
        assert_eq!(back["exe"], evil("/tmp/exe"));
        assert_eq!(back["container"]["name"], evil("cname"));
        assert_eq!(back["container"]["image"], evil("cimage"));
        assert_eq!(back["k8s"]["pod"], evil("cpod"));
        assert_eq!(back["k8s"]["namespace"], evil("cns"));
        assert_eq!(back["request"]["target"], evil("/path"));
        assert_eq!(back["process_end"]["sent_by"]["comm"], evil("killer"));
        assert_eq!(back["process_end"]["signal"], "SIGKILL");
        assert_eq!(back["diagnosis"]["also"][0]["message"], evil("also"));
    }
}
