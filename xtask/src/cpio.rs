//! A minimal writer for the cpio "newc" format, the one the kernel unpacks as
//! an initramfs. Written here rather than shelling out to `cpio` because that
//! tool is not installed by default, and because the archive can then hold
//! device nodes (/dev/console) without root.

use std::collections::BTreeMap;
use std::io::{self, Write};

pub enum Entry {
    Dir,
    File { data: Vec<u8>, executable: bool },
    Symlink(String),
    CharDevice { major: u32, minor: u32 },
}

/// Archive contents keyed by path without leading slash. Sorted order puts
/// every directory before what it contains, as the kernel's unpacker needs.
#[derive(Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    /// Adds an entry and any missing parent directories; a later entry for the
    /// same path replaces the earlier one.
    pub fn add(&mut self, path: &str, entry: Entry) {
        let path = path.trim_start_matches('/').to_string();
        let mut parent = String::new();
        for component in path
            .split('/')
            .take(path.split('/').count().saturating_sub(1))
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(component);
            self.entries.entry(parent.clone()).or_insert(Entry::Dir);
        }
        self.entries.insert(path, entry);
    }

    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(path.trim_start_matches('/'))
    }

    /// Total size of file contents, for progress messages.
    pub fn data_bytes(&self) -> usize {
        self.entries
            .values()
            .map(|e| {
                if let Entry::File { data, .. } = e {
                    data.len()
                } else {
                    0
                }
            })
            .sum()
    }

    pub fn write(&self, out: &mut impl Write) -> io::Result<()> {
        for (ino, (path, entry)) in (1u32..).zip(&self.entries) {
            let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match entry {
                Entry::Dir => (0o040755, &[], (0, 0)),
                Entry::File { data, executable } => {
                    (if *executable { 0o100755 } else { 0o100644 }, data, (0, 0))
                }
                Entry::Symlink(target) => (0o120777, target.as_bytes(), (0, 0)),
                Entry::CharDevice { major, minor } => (0o020600, &[], (*major, *minor)),
            };
            write_header(out, ino, mode, data.len(), rdev, path)?;
            out.write_all(data)?;
            pad4(out, data.len())?;
        }
        write_header(out, 0, 0, 0, (0, 0), "TRAILER!!!")
    }
}

fn write_header(
    out: &mut impl Write,
    ino: u32,
    mode: u32,
    size: usize,
    rdev: (u32, u32),
    name: &str,
) -> io::Result<()> {
    let size = u32::try_from(size)
        .map_err(|_| io::Error::other(format!("{name} is too large for cpio (4 GiB)")))?;
    let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
    let name_len = name.len() + 1; // with the terminating NUL
    // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor,
    // rdevmajor, rdevminor, namesize, check
    write!(
        out,
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{name_len:08x}{:08x}",
        0, 0, 0, 0, 0, rdev.0, rdev.1, 0
    )?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    pad4(out, 110 + name_len)
}

fn pad4(out: &mut impl Write, len: usize) -> io::Result<()> {
    let pad = (4 - len % 4) % 4;
    out.write_all(&[0u8; 3][..pad])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_come_first_and_records_are_aligned() {
        let mut a = Archive::default();
        a.add(
            "/usr/lib/x/libc.so.6",
            Entry::File {
                data: b"abc".to_vec(),
                executable: false,
            },
        );
        a.add("/bin/sh", Entry::Symlink("busybox".into()));
        let paths: Vec<&str> = a.entries.keys().map(String::as_str).collect();
        assert_eq!(
            paths,
            [
                "bin",
                "bin/sh",
                "usr",
                "usr/lib",
                "usr/lib/x",
                "usr/lib/x/libc.so.6"
            ]
        );
        let mut out = Vec::new();
        a.write(&mut out).unwrap();
        assert!(out.starts_with(b"070701"));
        assert_eq!(out.len() % 4, 0);
        let trailer = out.windows(10).position(|w| w == b"TRAILER!!!").unwrap();
        assert_eq!(&out[trailer - 110..trailer - 104], b"070701");
    }
}
