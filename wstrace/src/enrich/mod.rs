//! What the kernel event does not carry: which program a pid is (the
//! process table), symbolized and unwound stacks, the process at the other
//! end, idle time in ms, wall-clock time. [`Enricher`] is the stage: events
//! go through [`Enricher::observe`] as they are read (while the processes
//! live), reports through [`Enricher::resolve`] when the matcher completes
//! them.
pub mod clock;
pub mod container;
pub mod gotls;
pub mod hz;
pub mod maps;
pub mod node;
pub mod peer;
pub mod perf_map;
pub mod php;
pub mod process;
mod procmem;
pub mod python;
pub mod stack_cache;
pub mod symbolize;
pub mod tls;
pub mod unwind;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::attach::ServerSet;
use wstrace_common::EventKind;

use crate::model::{
    CloseReport, Crash, Event, Frame, Killer, PeerExe, PeerProcess, PeerSource, Ports, ProcInfo,
    ProcessEnd, SharedStack, SignalSent, Unwound, UserWalk, Walk,
};
use crate::protocol::{http, wsframe};
use crate::redact::Redactor;
use clock::Clock;

/// What one scan for listeners on the traced ports found.
#[derive(Debug, Default)]
pub struct ListenerScan {
    /// Processes seen listening for the first time: (pid, comm).
    pub new: Vec<(u32, String)>,
    /// Processes that exited and were forgotten.
    pub exited: Vec<u32>,
}
use process::{EXITED_GRACE, ProcessKey, ProcessTable, Seen};
use symbolize::Symbolizer;
use unwind::UserStackMode;

/// Peers remembered at once (a bound, not a working-set estimate).
const MAX_PEERS: usize = 16384;
/// How long a peer process's executable, once read, is taken as still
/// right: a load generator or a proxy opens thousands of connections a
/// second from one process, and reading its `/proc/PID/exe` (a readlink
/// and a stat) for each was a syscall pair per upgrade.
const PEER_EXE_FRESH_NS: u64 = 1_000_000_000;
/// Peer processes whose executable is kept (cleared when full).
const MAX_PEER_EXES: usize = 4096;

/// Signals to upgraders remembered at once (a bound; the kernel sends only
/// those aimed at processes that wrote a 101).
const MAX_SIGNALS: usize = 4096;

/// A signal older than this when its target closes at exit did not end it
/// (the pid may have been reused since).
const SIGNAL_RELEVANCE_NS: u64 = 120_000_000_000;

/// A signal the kernel saw being sent to a process that wrote a 101.
#[derive(Clone, Debug)]
struct SignalSeen {
    sent: SignalSent,
    sender_pid: u32,
    sender_comm: String,
    ts_ns: u64,
}

/// The enrich stage's product; in `wstrace-core` so the pure stages after
/// this one (diagnose, output, report) can take it.
pub use wstrace_core::enrich::Enriched;

/// The enrich stage: owns the process table and everything kept per process
/// or per socket until its report is made.
pub struct Enricher {
    processes: ProcessTable,
    symbolizer: Symbolizer,
    /// Unwinds of recent stack copies, for closes that name one.
    stack_cache: stack_cache::StackCache,
    redactor: Redactor,
    clock: Clock,
    host: String,
    /// Idle times are kept in jiffies by the kernel; without the tick rate
    /// they are left out rather than guessed.
    hz: Option<u32>,
    user_stack: UserStackMode,
    /// The process at the other end of loopback connections, by socket,
    /// looked up at the 101 while it is surely alive.
    /// Keyed by socket and upgrade time: a chained report is held a while
    /// (`pipeline::chain::HOLD_NS`), and the kernel reuses a freed socket's
    /// address for the next connection, whose peer must not replace it.
    peers: HashMap<(u64, u64), PeerProcess>,
    /// The kernel's record of who wrote each request (first choice).
    kernel_peers: Option<peer::KernelPeers>,
    /// The userspace lookup (fallback).
    peer_finder: peer::PeerFinder,
    /// Who upgraded each recent connection end, by (local, remote): when
    /// both ends are on this host the other end's upgrade event (the
    /// server's 101 written comes before the client's 101 read) names the
    /// peer in O(1). Without it every client-side upgrade fell back to
    /// `PeerFinder`, which reads the server's whole fd table: O(sockets)
    /// per upgrade, and at 10,000 connections the daemon fell so far
    /// behind that most upgrades were dropped over the fair share.
    upgrade_ends: HashMap<(SocketAddr, SocketAddr), PeerProcess>,
    /// Peer processes' executables, with when they were read (event time).
    peer_exes: HashMap<u32, (u64, Option<PeerExe>)>,
    /// Signals sent to upgraders, by (target pid, signal).
    signals: HashMap<(u32, u32), SignalSeen>,
    /// The last crash of each upgrader (by process id), symbolized at
    /// once, with its monotonic time.
    crashes: HashMap<u32, (u64, Crash)>,
    /// The kernel's set of processes whose reads may carry a request on a
    /// traced port (tracepoint set): listeners found here are added, so a
    /// server that accepted before we attached is covered too.
    servers: Option<ServerSet>,
    /// Python processes: the kernel's walk (`INTERP_PROCS`) and, by pid,
    /// what was found (or `None`: not a Python this build knows).
    python: Python,
}

/// The Python processes seen, and the kernel map their walk goes into.
#[derive(Default)]
struct Python {
    procs: Option<InterpProcs>,
    found: HashMap<u32, Option<Interp>>,
    /// The refusals already noted on stderr.
    refused: std::collections::HashSet<String>,
    /// How long naming one close's Python frames may take.
    budget: std::time::Duration,
}

/// An interpreter found in a process.
#[derive(Clone, Debug)]
enum Interp {
    Python(python::Found),
    /// A CPython this build knows whose self-description failed the
    /// checks (`python::apply_debug_offsets`): not walked, and why.
    PythonRefused(String),
    Php(php::Found),
    /// Named from the stack copy's frame slots: no kernel walk.
    Node(node::Found),
}

/// The kernel's `INTERP_PROCS` map (wstrace-ebpf `maps.rs`).
pub type InterpProcs = aya::maps::HashMap<aya::maps::MapData, u32, wstrace_common::InterpConfig>;

/// Processes whose Python state is kept at most (a pid fork bomb costs
/// this many entries, then entries of gone processes are dropped).
const MAX_PYTHON_PROCS: usize = 4096;

impl Enricher {
    pub fn new(
        redactor: Redactor,
        user_stack: UserStackMode,
        servers: Option<ServerSet>,
        kernel_peers: Option<peer::KernelPeers>,
    ) -> Self {
        Self {
            processes: ProcessTable::default(),
            symbolizer: Symbolizer::new(),
            stack_cache: stack_cache::StackCache::default(),
            redactor,
            clock: Clock::new(),
            host: process::hostname(),
            hz: hz::detect(),
            user_stack,
            peers: HashMap::new(),
            kernel_peers,
            peer_finder: peer::PeerFinder::default(),
            upgrade_ends: HashMap::new(),
            peer_exes: HashMap::new(),
            signals: HashMap::new(),
            crashes: HashMap::new(),
            servers,
            python: Python {
                budget: std::time::Duration::from_millis(200),
                ..Python::default()
            },
        }
    }

    /// Hands over the kernel's `INTERP_PROCS` map: Python processes found
    /// from now on get their frames walked at the close.
    pub fn set_interp_procs(&mut self, procs: Option<InterpProcs>) {
        self.python.procs = procs;
    }

    /// Looks once per process for a CPython this build knows and, when
    /// found, tells the kernel to walk its frames at its closes.
    fn note_python(&mut self, pid: u32) {
        if self.python.found.contains_key(&pid) {
            return;
        }
        if self.python.found.len() >= MAX_PYTHON_PROCS {
            self.python
                .found
                .retain(|p, _| std::path::Path::new(&format!("/proc/{p}")).exists());
            if self.python.found.len() >= MAX_PYTHON_PROCS {
                return;
            }
        }
        let found = python::find(pid)
            .map(|p| p.map_or_else(Interp::PythonRefused, Interp::Python))
            .or_else(|| php::find(pid).map(Interp::Php))
            .or_else(|| node::find(pid).map(Interp::Node));
        if let Some(Interp::Node(_)) = &found {
            // Its frames get names here: no hint about node's perf map flags.
            self.symbolizer.names_javascript(pid);
        }
        if let Some(Interp::PythonRefused(why)) = &found {
            // Once per interpreter binary (and reason), not per process.
            if self.python.refused.len() < MAX_PYTHON_PROCS
                && self.python.refused.insert(why.clone())
            {
                // The path is the process's to choose: no control
                // character reaches the terminal as it is.
                eprintln!(
                    "wstrace: note: {}; its Python frames are not shown",
                    why.escape_debug()
                );
            }
        }
        let walk = match &found {
            Some(Interp::Python(p)) => Some(p.walk),
            Some(Interp::Php(p)) => Some(p.walk),
            Some(Interp::Node(_) | Interp::PythonRefused(_)) | None => None,
        };
        if let (Some(walk), Some(procs)) = (walk, &mut self.python.procs) {
            // Full of live entries: that process's closes show no
            // interpreter frames (the map is LRU, so this is rare).
            let _ = procs.insert(pid, walk, 0);
        }
        self.python.found.insert(pid, found);
    }

    /// The user stack with the close's Python frames in place of the
    /// interpreter loop frames that ran them.
    fn with_python(
        &mut self,
        pid: u32,
        cap: &crate::model::InterpCapture,
        native: Arc<[Frame]>,
    ) -> Arc<[Frame]> {
        if cap.frames.is_empty() {
            return native;
        }
        let Some(Some(found)) = self.python.found.get(&pid) else {
            return native;
        };
        let deadline = std::time::Instant::now() + self.python.budget;
        match found {
            Interp::Python(found) => {
                let (frames, mask) = python::entries(found.layout.entry_mark, cap);
                let py = python::name_frames(pid, found, &frames, deadline);
                python::splice(&native, py, mask, python::is_eval_loop).into()
            }
            Interp::Php(found) => {
                let php = php::name_frames(pid, found, cap, deadline);
                python::splice(&native, php, 0, php::is_exec_loop).into()
            }
            Interp::Node(_) | Interp::PythonRefused(_) => native,
        }
    }

    /// The user stack with node's JavaScript frames (read at the unwind)
    /// in place of the native frames that stood for them (`node.rs`).
    fn with_node(unwound: &Unwound, native: Arc<[Frame]>) -> Arc<[Frame]> {
        if unwound.js.is_empty() {
            return native;
        }
        node::splice(&native, &unwound.js).into()
    }

    /// Reads the JavaScript frames of a node close right after its unwind:
    /// V8's garbage collector moves young function objects, so the sooner
    /// the better; the slots are dropped after.
    fn read_js_frames(&self, pid: u32, unwound: &mut Unwound) {
        let slots = std::mem::take(&mut unwound.fp_slots);
        let Some(Some(Interp::Node(found))) = self.python.found.get(&pid) else {
            return;
        };
        if slots.is_empty() {
            return;
        }
        let deadline = std::time::Instant::now() + self.python.budget;
        if let Some(mem) = procmem::Mem::open(pid, deadline) {
            unwound.js = node::read_frames(&mem, &found.layout, &slots);
        }
    }

    /// `--symbolize-timeout`: the longest one symbolization may stall the
    /// daemon while the symbolizer computes.
    pub fn set_symbolize_timeout(&mut self, timeout: std::time::Duration) {
        self.symbolizer.set_total_budget(timeout);
        self.python.budget = timeout;
    }

    /// Reads what must be read while the process lives, at its first event:
    /// its description (process table) and, at the upgrade, its memory maps
    /// for later symbolization and the peer at the other end.
    pub fn observe(&mut self, ev: &Event) {
        if let Some(sent) = ev.signal {
            self.note_signal(ev, sent);
            return;
        }
        // State, reset and destroy events run in softirq: their pid is
        // whoever was interrupted.
        if !matches!(
            ev.kind,
            EventKind::Upgrade | EventKind::Close | EventKind::Data
        ) || ev.pid == 0
        {
            return;
        }
        let key = ProcessKey {
            pid: ev.pid,
            start_ns: ev.process_start_ns,
        };
        let (seen, dropped) = self.processes.observe(key, &ev.comm, &self.redactor);
        if seen == Seen::Reused {
            // Maps, pinned binaries and symbolized stacks cached under this
            // pid describe a process that is gone.
            self.forget_symbols(ev.pid);
        }
        for pid in dropped {
            self.forget_symbols(pid);
        }
        if ev.kind == EventKind::Upgrade {
            self.symbolizer.remember_process(ev.pid);
            self.note_python(ev.pid);
            // The request was written before the server could answer it,
            // so the kernel's record of its writer exists by now, if the
            // writer is on this host (any local address, not only loopback).
            let found = match &mut self.kernel_peers {
                Some(k) if !ev.client_side => k.find(ev.local, ev.remote),
                _ => None,
            };
            let found = found.or_else(|| self.upgrade_ends.remove(&(ev.remote, ev.local)));
            if self.upgrade_ends.len() >= MAX_PEERS {
                self.upgrade_ends.clear();
            }
            self.upgrade_ends.insert(
                (ev.local, ev.remote),
                PeerProcess {
                    pid: ev.pid,
                    tid: Some(ev.tid),
                    comm: ev.comm.clone(),
                    source: PeerSource::Kernel,
                    exe: None,
                },
            );
            let found = match found {
                Some(p) => Some(p),
                // The peer's socket is our socket with the ends swapped.
                None if peer::is_local(ev.remote.ip()) => {
                    self.peer_finder.find(ev.remote, ev.local)
                }
                None => None,
            };
            if let Some(mut p) = found {
                // Read now, while the writer lives: a proxy is named from
                // its executable, not from the comm it chose.
                p.exe = self.peer_exe(p.pid, ev.ts_ns);
                if self.peers.len() >= MAX_PEERS {
                    self.peers.clear();
                }
                self.peers.insert((ev.sk, ev.ts_ns), p);
            }
        }
    }

    /// The executable of peer process `pid`, read at most once a second
    /// (`PEER_EXE_FRESH_NS`, by event time `now_ns`).
    fn peer_exe(&mut self, pid: u32, now_ns: u64) -> Option<PeerExe> {
        if let Some((at, exe)) = self.peer_exes.get(&pid)
            && now_ns.saturating_sub(*at) < PEER_EXE_FRESH_NS
        {
            return exe.clone();
        }
        let exe = peer::exe_of(pid);
        if self.peer_exes.len() >= MAX_PEER_EXES {
            self.peer_exes.clear();
        }
        self.peer_exes.insert(pid, (now_ns, exe.clone()));
        exe
    }

    /// Keeps a signal sent to an upgrader until its target's close at exit
    /// asks for it. The OOM killer's mark comes right after its SIGKILL
    /// (sent from whichever task was allocating): it replaces that, and
    /// nothing replaces it.
    fn note_signal(&mut self, ev: &Event, sent: SignalSent) {
        let key = (sent.target_pid, sent.signal);
        if self
            .signals
            .get(&key)
            .is_some_and(|s| s.sent.oom && !sent.oom)
        {
            return;
        }
        if self.signals.len() >= MAX_SIGNALS && !self.signals.contains_key(&key) {
            self.signals.clear();
        }
        self.signals.insert(
            key,
            SignalSeen {
                sent,
                sender_pid: ev.pid,
                sender_comm: ev.comm.clone(),
                ts_ns: ev.ts_ns,
            },
        );
    }

    /// A thread of an upgrader crashed (a [`EventKind::Crash`], after
    /// [`Self::unwind`]): its user stack is symbolized now, while the
    /// process's maps are still those it crashed with, and kept until its
    /// sockets' closes at exit ask for it.
    pub fn note_crash(&mut self, ev: &Event) {
        if ev.kind != EventKind::Crash || ev.pid == 0 {
            return;
        }
        let Some(stacks) = &ev.stacks else {
            return;
        };
        let (walk, _) = unwind::choose(self.user_stack, &stacks.user, stacks.dwarf.as_ref());
        let addrs = match (walk, &stacks.dwarf, &stacks.user) {
            (Walk::Dwarf, Some(d), _) => d.addrs.clone(),
            (_, _, Ok(a)) => a.clone(),
            _ => Vec::new(),
        };
        let stack = self.user_frames(ev.pid, &addrs);
        if self.crashes.len() >= MAX_SIGNALS && !self.crashes.contains_key(&ev.pid) {
            self.crashes.clear();
        }
        self.crashes.insert(
            ev.pid,
            (
                ev.ts_ns,
                Crash {
                    tid: ev.tid,
                    // The kernel put the signal number in `arg`.
                    signal: ev.arg,
                    stack: stack.to_vec(),
                },
            ),
        );
    }

    /// The crash that ended the process that closed `r` at its exit, if
    /// the kernel saw the crashing thread shortly before.
    fn crash(&self, r: &CloseReport, end: Option<&ProcessEnd>) -> Option<Crash> {
        let Some(ProcessEnd::Signaled { signal, .. }) = end else {
            return None;
        };
        let c = r.closer.as_ref()?;
        let (ts, crash) = self.crashes.get(&c.pid)?;
        (crash.signal == *signal
            && *ts <= r.close_ts_ns.saturating_add(1_000_000_000)
            && r.close_ts_ns.saturating_sub(*ts) < SIGNAL_RELEVANCE_NS)
            .then(|| crash.clone())
    }

    /// How the process that closed `r` at its exit ended, and who sent the
    /// signal that ended it, if the kernel saw it sent.
    fn ending(&self, r: &CloseReport) -> Option<ProcessEnd> {
        let c = r.closer.as_ref().filter(|c| c.at_exit)?;
        let mut end = ProcessEnd::from_exit_code(c.exit_code?);
        // The signal as this process received it, sent shortly enough before.
        let seen = |signal: u32| {
            [c.pid, c.tid]
                .iter()
                .filter_map(|&target| self.signals.get(&(target, signal)))
                .find(|s| {
                    s.ts_ns <= r.close_ts_ns.saturating_add(1_000_000_000)
                        && r.close_ts_ns.saturating_sub(s.ts_ns) < SIGNAL_RELEVANCE_NS
                })
                .map(|s| match killer_of(s) {
                    Killer::Process { pid, .. } if pid == c.pid => Killer::Itself,
                    k => k,
                })
        };
        match &mut end {
            ProcessEnd::Signaled { signal, killer, .. } => *killer = seen(*signal),
            ProcessEnd::Exited { after_signal, .. } => {
                // SIGTERM, SIGINT, SIGHUP, SIGQUIT: asked to stop, it exited.
                *after_signal = [15, 2, 1, 3]
                    .into_iter()
                    .find_map(|sig| seen(sig).map(|k| (sig, Some(k))));
            }
        }
        Some(end)
    }

    /// Replaces a close's stack copy by its dwarf unwind, now: the process
    /// may exit any moment, and a report in flight should not hold 16 KiB.
    ///
    /// A close without a copy of its own (its call site was over budget)
    /// gets the unwind of the site's last copy instead, when it is kept.
    pub fn unwind(&mut self, ev: &mut Event) {
        let Some(stacks) = &mut ev.stacks else {
            return;
        };
        if let Some(copy) = stacks.user_copy.take() {
            let mut unwound = self.symbolizer.unwind_user(ev.pid, &copy);
            self.read_js_frames(ev.pid, &mut unwound);
            if let crate::model::CopyFate::Copied { id } = stacks.fate {
                self.stack_cache.keep(id, ev.pid, ev.ts_ns, &unwound);
            }
            stacks.dwarf = Some(unwound);
        } else {
            self.stack_cache.stand_in(stacks, ev.pid, ev.ts_ns);
        }
    }

    /// Forgets what is cached for `pid` (gone, or a new process under a
    /// reused pid): the symbolizer's maps and files, and its stacks.
    fn forget_symbols(&mut self, pid: u32) {
        self.symbolizer.forget_process(pid);
        self.python.found.remove(&pid);
    }

    /// A user stack's frames, shared with the symbolizer's cache.
    fn user_frames(&mut self, pid: u32, addrs: &[u64]) -> Arc<[Frame]> {
        self.symbolizer.user_stack(pid, addrs)
    }

    /// Remembers (description, maps) every process listening on a traced
    /// port, before it accepts anything: a worker that closes and exits at
    /// once is gone before its upgrade event is read, and without this its
    /// report would have neither executable nor user frames. Also forgets
    /// processes that exited [`EXITED_GRACE`] ago. Returns the processes
    /// found listening for the first time (pid, comm) and those forgotten.
    pub fn remember_listeners(&mut self, ports: &Ports) -> ListenerScan {
        let mut scan = ListenerScan::default();
        for pid in self.processes.prune_exited(EXITED_GRACE) {
            self.forget_symbols(pid);
            scan.exited.push(pid);
        }
        let (processes, symbolizer) = (&self.processes, &self.symbolizer);
        let found = peer::listeners(ports, |pid| {
            processes.knows(pid) && symbolizer.remembers(pid)
        });
        for p in found {
            let key = ProcessKey {
                pid: p.pid,
                start_ns: 0,
            };
            let (_, dropped) = self.processes.observe(key, &p.comm, &self.redactor);
            for pid in dropped {
                self.forget_symbols(pid);
            }
            self.symbolizer.remember_process(p.pid);
            self.note_python(p.pid);
            if let Some(servers) = &mut self.servers {
                let _ = servers.insert(p.pid);
            }
            scan.new.push((p.pid, p.comm));
        }
        scan
    }

    /// The executable of `pid` as read when its first event was observed
    /// (`None` before that, or when it could not be read).
    pub fn process_exe(&self, pid: u32) -> Option<String> {
        self.processes.info(pid).exe
    }

    /// Everything a printer and the diagnosis need about one report.
    pub fn resolve<'a>(&'a mut self, r: &'a CloseReport) -> Enriched<'a> {
        let mut user_walk = UserWalk::default();
        let (mut kernel_stack_errno, mut user_stack_errno) = (None, None);
        let (kernel_stack, user_stack, process) = match &r.closer {
            Some(c) => {
                let k = match &c.stacks.kernel {
                    Ok(a) => self.symbolizer.kernel_stack(a),
                    Err(e) => {
                        kernel_stack_errno = Some(*e);
                        Arc::default()
                    }
                };
                let (walk, note) =
                    unwind::choose(self.user_stack, &c.stacks.user, c.stacks.dwarf.as_ref());
                user_walk = UserWalk {
                    walk: Some(walk),
                    note,
                    end: None,
                    none: None,
                    // A frame-pointer walk shown is this close's own: only
                    // a dwarf unwind can be the site's copy's.
                    shared: c.stacks.shared.map(|s| match s {
                        SharedStack::SameAs { rate, .. } if walk != Walk::Dwarf => {
                            SharedStack::Elided { rate }
                        }
                        s => s,
                    }),
                    interp_note: None,
                };
                let u = match (walk, &c.stacks.dwarf, &c.stacks.user, c.at_exit) {
                    (_, _, _, true) => {
                        // The kernel's walk of an exiting task is not the
                        // program's: no frames, and the reason in `end`.
                        user_walk = UserWalk {
                            none: Some("closed at process exit"),
                            ..UserWalk::default()
                        };
                        Arc::default()
                    }
                    (Walk::Dwarf, Some(d), _, false) => {
                        user_walk.end = Some(d.end.clone());
                        let native = self.user_frames(c.pid, &d.addrs);
                        Self::with_node(d, native)
                    }
                    (_, _, Ok(a), false) => self.user_frames(c.pid, a),
                    (_, _, Err(e), false) => {
                        user_stack_errno = Some(*e);
                        Arc::default()
                    }
                };
                let u = if c.at_exit {
                    u
                } else {
                    let cap = &c.stacks.interp;
                    user_walk.interp_note = match self.python.found.get(&c.pid) {
                        Some(Some(Interp::Node(_))) => (walk != Walk::Dwarf).then(|| {
                            "javascript frames: unnamed: they are named from the stack copy of a dwarf unwind, and this stack is the frame-pointer walk".to_string()
                        }),
                        Some(Some(Interp::Python(found))) => {
                            // Counted as shown: without 3.12+'s shim frames.
                            let shown = python::entries(found.layout.entry_mark, cap).0.len();
                            python::python_note(found, cap.status, shown)
                        }
                        Some(Some(Interp::PythonRefused(why))) => {
                            Some(format!("python frames: none: {why}"))
                        }
                        Some(Some(Interp::Php(_))) => {
                            python::walk_note(cap.status, cap.frames.len())
                                .map(|n| n.replacen("python", "php", 1))
                        }
                        _ => python::walk_note(cap.status, cap.frames.len()),
                    };
                    self.with_python(c.pid, cap, u)
                };
                (k, u, self.processes.info(c.pid))
            }
            None => (Arc::default(), Arc::default(), ProcInfo::default()),
        };
        let frames = r
            .close_frames
            .iter()
            .filter_map(|(dir, bytes)| wsframe::first_close(bytes).map(|f| (*dir, f)))
            .collect();
        // Jiffies tick every 1-10 ms: the idle time is rounded, and never
        // longer than the connection lived.
        let lifetime_ms = r.ms_after_upgrade().ceil() as u64;
        let idle_ms = match (r.jiffies_at_close.and_then(|j| j.idle()), self.hz) {
            (Some(j), Some(hz)) => Some(hz::jiffies_to_ms(j, hz).min(lifetime_ms)),
            _ => None,
        };
        let ending = self.ending(r);
        Enriched {
            report: r,
            ts: self.clock.wall(r.close_ts_ns),
            exe: process.exe.clone(),
            process,
            host: &self.host,
            kernel_stack,
            user_stack,
            kernel_stack_errno,
            user_stack_errno,
            user_walk,
            request: http::parse_request_head(&r.request_head, &self.redactor),
            frames,
            idle_ms,
            peer: self.peers.remove(&(r.sk, r.upgrade_ts_ns)),
            crash: self.crash(r, ending.as_ref()),
            ending,
        }
    }
}

/// si_code values (include/uapi/asm-generic/siginfo.h).
const SI_KERNEL: i32 = 0x80;

fn killer_of(s: &SignalSeen) -> Killer {
    if s.sent.oom {
        Killer::OomKiller
    } else if s.sent.code == SI_KERNEL || s.sent.code > 0 {
        // Sent by the kernel itself (a fault, a pdeath signal, ...), in
        // whichever task's context: that task did not send it.
        Killer::Kernel
    } else {
        Killer::Process {
            pid: s.sender_pid,
            comm: s.sender_comm.clone(),
        }
    }
}
