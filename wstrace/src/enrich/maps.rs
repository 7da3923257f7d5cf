//! `/proc/<pid>/maps`: which file backs which address range of a process.
//!
//! Parsed by hand (one short function, unit-tested below): procfs' parser
//! would add a dependency tree for one line format, and the path field must
//! be taken verbatim (spaces, ` (deleted)`) rather than as a `PathBuf`.

/// One line of `/proc/<pid>/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub exec: bool,
    pub offset: u64,
    pub dev: String,
    pub inode: u64,
    /// File path, or a pseudo name such as `[vdso]` / `[heap]`; `None` for
    /// anonymous memory.
    pub path: Option<String>,
}

/// Largest file opened on behalf of a traced process (an ELF file mapped
/// for unwinding): big enough for any real binary, small enough that a
/// sparse multi-terabyte file is refused rather than mapped and walked.
pub const MAX_UNTRUSTED_FILE: u64 = 4 << 30;

/// Opens for reading a file that a traced process names or controls (its
/// binaries and libraries, by path or through `map_files`), so that a FIFO,
/// a device or a symlink put in its place cannot block or redirect us:
/// `O_NONBLOCK` (an `open()` of a FIFO returns at once), `O_NOFOLLOW` (except
/// for `/proc/<pid>/map_files/` links, which the kernel resolves to the
/// mapped file itself), then `fstat` on the open file: only a regular file
/// of at most `max` bytes is returned.
pub fn open_untrusted(path: &str, max: u64) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut flags = libc::O_NONBLOCK;
    if !is_map_files_path(path) {
        flags |= libc::O_NOFOLLOW;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    (meta.file_type().is_file() && meta.len() <= max).then_some(file)
}

pub fn is_map_files_path(p: &str) -> bool {
    p.starts_with("/proc/") && p.contains("/map_files/")
}

/// The path blazesym itself builds for a mapping (`maps::parse_path_name`),
/// so a pin made under it is found when blazesym later looks the file up.
pub fn map_files_path(pid: u32, m: &Mapping) -> String {
    format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end)
}

/// `/proc/<pid>/maps`, parsed; `None` when unreadable or empty (a zombie or
/// kernel thread has no maps).
pub fn read_maps(pid: u32) -> Option<Vec<Mapping>> {
    let bytes = std::fs::read(format!("/proc/{pid}/maps")).ok()?;
    let maps = parse_maps(&String::from_utf8_lossy(&bytes));
    (!maps.is_empty()).then_some(maps)
}

/// Parse a whole maps file; malformed lines are skipped.
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_maps_line).collect()
}

/// Split off the next whitespace-separated field.
fn next_field(s: &str) -> (&str, &str) {
    let s = s.trim_start_matches(' ');
    let end = s.find(' ').unwrap_or(s.len());
    s.split_at(end)
}

/// `start-end perms offset dev inode [path]`; the path may contain spaces
/// and is taken verbatim (with a ` (deleted)` suffix if the kernel adds one).
pub fn parse_maps_line(line: &str) -> Option<Mapping> {
    let (range, rest) = next_field(line);
    let (perms, rest) = next_field(rest);
    let (offset, rest) = next_field(rest);
    let (dev, rest) = next_field(rest);
    let (inode, rest) = next_field(rest);
    let (start, end) = range.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    let path = rest.trim_start_matches(' ').trim_end_matches(['\n', '\r']);
    Some(Mapping {
        start,
        end,
        exec: perms.as_bytes().get(2) == Some(&b'x'),
        offset: u64::from_str_radix(offset, 16).ok()?,
        dev: dev.to_string(),
        inode: inode.parse().ok()?,
        path: (!path.is_empty()).then(|| path.to_string()),
    })
}

/// The path (or pseudo name) of the mapping containing `addr`.
pub fn module_for(maps: &[Mapping], addr: u64) -> Option<&str> {
    maps.iter()
        .find(|m| m.start <= addr && addr < m.end)
        .and_then(|m| m.path.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_parse() {
        let m = parse_maps_line(
            "7f3a1c028000-7f3a1c1bd000 r-xp 00028000 fd:01 1835203                    /usr/lib/x86_64-linux-gnu/libc.so.6",
        )
        .expect("parses");
        assert_eq!(
            m,
            Mapping {
                start: 0x7f3a1c028000,
                end: 0x7f3a1c1bd000,
                exec: true,
                offset: 0x28000,
                dev: "fd:01".into(),
                inode: 1835203,
                path: Some("/usr/lib/x86_64-linux-gnu/libc.so.6".into()),
            }
        );
        let anon =
            parse_maps_line("7f3a1c000000-7f3a1c021000 rw-p 00000000 00:00 0 ").expect("parses");
        assert_eq!((anon.exec, anon.path), (false, None));
        let anon =
            parse_maps_line("7f3a1c000000-7f3a1c021000 rw-p 00000000 00:00 0").expect("parses");
        assert_eq!(anon.path, None);
        let vdso = parse_maps_line(
            "7ffd5b7e5000-7ffd5b7e7000 r-xp 00000000 00:00 0                          [vdso]",
        )
        .expect("parses");
        assert_eq!(vdso.path.as_deref(), Some("[vdso]"));
        let spaced = parse_maps_line("1000-2000 r-xp 00001000 08:02 42 /opt/my app/bin (deleted)")
            .expect("parses");
        assert_eq!(spaced.path.as_deref(), Some("/opt/my app/bin (deleted)"));
        assert_eq!(parse_maps_line(""), None);
        assert_eq!(parse_maps_line("garbage"), None);
        assert_eq!(parse_maps_line("zz-2000 r-xp 0 0:0 1 /x"), None);
    }

    #[test]
    fn module_lookup_by_address() {
        let maps = parse_maps(
            "1000-2000 r--p 00000000 08:02 42 /srv/app\n2000-3000 r-xp 00001000 08:02 42 /srv/app\n3000-4000 rw-p 00000000 00:00 0\n",
        );
        assert_eq!(maps.len(), 3);
        assert_eq!(module_for(&maps, 0x2000), Some("/srv/app"));
        assert_eq!(module_for(&maps, 0x2fff), Some("/srv/app"));
        assert_eq!(module_for(&maps, 0x3000), None);
        assert_eq!(module_for(&maps, 0x4000), None);
        assert_eq!(module_for(&maps, 0x10), None);
    }

    #[test]
    fn map_files_paths() {
        let m = parse_maps_line("7f00-8f00 r-xp 0 08:02 42 /x").expect("parses");
        assert_eq!(map_files_path(12, &m), "/proc/12/map_files/7f00-8f00");
        assert!(is_map_files_path("/proc/12/map_files/7f00-8f00"));
        assert!(!is_map_files_path("/usr/lib/libc.so.6"));
    }
}
