//! A Go program's `crypto/tls`: which Go built it (`.go.buildinfo`), where
//! `(*Conn).Write` and `(*Conn).Read` are, and every RET instruction of
//! `Read` (its "return" probes: uretprobes corrupt Go's movable stacks).
//!
//! The pure parts live here (parsing the version, deciding coverage,
//! finding RETs in a function's bytes); the reading of the file is in
//! `enrich::tls::elf_tls`, with its bounds. Everything here is the bytes of
//! a file someone else controls: versions are bounded strings, a function
//! larger than [`MAX_FUNCTION`] is not decoded, and more than
//! [`MAX_RETURNS`] RETs is refused (each one is a perf event).

/// The two functions the uprobes go on.
pub const GO_TLS_WRITE: &str = "crypto/tls.(*Conn).Write";
pub const GO_TLS_READ: &str = "crypto/tls.(*Conn).Read";

/// Largest function decoded for its RETs: Go 1.19's `(*Conn).Read` is
/// ~1 KiB on amd64.
pub const MAX_FUNCTION: u64 = 64 << 10;

/// Most RET instructions probed in one function (Go 1.19 amd64: 4).
pub const MAX_RETURNS: usize = 64;

/// Longest version string kept (`go1.22.12` and `devel go1.23-abcdef ...`).
pub const MAX_VERSION: usize = 64;

/// The architectures whose Go register ABI the kernel programs read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoArch {
    Amd64,
    Arm64,
}

impl GoArch {
    /// From the ELF header's `e_machine`.
    pub fn from_machine(machine: u16) -> Option<Self> {
        match machine {
            object::elf::EM_X86_64 => Some(Self::Amd64),
            object::elf::EM_AARCH64 => Some(Self::Arm64),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Amd64 => "amd64",
            Self::Arm64 => "arm64",
        }
    }
}

/// Where the probes go in one Go binary (file offsets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoFunctions {
    pub write: u64,
    pub read: u64,
    pub read_returns: Vec<u64>,
}

/// What a Go program using crypto/tls offers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoTls {
    /// `go1.19.8`, from `.go.buildinfo`; `None` when it has none readable.
    pub version: Option<String>,
    pub arch: Option<GoArch>,
    /// The probe offsets, or why the binary is not covered.
    pub functions: Result<GoFunctions, String>,
}

/// The (major, minor) of a Go version string (`go1.19.8`, `go1.21rc2`,
/// `devel go1.23-...`).
pub fn parse_version(v: &str) -> Option<(u32, u32)> {
    let rest = &v[v.find("go1.")? + 2..];
    let mut parts = rest.splitn(3, |c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor_str: String = parts.next()?.chars().take(4).collect();
    let minor = minor_str.parse().ok()?;
    Some((major, minor))
}

/// Why a Go binary of this version is not covered, if it is not: the
/// kernel programs read the register ABI, Go 1.17's on amd64 and 1.18's
/// on arm64 (ABIInternal came to arm64 a release later). The reason quotes
/// the version as the binary has it: escape it where it is printed.
pub fn uncovered_version(version: Option<&str>, arch: GoArch) -> Option<String> {
    let Some(v) = version else {
        return Some("its Go version is unknown (no readable .go.buildinfo)".into());
    };
    let floor = match arch {
        GoArch::Amd64 => (1, 17),
        GoArch::Arm64 => (1, 18),
    };
    match parse_version(v) {
        Some(got) if got >= floor => None,
        Some(_) => Some(format!(
            "built with {}: Go before {}.{} on {} passes arguments on the stack",
            v,
            floor.0,
            floor.1,
            arch.name()
        )),
        None => Some(format!("its Go version ({v}) does not parse")),
    }
}

/// The buildinfo header: 14 magic bytes, pointer size, flags.
const BUILDINFO_MAGIC: &[u8; 14] = b"\xff Go buildinf:";

/// How `.go.buildinfo` stores the version.
#[derive(Debug, PartialEq, Eq)]
pub enum BuildInfo {
    /// Go 1.18+: inline, at offset 32, a uvarint length then the bytes.
    Inline(String),
    /// Go 1.13 .. 1.17: the virtual address of a Go string header
    /// (pointer, length), of this pointer size, little-endian or not.
    Pointer { addr: u64, ptr_size: u8, big: bool },
}

/// Reads the start of a `.go.buildinfo` section (at least its first 32
/// bytes, more for an inline version).
pub fn parse_buildinfo(b: &[u8]) -> Result<BuildInfo, String> {
    if b.len() < 32 || &b[..14] != BUILDINFO_MAGIC {
        return Err("its .go.buildinfo has no Go build-info header".into());
    }
    let ptr_size = b[14];
    let flags = b[15];
    let big = flags & 1 != 0;
    if flags & 2 != 0 {
        let (len, used) = uvarint(&b[32..]).ok_or("its .go.buildinfo version length is bad")?;
        let start = 32 + used;
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= MAX_VERSION && start + l <= b.len())
            .ok_or("its .go.buildinfo version is longer than a version")?;
        return Ok(BuildInfo::Inline(
            String::from_utf8_lossy(&b[start..start + len]).into_owned(),
        ));
    }
    let addr = match ptr_size {
        8 => read_word(&b[16..24], big),
        4 => read_word(&b[16..20], big),
        n => return Err(format!("its .go.buildinfo says pointers are {n} bytes")),
    };
    Ok(BuildInfo::Pointer {
        addr,
        ptr_size,
        big,
    })
}

/// An unsigned word of 4 or 8 bytes.
pub fn read_word(b: &[u8], big: bool) -> u64 {
    let mut v = 0u64;
    if big {
        for &x in b {
            v = (v << 8) | u64::from(x);
        }
    } else {
        for &x in b.iter().rev() {
            v = (v << 8) | u64::from(x);
        }
    }
    v
}

/// A Go `uvarint`: the value and the bytes it took (at most 10).
fn uvarint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &x) in b.iter().take(10).enumerate() {
        v |= u64::from(x & 0x7f) << (7 * i);
        if x & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// The offsets, relative to the function's start, of every RET in `code`
/// (a whole function's bytes). amd64: decoded instruction by instruction
/// (a 0xC3 byte inside another instruction is no RET); bytes that do not
/// decode end the function (Go pads with INT3), and a function with none
/// is refused. arm64: fixed 4-byte instructions, RET (to x30) is
/// 0xd65f03c0.
pub fn find_returns(code: &[u8], arch: GoArch) -> Result<Vec<u64>, String> {
    let mut out = Vec::new();
    match arch {
        GoArch::Amd64 => {
            use iced_x86::{Decoder, DecoderOptions, Mnemonic};
            let mut d = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
            while d.can_decode() {
                let ins = d.decode();
                if ins.is_invalid() {
                    return Err(format!(
                        "bytes at +{:#x} of (*Conn).Read do not decode as x86-64",
                        ins.ip()
                    ));
                }
                if matches!(ins.mnemonic(), Mnemonic::Ret) {
                    out.push(ins.ip());
                }
                if out.len() > MAX_RETURNS {
                    break;
                }
            }
        }
        GoArch::Arm64 => {
            for (i, w) in code.chunks_exact(4).enumerate() {
                if u32::from_le_bytes([w[0], w[1], w[2], w[3]]) == 0xd65f_03c0 {
                    out.push(i as u64 * 4);
                }
                if out.len() > MAX_RETURNS {
                    break;
                }
            }
        }
    }
    if out.is_empty() {
        return Err("(*Conn).Read has no RET instruction".into());
    }
    if out.len() > MAX_RETURNS {
        return Err(format!(
            "(*Conn).Read has more than {MAX_RETURNS} RET instructions"
        ));
    }
    Ok(out)
}

/// Looks `names` up in a Go `.gopclntab` (the runtime's own function
/// table, kept by stripped binaries): for each, its (address, size). Go
/// 1.16/1.17 (magic 0xfffffffa: entries as pointer pairs) and 1.18+
/// (0xfffffff0, 0xfffffff1: 32-bit offsets from the text start). Every
/// offset is checked against the table's bytes; at most `nfunc` entries
/// are visited, and `nfunc` is bounded by the table's size.
pub fn pclntab_lookup(tab: &[u8], names: &[&str]) -> Result<Vec<Option<(u64, u64)>>, String> {
    let bad = |what: &str| format!("its .gopclntab {what}");
    if tab.len() < 8 {
        return Err(bad("is shorter than its header"));
    }
    let magic = u32::from_le_bytes([tab[0], tab[1], tab[2], tab[3]]);
    let ptr = usize::from(tab[7]);
    if ptr != 8 && ptr != 4 {
        return Err(bad("has an unknown pointer size"));
    }
    let word = |at: usize| -> Result<u64, String> {
        tab.get(at..at + ptr)
            .map(|b| read_word(b, false))
            .ok_or_else(|| bad("runs past its end"))
    };
    let u32_at = |at: usize| -> Result<u32, String> {
        tab.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| bad("runs past its end"))
    };
    let new = match magic {
        0xffff_fff0 | 0xffff_fff1 => true,
        0xffff_fffa => false,
        _ => return Err(bad("has an unknown format (Go before 1.16, or not Go)")),
    };
    let nfunc = word(8)?;
    // Header fields after nfunc and nfiles; 1.18 added textStart.
    let (text_start, funcname, pcln) = if new {
        (word(8 + 2 * ptr)?, word(8 + 3 * ptr)?, word(8 + 7 * ptr)?)
    } else {
        (0, word(8 + 2 * ptr)?, word(8 + 6 * ptr)?)
    };
    let entry_size = if new { 8 } else { 2 * ptr as u64 };
    let (Ok(funcname), Ok(pcln)) = (usize::try_from(funcname), usize::try_from(pcln)) else {
        return Err(bad("has offsets past its end"));
    };
    if funcname >= tab.len() || pcln >= tab.len() {
        return Err(bad("has offsets past its end"));
    }
    if nfunc
        .checked_add(1)
        .and_then(|n| n.checked_mul(entry_size))
        .is_none_or(|b| b > (tab.len() - pcln) as u64)
    {
        return Err(bad("claims more functions than it holds"));
    }
    let nfunc = nfunc as usize;
    // (entry address, offset of its _func from pcln) of function i.
    let entry = |i: usize| -> Result<(u64, usize), String> {
        let at = pcln + i * entry_size as usize;
        if new {
            Ok((
                text_start.wrapping_add(u64::from(u32_at(at)?)),
                u32_at(at + 4)? as usize,
            ))
        } else {
            Ok((word(at)?, word(at + ptr)? as usize))
        }
    };
    let mut out = vec![None; names.len()];
    for i in 0..nfunc {
        let (start, func) = entry(i)?;
        // _func: entry (a u32 offset from 1.18, a pointer before), then nameoff.
        let name_at = pcln
            .checked_add(func)
            .and_then(|f| f.checked_add(if new { 4 } else { ptr }))
            .ok_or_else(|| bad("has offsets past its end"))?;
        let nameoff = u32_at(name_at)? as usize;
        let Some(name) = funcname.checked_add(nameoff).and_then(|at| tab.get(at..)) else {
            return Err(bad("has a name past its end"));
        };
        for (slot, want) in out.iter_mut().zip(names) {
            if slot.is_none()
                && name.len() > want.len()
                && name.starts_with(want.as_bytes())
                && name[want.len()] == 0
            {
                let (end, _) = entry(i + 1)?;
                *slot = Some((start, end.saturating_sub(start)));
            }
        }
        if out.iter().all(Option::is_some) {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_with_suffixes() {
        assert_eq!(parse_version("go1.19.8"), Some((1, 19)));
        assert_eq!(parse_version("go1.21rc2"), Some((1, 21)));
        assert_eq!(parse_version("go1.17"), Some((1, 17)));
        assert_eq!(parse_version("devel go1.23-abc123 Tue"), Some((1, 23)));
        assert_eq!(parse_version("go2"), None);
        assert_eq!(parse_version(""), None);
        assert_eq!(parse_version("go1.99999999999999"), Some((1, 9999)));
    }

    #[test]
    fn register_abi_versions_are_covered() {
        assert_eq!(uncovered_version(Some("go1.19.8"), GoArch::Amd64), None);
        assert_eq!(uncovered_version(Some("go1.17"), GoArch::Amd64), None);
        assert!(
            uncovered_version(Some("go1.17.3"), GoArch::Arm64)
                .unwrap()
                .contains("on the stack")
        );
        assert!(
            uncovered_version(Some("go1.16.15"), GoArch::Amd64)
                .unwrap()
                .contains("go1.16.15")
        );
        assert!(uncovered_version(None, GoArch::Amd64).is_some());
        assert!(
            uncovered_version(Some("weird"), GoArch::Amd64)
                .unwrap()
                .contains("does not parse")
        );
    }

    fn buildinfo(flags: u8, tail: &[u8]) -> Vec<u8> {
        let mut b = BUILDINFO_MAGIC.to_vec();
        b.push(8);
        b.push(flags);
        b.resize(32, 0);
        b.extend_from_slice(tail);
        b
    }

    #[test]
    fn buildinfo_inline_version() {
        let b = buildinfo(2, b"\x08go1.19.8\x00\x00");
        assert_eq!(
            parse_buildinfo(&b),
            Ok(BuildInfo::Inline("go1.19.8".into()))
        );
    }

    #[test]
    fn buildinfo_pointer_version() {
        let mut b = buildinfo(0, &[]);
        b[16..24].copy_from_slice(&0x4d_1234u64.to_le_bytes());
        assert_eq!(
            parse_buildinfo(&b),
            Ok(BuildInfo::Pointer {
                addr: 0x4d_1234,
                ptr_size: 8,
                big: false
            })
        );
    }

    #[test]
    fn hostile_buildinfo_is_refused() {
        assert!(parse_buildinfo(b"short").is_err());
        assert!(parse_buildinfo(&[0u8; 64]).is_err());
        // A length past the bytes there are, or past any version's.
        assert!(parse_buildinfo(&buildinfo(2, b"\x7fgo1")).is_err());
        assert!(
            parse_buildinfo(&buildinfo(
                2,
                b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"
            ))
            .is_err()
        );
        let mut b = buildinfo(0, &[]);
        b[14] = 3;
        assert!(parse_buildinfo(&b).is_err());
    }

    #[test]
    fn amd64_returns_are_instructions_not_bytes() {
        // mov eax, 0xc3c3c3c3 ; ret ; int3 ; int3 ; add rsp, 8 ; ret
        let code = [
            0xb8, 0xc3, 0xc3, 0xc3, 0xc3, 0xc3, 0xcc, 0xcc, 0x48, 0x83, 0xc4, 0x08, 0xc3,
        ];
        assert_eq!(find_returns(&code, GoArch::Amd64), Ok(vec![5, 12]));
    }

    #[test]
    fn amd64_undecodable_or_retless_code_is_refused() {
        // 0x06 (push es) is invalid in 64-bit mode.
        assert!(find_returns(&[0x90, 0x06, 0xc3], GoArch::Amd64).is_err());
        assert!(find_returns(&[0x90, 0x90], GoArch::Amd64).is_err());
        assert!(find_returns(&[], GoArch::Amd64).is_err());
        // A function of nothing but RETs has too many to probe.
        assert!(find_returns(&[0xc3; 1000], GoArch::Amd64).is_err());
    }

    #[test]
    fn arm64_returns_by_word() {
        let mut code = Vec::new();
        for w in [0xd503_201fu32, 0xd65f_03c0, 0xd503_201f, 0xd65f_03c0] {
            code.extend_from_slice(&w.to_le_bytes());
        }
        // A trailing partial word is ignored.
        code.push(0xc0);
        assert_eq!(find_returns(&code, GoArch::Arm64), Ok(vec![4, 12]));
    }
}

#[cfg(test)]
mod pclntab_tests {
    use super::*;

    /// A Go 1.18+ `.gopclntab` with `funcs` (name, entry offset), the last
    /// entry ending at `end`.
    fn table(magic: u32, funcs: &[(&str, u32)], end: u32, text: u64) -> Vec<u8> {
        let header = 8 + 8 * 8;
        let mut names = Vec::new();
        let mut nameoffs = Vec::new();
        for (n, _) in funcs {
            nameoffs.push(names.len() as u32);
            names.extend_from_slice(n.as_bytes());
            names.push(0);
        }
        let funcname = header;
        let pcln = funcname + names.len();
        let functab = (funcs.len() + 1) * 8;
        let mut t = Vec::new();
        t.extend_from_slice(&magic.to_le_bytes());
        t.extend_from_slice(&[0, 0, 1, 8]);
        for w in [
            funcs.len() as u64,
            0,
            text,
            funcname as u64,
            0,
            0,
            0,
            pcln as u64,
        ] {
            t.extend_from_slice(&w.to_le_bytes());
        }
        t.extend_from_slice(&names);
        for (i, (_, entry)) in funcs.iter().enumerate() {
            t.extend_from_slice(&entry.to_le_bytes());
            t.extend_from_slice(&((functab + i * 8) as u32).to_le_bytes());
        }
        t.extend_from_slice(&end.to_le_bytes());
        t.extend_from_slice(&0u32.to_le_bytes());
        for ((_, entry), off) in funcs.iter().zip(&nameoffs) {
            t.extend_from_slice(&entry.to_le_bytes());
            t.extend_from_slice(&off.to_le_bytes());
        }
        t
    }

    #[test]
    fn finds_functions_and_their_sizes() {
        let t = table(
            0xffff_fff1,
            &[
                ("main.main", 0),
                (GO_TLS_WRITE, 0x100),
                ("crypto/tls.(*Conn).Readx", 0x180),
                (GO_TLS_READ, 0x200),
            ],
            0x340,
            0x40_1000,
        );
        assert_eq!(
            pclntab_lookup(&t, &[GO_TLS_WRITE, GO_TLS_READ, "main.nope"]),
            Ok(vec![
                Some((0x40_1100, 0x80)),
                Some((0x40_1200, 0x140)),
                None
            ])
        );
    }

    #[test]
    fn lying_tables_are_refused_not_followed() {
        let good = table(0xffff_fff0, &[(GO_TLS_READ, 0)], 0x10, 0);
        // Unknown magic, truncated, a huge function count, names past the end.
        let mut t = good.clone();
        t[0] = 0;
        assert!(pclntab_lookup(&t, &[GO_TLS_READ]).is_err());
        assert!(pclntab_lookup(&good[..40], &[GO_TLS_READ]).is_err());
        let mut t = good.clone();
        t[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(pclntab_lookup(&t, &[GO_TLS_READ]).is_err());
        let mut t = good.clone();
        let last = t.len() - 4;
        t[last..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(pclntab_lookup(&t, &[GO_TLS_READ]).is_err());
        let mut t = good.clone();
        t[7] = 3;
        assert!(pclntab_lookup(&t, &[GO_TLS_READ]).is_err());
    }
}
