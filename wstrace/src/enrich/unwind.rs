//! Dwarf unwinding of a user stack the kernel copied at a close.
//!
//! The close probe sends the closing thread's `ip`, `sp`, frame pointer
//! (and on arm64 the link register) at the syscall and the bytes from `sp`
//! up (`--user-stack-size`). Here each
//! executable mapping of the process becomes a framehop module backed by its
//! file's `.eh_frame` (or `.debug_frame`), and framehop walks the copy:
//! every return address the unwind rules point at must lie inside the copy,
//! so an unwind never reads live memory and works after the process exited.
//!
//! Modules are captured when the process is remembered (at its 101, or when
//! found listening), from its maps, with each file opened through
//! `/proc/<pid>/map_files/` and mapped into memory: the bytes stay readable
//! after the process exits or the file is replaced on disk. Files are shared
//! across processes by device and inode (one copy of libc's tables).
//!
//! x86_64 and arm64 (framehop's unwinder for the architecture the daemon
//! is built for, which is the traced processes' and the kernel capture's).
use std::collections::HashMap;
use std::ops::{Deref, Range};
use std::sync::Arc;

use framehop::{ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder as _};
use memmap2::Mmap;
use object::{Object, ObjectSection, ObjectSegment};

use crate::enrich::maps::{MAX_UNTRUSTED_FILE, Mapping, open_untrusted};
use crate::model::{End, FP_SLOTS, FpSlots, Unwound, UserStackCopy, Walk};

#[cfg(target_arch = "aarch64")]
mod arch {
    use framehop::aarch64::{CacheAarch64, PtrAuthMask, UnwindRegsAarch64, UnwinderAarch64};

    use crate::model::UserStackCopy;

    pub type Unwinder<D> = UnwinderAarch64<D>;
    pub type Cache = CacheAarch64;

    /// Linux user addresses stay below 2^48 (the default user VA size; a
    /// program has to ask mmap for more): the bits above hold the pointer
    /// authentication code of a signed return address (Debian builds arm64
    /// code with `-mbranch-protection=standard`), which framehop strips.
    const USER_ADDRESS_MAX: u64 = (1 << 48) - 1;

    pub fn regs(copy: &UserStackCopy) -> UnwindRegsAarch64 {
        UnwindRegsAarch64::new_with_ptr_auth_mask(
            PtrAuthMask::from_max_known_address(USER_ADDRESS_MAX),
            copy.lr,
            copy.sp,
            copy.fp,
        )
    }

    pub fn fp(regs: &UnwindRegsAarch64) -> u64 {
        regs.fp()
    }
}

#[cfg(not(target_arch = "aarch64"))]
mod arch {
    use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};

    use crate::model::UserStackCopy;

    pub type Unwinder<D> = UnwinderX86_64<D>;
    pub type Cache = CacheX86_64;

    pub fn regs(copy: &UserStackCopy) -> UnwindRegsX86_64 {
        UnwindRegsX86_64::new(copy.ip, copy.sp, copy.fp)
    }

    pub fn fp(regs: &UnwindRegsX86_64) -> u64 {
        regs.bp()
    }
}

/// The granularity of the loader's mappings: the kernel's page size (4 KiB
/// on x86_64; 4, 16 or 64 KiB on arm64).
fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n)
        .ok()
        .filter(|n| n.is_power_of_two())
        .unwrap_or(4096)
}

/// Frames kept per unwound stack, like the frame-pointer walk's limit.
pub const MAX_FRAMES: usize = 128;

/// A byte range of a mapped file: section data for framehop, kept alive by
/// the mapping it points into.
#[derive(Clone)]
pub struct FileBytes {
    map: Arc<Mmap>,
    range: Range<usize>,
}

impl Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.map[self.range.clone()]
    }
}

/// What unwinding needs from one ELF file.
struct ElfFile {
    map: Arc<Mmap>,
    /// (file offset, vaddr, executable) of each PT_LOAD segment.
    segments: Vec<(u64, u64, bool)>,
    sections: Sections,
}

#[derive(Default, Clone)]
struct Sections {
    text: Option<(Range<u64>, Range<usize>)>,
    eh_frame: Option<(Range<u64>, Range<usize>)>,
    eh_frame_hdr: Option<(Range<u64>, Range<usize>)>,
    got: Option<Range<u64>>,
    debug_frame: Option<Range<usize>>,
}

impl ElfFile {
    fn open(path: &str) -> Option<ElfFile> {
        // The path is the process's: no FIFO, device, symlink or huge file.
        let file = open_untrusted(path, MAX_UNTRUSTED_FILE)?;
        // SAFETY: a read-only private mapping; a file truncated underneath
        // would fault, which is why these are the files a process maps
        // (executables and libraries are replaced by rename, not rewritten).
        let map = unsafe { Mmap::map(&file) }.ok()?;
        let (segments, sections) = {
            let elf = object::File::parse(&*map).ok()?;
            let segments = elf
                .segments()
                .map(|s| {
                    let exec = matches!(
                        s.flags(),
                        object::SegmentFlags::Elf { p_flags } if p_flags & object::elf::PF_X != 0
                    );
                    (s.file_range().0, s.address(), exec)
                })
                .collect();
            let range = |name: &str| {
                let s = elf.section_by_name(name)?;
                let (off, size) = s.file_range()?;
                let addr = s.address();
                Some((addr..addr + size, off as usize..(off + size) as usize))
            };
            let sections = Sections {
                text: range(".text"),
                eh_frame: range(".eh_frame"),
                eh_frame_hdr: range(".eh_frame_hdr"),
                got: elf
                    .section_by_name(".got")
                    .map(|s| s.address()..s.address() + s.size()),
                debug_frame: range(".debug_frame").map(|(_, r)| r),
            };
            (segments, sections)
        };
        let len = map.len();
        let in_file = |r: &Range<usize>| r.start <= r.end && r.end <= len;
        let ok =
            |s: &Option<(Range<u64>, Range<usize>)>| s.as_ref().is_none_or(|(_, r)| in_file(r));
        if !ok(&sections.text)
            || !ok(&sections.eh_frame)
            || !ok(&sections.eh_frame_hdr)
            || !sections.debug_frame.as_ref().is_none_or(in_file)
        {
            return None;
        }
        Some(ElfFile {
            map: Arc::new(map),
            segments,
            sections,
        })
    }

    /// The framehop module for this file mapped at `m`, or `None` if no
    /// loadable segment holds the mapped offset.
    fn module(&self, m: &Mapping, name: &str) -> Option<Module<FileBytes>> {
        // The loader maps a segment from its offset and address rounded down
        // to the page: the mapping at m.start with file offset m.offset is
        // the segment whose rounded offset that is (the executable one, if
        // two start in the same page), and its rounded address lies at
        // m.start. Linkers such as lld place p_vaddr a page or more above
        // p_offset, so offset and address cannot be mixed.
        let base_avma = load_bias(&self.segments, m.start, m.offset)?;
        let bytes = |r: &Range<usize>| FileBytes {
            map: self.map.clone(),
            range: r.clone(),
        };
        let s = &self.sections;
        let info = ExplicitModuleSectionInfo {
            base_svma: 0,
            text_svma: s.text.as_ref().map(|(a, _)| a.clone()),
            text: s.text.as_ref().map(|(_, r)| bytes(r)),
            got_svma: s.got.clone(),
            eh_frame_svma: s.eh_frame.as_ref().map(|(a, _)| a.clone()),
            eh_frame: s.eh_frame.as_ref().map(|(_, r)| bytes(r)),
            eh_frame_hdr_svma: s.eh_frame_hdr.as_ref().map(|(a, _)| a.clone()),
            eh_frame_hdr: s.eh_frame_hdr.as_ref().map(|(_, r)| bytes(r)),
            debug_frame: s.debug_frame.as_ref().map(bytes),
            stubs_svma: None,
            stub_helper_svma: None,
            unwind_info: None,
            text_segment_svma: None,
            text_segment: None,
        };
        Some(Module::new(
            name.to_string(),
            m.start..m.end,
            base_avma,
            info,
        ))
    }
}

/// Where stated address 0 of a file lies in the process, from one of its
/// mappings (start address, file offset) and its PT_LOAD segments.
fn load_bias(segments: &[(u64, u64, bool)], start: u64, offset: u64) -> Option<u64> {
    let page = page_size();
    let page_down = |v: u64| v & !(page - 1);
    let &(_, vaddr, _) = segments
        .iter()
        .filter(|&&(off, _, _)| page_down(off) == offset)
        .max_by_key(|&&(_, _, exec)| exec)?;
    start.checked_sub(page_down(vaddr))
}

/// Unwinders per remembered process, and the files they use.
pub struct Unwinder {
    procs: HashMap<u32, arch::Unwinder<FileBytes>>,
    /// By (device, inode); `None`: not an ELF file we could read.
    files: HashMap<(String, u64), Option<Arc<ElfFile>>>,
    cache: arch::Cache,
}

impl Default for Unwinder {
    fn default() -> Self {
        Self::new()
    }
}

impl Unwinder {
    pub fn new() -> Self {
        Self {
            procs: HashMap::new(),
            files: HashMap::new(),
            cache: arch::Cache::new(),
        }
    }

    /// (Re)builds `pid`'s modules from its maps. `open_path` names the file
    /// to open for a mapping (its `map_files` entry while the process lives).
    pub fn remember(&mut self, pid: u32, maps: &[Mapping], open_path: impl Fn(&Mapping) -> String) {
        let mut unwinder = arch::Unwinder::new();
        for m in maps
            .iter()
            .filter(|m| m.exec && m.path.as_deref().is_some_and(|p| p.starts_with('/')))
        {
            let key = (m.dev.clone(), m.inode);
            let file = self
                .files
                .entry(key)
                .or_insert_with(|| {
                    ElfFile::open(&open_path(m))
                        .or_else(|| ElfFile::open(m.path.as_deref().unwrap_or_default()))
                        .map(Arc::new)
                })
                .clone();
            if let Some(module) =
                file.and_then(|f| f.module(m, m.path.as_deref().unwrap_or_default()))
            {
                unwinder.add_module(module);
            }
        }
        self.procs.insert(pid, unwinder);
    }

    pub fn remembers(&self, pid: u32) -> bool {
        self.procs.contains_key(&pid)
    }

    /// Drops `pid`'s modules, and files no remembered process maps any more.
    pub fn forget(&mut self, pid: u32) {
        if self.procs.remove(&pid).is_some() {
            // Modules hold the file's mapping through their section bytes:
            // a mapping with owners besides its ElfFile is still in use.
            self.files
                .retain(|_, f| f.as_ref().is_none_or(|f| Arc::strong_count(&f.map) > 1));
        }
    }

    /// Unwinds `copy` with `pid`'s modules; `None` if `pid` is not remembered.
    pub fn unwind(&mut self, pid: u32, copy: &UserStackCopy) -> Option<Unwound> {
        let unwinder = self.procs.get(&pid)?;
        Some(unwind_with(unwinder, &mut self.cache, copy))
    }
}

/// `--user-stack`: which walk the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum UserStackMode {
    /// dwarf, falling back to the frame-pointer walk when that one is longer.
    Auto,
    /// Unwind a copy of the stack with .eh_frame/.debug_frame.
    Dwarf,
    /// Frame pointers only (no stack copy).
    Fp,
}

/// Picks the walk to show for `mode`, given the frame-pointer walk (`Err`:
/// errno) and the dwarf unwind if one was made, with a note when dwarf was
/// asked for and not used.
///
/// Both walks start at the same user `ip` (the kernel reads it from the
/// same saved registers): an unwind whose first frame differs came from
/// registers that were not the syscall's, and is not shown.
pub fn choose(
    mode: UserStackMode,
    fp: &Result<Vec<u64>, i64>,
    dwarf: Option<&Unwound>,
) -> (Walk, Option<String>) {
    let fp_frames = fp.as_ref().map_or(&[][..], |v| v.as_slice());
    let Some(d) = dwarf.filter(|_| mode != UserStackMode::Fp) else {
        return (Walk::FramePointers, None);
    };
    let Some(&first) = d.addrs.first() else {
        let why = match &d.end {
            End::Stopped(why) => why.as_str(),
            _ => "no frames",
        };
        return (
            Walk::FramePointers,
            Some(format!("dwarf unwinding not possible: {why}")),
        );
    };
    if fp_frames.first().is_some_and(|&ip| ip != first) {
        return (
            Walk::FramePointers,
            Some(format!(
                "dwarf unwinding skipped: its start {first:#x} is not the frame-pointer walk's {:#x}",
                fp_frames[0]
            )),
        );
    }
    match mode {
        UserStackMode::Auto if fp_frames.len() > d.addrs.len() => (Walk::FramePointers, None),
        _ => (Walk::Dwarf, None),
    }
}

/// Reads 8-byte words of the copy; addresses outside it fail.
fn read_word(copy: &UserStackCopy, addr: u64) -> Result<u64, ()> {
    let off = addr.checked_sub(copy.start).ok_or(())?;
    let off = usize::try_from(off).map_err(|_| ())?;
    let end = off.checked_add(8).ok_or(())?;
    let b = copy.bytes.get(off..end).ok_or(())?;
    Ok(u64::from_le_bytes(b.try_into().map_err(|_| ())?))
}

fn unwind_with(
    unwinder: &arch::Unwinder<FileBytes>,
    cache: &mut arch::Cache,
    copy: &UserStackCopy,
) -> Unwound {
    let stack_end = copy.start.saturating_add(copy.bytes.len() as u64);
    let mut read = |addr: u64| read_word(copy, addr);
    // framehop's own iterator, step by step, to see each frame's frame
    // pointer (the registers after unwinding into a frame are its own).
    let mut regs = arch::regs(copy);
    let mut at = FrameAddress::InstructionPointer(copy.ip);
    let mut addrs = vec![copy.ip];
    let mut fp_slots = Vec::new();
    let end = loop {
        if let Some(s) = slots_below(copy, addrs.len() - 1, arch::fp(&regs)) {
            fp_slots.push(s);
        }
        if addrs.len() >= MAX_FRAMES {
            break End::Stopped(format!("more than {MAX_FRAMES} frames"));
        }
        match unwinder.unwind_frame(at, &mut regs, cache, &mut read) {
            Ok(Some(ret)) => match FrameAddress::from_return_address(ret) {
                Some(next) => {
                    at = next;
                    addrs.push(ret);
                }
                None => break End::Stopped(framehop::Error::ReturnAddressIsNull.to_string()),
            },
            Ok(None) => break End::Complete,
            Err(framehop::Error::CouldNotReadStack(a)) if a >= stack_end => break End::Truncated,
            Err(e) => break End::Stopped(e.to_string()),
        }
    };
    Unwound {
        addrs,
        end,
        fp_slots,
        js: Vec::new(),
    }
}

/// The words below frame `frame`'s frame pointer `fp`, when they lie in the
/// copy and the first looks like a V8 frame's context (a tagged heap
/// pointer: low bit set; native frames rarely keep an odd word there, and
/// the naming checks every object it reads anyway).
fn slots_below(copy: &UserStackCopy, frame: usize, fp: u64) -> Option<FpSlots> {
    let mut below = [0u64; FP_SLOTS];
    for (i, w) in below.iter_mut().enumerate() {
        *w = read_word(copy, fp.checked_sub(8 * (i as u64 + 1))?).ok()?;
    }
    (below[0] & 1 == 1).then_some(FpSlots { frame, fp, below })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(ip: u64, sp: u64, fp: u64, bytes: Vec<u8>) -> UserStackCopy {
        UserStackCopy {
            ip,
            sp,
            fp,
            lr: 0,
            start: sp,
            status: 0,
            bytes,
        }
    }

    fn own_unwinder() -> Unwinder {
        let pid = std::process::id();
        let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("own maps");
        let maps = crate::enrich::maps::parse_maps(&text);
        let mut u = Unwinder::new();
        u.remember(pid, &maps, |m| m.path.clone().unwrap_or_default());
        u
    }

    fn unwound(addrs: &[u64], end: End) -> Unwound {
        Unwound {
            addrs: addrs.to_vec(),
            end,
            fp_slots: Vec::new(),
            js: Vec::new(),
        }
    }

    #[test]
    fn choice_of_walk() {
        use UserStackMode::*;
        let fp2 = Ok(vec![0x10, 0x20]);
        let d5 = unwound(&[0x10, 0x20, 0x30, 0x40, 0x50], End::Complete);
        let d1 = unwound(&[0x10], End::Stopped("no unwind info".into()));
        assert_eq!(choose(Auto, &fp2, Some(&d5)), (Walk::Dwarf, None));
        assert_eq!(choose(Dwarf, &fp2, Some(&d5)), (Walk::Dwarf, None));
        assert_eq!(choose(Fp, &fp2, Some(&d5)), (Walk::FramePointers, None));
        // auto keeps the longer walk; dwarf keeps dwarf.
        assert_eq!(choose(Auto, &fp2, Some(&d1)), (Walk::FramePointers, None));
        assert_eq!(choose(Dwarf, &fp2, Some(&d1)), (Walk::Dwarf, None));
        // Equal length: dwarf (it knows where the stack ends).
        let d2 = unwound(&[0x10, 0x21], End::Complete);
        assert_eq!(choose(Auto, &fp2, Some(&d2)), (Walk::Dwarf, None));
        // No copy (fp mode, or the kernel could not make one).
        assert_eq!(choose(Auto, &fp2, None), (Walk::FramePointers, None));
        // A frame-pointer walk that failed does not block dwarf.
        assert_eq!(choose(Auto, &Err(14), Some(&d5)), (Walk::Dwarf, None));
    }

    #[test]
    fn unusable_unwinds_fall_back_with_a_note() {
        let fp = Ok(vec![0x10, 0x20]);
        let other_start = unwound(&[0x99, 0x20, 0x30], End::Complete);
        let (walk, note) = choose(UserStackMode::Dwarf, &fp, Some(&other_start));
        assert_eq!(walk, Walk::FramePointers);
        assert!(note.expect("note").contains("0x99"));
        let empty = unwound(&[], End::Stopped("no user registers".into()));
        let (walk, note) = choose(UserStackMode::Auto, &fp, Some(&empty));
        assert_eq!(walk, Walk::FramePointers);
        assert_eq!(
            note.as_deref(),
            Some("dwarf unwinding not possible: no user registers")
        );
    }

    #[test]
    fn load_bias_of_gnu_ld_and_lld_layouts() {
        // GNU ld: offsets and addresses of segments agree.
        let ld = [
            (0, 0, false),
            (0x1000, 0x1000, true),
            (0x2000, 0x2000, false),
        ];
        assert_eq!(
            load_bias(&ld, 0x5555_5555_5000, 0x1000),
            Some(0x5555_5555_4000)
        );
        // lld (this repository's Rust binaries): the executable segment's
        // address is a page above its offset, and the read-only segment
        // before it ends in the same page its offset rounds down to.
        let lld = [
            (0, 0, false),
            (0x3ec70, 0x3fc70, true),
            (0x1171d0, 0x1191d0, false),
        ];
        assert_eq!(
            load_bias(&lld, 0x5555_5559_3000, 0x3e000),
            Some(0x5555_5555_4000)
        );
        // A mapping no segment starts in: no module rather than a wrong one.
        assert_eq!(load_bias(&lld, 0x5555_5559_3000, 0x7000), None);
        assert_eq!(load_bias(&ld, 0x500, 0x1000), None);
    }

    #[test]
    fn words_are_read_only_inside_the_copy() {
        let c = copy(0, 0x1000, 0, (0u8..16).collect());
        assert_eq!(
            read_word(&c, 0x1000),
            Ok(u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7]))
        );
        assert_eq!(
            read_word(&c, 0x1008),
            Ok(u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15]))
        );
        assert_eq!(read_word(&c, 0x1009), Err(()));
        assert_eq!(read_word(&c, 0xfff), Err(()));
        assert_eq!(read_word(&c, u64::MAX), Err(()));
    }

    /// The kernel copies from a little below `sp` (Go on arm64 keeps its
    /// caller's frame record at SP-8): words there are read from the copy.
    #[test]
    fn words_below_sp_are_read_from_a_copy_that_starts_below_it() {
        let c = UserStackCopy {
            start: 0x1000 - 16,
            ..copy(0, 0x1000, 0, (0u8..32).collect())
        };
        assert_eq!(
            read_word(&c, 0x1000 - 8),
            Ok(u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15]))
        );
        assert_eq!(
            read_word(&c, 0x1000),
            Ok(u64::from_le_bytes([16, 17, 18, 19, 20, 21, 22, 23]))
        );
        assert_eq!(read_word(&c, 0x1000 - 17), Err(()));
    }

    #[test]
    fn unknown_pid_is_none() {
        let mut u = Unwinder::new();
        assert_eq!(u.unwind(12345, &copy(1, 2, 3, vec![0; 64])), None);
    }

    /// The unwinder is fed whatever the kernel copied: registers and bytes
    /// of a thread that may have been doing anything. Garbage must give a
    /// short stack or an error, never a panic or a hang.
    #[test]
    fn garbage_registers_and_stack_bytes_never_panic() {
        let mut u = own_unwinder();
        let pid = std::process::id();
        let text_addr = garbage_registers_and_stack_bytes_never_panic as fn() as usize as u64;
        // xorshift: reproducible without a dependency.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..2000 {
            let len = (next() % 4096) as usize & !7;
            let sp = 0x7ffd_0000_0000 + (next() % 0x10000) * 8;
            let mut bytes = vec![0u8; len];
            for chunk in bytes.chunks_mut(8) {
                // Mix in plausible code and stack addresses so the walk goes
                // somewhere before it fails.
                let w = match next() % 4 {
                    0 => text_addr.wrapping_add(next() % 0x4000),
                    1 => sp.wrapping_add(next() % 4096),
                    _ => next(),
                };
                chunk.copy_from_slice(&w.to_le_bytes()[..chunk.len()]);
            }
            let ip = if round % 2 == 0 {
                text_addr + next() % 256
            } else {
                next()
            };
            let c = copy(ip, sp, next(), bytes);
            let got = u.unwind(pid, &c).expect("remembered");
            assert!(got.addrs.len() <= MAX_FRAMES);
            assert!(!got.addrs.is_empty(), "the ip is always the first frame");
        }
    }

    #[test]
    fn forget_drops_files_nobody_maps() {
        let mut u = own_unwinder();
        let pid = std::process::id();
        assert!(u.remembers(pid));
        assert!(u.files.values().any(|f| f.is_some()));
        // A second process mapping the same files keeps them.
        let maps = crate::enrich::maps::parse_maps(
            &std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("own maps"),
        );
        u.remember(u32::MAX, &maps, |m| m.path.clone().unwrap_or_default());
        let files = u.files.values().filter(|f| f.is_some()).count();
        u.forget(pid);
        assert_eq!(u.files.values().filter(|f| f.is_some()).count(), files);
        u.forget(u32::MAX);
        assert!(!u.remembers(std::process::id()));
        assert!(u.files.values().all(|f| f.is_none()));
    }
}
