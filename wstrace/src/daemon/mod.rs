//! The daemon: the stages run in order. `run` checks the options, opens the
//! outputs, attaches the probes, then an [`EventLoop`] moves each event
//! through decode -> match -> enrich -> diagnose -> output until a signal,
//! `--count` or `--duration` ends it; shutdown detaches first and drains
//! what the kernel wrote before that.
mod event_loop;
mod losses;
mod startup;
mod tls_coverage;

use std::time::Duration;

use anyhow::{Context as _, Result};
use aya::maps::RingBuf;

use self::{
    event_loop::EventLoop,
    losses::LossBook,
    startup::{
        announce, attach_probes, chain_key, check_options, give_back_startup_heap, one_heap_arena,
        open_log, serve_metrics, start_otlp,
    },
    tls_coverage::{TlsState, UprobeOpener, cover_tls},
};
use crate::{
    attach::{self as probes, timing::timed},
    cli::CommonArgs,
    diagnose::chain::ChainCauses,
    enrich::Enricher,
    hardening::privileges,
    model::{Ports, Scope},
    output::Outputs,
    pipeline::{matcher::Matcher, reader::Reader},
};

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
    let started = std::time::Instant::now();
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
    let scan = timed(
        || "listeners".into(),
        || enricher.remember_listeners(opts.ports),
    );
    let mut tls = match opener {
        Some(opener) if attached.tls_loaded => Some(TlsState::new(opener)),
        _ => None,
    };
    timed(
        || "TLS survey".into(),
        || cover_tls(tls.as_mut(), &mut attached, &scan, true),
    );
    privileges::drop_after_attach(|| attached.maps_usable());
    give_back_startup_heap();
    announce(&opts, &attached, &outputs);
    // A slow start is explained (which program's verification, which
    // attach): on an old kernel or a busy host it can take a minute.
    let steps = probes::timing::take();
    if started.elapsed() >= probes::timing::SLOW {
        eprintln!(
            "wstrace: note: {}",
            probes::timing::summary("start-up took", started.elapsed(), &steps)
        );
    }
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
        losses: LossBook::default(),
    };
    event_loop.run(opts.duration).await?;
    event_loop.shutdown().await
}
