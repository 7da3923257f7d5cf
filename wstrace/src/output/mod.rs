//! Rendering close reports: `text` for people at a terminal, `json` for
//! machines (one object per line).
pub mod json;
pub mod logfile;
pub mod text;

use std::time::SystemTime;

use crate::{
    diagnose::Diagnosis, events::Direction, http::RequestHead, matcher::CloseReport,
    peer::PeerProcess, procinfo::ProcInfo, wsframe::CloseFrame,
};

/// A report with everything resolved that the matcher does not know:
/// wall-clock time, executable paths, symbolized stacks, the parsed request
/// and frames, the peer process and the diagnosis.
pub struct View<'a> {
    pub report: &'a CloseReport,
    pub ts: SystemTime,
    pub exe: Option<String>,
    /// The closing process: command line (redacted), cgroup, container.
    pub process: ProcInfo,
    /// This host's name (fleet logs).
    pub host: &'a str,
    pub kernel_stack: Vec<String>,
    pub user_stack: Vec<String>,
    /// Already redacted.
    pub request: Option<RequestHead>,
    pub frames: Vec<(Direction, CloseFrame)>,
    pub idle_ms: Option<u64>,
    pub peer: Option<PeerProcess>,
    pub diagnosis: Diagnosis,
}

pub fn direction_name(d: Direction) -> &'static str {
    match d {
        Direction::Sent => "sent",
        Direction::Received => "received",
    }
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
