//! What blazesym found for an address, as plain owned data, and the pure
//! rules that turn it into [`Frame`]s: the looked-up address of a return
//! address, symbol table versus debug info names, inlined frames.

use blazesym::symbolize::{CodeInfo, Reason, Sym, Symbolized};

use crate::enrich::maps::is_map_files_path;
use crate::model::{Frame, FrameKind};
/// A source location (`file:line`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SourceLoc {
    pub file: String,
    pub line: Option<u32>,
}

/// A function inlined at the symbolized address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct InlinedFrame {
    pub name: String,
    pub loc: Option<SourceLoc>,
}

/// What symbolization found for one address, as plain owned data so the
/// formatting below is pure and testable without blazesym.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ResolvedFrame {
    /// Function name, already demangled by blazesym (its `demangle` feature).
    pub name: String,
    /// Offset of the *captured* address from the function start.
    pub offset: u64,
    /// Where in the function (for the outermost function: the call site of
    /// its first inlined callee, if any).
    pub loc: Option<SourceLoc>,
    /// Functions inlined at this address, outermost first (blazesym's order).
    pub inlined: Vec<InlinedFrame>,
    /// The module blazesym reported, used when our maps snapshot has none.
    pub module: Option<String>,
}

/// Outcome of looking one user address up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Lookup {
    Found(ResolvedFrame),
    /// The address is in no mapping of the (possibly stale) maps used.
    Unmapped,
    Unknown,
}

/// The address to look up for each captured address: stack entries other
/// than the innermost are return addresses, which point after the call and,
/// for a call that ends a function (`noreturn` callees), into the next
/// function. One byte back is inside the call instruction.
pub(super) fn lookup_addrs(addrs: &[u64]) -> Vec<u64> {
    addrs
        .iter()
        .enumerate()
        .map(|(i, &a)| if i == 0 { a } else { a.saturating_sub(1) })
        .collect()
}

/// Convert blazesym's answer for one address; `delta` is captured minus
/// looked-up address, added back so the printed offset is the captured one.
pub(super) fn classify(sym: Symbolized<'_>, delta: u64) -> Lookup {
    match sym {
        Symbolized::Sym(sym) if !sym.name.is_empty() => Lookup::Found(resolved_frame(&sym, delta)),
        Symbolized::Sym(_) => Lookup::Unknown,
        Symbolized::Unknown(Reason::Unmapped) => Lookup::Unmapped,
        Symbolized::Unknown(_) => Lookup::Unknown,
    }
}

fn resolved_frame(sym: &Sym<'_>, delta: u64) -> ResolvedFrame {
    ResolvedFrame {
        name: sym.name.to_string(),
        offset: (sym.offset as u64).saturating_add(delta),
        loc: sym.code_info.as_deref().map(source_loc),
        inlined: sym
            .inlined
            .iter()
            .map(|f| InlinedFrame {
                name: f.name.to_string(),
                loc: f.code_info.as_ref().map(source_loc),
            })
            .collect(),
        module: sym
            .module
            .as_deref()
            .map(|m| m.to_string_lossy().into_owned())
            // A file first opened through a pinned map_files path carries that
            // path as its module name; it means nothing to the reader.
            .filter(|m| !is_map_files_path(m)),
    }
}

/// Takes the ELF symbol's name and offset for the outermost function of a
/// frame where the debug info's are worse, as gdb does:
/// - the symbol starts later than the debug info's function (a function
///   split into hot and `.cold` parts: its DWARF entry starts at one part,
///   often the cold one, so the offset into the other is a distance between
///   sections, `f+0x190130`; the symbol `f.cold` gives `f.cold+0x20`, and
///   the hot part gets its own start back);
/// - the debug info's name is the unqualified form of the symbol's (a DWARF
///   entry without a linkage name: `_M_invoke` for
///   `std::_Function_handler<…>::_M_invoke(…)`).
///
/// Inlined frames have no symbol of their own and keep the debug info's
/// names; so does a frame whose symbol is another function altogether.
pub(super) fn prefer_symtab(frame: &mut ResolvedFrame, (name, offset): (String, u64)) {
    if offset < frame.offset {
        frame.name = name;
        frame.offset = offset;
    } else if offset == frame.offset && name != frame.name && qualifies(&name, &frame.name) {
        frame.name = name;
    }
}

/// Is `short` the unqualified name of `full` (`ns::f(int)` for `f`,
/// `a::b::c` for `c`)?
fn qualifies(full: &str, short: &str) -> bool {
    if short.is_empty() || full.len() <= short.len() {
        return false;
    }
    full.contains(&format!("::{short}("))
        || full.ends_with(&format!("::{short}"))
        || full.starts_with(&format!("{short}("))
}

fn source_loc(ci: &CodeInfo<'_>) -> SourceLoc {
    SourceLoc {
        file: ci.to_path().display().to_string(),
        line: ci.line,
    }
}

/// The source language a frame's debug info shows: Go by its `.go` source
/// file (Go's DWARF; a `-w` build has none, and its frames stay unknown
/// here). Others stay `None` until something tells them apart reliably.
fn language_of(loc: Option<&SourceLoc>) -> Option<crate::model::Language> {
    loc.filter(|l| l.file.ends_with(".go"))
        .map(|_| crate::model::Language::Go)
}

/// The frames for one user address, innermost first: each inlined callee
/// (innermost first, no offset of its own), then the real function;
/// unresolved, a single unknown frame. Always at least one frame. `addr`
/// is the captured address, never the adjusted one, so it matches raw
/// dumps.
pub(super) fn user_frames(
    addr: u64,
    frame: Option<&ResolvedFrame>,
    module: Option<&str>,
    kind: FrameKind,
) -> Vec<Frame> {
    let at = |name: &str, offset: Option<u64>, loc: Option<&SourceLoc>, inlined: bool| Frame {
        function: Some(name.to_string()),
        offset,
        module: module.map(str::to_string),
        file: loc.map(|l| l.file.clone()).filter(|f| !f.is_empty()),
        line: loc.filter(|l| !l.file.is_empty()).and_then(|l| l.line),
        inlined,
        kind,
        language: language_of(loc),
        address: Some(addr),
        unresolved: None,
    };
    match frame {
        Some(f) if !f.name.is_empty() => {
            let mut out = Vec::with_capacity(f.inlined.len() + 1);
            for i in f.inlined.iter().rev() {
                out.push(at(&i.name, None, i.loc.as_ref(), true));
            }
            out.push(at(&f.name, Some(f.offset), f.loc.as_ref(), false));
            out
        }
        _ => vec![Frame::unknown(FrameKind::Native, addr, module)],
    }
}
