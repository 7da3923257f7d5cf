//! Kernel time to wall-clock time.
use std::time::{Duration, SystemTime};

/// CLOCK_MONOTONIC in ns: the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Kernel timestamps to wall-clock time, fixed once at start-up.
pub struct Clock {
    wall_at_zero: SystemTime,
}

impl Clock {
    pub fn new() -> Self {
        let mono = Duration::from_nanos(monotonic_ns());
        Self {
            wall_at_zero: SystemTime::now() - mono,
        }
    }

    pub fn wall(&self, ts_ns: u64) -> SystemTime {
        self.wall_at_zero + Duration::from_nanos(ts_ns)
    }
}
