//! Which TLS library a server process runs, and where its OpenSSL entry
//! points are: what the daemon needs to put uprobes on it (attach::tls).
//!
//! Everything here is read from the process and its files, all of it under
//! the control of whoever runs that process: `/proc/<pid>/maps` lines
//! (paths with any bytes), and the ELF files themselves (symbol tables of
//! any size, truncated or lying). Files are opened through
//! `/proc/<pid>/map_files/` (the mapped file itself, even if the path now
//! names another file or a FIFO) with `maps::open_untrusted` (non-blocking,
//! regular files only), read with positioned reads through a cache (a file
//! truncated under us is an error, not a SIGBUS), and a symbol table larger
//! than [`MAX_SYMBOL_TABLE`] is not read. Before the `object` crate sees a
//! file, its header tables are bounded by their sizes as the header gives
//! them, extended numbering included (`e_shnum = 0`, `e_phnum = PN_XNUM`,
//! `e_shstrndx = SHN_XINDEX`: the real counts in section 0): a fake
//! libssl claiming 16.7M sections cost 1 GiB and 5 s per file. All the
//! tables one file may make us read stay under [`MAX_READ_PER_FILE`], and
//! each file is read on a thread of its own that the survey waits for at
//! most [`READ_BUDGET`].
use std::collections::BTreeMap;

use object::{
    Endianness, ReadCache,
    elf::{ET_DYN, FileHeader64, PT_LOAD, SHF_COMPRESSED, SHT_DYNSYM, SHT_SYMTAB, STT_FUNC},
    read::elf::{FileHeader as _, ProgramHeader as _, SectionHeader as _, Sym as _},
};

use super::maps::{self, Mapping};

/// The OpenSSL/BoringSSL functions the uprobes go on.
pub const OPENSSL_FUNCTIONS: [&str; 4] = ["SSL_write", "SSL_write_ex", "SSL_read", "SSL_read_ex"];

use super::gotls::{
    self, ConnWalk, GO_TLS_READ, GO_TLS_WRITE, GoArch, GoFunctions, GoTls, OffsetsFrom,
    StructOffsets,
};

/// Largest symbol table (and its string table) read from a file a traced
/// process maps: libssl's is ~100 KiB, a big binary with full symbols a
/// few tens of MiB.
pub const MAX_SYMBOL_TABLE: u64 = 64 << 20;

/// Largest file looked into for symbols.
const MAX_TLS_FILE: u64 = 1 << 30;

/// Largest section or program header table, and section-name string
/// table, read: real ones are a few KiB (65535 sections of 64 bytes: 4 MiB).
pub const MAX_HEADER_TABLE: u64 = 4 << 20;

/// All the table bytes read from one file (header tables, symbol and
/// string tables): what one hostile file can cost in memory.
pub const MAX_READ_PER_FILE: u64 = 64 << 20;

/// How long a survey waits for one file's tables to be read; past it the
/// file is named unreadable and its reader left to finish on its own (its
/// reads are bounded above).
pub const READ_BUDGET: std::time::Duration = std::time::Duration::from_secs(2);

/// Libraries, by file name prefix, that are TLS stacks wstrace does not
/// cover, to name them at start-up.
const UNCOVERED_LIBRARIES: [(&str, &str); 5] = [
    ("libgnutls.so", "GnuTLS"),
    ("libnss3.so", "NSS"),
    ("libwolfssl.so", "wolfSSL"),
    ("libmbedtls.so", "Mbed TLS"),
    ("libs2n.so", "s2n-tls"),
];

/// One file a process maps, as the uprobe needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappedFile {
    /// The path in maps (for people; escaped when printed).
    pub path: String,
    /// `/proc/<pid>/map_files/<range>`: what is opened and probed.
    pub map_files: String,
    pub dev: String,
    pub inode: u64,
    /// Where the file's mapping at offset 0 starts in the process (a PIE's
    /// load bias is measured from it); `None` when it has none.
    pub base: Option<u64>,
}

/// What a process's maps say about TLS, before any file is read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Candidates {
    /// `libssl.so*` files (OpenSSL or BoringSSL), one per file.
    pub libssl: Vec<MappedFile>,
    /// The main executable, which may embed OpenSSL (node, statically
    /// linked servers) or be a Go program.
    pub executable: Option<MappedFile>,
    /// TLS libraries mapped that wstrace does not cover, by name.
    pub uncovered: Vec<&'static str>,
}

/// The file name of a maps path (after the last `/`), without the
/// kernel's ` (deleted)` suffix.
fn file_name(path: &str) -> &str {
    let path = path.strip_suffix(" (deleted)").unwrap_or(path);
    path.rsplit('/').next().unwrap_or(path)
}

/// Picks the TLS-relevant files out of a process's maps. `exe_inode` is
/// the (dev, inode) of `/proc/<pid>/exe`, to know the main executable's
/// mapping. Pseudo mappings (`[vdso]`, anonymous memory) are skipped; each
/// file is listed once, whatever number of mappings it has.
pub fn candidates(pid: u32, maps: &[Mapping], exe_inode: Option<(&str, u64)>) -> Candidates {
    let mut out = Candidates::default();
    let mut seen: Vec<(&str, u64)> = Vec::new();
    for m in maps {
        let Some(path) = m.path.as_deref() else {
            continue;
        };
        if !path.starts_with('/') || m.inode == 0 || seen.contains(&(m.dev.as_str(), m.inode)) {
            continue;
        }
        seen.push((m.dev.as_str(), m.inode));
        let file = || MappedFile {
            path: path.to_string(),
            map_files: maps::map_files_path(pid, m),
            dev: m.dev.clone(),
            inode: m.inode,
            base: maps
                .iter()
                .find(|o| o.offset == 0 && o.inode == m.inode && o.dev == m.dev)
                .map(|o| o.start),
        };
        let name = file_name(path);
        if exe_inode == Some((m.dev.as_str(), m.inode)) {
            out.executable = Some(file());
        } else if name.starts_with("libssl.so") {
            out.libssl.push(file());
        } else if let Some((_, stack)) = UNCOVERED_LIBRARIES
            .iter()
            .find(|(prefix, _)| name.starts_with(prefix))
            && !out.uncovered.contains(stack)
        {
            out.uncovered.push(stack);
        }
    }
    out
}

/// What one ELF file offers: file offsets of the OpenSSL functions it
/// defines, and, for a Go program using crypto/tls, its probe points.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ElfTls {
    pub openssl: BTreeMap<&'static str, u64>,
    pub go: Option<GoTls>,
    /// A Rust program with rustls linked in (its symbols say so): a TLS
    /// stack wstrace does not cover, named at start-up.
    pub rustls: bool,
}

/// How a survey names rustls among the stacks not covered.
pub const RUSTLS: &str = "rustls";

/// Whether symbol `name` is Rust code of the `rustls` crate: a Rust
/// mangled name (legacy `_ZN`, v0 `_R`) with the crate's path component
/// (`6rustls`, its length then its name, not the tail of a longer length
/// such as `16rustls_...`), or a legacy impl path naming one of its types
/// (`_$LT$rustls..conn..`). Other crates with rustls in their names
/// (`12tokio_rustls`) do not count: they pull rustls itself in anyway.
pub fn is_rustls_symbol(name: &[u8]) -> bool {
    if !(name.starts_with(b"_ZN") || name.starts_with(b"_R")) {
        return false;
    }
    let crate_component = name.windows(7).enumerate().any(|(i, w)| {
        w == b"6rustls"
            && !(i > 0 && name[i - 1].is_ascii_digit())
            && !name
                .get(i + 7)
                .is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_')
    });
    crate_component || name.windows(12).any(|w| w == b"$LT$rustls..")
}

/// Reads the symbol tables of `file` (an ELF64 file) for the OpenSSL
/// functions; `Err` says why it could not (not ELF, a table too large ...).
pub fn elf_tls(file: std::fs::File) -> Result<ElfTls, String> {
    let started = std::time::Instant::now();
    let size = file.metadata().map_err(|e| e.to_string())?.len();
    let mut budget = MAX_READ_PER_FILE.saturating_sub(header_tables(&file, size)?);
    let data = ReadCache::new(file);
    let header = FileHeader64::<Endianness>::parse(&data).map_err(|e| e.to_string())?;
    let endian = header.endian().map_err(|e| e.to_string())?;
    let sections = header.sections(endian, &data).map_err(|e| e.to_string())?;
    let segments = header
        .program_headers(endian, &data)
        .map_err(|e| e.to_string())?;
    let file_offset = |vaddr: u64| {
        segments.iter().find_map(|p| {
            let start = p.p_vaddr(endian);
            let size: u64 = p.p_filesz(endian);
            (p.p_type(endian) == PT_LOAD && vaddr >= start && vaddr - start < size)
                .then(|| vaddr - start + p.p_offset(endian))
        })
    };
    let mut out = ElfTls::default();
    // (address, size) of Go's (*Conn).Write and (*Conn).Read.
    let mut go_write = None;
    let mut go_read = None;
    // The link-time address of `*net.TCPConn`'s itab as a `net.Conn`.
    let mut tcpconn_itab = None;
    // Exported symbols first (a shared library's), then the full table.
    for kind in [SHT_DYNSYM, SHT_SYMTAB] {
        let Some((_, table)) = sections
            .iter()
            .enumerate()
            .find(|(_, s)| s.sh_type(endian) == kind)
        else {
            continue;
        };
        let strings = sections
            .section(object::SectionIndex(table.sh_link(endian) as usize))
            .map_err(|e| e.to_string())?;
        let too_big =
            |s: &object::elf::SectionHeader64<Endianness>| s.sh_size(endian) > MAX_SYMBOL_TABLE;
        if too_big(table) || too_big(strings) {
            return Err(format!(
                "its symbol table is larger than {} MiB",
                MAX_SYMBOL_TABLE >> 20
            ));
        }
        for s in [table, strings] {
            let (off, len): (u64, u64) = (s.sh_offset(endian), s.sh_size(endian));
            if off.checked_add(len).is_none_or(|end| end > size) {
                return Err("its symbol table runs past the end of the file".into());
            }
            budget = budget.checked_sub(len).ok_or_else(|| {
                format!(
                    "its tables add up to more than {} MiB",
                    MAX_READ_PER_FILE >> 20
                )
            })?;
        }
        let symbols = sections
            .symbols(endian, &data, kind)
            .map_err(|e| e.to_string())?;
        for sym in symbols.iter() {
            if sym.is_undefined(endian) {
                continue;
            }
            let Ok(name) = sym.name(endian, symbols.strings()) else {
                continue;
            };
            if !out.rustls && is_rustls_symbol(name) {
                out.rustls = true;
            }
            if name == GO_TLS_WRITE.as_bytes() {
                go_write = Some((sym.st_value(endian), sym.st_size(endian)));
                continue;
            }
            if name == GO_TLS_READ.as_bytes() {
                go_read = Some((sym.st_value(endian), sym.st_size(endian)));
                continue;
            }
            if gotls::TCPCONN_ITAB.iter().any(|n| n.as_bytes() == name) {
                tcpconn_itab = Some(sym.st_value(endian));
                continue;
            }
            if sym.st_type() != STT_FUNC {
                continue;
            }
            let Some(&f) = OPENSSL_FUNCTIONS.iter().find(|f| f.as_bytes() == name) else {
                continue;
            };
            if let Some(off) = file_offset(sym.st_value(endian)) {
                out.openssl.entry(f).or_insert(off);
            }
        }
        if out.openssl.len() == OPENSSL_FUNCTIONS.len() {
            break;
        }
    }
    // A stripped Go binary: the runtime's own function table names them.
    let mut pclntab_error = None;
    if go_write.is_none()
        && let Some((_, s)) = sections.section_by_name(endian, b".gopclntab")
    {
        match go_pclntab(&data, endian, s, &mut budget) {
            Ok([write, read]) => (go_write, go_read) = (write, read),
            Err(e) => pclntab_error = Some(e),
        }
    }
    if let Some(e) = pclntab_error {
        out.go = Some(GoTls {
            version: go_version(&data, endian, &sections, &file_offset),
            arch: GoArch::from_machine(header.e_machine(endian)),
            functions: Err(e),
        });
    }
    if let Some(write) = go_write {
        let arch = GoArch::from_machine(header.e_machine(endian));
        let version = go_version(&data, endian, &sections, &file_offset);
        let functions = match arch {
            None => Err("its architecture is neither amd64 nor arm64".to_string()),
            Some(arch) => match gotls::uncovered_version(version.as_deref(), arch) {
                Some(why) => Err(why),
                None => go_functions(&data, arch, write, go_read, &file_offset, &mut budget)
                    .and_then(|(write, read, read_returns)| {
                        let (offsets, from) = go_offsets(
                            &data,
                            endian,
                            &sections,
                            version.as_deref(),
                            &mut budget,
                            started,
                        )?;
                        // A PIE moves by its load bias, measured from the
                        // segment at file offset 0 (without one, the itab
                        // cannot be placed: the walk goes unchecked).
                        let pie = header.e_type(endian) == ET_DYN;
                        let pie_base = segments
                            .iter()
                            .find(|p| p.p_type(endian) == PT_LOAD && p.p_offset(endian) == 0)
                            .map(|p| p.p_vaddr(endian));
                        Ok(GoFunctions {
                            write,
                            read,
                            read_returns,
                            walk: ConnWalk {
                                offsets,
                                from,
                                tcpconn_itab: tcpconn_itab.filter(|_| !pie || pie_base.is_some()),
                                pie_base: if pie { pie_base } else { None },
                            },
                        })
                    }),
            },
        };
        out.go = Some(GoTls {
            version,
            arch,
            functions,
        });
    }
    Ok(out)
}

/// (address, size) of `(*Conn).Write` and `(*Conn).Read` from the
/// `.gopclntab` section `s` (read whole: at most [`MAX_SYMBOL_TABLE`],
/// within `budget`).
fn go_pclntab(
    data: &ReadCache<std::fs::File>,
    endian: Endianness,
    s: &object::elf::SectionHeader64<Endianness>,
    budget: &mut u64,
) -> Result<[Option<(u64, u64)>; 2], String> {
    use object::ReadRef as _;
    let size: u64 = s.sh_size(endian);
    if size > MAX_SYMBOL_TABLE {
        return Err(format!(
            "its .gopclntab is larger than {} MiB",
            MAX_SYMBOL_TABLE >> 20
        ));
    }
    *budget = budget
        .checked_sub(size)
        .ok_or("its tables add up to more than the read budget")?;
    let tab = data
        .read_bytes_at(s.sh_offset(endian), size)
        .map_err(|_| "its .gopclntab runs past the end of the file".to_string())?;
    let found = gotls::pclntab_lookup(tab, &[GO_TLS_WRITE, GO_TLS_READ])?;
    Ok([found[0], found[1]])
}

/// The file offsets of Go's `(*Conn).Write` and `(*Conn).Read` and of every
/// RET of `Read` (in that order), from their (address, size) symbols;
/// `Read`'s bytes are read (at most [`gotls::MAX_FUNCTION`], within
/// `budget`) and decoded.
fn go_functions(
    data: &ReadCache<std::fs::File>,
    arch: GoArch,
    write: (u64, u64),
    read: Option<(u64, u64)>,
    file_offset: &dyn Fn(u64) -> Option<u64>,
    budget: &mut u64,
) -> Result<(u64, u64, Vec<u64>), String> {
    use object::ReadRef as _;
    let (read_addr, read_size) = read.ok_or("it has no crypto/tls.(*Conn).Read symbol")?;
    let write = file_offset(write.0).ok_or("its (*Conn).Write is in no loaded segment")?;
    let read = file_offset(read_addr).ok_or("its (*Conn).Read is in no loaded segment")?;
    if read_size == 0 || read_size > gotls::MAX_FUNCTION {
        return Err(format!(
            "its (*Conn).Read is {read_size} bytes (decoded up to {} KiB)",
            gotls::MAX_FUNCTION >> 10
        ));
    }
    // The function lies in one segment (its last byte maps as its first).
    if file_offset(read_addr + read_size - 1) != Some(read + read_size - 1) {
        return Err("its (*Conn).Read runs past its segment".into());
    }
    *budget = budget
        .checked_sub(read_size)
        .ok_or("its tables and code add up to more than the read budget")?;
    let code = data
        .read_bytes_at(read, read_size)
        .map_err(|_| "its (*Conn).Read runs past the end of the file".to_string())?;
    let read_returns = gotls::find_returns(code, arch)?
        .into_iter()
        .map(|r| read + r)
        .collect();
    Ok((write, read, read_returns))
}

/// The section table of a 64-bit ELF file read through the bounded cache.
type Sections<'d> =
    object::read::elf::SectionTable<'d, FileHeader64<Endianness>, &'d ReadCache<std::fs::File>>;

/// The walk's struct offsets: from the binary's DWARF when it has some
/// that reads (bounded: [`gotls::MAX_DWARF_INFO`], [`gotls::DWARF_BUDGET`],
/// the file's read `budget`), else from the table for its Go `version`;
/// `Err` (not covered) when neither knows.
fn go_offsets<'d>(
    data: &'d ReadCache<std::fs::File>,
    endian: Endianness,
    sections: &Sections<'d>,
    version: Option<&str>,
    budget: &mut u64,
    started: std::time::Instant,
) -> Result<(StructOffsets, OffsetsFrom), String> {
    let dwarf_error = match go_dwarf(data, endian, sections, budget, started) {
        None => None,
        Some(Ok(offsets)) => return Ok((offsets, OffsetsFrom::Dwarf)),
        Some(Err(why)) => Some(why),
    };
    match gotls::table_offsets(version) {
        Ok((version, offsets)) => Ok((
            offsets,
            OffsetsFrom::Table {
                version,
                dwarf: dwarf_error,
            },
        )),
        Err(e) => Err(match dwarf_error {
            Some(why) => format!("{e} (its DWARF: {why})"),
            None => e,
        }),
    }
}

/// The walk's offsets from the DWARF of the file; `None` when it has no
/// `.debug_info` (stripped with `-w`).
fn go_dwarf<'d>(
    data: &'d ReadCache<std::fs::File>,
    endian: Endianness,
    sections: &Sections<'d>,
    budget: &mut u64,
    started: std::time::Instant,
) -> Option<Result<StructOffsets, String>> {
    use object::ReadRef as _;
    // Its own budget, and never past 70% of the file's (`started` is when
    // the file's read began): a slow host (a busy machine, an emulated
    // CPU) gets the table, not a survey past READ_BUDGET that covers
    // nothing.
    let deadline =
        (std::time::Instant::now() + gotls::DWARF_BUDGET).min(started + READ_BUDGET.mul_f64(0.7));
    let find = |name: &str| {
        sections
            .section_by_name(endian, format!(".debug_{name}").as_bytes())
            .or_else(|| sections.section_by_name(endian, format!(".zdebug_{name}").as_bytes()))
            .map(|(_, s)| s)
    };
    let info = find("info")?;
    let mut read = |s: Option<&object::elf::SectionHeader64<Endianness>>,
                    max: u64|
     -> Result<Vec<u8>, String> {
        let Some(s) = s else {
            return Ok(Vec::new());
        };
        let size: u64 = s.sh_size(endian);
        if size > max {
            return Err(format!("a section is over {} MiB", max >> 20));
        }
        *budget = budget
            .checked_sub(size)
            .ok_or("its tables and DWARF add up to more than the read budget")?;
        let raw = data
            .read_bytes_at(s.sh_offset(endian), size)
            .map_err(|_| "a section runs past the end of the file".to_string())?;
        let name = sections.section_name(endian, s).unwrap_or_default();
        let packing = if s.sh_flags(endian) & u64::from(SHF_COMPRESSED) != 0 {
            gotls::Packing::Chdr {
                big: endian == Endianness::Big,
            }
        } else if name.starts_with(b".zdebug_") {
            gotls::Packing::Zdebug
        } else {
            gotls::Packing::Plain
        };
        gotls::unpack(raw, packing, max, deadline)
    };
    let result = (|| {
        let info = read(Some(info), gotls::MAX_DWARF_INFO)?;
        let abbrev = read(find("abbrev"), gotls::MAX_DWARF_AUX)?;
        let strings = read(find("str"), gotls::MAX_DWARF_AUX)?;
        gotls::dwarf_offsets(
            &info,
            &abbrev,
            &strings,
            endian == Endianness::Big,
            deadline,
        )
    })();
    Some(result)
}

/// The Go version in `.go.buildinfo`, inline (Go 1.18+) or through a
/// string header (1.13 .. 1.17); `None` when there is none readable. At
/// most a few hundred bytes are read.
fn go_version<'d>(
    data: &'d ReadCache<std::fs::File>,
    endian: Endianness,
    sections: &Sections<'d>,
    file_offset: &dyn Fn(u64) -> Option<u64>,
) -> Option<String> {
    use object::ReadRef as _;
    let (_, s) = sections.section_by_name(endian, b".go.buildinfo")?;
    let off: u64 = s.sh_offset(endian);
    let size: u64 = s.sh_size(endian);
    let want = size.min(32 + 10 + gotls::MAX_VERSION as u64);
    let head = data.read_bytes_at(off, want).ok()?;
    match gotls::parse_buildinfo(head).ok()? {
        gotls::BuildInfo::Inline(v) => Some(v),
        gotls::BuildInfo::Pointer {
            addr,
            ptr_size,
            big,
        } => {
            let n = u64::from(ptr_size);
            let hdr = data.read_bytes_at(file_offset(addr)?, 2 * n).ok()?;
            let (p, len) = hdr.split_at(ptr_size as usize);
            let (p, len) = (gotls::read_word(p, big), gotls::read_word(len, big));
            if len == 0 || len > gotls::MAX_VERSION as u64 {
                return None;
            }
            let bytes = data.read_bytes_at(file_offset(p)?, len).ok()?;
            Some(String::from_utf8_lossy(bytes).into_owned())
        }
    }
}

/// Checks the section and program header tables and the section-name
/// string table of the ELF64 file `file` (`size` bytes) before anything
/// reads them: each within [`MAX_HEADER_TABLE`] and inside the file,
/// counts taken from section 0 where the header defers to it (extended
/// numbering). Returns the bytes they add up to.
pub fn header_tables(file: &std::fs::File, size: u64) -> Result<u64, String> {
    use std::os::unix::fs::FileExt as _;
    let mut h = [0u8; 64];
    file.read_exact_at(&mut h, 0)
        .map_err(|_| "shorter than an ELF header".to_string())?;
    if &h[..4] != b"\x7fELF" || h[4] != 2 {
        return Err("not an ELF64 file".into());
    }
    let le = match h[5] {
        1 => true,
        2 => false,
        _ => return Err("not an ELF64 file (bad byte order)".into()),
    };
    let u16_at = |b: &[u8], o: usize| {
        let v = [b[o], b[o + 1]];
        u64::from(if le {
            u16::from_le_bytes(v)
        } else {
            u16::from_be_bytes(v)
        })
    };
    let u32_at = |b: &[u8], o: usize| {
        let v = [b[o], b[o + 1], b[o + 2], b[o + 3]];
        u64::from(if le {
            u32::from_le_bytes(v)
        } else {
            u32::from_be_bytes(v)
        })
    };
    let u64_at = |b: &[u8], o: usize| {
        let mut v = [0u8; 8];
        v.copy_from_slice(&b[o..o + 8]);
        if le {
            u64::from_le_bytes(v)
        } else {
            u64::from_be_bytes(v)
        }
    };
    let (phoff, shoff) = (u64_at(&h, 32), u64_at(&h, 40));
    let (phentsize, mut phnum) = (u16_at(&h, 54), u16_at(&h, 56));
    let (shentsize, mut shnum, mut shstrndx) = (u16_at(&h, 58), u16_at(&h, 60), u16_at(&h, 62));
    let section = |i: u64| -> Result<[u8; 64], String> {
        if shentsize < 64 {
            return Err(format!("its section headers are {shentsize} bytes (< 64)"));
        }
        let mut s = [0u8; 64];
        let at = i
            .checked_mul(shentsize)
            .and_then(|o| o.checked_add(shoff))
            .ok_or("its section headers overflow")?;
        file.read_exact_at(&mut s, at)
            .map_err(|_| "a section header runs past the end of the file".to_string())?;
        Ok(s)
    };
    // PN_XNUM and SHN_XINDEX: the real values are in section 0.
    if shoff != 0 && (shnum == 0 || phnum == 0xffff || shstrndx == 0xffff) {
        let s0 = section(0)?;
        if shnum == 0 {
            shnum = u64_at(&s0, 32);
        }
        if phnum == 0xffff {
            phnum = u32_at(&s0, 44);
        }
        if shstrndx == 0xffff {
            shstrndx = u32_at(&s0, 40);
        }
    }
    if shoff == 0 {
        shnum = 0;
    }
    let table = |off: u64, n: u64, entsize: u64, what: &str| -> Result<u64, String> {
        let bytes = n
            .checked_mul(entsize)
            .filter(|&b| b <= MAX_HEADER_TABLE)
            .ok_or_else(|| {
                format!(
                    "its {what} table ({n} entries) is over {} MiB",
                    MAX_HEADER_TABLE >> 20
                )
            })?;
        if n > 0 && off.checked_add(bytes).is_none_or(|end| end > size) {
            return Err(format!("its {what} table runs past the end of the file"));
        }
        Ok(bytes)
    };
    let mut total = table(shoff, shnum, shentsize, "section header")?
        + table(phoff, phnum, phentsize, "program header")?;
    if shstrndx != 0 && shstrndx < shnum {
        let s = section(shstrndx)?;
        total += table(u64_at(&s, 24), u64_at(&s, 32), 1, "section name string")?;
    }
    Ok(total)
}

/// One file to put uprobes on, with the offsets of the functions found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub file: MappedFile,
    pub functions: BTreeMap<&'static str, u64>,
}

/// What a server process runs for TLS: the files to probe, and what is
/// there that wstrace does not cover.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Survey {
    pub targets: Vec<Target>,
    /// TLS stacks found and not covered ("Go crypto/tls", "GnuTLS" ...).
    pub uncovered: Vec<&'static str>,
    /// Files that could not be read, and why (path, reason).
    pub unreadable: Vec<(String, String)>,
    /// A Go executable using crypto/tls: its version and probe points, or
    /// why it is not covered.
    pub go: Option<(MappedFile, GoTls)>,
}

/// What was read from each file (by device and inode), so the workers of
/// one server (same executable, same libssl) cost one read each.
pub type ElfCache = std::collections::HashMap<(String, u64), Result<ElfTls, String>>;

/// Files kept in an [`ElfCache`] at most (then it starts over).
const ELF_CACHE_MAX: usize = 256;

/// Surveys `pid`: its maps, then (with `read_symbols`) the symbols of its
/// libssl files and its executable; without, every libssl is a target with
/// no functions (what a server found too late to probe maps, cheaply).
/// `None` when its maps cannot be read (it exited).
pub fn survey(pid: u32, read_symbols: bool, cache: &mut ElfCache) -> Option<Survey> {
    let maps = maps::read_maps(pid)?;
    let exe = std::fs::metadata(format!("/proc/{pid}/exe")).ok();
    let exe_key = exe.as_ref().map(|m| {
        use std::os::unix::fs::MetadataExt as _;
        (dev_string(m.dev()), m.ino())
    });
    let c = candidates(pid, &maps, exe_key.as_ref().map(|(d, i)| (d.as_str(), *i)));
    let mut out = Survey {
        uncovered: c.uncovered.clone(),
        ..Survey::default()
    };
    if !read_symbols {
        out.targets = c
            .libssl
            .into_iter()
            .map(|file| Target {
                file,
                functions: BTreeMap::new(),
            })
            .collect();
        return Some(out);
    }
    for (file, is_exe) in c
        .libssl
        .iter()
        .map(|f| (f, false))
        .chain(c.executable.iter().map(|f| (f, true)))
    {
        let key = (file.dev.clone(), file.inode);
        let read = match cache.get(&key) {
            Some(r) => r.clone(),
            None => {
                let Some(opened) = maps::open_untrusted(&file.map_files, MAX_TLS_FILE) else {
                    out.unreadable.push((
                        file.path.clone(),
                        format!(
                            "not a readable regular file of at most {} GiB",
                            MAX_TLS_FILE >> 30
                        ),
                    ));
                    continue;
                };
                let r = read_off_thread(opened);
                if cache.len() >= ELF_CACHE_MAX {
                    cache.clear();
                }
                cache.insert(key, r.clone());
                r
            }
        };
        match read {
            Ok(elf) => {
                if elf.rustls && !out.uncovered.contains(&RUSTLS) {
                    out.uncovered.push(RUSTLS);
                }
                if let Some(go) = elf.go {
                    out.go = Some((file.clone(), go));
                }
                // An executable that merely imports SSL_write from libssl
                // has it undefined: only a definition is a target.
                if !elf.openssl.is_empty() {
                    out.targets.push(Target {
                        file: file.clone(),
                        functions: elf.openssl,
                    });
                }
            }
            // An executable need not be ELF64 we can read (a script
            // interpreter's is); a libssl that is not is worth saying.
            Err(e) if !is_exe => out.unreadable.push((file.path.clone(), e)),
            Err(_) => {}
        }
    }
    Some(out)
}

/// [`elf_tls`] on a thread of its own, waited for at most [`READ_BUDGET`]:
/// the daemon's loop is never held longer by one file, however slow its
/// storage. A reader past the budget finishes (or not) on its own; its
/// reads are bounded, so it cannot grow without limit.
fn read_off_thread(file: std::fs::File) -> Result<ElfTls, String> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let spawned = std::thread::Builder::new()
        .name("wstrace-tls-elf".into())
        .spawn(move || {
            let _ = tx.send(elf_tls(file));
        });
    if spawned.is_err() {
        return Err("no thread to read it on".into());
    }
    rx.recv_timeout(READ_BUDGET).unwrap_or_else(|_| {
        Err(format!(
            "reading its tables took longer than {} s",
            READ_BUDGET.as_secs()
        ))
    })
}

/// `st_dev` as maps prints it: `major:minor`, hex, at least two digits each.
fn dev_string(dev: u64) -> String {
    format!("{:02x}:{:02x}", libc::major(dev), libc::minor(dev))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn maps_of(text: &str) -> Vec<Mapping> {
        maps::parse_maps(text)
    }

    const PYTHON: &str = "\
55d0c0a00000-55d0c0a6f000 r--p 00000000 fd:01 100 /usr/bin/python3.11
55d0c0a6f000-55d0c0d3e000 r-xp 0006f000 fd:01 100 /usr/bin/python3.11
7f1c2a000000-7f1c2a021000 rw-p 00000000 00:00 0
7f1c2b200000-7f1c2b21f000 r--p 00000000 fd:01 200 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f1c2b21f000-7f1c2b27c000 r-xp 0001f000 fd:01 200 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f1c2b300000-7f1c2b380000 r-xp 00000000 fd:01 201 /usr/lib/x86_64-linux-gnu/libcrypto.so.3
7ffd5b7e5000-7ffd5b7e7000 r-xp 00000000 00:00 0 [vdso]
";

    #[test]
    fn libssl_is_found_once_and_the_executable_apart() {
        let c = candidates(42, &maps_of(PYTHON), Some(("fd:01", 100)));
        assert_eq!(c.libssl.len(), 1, "{c:?}");
        let ssl = &c.libssl[0];
        assert_eq!(ssl.path, "/usr/lib/x86_64-linux-gnu/libssl.so.3");
        assert_eq!(
            ssl.map_files,
            "/proc/42/map_files/7f1c2b200000-7f1c2b21f000"
        );
        assert_eq!((ssl.dev.as_str(), ssl.inode), ("fd:01", 200));
        let exe = c.executable.expect("executable");
        assert_eq!(exe.path, "/usr/bin/python3.11");
        assert!(c.uncovered.is_empty());
    }

    #[test]
    fn other_tls_libraries_are_named_not_probed() {
        let c = candidates(
            7,
            &maps_of(
                "1000-2000 r-xp 0 08:02 5 /usr/lib/libgnutls.so.30.34\n\
                 3000-4000 r-xp 0 08:02 6 /usr/lib/libgnutls.so.30.34 (deleted)\n\
                 5000-6000 r-xp 0 08:02 7 /opt/x/libwolfssl.so.35\n",
            ),
            None,
        );
        assert!(c.libssl.is_empty());
        assert_eq!(c.uncovered, vec!["GnuTLS", "wolfSSL"]);
        assert_eq!(c.executable, None);
    }

    #[test]
    fn hostile_paths_are_taken_verbatim_and_pseudo_files_skipped() {
        // A directory named like a library, a deleted one, a path with
        // spaces and escapes, a pseudo file, inode 0: only real files whose
        // *name* is libssl count, and the path is never trusted to open
        // (map_files is what is opened).
        let c = candidates(
            9,
            &maps_of(
                "1000-2000 r-xp 0 08:02 11 /tmp/libssl.so.3/evil\n\
                 2000-3000 r-xp 0 08:02 12 /tmp/a b/libssl.so.1.1 (deleted)\n\
                 3000-4000 r-xp 0 08:02 13 /tmp/\x1b[31mlibssl.so\n\
                 4000-5000 r-xp 0 00:00 0 [libssl.so]\n\
                 5000-6000 r-xp 0 08:02 0 /libssl.so.9\n\
                 6000-7000 r-xp 0 08:02 14 relative/libssl.so.3\n",
            ),
            None,
        );
        let paths: Vec<&str> = c.libssl.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, vec!["/tmp/a b/libssl.so.1.1 (deleted)"]);
        assert_eq!(c.libssl[0].map_files, "/proc/9/map_files/2000-3000");
    }

    #[test]
    fn file_names() {
        assert_eq!(file_name("/usr/lib/libssl.so.3"), "libssl.so.3");
        assert_eq!(file_name("/usr/lib/libssl.so.3 (deleted)"), "libssl.so.3");
        assert_eq!(file_name("libssl.so"), "libssl.so");
    }

    #[test]
    fn rustls_is_known_by_its_mangled_crate_path() {
        for yes in [
            &b"_ZN6rustls4conn10connection8Reader4read17h0123456789abcdefE"[..],
            b"_ZN90_$LT$rustls..conn..ConnectionCommon$LT$T$GT$$u20$as$u20$core..ops..Drop$GT$4drop17h0123456789abcdefE",
            b"_RNvMs_NtCs4fqI2P2rA04_6rustls4connNtB4_6Writer5write",
        ] {
            assert!(is_rustls_symbol(yes), "{}", String::from_utf8_lossy(yes));
        }
        for no in [
            // Not Rust-mangled: a C function may be called anything.
            &b"rustls_connection_write"[..],
            b"_ZN12tokio_rustls6client4read17h0123456789abcdefE",
            b"_ZN16rustls_pemfile_x4read17h0123456789abcdefE",
            b"_ZN7rustlsx4read17h0123456789abcdefE",
            b"_ZN6rustlz4read17h0123456789abcdefE",
            b"_ZN4core3fmt5write17h0123456789abcdefE",
            b"_R",
            b"",
        ] {
            assert!(!is_rustls_symbol(no), "{}", String::from_utf8_lossy(no));
        }
    }

    #[test]
    fn dev_strings_match_maps() {
        assert_eq!(dev_string(libc::makedev(0xfd, 1)), "fd:01");
        assert_eq!(dev_string(libc::makedev(8, 0x12)), "08:12");
        assert_eq!(dev_string(libc::makedev(0x103, 0)), "103:00");
    }

    /// The real libssl of this host, if any: its functions resolve to file
    /// offsets inside the file, inside an executable segment.
    #[test]
    fn this_hosts_libssl_resolves_all_four_functions() {
        let path = [
            "/usr/lib/x86_64-linux-gnu/libssl.so.3",
            "/lib/x86_64-linux-gnu/libssl.so.3",
        ]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
        if !crate::testenv::require(
            path.is_some(),
            "libssl.so.3 is not installed (apt-get install libssl3)",
        ) {
            return;
        }
        let Some(path) = path else { return };
        let file = std::fs::File::open(path).expect("open libssl");
        let len = file.metadata().expect("stat").len();
        let elf = elf_tls(file).expect("libssl parses");
        assert_eq!(
            elf.openssl.keys().copied().collect::<Vec<_>>(),
            vec!["SSL_read", "SSL_read_ex", "SSL_write", "SSL_write_ex"]
        );
        for (f, off) in &elf.openssl {
            assert!(*off > 0 && *off < len, "{f} at {off:#x} outside the file");
        }
        assert!(elf.go.is_none());
    }

    /// An ELF64 header with extended numbering: `e_shnum = 0`,
    /// `e_shstrndx = SHN_XINDEX`, the counts in section 0 at offset 64.
    fn extended_numbering(sections: u64, phnum_xnum: Option<u32>) -> Vec<u8> {
        let mut elf = vec![0u8; 128];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[6] = 1;
        elf[0x28..0x30].copy_from_slice(&64u64.to_le_bytes()); // e_shoff
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes()); // e_shentsize
        elf[0x3c..0x3e].copy_from_slice(&0u16.to_le_bytes()); // e_shnum
        elf[0x3e..0x40].copy_from_slice(&0xffffu16.to_le_bytes()); // e_shstrndx
        if let Some(n) = phnum_xnum {
            elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
            elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
            elf[0x38..0x3a].copy_from_slice(&0xffffu16.to_le_bytes()); // PN_XNUM
            elf[64 + 44..64 + 48].copy_from_slice(&n.to_le_bytes()); // sh_info
        }
        elf[64 + 32..64 + 40].copy_from_slice(&sections.to_le_bytes()); // sh_size
        elf[64 + 40..64 + 44].copy_from_slice(&1u32.to_le_bytes()); // sh_link
        elf
    }

    /// Issue 25, item 2: the fake libssl (sparse, 16.7M sections by
    /// extended numbering) is refused from its header, before `object`
    /// reads a 1 GiB section header table.
    #[test]
    fn extended_numbering_is_bounded_before_anything_is_read() {
        let dir = std::env::temp_dir().join(format!("wstrace-tls-xnum-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("libssl.so.3");
        let sections = 16_700_000u64;
        std::fs::write(&path, extended_numbering(sections, None)).expect("write");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        f.set_len(64 + sections * 64).expect("sparse"); // ~1 GiB, no blocks
        drop(f);
        let e = elf_tls(std::fs::File::open(&path).expect("open")).expect_err("refused");
        assert!(
            e.contains("section header table (16700000 entries) is over 4 MiB"),
            "{e}"
        );
        // PN_XNUM: the program header count in section 0's sh_info.
        std::fs::write(&path, extended_numbering(2, Some(3_000_000))).expect("write");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        f.set_len(1 << 30).expect("sparse");
        drop(f);
        let e = elf_tls(std::fs::File::open(&path).expect("open")).expect_err("refused");
        assert!(e.contains("program header table (3000000 entries)"), "{e}");
        // A section-name string table (SHN_XINDEX -> section 1) of 1 GiB.
        let mut elf = extended_numbering(2, None);
        elf.resize(192, 0);
        elf[128 + 24..128 + 32].copy_from_slice(&0u64.to_le_bytes()); // sh_offset
        elf[128 + 32..128 + 40].copy_from_slice(&(1u64 << 30).to_le_bytes()); // sh_size
        std::fs::write(&path, &elf).expect("write");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        f.set_len(2 << 30).expect("sparse");
        drop(f);
        let e = elf_tls(std::fs::File::open(&path).expect("open")).expect_err("refused");
        assert!(e.contains("section name string table"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn non_elf_and_truncated_files_are_errors_not_panics() {
        let dir = std::env::temp_dir().join(format!("wstrace-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let garbage = dir.join("garbage");
        std::fs::write(&garbage, b"#!/bin/sh\necho not elf\n").expect("write");
        assert!(elf_tls(std::fs::File::open(&garbage).expect("open")).is_err());
        // A real ELF header claiming section headers past the end.
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2; // 64-bit
        elf[5] = 1; // little endian
        elf[6] = 1;
        elf[0x28..0x30].copy_from_slice(&0xffff_0000u64.to_le_bytes()); // e_shoff
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes()); // e_shentsize
        elf[0x3c..0x3e].copy_from_slice(&1000u16.to_le_bytes()); // e_shnum
        let truncated = dir.join("truncated");
        std::fs::write(&truncated, &elf).expect("write");
        assert!(elf_tls(std::fs::File::open(&truncated).expect("open")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
