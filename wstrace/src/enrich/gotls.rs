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

/// Where the probes go in one Go binary (file offsets), and how the
/// kernel walks its `*tls.Conn` to the fd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoFunctions {
    pub write: u64,
    pub read: u64,
    pub read_returns: Vec<u64>,
    pub walk: ConnWalk,
}

/// The offsets of the walk from a `*tls.Conn` to its fd (what the kernel
/// gets in `GoTlsLayout`, with the itab placed per process).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StructOffsets {
    /// `crypto/tls.Conn.conn` (a `net.Conn`: itab word, data word).
    pub conn: u64,
    /// `net.TCPConn.conn` (embedded `net.conn`) + `net.conn.fd`.
    pub tcpconn_fd: u64,
    /// `net.netFD.pfd` + `internal/poll.FD.Sysfd`.
    pub netfd_sysfd: u64,
}

/// Where a binary's [`StructOffsets`] came from, as start-up says it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OffsetsFrom {
    /// Its own DWARF (`.debug_info`).
    Dwarf,
    /// The table, for this (major, minor); with why its DWARF was not used
    /// when it had some.
    Table {
        version: (u32, u32),
        dwarf: Option<String>,
    },
}

impl std::fmt::Display for OffsetsFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dwarf => write!(f, "offsets from DWARF"),
            Self::Table {
                version: (major, minor),
                dwarf,
            } => {
                write!(f, "offsets for go{major}.{minor} (table")?;
                if let Some(why) = dwarf {
                    write!(f, "; its DWARF not used: {why}")?;
                }
                write!(f, ")")
            }
        }
    }
}

/// How the kernel walks a Go binary's `*tls.Conn` to its fd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnWalk {
    pub offsets: StructOffsets,
    pub from: OffsetsFrom,
    /// The link-time address of `go:itab.*net.TCPConn,net.Conn` (from
    /// `.symtab`); `None` when the binary has none (stripped).
    pub tcpconn_itab: Option<u64>,
    /// For a position-independent executable (`ET_DYN`): the page-aligned
    /// link-time address of its segment at file offset 0, which the load
    /// bias is measured from (`itab_address`). `None` for `ET_EXEC`.
    pub pie_base: Option<u64>,
}

/// The names the itab of `*net.TCPConn` as a `net.Conn` has in `.symtab`:
/// `go:itab.` since Go 1.20, `go.itab.` before.
pub const TCPCONN_ITAB: [&str; 2] = [
    "go:itab.*net.TCPConn,net.Conn",
    "go.itab.*net.TCPConn,net.Conn",
];

/// Where the itab is in one process: its link-time address moved by the
/// load bias (for a PIE, the start of the executable's mapping at file
/// offset 0, `mapped_base`, against [`ConnWalk::pie_base`]). `None` when
/// it cannot be placed (no symbol, or a PIE whose first mapping is not
/// known): the walk is then unchecked.
pub fn itab_address(walk: &ConnWalk, mapped_base: Option<u64>) -> Option<u64> {
    let itab = walk.tcpconn_itab.filter(|&a| a != 0)?;
    match walk.pie_base {
        None => Some(itab),
        Some(link) => {
            let bias = mapped_base?.checked_sub(link)?;
            itab.checked_add(bias)
        }
    }
}

/// The Go releases whose layout of the four structs the table gives: the
/// walk's fields have been where [`TABLE_OFFSETS`] says since Go 1.9
/// (`internal/poll`), checked against the sources of these releases
/// (`crypto/tls/conn.go`: `conn net.Conn` first; `net/tcpsock.go`:
/// `TCPConn struct { conn }`; `net/net.go`: `conn struct { fd *netFD }`;
/// `net/fd_posix.go`: `pfd poll.FD` first; `internal/poll/fd_unix.go`:
/// `Sysfd int` after the 16-byte `fdMutex`) and, for 1.19, the DWARF of a
/// built binary (the gotls scenario). A release outside is not guessed:
/// its binary is covered only with its DWARF.
pub const TABLE_VERSIONS: std::ops::RangeInclusive<(u32, u32)> = (1, 17)..=(1, 22);

/// The offsets of every release in [`TABLE_VERSIONS`] (64-bit: amd64 and
/// arm64 alike).
pub const TABLE_OFFSETS: StructOffsets = StructOffsets {
    conn: 0,
    tcpconn_fd: 0,
    netfd_sysfd: 16,
};

/// The table's offsets for a Go version string, or why there are none.
pub fn table_offsets(version: Option<&str>) -> Result<((u32, u32), StructOffsets), String> {
    let (lo, hi) = (TABLE_VERSIONS.start(), TABLE_VERSIONS.end());
    match version.and_then(parse_version) {
        Some(v) if TABLE_VERSIONS.contains(&v) => Ok((v, TABLE_OFFSETS)),
        Some((major, minor)) => Err(format!(
            "unknown struct layout: go{major}.{minor} is outside the offsets table (go{}.{} .. go{}.{}) and the binary has no usable DWARF",
            lo.0, lo.1, hi.0, hi.1
        )),
        None => Err("unknown struct layout: no Go version, and no usable DWARF".into()),
    }
}

/// Largest `.debug_info` decompressed and walked for the offsets (a Go
/// binary of a large service has a few tens of MiB): past it, the table.
pub const MAX_DWARF_INFO: u64 = 64 << 20;

/// Largest `.debug_abbrev` and `.debug_str` read (Go's abbreviations are a
/// few hundred bytes; its names are inline).
pub const MAX_DWARF_AUX: u64 = 16 << 20;

/// Time the DWARF step may take in all (decompressing and walking): past
/// it, the table. Also cut at 70% of the file's read budget
/// (`tls::READ_BUDGET`), so a slow read still covers the binary.
pub const DWARF_BUDGET: std::time::Duration = std::time::Duration::from_millis(800);

/// Largest offset believed for one field (the walk's structs are a few
/// hundred bytes; Go's `tls.Conn` is 832 on 1.19).
const MAX_FIELD_OFFSET: u64 = 1 << 16;

/// How a DWARF section is stored in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packing {
    Plain,
    /// `SHF_COMPRESSED`: an `Elf64_Chdr` (of this byte order), then the
    /// stream (what Go's linker writes by default: Go 1.19's does).
    Chdr {
        big: bool,
    },
    /// A `.zdebug_*` section: `ZLIB`, the size as a big-endian u64, then
    /// the stream (older Go linkers, and GNU tools' `zlib-gnu`).
    Zdebug,
}

/// The bytes of a DWARF section stored as `packing`: decompressed (zlib)
/// into at most `max` bytes, the size the header claims checked first and
/// the stream cut at it, in steps that check `deadline`.
pub fn unpack(
    raw: &[u8],
    packing: Packing,
    max: u64,
    deadline: std::time::Instant,
) -> Result<Vec<u8>, String> {
    let (size, stream) = match packing {
        Packing::Plain => {
            if raw.len() as u64 > max {
                return Err(format!("a section is over {} MiB", max >> 20));
            }
            return Ok(raw.to_vec());
        }
        Packing::Chdr { big } => {
            if raw.len() < 24 {
                return Err("a compressed section is shorter than its header".into());
            }
            let ch_type = read_word(&raw[..4], big);
            match ch_type {
                1 => {}
                2 => return Err("a section is compressed with zstd".into()),
                t => return Err(format!("a section is compressed by unknown type {t}")),
            }
            (read_word(&raw[8..16], big), &raw[24..])
        }
        Packing::Zdebug => {
            if raw.len() < 12 || &raw[..4] != b"ZLIB" {
                return Err("a .zdebug section has no ZLIB header".into());
            }
            (read_word(&raw[4..12], true), &raw[12..])
        }
    };
    if size > max {
        return Err(format!(
            "a section is {} MiB decompressed (read up to {} MiB)",
            size >> 20,
            max >> 20
        ));
    }
    let size = size as usize;
    let mut out: Vec<u8> = Vec::new();
    let mut z = flate2::Decompress::new(true);
    loop {
        if std::time::Instant::now() > deadline {
            return Err("decompressing it took too long".into());
        }
        if out.len() == out.capacity() {
            out.reserve_exact((size - out.len().min(size)).min(1 << 20));
        }
        let (was_in, was_out) = (z.total_in(), z.total_out());
        let rest = stream.get(was_in as usize..).unwrap_or_default();
        let status = z
            .decompress_vec(rest, &mut out, flate2::FlushDecompress::None)
            .map_err(|_| "a compressed section does not decompress".to_string())?;
        if matches!(status, flate2::Status::StreamEnd) {
            break;
        }
        if (z.total_in(), z.total_out()) == (was_in, was_out) {
            return Err(if out.len() >= size {
                "a compressed section is longer than its header says".into()
            } else {
                "a compressed section ends early".into()
            });
        }
    }
    if out.len() != size {
        return Err("a compressed section is shorter than its header says".into());
    }
    Ok(out)
}

/// The structs and fields the walk needs, by their DWARF names: (struct,
/// field) in the order of [`dwarf_offsets`]'s slots.
const DWARF_FIELDS: [(&str, &str); 5] = [
    ("crypto/tls.Conn", "conn"),
    ("net.TCPConn", "conn"),
    ("net.conn", "fd"),
    ("net.netFD", "pfd"),
    ("internal/poll.FD", "Sysfd"),
];

type Die<'a> = gimli::DebuggingInformationEntry<gimli::EndianSlice<'a, gimli::RunTimeEndian>>;

/// A DIE's `DW_AT_name`, inline or in `.debug_str`.
fn die_name<'a>(
    e: &Die<'a>,
    debug_str: &gimli::DebugStr<gimli::EndianSlice<'a, gimli::RunTimeEndian>>,
) -> Option<&'a [u8]> {
    match e.attr_value(gimli::DW_AT_name)? {
        gimli::AttributeValue::String(r) => Some(r.slice()),
        gimli::AttributeValue::DebugStrRef(o) => debug_str.get_str(o).ok().map(|r| r.slice()),
        _ => None,
    }
}

/// The walk's offsets from a Go binary's DWARF (`.debug_info`,
/// `.debug_abbrev`, `.debug_str`, decompressed): each struct is the first
/// `DW_TAG_structure_type` of its name, each field its member's constant
/// `DW_AT_data_member_location`. Every byte is the binary's: any error is
/// a reason (then the table), and the walk stops at `deadline`.
pub fn dwarf_offsets(
    info: &[u8],
    abbrev: &[u8],
    strings: &[u8],
    big: bool,
    deadline: std::time::Instant,
) -> Result<StructOffsets, String> {
    let endian = if big {
        gimli::RunTimeEndian::Big
    } else {
        gimli::RunTimeEndian::Little
    };
    // The sections alone, not `gimli::Dwarf`: a unit made through it reads
    // its line program (`.debug_line`), which the walk has no use for.
    let debug_info = gimli::DebugInfo::new(info, endian);
    let debug_abbrev = gimli::DebugAbbrev::new(abbrev, endian);
    let debug_str = gimli::DebugStr::new(strings, endian);
    let bad = |e: gimli::Error| format!("its DWARF does not parse ({e})");
    let mut found: [Option<u64>; DWARF_FIELDS.len()] = [None; DWARF_FIELDS.len()];
    let mut seen_struct = [false; DWARF_FIELDS.len()];
    let mut units = debug_info.units();
    let mut visited = 0u64;
    'units: while let Some(header) = units.next().map_err(bad)? {
        if std::time::Instant::now() > deadline {
            return Err("walking it took too long".into());
        }
        let abbrevs = header.abbreviations(&debug_abbrev).map_err(bad)?;
        let mut entries = header.entries(&abbrevs);
        // The struct being read (its slot, and its depth), if one wanted.
        let mut inside: Option<(usize, isize)> = None;
        while let Some(e) = entries.next_dfs().map_err(bad)? {
            visited += 1;
            if visited.is_multiple_of(4096) && std::time::Instant::now() > deadline {
                return Err("walking it took too long".into());
            }
            let depth = e.depth();
            if let Some((slot, d)) = inside {
                if depth <= d {
                    inside = None;
                } else {
                    if depth == d + 1
                        && e.tag() == gimli::DW_TAG_member
                        && die_name(e, &debug_str) == Some(DWARF_FIELDS[slot].1.as_bytes())
                    {
                        let at = e
                            .attr(gimli::DW_AT_data_member_location)
                            .and_then(|a| a.udata_value())
                            .filter(|&o| o < MAX_FIELD_OFFSET)
                            .ok_or_else(|| {
                                format!(
                                    "{}.{} has no constant offset below {MAX_FIELD_OFFSET}",
                                    DWARF_FIELDS[slot].0, DWARF_FIELDS[slot].1
                                )
                            })?;
                        found[slot] = Some(at);
                        if found.iter().all(Option::is_some) {
                            break 'units;
                        }
                    }
                    continue;
                }
            }
            if e.tag() != gimli::DW_TAG_structure_type || !e.has_children() {
                continue;
            }
            let Some(name) = die_name(e, &debug_str) else {
                continue;
            };
            if let Some(slot) = DWARF_FIELDS
                .iter()
                .enumerate()
                .position(|(i, (s, _))| !seen_struct[i] && name == s.as_bytes())
            {
                seen_struct[slot] = true;
                inside = Some((slot, depth));
            }
        }
    }
    let mut got = [0u64; DWARF_FIELDS.len()];
    for (i, f) in found.iter().enumerate() {
        got[i] = f.ok_or_else(|| {
            let (s, m) = DWARF_FIELDS[i];
            if seen_struct[i] {
                format!("its {s} has no field {m}")
            } else {
                format!("it has no {s}")
            }
        })?;
    }
    Ok(StructOffsets {
        conn: got[0],
        tcpconn_fd: got[1] + got[2],
        netfd_sysfd: got[3] + got[4],
    })
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

#[cfg(test)]
mod layout_tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(30)
    }

    fn uleb(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    /// Abbreviations: 1 compile unit, 2 struct, 3 member (constant
    /// offset), 4 member (offset as an expression), all names inline.
    const ABBREV: &[u8] = &[
        1, 0x11, 1, 0x03, 0x08, 0, 0, //
        2, 0x13, 1, 0x03, 0x08, 0, 0, //
        3, 0x0d, 0, 0x03, 0x08, 0x38, 0x0f, 0, 0, //
        4, 0x0d, 0, 0x03, 0x08, 0x38, 0x18, 0, 0, //
        0,
    ];

    /// A struct's members: (name, offset; `None` for an expression).
    type Members<'a> = &'a [(&'a str, Option<u64>)];

    /// One DWARF 4 unit holding `structs` (name, members).
    fn info(structs: &[(&str, Members<'_>)]) -> Vec<u8> {
        let mut dies = Vec::new();
        dies.push(1);
        dies.extend_from_slice(b"runtime\0");
        for (name, members) in structs {
            dies.push(2);
            dies.extend_from_slice(name.as_bytes());
            dies.push(0);
            for (m, at) in *members {
                dies.push(if at.is_some() { 3 } else { 4 });
                dies.extend_from_slice(m.as_bytes());
                dies.push(0);
                match at {
                    Some(at) => uleb(*at, &mut dies),
                    None => dies.extend_from_slice(&[2, 0x23, 8]),
                }
            }
            dies.push(0);
        }
        dies.push(0);
        let mut unit = Vec::new();
        unit.extend_from_slice(&((dies.len() + 7) as u32).to_le_bytes());
        unit.extend_from_slice(&4u16.to_le_bytes());
        unit.extend_from_slice(&0u32.to_le_bytes());
        unit.push(8);
        unit.extend_from_slice(&dies);
        unit
    }

    /// The five structs as Go 1.19 lays them out, with `sysfd` for
    /// `poll.FD.Sysfd` and `conn` for `tls.Conn.conn`.
    fn go(conn: u64, sysfd: u64) -> Vec<u8> {
        info(&[
            (
                "crypto/tls.Conn",
                &[("conn", Some(conn)), ("isClient", Some(conn + 16))],
            ),
            ("net.TCPConn", &[("conn", Some(0))]),
            ("net.conn", &[("fd", Some(0))]),
            ("net.netFD", &[("pfd", Some(0)), ("family", Some(56))]),
            (
                "internal/poll.FD",
                &[("fdmu", Some(0)), ("Sysfd", Some(sysfd))],
            ),
        ])
    }

    #[test]
    fn dwarf_gives_go_1_19s_offsets() {
        assert_eq!(
            dwarf_offsets(&go(0, 16), ABBREV, &[], false, later()),
            Ok(TABLE_OFFSETS)
        );
    }

    #[test]
    fn dwarf_follows_a_layout_the_table_does_not_know() {
        // A release that moved the fields: the DWARF is what counts.
        let mut i = info(&[
            ("crypto/tls.Conn", &[("x", Some(0)), ("conn", Some(8))]),
            ("net.TCPConn", &[("conn", Some(16))]),
            ("net.conn", &[("pad", Some(0)), ("fd", Some(8))]),
            ("net.netFD", &[("pfd", Some(32))]),
            ("internal/poll.FD", &[("Sysfd", Some(24))]),
        ]);
        assert_eq!(
            dwarf_offsets(&i, ABBREV, &[], false, later()),
            Ok(StructOffsets {
                conn: 8,
                tcpconn_fd: 24,
                netfd_sysfd: 56
            })
        );
        // Two units: the structs may be in either.
        i.extend_from_slice(&info(&[("main.hub", &[("conn", Some(99))])]));
        assert!(dwarf_offsets(&i, ABBREV, &[], false, later()).is_ok());
    }

    #[test]
    fn dwarf_without_a_struct_or_field_says_which() {
        let no_fd = info(&[
            ("crypto/tls.Conn", &[("conn", Some(0))]),
            ("net.TCPConn", &[("conn", Some(0))]),
            ("net.conn", &[("fd", Some(0))]),
            ("net.netFD", &[("pfd", Some(0))]),
        ]);
        assert_eq!(
            dwarf_offsets(&no_fd, ABBREV, &[], false, later()),
            Err("it has no internal/poll.FD".into())
        );
        let no_sysfd = info(&[
            ("crypto/tls.Conn", &[("conn", Some(0))]),
            ("net.TCPConn", &[("conn", Some(0))]),
            ("net.conn", &[("fd", Some(0))]),
            ("net.netFD", &[("pfd", Some(0))]),
            ("internal/poll.FD", &[("Sysfd2", Some(16))]),
        ]);
        assert_eq!(
            dwarf_offsets(&no_sysfd, ABBREV, &[], false, later()),
            Err("its internal/poll.FD has no field Sysfd".into())
        );
    }

    #[test]
    fn hostile_dwarf_is_a_reason_not_a_guess() {
        // An offset as an expression, or past any struct's size.
        for bad in [None, Some(1 << 40)] {
            let i = info(&[
                ("crypto/tls.Conn", &[("conn", bad)]),
                ("net.TCPConn", &[("conn", Some(0))]),
            ]);
            let e = dwarf_offsets(&i, ABBREV, &[], false, later()).expect_err("refused");
            assert!(
                e.contains("crypto/tls.Conn.conn has no constant offset"),
                "{e}"
            );
        }
        // Garbage, a truncated unit, abbreviations that are not.
        let good = go(0, 16);
        assert!(dwarf_offsets(&[0xff; 64], ABBREV, &[], false, later()).is_err());
        assert!(dwarf_offsets(&good[..good.len() / 2], ABBREV, &[], false, later()).is_err());
        assert!(dwarf_offsets(&good, &[1, 0x11], &[], false, later()).is_err());
        assert!(dwarf_offsets(&[], &[], &[], false, later()).is_err());
        // Out of time.
        let past = Instant::now() - Duration::from_millis(1);
        assert_eq!(
            dwarf_offsets(&good, ABBREV, &[], false, past),
            Err("walking it took too long".into())
        );
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        use std::io::Write as _;
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(data).expect("compress");
        z.finish().expect("compress")
    }

    fn chdr(kind: u32, size: u64, stream: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&kind.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&size.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
        b.extend_from_slice(stream);
        b
    }

    #[test]
    fn compressed_sections_unpack_both_ways() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let z = zlib(&data);
        let big = Packing::Chdr { big: false };
        assert_eq!(
            unpack(&chdr(1, data.len() as u64, &z), big, 64 << 20, later()).as_deref(),
            Ok(&data[..])
        );
        let mut zdebug = b"ZLIB".to_vec();
        zdebug.extend_from_slice(&(data.len() as u64).to_be_bytes());
        zdebug.extend_from_slice(&z);
        assert_eq!(
            unpack(&zdebug, Packing::Zdebug, 64 << 20, later()).as_deref(),
            Ok(&data[..])
        );
        assert_eq!(
            unpack(b"plain", Packing::Plain, 10, later()).as_deref(),
            Ok(&b"plain"[..])
        );
    }

    #[test]
    fn compressed_sections_that_lie_are_refused() {
        let data = vec![7u8; 100_000];
        let z = zlib(&data);
        let packing = Packing::Chdr { big: false };
        let e = |b: &[u8], max: u64| unpack(b, packing, max, later()).expect_err("refused");
        // A bomb: more than its header says, or a header over the cap.
        assert!(e(&chdr(1, 1000, &z), 1 << 20).contains("longer than its header"));
        assert!(e(&chdr(1, u64::MAX, &z), 1 << 20).contains("decompressed"));
        assert!(e(&chdr(1, 100_000, &z), 50_000).contains("decompressed"));
        // Less than it says, a cut stream, not zlib, zstd, no header.
        assert!(e(&chdr(1, 200_000, &z), 1 << 20).contains("shorter than its header"));
        assert!(e(&chdr(1, 100_000, &z[..z.len() / 2]), 1 << 20).contains("ends early"));
        assert!(e(&chdr(1, 100, &[0xde; 64]), 1 << 20).contains("does not decompress"));
        assert!(e(&chdr(2, 100, &z), 1 << 20).contains("zstd"));
        assert!(e(&[1, 0, 0], 1 << 20).contains("shorter than its header"));
        assert!(
            unpack(&z, Packing::Zdebug, 1 << 20, later())
                .expect_err("no ZLIB")
                .contains("no ZLIB header")
        );
        assert!(unpack(&[0; 11], Packing::Plain, 10, later()).is_err());
        let past = Instant::now() - Duration::from_millis(1);
        assert!(unpack(&chdr(1, 100_000, &z), packing, 1 << 20, past).is_err());
    }

    #[test]
    fn the_table_covers_what_was_checked_and_says_so_otherwise() {
        for v in ["go1.17", "go1.19.8", "go1.22.12"] {
            assert_eq!(
                table_offsets(Some(v)).map(|(_, o)| o),
                Ok(TABLE_OFFSETS),
                "{v}"
            );
        }
        assert_eq!(table_offsets(Some("go1.19.8")).map(|(v, _)| v), Ok((1, 19)));
        for v in ["go1.23.1", "go1.16", "devel go1.30-abc"] {
            let e = table_offsets(Some(v)).expect_err(v);
            assert!(e.starts_with("unknown struct layout: go1."), "{e}");
            assert!(e.contains("(go1.17 .. go1.22)"), "{e}");
        }
        assert!(table_offsets(None).is_err());
    }

    #[test]
    fn start_up_names_where_the_offsets_came_from() {
        assert_eq!(OffsetsFrom::Dwarf.to_string(), "offsets from DWARF");
        let t = OffsetsFrom::Table {
            version: (1, 19),
            dwarf: None,
        };
        assert_eq!(t.to_string(), "offsets for go1.19 (table)");
        let t = OffsetsFrom::Table {
            version: (1, 21),
            dwarf: Some("a section is compressed with zstd".into()),
        };
        assert_eq!(
            t.to_string(),
            "offsets for go1.21 (table; its DWARF not used: a section is compressed with zstd)"
        );
    }

    #[test]
    fn the_itab_moves_by_a_pies_load_bias_only() {
        let walk = |itab, pie_base| ConnWalk {
            offsets: TABLE_OFFSETS,
            from: OffsetsFrom::Dwarf,
            tcpconn_itab: itab,
            pie_base,
        };
        // ET_EXEC: where it was linked, wherever maps says.
        assert_eq!(
            itab_address(&walk(Some(0x72_ec48), None), Some(0x40_0000)),
            Some(0x72_ec48)
        );
        assert_eq!(
            itab_address(&walk(Some(0x72_ec48), None), None),
            Some(0x72_ec48)
        );
        // PIE linked at 0, mapped at 0x5555_5555_4000.
        assert_eq!(
            itab_address(&walk(Some(0x32_ec48), Some(0)), Some(0x5555_5555_4000)),
            Some(0x5555_5588_2c48)
        );
        // A PIE whose first mapping is unknown, or below its link address:
        // not placed (unchecked), never a wrong address.
        assert_eq!(itab_address(&walk(Some(0x32_ec48), Some(0)), None), None);
        assert_eq!(
            itab_address(&walk(Some(0x32_ec48), Some(0x1000)), Some(0)),
            None
        );
        assert_eq!(
            itab_address(&walk(Some(u64::MAX), Some(0)), Some(0x1000)),
            None
        );
        // No symbol (stripped), or a zero one.
        assert_eq!(itab_address(&walk(None, None), Some(0x40_0000)), None);
        assert_eq!(itab_address(&walk(Some(0), None), None), None);
    }
}
