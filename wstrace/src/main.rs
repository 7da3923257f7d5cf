//! wstrace: who closed my WebSocket, and why?
//!
//! Modules, in the order data flows: `probes` (load + attach one probe set,
//! with `btf` and `tracefs` supplying kernel offsets) -> `events` (decode ring
//! buffer records) -> `matcher` (one report per closed upgraded socket) ->
//! `symbolize` -> `output`. `tracer` runs that loop; `demo` runs it against a
//! built-in server.
mod btf;
mod cli;
mod demo;
mod diagnose;
mod events;
mod hostcheck;
mod http;
mod hz;
mod matcher;
mod metrics;
mod output;
mod peer;
mod privileges;
mod probes;
mod procinfo;
mod reader;
mod report;
mod report_html;
mod symbolize;
mod tracefs;
mod tracer;
mod unwind;
mod wsframe;

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
        None => run_trace(&cli.trace).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wstrace: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_trace(args: &cli::TraceArgs) -> anyhow::Result<()> {
    if args.check {
        return hostcheck::run(&args.common);
    }
    let duration = match args.duration {
        Some(d) if !(d.is_finite() && d > 0.0) => {
            anyhow::bail!("--duration must be a positive number of seconds (got {d})")
        }
        Some(d) => Some(Duration::from_secs_f64(d)),
        None => None,
    };
    let opts = tracer::Options {
        ports: &args.ports,
        common: &args.common,
        count: args.count,
        duration,
        log: args.output.as_deref().map(|path| tracer::LogSpec {
            path,
            rotate_size: args.rotate_size,
            rotate_keep: args.rotate_keep,
        }),
        metrics: args.metrics,
    };
    tracer::run(opts, |_| {}).await.map(|_| ())
}
