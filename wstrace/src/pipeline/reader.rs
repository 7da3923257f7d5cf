//! The ring-buffer reader: a thread that only copies records out of the
//! kernel's ring into a byte-bounded queue, so the kernel's slots come back
//! at memcpy speed whatever the daemon is doing with earlier records.
//!
//! Why a thread: resolving a report can stall for hundreds of milliseconds
//! (the first symbolization of a binary loads and inflates its debug info).
//! With user stack copies a close is ~17 KiB, and a 16 MiB ring holds ~50 ms
//! of a fast churn: a reader that also symbolizes loses events at every new
//! binary. Userspace memory is cheaper to make deep than locked ring memory.
//!
//! Nothing is dropped here: when the queue is full the thread waits, the
//! kernel ring fills, and the kernel counts what it cannot write (`LOST`),
//! the one place where losses are counted.
use std::{
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

use crate::model::Event;
use crate::pipeline::decode;

/// One record, decoded as it is copied out of the ring (one copy of its
/// bytes, not two). Its queue space is given back when it is dropped.
pub struct Record {
    pub event: Result<Event>,
    _space: OwnedSemaphorePermit,
}

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
    pub records: mpsc::UnboundedReceiver<Record>,
    stop: Arc<AtomicBool>,
    space: Arc<Semaphore>,
    thread: Option<JoinHandle<()>>,
}

impl Reader {
    /// Starts the thread. `queue_bytes` bounds what waits in userspace.
    pub fn start(ring: RingBuf<MapData>, queue_bytes: usize) -> Result<Reader> {
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
                    crate::attach::privileges::drop_all_in_this_thread();
                    read_loop(ring, tx, &space, &stop, units)
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
    tx: mpsc::UnboundedSender<Record>,
    space: &Arc<Semaphore>,
    stop: &AtomicBool,
    units: usize,
) {
    // Built the first time the queue is full (this thread is not a tokio
    // worker, and waiting for space is async).
    let mut waiter: Option<tokio::runtime::Runtime> = None;
    loop {
        // Read the flag before draining: whatever the kernel wrote before
        // it was detached (and so before the flag was set) is drained
        // below before the thread ends.
        let stopping = stop.load(Ordering::Acquire);
        let mut batch = 0usize;
        while let Some(item) = ring.next() {
            let need = item.len().div_ceil(UNIT).clamp(1, units) as u32;
            let event = decode::decode(&item);
            // Hands the slot back to the kernel before waiting for space.
            drop(item);
            let Some(space) = acquire(space, need, &mut waiter) else {
                return; // the daemon is gone
            };
            if tx
                .send(Record {
                    event,
                    _space: space,
                })
                .is_err()
            {
                return;
            }
            batch += 1;
        }
        if stopping {
            return;
        }
        if batch >= BUSY_BATCH {
            std::thread::sleep(BUSY_PAUSE);
        } else {
            wait_readable(&ring);
        }
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
