//! Attaching a loaded program to a perf event the caller opened (a tracefs
//! kprobe event, a uprobe): `PERF_EVENT_IOC_SET_BPF`, then
//! `PERF_EVENT_IOC_ENABLE`. The kernel has accepted this since 4.1 for
//! kprobe, uprobe and tracepoint events; it is what aya does inside its own
//! attach calls, for events aya cannot open the way wstrace needs them
//! (a kretprobe with a chosen instance count, see `retprobe`).
use std::os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd};

use anyhow::{Context as _, Result};

/// perf_event_attr up to `config2` (PERF_ATTR_SIZE_VER1, 72 bytes, which
/// every kernel wstrace supports accepts); the fields after `config` that
/// are not named here are zero.
#[repr(C)]
#[derive(Default)]
pub struct PerfEventAttr {
    pub type_: u32,
    pub size: u32,
    pub config: u64,
    pub sample_period: u64,
    pub sample_type: u64,
    pub read_format: u64,
    pub flags: u64,
    pub wakeup_events: u32,
    pub bp_type: u32,
    /// For a uprobe: a pointer to the path of the file probed.
    pub config1: u64,
    /// For a uprobe: the file offset probed.
    pub config2: u64,
}

impl PerfEventAttr {
    pub fn new(type_: u32, config: u64) -> Self {
        Self {
            type_,
            size: size_of::<Self>() as u32,
            config,
            ..Default::default()
        }
    }
}

pub const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;

/// perf_event_open(attr, pid, cpu, no group, CLOEXEC): the events aya
/// cannot open the way wstrace needs them (see the module doc).
///
/// # Safety
/// Every pointer `attr` carries (a uprobe's `config1`) must be valid for
/// the call.
pub unsafe fn open(attr: &PerfEventAttr, pid: i32, cpu: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: perf_event_open reads `size` bytes of `attr`, which lives
    // through the call, and what its pointers point to (the caller's
    // promise); the returned fd is new and ours.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr as *const PerfEventAttr,
            pid as libc::pid_t,
            cpu as libc::c_int,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a valid fd just returned to us and owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

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
    fn attr_is_ver1_with_config2_last() {
        // PERF_ATTR_SIZE_VER1: the kernel reads config2 only from a struct
        // at least this long.
        assert_eq!(size_of::<PerfEventAttr>(), 72);
        assert_eq!(std::mem::offset_of!(PerfEventAttr, config1), 56);
        assert_eq!(std::mem::offset_of!(PerfEventAttr, config2), 64);
        assert_eq!(PerfEventAttr::new(9, 1).size, 72);
    }

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
