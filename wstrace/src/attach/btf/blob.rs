//! A raw BTF blob (`/sys/kernel/btf/vmlinux`), read in place.
//!
//! The kernel's BTF has ~130k types. A general parser that turns each into
//! an owned Rust value (with its name as a `String`) peaked at 60 MiB of heap
//! for the thirty lookups wstrace makes, more than the daemon's whole budget.
//! This reader keeps the blob (~5 MiB), one `u32` per type (where its record
//! starts) and name indexes of the structs, enums and functions; every
//! lookup decodes the few records it touches. Peak: ~15 MiB.
//!
//! Layout (include/uapi/linux/btf.h): a header, then the type section (each
//! `struct btf_type` is 12 bytes, followed by kind-specific data), then the
//! string section. Type ids start at 1; 0 is `void`. Every read is bounds
//! checked: a corrupt blob yields an error or `None`, never a panic.

use std::collections::HashMap;

const MAGIC: u16 = 0xeb9f;

pub const KIND_INT: u32 = 1;
pub const KIND_PTR: u32 = 2;
pub const KIND_ARRAY: u32 = 3;
pub const KIND_STRUCT: u32 = 4;
pub const KIND_UNION: u32 = 5;
pub const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
pub const KIND_TYPEDEF: u32 = 8;
pub const KIND_VOLATILE: u32 = 9;
pub const KIND_CONST: u32 = 10;
pub const KIND_RESTRICT: u32 = 11;
pub const KIND_FUNC: u32 = 12;
pub const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
pub const KIND_TYPE_TAG: u32 = 18;
pub const KIND_ENUM64: u32 = 19;

/// One decoded `struct btf_type` header.
#[derive(Clone, Copy, Debug)]
pub struct Type {
    pub name_off: u32,
    pub kind: u32,
    pub vlen: u32,
    pub kflag: bool,
    /// `size` for ints, structs, unions, enums, floats, datasecs; `type` for
    /// pointers, typedefs, qualifiers, functions and prototypes.
    pub size_or_type: u32,
    /// Where the kind-specific data after the header starts, in the blob.
    data: usize,
}

/// A struct or union member.
#[derive(Clone, Copy, Debug)]
pub struct Member {
    pub name_off: u32,
    pub tid: u32,
    pub bit_offset: u32,
    /// Non-zero for a bitfield in the kind_flag encoding.
    pub bitfield_size: u32,
}

pub struct Blob {
    data: Vec<u8>,
    str_start: usize,
    str_end: usize,
    /// Record start of type id `i + 1`.
    offsets: Vec<u32>,
    pub structs: HashMap<Box<str>, u32>,
    pub enums: HashMap<Box<str>, u32>,
    pub funcs: HashMap<Box<str>, u32>,
}

impl Blob {
    /// Indexes `data`; `Err` says what is wrong with it.
    pub fn parse(data: Vec<u8>) -> Result<Self, String> {
        let u32_at = |off: usize| read_u32(&data, off).ok_or("truncated header");
        let magic = data
            .get(0..2)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
            .ok_or("empty file")?;
        if magic != MAGIC {
            return Err(if magic == MAGIC.swap_bytes() {
                "BTF of the other byte order".into()
            } else {
                "bad magic".into()
            });
        }
        let hdr_len = u32_at(4)? as usize;
        let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
        let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
        let section = |off: usize, len: usize| {
            let start = hdr_len.checked_add(off)?;
            let end = start.checked_add(len)?;
            (end <= data.len()).then_some((start, end))
        };
        let (type_start, type_end) =
            section(type_off, type_len).ok_or("type section out of bounds")?;
        let (str_start, str_end) =
            section(str_off, str_len).ok_or("string section out of bounds")?;
        let mut blob = Blob {
            data,
            str_start,
            str_end,
            offsets: Vec::new(),
            structs: HashMap::new(),
            enums: HashMap::new(),
            funcs: HashMap::new(),
        };
        let mut at = type_start;
        while at < type_end {
            let t = blob.header(at).ok_or("truncated type record")?;
            let len = t
                .data_len()
                .ok_or_else(|| format!("unknown type kind {}", t.kind))?;
            let next = t.data.checked_add(len).filter(|&n| n <= type_end);
            let next = next.ok_or("type record runs past its section")?;
            blob.offsets
                .push(u32::try_from(at).map_err(|_| "blob too large")?);
            let id = blob.offsets.len() as u32;
            let index = match t.kind {
                KIND_STRUCT if t.size_or_type > 0 => Some(&mut blob.structs),
                KIND_ENUM | KIND_ENUM64 => Some(&mut blob.enums),
                KIND_FUNC => Some(&mut blob.funcs),
                _ => None,
            };
            if let Some(index) = index
                && t.name_off != 0
            {
                let name = name_at(&blob.data, str_start, str_end, t.name_off);
                if let Some(name) = name {
                    // First (lowest id) wins, like the kernel's btf_find_by_name_kind.
                    index.entry(name.into()).or_insert(id);
                }
            }
            at = next;
        }
        Ok(blob)
    }

    fn header(&self, at: usize) -> Option<Type> {
        let name_off = read_u32(&self.data, at)?;
        let info = read_u32(&self.data, at + 4)?;
        let size_or_type = read_u32(&self.data, at + 8)?;
        Some(Type {
            name_off,
            kind: (info >> 24) & 0x1f,
            vlen: info & 0xffff,
            kflag: info >> 31 == 1,
            size_or_type,
            data: at + 12,
        })
    }

    /// The type with id `tid` (0, `void`, has none).
    pub fn ty(&self, tid: u32) -> Option<Type> {
        let idx = usize::try_from(tid).ok()?.checked_sub(1)?;
        self.header(*self.offsets.get(idx)? as usize)
    }

    pub fn name(&self, name_off: u32) -> Option<&str> {
        name_at(&self.data, self.str_start, self.str_end, name_off)
    }

    /// Members of a struct or union (empty for other kinds).
    pub fn members(&self, t: &Type) -> impl Iterator<Item = Member> + '_ {
        let n = if matches!(t.kind, KIND_STRUCT | KIND_UNION) {
            t.vlen
        } else {
            0
        };
        let (base, kflag) = (t.data, t.kflag);
        (0..n as usize).filter_map(move |i| {
            let at = base + i * 12;
            let raw = read_u32(&self.data, at + 8)?;
            let (bit_offset, bitfield_size) = if kflag {
                (raw & 0x00ff_ffff, raw >> 24)
            } else {
                (raw, 0)
            };
            Some(Member {
                name_off: read_u32(&self.data, at)?,
                tid: read_u32(&self.data, at + 4)?,
                bit_offset,
                bitfield_size,
            })
        })
    }

    /// INT encoding: (bits, bit offset).
    pub fn int_bits(&self, t: &Type) -> Option<(u32, u32)> {
        (t.kind == KIND_INT).then_some(())?;
        let v = read_u32(&self.data, t.data)?;
        Some((v & 0xff, (v >> 16) & 0xff))
    }

    /// ARRAY: (element type, number of elements).
    pub fn array(&self, t: &Type) -> Option<(u32, u32)> {
        (t.kind == KIND_ARRAY).then_some(())?;
        Some((
            read_u32(&self.data, t.data)?,
            read_u32(&self.data, t.data + 8)?,
        ))
    }

    /// ENUM / ENUM64 enumerators: (name_off, value as i64 or u64 per kflag).
    pub fn enumerators(&self, t: &Type) -> impl Iterator<Item = (u32, EnumValue)> + '_ {
        let (stride, n) = match t.kind {
            KIND_ENUM => (8, t.vlen),
            KIND_ENUM64 => (12, t.vlen),
            _ => (8, 0),
        };
        let (base, kind, signed) = (t.data, t.kind, t.kflag);
        (0..n as usize).filter_map(move |i| {
            let at = base + i * stride;
            let name_off = read_u32(&self.data, at)?;
            let lo = read_u32(&self.data, at + 4)?;
            let value = if kind == KIND_ENUM64 {
                let v = u64::from(lo) | (u64::from(read_u32(&self.data, at + 8)?) << 32);
                if signed {
                    EnumValue::Signed(v as i64)
                } else {
                    EnumValue::Unsigned(v)
                }
            } else if signed {
                EnumValue::Signed(i64::from(lo as i32))
            } else {
                EnumValue::Unsigned(u64::from(lo))
            };
            Some((name_off, value))
        })
    }

    /// FUNC_PROTO parameter types, in order (a trailing 0 means `...`).
    pub fn params(&self, t: &Type) -> impl Iterator<Item = u32> + '_ {
        let n = if t.kind == KIND_FUNC_PROTO { t.vlen } else { 0 };
        let base = t.data;
        (0..n as usize).filter_map(move |i| read_u32(&self.data, base + i * 8 + 4))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnumValue {
    Signed(i64),
    Unsigned(u64),
}

impl Type {
    /// Bytes of kind-specific data after the 12-byte header.
    fn data_len(&self) -> Option<usize> {
        let vlen = self.vlen as usize;
        Some(match self.kind {
            KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
            KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
            | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
            KIND_ARRAY => 12,
            KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => vlen * 12,
            KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
            _ => return None,
        })
    }
}

fn read_u32(data: &[u8], at: usize) -> Option<u32> {
    let b = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

/// The NUL-terminated string at `off` in the string section.
fn name_at(data: &[u8], start: usize, end: usize, off: u32) -> Option<&str> {
    let from = start.checked_add(off as usize)?;
    let s = data.get(from..end)?;
    let len = s.iter().position(|&b| b == 0)?;
    std::str::from_utf8(&s[..len]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-built blob: int (id 1), struct s { int a; int :3 b; } (id 2),
    /// enum e { X = 7 } (id 3).
    fn tiny() -> Vec<u8> {
        let strings = b"\0int\0s\0a\0b\0e\0X\0";
        let (int, s, a, b, e, x) = (1u32, 5, 7, 9, 11, 13);
        let mut types: Vec<u32> = vec![
            int,
            KIND_INT << 24,
            4,
            32,
            s,
            (KIND_STRUCT << 24) | (1 << 31) | 2,
            8,
            a,
            1,
            0,
            b,
            1,
            (3 << 24) | 32,
            e,
            (KIND_ENUM << 24) | 1,
            4,
            x,
            7,
        ];
        let type_bytes: Vec<u8> = types.drain(..).flat_map(u32::to_ne_bytes).collect();
        let mut blob = Vec::new();
        blob.extend(MAGIC.to_ne_bytes());
        blob.extend([1u8, 0]);
        for v in [
            24u32,
            0,
            type_bytes.len() as u32,
            type_bytes.len() as u32,
            strings.len() as u32,
        ] {
            blob.extend(v.to_ne_bytes());
        }
        blob.extend(type_bytes);
        blob.extend(strings);
        blob
    }

    #[test]
    fn indexes_and_decodes_a_hand_built_blob() {
        let b = Blob::parse(tiny()).expect("valid");
        let sid = b.structs["s"];
        let s = b.ty(sid).expect("struct");
        let m: Vec<_> = b.members(&s).collect();
        assert_eq!(
            (b.name(m[0].name_off), m[0].bit_offset, m[0].bitfield_size),
            (Some("a"), 0, 0)
        );
        assert_eq!(
            (b.name(m[1].name_off), m[1].bit_offset, m[1].bitfield_size),
            (Some("b"), 32, 3)
        );
        let e = b.ty(b.enums["e"]).expect("enum");
        let vals: Vec<_> = b.enumerators(&e).collect();
        assert_eq!(vals, vec![(13, EnumValue::Unsigned(7))]);
        assert_eq!(b.int_bits(&b.ty(1).expect("int")), Some((32, 0)));
        assert!(b.ty(0).is_none() && b.ty(4).is_none());
    }

    #[test]
    fn every_truncation_and_corruption_is_an_error_not_a_panic() {
        let good = tiny();
        for len in 0..good.len() {
            let _ = Blob::parse(good[..len].to_vec());
        }
        // Flip every byte in turn: parse may succeed or fail, lookups must not panic.
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0xa5;
            if let Ok(b) = Blob::parse(bad) {
                for tid in 0..8 {
                    if let Some(t) = b.ty(tid) {
                        let _ = b.members(&t).count();
                        let _ = b.enumerators(&t).count();
                        let _ = b.params(&t).count();
                        let _ = b.name(t.name_off);
                        let _ = b.array(&t);
                        let _ = b.int_bits(&t);
                    }
                }
            }
        }
        assert!(Blob::parse(b"\x9f\xeb".to_vec()).is_err());
    }
}
