//! The unwinds of recent user stack copies, by the kernel's copy id: a
//! close whose call site was over its copy budget (`CopyFate::SameAs`)
//! names the site's last copy, and is shown that copy's unwind; its frames
//! then hit the symbolizer's cache of identical stacks instead of being
//! unwound and symbolized again. A layer beside the symbolizer, which it
//! does not change.
//!
//! [`FramesCache`] is the layer in front of it: the symbolizer answers
//! user stacks on a worker thread (so a hostile binary cannot stall the
//! daemon), and a round trip per close costs two context switches; the
//! frames of a stack already symbolized for the same process are taken
//! from here instead.
use std::collections::{HashMap, VecDeque};

use crate::model::{CopyFate, Frame, SharedStack, Stacks, Unwound};

/// Copies whose unwinds are kept. Each call site sends a few copies a
/// second and a `SameAs` names the newest, so only a few per site are ever
/// asked for; 1024 unwinds of ~64 addresses are ~0.5 MiB.
pub const KEPT_MAX: usize = 1024;

struct Kept {
    pid: u32,
    ts_ns: u64,
    unwound: Unwound,
}

#[derive(Default)]
pub struct StackCache {
    by_id: HashMap<u64, Kept>,
    /// Insertion order: the oldest is forgotten first.
    order: VecDeque<u64>,
}

impl StackCache {
    /// Keeps the unwind of copy `id`, made by `pid` at `ts_ns`.
    pub fn keep(&mut self, id: u64, pid: u32, ts_ns: u64, unwound: &Unwound) {
        if self.by_id.contains_key(&id) {
            return;
        }
        while self.by_id.len() >= KEPT_MAX {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            self.by_id.remove(&old);
        }
        self.by_id.insert(
            id,
            Kept {
                pid,
                ts_ns,
                unwound: unwound.clone(),
            },
        );
        self.order.push_back(id);
    }

    /// The unwind of copy `id` if it was made by `pid` (a call site is per
    /// process, so another pid means the id is not what it claims), and
    /// how long before `ts_ns`.
    fn get(&self, id: u64, pid: u32, ts_ns: u64) -> Option<(&Unwound, u64)> {
        let k = self.by_id.get(&id).filter(|k| k.pid == pid)?;
        Some((&k.unwound, ts_ns.saturating_sub(k.ts_ns) / 1_000_000))
    }

    /// For a close without a copy of its own: its stand-in unwind (the
    /// site's last copy's, when kept) and what to say about it.
    pub fn stand_in(&self, stacks: &mut Stacks, pid: u32, ts_ns: u64) {
        stacks.shared = match stacks.fate {
            CopyFate::SameAs { id, rate } => match self.get(id, pid, ts_ns) {
                Some((unwound, age_ms)) => {
                    stacks.dwarf = Some(unwound.clone());
                    Some(SharedStack::SameAs { id, age_ms, rate })
                }
                None => Some(SharedStack::Elided { rate }),
            },
            CopyFate::Elided { rate } => Some(SharedStack::Elided { rate }),
            CopyFate::Dropped => Some(SharedStack::Dropped),
            CopyFate::None | CopyFate::Copied { .. } => None,
        };
    }
}

/// Symbolized stacks kept, at most (each ~20 frames of ~80 bytes: ~8 MiB
/// at worst; distinct stacks are few in practice).
pub const FRAMES_MAX: usize = 4096;

/// User stacks symbolized, by process and addresses.
#[derive(Default)]
pub struct FramesCache {
    by_stack: HashMap<(u32, Vec<u64>), Vec<Frame>>,
}

impl FramesCache {
    pub fn get(&self, pid: u32, addrs: &[u64]) -> Option<&[Frame]> {
        // The key is owned; a borrowed lookup would need a custom Borrow
        // impl for the tuple: the copy of ~20 addresses is cheap next to
        // the worker round trip it saves.
        self.by_stack.get(&(pid, addrs.to_vec())).map(Vec::as_slice)
    }

    /// Keeps `frames` unless one is unknown: the symbolizer re-reads a
    /// process's maps when an address is outside them (a library loaded
    /// later), or answers `[unknown]` when it timed out; such a stack is
    /// asked again next time.
    pub fn insert(&mut self, pid: u32, addrs: &[u64], frames: &[Frame]) {
        if frames.iter().any(|f| f.function.is_none()) {
            return;
        }
        if self.by_stack.len() >= FRAMES_MAX {
            // Starting over is the symbolizer's own rule for its caches.
            self.by_stack.clear();
        }
        self.by_stack.insert((pid, addrs.to_vec()), frames.to_vec());
    }

    /// Drops `pid`'s stacks (it exited, or its pid was reused).
    pub fn forget(&mut self, pid: u32) {
        self.by_stack.retain(|(p, _), _| *p != pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::End;

    fn named(f: &str) -> Frame {
        Frame {
            function: Some(f.to_string()),
            ..Frame::default()
        }
    }

    #[test]
    fn frames_are_kept_per_process_until_it_is_forgotten() {
        let mut c = FramesCache::default();
        let frames = vec![named("close"), named("main")];
        c.insert(10, &[1, 2], &frames);
        assert_eq!(c.get(10, &[1, 2]), Some(&frames[..]));
        assert_eq!(c.get(11, &[1, 2]), None, "another process");
        assert_eq!(c.get(10, &[1, 3]), None, "another stack");
        c.forget(10);
        assert_eq!(c.get(10, &[1, 2]), None);
    }

    #[test]
    fn unknown_frames_are_asked_again() {
        let mut c = FramesCache::default();
        let frames = vec![named("main"), Frame::default()];
        c.insert(10, &[1, 2], &frames);
        assert_eq!(c.get(10, &[1, 2]), None);
    }

    #[test]
    fn frames_cache_is_bounded() {
        let mut c = FramesCache::default();
        for i in 0..FRAMES_MAX as u64 + 1 {
            c.insert(1, &[i], &[named("f")]);
        }
        assert!(c.by_stack.len() <= FRAMES_MAX);
    }

    fn unwound(a: u64) -> Unwound {
        Unwound {
            addrs: vec![a, a + 1],
            end: End::Complete,
        }
    }

    fn stacks(fate: CopyFate) -> Stacks {
        Stacks {
            kernel: Ok(vec![]),
            user: Ok(vec![0x401000]),
            user_copy: None,
            dwarf: None,
            fate,
            shared: None,
        }
    }

    #[test]
    fn same_as_gets_the_kept_unwind_and_its_age() {
        let mut c = StackCache::default();
        c.keep(7, 100, 1_000_000_000, &unwound(0x401000));
        let mut s = stacks(CopyFate::SameAs {
            id: 7,
            rate: 19_000,
        });
        c.stand_in(&mut s, 100, 1_250_000_000);
        assert_eq!(s.dwarf, Some(unwound(0x401000)));
        assert_eq!(
            s.shared,
            Some(SharedStack::SameAs {
                id: 7,
                age_ms: 250,
                rate: 19_000
            })
        );
    }

    #[test]
    fn another_process_or_a_forgotten_copy_is_elided() {
        let mut c = StackCache::default();
        c.keep(7, 100, 0, &unwound(1));
        let mut s = stacks(CopyFate::SameAs { id: 7, rate: 5 });
        c.stand_in(&mut s, 101, 0);
        assert_eq!(s.dwarf, None, "a pid's id never names another's stack");
        assert_eq!(s.shared, Some(SharedStack::Elided { rate: 5 }));
        let mut s = stacks(CopyFate::SameAs { id: 8, rate: 5 });
        c.stand_in(&mut s, 100, 0);
        assert_eq!(s.shared, Some(SharedStack::Elided { rate: 5 }));
    }

    #[test]
    fn own_copies_and_no_copies_say_nothing() {
        let c = StackCache::default();
        for fate in [CopyFate::None, CopyFate::Copied { id: 3 }] {
            let mut s = stacks(fate);
            c.stand_in(&mut s, 1, 0);
            assert_eq!(s.shared, None);
        }
        let mut s = stacks(CopyFate::Dropped);
        c.stand_in(&mut s, 1, 0);
        assert_eq!(s.shared, Some(SharedStack::Dropped));
    }

    #[test]
    fn bounded_oldest_first() {
        let mut c = StackCache::default();
        for id in 0..KEPT_MAX as u64 + 5 {
            c.keep(id, 1, 0, &unwound(id));
        }
        assert_eq!(c.by_id.len(), KEPT_MAX);
        assert!(c.get(0, 1, 0).is_none());
        assert!(c.get(KEPT_MAX as u64 + 4, 1, 0).is_some());
    }
}
