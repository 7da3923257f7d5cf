//! Tests against the live system: this process's own functions, the
//! kernel's kallsyms, child processes remembered and exited, FIFOs that
//! block the worker.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;

use wstrace_common::ustack;

use super::kernel::*;
use super::tests::{at, unknowns};
use super::user::*;
use super::worker::*;
use super::*;
use crate::model::{FrameKind, Unresolved};

/// Budgets for tests that are not about them: long enough for a loaded
/// 2-CPU host to parse this test binary's debug info (seconds), short
/// enough that a real hang still ends the test.
const PATIENT: Budgets = Budgets {
    blocked: Duration::from_secs(300),
    total: Duration::from_secs(300),
};

/// A symbolizer that waits for its worker as long as [`PATIENT`] says.
fn patient() -> Symbolizer {
    let mut s = Symbolizer::new();
    s.budgets = PATIENT;
    s
}

// ---- live: this process ----

#[inline(never)]
fn wstrace_symbolize_probe_fn() -> u64 {
    std::hint::black_box(42)
}

#[test]
fn live_own_functions() {
    let mut s = patient();
    let probe = wstrace_symbolize_probe_fn as *const () as usize as u64;
    let close = libc::close as *const () as usize as u64;
    // The second entry is a "return address": looked up at close, printed as close+0x1.
    let frames = s.user_stack(std::process::id(), &[probe, close + 1]);
    eprintln!("{frames:#?}");
    assert_eq!(frames.len(), 2);
    let exe = std::env::current_exe().expect("current_exe");
    assert_eq!(
        at(&frames[0]),
        format!("{}::wstrace_symbolize_probe_fn+0x0", module_path!()),
    );
    assert_eq!(
        frames[0].module.as_deref(),
        Some(exe.display().to_string().as_str())
    );
    assert!(
        frames[0].line.is_some()
            && frames[0]
                .file
                .as_deref()
                .is_some_and(|f| f.ends_with("symbolize/live_tests.rs")),
        "{:?}",
        frames[0]
    );
    // glibc has several names at close's address (close, __close, __libc_close).
    assert!(at(&frames[1]).ends_with("close+0x1"), "{:?}", frames[1]);
    assert!(
        frames[1]
            .module
            .as_deref()
            .is_some_and(|m| m.contains("libc")),
        "{:?}",
        frames[1]
    );
}

#[test]
fn live_never_drops_frames() {
    let mut s = patient();
    let addrs = [1, 0x10, u64::MAX];
    let frames = s.user_stack(std::process::id(), &addrs);
    assert_eq!(frames[..], unknowns(&addrs)[..]);
    assert_eq!(
        s.user_stack(
            0,
            &[wstrace_symbolize_probe_fn as *const () as usize as u64]
        )
        .len(),
        1
    );
    assert_eq!(s.user_stack(0, &[0x1234])[..], unknowns(&[0x1234])[..]);
    assert!(s.user_stack(std::process::id(), &[]).is_empty());
    assert!(s.kernel_stack(&[]).is_empty());
    // A pid that does not exist.
    assert_eq!(
        s.user_stack(u32::MAX - 1, &[0x4000, 0x5000])[..],
        unknowns(&[0x4000, 0x5000])[..]
    );
}

#[inline(never)]
fn bt_capture() -> Vec<u64> {
    let mut buf = [std::ptr::null_mut::<libc::c_void>(); 64];
    // SAFETY: buf has room for 64 pointers, the count passed.
    let n = unsafe { libc::backtrace(buf.as_mut_ptr(), 64) };
    buf[..usize::try_from(n).unwrap_or(0)]
        .iter()
        .map(|p| *p as u64)
        .collect()
}

#[inline(always)]
fn bt_inlined_middle() -> Vec<u64> {
    std::hint::black_box(bt_capture())
}

#[inline(never)]
fn bt_outer() -> Vec<u64> {
    std::hint::black_box(bt_inlined_middle())
}

#[test]
fn live_real_backtrace_with_inlining() {
    let addrs = bt_outer();
    assert!(addrs.len() >= 3, "{addrs:x?}");
    let mut s = patient();
    let frames = s.user_stack(std::process::id(), &addrs);
    eprintln!("{frames:#?}");
    assert!(frames.len() >= addrs.len());
    let pos = |needle: &str, inlined: bool| {
        frames
            .iter()
            .position(|f| {
                f.inlined == inlined && f.function.as_deref().is_some_and(|n| n.contains(needle))
            })
            .unwrap_or_else(|| panic!("{needle} not in {frames:#?}"))
    };
    let capture = pos("tests::bt_capture", false);
    let outer = pos("tests::bt_outer", false);
    assert!(capture < outer);
    let middle = pos("tests::bt_inlined_middle", true);
    assert!(capture < middle && middle < outer, "{frames:#?}");
    // The test function itself may be inlined into the harness's closure
    // (a codegen choice that differs between builds): named either way.
    assert!(
        frames.iter().any(|f| f
            .function
            .as_deref()
            .is_some_and(|n| n.contains("tests::live_real_backtrace_with_inlining"))),
        "{frames:#?}"
    );
}

#[test]
fn live_perf_map_names_jit_code_as_jit() {
    // Anonymous executable memory named by this process's perf map, as
    // a JIT runtime makes them.
    const LEN: usize = 4096;
    // SAFETY: a fresh private anonymous mapping; nothing else uses it.
    let code = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            LEN,
            libc::PROT_READ | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(code, libc::MAP_FAILED, "mmap");
    let start = code as u64;
    let perf = PathBuf::from(format!("/tmp/perf-{}.map", std::process::id()));
    {
        use std::io::Write as _;
        // create_new: never through a file or link someone planted in /tmp.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&perf)
            .unwrap_or_else(|e| panic!("create {}: {e}", perf.display()));
        writeln!(f, "{start:x} 100 LazyCompile:*onClose app.js:7").expect("write the perf map");
    }
    let mut s = patient();
    let frames = s.user_stack(std::process::id(), &[start + 0x10]);
    let _ = std::fs::remove_file(&perf);
    // SAFETY: the mapping made above, unused from here on.
    unsafe { libc::munmap(code, LEN) };
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(
        (
            frames[0].function.as_deref(),
            frames[0].offset,
            frames[0].kind
        ),
        (
            Some("LazyCompile:*onClose app.js:7"),
            Some(0x10),
            FrameKind::Jit
        ),
        "{frames:?}"
    );
    // Code from a file stays native.
    let probe = wstrace_symbolize_probe_fn as *const () as usize as u64;
    assert_eq!(
        s.user_stack(std::process::id(), &[probe])[0].kind,
        FrameKind::Native
    );
}

// ---- live: kernel ----

/// All addresses of `name` in /proc/kallsyms, plus every name at them.
fn kallsyms_lookup(name: &str) -> Option<(u64, Vec<String>)> {
    let text = std::fs::read_to_string("/proc/kallsyms").ok()?;
    let entries: Vec<(u64, &str)> = text
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let addr = u64::from_str_radix(it.next()?, 16).ok()?;
            let _ty = it.next()?;
            Some((addr, it.next()?))
        })
        .collect();
    let addr = entries.iter().find(|(_, n)| *n == name)?.0;
    let names = entries
        .iter()
        .filter(|(a, _)| *a == addr)
        .map(|(_, n)| n.to_string())
        .collect();
    Some((addr, names))
}

#[test]
fn live_kernel_tcp_close() {
    let found = kallsyms_lookup("tcp_close").ok_or("no tcp_close in it");
    let Some((addr, names)) = crate::testenv::require_ok("/proc/kallsyms", found) else {
        return;
    };
    // (Zero addresses symbolize to unknown: kernel_with_hidden_kallsyms_is_unknown.)
    if !crate::testenv::require(
        addr != 0,
        "/proc/kallsyms shows zero addresses: run as root (CAP_SYSLOG), with kernel.kptr_restrict below 2",
    ) {
        return;
    }
    let mut s = Symbolizer::new();
    let frames = s.kernel_stack(&[addr, addr + 5, 0x10]);
    eprintln!("{frames:#?}");
    assert_eq!(frames.len(), 3);
    let ok = |frame: &Frame, off: &str| names.iter().any(|n| at(frame) == format!("{n}{off}"));
    assert!(
        ok(&frames[0], "+0x0"),
        "{:?} (names at {addr:#x}: {names:?})",
        frames[0]
    );
    assert!(
        ok(&frames[1], "+0x5"),
        "{:?} (names at {addr:#x}: {names:?})",
        frames[1]
    );
    assert_eq!(frames[2], Frame::unknown(FrameKind::Kernel, 0x10, None));
    // A return address equal to a function's start belongs to a call that
    // ended the function before it: looked up one byte back, it is not
    // named after tcp_close.
    let frames = s.kernel_stack(&[addr, addr]);
    assert!(ok(&frames[0], "+0x0"), "{frames:?}");
    assert!(
        !names
            .iter()
            .any(|n| frames[1].function.as_deref() == Some(n.as_str())),
        "{frames:?}"
    );
}

/// A symbolizer whose kernel source is the given kallsyms text.
fn with_kallsyms(name: &str, text: &str) -> (Symbolizer, PathBuf) {
    let path = std::env::temp_dir().join(format!("wstrace-kallsyms-{name}-{}", std::process::id()));
    std::fs::write(&path, text).expect("write fake kallsyms");
    let s = Symbolizer::with_kernel(KernelSymbols {
        kallsyms: path.clone(),
        ..KernelSymbols::new()
    });
    (s, path)
}

#[test]
fn kernel_with_fake_kallsyms() {
    let (mut s, path) = with_kallsyms(
        "fake",
        "ffffffff81000000 T _stext\n\
         ffffffff81000100 T foo\n\
         ffffffff81000200 t bar\n\
         ffffffffc0000000 t mod_fn\t[mymod]\n",
    );
    let frames = s.kernel_stack(&[
        0xffffffff81000105, // innermost: taken as is
        0xffffffff81000200, // return address = bar's start: the call ended foo
        0xffffffff81000201,
        0xffffffffc0000010,
        0xffffffffc0200000, // 2 MiB past the last symbol: not believable
        0x10,               // below every symbol
    ]);
    let _ = std::fs::remove_file(&path);
    assert_eq!(
        frames.iter().map(at).collect::<Vec<_>>(),
        [
            "foo+0x5",
            "foo+0x100",
            "bar+0x1",
            "mod_fn+0x10",
            "[unknown]+0x0",
            "[unknown]+0x0",
        ]
    );
    assert_eq!(frames[4].address, Some(0xffffffffc0200000));
    assert!(frames.iter().all(|f| f.kind == FrameKind::Kernel));
}

#[test]
fn kernel_with_hidden_kallsyms_is_unknown() {
    // What an unprivileged reader sees (kptr_restrict): every address zero.
    let (mut s, path) = with_kallsyms(
        "zero",
        "0000000000000000 T _stext\n0000000000000000 T tcp_close\n",
    );
    let frames = s.kernel_stack(&[0xffffffff81234567, 0xffffffff81234568]);
    let _ = std::fs::remove_file(&path);
    let unknown = |a| Frame::unknown(FrameKind::Kernel, a, None);
    assert_eq!(
        *frames,
        [unknown(0xffffffff81234567), unknown(0xffffffff81234568)]
    );
    // No kallsyms at all.
    let (mut s, path) = with_kallsyms("missing", "");
    let _ = std::fs::remove_file(&path);
    assert_eq!(
        *s.kernel_stack(&[0xffffffff81234567]),
        [unknown(0xffffffff81234567)]
    );
}

// ---- live: remembered processes ----

/// Our own mapping containing libc's `close`: (path, dev, inode, file offset of close).
fn own_close_location() -> Option<(String, String, u64, u64)> {
    let close = libc::close as *const () as usize as u64;
    let maps = read_maps(std::process::id())?;
    let m = maps.iter().find(|m| m.start <= close && close < m.end)?;
    Some((
        m.path.clone()?,
        m.dev.clone(),
        m.inode,
        close - m.start + m.offset,
    ))
}

/// Where `close` sits in process `pid`, in the executable mapping `is_libc`
/// accepts, waiting for the dynamic loader to map it (milliseconds; up to
/// 30 s on a loaded host).
fn close_in(pid: u32, is_libc: impl Fn(&Mapping) -> bool, file_off: u64) -> Option<(u64, String)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        for m in read_maps(pid).unwrap_or_default() {
            if m.exec
                && is_libc(&m)
                && m.offset <= file_off
                && file_off < m.offset + (m.end - m.start)
            {
                return Some((m.start + (file_off - m.offset), m.path.unwrap_or_default()));
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// How long a test's `sleep` child sleeps: it is killed when the test
/// is done with it, and must outlive the test on a loaded host (the
/// tests need it alive until they have remembered it).
const CHILD_SLEEP: &str = "600";

/// A `sleep` child with libc mapped: (child, address of close in it, libc
/// path in its maps). With `lib_dir`, the child loads the copy of our libc
/// placed there (LD_LIBRARY_PATH) instead of the system one.
fn sleeping_child(lib_dir: Option<&Path>) -> Option<(std::process::Child, u64, String)> {
    let (path, dev, inode, file_off) = own_close_location()?;
    let mut cmd = Command::new("sleep");
    cmd.arg(CHILD_SLEEP);
    let copy = match lib_dir {
        Some(dir) => {
            let copy = dir.join(Path::new(&path).file_name()?);
            std::fs::copy(&path, &copy).ok()?;
            cmd.env("LD_LIBRARY_PATH", dir);
            Some(copy.display().to_string())
        }
        None => None,
    };
    let mut child = cmd.spawn().ok()?;
    let is_libc = |m: &Mapping| match &copy {
        Some(copy) => m.path.as_deref() == Some(copy.as_str()),
        None => m.dev == dev && m.inode == inode,
    };
    match close_in(child.id(), is_libc, file_off) {
        Some((addr, path)) => Some((child, addr, path)),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            None
        }
    }
}

fn reap(mut child: std::process::Child) {
    let pid = child.id();
    child.kill().expect("kill child");
    child.wait().expect("wait child");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "child {pid} still in /proc"
    );
}

#[test]
fn remembered_process_symbolizes_after_exit() {
    let child = sleeping_child(None).ok_or("no dynamically linked `sleep` on $PATH that maps our libc within 30 s (coreutils' sleep does)");
    let Some((child, addr, libc_path)) = crate::testenv::require_ok("`sleep`", child) else {
        return;
    };
    let pid = child.id();
    let mut s = patient();
    s.remember_process(pid);
    reap(child);
    let frames = s.user_stack(pid, &[addr, addr + 1]);
    eprintln!("{frames:#?}");
    assert!(at(&frames[0]).ends_with("close+0x0"), "{:?}", frames[0]);
    assert!(at(&frames[1]).ends_with("close+0x1"), "{:?}", frames[1]);
    // Line numbers survive the exit too, if libc has debug info here at all.
    let own = patient().user_stack(
        std::process::id(),
        &[libc::close as *const () as usize as u64],
    );
    assert_eq!(frames[0].module.as_deref(), Some(libc_path.as_str()));
    assert_eq!(
        (&frames[0].file, frames[0].line),
        (&own[0].file, own[0].line),
        "{:?} vs {:?}",
        frames[0],
        own[0]
    );

    // Forgotten: nothing left to go by.
    s.forget_process(pid);
    assert_eq!(s.user_stack(pid, &[addr])[..], unknowns(&[addr])[..]);
}

/// Why the tests that pin mappings need root.
const MAP_FILES: &str =
    "pinning through /proc/<pid>/map_files needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE";

/// The library is deleted after the process exits: only the file pinned
/// through /proc/<pid>/map_files at remember time can still be read
/// (the same holds for a library upgraded on disk, or one inside a
/// container's mount namespace).
#[test]
fn remembered_process_survives_deleted_library() {
    if !crate::testenv::require_root(MAP_FILES) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("wstrace-symbolize-test-{}", std::process::id()));
    let made = std::fs::create_dir_all(&dir)
        .map_err(|e| format!("{e}: needs a writable temp dir (set TMPDIR)"));
    if crate::testenv::require_ok(&dir.display().to_string(), made).is_none() {
        return;
    }
    let child = sleeping_child(Some(&dir)).ok_or(
        "it did not load the copy of our libc from LD_LIBRARY_PATH within 30 s (needs coreutils' dynamically linked sleep)",
    );
    if child.is_err() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let Some((child, addr, libc_path)) = crate::testenv::require_ok("`sleep`", child) else {
        return;
    };
    assert!(
        libc_path.starts_with(&dir.display().to_string()),
        "{libc_path}"
    );
    let pid = child.id();
    let mut s = patient();
    s.remember_process(pid);
    reap(child);
    std::fs::remove_dir_all(&dir).expect("remove the copied libc");
    assert!(!Path::new(&libc_path).exists());
    let frames = s.user_stack(pid, &[addr]);
    eprintln!("{frames:#?}");
    assert!(at(&frames[0]).ends_with("close+0x0"), "{:?}", frames[0]);
    assert_eq!(frames[0].module.as_deref(), Some(libc_path.as_str()));
    s.forget_process(pid);
    assert_eq!(s.user_stack(pid, &[addr])[..], unknowns(&[addr])[..]);
}

#[test]
fn unremembered_dead_process_is_unknown() {
    let child = sleeping_child(None).ok_or("no dynamically linked `sleep` on $PATH that maps our libc within 30 s (coreutils' sleep does)");
    let Some((child, addr, _)) = crate::testenv::require_ok("`sleep`", child) else {
        return;
    };
    let pid = child.id();
    let mut s = patient();
    // While alive, live maps suffice.
    let live = s.user_stack(pid, &[addr]);
    assert!(at(&live[0]).ends_with("close+0x0"), "{live:?}");
    reap(child);
    assert_eq!(s.user_stack(pid, &[addr])[..], unknowns(&[addr])[..]);
}

#[test]
fn remember_is_throttled_and_cheap_to_repeat() {
    if !crate::testenv::require_root(MAP_FILES) {
        return;
    }
    let mut s = UserSymbols::new(crate::enrich::stack_cache::UserStacks::shared());
    // Longer than a loaded host can take between the two calls below
    // (the first parses this binary's debug info).
    s.remember_interval = Duration::from_secs(3600);
    let pid = std::process::id();
    s.remember_process(pid);
    let first = s
        .procs
        .get(&pid)
        .map(|r| (r.refreshed, r.pinned.len()))
        .expect("remembered");
    assert!(first.1 > 0, "no executable mapping pinned");
    s.remember_process(pid);
    assert_eq!(
        s.procs.get(&pid).map(|r| (r.refreshed, r.pinned.len())),
        Some(first)
    );
    s.forget_process(pid);
    assert!(!s.procs.contains_key(&pid));
    s.remember_process(0);
    assert!(s.procs.is_empty());
}

// ---- the worker and its budgets ----

/// A FIFO in a fresh directory, and a guard that opens it for writing
/// when dropped, which releases a reader blocked in `open()`.
struct Fifo {
    path: PathBuf,
    /// The directory made for it, removed with it (never /tmp itself).
    dir: Option<PathBuf>,
}

impl Fifo {
    fn new(name: &str) -> Fifo {
        let dir = std::env::temp_dir().join(format!("wstrace-fifo-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("fifo dir");
        let path = dir.join("fifo");
        let c = std::ffi::CString::new(path.display().to_string()).expect("path");
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        Fifo {
            path,
            dir: Some(dir),
        }
    }
}

impl Drop for Fifo {
    fn drop(&mut self) {
        use std::os::unix::fs::OpenOptionsExt as _;
        // A reader is waiting, so a non-blocking writer opens; the
        // reader's open returns and its worker ends.
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.path);
        let _ = std::fs::remove_file(&self.path);
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[test]
fn blocked_worker_is_abandoned_within_budget() {
    let fifo = Fifo::new("blocked");
    let mut s = Symbolizer::new();
    // Only the blocked budget can end the wait: a total budget that a
    // blocked worker never reaches, however loaded the host.
    s.budgets = Budgets {
        blocked: BLOCKED_BUDGET,
        total: PATIENT.total,
    };
    let me = std::process::id();
    let path = fifo.path.clone();
    let start = Instant::now();
    // What blazesym does with a FIFO perf map: a plain blocking open.
    let r = s.call(me, move |_| std::fs::File::open(&path).is_ok());
    let took = start.elapsed();
    assert_eq!(r, Err(NoAnswer::TimedOut));
    assert!(took >= BLOCKED_BUDGET && took < PATIENT.total, "{took:?}");
    // What follows is not about budgets: a fresh worker's start and a
    // real symbolization may take seconds on a loaded host.
    s.budgets = PATIENT;
    // The process is given up on: its frames say so, with their module.
    assert!(s.remembers(me));
    let probe = wstrace_symbolize_probe_fn as *const () as usize as u64;
    let frames = s.user_stack(me, &[probe]);
    let exe = std::env::current_exe().expect("current_exe");
    let exe = exe.display().to_string();
    assert_eq!(
        frames[..],
        [Frame {
            unresolved: Some(Unresolved::TimedOut),
            ..Frame::unknown(FrameKind::Native, probe, Some(&exe))
        }]
    );
    assert_eq!(
        s.unwind_user(
            me,
            &UserStackCopy {
                ip: 0,
                sp: 0,
                fp: 0,
                lr: 0,
                start: 0,
                status: ustack::OK,
                bytes: Vec::new(),
            }
        )
        .end,
        End::Stopped("symbolization timed out".into())
    );
    // Another process is served by a fresh worker while the old one is
    // still blocked.
    assert_eq!(s.live_workers.load(Ordering::SeqCst), 1);
    let ok = s.call(me + 1, |_| 7);
    assert_eq!(ok, Ok(7));
    assert_eq!(s.live_workers.load(Ordering::SeqCst), 2);
    // Released, the abandoned worker ends.
    drop(fifo);
    let deadline = Instant::now() + PATIENT.total;
    while s.live_workers.load(Ordering::SeqCst) > 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(s.live_workers.load(Ordering::SeqCst), 1);
    // Forgetting the pid lets it be tried again.
    s.forget_process(me);
    assert!(!s.remembers(me));
    let frames = s.user_stack(me, &[probe]);
    assert!(
        at(&frames[0]).ends_with("wstrace_symbolize_probe_fn+0x0"),
        "{frames:?}"
    );
}

#[test]
fn computing_worker_gets_more_than_the_blocked_budget() {
    let mut s = patient();
    // The worker started and its thread id known first: a thread not
    // yet started counts as blocked, and a loaded host may take longer
    // than the blocked budget to start one.
    assert_eq!(s.call(std::process::id(), |_| ()), Ok(()));
    // Only the blocked budget could end the wait now.
    s.budgets = Budgets {
        blocked: BLOCKED_BUDGET,
        total: PATIENT.total,
    };
    let spin = BLOCKED_BUDGET * 3;
    let r = s.call(std::process::id(), move |_| {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < spin {
            n = std::hint::black_box(n.wrapping_add(1));
        }
        n > 0
    });
    assert_eq!(r, Ok(true));
    assert!(!s.timed_out.contains_key(&std::process::id()));
}

#[test]
fn stuck_workers_are_bounded() {
    let fifos: Vec<Fifo> = (0..MAX_WORKERS)
        .map(|i| Fifo::new(&format!("bound{i}")))
        .collect();
    let mut s = Symbolizer::new();
    for (i, f) in fifos.iter().enumerate() {
        let path = f.path.clone();
        let r = s.call(1_000_000 + i as u32, move |_| {
            std::fs::File::open(&path).is_ok()
        });
        assert_eq!(r, Err(NoAnswer::TimedOut), "worker {i}");
    }
    assert_eq!(s.live_workers.load(Ordering::SeqCst), MAX_WORKERS);
    // No new worker: unknown at once, with the reason. With budgets no
    // loaded host runs out of, answering before them means nothing was
    // waited for.
    s.budgets = PATIENT;
    let start = Instant::now();
    assert_eq!(s.call(1, |_| ()), Err(NoAnswer::Unavailable));
    assert_eq!(
        s.user_stack(u32::MAX - 1, &[0x1234])[..],
        [Frame {
            unresolved: Some(Unresolved::Unavailable),
            ..Frame::unknown(FrameKind::Native, 0x1234, None)
        }]
    );
    assert!(start.elapsed() < PATIENT.blocked, "{:?}", start.elapsed());
    drop(fifos);
    let deadline = Instant::now() + PATIENT.total;
    while s.live_workers.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(s.call(1, |_| 3), Ok(3));
}

#[test]
fn worker_panic_is_survived() {
    // Patient: a worker slow to start would be a timeout, not a panic.
    let mut s = patient();
    let r: Result<(), NoAnswer> = s.call(1, |_| panic!("blazesym broke"));
    assert_eq!(r, Err(NoAnswer::Unavailable));
    assert_eq!(s.call(1, |_| 5), Ok(5));
}

/// Issue 25, item 1: perf maps that are FIFOs (nine processes, more
/// than [`MAX_WORKERS`]) block no worker: wstrace reads perf maps
/// itself without blocking, so no process times out, no worker is
/// abandoned, and every other process keeps its names.
#[test]
fn fifo_perf_maps_block_no_worker() {
    let mut s = Symbolizer::new();
    // The blocked budget is what would give up on a FIFO: a total
    // budget no loaded host reaches.
    s.budgets = Budgets {
        blocked: BLOCKED_BUDGET,
        total: PATIENT.total,
    };
    let mut kids = Vec::new();
    for _ in 0..9 {
        let child = Command::new("sleep")
            .arg(CHILD_SLEEP)
            .spawn()
            .expect("sleep");
        let pid = child.id();
        let perf = PathBuf::from(format!("/tmp/perf-{pid}.map"));
        let c = std::ffi::CString::new(perf.display().to_string()).expect("path");
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        let release = Fifo {
            path: perf,
            dir: None,
        };
        s.remember_process(pid);
        let frames = s.user_stack(pid, &[0x1234]);
        assert_eq!(
            frames[..],
            [Frame::unknown(FrameKind::Native, 0x1234, None)],
            "pid {pid}"
        );
        assert!(!s.timed_out.contains_key(&pid), "pid {pid} timed out");
        kids.push((child, release));
    }
    assert_eq!(
        s.live_workers.load(Ordering::SeqCst),
        1,
        "workers abandoned"
    );
    s.budgets = PATIENT;
    let probe = wstrace_symbolize_probe_fn as *const () as usize as u64;
    let own = s.user_stack(std::process::id(), &[probe]);
    assert!(
        at(&own[0]).ends_with("wstrace_symbolize_probe_fn+0x0"),
        "{own:?}"
    );
    for (mut child, release) in kids {
        let _ = child.kill();
        let _ = child.wait();
        drop(release);
    }
}

/// The one user-stack cache is dropped for a process whose code changed
/// (exec): the same address in the new program is other code. A shell
/// that maps our libc is remembered and a stack in its `close` cached;
/// the shell then execs `sleep`, and the next remember (after the
/// throttle) finds other executable mappings: the front no longer answers
/// the old frames from the cache.
#[test]
fn an_exec_drops_the_processes_cached_stacks() {
    if !crate::testenv::require_root(MAP_FILES) {
        return;
    }
    let Some((_, dev, inode, file_off)) = own_close_location() else {
        panic!("our own libc's close was not found in our maps");
    };
    let mut child = Command::new("/bin/sh")
        .args(["-c", &format!("read line; exec sleep {CHILD_SLEEP}")])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("spawn /bin/sh");
    let pid = child.id();
    let is_libc = |m: &Mapping| m.dev == dev && m.inode == inode;
    let Some((addr, _)) = close_in(pid, is_libc, file_off) else {
        let _ = child.kill();
        panic!("/bin/sh did not map our libc within 30 s (a dynamically linked shell is needed)");
    };
    let mut s = patient();
    s.remember_process(pid);
    let before = s.user_stack(pid, &[addr]);
    assert!(at(&before[0]).ends_with("close+0x0"), "{before:?}");
    assert!(
        stack_cache::lock(&s.user_stacks)
            .get(pid, &[addr])
            .is_some(),
        "a remembered process's named stack is cached"
    );
    let exe = |pid: u32| std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let shell = exe(pid);
    {
        use std::io::Write as _;
        let stdin = child.stdin.as_mut().expect("stdin");
        stdin.write_all(b"go\n").expect("tell the shell to exec");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while exe(pid) == shell && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_ne!(exe(pid), shell, "the shell did not exec within 30 s");
    // Past the remember throttle (front and worker), as a 101 written by the
    // new program a second later would be.
    std::thread::sleep(REMEMBER_INTERVAL + Duration::from_millis(100));
    s.remember_process(pid);
    assert!(
        stack_cache::lock(&s.user_stacks)
            .get(pid, &[addr])
            .is_none(),
        "the exec'd process's old stacks are dropped"
    );
    reap(child);
}
