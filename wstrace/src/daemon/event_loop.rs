//! The event loop: records from the reader through the matcher; events
//! and completed reports through the enricher, the diagnosis and the
//! outputs, until a signal, `--count` or `--duration`; then the shutdown
//! that detaches first and drains what the kernel wrote before that.
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use tokio::signal::unix::{SignalKind, signal};

use super::{
    losses::LossBook,
    tls_coverage::{TlsState, cover_tls},
};
use crate::{
    attach::Attached,
    diagnose::{self, Facts, chain::ChainCauses},
    enrich::{Enricher, clock::monotonic_ns},
    model::{CloseReport, Event, Ports, Scope},
    output::{Outputs, View},
    pipeline::{matcher::Matcher, reader::Reader},
};
use wstrace_common::EventKind;

/// How often processes listening on the traced ports are looked for (and
/// exited ones forgotten). New workers of a pre-forking server are described
/// from their first close if they lived this long before it.
const LISTENER_SCAN_INTERVAL: Duration = Duration::from_secs(2);

/// The stages, wired: records from the reader through the matcher; events
/// and completed reports through the enricher, the diagnosis and the
/// outputs. Warns about evictions and losses as they happen.
pub(super) struct EventLoop<'a> {
    pub(super) reader: Reader,
    pub(super) matcher: Matcher,
    /// The first close of each proxy chain, for its other hops' reports.
    pub(super) chain_causes: ChainCauses,
    pub(super) enricher: Enricher,
    pub(super) outputs: Outputs,
    pub(super) attached: Attached,
    /// The TLS uprobes per server process (`--tls auto`, programs loaded).
    pub(super) tls: Option<TlsState>,
    /// `--debug-probes`: the kernel's decision lines, printed each tick.
    pub(super) probe_log: Option<crate::probe_log::ProbeLog>,
    pub(super) ports: &'a Ports,
    /// `--pid`/`--exe`: reports of other processes' sockets are dropped.
    pub(super) scope: Scope,
    pub(super) max_sockets: u32,
    /// Reports to print before stopping (`--count`).
    pub(super) limit: u64,
    /// What was already warned about and counted, per reason.
    pub(super) losses: LossBook,
}

impl EventLoop<'_> {
    fn done(&self) -> bool {
        self.outputs.printed >= self.limit
    }

    pub(super) async fn run(&mut self, duration: Option<Duration>) -> Result<()> {
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
                    self.losses.warn(&self.attached, &self.matcher, &self.outputs, scan);
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
            self.losses.stacks_elided.count(reason);
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

    /// Stops the kernel side first, then reads what it wrote before that: an
    /// event produced while attached is either reported or counted as lost,
    /// and closes after the signal cannot overflow the ring into false losses.
    /// Closes already seen but not yet complete are still printed.
    pub(super) async fn shutdown(mut self) -> Result<u64> {
        // Last read of the programs' skipped runs: unloading closes their fds.
        self.losses
            .warn(&self.attached, &self.matcher, &self.outputs, true);
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
        self.losses
            .say_totals(&self.attached, &self.matcher, self.max_sockets);
        self.outputs.finish();
        Ok(self.outputs.printed)
    }
}
