//! The daemon: the stages run in order. `run` checks the options, opens the
//! outputs, attaches the probes, then an [`EventLoop`] moves each event
//! through decode -> match -> enrich -> diagnose -> output until a signal,
//! `--count` or `--duration` ends it; shutdown detaches first and drains
//! what the kernel wrote before that.
use std::{collections::HashMap, time::Duration};

use anyhow::{Context as _, Result, bail};
use aya::maps::RingBuf;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    attach::tls::{ProbedFile, TlsProbes},
    attach::uprobe::{self as uprobe_open, UprobePmu},
    attach::{self as probes, Attached, btf, tracefs},
    cli::CommonArgs,
    diagnose::{self, Facts, chain::ChainCauses},
    enrich::{self, Enricher, ListenerScan, clock::monotonic_ns, unwind::UserStackMode},
    hardening::{
        privileges,
        uprobe::{self as uprobe_helper, Helper},
    },
    model::{CloseReport, Event, Ports, Scope},
    output::{Outputs, View, escape, logfile::LogFile, metrics},
    pipeline::{chain::ChainKey, matcher::Matcher, reader::Reader},
    redact::Redactor,
};
use wstrace_common::{EventKind, ProcessBudget, lost};

/// Ring buffer size: ~3,700 close events (1.1 KiB each) of headroom.
const RING_BYTES: u32 = 4 * 1024 * 1024;
/// With user stack copies: the copies have a ring of their own (attach's
/// `stack_ring_bytes`), so the events ring only needs room for a burst of
/// small events: at 20k upgrade+close a second (~2.4 KiB of events each
/// since a request head takes the small data record, the close's 1.2 KiB
/// the largest) 4 MiB is ~85 ms while the reader thread is off the CPU.
/// It costs twice its size in RSS (the kernel maps its pages twice so
/// records can wrap): 8 MiB (with 4.5 KiB per connection) gave 16 MiB of
/// an 80-95 MiB peak under that churn.
const RING_BYTES_WITH_STACKS: u32 = 4 * 1024 * 1024;
/// Records copied out of the ring and waiting for the daemon, at most: the
/// depth that rides out stalls (a binary's first symbolization, ~30 ms) and
/// bursts faster than the daemon. Anonymous memory, used only while the
/// daemon is behind: ~6,500 closes without stack copies, ~3,400
/// upgrade+close connections (with a copy per call site and second, the
/// copies are a small part of it).
const QUEUE_BYTES: usize = 8 * 1024 * 1024;
const QUEUE_BYTES_WITH_STACKS: usize = 8 * 1024 * 1024;

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
/// (an architecture other than x86_64 and arm64, or a kernel BTF without
/// `task_struct.stack`, or on arm64 without `struct pt_regs`).
fn user_stack_copy_bytes(common: &CommonArgs, offsets: &btf::KernelOffsets) -> u32 {
    let c = &offsets.config;
    let missing = if !cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
        Some("dwarf unwinding is implemented for x86_64 and arm64 only")
    } else if c.task_stack == wstrace_common::ABSENT {
        Some("the kernel's BTF has no task_struct.stack")
    } else if cfg!(target_arch = "aarch64") && c.pt_regs_size == wstrace_common::ABSENT {
        Some("the kernel's BTF has no struct pt_regs")
    } else {
        None
    };
    match (common.user_stack, missing) {
        (UserStackMode::Fp, _) => 0,
        (_, Some(why)) => {
            eprintln!("wstrace: note: user stacks follow frame pointers only: {why}");
            0
        }
        (_, None) => common.user_stack_size,
    }
}

pub struct Options<'a> {
    pub ports: &'a Ports,
    /// `--pid`/`--exe`: whose upgraded sockets are reported.
    pub scope: Scope,
    pub common: &'a CommonArgs,
    pub count: Option<u64>,
    pub duration: Option<Duration>,
    pub log: Option<LogSpec<'a>>,
    pub metrics: Option<std::net::SocketAddr>,
    /// `--otlp`: the collector's base URL (checked by `otlp::parse_url`).
    pub otlp: Option<&'a str>,
}

/// `--output` and its rotation.
pub struct LogSpec<'a> {
    pub path: &'a std::path::Path,
    pub rotate_size: u64,
    pub rotate_keep: u32,
}

/// Traces until a signal, `--count` or `--duration`; returns the number of
/// reports printed. `on_ready` runs once the probes are attached (the
/// "tracing" line is printed), with the ports and the probe set's name.
pub async fn run(opts: Options<'_>, on_ready: impl FnOnce(&Ports, &str)) -> Result<u64> {
    one_heap_arena();
    let redactor = check_options(&opts)?;
    let chain_key = chain_key(opts.common.chain_key_file.as_deref())?;
    let log = open_log(&opts)?;
    privileges::check()?;
    // First, while this process has one thread and few fds: the helper is
    // a fork of it.
    let opener = (opts.common.tls == crate::attach::TlsMode::Auto).then(UprobeOpener::start);
    let metrics = serve_metrics(&opts)?;
    let otlp = start_otlp(&opts)?;
    if let Some(warning) = privileges::raise_memlock() {
        eprintln!("wstrace: warning: {warning}");
    }
    let (mut attached, queue_bytes) = attach_probes(&opts)?;
    // Only under the flag: without it the programs never log.
    let probe_log = if opts.common.debug_probes {
        Some(crate::probe_log::ProbeLog::start(&mut attached.ebpf)?)
    } else {
        None
    };
    let ring = attached
        .ebpf
        .take_map("EVENTS")
        .context("EVENTS map missing from the object")?;
    let ring = RingBuf::try_from(ring).context("EVENTS is not a ring buffer")?;
    // User stack copies (empty, one page, under --user-stack fp).
    let stacks = attached
        .ebpf
        .take_map("STACKS")
        .context("STACKS map missing from the object")?;
    let stacks = Some(RingBuf::try_from(stacks).context("STACKS is not a ring buffer")?);
    let servers = probes::take_servers(&mut attached.ebpf);
    let kernel_peers =
        probes::take_peer_writers(&mut attached.ebpf).map(crate::enrich::peer::KernelPeers::new);
    let reader = Reader::start(ring, stacks, queue_bytes)?;

    let outputs = Outputs::new(
        opts.common.format,
        opts.common.color,
        !opts.common.no_fold,
        opts.common.full_stacks,
        log,
        metrics,
        otlp,
    );
    let mut enricher = Enricher::new(redactor, opts.common.user_stack, servers, kernel_peers);
    enricher.set_symbolize_timeout(Duration::from_secs(opts.common.symbolize_timeout));
    enricher.set_interp_procs(probes::take_interp_procs(&mut attached.ebpf));
    // Before saying "tracing": a server that upgrades, closes and exits the
    // moment traffic starts is described too, and its TLS library probed.
    let scan = enricher.remember_listeners(opts.ports);
    let mut tls = match opener {
        Some(opener) if attached.tls_loaded => Some(TlsState::new(opener)),
        _ => None,
    };
    cover_tls(tls.as_mut(), &mut attached, &scan, true);
    privileges::drop_after_attach(|| attached.maps_usable());
    give_back_startup_heap();
    announce(&opts, &attached, &outputs);
    on_ready(opts.ports, attached.set.name());

    let mut matcher = Matcher::with_capacity(attached.set, opts.common.max_sockets as usize);
    matcher.set_chain_key(chain_key);
    let mut event_loop = EventLoop {
        matcher,
        chain_causes: ChainCauses::default(),
        reader,
        enricher,
        outputs,
        attached,
        tls,
        probe_log,
        ports: opts.ports,
        scope: opts.scope.clone(),
        max_sockets: opts.common.max_sockets,
        limit: opts.count.unwrap_or(u64::MAX),
        losses_reported: Losses::default(),
        stacks_elided: StacksElided::default(),
        over_budget_said: HashMap::new(),
        over_budget_named: 0,
    };
    event_loop.run(opts.duration).await?;
    event_loop.shutdown().await
}

/// Options no clap parser could check; returns the redaction policy.
/// The chain key: the fleet secret of `--chain-key-file`, else the
/// built-in one. The file is the operator's, but opened as a regular file
/// only, without blocking (a FIFO cannot hang the start) and read bounded.
fn chain_key(path: Option<&std::path::Path>) -> Result<ChainKey> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let Some(path) = path else {
        return Ok(ChainKey::default());
    };
    let shown = escape::text(&path.to_string_lossy()).into_owned();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("--chain-key-file: cannot read {shown}"))?;
    let meta = file
        .metadata()
        .with_context(|| format!("--chain-key-file: cannot stat {shown}"))?;
    if !meta.file_type().is_file() {
        bail!("--chain-key-file: {shown} is not a regular file");
    }
    let mut bytes = Vec::new();
    file.take(crate::pipeline::chain::MAX_KEY_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("--chain-key-file: cannot read {shown}"))?;
    ChainKey::from_secret(&bytes).map_err(|e| anyhow::anyhow!("--chain-key-file {shown}: {e}"))
}

fn check_options(opts: &Options<'_>) -> Result<Redactor> {
    if opts.common.show_secrets {
        Ok(Redactor::none())
    } else {
        Redactor::new(&opts.common.show_header, &opts.common.redact).map_err(|e| anyhow::anyhow!(e))
    }
}

/// Opens `--output` before the probes attach: a bad path fails the start,
/// with nothing loaded. An agent whose log silently went to stdout would lose
/// every report its collector expects; a failure later in the run (disk
/// full) is a warning, and the log retries by itself (`LogFile::append`).
fn open_log(opts: &Options<'_>) -> Result<Option<LogFile>> {
    let Some(l) = &opts.log else {
        return Ok(None);
    };
    LogFile::open(l.path, l.rotate_size, l.rotate_keep)
        .map(Some)
        .map_err(|e| anyhow::anyhow!("{e:#} (choose a writable --output path, or drop --output)"))
}

/// `--otlp`: the exporters start before the probes attach, so a bad URL
/// fails the start with nothing loaded; a collector that is down is not
/// an error (records are retried, then counted as lost).
fn start_otlp(opts: &Options<'_>) -> Result<Option<crate::output::otlp::Otlp>> {
    let Some(url) = opts.otlp else {
        return Ok(None);
    };
    let o = crate::output::otlp::Otlp::start(url)?;
    eprintln!("wstrace: sending closes and metrics to {url} (OTLP/HTTP)");
    Ok(Some(o))
}

fn serve_metrics(opts: &Options<'_>) -> Result<Option<metrics::Metrics>> {
    let Some(addr) = opts.metrics else {
        return Ok(None);
    };
    let m = metrics::Metrics::new();
    let bound = metrics::serve(addr, m.clone())?;
    eprintln!("wstrace: metrics on http://{bound}/metrics");
    Ok(Some(m))
}

/// Resolves the kernel's layout and attaches the chosen probe set; returns
/// it with the reader queue's size.
fn attach_probes(opts: &Options<'_>) -> Result<(Attached, usize)> {
    let offsets = btf::resolve(&opts.common.btf)?;
    let root = tracefs::ensure_mounted()?;
    let user_stack_bytes = user_stack_copy_bytes(opts.common, &offsets);
    let (ring_bytes, queue_bytes) = buffer_sizes(user_stack_bytes);
    let settings = probes::Settings {
        ports: opts.ports,
        max_sockets: opts.common.max_sockets,
        ring_bytes,
        user_stack_bytes,
        tls: opts.common.tls == crate::attach::TlsMode::Auto,
        debug_probes: opts.common.debug_probes,
    };
    let attached = probes::attach(opts.common.probe, &settings, &offsets, &root)?;
    for s in &attached.skipped {
        eprintln!("wstrace: skipped probe set {s}");
    }
    for l in &attached.limits {
        eprintln!("wstrace: note: {l}");
    }
    Ok((attached, queue_bytes))
}

/// One malloc arena for every thread, set before any thread starts: the
/// reader thread allocates each decoded record and the event loop frees
/// it, and with an arena per thread glibc kept both arenas' high-water
/// marks (two anonymous regions of 15-19 MiB beside an 9 MiB heap at an
/// 83 MiB peak under churn, measured). The threads' small allocations
/// still go through glibc's per-thread caches.
fn one_heap_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator tuning (it takes glibc's own
    // lock); called before the daemon starts its threads.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Returns the heap that start-up used and freed to the system. Parsing the
/// kernel's BTF and loading the object peak at ~9 MiB of heap, all freed
/// once attached, but glibc keeps freed heap mapped: without this an idle
/// daemon sat at 10.5 MiB of anonymous RSS instead of 1.5 (measured).
fn give_back_startup_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap memory; no pointer held
    // by this program is affected.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The "tracing" line: from here on every upgrade on the ports is seen.
fn announce(opts: &Options<'_>, attached: &Attached, outputs: &Outputs) {
    let scope = if opts.scope.is_everything() {
        String::new()
    } else {
        let mut who: Vec<String> = opts.scope.pids.iter().map(|p| format!("pid {p}")).collect();
        who.extend(
            opts.scope
                .exes
                .iter()
                .map(|e| format!("exe {}", escape::text(e))),
        );
        format!(" (reporting only {})", who.join(", "))
    };
    eprintln!(
        "wstrace: tracing {}{scope} with {} probes",
        opts.ports,
        attached.set.name()
    );
    outputs.probe_set(attached.set.name());
    // Every reason's series exists from the start, at 0.
    for (reason, _, _) in Losses::default().each() {
        outputs.events_lost(reason, 0);
    }
    for reason in ["budget", "ring_full"] {
        outputs.stacks_elided(reason, 0);
    }
    outputs.events_lost(crate::output::LOG_UNWRITTEN, 0);
    if opts.otlp.is_some() {
        outputs.events_lost(crate::output::otlp::OTLP_LOST, 0);
    }
}

/// Who opens uprobe perf events (CAP_SYS_ADMIN): the helper process for
/// the whole run, or, without one, the daemon itself until the privilege
/// drop (then servers found later are only named).
struct UprobeOpener {
    pmu: Option<UprobePmu>,
    helper: Option<Helper>,
    /// Why there is no helper, said once when the first server is covered
    /// (or found too late).
    no_helper: Option<String>,
}

impl UprobeOpener {
    fn start() -> Self {
        let (pmu, helper) = match UprobePmu::read() {
            Ok(pmu) => (
                Some(pmu),
                Helper::start(move |r: &uprobe_helper::Request| uprobe_open::open_checked(&pmu, r)),
            ),
            Err(e) => (None, Err(e)),
        };
        match helper {
            Ok(h) => Self {
                pmu,
                helper: Some(h),
                no_helper: None,
            },
            Err(e) => Self {
                pmu,
                helper: None,
                no_helper: Some(e),
            },
        }
    }

    fn open(
        &self,
        req: &uprobe_helper::Request,
        before_drop: bool,
    ) -> Result<std::os::fd::OwnedFd, uprobe_helper::OpenError> {
        match (&self.helper, &self.pmu) {
            (Some(h), _) => h.open(req),
            (None, Some(pmu)) if before_drop => uprobe_open::open_checked(pmu, req),
            _ => Err(uprobe_helper::OpenError::Helper(
                "no uprobe helper, and the daemon dropped CAP_SYS_ADMIN".into(),
            )),
        }
    }
}

/// The TLS uprobes per process, and what the survey of servers read.
struct TlsState {
    probes: TlsProbes,
    elf_cache: enrich::tls::ElfCache,
    opener: UprobeOpener,
}

impl TlsState {
    fn new(opener: UprobeOpener) -> Self {
        if let Some(why) = &opener.no_helper {
            eprintln!(
                "wstrace: warning: tls: no uprobe helper ({}): TLS servers that start after wstrace will not be covered",
                escape::text(why)
            );
        }
        Self {
            probes: TlsProbes::default(),
            elf_cache: enrich::tls::ElfCache::default(),
            opener,
        }
    }
}

/// Puts TLS uprobes on the servers a listener scan found (and takes them
/// off those that exited), saying for each what is covered.
///
/// Opening a uprobe perf event needs CAP_SYS_ADMIN (measured on 6.18:
/// CAP_PERFMON alone gets EACCES), which the daemon does not keep after
/// start-up (`startup`): the uprobe helper opens them for it. Without a
/// helper, a server found later is surveyed and named, not covered.
fn cover_tls(
    tls: Option<&mut TlsState>,
    attached: &mut Attached,
    scan: &ListenerScan,
    startup: bool,
) {
    let Some(tls) = tls else {
        return;
    };
    for &pid in &scan.exited {
        tls.probes.forget(pid);
    }
    let can_open = startup || tls.opener.helper.is_some();
    for (pid, comm) in &scan.new {
        if tls.probes.covers(*pid) {
            continue;
        }
        let who = format!("pid {pid} ({})", escape::text(comm));
        // Symbols only where they will be used: a server that gets no
        // uprobes is named from its maps alone.
        let Some(survey) = enrich::tls::survey(*pid, can_open, &mut tls.elf_cache) else {
            continue; // exited already
        };
        let mut covered = Vec::new();
        if !can_open {
            if !survey.targets.is_empty() {
                eprintln!(
                    "wstrace: warning: tls: {who} started after wstrace: its TLS library ({}) gets no uprobes (no uprobe helper, and attaching them needs CAP_SYS_ADMIN, dropped after start-up), so its wss:// connections are not seen: restart wstrace with CAP_SYS_ADMIN to cover it (README: The uprobe helper)",
                    survey
                        .targets
                        .iter()
                        .map(|t| escape::text(&t.file.path).into_owned())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            continue;
        }
        for t in &survey.targets {
            let functions: Vec<(&'static str, u64)> =
                t.functions.iter().map(|(&f, &o)| (f, o)).collect();
            let Some(dev) = uprobe_helper::parse_maps_dev(&t.file.dev) else {
                eprintln!(
                    "wstrace: warning: tls: {who}: {}: unexpected device {}",
                    escape::text(&t.file.path),
                    escape::text(&t.file.dev)
                );
                continue;
            };
            let file = ProbedFile {
                map_files: &t.file.map_files,
                dev,
                inode: t.file.inode,
            };
            let opener = &tls.opener;
            match tls
                .probes
                .attach(&mut attached.ebpf, *pid, &file, &functions, &mut |req| {
                    opener.open(req, startup)
                }) {
                Ok(_) => covered.push(format!(
                    "{} in {}",
                    t.functions.keys().copied().collect::<Vec<_>>().join(", "),
                    escape::text(&t.file.path)
                )),
                Err(e) => eprintln!(
                    "wstrace: warning: tls: {who}: {}: {}",
                    escape::text(&t.file.path),
                    escape::text(&e.to_string())
                ),
            }
        }
        let go = survey
            .go
            .as_ref()
            .map(|(file, go)| cover_go(tls, attached, *pid, file, go, startup));
        for (path, why) in &survey.unreadable {
            eprintln!(
                "wstrace: warning: tls: {who}: {} was not read: {}",
                escape::text(path),
                escape::text(why)
            );
        }
        let uncovered = if survey.uncovered.is_empty() {
            String::new()
        } else {
            format!("; not covered: {}", survey.uncovered.join(", "))
        };
        let late = if startup {
            ""
        } else {
            " (started after wstrace)"
        };
        if let Some(go) = &go {
            eprintln!("wstrace: tls: {who}{late}: {go}");
        }
        if covered.is_empty() && go.is_some() {
            if !uncovered.is_empty() {
                eprintln!("wstrace: tls: {who}{late}{uncovered}");
            }
        } else if covered.is_empty() {
            eprintln!(
                "wstrace: tls: {who}{late}: no OpenSSL-compatible TLS library (libssl, or linked in with symbols): only plaintext is seen{uncovered}"
            );
        } else {
            eprintln!(
                "wstrace: tls: {who}: OpenSSL covered: uprobes on {}{uncovered}",
                covered.join("; ")
            );
        }
    }
}

/// Puts the Go crypto/tls uprobes on Go program `pid` (its executable
/// `file`), and says what it is built with and whether it is covered.
fn cover_go(
    tls: &mut TlsState,
    attached: &mut Attached,
    pid: u32,
    file: &enrich::tls::MappedFile,
    go: &enrich::gotls::GoTls,
    startup: bool,
) -> String {
    let built = format!(
        "Go {} ({})",
        go.version
            .as_deref()
            .map_or_else(|| "of unknown version".into(), escape::text),
        go.arch.map_or("unknown architecture", |a| a.name())
    );
    let f = match &go.functions {
        Ok(f) => f,
        Err(why) => {
            return format!(
                "{built} crypto/tls not covered: {}: only plaintext is seen",
                escape::text(why)
            );
        }
    };
    let Some(dev) = uprobe_helper::parse_maps_dev(&file.dev) else {
        return format!(
            "{built} crypto/tls not covered: unexpected device {}",
            escape::text(&file.dev)
        );
    };
    let probed = ProbedFile {
        map_files: &file.map_files,
        dev,
        inode: file.inode,
    };
    let hooks = crate::attach::gotls::hooks(f.write, f.read, &f.read_returns);
    let opener = &tls.opener;
    match tls
        .probes
        .attach_hooks(&mut attached.ebpf, pid, &probed, &hooks, &mut |req| {
            opener.open(req, startup)
        }) {
        Ok(_) => format!(
            "{built} crypto/tls covered: uprobes on (*Conn).Write, (*Conn).Read and its {} RET instructions in {}",
            f.read_returns.len(),
            escape::text(&file.path)
        ),
        Err(e) => format!(
            "{built} crypto/tls not covered: {}: {}",
            escape::text(&file.path),
            escape::text(&e.to_string())
        ),
    }
}

/// How often processes listening on the traced ports are looked for (and
/// exited ones forgotten). New workers of a pre-forking server are described
/// from their first close if they lived this long before it.
const LISTENER_SCAN_INTERVAL: Duration = Duration::from_secs(2);

/// The stages, wired: records from the reader through the matcher; events
/// and completed reports through the enricher, the diagnosis and the
/// outputs. Warns about evictions and losses as they happen.
struct EventLoop<'a> {
    reader: Reader,
    matcher: Matcher,
    /// The first close of each proxy chain, for its other hops' reports.
    chain_causes: ChainCauses,
    enricher: Enricher,
    outputs: Outputs,
    attached: Attached,
    /// The TLS uprobes per server process (`--tls auto`, programs loaded).
    tls: Option<TlsState>,
    /// `--debug-probes`: the kernel's decision lines, printed each tick.
    probe_log: Option<crate::probe_log::ProbeLog>,
    ports: &'a Ports,
    /// `--pid`/`--exe`: reports of other processes' sockets are dropped.
    scope: Scope,
    max_sockets: u32,
    /// Reports to print before stopping (`--count`).
    limit: u64,
    /// What was already warned about and counted in the metrics.
    losses_reported: Losses,
    /// Closes reported without a stack copy of their own (not losses).
    stacks_elided: StacksElided,
    /// Per process, the over-budget totals last said (`name_over_budget`).
    over_budget_said: HashMap<u32, ProcessBudget>,
    /// The `over_budget` count when processes were last named.
    over_budget_named: u64,
}

/// What `tgid` lost over its fair share since `before` (both the kernel's
/// running totals; an entry the kernel evicted and made again starts from
/// 0), or None if nothing new.
fn over_budget_line(tgid: u32, before: &ProcessBudget, now: &ProcessBudget) -> Option<String> {
    let since = |n: u32, b: u32| if n >= b { n - b } else { n };
    let events = since(now.dropped, before.dropped);
    if events == 0 {
        return None;
    }
    Some(format!(
        "pid {tgid}: {events} event(s) not sent over its fair share of the ring (past half full, {} per {}th of the ring read): {} close(s) not reported, {} connection(s) not traced [over_budget]",
        wstrace_common::FAIR_SHARE_EVENTS,
        wstrace_common::FAIR_SHARE_WINDOW,
        since(now.dropped_closes, before.dropped_closes),
        since(now.dropped_upgrades, before.dropped_upgrades),
    ))
}

/// Closes whose user stack copy the kernel did not make, by reason: said
/// at exit beside the losses, and counted in `wstrace_stacks_elided_total`.
#[derive(Clone, Copy, Debug, Default)]
struct StacksElided {
    /// The call site was over its copies a second.
    budget: u64,
    /// The stack ring was full.
    ring_full: u64,
}

impl StacksElided {
    fn count(&mut self, reason: &str) {
        match reason {
            "budget" => self.budget += 1,
            _ => self.ring_full += 1,
        }
    }
}

/// Everything that can make a report go missing, by reason: nothing is
/// dropped silently. Each is warned about on stderr as it grows, counted in
/// `wstrace_lost_events_total{reason}` and totalled at exit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Losses {
    /// The kernel could not write an event: the ring buffer was full.
    ring_full: u64,
    /// The kernel did not write an event: the ring was past half full and
    /// the process over its share (`wstrace_common::FAIR_SHARE_EVENTS`).
    over_budget: u64,
    /// The kernel skipped a program run (another BPF program was running on
    /// that CPU): the event it would have written was never made.
    recursion_miss: u64,
    /// Returns of tcp_recvmsg the kprobe set's kretprobe missed (no free
    /// instance): a request head or a received close frame never seen.
    retprobe_miss: u64,
    /// Upgraded sockets evicted: more than --max-sockets were open at once.
    max_sockets: u64,
    /// Events for sockets whose upgrade was never seen (lost, or before the
    /// probes attached).
    orphan_event: u64,
    /// 101-looking writes whose request asked for no upgrade (ignored on
    /// purpose: a response body that starts like a 101).
    not_an_upgrade: u64,
    /// Proxy chains forgotten while a socket of theirs was open: more than
    /// `pipeline::chain::MAX_CHAINS` at once; their reports are unlinked.
    chain_evicted: u64,
}

impl Losses {
    /// (metric label, count, what to tell the operator).
    fn each(&self) -> [(&'static str, u64, &'static str); 8] {
        [
            (
                "ring_full",
                self.ring_full,
                "events lost (ring buffer full); reports may be missing",
            ),
            (
                "over_budget",
                self.over_budget,
                "events not sent: the ring was past half full and their process over its fair share; that process's reports may be missing, other processes' are kept",
            ),
            (
                "recursion_miss",
                self.recursion_miss,
                "probe runs skipped by the kernel (another BPF program was running on the CPU); reports may be missing",
            ),
            (
                "retprobe_miss",
                self.retprobe_miss,
                "tcp_recvmsg returns missed by the kretprobe (more tasks inside tcp_recvmsg than it has room for); request heads or close frames may be missing",
            ),
            (
                "max_sockets",
                self.max_sockets,
                "upgraded socket(s) evicted: more than --max-sockets were open at once, and the oldest are no longer traced (raise --max-sockets)",
            ),
            (
                "orphan_event",
                self.orphan_event,
                "event(s) for sockets whose 101 was not seen (upgraded before tracing started, or its event was dropped)",
            ),
            (
                "not_an_upgrade",
                self.not_an_upgrade,
                "101-looking write(s) ignored: the request asked for no upgrade",
            ),
            (
                "chain_evicted",
                self.chain_evicted,
                "proxy chain(s) forgotten while open (too many at once): their hops are reported unlinked",
            ),
        ]
    }
}

impl EventLoop<'_> {
    fn done(&self) -> bool {
        self.outputs.printed >= self.limit
    }

    async fn run(&mut self, duration: Option<Duration>) -> Result<()> {
        let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let deadline = duration.map(|d| tokio::time::Instant::now() + d);
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let mut last_scan = tokio::time::Instant::now();
        while !self.done() {
            tokio::select! {
                batch = self.reader.records.recv() => {
                    let Some(batch) = batch else {
                        bail!("the ring-buffer reader stopped unexpectedly");
                    };
                    for event in batch.events {
                        self.deliver(event)?;
                        if self.done() {
                            break;
                        }
                    }
                    // The batch's reports in one write.
                    self.outputs.flush_stdout()?;
                }
                _ = tick.tick() => {
                    let scan = last_scan.elapsed() >= LISTENER_SCAN_INTERVAL;
                    if scan {
                        let found = self.enricher.remember_listeners(self.ports);
                        cover_tls(self.tls.as_mut(), &mut self.attached, &found, false);
                        last_scan = tokio::time::Instant::now();
                    }
                    for r in self.matcher.tick(monotonic_ns()) {
                        self.report(&r)?;
                        if self.done() {
                            return Ok(());
                        }
                    }
                    self.warn_losses(scan);
                    if let Some(p) = &mut self.probe_log {
                        p.drain(false);
                    }
                    self.outputs.tick()?;
                }
                _ = sigint.recv() => break,
                _ = sigterm.recv() => break,
                _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => break,
            }
        }
        Ok(())
    }

    /// One decoded ring-buffer record through the matcher to the outputs.
    fn deliver(&mut self, event: Result<Event>) -> Result<()> {
        let mut ev = match event {
            Ok(ev) => ev,
            Err(e) => {
                eprintln!("wstrace: warning: undecodable event: {e:#}");
                return Ok(());
            }
        };
        self.enricher.observe(&ev);
        if ev.kind == EventKind::Upgrade && self.in_scope(ev.pid) {
            self.outputs.upgrade_seen();
        }
        if let Some(reason) = ev.stacks.as_ref().and_then(|s| s.fate.elided_reason()) {
            self.outputs.stacks_elided(reason, 1);
            self.stacks_elided.count(reason);
        }
        self.enricher.unwind(&mut ev);
        self.enricher.note_crash(&ev);
        for r in self.matcher.on_event(ev) {
            self.report(&r)?;
            if self.done() {
                break;
            }
        }
        Ok(())
    }

    /// Is `pid` (the process that wrote a 101) one `--pid`/`--exe` asked
    /// for? Its executable is known once its first event was observed.
    fn in_scope(&self, pid: u32) -> bool {
        self.scope.is_everything()
            || self
                .scope
                .admits(pid, self.enricher.process_exe(pid).as_deref())
    }

    /// enrich -> diagnose -> output for one completed report (of a process
    /// in scope: the others are not reported, and not lost either).
    fn report(&mut self, r: &CloseReport) -> Result<()> {
        if !self.in_scope(r.upgrader.pid) {
            return Ok(());
        }
        let enriched = self.enricher.resolve(r);
        let diagnosis = diagnose::diagnose(&Facts::of(&enriched));
        let diagnosis = self.chain_causes.apply(r, diagnosis);
        self.outputs.emit(&View {
            enriched,
            diagnosis,
        })
    }

    /// The counts now. The programs' skipped runs take a file read per
    /// program: they are read only when `read_programs`, and otherwise
    /// stay as last read.
    fn losses(&self, read_programs: bool) -> Losses {
        Losses {
            ring_full: probes::lost_events(&self.attached.ebpf, lost::RING_FULL),
            over_budget: probes::lost_events(&self.attached.ebpf, lost::OVER_BUDGET),
            recursion_miss: if read_programs {
                probes::recursion_misses(&self.attached.ebpf)
            } else {
                self.losses_reported.recursion_miss
            },
            retprobe_miss: match (&self.attached.retprobe, read_programs) {
                (Some(r), true) => r.missed(),
                _ => self.losses_reported.retprobe_miss,
            },
            max_sockets: self.matcher.evicted,
            orphan_event: self.matcher.orphan_events,
            not_an_upgrade: self.matcher.not_upgrades,
            chain_evicted: self.matcher.chains.evicted,
        }
    }

    /// Warns about, and counts, what went missing since the last call.
    fn warn_losses(&mut self, read_programs: bool) {
        let now = self.losses(read_programs);
        let before = self.losses_reported.each();
        for (i, (reason, n, what)) in now.each().into_iter().enumerate() {
            let new = n.saturating_sub(before[i].1);
            if new > 0 {
                eprintln!("wstrace: warning: {new} {what} [{reason}]");
                self.outputs.events_lost(reason, new);
            }
        }
        // Named every 2 s at most (with the programs' counts): one line per
        // process, not one per tick of a sustained flood.
        if read_programs && now.over_budget > self.over_budget_named {
            self.name_over_budget();
            self.over_budget_named = now.over_budget;
        }
        self.losses_reported = now;
    }

    /// Says which processes lost events over their fair share, and how many
    /// since last said: an aggregate per process instead of silence (the
    /// kernel keeps the totals, `PROCESS_BUDGETS`).
    fn name_over_budget(&mut self) {
        for (tgid, b) in probes::over_budget_processes(&self.attached.ebpf) {
            let before = self
                .over_budget_said
                .get(&tgid)
                .copied()
                .unwrap_or_default();
            let Some(line) = over_budget_line(tgid, &before, &b) else {
                continue;
            };
            eprintln!("wstrace: warning: {line}");
            // Bounded like the kernel map it mirrors; a process evicted
            // here is only said again in full.
            if self.over_budget_said.len() >= wstrace_common::BUDGET_PROCESSES as usize {
                self.over_budget_said.clear();
            }
            self.over_budget_said.insert(tgid, b);
        }
    }

    /// Stops the kernel side first, then reads what it wrote before that: an
    /// event produced while attached is either reported or counted as lost,
    /// and closes after the signal cannot overflow the ring into false losses.
    /// Closes already seen but not yet complete are still printed.
    async fn shutdown(mut self) -> Result<u64> {
        // Last read of the programs' skipped runs: unloading closes their fds.
        self.warn_losses(true);
        // The TLS uprobes' perf events hold their programs: closing them
        // (and ending the helper) is their detach.
        self.tls = None;
        self.attached.detach_all();
        // The programs are gone: these are their last lines.
        if let Some(p) = &mut self.probe_log {
            p.drain(true);
        }
        self.reader.finish();
        while !self.done() {
            let Some(batch) = self.reader.records.recv().await else {
                break;
            };
            for event in batch.events {
                self.deliver(event)?;
                if self.done() {
                    break;
                }
            }
        }
        if !self.done() {
            for r in self.matcher.flush(monotonic_ns()) {
                self.report(&r)?;
                if self.done() {
                    break;
                }
            }
        }
        // The programs are unloaded: their skipped runs are final as last read.
        let total = self.losses(false);
        for (reason, n, what) in total.each() {
            match reason {
                _ if n == 0 => {}
                "ring_full" => {
                    eprintln!("wstrace: {n} events were lost in total (ring buffer full)")
                }
                "max_sockets" => eprintln!(
                    "wstrace: {n} upgraded socket(s) were evicted in total (--max-sockets={})",
                    self.max_sockets
                ),
                _ => eprintln!("wstrace: in total: {n} {what} [{reason}]"),
            }
        }
        let e = self.stacks_elided;
        if e.budget + e.ring_full > 0 {
            eprintln!(
                "wstrace: {} close(s) were reported without a user stack copy of their own: {} over their call site's {} copies a second (each names the site's last copy), {} with the stack ring full",
                e.budget + e.ring_full,
                e.budget,
                wstrace_common::STACK_COPIES_PER_SITE,
                e.ring_full
            );
        }
        self.outputs.finish();
        Ok(self.outputs.printed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(dropped: u32, closes: u32, upgrades: u32) -> ProcessBudget {
        ProcessBudget {
            dropped,
            dropped_closes: closes,
            dropped_upgrades: upgrades,
            ..ProcessBudget::default()
        }
    }

    #[test]
    fn over_budget_line_says_what_is_new_per_process() {
        let none = ProcessBudget::default();
        assert_eq!(over_budget_line(7, &none, &none), None);
        let first = budget(10, 4, 3);
        let line = over_budget_line(7, &none, &first).expect("new drops");
        assert!(line.starts_with("pid 7: 10 event(s) not sent"), "{line}");
        assert!(line.contains("4 close(s) not reported, 3 connection(s) not traced"));
        // Only what is new since last said.
        assert_eq!(over_budget_line(7, &first, &first), None);
        let line = over_budget_line(7, &first, &budget(15, 6, 3)).expect("more");
        assert!(
            line.contains(": 5 event(s)") && line.contains("2 close(s)"),
            "{line}"
        );
        // The kernel evicted and remade the entry: its totals restart.
        let line = over_budget_line(7, &budget(15, 6, 3), &budget(2, 1, 0)).expect("restart");
        assert!(
            line.contains(": 2 event(s)") && line.contains("1 close(s)"),
            "{line}"
        );
    }

    fn dir(name: &str) -> std::path::PathBuf {
        let d =
            std::env::temp_dir().join(format!("wstrace-chainkey-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    }

    #[test]
    fn chain_key_file_is_a_regular_file_of_enough_bytes_read_without_blocking() {
        let d = dir("file");
        let good = d.join("good");
        std::fs::write(&good, "0123456789abcdef0123456789abcdef\n").expect("write");
        assert!(chain_key(Some(&good)).is_ok());
        assert!(chain_key(None).is_ok());
        let short = d.join("short");
        std::fs::write(&short, "tiny\n").expect("write");
        let e = format!("{:#}", chain_key(Some(&short)).expect_err("short key"));
        assert!(e.contains("at least 16"), "{e}");
        // A FIFO nobody writes to: refused at once, never waited on.
        let fifo = d.join("fifo");
        let c = std::ffi::CString::new(fifo.to_string_lossy().as_bytes()).expect("path");
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = format!("{:#}", chain_key(Some(&fifo)).expect_err("fifo"));
        assert!(e.contains("not a regular file"), "{e}");
        let e = format!(
            "{:#}",
            chain_key(Some(&d.join("missing"))).expect_err("missing")
        );
        assert!(e.contains("cannot read"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
