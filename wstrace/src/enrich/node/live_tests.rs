//! A real node (the host's, no flags) stopped inside a named function: its
//! stack copied as the close probe would copy it, unwound, and its
//! JavaScript frames read from its memory. Also times the read (the
//! userspace cost per close, printed; BENCHMARKS.md §8).
use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::*;
use crate::enrich::maps::map_files_path;
use crate::enrich::unwind::Unwinder;
use crate::model::UserStackCopy;

const SCRIPT: &str = "\
function blockHere() {
  console.log('READY');
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 60000);
}
function outer() {
  blockHere();
}
outer();
";

/// Kills the child on every exit path.
struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The registers and 16 KiB of stack of stopped-by-ptrace `pid`.
fn copy_stack(pid: i32) -> Option<UserStackCopy> {
    // ptrace is variadic: its address and data words go as full pointers.
    let none = std::ptr::null_mut::<libc::c_void>();
    // SAFETY: plain ptrace calls on our own child; `regs` is written by the
    // kernel before it is read.
    unsafe {
        if libc::ptrace(libc::PTRACE_SEIZE, pid, none, none) != 0 {
            return None;
        }
        libc::ptrace(libc::PTRACE_INTERRUPT, pid, none, none);
        let mut status = 0;
        libc::waitpid(pid, &mut status, libc::__WALL);
        let mut regs: libc::user_regs_struct = std::mem::zeroed();
        let ok = libc::ptrace(
            libc::PTRACE_GETREGS,
            pid,
            none,
            &mut regs as *mut libc::user_regs_struct,
        ) == 0;
        let start = regs.rsp - wstrace_common::ustack::BELOW_SP;
        let bytes = (|| {
            use std::os::unix::fs::FileExt as _;
            let f = std::fs::File::open(format!("/proc/{pid}/mem")).ok()?;
            // Up to 16 KiB, within the stack's mapping (the main thread's
            // stack may end sooner), as the kernel's copy would be.
            let end = crate::enrich::maps::read_maps(pid as u32)?
                .iter()
                .find(|m| m.start <= start && start < m.end)?
                .end;
            let mut b = vec![0u8; (end - start).min(16 * 1024) as usize];
            f.read_exact_at(&mut b, start).ok()?;
            Some(b)
        })();
        libc::ptrace(libc::PTRACE_DETACH, pid, none, none);
        ok.then_some(UserStackCopy {
            ip: regs.rip,
            sp: regs.rsp,
            fp: regs.rbp,
            lr: 0,
            start,
            status: wstrace_common::ustack::OK,
            bytes: bytes?,
        })
    }
}

#[test]
fn a_real_node_has_its_javascript_frames_named_from_its_stack_and_heap() {
    let Some(node) = wstrace_scenarios::harness::skip::require_tool(
        "node",
        "apt-get install nodejs (cargo xtask setup)",
    ) else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("wstrace-node-live-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let script = dir.join("blocked.js");
    std::fs::write(&script, SCRIPT).expect("script");
    let mut child = Child(
        Command::new(node)
            .arg(&script)
            .stdout(Stdio::piped())
            .spawn()
            .expect("node"),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("READY");
    assert_eq!(line.trim(), "READY");
    // Into Atomics.wait's futex.
    std::thread::sleep(Duration::from_millis(300));
    let pid = child.0.id();
    let found = find(pid).expect("the host's node exports v8dbg_* symbols");
    assert_eq!(
        (found.layout.off_fp_function, found.layout.off_fp_context),
        (-16, -8)
    );
    let copy = copy_stack(pid as i32).expect("ptrace of our own child");
    let maps = crate::enrich::maps::read_maps(pid).expect("maps");
    let mut u = Unwinder::new();
    u.remember(pid, &maps, |m| map_files_path(pid, m));
    let unwound = u.unwind(pid, &copy).expect("remembered");
    assert!(!unwound.fp_slots.is_empty(), "{unwound:?}");
    let mem = Mem::open(pid, Instant::now() + Duration::from_secs(10)).expect("mem");
    let js = read_frames(&mem, &found.layout, &unwound.fp_slots);
    let named: Vec<(Option<&str>, Option<&str>, Option<u32>)> = js
        .iter()
        .map(|(_, f)| (f.function.as_deref(), f.file.as_deref(), f.line))
        .collect();
    let path = script.to_str().expect("utf-8");
    let at = |name: &str| {
        named
            .iter()
            .position(|(f, _, _)| *f == Some(name))
            .unwrap_or_else(|| panic!("no {name}: {named:#?}"))
    };
    let (inner, outer) = (at("blockHere"), at("outer"));
    assert!(inner < outer, "{named:#?}");
    assert_eq!(named[inner], (Some("blockHere"), Some(path), Some(1)));
    assert_eq!(named[outer], (Some("outer"), Some(path), Some(5)));

    // The cost per close: reading every JavaScript frame of this stack.
    let rounds = 2000;
    let t = Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(read_frames(&mem, &found.layout, &unwound.fp_slots));
    }
    let per = t.elapsed() / rounds;
    eprintln!(
        "node live: {} frame slots, {} JavaScript frames read in {per:?} per stack (mean of {rounds})",
        unwound.fp_slots.len(),
        js.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
