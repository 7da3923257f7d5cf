//! `wstrace --check`: what this host supports, step by step, without
//! tracing anything: for fleet roll-outs and bug reports. Exit status 1 when
//! no probe set can work here.
//!
//! A top-level command beside `daemon` and `demo`, not part of the `attach`
//! stage: it is handed the one option it reads (the BTF path), so no stage
//! imports `cli`.
use std::path::Path;

use anyhow::{Result, bail};

use crate::attach::{self as probes, btf, tracefs};
use crate::hardening::privileges;

/// A port no server is expected on; the probes attach but see nothing.
const CHECK_PORT: u16 = 1;

/// `btf`: the kernel BTF to read struct offsets from (`--btf`).
pub fn run(btf_path: &Path) -> Result<()> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "wstrace {} on Linux {} ({})",
        env!("CARGO_PKG_VERSION"),
        release.trim(),
        std::env::consts::ARCH
    );
    let line = |what: &str, r: std::result::Result<String, String>| {
        match &r {
            Ok(ok) => println!("  {what:<20} ok: {ok}"),
            Err(e) => println!("  {what:<20} NO: {e}"),
        }
        r.is_ok()
    };
    let privs = line(
        "privileges",
        privileges::check()
            .map(|()| "can load eBPF (root or CAP_BPF+CAP_PERFMON)".into())
            .map_err(|e| format!("{e:#}")),
    );
    let offsets = btf::resolve(btf_path);
    let btf_ok = line(
        "kernel BTF",
        offsets
            .as_ref()
            .map(|_| btf_path.display().to_string())
            .map_err(|e| format!("{e:#}")),
    );
    let root = tracefs::ensure_mounted();
    let tracefs_ok = line(
        "tracefs",
        root.as_ref()
            .map(|p| p.display().to_string())
            .map_err(|e| format!("{e:#}")),
    );
    let (Ok(offsets), Ok(root), true) = (offsets, root, privs) else {
        bail!("tracing cannot work on this host (see the NO lines above)");
    };
    let _ = (btf_ok, tracefs_ok);
    if let Some(warning) = privileges::raise_memlock() {
        println!("  {:<20} warning: {warning}", "memlock");
    }
    let settings = probes::Settings {
        ports: &crate::model::Ports::Only(vec![CHECK_PORT]),
        max_sockets: 1024,
        ring_bytes: 1 << 16,
        // The default: the stack-copy path must load too.
        user_stack_bytes: 16384,
        // The TLS programs must load too.
        tls: true,
        // And the decision log's statements (`--debug-probes`): with it
        // off the verifier skips them.
        debug_probes: true,
    };
    let mut usable = Vec::new();
    for (name, choice) in [
        ("fentry", probes::ProbeChoice::Fentry),
        ("kprobe", probes::ProbeChoice::Kprobe),
        ("tracepoint", probes::ProbeChoice::Tracepoint),
    ] {
        // Attach for real, then drop: detaches everything again.
        let _ = probes::timing::take();
        let start = std::time::Instant::now();
        let r = probes::attach(choice, &settings, &offsets, &root);
        // Where the time went (verification, attaching): on an old kernel
        // or under emulation a set can take a minute to load.
        let took = probes::timing::summary("took", start.elapsed(), &probes::timing::take());
        let r = r.map(|a| {
            let limits = a.limits.join("; ");
            if limits.is_empty() {
                "attaches".to_string()
            } else {
                format!("attaches; {limits}")
            }
        });
        // Here only the reason matters: the line names the set already.
        let r = r.map_err(|e| match &e {
            probes::AttachError::NoProbeSet { failures, .. } => failures
                .iter()
                .map(probes::AttachFailure::reason)
                .collect::<Vec<_>>()
                .join("; "),
            _ => e.to_string(),
        });
        if line(&format!("probe set {name}"), r) {
            usable.push(name);
        }
        println!("  {:<20} {took}", "");
    }
    match usable.first() {
        Some(best) => {
            println!("  {:<20} {best}", "--probe auto uses");
            Ok(())
        }
        None => bail!("no probe set can attach on this kernel (see above)"),
    }
}
