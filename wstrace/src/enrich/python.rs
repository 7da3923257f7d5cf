//! Python frames in close stacks (CPython 3.10 to 3.13).
//!
//! At the close the kernel copies the closing thread's interpreter frame
//! chain as (code object, instruction pointer) pairs (wstrace-ebpf
//! `interp.rs`); here the code objects are read from the process's memory
//! and named: function (`co_qualname`), file (`co_filename`) and line
//! (`co_linetable`, decoded by [`line_of`]). The frames then replace the
//! `_PyEval_EvalFrameDefault` frames that ran them ([`splice`]).
//!
//! Where things are: `_PyRuntime` and `PyCode_Type` are symbols of the
//! interpreter binary (or `libpython3.X.so`), found at the first sight of
//! the process; struct offsets come from a per-version table ([`LAYOUTS`],
//! from each version's own headers), because Debian's and Ubuntu's
//! interpreters carry no debug info. 3.13 also describes itself: its
//! `_PyRuntime` starts with `_Py_DebugOffsets`, which is read from the
//! binary and, once it passes [`apply_debug_offsets`], wins over the table
//! (a point release that moved a field is still read right; one that
//! fails the checks is refused, never read with guessed offsets).
//!
//! Everything read here belongs to a process that may be hostile: every
//! read is bounded (names to [`MAX_NAME`] characters, line tables to
//! [`MAX_LINETABLE`] bytes), a frame whose code object is not of the type
//! `PyCode_Type` is shown as such, and the whole naming stops at a deadline.
use std::time::Instant;

use object::{Object as _, ObjectSection as _, ObjectSegment as _, ObjectSymbol as _};
use wstrace_common::{ABSENT, INTERP_WINDOW_MAX, InterpConfig};

use super::maps::{MAX_UNTRUSTED_FILE, Mapping, open_untrusted, read_maps};
use super::procmem::{Mem, name_each};
use crate::model::{Frame, InterpCapture, Language};

/// Characters of a function or file name kept.
pub const MAX_NAME: usize = 512;
/// Bytes of a code object's line table read.
pub const MAX_LINETABLE: usize = 256 * 1024;

/// What a bit of the kernel's entry mask says about frame i.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMark {
    /// 3.11: frame i is the outermost of its interpreter loop call
    /// (`is_entry`).
    Outermost,
    /// 3.12+: frame i is the shim frame (`owner == FRAME_OWNED_BY_CSTACK`)
    /// each loop call pushes first: no code of its own, it is dropped and
    /// the frame before it is the outermost of that call.
    Shim,
    /// 3.10: no mask; every frame has an interpreter loop call of its own.
    EveryFrame,
}

/// Where one CPython version keeps what the kernel walk and the naming read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub version: (u32, u32),
    /// The kernel walk (`runtime` is filled per process).
    pub walk: InterpConfig,
    pub entry_mark: EntryMark,
    /// 3.10: the frame's instruction word is `f_lasti` (an `int`, the
    /// index of the last instruction, -1 before the first) and the line
    /// table is 3.10's ([`line_of_310`]); 3.11+: a pointer into the
    /// code ([`line_of`]).
    pub lasti: bool,
    pub ob_type: u64,
    pub co_firstlineno: u64,
    pub co_filename: u64,
    /// `co_qualname` (3.10, which has none: `co_name`).
    pub co_qualname: u64,
    pub co_linetable: u64,
    /// Where the instructions start (`_PyCode_CODE`).
    pub co_code: u64,
    /// `PyASCIIObject.length` and `.state`, and the sizes of the compact
    /// (ASCII / other) string headers after which the characters follow.
    pub str_length: u64,
    pub str_state: u64,
    pub str_ascii_size: u64,
    pub str_compact_size: u64,
    /// `PyVarObject.ob_size`, `PyBytesObject.ob_sval`.
    pub ob_size: u64,
    pub bytes_sval: u64,
}

/// `FRAME_OWNED_BY_CSTACK` (3.12, 3.13 `pycore_frame.h`).
const FRAME_OWNED_BY_CSTACK: u64 = 3;

/// 3.12 and 3.13 share `_PyInterpreterFrame`'s first 72 bytes (code
/// object 0, previous 8, instruction pointer 56, owner 70) and the code
/// object and string fields the naming reads; they differ in where the
/// innermost frame hangs off the thread state (3.12 through `cframe`).
const FRAME_312: InterpConfig = InterpConfig {
    runtime: 0,
    interp_head: 0,
    threads_head: 0,
    tstate_next: 8,
    tstate_tid: 0,
    tstate_frame_ptr: 0,
    frame_ptr_current: ABSENT,
    // f_code (3.13: f_executable) 0, previous 8, prev_instr (3.13:
    // instr_ptr) 56, owner 70: one window of 72 bytes from the frame.
    frame_window: 0,
    code: 0,
    previous: 8,
    instr: 56,
    entry: 70,
    entry_value: FRAME_OWNED_BY_CSTACK,
    window_len: 72,
    main_thread: ABSENT,
};

/// Offsets per version, from the version's own headers (`Include/internal`
/// of Ubuntu jammy's libpython3.10-dev, Debian's libpython3.11-dev, Ubuntu noble's libpython3.12-dev, Debian
/// trixie's libpython3.13-dev, by `offsetof`), x86_64; the same on arm64,
/// where every field before these is a pointer or an 8-byte integer too
/// (not run there).
pub const LAYOUTS: &[Layout] = &[
    Layout {
        version: (3, 10),
        walk: InterpConfig {
            runtime: 0,
            // _PyRuntimeState.interpreters.head, PyInterpreterState
            // .tstate_head, PyThreadState.next, .thread_id (a pthread_t:
            // 3.10 has no native_thread_id), .frame (a PyFrameObject).
            interp_head: 32,
            threads_head: 8,
            tstate_next: 8,
            tstate_tid: 176,
            tstate_frame_ptr: 24,
            frame_ptr_current: ABSENT,
            // PyFrameObject: f_back 24, f_code 32, f_lasti 96 (the low
            // half of its word); read as one window from f_back.
            frame_window: 24,
            code: 8,
            previous: 0,
            instr: 72,
            entry: ABSENT,
            entry_value: 0,
            window_len: 80,
            // _PyRuntimeState.main_thread
            main_thread: 72,
        },
        entry_mark: EntryMark::EveryFrame,
        lasti: true,
        ob_type: 8,
        co_firstlineno: 40,
        co_filename: 104,
        co_qualname: 112,
        co_linetable: 120,
        co_code: 0,
        str_length: 16,
        str_state: 32,
        str_ascii_size: 48,
        str_compact_size: 72,
        ob_size: 16,
        bytes_sval: 32,
    },
    Layout {
        version: (3, 11),
        walk: InterpConfig {
            runtime: 0,
            // _PyRuntimeState.interpreters.head
            interp_head: 40,
            // PyInterpreterState.threads.head
            threads_head: 16,
            // PyThreadState.next, .native_thread_id, .cframe
            tstate_next: 8,
            tstate_tid: 160,
            tstate_frame_ptr: 56,
            // _PyCFrame.current_frame
            frame_ptr_current: 8,
            // _PyInterpreterFrame: f_code 32, previous 48, prev_instr 56,
            // is_entry 68; read as one window from f_code.
            frame_window: 32,
            code: 0,
            previous: 16,
            instr: 24,
            entry: 36,
            entry_value: 1,
            window_len: 64,
            main_thread: ABSENT,
        },
        entry_mark: EntryMark::Outermost,
        lasti: false,
        ob_type: 8,
        co_firstlineno: 72,
        co_filename: 112,
        co_qualname: 128,
        co_linetable: 136,
        co_code: 184,
        str_length: 16,
        str_state: 32,
        str_ascii_size: 48,
        str_compact_size: 72,
        ob_size: 16,
        bytes_sval: 32,
    },
    Layout {
        version: (3, 12),
        walk: InterpConfig {
            // _PyRuntimeState.interpreters.head, PyInterpreterState
            // .threads.head, PyThreadState.native_thread_id, .cframe,
            // _PyCFrame.current_frame.
            interp_head: 40,
            threads_head: 72,
            tstate_tid: 144,
            tstate_frame_ptr: 56,
            frame_ptr_current: 0,
            ..FRAME_312
        },
        entry_mark: EntryMark::Shim,
        lasti: false,
        ob_type: 8,
        co_firstlineno: 68,
        co_filename: 112,
        co_qualname: 128,
        co_linetable: 136,
        co_code: 192,
        // No `wstr` since 3.12: the headers are 16 bytes shorter.
        str_length: 16,
        str_state: 32,
        str_ascii_size: 40,
        str_compact_size: 56,
        ob_size: 16,
        bytes_sval: 32,
    },
    Layout {
        version: (3, 13),
        walk: InterpConfig {
            // As above; PyThreadState.current_frame is the frame itself.
            interp_head: 632,
            threads_head: 7344,
            tstate_tid: 160,
            tstate_frame_ptr: 72,
            frame_ptr_current: ABSENT,
            ..FRAME_312
        },
        entry_mark: EntryMark::Shim,
        lasti: false,
        ob_type: 8,
        co_firstlineno: 68,
        co_filename: 112,
        co_qualname: 128,
        co_linetable: 136,
        co_code: 200,
        str_length: 16,
        str_state: 32,
        str_ascii_size: 40,
        str_compact_size: 56,
        ob_size: 16,
        bytes_sval: 32,
    },
];

/// Bytes of 3.13's `_Py_DebugOffsets` (3.13.5 `pycore_runtime.h`).
pub const DEBUG_OFFSETS_SIZE: usize = 584;

/// The largest struct size the debug offsets may claim (the interpreter
/// state, the largest, is 190 KiB in 3.13.5).
const MAX_STRUCT: u64 = 1 << 20;

/// The table's `layout` with the offsets 3.13's `_Py_DebugOffsets` (`raw`,
/// the start of `_PyRuntime` in the binary) gives, or why not. Read as
/// 3.13 lays it out (cookie, version, free_threaded, then sections of u64
/// each starting with the struct's size); every offset used must lie in
/// its struct, the frame's in the kernel's window, and the string header
/// the table derives the compact size from must agree with the table: any
/// other value is refused, not guessed around.
pub fn apply_debug_offsets(table: &Layout, raw: &[u8]) -> Result<Layout, String> {
    let raw = raw
        .get(..DEBUG_OFFSETS_SIZE)
        .ok_or("_Py_DebugOffsets: shorter than 3.13's")?;
    if &raw[..8] != b"xdebugpy" {
        return Err("_Py_DebugOffsets: no \"xdebugpy\" cookie at _PyRuntime".into());
    }
    let at = |o: usize| u64::from_le_bytes(raw[o..o + 8].try_into().unwrap_or([0; 8]));
    let version = at(8);
    let (major, minor) = ((version >> 24) as u32, (version >> 16 & 0xff) as u32);
    if (major, minor) != table.version {
        return Err(format!(
            "_Py_DebugOffsets: version {version:#x}, not {}.{}",
            table.version.0, table.version.1
        ));
    }
    if at(16) != 0 {
        return Err("a free-threaded build: its objects are laid out differently".into());
    }
    // A field of the struct whose section starts (with its size) at `sec`.
    let field = |sec: usize, o: usize, what: &str| -> Result<u64, String> {
        let (size, off) = (at(sec), at(o));
        if size > MAX_STRUCT || off.checked_add(8).is_none_or(|end| end > size) {
            return Err(format!(
                "_Py_DebugOffsets: {what} at {off} outside its struct of {size} bytes"
            ));
        }
        Ok(off)
    };
    // The fixed part of every object: a misread struct shows here first.
    if (at(352), at(360)) != (16, table.ob_type) {
        return Err("_Py_DebugOffsets: PyObject is not 16 bytes with ob_type at 8".into());
    }
    let mut l = *table;
    let w = &mut l.walk;
    w.interp_head = field(24, 40, "runtime.interpreters_head")?;
    w.threads_head = field(48, 72, "interpreter.threads_head")?;
    w.tstate_next = field(152, 168, "thread.next")?;
    w.tstate_frame_ptr = field(152, 184, "thread.current_frame")?;
    w.tstate_tid = field(152, 200, "thread.native_thread_id")?;
    w.frame_ptr_current = ABSENT;
    w.frame_window = 0;
    w.previous = field(224, 232, "frame.previous")?;
    w.code = field(224, 240, "frame.executable")?;
    w.instr = field(224, 248, "frame.instr_ptr")?;
    // `owner` is a char: its struct need hold one byte of it, not 8.
    w.entry = at(264);
    if w.entry >= at(224) {
        return Err("_Py_DebugOffsets: frame.owner outside its struct".into());
    }
    for (what, o) in [
        ("previous", w.previous),
        ("executable", w.code),
        ("instr_ptr", w.instr),
    ] {
        if o % 8 != 0 || o + 8 > INTERP_WINDOW_MAX {
            return Err(format!(
                "_Py_DebugOffsets: frame.{what} at {o}, beyond the {INTERP_WINDOW_MAX} bytes the kernel reads"
            ));
        }
    }
    if w.entry >= INTERP_WINDOW_MAX {
        return Err("_Py_DebugOffsets: frame.owner beyond the bytes the kernel reads".into());
    }
    w.window_len = [w.previous + 8, w.code + 8, w.instr + 8, w.entry + 1]
        .into_iter()
        .max()
        .unwrap_or(INTERP_WINDOW_MAX);
    l.co_filename = field(272, 280, "code.filename")?;
    l.co_qualname = field(272, 296, "code.qualname")?;
    l.co_linetable = field(272, 304, "code.linetable")?;
    // An int: 4 bytes of it (the struct has more after it).
    l.co_firstlineno = field(272, 312, "code.firstlineno")?;
    l.co_code = field(272, 344, "code.co_code_adaptive")?;
    l.ob_size = field(512, 520, "bytes.ob_size")?;
    l.bytes_sval = field(512, 528, "bytes.ob_sval")?;
    // The compact header's size is not in the debug offsets: the table's,
    // valid only while the ASCII header is the table's.
    let (state, length, ascii) = (at(544), at(552), at(560));
    if (state, length, ascii) != (table.str_state, table.str_length, table.str_ascii_size) {
        return Err(format!(
            "_Py_DebugOffsets: str header (state {state}, length {length}, size {ascii}) differs from {}.{}'s",
            table.version.0, table.version.1
        ));
    }
    Ok(l)
}

/// A Python process found: its layout, and where its interpreter keeps the
/// runtime state and the code object type.
#[derive(Clone, Debug)]
pub struct Found {
    pub layout: Layout,
    /// The kernel walk, `runtime` filled in.
    pub walk: InterpConfig,
    pub code_type: u64,
}

/// `python3.11`, `libpython3.11.so.1.0`, `libpython3.11d.so` -> (3, 11).
pub fn version_of(path: &str) -> Option<(u32, u32)> {
    let base = path.rsplit('/').next()?;
    let rest = base
        .strip_prefix("libpython")
        .or_else(|| base.strip_prefix("python"))?;
    let (major, rest) = rest.split_once('.')?;
    let minor: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let after = &rest[minor.len()..];
    // `python3.11` or a library; not `python3.11-config`.
    if !(after.is_empty() || after.starts_with(".so") || after.starts_with("d.so")) {
        return None;
    }
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Looks for a CPython interpreter this build knows in `pid`'s mappings:
/// `None` for any other process (or a version without a layout),
/// `Some(Err(why))` for one this build knows but must not read (its
/// self-description failed the checks).
pub fn find(pid: u32) -> Option<Result<Found, String>> {
    let maps = read_maps(pid)?;
    find_in(pid, &maps)
}

fn find_in(pid: u32, maps: &[Mapping]) -> Option<Result<Found, String>> {
    // A library wins over the executable (an embedding program, or a
    // `--enable-shared` build, whose `python3.11` holds no interpreter).
    let mut candidates: Vec<&Mapping> = maps
        .iter()
        .filter(|m| m.path.as_deref().and_then(version_of).is_some())
        .collect();
    candidates.sort_by_key(|m| {
        !m.path
            .as_deref()
            .is_some_and(|p| p.rsplit('/').next().unwrap_or("").starts_with("lib"))
    });
    for m in candidates {
        let path = m.path.as_deref()?;
        let version = version_of(path)?;
        let Some(layout) = LAYOUTS.iter().find(|l| l.version == version) else {
            continue;
        };
        // The file as the process mapped it, whatever its path now holds.
        let file = open_untrusted(&super::maps::map_files_path(pid, m), MAX_UNTRUSTED_FILE)?;
        // SAFETY: read-only private map of a regular file; a process that
        // truncates it under us makes reads fault, which memmap2 documents:
        // the same risk every ELF reader of the symbolizer takes.
        let map = unsafe { memmap2::Mmap::map(&file) }.ok()?;
        let elf = object::File::parse(&*map).ok()?;
        let sym = |name: &str| {
            elf.dynamic_symbols()
                .chain(elf.symbols())
                .find(|s| s.name() == Ok(name))
                .map(|s| s.address())
        };
        let (Some(runtime), Some(code_type)) = (sym("_PyRuntime"), sym("PyCode_Type")) else {
            continue;
        };
        let layout = if version >= (3, 13) {
            let raw = file_bytes(&elf, runtime, DEBUG_OFFSETS_SIZE).unwrap_or_default();
            match apply_debug_offsets(layout, raw) {
                Ok(l) => l,
                Err(why) => {
                    return Some(Err(format!(
                        "python {}.{} ({path}): {why}",
                        version.0, version.1
                    )));
                }
            }
        } else {
            *layout
        };
        let bias = bias_of(&elf, maps, m)?;
        let mut walk = layout.walk;
        walk.runtime = runtime.wrapping_add(bias);
        return Some(Ok(Found {
            layout,
            walk,
            code_type: code_type.wrapping_add(bias),
        }));
    }
    None
}

/// `len` bytes of the file's initialised data at address `addr`.
fn file_bytes<'a>(elf: &object::File<'a>, addr: u64, len: usize) -> Option<&'a [u8]> {
    elf.sections()
        .find(|s| s.address() <= addr && addr < s.address().saturating_add(s.size()))?
        .data_range(addr, len as u64)
        .ok()
        .flatten()
}

/// Where the file's address 0 lies in the process: its mapping of file
/// offset 0 (the first `PT_LOAD`) less that segment's page-rounded address.
pub(super) fn bias_of(elf: &object::File<'_>, maps: &[Mapping], m: &Mapping) -> Option<u64> {
    let first = maps
        .iter()
        .filter(|x| x.path == m.path && x.inode == m.inode && x.dev == m.dev && x.offset == 0)
        .map(|x| x.start)
        .min()?;
    let vaddr = elf
        .segments()
        .filter(|s| s.file_range().0 == 0)
        .map(|s| s.address())
        .min()?;
    first.checked_sub(vaddr & !0xfff)
}

/// Decodes a CPython 3.10 line table (`Objects/lnotab_notes.txt`): the
/// line of code unit `index` of a code object starting at `first_line`.
/// Pairs of (bytes of code, signed line delta; -128: no line), as
/// `PyCode_Addr2Line` walks them: empty ranges only move the line. `None`
/// when the instruction has no line or the table does not cover it.
pub fn line_of_310(table: &[u8], first_line: i32, index: u64) -> Option<u32> {
    let addr = index.checked_mul(2)?;
    let mut line = first_line as i64;
    let mut end = 0u64;
    for pair in table.chunks_exact(2) {
        let start = end;
        end += pair[0] as u64;
        let delta = pair[1] as i8;
        let this = if delta == -128 {
            None
        } else {
            line += delta as i64;
            Some(line)
        };
        if start <= addr && addr < end {
            return this
                .filter(|l| *l > 0 && *l <= u32::MAX as i64)
                .map(|l| l as u32);
        }
    }
    None
}

/// Decodes a CPython 3.11+ location table (`Objects/locations.md`, the
/// same in 3.12 and 3.13): the line
/// of code unit `index` of a code object starting at `first_line`. `None`
/// when the table says the instruction has no line or does not cover it.
pub fn line_of(table: &[u8], first_line: i32, index: u64) -> Option<u32> {
    let mut pos = 0usize;
    let mut line = first_line as i64;
    let mut unit = 0u64;
    let byte = |p: &mut usize| -> Option<u8> {
        let b = *table.get(*p)?;
        *p += 1;
        Some(b)
    };
    let varint = |p: &mut usize| -> Option<u64> {
        let mut b = byte(p)?;
        let mut v = (b & 63) as u64;
        let mut shift = 0;
        while b & 64 != 0 {
            b = byte(p)?;
            shift += 6;
            if shift > 60 {
                return None;
            }
            v |= ((b & 63) as u64) << shift;
        }
        Some(v)
    };
    let svarint = |p: &mut usize| -> Option<i64> {
        let v = varint(p)?;
        Some(if v & 1 != 0 {
            -((v >> 1) as i64)
        } else {
            (v >> 1) as i64
        })
    };
    while pos < table.len() {
        let head = byte(&mut pos)?;
        if head & 0x80 == 0 {
            return None;
        }
        let code = (head >> 3) & 15;
        let len = (head & 7) as u64 + 1;
        let has_line = match code {
            15 => false,
            14 => {
                line += svarint(&mut pos)?;
                varint(&mut pos)?; // end line delta
                varint(&mut pos)?; // column + 1
                varint(&mut pos)?; // end column + 1
                true
            }
            13 => {
                line += svarint(&mut pos)?;
                true
            }
            // One-line forms: line delta 0, 1 or 2, then start and end column.
            10..=12 => {
                line += code as i64 - 10;
                byte(&mut pos)?;
                byte(&mut pos)?;
                true
            }
            _ => {
                byte(&mut pos)?;
                true
            }
        };
        if index < unit + len {
            return (has_line && line > 0 && line <= u32::MAX as i64).then_some(line as u32);
        }
        unit += len;
    }
    None
}

/// A `str` object's text, at most [`MAX_NAME`] characters.
fn string(mem: &Mem, l: &Layout, obj: u64) -> Option<String> {
    let head = mem.bytes(obj, l.str_compact_size as usize)?;
    let at = |o: u64| {
        u64::from_ne_bytes(
            head[o as usize..o as usize + 8]
                .try_into()
                .unwrap_or([0; 8]),
        )
    };
    let length = (at(l.str_length) as usize).min(MAX_NAME);
    let state = at(l.str_state) as u32;
    let (kind, compact, ascii) = ((state >> 2) & 7, state >> 5 & 1 != 0, state >> 6 & 1 != 0);
    if !compact {
        return None;
    }
    let data = obj.wrapping_add(if ascii {
        l.str_ascii_size
    } else {
        l.str_compact_size
    });
    let width = match kind {
        1 | 2 | 4 => kind as usize,
        _ => return None,
    };
    let raw = mem.bytes(data, length * width)?;
    Some(
        raw.chunks_exact(width)
            .map(|c| {
                let mut v = [0u8; 4];
                v[..width].copy_from_slice(c);
                char::from_u32(u32::from_le_bytes(v)).unwrap_or('\u{fffd}')
            })
            .collect(),
    )
}

/// The kernel's frames and entry mask in 3.11's terms (mask bit i: frame i
/// is the outermost of its interpreter loop call): for 3.12+ the shim
/// frames the mask marks are dropped and the frame inside each marked.
pub fn entries(mark: EntryMark, cap: &InterpCapture) -> (Vec<(u64, u64)>, u32) {
    match mark {
        EntryMark::Outermost => (cap.frames.clone(), cap.entry_mask),
        EntryMark::EveryFrame => (cap.frames.clone(), u32::MAX),
        EntryMark::Shim => {
            let mut frames = Vec::with_capacity(cap.frames.len());
            let mut mask = 0u32;
            for (i, f) in cap.frames.iter().enumerate() {
                if i < 32 && cap.entry_mask & (1 << i) != 0 {
                    if let Some(inner) = frames.len().checked_sub(1) {
                        mask |= 1 << inner;
                    }
                } else {
                    frames.push(*f);
                }
            }
            (frames, mask)
        }
    }
}

/// Names `frames` (code object, instruction pointer) of process `pid`,
/// innermost first. A frame that cannot be named is kept, unnamed, with
/// the reason.
pub fn name_frames(
    pid: u32,
    found: &Found,
    frames: &[(u64, u64)],
    deadline: Instant,
) -> Vec<Frame> {
    let l = &found.layout;
    name_each(
        pid,
        deadline,
        Language::Python,
        frames,
        |mem, (code, instr), f| {
            // A pointer into anything but a code object names nothing.
            if mem.word(code.wrapping_add(l.ob_type)) != Some(found.code_type) {
                return;
            }
            f.function = mem
                .word(code.wrapping_add(l.co_qualname))
                .and_then(|s| string(mem, l, s));
            f.file = mem
                .word(code.wrapping_add(l.co_filename))
                .and_then(|s| string(mem, l, s));
            let first = mem
                .bytes(code.wrapping_add(l.co_firstlineno), 4)
                .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
            let index = if l.lasti {
                // Before the first instruction (-1): its first line.
                let lasti = instr as u32 as i32;
                u64::try_from(lasti).ok()
            } else {
                // Before the first instruction (a frame not started): its
                // first line.
                instr
                    .checked_sub(code.wrapping_add(l.co_code))
                    .map(|d| d / 2)
            };
            f.line = match (first, index) {
                (Some(first), None) => u32::try_from(first).ok(),
                (Some(first), Some(i)) => mem
                    .word(code.wrapping_add(l.co_linetable))
                    .and_then(|t| {
                        let n = mem.word(t.wrapping_add(l.ob_size))? as usize;
                        mem.bytes(t.wrapping_add(l.bytes_sval), n.min(MAX_LINETABLE))
                    })
                    .and_then(|t| {
                        if l.lasti {
                            line_of_310(&t, first, i)
                        } else {
                            line_of(&t, first, i)
                        }
                    }),
                _ => None,
            };
        },
    )
}

/// [`walk_note`] for a Python `found`: 3.10's thread states name no
/// kernel thread, so a close by another thread than the main one has none.
pub fn python_note(found: &Found, status: u32, frames: usize) -> Option<String> {
    if found.walk.main_thread != ABSENT && status == wstrace_common::interp::NO_THREAD {
        return Some(
            "python frames: none: CPython 3.10's thread states name no kernel thread, so only the main thread's closes are walked"
                .into(),
        );
    }
    walk_note(status, frames)
}

/// What the text and JSON say about a walk that did not simply reach the
/// outermost frame (`wstrace_common::interp` status); `None` when it did,
/// or when there was no walk.
pub fn walk_note(status: u32, frames: usize) -> Option<String> {
    use wstrace_common::interp;
    Some(match status {
        interp::TRUNCATED => {
            format!("python frames: the innermost {frames} copied, the chain goes on")
        }
        interp::NO_THREAD => format!(
            "python frames: none: the closing thread has no Python thread state among the first {}",
            wstrace_common::INTERP_THREADS
        ),
        interp::READ_FAILED => format!(
            "python frames: the frame chain ended at an unreadable pointer after {frames} frame{}",
            if frames == 1 { "" } else { "s" }
        ),
        interp::LOOP => format!(
            "python frames: the frame chain loops after {frames} frame{}; walk stopped",
            if frames == 1 { "" } else { "s" }
        ),
        _ => return None,
    })
}

/// Is `f` the interpreter loop's own native frame?
pub fn is_eval_loop(f: &Frame) -> bool {
    f.is_python_eval_loop()
}

/// Puts the Python frames `py` (innermost first; `entry_mask` bit i: frame
/// i is the outermost frame of its interpreter loop call) in place: each
/// run of them just inside the `_PyEval_EvalFrameDefault` frame of
/// `native` that ran it, which stays (the full stack is every native frame;
/// the compact text drops the loop's). Frames left over (a native walk that
/// stopped early) go after the last native frame.
///
/// `is_loop` names the interpreter loop's frame (PHP: `execute_ex`, whose
/// frames carry no entry mask: all go inside the innermost).
pub fn splice(
    native: &[Frame],
    py: Vec<Frame>,
    entry_mask: u32,
    is_loop: fn(&Frame) -> bool,
) -> Vec<Frame> {
    let mut out = Vec::with_capacity(native.len() + py.len());
    let mut py = py.into_iter().enumerate().peekable();
    for n in native {
        if is_loop(n) {
            for (i, f) in py.by_ref() {
                out.push(f);
                if i < 32 && entry_mask & (1 << i) != 0 {
                    break;
                }
            }
        }
        out.push(n.clone());
    }
    out.extend(py.map(|(_, f)| f));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::FrameKind;

    #[test]
    fn versions_from_interpreter_paths() {
        assert_eq!(version_of("/usr/bin/python3.11"), Some((3, 11)));
        assert_eq!(
            version_of("/usr/lib/x86_64-linux-gnu/libpython3.12.so.1.0"),
            Some((3, 12))
        );
        assert_eq!(version_of("/opt/libpython3.13d.so"), Some((3, 13)));
        assert_eq!(version_of("/usr/bin/python3.13"), Some((3, 13)));
        assert_eq!(version_of("/usr/bin/python3.12"), Some((3, 12)));
        assert_eq!(version_of("/usr/bin/python3.10"), Some((3, 10)));
        assert_eq!(
            version_of("/usr/lib/x86_64-linux-gnu/libpython3.13.so.1.0"),
            Some((3, 13))
        );
        assert_eq!(version_of("/usr/bin/python3.11-config"), None);
        assert_eq!(version_of("/usr/bin/python3"), None);
        assert_eq!(version_of("/usr/bin/pythonista"), None);
    }

    /// Entries as CPython 3.11 writes them (`Python/compile.c`
    /// `write_location_*`).
    #[test]
    fn location_table_lines() {
        // def f():        (first line 10)
        //   RESUME         no location (code 15), 1 unit
        //   x = 1          line 11: no-column form (13), delta +1, 2 units
        //   g()            line 12: one-line form (11), delta +1, cols, 3 units
        //   return         line 12: short form (0), 1 unit
        //   (one-line)     line 12: code 10, delta 0, cols; 1 unit
        //   (long form)    line 40: code 14, delta +28, end 0, cols 1, 5; 1 unit
        let t = [
            0x80 | 15 << 3,
            0x80 | 13 << 3 | 1,
            2, // svarint +1
            0x80 | 11 << 3 | 2,
            4,
            9,
            0x80,
            0x05,
            0x80 | 10 << 3,
            1,
            7,
            0x80 | 14 << 3,
            56, // svarint +28
            0,
            1,
            5,
        ];
        assert_eq!(line_of(&t, 10, 0), None);
        assert_eq!(line_of(&t, 10, 1), Some(11));
        assert_eq!(line_of(&t, 10, 2), Some(11));
        assert_eq!(line_of(&t, 10, 3), Some(12));
        assert_eq!(line_of(&t, 10, 5), Some(12));
        assert_eq!(line_of(&t, 10, 6), Some(12));
        assert_eq!(line_of(&t, 10, 7), Some(12));
        assert_eq!(line_of(&t, 10, 8), Some(40));
        assert_eq!(line_of(&t, 10, 9), None);
        // A multi-byte varint: delta +100 = svarint 200 = 0x48|0x40, 3.
        assert_eq!(line_of(&[0x80 | 13 << 3, 0x40 | 8, 3], 1, 0), Some(101));
        // Negative delta.
        assert_eq!(line_of(&[0x80 | 13 << 3, 5], 10, 0), Some(8));
    }

    #[test]
    fn hostile_location_tables_end_without_a_line() {
        assert_eq!(line_of(&[], 1, 0), None);
        // Not an entry start.
        assert_eq!(line_of(&[0x01, 0x02], 1, 0), None);
        // Truncated varints.
        assert_eq!(line_of(&[0x80 | 14 << 3, 0x40], 1, 0), None);
        // Endless continuation bits stop at 64 bits.
        assert_eq!(
            line_of(
                &[
                    0x80 | 13 << 3,
                    0x7f,
                    0x7f,
                    0x7f,
                    0x7f,
                    0x7f,
                    0x7f,
                    0x7f,
                    0x7f,
                    0x7f,
                    0x7f,
                    0x7f,
                    0x7f
                ],
                1,
                0
            ),
            None
        );
        // A line driven below 1.
        assert_eq!(line_of(&[0x80 | 13 << 3, 0x15], 3, 0), None);
    }

    /// `f.__code__.co_linetable` and the line of each code unit
    /// (`co_positions()`) of this function, from the real interpreters:
    ///
    /// ```python
    /// def f(c, n):        # line 2
    ///     x = n + 1
    ///     if x > 3:
    ///         c.close()
    ///     for i in range(n):
    ///         x += i
    ///     return x
    /// ```
    #[test]
    fn location_tables_of_real_312_and_313_interpreters() {
        // Debian trixie's python3.13 3.13.5.
        let t313 = [
            128, 0, 216, 8, 9, 136, 65, 137, 5, 128, 65, 216, 7, 8, 136, 49, 131, 117, 216, 8, 9,
            143, 7, 137, 7, 140, 9, 220, 13, 18, 144, 49, 142, 88, 136, 1, 216, 8, 9, 137, 6, 138,
            1, 241, 3, 0, 14, 22, 224, 11, 12, 128, 72,
        ];
        let l313 = [
            2, 3, 3, 3, 3, 3, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 6,
            6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 6, 6, 8, 8,
        ];
        // Ubuntu noble's python3.12 3.12.3.
        let t312 = [
            128, 0, 216, 8, 9, 136, 65, 137, 5, 128, 65, 216, 7, 8, 136, 49, 130, 117, 216, 8, 9,
            143, 7, 137, 7, 140, 9, 220, 13, 18, 144, 49, 139, 88, 242, 0, 1, 5, 15, 136, 1, 216,
            8, 9, 136, 81, 137, 6, 137, 1, 240, 3, 1, 5, 15, 224, 11, 12, 128, 72,
        ];
        let l312 = [
            2, 3, 3, 3, 3, 3, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 6, 6,
            6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 6, 8, 8,
        ];
        for (table, lines) in [(&t313[..], &l313[..]), (&t312[..], &l312[..])] {
            for (i, line) in lines.iter().enumerate() {
                assert_eq!(line_of(table, 2, i as u64), Some(*line), "unit {i}");
            }
            assert_eq!(line_of(table, 2, lines.len() as u64), None);
        }
    }

    /// 3.10 line tables from Ubuntu jammy's python3.10 (3.10.4):
    /// `co_linetable` and the line of each code unit (`co_lines()`) of
    ///
    /// ```python
    /// def f(c, n):        # line 2
    ///     x = n + 1
    ///     for i in range(n):
    ///         x += i
    ///     # 140 blank lines
    ///     y = (x +        # line 146
    ///          1)
    ///     return y
    /// ```
    ///
    /// (an empty range that only moves the line by 127, a negative delta)
    /// and of the function of the 3.12/3.13 test.
    #[test]
    fn line_tables_of_a_real_310_interpreter() {
        let t = [8, 1, 12, 1, 10, 1, 0, 127, 2, 14, 2, 1, 4, 255, 4, 2];
        let lines = [
            3, 3, 3, 3, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 146, 147, 146, 146, 148, 148,
        ];
        for (i, line) in lines.iter().enumerate() {
            assert_eq!(line_of_310(&t, 2, i as u64), Some(*line), "unit {i}");
        }
        assert_eq!(line_of_310(&t, 2, lines.len() as u64), None);
        let t = [8, 1, 8, 1, 8, 1, 12, 1, 10, 1, 4, 1];
        let lines = [
            3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 8, 8,
        ];
        for (i, line) in lines.iter().enumerate() {
            assert_eq!(line_of_310(&t, 2, i as u64), Some(*line), "unit {i}");
        }
    }

    #[test]
    fn hostile_310_line_tables_end_without_a_line() {
        assert_eq!(line_of_310(&[], 1, 0), None);
        // An odd trailing byte is no entry.
        assert_eq!(line_of_310(&[2], 1, 0), None);
        // "No line" (-128).
        assert_eq!(line_of_310(&[2, 0x80], 1, 0), None);
        // A line driven below 1.
        assert_eq!(line_of_310(&[2, 0xf0], 3, 0), None);
        // An index whose byte offset overflows.
        assert_eq!(line_of_310(&[255, 1], 1, u64::MAX), None);
        // 256 KiB of empty ranges stay bounded and cover nothing.
        assert_eq!(line_of_310(&[0u8; MAX_LINETABLE], 1, 0), None);
    }

    /// `_Py_DebugOffsets` as Debian trixie's python3.13 (3.13.5) holds it
    /// at `_PyRuntime` (`.PyRuntime` section of /usr/bin/python3.13): the
    /// u64s after the cookie.
    const DEBUG_313: [u64; 72] = [
        0x30d05f0, 0, 283376, 608, 632, 194976, 7272, 7264, 7344, 7400, 7656, 7640, 7648, 16, 7752,
        0, 7768, 7760, 304, 0, 8, 16, 72, 152, 160, 232, 32, 80, 8, 0, 56, 72, 70, 208, 112, 120,
        128, 136, 68, 52, 96, 104, 200, 16, 8, 416, 24, 88, 168, 32, 24, 16, 40, 24, 16, 48, 32,
        40, 24, 16, 32, 16, 24, 40, 16, 32, 64, 32, 16, 40, 240, 200,
    ];

    fn debug_bytes(words: &[u64]) -> Vec<u8> {
        let mut b = b"xdebugpy".to_vec();
        for w in words {
            b.extend_from_slice(&w.to_le_bytes());
        }
        b
    }

    fn table(v: (u32, u32)) -> &'static Layout {
        LAYOUTS.iter().find(|l| l.version == v).unwrap()
    }

    #[test]
    fn debug_offsets_of_a_real_313_agree_with_its_table() {
        let raw = debug_bytes(&DEBUG_313);
        assert_eq!(raw.len(), DEBUG_OFFSETS_SIZE);
        let t = table((3, 13));
        let mut got = apply_debug_offsets(t, &raw).unwrap();
        // The window is as long as the fields need (owner's byte, 71),
        // the table's rounds up to the word.
        assert_eq!(got.walk.window_len, 71);
        got.walk.window_len = t.walk.window_len;
        assert_eq!(&got, t);
    }

    #[test]
    fn debug_offsets_of_a_point_release_that_moved_fields_are_followed() {
        let mut w = DEBUG_313;
        // thread_state.current_frame (offset 184 = word 22 after the
        // cookie) and code.qualname (296 = word 36) moved.
        w[(184 - 8) / 8] = 80;
        w[(296 - 8) / 8] = 144;
        let l = apply_debug_offsets(table((3, 13)), &debug_bytes(&w)).unwrap();
        assert_eq!(l.walk.tstate_frame_ptr, 80);
        assert_eq!(l.co_qualname, 144);
    }

    #[test]
    fn hostile_debug_offsets_are_refused() {
        let t = table((3, 13));
        let refused = |w: &[u64], why: &str| {
            let e = apply_debug_offsets(t, &debug_bytes(w)).unwrap_err();
            assert!(e.contains(why), "{e} (wanted {why})");
        };
        let set = |at: usize, v: u64| {
            let mut w = DEBUG_313;
            w[(at - 8) / 8] = v;
            w
        };
        let mut bad = debug_bytes(&DEBUG_313);
        bad[0] = b'y';
        assert!(apply_debug_offsets(t, &bad).unwrap_err().contains("cookie"));
        assert!(
            apply_debug_offsets(t, &bad[..100])
                .unwrap_err()
                .contains("shorter")
        );
        assert!(apply_debug_offsets(t, &[]).unwrap_err().contains("shorter"));
        refused(&set(8, 0x30c03f0), "version 0x30c03f0");
        refused(&set(16, 1), "free-threaded");
        // threads_head far outside the interpreter state; a struct size
        // beyond any interpreter's; the offset that overflows.
        refused(&set(72, 1 << 40), "interpreter.threads_head");
        refused(&set(48, u64::MAX), "interpreter.threads_head");
        refused(&set(168, u64::MAX), "thread.next");
        // A frame field the kernel's window does not reach, or misaligned.
        let far = |at: usize| {
            let mut w = set(224, 4096);
            w[(at - 8) / 8] = 200;
            w
        };
        refused(&far(232), "frame.previous at 200");
        refused(&far(248), "frame.instr_ptr at 200");
        refused(&set(232, 12), "frame.previous at 12");
        refused(&set(264, 80), "frame.owner");
        // A misread struct (PyObject is not 16 bytes with its type at 8).
        refused(&set(360, 0), "PyObject");
        // String headers unlike the table's: the compact size is unknown.
        refused(&set(560, 48), "str header");
    }

    #[test]
    fn every_layout_fits_the_kernel_window() {
        for l in LAYOUTS {
            let w = &l.walk;
            assert!(w.window_len <= INTERP_WINDOW_MAX, "{l:?}");
            for o in [w.code, w.previous, w.instr] {
                assert!(
                    o % 8 == 0 && o + 8 <= w.window_len.next_multiple_of(8),
                    "{l:?}"
                );
            }
            assert!(w.entry == ABSENT || w.entry < w.window_len, "{l:?}");
        }
        // 3.12+ have their frame in one place from the thread state or the
        // cframe; 3.13 has no cframe.
        assert_eq!(table((3, 13)).walk.frame_ptr_current, ABSENT);
        assert_eq!(table((3, 12)).walk.frame_ptr_current, 0);
        assert_eq!(table((3, 12)).entry_mark, EntryMark::Shim);
        // 3.10's thread states name only pthread_t: the main thread's.
        assert_ne!(table((3, 10)).walk.main_thread, ABSENT);
        assert!(
            LAYOUTS
                .iter()
                .filter(|l| l.version != (3, 10))
                .all(|l| l.walk.main_thread == ABSENT)
        );
        assert_eq!(table((3, 11)).entry_mark, EntryMark::Outermost);
    }

    #[test]
    fn shim_frames_are_dropped_and_mark_the_frame_inside_them() {
        // drop_client, handle, <shim>, main, <module>, <shim>
        let cap = InterpCapture {
            frames: vec![(1, 0), (2, 0), (9, 0), (3, 0), (4, 0), (9, 0)],
            entry_mask: 0b100100,
            ..InterpCapture::default()
        };
        let (frames, mask) = entries(EntryMark::Shim, &cap);
        assert_eq!(frames, [(1, 0), (2, 0), (3, 0), (4, 0)]);
        assert_eq!(mask, 0b1010);
        // A shim innermost (C code called from C) marks nothing.
        let cap = InterpCapture {
            frames: vec![(9, 0), (1, 0)],
            entry_mask: 0b1,
            ..InterpCapture::default()
        };
        assert_eq!(entries(EntryMark::Shim, &cap), (vec![(1, 0)], 0));
        // 3.11's mask is taken as it is; 3.10's frames are each an entry.
        assert_eq!(entries(EntryMark::Outermost, &cap), (cap.frames.clone(), 1));
        assert_eq!(
            entries(EntryMark::EveryFrame, &cap),
            (cap.frames.clone(), u32::MAX)
        );
    }

    fn native(name: &str) -> Frame {
        Frame {
            function: Some(name.into()),
            offset: Some(1),
            module: Some("/usr/bin/python3.11".into()),
            file: None,
            line: None,
            inlined: false,
            kind: FrameKind::Native,
            language: None,
            address: Some(1),
            unresolved: None,
        }
    }

    fn py(name: &str) -> Frame {
        Frame {
            function: Some(name.into()),
            kind: FrameKind::Interpreted,
            language: Some(Language::Python),
            offset: None,
            module: None,
            ..native(name)
        }
    }

    #[test]
    fn python_frames_go_inside_the_eval_loop_frames_that_ran_them() {
        let n = [
            native("close"),
            native("sock_close"),
            native("_PyEval_EvalFrameDefault"),
            native("_PyEval_Vector"),
            native("_PyEval_EvalFrameDefault"),
            native("Py_RunMain"),
        ];
        // drop_client, handle (entry of the inner loop call), main, <module>
        let p = vec![py("drop_client"), py("handle"), py("main"), py("<module>")];
        let out = splice(&n, p, 0b0010 | 0b1000, is_eval_loop);
        let names: Vec<_> = out.iter().map(|f| f.function.clone().unwrap()).collect();
        assert_eq!(
            names,
            [
                "close",
                "sock_close",
                "drop_client",
                "handle",
                "_PyEval_EvalFrameDefault",
                "_PyEval_Vector",
                "main",
                "<module>",
                "_PyEval_EvalFrameDefault",
                "Py_RunMain"
            ]
        );
        // No eval loop frame in the native walk: the Python frames go last.
        let out = splice(&n[..2], vec![py("f")], 1, is_eval_loop);
        assert_eq!(out.len(), 3);
        assert_eq!(out[2].kind, FrameKind::Interpreted);
    }
}
