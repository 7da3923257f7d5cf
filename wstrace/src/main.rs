//! wstrace: who closed my WebSocket, and why?
//!
//! The tree is the pipeline, in the order an event flows:
//! - `attach`: load and attach one probe set (with `btf` and `tracefs`
//!   supplying the kernel's layout as one typed config);
//! - `pipeline`: `reader` (ring buffer -> queue), `decode` (bytes -> events),
//!   `matcher` (events -> one report per closed upgraded socket);
//! - `enrich`: the process table, symbolized and unwound stacks, the peer;
//! - `diagnose`: the request head, WebSocket frames and the rules;
//! - `output`: text, JSON lines, the log file, metrics.
//!
//! `model` holds the types every stage shares; `daemon` runs the stages in
//! order; `demo` runs them against a built-in server; `check` is `--check`; `report` reads
//! recorded JSON lines back. Imports point one way: a stage uses `model` and
//! the stages before it, never one after it.
mod attach;
mod check;
mod cli;
mod daemon;
mod demo;
mod enrich;
mod hardening;
mod output;
mod pipeline;
mod probe_log;
mod report;
// The pure stages and types, at the paths they had here.
use wstrace_core::{diagnose, model, protocol, redact};
#[cfg(test)]
mod testenv;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser as _;

// One thread: the event loop is sequential by nature (ring buffer, matcher,
// symbolizer state), and a multi-threaded runtime only added cross-thread
// wake-ups (futex) per batch of events. The metrics server has its own thread.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let result = match &cli.command {
        Some(cli::Command::Demo(args)) => demo::run(args).await,
        Some(cli::Command::Report(args)) => report::run(args),
        Some(cli::Command::Floor(args)) => run_floor(args).await,
        None => run_trace(&cli.trace).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Errors can quote paths and names that other users chose.
            eprintln!(
                "wstrace: error: {}",
                output::escape::text(&format!("{e:#}"))
            );
            ExitCode::FAILURE
        }
    }
}

/// `wstrace floor` (hidden; benchmarks): the near-empty programs attached
/// until SIGINT/SIGTERM.
async fn run_floor(args: &cli::FloorArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use tokio::signal::unix::{SignalKind, signal};
    let root = attach::tracefs::ensure_mounted()?;
    let mut ready = args
        .ready_file
        .as_deref()
        .map(output::ready::ReadyFile::prepare)
        .transpose()?;
    let _floor = attach::floor::attach(args.probe, &root)?;
    if let Some(r) = &mut ready {
        r.publish("floor")?;
    }
    eprintln!("wstrace: floor programs attached ({:?})", args.probe);
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    tokio::select! {
        _ = sigint.recv() => {}
        _ = sigterm.recv() => {}
    }
    Ok(())
}

async fn run_trace(args: &cli::TraceArgs) -> anyhow::Result<()> {
    if args.check {
        return check::run(&args.common.btf);
    }
    let duration = match args.duration {
        Some(d) if !(d.is_finite() && d > 0.0) => {
            anyhow::bail!("--duration must be a positive number of seconds (got {d})")
        }
        Some(d) => Some(Duration::from_secs_f64(d)),
        None => None,
    };
    let ports = model::Ports::from_args(&args.ports);
    let opts = daemon::Options {
        ports: &ports,
        scope: model::Scope {
            pids: args.pids.clone(),
            exes: args.exes.clone(),
        },
        common: &args.common,
        count: args.count,
        duration,
        log: args.output.as_deref().map(|path| daemon::LogSpec {
            path,
            rotate_size: args.rotate_size,
            rotate_keep: args.rotate_keep,
        }),
        metrics: args.metrics,
        // An empty --otlp / WSTRACE_OTLP sends nothing.
        otlp: args.otlp.as_deref().filter(|u| !u.is_empty()),
    };
    // Prepared before anything attaches: a bad path stops the start.
    let mut ready_file = args
        .ready_file
        .as_deref()
        .map(output::ready::ReadyFile::prepare)
        .transpose()?;
    let result = daemon::run(opts, |ports, set| {
        if let Some(f) = ready_file.as_mut()
            && let Err(e) = f.publish(set)
        {
            eprintln!("wstrace: warning: {e:#}");
        }
        if let Err(e) = output::ready::notify_systemd(&format!("tracing {ports} with {set} probes"))
        {
            eprintln!("wstrace: warning: {e:#}");
        }
    })
    .await;
    drop(ready_file);
    result.map(|_| ())
}
