//! The decoders on fake heaps, laid out as node 20's `v8dbg_*` symbols say
//! (x86_64, no pointer compression), hostile ones included.
use super::*;

/// node 20.20's values (`nm -D /usr/bin/node | grep v8dbg`, read from the
/// file).
fn layout() -> Layout {
    Layout {
        off_fp_function: -16,
        off_fp_context: -8,
        heap_object_tag: 1,
        heap_object_tag_mask: 3,
        smi_tag: 0,
        smi_tag_mask: 1,
        smi_shift: 32,
        map: 0,
        map_instance_type: 12,
        function_shared: 24,
        sfi_name_or_scope_info: 16,
        sfi_script_or_debug_info: 32,
        script_name: 16,
        script_source: 8,
        script_line_ends: 56,
        string_length: 12,
        seq_one_byte_chars: 16,
        seq_two_byte_chars: 16,
        cons_first: 16,
        cons_second: 24,
        thin_actual: 16,
        sliced_parent: 16,
        sliced_offset: 24,
        fixed_array_length: 8,
        fixed_array_data: 16,
        first_nonstring_type: 128,
        sfi_type: 262,
        scope_info_type: 261,
        script_type: 167,
        string_representation_mask: 7,
        string_encoding_mask: 8,
        one_byte_string_tag: 8,
        seq_string_tag: 0,
        cons_string_tag: 1,
        thin_string_tag: 5,
        sliced_string_tag: 3,
        scope_info_first_vars: 3,
        scope_info_ncontextlocals: 2,
    }
}

const SEQ_ONE: u16 = 8;
const SEQ_TWO: u16 = 0;
const CONS_ONE: u16 = 9;
const THIN_ONE: u16 = 13;
const SLICED_ONE: u16 = 11;
const EXTERNAL_ONE: u16 = 10;
const FIXED_ARRAY: u16 = 140;
const JS_FUNCTION: u16 = 2066;
const ODDBALL: u16 = 131;

/// A fake address space of objects, each in its own 64 KiB region.
#[derive(Default)]
struct Fake {
    regions: Vec<(u64, Vec<u8>)>,
    maps: HashMap<u16, u64>,
}

impl Memory for Fake {
    fn bytes(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        let (base, b) = self
            .regions
            .iter()
            .find(|(base, b)| *base <= addr && addr <= base + b.len() as u64)?;
        let off = (addr - base) as usize;
        b.get(off..off.checked_add(len)?).map(<[u8]>::to_vec)
    }
}

fn smi(v: i64) -> u64 {
    (v << 32) as u64
}

impl Fake {
    /// A new object of `size` bytes: its tagged pointer.
    fn alloc(&mut self, size: usize) -> u64 {
        let base = 0x10_0000 + 0x1_0000 * self.regions.len() as u64;
        self.regions.push((base, vec![0; size.max(16)]));
        base + 1
    }
    fn put(&mut self, p: u64, off: u64, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let a = p - 1 + off;
        let (base, b) = self
            .regions
            .iter_mut()
            .find(|(base, b)| *base <= a && a < base + b.len() as u64)
            .expect("in an object");
        let o = (a - *base) as usize;
        b[o..o + bytes.len()].copy_from_slice(bytes);
    }
    fn put_word(&mut self, p: u64, off: u64, w: u64) {
        self.put(p, off, &w.to_le_bytes());
    }
    /// An object of instance type `t` (its map made once per type).
    fn object(&mut self, t: u16, size: usize) -> u64 {
        let map = match self.maps.get(&t) {
            Some(&m) => m,
            None => {
                let m = self.alloc(16);
                self.put(m, 12, &t.to_le_bytes());
                self.maps.insert(t, m);
                m
            }
        };
        let p = self.alloc(size);
        self.put_word(p, 0, map);
        p
    }
    fn string_header(&mut self, t: u16, len: i32, size: usize) -> u64 {
        let p = self.object(t, size);
        self.put(p, 12, &len.to_le_bytes());
        p
    }
    fn one_byte(&mut self, s: &str) -> u64 {
        let p = self.string_header(SEQ_ONE, s.len() as i32, 16 + s.len());
        self.put(p, 16, s.as_bytes());
        p
    }
    fn two_byte(&mut self, s: &str) -> u64 {
        let units: Vec<u8> = s.encode_utf16().flat_map(u16::to_le_bytes).collect();
        let p = self.string_header(SEQ_TWO, (units.len() / 2) as i32, 16 + units.len());
        self.put(p, 16, &units);
        p
    }
    fn cons(&mut self, a: u64, b: u64, len: i32) -> u64 {
        let p = self.string_header(CONS_ONE, len, 32);
        self.put_word(p, 16, a);
        self.put_word(p, 24, b);
        p
    }
    /// A function scope's `ScopeInfo` with `locals` context locals, a
    /// function variable named `name` and positions `start..end`.
    fn scope_info(&mut self, name: Option<u64>, locals: i64, start: i64, end: i64) -> u64 {
        let p = self.object(261, 8 + 8 * (8 + 2 * locals as usize));
        // FUNCTION_SCOPE, function variable UNUSED (3) when named,
        // inferred name present.
        let mut flags = 2 | 1 << 14;
        if name.is_some() {
            flags |= 3 << 12;
        }
        let mut slots = vec![smi(flags), smi(0), smi(locals)];
        let local_name = self.one_byte("x");
        slots.extend((0..locals).map(|_| local_name));
        slots.extend((0..locals).map(|_| smi(0)));
        if let Some(n) = name {
            slots.extend([n, smi(-1)]);
        }
        slots.push(self.object(ODDBALL, 16));
        slots.extend([smi(start), smi(end)]);
        for (i, s) in slots.into_iter().enumerate() {
            self.put_word(p, 8 + 8 * i as u64, s);
        }
        p
    }
    fn script(&mut self, name: u64, source: u64, line_ends: u64) -> u64 {
        let p = self.object(167, 128);
        self.put_word(p, 8, source);
        self.put_word(p, 16, name);
        self.put_word(p, 56, line_ends);
        p
    }
    fn function(&mut self, name_or_scope_info: u64, script: u64) -> u64 {
        let sfi = self.object(262, 64);
        self.put_word(sfi, 16, name_or_scope_info);
        self.put_word(sfi, 32, script);
        let f = self.object(JS_FUNCTION, 64);
        self.put_word(f, 24, sfi);
        f
    }
}

fn heap(fake: &Fake) -> (Heap<'_, Fake>, &'static Layout) {
    let l: &'static Layout = Box::leak(Box::new(layout()));
    (Heap { mem: fake, l }, l)
}

#[test]
fn sequential_strings_one_and_two_byte() {
    let mut f = Fake::default();
    let a = f.one_byte("reapDeadClients");
    let b = f.two_byte("héllo→wörld");
    let (h, _) = heap(&f);
    assert_eq!(h.string(a).as_deref(), Some("reapDeadClients"));
    assert_eq!(h.string(b).as_deref(), Some("héllo→wörld"));
}

#[test]
fn cons_thin_and_sliced_strings() {
    let mut f = Fake::default();
    let a = f.one_byte("/srv/app/");
    let b = f.one_byte("server.js");
    let c = f.cons(a, b, 18);
    let thin = f.string_header(THIN_ONE, 18, 24);
    f.put_word(thin, 16, c);
    let sliced = f.string_header(SLICED_ONE, 6, 32);
    f.put_word(sliced, 16, c);
    f.put_word(sliced, 24, smi(9));
    let (h, _) = heap(&f);
    assert_eq!(h.string(c).as_deref(), Some("/srv/app/server.js"));
    assert_eq!(h.string(thin).as_deref(), Some("/srv/app/server.js"));
    assert_eq!(h.string(sliced).as_deref(), Some("server"));
}

#[test]
fn lying_lengths_are_bounded_or_refused() {
    let mut f = Fake::default();
    // Claims 2^31-1 characters, holds 4: the read stops at MAX_NAME and
    // fails (the object is smaller), no 2 GiB buffer.
    let huge = f.string_header(SEQ_ONE, i32::MAX, 16 + 4);
    f.put(huge, 16, b"abcd");
    // Claims more than MAX_NAME and holds them: MAX_NAME characters.
    let long = f.string_header(SEQ_ONE, 100_000, 16 + 100_000);
    f.put(long, 16, &[b'a'; 100_000]);
    let negative = f.string_header(SEQ_ONE, -5, 32);
    let (h, _) = heap(&f);
    assert_eq!(h.string(huge), None);
    assert_eq!(h.string(long).map(|s| s.len()), Some(MAX_NAME));
    assert_eq!(h.string(negative), None);
}

#[test]
fn cons_cycles_and_deep_chains_end() {
    let mut f = Fake::default();
    // A cons string whose halves are itself.
    let c = f.string_header(CONS_ONE, 1_000_000, 32);
    f.put(c, 12, &10i32.to_le_bytes());
    f.put_word(c, 16, c);
    f.put_word(c, 24, c);
    // A thin string pointing at itself.
    let t = f.string_header(THIN_ONE, 3, 24);
    f.put_word(t, 16, t);
    // A chain deeper than MAX_STRING_PARTS.
    let leaf = f.one_byte("a");
    let mut chain = leaf;
    for i in 0..MAX_STRING_PARTS + 4 {
        let empty = f.one_byte("");
        let _ = i;
        chain = f.cons(chain, empty, 1);
    }
    let (h, _) = heap(&f);
    assert_eq!(h.string(c), None);
    assert_eq!(h.string(t), None);
    assert_eq!(h.string(chain), None);
}

#[test]
fn non_strings_and_bogus_pointers_are_not_strings() {
    let mut f = Fake::default();
    let odd = f.object(ODDBALL, 16);
    let ext = f.string_header(EXTERNAL_ONE, 3, 32);
    let (h, _) = heap(&f);
    for p in [
        odd,
        ext,
        0,
        smi(7),
        0x4141_4141_4141_4141,
        u64::MAX,
        0x10_0000 + 3,
    ] {
        assert_eq!(h.string(p), None, "{p:#x}");
    }
}

const SOURCE: &str = "const a = 1;\n\nfunction reapDeadClients() {\n  x();\n}\n";

#[test]
fn a_function_named_with_file_and_line_from_the_source() {
    let mut f = Fake::default();
    let name = f.one_byte("reapDeadClients");
    let start = SOURCE.find("()").expect("params") as i64;
    let si = f.scope_info(Some(name), 2, start, SOURCE.len() as i64 - 1);
    let file = f.one_byte("/srv/server.js");
    let source = f.one_byte(SOURCE);
    let undefined = f.object(ODDBALL, 16);
    let script = f.script(file, source, undefined);
    let func = f.function(si, script);
    let (h, _) = heap(&f);
    assert_eq!(
        h.frame(func),
        Some(JsFrame {
            function: Some("reapDeadClients".into()),
            file: Some("/srv/server.js".into()),
            line: Some(3),
        })
    );
}

#[test]
fn the_line_from_line_ends_when_v8_computed_them() {
    let mut f = Fake::default();
    let name = f.one_byte("g");
    // Newlines at 10, 20, 30: position 25 is on line 3.
    let ends = f.object(FIXED_ARRAY, 16 + 24);
    f.put_word(ends, 8, smi(3));
    for (i, e) in [10, 20, 30].into_iter().enumerate() {
        f.put_word(ends, 16 + 8 * i as u64, smi(e));
    }
    let si = f.scope_info(Some(name), 0, 25, 29);
    let file = f.one_byte("node:net");
    let source = f.one_byte("");
    let script = f.script(file, source, ends);
    let func = f.function(si, script);
    // A lying line_ends length: refused, then the (empty) source is
    // scanned: line 1.
    let liar = f.object(FIXED_ARRAY, 16);
    f.put_word(liar, 8, smi(1 << 40));
    let script2 = f.script(file, source, liar);
    let func2 = f.function(si, script2);
    let (h, _) = heap(&f);
    assert_eq!(h.frame(func).and_then(|j| j.line), Some(3));
    assert_eq!(h.frame(func2).and_then(|j| j.line), Some(1));
}

#[test]
fn names_directly_in_the_shared_info_and_anonymous_functions() {
    let mut f = Fake::default();
    let name = f.one_byte("close");
    let undefined = f.object(ODDBALL, 16);
    let builtin = f.function(name, undefined);
    let si = f.scope_info(None, 0, 0, 10);
    let file = f.one_byte("/a.js");
    let source = f.one_byte("(() => {})");
    let script = f.script(file, source, undefined);
    let anon = f.function(si, script);
    let (h, _) = heap(&f);
    assert_eq!(
        h.frame(builtin),
        Some(JsFrame {
            function: Some("close".into()),
            file: None,
            line: None
        })
    );
    let a = h.frame(anon).expect("a function");
    assert_eq!((a.function, a.line), (None, Some(1)));
}

#[test]
fn bogus_functions_are_no_frames() {
    let mut f = Fake::default();
    let not_sfi = f.object(ODDBALL, 64);
    let func = f.object(JS_FUNCTION, 64);
    f.put_word(func, 24, not_sfi);
    // A ScopeInfo whose name slot is not a string: no name, no line.
    let si = f.object(261, 128);
    for (i, s) in [
        smi(2 | 3 << 12),
        smi(0),
        smi(0),
        smi(5),
        smi(-1),
        smi(0),
        smi(9),
    ]
    .into_iter()
    .enumerate()
    {
        f.put_word(si, 8 + 8 * i as u64, s);
    }
    let undefined = f.object(ODDBALL, 16);
    let weird = f.function(si, undefined);
    // A ScopeInfo claiming a billion locals.
    let big = f.object(261, 64);
    f.put_word(big, 8, smi(2));
    f.put_word(big, 24, smi(1 << 30));
    let huge = f.function(big, undefined);
    let (h, _) = heap(&f);
    for p in [0, smi(3), 0x4141_4141_4141_4141, func, not_sfi] {
        assert_eq!(h.frame(p), None, "{p:#x}");
    }
    assert_eq!(h.frame(weird), Some(JsFrame::default()));
    assert_eq!(h.frame(huge), Some(JsFrame::default()));
}

fn native(name: Option<&str>, address: u64) -> Frame {
    Frame {
        function: name.map(str::to_string),
        module: Some("/usr/bin/node".into()),
        ..Frame::unknown(FrameKind::Native, address, None)
    }
}

fn slots(frame: usize, context: u64, function: u64) -> FpSlots {
    let mut below = [0u64; FP_SLOTS];
    below[0] = context;
    below[1] = function;
    FpSlots {
        frame,
        fp: 0x7fff_0000 + 0x100 * frame as u64,
        below,
    }
}

#[test]
fn js_frames_replace_the_trampoline_and_jit_frames_in_place() {
    let mut f = Fake::default();
    let name = f.one_byte("terminate");
    let undefined = f.object(ODDBALL, 16);
    let func = f.function(name, undefined);
    let context = f.object(ODDBALL, 16);
    let stack = [
        native(Some("uv_close"), 1),
        native(Some("Builtins_InterpreterEntryTrampoline"), 2),
        native(None, 3),
        native(Some("Builtins_SetPrototypeForEach"), 4),
        native(Some("Builtins_InterpreterEntryTrampoline"), 5),
        native(Some("Builtins_InterpreterEntryTrampoline"), 6),
    ];
    let s = [
        slots(0, context, func),
        slots(1, context, func),
        slots(2, context, func),
        slots(3, context, func),
        // A typed frame: a small-integer marker in the context slot.
        slots(4, smi(13), func),
        // Not a function.
        slots(5, context, 0x4141_4141_4141_4141),
    ];
    let out = splice(&stack, &read_frames(&f, &layout(), &s));
    let shown: Vec<(Option<&str>, FrameKind, Option<u64>)> = out
        .iter()
        .map(|f| (f.function.as_deref(), f.kind, f.address))
        .collect();
    assert_eq!(
        shown,
        [
            (Some("uv_close"), FrameKind::Native, Some(1)),
            (Some("terminate"), FrameKind::Interpreted, Some(2)),
            (Some("terminate"), FrameKind::Jit, Some(3)),
            (
                Some("Builtins_SetPrototypeForEach"),
                FrameKind::Native,
                Some(4)
            ),
            (
                Some("Builtins_InterpreterEntryTrampoline"),
                FrameKind::Native,
                Some(5)
            ),
            (
                Some("Builtins_InterpreterEntryTrampoline"),
                FrameKind::Native,
                Some(6)
            ),
        ]
    );
    assert_eq!(out[1].language, Some(Language::JavaScript));
    assert_eq!(out[1].module, None);
}

#[test]
fn inlined_frames_keep_the_frame_index() {
    let mut f = Fake::default();
    let name = f.one_byte("h");
    let undefined = f.object(ODDBALL, 16);
    let func = f.function(name, undefined);
    let context = f.object(ODDBALL, 16);
    let mut inl = native(Some("inlined"), 1);
    inl.inlined = true;
    let stack = [
        inl,
        native(Some("outer"), 1),
        native(Some("Builtins_InterpreterEntryTrampoline"), 2),
    ];
    let out = splice(
        &stack,
        &read_frames(&f, &layout(), &[slots(1, context, func)]),
    );
    assert_eq!(out[2].function.as_deref(), Some("h"));
    assert_eq!(out[1].function.as_deref(), Some("outer"));
}
