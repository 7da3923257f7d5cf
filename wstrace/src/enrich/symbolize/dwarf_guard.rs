//! Is an ELF file's debug info safe to hand to blazesym?
//!
//! blazesym decompresses an `SHF_COMPRESSED` section (the DWARF of Go
//! binaries and of `gcc -gz` builds) into a `Vec` it allocates with the
//! size the section's `Elf64_Chdr.ch_size` claims, then reads the stream to
//! its end whatever that size said: a binary claiming 1 TiB aborts the
//! daemon (`memory allocation ... failed`), and a zlib bomb that claims a
//! small size grows without bound. It decompresses only for DWARF (its
//! symbol tables are read raw), so a file that fails here is symbolized
//! from its symbol tables alone. Pure over the file's bytes; the caller
//! maps the file (opened by the hostile-file rules).

use std::io::Read as _;

/// Most decompressed debug data taken from one file, in all: libc's
/// separate debug file is ~10 MiB, a large Go server's DWARF ~100 MiB.
pub(super) const MAX_DEBUG_DATA: u64 = 256 << 20;

const SHT_NULL: u32 = 0;
const SHT_NOBITS: u32 = 8;
const SHF_COMPRESSED: u64 = 0x800;
const ELFCOMPRESS_ZLIB: u32 = 1;

/// Why this file's debug info must not be used, or `None` when it may:
/// every section lies inside the file, every compressed section's claimed
/// size is within [`MAX_DEBUG_DATA`] in all, and each zlib stream, actually
/// decompressed (to nowhere, `ch_size + 1` bytes at most), yields no more
/// than it claims. Not ELF, or unparsable headers: refused too (blazesym
/// then has nothing to read either).
pub(super) fn refusal(elf: &[u8]) -> Option<String> {
    let h = Header::parse(elf).ok_or_else(|| "its ELF header is malformed".to_string());
    let h = match h {
        Ok(h) => h,
        Err(why) => return Some(why),
    };
    let len = elf.len() as u64;
    let mut claimed: u64 = 0;
    for i in 0..h.shnum {
        let Some(s) = h.section(elf, i) else {
            return Some(format!(
                "its section header {i} lies outside the file ({len} bytes)"
            ));
        };
        // SHT_NULL (section 0's size may be the extended section count)
        // and NOBITS (.bss) have no bytes in the file.
        if s.kind == SHT_NULL || s.kind == SHT_NOBITS {
            continue;
        }
        if s.offset.checked_add(s.size).is_none_or(|end| end > len) {
            return Some(format!(
                "its section {i} claims {} bytes at offset {}, past the end of the file ({len} bytes)",
                s.size, s.offset
            ));
        }
        if s.flags & SHF_COMPRESSED == 0 {
            continue;
        }
        // In bounds: checked just above.
        let data = &elf[s.offset as usize..(s.offset + s.size) as usize];
        let name = h.name(elf, &s, i);
        let Some((ch_type, ch_size, payload)) = h.chdr(data) else {
            return Some(format!(
                "its compressed section {name} has no compression header"
            ));
        };
        claimed = claimed.saturating_add(ch_size);
        if ch_size > MAX_DEBUG_DATA || claimed > MAX_DEBUG_DATA {
            return Some(format!(
                "its compressed section {name} claims {ch_size} bytes decompressed ({claimed} in all, more than {} MiB per file)",
                MAX_DEBUG_DATA >> 20
            ));
        }
        // Other kinds (zstd: blazesym is built without it) fail in blazesym
        // with an error, not an allocation.
        if ch_type == ELFCOMPRESS_ZLIB {
            let mut z = flate2::read::ZlibDecoder::new(payload).take(ch_size + 1);
            match std::io::copy(&mut z, &mut std::io::sink()) {
                Ok(n) if n > ch_size => {
                    return Some(format!(
                        "its compressed section {name} decompresses to more than the {ch_size} bytes it claims"
                    ));
                }
                // Short or corrupt streams are blazesym's error to report.
                _ => {}
            }
        }
    }
    None
}

struct Header {
    is64: bool,
    le: bool,
    shoff: u64,
    shentsize: u64,
    shnum: u64,
    shstrndx: u64,
}

struct Section {
    /// Offset of its name in the section-name string table.
    name: u32,
    kind: u32,
    flags: u64,
    offset: u64,
    size: u64,
}

fn bytes<const N: usize>(b: &[u8], at: u64) -> Option<[u8; N]> {
    let at = usize::try_from(at).ok()?;
    b.get(at..at.checked_add(N)?)?.try_into().ok()
}

impl Header {
    fn parse(elf: &[u8]) -> Option<Self> {
        if elf.get(..4)? != b"\x7fELF" {
            return None;
        }
        let is64 = match elf.get(4)? {
            1 => false,
            2 => true,
            _ => return None,
        };
        let le = match elf.get(5)? {
            1 => true,
            2 => false,
            _ => return None,
        };
        let mut h = Header {
            is64,
            le,
            shoff: 0,
            shentsize: 0,
            shnum: 0,
            shstrndx: 0,
        };
        let (shoff, shentsize, shnum, shstrndx) = if is64 {
            (
                h.u64(elf, 0x28)?,
                h.u16(elf, 0x3a)?,
                h.u16(elf, 0x3c)?,
                h.u16(elf, 0x3e)?,
            )
        } else {
            (
                h.u32(elf, 0x20)? as u64,
                h.u16(elf, 0x2e)?,
                h.u16(elf, 0x30)?,
                h.u16(elf, 0x32)?,
            )
        };
        // SHN_XINDEX (the real index in section 0's sh_link) finds no
        // table and leaves sections unnamed: names are for the message only.
        h.shstrndx = u64::from(shstrndx);
        h.shoff = shoff;
        h.shentsize = u64::from(shentsize);
        if shoff == 0 {
            // No section headers: nothing for blazesym to decompress.
            return Some(h);
        }
        if h.shentsize < if is64 { 64 } else { 40 } {
            return None;
        }
        h.shnum = u64::from(shnum);
        if shnum == 0 {
            // Extended numbering: section 0's sh_size holds the count.
            h.shnum = 1;
            h.shnum = h.section(elf, 0)?.size;
        }
        Some(h)
    }

    fn u16(&self, b: &[u8], at: u64) -> Option<u16> {
        let a = bytes(b, at)?;
        Some(if self.le {
            u16::from_le_bytes(a)
        } else {
            u16::from_be_bytes(a)
        })
    }

    fn u32(&self, b: &[u8], at: u64) -> Option<u32> {
        let a = bytes(b, at)?;
        Some(if self.le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        })
    }

    fn u64(&self, b: &[u8], at: u64) -> Option<u64> {
        let a = bytes(b, at)?;
        Some(if self.le {
            u64::from_le_bytes(a)
        } else {
            u64::from_be_bytes(a)
        })
    }

    /// Section header `i`, `None` when it is not wholly inside the file
    /// (so a claimed count of 2^64 sections stops at the file's end).
    fn section(&self, elf: &[u8], i: u64) -> Option<Section> {
        let at = self.shoff.checked_add(i.checked_mul(self.shentsize)?)?;
        bytes::<1>(elf, at.checked_add(self.shentsize - 1)?)?;
        Some(if self.is64 {
            Section {
                name: self.u32(elf, at)?,
                kind: self.u32(elf, at + 4)?,
                flags: self.u64(elf, at + 8)?,
                offset: self.u64(elf, at + 24)?,
                size: self.u64(elf, at + 32)?,
            }
        } else {
            Section {
                name: self.u32(elf, at)?,
                kind: self.u32(elf, at + 4)?,
                flags: u64::from(self.u32(elf, at + 8)?),
                offset: u64::from(self.u32(elf, at + 16)?),
                size: u64::from(self.u32(elf, at + 20)?),
            }
        })
    }

    /// A section's name for a message, with its index (`#i` alone when it
    /// has none): at most 64 bytes of it, lossy UTF-8; the caller escapes.
    fn name(&self, elf: &[u8], s: &Section, i: u64) -> String {
        let named = self.section(elf, self.shstrndx).and_then(|t| {
            let at = usize::try_from(t.offset.checked_add(u64::from(s.name))?).ok()?;
            let end = usize::try_from(t.offset.checked_add(t.size)?).ok()?;
            let bytes = elf.get(at..end.min(elf.len()))?;
            let n = bytes.iter().take(64).position(|&b| b == 0)?;
            (n > 0).then(|| String::from_utf8_lossy(&bytes[..n]).into_owned())
        });
        match named {
            Some(n) => format!("{n} (#{i})"),
            None => format!("#{i}"),
        }
    }

    /// A compressed section's (ch_type, ch_size, compressed bytes).
    fn chdr<'a>(&self, data: &'a [u8]) -> Option<(u32, u64, &'a [u8])> {
        if self.is64 {
            Some((self.u32(data, 0)?, self.u64(data, 8)?, data.get(24..)?))
        } else {
            Some((
                self.u32(data, 0)?,
                u64::from(self.u32(data, 4)?),
                data.get(12..)?,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).expect("compress");
        e.finish().expect("compress")
    }

    /// A little-endian ELF64 with a null section and one section holding
    /// `data` (compressed when `flags` says so) at offset 64; section
    /// headers follow the data.
    fn elf64(data: &[u8], flags: u64) -> Vec<u8> {
        let mut f = vec![0u8; 64];
        f[..6].copy_from_slice(b"\x7fELF\x02\x01");
        f.extend_from_slice(data);
        let shoff = f.len() as u64;
        f[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        f[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        f[0x3c..0x3e].copy_from_slice(&2u16.to_le_bytes());
        f.extend_from_slice(&[0u8; 64]);
        let mut sh = [0u8; 64];
        sh[4..8].copy_from_slice(&1u32.to_le_bytes()); // PROGBITS
        sh[8..16].copy_from_slice(&flags.to_le_bytes());
        sh[24..32].copy_from_slice(&64u64.to_le_bytes());
        sh[32..40].copy_from_slice(&(data.len() as u64).to_le_bytes());
        f.extend_from_slice(&sh);
        f
    }

    fn chdr64(ch_size: u64, payload: &[u8]) -> Vec<u8> {
        let mut c = Vec::new();
        c.extend_from_slice(&ELFCOMPRESS_ZLIB.to_le_bytes());
        c.extend_from_slice(&[0; 4]);
        c.extend_from_slice(&ch_size.to_le_bytes());
        c.extend_from_slice(&1u64.to_le_bytes());
        c.extend_from_slice(payload);
        c
    }

    /// Section 1's header starts at shoff + 64.
    fn shdr1(f: &[u8]) -> usize {
        u64::from_le_bytes(f[0x28..0x30].try_into().expect("8")) as usize + 64
    }

    #[test]
    fn honest_compressed_and_plain_sections_pass() {
        let debug = vec![7u8; 100_000];
        assert_eq!(
            refusal(&elf64(&chdr64(100_000, &zlib(&debug)), SHF_COMPRESSED)),
            None
        );
        assert_eq!(refusal(&elf64(b"plain data", 0)), None);
    }

    #[test]
    fn a_tebibyte_claim_is_refused_before_any_allocation() {
        let mut f = elf64(&chdr64(1 << 40, &zlib(b"tiny")), SHF_COMPRESSED);
        // Named through a section-name table, section 2, after the headers.
        let s1 = shdr1(&f);
        f[s1..s1 + 4].copy_from_slice(&1u32.to_le_bytes());
        let names = b"\0.debug_info\0";
        let mut sh = [0u8; 64];
        sh[4..8].copy_from_slice(&3u32.to_le_bytes()); // STRTAB
        sh[24..32].copy_from_slice(&((f.len() + 64) as u64).to_le_bytes());
        sh[32..40].copy_from_slice(&(names.len() as u64).to_le_bytes());
        f.extend_from_slice(&sh);
        f.extend_from_slice(names);
        f[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        f[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
        let why = refusal(&f).expect("refused");
        assert!(
            why.contains("section .debug_info (#1) claims 1099511627776 bytes decompressed"),
            "{why}"
        );
        assert!(why.contains("256 MiB"), "{why}");
    }

    #[test]
    fn claims_add_up_per_file() {
        // Two sections of 200 MiB each: each under the cap, not together.
        let one = chdr64(200 << 20, &zlib(b"x"));
        let mut f = elf64(&one, SHF_COMPRESSED);
        let s1 = shdr1(&f);
        let sh = f[s1..s1 + 64].to_vec();
        f.extend_from_slice(&sh);
        f[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        let why = refusal(&f).expect("refused");
        assert!(why.contains("section #2"), "{why}");
        assert!(why.contains(&format!("{} in all", 400u64 << 20)), "{why}");
    }

    #[test]
    fn a_stream_longer_than_its_claim_is_refused() {
        let bomb = zlib(&vec![0u8; 1 << 20]);
        let why = refusal(&elf64(&chdr64(4096, &bomb), SHF_COMPRESSED)).expect("refused");
        assert!(why.contains("more than the 4096 bytes it claims"), "{why}");
    }

    #[test]
    fn sections_past_the_end_of_the_file_are_refused() {
        let mut f = elf64(b"plain", 0);
        let s1 = shdr1(&f);
        f[s1 + 32..s1 + 40].copy_from_slice(&u64::MAX.to_le_bytes());
        let why = refusal(&f).expect("refused");
        assert!(why.contains("past the end of the file"), "{why}");
        // NOBITS (.bss) has no bytes in the file: any size is fine.
        f[s1 + 4..s1 + 8].copy_from_slice(&SHT_NOBITS.to_le_bytes());
        assert_eq!(refusal(&f), None);
    }

    #[test]
    fn malformed_headers_are_refused_not_panicked_on() {
        let f = elf64(&chdr64(10, b""), SHF_COMPRESSED);
        // A count of sections far past the file: stops at the file's end.
        let mut many = f.clone();
        many[0x3c..0x3e].copy_from_slice(&u16::MAX.to_le_bytes());
        assert!(
            refusal(&many)
                .expect("refused")
                .contains("outside the file")
        );
        // Extended numbering claiming 2^64 - 1 sections.
        let mut ext = f.clone();
        ext[0x3c..0x3e].copy_from_slice(&0u16.to_le_bytes());
        let s0 = shdr1(&f) - 64;
        ext[s0 + 32..s0 + 40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(refusal(&ext).expect("refused").contains("outside the file"));
        // Section header table offset near u64::MAX: no overflow.
        let mut far = f.clone();
        far[0x28..0x30].copy_from_slice(&(u64::MAX - 8).to_le_bytes());
        assert!(refusal(&far).is_some());
        // A compressed section too short for its header.
        let short = elf64(b"abc", SHF_COMPRESSED);
        assert!(
            refusal(&short)
                .expect("refused")
                .contains("no compression header")
        );
        assert!(refusal(b"\x7fELF").is_some());
        assert!(refusal(b"#!/bin/sh\n").is_some());
        // Every truncation of a valid file: an answer, never a panic.
        for n in 0..f.len() {
            let _ = refusal(&f[..n]);
        }
    }

    #[test]
    fn elf32_claims_are_read_from_its_smaller_header() {
        // ELF32 LE: header 52 bytes, section headers 40 bytes, Chdr 12.
        let mut c = Vec::new();
        c.extend_from_slice(&ELFCOMPRESS_ZLIB.to_le_bytes());
        c.extend_from_slice(&u32::MAX.to_le_bytes());
        c.extend_from_slice(&1u32.to_le_bytes());
        c.extend_from_slice(&zlib(b"x"));
        let mut f = vec![0u8; 52];
        f[..6].copy_from_slice(b"\x7fELF\x01\x01");
        f.extend_from_slice(&c);
        let shoff = f.len() as u32;
        f[0x20..0x24].copy_from_slice(&shoff.to_le_bytes());
        f[0x2e..0x30].copy_from_slice(&40u16.to_le_bytes());
        f[0x30..0x32].copy_from_slice(&2u16.to_le_bytes());
        f.extend_from_slice(&[0u8; 40]);
        let mut sh = [0u8; 40];
        sh[4..8].copy_from_slice(&1u32.to_le_bytes());
        sh[8..12].copy_from_slice(&(SHF_COMPRESSED as u32).to_le_bytes());
        sh[16..20].copy_from_slice(&52u32.to_le_bytes());
        sh[20..24].copy_from_slice(&(c.len() as u32).to_le_bytes());
        f.extend_from_slice(&sh);
        let why = refusal(&f).expect("refused");
        assert!(why.contains(&format!("claims {} bytes", u32::MAX)), "{why}");
    }
}
