//! `wstrace-bench`: the benchmark lab (what `cargo xtask bench` runs).
//!
//! - `lab`: measures what wstrace costs (load, in-kernel cost per program,
//!   the VMs' probe sets, the TLS uprobes) and writes every number, typed,
//!   to target/bench/results.json. It measures; it writes no prose.
//! - `render`: BENCHMARKS.md from such a results file (a partial run's
//!   sections spliced into the file's others). Text only, no measurement.
//!
//! The load it measures under is the other binary of this crate, `ws-bench`.

mod bench;
mod paths;
mod process;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "wstrace-bench",
    about = "wstrace's benchmark lab: measure (lab), then write BENCHMARKS.md (render)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure what wstrace costs (root, an idle machine); results as JSON.
    Lab(bench::BenchArgs),
    /// Render a results file as BENCHMARKS.md.
    Render(RenderArgs),
}

#[derive(clap::Args)]
struct RenderArgs {
    /// The lab's results [default: target/bench/results.json]
    #[arg(long, value_name = "FILE")]
    results: Option<PathBuf>,
    /// Write into FILE (a partial run replaces only its own sections);
    /// without it the text is printed.
    #[arg(long, value_name = "FILE")]
    write: Option<PathBuf>,
}

fn render(args: &RenderArgs) -> Result<()> {
    let results = match &args.results {
        Some(path) => path.clone(),
        None => paths::target_dir()?.join("bench/results.json"),
    };
    let json = std::fs::read(&results).with_context(|| {
        format!(
            "reading {}: run `wstrace-bench lab` (or `cargo xtask bench`) first",
            results.display()
        )
    })?;
    let res: bench::Results = serde_json::from_slice(&json)
        .with_context(|| format!("{} is not a results file", results.display()))?;
    let old = match &args.write {
        Some(path) => std::fs::read_to_string(path).unwrap_or_default(),
        None => String::new(),
    };
    let md = bench::render::markdown(&res, &old);
    match &args.write {
        Some(path) => {
            std::fs::write(path, &md).with_context(|| format!("writing {}", path.display()))?;
            println!("bench: wrote {}", path.display());
        }
        None => print!("{md}"),
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Lab(args) => bench::run(args),
        Command::Render(args) => render(args),
    };
    if let Err(err) = result {
        eprintln!("wstrace-bench: error: {err:#}");
        std::process::exit(1);
    }
}
