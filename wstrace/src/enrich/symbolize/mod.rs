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
//! (see [`kernel::drop_tracer_frames`]).
//!
//! The offset kept is that of the *captured* address from the function
//! start (the return address, as kernel oopses and bpftrace print it), while
//! the function and the line are looked up at `addr - 1` for every frame but
//! the innermost (as perf does), so the call site is named even when the
//! call is the last instruction of a function.
//!
//! Files: this one is the [`Symbolizer`] the enrich stage calls; `worker`
//! runs user-side lookups on a thread within budgets and abandons stuck
//! ones; `kernel` is kallsyms and the tracer's own frames; `user` is
//! remembered processes, which paths may be opened and whether debug info
//! is used; `frames` is the pure rules from a symbol to [`Frame`]s.
//! `tests` are pure, `live_tests` use this process, children and the kernel.

mod dwarf_guard;
mod frames;
mod kallsyms;
mod kernel;
#[cfg(test)]
mod live_tests;
#[cfg(test)]
mod tests;
mod user;
mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use crate::enrich::maps::{Mapping, read_maps};
use crate::enrich::stack_cache::{self, SharedUserStacks, UserStacks};
use crate::model::{End, Frame, Unwound, UserStackCopy};
use kernel::KernelSymbols;
use worker::{Budgets, NoAnswer, Worker, format_unanswered};

/// A process writes the HTTP 101 once per WebSocket: on a busy server that is
/// many times a second, and re-reading its maps (and re-caching its perf map)
/// each time would cost more than the tracing itself. Maps are re-read at most
/// this often; a stale snapshot is refreshed on demand when a live process's
/// address falls outside it (see [`Symbolizer::user_stack`]).
const REMEMBER_INTERVAL: Duration = Duration::from_secs(1);

/// Turns kernel and user stack addresses into [`Frame`]s.
///
/// Kernel frames are looked up here, on the caller's thread: their only
/// source is `/proc/kallsyms`. User frames need files that traced processes
/// name or control (their binaries, perf maps, debug links, `.dwp` files),
/// and an `open()` of a FIFO or a file on a hung mount blocks with no way to
/// cancel it. So every user-side lookup runs on a worker thread and the
/// caller waits for it within [`worker::BLOCKED_BUDGET`] / [`worker::TOTAL_BUDGET`]; a worker
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
    /// The one cache of symbolized user stacks, shared with the current
    /// worker (which fills it and drops what a process's exec made stale);
    /// a new worker gets a new one, as it holds no process's maps.
    user_stacks: SharedUserStacks,
}

/// Entries per stack cache; when full it starts over (distinct stacks are
/// few in practice, so this only bounds memory against pathological hosts).
const STACK_CACHE_MAX: usize = 4096;

fn cache_insert<K: std::hash::Hash + Eq, V>(cache: &mut HashMap<K, V>, key: K, frames: V) {
    if cache.len() >= STACK_CACHE_MAX {
        cache.clear();
    }
    cache.insert(key, frames);
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
            user_stacks: UserStacks::shared(),
        }
    }

    /// The longest one request waits while the worker computes
    /// (`--symbolize-timeout`; [`worker::TOTAL_BUDGET`] by default).
    pub fn set_total_budget(&mut self, budget: Duration) {
        self.budgets.total = budget;
    }

    /// Cache the process's memory maps (and its binaries' symbols as blazesym allows) now, so that
    /// its stacks still symbolize after it exits. Called when the process writes the HTTP 101.
    /// Errors (process gone, permission) are ignored: symbolization later will say `[unknown]`.
    /// See [`user::UserSymbols::remember_process`] for what is kept and what it costs. A process
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
        // Now, not when the worker gets to it: the next lookup for a new
        // process under this pid must not find the old one's stacks.
        stack_cache::lock(&self.user_stacks).forget(pid);
        if let Some(w) = &self.worker {
            // A send fails only if the worker died; the next call notices.
            let _ = w.jobs.send(Box::new(move |u| u.forget_process(pid)));
        }
    }

    /// `pid`'s JavaScript frames are named by the enricher (`node.rs`):
    /// no hint about node's perf map flags for it.
    pub fn names_javascript(&mut self, pid: u32) {
        if let Some(w) = &self.worker {
            let _ = w.jobs.send(Box::new(move |u| u.names_javascript(pid)));
        }
    }

    /// Kernel frames, innermost first (see [`KernelSymbols::kernel_stack`]).
    pub fn kernel_stack(&mut self, addrs: &[u64]) -> Arc<[Frame]> {
        self.kernel.kernel_stack(addrs)
    }

    /// Dwarf-unwinds a stack copy of process `pid` with the unwind tables
    /// of its remembered maps (remembering it now if it is not, which works
    /// while it lives). No frames if the process's symbolization timed out.
    pub fn unwind_user(&mut self, pid: u32, copy: &UserStackCopy) -> Unwound {
        let stopped = |why: NoAnswer| Unwound {
            addrs: Vec::new(),
            end: End::Stopped(why.why().to_string()),
            fp_slots: Vec::new(),
            js: Vec::new(),
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
    /// [`user::UserSymbols::user_stack`]): one address in → at least one frame
    /// out. Without an answer from the worker in time, each address is an
    /// unknown frame with its module and [`crate::model::Unresolved::TimedOut`].
    /// A stack the worker already symbolized for a remembered process is
    /// answered from the shared cache, without a round trip (at 20,000
    /// closes a second from one call site, nearly every stack is).
    pub fn user_stack(&mut self, pid: u32, addrs: &[u64]) -> Arc<[Frame]> {
        if addrs.is_empty() {
            return Arc::default();
        }
        if !self.timed_out.contains_key(&pid) {
            if self.worker.is_some()
                && let Some(frames) = stack_cache::lock(&self.user_stacks).get(pid, addrs)
            {
                return frames;
            }
            let addrs_owned = addrs.to_vec();
            match self.call(pid, move |u| u.user_stack(pid, &addrs_owned)) {
                Ok(frames) => return frames,
                Err(NoAnswer::TimedOut) => {}
                Err(why @ NoAnswer::Unavailable) => {
                    let maps = read_maps(pid).unwrap_or_default();
                    return format_unanswered(addrs, &maps, why).into();
                }
            }
        }
        let maps = self.timed_out.get(&pid).map(Vec::as_slice).unwrap_or(&[]);
        format_unanswered(addrs, maps, NoAnswer::TimedOut).into()
    }
}
