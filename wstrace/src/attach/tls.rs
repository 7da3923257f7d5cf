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
//! process mapped it cannot redirect the probe. The perf events are opened
//! by the uprobe helper (uprobe_helper.rs: it keeps the CAP_SYS_ADMIN this
//! needs, the daemon does not), or by the daemon itself at start-up when
//! there is no helper; the programs are attached to them here
//! (perf::attach_program), and closing them detaches.
use std::{
    collections::HashMap,
    os::fd::{AsFd as _, OwnedFd},
};

use aya::{Ebpf, programs::UProbe};

use super::{
    error::with_sources,
    perf::{PerfLink, attach_program},
};
use crate::hardening::uprobe::{OpenError, Request};

/// (program, function): the uprobes one target gets, for each function it
/// defines; a program whose name ends in `_ret` goes on the return.
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
/// (file descriptors) per library, a Go program two plus one per RET of
/// `(*Conn).Read` (at most `enrich::gotls::MAX_RETURNS`).
pub const MAX_PROCESSES: usize = 256;

/// Loads the TLS programs into `ebpf` (before the privilege drop).
pub fn load(ebpf: &mut Ebpf) -> Result<(), String> {
    for name in PROGRAMS.into_iter().chain(super::gotls::PROGRAMS) {
        let p = program(ebpf, name)?;
        p.load().map_err(|e| format!("loading {name}: {e}"))?;
    }
    Ok(())
}

/// The uprobes attached, per process: their perf events (closing one
/// detaches its program and removes its breakpoints).
#[derive(Default)]
pub struct TlsProbes {
    events: HashMap<u32, Vec<PerfLink>>,
}

/// Why a process got no uprobes.
#[derive(Debug)]
pub enum AttachTlsError {
    /// [`MAX_PROCESSES`] already have them.
    TooManyProcesses,
    /// The probe could not be opened (the function, and why).
    Open(&'static str, OpenError),
    /// The program could not be attached (the function, and why).
    Attach(&'static str, String),
}

impl std::fmt::Display for AttachTlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooManyProcesses => write!(
                f,
                "{MAX_PROCESSES} processes already have TLS uprobes: this one is not covered"
            ),
            Self::Open(func, e) => write!(f, "opening a uprobe on {func}: {e}"),
            Self::Attach(func, e) => write!(f, "attaching a uprobe on {func}: {e}"),
        }
    }
}

/// One uprobe: which program, on what (for messages), at which file
/// offset, and whether as a uretprobe.
pub struct Hook {
    pub program: &'static str,
    pub function: &'static str,
    pub offset: u64,
    pub retprobe: bool,
}

/// The file a process maps, as a uprobe request names it.
pub struct ProbedFile<'a> {
    /// `/proc/<pid>/map_files/<range>`.
    pub map_files: &'a str,
    /// (major, minor) of its device, and its inode, as maps says.
    pub dev: (u32, u32),
    pub inode: u64,
}

impl TlsProbes {
    pub fn covers(&self, pid: u32) -> bool {
        self.events.contains_key(&pid)
    }

    /// Attaches the uprobes for `functions` (name, file offset) in `file`,
    /// for process `pid` only, with perf events from `open`. On a failure,
    /// what was attached for this file is detached again.
    pub fn attach(
        &mut self,
        ebpf: &mut Ebpf,
        pid: u32,
        file: &ProbedFile<'_>,
        functions: &[(&'static str, u64)],
        open: &mut dyn FnMut(&Request) -> Result<OwnedFd, OpenError>,
    ) -> Result<usize, AttachTlsError> {
        let hooks: Vec<Hook> = HOOKS
            .iter()
            .filter_map(|&(program, func)| {
                let &(_, offset) = functions.iter().find(|(f, _)| *f == func)?;
                Some(Hook {
                    program,
                    function: func,
                    offset,
                    retprobe: program.ends_with("_ret"),
                })
            })
            .collect();
        self.attach_hooks(ebpf, pid, file, &hooks, open)
    }

    /// Attaches each of `hooks` in `file`, for process `pid` only (the
    /// OpenSSL functions above, Go's in `attach::gotls`). On a failure,
    /// what was attached for this file is detached again.
    pub fn attach_hooks(
        &mut self,
        ebpf: &mut Ebpf,
        pid: u32,
        file: &ProbedFile<'_>,
        hooks: &[Hook],
        open: &mut dyn FnMut(&Request) -> Result<OwnedFd, OpenError>,
    ) -> Result<usize, AttachTlsError> {
        if !self.events.contains_key(&pid) && self.events.len() >= MAX_PROCESSES {
            return Err(AttachTlsError::TooManyProcesses);
        }
        // Dropped (so detached) on any error below.
        let mut made = Vec::new();
        for h in hooks {
            let func = h.function;
            let request = Request {
                pid,
                path: file.map_files.to_string(),
                dev: file.dev,
                inode: file.inode,
                offset: h.offset,
                retprobe: h.retprobe,
            };
            let perf = open(&request).map_err(|e| AttachTlsError::Open(func, e))?;
            let program = program(ebpf, h.program).map_err(|e| AttachTlsError::Attach(func, e))?;
            let fd = program
                .fd()
                .map_err(|e| AttachTlsError::Attach(func, with_sources(&e)))?;
            let link = attach_program(perf, fd.as_fd())
                .map_err(|e| AttachTlsError::Attach(func, format!("{e:#}")))?;
            made.push(link);
        }
        let n = made.len();
        self.events.entry(pid).or_default().extend(made);
        Ok(n)
    }

    /// Detaches the uprobes of a process that exited.
    pub fn forget(&mut self, pid: u32) {
        self.events.remove(&pid);
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut UProbe, String> {
    super::program::program(ebpf, name).map_err(|e| with_sources(&e))
}
