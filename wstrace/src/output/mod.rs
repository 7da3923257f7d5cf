//! Rendering close reports: `text` for people at a terminal, `json` for
//! machines (one object per line), `logfile` for `--output`, `metrics` for
//! Prometheus.
pub mod json;
pub mod logfile;
pub mod metrics;
pub mod ready;
pub mod text;
pub mod view;

use std::io::{IsTerminal as _, Write as _};

use anyhow::{Context as _, Result};

pub use view::View;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A readable block per close: header line, closer, indented stacks.
    Text,
    /// One JSON object per line (stable keys; for log pipelines and scripts).
    Json,
}

pub fn render(format: Format, color: bool, v: &View<'_>) -> String {
    match format {
        Format::Text => text::render(v, color),
        Format::Json => json::render(v),
    }
}

/// `--color`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    /// Colour when stdout is a terminal.
    Auto,
    Always,
    Never,
}

/// Where reports go: stdout in the chosen format, `--output` as JSON lines,
/// and the metrics. One `emit` per report.
pub struct Outputs {
    format: Format,
    color: bool,
    /// `--output`; dropped (with one error message) when it fails.
    log: Option<logfile::LogFile>,
    metrics: Option<metrics::Metrics>,
    /// Reports printed so far.
    pub printed: u64,
}

impl Outputs {
    pub fn new(
        format: Format,
        color: ColorChoice,
        log: Option<logfile::LogFile>,
        metrics: Option<metrics::Metrics>,
    ) -> Self {
        let color = match color {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => std::io::stdout().is_terminal(),
        };
        Self {
            format,
            color,
            log,
            metrics,
            printed: 0,
        }
    }

    /// The probe set in use, for the `wstrace_probe_set` gauge.
    pub fn probe_set(&self, name: &str) {
        if let Some(m) = &self.metrics {
            m.probe_set
                .get_or_create(&metrics::ProbeLabels { probe: name.into() })
                .set(1);
        }
    }

    pub fn upgrade_seen(&self) {
        if let Some(m) = &self.metrics {
            m.upgrades.inc();
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
        if let Some(log) = &mut self.log
            && let Err(e) = log.append(&json::render(v))
        {
            eprintln!("wstrace: error: {e:#}; reporting on stdout only from now on");
            self.log = None;
        }
        let text = render(self.format, self.color, v);
        let mut out = std::io::stdout().lock();
        // One write per report, flushed: a pipe reader never sees half of one.
        let line = if text.ends_with('\n') {
            text
        } else {
            text + "\n"
        };
        out.write_all(line.as_bytes())
            .context("writing a report to stdout")?;
        out.flush().context("flushing stdout")?;
        self.printed += 1;
        Ok(())
    }

    /// Syncs `--output` to disk (at exit).
    pub fn finish(&mut self) {
        if let Some(log) = &mut self.log
            && let Err(e) = log.sync()
        {
            eprintln!("wstrace: error: {e:#}");
        }
    }
}
