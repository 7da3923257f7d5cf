//! JavaScript frames of Node.js (V8) in close stacks, without node flags.
//!
//! V8 keeps a frame pointer in every JavaScript frame, and the running
//! function in the frame itself (`fp + v8dbg_off_fp_function`; the context
//! at `v8dbg_off_fp_context`). The dwarf unwind already walks through those
//! frames by frame pointer (they show as `Builtins_InterpreterEntryTrampoline`
//! or as unnamed JIT code); while it has the stack copy it keeps the words
//! below each frame pointer (`unwind::slots_below`), so nothing is read from
//! the live stack and the kernel side is unchanged. Right after the unwind
//! (as soon as the close's event is read), here, the function objects are
//! read from the process's memory: `JSFunction.shared` →
//! `SharedFunctionInfo` → its name and its `Script` (file name, and the
//! line its position falls on). A function object the garbage collector
//! moved in between (a young one, in a scavenge) fails the type checks and
//! its frame stays the native one it was.
//!
//! Every offset and type number comes from the binary's own post-mortem
//! symbols (`v8dbg_*`, as llnode reads them), read from the ELF file, never
//! from a table per node version; the only layout not exported there is the
//! order of a `ScopeInfo`'s optional parts and its flag bits (where the
//! function's name and source position sit, [`ScopeFlags`]), checked on
//! every read: a name slot that is not a string, or positions that are not
//! two ordered small integers, give no name or line rather than a wrong one.
//!
//! The line is the line the function starts on (its `ScopeInfo` start
//! position, through the script's `line_ends` when V8 computed them, else by
//! counting newlines in the source), not the line running in it: that would
//! need the bytecode's source position table, which the symbols do not
//! describe.
//!
//! Everything read belongs to a process that may be hostile: each object's
//! type is checked through its map before its fields are read, strings are
//! read to [`MAX_NAME`] characters through at most [`MAX_STRING_PARTS`] cons
//! or thin parts (a cycle ends there), sources are scanned to
//! [`MAX_SOURCE_SCAN`] bytes, and all reads stop at the naming's deadline.
use std::collections::HashMap;

use object::{Object as _, ObjectSection as _, ObjectSymbol as _, SectionKind};

use super::maps::{MAX_UNTRUSTED_FILE, Mapping, open_untrusted, read_maps};
use super::procmem::Mem;
use super::python::MAX_NAME;
use crate::model::{FP_SLOTS, FpSlots, Frame, FrameKind, Language};

/// Cons/thin/sliced parts followed to build one string.
pub const MAX_STRING_PARTS: usize = 32;
/// Bytes of a script's source scanned for newlines before a position.
pub const MAX_SOURCE_SCAN: u64 = 1 << 20;
/// Entries of a script's `line_ends` trusted (a binary search reads ~22).
pub const MAX_LINE_ENDS: i64 = 1 << 22;
/// Context locals whose names a `ScopeInfo` keeps inline; more go to a hash
/// table (V8's `kScopeInfoMaxInlinedLocalNamesSize`).
const MAX_INLINED_LOCAL_NAMES: i64 = 75;

/// What the naming reads, from the binary's `v8dbg_*` symbols.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    pub off_fp_function: i64,
    pub off_fp_context: i64,
    pub heap_object_tag: u64,
    pub heap_object_tag_mask: u64,
    pub smi_tag: u64,
    pub smi_tag_mask: u64,
    /// Bits a small integer is shifted by (32 without pointer compression).
    pub smi_shift: u32,
    pub map: u64,
    pub map_instance_type: u64,
    pub function_shared: u64,
    pub sfi_name_or_scope_info: u64,
    pub sfi_script_or_debug_info: u64,
    pub script_name: u64,
    pub script_source: u64,
    pub script_line_ends: u64,
    pub string_length: u64,
    pub seq_one_byte_chars: u64,
    pub seq_two_byte_chars: u64,
    pub cons_first: u64,
    pub cons_second: u64,
    pub thin_actual: u64,
    pub sliced_parent: u64,
    pub sliced_offset: u64,
    pub fixed_array_length: u64,
    pub fixed_array_data: u64,
    pub first_nonstring_type: u16,
    pub sfi_type: u16,
    pub scope_info_type: u16,
    pub script_type: u16,
    pub string_representation_mask: u16,
    pub string_encoding_mask: u16,
    pub one_byte_string_tag: u16,
    pub seq_string_tag: u16,
    pub cons_string_tag: u16,
    pub thin_string_tag: u16,
    pub sliced_string_tag: u16,
    pub scope_info_first_vars: i64,
    pub scope_info_ncontextlocals: i64,
}

/// `ScopeInfo` flag bits and scope types (V8 10-12's `ScopeFlags` in
/// `scope-info.tq`; not among the `v8dbg_*` symbols, see the module doc).
struct ScopeFlags;
impl ScopeFlags {
    const SCOPE_TYPE_MASK: i64 = 0xf;
    const HAS_SAVED_CLASS_VARIABLE: i64 = 1 << 10;
    const FUNCTION_VARIABLE_SHIFT: i64 = 12;
    const HAS_INFERRED_FUNCTION_NAME: i64 = 1 << 14;
    const EVAL_SCOPE: i64 = 1;
    const FUNCTION_SCOPE: i64 = 2;
    const MODULE_SCOPE: i64 = 3;
    const SCRIPT_SCOPE: i64 = 4;
}

/// A node whose binary exports the layout.
#[derive(Clone, Debug)]
pub struct Found {
    pub layout: Layout,
}

/// The executable or library that holds V8 in a node process: `node`,
/// `nodejs`, `libnode.so.N` (other processes are not opened at all).
fn may_hold_v8(path: &str) -> bool {
    let base = path.rsplit('/').next().unwrap_or(path);
    base == "node" || base == "nodejs" || base.starts_with("libnode.so")
}

/// Looks for a V8 with post-mortem symbols in `pid`'s mappings.
pub fn find(pid: u32) -> Option<Found> {
    let maps = read_maps(pid)?;
    let mut seen = Vec::new();
    for m in maps
        .iter()
        .filter(|m| m.exec && m.path.as_deref().is_some_and(may_hold_v8))
    {
        if seen.contains(&m.path) {
            continue;
        }
        seen.push(m.path.clone());
        if let Some(layout) = layout_of_mapping(pid, m) {
            return Some(Found { layout });
        }
    }
    None
}

fn layout_of_mapping(pid: u32, m: &Mapping) -> Option<Layout> {
    let file = open_untrusted(&super::maps::map_files_path(pid, m), MAX_UNTRUSTED_FILE)?;
    // SAFETY: as in `python::find_in`.
    let map = unsafe { memmap2::Mmap::map(&file) }.ok()?;
    let elf = object::File::parse(&*map).ok()?;
    layout_of_elf(&elf)
}

/// The layout from an ELF file's `v8dbg_*` symbols; `None` when one is
/// missing, or a value is out of the range this reader handles (pointer
/// compression, frame slots beyond those the unwind keeps).
pub fn layout_of_elf(elf: &object::File<'_>) -> Option<Layout> {
    let syms: HashMap<&str, u64> = elf
        .dynamic_symbols()
        .chain(elf.symbols())
        .filter_map(|s| {
            let n = s.name().ok()?;
            n.starts_with("v8dbg_").then_some((n, s.address()))
        })
        .collect();
    let value = |name: &str| -> Option<i64> {
        let addr = *syms.get(name)?;
        let section = elf
            .sections()
            .find(|s| s.address() <= addr && addr < s.address().saturating_add(s.size()))?;
        if section.kind() == SectionKind::UninitializedData
            || section.kind() == SectionKind::UninitializedTls
        {
            // A constant that is 0 lives in .bss.
            return Some(0);
        }
        let b = section.data_range(addr, 4).ok()??;
        Some(i64::from(i32::from_le_bytes(b.try_into().ok()?)))
    };
    let v = |name: &str| value(&format!("v8dbg_{name}"));
    let off = |name: &str| {
        v(name)
            .and_then(|x| u64::try_from(x).ok())
            .filter(|&x| x < 4096)
    };
    let ty = |name: &str| v(name).and_then(|x| u16::try_from(x).ok());
    if v("TaggedSize")? != 8 {
        // Pointer compression: 4-byte fields, not handled here.
        return None;
    }
    let slot_ok = |x: i64| (-(8 * FP_SLOTS as i64)..0).contains(&x) && x % 8 == 0;
    let l = Layout {
        off_fp_function: v("off_fp_function").filter(|&x| slot_ok(x))?,
        off_fp_context: v("off_fp_context").filter(|&x| slot_ok(x))?,
        heap_object_tag: off("HeapObjectTag")?,
        heap_object_tag_mask: off("HeapObjectTagMask")?,
        smi_tag: off("SmiTag")?,
        smi_tag_mask: off("SmiTagMask")?,
        smi_shift: u32::try_from(v("SmiShiftSize")? + 1)
            .ok()
            .filter(|&s| s == 32)?,
        map: off("class_HeapObject__map__Map")?,
        map_instance_type: off("class_Map__instance_type__uint16_t")?,
        function_shared: off("class_JSFunction__shared__SharedFunctionInfo")?,
        sfi_name_or_scope_info: off("class_SharedFunctionInfo__name_or_scope_info__Object")?,
        sfi_script_or_debug_info: off(
            "class_SharedFunctionInfo__script_or_debug_info__HeapObject",
        )?,
        script_name: off("class_Script__name__Object")?,
        script_source: off("class_Script__source__Object")?,
        script_line_ends: off("class_Script__line_ends__Object")?,
        string_length: off("class_String__length__int32_t")?,
        seq_one_byte_chars: off("class_SeqOneByteString__chars__char")?,
        seq_two_byte_chars: off("class_SeqTwoByteString__chars__char")?,
        cons_first: off("class_ConsString__first__String")?,
        cons_second: off("class_ConsString__second__String")?,
        thin_actual: off("class_ThinString__actual__String")?,
        sliced_parent: off("class_SlicedString__parent__String")?,
        sliced_offset: off("class_SlicedString__offset__SMI")?,
        fixed_array_length: off("class_FixedArrayBase__length__SMI")?,
        fixed_array_data: off("class_FixedArray__data__uintptr_t")?,
        first_nonstring_type: ty("FirstNonstringType")?,
        sfi_type: ty("type_SharedFunctionInfo__SHARED_FUNCTION_INFO_TYPE")?,
        scope_info_type: ty("type_ScopeInfo__SCOPE_INFO_TYPE")?,
        script_type: ty("type_Script__SCRIPT_TYPE")?,
        string_representation_mask: ty("StringRepresentationMask")?,
        string_encoding_mask: ty("StringEncodingMask")?,
        one_byte_string_tag: ty("OneByteStringTag")?,
        seq_string_tag: ty("SeqStringTag")?,
        cons_string_tag: ty("ConsStringTag")?,
        thin_string_tag: ty("ThinStringTag")?,
        sliced_string_tag: ty("SlicedStringTag")?,
        scope_info_first_vars: v("scopeinfo_idx_first_vars").filter(|x| (1..16).contains(x))?,
        scope_info_ncontextlocals: v("scopeinfo_idx_ncontextlocals")
            .filter(|x| (0..16).contains(x))?,
    };
    (l.heap_object_tag_mask != 0 && l.smi_tag_mask != 0).then_some(l)
}

/// Reads of the process's memory (a trait so the decoders can be tested on
/// hostile fake heaps).
pub trait Memory {
    fn bytes(&self, addr: u64, len: usize) -> Option<Vec<u8>>;
    fn word(&self, addr: u64) -> Option<u64> {
        let b = self.bytes(addr, 8)?;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    }
}

impl Memory for Mem {
    fn bytes(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        Mem::bytes(self, addr, len)
    }
}

/// One JavaScript frame as read from the heap.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JsFrame {
    /// `None`: an anonymous function.
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
}

/// Typed reads of V8 objects through a [`Layout`].
pub struct Heap<'a, M: Memory> {
    pub mem: &'a M,
    pub l: &'a Layout,
}

impl<M: Memory> Heap<'_, M> {
    fn is_heap_object(&self, p: u64) -> bool {
        p & self.l.heap_object_tag_mask == self.l.heap_object_tag
    }
    fn smi(&self, v: u64) -> Option<i64> {
        (v & self.l.smi_tag_mask == self.l.smi_tag).then_some((v as i64) >> self.l.smi_shift)
    }
    /// A field of heap object `p` (tagged pointer).
    fn field(&self, p: u64, off: u64) -> Option<u64> {
        if !self.is_heap_object(p) {
            return None;
        }
        self.mem
            .word(p.wrapping_sub(self.l.heap_object_tag).wrapping_add(off))
    }
    fn field_bytes(&self, p: u64, off: u64, len: usize) -> Option<Vec<u8>> {
        if !self.is_heap_object(p) {
            return None;
        }
        self.mem.bytes(
            p.wrapping_sub(self.l.heap_object_tag).wrapping_add(off),
            len,
        )
    }
    /// The instance type of heap object `p`, through its map.
    pub fn instance_type(&self, p: u64) -> Option<u16> {
        let map = self.field(p, self.l.map)?;
        let b = self.field_bytes(map, self.l.map_instance_type, 2)?;
        Some(u16::from_le_bytes([b[0], b[1]]))
    }

    /// A string's text (at most [`MAX_NAME`] characters), or `None` when
    /// `p` is not a string this reader follows.
    pub fn string(&self, p: u64) -> Option<String> {
        let mut out = String::new();
        let mut parts = MAX_STRING_PARTS;
        self.append(p, &mut out, &mut parts, 0, usize::MAX)?;
        Some(out)
    }

    /// Appends characters `from..to` of string `p`: `parts` bounds the
    /// cons/thin/sliced parts followed (a cycle of cons strings ends there).
    fn append(
        &self,
        p: u64,
        out: &mut String,
        parts: &mut usize,
        from: usize,
        to: usize,
    ) -> Option<()> {
        *parts = parts.checked_sub(1)?;
        let have = out.chars().count();
        if have >= MAX_NAME || from >= to {
            return Some(());
        }
        let t = self.instance_type(p)?;
        if t >= self.l.first_nonstring_type {
            return None;
        }
        let len = self.field_bytes(p, self.l.string_length, 4)?;
        let len = i32::from_le_bytes(len.try_into().ok()?);
        let len = usize::try_from(len).ok()?;
        let to = to.min(len);
        if from >= to {
            return Some(());
        }
        let rep = t & self.l.string_representation_mask;
        let one_byte = t & self.l.string_encoding_mask == self.l.one_byte_string_tag;
        if rep == self.l.seq_string_tag {
            let n = (to - from).min(MAX_NAME - have);
            if one_byte {
                let b = self.field_bytes(p, self.l.seq_one_byte_chars + from as u64, n)?;
                out.extend(b.iter().map(|&c| char::from(c)));
            } else {
                let b = self.field_bytes(p, self.l.seq_two_byte_chars + 2 * from as u64, 2 * n)?;
                let units = b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]));
                out.extend(char::decode_utf16(units).map(|c| c.unwrap_or('\u{fffd}')));
            }
            Some(())
        } else if rep == self.l.cons_string_tag {
            let first = self.field(p, self.l.cons_first)?;
            let second = self.field(p, self.l.cons_second)?;
            let first_len = self.field_bytes(first, self.l.string_length, 4)?;
            let first_len = usize::try_from(i32::from_le_bytes(first_len.try_into().ok()?)).ok()?;
            if from < first_len {
                self.append(first, out, parts, from, to.min(first_len))?;
            }
            if to > first_len {
                self.append(
                    second,
                    out,
                    parts,
                    from.saturating_sub(first_len),
                    to - first_len,
                )?;
            }
            Some(())
        } else if rep == self.l.thin_string_tag {
            let actual = self.field(p, self.l.thin_actual)?;
            self.append(actual, out, parts, from, to)
        } else if rep == self.l.sliced_string_tag {
            let parent = self.field(p, self.l.sliced_parent)?;
            let offset = usize::try_from(self.smi(self.field(p, self.l.sliced_offset)?)?).ok()?;
            self.append(
                parent,
                out,
                parts,
                from.checked_add(offset)?,
                to.checked_add(offset)?,
            )
        } else {
            // External strings: their characters live in the embedder's
            // memory, through a C++ object the symbols do not describe.
            None
        }
    }

    /// Slot `i` of a `ScopeInfo` (after its map).
    fn scope_slot(&self, si: u64, i: i64) -> Option<u64> {
        self.field(si, 8 + 8 * u64::try_from(i).ok()?)
    }

    /// A function's name and start position from its `ScopeInfo`.
    fn scope_info(&self, si: u64) -> (Option<String>, Option<i64>) {
        let read = || -> Option<(Option<String>, Option<i64>)> {
            let flags = self.smi(self.scope_slot(si, 0)?)?;
            let n = self.smi(self.scope_slot(si, self.l.scope_info_ncontextlocals)?)?;
            if !(0..=1 << 16).contains(&n) {
                return None;
            }
            let scope_type = flags & ScopeFlags::SCOPE_TYPE_MASK;
            let mut i = self.l.scope_info_first_vars;
            if scope_type == ScopeFlags::MODULE_SCOPE {
                i += 1;
            }
            i += if n < MAX_INLINED_LOCAL_NAMES { n } else { 1 } + n;
            if flags & ScopeFlags::HAS_SAVED_CLASS_VARIABLE != 0 {
                i += 1;
            }
            let mut name = None;
            if (flags >> ScopeFlags::FUNCTION_VARIABLE_SHIFT) & 3 != 0 {
                // (name, slot index): the slot must be a small integer and
                // the name a string, or this is not the layout we know.
                self.smi(self.scope_slot(si, i + 1)?)?;
                name = Some(self.string(self.scope_slot(si, i)?)?);
                i += 2;
            }
            if flags & ScopeFlags::HAS_INFERRED_FUNCTION_NAME != 0 {
                if name.as_deref().is_none_or(str::is_empty) {
                    // `undefined` when nothing was inferred.
                    name = self.string(self.scope_slot(si, i)?).or(name);
                }
                i += 1;
            }
            let has_position = [
                ScopeFlags::FUNCTION_SCOPE,
                ScopeFlags::EVAL_SCOPE,
                ScopeFlags::SCRIPT_SCOPE,
                ScopeFlags::MODULE_SCOPE,
            ]
            .contains(&scope_type);
            let start = has_position
                .then(|| {
                    let start = self.smi(self.scope_slot(si, i)?)?;
                    let end = self.smi(self.scope_slot(si, i + 1)?)?;
                    (0 <= start && start <= end).then_some(start)
                })
                .flatten();
            Some((name.filter(|n| !n.is_empty()), start))
        };
        read().unwrap_or((None, None))
    }

    /// The 1-based line of source position `pos` in script `script`.
    fn line_of(&self, script: u64, pos: i64) -> Option<u32> {
        let ends = self.field(script, self.l.script_line_ends)?;
        if let Some(len) = self
            .field(ends, self.l.fixed_array_length)
            .and_then(|v| self.smi(v))
            .filter(|n| (1..=MAX_LINE_ENDS).contains(n))
            .filter(|_| self.instance_type(ends).is_some())
        {
            // line_ends[k] is the position of the k-th newline: the line is
            // 1 + the number of ends before `pos` (binary search).
            let at = |k: i64| {
                self.field(ends, self.l.fixed_array_data + 8 * k as u64)
                    .and_then(|v| self.smi(v))
            };
            let (mut lo, mut hi) = (0i64, len);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if at(mid)? < pos {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            return u32::try_from(lo + 1).ok();
        }
        // No line ends computed: count newlines in the source before `pos`.
        let pos = u64::try_from(pos).ok().filter(|&p| p <= MAX_SOURCE_SCAN)?;
        let source = self.field(script, self.l.script_source)?;
        let t = self.instance_type(source)?;
        if t >= self.l.first_nonstring_type
            || t & self.l.string_representation_mask != self.l.seq_string_tag
        {
            return None;
        }
        let len = self.field_bytes(source, self.l.string_length, 4)?;
        let len = u64::try_from(i32::from_le_bytes(len.try_into().ok()?)).ok()?;
        let n = pos.min(len) as usize;
        let newlines = if t & self.l.string_encoding_mask == self.l.one_byte_string_tag {
            let b = self.field_bytes(source, self.l.seq_one_byte_chars, n)?;
            b.iter().filter(|&&c| c == b'\n').count()
        } else {
            let b = self.field_bytes(source, self.l.seq_two_byte_chars, 2 * n)?;
            b.chunks_exact(2).filter(|c| c == &[b'\n', 0]).count()
        };
        u32::try_from(newlines + 1).ok()
    }

    /// The frame whose function slot holds `function`; `None` when it is
    /// not a JavaScript function.
    pub fn frame(&self, function: u64) -> Option<JsFrame> {
        let sfi = self.field(function, self.l.function_shared)?;
        if self.instance_type(sfi)? != self.l.sfi_type {
            return None;
        }
        let mut f = JsFrame::default();
        let mut start = None;
        if let Some(nos) = self.field(sfi, self.l.sfi_name_or_scope_info) {
            match self.instance_type(nos) {
                Some(t) if t == self.l.scope_info_type => {
                    (f.function, start) = self.scope_info(nos);
                }
                Some(t) if t < self.l.first_nonstring_type => {
                    f.function = self.string(nos).filter(|n| !n.is_empty());
                }
                _ => {}
            }
        }
        let script = self
            .field(sfi, self.l.sfi_script_or_debug_info)
            .filter(|&s| self.instance_type(s) == Some(self.l.script_type));
        if let Some(script) = script {
            f.file = self
                .field(script, self.l.script_name)
                .and_then(|n| self.string(n))
                .filter(|n| !n.is_empty());
            f.line = start.and_then(|pos| self.line_of(script, pos));
        }
        Some(f)
    }
}

/// Does a native frame stand for a JavaScript frame V8 ran: unnamed code
/// (JIT, outside any file) or the interpreter's entry (one builtin for
/// every interpreted function)? Named builtins keep their own name.
fn stands_for_js(f: &Frame) -> Option<FrameKind> {
    if f.kind == FrameKind::Interpreted {
        return None;
    }
    match f.function.as_deref() {
        None => Some(FrameKind::Jit),
        Some(n) if n.starts_with("Builtins_InterpreterE") => Some(FrameKind::Interpreted),
        _ => None,
    }
}

/// The JavaScript frames among an unwind's kept slots, read now (the
/// function objects are read before the garbage collector moves them):
/// each frame's index in the unwind and the frame, named as far as the
/// heap allows. Slots whose context is not a heap object (a typed frame's
/// marker) or whose function is not a function are no JavaScript frame.
pub fn read_frames(mem: &impl Memory, l: &Layout, slots: &[FpSlots]) -> Vec<(usize, Frame)> {
    let heap = Heap { mem, l };
    let word = |s: &FpSlots, off: i64| {
        let i = usize::try_from(-off / 8 - 1).ok()?;
        s.below.get(i).copied()
    };
    slots
        .iter()
        .filter_map(|s| {
            heap.is_heap_object(word(s, l.off_fp_context)?)
                .then_some(())?;
            let js = heap.frame(word(s, l.off_fp_function)?)?;
            Some((
                s.frame,
                Frame {
                    function: Some(js.function.unwrap_or_else(|| "(anonymous)".to_string())),
                    file: js.file,
                    line: js.line,
                    kind: FrameKind::Interpreted,
                    language: Some(Language::JavaScript),
                    ..Frame::default()
                },
            ))
        })
        .collect()
}

/// `native` (one frame per unwound address, inlined frames before their
/// outer one) with the JavaScript frames `js` (from [`read_frames`]) in
/// place of the native frames that stood for them.
pub fn splice(native: &[Frame], js: &[(usize, Frame)]) -> Vec<Frame> {
    let by_frame: HashMap<usize, &Frame> = js.iter().map(|(i, f)| (*i, f)).collect();
    let mut out = Vec::with_capacity(native.len());
    let mut index = 0usize;
    for f in native {
        match by_frame
            .get(&index)
            .filter(|_| !f.inlined)
            .and_then(|j| Some((stands_for_js(f)?, j)))
        {
            Some((kind, j)) => out.push(Frame {
                kind,
                address: f.address,
                ..(*j).clone()
            }),
            None => out.push(f.clone()),
        }
        if !f.inlined {
            index += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests;

#[cfg(all(test, target_arch = "x86_64"))]
mod live_tests;
