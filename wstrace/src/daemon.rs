//! The daemon loop: attach, read the ring buffer, match, resolve, print.
use std::{
    collections::HashMap,
    io::{IsTerminal as _, Write as _},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result, bail};
use aya::maps::RingBuf;
use tokio::signal::unix::{SignalKind, signal};
use wstrace_common::{EventKind, MAX_PORTS};

use crate::{
    attach::{self as probes, btf, privileges, tracefs},
    cli::CommonArgs,
    diagnose::{self, Facts},
    protocol::{http, wsframe},
    redact::Redactor,
    enrich::{
        hz, peer, process as procinfo,
        symbolize::Symbolizer,
        unwind::{self, UserStackMode},
    },
    model::{self as events, CloseReport, UserWalk, Walk},
    output::{self, ColorChoice, metrics},
    pipeline::{matcher::Matcher, reader},
};
use crate::model::{PeerProcess, ProcInfo};

/// Ring buffer size: ~3,700 close events (1.1 KiB each) of headroom.
const RING_BYTES: u32 = 4 * 1024 * 1024;
/// With user stack copies (16 KiB by default): ~1,000 closes. It costs
/// twice its size in RSS (the kernel maps its pages twice so records can
/// wrap). 8 MiB (with a 16 MiB queue) lost events at 13k closes/s on 2
/// shared CPUs.
const RING_BYTES_WITH_STACKS: u32 = 16 * 1024 * 1024;
/// Records copied out of the ring and waiting for the daemon, at most: the
/// depth that rides out stalls (a binary's first symbolization, ~30 ms) and
/// bursts faster than the daemon. Anonymous memory, used only while the
/// daemon is behind: ~13,000 closes without stack copies, ~3,800 with.
const QUEUE_BYTES: usize = 16 * 1024 * 1024;
const QUEUE_BYTES_WITH_STACKS: usize = 64 * 1024 * 1024;

/// Ring buffer and reader queue sizes: (ring bytes, queue bytes).
fn buffer_sizes(user_stack_bytes: u32) -> (u32, usize) {
    if user_stack_bytes > 0 {
        (RING_BYTES_WITH_STACKS, QUEUE_BYTES_WITH_STACKS)
    } else {
        (RING_BYTES, QUEUE_BYTES)
    }
}

/// Bytes of user stack the kernel copies per close: the asked size for
/// dwarf/auto, 0 (no copy) for fp, or where the registers cannot be found
/// (not x86_64, or no `task_struct.stack` in the kernel's BTF).
fn user_stack_copy_bytes(common: &CommonArgs, offsets: &btf::KernelOffsets) -> u32 {
    let possible = cfg!(target_arch = "x86_64")
        && offsets
            .get(wstrace_common::globals::TASK_STACK)
            .is_some_and(|o| o != wstrace_common::globals::ABSENT);
    match common.user_stack {
        UserStackMode::Fp => 0,
        _ if !possible => {
            eprintln!(
                "wstrace: note: user stacks follow frame pointers only: {}",
                if cfg!(target_arch = "x86_64") {
                    "the kernel's BTF has no task_struct.stack"
                } else {
                    "dwarf unwinding is implemented for x86_64 only"
                }
            );
            0
        }
        _ => common.user_stack_size,
    }
}

pub struct Options<'a> {
    pub ports: &'a [u16],
    pub common: &'a CommonArgs,
    pub count: Option<u64>,
    pub duration: Option<Duration>,
    pub log: Option<LogSpec<'a>>,
    pub metrics: Option<std::net::SocketAddr>,
}

/// `--output` and its rotation.
pub struct LogSpec<'a> {
    pub path: &'a std::path::Path,
    pub rotate_size: u64,
    pub rotate_keep: u32,
}

/// CLOCK_MONOTONIC in ns: the clock `bpf_ktime_get_ns` reads.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Kernel timestamps to wall-clock time, fixed once at start-up.
struct Clock {
    wall_at_zero: SystemTime,
}

impl Clock {
    fn new() -> Self {
        let mono = Duration::from_nanos(monotonic_ns());
        Self {
            wall_at_zero: SystemTime::now() - mono,
        }
    }
    fn wall(&self, ts_ns: u64) -> SystemTime {
        self.wall_at_zero + Duration::from_nanos(ts_ns)
    }
}

pub async fn run(opts: Options<'_>, on_ready: impl FnOnce(u16)) -> Result<u64> {
    if opts.ports.len() > MAX_PORTS {
        bail!(
            "at most {MAX_PORTS} --port values can be traced at once (got {})",
            opts.ports.len()
        );
    }
    let redactor = if opts.common.show_secrets {
        Redactor::none()
    } else {
        Redactor::new(&opts.common.redact).map_err(|e| anyhow::anyhow!(e))?
    };
    // Opened before the probes attach: a bad path fails the start, with
    // nothing loaded. An agent whose log silently went to stdout would lose
    // every report its collector expects; a failure later in the run (disk
    // full) is a warning, and the log retries by itself (`LogFile::append`).
    let log = match &opts.log {
        Some(l) => Some(
            output::logfile::LogFile::open(l.path, l.rotate_size, l.rotate_keep).map_err(|e| {
                anyhow::anyhow!("{e:#} (choose a writable --output path, or drop --output)")
            })?,
        ),
        None => None,
    };
    privileges::check()?;
    let metrics = match opts.metrics {
        Some(addr) => {
            let m = metrics::Metrics::new();
            let bound = metrics::serve(addr, m.clone())?;
            eprintln!("wstrace: metrics on http://{bound}/metrics");
            Some(m)
        }
        None => None,
    };
    if let Some(warning) = privileges::raise_memlock() {
        eprintln!("wstrace: warning: {warning}");
    }
    let offsets = btf::resolve(&opts.common.btf)?;
    let root = tracefs::ensure_mounted()?;
    let user_stack_bytes = user_stack_copy_bytes(opts.common, &offsets);
    let (ring_bytes, queue_bytes) = buffer_sizes(user_stack_bytes);
    let settings = probes::Settings {
        ports: opts.ports,
        max_sockets: opts.common.max_sockets,
        ring_bytes,
        user_stack_bytes,
    };
    let mut attached = probes::attach(opts.common.probe, &settings, &offsets, &root)?;
    for s in &attached.skipped {
        eprintln!("wstrace: skipped probe set {s}");
    }
    for l in &attached.limits {
        eprintln!("wstrace: note: {l}");
    }

    let ring = attached
        .ebpf
        .take_map("EVENTS")
        .context("EVENTS map missing from the object")?;
    let ring = RingBuf::try_from(ring).context("EVENTS is not a ring buffer")?;
    let servers = probes::take_servers(&mut attached.ebpf);
    let mut reader = reader::Reader::start(ring, queue_bytes)?;

    let color = match opts.common.color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => std::io::stdout().is_terminal(),
    };
    let mut sink = Sink {
        format: opts.common.format,
        color,
        clock: Clock::new(),
        symbolizer: Symbolizer::new(),
        procs: procinfo::Processes::default(),
        host: procinfo::hostname(),
        printed: 0,
        redactor,
        // Idle times are kept in jiffies by the kernel; without the tick
        // rate they are left out rather than guessed.
        hz: hz::detect(),
        peers: HashMap::new(),
        peer_finder: peer::PeerFinder::default(),
        starts: HashMap::new(),
        servers,
        log,
        metrics,
        user_stack: opts.common.user_stack,
    };
    let mut matcher = Matcher::with_capacity(attached.set, opts.common.max_sockets as usize);
    let mut evicted_reported = 0u64;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut lost_reported = 0u64;
    let limit = opts.count.unwrap_or(u64::MAX);
    // Before saying "tracing": a server that upgrades, closes and exits the
    // moment traffic starts is described too.
    sink.remember_listeners(opts.ports);
    let ports: Vec<String> = opts.ports.iter().map(u16::to_string).collect();
    eprintln!(
        "wstrace: tracing port {} with {} probes",
        ports.join(","),
        attached.set.name()
    );
    if let Some(m) = &sink.metrics {
        m.probe_set
            .get_or_create(&metrics::ProbeLabels {
                probe: attached.set.name().into(),
            })
            .set(1);
    }
    on_ready(opts.ports[0]);
    let mut last_scan = tokio::time::Instant::now();

    'outer: while sink.printed < limit {
        tokio::select! {
            rec = reader.records.recv() => {
                let Some(rec) = rec else {
                    bail!("the ring-buffer reader stopped unexpectedly");
                };
                if deliver(&mut sink, &mut matcher, rec.event, limit)? {
                    break 'outer;
                }
            }
            _ = tick.tick() => {
                if last_scan.elapsed() >= LISTENER_SCAN_INTERVAL {
                    sink.remember_listeners(opts.ports);
                    last_scan = tokio::time::Instant::now();
                }
                for r in matcher.tick(monotonic_ns()) {
                    sink.print(&r)?;
                    if sink.printed >= limit {
                        break 'outer;
                    }
                }
                if matcher.evicted > evicted_reported {
                    eprintln!(
                        "wstrace: warning: {} upgraded socket(s) evicted: more than --max-sockets={} were open at once, and the oldest are no longer traced (raise --max-sockets)",
                        matcher.evicted - evicted_reported,
                        opts.common.max_sockets
                    );
                    evicted_reported = matcher.evicted;
                }
                let lost = probes::lost_events(&attached.ebpf);
                if lost > lost_reported {
                    eprintln!(
                        "wstrace: warning: {} events lost (ring buffer full); reports may be missing",
                        lost - lost_reported
                    );
                    if let Some(m) = &sink.metrics {
                        m.lost_events.inc_by(lost - lost_reported);
                    }
                    lost_reported = lost;
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => break,
        }
    }
    // Stop the kernel side first, then read what it wrote before that: an
    // event produced while attached is either reported or counted as lost,
    // and closes after the signal cannot overflow the ring into false losses.
    attached.detach_all();
    reader.finish();
    if sink.printed < limit {
        while let Some(rec) = reader.records.recv().await {
            if deliver(&mut sink, &mut matcher, rec.event, limit)? {
                break;
            }
        }
    }
    drop(reader);
    // Closes already seen but not yet complete are still worth printing.
    if sink.printed < limit {
        for r in matcher.flush(monotonic_ns()) {
            sink.print(&r)?;
            if sink.printed >= limit {
                break;
            }
        }
    }
    if matcher.evicted > 0 {
        eprintln!(
            "wstrace: {} upgraded socket(s) were evicted in total (--max-sockets={})",
            matcher.evicted, opts.common.max_sockets
        );
    }
    let lost = probes::lost_events(&attached.ebpf);
    if lost > 0 {
        eprintln!("wstrace: {lost} events were lost in total (ring buffer full)");
    }
    if let Some(log) = &mut sink.log {
        if let Err(e) = log.sync() {
            eprintln!("wstrace: error: {e:#}");
        }
    }
    // Dropping `attached` detaches every program before we return.
    drop(attached);
    Ok(sink.printed)
}

struct Sink {
    format: output::Format,
    color: bool,
    clock: Clock,
    symbolizer: Symbolizer,
    procs: procinfo::Processes,
    host: String,
    printed: u64,
    redactor: Redactor,
    hz: Option<u32>,
    /// The process at the other end of loopback connections, by socket,
    /// looked up at the 101 while it is surely alive.
    peers: HashMap<u64, PeerProcess>,
    peer_finder: peer::PeerFinder,
    /// The kernel's set of processes whose reads may carry a request on a
    /// traced port (tracepoint set): listeners found here are added, so a
    /// server that accepted before we attached is covered too.
    servers: Option<aya::maps::HashMap<aya::maps::MapData, u32, u8>>,
    /// Start time of the process each pid named when last seen: a pid whose
    /// events carry another start time has been reused.
    starts: HashMap<u32, u64>,
    /// `--output`; kept through write and rotation failures (it retries).
    log: Option<output::logfile::LogFile>,
    metrics: Option<metrics::Metrics>,
    user_stack: UserStackMode,
}

/// One decoded ring-buffer record through the matcher to the output. True once
/// `limit` reports are printed.
fn deliver(
    sink: &mut Sink,
    matcher: &mut Matcher,
    event: Result<events::Event>,
    limit: u64,
) -> Result<bool> {
    let mut ev = match event {
        Ok(ev) => ev,
        Err(e) => {
            eprintln!("wstrace: warning: undecodable event: {e:#}");
            return Ok(false);
        }
    };
    sink.observe(&ev);
    sink.unwind(&mut ev);
    for r in matcher.on_event(ev) {
        sink.print(&r)?;
        if sink.printed >= limit {
            return Ok(true);
        }
    }
    Ok(false)
}

/// How often processes listening on the traced ports are looked for (and
/// exited ones forgotten). New workers of a pre-forking server are described
/// from their first close if they lived this long before it.
const LISTENER_SCAN_INTERVAL: Duration = Duration::from_secs(2);

/// How long an exited process's maps are kept for closes still in flight.
const EXITED_GRACE: Duration = Duration::from_secs(30);

/// Pids whose process start time is remembered at once (a bound).
const MAX_STARTS: usize = 16384;

/// Peers remembered at once (a bound, not a working-set estimate).
const MAX_PEERS: usize = 16384;

impl Sink {
    /// Replaces a close's stack copy by its dwarf unwind, now: the process
    /// may exit any moment, and a report in flight should not hold 16 KiB.
    fn unwind(&mut self, ev: &mut events::Event) {
        if let Some(stacks) = &mut ev.stacks
            && let Some(copy) = stacks.user_copy.take()
        {
            stacks.dwarf = Some(self.symbolizer.unwind_user(ev.pid, &copy));
        }
    }

    /// Read what must be read while the process lives: its executable path
    /// and (at the upgrade) its memory maps for later symbolization.
    fn observe(&mut self, ev: &events::Event) {
        if matches!(ev.kind, EventKind::Upgrade | EventKind::Close) {
            self.check_identity(ev);
        }
        match ev.kind {
            EventKind::Upgrade => {
                self.procs.note(ev.pid, &ev.comm, &self.redactor);
                if let Some(m) = &self.metrics {
                    m.upgrades.inc();
                }
                self.symbolizer.remember_process(ev.pid);
                if peer::is_local(ev.remote.ip()) {
                    if self.peers.len() >= MAX_PEERS {
                        self.peers.clear();
                    }
                    // The peer's socket is our socket with the ends swapped.
                    if let Some(p) = self.peer_finder.find(ev.remote, ev.local) {
                        self.peers.insert(ev.sk, p);
                    }
                }
            }
            EventKind::Close => self.procs.note(ev.pid, &ev.comm, &self.redactor),
            _ => {}
        }
    }

    /// Pids are reused: when a pid's events start carrying another process
    /// start time, what was cached under it (maps, pinned binaries,
    /// symbolized stacks, executable, command line) described a process that
    /// is gone, and would misname and mis-symbolize the new one. The comm
    /// check in procinfo misses a reuse by the same program.
    fn check_identity(&mut self, ev: &events::Event) {
        if ev.process_start_ns == 0 {
            return; // this kernel's BTF did not say where the start time is
        }
        if self.starts.len() >= MAX_STARTS && !self.starts.contains_key(&ev.pid) {
            self.starts.clear();
        }
        if let Some(old) = self.starts.insert(ev.pid, ev.process_start_ns)
            && old != ev.process_start_ns
        {
            self.symbolizer.forget_process(ev.pid);
            self.procs.forget(ev.pid);
        }
    }

    /// Remember (maps, executable, command line) every process listening on
    /// a traced port, before it accepts anything: a worker that closes and
    /// exits at once is gone before its upgrade event is read, and without
    /// this its report would have neither executable nor user frames.
    fn remember_listeners(&mut self, ports: &[u16]) {
        self.symbolizer.prune_exited(EXITED_GRACE);
        let symbolizer = &self.symbolizer;
        for p in peer::listeners(ports, |pid| symbolizer.remembers(pid)) {
            self.procs.note(p.pid, &p.comm, &self.redactor);
            self.symbolizer.remember_process(p.pid);
            if let Some(servers) = &mut self.servers {
                // Fails only if the map is full of live entries (it is LRU): the
                // process is then added by its next accept or 101.
                let _ = servers.insert(p.pid, 1, 0);
            }
        }
    }

    fn print(&mut self, r: &CloseReport) -> Result<()> {
        let mut user_walk = UserWalk::default();
        let (kernel_stack, user_stack, process) = match &r.closer {
            Some(c) => {
                let k = match &c.stacks.kernel {
                    Ok(a) => self.symbolizer.kernel_stack(a),
                    Err(e) => vec![format!("[kernel stack unavailable: errno {e}]")],
                };
                let (walk, note) =
                    unwind::choose(self.user_stack, &c.stacks.user, c.stacks.dwarf.as_ref());
                user_walk = UserWalk {
                    walk: Some(walk),
                    note,
                    end: None,
                };
                let u = match (walk, &c.stacks.dwarf, &c.stacks.user, c.at_exit) {
                    (_, _, _, true) => {
                        user_walk.walk = None;
                        vec!["[none: closed at process exit]".to_string()]
                    }
                    (Walk::Dwarf, Some(d), _, false) => {
                        user_walk.end = Some(d.end.clone());
                        self.symbolizer.user_stack(c.pid, &d.addrs)
                    }
                    (_, _, Ok(a), false) => self.symbolizer.user_stack(c.pid, a),
                    (_, _, Err(e), false) => vec![format!("[user stack unavailable: errno {e}]")],
                };
                (k, u, self.procs.get(c.pid))
            }
            None => (Vec::new(), Vec::new(), ProcInfo::default()),
        };
        let request = http::parse_request_head(&r.request_head, &self.redactor);
        let frames: Vec<_> = r
            .close_frames
            .iter()
            .filter_map(|(dir, bytes)| wsframe::first_close(bytes).map(|f| (*dir, f)))
            .collect();
        let idle_ms = match (r.jiffies_at_close.and_then(|j| j.idle()), self.hz) {
            (Some(j), Some(hz)) => Some(hz::jiffies_to_ms(j, hz)),
            _ => None,
        };
        let peer = self.peers.remove(&r.sk);
        let facts = Facts {
            request: request.clone(),
            closed_by: r.closed_by,
            how: r.how,
            closer: r.closer.as_ref().map(|c| (c.pid, c.comm.clone())),
            peer: peer.as_ref().map(|p| (p.pid, p.comm.clone())),
            remote: r.remote.to_string(),
            close_frames: frames.clone(),
            ms_after_upgrade: r.ms_after_upgrade(),
            idle_ms,
        };
        let view = output::View {
            report: r,
            ts: self.clock.wall(r.close_ts_ns),
            exe: process.exe.clone(),
            process,
            host: &self.host,
            kernel_stack,
            user_stack,
            user_walk,
            request,
            frames,
            idle_ms,
            peer,
            diagnosis: diagnose::diagnose(&facts),
        };
        if let Some(m) = &self.metrics {
            m.closes
                .get_or_create(&metrics::CloseLabels {
                    closed_by: r.closed_by.as_str().into(),
                    how: r.how.as_str().into(),
                    diagnosis: view.diagnosis.code.into(),
                })
                .inc();
            m.lifetime.observe(r.ms_after_upgrade() / 1000.0);
        }
        if let Some(log) = &mut self.log {
            // An error is a warning: the log stays open and retries itself.
            if let Err(e) = log.append(&output::json::render(&view)) {
                eprintln!("wstrace: warning: {e:#}");
            }
        }
        let text = output::render(self.format, self.color, &view);
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
}
