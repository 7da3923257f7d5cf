//! Kernel struct offsets and enum values, read from the running kernel's BTF.
//!
//! rustc and bpf-linker emit no CO-RE relocations, so the eBPF programs cannot
//! ask the loader where a field lives on this kernel. Instead the daemon reads
//! the kernel's own type information (`/sys/kernel/btf/vmlinux`) at start-up,
//! looks every field up *by name* (through anonymous structs and unions), and
//! writes the byte offsets into the [`KernelConfig`] the programs are loaded
//! with. That is what lets one binary run on 5.10 to
//! 6.18: `iov_iter` alone changed shape in 5.14, 6.0 and 6.4, and the numbers
//! of `enum iter_type` changed with it.
//!
//! Widths are checked too: the eBPF side reads each field with a fixed size,
//! so a field that became a bitfield or changed width must not be read blindly.

mod blob;

use std::{fmt, io, path::Path};

use anyhow::{Result, anyhow};
use blob::{Blob, EnumValue, Member};
use wstrace_common::{ABSENT, KernelConfig};

pub const DEFAULT_BTF_PATH: &str = "/sys/kernel/btf/vmlinux";

/// What the kernel's BTF says, plus what each probe set lacks.
#[derive(Debug, Clone)]
pub struct KernelOffsets {
    /// Every struct offset and enum value filled in ([`ABSENT`] where this
    /// kernel lacks the field); ports, sizes and tracepoint fields are left
    /// at their defaults for `attach` to fill.
    pub config: KernelConfig,
    /// The parameter count of `tcp_recvmsg`, which says which fexit program
    /// reads its return value; `None` when no program handles it.
    pub tcp_recvmsg_nargs: Option<u64>,
    /// Why the fentry/kprobe tcp_sendmsg/tcp_recvmsg paths cannot work on this kernel
    /// (msghdr/iov_iter fields missing, or no `tcp_recvmsg` with a parameter count the fexit
    /// program handles), if so.
    pub sendmsg_path_missing: Option<String>,
    /// Why the tracepoint fd->sock walk cannot work (task_struct.files etc. missing), if so.
    pub fd_walk_missing: Option<String>,
}

/// Pointers are read as 8 bytes by the eBPF side: 64-bit kernels only.
const PTR: usize = 8;

/// What happens when a field cannot be used.
#[derive(Clone, Copy, PartialEq)]
enum Need {
    /// `resolve` fails: wstrace cannot describe a socket without it.
    Required,
    /// `resolve` fails if it is missing; ABSENT if it exists in a shape the
    /// eBPF side cannot read (`sk_protocol` was an 8-bit bitfield before 5.6).
    Present,
    /// ABSENT; the eBPF side copes (IPv6 compiled out, no `bytes_acked`).
    Optional,
    /// ABSENT, and the tracepoint fd -> sock walk is reported as unusable.
    FdWalk,
}

/// Where a field's offset goes in the config.
type Slot = fn(&mut KernelConfig) -> &mut u64;

/// (config field, struct, member path from that struct, width in bytes, need).
/// The sendmsg-path fields have alternatives per kernel: see [`sendmsg_path`].
#[rustfmt::skip]
const FIELDS: &[(Slot, &str, &str, usize, Need)] = &[
    (|c| &mut c.skc_family, "sock", "__sk_common.skc_family", 2, Need::Required),
    (|c| &mut c.skc_state, "sock", "__sk_common.skc_state", 1, Need::Required),
    (|c| &mut c.skc_num, "sock", "__sk_common.skc_num", 2, Need::Required),
    (|c| &mut c.skc_dport, "sock", "__sk_common.skc_dport", 2, Need::Required),
    (|c| &mut c.skc_rcv_saddr, "sock", "__sk_common.skc_rcv_saddr", 4, Need::Required),
    (|c| &mut c.skc_daddr, "sock", "__sk_common.skc_daddr", 4, Need::Required),
    (|c| &mut c.skc_v6_rcv_saddr, "sock", "__sk_common.skc_v6_rcv_saddr", 16, Need::Optional),
    (|c| &mut c.skc_v6_daddr, "sock", "__sk_common.skc_v6_daddr", 16, Need::Optional),
    (|c| &mut c.sk_protocol, "sock", "sk_protocol", 2, Need::Present),
    // Without it a timeout or reset cannot be told from a local close in
    // the tracepoint set (every kernel from 5.10 has it).
    (|c| &mut c.sk_err, "sock", "sk_err", 4, Need::Optional),
    (|c| &mut c.tcp_bytes_received, "tcp_sock", "bytes_received", 8, Need::Required),
    (|c| &mut c.tcp_bytes_acked, "tcp_sock", "bytes_acked", 8, Need::Optional),
    // u32 jiffies of the last data sent / received (idle times).
    (|c| &mut c.tcp_lsndtime, "tcp_sock", "lsndtime", 4, Need::Optional),
    (|c| &mut c.icsk_lrcvtime, "tcp_sock", "inet_conn.icsk_ack.lrcvtime", 4, Need::Optional),
    // Local port after unhashing (tcp_set_state(TCP_CLOSE) zeroes skc_num
    // before the tracepoint fires): needed to see SO_LINGER-0 and reset closes.
    // (Optional only because the minimised test fixtures predate it; every
    // kernel from 5.10 has it, which the full-BTF tests check.)
    (|c| &mut c.inet_sport, "tcp_sock", "inet_conn.icsk_inet.inet_sport", 2, Need::Optional),
    (|c| &mut c.task_files, "task_struct", "files", PTR, Need::FdWalk),
    (|c| &mut c.task_flags, "task_struct", "flags", 4, Need::Required),
    // Without them a reused pid is told apart by its comm only.
    (|c| &mut c.task_group_leader, "task_struct", "group_leader", PTR, Need::Optional),
    (|c| &mut c.task_start_time, "task_struct", "start_time", 8, Need::Optional),
    // Without it the user registers are unknown: frame-pointer stacks only.
    (|c| &mut c.task_stack, "task_struct", "stack", PTR, Need::Optional),
    // Without it a close at process exit does not say how the process ended.
    (|c| &mut c.task_exit_code, "task_struct", "exit_code", 4, Need::Optional),
    (|c| &mut c.files_fdt, "files_struct", "fdt", PTR, Need::FdWalk),
    (|c| &mut c.fdt_max_fds, "fdtable", "max_fds", 4, Need::FdWalk),
    (|c| &mut c.fdt_fd, "fdtable", "fd", PTR, Need::FdWalk),
    (|c| &mut c.file_private_data, "file", "private_data", PTR, Need::FdWalk),
    (|c| &mut c.socket_sk, "socket", "sk", PTR, Need::FdWalk),
    (|c| &mut c.socket_file, "socket", "file", PTR, Need::FdWalk),
];

/// Reads the BTF at `path` (normally [`DEFAULT_BTF_PATH`]) and resolves every
/// offset and enum value the eBPF programs need.
///
/// Fails, with a message saying what to do, when the file cannot be read or
/// parsed, or when a field every probe set needs (see [`Need::Required`]) is
/// missing. Fields only one probe set needs are reported in
/// [`KernelOffsets::fd_walk_missing`] / [`KernelOffsets::sendmsg_path_missing`].
pub fn resolve(path: &Path) -> Result<KernelOffsets> {
    let btf = Btf::load(path)?;
    let mut config = KernelConfig::DEFAULT;
    let mut fd_walk = Vec::new();
    for &(slot, strukt, member, width, need) in FIELDS {
        let value = match (btf.field(strukt, member, width), need) {
            (Ok(offset), _) => offset,
            (Err(p), Need::Required) | (Err(p @ Problem::Missing(_)), Need::Present) => {
                return Err(anyhow!(
                    "the kernel BTF at {}: {p}: wstrace cannot read sockets on this kernel; \
                     please report it with the output of `uname -r`",
                    path.display()
                ));
            }
            (Err(_), Need::Present | Need::Optional) => ABSENT,
            (Err(p), Need::FdWalk) => {
                fd_walk.push(p.to_string());
                ABSENT
            }
        };
        *slot(&mut config) = value;
    }
    // The saved user registers' block (arm64 reads the stack top with it;
    // x86_64's is fixed by its entry ABI). Without it: frame-pointer stacks.
    config.pt_regs_size = btf
        .struct_size("pt_regs")
        .map_or(ABSENT, |size| size as u64);
    let mut sendmsg_missing = sendmsg_path(&btf, &mut config);
    let tcp_recvmsg_nargs = recvmsg_nargs(&btf)
        .map_err(|p| sendmsg_missing.push(p.to_string()))
        .ok();
    Ok(KernelOffsets {
        config,
        tcp_recvmsg_nargs,
        sendmsg_path_missing: (!sendmsg_missing.is_empty()).then(|| sendmsg_missing.join("; ")),
        fd_walk_missing: (!fd_walk.is_empty()).then(|| fd_walk.join("; ")),
    })
}

/// The fentry/kprobe `tcp_sendmsg` programs find the first bytes written
/// through `msghdr.msg_iter`: they read one byte at `iter_type`, AND it with
/// `iter_type_mask`, and compare with `iter_iovec_value` / `iter_ubuf_value`
/// to know whether to follow `iter_iov` (an iovec array) or `iter_ubuf` (one
/// user pointer). Fills those fields of `config`; returns, when they cannot
/// work, why.
fn sendmsg_path(btf: &Btf, config: &mut KernelConfig) -> Vec<String> {
    let mut why = Vec::new();
    let mut need = |r: Result<u64, Problem>| {
        r.unwrap_or_else(|p| {
            why.push(p.to_string());
            ABSENT
        })
    };

    let msg_iter = need(btf.offset("msghdr", "msg_iter").map(|(offset, _)| offset));
    // 5.14+: `u8 iter_type` holds just the type. Before: `unsigned int type`
    // holds ITER_* bits plus the READ/WRITE direction in bit 0, which the mask
    // drops; all ITER_* bits are in its low byte, the first on little-endian
    // kernels (x86_64, arm64).
    let (iter_type, mask) = match btf.field("iov_iter", "iter_type", 1) {
        Ok(offset) => (Ok(offset), 0xff),
        Err(_) => (btf.field("iov_iter", "type", 4), 0xfe),
    };
    let iter_type = need(iter_type.map_err(|_| {
        Problem::Missing("no iov_iter.iter_type (u8) nor iov_iter.type (unsigned int)".into())
    }));
    // The values must fit the masked byte the eBPF side compares.
    let fits = |name: &str, v: Option<u64>| match v {
        Some(v) if v & !mask != 0 => Err(Problem::Unusable(format!(
            "{name} = {v:#x}, outside the byte wstrace reads"
        ))),
        v => Ok(v),
    };
    let iovec_value = need(
        fits("ITER_IOVEC", btf.enumerator("iter_type", "ITER_IOVEC"))
            .and_then(|v| v.ok_or_else(|| Problem::Missing("no enum iter_type ITER_IOVEC".into()))),
    );
    // ITER_UBUF appeared in 6.0, with the `ubuf` pointer in the union beside `iov`.
    let ubuf_value = fits("ITER_UBUF", btf.enumerator("iter_type", "ITER_UBUF"));
    let ubuf = btf.field("iov_iter", "ubuf", PTR).ok();
    let ubuf_value = match (ubuf_value, ubuf) {
        (Ok(Some(_)), None) => need(Err(Problem::Missing(
            "no iov_iter.ubuf although enum iter_type has ITER_UBUF".into(),
        ))),
        (v, _) => need(v.map(|v| v.unwrap_or(ABSENT))),
    };
    // 6.4 renamed `iov` to `__iov` (and overlaid `__ubuf_iovec` on it).
    let iov = need(
        btf.field("iov_iter", "__iov", PTR)
            .or_else(|_| btf.field("iov_iter", "iov", PTR))
            .map_err(|_| Problem::Missing("no iov_iter.__iov nor iov_iter.iov".into())),
    );

    config.msghdr_iter = msg_iter;
    config.iter_type = iter_type;
    config.iter_type_mask = mask;
    config.iter_ubuf_value = ubuf_value;
    config.iter_iovec_value = iovec_value;
    config.iter_ubuf = ubuf.unwrap_or(ABSENT);
    config.iter_iov = iov;
    why
}

/// The parameter counts of `tcp_recvmsg` after which `fexit_tcp_recvmsg`
/// (wstrace-ebpf/src/probes/fentry.rs) reads the return value: 6 on 5.10 to
/// 5.18 (sk, msg, len, nonblock, flags, addr_len), 5 from 5.19 (`nonblock`
/// dropped), 4 after 6.12 (`addr_len` dropped too; 6.18 has sk, msg, len,
/// flags). A count outside this list makes the fentry/kprobe sets unusable
/// rather than guessing where the return value is.
const RECVMSG_NARGS: [u64; 3] = [6, 5, 4];

/// The number of parameters of `tcp_recvmsg`, from its BTF FUNC ->
/// FUNC_PROTO, if an fexit program handles that count.
fn recvmsg_nargs(btf: &Btf) -> Result<u64, Problem> {
    let n = btf.func_params("tcp_recvmsg")?;
    if RECVMSG_NARGS.contains(&n) {
        Ok(n)
    } else {
        Err(Problem::Unusable(format!(
            "tcp_recvmsg has {n} parameters; wstrace finds its return value after 6, 5 or 4 only"
        )))
    }
}

/// Why a field cannot be used; displays as "no sock.sk_protocol", etc.
#[derive(Debug)]
enum Problem {
    /// This kernel has no such struct, member or enumerator.
    Missing(String),
    /// It exists, but not in a shape the eBPF side can read.
    Unusable(String),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Missing(s) | Problem::Unusable(s) => f.write_str(s),
        }
    }
}

/// The kernel's BTF with the lookups wstrace needs, by name. Structs, enums
/// and functions are indexed separately (first, lowest id wins), so a
/// `FWD sock` or a function named `file` cannot shadow the struct.
struct Btf {
    blob: Blob,
}

/// Qualifier and typedef chains followed, at most: a corrupt blob may hold a cycle.
const MAX_TYPE_CHAIN: usize = 16;
/// Anonymous struct/union nesting followed when looking a member up.
const MAX_ANON_DEPTH: u32 = 8;

impl Btf {
    fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| unreadable(path, &e))?;
        let blob = Blob::parse(bytes).map_err(|e| {
            anyhow!(
                "{} is not a raw BTF blob ({e}): give /sys/kernel/btf/vmlinux, or extract the \
                 .BTF section of a vmlinux with `objcopy -O binary --only-section=.BTF vmlinux btf.raw`",
                path.display(),
            )
        })?;
        Ok(Self { blob })
    }

    /// Number of parameters of function `name` (a variadic `...` not counted).
    fn func_params(&self, name: &str) -> Result<u64, Problem> {
        let missing = || Problem::Missing(format!("no function {name}"));
        let &tid = self.blob.funcs.get(name).ok_or_else(missing)?;
        let func = self.blob.ty(tid).ok_or_else(missing)?;
        match self.blob.ty(func.size_or_type) {
            Some(proto) if proto.kind == blob::KIND_FUNC_PROTO => {
                let params: Vec<u32> = self.blob.params(&proto).collect();
                // A variadic prototype ends with a parameter of type 0.
                let variadic = params.last() == Some(&0);
                Ok((params.len() - usize::from(variadic)) as u64)
            }
            _ => Err(Problem::Unusable(format!(
                "function {name} has no FUNC_PROTO"
            ))),
        }
    }

    /// `tid` with typedefs and qualifiers stripped.
    fn strip(&self, mut tid: u32) -> Option<blob::Type> {
        for _ in 0..MAX_TYPE_CHAIN {
            let t = self.blob.ty(tid)?;
            match t.kind {
                blob::KIND_TYPEDEF
                | blob::KIND_CONST
                | blob::KIND_VOLATILE
                | blob::KIND_RESTRICT
                | blob::KIND_TYPE_TAG => tid = t.size_or_type,
                _ => return Some(t),
            }
        }
        None
    }

    /// Member `name` of struct/union `tid`, looking inside anonymous struct
    /// and union members as C does; its bit offset is from the start of `tid`.
    fn member(&self, tid: u32, name: &str, depth: u32) -> Option<Member> {
        if depth > MAX_ANON_DEPTH {
            return None;
        }
        let t = self.strip(tid)?;
        if let Some(m) = self
            .blob
            .members(&t)
            .find(|m| m.name_off != 0 && self.blob.name(m.name_off) == Some(name))
        {
            return Some(m);
        }
        self.blob
            .members(&t)
            .filter(|m| self.blob.name(m.name_off).is_none_or(str::is_empty))
            .find_map(|anon| {
                let inner = self.member(anon.tid, name, depth + 1)?;
                Some(Member {
                    bit_offset: anon.bit_offset.checked_add(inner.bit_offset)?,
                    ..inner
                })
            })
    }

    /// Byte offset and type id of `path` ("a.b.c", anonymous members followed
    /// implicitly) from the start of `struct strukt`.
    fn offset(&self, strukt: &str, path: &str) -> Result<(u64, u32), Problem> {
        let missing = || Problem::Missing(format!("no {strukt}.{path}"));
        let &root = self.blob.structs.get(strukt).ok_or_else(missing)?;
        let (mut tid, mut bits, mut bitfield) = (root, 0u64, false);
        for name in path.split('.') {
            let m = self.member(tid, name, 0).ok_or_else(missing)?;
            bits += u64::from(m.bit_offset);
            bitfield = m.bitfield_size != 0;
            tid = m.tid;
        }
        if bitfield || bits % 8 != 0 {
            return Err(Problem::Unusable(format!("{strukt}.{path} is a bitfield")));
        }
        Ok((bits / 8, tid))
    }

    /// `sizeof(struct strukt)`, if this kernel has that struct.
    fn struct_size(&self, strukt: &str) -> Option<usize> {
        self.width(*self.blob.structs.get(strukt)?)
    }

    /// Byte offset of `path` in `struct strukt`, which must be `width` bytes wide.
    fn field(&self, strukt: &str, path: &str, width: usize) -> Result<u64, Problem> {
        let (offset, tid) = self.offset(strukt, path)?;
        match self.width(tid) {
            Some(w) if w == width => Ok(offset),
            Some(w) => Err(Problem::Unusable(format!(
                "{strukt}.{path} is {w} bytes wide, not {width}"
            ))),
            None => Err(Problem::Unusable(format!(
                "{strukt}.{path} is a bitfield or has no size"
            ))),
        }
    }

    /// Size in bytes of type `tid`; `None` for types without one and for
    /// bitfields in the old encoding (an int type narrower than its size).
    fn width(&self, tid: u32) -> Option<usize> {
        self.width_at(tid, 0)
    }

    fn width_at(&self, tid: u32, depth: usize) -> Option<usize> {
        if depth > MAX_TYPE_CHAIN {
            return None;
        }
        let t = self.strip(tid)?;
        let size = t.size_or_type as usize;
        match t.kind {
            blob::KIND_INT => {
                let (bits, offset) = self.blob.int_bits(&t)?;
                (bits as usize == size * 8 && offset == 0).then_some(size)
            }
            blob::KIND_PTR => Some(PTR),
            blob::KIND_STRUCT | blob::KIND_UNION | blob::KIND_ENUM | blob::KIND_ENUM64 => {
                Some(size)
            }
            blob::KIND_ARRAY => {
                let (elem, n) = self.blob.array(&t)?;
                self.width_at(elem, depth + 1)?.checked_mul(n as usize)
            }
            _ => None,
        }
    }

    /// Value of enumerator `name` of `enum enm`, if both exist (and it is not negative).
    fn enumerator(&self, enm: &str, name: &str) -> Option<u64> {
        let t = self.blob.ty(*self.blob.enums.get(enm)?)?;
        let (_, value) = self
            .blob
            .enumerators(&t)
            .find(|(n, _)| self.blob.name(*n) == Some(name))?;
        match value {
            EnumValue::Unsigned(v) => Some(v),
            EnumValue::Signed(v) => u64::try_from(v).ok(),
        }
    }
}

/// The error for a BTF file that cannot be read, saying what to do about it.
fn unreadable(path: &Path, err: &io::Error) -> anyhow::Error {
    let p = path.display();
    let default = path == Path::new(DEFAULT_BTF_PATH);
    match err.kind() {
        io::ErrorKind::NotFound if default => anyhow!(
            "this kernel has no BTF at {p}: wstrace needs CONFIG_DEBUG_INFO_BTF=y \
             (kernel 5.10+ distro kernels have it)"
        ),
        io::ErrorKind::NotFound => anyhow!(
            "no BTF file at {p}: give the path of a raw BTF blob, such as {DEFAULT_BTF_PATH} \
             on a kernel built with CONFIG_DEBUG_INFO_BTF=y"
        ),
        io::ErrorKind::PermissionDenied => {
            anyhow!("cannot read the kernel BTF at {p} ({err}): run wstrace as root")
        }
        _ => anyhow!("cannot read the kernel BTF at {p}: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/btf")
            .join(name)
    }

    /// Every value `resolve` fills, as (name, value), in the order of the
    /// [`KERNELS`] columns; the parameter count last (ABSENT for `None`).
    fn values(k: &KernelOffsets) -> [(&'static str, u64); 33] {
        let c = &k.config;
        [
            ("skc_family", c.skc_family),
            ("skc_state", c.skc_state),
            ("skc_num", c.skc_num),
            ("skc_dport", c.skc_dport),
            ("skc_rcv_saddr", c.skc_rcv_saddr),
            ("skc_daddr", c.skc_daddr),
            ("skc_v6_rcv_saddr", c.skc_v6_rcv_saddr),
            ("skc_v6_daddr", c.skc_v6_daddr),
            ("sk_protocol", c.sk_protocol),
            ("tcp_bytes_received", c.tcp_bytes_received),
            ("tcp_bytes_acked", c.tcp_bytes_acked),
            ("tcp_lsndtime", c.tcp_lsndtime),
            ("icsk_lrcvtime", c.icsk_lrcvtime),
            ("inet_sport", c.inet_sport),
            ("task_files", c.task_files),
            ("task_flags", c.task_flags),
            ("task_group_leader", c.task_group_leader),
            ("task_start_time", c.task_start_time),
            ("task_stack", c.task_stack),
            ("files_fdt", c.files_fdt),
            ("fdt_max_fds", c.fdt_max_fds),
            ("fdt_fd", c.fdt_fd),
            ("file_private_data", c.file_private_data),
            ("socket_sk", c.socket_sk),
            ("socket_file", c.socket_file),
            ("msghdr_iter", c.msghdr_iter),
            ("iter_type", c.iter_type),
            ("iter_type_mask", c.iter_type_mask),
            ("iter_ubuf_value", c.iter_ubuf_value),
            ("iter_iovec_value", c.iter_iovec_value),
            ("iter_ubuf", c.iter_ubuf),
            ("iter_iov", c.iter_iov),
            ("tcp_recvmsg_nargs", k.tcp_recvmsg_nargs.unwrap_or(ABSENT)),
        ]
    }

    /// The [`KERNELS`] column of `name`.
    fn column(name: &str) -> usize {
        let k = KernelOffsets {
            config: KernelConfig::DEFAULT,
            tcp_recvmsg_nargs: None,
            sendmsg_path_missing: None,
            fd_walk_missing: None,
        };
        values(&k)
            .iter()
            .position(|&(n, _)| n == name)
            .unwrap_or_else(|| panic!("no column {name}"))
    }

    const A: u64 = ABSENT;

    /// [`values`] per kernel, checked against `pahole -F btf` and
    /// `bpftool btf dump` on the full BTF the fixtures were cut from (see
    /// tests/fixtures/btf/README.md). The fixtures hold no FUNC, so their
    /// parameter count is ABSENT, and they predate task_struct.group_leader,
    /// .start_time and .stack (ABSENT here; checked on this machine's kernel, and
    /// used on every kernel of the VM matrix). The last column is the value from the full
    /// BTF ([`btf_offsets_of_full_kernel_btf`], [`FULL_BTF`]).
    #[rustfmt::skip]
    const KERNELS: [(&str, [u64; 33], u64); 4] = [
        //                 fam st num dport saddr daddr v6s v6d proto recv acked lsnd lrcv sport files flags leader start stack fdt max fd priv sk file msgiter type mask ubufv iovecv ubuf iov nargs, full nargs
        ("linux-5.10.btf", [16, 18, 14, 12, 4, 0, 72, 56, 540, 1400, 1448, 1472, 1248, A, 2808, 36, A, A, A, 32, 0, 8, 200, 24, 16, 16, 0, 0xfe, A, 4, A, 24, A], 6),
        ("linux-6.1.btf",  [16, 18, 14, 12, 4, 0, 72, 56, 516, 1408, 1456, 1480, 1264, A, 3048, 44, A, A, A, 32, 0, 8, 200, 24, 16, 16, 0, 0xff, 6, 0, 24, 24, A], 5),
        ("linux-6.12.btf", [16, 18, 14, 12, 4, 0, 72, 56, 574, 1784, 1840, 1644, 1264, A, 3048, 44, A, A, A, 32, 0, 8, 32, 24, 16, 16, 0, 0xff, 0, 1, 16, 16, A], 5),
        ("linux-6.18.btf", [16, 18, 14, 12, 4, 0, 72, 56, 532, 1752, 1824, 1584, 1264, A, 1824, 44, A, A, A, 32, 0, 8, 24, 24, 16, 16, 0, 0xff, 0, 1, 16, 16, A], 4),
    ];

    /// The full kernel BTF each fixture was cut from, under
    /// `$WSTRACE_KERNEL_BTF` (default `~/.cache/wstrace/k`), and the raw
    /// parameter count of its `tcp_recvmsg`.
    const FULL_BTF: [(&str, &str, u64); 4] = [
        ("linux-5.10.btf", "5.10.0/btf.raw", 6),
        ("linux-6.1.btf", "6.1.0/btf.raw", 5),
        ("linux-6.12.btf", "6.12.95/btf.raw", 5),
        ("linux-6.18.btf", "host-6.18.btf", 4),
    ];

    fn check(file: &str, k: &KernelOffsets, want: &[u64; 33]) {
        for ((name, got), &want) in values(k).into_iter().zip(want) {
            assert_eq!(got, want, "{file}: {name}");
        }
        assert_eq!(k.fd_walk_missing, None, "{file}");
        // BTF fills offsets only: ports, sizes and tracepoint fields are attach's.
        let c = k.config;
        assert_eq!(c.all_ports, 0, "{file}");
        assert_eq!(c.user_stack_bytes, 0, "{file}");
        assert_eq!(c.tp_signal_sig, ABSENT, "{file}");
        assert_eq!(c.tp_oom_pid, ABSENT, "{file}");
    }

    #[test]
    fn btf_offsets_of_real_kernels_5_10_to_6_18() {
        for (file, want, _) in KERNELS {
            let k = resolve(&fixture(file)).unwrap_or_else(|e| panic!("{file}: {e:#}"));
            check(file, &k, &want);
            // Everything else of the sendmsg/recvmsg paths is there.
            assert_eq!(
                k.sendmsg_path_missing.as_deref(),
                Some("no function tcp_recvmsg"),
                "{file}"
            );
        }
    }

    /// The fixtures against the full BTF they were cut from, plus the
    /// `tcp_recvmsg` parameter count, which the fixtures cannot hold. Needs the kernels
    /// of tests/fixtures/btf/README.md:
    /// `cargo test -p wstrace btf_offsets_of_full -- --ignored`
    #[test]
    #[ignore]
    fn btf_offsets_of_full_kernel_btf() {
        let dir = std::env::var_os("WSTRACE_KERNEL_BTF")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/wstrace/k")))
            .expect("set WSTRACE_KERNEL_BTF or HOME");
        for ((file, mut want, nargs), (fixture_file, full, params)) in
            KERNELS.into_iter().zip(FULL_BTF)
        {
            assert_eq!(file, fixture_file);
            let path = dir.join(full);
            let btf = Btf::load(&path).unwrap_or_else(|e| panic!("{file}: {e:#}"));
            assert_eq!(
                btf.func_params("tcp_recvmsg").ok(),
                Some(params),
                "{}",
                path.display()
            );
            let k = resolve(&path).unwrap_or_else(|e| panic!("{e:#}"));
            want[column("tcp_recvmsg_nargs")] = nargs;
            // The fixtures predate these fields; the full BTF must have them.
            let got = values(&k);
            for name in [
                "inet_sport",
                "task_group_leader",
                "task_start_time",
                "task_stack",
            ] {
                let off = got[column(name)].1;
                assert_ne!(off, ABSENT, "{}: {name}", path.display());
                want[column(name)] = off;
            }
            check(&path.to_string_lossy(), &k, &want);
            // x86_64's entry ABI: 21 saved registers (ustack.rs relies on it;
            // arm64's size is read from here, this checks the lookup).
            assert_eq!(k.config.pt_regs_size, 21 * 8, "{}", path.display());
            if nargs == ABSENT {
                let why = k.sendmsg_path_missing.expect("4 parameters reported");
                assert_eq!(
                    why,
                    format!(
                        "tcp_recvmsg has {params} parameters; wstrace finds its return value after 6, 5 or 4 only"
                    )
                );
            } else {
                assert_eq!(k.sendmsg_path_missing, None, "{}", path.display());
            }
        }
    }

    #[test]
    fn btf_missing_probe_set_fields_are_reported_not_fatal() {
        let k = resolve(&fixture("linux-6.1-required-only.btf")).expect("required fields present");
        assert_eq!(k.config.skc_num, 14);
        assert_eq!(k.config.task_files, ABSENT);
        assert_eq!(k.config.iter_iov, ABSENT);
        // Optional: absent without an error, and not blamed on a probe set.
        assert_eq!(k.config.tcp_lsndtime, ABSENT);
        assert_eq!(k.config.icsk_lrcvtime, ABSENT);
        assert_eq!(k.tcp_recvmsg_nargs, None);
        let fd = k.fd_walk_missing.expect("fd walk reported");
        assert!(
            fd.contains("task_struct.files") && fd.contains("socket.sk"),
            "{fd}"
        );
        let send = k.sendmsg_path_missing.expect("sendmsg path reported");
        assert!(
            send.contains("msghdr.msg_iter")
                && send.contains("ITER_IOVEC")
                && send.contains("no function tcp_recvmsg"),
            "{send}"
        );
        assert!(
            !send.contains("lsndtime") && !send.contains("lrcvtime"),
            "{send}"
        );
    }

    #[test]
    fn btf_missing_required_field_is_an_error() {
        let path = fixture("linux-6.1-no-tcp-sock.btf");
        let err = resolve(&path)
            .expect_err("tcp_sock is required")
            .to_string();
        assert!(err.contains("tcp_sock.bytes_received"), "{err}");
        assert!(err.contains(&*path.to_string_lossy()), "{err}");
    }

    #[test]
    fn btf_unreadable_file_says_what_to_do() {
        let path = Path::new("/nonexistent/wstrace-test/vmlinux");
        let err = resolve(path).expect_err("no such file").to_string();
        assert!(err.contains("/nonexistent/wstrace-test/vmlinux"), "{err}");
        assert!(err.contains("CONFIG_DEBUG_INFO_BTF=y"), "{err}");

        let not_btf = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        let err = resolve(&not_btf).expect_err("not BTF").to_string();
        assert!(
            err.contains("not a raw BTF blob") && err.contains("objcopy"),
            "{err}"
        );
    }

    /// (major, minor) of the running kernel, from /proc/sys/kernel/osrelease.
    fn running_kernel() -> Option<(u32, u32)> {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
        let mut parts = release.trim().split(['.', '-']);
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    }

    #[test]
    fn btf_offsets_of_this_machines_kernel() {
        let path = Path::new(DEFAULT_BTF_PATH);
        let readable = std::fs::File::open(path)
            .map_err(|e| format!("{e}: needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"));
        if crate::testenv::require_ok(DEFAULT_BTF_PATH, readable).is_none() {
            return;
        }
        let k = resolve(path).unwrap_or_else(|e| panic!("{e:#}"));
        eprintln!("{DEFAULT_BTF_PATH} ({:?}): {:?}", running_kernel(), k);
        // sock_common's head has not moved since 4.x on 64-bit kernels.
        if cfg!(target_pointer_width = "64") {
            let c = &k.config;
            for (name, got, want) in [
                ("skc_daddr", c.skc_daddr, 0),
                ("skc_rcv_saddr", c.skc_rcv_saddr, 4),
                ("skc_dport", c.skc_dport, 12),
                ("skc_num", c.skc_num, 14),
                ("skc_family", c.skc_family, 16),
                ("skc_state", c.skc_state, 18),
            ] {
                assert_eq!(got, want, "{name}");
            }
        }
        for (name, v) in values(&k) {
            if ![
                "skc_v6_rcv_saddr",
                "skc_v6_daddr",
                "tcp_bytes_acked",
                "iter_ubuf_value",
                "iter_ubuf",
                "tcp_recvmsg_nargs",
            ]
            .contains(&name)
            {
                assert_ne!(v, ABSENT, "{name}");
            }
        }
        assert_eq!(k.fd_walk_missing, None);
        // The saved user registers: x86_64's are fixed by its entry ABI (21
        // slots); arm64's start with the 34 of `user_pt_regs` and grew
        // kernel-private fields after them.
        if cfg!(target_arch = "x86_64") {
            assert_eq!(k.config.pt_regs_size, 21 * 8);
        } else if cfg!(target_arch = "aarch64") {
            assert!(k.config.pt_regs_size > 34 * 8, "{}", k.config.pt_regs_size);
        }
        let version = running_kernel().unwrap_or((0, 0));
        // tcp_recvmsg lost `nonblock` in 5.19 and `addr_len` after 6.12 (6.18 has 4).
        let params = Btf::load(path)
            .expect("loaded above")
            .func_params("tcp_recvmsg")
            .unwrap_or_else(|p| panic!("{p}"));
        match version {
            (..=4, _) | (5, ..=18) => assert_eq!(params, 6),
            (5, 19..) | (6, ..=12) => assert_eq!(params, 5),
            (6, 18..) | (7.., _) => assert_eq!(params, 4),
            _ => assert!((4..=5).contains(&params), "{params}"),
        }
        if RECVMSG_NARGS.contains(&params) {
            assert_eq!(k.tcp_recvmsg_nargs, Some(params));
            assert_eq!(k.sendmsg_path_missing, None);
        } else {
            assert_eq!(k.tcp_recvmsg_nargs, None);
            assert_eq!(
                k.sendmsg_path_missing,
                Some(format!(
                    "tcp_recvmsg has {params} parameters; wstrace finds its return value after 6, 5 or 4 only"
                ))
            );
        }
        if version >= (5, 14) {
            assert_eq!(k.config.iter_type_mask, 0xff);
        }
        if version >= (6, 0) {
            assert_ne!(k.config.iter_ubuf, ABSENT);
            assert_ne!(k.config.iter_ubuf_value, ABSENT);
        }
    }

    /// Manual check of other kernels' full BTF:
    /// `WSTRACE_BTF=btf1.raw:btf2.raw cargo test -p wstrace btf_print -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn btf_print_offsets_of_wstrace_btf_files() {
        for path in std::env::var("WSTRACE_BTF").unwrap_or_default().split(':') {
            match resolve(Path::new(path)) {
                Ok(k) => {
                    let values: Vec<_> = values(&k).map(|(n, v)| (n, v as i64)).into();
                    println!(
                        "{path}: {values:?} fd_walk_missing={:?} sendmsg_path_missing={:?}",
                        k.fd_walk_missing, k.sendmsg_path_missing
                    );
                }
                Err(e) => println!("{path}: {e:#}"),
            }
        }
    }
}
