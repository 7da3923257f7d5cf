//! The enrich stage's product. The stage itself (the process table,
//! symbolizer, unwinder: /proc and root) is `wstrace::enrich`; what it
//! makes is here, so that diagnose, output and report need nothing of it.
use std::sync::Arc;
use std::time::SystemTime;

use crate::model::{
    CloseReport, Crash, Direction, Frame, PeerProcess, ProcInfo, ProcessEnd, UserWalk,
};
use crate::protocol::{http::RequestHead, wsframe::CloseFrame};

/// A close report with everything resolved that the matcher does not know:
/// wall-clock time, the closing process's description, symbolized stacks,
/// the parsed (redacted) request and close frames, idle time and the peer.
pub struct Enriched<'a> {
    pub report: &'a CloseReport,
    pub ts: SystemTime,
    pub exe: Option<String>,
    /// The closing process: command line (redacted), cgroup, container.
    pub process: ProcInfo,
    /// This host's name (fleet logs).
    pub host: &'a str,
    /// Innermost first, the tracer's own frames left out; shared (a
    /// distinct kernel stack is symbolized once).
    pub kernel_stack: Arc<[Frame]>,
    /// Innermost first, inlined functions as frames of their own; shared
    /// with the symbolizer's cache (identical stacks are one allocation).
    pub user_stack: Arc<[Frame]>,
    /// The kernel could not walk that stack: its errno (e.g. EFAULT for a
    /// task without a user address space); the stack is empty then.
    pub kernel_stack_errno: Option<i64>,
    pub user_stack_errno: Option<i64>,
    pub user_walk: UserWalk,
    /// Already redacted.
    pub request: Option<RequestHead>,
    pub frames: Vec<(Direction, CloseFrame)>,
    pub idle_ms: Option<u64>,
    pub peer: Option<PeerProcess>,
    /// How the closing process ended, when it closed at its exit.
    pub ending: Option<ProcessEnd>,
    /// Where it crashed, when a crash ended it and the kernel saw the
    /// crashing thread.
    pub crash: Option<Crash>,
}
