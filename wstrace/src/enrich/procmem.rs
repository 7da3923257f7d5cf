//! Reads of a traced process's memory for naming its interpreter frames
//! (`python.rs`, `php.rs`): the process is hostile, so every read is
//! bounded by its caller and all of them stop at one deadline.
use std::os::unix::fs::FileExt as _;
use std::time::Instant;

use crate::model::{Frame, FrameKind, Language, Unresolved};

/// Reads of one process's memory, all bounded, all stopping at `deadline`.
pub struct Mem {
    file: std::fs::File,
    deadline: Instant,
}

impl Mem {
    /// `/proc/<pid>/mem`; `None` when it cannot be opened (gone, or not
    /// ours to read).
    pub fn open(pid: u32, deadline: Instant) -> Option<Mem> {
        let file = std::fs::File::open(format!("/proc/{pid}/mem")).ok()?;
        Some(Mem { file, deadline })
    }

    pub fn bytes(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        if Instant::now() > self.deadline || addr == 0 {
            return None;
        }
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, addr).ok()?;
        Some(buf)
    }
    pub fn word(&self, addr: u64) -> Option<u64> {
        let b = self.bytes(addr, 8)?;
        Some(u64::from_ne_bytes(b.try_into().ok()?))
    }
}

/// One interpreted frame per captured pair (innermost first), in
/// `language`, each named by `name` from the process's memory. What
/// `name` cannot read stays unnamed; a process whose memory cannot be
/// opened gives unnamed frames, and frames past the deadline are marked
/// timed out.
pub fn name_each(
    pid: u32,
    deadline: Instant,
    language: Language,
    frames: &[(u64, u64)],
    name: impl Fn(&Mem, (u64, u64), &mut Frame),
) -> Vec<Frame> {
    let mem = Mem::open(pid, deadline);
    frames
        .iter()
        .map(|&(object, at)| {
            let mut f = Frame {
                language: Some(language),
                ..Frame::unknown(FrameKind::Interpreted, at, None)
            };
            match &mem {
                None => {}
                Some(_) if Instant::now() > deadline => f.unresolved = Some(Unresolved::TimedOut),
                Some(mem) => name(mem, (object, at), &mut f),
            }
            f
        })
        .collect()
}
