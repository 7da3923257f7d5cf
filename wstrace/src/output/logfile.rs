//! `--output FILE`: the durable event log. JSON lines appended with one
//! `write(2)` per line on an O_APPEND file (a reader never sees half a line
//! from a live writer), size-based rotation (FILE -> FILE.1 -> ... ->
//! FILE.<keep>), mode 0640, and `sync` before exit so every line written
//! before SIGTERM is on disk.
use std::{
    fs::{File, OpenOptions},
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

pub struct LogFile {
    path: PathBuf,
    file: File,
    size: u64,
    rotate_size: u64,
    keep: u32,
    /// Lines written since start (all files).
    pub lines: u64,
}

impl LogFile {
    /// Opens (creating with 0640, or appending to) `path`.
    pub fn open(path: &Path, rotate_size: u64, keep: u32) -> Result<LogFile> {
        let file = open_append(path)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(LogFile {
            path: path.to_path_buf(),
            file,
            size,
            rotate_size,
            keep,
            lines: 0,
        })
    }

    /// Appends one line (a newline is added). Rotates first when the line
    /// would take the file past the rotation size.
    pub fn append(&mut self, line: &str) -> Result<()> {
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        if self.rotate_size > 0 && self.size > 0 && self.size + buf.len() as u64 > self.rotate_size
        {
            self.rotate()?;
        }
        // One write: whole or (on error) absent; a short write of a regular
        // file only happens when the disk is full, reported as an error.
        let n = self
            .file
            .write(&buf)
            .with_context(|| format!("writing to {}", self.path.display()))?;
        if n != buf.len() {
            // Take the partial line back out, so no torn line stays behind.
            let _ = self.file.set_len(self.size);
            anyhow::bail!(
                "writing to {}: disk full ({n} of {} bytes written)",
                self.path.display(),
                buf.len()
            );
        }
        self.size += n as u64;
        self.lines += 1;
        Ok(())
    }

    /// FILE.<keep-1> -> FILE.<keep>, ..., FILE -> FILE.1, then a new FILE.
    fn rotate(&mut self) -> Result<()> {
        self.file.sync_data().ok();
        if self.keep == 0 {
            self.file
                .set_len(0)
                .with_context(|| format!("truncating {}", self.path.display()))?;
            self.size = 0;
            return Ok(());
        }
        for i in (1..self.keep).rev() {
            let from = rotated(&self.path, i);
            if from.exists() {
                std::fs::rename(&from, rotated(&self.path, i + 1))
                    .with_context(|| format!("rotating {}", from.display()))?;
            }
        }
        std::fs::rename(&self.path, rotated(&self.path, 1))
            .with_context(|| format!("rotating {}", self.path.display()))?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }

    /// Everything written is on disk.
    pub fn sync(&mut self) -> Result<()> {
        self.file
            .sync_data()
            .with_context(|| format!("syncing {}", self.path.display()))
    }
}

pub fn rotated(path: &Path, i: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

fn open_append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .with_context(|| format!("cannot open the event log {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("wstrace-logfile-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    fn lines_in(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .map(|s| s.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }

    #[test]
    fn rotation_loses_nothing_and_keeps_order() {
        let d = dir("rotate");
        let path = d.join("closes.jsonl");
        let mut log = LogFile::open(&path, 4096, 1000).expect("open");
        for i in 0..5000 {
            log.append(&format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(i % 97)))
                .expect("append");
        }
        log.sync().expect("sync");
        let mut files: Vec<PathBuf> = (1..=1000)
            .map(|i| rotated(&path, i))
            .filter(|p| p.exists())
            .collect();
        files.reverse(); // oldest first
        files.push(path.clone());
        let all: Vec<String> = files.iter().flat_map(|f| lines_in(f)).collect();
        assert_eq!(all.len(), 5000);
        for (i, l) in all.iter().enumerate() {
            let v: serde_json::Value = serde_json::from_str(l).expect("whole JSON line");
            assert_eq!(v["n"].as_u64(), Some(i as u64));
        }
        for f in &files {
            assert!(
                std::fs::metadata(f).expect("meta").len() <= 4096,
                "{}",
                f.display()
            );
        }
        assert_eq!(
            std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777,
            0o640
        );
    }

    #[test]
    fn keep_limits_the_number_of_files() {
        let d = dir("keep");
        let path = d.join("l");
        let mut log = LogFile::open(&path, 100, 2).expect("open");
        for i in 0..100 {
            log.append(&format!("line {i:04} ............................"))
                .expect("append");
        }
        assert!(rotated(&path, 2).exists());
        assert!(!rotated(&path, 3).exists());
        assert_eq!(log.lines, 100);
    }

    #[test]
    fn appends_to_an_existing_log() {
        let d = dir("append");
        let path = d.join("l");
        LogFile::open(&path, 0, 0)
            .expect("open")
            .append("one")
            .expect("append");
        LogFile::open(&path, 0, 0)
            .expect("open")
            .append("two")
            .expect("append");
        assert_eq!(lines_in(&path), ["one", "two"]);
    }

    #[test]
    fn unwritable_path_is_a_clear_error() {
        let e = LogFile::open(Path::new("/nonexistent-dir/x.jsonl"), 0, 0)
            .err()
            .expect("error");
        let msg = format!("{e:#}");
        assert!(
            msg.contains("cannot open the event log /nonexistent-dir/x.jsonl"),
            "{msg}"
        );
    }

    #[test]
    fn disk_full_is_an_error_not_a_torn_line() {
        // /dev/full: every write fails with ENOSPC.
        if !crate::testenv::require(
            Path::new("/dev/full").exists(),
            "no /dev/full: create it with `mknod -m 666 /dev/full c 1 7`",
        ) {
            return;
        }
        let mut log = LogFile::open(Path::new("/dev/full"), 0, 0).expect("open");
        let e = log.append("x").err().expect("ENOSPC");
        assert!(format!("{e:#}").contains("No space left"), "{e:#}");
        assert_eq!(log.lines, 0);
    }
}
