//! What the helper will open, and nothing else: pure checks of the
//! request ([`check_path`], [`check_file`], unit-tested) and the checked
//! open of the file itself ([`open_file_checked`]): the path is exactly
//! `/proc/<that pid>/map_files/<start>-<end>` (so the pid maps the file,
//! now), the file behind it is a regular file with the device and inode
//! the daemon read in maps, and the offset is inside it.
use std::os::fd::OwnedFd;

use rustix::fs::{FileType, Mode, OFlags};

use super::wire::Request;

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
    pub(super) const ALL: [Refusal; 6] = [
        Self::Malformed,
        Self::NotMapFiles,
        Self::NotMapped,
        Self::NotThatFile,
        Self::NotRegularFile,
        Self::OffsetBeyondFile,
    ];

    pub(super) fn from_code(code: u32) -> Option<Self> {
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

/// Checks `req` and opens the file it names (O_PATH: nothing is read from
/// it), checked by fstat on the fd: the caller probes `/proc/self/fd/<n>`
/// of this fd, so the file checked is the file probed, even if the process
/// remaps that range in between.
pub fn open_file_checked(req: &Request) -> Result<OwnedFd, OpenError> {
    check_path(req.pid, &req.path).map_err(OpenError::Refused)?;
    let file = rustix::fs::open(
        req.path.as_str(),
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        rustix::io::Errno::NOENT | rustix::io::Errno::SRCH => {
            OpenError::Refused(Refusal::NotMapped)
        }
        e => OpenError::Kernel(e.into()),
    })?;
    let st = rustix::fs::fstat(&file).map_err(|e| OpenError::Kernel(e.into()))?;
    let facts = FileFacts {
        regular: FileType::from_raw_mode(st.st_mode) == FileType::RegularFile,
        dev: (rustix::fs::major(st.st_dev), rustix::fs::minor(st.st_dev)),
        inode: st.st_ino,
        size: u64::try_from(st.st_size).unwrap_or(0),
    };
    check_file(req, &facts).map_err(OpenError::Refused)?;
    Ok(file)
}
