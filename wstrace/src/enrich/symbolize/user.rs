//! User stacks, on the worker thread: remembered processes (maps, pinned
//! binaries, perf maps), which paths may be opened ([`trusted_paths`]) and
//! with it whether debug info is used, and JIT frames.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blazesym::Pid;
use blazesym::symbolize::cache::{self, Cache};
use blazesym::symbolize::evict::{self, Evict};
use blazesym::symbolize::source::{Process, Source};
use blazesym::symbolize::{Input, Symbolized};
use wstrace_common::ustack;

use super::REMEMBER_INTERVAL;
use super::dwarf_guard;
use super::frames::{
    Lookup, ResolvedFrame, SourceLoc, classify, lookup_addrs, prefer_symtab, user_frames,
};
use crate::enrich::maps::{
    MAX_UNTRUSTED_FILE, Mapping, map_files_path, module_for, open_untrusted, read_maps,
};
use crate::enrich::perf_map::{PerfMap, v8_js_function};
use crate::enrich::stack_cache::{self, SharedUserStacks};
use crate::enrich::unwind::Unwinder;
use crate::model::{End, Frame, FrameKind, Language, Unwound, UserStackCopy};

/// Shortest time between two reads of one process's perf map for frames
/// it did not name: the runtime appends as it compiles, so code compiled
/// after the last read is named by the next one, and a process whose
/// stacks keep landing in unnamed generated code costs at most this many
/// reads (each only of what was appended, see [`PerfMap::refresh`]).
const PERF_MAP_REREAD: Duration = Duration::from_millis(100);
/// User stacks and unwinding: the state that lives on the worker thread.
///
/// Holds blazesym state built on `Rc`/`RefCell`, so it is neither `Send` nor
/// `Sync`.
pub(super) struct UserSymbols {
    pub(super) inner: blazesym::symbolize::Symbolizer,
    pub(super) procs: HashMap<u32, Remembered>,
    /// Symbolized user stacks by (pid, addresses), for remembered processes
    /// only, and dropped whenever that process's code changes (exec) or it
    /// is forgotten: the same address means the same code only while the
    /// mappings are the ones the stack was symbolized with. Shared with the
    /// [`super::Symbolizer`] front, which answers from it without a round trip.
    pub(super) user_stacks: SharedUserStacks,
    /// Unwind tables of the same remembered processes (dwarf user stacks).
    pub(super) unwind: Unwinder,
    /// [`REMEMBER_INTERVAL`]; a test of the throttle sets it longer than a
    /// loaded host can take between two calls.
    pub(super) remember_interval: Duration,
    /// Processes already told (once each, on stderr) how to get their
    /// generated code named.
    jit_hinted: HashSet<u32>,
    /// Which mapped files' debug info blazesym may read ([`dwarf_guard`]).
    /// In a `RefCell`: lookups of unremembered processes check too, from
    /// `&self`.
    dwarf_checks: RefCell<DwarfChecks>,
}

/// A file by what `fstat` says of it: the same key is the same bytes
/// (short of a same-size rewrite within one mtime tick).
type FileKey = (u64, u64, u64, i64, i64);

/// Verdicts of [`dwarf_guard::refusal`] by file, and the files whose
/// refusal was already said (once per binary, on stderr).
#[derive(Default)]
struct DwarfChecks {
    verdicts: HashMap<FileKey, Option<String>>,
    told: HashSet<FileKey>,
    /// Files (maps' device, inode) that could not be opened, said once.
    unopened: HashSet<(String, u64)>,
}

/// Verdicts kept at most: one per distinct binary of the traced
/// processes; beyond this (a host that keeps building new ones) they are
/// dropped and files checked again.
const MAX_DWARF_VERDICTS: usize = 4096;

/// What we keep for a process handed to [`Symbolizer::remember_process`].
pub(super) struct Remembered {
    /// Our own snapshot of `/proc/<pid>/maps`: names the module of a frame
    /// (blazesym reports none for unknown frames, and for pinned files it may
    /// report the `/proc/<pid>/map_files/...` path it first opened them by).
    maps: Vec<Mapping>,
    pub(super) refreshed: Instant,
    /// ELF files pinned in blazesym's cache under their `map_files` path.
    pub(super) pinned: Vec<Pin>,
    /// Its perf map (JIT runtimes), read by wstrace: blazesym's own
    /// reading of it is off (it would block on a FIFO or a lease).
    perf_map: Option<PerfMap>,
    /// When its perf map was last read (or found missing).
    perf_map_read: Instant,
    /// Whether its files' directories are root's alone ([`trusted_paths`]):
    /// only then does blazesym open files by path (debug links, `.dwp`,
    /// the maps' own paths).
    trusted: bool,
    /// Whether blazesym may read its files' DWARF: [`trusted`](Self::trusted)
    /// and every mapped file passed [`dwarf_guard`].
    debug_syms: bool,
}

/// The path kinds blazesym may open a process's files by: `map_files`
/// always (the mapped file itself: a regular file, no FIFO), the paths
/// named in its maps only when [`trusted_paths`].
fn path_kinds(trusted: bool) -> &'static [bool] {
    if trusted { &[true, false] } else { &[true] }
}

/// Can no user but root put a file next to any of these executable
/// mappings? blazesym opens, with a blocking `open()`, files it finds by
/// name beside a binary (its `.gnu_debuglink` target in the binary's
/// directory or `.debug/` under it, `<binary>.dwp`) and, as a fallback,
/// the binary by its path in maps: in a directory another user can write,
/// any of those can be a FIFO that holds the worker forever, or a file
/// whose lease holds it for the lease-break time. So debug info (DWARF) and
/// path opens are used only when each mapped file's directory is owned by
/// root and writable by no one else, and every directory above it is too
/// (or sticky, like /tmp: others cannot rename root's entry there).
/// Otherwise the process is symbolized from its files' symbol tables,
/// opened through `map_files`: its own names, without line numbers. `stat`
/// only: nothing is opened here.
pub(super) fn trusted_paths(maps: &[Mapping]) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let root_only = |dir: &std::path::Path, direct: bool| {
        std::fs::metadata(dir).is_ok_and(|m| {
            m.is_dir()
                && m.uid() == 0
                && (m.mode() & 0o022 == 0 || (!direct && m.mode() & 0o1000 != 0))
        })
    };
    let mut checked: Vec<&str> = Vec::new();
    maps.iter()
        .filter(|m| m.exec)
        .filter_map(|m| m.path.as_deref())
        .filter(|p| p.starts_with('/'))
        .all(|p| {
            let p = p.strip_suffix(" (deleted)").unwrap_or(p);
            let Some((dir, _)) = p.rsplit_once('/') else {
                return false;
            };
            if checked.contains(&dir) {
                return true;
            }
            checked.push(dir);
            let dir = std::path::Path::new(if dir.is_empty() { "/" } else { dir });
            root_only(dir, true) && dir.ancestors().skip(1).all(|a| root_only(a, false))
        })
}

/// A `/proc/<pid>/map_files/<range>` path pinned in blazesym's ELF cache,
/// with the identity of the file that was mapped there when it was pinned
/// (the same range may later hold another file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Pin {
    path: PathBuf,
    dev: String,
    inode: u64,
}

impl UserSymbols {
    pub(super) fn new(user_stacks: SharedUserStacks) -> Self {
        Self {
            // Defaults: code info, inlined functions and demangling on, files
            // re-read when they change on disk (pinned ones excepted).
            inner: blazesym::symbolize::Symbolizer::new(),
            procs: HashMap::new(),
            user_stacks,
            unwind: Unwinder::new(),
            remember_interval: REMEMBER_INTERVAL,
            jit_hinted: HashSet::new(),
            dwarf_checks: RefCell::default(),
        }
    }

    /// Cache the process's memory maps (and its binaries' symbols as blazesym allows) now, so that
    /// its stacks still symbolize after it exits. Called when the process writes the HTTP 101.
    /// Errors (process gone, permission) are ignored: symbolization later will say `[unknown]`.
    ///
    /// What is kept: blazesym's copy of the maps (its VMA cache), the
    /// process's perf map if it has one (JIT runtimes), and each executable
    /// file mapping opened through `/proc/<pid>/map_files/` and pinned in
    /// blazesym's ELF cache, with its symbol tables and DWARF (including a
    /// separate debug file found by build ID) set up now. Opening through
    /// `map_files` means the file is the one the process mapped, even inside
    /// another mount namespace (a container) or after it was deleted or
    /// upgraded on disk. That needs CAP_SYS_ADMIN (as wstrace has); without
    /// it, later lookups fall back to the paths as named in the maps, which
    /// must still exist then.
    ///
    /// Cost (release build): tens of ms the first time a set of binaries is
    /// seen (libc with its debug file: ~40 ms), well under 1 ms for another
    /// process mapping the same files (parsed data is shared per inode).
    /// Repeated calls for the same pid within [`REMEMBER_INTERVAL`] do nothing.
    pub(super) fn remember_process(&mut self, pid: u32) {
        // blazesym reads pid 0 as "this process".
        if pid == 0 {
            return;
        }
        if let Some(r) = self.procs.get(&pid)
            && r.refreshed.elapsed() < self.remember_interval
        {
            return;
        }
        self.refresh_process(pid, false);
    }

    /// When `pid`'s maps were last read, if it is remembered.
    pub(super) fn refreshed_at(&self, pid: u32) -> Option<Instant> {
        self.procs.get(&pid).map(|r| r.refreshed)
    }

    /// Drop cached state for a process (called when it is known to be gone/exec'd).
    ///
    /// Releases its pinned files (shared ones, such as libc, stay cached as
    /// long as another remembered process maps them) and its cached maps. A
    /// pid is reused eventually: without this, a new process with the same
    /// pid would be symbolized with the old process's maps.
    /// Someone else names `pid`'s JavaScript frames: no perf map hint.
    pub(super) fn names_javascript(&mut self, pid: u32) {
        self.jit_hinted.insert(pid);
    }

    pub(super) fn forget_process(&mut self, pid: u32) {
        if pid == 0 {
            return;
        }
        if let Some(r) = self.procs.remove(&pid) {
            self.unpin(&r.pinned);
        }
        stack_cache::lock(&self.user_stacks).forget(pid);
        self.jit_hinted.remove(&pid);
        self.unwind.forget(pid);
        // Only fails for things we do not ask for; nothing to report.
        let _ = self
            .inner
            .evict(&Evict::Process(evict::Process::new(Pid::from(pid))));
    }

    /// Dwarf-unwinds a stack copy of process `pid` with the unwind tables
    /// of its remembered maps (remembering it now if it is not, which works
    /// while it lives).
    pub(super) fn unwind_user(&mut self, pid: u32, copy: &UserStackCopy) -> Unwound {
        let no_frames = |why: &str| Unwound {
            addrs: Vec::new(),
            end: End::Stopped(why.to_string()),
            fp_slots: Vec::new(),
            js: Vec::new(),
        };
        match copy.status {
            ustack::OK => {}
            ustack::NO_REGS => return no_frames("the kernel found no user registers"),
            _ => return no_frames("the stack at sp was unreadable"),
        }
        if pid != 0 && !self.unwind.remembers(pid) {
            self.refresh_process(pid, false);
        }
        self.unwind
            .unwind(pid, copy)
            .unwrap_or_else(|| no_frames("the process exited before its maps were read"))
    }

    /// User frames of process `pid`, innermost first: function, offset,
    /// module and source line when known; functions inlined at an address
    /// as frames of their own before it; unknown frames with their module.
    /// Never drop frames: one address in → at least one frame out.
    ///
    /// Uses the maps cached by [`remember_process`](Self::remember_process)
    /// if any, else the live `/proc/<pid>/maps`. If a live, remembered
    /// process has an address outside the cached maps (a library loaded
    /// since), its maps are re-read once and the stack looked up again.
    pub(super) fn user_stack(&mut self, pid: u32, addrs: &[u64]) -> Arc<[Frame]> {
        if addrs.is_empty() {
            return Arc::default();
        }
        if pid == 0 {
            // blazesym would read pid 0 as "this process"; a user stack there is garbage.
            return addrs
                .iter()
                .map(|&a| Frame::unknown(FrameKind::Native, a, None))
                .collect();
        }
        if let Some(frames) = stack_cache::lock(&self.user_stacks).get(pid, addrs) {
            return frames;
        }
        let frames: Arc<[Frame]> = self.symbolize_user(pid, addrs).into();
        // Unremembered processes are symbolized from their live maps, which
        // nothing tells us have changed: those are not cached. Nor are
        // stacks with unnamed generated code: a later read of the perf map
        // may name it.
        let unnamed_jit = {
            let maps = self.procs.get(&pid).map(|r| r.maps.as_slice());
            frames
                .iter()
                .any(|f| f.function.is_none() && maps.is_some_and(|m| in_anon_exec(m, f)))
        };
        if self.procs.contains_key(&pid) && !unnamed_jit {
            stack_cache::lock(&self.user_stacks).insert(pid, addrs, &frames);
        }
        frames
    }

    fn symbolize_user(&mut self, pid: u32, addrs: &[u64]) -> Vec<Frame> {
        let lookups = lookup_addrs(addrs);
        let mut found = self.resolve_user(pid, addrs, &lookups);
        if self.procs.contains_key(&pid)
            && found.contains(&Lookup::Unmapped)
            && self.refresh_process(pid, true)
        {
            found = self.resolve_user(pid, addrs, &lookups);
        }
        // JIT code: what the ELF files do not name, the perf map may; read
        // again (what was appended since) when it names not all of it.
        if let Some(r) = self.procs.get_mut(&pid)
            && r.perf_map_read.elapsed() >= PERF_MAP_REREAD
            && found.iter().zip(&lookups).any(|(l, &lookup)| {
                !matches!(l, Lookup::Found(_))
                    && is_anon_exec(&r.maps, lookup)
                    && r.perf_map
                        .as_ref()
                        .is_none_or(|pm| pm.lookup(lookup).is_none())
            })
        {
            r.perf_map_read = Instant::now();
            // The same `PerfMap` (even an empty one) keeps its read budget.
            r.perf_map.get_or_insert_with(PerfMap::default).refresh(pid);
        }
        let mut live_perf_map = false;
        if found.iter().any(|l| !matches!(l, Lookup::Found(_))) {
            let live;
            let perf_map = match self.procs.get(&pid) {
                Some(r) => r.perf_map.as_ref(),
                None => {
                    live = PerfMap::read(pid);
                    live_perf_map = live.as_ref().is_some_and(|m| !m.is_empty());
                    live.as_ref()
                }
            };
            if let Some(pm) = perf_map {
                for ((l, &addr), &lookup) in found.iter_mut().zip(addrs).zip(&lookups) {
                    if matches!(l, Lookup::Found(_)) {
                        continue;
                    }
                    if let Some((name, off)) = pm.lookup(lookup) {
                        // V8's names carry the script and line: as a
                        // frame's file and line, like debug info's.
                        let (name, loc) = match v8_js_function(name) {
                            Some((function, script, line)) => (
                                function,
                                Some(SourceLoc {
                                    file: script.to_string(),
                                    line: Some(line),
                                }),
                            ),
                            None => (name, None),
                        };
                        *l = Lookup::Found(ResolvedFrame {
                            name: name.to_string(),
                            offset: off.saturating_add(addr - lookup),
                            loc,
                            inlined: Vec::new(),
                            module: Some(format!("/tmp/perf-{pid}.map")),
                        });
                    }
                }
            }
        }

        let live_maps;
        let maps: &[Mapping] = match self.procs.get(&pid) {
            Some(r) => &r.maps,
            None => {
                live_maps = read_maps(pid).unwrap_or_default();
                &live_maps
            }
        };
        let runtime = jit_runtime(maps);
        let mut out = Vec::with_capacity(addrs.len());
        for ((&addr, &lookup), result) in addrs.iter().zip(&lookups).zip(&found) {
            match result {
                Lookup::Found(frame) => {
                    let module = module_for(maps, lookup).or(frame.module.as_deref());
                    // A JIT frame's language is its runtime's; a native
                    // frame keeps what its debug info said (Go's `.go`).
                    let (kind, jit_lang) = if is_jit(maps, lookup) {
                        (FrameKind::Jit, jit_language(runtime, &frame.name))
                    } else {
                        (FrameKind::Native, None)
                    };
                    out.extend(
                        user_frames(addr, Some(frame), module, kind)
                            .into_iter()
                            .map(|f| Frame {
                                language: jit_lang.or(f.language),
                                ..f
                            }),
                    );
                }
                Lookup::Unmapped | Lookup::Unknown => {
                    out.push(Frame::unknown(
                        FrameKind::Native,
                        addr,
                        module_for(maps, addr),
                    ));
                }
            }
        }
        let has_perf_map = live_perf_map
            || self
                .procs
                .get(&pid)
                .and_then(|r| r.perf_map.as_ref())
                .is_some_and(|m| !m.is_empty());
        if let Some(hint) = jit_hint(runtime, has_perf_map, &out, maps)
            && self.jit_hinted.insert(pid)
        {
            // Once per process: the stacks say `[unknown]` or the
            // interpreter's trampoline; this says how to get names.
            eprintln!(
                "wstrace: note: stacks: pid {pid}{}: {hint}",
                runtime
                    .map(|r| format!(" ({})", r.name()))
                    .unwrap_or_default()
            );
        }
        out
    }

    /// Look `lookups` up in process `pid`; one result per address, always.
    ///
    /// blazesym fails a whole batch when one mapped file cannot be opened
    /// (e.g. `map_files` without CAP_SYS_ADMIN, or a dead process whose file
    /// was not pinned), so: the batch through `map_files`, then the batch
    /// through the symbolic paths, then address by address, where an address
    /// that still fails is unknown.
    fn resolve_user(&self, pid: u32, addrs: &[u64], lookups: &[u64]) -> Vec<Lookup> {
        let (trusted, debug_syms) = match self.procs.get(&pid) {
            Some(r) => (r.trusted, r.debug_syms),
            None => match read_maps(pid) {
                Some(m) if trusted_paths(&m) => (true, self.dwarf_bounded(pid, &m)),
                _ => (false, false),
            },
        };
        let mut found = self.resolve_user_dwarf(pid, addrs, lookups, trusted, debug_syms);
        if found.iter().any(|l| matches!(l, Lookup::Found(_))) {
            let symtab = self.resolve_user_symtab(pid, addrs, lookups, trusted);
            for (l, s) in found.iter_mut().zip(symtab) {
                if let (Lookup::Found(frame), Some(sym)) = (l, s) {
                    prefer_symtab(frame, sym);
                }
            }
        }
        found
    }

    /// The ELF symbol table's answer for each address (name, offset of the
    /// captured address), as gdb reads it: `None` where it has none. One
    /// batch; a failing batch (an unreadable file) gives no answers, and
    /// the debug-info names stand.
    fn resolve_user_symtab(
        &self,
        pid: u32,
        addrs: &[u64],
        lookups: &[u64],
        trusted: bool,
    ) -> Vec<Option<(String, u64)>> {
        for &map_files in path_kinds(trusted) {
            let src = Source::Process(Process {
                map_files,
                debug_syms: false,
                perf_map: false,
                ..Process::new(Pid::from(pid))
            });
            if let Ok(syms) = self.inner.symbolize(&src, Input::AbsAddr(lookups))
                && syms.len() == lookups.len()
            {
                return syms
                    .into_iter()
                    .zip(addrs.iter().zip(lookups))
                    .map(|(sym, (&addr, &lookup))| match sym {
                        Symbolized::Sym(s) if !s.name.is_empty() => Some((
                            s.name.to_string(),
                            (s.offset as u64).saturating_add(addr - lookup),
                        )),
                        _ => None,
                    })
                    .collect();
            }
        }
        vec![None; addrs.len()]
    }

    fn resolve_user_dwarf(
        &self,
        pid: u32,
        addrs: &[u64],
        lookups: &[u64],
        trusted: bool,
        debug_syms: bool,
    ) -> Vec<Lookup> {
        let src = |map_files: bool| {
            Source::Process(Process {
                map_files,
                debug_syms,
                // Read by wstrace instead (see `perf_map`).
                perf_map: false,
                ..Process::new(Pid::from(pid))
            })
        };
        for &map_files in path_kinds(trusted) {
            if let Ok(syms) = self
                .inner
                .symbolize(&src(map_files), Input::AbsAddr(lookups))
                && syms.len() == lookups.len()
            {
                return syms
                    .into_iter()
                    .zip(addrs.iter().zip(lookups))
                    .map(|(sym, (&addr, &lookup))| classify(sym, addr - lookup))
                    .collect();
            }
        }
        addrs
            .iter()
            .zip(lookups)
            .map(|(&addr, &lookup)| {
                path_kinds(trusted)
                    .iter()
                    .find_map(|&mf| {
                        self.inner
                            .symbolize_single(&src(mf), Input::AbsAddr(lookup))
                            .ok()
                    })
                    .map_or(Lookup::Unknown, |sym| classify(sym, addr - lookup))
            })
            .collect()
    }

    /// (Re)read the process's maps and cache them in blazesym. With
    /// `only_if_changed`, nothing is re-cached when the executable mappings are
    /// the same as in the last snapshot. Returns whether blazesym's view was
    /// renewed (false: process gone, unreadable, or unchanged).
    fn refresh_process(&mut self, pid: u32, only_if_changed: bool) -> bool {
        let Some(maps) = read_maps(pid) else {
            return false;
        };
        let now = Instant::now();
        let same_code = self.procs.get(&pid).is_some_and(|r| {
            r.maps
                .iter()
                .filter(|m| m.exec)
                .eq(maps.iter().filter(|m| m.exec))
        });
        if only_if_changed
            && same_code
            && let Some(r) = self.procs.get_mut(&pid)
        {
            r.maps = maps;
            r.refreshed = now;
            return false;
        }
        if !same_code {
            stack_cache::lock(&self.user_stacks).forget(pid);
        }
        if !same_code || !self.unwind.remembers(pid) {
            self.unwind.remember(pid, &maps, |m| map_files_path(pid, m));
        }
        let bpid = Pid::from(pid);
        // Start over: caching the maps replaces blazesym's old copy anyway,
        // and an evicted perf map is parsed afresh instead of piling up one
        // parsed copy per change of the file.
        let _ = self.inner.evict(&Evict::Process(evict::Process::new(bpid)));
        let vmas = cache::Process {
            cache_vmas: true,
            cache_perf_map: false,
            ..cache::Process::new(bpid)
        };
        // Errors: the process is gone or unreadable; the lookup will say so.
        let _ = self.inner.cache(&Cache::Process(vmas));
        // The perf map is read by wstrace (non-blocking, regular files
        // only, bounded), never by blazesym.
        // The map read before, if any, reads on from where it stopped
        // (and keeps its read budget across maps re-read).
        let mut perf_map = self
            .procs
            .get_mut(&pid)
            .and_then(|r| r.perf_map.take())
            .unwrap_or_default();
        let readable = perf_map.refresh(pid);
        let perf_map = (readable || !perf_map.is_empty()).then_some(perf_map);
        let perf_map_read = Instant::now();

        let old = self
            .procs
            .remove(&pid)
            .map(|r| r.pinned)
            .unwrap_or_default();
        let mut pinned: Vec<Pin> = Vec::new();
        let mut fresh: Vec<(Pin, u64)> = Vec::new();
        for m in maps
            .iter()
            .filter(|m| m.exec && m.path.as_deref().is_some_and(|p| p.starts_with('/')))
        {
            let pin = Pin {
                path: PathBuf::from(map_files_path(pid, m)),
                dev: m.dev.clone(),
                inode: m.inode,
            };
            if pinned.contains(&pin) || fresh.iter().any(|(p, _)| *p == pin) {
                continue;
            }
            // Already pinned for this process: its symbols are parsed, keep them.
            if old.contains(&pin) {
                pinned.push(pin);
            } else {
                fresh.push((pin, m.start));
            }
        }
        let starts: Vec<u64> = fresh.iter().map(|(_, start)| *start).collect();
        let trusted = trusted_paths(&maps);
        let debug_syms = trusted && self.dwarf_bounded(pid, &maps);
        self.warm_up(pid, &starts, debug_syms);
        for (pin, _) in fresh {
            // Fails for files that are not ELF, or without access to map_files.
            if self
                .inner
                .cache(&Cache::Elf(cache::Elf::new(&pin.path)))
                .is_ok()
            {
                pinned.push(pin);
            }
        }
        let stale: Vec<Pin> = old.into_iter().filter(|p| !pinned.contains(p)).collect();
        self.unpin(&stale);
        self.procs.insert(
            pid,
            Remembered {
                maps,
                refreshed: now,
                pinned,
                perf_map,
                perf_map_read,
                trusted,
                debug_syms,
            },
        );
        true
    }

    /// Open each newly mapped file the way later lookups will (through
    /// `map_files`, with debug info) by looking up one address in it while
    /// the process is alive. blazesym finds separate debug files (e.g.
    /// `/usr/lib/debug/.build-id/...`) by the build ID it reads from the file's
    /// path at the time it first builds the DWARF resolver; a file first
    /// opened by [`Cache::Elf`] carries its `/proc/<pid>/map_files/...` path,
    /// which is dangling by the time the stack is symbolized, and would then
    /// never get line numbers. Opened this way, it also carries the path
    /// from the maps as its module name.
    fn warm_up(&self, pid: u32, addrs: &[u64], debug_syms: bool) {
        if addrs.is_empty() {
            return;
        }
        let src = Source::Process(Process {
            map_files: true,
            debug_syms,
            perf_map: false,
            vdso: false,
            ..Process::new(Pid::from(pid))
        });
        // One unreadable file fails the whole batch; then file by file.
        if self.inner.symbolize(&src, Input::AbsAddr(addrs)).is_err() {
            for &addr in addrs {
                let _ = self.inner.symbolize_single(&src, Input::AbsAddr(addr));
            }
        }
    }

    /// May blazesym read the DWARF of every file `pid` maps executable?
    /// Each is opened through `map_files` (the file the process mapped, by
    /// the hostile-file rules) and checked by [`dwarf_guard`]; a file that
    /// cannot be opened or checked counts as refused. blazesym's debug-info
    /// switch is per process, so one refused file costs the whole process
    /// its line numbers (symbol tables still name its frames); the first
    /// refusal of each file is said once on stderr.
    fn dwarf_bounded(&self, pid: u32, maps: &[Mapping]) -> bool {
        use std::os::unix::fs::MetadataExt as _;
        let mut checks = self.dwarf_checks.borrow_mut();
        let mut ok = true;
        let mut seen: Vec<(&str, u64)> = Vec::new();
        for m in maps
            .iter()
            .filter(|m| m.exec && m.path.as_deref().is_some_and(|p| p.starts_with('/')))
        {
            if seen.contains(&(m.dev.as_str(), m.inode)) {
                continue;
            }
            seen.push((m.dev.as_str(), m.inode));
            let path = m.path.as_deref().unwrap_or_default();
            let file = open_untrusted(&map_files_path(pid, m), MAX_UNTRUSTED_FILE);
            let Some((file, meta)) = file.and_then(|f| f.metadata().ok().map(|md| (f, md))) else {
                ok = false;
                // Mostly a process that just exited; said once per file.
                if checks.unopened.len() >= MAX_DWARF_VERDICTS {
                    checks.unopened.clear();
                }
                if checks.unopened.insert((m.dev.clone(), m.inode)) {
                    // `{:?}`: the path is the traced process's (escaped,
                    // quoted); enrich comes before output, whose escaping
                    // it may not import.
                    eprintln!(
                        "wstrace: note: stacks: pid {pid} ({path:?}): its mapped file could not be opened to check its debug info (gone, not a regular file, or over {} GiB): its stacks are named from symbol tables only",
                        MAX_UNTRUSTED_FILE >> 30
                    );
                }
                break;
            };
            let key: FileKey = (
                meta.dev(),
                meta.ino(),
                meta.size(),
                meta.mtime(),
                meta.mtime_nsec(),
            );
            if !checks.verdicts.contains_key(&key) {
                if checks.verdicts.len() >= MAX_DWARF_VERDICTS {
                    checks.verdicts.clear();
                }
                // SAFETY: read-only private mapping of a regular file; a
                // file truncated under us is the SIGBUS risk every mmap of
                // a mapped binary takes (the unwinder maps the same files).
                let verdict = match unsafe { memmap2::Mmap::map(&file) } {
                    Ok(bytes) => dwarf_guard::refusal(&bytes),
                    Err(e) => Some(format!("it could not be mapped: {e}")),
                };
                checks.verdicts.insert(key, verdict);
            }
            if let Some(Some(why)) = checks.verdicts.get(&key).cloned() {
                ok = false;
                if checks.told.len() >= MAX_DWARF_VERDICTS {
                    checks.told.clear();
                }
                if checks.told.insert(key) {
                    // `{:?}`: the path and the section names in `why` are
                    // the file's (escaped, quoted), as above.
                    eprintln!(
                        "wstrace: note: stacks: pid {pid} ({path:?}): its debug info is not used: {why:?}: its stacks are named from symbol tables only"
                    );
                }
            }
        }
        ok
    }

    fn unpin(&mut self, pins: &[Pin]) {
        for pin in pins {
            let _ = self.inner.evict(&Evict::Elf(evict::Elf::new(&pin.path)));
        }
    }
}

/// Was this name found for code a runtime generated? Only a perf map
/// (`/tmp/perf-<pid>.map`, written by JITs: V8 with `--perf-basic-prof`,
/// the JVM's agents, CPython 3.12's `-X perf`) names an address in
/// anonymous memory; an ELF symbol always comes with its file and the
/// address lies in that file's mapping.
fn is_jit(maps: &[Mapping], lookup: u64) -> bool {
    // Anonymous executable memory has no file to name it: whatever named
    // it (the runtime's perf map, read by `perf_map`) names generated code.
    maps.iter()
        .any(|m| m.start <= lookup && lookup < m.end && m.path.is_none())
}

/// Is `lookup` in anonymous executable memory (where a JIT puts its code)?
fn is_anon_exec(maps: &[Mapping], lookup: u64) -> bool {
    maps.iter()
        .any(|m| m.exec && m.path.is_none() && m.start <= lookup && lookup < m.end)
}

/// Is this unnamed frame's code in anonymous executable memory? Its
/// looked-up address may be one byte back (a return address); both lie in
/// the same mapping but at its very start.
fn in_anon_exec(maps: &[Mapping], f: &Frame) -> bool {
    f.address
        .is_some_and(|a| is_anon_exec(maps, a) || is_anon_exec(maps, a.saturating_sub(1)))
}

/// A runtime that generates code, known by the file it runs from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum JitRuntime {
    /// Node.js (V8): `node`, or an embedder's `libnode.so`.
    Node,
}

impl JitRuntime {
    fn name(self) -> &'static str {
        match self {
            JitRuntime::Node => "node",
        }
    }
}

/// The code-generating runtime among the process's executable mappings.
fn jit_runtime(maps: &[Mapping]) -> Option<JitRuntime> {
    maps.iter()
        .filter(|m| m.exec)
        .filter_map(|m| m.path.as_deref())
        .map(|p| p.strip_suffix(" (deleted)").unwrap_or(p))
        .map(|p| p.rsplit_once('/').map_or(p, |(_, f)| f))
        .any(|f| f == "node" || f.starts_with("libnode.so"))
        .then_some(JitRuntime::Node)
}

/// The language of a perf-map frame: V8's code in a node process is
/// JavaScript (its builtins too: they run for JavaScript); CPython 3.12+
/// names its trampolines `py::`.
fn jit_language(runtime: Option<JitRuntime>, name: &str) -> Option<Language> {
    match runtime {
        Some(JitRuntime::Node) => Some(Language::JavaScript),
        None if name.starts_with("py::") => Some(Language::Python),
        None => None,
    }
}

/// What would name this stack's generated code, when something would:
/// node names its functions in a perf map with `--perf-basic-prof`, and
/// gives each interpreted function a copy of the interpreter entry to name
/// (instead of one `Builtins_InterpreterEntryTrampoline` for all) with
/// `--interpreted-frames-native-stack`.
fn jit_hint(
    runtime: Option<JitRuntime>,
    has_perf_map: bool,
    frames: &[Frame],
    maps: &[Mapping],
) -> Option<&'static str> {
    let unnamed = frames
        .iter()
        .any(|f| f.function.is_none() && in_anon_exec(maps, f));
    let trampoline = frames.iter().any(|f| {
        f.function
            .as_deref()
            .is_some_and(|n| n.starts_with("Builtins_InterpreterEntryTrampoline"))
    });
    match runtime {
        Some(JitRuntime::Node) if !has_perf_map && (unnamed || trampoline) => Some(
            "its JavaScript frames are unnamed: start node with --perf-basic-prof --interpreted-frames-native-stack (V8 then writes /tmp/perf-<pid>.map, which wstrace reads at each close) to name them",
        ),
        Some(JitRuntime::Node) if trampoline => Some(
            "its interpreted JavaScript frames show as Builtins_InterpreterEntryTrampoline: add --interpreted-frames-native-stack to node's flags to name them",
        ),
        None if !has_perf_map && unnamed => Some(
            "frames in generated (JIT) code are unnamed: its runtime writes no /tmp/perf-<pid>.map (e.g. node --perf-basic-prof, python3.12 -X perf, the JVM's perf-map-agent)",
        ),
        _ => None,
    }
}

#[cfg(test)]
mod jit_tests {
    use super::*;
    use crate::enrich::maps::parse_maps;

    const NODE_MAPS: &str = "\
55d000000000-55d002000000 r-xp 00000000 08:01 100 /usr/bin/node
7f0000000000-7f0000100000 rwxp 00000000 00:00 0
7f1000000000-7f1000100000 rw-p 00000000 00:00 0
";

    fn unknown(a: u64) -> Frame {
        Frame::unknown(FrameKind::Native, a, None)
    }

    fn named(n: &str) -> Frame {
        Frame {
            function: Some(n.into()),
            ..unknown(0x55d0_0000_1000)
        }
    }

    #[test]
    fn node_is_told_the_flags_that_name_its_frames() {
        let maps = parse_maps(NODE_MAPS);
        let node = jit_runtime(&maps);
        assert_eq!(node, Some(JitRuntime::Node));
        // Unnamed generated code, no perf map: both flags.
        let h = jit_hint(node, false, &[unknown(0x7f00_0000_0010)], &maps).expect("hint");
        assert!(
            h.contains("--perf-basic-prof --interpreted-frames-native-stack"),
            "{h}"
        );
        // The interpreter's trampoline with a perf map: the second flag.
        let t = [named("Builtins_InterpreterEntryTrampoline")];
        let h = jit_hint(node, true, &t, &maps).expect("hint");
        assert!(h.contains("add --interpreted-frames-native-stack"), "{h}");
        // An unknown frame in non-executable memory is no JIT code; a
        // perf map with named frames needs no hint.
        assert_eq!(
            jit_hint(node, false, &[unknown(0x7f10_0000_0010)], &maps),
            None
        );
        assert_eq!(
            jit_hint(node, true, &[unknown(0x7f00_0000_0010)], &maps),
            None
        );
        // Another runtime: the generic note, only without a perf map.
        let other = parse_maps(&NODE_MAPS.replace("/usr/bin/node", "/usr/bin/java"));
        assert_eq!(jit_runtime(&other), None);
        let h = jit_hint(None, false, &[unknown(0x7f00_0000_0010)], &other).expect("hint");
        assert!(h.contains("no /tmp/perf-<pid>.map"), "{h}");
        assert_eq!(
            jit_hint(None, true, &[unknown(0x7f00_0000_0010)], &other),
            None
        );
    }

    #[test]
    fn jit_frames_get_their_runtime_language() {
        assert_eq!(
            jit_language(Some(JitRuntime::Node), "Builtin:ArrayForEach"),
            Some(Language::JavaScript)
        );
        assert_eq!(
            jit_language(None, "py::handler:/srv/app.py"),
            Some(Language::Python)
        );
        assert_eq!(jit_language(None, "Interpreter"), None);
        let libnode = parse_maps("7f00-7f10 r-xp 0 08:01 7 /opt/app/libnode.so.108\n");
        assert_eq!(jit_runtime(&libnode), Some(JitRuntime::Node));
    }
}
