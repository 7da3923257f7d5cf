//! Uprobes on the TLS library of each server process (`--tls auto`): the
//! programs (wstrace-ebpf probes/tls.rs) are loaded once with the probe
//! set; each process serving a traced port gets its own uprobes, filtered
//! by the kernel to that process (a pid-scoped perf event installs its
//! breakpoints only in that process's address space), so processes that
//! serve no traced port never hit them, whatever libssl they share.
//!
//! Which file and offsets to probe comes from `enrich::tls` (maps and ELF
//! symbols); the file is named by its `/proc/<pid>/map_files/` entry, which
//! the kernel resolves to the mapped file itself: a path replaced since the
//! process mapped it cannot redirect the probe.
use std::{collections::HashMap, num::NonZeroU32};

use aya::{
    Ebpf,
    programs::{
        UProbe,
        uprobe::{UProbeLinkId, UProbeScope},
    },
};

use super::error::with_sources;

/// (program, function, is a return probe): the uprobes one target gets,
/// for each function it defines.
pub const HOOKS: [(&str, &str); 6] = [
    ("tls_ssl_write", "SSL_write"),
    ("tls_ssl_write", "SSL_write_ex"),
    ("tls_ssl_read", "SSL_read"),
    ("tls_ssl_read_ret", "SSL_read"),
    ("tls_ssl_read_ex", "SSL_read_ex"),
    ("tls_ssl_read_ex_ret", "SSL_read_ex"),
];

/// The programs, each loaded once.
const PROGRAMS: [&str; 5] = [
    "tls_ssl_write",
    "tls_ssl_read",
    "tls_ssl_read_ret",
    "tls_ssl_read_ex",
    "tls_ssl_read_ex_ret",
];

/// Processes given uprobes at once, at most: each costs six perf events
/// (file descriptors) per library.
pub const MAX_PROCESSES: usize = 256;

/// Loads the TLS programs into `ebpf` (before the privilege drop).
pub fn load(ebpf: &mut Ebpf) -> Result<(), String> {
    for name in PROGRAMS {
        let p = program(ebpf, name)?;
        p.load().map_err(|e| format!("loading {name}: {e}"))?;
    }
    Ok(())
}

/// The uprobes attached, per process.
#[derive(Default)]
pub struct TlsProbes {
    links: HashMap<u32, Vec<(&'static str, UProbeLinkId)>>,
}

/// Why a process got no uprobes.
#[derive(Debug)]
pub enum AttachTlsError {
    /// [`MAX_PROCESSES`] already have them.
    TooManyProcesses,
    /// The kernel refused (the function, and its error).
    Kernel(&'static str, String),
}

impl std::fmt::Display for AttachTlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooManyProcesses => write!(
                f,
                "{MAX_PROCESSES} processes already have TLS uprobes: this one is not covered"
            ),
            Self::Kernel(func, e) => write!(f, "attaching a uprobe on {func}: {e}"),
        }
    }
}

impl TlsProbes {
    pub fn covers(&self, pid: u32) -> bool {
        self.links.contains_key(&pid)
    }

    /// Attaches the uprobes for `functions` (name, file offset) in the
    /// file at `target` (a map_files path), for process `pid` only. On a
    /// failure, what was attached for this target is detached again.
    pub fn attach(
        &mut self,
        ebpf: &mut Ebpf,
        pid: u32,
        target: &str,
        functions: &[(&'static str, u64)],
    ) -> Result<usize, AttachTlsError> {
        let Some(scope_pid) = NonZeroU32::new(pid) else {
            return Err(AttachTlsError::Kernel("(pid 0)", "no such process".into()));
        };
        if !self.links.contains_key(&pid) && self.links.len() >= MAX_PROCESSES {
            return Err(AttachTlsError::TooManyProcesses);
        }
        let mut made = Vec::new();
        for (prog, func) in HOOKS {
            let Some(&(_, offset)) = functions.iter().find(|(f, _)| *f == func) else {
                continue;
            };
            let result = match program(ebpf, prog) {
                Ok(p) => p
                    .attach(offset, target, UProbeScope::OneProcess(scope_pid))
                    .map_err(|e| with_sources(&e)),
                Err(e) => Err(e),
            };
            match result {
                Ok(link) => made.push((prog, link)),
                Err(e) => {
                    detach(ebpf, made);
                    return Err(AttachTlsError::Kernel(func, e));
                }
            }
        }
        let n = made.len();
        self.links.entry(pid).or_default().extend(made);
        Ok(n)
    }

    /// Detaches the uprobes of a process that exited.
    pub fn forget(&mut self, ebpf: &mut Ebpf, pid: u32) {
        if let Some(links) = self.links.remove(&pid) {
            detach(ebpf, links);
        }
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut UProbe, String> {
    super::program::program(ebpf, name).map_err(|e| with_sources(&e))
}

fn detach(ebpf: &mut Ebpf, links: Vec<(&'static str, UProbeLinkId)>) {
    for (prog, link) in links {
        if let Ok(p) = program(ebpf, prog) {
            // Already gone (the program was unloaded at shutdown): nothing to undo.
            let _ = p.detach(link);
        }
    }
}
