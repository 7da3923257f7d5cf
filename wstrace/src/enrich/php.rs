//! PHP frames in close stacks (PHP 8.2, non-ZTS).
//!
//! At the close the kernel copies the executor's frame chain
//! (`executor_globals.current_execute_data`, then `prev_execute_data`) as
//! (`zend_function *`, current `zend_op *`) pairs, with the walk of
//! `interp.rs`; here the functions are read from the process's memory and
//! named: `Class::method` or function (`{main}` for the script itself),
//! file (`op_array.filename`) and line (`opline->lineno`).
//!
//! `executor_globals` is a symbol of the PHP binary (or `libphp*.so`);
//! struct offsets come from a per-version table ([`LAYOUTS`], from the
//! version's own headers: Debian's `php8.2-dev`). Everything read is
//! bounded as for Python (`python.rs`); a function whose type is neither
//! internal nor user code is left unnamed.
use std::time::Instant;

use object::{Object as _, ObjectSymbol as _};
use wstrace_common::{ABSENT, InterpConfig};

use super::maps::{MAX_UNTRUSTED_FILE, Mapping, open_untrusted, read_maps};
use super::procmem::{Mem, name_each};
use super::python::bias_of;
use crate::model::{Frame, InterpCapture, Language};

/// Where one PHP version keeps what the walk and the naming read.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub version: (u32, u32),
    pub walk: InterpConfig,
    /// `zend_function`: `type`, `common.function_name`, `common.scope`,
    /// `op_array.filename`.
    pub fn_type: u64,
    pub fn_name: u64,
    pub fn_scope: u64,
    pub fn_filename: u64,
    /// `zend_class_entry.name`, `zend_op.lineno`.
    pub ce_name: u64,
    pub op_lineno: u64,
    /// `zend_string.len`, `.val`.
    pub str_len: u64,
    pub str_val: u64,
}

/// `ZEND_INTERNAL_FUNCTION`, `ZEND_USER_FUNCTION`.
const INTERNAL: u8 = 1;
const USER: u8 = 2;

pub const LAYOUTS: &[Layout] = &[Layout {
    version: (8, 2),
    walk: InterpConfig {
        runtime: 0,
        interp_head: ABSENT,
        threads_head: ABSENT,
        tstate_next: ABSENT,
        tstate_tid: ABSENT,
        tstate_frame_ptr: ABSENT,
        // executor_globals.current_execute_data
        frame_ptr_current: 488,
        // zend_execute_data: opline 0, func 24, prev_execute_data 48.
        frame_window: 0,
        code: 24,
        previous: 48,
        instr: 0,
        entry: ABSENT,
        entry_value: 0,
        window_len: 64,
        main_thread: ABSENT,
    },
    fn_type: 0,
    fn_name: 8,
    fn_scope: 16,
    fn_filename: 152,
    ce_name: 8,
    op_lineno: 24,
    str_len: 16,
    str_val: 24,
}];

#[derive(Clone, Debug)]
pub struct Found {
    pub layout: Layout,
    pub walk: InterpConfig,
}

/// `php8.2`, `libphp8.2.so` -> (8, 2). (`libphp.so` names no version.)
pub fn version_of(path: &str) -> Option<(u32, u32)> {
    let base = path.rsplit('/').next()?;
    let rest = base
        .strip_prefix("libphp")
        .or_else(|| base.strip_prefix("php"))?;
    let (major, rest) = rest.split_once('.')?;
    let minor: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let after = &rest[minor.len()..];
    if !(after.is_empty() || after.starts_with(".so")) {
        return None;
    }
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// A PHP this build knows in `pid`'s mappings, or `None`.
pub fn find(pid: u32) -> Option<Found> {
    let maps = read_maps(pid)?;
    for m in maps
        .iter()
        .filter(|m| m.path.as_deref().and_then(version_of).is_some())
    {
        let version = version_of(m.path.as_deref()?)?;
        let Some(layout) = LAYOUTS.iter().find(|l| l.version == version) else {
            continue;
        };
        if let Some(f) = found_in(pid, &maps, m, layout) {
            return Some(f);
        }
    }
    None
}

fn found_in(pid: u32, maps: &[Mapping], m: &Mapping, layout: &Layout) -> Option<Found> {
    let file = open_untrusted(&super::maps::map_files_path(pid, m), MAX_UNTRUSTED_FILE)?;
    // SAFETY: as in `python::find_in`.
    let map = unsafe { memmap2::Mmap::map(&file) }.ok()?;
    let elf = object::File::parse(&*map).ok()?;
    let eg = elf
        .dynamic_symbols()
        .chain(elf.symbols())
        .find(|s| s.name() == Ok("executor_globals"))?
        .address();
    let bias = bias_of(&elf, maps, m)?;
    let mut walk = layout.walk;
    walk.runtime = eg.wrapping_add(bias);
    Some(Found {
        layout: *layout,
        walk,
    })
}

/// A `zend_string`'s text, at most `MAX_NAME` bytes, lossy UTF-8.
fn zstr(mem: &Mem, l: &Layout, s: u64) -> Option<String> {
    let len = mem.word(s.wrapping_add(l.str_len))? as usize;
    let b = mem.bytes(s.wrapping_add(l.str_val), len.min(super::python::MAX_NAME))?;
    Some(String::from_utf8_lossy(&b).into_owned())
}

/// Names the frames of `cap` in process `pid`, innermost first.
pub fn name_frames(pid: u32, found: &Found, cap: &InterpCapture, deadline: Instant) -> Vec<Frame> {
    let l = &found.layout;
    name_each(
        pid,
        deadline,
        Language::Php,
        &cap.frames,
        |mem, (func, opline), f| {
            let Some(ty) = mem.bytes(func.wrapping_add(l.fn_type), 1).map(|b| b[0]) else {
                return;
            };
            if ty != INTERNAL && ty != USER {
                return;
            }
            let name = match mem.word(func.wrapping_add(l.fn_name)) {
                Some(0) => Some("{main}".to_string()),
                Some(s) => zstr(mem, l, s),
                None => None,
            };
            let class = mem
                .word(func.wrapping_add(l.fn_scope))
                .filter(|&ce| ce != 0)
                .and_then(|ce| mem.word(ce.wrapping_add(l.ce_name)))
                .and_then(|s| zstr(mem, l, s));
            f.function = match (class, name) {
                (Some(c), Some(n)) => Some(format!("{c}::{n}")),
                (None, n) => n,
                (Some(_), None) => None,
            };
            if ty == USER {
                f.file = mem
                    .word(func.wrapping_add(l.fn_filename))
                    .and_then(|s| zstr(mem, l, s));
                f.line = mem
                    .bytes(opline.wrapping_add(l.op_lineno), 4)
                    .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                    .filter(|&n| n > 0);
            }
        },
    )
}

/// Is `f` the executor loop's own native frame (where PHP frames ran)?
pub fn is_exec_loop(f: &Frame) -> bool {
    f.is_php_exec_loop()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_php_paths() {
        assert_eq!(version_of("/usr/bin/php8.2"), Some((8, 2)));
        assert_eq!(
            version_of("/usr/lib/apache2/modules/libphp8.3.so"),
            Some((8, 3))
        );
        assert_eq!(version_of("/usr/bin/php"), None);
        assert_eq!(version_of("/usr/bin/php8.2-config"), None);
        assert_eq!(version_of("/usr/bin/phpize8.2"), None);
    }
}
