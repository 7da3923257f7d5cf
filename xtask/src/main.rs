//! Project automation for wstrace: `cargo xtask <command>`.
//!
//! - `setup`: bootstrap what a fresh Debian machine needs: `--for run` the
//!   toolchain (nightly rust-src, bpf-linker built against nightly's LLVM);
//!   `--for test` (the default) also the test lab (QEMU, busybox, nginx ...).
//! - `vm`: the kernel matrix: boot Debian's 5.10 / 6.1 / 6.12 cloud kernels in
//!   QEMU and run the scenarios there with every probe set.
//! - `build`: the release binaries, for this machine or `--target` (arm64).
//! - `run`: set up the toolchain only, build and run wstrace (default: `wstrace demo`).
//! - `test`: everything CI runs (setup, build, tests, kernel matrix).
//! - `bench`: set up and build, then run the benchmark lab (`wstrace-bench
//!   lab`, then `render`: BENCHMARKS.md); on demand, not in `test`.

mod bench;
mod build;
mod cpio;
mod deb;
mod distro;
mod gotls;
mod initramfs;
mod kernels;
mod llvm;
mod matrix;
mod paths;
mod php;
mod process;
mod pythons;
mod qemu;
mod run;
mod setup;
mod table;
mod test;
mod vm;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "wstrace project automation"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing needs (idempotent; a fast no-op when done); `--for run`: only what building and running wstrace needs.
    Setup(setup::SetupArgs),
    /// Build the release binaries (wstrace, ws-scenario), for this machine or cross-compiled with --target.
    Build(build::BuildArgs),
    /// Set up, build and run wstrace (under sudo when not root) [default: `wstrace demo`].
    Run(run::RunArgs),
    /// Build the agent's .deb (cargo-deb) and check its contents.
    Deb(build::BuildArgs),
    /// Run the kernel matrix: scenarios on Debian kernels 5.10, 6.1 and 6.12 in QEMU.
    Vm(vm::VmArgs),
    /// The full test run (what CI runs; as root): setup, build, unit and host tests, kernel matrix.
    Test(test::TestArgs),
    /// Measure wstrace's overhead against no tracer, bpftrace and strace with the lab in wstrace-bench; writes BENCHMARKS.md (needs root, an idle machine, ~10 min).
    Bench(bench::BenchArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup(args) => setup::run(args.purpose),
        Command::Build(args) => build::run(&args),
        Command::Run(args) => run::run(&args),
        Command::Deb(args) => deb::run(args.target.as_deref()).map(|_| ()),
        Command::Vm(args) => vm::run(&args),
        Command::Test(args) => test::run(&args),
        Command::Bench(args) => bench::run(&args),
    };
    if let Err(err) = result {
        // `{:#}` prints the whole context chain on one line: "what failed: why".
        eprintln!("xtask: error: {err:#}");
        std::process::exit(1);
    }
}
