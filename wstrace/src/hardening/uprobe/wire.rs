//! The helper's protocol on its SOCK_SEQPACKET socketpair: one request
//! ([`Request`], fixed size, versioned) -> one reply (kind and code, two
//! u32 words, the perf event fd passed with SCM_RIGHTS on `OK`). Encoding,
//! decoding and the fd passing, on rustix (no `unsafe`).
use std::{
    io::{IoSlice, IoSliceMut},
    mem::MaybeUninit,
    os::fd::{BorrowedFd, OwnedFd},
    time::Duration,
};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use super::policy::Refusal;

/// Longest path a request carries: `/proc/4294967295/map_files/` and two
/// 16-digit addresses take 60 bytes.
pub const MAX_PATH: usize = 96;
const VERSION: u32 = 1;
/// version, pid, flags, dev major, dev minor, path length (u32 each),
/// offset, inode (u64 each), path bytes.
pub(super) const REQUEST_LEN: usize = 6 * 4 + 2 * 8 + MAX_PATH;
const FLAG_RETPROBE: u32 = 1;

/// One uprobe to open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub pid: u32,
    /// `/proc/<pid>/map_files/<start>-<end>`.
    pub path: String,
    /// (major, minor) of the file's device, as maps printed it.
    pub dev: (u32, u32),
    pub inode: u64,
    /// File offset of the probed instruction.
    pub offset: u64,
    pub retprobe: bool,
}

impl Request {
    /// The wire form; `None` when the path is longer than [`MAX_PATH`].
    pub(super) fn encode(&self) -> Option<[u8; REQUEST_LEN]> {
        let path = self.path.as_bytes();
        if path.len() > MAX_PATH {
            return None;
        }
        let mut b = [0u8; REQUEST_LEN];
        let flags = if self.retprobe { FLAG_RETPROBE } else { 0 };
        let words = [
            VERSION,
            self.pid,
            flags,
            self.dev.0,
            self.dev.1,
            path.len() as u32,
        ];
        for (i, w) in words.iter().enumerate() {
            b[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        b[24..32].copy_from_slice(&self.offset.to_ne_bytes());
        b[32..40].copy_from_slice(&self.inode.to_ne_bytes());
        b[40..40 + path.len()].copy_from_slice(path);
        Some(b)
    }

    /// Parses a request; anything but exactly one well-formed request is
    /// [`Refusal::Malformed`].
    pub(super) fn decode(b: &[u8]) -> Result<Self, Refusal> {
        if b.len() != REQUEST_LEN {
            return Err(Refusal::Malformed);
        }
        let word = |i: usize| {
            let mut w = [0u8; 4];
            w.copy_from_slice(&b[i * 4..i * 4 + 4]);
            u32::from_ne_bytes(w)
        };
        let long = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[at..at + 8]);
            u64::from_ne_bytes(w)
        };
        let (version, pid, flags, major, minor, len) = (
            word(0),
            word(1),
            word(2),
            word(3),
            word(4),
            word(5) as usize,
        );
        if version != VERSION || flags & !FLAG_RETPROBE != 0 || len > MAX_PATH {
            return Err(Refusal::Malformed);
        }
        let path = std::str::from_utf8(&b[40..40 + len]).map_err(|_| Refusal::Malformed)?;
        Ok(Self {
            pid,
            path: path.to_string(),
            dev: (major, minor),
            inode: long(32),
            offset: long(24),
            retprobe: flags & FLAG_RETPROBE != 0,
        })
    }
}

/// Reply kinds: (kind, code) in two u32 words, an fd attached to `OK`.
pub(super) const REPLY_OK: u32 = 0;
pub(super) const REPLY_REFUSED: u32 = 1;
pub(super) const REPLY_ERRNO: u32 = 2;

/// How long the daemon waits for the helper's answer: it does a few
/// syscalls per request, so this only matters if it is stuck or gone.
pub(super) const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Bounds every receive on `sock`: without it a stuck helper would block
/// the daemon's loop, so a failure here is only that risk.
pub(super) fn set_timeout(sock: BorrowedFd<'_>, t: Duration) {
    let _ = rustix::net::sockopt::set_socket_timeout(
        sock,
        rustix::net::sockopt::Timeout::Recv,
        Some(t),
    );
}

pub(super) fn send_reply(
    sock: BorrowedFd<'_>,
    kind: u32,
    code: u32,
    fd: Option<BorrowedFd<'_>>,
) -> std::io::Result<()> {
    let mut words = [0u8; 8];
    words[..4].copy_from_slice(&kind.to_ne_bytes());
    words[4..].copy_from_slice(&code.to_ne_bytes());
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds;
    if let Some(fd) = fd {
        fds = [fd];
        // Room for one fd was made above: this cannot fail.
        control.push(SendAncillaryMessage::ScmRights(&fds));
    }
    rustix::net::sendmsg(
        sock,
        &[IoSlice::new(&words)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    Ok(())
}

/// One reply: (kind, code, the fd passed with it).
pub(super) fn recv_reply(sock: BorrowedFd<'_>) -> Result<(u32, u32, Option<OwnedFd>), String> {
    let mut words = [0u8; 8];
    // Room for a few fds: more than one is junk, but each is taken (and
    // closed) rather than left to truncate the control data.
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = loop {
        match rustix::net::recvmsg(
            sock,
            &mut [IoSliceMut::new(&mut words)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            other => break other,
        }
    };
    let got = match got {
        Ok(got) => got,
        Err(rustix::io::Errno::AGAIN) => {
            return Err(format!("no answer in {} s", REPLY_TIMEOUT.as_secs()));
        }
        Err(e) => return Err(format!("reading its answer: {}", std::io::Error::from(e))),
    };
    // Take any fd first, so it is closed (not leaked) on every error below.
    let mut fd = None;
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = msg {
            for owned in fds {
                if fd.is_none() {
                    fd = Some(owned);
                }
            }
        }
    }
    if got.bytes == 0 {
        return Err("it has exited".into());
    }
    if got.bytes != words.len()
        || got
            .flags
            .intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC)
    {
        return Err("a malformed answer".into());
    }
    let kind = u32::from_ne_bytes(words[..4].try_into().unwrap_or_default());
    let code = u32::from_ne_bytes(words[4..].try_into().unwrap_or_default());
    Ok((kind, code, fd))
}
