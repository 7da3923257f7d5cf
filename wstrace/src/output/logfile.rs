//! `--output FILE`: the durable event log. JSON lines appended with one
//! `write(2)` per line on an O_APPEND file (a reader never sees half a line
//! from a live writer), size-based rotation (FILE -> FILE.1 -> ... ->
//! FILE.<keep>), mode 0640, and `sync` before exit so every line written
//! before SIGTERM is on disk.
//!
//! The file is opened as `safe_file` describes: no symlink followed, only a
//! regular file of the daemon's own user, in a directory other users cannot
//! swap it in. Rotation renames and creates relative to that directory's fd:
//! the next file is created first under a fresh random name (O_EXCL) and
//! swapped with FILE in one step (RENAME_EXCHANGE), so FILE is never
//! vacant and no other user can take the name in between (in a sticky
//! directory such as /tmp they could, and keep it).
//!
//! A failure during the run does not end the log. A line that cannot be
//! written (disk full, I/O error, or a file at --rotate-size that cannot be
//! rotated: the file never grows past it) is held in memory, up to
//! `HELD_BYTES`, and written first, in order, once writing works again;
//! lines beyond that are lost and counted (`lost_total`, exported as
//! `wstrace_lost_events_total{reason="log_unwritten"}`). Both are retried
//! with back-off, from 1 s doubling to 60 s, and each failed attempt is
//! returned as one error for the caller to show as a warning.
use std::{
    collections::VecDeque,
    ffi::OsString,
    fs::File,
    io::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow};

use crate::output::{
    escape::text as esc,
    safe_file::{self, Dir},
};

/// Lines held in memory while the file cannot be written, in bytes; lines
/// beyond it are counted as lost.
const HELD_BYTES: usize = 4 * 1024 * 1024;

/// First wait before a failed write or rotation is tried again; it doubles
/// on each failure up to `MAX_RETRY`.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);

pub struct LogFile {
    path: PathBuf,
    dir: Dir,
    name: OsString,
    file: File,
    size: u64,
    rotate_size: u64,
    keep: u32,
    /// Lines written since start (all files).
    pub lines: u64,
    /// Lines (with their newline) not written yet, oldest first.
    held: VecDeque<Vec<u8>>,
    held_bytes: usize,
    /// Lines dropped because `held` was full, since writing last worked.
    lost: u64,
    /// Lines dropped because `held` was full, since start.
    pub lost_total: u64,
    write_retry: Option<Backoff>,
    rotate_retry: Option<Backoff>,
    first_retry: Duration,
}

#[derive(Clone, Copy)]
struct Backoff {
    at: Instant,
    delay: Duration,
}

impl Backoff {
    /// The wait after one more failure.
    fn after(prev: Option<Backoff>, first: Duration, now: Instant) -> Backoff {
        let delay = prev.map_or(first, |b| (b.delay * 2).min(MAX_RETRY));
        Backoff {
            at: now + delay,
            delay,
        }
    }
}

impl LogFile {
    /// Opens (appending) or creates `path`; see the module comment for
    /// what is refused.
    pub fn open(path: &Path, rotate_size: u64, keep: u32) -> Result<LogFile> {
        let shown = esc(&path.to_string_lossy()).into_owned();
        let open = || -> Result<(Dir, OsString, File)> {
            let (dir, name) = safe_file::dir_of(path)?;
            let file = dir.open_write(&name, true)?;
            Ok((dir, name, file))
        };
        let (dir, name, file) =
            open().map_err(|e| anyhow!("cannot open the event log {shown}: {e:#}"))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(LogFile {
            path: path.to_path_buf(),
            dir,
            name,
            file,
            size,
            rotate_size,
            keep,
            lines: 0,
            held: VecDeque::new(),
            held_bytes: 0,
            lost: 0,
            write_retry: None,
            rotate_retry: None,
            lost_total: 0,
            first_retry: FIRST_RETRY,
        })
    }

    /// Appends one line (a newline is added), rotating first when the line
    /// would take the file past the rotation size.
    ///
    /// An error is a warning for the operator: the log stays open either
    /// way. The message says what happened to the line: written (a rotation
    /// failed and is retried) or held in memory (writing failed and is
    /// retried). While a retry waits, lines are held without an error.
    pub fn append(&mut self, line: &str) -> Result<()> {
        self.append_at(line, Instant::now())
    }

    /// [`Self::append`] at `now`: the retry back-offs are judged against
    /// it, so tests give the times instead of sleeping through them.
    fn append_at(&mut self, line: &str, now: Instant) -> Result<()> {
        self.hold(line);
        if self.write_retry.is_some_and(|b| now < b.at) {
            return Ok(());
        }
        self.write_held(now)
    }

    fn hold(&mut self, line: &str) {
        let len = line.len() + 1;
        if !self.held.is_empty() && self.held_bytes + len > HELD_BYTES {
            self.lost += 1;
            self.lost_total += 1;
            return;
        }
        let mut buf = Vec::with_capacity(len);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        self.held.push_back(buf);
        self.held_bytes += len;
    }

    /// Writes the held lines in order; stops at the first that fails.
    fn write_held(&mut self, now: Instant) -> Result<()> {
        let was_failing = self.write_retry.is_some();
        while let Some(line) = self.held.pop_front() {
            if let Err(e) = self.rotate_if_due(line.len() as u64, now) {
                // The file is full and could not be rotated: the line
                // waits, in order, rather than take the file past
                // --rotate-size.
                self.held.push_front(line);
                return e.map_or(Ok(()), Err);
            }
            if let Err(e) = self.write_line(&line) {
                self.held.push_front(line);
                let b = Backoff::after(self.write_retry, self.first_retry, now);
                self.write_retry = Some(b);
                let lost = if self.lost > 0 {
                    format!(
                        ", {} more lost (over {} MiB held)",
                        self.lost,
                        HELD_BYTES >> 20
                    )
                } else {
                    String::new()
                };
                return Err(anyhow!(
                    "{e:#}; {} line(s) held in memory{lost}, writing retried in {} s",
                    self.held.len(),
                    b.delay.as_secs_f64()
                ));
            }
            self.held_bytes -= line.len();
            self.lines += 1;
        }
        if was_failing {
            self.write_retry = None;
            let lost = match std::mem::take(&mut self.lost) {
                0 => String::new(),
                n => format!(
                    " ({n} line(s) were lost: more than {} MiB waited)",
                    HELD_BYTES >> 20
                ),
            };
            eprintln!(
                "wstrace: note: writing to the event log {} again, held lines written{lost}",
                esc(&self.path.to_string_lossy())
            );
        }
        Ok(())
    }

    /// One write: whole or (on error) absent.
    fn write_line(&mut self, buf: &[u8]) -> Result<()> {
        let shown = || esc(&self.path.to_string_lossy()).into_owned();
        // A short write of a regular file only happens when the disk is
        // full; it is reported as an error.
        let n = self
            .file
            .write(buf)
            .map_err(|e| anyhow!("writing to {}: {e}", shown()))?;
        if n != buf.len() {
            // Take the partial line back out, so no torn line stays behind.
            let _ = self.file.set_len(self.size);
            return Err(anyhow!(
                "writing to {}: disk full ({n} of {} bytes written)",
                shown(),
                buf.len()
            ));
        }
        self.size += n as u64;
        Ok(())
    }

    /// Rotates when a line of `len` bytes would take the file past the
    /// rotation size. `Err` when the line must not be written now: the
    /// rotation failed (`Some`, the warning) or a failed one waits for its
    /// retry (`None`).
    fn rotate_if_due(&mut self, len: u64, now: Instant) -> Result<(), Option<anyhow::Error>> {
        if self.rotate_size == 0 || self.size == 0 || self.size + len <= self.rotate_size {
            return Ok(());
        }
        if self.rotate_retry.is_some_and(|b| now < b.at) {
            return Err(None);
        }
        match self.rotate() {
            Ok(()) => {
                if self.rotate_retry.take().is_some() {
                    eprintln!(
                        "wstrace: note: rotating the event log {} again",
                        esc(&self.path.to_string_lossy())
                    );
                }
                Ok(())
            }
            Err(e) => {
                let b = Backoff::after(self.rotate_retry, self.first_retry, now);
                self.rotate_retry = Some(b);
                Err(Some(anyhow!(
                    "rotating the event log: {e:#}; lines are held in memory (up to {} MiB, then counted lost) rather than written past --rotate-size; rotation retried in {} s",
                    HELD_BYTES >> 20,
                    b.delay.as_secs_f64()
                )))
            }
        }
    }

    /// A new file under a fresh random name; FILE.<keep-1> -> FILE.<keep>,
    /// ..., FILE.1 -> FILE.2; the new file and FILE swapped in one step;
    /// the old log (now under the random name) -> FILE.1. All relative to
    /// the directory opened at start. Until the swap nothing has changed
    /// but the older files' names, so a failure leaves FILE as it was.
    fn rotate(&mut self) -> Result<()> {
        self.file.sync_data().ok();
        if self.keep == 0 {
            self.file
                .set_len(0)
                .map_err(|e| anyhow!("truncating {}: {e}", esc(&self.path.to_string_lossy())))?;
            self.size = 0;
            return Ok(());
        }
        let (fresh, file) = self.dir.create_fresh(&self.name)?;
        let shifted = (|| {
            for i in (1..self.keep).rev() {
                self.dir.rename(
                    &rotated_name(&self.name, i),
                    &rotated_name(&self.name, i + 1),
                )?;
            }
            self.dir.exchange(&fresh, &self.name)
        })();
        if let Err(e) = shifted {
            let _ = self.dir.remove(&fresh);
            return Err(e);
        }
        self.file = file;
        self.size = 0;
        // The swap is done: FILE is the new file. The old log keeps the
        // random name if FILE.1 cannot be replaced (another user's file in
        // a sticky directory), and the warning says where it is.
        if let Err(e) = self.dir.rename(&fresh, &rotated_name(&self.name, 1)) {
            eprintln!(
                "wstrace: warning: rotating the event log: {e:#}; the previous log stays as {}",
                esc(&self.path.with_file_name(&fresh).to_string_lossy())
            );
        }
        Ok(())
    }

    /// Writes what is held (one last try, whatever the back-off says), then
    /// makes everything written durable. An error names the lines lost.
    pub fn sync(&mut self) -> Result<()> {
        let shown = esc(&self.path.to_string_lossy()).into_owned();
        let failure = if self.held.is_empty() {
            None
        } else {
            self.write_held(Instant::now()).err()
        };
        self.file
            .sync_data()
            .map_err(|e| anyhow!("syncing {shown}: {e}"))?;
        let unwritten = self.held.len() as u64 + self.lost;
        if unwritten > 0 {
            return Err(anyhow!(
                "{unwritten} line(s) could not be written to the event log {shown} and are lost{}",
                failure.map(|e| format!(": {e:#}")).unwrap_or_default()
            ));
        }
        Ok(())
    }

    #[cfg(test)]
    fn with_first_retry(mut self, d: Duration) -> LogFile {
        self.first_retry = d;
        self
    }
}

fn rotated_name(name: &std::ffi::OsStr, i: u32) -> OsString {
    let mut s = name.to_owned();
    s.push(format!(".{i}"));
    s
}

#[cfg(test)]
pub fn rotated(path: &Path, i: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("wstrace-logfile-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("dir");
        // Whatever the umask: a group/world-writable directory is refused.
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
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
    fn devices_fifos_and_symlinks_are_refused() {
        // /dev/full used to be accepted (and every write then failed).
        let e = LogFile::open(Path::new("/dev/full"), 0, 0)
            .err()
            .expect("refused");
        assert!(format!("{e:#}").contains("not a regular file"), "{e:#}");
        let d = dir("symlink");
        let target = d.join("target");
        std::fs::write(&target, "").expect("write");
        std::os::unix::fs::symlink(&target, d.join("l")).expect("symlink");
        let e = LogFile::open(&d.join("l"), 0, 0).err().expect("refused");
        let msg = format!("{e:#}");
        assert!(
            msg.contains("cannot open the event log") && msg.contains("symbolic link"),
            "{msg}"
        );
    }

    #[test]
    fn failed_rotation_holds_lines_and_is_retried() {
        let d = dir("rotfail");
        let path = d.join("l");
        // A retry period far longer than the loop below, even on a busy
        // machine (each rotation attempt syncs the file first).
        let mut log = LogFile::open(&path, 100, 20)
            .expect("open")
            .with_first_retry(Duration::from_secs(3));
        // FILE.20 is a non-empty directory: renaming FILE.19 onto it fails.
        std::fs::write(d.join("l.19"), "old\n").expect("l.19");
        std::fs::create_dir_all(d.join("l.20/x")).expect("mkdir");
        let line = |i: usize| format!("line {i:04} ..............................");
        let mut warnings = Vec::new();
        // One moment for the whole loop: however long the writes take on a
        // loaded host, the retry is not due during it.
        let t0 = Instant::now();
        for i in 0..20 {
            if let Err(e) = log.append_at(&line(i), t0) {
                warnings.push(format!("{e:#}"));
            }
        }
        assert_eq!(
            warnings.len(),
            1,
            "one warning per retry period: {warnings:?}"
        );
        assert!(
            warnings[0].contains("rotating the event log")
                && warnings[0].contains("held in memory")
                && warnings[0].contains("retried in 3 s"),
            "{}",
            warnings[0]
        );
        // Issue 25, item 5: a rotation that cannot happen still bounds the
        // file: it stops at --rotate-size, the rest waits in memory.
        assert_eq!(lines_in(&path), [line(0), line(1)]);
        assert!(std::fs::metadata(&path).expect("meta").len() <= 100);
        assert_eq!(lines_in(&d.join("l.19")), ["old"], "FILE.19 untouched");
        std::fs::remove_dir_all(d.join("l.20")).expect("rmdir");
        log.append_at(&line(20), t0 + Duration::from_millis(3100))
            .expect("rotates again");
        let mut all = Vec::new();
        for i in (1..=20).rev() {
            all.extend(lines_in(&rotated(&path, i)));
        }
        all.extend(lines_in(&path));
        let want: Vec<String> = std::iter::once("old".to_string())
            .chain((0..=20).map(line))
            .collect();
        assert_eq!(all, want, "nothing lost, in order");
        for i in 1..=20 {
            let p = rotated(&path, i);
            if p.exists() {
                assert!(
                    std::fs::metadata(&p).expect("meta").len() <= 100,
                    "{}",
                    p.display()
                );
            }
        }
        assert_eq!(log.lines, 21);
        assert_eq!(log.lost_total, 0);
    }

    /// Issue 25, item 5: another process creating FILE with O_EXCL in a
    /// loop never gets the name during rotations (it is never vacant), and
    /// every line stays in wstrace's own files.
    #[test]
    fn rotation_never_leaves_the_name_vacant() {
        use std::sync::{
            Arc,
            atomic::{AtomicBool, AtomicU64, Ordering},
        };
        let d = dir("vacant");
        let path = d.join("l");
        let mut log = LogFile::open(&path, 200, 3).expect("open");
        let stop = Arc::new(AtomicBool::new(false));
        let won = Arc::new(AtomicU64::new(0));
        let racer = {
            let (stop, won, path) = (stop.clone(), won.clone(), path.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&path)
                        .is_ok()
                    {
                        won.fetch_add(1, Ordering::Relaxed);
                        stop.store(true, Ordering::Relaxed);
                    }
                }
            })
        };
        for i in 0..3000 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            log.append(&format!("line {i:05} {}", "x".repeat(40)))
                .expect("append");
        }
        stop.store(true, Ordering::Relaxed);
        racer.join().expect("racer");
        assert_eq!(won.load(Ordering::Relaxed), 0, "the racer created FILE");
        assert_eq!(log.lines, 3000);
        for p in [
            path.clone(),
            rotated(&path, 1),
            rotated(&path, 2),
            rotated(&path, 3),
        ] {
            assert!(
                std::fs::metadata(&p).expect("meta").len() <= 200,
                "{}",
                p.display()
            );
        }
        let stray: Vec<_> = std::fs::read_dir(&d)
            .expect("ls")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(stray.is_empty(), "temporary names left behind: {stray:?}");
    }

    #[test]
    fn lines_past_the_held_limit_are_counted_lost() {
        let d = dir("heldlost");
        let path = d.join("l");
        let mut log = LogFile::open(&path, 100, 2)
            .expect("open")
            .with_first_retry(Duration::from_secs(3600));
        std::fs::write(d.join("l.1"), "old\n").expect("l.1");
        std::fs::create_dir_all(d.join("l.2/x")).expect("mkdir");
        let t0 = Instant::now();
        let line = "y".repeat(60);
        let n = HELD_BYTES / 61 + 100;
        for _ in 0..n {
            let _ = log.append_at(&line, t0);
        }
        assert!(std::fs::metadata(&path).expect("meta").len() <= 100);
        assert!(log.lost_total >= 99, "lost {}", log.lost_total);
        assert!(log.held_bytes <= HELD_BYTES);
    }

    #[test]
    fn rotation_stays_in_the_directory_opened_at_start() {
        // The directory path is swapped after the start (renamed away and
        // replaced): rotation renames and creates in the original one.
        let d = dir("dirfd");
        std::fs::create_dir(d.join("a")).expect("mkdir");
        let path = d.join("a/l");
        let mut log = LogFile::open(&path, 60, 3).expect("open");
        log.append(&"x".repeat(40)).expect("append");
        std::fs::rename(d.join("a"), d.join("b")).expect("rename dir");
        std::fs::create_dir(d.join("a")).expect("mkdir");
        log.append(&"y".repeat(40)).expect("append rotates");
        log.append(&"z".repeat(40)).expect("append rotates");
        assert_eq!(std::fs::read_dir(d.join("a")).expect("ls").count(), 0);
        assert_eq!(lines_in(&d.join("b/l")), ["z".repeat(40)]);
        assert_eq!(lines_in(&d.join("b/l.1")), ["y".repeat(40)]);
        assert_eq!(lines_in(&d.join("b/l.2")), ["x".repeat(40)]);
    }

    #[test]
    fn rotation_does_not_write_through_a_planted_symlink() {
        // keep=2: FILE.1 -> FILE.2, FILE -> FILE.1, new FILE. A symlink put
        // at a rotated name is replaced by the rename, never written through.
        let d = dir("planted");
        let victim = d.join("victim");
        std::fs::write(&victim, "precious\n").expect("write");
        let path = d.join("l");
        let mut log = LogFile::open(&path, 60, 2).expect("open");
        std::os::unix::fs::symlink(&victim, d.join("l.2")).expect("symlink");
        std::os::unix::fs::symlink(&victim, d.join("l.1")).expect("symlink");
        for i in 0..6 {
            log.append(&format!("{i} {}", "x".repeat(40)))
                .expect("append");
        }
        assert_eq!(
            std::fs::read_to_string(&victim).expect("read"),
            "precious\n"
        );
        assert_eq!(log.lines, 6);
    }

    /// Mounts a small tmpfs (root only) and removes it when dropped.
    struct Tmpfs(PathBuf);

    impl Tmpfs {
        fn mount(name: &str, size: &str) -> Option<Tmpfs> {
            if !crate::testenv::require_root(&format!("{name} mounts a small tmpfs")) {
                return None;
            }
            let d = dir(name);
            let ok = std::process::Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={size},mode=0755"),
                    "tmpfs",
                ])
                .arg(&d)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "{name}: mount -t tmpfs failed");
            Some(Tmpfs(d))
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }

    /// Fills the filesystem of `dir` with one file, returned.
    fn fill(dir: &Path) -> PathBuf {
        let p = dir.join("filler");
        let mut f = std::fs::File::create(&p).expect("filler");
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        p
    }

    #[test]
    fn disk_full_holds_lines_and_writes_them_when_space_returns() {
        let Some(fs) = Tmpfs::mount("diskfull", "256k") else {
            return;
        };
        let path = fs.0.join("l");
        let mut log = LogFile::open(&path, 0, 0)
            .expect("open")
            .with_first_retry(Duration::from_millis(100));
        // Exactly one page: the next line needs a page of its own.
        let before = "b".repeat(4095);
        log.append(&before).expect("append");
        let filler = fill(&fs.0);
        // Lines long enough to need new pages (tmpfs allocates by page).
        let during = |i: usize| format!("during {i} {}", "x".repeat(500));
        let mut errors = Vec::new();
        // Times given, not slept: on a loaded host the loop may take longer
        // than the 0.1 s retry, which would then fall inside it.
        let t0 = Instant::now();
        for i in 0..50 {
            if let Err(e) = log.append_at(&during(i), t0) {
                errors.push(format!("{e:#}"));
            }
        }
        assert_eq!(
            errors.len(),
            1,
            "one warning, then held quietly: {errors:?}"
        );
        assert!(
            errors[0].contains("No space left")
                && errors[0].contains("1 line(s) held in memory")
                && errors[0].contains("retried in 0.1 s"),
            "{}",
            errors[0]
        );
        // A retry while the disk is still full fails again, waiting longer.
        let e = log
            .append_at(&during(50), t0 + Duration::from_millis(120))
            .expect_err("still full");
        assert!(
            format!("{e:#}").contains("51 line(s) held") && format!("{e:#}").contains("0.2 s"),
            "{e:#}"
        );
        std::fs::remove_file(&filler).expect("free space");
        log.append_at("after", t0 + Duration::from_millis(120 + 220))
            .expect("written again");
        log.sync().expect("sync");
        let mut want = vec![before];
        want.extend((0..=50).map(during));
        want.push("after".into());
        assert_eq!(lines_in(&path), want, "every line, in order, no torn line");
        assert_eq!(log.lines, 53);
    }

    #[test]
    fn lines_still_held_at_exit_are_reported_by_sync() {
        let Some(fs) = Tmpfs::mount("synclost", "128k") else {
            return;
        };
        let path = fs.0.join("l");
        let mut log = LogFile::open(&path, 0, 0).expect("open");
        let _filler = fill(&fs.0);
        // One moment: the retry is not due between the two.
        let t0 = Instant::now();
        assert!(log.append_at("x", t0).is_err());
        log.append_at("y", t0).expect("held quietly");
        let e = log.sync().expect_err("lines lost");
        assert!(
            format!("{e:#}").contains("2 line(s) could not be written"),
            "{e:#}"
        );
    }
}
