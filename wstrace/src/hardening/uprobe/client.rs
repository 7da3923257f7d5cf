//! The daemon's side: forking the helper and asking it for probes.
use std::{
    os::fd::{AsFd as _, OwnedFd},
    time::Duration,
};

use rustix::net::{AddressFamily, SendFlags, SocketFlags, SocketType};
use rustix::process::{Pid, Signal, WaitOptions};

use super::policy::{OpenError, Refusal};
use super::wire::{self, REPLY_ERRNO, REPLY_OK, REPLY_REFUSED, REPLY_TIMEOUT, Request};

/// The daemon's handle on a running helper. Dropping it closes the
/// socket, which ends the helper, and reaps it.
pub struct Helper {
    sock: OwnedFd,
    pid: Pid,
}

impl Helper {
    /// Forks the helper, which serves requests with `open` (the checked
    /// open of a probe: `attach::uprobe`). Call before the privilege drop,
    /// as early as possible (the fewer threads and fds, the less the child
    /// has to leave alone). `Err` says why there is none.
    pub fn start<F>(open: F) -> Result<Self, String>
    where
        F: Fn(&Request) -> Result<OwnedFd, OpenError>,
    {
        if !crate::hardening::privileges::can_open_uprobes() {
            return Err("wstrace does not hold CAP_SYS_ADMIN, which opening uprobes needs".into());
        }
        let (ours, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| format!("socketpair: {}", std::io::Error::from(e)))?;
        let parent = rustix::process::getpid();
        // rustix has no fork (it cannot be made safe in general).
        // SAFETY: the child runs `serve` only, which never returns (it
        // ends with _exit), so no state of the parent's is used twice.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(format!("fork: {}", std::io::Error::last_os_error()));
        }
        if pid == 0 {
            let sock = theirs;
            // The parent's objects are left as they are (not dropped):
            // their fds are closed by `serve`, their memory dies with us.
            std::mem::forget(ours);
            super::server::serve(sock, parent, &open);
        }
        drop(theirs);
        let Some(pid) = Pid::from_raw(pid) else {
            return Err("fork returned no pid".into());
        };
        let helper = Self { sock: ours, pid };
        wire::set_timeout(helper.sock.as_fd(), REPLY_TIMEOUT);
        match wire::recv_reply(helper.sock.as_fd()) {
            Ok((REPLY_OK, _, _)) => Ok(helper),
            Ok((REPLY_ERRNO, errno, _)) => Err(format!(
                "it could not keep only what it needs: {}",
                std::io::Error::from_raw_os_error(errno as i32)
            )),
            Ok(_) => Err("it answered nonsense at start".into()),
            Err(e) => Err(format!("it did not start: {e}")),
        }
    }

    /// Asks the helper for the probe `req` describes.
    pub fn open(&self, req: &Request) -> Result<OwnedFd, OpenError> {
        let wire = req.encode().ok_or(OpenError::Refused(Refusal::Malformed))?;
        self.exchange(&wire)
    }

    /// Sends raw bytes as a request (what a confused or compromised
    /// daemon could send) and reads the answer.
    pub(super) fn exchange(&self, wire: &[u8]) -> Result<OwnedFd, OpenError> {
        if let Err(e) = rustix::net::send(&self.sock, wire, SendFlags::NOSIGNAL) {
            return Err(OpenError::Helper(format!(
                "sending to it: {} (it has exited)",
                std::io::Error::from(e)
            )));
        }
        match wire::recv_reply(self.sock.as_fd()).map_err(OpenError::Helper)? {
            (REPLY_OK, _, Some(fd)) => Ok(fd),
            (REPLY_REFUSED, code, _) => Err(Refusal::from_code(code)
                .map(OpenError::Refused)
                .unwrap_or_else(|| OpenError::Helper(format!("unknown refusal {code}")))),
            (REPLY_ERRNO, errno, _) => Err(OpenError::Kernel(std::io::Error::from_raw_os_error(
                errno as i32,
            ))),
            _ => Err(OpenError::Helper("an answer without an fd".into())),
        }
    }

    /// The helper's pid.
    #[cfg(test)]
    pub fn pid(&self) -> u32 {
        self.pid.as_raw_nonzero().get() as u32
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        // Closing our end is the helper's signal to exit: wait briefly for
        // it, then make sure (it is our child; its pid is ours to kill,
        // not reused while unreaped).
        let _ = rustix::net::shutdown(&self.sock, rustix::net::Shutdown::Both);
        for _ in 0..50 {
            match rustix::process::waitpid(Some(self.pid), WaitOptions::NOHANG) {
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                _ => return,
            }
        }
        let _ = rustix::process::kill_process(self.pid, Signal::KILL);
        let _ = rustix::process::waitpid(Some(self.pid), WaitOptions::empty());
    }
}
