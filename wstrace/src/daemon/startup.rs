//! Start-up: the options no parser could check, the outputs (opened before
//! the probes, so a bad path or URL fails with nothing loaded), the probe
//! set and its buffers, the heap start-up used, and the "tracing" line.
use anyhow::{Context as _, Result, bail};

use super::{Options, losses::Losses};
use crate::{
    attach::{self as probes, Attached, btf, tracefs},
    cli::CommonArgs,
    enrich::unwind::UserStackMode,
    output::{Outputs, escape, logfile::LogFile, metrics},
    pipeline::chain::ChainKey,
    redact::Redactor,
};

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
/// copies are a small part of it). Counted in the records' ring sizes, not
/// the decoded events' heap (see `pipeline::reader`); that heap is less
/// since an event's stacks are boxed (240 bytes an event, 472 before, when
/// this bound held ~11 MiB of heap under churn, measured with heaptrack).
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

/// The chain key: the fleet secret of `--chain-key-file`, else the
/// built-in one. The file is the operator's, but opened as a regular file
/// only, without blocking (a FIFO cannot hang the start) and read bounded.
pub(super) fn chain_key(path: Option<&std::path::Path>) -> Result<ChainKey> {
    use rustix::fs::{Mode, OFlags};
    use std::io::Read as _;
    let Some(path) = path else {
        return Ok(ChainKey::default());
    };
    let shown = escape::text(&path.to_string_lossy()).into_owned();
    let file = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map(std::fs::File::from)
    .map_err(std::io::Error::from)
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

/// Options no clap parser could check; returns the redaction policy.
pub(super) fn check_options(opts: &Options<'_>) -> Result<Redactor> {
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
pub(super) fn open_log(opts: &Options<'_>) -> Result<Option<LogFile>> {
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
pub(super) fn start_otlp(opts: &Options<'_>) -> Result<Option<crate::output::otlp::Otlp>> {
    let Some(url) = opts.otlp else {
        return Ok(None);
    };
    let o = crate::output::otlp::Otlp::start(url)?;
    eprintln!("wstrace: sending closes and metrics to {url} (OTLP/HTTP)");
    Ok(Some(o))
}

pub(super) fn serve_metrics(opts: &Options<'_>) -> Result<Option<metrics::Metrics>> {
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
pub(super) fn attach_probes(opts: &Options<'_>) -> Result<(Attached, usize)> {
    let offsets = probes::timing::timed(
        || "kernel layout (BTF)".into(),
        || btf::resolve(&opts.common.btf),
    )?;
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
pub(super) fn one_heap_arena() {
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
pub(super) fn give_back_startup_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap memory; no pointer held
    // by this program is affected.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The "tracing" line: from here on every upgrade on the ports is seen.
pub(super) fn announce(opts: &Options<'_>, attached: &Attached, outputs: &Outputs) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
