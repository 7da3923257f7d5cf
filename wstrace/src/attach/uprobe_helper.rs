//! The uprobe helper: a small process, forked before the daemon drops its
//! privileges, that opens uprobe perf events for the daemon and nothing
//! else, so a TLS server that starts after wstrace can still be probed.
//!
//! Why a process: opening a uprobe perf event on a `/proc/<pid>/map_files/`
//! file needs CAP_SYS_ADMIN (measured on 6.18: CAP_PERFMON with CAP_BPF
//! gets EACCES), and the daemon, which parses files and bytes other
//! processes control, must not keep it. The helper keeps CAP_SYS_ADMIN
//! (plus the two capabilities the daemon keeps to look into another user's
//! /proc entries: privileges::keep_uprobe_helper_only), drops the rest and
//! its bounding set, sets no_new_privs, closes every fd but its end of a
//! SOCK_SEQPACKET socketpair, and serves one request shape on it:
//! ([`Request`]: pid, `/proc/<pid>/map_files/<range>` path, device and
//! inode, file offset, return probe or not) -> the perf event fd (passed
//! with SCM_RIGHTS), or why not. It never reads ELF or anything else a
//! traced process controls: symbol lookup stays in the daemon. It exits
//! when the daemon's end closes (or the daemon dies: PDEATHSIG).
//!
//! What it checks ([`check_path`], [`check_file`], pure and unit-tested):
//! the path is exactly `/proc/<that pid>/map_files/<start>-<end>` (so the
//! pid maps the file, now), the file behind it is a regular file with the
//! device and inode the daemon read in maps, and the offset is inside it.
//! The file is opened once (O_PATH) and the probe is made on
//! `/proc/self/fd/<n>`: the file checked is the file probed, even if the
//! process remaps that range in between. The probe is scoped to the pid,
//! so it puts breakpoints in that process only.
//!
//! The same [`open_checked`] runs in the daemon itself at start-up when no
//! helper could be started (then nothing is opened after the drop).
use std::{
    ffi::CString,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
    time::Duration,
};

use super::perf::{self, PerfEventAttr};

/// The uprobe PMU of this kernel: its perf type and which `config` bit
/// makes a return probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UprobePmu {
    pub type_: u32,
    pub retprobe_bit: u32,
}

const PMU_DIR: &str = "/sys/bus/event_source/devices/uprobe";

impl UprobePmu {
    /// From sysfs (`type`, `format/retprobe`).
    pub fn read() -> Result<Self, String> {
        let read = |f: &str| {
            std::fs::read_to_string(format!("{PMU_DIR}/{f}"))
                .map_err(|e| format!("reading {PMU_DIR}/{f}: {e} (a kernel without CONFIG_UPROBE_EVENTS has no uprobe PMU)"))
        };
        let type_ = read("type")?
            .trim()
            .parse()
            .map_err(|e| format!("{PMU_DIR}/type: {e}"))?;
        let format = read("format/retprobe")?;
        let retprobe_bit = parse_format_bit(&format)
            .ok_or_else(|| format!("{PMU_DIR}/format/retprobe: unexpected {format:?}"))?;
        Ok(Self {
            type_,
            retprobe_bit,
        })
    }
}

/// `config:0` (a PMU format file naming one bit) -> 0.
fn parse_format_bit(text: &str) -> Option<u32> {
    let bit: u32 = text.trim().strip_prefix("config:")?.parse().ok()?;
    (bit < 64).then_some(bit)
}

/// Longest path a request carries: `/proc/4294967295/map_files/` and two
/// 16-digit addresses take 60 bytes.
pub const MAX_PATH: usize = 96;
const VERSION: u32 = 1;
/// version, pid, flags, dev major, dev minor, path length (u32 each),
/// offset, inode (u64 each), path bytes.
const REQUEST_LEN: usize = 6 * 4 + 2 * 8 + MAX_PATH;
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
    fn encode(&self) -> Option<[u8; REQUEST_LEN]> {
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
    fn decode(b: &[u8]) -> Result<Self, Refusal> {
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

/// Why the helper would not open a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not one well-formed request.
    Malformed = 1,
    /// The path is not `/proc/<the request's pid>/map_files/<start>-<end>`.
    NotMapFiles = 2,
    /// That process has no such mapping (it exited or unmapped it).
    NotMapped = 3,
    /// The mapping is another file than the device and inode asked for.
    NotThatFile = 4,
    NotRegularFile = 5,
    OffsetBeyondFile = 6,
}

impl Refusal {
    const ALL: [Refusal; 6] = [
        Self::Malformed,
        Self::NotMapFiles,
        Self::NotMapped,
        Self::NotThatFile,
        Self::NotRegularFile,
        Self::OffsetBeyondFile,
    ];

    fn from_code(code: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|r| *r as u32 == code)
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Malformed => "malformed request",
            Self::NotMapFiles => "not a /proc/<pid>/map_files/ path of that process",
            Self::NotMapped => "the process does not map that range (it exited or unmapped it)",
            Self::NotThatFile => "the process maps another file there than the one asked for",
            Self::NotRegularFile => "not a regular file",
            Self::OffsetBeyondFile => "the offset is beyond the end of the file",
        })
    }
}

/// Why no probe fd came back.
#[derive(Debug)]
pub enum OpenError {
    /// The request failed a check (see [`Refusal`]).
    Refused(Refusal),
    /// The kernel refused (perf_event_open or the open of the file).
    Kernel(std::io::Error),
    /// The helper is gone or answered nonsense.
    Helper(String),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(r) => write!(f, "refused: {r}"),
            Self::Kernel(e) => write!(f, "{e}"),
            Self::Helper(e) => write!(f, "uprobe helper: {e}"),
        }
    }
}

/// `fd:01` (a maps device field, hex) -> (0xfd, 0x01).
pub fn parse_maps_dev(dev: &str) -> Option<(u32, u32)> {
    let (major, minor) = dev.split_once(':')?;
    let hex = |s: &str| {
        (!s.is_empty() && s.len() <= 8 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| u32::from_str_radix(s, 16).ok())
            .flatten()
    };
    Some((hex(major)?, hex(minor)?))
}

/// The path must be exactly `/proc/<pid>/map_files/<start>-<end>` for the
/// request's pid, written as the kernel writes it (lower-case hex without
/// leading zeros, start below end): nothing else in /proc or outside it,
/// no `..`, no other process's entry.
pub fn check_path(pid: u32, path: &str) -> Result<(), Refusal> {
    if pid == 0 {
        return Err(Refusal::NotMapFiles);
    }
    let range = path
        .strip_prefix(&format!("/proc/{pid}/map_files/"))
        .ok_or(Refusal::NotMapFiles)?;
    let (start, end) = range.split_once('-').ok_or(Refusal::NotMapFiles)?;
    let hex = |s: &str| {
        (!s.is_empty()
            && s.len() <= 16
            && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then(|| u64::from_str_radix(s, 16).ok())
        .flatten()
    };
    let (Some(s), Some(e)) = (hex(start), hex(end)) else {
        return Err(Refusal::NotMapFiles);
    };
    // Canonical form only: `0001000-2000` names the same entry, but a
    // request that does not look like what maps says is not ours.
    if s >= e || format!("{s:x}-{e:x}") != range {
        return Err(Refusal::NotMapFiles);
    }
    Ok(())
}

/// What fstat says about the file behind a map_files entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileFacts {
    pub regular: bool,
    pub dev: (u32, u32),
    pub inode: u64,
    pub size: u64,
}

/// The file is the one asked for (device and inode from maps), a regular
/// file, and the offset is inside it.
pub fn check_file(req: &Request, file: &FileFacts) -> Result<(), Refusal> {
    if !file.regular {
        return Err(Refusal::NotRegularFile);
    }
    if file.dev != req.dev || file.inode != req.inode {
        return Err(Refusal::NotThatFile);
    }
    if req.offset >= file.size {
        return Err(Refusal::OffsetBeyondFile);
    }
    Ok(())
}

/// Checks `req` and opens its uprobe perf event, scoped to the process
/// (needs CAP_SYS_ADMIN: in the helper, or in the daemon before the drop).
/// The event is enabled; nothing runs on a hit until a program is
/// attached ([`perf::attach_program`]).
pub fn open_checked(pmu: &UprobePmu, req: &Request) -> Result<OwnedFd, OpenError> {
    check_path(req.pid, &req.path).map_err(OpenError::Refused)?;
    // check_path let through only "/proc/", digits, hex and '-'.
    let path =
        CString::new(req.path.as_str()).map_err(|_| OpenError::Refused(Refusal::Malformed))?;
    // SAFETY: a NUL-terminated path; the fd returned is new and ours.
    let raw = unsafe { libc::open(path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if raw < 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ENOENT | libc::ESRCH) => OpenError::Refused(Refusal::NotMapped),
            _ => OpenError::Kernel(e),
        });
    }
    // SAFETY: a valid fd just returned to us.
    let file = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes one struct stat.
    if unsafe { libc::fstat(file.as_raw_fd(), &mut st) } != 0 {
        return Err(OpenError::Kernel(std::io::Error::last_os_error()));
    }
    let facts = FileFacts {
        regular: st.st_mode & libc::S_IFMT == libc::S_IFREG,
        dev: (libc::major(st.st_dev), libc::minor(st.st_dev)),
        inode: st.st_ino,
        size: u64::try_from(st.st_size).unwrap_or(0),
    };
    check_file(req, &facts).map_err(OpenError::Refused)?;
    // The probe goes on the file just checked, whatever the map_files
    // entry names by the time the kernel resolves the path.
    let probe_path = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|_| OpenError::Refused(Refusal::Malformed))?;
    let config = if req.retprobe {
        1u64 << pmu.retprobe_bit
    } else {
        0
    };
    let attr = PerfEventAttr {
        config1: probe_path.as_ptr() as u64,
        config2: req.offset,
        ..PerfEventAttr::new(pmu.type_, config)
    };
    let pid = i32::try_from(req.pid).map_err(|_| OpenError::Refused(Refusal::Malformed))?;
    // SAFETY: config1 points at `probe_path`, alive through the call.
    unsafe { perf::open(&attr, pid, -1) }.map_err(OpenError::Kernel)
}

/// Reply kinds: (kind, code) in two u32 words, an fd attached to `OK`.
const REPLY_OK: u32 = 0;
const REPLY_REFUSED: u32 = 1;
const REPLY_ERRNO: u32 = 2;

/// How long the daemon waits for the helper's answer: it does a few
/// syscalls per request, so this only matters if it is stuck or gone.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// The daemon's handle on a running helper. Dropping it closes the
/// socket, which ends the helper, and reaps it.
pub struct Helper {
    sock: OwnedFd,
    pid: libc::pid_t,
}

impl Helper {
    /// Forks the helper. Call before the privilege drop, as early as
    /// possible (the fewer threads and fds, the less the child has to
    /// leave alone). `Err` says why there is none.
    pub fn start(pmu: UprobePmu) -> Result<Self, String> {
        if !super::privileges::can_open_uprobes() {
            return Err("wstrace does not hold CAP_SYS_ADMIN, which opening uprobes needs".into());
        }
        let mut fds = [0 as RawFd; 2];
        // SAFETY: socketpair writes two fds.
        if unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        } != 0
        {
            return Err(format!("socketpair: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: two valid fds just returned to us.
        let (ours, theirs) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        // SAFETY: the child runs `serve` only, which never returns (it
        // ends with _exit), so no state of the parent's is used twice.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(format!("fork: {}", std::io::Error::last_os_error()));
        }
        if pid == 0 {
            let sock = theirs.as_raw_fd();
            // The parent's objects are left as they are (not dropped):
            // their fds are closed by `serve`, their memory dies with us.
            std::mem::forget(ours);
            std::mem::forget(theirs);
            serve(sock, parent, pmu);
        }
        drop(theirs);
        let helper = Self { sock: ours, pid };
        set_timeout(helper.sock.as_fd(), REPLY_TIMEOUT);
        match recv_reply(helper.sock.as_fd()) {
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
    fn exchange(&self, wire: &[u8]) -> Result<OwnedFd, OpenError> {
        // SAFETY: send reads `wire.len()` bytes of `wire`.
        let sent = unsafe {
            libc::send(
                self.sock.as_raw_fd(),
                wire.as_ptr().cast(),
                wire.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if sent < 0 {
            return Err(OpenError::Helper(format!(
                "sending to it: {} (it has exited)",
                std::io::Error::last_os_error()
            )));
        }
        match recv_reply(self.sock.as_fd()).map_err(OpenError::Helper)? {
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
        self.pid as u32
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        // Closing our end is the helper's signal to exit: wait briefly for
        // it, then make sure (it is our child; its pid is ours to kill).
        // SAFETY: shutdown on our own socket.
        unsafe { libc::shutdown(self.sock.as_raw_fd(), libc::SHUT_RDWR) };
        for _ in 0..50 {
            // SAFETY: waitpid on our own child, no status wanted.
            let r = unsafe { libc::waitpid(self.pid, std::ptr::null_mut(), libc::WNOHANG) };
            if r != 0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // SAFETY: as above; the pid is our unreaped child, so not reused.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

fn set_timeout(sock: BorrowedFd<'_>, t: Duration) {
    let tv = libc::timeval {
        tv_sec: t.as_secs() as libc::time_t,
        tv_usec: t.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: setsockopt reads one timeval. Without it a stuck helper
    // would block the daemon's loop: a failure here is only that risk.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
}

/// The helper's body, in the forked child: never returns.
fn serve(sock: RawFd, parent: libc::pid_t, pmu: UprobePmu) -> ! {
    // A panic must not unwind into the parent's code, which this copy of
    // the process shares up to the fork.
    let _ = std::panic::catch_unwind(|| serve_inner(sock, parent, pmu));
    // SAFETY: _exit ends this process without running the parent's
    // destructors or atexit handlers.
    unsafe { libc::_exit(1) }
}

fn serve_inner(sock: RawFd, parent: libc::pid_t, pmu: UprobePmu) {
    // SAFETY: prctl with integer arguments only; getppid has no
    // preconditions. If the daemon died before PDEATHSIG was set, the
    // parent is already someone else: stop.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        if libc::getppid() != parent {
            libc::_exit(0);
        }
        libc::prctl(libc::PR_SET_NAME, c"wstrace-uprobe".as_ptr(), 0, 0, 0);
    }
    close_all_but(sock);
    // SAFETY: `sock` is open (close_all_but kept it) and only used here.
    let sock = unsafe { BorrowedFd::borrow_raw(sock) };
    if let Err(e) = super::privileges::keep_uprobe_helper_only() {
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
        // SAFETY: recv writes at most `buf.len()` bytes into `buf`.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return;
        }
        if n == 0 {
            return; // the daemon closed its end
        }
        // A longer message is cut to REQUEST_LEN + 1 bytes: Malformed.
        let answer = Request::decode(&buf[..n as usize])
            .map_err(OpenError::Refused)
            .and_then(|req| open_checked(&pmu, &req));
        let sent = match &answer {
            Ok(fd) => send_reply(sock, REPLY_OK, 0, Some(fd.as_fd())),
            Err(OpenError::Refused(r)) => send_reply(sock, REPLY_REFUSED, *r as u32, None),
            Err(OpenError::Kernel(e)) => send_reply(
                sock,
                REPLY_ERRNO,
                e.raw_os_error().unwrap_or(libc::EIO) as u32,
                None,
            ),
            Err(OpenError::Helper(_)) => send_reply(sock, REPLY_ERRNO, libc::EIO as u32, None),
        };
        // Our copy of the fd closes here: the daemon holds the event now.
        drop(answer);
        if sent.is_err() {
            return;
        }
    }
}

/// Closes every fd of this process but `keep` (close_range, 5.9+; a
/// bounded loop where it is missing).
fn close_all_but(keep: RawFd) {
    let keep = keep as libc::c_uint;
    // SAFETY: closing fds this process holds; nothing here uses them again.
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

fn send_reply(
    sock: BorrowedFd<'_>,
    kind: u32,
    code: u32,
    fd: Option<BorrowedFd<'_>>,
) -> std::io::Result<()> {
    let mut words = [0u8; 8];
    words[..4].copy_from_slice(&kind.to_ne_bytes());
    words[4..].copy_from_slice(&code.to_ne_bytes());
    let mut iov = libc::iovec {
        iov_base: words.as_mut_ptr().cast(),
        iov_len: words.len(),
    };
    // u64 elements: the control buffer must be aligned for cmsghdr.
    let mut control = [0u64; 4];
    // SAFETY: an all-zero msghdr is valid (no name, no control).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        // SAFETY: the control buffer (32 bytes) holds CMSG_SPACE(4) (24
        // bytes); CMSG_FIRSTHDR of a buffer that large is non-null.
        unsafe {
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(size_of::<RawFd>() as u32) as _;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd.as_raw_fd());
        }
    }
    // SAFETY: msg points at live buffers for the call.
    if unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// One reply: (kind, code, the fd passed with it).
fn recv_reply(sock: BorrowedFd<'_>) -> Result<(u32, u32, Option<OwnedFd>), String> {
    let mut words = [0u8; 8];
    let mut iov = libc::iovec {
        iov_base: words.as_mut_ptr().cast(),
        iov_len: words.len(),
    };
    let mut control = [0u64; 4];
    // SAFETY: an all-zero msghdr is valid; buffers set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&control) as _;
    let n = loop {
        // SAFETY: msg points at live buffers for the call.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        break n;
    };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EAGAIN) => format!("no answer in {} s", REPLY_TIMEOUT.as_secs()),
            _ => format!("reading its answer: {e}"),
        });
    }
    // Take any fd first, so it is closed (not leaked) on every error below.
    let mut fd = None;
    // SAFETY: walking the control messages recvmsg wrote, within
    // msg_controllen; an SCM_RIGHTS payload is an array of fds, now ours.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                let count =
                    ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / size_of::<RawFd>();
                for i in 0..count {
                    let owned = OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i)));
                    if fd.is_none() {
                        fd = Some(owned);
                    }
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if n == 0 {
        return Err("it has exited".into());
    }
    if n as usize != words.len() || msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
        return Err("a malformed answer".into());
    }
    let kind = u32::from_ne_bytes(words[..4].try_into().unwrap_or_default());
    let code = u32::from_ne_bytes(words[4..].try_into().unwrap_or_default());
    Ok((kind, code, fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(pid: u32, path: &str) -> Request {
        Request {
            pid,
            path: path.into(),
            dev: (0xfd, 1),
            inode: 1234,
            offset: 0x2000,
            retprobe: true,
        }
    }

    #[test]
    fn format_bits_parse() {
        assert_eq!(parse_format_bit("config:0\n"), Some(0));
        assert_eq!(parse_format_bit("config:63"), Some(63));
        assert_eq!(parse_format_bit("config:64"), None);
        assert_eq!(parse_format_bit("config1:0"), None);
        assert_eq!(parse_format_bit(""), None);
    }

    #[test]
    fn maps_devices_parse() {
        assert_eq!(parse_maps_dev("fd:01"), Some((0xfd, 1)));
        assert_eq!(parse_maps_dev("103:0a"), Some((0x103, 0xa)));
        for bad in ["", "fd", "fd:", ":01", "zz:01", "fd:01:02", "123456789:0"] {
            assert_eq!(parse_maps_dev(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn requests_round_trip_and_junk_is_malformed() {
        let r = req(42, "/proc/42/map_files/7f0000000000-7f0000001000");
        let wire = r.encode().expect("fits");
        assert_eq!(Request::decode(&wire), Ok(r.clone()));
        assert_eq!(
            Request::decode(&wire[..REQUEST_LEN - 1]),
            Err(Refusal::Malformed)
        );
        let mut long = wire.to_vec();
        long.push(0);
        assert_eq!(Request::decode(&long), Err(Refusal::Malformed));
        let mut bad_version = wire;
        bad_version[0] ^= 0xff;
        assert_eq!(Request::decode(&bad_version), Err(Refusal::Malformed));
        let mut bad_flags = wire;
        bad_flags[8] = 0x80;
        assert_eq!(Request::decode(&bad_flags), Err(Refusal::Malformed));
        let mut bad_len = wire;
        bad_len[20..24].copy_from_slice(&(MAX_PATH as u32 + 1).to_ne_bytes());
        assert_eq!(Request::decode(&bad_len), Err(Refusal::Malformed));
        let mut not_utf8 = wire;
        not_utf8[40] = 0xff;
        assert_eq!(Request::decode(&not_utf8), Err(Refusal::Malformed));
        assert_eq!(req(1, &"x".repeat(MAX_PATH + 1)).encode(), None);
    }

    #[test]
    fn only_the_pids_own_map_files_entries_pass() {
        assert_eq!(check_path(42, "/proc/42/map_files/1000-2000"), Ok(()));
        assert_eq!(
            check_path(42, "/proc/42/map_files/7f0000000000-ffffffffffffffff"),
            Ok(())
        );
        for bad in [
            "/etc/shadow",
            "/proc/43/map_files/1000-2000", // another process's entry
            "/proc/42/map_files/../../1/exe",
            "/proc/42/map_files/1000-2000/..",
            "/proc/42/map_files/1000-2000\0",
            "/proc/42/map_files/1000-2000 ",
            "/proc/42/map_files/1000",
            "/proc/42/map_files/2000-1000", // end before start
            "/proc/42/map_files/1000-1000",
            "/proc/42/map_files/01000-2000", // not as the kernel writes it
            "/proc/42/map_files/1000-2000A",
            "/proc/42/map_files/-1000-2000",
            "/proc/042/map_files/1000-2000",
            "/proc/self/map_files/1000-2000",
            "/proc/42/root/usr/lib/libssl.so.3",
            "/proc/42/fd/3",
            "//proc/42/map_files/1000-2000",
            "/proc/42/map_files/10000000000000000-20000000000000000",
        ] {
            assert_eq!(check_path(42, bad), Err(Refusal::NotMapFiles), "{bad:?}");
        }
        assert_eq!(
            check_path(0, "/proc/0/map_files/1000-2000"),
            Err(Refusal::NotMapFiles)
        );
    }

    #[test]
    fn only_the_file_asked_for_within_its_size_passes() {
        let r = req(42, "/proc/42/map_files/1000-2000");
        let good = FileFacts {
            regular: true,
            dev: (0xfd, 1),
            inode: 1234,
            size: 0x10000,
        };
        assert_eq!(check_file(&r, &good), Ok(()));
        let cases = [
            (
                FileFacts {
                    regular: false,
                    ..good
                },
                Refusal::NotRegularFile,
            ),
            (
                FileFacts {
                    inode: 1235,
                    ..good
                },
                Refusal::NotThatFile,
            ),
            (
                FileFacts {
                    dev: (0xfd, 2),
                    ..good
                },
                Refusal::NotThatFile,
            ),
            (
                FileFacts {
                    size: 0x2000,
                    ..good
                },
                Refusal::OffsetBeyondFile,
            ),
            (FileFacts { size: 0, ..good }, Refusal::OffsetBeyondFile),
        ];
        for (facts, want) in cases {
            assert_eq!(check_file(&r, &facts), Err(want), "{facts:?}");
        }
    }

    #[test]
    fn refusal_codes_round_trip() {
        for r in Refusal::ALL {
            assert_eq!(Refusal::from_code(r as u32), Some(r));
        }
        assert_eq!(Refusal::from_code(0), None);
        assert_eq!(Refusal::from_code(99), None);
    }

    /// A file mapped by process `pid`: (map_files path, dev, inode, size).
    fn a_mapped_file(pid: u32) -> (String, (u32, u32), u64, u64) {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
        for line in maps.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 6 || !f[5].starts_with('/') || f[4] == "0" {
                continue;
            }
            let Ok(meta) = std::fs::metadata(f[5]) else {
                continue;
            };
            let (start, end) = f[0].split_once('-').expect("range");
            let s = u64::from_str_radix(start, 16).expect("start");
            let e = u64::from_str_radix(end, 16).expect("end");
            return (
                format!("/proc/{pid}/map_files/{s:x}-{e:x}"),
                parse_maps_dev(f[3]).expect("dev"),
                f[4].parse().expect("inode"),
                meta.len(),
            );
        }
        panic!("process {pid} maps no file");
    }

    /// The helper itself, through its socket: a request outside
    /// /proc/PID/map_files, one for a pid that does not map the file, one
    /// for another file than asked, one past the end, and raw junk are
    /// refused; a good one comes back as a perf event fd (offset 0 is the
    /// ELF header, mapped without exec: no breakpoint goes anywhere).
    #[test]
    fn the_helper_refuses_what_is_not_a_file_that_pid_maps() {
        if !crate::testenv::require_root("forks the uprobe helper, which needs CAP_SYS_ADMIN") {
            return;
        }
        let Some(pmu) = crate::testenv::require_ok("the uprobe PMU", UprobePmu::read()) else {
            return;
        };
        let helper = Helper::start(pmu).expect("helper starts as root");
        let status = std::fs::read_to_string(format!("/proc/{}/status", helper.pid()))
            .expect("helper status");
        // CAP_DAC_READ_SEARCH (2), CAP_SYS_PTRACE (19), CAP_SYS_ADMIN (21).
        assert!(
            status.contains("CapEff:\t0000000000280004") && status.contains("NoNewPrivs:\t1"),
            "helper keeps more than it needs:\n{status}"
        );
        let fds: Vec<_> = std::fs::read_dir(format!("/proc/{}/fd", helper.pid()))
            .expect("helper fds")
            .collect();
        assert_eq!(fds.len(), 1, "helper holds other fds than its socket");

        let me = std::process::id();
        let (path, dev, inode, size) = a_mapped_file(me);
        let good = Request {
            pid: me,
            path: path.clone(),
            dev,
            inode,
            offset: 0,
            retprobe: false,
        };
        let refused = |r: &Request| match helper.open(r) {
            Err(OpenError::Refused(why)) => why,
            Ok(_) => panic!("{r:?} was opened"),
            Err(e) => panic!("{r:?}: {e}"),
        };
        assert_eq!(
            refused(&Request {
                path: "/etc/passwd".into(),
                ..good.clone()
            }),
            Refusal::NotMapFiles
        );
        // Another process (a child that maps other files) asked about a
        // range only this one maps.
        let mut other = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let other_pid = other.id();
        assert_eq!(
            refused(&Request {
                pid: other_pid,
                ..good.clone()
            }),
            Refusal::NotMapFiles
        );
        let range = path.rsplit('/').next().expect("range");
        assert_eq!(
            refused(&Request {
                pid: other_pid,
                path: format!("/proc/{other_pid}/map_files/{range}"),
                ..good.clone()
            }),
            Refusal::NotMapped
        );
        let _ = other.kill();
        let _ = other.wait();
        assert_eq!(
            refused(&Request {
                inode: inode + 1,
                ..good.clone()
            }),
            Refusal::NotThatFile
        );
        assert_eq!(
            refused(&Request {
                offset: size,
                ..good.clone()
            }),
            Refusal::OffsetBeyondFile
        );
        match helper.exchange(b"junk") {
            Err(OpenError::Refused(Refusal::Malformed)) => {}
            other => panic!("junk: {other:?}"),
        }
        let fd = helper.open(&good).expect("a good request gets a probe");
        let link =
            std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("fd link");
        assert_eq!(link.to_string_lossy(), "anon_inode:[perf_event]");
        let pid = helper.pid();
        drop(helper);
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "the helper outlived its socket"
        );
    }
}
