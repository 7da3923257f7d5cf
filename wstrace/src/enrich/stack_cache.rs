//! The unwinds of recent user stack copies, by the kernel's copy id: a
//! close whose call site was over its copy budget (`CopyFate::SameAs`)
//! names the site's last copy, and is shown that copy's unwind; its frames
//! then hit the symbolizer's cache of identical stacks instead of being
//! unwound and symbolized again. A layer beside the symbolizer, which it
//! does not change.
//!
//! [`UserStacks`] is the one cache of symbolized user stacks, by process
//! and addresses: the symbolizer's front (`Symbolizer::user_stack`, on the
//! daemon's thread) answers from it without a round trip to its worker
//! (two context switches a close), and the worker, which owns the process
//! maps, fills it and drops a process's stacks when its code changes
//! (exec) or it is forgotten. Frames are shared (`Arc<[Frame]>`): a report
//! holds the cached stack, not a copy of it.
use std::{
    collections::{HashMap, VecDeque},
    hash::{BuildHasher as _, RandomState},
    sync::{Arc, Mutex},
};

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

struct Entry {
    pid: u32,
    addrs: Box<[u64]>,
    frames: Arc<[Frame]>,
}

/// User stacks symbolized, by process and addresses. Keyed by a hash of
/// both, checked against the entry on a hit, so a lookup allocates nothing;
/// two stacks with the same hash take turns (a miss, never a wrong answer).
pub struct UserStacks {
    by_hash: HashMap<u64, Entry>,
    hasher: RandomState,
}

/// The cache as the symbolizer's front and its worker share it.
pub type SharedUserStacks = Arc<Mutex<UserStacks>>;

impl Default for UserStacks {
    fn default() -> Self {
        Self {
            by_hash: HashMap::new(),
            // Keyed per run: a process cannot aim its stacks at one slot.
            hasher: RandomState::new(),
        }
    }
}

impl UserStacks {
    pub fn shared() -> SharedUserStacks {
        Arc::new(Mutex::new(UserStacks::default()))
    }

    fn key(&self, pid: u32, addrs: &[u64]) -> u64 {
        self.hasher.hash_one((pid, addrs))
    }

    pub fn get(&self, pid: u32, addrs: &[u64]) -> Option<Arc<[Frame]>> {
        self.by_hash
            .get(&self.key(pid, addrs))
            .filter(|e| e.pid == pid && *e.addrs == *addrs)
            .map(|e| e.frames.clone())
    }

    /// Keeps `frames` unless one is unknown: the symbolizer re-reads a
    /// process's maps when an address is outside them (a library loaded
    /// later), or answers `[unknown]` when it timed out; such a stack is
    /// asked again next time.
    pub fn insert(&mut self, pid: u32, addrs: &[u64], frames: &Arc<[Frame]>) {
        if frames.iter().any(|f| f.function.is_none()) {
            return;
        }
        if self.by_hash.len() >= FRAMES_MAX {
            // Starting over is the symbolizer's own rule for its caches.
            self.by_hash.clear();
        }
        let entry = Entry {
            pid,
            addrs: addrs.into(),
            frames: frames.clone(),
        };
        self.by_hash.insert(self.key(pid, addrs), entry);
    }

    /// Drops `pid`'s stacks (it exited, exec'd, or its pid was reused).
    pub fn forget(&mut self, pid: u32) {
        self.by_hash.retain(|_, e| e.pid != pid);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }
}

/// Locks `stacks`; a panic elsewhere while it was held (the cache is left
/// whole by every operation) does not stop symbolization.
pub fn lock(stacks: &SharedUserStacks) -> std::sync::MutexGuard<'_, UserStacks> {
    stacks.lock().unwrap_or_else(|e| e.into_inner())
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

    fn arc(frames: Vec<Frame>) -> Arc<[Frame]> {
        frames.into()
    }

    #[test]
    fn frames_are_kept_per_process_until_it_is_forgotten() {
        let mut c = UserStacks::default();
        let frames = arc(vec![named("close"), named("main")]);
        c.insert(10, &[1, 2], &frames);
        assert_eq!(c.get(10, &[1, 2]), Some(frames.clone()));
        assert!(
            Arc::ptr_eq(&c.get(10, &[1, 2]).expect("kept"), &frames),
            "shared, not copied"
        );
        assert_eq!(c.get(11, &[1, 2]), None, "another process");
        assert_eq!(c.get(10, &[1, 3]), None, "another stack");
        assert_eq!(c.get(10, &[1]), None, "a prefix");
        c.insert(11, &[1, 2], &frames);
        c.forget(10);
        assert_eq!(c.get(10, &[1, 2]), None);
        assert!(c.get(11, &[1, 2]).is_some(), "other processes stay");
    }

    #[test]
    fn unknown_frames_are_asked_again() {
        let mut c = UserStacks::default();
        c.insert(10, &[1, 2], &arc(vec![named("main"), Frame::default()]));
        assert_eq!(c.get(10, &[1, 2]), None);
    }

    #[test]
    fn frames_cache_is_bounded() {
        let mut c = UserStacks::default();
        for i in 0..FRAMES_MAX as u64 + 1 {
            c.insert(1, &[i], &arc(vec![named("f")]));
        }
        assert!(c.len() <= FRAMES_MAX);
    }

    fn unwound(a: u64) -> Unwound {
        Unwound {
            addrs: vec![a, a + 1],
            end: End::Complete,
            fp_slots: Vec::new(),
            js: Vec::new(),
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
            interp: Default::default(),
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
