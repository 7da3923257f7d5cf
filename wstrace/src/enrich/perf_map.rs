//! A JIT runtime's perf map (`/tmp/perf-<pid>.map` in the process's own
//! root: one `START SIZE name` line per compiled function, hex), read by
//! wstrace itself rather than by blazesym.
//!
//! The file is named and written by the traced process, which may be any
//! user's: blazesym opened it with a blocking `open()`, so a FIFO there (or
//! a lease on a regular file) held a symbolizer worker forever. Here it is
//! opened relative to `/proc/<pid>/root` with `openat2(RESOLVE_IN_ROOT |
//! RESOLVE_NO_MAGICLINKS)` (its symlinks resolve inside that root, never
//! into ours), `O_NONBLOCK` (a FIFO opens at once and a lease is refused
//! with EWOULDBLOCK instead of waited out) and `O_NOFOLLOW`; only a regular
//! file of at most [`MAX_PERF_MAP`] bytes is read, and at most
//! [`MAX_ENTRIES`] lines of it are kept.
//!
//! A runtime appends to its perf map as it compiles, so a map read at the
//! 101 misses code compiled later (V8 compiles a function at its first
//! calls): [`PerfMap::refresh`] reads only what was appended since, so
//! re-reading a map costs its growth. A process that replaces or truncates
//! its map (each new file is read from its start) gets at most
//! [`MAX_PERF_MAP_READS`] bytes read in all, however often it does.
use std::{
    fs::File,
    io::{Read as _, Seek as _, SeekFrom},
};

use rustix::fs::{Mode, OFlags, ResolveFlags};

/// Largest perf map read (bytes); a bigger one is read up to this far.
pub const MAX_PERF_MAP: u64 = 16 << 20;

/// Bytes read from one process's perf maps in all, across re-reads of
/// replaced or truncated files: two full-size maps.
pub const MAX_PERF_MAP_READS: u64 = 2 * MAX_PERF_MAP;

/// Entries kept from one perf map.
pub const MAX_ENTRIES: usize = 1 << 18;

/// Longest function name kept (bytes); longer ones are cut.
const MAX_NAME: usize = 512;

/// The functions of one perf map, sorted by start address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PerfMap {
    entries: Vec<(u64, u64, String)>,
    /// The file read: (device, inode); another file at the name is read
    /// from its start.
    file: Option<(u64, u64)>,
    /// Bytes of it parsed: up to the last complete line read.
    consumed: u64,
    /// Bytes read from every file at the name so far (kept when the file
    /// is replaced): bounded by [`MAX_PERF_MAP_READS`].
    read_total: u64,
}

impl PerfMap {
    /// Process `pid`'s perf map, if it has a readable one (see the module
    /// comment for what is refused).
    pub fn read(pid: u32) -> Option<PerfMap> {
        let mut map = PerfMap::default();
        map.refresh(pid).then_some(map)
    }

    /// Reads what was appended to `pid`'s perf map since the last read
    /// (all of it if the file was replaced or truncated), at most up to
    /// [`MAX_PERF_MAP`] bytes of the file; a line still being written is
    /// left for the next read. Returns whether a perf map was readable;
    /// one that is not leaves the entries read before.
    pub fn refresh(&mut self, pid: u32) -> bool {
        let Some((mut file, id, size)) = open(pid) else {
            return false;
        };
        if self.file != Some(id) || size < self.consumed {
            *self = PerfMap {
                file: Some(id),
                read_total: self.read_total,
                ..PerfMap::default()
            };
        }
        let want = size
            .min(MAX_PERF_MAP)
            .saturating_sub(self.consumed)
            .min(MAX_PERF_MAP_READS.saturating_sub(self.read_total));
        if want == 0 {
            return true;
        }
        let mut text = Vec::new();
        if file.seek(SeekFrom::Start(self.consumed)).is_err()
            || file.take(want).read_to_end(&mut text).is_err()
        {
            return true;
        }
        self.read_total += text.len() as u64;
        // Only whole lines: the runtime may be writing the last one.
        let whole = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        self.consumed += whole as u64;
        let room = MAX_ENTRIES.saturating_sub(self.entries.len());
        let new = PerfMap::parse(&String::from_utf8_lossy(&text[..whole]));
        if !new.entries.is_empty() && room > 0 {
            self.entries.extend(new.entries.into_iter().take(room));
            self.entries.sort_by_key(|e| e.0);
        }
        true
    }

    /// Parses perf map text; malformed lines are skipped.
    pub fn parse(text: &str) -> PerfMap {
        let mut entries: Vec<(u64, u64, String)> = text
            .lines()
            .filter_map(|l| {
                let mut it = l.splitn(3, ' ');
                let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
                let start = hex(it.next()?)?;
                let size = hex(it.next()?)?;
                let name = it.next()?.trim_end();
                if size == 0 || name.is_empty() {
                    return None;
                }
                let mut cut = name.len().min(MAX_NAME);
                while !name.is_char_boundary(cut) {
                    cut -= 1;
                }
                Some((start, start.saturating_add(size), name[..cut].to_string()))
            })
            .take(MAX_ENTRIES)
            .collect();
        entries.sort_by_key(|e| e.0);
        PerfMap {
            entries,
            ..PerfMap::default()
        }
    }

    /// The function holding `addr`, and `addr`'s offset in it.
    pub fn lookup(&self, addr: u64) -> Option<(&str, u64)> {
        let i = self.entries.partition_point(|e| e.0 <= addr);
        let (start, end, name) = self.entries.get(i.checked_sub(1)?)?;
        (addr < *end).then(|| (name.as_str(), addr - start))
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A V8 perf-map name split into (function, script, line): V8 names a
/// JavaScript function `JS:<tier><name> <script>:<line>:<column>` (node 18+;
/// `LazyCompile:`/`Function:` before), where the tier is `~` (bytecode),
/// `^` (Sparkplug), `+` (Maglev) or `*` (TurboFan) and the line is where
/// the function starts. An anonymous function has an empty name:
/// `(anonymous)`, as V8's own stack traces say. `None` for every other
/// entry (builtins, stubs, regexps, other runtimes' names).
pub fn v8_js_function(name: &str) -> Option<(&str, &str, u32)> {
    let rest = ["JS:", "LazyCompile:", "Function:"]
        .iter()
        .find_map(|p| name.strip_prefix(p))?;
    let rest = rest.strip_prefix(['~', '^', '+', '*']).unwrap_or(rest);
    let (function, place) = rest.rsplit_once(' ')?;
    let (place, column) = place.rsplit_once(':')?;
    let (script, line) = place.rsplit_once(':')?;
    column.parse::<u32>().ok()?;
    let line = line.parse::<u32>().ok()?;
    if script.is_empty() {
        return None;
    }
    let function = if function.is_empty() {
        "(anonymous)"
    } else {
        function
    };
    Some((function, script, line))
}

/// Opens `tmp/perf-<pid>.map` under `/proc/<pid>/root`, refusing anything
/// but a regular file; never blocks on what the process put there. With
/// the file's (device, inode) and size.
fn open(pid: u32) -> Option<(File, (u64, u64), u64)> {
    let root = rustix::fs::open(
        format!("/proc/{pid}/root"),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let fd = rustix::fs::openat2(
        &root,
        format!("tmp/perf-{pid}.map"),
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
    .ok()?;
    let st = rustix::fs::fstat(&fd).ok()?;
    (rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile).then(
        || {
            (
                File::from(fd),
                (st.st_dev, st.st_ino),
                u64::try_from(st.st_size).unwrap_or(0),
            )
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_parsed_and_looked_up() {
        let m = PerfMap::parse(
            "7f0000001000 40 LazyCompile:*handler app.js:10\n\
             bogus line\n\
             0x7f0000000000 100 Builtin:Start\n\
             7f0000002000 0 empty\n",
        );
        assert_eq!(
            m.lookup(0x7f00_0000_1010),
            Some(("LazyCompile:*handler app.js:10", 0x10))
        );
        assert_eq!(m.lookup(0x7f00_0000_00ff), Some(("Builtin:Start", 0xff)));
        assert_eq!(m.lookup(0x7f00_0000_0100), None);
        assert_eq!(m.lookup(0x7f00_0000_1040), None);
        assert_eq!(m.lookup(0x10), None);
    }

    #[test]
    fn v8_names_split_into_function_script_and_line() {
        assert_eq!(
            v8_js_function("JS:^reapDeadClients /srv/app/server.js:9:25"),
            Some(("reapDeadClients", "/srv/app/server.js", 9))
        );
        assert_eq!(
            v8_js_function("JS:~terminate /n/ws/lib/websocket.js:513:12"),
            Some(("terminate", "/n/ws/lib/websocket.js", 513))
        );
        assert_eq!(
            v8_js_function("LazyCompile:*Socket._write node:net:930:35"),
            Some(("Socket._write", "node:net", 930))
        );
        assert_eq!(
            v8_js_function("JS:~ node:internal/main/run_main_module:1:1"),
            Some(("(anonymous)", "node:internal/main/run_main_module", 1))
        );
        // V8 does not quote a script path: one with a space is split at
        // its last space (a getter's name, `get x`, has one too).
        assert_eq!(
            v8_js_function("JS:*f /my app/s.js:3:1"),
            Some(("f /my", "app/s.js", 3))
        );
        for other in [
            "Builtin:ArrayForEach",
            "JS:~noplace",
            "JS:~f /x.js:a:1",
            "JS:~f :1:1",
            "py::handler:/srv/app.py",
            "RegExp:[a-z]+",
        ] {
            assert_eq!(v8_js_function(other), None, "{other}");
        }
    }

    /// The runtime appends as it compiles: a refresh reads only what was
    /// appended, never a half-written line, and starts over when the file
    /// is replaced or truncated.
    #[test]
    fn refresh_reads_what_was_appended_in_whole_lines() {
        use std::io::Write as _;
        let mut child = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .expect("sleep");
        let pid = child.id();
        let path = std::path::PathBuf::from(format!("/tmp/perf-{pid}.map"));
        std::fs::write(&path, "1000 10 first\n2000 10 sec").expect("write");
        let mut m = PerfMap::read(pid).expect("read");
        assert_eq!(m.lookup(0x1001), Some(("first", 1)));
        assert_eq!(m.lookup(0x2001), None, "a half-written line is not read");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("append");
        f.write_all(b"ond\n0800 10 third\n").expect("append");
        assert!(m.refresh(pid));
        assert_eq!(m.lookup(0x2001), Some(("second", 1)));
        assert_eq!(m.lookup(0x0801), Some(("third", 1)));
        assert_eq!(m.lookup(0x1001), Some(("first", 1)));
        // Replaced by a shorter file: read afresh.
        std::fs::remove_file(&path).expect("rm");
        std::fs::write(&path, "3000 10 new\n").expect("write");
        assert!(m.refresh(pid));
        assert_eq!(m.lookup(0x1001), None);
        assert_eq!(m.lookup(0x3001), Some(("new", 1)));
        // Replaced again and again: read from its start each time, until
        // the process's read budget is spent; then nothing more is read.
        let big = "4000 10 x\n".repeat((MAX_PERF_MAP / 10) as usize + 1);
        // (A file written after an unlink may get the same inode: a
        // shorter one in between makes each big one a new read.)
        for _ in 0..3 {
            for text in ["1 1 a\n", big.as_str()] {
                std::fs::remove_file(&path).expect("rm");
                std::fs::write(&path, text).expect("write");
                assert!(m.refresh(pid));
                assert!(m.read_total <= MAX_PERF_MAP_READS);
            }
        }
        assert_eq!(m.read_total, MAX_PERF_MAP_READS);
        std::fs::remove_file(&path).expect("rm");
        std::fs::write(&path, "3000 10 new\n").expect("write");
        assert!(m.refresh(pid));
        assert_eq!(m.lookup(0x3001), None, "read past the budget");
        assert_eq!(m.read_total, MAX_PERF_MAP_READS);
        // Gone: the entries read stay.
        m = PerfMap::parse("3000 10 new\n");
        std::fs::remove_file(&path).expect("rm");
        assert!(!m.refresh(pid));
        assert_eq!(m.lookup(0x3001), Some(("new", 1)));
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn long_names_are_cut_on_a_char_boundary() {
        let name = "é".repeat(400);
        let m = PerfMap::parse(&format!("1000 10 {name}\n"));
        let (n, _) = m.lookup(0x1000).expect("found");
        assert!(n.len() <= MAX_NAME && name.starts_with(n));
    }

    /// Issue 25, item 1: a FIFO as the perf map opens at once and is
    /// refused; a regular one is read.
    #[test]
    fn a_fifo_perf_map_is_refused_without_blocking() {
        let mut child = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .expect("sleep");
        let pid = child.id();
        let path = std::path::PathBuf::from(format!("/tmp/perf-{pid}.map"));
        let c = std::ffi::CString::new(path.display().to_string()).expect("path");
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        // A blocking open would hang this test forever: it returns.
        assert_eq!(PerfMap::read(pid), None);
        std::fs::remove_file(&path).expect("rm fifo");
        std::fs::write(&path, "1000 10 jitted\n").expect("write");
        let m = PerfMap::read(pid).expect("regular perf map");
        assert_eq!(m.lookup(0x1004), Some(("jitted", 4)));
        // A symlink at the name is not followed.
        std::fs::remove_file(&path).expect("rm");
        std::os::unix::fs::symlink("/etc/hostname", &path).expect("symlink");
        assert_eq!(PerfMap::read(pid), None);
        let _ = std::fs::remove_file(&path);
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Issue 25, item 1 (the lease variant): a write lease on a regular
    /// perf map refuses our open at once (O_NONBLOCK: EWOULDBLOCK) instead
    /// of waiting out the lease-break time; a blocking open would wait for
    /// the holder to give it up and then read the map.
    #[test]
    fn a_leased_perf_map_is_refused_without_waiting() {
        use std::io::BufRead as _;
        let python = ["/usr/bin/python3", "/usr/local/bin/python3"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        if !crate::testenv::require(python.is_some(), "python3 is not installed") {
            return;
        }
        let mut child = std::process::Command::new(python.unwrap_or_default())
            .arg("-c")
            .arg(
                r#"
import fcntl, os, signal, time
signal.signal(signal.SIGIO, signal.SIG_IGN)
p = "/tmp/perf-%d.map" % os.getpid()
open(p, "w").write("1000 10 jitted\n")
fd = os.open(p, os.O_RDONLY)
fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
print("LEASED", flush=True)
time.sleep(600)
"#,
            )
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let pid = child.id();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("LEASED");
        assert_eq!(line.trim(), "LEASED");
        assert_eq!(PerfMap::read(pid), None, "opened through a lease");
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_file(format!("/tmp/perf-{pid}.map"));
    }
}
