//! The ring-buffer reader: a thread that only copies records out of the
//! kernel's ring into a byte-bounded queue, so the kernel's slots come back
//! at memcpy speed whatever the daemon is doing with earlier records.
//!
//! Why a thread: resolving a report can stall for hundreds of milliseconds
//! (the first symbolization of a binary loads and inflates its debug info).
//! Under a fast churn (~4.5 KiB of events per upgrade+close at 20k a
//! second) an 8 MiB ring holds ~90 ms: a reader that also symbolizes loses
//! events at every new binary. Userspace memory is cheaper to make deep
//! than locked ring memory.
//!
//! Nothing is dropped here: when the queue is full the thread waits, the
//! kernel ring fills, and the kernel counts what it cannot write (`LOST`),
//! the one place where losses are counted.
//!
//! User stack copies come on a ring of their own (`STACKS`), each sent
//! before the close that names it: this thread joins each copy to its close
//! ([`PendingStacks`]), so later stages see one event, as before.
use std::{
    collections::{HashMap, VecDeque},
    os::fd::{AsFd as _, AsRawFd as _},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::model::{CopyFate, Event, UserStackCopy};
use crate::pipeline::decode;

/// Records decoded as they are copied out of the ring (one copy of their
/// bytes, not two), handed over together: under churn the ring holds a few
/// hundred thousand records a second, and one channel send, one wake-up
/// and one queue-space grant per record cost the daemon more than the
/// records. Their queue space is given back when the batch is dropped.
pub struct Batch {
    pub events: Vec<Result<Event>>,
    _space: OwnedSemaphorePermit,
}

/// Records per batch at most: bounds what one batch holds (~256 x 2 KiB
/// request heads) and how long the first of them waits for the last.
const BATCH_MAX: usize = 256;

/// Queue space is counted in KiB (a semaphore holds at most u32 permits).
const UNIT: usize = 1024;

/// A drain of at least this many records means the host is busy: see BUSY_PAUSE.
const BUSY_BATCH: usize = 32;
/// Pause after a busy drain, so the next one reads a batch, not one record:
/// the kernel wakes a caught-up reader on every record, and at 20k upgrades
/// a second those wake-ups (context switches on a host whose CPUs are busy
/// serving) cost more than the records. A millisecond is far from filling
/// the ring; when idle, each close is still read at once.
const BUSY_PAUSE: Duration = Duration::from_millis(1);
/// How often a waiting reader looks at the stop flag.
const POLL_MS: i32 = 20;

pub struct Reader {
    pub records: mpsc::UnboundedReceiver<Batch>,
    stop: Arc<AtomicBool>,
    space: Arc<Semaphore>,
    thread: Option<JoinHandle<()>>,
}

impl Reader {
    /// Starts the thread. `queue_bytes` bounds what waits in userspace.
    /// `stacks`: the ring of user stack copies, when copies are made.
    pub fn start(
        ring: RingBuf<MapData>,
        stacks: Option<RingBuf<MapData>>,
        queue_bytes: usize,
    ) -> Result<Reader> {
        let units = (queue_bytes / UNIT).clamp(1, Semaphore::MAX_PERMITS);
        let space = Arc::new(Semaphore::new(units));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, records) = mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name("wstrace-ring".into())
            .spawn({
                let space = space.clone();
                let stop = stop.clone();
                move || {
                    crate::hardening::privileges::drop_all_in_this_thread();
                    read_loop(ring, stacks, tx, &space, &stop, units)
                }
            })
            .context("starting the ring-buffer reader thread")?;
        Ok(Reader {
            records,
            stop,
            space,
            thread: Some(thread),
        })
    }

    /// The kernel side is detached: read what is left, then end the stream
    /// (`records` yields `None` after the last record).
    pub fn finish(&self) {
        self.stop.store(true, Ordering::Release);
    }
}

impl Drop for Reader {
    /// Unblocks a thread waiting for queue space nobody will free, then
    /// waits for it so the ring's fd is closed before the programs go.
    fn drop(&mut self) {
        self.finish();
        self.space.close();
        self.records.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_loop(
    mut ring: RingBuf<MapData>,
    mut stacks: Option<RingBuf<MapData>>,
    tx: mpsc::UnboundedSender<Batch>,
    space: &Arc<Semaphore>,
    stop: &AtomicBool,
    units: usize,
) {
    // Built the first time the queue is full (this thread is not a tokio
    // worker, and waiting for space is async).
    let mut waiter: Option<tokio::runtime::Runtime> = None;
    let mut pending = PendingStacks::default();
    loop {
        // Read the flag before draining: whatever the kernel wrote before
        // it was detached (and so before the flag was set) is drained
        // below before the thread ends.
        let stopping = stop.load(Ordering::Acquire);
        let mut drained = 0usize;
        loop {
            let mut events = Vec::new();
            let mut bytes = 0usize;
            while events.len() < BATCH_MAX
                && let Some(item) = ring.next()
            {
                // The queue is bounded by the records' sizes in the ring
                // (a close 1,184 bytes, a request head 512), which sets its
                // depth in events. Bounding it by the heap the decoded
                // events hold instead (`heap_bytes`, 8 MiB) held fewer
                // events (a 100-byte state record decodes to a 240-byte
                // event) and lost closes `over_budget` in the churn test
                // where this bound lost none (measured: 698 events lost in
                // one of two runs vs 0 in two, 7.2k/s, load 5). What
                // shrinks the queue's memory at the same depth is the
                // event's own size (stacks boxed) and the batch's slack.
                bytes += item.len();
                let mut event = decode::decode(&item);
                // Hands the slot back to the kernel before anything else.
                drop(item);
                if let Ok(ev) = &mut event {
                    bytes += join_copy(ev, stacks.as_mut(), &mut pending);
                }
                events.push(event);
            }
            if events.is_empty() {
                break;
            }
            // The doubling growth's slack (up to half the batch's slots)
            // is given back before the batch waits in the queue.
            events.shrink_to_fit();
            drained += events.len();
            let need = bytes.div_ceil(UNIT).clamp(1, units) as u32;
            let Some(space) = acquire(space, need, &mut waiter) else {
                return; // the daemon is gone
            };
            if tx
                .send(Batch {
                    events,
                    _space: space,
                })
                .is_err()
            {
                return;
            }
        }
        // Copies whose close was lost (EVENTS full) must not hold the
        // stack ring: read them out; the bound forgets the oldest.
        if let Some(st) = stacks.as_mut() {
            pending.drain(st);
        }
        if stopping {
            return;
        }
        if drained >= BUSY_BATCH {
            std::thread::sleep(BUSY_PAUSE);
        } else {
            wait_readable(&ring);
        }
    }
}

/// Gives a close that says its copy was sent (`CopyFate::Copied`) that
/// copy; returns its size. The kernel sent the copy before it submitted the
/// close, so it is on the stack ring by now: one that is not (forgotten
/// by the bound) makes the close's fate `Dropped`.
fn join_copy(
    ev: &mut Event,
    ring: Option<&mut RingBuf<MapData>>,
    pending: &mut PendingStacks,
) -> usize {
    let Some(stacks) = ev.stacks.as_mut() else {
        return 0;
    };
    let CopyFate::Copied { id } = stacks.fate else {
        return 0;
    };
    let mut copy = pending.take(id);
    if copy.is_none()
        && let Some(ring) = ring
    {
        pending.drain(ring);
        copy = pending.take(id);
    }
    match copy {
        Some(c) => {
            let n = c.bytes.len();
            stacks.user_copy = Some(c);
            n
        }
        None => {
            stacks.fate = CopyFate::Dropped;
            0
        }
    }
}

/// Stack copies read whose close is not read yet, by id. Bounded: a copy
/// whose close was lost would otherwise wait forever.
#[derive(Default)]
pub struct PendingStacks {
    by_id: HashMap<u64, UserStackCopy>,
    /// Insertion order, for forgetting the oldest (ids already taken are
    /// skipped, and compacted away when they pile up).
    order: VecDeque<u64>,
    /// Undecodable records seen (said once on stderr).
    bad: u64,
}

/// Copies waiting for their close, at most. A close follows its copy by
/// microseconds, so only copies whose close was lost wait longer; 256 of
/// 16 KiB is 4 MiB.
const PENDING_STACKS_MAX: usize = 256;

impl PendingStacks {
    /// Reads every record on the stack ring.
    pub fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        while let Some(item) = ring.next() {
            let rec = decode::decode_stack(&item);
            drop(item);
            match rec {
                Ok((id, copy)) => self.insert(id, copy),
                Err(e) => {
                    if self.bad == 0 {
                        eprintln!("wstrace: warning: undecodable stack record: {e:#}");
                    }
                    self.bad += 1;
                }
            }
        }
    }

    pub fn insert(&mut self, id: u64, copy: UserStackCopy) {
        while self.by_id.len() >= PENDING_STACKS_MAX {
            match self.order.pop_front() {
                Some(old) => {
                    self.by_id.remove(&old);
                }
                None => break,
            }
        }
        if self.order.len() >= 4 * PENDING_STACKS_MAX {
            let by_id = &self.by_id;
            self.order.retain(|i| by_id.contains_key(i));
        }
        self.by_id.insert(id, copy);
        self.order.push_back(id);
    }

    pub fn take(&mut self, id: u64) -> Option<UserStackCopy> {
        self.by_id.remove(&id)
    }
}

/// Blocks until `n` units of queue space are free; None once closed.
fn acquire(
    space: &Arc<Semaphore>,
    n: u32,
    waiter: &mut Option<tokio::runtime::Runtime>,
) -> Option<OwnedSemaphorePermit> {
    match space.clone().try_acquire_many_owned(n) {
        Ok(p) => return Some(p),
        Err(tokio::sync::TryAcquireError::Closed) => return None,
        Err(tokio::sync::TryAcquireError::NoPermits) => {}
    }
    if waiter.is_none() {
        match tokio::runtime::Builder::new_current_thread().build() {
            Ok(rt) => *waiter = Some(rt),
            Err(e) => {
                eprintln!(
                    "wstrace: error: the ring-buffer reader cannot wait for queue space: {e}"
                );
                return None;
            }
        }
    }
    waiter
        .as_ref()?
        .block_on(space.clone().acquire_many_owned(n))
        .ok()
}

/// Waits until the ring has data or POLL_MS passed.
fn wait_readable(ring: &RingBuf<MapData>) {
    let mut pfd = libc::pollfd {
        fd: ring.as_fd().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call. Errors (EINTR)
    // only shorten the wait; the loop drains and waits again.
    unsafe { libc::poll(&mut pfd, 1, POLL_MS) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(n: u8) -> UserStackCopy {
        UserStackCopy {
            ip: 1,
            sp: 2,
            fp: 3,
            lr: 0,
            start: 2,
            status: 0,
            bytes: vec![n; 16],
        }
    }

    #[test]
    fn an_event_waiting_in_the_queue_is_small() {
        // Thousands wait while the daemon is behind: the close's stacks
        // are boxed (an event was 472 bytes with them inline).
        assert!(
            size_of::<Result<Event>>() <= 256,
            "{}",
            size_of::<Result<Event>>()
        );
    }

    #[test]
    fn pending_stacks_are_taken_once() {
        let mut p = PendingStacks::default();
        p.insert(7, copy(7));
        assert_eq!(p.take(7).map(|c| c.bytes[0]), Some(7));
        assert!(p.take(7).is_none());
        assert!(p.by_id.is_empty());
    }

    #[test]
    fn pending_stacks_forget_the_oldest_past_the_bound() {
        let mut p = PendingStacks::default();
        // Copies whose closes never come (lost), then one more.
        for id in 0..PENDING_STACKS_MAX as u64 + 10 {
            p.insert(id, copy(1));
        }
        assert_eq!(p.by_id.len(), PENDING_STACKS_MAX);
        assert!(p.take(0).is_none(), "the oldest went first");
        assert!(p.take(PENDING_STACKS_MAX as u64 + 9).is_some());
        // Taken ids pile up in the order queue; it stays bounded.
        for id in 1000..1000 + 10 * PENDING_STACKS_MAX as u64 {
            p.insert(id, copy(2));
            assert!(p.take(id).is_some());
        }
        assert!(p.order.len() <= 4 * PENDING_STACKS_MAX + 1);
    }
}
