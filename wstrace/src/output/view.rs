//! The enriched report every printer reads: a `CloseReport` with the
//! stacks symbolized, the request and frames parsed, the process described
//! and the diagnosis made.
use std::time::SystemTime;

use crate::diagnose::Diagnosis;
use crate::protocol::{http::RequestHead, wsframe::CloseFrame};
use crate::model::{CloseReport, Direction, PeerProcess, ProcInfo, UserWalk};

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

/// RFC 3339 in UTC with microseconds, as both outputs print it.
pub fn rfc3339(ts: SystemTime) -> String {
    humantime::format_rfc3339_micros(ts).to_string()
}
