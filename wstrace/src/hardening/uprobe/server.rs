//! The helper's body, in the forked child: keep only what it needs, close
//! every other fd, then answer one request at a time until the daemon's
//! end closes (or the daemon dies: PDEATHSIG).
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd, RawFd};

use rustix::net::RecvFlags;
use rustix::process::{Pid, Signal};

use super::policy::OpenError;
use super::wire::{REPLY_ERRNO, REPLY_OK, REPLY_REFUSED, REQUEST_LEN, Request, send_reply};

/// Never returns.
pub(super) fn serve<F>(sock: OwnedFd, parent: Pid, open: &F) -> !
where
    F: Fn(&Request) -> Result<OwnedFd, OpenError>,
{
    // A panic must not unwind into the parent's code, which this copy of
    // the process shares up to the fork.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        serve_inner(sock, parent, open)
    }));
    // SAFETY: _exit ends this process without running the parent's
    // destructors or atexit handlers (rustix has no safe one).
    unsafe { libc::_exit(1) }
}

fn serve_inner<F>(sock: OwnedFd, parent: Pid, open: &F)
where
    F: Fn(&Request) -> Result<OwnedFd, OpenError>,
{
    // If the daemon died before PDEATHSIG was set, the parent is already
    // someone else: stop.
    let _ = rustix::process::set_parent_process_death_signal(Some(Signal::KILL));
    if rustix::process::getppid() != Some(parent) {
        return;
    }
    let _ = rustix::thread::set_name(c"wstrace-uprobe");
    close_all_but(sock.as_raw_fd());
    let sock = sock.as_fd();
    if let Err(e) = crate::hardening::privileges::keep_uprobe_helper_only() {
        let _ = send_reply(
            sock,
            REPLY_ERRNO,
            e.raw_os_error().unwrap_or(libc::EPERM) as u32,
            None,
        );
        return;
    }
    if send_reply(sock, REPLY_OK, 0, None).is_err() {
        return;
    }
    let mut buf = [0u8; REQUEST_LEN + 1];
    loop {
        let n = match rustix::net::recv(sock, &mut buf[..], RecvFlags::empty()) {
            Ok((_, n)) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return,
        };
        if n == 0 {
            return; // the daemon closed its end
        }
        // A longer message is cut to REQUEST_LEN + 1 bytes: Malformed.
        let answer = Request::decode(&buf[..n.min(buf.len())])
            .map_err(OpenError::Refused)
            .and_then(|req| open(&req));
        if reply(sock, &answer).is_err() {
            return;
        }
        // Our copy of the fd closes here: the daemon holds the event now.
        drop(answer);
    }
}

fn reply(sock: BorrowedFd<'_>, answer: &Result<OwnedFd, OpenError>) -> std::io::Result<()> {
    match answer {
        Ok(fd) => send_reply(sock, REPLY_OK, 0, Some(fd.as_fd())),
        Err(OpenError::Refused(r)) => send_reply(sock, REPLY_REFUSED, *r as u32, None),
        Err(OpenError::Kernel(e)) => send_reply(
            sock,
            REPLY_ERRNO,
            e.raw_os_error().unwrap_or(libc::EIO) as u32,
            None,
        ),
        Err(OpenError::Helper(_)) => send_reply(sock, REPLY_ERRNO, libc::EIO as u32, None),
    }
}

/// Closes every fd of this process but `keep` (close_range, 5.9+; a
/// bounded loop where it is missing). rustix has no close_range.
fn close_all_but(keep: RawFd) {
    let keep = keep as libc::c_uint;
    // SAFETY: closing fds this process holds; nothing here uses them again
    // (the OwnedFds the parent's code holds are never dropped: we _exit).
    unsafe {
        let mut ok = true;
        if keep > 0 {
            ok &= libc::syscall(
                libc::SYS_close_range,
                0 as libc::c_uint,
                keep - 1,
                0 as libc::c_uint,
            ) == 0;
        }
        ok &= libc::syscall(
            libc::SYS_close_range,
            keep + 1,
            libc::c_uint::MAX,
            0 as libc::c_uint,
        ) == 0;
        if !ok {
            for fd in 0..65536 {
                if fd != keep as RawFd {
                    libc::close(fd);
                }
            }
        }
    }
}
