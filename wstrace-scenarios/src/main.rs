//! `ws-scenario`: real sockets against a real `wstrace`, with assertions on
//! its reports. The host integration test (tests/host.rs) and the kernel
//! matrix VMs (`cargo xtask vm`) run the same `check`, so a scenario means the
//! same thing on every kernel and probe set.
//!
//! - `ws-scenario serve --bind IP --mode MODE`: one tiny server (a child of
//!   `check`, so reports name a process other than the checker);
//! - `ws-scenario check --wstrace PATH --probe SET`: runs every scenario and
//!   prints `SCENARIO <name> probe=<set> kernel=<release> PASS|FAIL|SKIP <detail>`;
//!   with `--go-tls PATH`, also the Go crypto/tls scenarios (gotls.rs).
mod check;
mod client;
mod expect;
mod gotls;
mod serve;

use std::net::SocketAddr;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ws-scenario", about = "Real-socket scenarios for wstrace")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve one behaviour on IP:PORT (default: an ephemeral port); prints `READY <port>`.
    Serve {
        #[arg(long)]
        bind: std::net::IpAddr,
        #[arg(long, default_value_t = 0)]
        port: u16,
        #[arg(long, value_enum)]
        mode: serve::Mode,
        /// Serve one connection, then exit (or exec): a closer that is gone
        /// by the time its report is printed.
        #[arg(long, value_enum)]
        once: Option<serve::AfterOne>,
        /// `--mode relay`: the server to relay to (IP:PORT).
        #[arg(long)]
        upstream: Option<SocketAddr>,
        /// `--mode relay`: rewrite the handshake (a Key of the relay's own
        /// upstream, the Accept due downstream).
        #[arg(long, requires = "upstream")]
        rewrite_key: bool,
    },
    /// Run the scenarios against a wstrace binary (needs root).
    Check(check::Args),
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Serve {
            bind,
            port,
            mode,
            once,
            upstream,
            rewrite_key,
        } => match serve::run(
            SocketAddr::new(bind, port),
            mode,
            once,
            upstream.map(|addr| serve::Upstream { addr, rewrite_key }),
        ) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("ws-scenario serve: error: {e:#}");
                1
            }
        },
        Command::Check(args) => match check::run(&args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("ws-scenario check: error: {e:#}");
                1
            }
        },
    };
    std::process::exit(code);
}
