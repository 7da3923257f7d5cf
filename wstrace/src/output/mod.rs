//! Rendering close reports: `text` for people at a terminal, `json` for
//! machines (one object per line).
pub mod json;
pub mod logfile;
pub mod text;

use std::time::SystemTime;

use crate::{
    diagnose::Diagnosis,
    events::Direction,
    http::RequestHead,
    matcher::CloseReport,
    peer::PeerProcess,
    procinfo::ProcInfo,
    unwind::{End, Walk},
    wsframe::CloseFrame,
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
    pub user_walk: UserWalk,
    /// Already redacted.
    pub request: Option<RequestHead>,
    pub frames: Vec<(Direction, CloseFrame)>,
    pub idle_ms: Option<u64>,
    pub peer: Option<PeerProcess>,
    pub diagnosis: Diagnosis,
}

/// How `user_stack` was walked (see `unwind::choose`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserWalk {
    /// `None` when there is no user stack (closed at process exit, no closer).
    pub walk: Option<Walk>,
    /// How the dwarf unwind ended (dwarf only).
    pub end: Option<End>,
    /// Why dwarf was asked for and not used.
    pub note: Option<String>,
}

impl UserWalk {
    /// `complete`, `truncated` or `stopped: <why>`, for dwarf walks.
    pub fn end_str(&self) -> Option<String> {
        self.end.as_ref().map(|e| match e {
            End::Complete => "complete".to_string(),
            End::Truncated => "truncated".to_string(),
            End::Stopped(why) => format!("stopped: {why}"),
        })
    }

    /// What the text output puts after "user stack".
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        match self.walk {
            Some(Walk::Dwarf) => parts.push("dwarf".into()),
            Some(Walk::FramePointers) => parts.push("frame pointers".into()),
            None => {}
        }
        match &self.end {
            Some(End::Truncated) => parts.push(
                "truncated: the stack copy ended before the outermost frame; raise --user-stack-size"
                    .into(),
            ),
            Some(End::Stopped(why)) => parts.push(format!("unwinding stopped: {why}")),
            Some(End::Complete) | None => {}
        }
        if let Some(n) = &self.note {
            parts.push(n.clone());
        }
        parts.join("; ")
    }
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
