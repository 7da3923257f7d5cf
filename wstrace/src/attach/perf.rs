//! Attaching a loaded program to a perf event the caller opened (a tracefs
//! kprobe event, a uprobe): `PERF_EVENT_IOC_SET_BPF`, then
//! `PERF_EVENT_IOC_ENABLE`. The kernel has accepted this since 4.1 for
//! kprobe, uprobe and tracepoint events; it is what aya does inside its own
//! attach calls, for events aya cannot open the way wstrace needs them
//! (a kretprobe with a chosen instance count, see `retprobe`).
use std::os::fd::{AsRawFd as _, BorrowedFd, OwnedFd};

use anyhow::{Context as _, Result};

/// _IO('$', 0) and _IOW('$', 8, __u32): the same on every Linux architecture
/// wstrace builds for.
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;

/// A program attached to a perf event. It owns the event's fd: dropping it
/// closes the fd, which detaches the program (the program itself stays
/// loaded as long as its own fd is open).
#[derive(Debug)]
pub struct PerfLink {
    _perf: OwnedFd,
}

/// Attaches `prog` (a loaded program of the event's kind: kprobe programs
/// for kprobe and uprobe events) to the perf event `perf` and enables it.
/// On an error `perf` is closed and nothing stays attached.
pub fn attach_program(perf: OwnedFd, prog: BorrowedFd<'_>) -> Result<PerfLink> {
    // SAFETY: plain ioctls on a perf event fd we own; the argument of
    // SET_BPF is a program fd, and ENABLE takes none.
    if unsafe { libc::ioctl(perf.as_raw_fd(), PERF_EVENT_IOC_SET_BPF, prog.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error())
            .context("attaching the program to the perf event (PERF_EVENT_IOC_SET_BPF)");
    }
    // SAFETY: as above.
    if unsafe { libc::ioctl(perf.as_raw_fd(), PERF_EVENT_IOC_ENABLE, 0) } != 0 {
        return Err(std::io::Error::last_os_error())
            .context("enabling the perf event (PERF_EVENT_IOC_ENABLE)");
    }
    Ok(PerfLink { _perf: perf })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_no_perf_event_is_refused_and_closed() {
        // /dev/null is no perf event: SET_BPF fails (ENOTTY) before any
        // program fd is looked at, so fd 0 as the "program" is never used.
        let perf: OwnedFd = std::fs::File::open("/dev/null")
            .expect("/dev/null opens")
            .into();
        // SAFETY: the borrowed fd is not used by the kernel (see above).
        let prog = unsafe { BorrowedFd::borrow_raw(0) };
        let err = attach_program(perf, prog).expect_err("/dev/null is not a perf event");
        assert!(
            format!("{err:#}").contains("PERF_EVENT_IOC_SET_BPF"),
            "{err:#}"
        );
    }
}
