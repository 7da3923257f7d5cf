//! Python frames in close stacks (CPython 3.11).
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
//! the process; struct offsets come from a per-version table ([`LAYOUTS`]),
//! because Debian's interpreter carries no debug info and 3.11 has no
//! `_Py_DebugOffsets` (3.13 does).
//!
//! Everything read here belongs to a process that may be hostile: every
//! read is bounded (names to [`MAX_NAME`] characters, line tables to
//! [`MAX_LINETABLE`] bytes), a frame whose code object is not of the type
//! `PyCode_Type` is shown as such, and the whole naming stops at a deadline.
use std::time::Instant;

use object::{Object as _, ObjectSegment as _, ObjectSymbol as _};
use wstrace_common::InterpConfig;

use super::maps::{MAX_UNTRUSTED_FILE, Mapping, open_untrusted, read_maps};
use super::procmem::{Mem, name_each};
use crate::model::{Frame, InterpCapture, Language};

/// Characters of a function or file name kept.
pub const MAX_NAME: usize = 512;
/// Bytes of a code object's line table read.
pub const MAX_LINETABLE: usize = 256 * 1024;

/// Where one CPython version keeps what the kernel walk and the naming read.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub version: (u32, u32),
    /// The kernel walk (`runtime` is filled per process).
    pub walk: InterpConfig,
    pub ob_type: u64,
    pub co_firstlineno: u64,
    pub co_filename: u64,
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

/// Offsets per version, from the version's own headers (`Include/internal`,
/// x86_64 and arm64 alike: all pointers and 8-byte fields before these).
pub const LAYOUTS: &[Layout] = &[Layout {
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
    },
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
}];

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
/// `None` for any other process (or a version without a layout).
pub fn find(pid: u32) -> Option<Found> {
    let maps = read_maps(pid)?;
    find_in(pid, &maps)
}

fn find_in(pid: u32, maps: &[Mapping]) -> Option<Found> {
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
        let bias = bias_of(&elf, maps, m)?;
        let mut walk = layout.walk;
        walk.runtime = runtime.wrapping_add(bias);
        return Some(Found {
            layout: *layout,
            walk,
            code_type: code_type.wrapping_add(bias),
        });
    }
    None
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

/// Decodes a CPython 3.11 location table (`Objects/locations.md`): the line
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

/// Names the frames of `cap` in process `pid`, innermost first. A frame
/// that cannot be named is kept, unnamed, with the reason.
pub fn name_frames(pid: u32, found: &Found, cap: &InterpCapture, deadline: Instant) -> Vec<Frame> {
    let l = &found.layout;
    name_each(
        pid,
        deadline,
        Language::Python,
        &cap.frames,
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
            let start = code.wrapping_add(l.co_code);
            // Before the first instruction (a frame not started): its
            // first line.
            let index = instr.checked_sub(start).map(|d| d / 2);
            f.line = match (first, index) {
                (Some(first), None) => u32::try_from(first).ok(),
                (Some(first), Some(i)) => mem
                    .word(code.wrapping_add(l.co_linetable))
                    .and_then(|t| {
                        let n = mem.word(t.wrapping_add(l.ob_size))? as usize;
                        mem.bytes(t.wrapping_add(l.bytes_sval), n.min(MAX_LINETABLE))
                    })
                    .and_then(|t| line_of(&t, first, i)),
                _ => None,
            };
        },
    )
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
