//! PHP frames in close stacks (PHP 8.1, 8.2, 8.3 and 8.4, non-ZTS).
//!
//! At the close the kernel copies the executor's frame chain
//! (`executor_globals.current_execute_data`, then `prev_execute_data`) as
//! (`zend_function *`, current `zend_op *`) pairs, with the walk of
//! `interp.rs`; here the functions are read from the process's memory and
//! named: `Class::method` or function (`{main}` for the script itself),
//! file (`op_array.filename`) and line (`opline->lineno`).
//!
//! What comes from where, for a mapped file named `php*` or `libphp*`:
//! - **From the binary, always**: the address of `executor_globals` (its
//!   symbol) and the exact PHP version, from the `X-Powered-By: PHP/X.Y.Z`
//!   string `main/main.c` compiles in (in every SAPI: cli, fpm, cgi,
//!   `libphp.so`). A file name that carries a version (`php8.3`,
//!   `libphp8.4.so`) must agree with it.
//! - **From the binary, on x86-64 and arm64**: the offset of
//!   `current_execute_data` in `executor_globals`, decoded from the machine
//!   code of the exported `zend_is_executing()` (`return
//!   EG(current_execute_data) != 0;`: on x86-64 a `lea` of
//!   `executor_globals` then a `cmp` at the field's offset, or one `cmp`
//!   RIP-relative to the field; on arm64 `adrp` and a GOT `ldr` (or `add`)
//!   reaching `executor_globals`, then an `ldr` at the field's offset and a
//!   `cmp` with 0). The OpenTelemetry eBPF profiler
//!   (`interpreter/php/php.go`) reads the version from the same string and
//!   decodes small exported functions (`zend_vm_kind`, `execute_ex`) for
//!   other facts, but takes this offset as a constant (488); here the
//!   binary's own code is asked. It must equal the table's: a build whose
//!   globals are laid out otherwise is refused, not walked at a wrong
//!   offset. Code of another shape (another compiler, another
//!   architecture) leaves the table's value, which the version check above
//!   has already matched to the binary. (Checked on the four test binaries
//!   and on Debian bookworm's arm64 php8.2: 488 in all.)
//! - **Tabled per minor version** ([`LAYOUTS`]): everything else
//!   (`_zend_execute_data`, `zend_function`, `zend_class_entry`, `_zend_op`,
//!   `zend_string`), from each version's own headers (`php8.X-dev`: Ubuntu
//!   jammy's 8.1.2, Debian bookworm's 8.2, Ubuntu noble's 8.3.6, Debian
//!   trixie's 8.4), measured with `offsetof`, compiled for x86-64 and (with
//!   aarch64-linux-gnu-gcc) arm64: the same on both. Only
//!   `op_array.filename` moves between these versions.
//!
//! A PHP whose version is not in the table (8.0, which no Debian or Ubuntu
//! release ships; 8.5 ...) or whose checks fail is refused with one note
//! per file on stderr, and its closes show no PHP frames rather than wrong
//! ones.
//!
//! ZTS (thread-safe) builds are refused too: there `executor_globals` is
//! no symbol but a slot in each thread's TSRM storage (`_tsrm_ls_cache`,
//! reached through the thread pointer), so the kernel walk would have to
//! read the closing thread's `fsbase` (`task_struct.thread`, per
//! architecture) and the TLS offsets of the build; no Debian or Ubuntu
//! PHP CLI is ZTS to test that with.
//!
//! Everything read is bounded as for Python (`python.rs`); a function whose
//! type is neither internal nor user code is left unnamed.
use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Instant;

use object::{Object as _, ObjectSection as _, ObjectSymbol as _, ObjectSymbolTable as _};
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

/// `executor_globals.current_execute_data` in 8.1 to 8.4 (x86-64 and
/// arm64); checked against the binary's code where it can be decoded (all
/// four test binaries: 488).
const CURRENT_EXECUTE_DATA: u64 = 488;

/// The layout of PHP `version`: every offset but `op_array.filename` is the
/// same in 8.1 to 8.4 (`offsetof` on each version's headers).
const fn layout(version: (u32, u32), fn_filename: u64) -> Layout {
    Layout {
        version,
        walk: InterpConfig {
            runtime: 0,
            interp_head: ABSENT,
            threads_head: ABSENT,
            tstate_next: ABSENT,
            tstate_tid: ABSENT,
            tstate_frame_ptr: ABSENT,
            frame_ptr_current: CURRENT_EXECUTE_DATA,
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
        fn_filename,
        ce_name: 8,
        op_lineno: 24,
        str_len: 16,
        str_val: 24,
    }
}

/// `op_array.filename` (`offsetof` on each version's headers): 8.2 put
/// `uint32_t T` between `attributes` and `run_time_cache` (4 bytes and 4 of
/// padding more than 8.1), 8.3 put it back after `run_time_cache`, 8.4 added
/// `doc_comment` and `prop_info` before it.
pub const LAYOUTS: &[Layout] = &[
    layout((8, 1), 144),
    layout((8, 2), 152),
    layout((8, 3), 144),
    layout((8, 4), 168),
];

#[derive(Clone, Debug)]
pub struct Found {
    pub layout: Layout,
    pub walk: InterpConfig,
}

/// Is `base` (a file name) PHP's, by name: `php`, `php8.2`, `php-fpm8.3`,
/// `php-cgi`, `libphp.so`, `libphp8.4.so` (not `phpize`, `php-config`:
/// scripts, never mapped).
fn is_php_name(base: &str) -> bool {
    let rest = base
        .strip_prefix("libphp")
        .or_else(|| base.strip_prefix("php"));
    let Some(rest) = rest else {
        return false;
    };
    let rest = rest
        .strip_prefix("-fpm")
        .or_else(|| rest.strip_prefix("-cgi"))
        .unwrap_or(rest);
    rest.is_empty() || rest.starts_with(".so") || rest.starts_with(|c: char| c.is_ascii_digit())
}

/// `php8.2`, `libphp8.2.so`, `php-fpm8.3` -> (8, 2). (`libphp.so` names no
/// version.)
pub fn version_of(path: &str) -> Option<(u32, u32)> {
    let base = path.rsplit('/').next()?;
    let rest = base
        .strip_prefix("libphp")
        .or_else(|| base.strip_prefix("php"))?;
    let rest = rest
        .strip_prefix("-fpm")
        .or_else(|| rest.strip_prefix("-cgi"))
        .unwrap_or(rest);
    let (major, rest) = rest.split_once('.')?;
    let minor: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let after = &rest[minor.len()..];
    if !(after.is_empty() || after.starts_with(".so")) {
        return None;
    }
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// The string `main/main.c` builds `X-Powered-By` from: `PHP/` then
/// `PHP_VERSION`.
const POWERED_BY: &[u8] = b"X-Powered-By: PHP/";

/// The PHP version compiled into `bytes` (a binary's read-only data):
/// (major, minor, release), from every `X-Powered-By: PHP/X.Y.Z`; `None`
/// when there is none, or two that disagree.
pub fn version_in(bytes: &[u8]) -> Option<(u32, u32, u32)> {
    let mut found = None;
    let mut at = 0;
    while let Some(i) = find_bytes(&bytes[at..], POWERED_BY) {
        let start = at + i + POWERED_BY.len();
        let v = parse_version(&bytes[start..bytes.len().min(start + 32)])?;
        if found.is_some_and(|f| f != v) {
            return None;
        }
        found = Some(v);
        at = start;
    }
    found
}

/// `X.Y.Z` at the start of `b`, each at most 4 digits, then anything that
/// is no digit and no dot (PHP_EXTRA_VERSION such as `-dev`, or the NUL).
fn parse_version(b: &[u8]) -> Option<(u32, u32, u32)> {
    let mut parts = [0u32; 3];
    let mut pos = 0;
    for (n, part) in parts.iter_mut().enumerate() {
        let digits = b[pos..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 || digits > 4 {
            return None;
        }
        *part = std::str::from_utf8(&b[pos..pos + digits])
            .ok()?
            .parse()
            .ok()?;
        pos += digits;
        if n < 2 {
            if b.get(pos) != Some(&b'.') {
                return None;
            }
            pos += 1;
        }
    }
    if b.get(pos).is_some_and(|c| c.is_ascii_digit() || *c == b'.') {
        return None;
    }
    Some((parts[0], parts[1], parts[2]))
}

fn find_bytes(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The offset of `current_execute_data` in `executor_globals` (at `eg`),
/// decoded from x86-64 `code` at address `at`: the body of
/// `zend_is_executing()` as GCC and Clang compile it, after an optional
/// `endbr64`:
/// - `lea r, [rip+eg]` then `cmp qword [r+off], 0` (PIE builds), or
/// - `cmp qword [rip+eg+off], 0` (position-dependent builds).
///
/// `None` for any other code. The offset must be 8-aligned and inside the
/// globals (under 4 KiB: the structure is about 2 KiB).
pub fn current_execute_data_x86_64(code: &[u8], at: u64, eg: u64) -> Option<u64> {
    const MAX_OFFSET: u64 = 4096;
    let start = if code.get(..4) == Some(&[0xf3, 0x0f, 0x1e, 0xfa][..]) {
        4
    } else {
        0
    };
    let b = |k: usize| code.get(start + k).copied();
    let rel32 = |k: usize| -> Option<i64> {
        let d = code.get(start + k..start + k + 4)?;
        Some(i32::from_le_bytes([d[0], d[1], d[2], d[3]]) as i64)
    };
    let off = match (b(0)?, b(1)?) {
        // REX.W (+R) 8D /r, ModRM mod=00 rm=101: lea r64, [rip+disp32].
        (rex @ (0x48 | 0x4c), 0x8d) if b(2)? & 0xc7 == 0x05 => {
            let reg = ((b(2)? >> 3) & 7) | if rex == 0x4c { 8 } else { 0 };
            let next = at.wrapping_add(start as u64 + 7);
            if next.wrapping_add_signed(rel32(3)?) != eg {
                return None;
            }
            // Then REX.W (+B) 83 /7 ib with ModRM mod=01/10, rm=reg: cmp
            // qword [reg+disp], imm8 (rm 100 would need a SIB byte: not
            // ours).
            let want_rex = 0x48 | if reg >= 8 { 1 } else { 0 };
            let modrm = b(9)?;
            if b(7)? != want_rex || b(8)? != 0x83 || (modrm >> 3) & 7 != 7 {
                return None;
            }
            if modrm & 7 != reg & 7 || reg & 7 == 4 {
                return None;
            }
            let (disp, imm) = match modrm >> 6 {
                0b01 => (b(10)? as i8 as i64, b(11)?),
                0b10 => (rel32(10)?, b(14)?),
                _ => return None,
            };
            if imm != 0 {
                return None;
            }
            u64::try_from(disp).ok()?
        }
        // REX.W 83 /7 ib, ModRM 0x3d: cmp qword [rip+disp32], imm8.
        (0x48, 0x83) if b(2)? == 0x3d && b(7)? == 0 => {
            let next = at.wrapping_add(start as u64 + 8);
            next.wrapping_add_signed(rel32(3)?).checked_sub(eg)?
        }
        _ => return None,
    };
    (off < MAX_OFFSET && off % 8 == 0).then_some(off)
}

/// The offset of `current_execute_data` in `executor_globals` (at `eg`),
/// decoded from arm64 `code` at address `at`: `zend_is_executing()` as GCC
/// compiles it, after optional hints (BTI, PAC):
/// `adrp xA, page` then `ldr xA, [xA, #slot]` (the global's address from
/// the GOT: `got` says what a slot holds, from the dynamic relocations) or
/// `add xA, xA, #lo` (its address itself), then `ldr xB, [xA, #off]` and
/// `cmp xB, #0`. `None` for any other code; the same bounds as on x86-64.
pub fn current_execute_data_aarch64(
    code: &[u8],
    at: u64,
    eg: u64,
    got: impl Fn(u64) -> Option<u64>,
) -> Option<u64> {
    const MAX_OFFSET: u64 = 4096;
    let insn = |i: usize| -> Option<u32> {
        let b = code.get(i * 4..i * 4 + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    // HINT #n (BTI c, PACIASP ...): no effect on what follows.
    let mut i = 0;
    while insn(i)? & 0xffff_f01f == 0xd503_201f {
        i += 1;
        if i > 2 {
            return None;
        }
    }
    let pc = at.wrapping_add(i as u64 * 4);
    // ADRP xA, page: imm = immhi:immlo, a signed count of 4 KiB pages.
    let adrp = insn(i)?;
    if adrp & 0x9f00_0000 != 0x9000_0000 {
        return None;
    }
    let reg_a = adrp & 0x1f;
    let imm = (((adrp >> 5) & 0x7_ffff) << 2 | (adrp >> 29) & 3) as i64;
    let imm = (imm << 43) >> 43; // sign-extend 21 bits
    let page = (pc & !0xfff).wrapping_add_signed(imm << 12);
    // LDR xT, [xN, #imm12*8] (64-bit, unsigned offset).
    let ldr = |w: u32| {
        (w & 0xffc0_0000 == 0xf940_0000)
            .then(|| (w & 0x1f, (w >> 5) & 0x1f, ((w >> 10) & 0xfff) as u64 * 8))
    };
    let second = insn(i + 1)?;
    let (reg_g, global) = if let Some((t, n, slot)) = ldr(second) {
        if n != reg_a {
            return None;
        }
        (t, got(page.wrapping_add(slot))?)
    } else if second & 0xff80_0000 == 0x9100_0000 {
        // ADD xD, xN, #imm12 {, LSL #12}.
        let (d, n) = (second & 0x1f, (second >> 5) & 0x1f);
        let shift = if second & (1 << 22) != 0 { 12 } else { 0 };
        let lo = (((second >> 10) & 0xfff) as u64) << shift;
        if n != reg_a {
            return None;
        }
        (d, page.wrapping_add(lo))
    } else {
        return None;
    };
    if global != eg {
        return None;
    }
    let (reg_b, n, off) = ldr(insn(i + 2)?)?;
    // CMP xB, #0 (SUBS xzr, xB, #0).
    if n != reg_g || insn(i + 3)? != 0xf100_001f | reg_b << 5 {
        return None;
    }
    (off < MAX_OFFSET && off % 8 == 0).then_some(off)
}

/// What the GOT slot at `slot` holds once relocated: the address its
/// dynamic relocation names (`R_*_RELATIVE`: the addend; `R_*_GLOB_DAT`:
/// the symbol's address).
fn got_target(elf: &object::File<'_>, slot: u64) -> Option<u64> {
    let (_, r) = elf.dynamic_relocations()?.find(|(off, _)| *off == slot)?;
    match r.target() {
        object::RelocationTarget::Absolute => u64::try_from(r.addend()).ok(),
        object::RelocationTarget::Symbol(i) => {
            let sym = elf.dynamic_symbol_table()?.symbol_by_index(i).ok()?;
            Some(sym.address().wrapping_add_signed(r.addend()))
        }
        _ => None,
    }
}

/// Files already told about (device, inode): one note per PHP binary, not
/// per process (a php-fpm pool has hundreds).
static TOLD: Mutex<Option<HashSet<(String, u64)>>> = Mutex::new(None);

/// Says once per file why its PHP frames are not shown.
fn refuse(m: &Mapping, why: &str) {
    let Ok(mut told) = TOLD.lock() else {
        return;
    };
    let told = told.get_or_insert_with(HashSet::new);
    if told.len() >= 1024 {
        told.clear();
    }
    if told.insert((m.dev.clone(), m.inode)) {
        // `{:?}`: the path is the traced process's (escaped, quoted).
        eprintln!(
            "wstrace: note: stacks: {:?}: {why}: its closes show no PHP frames",
            m.path.as_deref().unwrap_or_default()
        );
    }
}

/// Read-only data searched for the version string, at most: PHP's is
/// under 1 MiB (the four test binaries: 0.45 MiB each), the largest the
/// OpenTelemetry profiler has seen about 9 MiB; a hostile file's 4 GiB
/// section is not scanned to its end.
const MAX_RODATA: usize = 16 << 20;

/// PHP-named files looked into per process, at most (an interpreter maps
/// one: `php8.3`, or `libphp.so` in a server).
const MAX_FILES: usize = 4;

/// A PHP this build knows in `pid`'s mappings, or `None`.
pub fn find(pid: u32) -> Option<Found> {
    let maps = read_maps(pid)?;
    let mut seen: Vec<(&str, u64)> = Vec::new();
    for m in maps.iter().filter(|m| {
        m.path
            .as_deref()
            .and_then(|p| p.rsplit('/').next())
            .is_some_and(is_php_name)
    }) {
        // One look per file, not per mapping of it; and a few files at
        // most: a process that maps thousands of `php*` files costs no
        // more than one with a few.
        if seen.contains(&(m.dev.as_str(), m.inode)) {
            continue;
        }
        if seen.len() >= MAX_FILES {
            break;
        }
        seen.push((m.dev.as_str(), m.inode));
        match found_in(pid, &maps, m) {
            Ok(Some(f)) => return Some(f),
            Ok(None) => {}
            Err(why) => refuse(m, &why),
        }
    }
    None
}

/// What `m`'s file holds: a PHP this build walks (`Ok(Some)`), no PHP
/// interpreter (`Ok(None)`: a PHP-named file without `executor_globals`
/// or version), or a PHP it refuses, with why.
fn found_in(pid: u32, maps: &[Mapping], m: &Mapping) -> Result<Option<Found>, String> {
    let Some(file) = open_untrusted(&super::maps::map_files_path(pid, m), MAX_UNTRUSTED_FILE)
    else {
        return Ok(None);
    };
    // SAFETY: as in `python::find_in`.
    let Ok(map) = (unsafe { memmap2::Mmap::map(&file) }) else {
        return Ok(None);
    };
    let Ok(elf) = object::File::parse(&*map) else {
        return Ok(None);
    };
    let sym = |name: &str| {
        elf.dynamic_symbols()
            .chain(elf.symbols())
            .find(|s| s.name() == Ok(name))
            .map(|s| s.address())
    };
    let Some(eg) = sym("executor_globals") else {
        // A ZTS build exports `executor_globals_offset` instead (Zend/zend.c).
        if sym("executor_globals_offset").is_some() {
            return Err(
                "a thread-safe (ZTS) PHP build, whose executor state is per thread: not supported"
                    .into(),
            );
        }
        return Ok(None);
    };
    let rodata = elf
        .section_by_name(".rodata")
        .and_then(|s| s.data().ok())
        .unwrap_or(&map[..]);
    let Some(version) = version_in(&rodata[..rodata.len().min(MAX_RODATA)]) else {
        return Err("no PHP version string (`X-Powered-By: PHP/…`) in the binary".into());
    };
    let (major, minor, release) = version;
    if let Some(named) = m.path.as_deref().and_then(version_of)
        && named != (major, minor)
    {
        return Err(format!(
            "its name says PHP {}.{} but its code says {major}.{minor}.{release}",
            named.0, named.1
        ));
    }
    let Some(layout) = LAYOUTS.iter().find(|l| l.version == (major, minor)) else {
        return Err(format!(
            "PHP {major}.{minor}.{release}, whose frame layout this wstrace does not know (it knows {})",
            known_versions()
        ));
    };
    let mut walk = layout.walk;
    let derived = sym("zend_is_executing").and_then(|at| {
        let code = code_at(&elf, at, 32)?;
        match elf.architecture() {
            object::Architecture::X86_64 => current_execute_data_x86_64(code, at, eg),
            object::Architecture::Aarch64 => {
                current_execute_data_aarch64(code, at, eg, |slot| got_target(&elf, slot))
            }
            _ => None,
        }
    });
    if let Some(off) = derived
        && off != walk.frame_ptr_current
    {
        return Err(format!(
            "PHP {major}.{minor}.{release} keeps current_execute_data at +{off} of executor_globals (its zend_is_executing says), not at +{} as PHP {major}.{minor} does: an unusual build",
            walk.frame_ptr_current
        ));
    }
    let Some(bias) = bias_of(&elf, maps, m) else {
        return Ok(None);
    };
    walk.runtime = eg.wrapping_add(bias);
    Ok(Some(Found {
        layout: *layout,
        walk,
    }))
}

/// `len` bytes of code at virtual address `at`, from its section.
fn code_at<'a>(elf: &object::File<'a>, at: u64, len: u64) -> Option<&'a [u8]> {
    elf.sections()
        .find(|s| s.address() <= at && at < s.address().saturating_add(s.size()))?
        .data_range(at, len)
        .ok()
        .flatten()
}

/// "8.1, 8.2, 8.3, 8.4".
fn known_versions() -> String {
    LAYOUTS
        .iter()
        .map(|l| format!("{}.{}", l.version.0, l.version.1))
        .collect::<Vec<_>>()
        .join(", ")
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
        assert_eq!(version_of("/usr/bin/php8.4"), Some((8, 4)));
        assert_eq!(version_of("/usr/sbin/php-fpm8.3"), Some((8, 3)));
        assert_eq!(
            version_of("/usr/lib/apache2/modules/libphp8.3.so"),
            Some((8, 3))
        );
        assert_eq!(version_of("/opt/php/lib/libphp8.1.so.0"), Some((8, 1)));
        assert_eq!(version_of("/usr/bin/php"), None);
        assert_eq!(version_of("/usr/lib/libphp.so"), None);
        assert_eq!(version_of("/usr/bin/php8.2-config"), None);
        assert_eq!(version_of("/usr/bin/phpize8.2"), None);
        assert_eq!(version_of("/usr/bin/php8"), None);
        assert_eq!(version_of("/usr/bin/php99999999999.2"), None);
        assert_eq!(version_of(""), None);
    }

    #[test]
    fn php_names_and_others() {
        for n in [
            "php",
            "php8.4",
            "php-fpm",
            "php-fpm8.2",
            "php-cgi8.1",
            "libphp.so",
            "libphp8.3.so",
        ] {
            assert!(is_php_name(n), "{n}");
        }
        for n in ["phpize8.2", "phpdbg", "python3", "libphpx.so", "", "ph"] {
            assert!(!is_php_name(n), "{n}");
        }
    }

    #[test]
    fn the_version_comes_from_the_binary_string() {
        let bin = b"\0\0Zend Engine v4.4.27\0X-Powered-By: PHP/8.4.27\0PHP/x";
        assert_eq!(version_in(bin), Some((8, 4, 27)));
        assert_eq!(
            version_in(b"X-Powered-By: PHP/8.3.0-dev\0"),
            Some((8, 3, 0))
        );
        // Twice, the same: fine; twice, different: which is it?
        let two = b"X-Powered-By: PHP/8.1.2\0..X-Powered-By: PHP/8.1.2\0";
        assert_eq!(version_in(two), Some((8, 1, 2)));
        let clash = b"X-Powered-By: PHP/8.1.2\0..X-Powered-By: PHP/8.3.6\0";
        assert_eq!(version_in(clash), None);
    }

    #[test]
    fn hostile_version_strings_are_refused() {
        for bad in [
            &b""[..],
            b"X-Powered-By: PHP/",
            b"X-Powered-By: PHP/8",
            b"X-Powered-By: PHP/8.",
            b"X-Powered-By: PHP/8.4",
            b"X-Powered-By: PHP/8.4.",
            b"X-Powered-By: PHP/8.4.27.1",
            b"X-Powered-By: PHP/99999.4.1",
            b"X-Powered-By: PHP/8.4.123456789012",
            b"X-Powered-By: PHP/a.b.c",
            b"X-Powered-By: PHP/8.4.1\0X-Powered-By: PHP/junk",
        ] {
            assert_eq!(version_in(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn layouts_are_chosen_by_exact_minor_version() {
        let pick = |v| {
            LAYOUTS
                .iter()
                .find(|l| l.version == v)
                .map(|l| l.fn_filename)
        };
        assert_eq!(pick((8, 1)), Some(144));
        assert_eq!(pick((8, 2)), Some(152));
        assert_eq!(pick((8, 3)), Some(144));
        assert_eq!(pick((8, 4)), Some(168));
        assert_eq!(pick((8, 0)), None);
        assert_eq!(pick((8, 5)), None);
        assert_eq!(pick((7, 4)), None);
        for l in LAYOUTS {
            // What the kernel walk reads: one 64-byte window per frame.
            assert!(l.walk.code < 64 && l.walk.previous < 64 && l.walk.instr < 64);
            assert_eq!(l.walk.frame_ptr_current, CURRENT_EXECUTE_DATA);
            assert_eq!(l.walk.threads_head, ABSENT, "the fixed-place walk");
        }
        assert_eq!(known_versions(), "8.1, 8.2, 8.3, 8.4");
    }

    /// `zend_is_executing` of Ubuntu noble's php8.3 (8.3.6-0maysync1):
    /// endbr64; lea rax, [rip+0x293175]; cmp qword [rax+0x1e8], 0; setne
    /// al; ret. At 0x307d40, `executor_globals` at 0x59aec0.
    const NOBLE_83: &[u8] = &[
        0xf3, 0x0f, 0x1e, 0xfa, 0x48, 0x8d, 0x05, 0x75, 0x31, 0x29, 0x00, 0x48, 0x83, 0xb8, 0xe8,
        0x01, 0x00, 0x00, 0x00, 0x0f, 0x95, 0xc0, 0xc3,
    ];

    #[test]
    fn current_execute_data_from_real_code() {
        assert_eq!(
            current_execute_data_x86_64(NOBLE_83, 0x307d40, 0x59aec0),
            Some(488)
        );
        // Debian bookworm's php8.2 (no endbr64): at 0x2f2b70, globals at
        // 0x58ae60.
        let bookworm_82 = &NOBLE_83[4..];
        let mut code = bookworm_82.to_vec();
        code[3..7].copy_from_slice(&0x2982e9i32.to_le_bytes());
        assert_eq!(
            current_execute_data_x86_64(&code, 0x2f2b70, 0x58ae60),
            Some(488)
        );
    }

    #[test]
    fn current_execute_data_other_encodings() {
        // lea r9, [rip+d]; cmp qword [r9+0x1e8], 0 (REX.R, then REX.B).
        let mut code = vec![0x4c, 0x8d, 0x0d, 0, 0, 0, 0];
        code.extend([0x49, 0x83, 0xb9, 0xe8, 0x01, 0, 0, 0]);
        assert_eq!(
            current_execute_data_x86_64(&code, 0x1000, 0x1007),
            Some(488)
        );
        // cmp qword [rax+0x40], 0 (disp8).
        let code = [0x48, 0x8d, 0x05, 0, 0, 0, 0, 0x48, 0x83, 0x78, 0x40, 0];
        assert_eq!(current_execute_data_x86_64(&code, 0x1000, 0x1007), Some(64));
        // cmp qword [rip+d], 0: d reaches globals+488 from the next instruction.
        let mut code = vec![0x48, 0x83, 0x3d];
        code.extend((0x2000 + 488 - 0x1008i32).to_le_bytes());
        code.push(0);
        assert_eq!(
            current_execute_data_x86_64(&code, 0x1000, 0x2000),
            Some(488)
        );
    }

    #[test]
    fn unfamiliar_or_hostile_code_derives_nothing() {
        let eg = 0x59aec0;
        let at = 0x307d40;
        // Truncated anywhere.
        for n in 0..NOBLE_83.len() - 4 {
            assert_eq!(
                current_execute_data_x86_64(&NOBLE_83[..n], at, eg),
                None,
                "{n} bytes"
            );
        }
        // The lea names another global.
        assert_eq!(current_execute_data_x86_64(NOBLE_83, at, eg + 8), None);
        let patched = |i: usize, v: u8| {
            let mut c = NOBLE_83.to_vec();
            c[i] = v;
            c
        };
        // cmp against 1, not 0; a mov instead of the cmp; the cmp through
        // another register than the lea's.
        assert_eq!(current_execute_data_x86_64(&patched(18, 1), at, eg), None);
        assert_eq!(
            current_execute_data_x86_64(&patched(12, 0x8b), at, eg),
            None
        );
        assert_eq!(
            current_execute_data_x86_64(&patched(13, 0xb9), at, eg),
            None
        );
        // An offset outside the globals, or misaligned.
        assert_eq!(
            current_execute_data_x86_64(&patched(16, 0x10), at, eg),
            None
        );
        assert_eq!(
            current_execute_data_x86_64(&patched(14, 0xe9), at, eg),
            None
        );
        // A negative displacement.
        let neg = [0x48, 0x8d, 0x05, 0, 0, 0, 0, 0x48, 0x83, 0x78, 0xf8, 0];
        assert_eq!(current_execute_data_x86_64(&neg, 0x1000, 0x1007), None);
        // A RIP-relative cmp below the globals.
        let mut code = vec![0x48, 0x83, 0x3d];
        code.extend((-0x100i32).to_le_bytes());
        code.push(0);
        assert_eq!(current_execute_data_x86_64(&code, 0x1000, 0x2000), None);
        assert_eq!(current_execute_data_x86_64(&[0xc3], at, eg), None);
        assert_eq!(current_execute_data_x86_64(&[], at, eg), None);
        // Addresses at the end of the address space do not overflow.
        assert_eq!(
            current_execute_data_x86_64(NOBLE_83, u64::MAX - 3, eg),
            None
        );
    }

    /// `zend_is_executing` of Debian bookworm's arm64 php8.2
    /// (8.2.32-1~deb12u1), at 0x2d93f0: adrp x0, 0x55f000; ldr x0, [x0,
    /// #2224] (the GOT slot 0x55f8b0, R_AARCH64_RELATIVE to
    /// `executor_globals`, 0x5788d0); ldr x0, [x0, #488]; cmp x0, #0; cset
    /// w0, ne; ret.
    const BOOKWORM_ARM64_82: [u32; 6] = [
        0xd0001420, 0xf9445800, 0xf940f400, 0xf100001f, 0x1a9f07e0, 0xd65f03c0,
    ];
    const ARM_AT: u64 = 0x2d93f0;
    const ARM_EG: u64 = 0x5788d0;

    fn arm(words: &[u32]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    fn arm_got(slot: u64) -> Option<u64> {
        (slot == 0x55f8b0).then_some(ARM_EG)
    }

    #[test]
    fn current_execute_data_from_real_arm64_code() {
        let code = arm(&BOOKWORM_ARM64_82);
        assert_eq!(
            current_execute_data_aarch64(&code, ARM_AT, ARM_EG, arm_got),
            Some(488)
        );
        // After a PACIASP and a BTI c, the same (adrp on the same page).
        let mut words = vec![0xd503233f, 0xd503245f];
        words.extend(BOOKWORM_ARM64_82);
        assert_eq!(
            current_execute_data_aarch64(&arm(&words), ARM_AT - 8, ARM_EG, arm_got),
            Some(488)
        );
        // adrp x1, 0x55f000; add x1, x1, #0x8d0 ... with the global on
        // that page itself: no GOT.
        let direct = [0xd0001421, 0x91234021, 0xf940f422, 0xf100005f];
        assert_eq!(
            current_execute_data_aarch64(&arm(&direct), ARM_AT, 0x55f8d0, |_| None),
            Some(488)
        );
    }

    #[test]
    fn unfamiliar_or_hostile_arm64_code_derives_nothing() {
        let code = arm(&BOOKWORM_ARM64_82);
        // The GOT slot holds another global, or nothing known.
        assert_eq!(
            current_execute_data_aarch64(&code, ARM_AT, ARM_EG, |_| Some(ARM_EG + 8)),
            None
        );
        assert_eq!(
            current_execute_data_aarch64(&code, ARM_AT, ARM_EG, |_| None),
            None
        );
        // Another page (the adrp decoded from another address).
        assert_eq!(
            current_execute_data_aarch64(&code, ARM_AT + 0x1000, ARM_EG, arm_got),
            None
        );
        for n in 0..16 {
            assert_eq!(
                current_execute_data_aarch64(&code[..n], ARM_AT, ARM_EG, arm_got),
                None,
                "{n} bytes"
            );
        }
        let patched = |i: usize, w: u32| {
            let mut words = BOOKWORM_ARM64_82;
            words[i] = w;
            arm(&words)
        };
        // cmp x1 (not the loaded register); cmp x0, #1; a 32-bit load;
        // the field load through x1; an offset past the globals.
        for (i, w) in [
            (3, 0xf100003f),
            (3, 0xf100041f),
            (2, 0xb941e800),
            (2, 0xf940f420),
            (2, 0xf9400000 | (4096 / 8) << 10),
        ] {
            assert_eq!(
                current_execute_data_aarch64(&patched(i, w), ARM_AT, ARM_EG, arm_got),
                None,
                "word {i} = {w:#x}"
            );
        }
        // Three hints: not zend_is_executing as compiled.
        let mut words = vec![0xd503201f; 3];
        words.extend(BOOKWORM_ARM64_82);
        assert_eq!(
            current_execute_data_aarch64(&arm(&words), ARM_AT - 12, ARM_EG, arm_got),
            None
        );
    }
}
