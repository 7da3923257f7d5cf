//! Stack symbolization: raw addresses captured by `bpf_get_stack` become
//! readable frames.
//!
//! One [`blazesym`] symbolizer serves the whole run, because it caches parsed
//! ELF files (symbol tables, DWARF) across calls; parsing libc or a large
//! server binary for every report would dominate the cost.
//!
//! Kernel frames come from `/proc/kallsyms` only (see [`Symbolizer::new`]).
//! User frames come from the process's memory maps. A close is often
//! reported after its process has exited, when `/proc/<pid>` is gone, so
//! [`Symbolizer::remember_process`] caches the maps (and pins the mapped
//! executables, opened through `/proc/<pid>/map_files`) while the process is
//! still alive.
//!
//! Each address becomes at least one [`Frame`] (data: `output::frame`
//! renders it): inlined callees first, innermost first, then the function
//! they were inlined into; an address nothing names is an unknown frame
//! with its module. Kernel stacks lose the tracer's own frames at the top
//! (see [`drop_tracer_frames`]).
//!
//! The offset kept is that of the *captured* address from the function
//! start (the return address, as kernel oopses and bpftrace print it), while
//! the function and the line are looked up at `addr - 1` for every frame but
//! the innermost (as perf does), so the call site is named even when the
//! call is the last instruction of a function.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use blazesym::symbolize::cache::{self, Cache};
use blazesym::symbolize::evict::{self, Evict};
use blazesym::symbolize::source::{Kernel, Process, Source};
use blazesym::symbolize::{CodeInfo, Input, Reason, Sym, Symbolized};
use blazesym::{MaybeDefault, Pid};
use wstrace_common::ustack;

use crate::enrich::maps::{Mapping, is_map_files_path, map_files_path, module_for, read_maps};
use crate::enrich::perf_map::PerfMap;
use crate::enrich::unwind::Unwinder;
use crate::model::{End, Frame, FrameKind, Unresolved, Unwound, UserStackCopy};

/// A process writes the HTTP 101 once per WebSocket: on a busy server that is
/// many times a second, and re-reading its maps (and re-caching its perf map)
/// each time would cost more than the tracing itself. Maps are re-read at most
/// this often; a stale snapshot is refreshed on demand when a live process's
/// address falls outside it (see [`Symbolizer::user_stack`]).
const REMEMBER_INTERVAL: Duration = Duration::from_secs(1);

/// kallsyms lists start addresses only, so blazesym names any address after
/// the last symbol of a region by that symbol, however far away. No kernel
/// function is anywhere near 1 MiB long: an offset this large means the address
/// lies in memory kallsyms does not describe (e.g. a BPF trampoline on an old
/// kernel), and naming a function there would mislead.
pub const MAX_KERNEL_SYM_OFFSET: u64 = 1 << 20;

/// How long the event path waits for the symbolizer worker while the
/// worker makes no progress (asleep or in uninterruptible wait without using
/// CPU): an `open()` of a FIFO, a hung FUSE or NFS mount. Past it the worker
/// is abandoned and the frames are printed unknown.
pub const BLOCKED_BUDGET: Duration = Duration::from_millis(250);

/// How long the event path waits for one request at most, even while the
/// worker computes (parsing the DWARF of a big binary on a loaded host):
/// the longest stall one request can cause. `--symbolize-timeout` sets it.
pub const TOTAL_BUDGET: Duration = Duration::from_secs(2);

/// How often the waiting side looks at the worker's scheduler state.
const POLL: Duration = Duration::from_millis(20);

/// Workers alive at once, abandoned ones included. An abandoned worker
/// stays blocked until its `open()` returns (a FIFO gets a writer), which may
/// be never: this bounds the threads (and their blazesym caches) a hostile
/// host can pile up. At the bound, user frames are printed unknown until
/// one of them finishes.
const MAX_WORKERS: usize = 8;

/// Processes whose symbolization timed out, remembered at once (a bound on
/// memory; when full it starts over).
const MAX_TIMED_OUT: usize = 1024;

/// Turns kernel and user stack addresses into [`Frame`]s.
///
/// Kernel frames are looked up here, on the caller's thread: their only
/// source is `/proc/kallsyms`. User frames need files that traced processes
/// name or control (their binaries, perf maps, debug links, `.dwp` files),
/// and an `open()` of a FIFO or a file on a hung mount blocks with no way to
/// cancel it. So every user-side lookup runs on a worker thread and the
/// caller waits for it within [`BLOCKED_BUDGET`] / [`TOTAL_BUDGET`]; a worker
/// that misses them is abandoned (left to finish or stay blocked on its
/// own), the process it was working for is not symbolized again, and a
/// fresh worker serves the next request. A hostile file costs that
/// process's frames their names, never the daemon its progress.
pub struct Symbolizer {
    kernel: KernelSymbols,
    worker: Option<Worker>,
    /// Threads of this symbolizer's workers still running, the current one
    /// and abandoned ones alike.
    live_workers: Arc<AtomicUsize>,
    /// Pids the current worker holds maps for (see [`Self::remembers`]),
    /// with when it read them: a remember within [`REMEMBER_INTERVAL`] of
    /// that is answered here, without a round trip to the worker (the 101
    /// path runs at every upgrade).
    remembered: HashMap<u32, Instant>,
    /// Processes whose symbolization timed out, with their maps read at
    /// that moment (for module names): their user frames are not looked up
    /// again.
    timed_out: HashMap<u32, Vec<Mapping>>,
    /// How long a request may take; [`Budgets::DEFAULT`] unless set
    /// otherwise.
    budgets: Budgets,
}

/// How long the event path waits for the worker: [`BLOCKED_BUDGET`] while
/// it makes no progress, [`TOTAL_BUDGET`] in all. A field, not only the
/// constants, so that `--symbolize-timeout` can raise the total and tests
/// that are not about the budgets can give a loaded host all the time it
/// needs (parsing a test binary's debug info on 2 busy CPUs takes seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Budgets {
    blocked: Duration,
    total: Duration,
}

impl Budgets {
    const DEFAULT: Budgets = Budgets {
        blocked: BLOCKED_BUDGET,
        total: TOTAL_BUDGET,
    };
}

/// Work for the user-symbols worker.
type Job = Box<dyn FnOnce(&mut UserSymbols) + Send>;

/// The thread that owns a [`UserSymbols`] (blazesym state is `!Send`, so it
/// is created on that thread and never leaves it).
struct Worker {
    jobs: mpsc::Sender<Job>,
    /// Its kernel thread id, 0 until it has started.
    tid: Arc<AtomicI32>,
}

/// Counts a worker thread as live until it ends (also by a panic).
struct LiveWorker(Arc<AtomicUsize>);

impl Drop for LiveWorker {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why a user-side request got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NoAnswer {
    /// The worker blocked or ran past its budget on this process's files.
    TimedOut,
    /// No worker: [`MAX_WORKERS`] are alive (stuck), it could not be
    /// spawned, or it died (a panic in blazesym).
    Unavailable,
}

impl NoAnswer {
    fn unresolved(self) -> Unresolved {
        match self {
            NoAnswer::TimedOut => Unresolved::TimedOut,
            NoAnswer::Unavailable => Unresolved::Unavailable,
        }
    }

    fn why(self) -> &'static str {
        self.unresolved().as_str()
    }
}

/// Kernel stacks, symbolized from `/proc/kallsyms` on the caller's thread.
struct KernelSymbols {
    inner: blazesym::symbolize::Symbolizer,
    kernel: Source<'static>,
    /// Symbolized kernel stacks by their addresses. A server closes its
    /// sockets through a handful of code paths, so at thousands of closes a
    /// second nearly every stack is one seen before; blazesym lookups,
    /// demangling and formatting cost ~30 µs a stack, a hit well under 1 µs.
    stacks: HashMap<Vec<u64>, Vec<Frame>>,
}

/// User stacks and unwinding: the state that lives on the worker thread.
///
/// Holds blazesym state built on `Rc`/`RefCell`, so it is neither `Send` nor
/// `Sync`.
struct UserSymbols {
    inner: blazesym::symbolize::Symbolizer,
    procs: HashMap<u32, Remembered>,
    /// Symbolized user stacks by (pid, addresses), for remembered processes
    /// only, and dropped whenever that process's maps are re-read or it is
    /// forgotten: the same address means the same code only while the
    /// mappings are the ones the stack was symbolized with.
    user_stacks: HashMap<(u32, Vec<u64>), Vec<Frame>>,
    /// Unwind tables of the same remembered processes (dwarf user stacks).
    unwind: Unwinder,
    /// [`REMEMBER_INTERVAL`]; a test of the throttle sets it longer than a
    /// loaded host can take between two calls.
    remember_interval: Duration,
}

/// Entries per stack cache; when full it starts over (distinct stacks are
/// few in practice, so this only bounds memory against pathological hosts).
const STACK_CACHE_MAX: usize = 4096;

fn cache_insert<K: std::hash::Hash + Eq>(
    cache: &mut HashMap<K, Vec<Frame>>,
    key: K,
    frames: &[Frame],
) {
    if cache.len() >= STACK_CACHE_MAX {
        cache.clear();
    }
    cache.insert(key, frames.to_vec());
}

/// What we keep for a process handed to [`Symbolizer::remember_process`].
struct Remembered {
    /// Our own snapshot of `/proc/<pid>/maps`: names the module of a frame
    /// (blazesym reports none for unknown frames, and for pinned files it may
    /// report the `/proc/<pid>/map_files/...` path it first opened them by).
    maps: Vec<Mapping>,
    refreshed: Instant,
    /// ELF files pinned in blazesym's cache under their `map_files` path.
    pinned: Vec<Pin>,
    /// Its perf map (JIT runtimes), read by wstrace: blazesym's own
    /// reading of it is off (it would block on a FIFO or a lease).
    perf_map: Option<PerfMap>,
    /// Whether its files' directories are root's alone ([`trusted_paths`]):
    /// only then does blazesym open files by path (debug links, `.dwp`,
    /// the maps' own paths).
    trusted: bool,
}

/// The path kinds blazesym may open a process's files by: `map_files`
/// always (the mapped file itself: a regular file, no FIFO), the paths
/// named in its maps only when [`trusted_paths`].
fn path_kinds(trusted: bool) -> &'static [bool] {
    if trusted { &[true, false] } else { &[true] }
}

/// Can no user but root put a file next to any of these executable
/// mappings? blazesym opens, with a blocking `open()`, files it finds by
/// name beside a binary (its `.gnu_debuglink` target in the binary's
/// directory or `.debug/` under it, `<binary>.dwp`) and, as a fallback,
/// the binary by its path in maps: in a directory another user can write,
/// any of those can be a FIFO that holds the worker forever, or a file
/// whose lease holds it for the lease-break time. So debug info (DWARF) and
/// path opens are used only when each mapped file's directory is owned by
/// root and writable by no one else, and every directory above it is too
/// (or sticky, like /tmp: others cannot rename root's entry there).
/// Otherwise the process is symbolized from its files' symbol tables,
/// opened through `map_files`: its own names, without line numbers. `stat`
/// only: nothing is opened here.
pub fn trusted_paths(maps: &[Mapping]) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let root_only = |dir: &std::path::Path, direct: bool| {
        std::fs::metadata(dir).is_ok_and(|m| {
            m.is_dir()
                && m.uid() == 0
                && (m.mode() & 0o022 == 0 || (!direct && m.mode() & 0o1000 != 0))
        })
    };
    let mut checked: Vec<&str> = Vec::new();
    maps.iter()
        .filter(|m| m.exec)
        .filter_map(|m| m.path.as_deref())
        .filter(|p| p.starts_with('/'))
        .all(|p| {
            let p = p.strip_suffix(" (deleted)").unwrap_or(p);
            let Some((dir, _)) = p.rsplit_once('/') else {
                return false;
            };
            if checked.contains(&dir) {
                return true;
            }
            checked.push(dir);
            let dir = std::path::Path::new(if dir.is_empty() { "/" } else { dir });
            root_only(dir, true) && dir.ancestors().skip(1).all(|a| root_only(a, false))
        })
}

/// A `/proc/<pid>/map_files/<range>` path pinned in blazesym's ELF cache,
/// with the identity of the file that was mapped there when it was pinned
/// (the same range may later hold another file).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pin {
    path: PathBuf,
    dev: String,
    inode: u64,
}

/// A source location (`file:line`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceLoc {
    pub file: String,
    pub line: Option<u32>,
}

/// A function inlined at the symbolized address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InlinedFrame {
    pub name: String,
    pub loc: Option<SourceLoc>,
}

/// What symbolization found for one address, as plain owned data so the
/// formatting below is pure and testable without blazesym.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedFrame {
    /// Function name, already demangled by blazesym (its `demangle` feature).
    pub name: String,
    /// Offset of the *captured* address from the function start.
    pub offset: u64,
    /// Where in the function (for the outermost function: the call site of
    /// its first inlined callee, if any).
    pub loc: Option<SourceLoc>,
    /// Functions inlined at this address, outermost first (blazesym's order).
    pub inlined: Vec<InlinedFrame>,
    /// The module blazesym reported, used when our maps snapshot has none.
    pub module: Option<String>,
}

/// Outcome of looking one user address up.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Lookup {
    Found(ResolvedFrame),
    /// The address is in no mapping of the (possibly stale) maps used.
    Unmapped,
    Unknown,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Symbolizer {
    /// A symbolizer with no worker yet: the first user-side request starts
    /// one.
    pub fn new() -> Self {
        Self::with_kernel(KernelSymbols::new())
    }

    fn with_kernel(kernel: KernelSymbols) -> Self {
        Self {
            kernel,
            worker: None,
            live_workers: Arc::new(AtomicUsize::new(0)),
            remembered: HashMap::new(),
            timed_out: HashMap::new(),
            budgets: Budgets::DEFAULT,
        }
    }

    /// The longest one request waits while the worker computes
    /// (`--symbolize-timeout`; [`TOTAL_BUDGET`] by default).
    pub fn set_total_budget(&mut self, budget: Duration) {
        self.budgets.total = budget;
    }

    /// Cache the process's memory maps (and its binaries' symbols as blazesym allows) now, so that
    /// its stacks still symbolize after it exits. Called when the process writes the HTTP 101.
    /// Errors (process gone, permission) are ignored: symbolization later will say `[unknown]`.
    /// See [`UserSymbols::remember_process`] for what is kept and what it costs. A process
    /// whose files made the worker time out is not remembered (nor tried again).
    pub fn remember_process(&mut self, pid: u32) {
        // blazesym reads pid 0 as "this process".
        if pid == 0 || self.timed_out.contains_key(&pid) {
            return;
        }
        if let Some(at) = self.remembered.get(&pid)
            && at.elapsed() < REMEMBER_INTERVAL
        {
            return;
        }
        match self.call(pid, move |u| {
            u.remember_process(pid);
            u.refreshed_at(pid)
        }) {
            Ok(Some(at)) => {
                self.remembered.insert(pid, at);
            }
            Ok(None) | Err(_) => {
                self.remembered.remove(&pid);
            }
        }
    }

    /// Is `pid` remembered (its maps cached), or given up on because its
    /// symbolization timed out? Either way remembering it again is no use.
    pub fn remembers(&self, pid: u32) -> bool {
        self.remembered.contains_key(&pid) || self.timed_out.contains_key(&pid)
    }

    /// Drop cached state for a process (called when it is known to be gone/exec'd).
    ///
    /// Releases its pinned files (shared ones, such as libc, stay cached as
    /// long as another remembered process maps them) and its cached maps. A
    /// pid is reused eventually: without this, a new process with the same
    /// pid would be symbolized with the old process's maps. The worker does
    /// this when it gets to it; nothing waits for it.
    pub fn forget_process(&mut self, pid: u32) {
        if pid == 0 {
            return;
        }
        self.remembered.remove(&pid);
        self.timed_out.remove(&pid);
        if let Some(w) = &self.worker {
            // A send fails only if the worker died; the next call notices.
            let _ = w.jobs.send(Box::new(move |u| u.forget_process(pid)));
        }
    }

    /// Kernel frames, innermost first (see [`KernelSymbols::kernel_stack`]).
    pub fn kernel_stack(&mut self, addrs: &[u64]) -> Vec<Frame> {
        self.kernel.kernel_stack(addrs)
    }

    /// Dwarf-unwinds a stack copy of process `pid` with the unwind tables
    /// of its remembered maps (remembering it now if it is not, which works
    /// while it lives). No frames if the process's symbolization timed out.
    pub fn unwind_user(&mut self, pid: u32, copy: &UserStackCopy) -> Unwound {
        let stopped = |why: NoAnswer| Unwound {
            addrs: Vec::new(),
            end: End::Stopped(why.why().to_string()),
        };
        if self.timed_out.contains_key(&pid) {
            return stopped(NoAnswer::TimedOut);
        }
        let copy = copy.clone();
        let remembered = self.call(pid, move |u| {
            let unwound = u.unwind_user(pid, &copy);
            (unwound, u.refreshed_at(pid))
        });
        match remembered {
            Ok((unwound, refreshed)) => {
                if let Some(at) = refreshed
                    && pid != 0
                {
                    self.remembered.insert(pid, at);
                }
                unwound
            }
            Err(why) => stopped(why),
        }
    }

    /// User frames of process `pid`, innermost first (see
    /// [`UserSymbols::user_stack`]): one address in → at least one frame
    /// out. Without an answer from the worker in time, each address is an
    /// unknown frame with its module and [`Unresolved::TimedOut`].
    pub fn user_stack(&mut self, pid: u32, addrs: &[u64]) -> Vec<Frame> {
        if addrs.is_empty() {
            return Vec::new();
        }
        if !self.timed_out.contains_key(&pid) {
            let addrs_owned = addrs.to_vec();
            match self.call(pid, move |u| u.user_stack(pid, &addrs_owned)) {
                Ok(frames) => return frames,
                Err(NoAnswer::TimedOut) => {}
                Err(why @ NoAnswer::Unavailable) => {
                    let maps = read_maps(pid).unwrap_or_default();
                    return format_unanswered(addrs, &maps, why);
                }
            }
        }
        let maps = self.timed_out.get(&pid).map(Vec::as_slice).unwrap_or(&[]);
        format_unanswered(addrs, maps, NoAnswer::TimedOut)
    }

    /// Runs `job` on the worker (starting one if there is none) and waits
    /// for its answer within the budgets. On a timeout the worker is
    /// abandoned and `pid` marked as timed out.
    fn call<R: Send + 'static>(
        &mut self,
        pid: u32,
        job: impl FnOnce(&mut UserSymbols) -> R + Send + 'static,
    ) -> Result<R, NoAnswer> {
        if self.worker.is_none() {
            self.worker = spawn_worker(&self.live_workers);
            // A new worker holds no process's maps.
            self.remembered.clear();
        }
        let Some(worker) = &self.worker else {
            return Err(NoAnswer::Unavailable);
        };
        let (tx, rx) = mpsc::sync_channel(1);
        let sent = worker.jobs.send(Box::new(move |u| {
            // The waiting side may have given up: nobody to tell then.
            let _ = tx.send(job(u));
        }));
        if sent.is_err() {
            self.worker = None;
            return Err(NoAnswer::Unavailable);
        }
        let tid = worker.tid.clone();
        let start = Instant::now();
        let mut progress = Progress::default();
        loop {
            match rx.recv_timeout(POLL) {
                Ok(r) => return Ok(r),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // The job panicked and took the worker with it.
                    self.worker = None;
                    return Err(NoAnswer::Unavailable);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            let now = Instant::now();
            let blocked = progress.blocked_for(tid.load(Ordering::SeqCst), now);
            if now - start >= self.budgets.total || blocked >= self.budgets.blocked {
                self.abandon_worker(pid);
                return Err(NoAnswer::TimedOut);
            }
        }
    }

    /// Leaves the current worker to itself (its channel closes, so it ends
    /// once its job returns, if ever) and gives up on `pid`.
    fn abandon_worker(&mut self, pid: u32) {
        self.worker = None;
        self.remembered.clear();
        if self.timed_out.len() >= MAX_TIMED_OUT {
            self.timed_out.clear();
        }
        // /proc/<pid>/maps is generated by the kernel: reading it cannot
        // block on anything the process controls.
        self.timed_out
            .insert(pid, read_maps(pid).unwrap_or_default());
    }
}

/// Starts a worker thread with a fresh [`UserSymbols`], unless
/// [`MAX_WORKERS`] are alive or the thread cannot be created.
fn spawn_worker(live: &Arc<AtomicUsize>) -> Option<Worker> {
    if live.fetch_add(1, Ordering::SeqCst) >= MAX_WORKERS {
        live.fetch_sub(1, Ordering::SeqCst);
        return None;
    }
    let guard = LiveWorker(live.clone());
    let (jobs, rx) = mpsc::channel::<Job>();
    let tid = Arc::new(AtomicI32::new(0));
    let tid_w = tid.clone();
    let spawned = std::thread::Builder::new()
        .name("wstrace-symbolize".into())
        .spawn(move || {
            let _live = guard;
            // The worker opens other processes' files: it needs no more.
            crate::attach::privileges::keep_file_access_only_in_this_thread();
            // SAFETY: gettid has no preconditions.
            tid_w.store(unsafe { libc::gettid() }, Ordering::SeqCst);
            let mut user = UserSymbols::new();
            while let Ok(job) = rx.recv() {
                job(&mut user);
            }
        });
    // On failure the closure (and with it the guard) is dropped: not live.
    spawned.ok().map(|_| Worker { jobs, tid })
}

/// Tells a worker that computes from one that waits, from its scheduler
/// state and CPU time in `/proc/self/task/<tid>/stat`.
#[derive(Default)]
struct Progress {
    cpu_ticks: Option<u64>,
    blocked_since: Option<Instant>,
}

impl Progress {
    /// How long the worker has gone without running or using CPU, as of
    /// `now`. Running (`R`) or CPU time grown since the last look is
    /// progress; anything else (asleep in `open()` on a FIFO, waiting on a
    /// hung mount, a thread id not yet known) counts as blocked.
    fn blocked_for(&mut self, tid: i32, now: Instant) -> Duration {
        let stat = (tid > 0)
            .then(|| std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok())
            .flatten();
        let (state, ticks) = stat.as_deref().and_then(parse_task_stat).unzip();
        let ran = ticks.is_some() && self.cpu_ticks.is_some_and(|t| Some(t) != ticks);
        if ticks.is_some() {
            self.cpu_ticks = ticks;
        }
        if state == Some('R') || ran {
            self.blocked_since = None;
            Duration::ZERO
        } else {
            now - *self.blocked_since.get_or_insert(now)
        }
    }
}

/// (state, utime + stime) from a `/proc/.../stat` line. The command name
/// in parentheses may hold anything, so fields are counted after its last
/// `)`: state is field 3, utime and stime fields 14 and 15.
fn parse_task_stat(stat: &str) -> Option<(char, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((state, utime.saturating_add(stime)))
}

/// Frames for addresses the worker gave no answer for: unknown, with why
/// and the module from `maps` when known.
fn format_unanswered(addrs: &[u64], maps: &[Mapping], why: NoAnswer) -> Vec<Frame> {
    addrs
        .iter()
        .map(|&addr| Frame {
            unresolved: Some(why.unresolved()),
            ..Frame::unknown(FrameKind::Native, addr, module_for(maps, addr))
        })
        .collect()
}

impl KernelSymbols {
    /// Kernel symbols come from `/proc/kallsyms` only. blazesym's default
    /// kernel source also looks for `/boot/vmlinux-<release>` and
    /// `/usr/lib/debug/boot/vmlinux-<release>` and, when one exists, parses
    /// its DWARF, derives the KASLR offset, and decompresses `.ko.{xz,zst,gz}`
    /// modules to temporary files: seconds of work and hundreds of MiB for
    /// a line number we do not print. kallsyms also covers modules and BPF
    /// programs. It is read once, on the first kernel stack (~120k symbols).
    fn new() -> Self {
        let kernel = Kernel {
            kallsyms: MaybeDefault::Default,
            vmlinux: MaybeDefault::None,
            kaslr_offset: None,
            debug_syms: false,
            ..Kernel::default()
        };
        Self {
            // Defaults: code info, inlined functions and demangling on, files
            // re-read when they change on disk (pinned ones excepted).
            inner: blazesym::symbolize::Symbolizer::new(),
            kernel: Source::Kernel(kernel),
            stacks: HashMap::new(),
        }
    }

    /// Kernel frames, innermost first, one per address (an unknown frame
    /// where nothing names it), less the tracer's own frames at the top.
    ///
    /// Everything is `[unknown]` when `/proc/kallsyms` shows no addresses
    /// (not root, or `kernel.kptr_restrict=2`). The module of a module symbol
    /// is not shown: blazesym drops kallsyms' `[module]` column.
    fn kernel_stack(&mut self, addrs: &[u64]) -> Vec<Frame> {
        if addrs.is_empty() {
            return Vec::new();
        }
        if let Some(frames) = self.stacks.get(addrs) {
            return frames.clone();
        }
        let mut frames = self.symbolize_kernel(addrs);
        drop_tracer_frames(&mut frames);
        cache_insert(&mut self.stacks, addrs.to_vec(), &frames);
        frames
    }

    fn symbolize_kernel(&mut self, addrs: &[u64]) -> Vec<Frame> {
        let lookups = lookup_addrs(addrs);
        let resolved: Vec<Option<ResolvedFrame>> =
            match self.inner.symbolize(&self.kernel, Input::AbsAddr(&lookups)) {
                Ok(syms) if syms.len() == addrs.len() => syms
                    .into_iter()
                    .zip(addrs.iter().zip(&lookups))
                    .map(
                        |(sym, (&addr, &lookup))| match classify(sym, addr - lookup) {
                            Lookup::Found(frame) => Some(frame),
                            Lookup::Unmapped | Lookup::Unknown => None,
                        },
                    )
                    .collect(),
                // No kallsyms at all, or blazesym broke its contract: say unknown, keep every frame.
                _ => vec![None; addrs.len()],
            };
        addrs
            .iter()
            .zip(&resolved)
            .map(|(&addr, frame)| kernel_frame(addr, frame.as_ref()))
            .collect()
    }
}

impl UserSymbols {
    fn new() -> Self {
        Self {
            // Defaults: code info, inlined functions and demangling on, files
            // re-read when they change on disk (pinned ones excepted).
            inner: blazesym::symbolize::Symbolizer::new(),
            procs: HashMap::new(),
            user_stacks: HashMap::new(),
            unwind: Unwinder::new(),
            remember_interval: REMEMBER_INTERVAL,
        }
    }

    /// Cache the process's memory maps (and its binaries' symbols as blazesym allows) now, so that
    /// its stacks still symbolize after it exits. Called when the process writes the HTTP 101.
    /// Errors (process gone, permission) are ignored: symbolization later will say `[unknown]`.
    ///
    /// What is kept: blazesym's copy of the maps (its VMA cache), the
    /// process's perf map if it has one (JIT runtimes), and each executable
    /// file mapping opened through `/proc/<pid>/map_files/` and pinned in
    /// blazesym's ELF cache, with its symbol tables and DWARF (including a
    /// separate debug file found by build ID) set up now. Opening through
    /// `map_files` means the file is the one the process mapped, even inside
    /// another mount namespace (a container) or after it was deleted or
    /// upgraded on disk. That needs CAP_SYS_ADMIN (as wstrace has); without
    /// it, later lookups fall back to the paths as named in the maps, which
    /// must still exist then.
    ///
    /// Cost (release build): tens of ms the first time a set of binaries is
    /// seen (libc with its debug file: ~40 ms), well under 1 ms for another
    /// process mapping the same files (parsed data is shared per inode).
    /// Repeated calls for the same pid within [`REMEMBER_INTERVAL`] do nothing.
    pub fn remember_process(&mut self, pid: u32) {
        // blazesym reads pid 0 as "this process".
        if pid == 0 {
            return;
        }
        if let Some(r) = self.procs.get(&pid)
            && r.refreshed.elapsed() < self.remember_interval
        {
            return;
        }
        self.refresh_process(pid, false);
    }

    /// When `pid`'s maps were last read, if it is remembered.
    pub fn refreshed_at(&self, pid: u32) -> Option<Instant> {
        self.procs.get(&pid).map(|r| r.refreshed)
    }

    /// Drop cached state for a process (called when it is known to be gone/exec'd).
    ///
    /// Releases its pinned files (shared ones, such as libc, stay cached as
    /// long as another remembered process maps them) and its cached maps. A
    /// pid is reused eventually: without this, a new process with the same
    /// pid would be symbolized with the old process's maps.
    pub fn forget_process(&mut self, pid: u32) {
        if pid == 0 {
            return;
        }
        if let Some(r) = self.procs.remove(&pid) {
            self.unpin(&r.pinned);
        }
        self.user_stacks.retain(|(p, _), _| *p != pid);
        self.unwind.forget(pid);
        // Only fails for things we do not ask for; nothing to report.
        let _ = self
            .inner
            .evict(&Evict::Process(evict::Process::new(Pid::from(pid))));
    }

    /// Dwarf-unwinds a stack copy of process `pid` with the unwind tables
    /// of its remembered maps (remembering it now if it is not, which works
    /// while it lives).
    pub fn unwind_user(&mut self, pid: u32, copy: &UserStackCopy) -> Unwound {
        let no_frames = |why: &str| Unwound {
            addrs: Vec::new(),
            end: End::Stopped(why.to_string()),
        };
        match copy.status {
            ustack::OK => {}
            ustack::NO_REGS => return no_frames("the kernel found no user registers"),
            _ => return no_frames("the stack at sp was unreadable"),
        }
        if pid != 0 && !self.unwind.remembers(pid) {
            self.refresh_process(pid, false);
        }
        self.unwind
            .unwind(pid, copy)
            .unwrap_or_else(|| no_frames("the process exited before its maps were read"))
    }

    /// User frames of process `pid`, innermost first: function, offset,
    /// module and source line when known; functions inlined at an address
    /// as frames of their own before it; unknown frames with their module.
    /// Never drop frames: one address in → at least one frame out.
    ///
    /// Uses the maps cached by [`remember_process`](Self::remember_process)
    /// if any, else the live `/proc/<pid>/maps`. If a live, remembered
    /// process has an address outside the cached maps (a library loaded
    /// since), its maps are re-read once and the stack looked up again.
    pub fn user_stack(&mut self, pid: u32, addrs: &[u64]) -> Vec<Frame> {
        if addrs.is_empty() {
            return Vec::new();
        }
        if pid == 0 {
            // blazesym would read pid 0 as "this process"; a user stack there is garbage.
            return addrs
                .iter()
                .map(|&a| Frame::unknown(FrameKind::Native, a, None))
                .collect();
        }
        let key = (pid, addrs.to_vec());
        if let Some(frames) = self.user_stacks.get(&key) {
            return frames.clone();
        }
        let frames = self.symbolize_user(pid, addrs);
        // Unremembered processes are symbolized from their live maps, which
        // nothing tells us have changed: those are not cached.
        if self.procs.contains_key(&pid) {
            cache_insert(&mut self.user_stacks, key, &frames);
        }
        frames
    }

    fn symbolize_user(&mut self, pid: u32, addrs: &[u64]) -> Vec<Frame> {
        let lookups = lookup_addrs(addrs);
        let mut found = self.resolve_user(pid, addrs, &lookups);
        if self.procs.contains_key(&pid)
            && found.contains(&Lookup::Unmapped)
            && self.refresh_process(pid, true)
        {
            found = self.resolve_user(pid, addrs, &lookups);
        }
        // JIT code: what the ELF files do not name, the perf map may.
        if found.iter().any(|l| !matches!(l, Lookup::Found(_))) {
            let live;
            let perf_map = match self.procs.get(&pid) {
                Some(r) => r.perf_map.as_ref(),
                None => {
                    live = PerfMap::read(pid);
                    live.as_ref()
                }
            };
            if let Some(pm) = perf_map {
                for ((l, &addr), &lookup) in found.iter_mut().zip(addrs).zip(&lookups) {
                    if matches!(l, Lookup::Found(_)) {
                        continue;
                    }
                    if let Some((name, off)) = pm.lookup(lookup) {
                        *l = Lookup::Found(ResolvedFrame {
                            name: name.to_string(),
                            offset: off.saturating_add(addr - lookup),
                            loc: None,
                            inlined: Vec::new(),
                            module: Some(format!("/tmp/perf-{pid}.map")),
                        });
                    }
                }
            }
        }

        let live_maps;
        let maps: &[Mapping] = match self.procs.get(&pid) {
            Some(r) => &r.maps,
            None => {
                live_maps = read_maps(pid).unwrap_or_default();
                &live_maps
            }
        };
        let mut out = Vec::with_capacity(addrs.len());
        for ((&addr, &lookup), result) in addrs.iter().zip(&lookups).zip(&found) {
            match result {
                Lookup::Found(frame) => {
                    let module = module_for(maps, lookup).or(frame.module.as_deref());
                    let kind = if is_jit(maps, lookup) {
                        FrameKind::Jit
                    } else {
                        FrameKind::Native
                    };
                    out.extend(user_frames(addr, Some(frame), module, kind));
                }
                Lookup::Unmapped | Lookup::Unknown => {
                    out.push(Frame::unknown(
                        FrameKind::Native,
                        addr,
                        module_for(maps, addr),
                    ));
                }
            }
        }
        out
    }

    /// Look `lookups` up in process `pid`; one result per address, always.
    ///
    /// blazesym fails a whole batch when one mapped file cannot be opened
    /// (e.g. `map_files` without CAP_SYS_ADMIN, or a dead process whose file
    /// was not pinned), so: the batch through `map_files`, then the batch
    /// through the symbolic paths, then address by address, where an address
    /// that still fails is unknown.
    fn resolve_user(&self, pid: u32, addrs: &[u64], lookups: &[u64]) -> Vec<Lookup> {
        let trusted = match self.procs.get(&pid) {
            Some(r) => r.trusted,
            None => read_maps(pid).is_some_and(|m| trusted_paths(&m)),
        };
        let mut found = self.resolve_user_dwarf(pid, addrs, lookups, trusted);
        if found.iter().any(|l| matches!(l, Lookup::Found(_))) {
            let symtab = self.resolve_user_symtab(pid, addrs, lookups, trusted);
            for (l, s) in found.iter_mut().zip(symtab) {
                if let (Lookup::Found(frame), Some(sym)) = (l, s) {
                    prefer_symtab(frame, sym);
                }
            }
        }
        found
    }

    /// The ELF symbol table's answer for each address (name, offset of the
    /// captured address), as gdb reads it: `None` where it has none. One
    /// batch; a failing batch (an unreadable file) gives no answers, and
    /// the debug-info names stand.
    fn resolve_user_symtab(
        &self,
        pid: u32,
        addrs: &[u64],
        lookups: &[u64],
        trusted: bool,
    ) -> Vec<Option<(String, u64)>> {
        for &map_files in path_kinds(trusted) {
            let src = Source::Process(Process {
                map_files,
                debug_syms: false,
                perf_map: false,
                ..Process::new(Pid::from(pid))
            });
            if let Ok(syms) = self.inner.symbolize(&src, Input::AbsAddr(lookups))
                && syms.len() == lookups.len()
            {
                return syms
                    .into_iter()
                    .zip(addrs.iter().zip(lookups))
                    .map(|(sym, (&addr, &lookup))| match sym {
                        Symbolized::Sym(s) if !s.name.is_empty() => Some((
                            s.name.to_string(),
                            (s.offset as u64).saturating_add(addr - lookup),
                        )),
                        _ => None,
                    })
                    .collect();
            }
        }
        vec![None; addrs.len()]
    }

    fn resolve_user_dwarf(
        &self,
        pid: u32,
        addrs: &[u64],
        lookups: &[u64],
        trusted: bool,
    ) -> Vec<Lookup> {
        let src = |map_files: bool| {
            Source::Process(Process {
                map_files,
                debug_syms: trusted,
                // Read by wstrace instead (see `perf_map`).
                perf_map: false,
                ..Process::new(Pid::from(pid))
            })
        };
        for &map_files in path_kinds(trusted) {
            if let Ok(syms) = self
                .inner
                .symbolize(&src(map_files), Input::AbsAddr(lookups))
                && syms.len() == lookups.len()
            {
                return syms
                    .into_iter()
                    .zip(addrs.iter().zip(lookups))
                    .map(|(sym, (&addr, &lookup))| classify(sym, addr - lookup))
                    .collect();
            }
        }
        addrs
            .iter()
            .zip(lookups)
            .map(|(&addr, &lookup)| {
                path_kinds(trusted)
                    .iter()
                    .find_map(|&mf| {
                        self.inner
                            .symbolize_single(&src(mf), Input::AbsAddr(lookup))
                            .ok()
                    })
                    .map_or(Lookup::Unknown, |sym| classify(sym, addr - lookup))
            })
            .collect()
    }

    /// (Re)read the process's maps and cache them in blazesym. With
    /// `only_if_changed`, nothing is re-cached when the executable mappings are
    /// the same as in the last snapshot. Returns whether blazesym's view was
    /// renewed (false: process gone, unreadable, or unchanged).
    fn refresh_process(&mut self, pid: u32, only_if_changed: bool) -> bool {
        let Some(maps) = read_maps(pid) else {
            return false;
        };
        let now = Instant::now();
        let same_code = self.procs.get(&pid).is_some_and(|r| {
            r.maps
                .iter()
                .filter(|m| m.exec)
                .eq(maps.iter().filter(|m| m.exec))
        });
        if only_if_changed
            && same_code
            && let Some(r) = self.procs.get_mut(&pid)
        {
            r.maps = maps;
            r.refreshed = now;
            return false;
        }
        if !same_code {
            self.user_stacks.retain(|(p, _), _| *p != pid);
        }
        if !same_code || !self.unwind.remembers(pid) {
            self.unwind.remember(pid, &maps, |m| map_files_path(pid, m));
        }
        let bpid = Pid::from(pid);
        // Start over: caching the maps replaces blazesym's old copy anyway,
        // and an evicted perf map is parsed afresh instead of piling up one
        // parsed copy per change of the file.
        let _ = self.inner.evict(&Evict::Process(evict::Process::new(bpid)));
        let vmas = cache::Process {
            cache_vmas: true,
            cache_perf_map: false,
            ..cache::Process::new(bpid)
        };
        // Errors: the process is gone or unreadable; the lookup will say so.
        let _ = self.inner.cache(&Cache::Process(vmas));
        // The perf map is read by wstrace (non-blocking, regular files
        // only, bounded), never by blazesym.
        let perf_map = PerfMap::read(pid).filter(|m| !m.is_empty());

        let old = self
            .procs
            .remove(&pid)
            .map(|r| r.pinned)
            .unwrap_or_default();
        let mut pinned: Vec<Pin> = Vec::new();
        let mut fresh: Vec<(Pin, u64)> = Vec::new();
        for m in maps
            .iter()
            .filter(|m| m.exec && m.path.as_deref().is_some_and(|p| p.starts_with('/')))
        {
            let pin = Pin {
                path: PathBuf::from(map_files_path(pid, m)),
                dev: m.dev.clone(),
                inode: m.inode,
            };
            if pinned.contains(&pin) || fresh.iter().any(|(p, _)| *p == pin) {
                continue;
            }
            // Already pinned for this process: its symbols are parsed, keep them.
            if old.contains(&pin) {
                pinned.push(pin);
            } else {
                fresh.push((pin, m.start));
            }
        }
        let starts: Vec<u64> = fresh.iter().map(|(_, start)| *start).collect();
        let trusted = trusted_paths(&maps);
        self.warm_up(pid, &starts, trusted);
        for (pin, _) in fresh {
            // Fails for files that are not ELF, or without access to map_files.
            if self
                .inner
                .cache(&Cache::Elf(cache::Elf::new(&pin.path)))
                .is_ok()
            {
                pinned.push(pin);
            }
        }
        let stale: Vec<Pin> = old.into_iter().filter(|p| !pinned.contains(p)).collect();
        self.unpin(&stale);
        self.procs.insert(
            pid,
            Remembered {
                maps,
                refreshed: now,
                pinned,
                perf_map,
                trusted,
            },
        );
        true
    }

    /// Open each newly mapped file the way later lookups will (through
    /// `map_files`, with debug info) by looking up one address in it while
    /// the process is alive. blazesym finds separate debug files (e.g.
    /// `/usr/lib/debug/.build-id/...`) by the build ID it reads from the file's
    /// path at the time it first builds the DWARF resolver; a file first
    /// opened by [`Cache::Elf`] carries its `/proc/<pid>/map_files/...` path,
    /// which is dangling by the time the stack is symbolized, and would then
    /// never get line numbers. Opened this way, it also carries the path
    /// from the maps as its module name.
    fn warm_up(&self, pid: u32, addrs: &[u64], trusted: bool) {
        if addrs.is_empty() {
            return;
        }
        let src = Source::Process(Process {
            map_files: true,
            debug_syms: trusted,
            perf_map: false,
            vdso: false,
            ..Process::new(Pid::from(pid))
        });
        // One unreadable file fails the whole batch; then file by file.
        if self.inner.symbolize(&src, Input::AbsAddr(addrs)).is_err() {
            for &addr in addrs {
                let _ = self.inner.symbolize_single(&src, Input::AbsAddr(addr));
            }
        }
    }

    fn unpin(&mut self, pins: &[Pin]) {
        for pin in pins {
            let _ = self.inner.evict(&Evict::Elf(evict::Elf::new(&pin.path)));
        }
    }
}

/// The address to look up for each captured address: stack entries other
/// than the innermost are return addresses, which point after the call and,
/// for a call that ends a function (`noreturn` callees), into the next
/// function. One byte back is inside the call instruction.
pub fn lookup_addrs(addrs: &[u64]) -> Vec<u64> {
    addrs
        .iter()
        .enumerate()
        .map(|(i, &a)| if i == 0 { a } else { a.saturating_sub(1) })
        .collect()
}

/// Convert blazesym's answer for one address; `delta` is captured minus
/// looked-up address, added back so the printed offset is the captured one.
fn classify(sym: Symbolized<'_>, delta: u64) -> Lookup {
    match sym {
        Symbolized::Sym(sym) if !sym.name.is_empty() => Lookup::Found(resolved_frame(&sym, delta)),
        Symbolized::Sym(_) => Lookup::Unknown,
        Symbolized::Unknown(Reason::Unmapped) => Lookup::Unmapped,
        Symbolized::Unknown(_) => Lookup::Unknown,
    }
}

fn resolved_frame(sym: &Sym<'_>, delta: u64) -> ResolvedFrame {
    ResolvedFrame {
        name: sym.name.to_string(),
        offset: (sym.offset as u64).saturating_add(delta),
        loc: sym.code_info.as_deref().map(source_loc),
        inlined: sym
            .inlined
            .iter()
            .map(|f| InlinedFrame {
                name: f.name.to_string(),
                loc: f.code_info.as_ref().map(source_loc),
            })
            .collect(),
        module: sym
            .module
            .as_deref()
            .map(|m| m.to_string_lossy().into_owned())
            // A file first opened through a pinned map_files path carries that
            // path as its module name; it means nothing to the reader.
            .filter(|m| !is_map_files_path(m)),
    }
}

/// Takes the ELF symbol's name and offset for the outermost function of a
/// frame where the debug info's are worse, as gdb does:
/// - the symbol starts later than the debug info's function (a function
///   split into hot and `.cold` parts: its DWARF entry starts at one part,
///   often the cold one, so the offset into the other is a distance between
///   sections, `f+0x190130`; the symbol `f.cold` gives `f.cold+0x20`, and
///   the hot part gets its own start back);
/// - the debug info's name is the unqualified form of the symbol's (a DWARF
///   entry without a linkage name: `_M_invoke` for
///   `std::_Function_handler<…>::_M_invoke(…)`).
///
/// Inlined frames have no symbol of their own and keep the debug info's
/// names; so does a frame whose symbol is another function altogether.
pub fn prefer_symtab(frame: &mut ResolvedFrame, (name, offset): (String, u64)) {
    if offset < frame.offset {
        frame.name = name;
        frame.offset = offset;
    } else if offset == frame.offset && name != frame.name && qualifies(&name, &frame.name) {
        frame.name = name;
    }
}

/// Is `short` the unqualified name of `full` (`ns::f(int)` for `f`,
/// `a::b::c` for `c`)?
fn qualifies(full: &str, short: &str) -> bool {
    if short.is_empty() || full.len() <= short.len() {
        return false;
    }
    full.contains(&format!("::{short}("))
        || full.ends_with(&format!("::{short}"))
        || full.starts_with(&format!("{short}("))
}

fn source_loc(ci: &CodeInfo<'_>) -> SourceLoc {
    SourceLoc {
        file: ci.to_path().display().to_string(),
        line: ci.line,
    }
}

/// One kernel frame; unknown when unresolved or implausibly far from the
/// symbol (see [`MAX_KERNEL_SYM_OFFSET`]).
pub fn kernel_frame(addr: u64, frame: Option<&ResolvedFrame>) -> Frame {
    match frame {
        Some(f) if !f.name.is_empty() && f.offset < MAX_KERNEL_SYM_OFFSET => Frame {
            function: Some(f.name.clone()),
            offset: Some(f.offset),
            file: f.loc.as_ref().map(|l| l.file.clone()),
            line: f.loc.as_ref().and_then(|l| l.line),
            kind: FrameKind::Kernel,
            address: Some(addr),
            ..Frame::default()
        },
        _ => Frame::unknown(FrameKind::Kernel, addr, None),
    }
}

/// The frames for one user address, innermost first: each inlined callee
/// (innermost first, no offset of its own), then the real function;
/// unresolved, a single unknown frame. Always at least one frame. `addr`
/// is the captured address, never the adjusted one, so it matches raw
/// dumps.
pub fn user_frames(
    addr: u64,
    frame: Option<&ResolvedFrame>,
    module: Option<&str>,
    kind: FrameKind,
) -> Vec<Frame> {
    let at = |name: &str, offset: Option<u64>, loc: Option<&SourceLoc>, inlined: bool| Frame {
        function: Some(name.to_string()),
        offset,
        module: module.map(str::to_string),
        file: loc.map(|l| l.file.clone()).filter(|f| !f.is_empty()),
        line: loc.filter(|l| !l.file.is_empty()).and_then(|l| l.line),
        inlined,
        kind,
        language: None,
        address: Some(addr),
        unresolved: None,
    };
    match frame {
        Some(f) if !f.name.is_empty() => {
            let mut out = Vec::with_capacity(f.inlined.len() + 1);
            for i in f.inlined.iter().rev() {
                out.push(at(&i.name, None, i.loc.as_ref(), true));
            }
            out.push(at(&f.name, Some(f.offset), f.loc.as_ref(), false));
            out
        }
        _ => vec![Frame::unknown(FrameKind::Native, addr, module)],
    }
}

/// Was this name found for code a runtime generated? Only a perf map
/// (`/tmp/perf-<pid>.map`, written by JITs: V8 with `--perf-basic-prof`,
/// the JVM's agents, CPython 3.12's `-X perf`) names an address in
/// anonymous memory; an ELF symbol always comes with its file and the
/// address lies in that file's mapping.
fn is_jit(maps: &[Mapping], lookup: u64) -> bool {
    // Anonymous executable memory has no file to name it: whatever named
    // it (the runtime's perf map, read by `perf_map`) names generated code.
    maps.iter()
        .any(|m| m.start <= lookup && lookup < m.end && m.path.is_none())
}

/// Kernel functions that run the tracer's own program, not the code it
/// traces: the BPF program itself (`bpf_prog_<tag>_<name>`), fentry
/// trampolines (`bpf_trampoline_<id>`), the tracepoint glue
/// (`__traceiter_*`, `__bpf_trace_*`, `bpf_trace_run<N>`, `perf_trace_*`),
/// the kprobe path (`trace_call_bpf`, `kprobe_perf_func`,
/// `kprobe_dispatcher`, `kprobe_ftrace_handler`, `aggr_pre_handler`, and
/// the ftrace and int3 machinery under it), and the stack helper itself.
const TRACER_PREFIXES: &[&str] = &[
    "bpf_prog_",
    "bpf_trampoline_",
    "bpf_trace_run",
    "__bpf_trace_",
    "__traceiter_",
    "perf_trace_",
    "trace_call_bpf",
    "bpf_get_stack",
    "__bpf_get_stack",
    "bpf_get_task_stack",
    "kprobe_perf_func",
    "kprobe_dispatcher",
    "kprobe_ftrace_handler",
    "aggr_pre_handler",
    "opt_pre_handler",
    "optimized_callback",
    "kprobe_int3_handler",
    "exc_int3",
    "asm_exc_int3",
    "arch_ftrace_ops_list_func",
    "ftrace_ops_list_func",
    "ftrace_regs_caller",
    "ftrace_caller",
    "ftrace_call",
];

/// Is this kernel frame the tracer's own (see [`TRACER_PREFIXES`])?
pub fn is_tracer_frame(f: &Frame) -> bool {
    f.function
        .as_deref()
        .is_some_and(|name| TRACER_PREFIXES.iter().any(|p| name.starts_with(p)))
}

/// Drops the tracer's frames at the top of a kernel stack, so that it
/// starts where the traced kernel code was (`inet_sk_state_store`,
/// `tcp_close` ...): every probe set shows the same stack. Unknown frames
/// among them go too (a trampoline or JITed program on a kernel whose
/// kallsyms does not list it), but only up to the last named tracer frame:
/// an unknown frame after it may be the kernel's own. Frames further down
/// are never touched.
pub fn drop_tracer_frames(frames: &mut Vec<Frame>) {
    let mut cut = 0;
    for (i, f) in frames.iter().enumerate() {
        if is_tracer_frame(f) {
            cut = i + 1;
        } else if f.function.is_some() {
            break;
        }
    }
    // A stack made only of tracer frames would say nothing: keep it whole.
    if cut < frames.len() {
        frames.drain(..cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    fn loc(file: &str, line: Option<u32>) -> Option<SourceLoc> {
        Some(SourceLoc {
            file: file.into(),
            line,
        })
    }

    fn frame(name: &str, offset: u64) -> ResolvedFrame {
        ResolvedFrame {
            name: name.into(),
            offset,
            loc: None,
            inlined: Vec::new(),
            module: None,
        }
    }

    // ---- frames from resolved symbols ----

    fn kf(function: &str, offset: u64, addr: u64) -> Frame {
        Frame {
            function: Some(function.into()),
            offset: Some(offset),
            kind: FrameKind::Kernel,
            address: Some(addr),
            ..Frame::default()
        }
    }

    #[test]
    fn kernel_frames_keep_name_offset_and_address() {
        assert_eq!(
            kernel_frame(0xffffffff81000000, Some(&frame("tcp_close", 0))),
            kf("tcp_close", 0, 0xffffffff81000000)
        );
        assert_eq!(
            kernel_frame(1, Some(&frame("__x64_sys_close", 0xabcde))),
            kf("__x64_sys_close", 0xabcde, 1)
        );
        let mut f = frame("tcp_close", 0x10);
        f.loc = loc("net/ipv4/tcp.c", Some(3000));
        let k = kernel_frame(1, Some(&f));
        assert_eq!(
            (k.file.as_deref(), k.line),
            (Some("net/ipv4/tcp.c"), Some(3000))
        );
    }

    #[test]
    fn kernel_unknown_empty_name_or_huge_offset() {
        let unknown = |a| Frame::unknown(FrameKind::Kernel, a, None);
        assert_eq!(
            kernel_frame(0xffffffff81234567, None),
            unknown(0xffffffff81234567)
        );
        assert_eq!(
            kernel_frame(0xffffffffc0001234, Some(&frame("", 4))),
            unknown(0xffffffffc0001234)
        );
        assert_eq!(
            kernel_frame(
                0xffffffffc0001234,
                Some(&frame("last_sym", MAX_KERNEL_SYM_OFFSET))
            ),
            unknown(0xffffffffc0001234)
        );
        assert_eq!(
            kernel_frame(1, Some(&frame("big", MAX_KERNEL_SYM_OFFSET - 1))),
            kf("big", MAX_KERNEL_SYM_OFFSET - 1, 1)
        );
    }

    #[test]
    fn user_frame_with_module_and_line() {
        let mut f = frame("close", 0x1f);
        f.loc = loc("/src/server/src/main.rs", Some(123));
        let [u] = user_frames(7, Some(&f), Some("/srv/app"), FrameKind::Native)
            .try_into()
            .expect("one frame");
        assert_eq!(
            u,
            Frame {
                function: Some("close".into()),
                offset: Some(0x1f),
                module: Some("/srv/app".into()),
                file: Some("/src/server/src/main.rs".into()),
                line: Some(123),
                inlined: false,
                kind: FrameKind::Native,
                language: None,
                address: Some(7),
                unresolved: None,
            }
        );
        // A line without a file says nothing.
        f.loc = loc("", Some(7));
        let u = &user_frames(1, Some(&f), None, FrameKind::Native)[0];
        assert_eq!((&u.file, u.line, &u.module), (&None, None, &None));
    }

    #[test]
    fn user_unknown_frames() {
        assert_eq!(
            user_frames(
                0x7f1234567890,
                None,
                Some("/usr/lib/libfoo.so (deleted)"),
                FrameKind::Native
            ),
            [Frame::unknown(
                FrameKind::Native,
                0x7f1234567890,
                Some("/usr/lib/libfoo.so (deleted)")
            )]
        );
        assert_eq!(
            user_frames(0x55, Some(&frame("", 3)), Some("[heap]"), FrameKind::Native),
            [Frame::unknown(FrameKind::Native, 0x55, Some("[heap]"))]
        );
        let t = format_unanswered(&[0x55], &[], NoAnswer::TimedOut);
        assert_eq!(t[0].unresolved, Some(Unresolved::TimedOut));
        assert_eq!((t[0].function.as_deref(), t[0].address), (None, Some(0x55)));
    }

    #[test]
    fn inlined_frames_come_first_innermost_first() {
        // blazesym: sym.loc = where `outer` calls `mid`, inlined = [mid, inner]
        // (outermost first), inner's loc = the address itself.
        let f = ResolvedFrame {
            name: "app::outer".into(),
            offset: 0x40,
            loc: loc("src/lib.rs", Some(10)),
            inlined: vec![
                InlinedFrame {
                    name: "app::mid".into(),
                    loc: loc("src/lib.rs", Some(20)),
                },
                InlinedFrame {
                    name: "app::inner".into(),
                    loc: loc("src/inner.rs", Some(30)),
                },
            ],
            module: None,
        };
        let frames = user_frames(0x1000, Some(&f), Some("/srv/app"), FrameKind::Native);
        let summary: Vec<_> = frames
            .iter()
            .map(|f| {
                (
                    f.function.as_deref().unwrap_or(""),
                    f.offset,
                    f.inlined,
                    f.line,
                    f.address,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("app::inner", None, true, Some(30), Some(0x1000)),
                ("app::mid", None, true, Some(20), Some(0x1000)),
                ("app::outer", Some(0x40), false, Some(10), Some(0x1000)),
            ]
        );
        assert!(
            frames
                .iter()
                .all(|f| f.module.as_deref() == Some("/srv/app"))
        );
    }

    #[test]
    fn names_with_parentheses_and_spaces_stay_whole() {
        let f = ResolvedFrame {
            name: "ws::conn::finish(int, bool) [clone .cold]".into(),
            offset: 0x13,
            loc: loc("/tmp/cold close.cpp", Some(22)),
            inlined: vec![InlinedFrame {
                name: "operator() at (x)".into(),
                loc: loc("/usr/include/c++/12/bits/invoke.h", Some(61)),
            }],
            module: None,
        };
        let frames = user_frames(
            0x1000,
            Some(&f),
            Some("/tmp/cold/cold close"),
            FrameKind::Native,
        );
        assert_eq!(frames[0].function.as_deref(), Some("operator() at (x)"));
        assert_eq!(
            frames[1].function.as_deref(),
            Some("ws::conn::finish(int, bool) [clone .cold]")
        );
        assert_eq!(frames[1].file.as_deref(), Some("/tmp/cold close.cpp"));
        assert_eq!(frames[1].module.as_deref(), Some("/tmp/cold/cold close"));
    }

    fn name(f: &Frame) -> &str {
        f.function.as_deref().unwrap_or("[unknown]")
    }

    fn names(frames: &[Frame]) -> Vec<&str> {
        frames.iter().map(name).collect()
    }

    /// `function+0xoffset` of a frame (`[unknown]+0x0` for an unknown one):
    /// what the live tests below look for.
    fn at(f: &Frame) -> String {
        format!("{}+{:#x}", name(f), f.offset.unwrap_or(0))
    }

    fn unknowns(addrs: &[u64]) -> Vec<Frame> {
        addrs
            .iter()
            .map(|&a| Frame::unknown(FrameKind::Native, a, None))
            .collect()
    }

    #[test]
    fn tracer_frames_at_the_top_of_kernel_stacks_are_dropped() {
        let k = |name: &str| kf(name, 0x10, 1);
        let unknown = Frame::unknown(FrameKind::Kernel, 0xffffffffc0001234, None);
        // Tracepoint (tp_btf / raw tracepoint), as this host's stacks start.
        let mut tp = vec![
            k("bpf_prog_6deef7357e7b4530_inet_sock_set_state_closer"),
            k("bpf_trace_run3"),
            k("__bpf_trace_inet_sock_set_state"),
            k("__traceiter_inet_sock_set_state"),
            k("inet_sk_state_store"),
            k("__tcp_close"),
            k("tcp_close"),
        ];
        drop_tracer_frames(&mut tp);
        assert_eq!(
            names(&tp),
            ["inet_sk_state_store", "__tcp_close", "tcp_close"]
        );
        // Tracepoint through perf: perf_trace_* and trace_call_bpf.
        let mut perf = vec![
            k("bpf_prog_1_x"),
            k("trace_call_bpf"),
            k("perf_trace_run_bpf_submit"),
            k("perf_trace_inet_sock_set_state"),
            k("inet_sk_state_store"),
        ];
        drop_tracer_frames(&mut perf);
        assert_eq!(names(&perf), ["inet_sk_state_store"]);
        // fentry: the program and its trampoline (unnamed on old kernels).
        let mut fentry = vec![
            k("bpf_prog_2_tcp_close"),
            unknown.clone(),
            k("bpf_trampoline_6442"),
            k("tcp_close"),
        ];
        drop_tracer_frames(&mut fentry);
        assert_eq!(names(&fentry), ["tcp_close"]);
        // kprobe on ftrace.
        let mut kprobe = vec![
            k("bpf_prog_3_x"),
            k("trace_call_bpf"),
            k("kprobe_perf_func"),
            k("kprobe_ftrace_handler"),
            k("tcp_close"),
            k("inet_release"),
        ];
        drop_tracer_frames(&mut kprobe);
        assert_eq!(names(&kprobe), ["tcp_close", "inet_release"]);
        // Only at the top: the same names further down stay, and an unknown
        // frame after the last tracer frame may be the kernel's.
        let mut deep = vec![
            k("bpf_prog_4_x"),
            unknown.clone(),
            k("tcp_close"),
            k("bpf_trace_run1"),
        ];
        drop_tracer_frames(&mut deep);
        assert_eq!(names(&deep), ["[unknown]", "tcp_close", "bpf_trace_run1"]);
        let mut plain = vec![unknown.clone(), k("tcp_close")];
        drop_tracer_frames(&mut plain);
        assert_eq!(plain.len(), 2);
        // Nothing but tracer frames: kept, rather than an empty stack.
        let mut only = vec![k("bpf_prog_5_x"), k("bpf_trace_run2")];
        drop_tracer_frames(&mut only);
        assert_eq!(only.len(), 2);
        let mut empty: Vec<Frame> = Vec::new();
        drop_tracer_frames(&mut empty);
        assert!(empty.is_empty());
    }

    #[test]
    fn split_functions_take_the_symbols_offset_and_name() {
        // Return address 0x13 into `finish.cold`, which DWARF files under
        // `finish`, starting at the hot part far away.
        let mut cold = frame("ws::conn::finish(int, bool)", 0x190130);
        prefer_symtab(
            &mut cold,
            ("ws::conn::finish(int, bool) [clone .cold]".into(), 0x13),
        );
        assert_eq!(
            (cold.name.as_str(), cold.offset),
            ("ws::conn::finish(int, bool) [clone .cold]", 0x13)
        );
        // The hot part of a function whose DWARF entry starts at its cold part.
        let mut hot = frame("main", 0x1358);
        prefer_symtab(&mut hot, ("main".into(), 0x1d8));
        assert_eq!((hot.name.as_str(), hot.offset), ("main", 0x1d8));
        // Unqualified DWARF name, same place: the symbol's qualified name.
        let mut invoke = frame("_M_invoke", 0x11);
        let full = "std::_Function_handler<void (int, bool), main::{lambda(int, bool)#1}>::_M_invoke(std::_Any_data const&, int&&, bool&&)";
        prefer_symtab(&mut invoke, (full.into(), 0x11));
        assert_eq!(invoke.name, full);
        let mut c = frame("f", 0x8);
        prefer_symtab(&mut c, ("ns::sub::f(void*)".into(), 0x8));
        assert_eq!(c.name, "ns::sub::f(void*)");
        // Another function altogether, or an alias: the debug info stands.
        let mut alias = frame("__GI___close", 0x10);
        prefer_symtab(&mut alias, ("close".into(), 0x10));
        assert_eq!(alias.name, "__GI___close");
        let mut far = frame("wstrace::demo::handle", 0x3e9);
        prefer_symtab(&mut far, ("some_other_fn".into(), 0x5000));
        assert_eq!(
            (far.name.as_str(), far.offset),
            ("wstrace::demo::handle", 0x3e9)
        );
        let mut notq = frame("finish", 0x8);
        prefer_symtab(&mut notq, ("refinish(int)".into(), 0x8));
        assert_eq!(notq.name, "finish");
    }

    #[test]
    fn demangled_names_pass_through_verbatim() {
        for name in [
            "<tokio::net::tcp::stream::TcpStream as tokio::io::AsyncWrite>::poll_shutdown",
            "std::vector<int, std::allocator<int> >::push_back(int const&)",
        ] {
            let f = &user_frames(
                1,
                Some(&frame(name, 0x12)),
                Some("/srv/app"),
                FrameKind::Native,
            )[0];
            assert_eq!(f.function.as_deref(), Some(name));
        }
    }

    #[test]
    fn lookup_addresses_step_back_except_innermost() {
        assert_eq!(lookup_addrs(&[]), Vec::<u64>::new());
        assert_eq!(lookup_addrs(&[0x1000]), [0x1000]);
        assert_eq!(
            lookup_addrs(&[0x1000, 0x2000, 0x3001]),
            [0x1000, 0x1fff, 0x3000]
        );
        assert_eq!(lookup_addrs(&[0, 0]), [0, 0]);
    }

    /// Budgets for tests that are not about them: long enough for a loaded
    /// 2-CPU host to parse this test binary's debug info (seconds), short
    /// enough that a real hang still ends the test.
    const PATIENT: Budgets = Budgets {
        blocked: Duration::from_secs(300),
        total: Duration::from_secs(300),
    };

    /// A symbolizer that waits for its worker as long as [`PATIENT`] says.
    fn patient() -> Symbolizer {
        let mut s = Symbolizer::new();
        s.budgets = PATIENT;
        s
    }

    // ---- live: this process ----

    #[inline(never)]
    fn wstrace_symbolize_probe_fn() -> u64 {
        std::hint::black_box(42)
    }

    #[test]
    fn live_own_functions() {
        let mut s = patient();
        let probe = wstrace_symbolize_probe_fn as *const () as usize as u64;
        let close = libc::close as *const () as usize as u64;
        // The second entry is a "return address": looked up at close, printed as close+0x1.
        let frames = s.user_stack(std::process::id(), &[probe, close + 1]);
        eprintln!("{frames:#?}");
        assert_eq!(frames.len(), 2);
        let exe = std::env::current_exe().expect("current_exe");
        assert_eq!(
            at(&frames[0]),
            format!("{}::wstrace_symbolize_probe_fn+0x0", module_path!()),
        );
        assert_eq!(
            frames[0].module.as_deref(),
            Some(exe.display().to_string().as_str())
        );
        assert!(
            frames[0].line.is_some()
                && frames[0]
                    .file
                    .as_deref()
                    .is_some_and(|f| f.ends_with("symbolize.rs")),
            "{:?}",
            frames[0]
        );
        // glibc has several names at close's address (close, __close, __libc_close).
        assert!(at(&frames[1]).ends_with("close+0x1"), "{:?}", frames[1]);
        assert!(
            frames[1]
                .module
                .as_deref()
                .is_some_and(|m| m.contains("libc")),
            "{:?}",
            frames[1]
        );
    }

    #[test]
    fn live_never_drops_frames() {
        let mut s = patient();
        let addrs = [1, 0x10, u64::MAX];
        let frames = s.user_stack(std::process::id(), &addrs);
        assert_eq!(frames, unknowns(&addrs));
        assert_eq!(
            s.user_stack(
                0,
                &[wstrace_symbolize_probe_fn as *const () as usize as u64]
            )
            .len(),
            1
        );
        assert_eq!(s.user_stack(0, &[0x1234]), unknowns(&[0x1234]));
        assert!(s.user_stack(std::process::id(), &[]).is_empty());
        assert!(s.kernel_stack(&[]).is_empty());
        // A pid that does not exist.
        assert_eq!(
            s.user_stack(u32::MAX - 1, &[0x4000, 0x5000]),
            unknowns(&[0x4000, 0x5000])
        );
    }

    #[inline(never)]
    fn bt_capture() -> Vec<u64> {
        let mut buf = [std::ptr::null_mut::<libc::c_void>(); 64];
        // SAFETY: buf has room for 64 pointers, the count passed.
        let n = unsafe { libc::backtrace(buf.as_mut_ptr(), 64) };
        buf[..usize::try_from(n).unwrap_or(0)]
            .iter()
            .map(|p| *p as u64)
            .collect()
    }

    #[inline(always)]
    fn bt_inlined_middle() -> Vec<u64> {
        std::hint::black_box(bt_capture())
    }

    #[inline(never)]
    fn bt_outer() -> Vec<u64> {
        std::hint::black_box(bt_inlined_middle())
    }

    #[test]
    fn live_real_backtrace_with_inlining() {
        let addrs = bt_outer();
        assert!(addrs.len() >= 3, "{addrs:x?}");
        let mut s = patient();
        let frames = s.user_stack(std::process::id(), &addrs);
        eprintln!("{frames:#?}");
        assert!(frames.len() >= addrs.len());
        let pos = |needle: &str, inlined: bool| {
            frames
                .iter()
                .position(|f| {
                    f.inlined == inlined
                        && f.function.as_deref().is_some_and(|n| n.contains(needle))
                })
                .unwrap_or_else(|| panic!("{needle} not in {frames:#?}"))
        };
        let capture = pos("tests::bt_capture", false);
        let outer = pos("tests::bt_outer", false);
        assert!(capture < outer);
        let middle = pos("tests::bt_inlined_middle", true);
        assert!(capture < middle && middle < outer, "{frames:#?}");
        pos("tests::live_real_backtrace_with_inlining", false);
    }

    #[test]
    fn live_perf_map_names_jit_code_as_jit() {
        // Anonymous executable memory named by this process's perf map, as
        // a JIT runtime makes them.
        const LEN: usize = 4096;
        // SAFETY: a fresh private anonymous mapping; nothing else uses it.
        let code = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                LEN,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(code, libc::MAP_FAILED, "mmap");
        let start = code as u64;
        let perf = PathBuf::from(format!("/tmp/perf-{}.map", std::process::id()));
        {
            use std::io::Write as _;
            // create_new: never through a file or link someone planted in /tmp.
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&perf)
                .unwrap_or_else(|e| panic!("create {}: {e}", perf.display()));
            writeln!(f, "{start:x} 100 LazyCompile:*onClose app.js:7").expect("write the perf map");
        }
        let mut s = patient();
        let frames = s.user_stack(std::process::id(), &[start + 0x10]);
        let _ = std::fs::remove_file(&perf);
        // SAFETY: the mapping made above, unused from here on.
        unsafe { libc::munmap(code, LEN) };
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!(
            (
                frames[0].function.as_deref(),
                frames[0].offset,
                frames[0].kind
            ),
            (
                Some("LazyCompile:*onClose app.js:7"),
                Some(0x10),
                FrameKind::Jit
            ),
            "{frames:?}"
        );
        // Code from a file stays native.
        let probe = wstrace_symbolize_probe_fn as *const () as usize as u64;
        assert_eq!(
            s.user_stack(std::process::id(), &[probe])[0].kind,
            FrameKind::Native
        );
    }

    // ---- live: kernel ----

    /// All addresses of `name` in /proc/kallsyms, plus every name at them.
    fn kallsyms_lookup(name: &str) -> Option<(u64, Vec<String>)> {
        let text = std::fs::read_to_string("/proc/kallsyms").ok()?;
        let entries: Vec<(u64, &str)> = text
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                let addr = u64::from_str_radix(it.next()?, 16).ok()?;
                let _ty = it.next()?;
                Some((addr, it.next()?))
            })
            .collect();
        let addr = entries.iter().find(|(_, n)| *n == name)?.0;
        let names = entries
            .iter()
            .filter(|(a, _)| *a == addr)
            .map(|(_, n)| n.to_string())
            .collect();
        Some((addr, names))
    }

    #[test]
    fn live_kernel_tcp_close() {
        let found = kallsyms_lookup("tcp_close").ok_or("no tcp_close in it");
        let Some((addr, names)) = crate::testenv::require_ok("/proc/kallsyms", found) else {
            return;
        };
        // (Zero addresses symbolize to unknown: kernel_with_hidden_kallsyms_is_unknown.)
        if !crate::testenv::require(
            addr != 0,
            "/proc/kallsyms shows zero addresses: run as root (CAP_SYSLOG), with kernel.kptr_restrict below 2",
        ) {
            return;
        }
        let mut s = Symbolizer::new();
        let frames = s.kernel_stack(&[addr, addr + 5, 0x10]);
        eprintln!("{frames:#?}");
        assert_eq!(frames.len(), 3);
        let ok = |frame: &Frame, off: &str| names.iter().any(|n| at(frame) == format!("{n}{off}"));
        assert!(
            ok(&frames[0], "+0x0"),
            "{:?} (names at {addr:#x}: {names:?})",
            frames[0]
        );
        assert!(
            ok(&frames[1], "+0x5"),
            "{:?} (names at {addr:#x}: {names:?})",
            frames[1]
        );
        assert_eq!(frames[2], Frame::unknown(FrameKind::Kernel, 0x10, None));
        // A return address equal to a function's start belongs to a call that
        // ended the function before it: looked up one byte back, it is not
        // named after tcp_close.
        let frames = s.kernel_stack(&[addr, addr]);
        assert!(ok(&frames[0], "+0x0"), "{frames:?}");
        assert!(
            !names
                .iter()
                .any(|n| frames[1].function.as_deref() == Some(n.as_str())),
            "{frames:?}"
        );
    }

    /// A symbolizer whose kernel source is the given kallsyms text.
    fn with_kallsyms(name: &str, text: &str) -> (Symbolizer, PathBuf) {
        let path =
            std::env::temp_dir().join(format!("wstrace-kallsyms-{name}-{}", std::process::id()));
        std::fs::write(&path, text).expect("write fake kallsyms");
        let kernel = Kernel {
            kallsyms: MaybeDefault::Some(path.clone()),
            vmlinux: MaybeDefault::None,
            debug_syms: false,
            ..Kernel::default()
        };
        let s = Symbolizer::with_kernel(KernelSymbols {
            kernel: Source::Kernel(kernel),
            ..KernelSymbols::new()
        });
        (s, path)
    }

    #[test]
    fn kernel_with_fake_kallsyms() {
        let (mut s, path) = with_kallsyms(
            "fake",
            "ffffffff81000000 T _stext\n\
             ffffffff81000100 T foo\n\
             ffffffff81000200 t bar\n\
             ffffffffc0000000 t mod_fn\t[mymod]\n",
        );
        let frames = s.kernel_stack(&[
            0xffffffff81000105, // innermost: taken as is
            0xffffffff81000200, // return address = bar's start: the call ended foo
            0xffffffff81000201,
            0xffffffffc0000010,
            0xffffffffc0200000, // 2 MiB past the last symbol: not believable
            0x10,               // below every symbol
        ]);
        let _ = std::fs::remove_file(&path);
        assert_eq!(
            frames.iter().map(at).collect::<Vec<_>>(),
            [
                "foo+0x5",
                "foo+0x100",
                "bar+0x1",
                "mod_fn+0x10",
                "[unknown]+0x0",
                "[unknown]+0x0",
            ]
        );
        assert_eq!(frames[4].address, Some(0xffffffffc0200000));
        assert!(frames.iter().all(|f| f.kind == FrameKind::Kernel));
    }

    #[test]
    fn kernel_with_hidden_kallsyms_is_unknown() {
        // What an unprivileged reader sees (kptr_restrict): every address zero.
        let (mut s, path) = with_kallsyms(
            "zero",
            "0000000000000000 T _stext\n0000000000000000 T tcp_close\n",
        );
        let frames = s.kernel_stack(&[0xffffffff81234567, 0xffffffff81234568]);
        let _ = std::fs::remove_file(&path);
        let unknown = |a| Frame::unknown(FrameKind::Kernel, a, None);
        assert_eq!(
            frames,
            [unknown(0xffffffff81234567), unknown(0xffffffff81234568)]
        );
        // No kallsyms at all.
        let (mut s, path) = with_kallsyms("missing", "");
        let _ = std::fs::remove_file(&path);
        assert_eq!(
            s.kernel_stack(&[0xffffffff81234567]),
            [unknown(0xffffffff81234567)]
        );
    }

    // ---- live: remembered processes ----

    /// Our own mapping containing libc's `close`: (path, dev, inode, file offset of close).
    fn own_close_location() -> Option<(String, String, u64, u64)> {
        let close = libc::close as *const () as usize as u64;
        let maps = read_maps(std::process::id())?;
        let m = maps.iter().find(|m| m.start <= close && close < m.end)?;
        Some((
            m.path.clone()?,
            m.dev.clone(),
            m.inode,
            close - m.start + m.offset,
        ))
    }

    /// Where `close` sits in process `pid`, in the executable mapping `is_libc`
    /// accepts, waiting for the dynamic loader to map it (milliseconds; up to
    /// 30 s on a loaded host).
    fn close_in(
        pid: u32,
        is_libc: impl Fn(&Mapping) -> bool,
        file_off: u64,
    ) -> Option<(u64, String)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            for m in read_maps(pid).unwrap_or_default() {
                if m.exec
                    && is_libc(&m)
                    && m.offset <= file_off
                    && file_off < m.offset + (m.end - m.start)
                {
                    return Some((m.start + (file_off - m.offset), m.path.unwrap_or_default()));
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// How long a test's `sleep` child sleeps: it is killed when the test
    /// is done with it, and must outlive the test on a loaded host (the
    /// tests need it alive until they have remembered it).
    const CHILD_SLEEP: &str = "600";

    /// A `sleep` child with libc mapped: (child, address of close in it, libc
    /// path in its maps). With `lib_dir`, the child loads the copy of our libc
    /// placed there (LD_LIBRARY_PATH) instead of the system one.
    fn sleeping_child(lib_dir: Option<&Path>) -> Option<(std::process::Child, u64, String)> {
        let (path, dev, inode, file_off) = own_close_location()?;
        let mut cmd = Command::new("sleep");
        cmd.arg(CHILD_SLEEP);
        let copy = match lib_dir {
            Some(dir) => {
                let copy = dir.join(Path::new(&path).file_name()?);
                std::fs::copy(&path, &copy).ok()?;
                cmd.env("LD_LIBRARY_PATH", dir);
                Some(copy.display().to_string())
            }
            None => None,
        };
        let mut child = cmd.spawn().ok()?;
        let is_libc = |m: &Mapping| match &copy {
            Some(copy) => m.path.as_deref() == Some(copy.as_str()),
            None => m.dev == dev && m.inode == inode,
        };
        match close_in(child.id(), is_libc, file_off) {
            Some((addr, path)) => Some((child, addr, path)),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                None
            }
        }
    }

    fn reap(mut child: std::process::Child) {
        let pid = child.id();
        child.kill().expect("kill child");
        child.wait().expect("wait child");
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "child {pid} still in /proc"
        );
    }

    #[test]
    fn remembered_process_symbolizes_after_exit() {
        let child = sleeping_child(None).ok_or("no dynamically linked `sleep` on $PATH that maps our libc within 30 s (coreutils' sleep does)");
        let Some((child, addr, libc_path)) = crate::testenv::require_ok("`sleep`", child) else {
            return;
        };
        let pid = child.id();
        let mut s = patient();
        s.remember_process(pid);
        reap(child);
        let frames = s.user_stack(pid, &[addr, addr + 1]);
        eprintln!("{frames:#?}");
        assert!(at(&frames[0]).ends_with("close+0x0"), "{:?}", frames[0]);
        assert!(at(&frames[1]).ends_with("close+0x1"), "{:?}", frames[1]);
        // Line numbers survive the exit too, if libc has debug info here at all.
        let own = patient().user_stack(
            std::process::id(),
            &[libc::close as *const () as usize as u64],
        );
        assert_eq!(frames[0].module.as_deref(), Some(libc_path.as_str()));
        assert_eq!(
            (&frames[0].file, frames[0].line),
            (&own[0].file, own[0].line),
            "{:?} vs {:?}",
            frames[0],
            own[0]
        );

        // Forgotten: nothing left to go by.
        s.forget_process(pid);
        assert_eq!(s.user_stack(pid, &[addr]), unknowns(&[addr]));
    }

    /// Why the tests that pin mappings need root.
    const MAP_FILES: &str =
        "pinning through /proc/<pid>/map_files needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE";

    /// The library is deleted after the process exits: only the file pinned
    /// through /proc/<pid>/map_files at remember time can still be read
    /// (the same holds for a library upgraded on disk, or one inside a
    /// container's mount namespace).
    #[test]
    fn remembered_process_survives_deleted_library() {
        if !crate::testenv::require_root(MAP_FILES) {
            return;
        }
        let dir =
            std::env::temp_dir().join(format!("wstrace-symbolize-test-{}", std::process::id()));
        let made = std::fs::create_dir_all(&dir)
            .map_err(|e| format!("{e}: needs a writable temp dir (set TMPDIR)"));
        if crate::testenv::require_ok(&dir.display().to_string(), made).is_none() {
            return;
        }
        let child = sleeping_child(Some(&dir)).ok_or(
            "it did not load the copy of our libc from LD_LIBRARY_PATH within 30 s (needs coreutils' dynamically linked sleep)",
        );
        if child.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        let Some((child, addr, libc_path)) = crate::testenv::require_ok("`sleep`", child) else {
            return;
        };
        assert!(
            libc_path.starts_with(&dir.display().to_string()),
            "{libc_path}"
        );
        let pid = child.id();
        let mut s = patient();
        s.remember_process(pid);
        reap(child);
        std::fs::remove_dir_all(&dir).expect("remove the copied libc");
        assert!(!Path::new(&libc_path).exists());
        let frames = s.user_stack(pid, &[addr]);
        eprintln!("{frames:#?}");
        assert!(at(&frames[0]).ends_with("close+0x0"), "{:?}", frames[0]);
        assert_eq!(frames[0].module.as_deref(), Some(libc_path.as_str()));
        s.forget_process(pid);
        assert_eq!(s.user_stack(pid, &[addr]), unknowns(&[addr]));
    }

    #[test]
    fn unremembered_dead_process_is_unknown() {
        let child = sleeping_child(None).ok_or("no dynamically linked `sleep` on $PATH that maps our libc within 30 s (coreutils' sleep does)");
        let Some((child, addr, _)) = crate::testenv::require_ok("`sleep`", child) else {
            return;
        };
        let pid = child.id();
        let mut s = patient();
        // While alive, live maps suffice.
        let live = s.user_stack(pid, &[addr]);
        assert!(at(&live[0]).ends_with("close+0x0"), "{live:?}");
        reap(child);
        assert_eq!(s.user_stack(pid, &[addr]), unknowns(&[addr]));
    }

    #[test]
    fn remember_is_throttled_and_cheap_to_repeat() {
        if !crate::testenv::require_root(MAP_FILES) {
            return;
        }
        let mut s = UserSymbols::new();
        // Longer than a loaded host can take between the two calls below
        // (the first parses this binary's debug info).
        s.remember_interval = Duration::from_secs(3600);
        let pid = std::process::id();
        s.remember_process(pid);
        let first = s
            .procs
            .get(&pid)
            .map(|r| (r.refreshed, r.pinned.len()))
            .expect("remembered");
        assert!(first.1 > 0, "no executable mapping pinned");
        s.remember_process(pid);
        assert_eq!(
            s.procs.get(&pid).map(|r| (r.refreshed, r.pinned.len())),
            Some(first)
        );
        s.forget_process(pid);
        assert!(!s.procs.contains_key(&pid));
        s.remember_process(0);
        assert!(s.procs.is_empty());
    }

    // ---- the worker and its budgets ----

    /// A FIFO in a fresh directory, and a guard that opens it for writing
    /// when dropped, which releases a reader blocked in `open()`.
    struct Fifo {
        path: PathBuf,
        /// The directory made for it, removed with it (never /tmp itself).
        dir: Option<PathBuf>,
    }

    impl Fifo {
        fn new(name: &str) -> Fifo {
            let dir =
                std::env::temp_dir().join(format!("wstrace-fifo-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("fifo dir");
            let path = dir.join("fifo");
            let c = std::ffi::CString::new(path.display().to_string()).expect("path");
            // SAFETY: a NUL-terminated path.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
            Fifo {
                path,
                dir: Some(dir),
            }
        }
    }

    impl Drop for Fifo {
        fn drop(&mut self) {
            use std::os::unix::fs::OpenOptionsExt as _;
            // A reader is waiting, so a non-blocking writer opens; the
            // reader's open returns and its worker ends.
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&self.path);
            let _ = std::fs::remove_file(&self.path);
            if let Some(dir) = &self.dir {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    #[test]
    fn blocked_worker_is_abandoned_within_budget() {
        let fifo = Fifo::new("blocked");
        let mut s = Symbolizer::new();
        // Only the blocked budget can end the wait: a total budget that a
        // blocked worker never reaches, however loaded the host.
        s.budgets = Budgets {
            blocked: BLOCKED_BUDGET,
            total: PATIENT.total,
        };
        let me = std::process::id();
        let path = fifo.path.clone();
        let start = Instant::now();
        // What blazesym does with a FIFO perf map: a plain blocking open.
        let r = s.call(me, move |_| std::fs::File::open(&path).is_ok());
        let took = start.elapsed();
        assert_eq!(r, Err(NoAnswer::TimedOut));
        assert!(took >= BLOCKED_BUDGET && took < PATIENT.total, "{took:?}");
        // What follows is not about budgets: a fresh worker's start and a
        // real symbolization may take seconds on a loaded host.
        s.budgets = PATIENT;
        // The process is given up on: its frames say so, with their module.
        assert!(s.remembers(me));
        let probe = wstrace_symbolize_probe_fn as *const () as usize as u64;
        let frames = s.user_stack(me, &[probe]);
        let exe = std::env::current_exe().expect("current_exe");
        let exe = exe.display().to_string();
        assert_eq!(
            frames,
            [Frame {
                unresolved: Some(Unresolved::TimedOut),
                ..Frame::unknown(FrameKind::Native, probe, Some(&exe))
            }]
        );
        assert_eq!(
            s.unwind_user(
                me,
                &UserStackCopy {
                    ip: 0,
                    sp: 0,
                    fp: 0,
                    lr: 0,
                    status: ustack::OK,
                    bytes: Vec::new(),
                }
            )
            .end,
            End::Stopped("symbolization timed out".into())
        );
        // Another process is served by a fresh worker while the old one is
        // still blocked.
        assert_eq!(s.live_workers.load(Ordering::SeqCst), 1);
        let ok = s.call(me + 1, |_| 7);
        assert_eq!(ok, Ok(7));
        assert_eq!(s.live_workers.load(Ordering::SeqCst), 2);
        // Released, the abandoned worker ends.
        drop(fifo);
        let deadline = Instant::now() + PATIENT.total;
        while s.live_workers.load(Ordering::SeqCst) > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(s.live_workers.load(Ordering::SeqCst), 1);
        // Forgetting the pid lets it be tried again.
        s.forget_process(me);
        assert!(!s.remembers(me));
        let frames = s.user_stack(me, &[probe]);
        assert!(
            at(&frames[0]).ends_with("wstrace_symbolize_probe_fn+0x0"),
            "{frames:?}"
        );
    }

    #[test]
    fn computing_worker_gets_more_than_the_blocked_budget() {
        let mut s = patient();
        // The worker started and its thread id known first: a thread not
        // yet started counts as blocked, and a loaded host may take longer
        // than the blocked budget to start one.
        assert_eq!(s.call(std::process::id(), |_| ()), Ok(()));
        // Only the blocked budget could end the wait now.
        s.budgets = Budgets {
            blocked: BLOCKED_BUDGET,
            total: PATIENT.total,
        };
        let spin = BLOCKED_BUDGET * 3;
        let r = s.call(std::process::id(), move |_| {
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed() < spin {
                n = std::hint::black_box(n.wrapping_add(1));
            }
            n > 0
        });
        assert_eq!(r, Ok(true));
        assert!(!s.timed_out.contains_key(&std::process::id()));
    }

    #[test]
    fn stuck_workers_are_bounded() {
        let fifos: Vec<Fifo> = (0..MAX_WORKERS)
            .map(|i| Fifo::new(&format!("bound{i}")))
            .collect();
        let mut s = Symbolizer::new();
        for (i, f) in fifos.iter().enumerate() {
            let path = f.path.clone();
            let r = s.call(1_000_000 + i as u32, move |_| {
                std::fs::File::open(&path).is_ok()
            });
            assert_eq!(r, Err(NoAnswer::TimedOut), "worker {i}");
        }
        assert_eq!(s.live_workers.load(Ordering::SeqCst), MAX_WORKERS);
        // No new worker: unknown at once, with the reason. With budgets no
        // loaded host runs out of, answering before them means nothing was
        // waited for.
        s.budgets = PATIENT;
        let start = Instant::now();
        assert_eq!(s.call(1, |_| ()), Err(NoAnswer::Unavailable));
        assert_eq!(
            s.user_stack(u32::MAX - 1, &[0x1234]),
            [Frame {
                unresolved: Some(Unresolved::Unavailable),
                ..Frame::unknown(FrameKind::Native, 0x1234, None)
            }]
        );
        assert!(start.elapsed() < PATIENT.blocked, "{:?}", start.elapsed());
        drop(fifos);
        let deadline = Instant::now() + PATIENT.total;
        while s.live_workers.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(s.call(1, |_| 3), Ok(3));
    }

    #[test]
    fn worker_panic_is_survived() {
        // Patient: a worker slow to start would be a timeout, not a panic.
        let mut s = patient();
        let r: Result<(), NoAnswer> = s.call(1, |_| panic!("blazesym broke"));
        assert_eq!(r, Err(NoAnswer::Unavailable));
        assert_eq!(s.call(1, |_| 5), Ok(5));
    }

    /// Issue 25, item 1: perf maps that are FIFOs (nine processes, more
    /// than [`MAX_WORKERS`]) block no worker: wstrace reads perf maps
    /// itself without blocking, so no process times out, no worker is
    /// abandoned, and every other process keeps its names.
    #[test]
    fn fifo_perf_maps_block_no_worker() {
        let mut s = Symbolizer::new();
        // The blocked budget is what would give up on a FIFO: a total
        // budget no loaded host reaches.
        s.budgets = Budgets {
            blocked: BLOCKED_BUDGET,
            total: PATIENT.total,
        };
        let mut kids = Vec::new();
        for _ in 0..9 {
            let child = Command::new("sleep")
                .arg(CHILD_SLEEP)
                .spawn()
                .expect("sleep");
            let pid = child.id();
            let perf = PathBuf::from(format!("/tmp/perf-{pid}.map"));
            let c = std::ffi::CString::new(perf.display().to_string()).expect("path");
            // SAFETY: a NUL-terminated path.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
            let release = Fifo {
                path: perf,
                dir: None,
            };
            s.remember_process(pid);
            let frames = s.user_stack(pid, &[0x1234]);
            assert_eq!(
                frames,
                [Frame::unknown(FrameKind::Native, 0x1234, None)],
                "pid {pid}"
            );
            assert!(!s.timed_out.contains_key(&pid), "pid {pid} timed out");
            kids.push((child, release));
        }
        assert_eq!(
            s.live_workers.load(Ordering::SeqCst),
            1,
            "workers abandoned"
        );
        s.budgets = PATIENT;
        let probe = wstrace_symbolize_probe_fn as *const () as usize as u64;
        let own = s.user_stack(std::process::id(), &[probe]);
        assert!(
            at(&own[0]).ends_with("wstrace_symbolize_probe_fn+0x0"),
            "{own:?}"
        );
        for (mut child, release) in kids {
            let _ = child.kill();
            let _ = child.wait();
            drop(release);
        }
    }

    #[test]
    fn paths_only_root_can_write_are_trusted() {
        use std::os::unix::fs::PermissionsExt as _;
        let m = |path: &str| Mapping {
            start: 0x1000,
            end: 0x2000,
            exec: true,
            offset: 0,
            dev: "08:01".into(),
            inode: 1,
            path: Some(path.into()),
        };
        assert!(trusted_paths(&[m("/usr/bin/python3.11"), m("[vdso]")]));
        assert!(trusted_paths(&[m(
            "/usr/lib/x86_64-linux-gnu/libc.so.6 (deleted)"
        )]));
        // /tmp itself is writable by all: a binary right in it is not.
        assert!(!trusted_paths(&[m("/tmp/nginx")]));
        let d = std::env::temp_dir().join(format!("wstrace-trust-{}", std::process::id()));
        std::fs::create_dir_all(d.join("sub")).expect("dir");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::set_permissions(d.join("sub"), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let bin = d.join("sub/app").display().to_string();
        // Root's directory under sticky /tmp: trusted (when run as root).
        let root = rustix::process::geteuid().as_raw() == 0;
        assert_eq!(trusted_paths(&[m(&bin)]), root);
        std::fs::set_permissions(d.join("sub"), std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
        assert!(!trusted_paths(&[m(&bin)]));
        std::fs::set_permissions(d.join("sub"), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        assert!(!trusted_paths(&[m(&bin)]), "a writable ancestor");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn task_stat_fields() {
        assert_eq!(
            parse_task_stat("42 (a) b) c) S 1 2 3 4 5 6 7 8 9 10 100 23 0 0"),
            Some(('S', 123))
        );
        assert_eq!(parse_task_stat("42 (x) R 1"), None);
        assert_eq!(parse_task_stat("garbage"), None);
        let own = std::fs::read_to_string("/proc/thread-self/stat").expect("own stat");
        assert_eq!(parse_task_stat(&own).map(|(s, _)| s), Some('R'));
    }
}
