//! Rendering close reports: `text` for people at a terminal, `json` for
//! machines (one object per line), `logfile` for `--output`, `metrics` for
//! Prometheus.
pub mod json;
pub mod logfile;
pub mod metrics;
pub mod text;
pub mod view;

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
