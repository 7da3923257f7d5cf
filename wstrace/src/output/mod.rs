//! Rendering close reports: `text` for people at a terminal, `json` for
//! machines (one object per line).
pub mod json;
pub mod text;

use std::time::SystemTime;

use crate::matcher::CloseReport;

/// A report with everything resolved that the matcher does not know:
/// wall-clock time, executable paths and symbolized stacks.
pub struct View<'a> {
    pub report: &'a CloseReport,
    pub ts: SystemTime,
    pub exe: Option<String>,
    pub kernel_stack: Vec<String>,
    pub user_stack: Vec<String>,
}

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

/// RFC 3339 in UTC with microseconds, as both outputs print it.
pub fn rfc3339(ts: SystemTime) -> String {
    humantime::format_rfc3339_micros(ts).to_string()
}
