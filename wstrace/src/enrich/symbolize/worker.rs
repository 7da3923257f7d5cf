//! The user-symbols worker thread: the budgets the event path waits for it
//! within, telling a worker that computes from one that is stuck, and
//! abandoning (and bounding) stuck ones.

use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use super::Symbolizer;
use super::user::UserSymbols;
use crate::enrich::maps::{Mapping, module_for, read_maps};
use crate::enrich::stack_cache::{SharedUserStacks, UserStacks};
use crate::model::{Frame, FrameKind, Unresolved};
/// How long the event path waits for the symbolizer worker while the
/// worker makes no progress (asleep or in uninterruptible wait without using
/// CPU): an `open()` of a FIFO, a hung FUSE or NFS mount. Past it the worker
/// is abandoned and the frames are printed unknown.
pub(super) const BLOCKED_BUDGET: Duration = Duration::from_millis(250);

/// How long the event path waits for one request at most, even while the
/// worker computes (parsing the DWARF of a big binary on a loaded host):
/// the longest stall one request can cause. `--symbolize-timeout` sets it.
pub(super) const TOTAL_BUDGET: Duration = Duration::from_secs(2);

/// How often the waiting side looks at the worker's scheduler state.
const POLL: Duration = Duration::from_millis(20);

/// Workers alive at once, abandoned ones included. An abandoned worker
/// stays blocked until its `open()` returns (a FIFO gets a writer), which may
/// be never: this bounds the threads (and their blazesym caches) a hostile
/// host can pile up. At the bound, user frames are printed unknown until
/// one of them finishes.
pub(super) const MAX_WORKERS: usize = 8;

/// Processes whose symbolization timed out, remembered at once (a bound on
/// memory; when full it starts over).
const MAX_TIMED_OUT: usize = 1024;

/// How long the event path waits for the worker: [`BLOCKED_BUDGET`] while
/// it makes no progress, [`TOTAL_BUDGET`] in all. A field, not only the
/// constants, so that `--symbolize-timeout` can raise the total and tests
/// that are not about the budgets can give a loaded host all the time it
/// needs (parsing a test binary's debug info on 2 busy CPUs takes seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Budgets {
    pub(super) blocked: Duration,
    pub(super) total: Duration,
}

impl Budgets {
    pub(super) const DEFAULT: Budgets = Budgets {
        blocked: BLOCKED_BUDGET,
        total: TOTAL_BUDGET,
    };
}

/// Work for the user-symbols worker.
pub(super) type Job = Box<dyn FnOnce(&mut UserSymbols) + Send>;

/// The thread that owns a [`UserSymbols`] (blazesym state is `!Send`, so it
/// is created on that thread and never leaves it).
pub(super) struct Worker {
    pub(super) jobs: mpsc::Sender<Job>,
    /// Its kernel thread id, 0 until it has started.
    pub(super) tid: Arc<AtomicI32>,
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
pub(super) enum NoAnswer {
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

    pub(super) fn why(self) -> &'static str {
        self.unresolved().as_str()
    }
}

impl Symbolizer {
    /// Runs `job` on the worker (starting one if there is none) and waits
    /// for its answer within the budgets. On a timeout the worker is
    /// abandoned and `pid` marked as timed out.
    pub(super) fn call<R: Send + 'static>(
        &mut self,
        pid: u32,
        job: impl FnOnce(&mut UserSymbols) -> R + Send + 'static,
    ) -> Result<R, NoAnswer> {
        if self.worker.is_none() {
            // An abandoned worker may still write to its cache: not ours.
            self.user_stacks = UserStacks::shared();
            self.worker = spawn_worker(&self.live_workers, self.user_stacks.clone());
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
fn spawn_worker(live: &Arc<AtomicUsize>, stacks: SharedUserStacks) -> Option<Worker> {
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
            crate::hardening::privileges::keep_file_access_only_in_this_thread();
            // SAFETY: gettid has no preconditions.
            tid_w.store(unsafe { libc::gettid() }, Ordering::SeqCst);
            let mut user = UserSymbols::new(stacks);
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
pub(super) fn parse_task_stat(stat: &str) -> Option<(char, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((state, utime.saturating_add(stime)))
}

/// Frames for addresses the worker gave no answer for: unknown, with why
/// and the module from `maps` when known.
pub(super) fn format_unanswered(addrs: &[u64], maps: &[Mapping], why: NoAnswer) -> Vec<Frame> {
    addrs
        .iter()
        .map(|&addr| Frame {
            unresolved: Some(why.unresolved()),
            ..Frame::unknown(FrameKind::Native, addr, module_for(maps, addr))
        })
        .collect()
}
