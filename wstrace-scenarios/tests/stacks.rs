//! User stacks through code built without frame pointers: the close probe
//! copies the closing thread's registers and stack, and wstrace unwinds the
//! copy with the binaries' .eh_frame (`--user-stack dwarf`), against the
//! kernel's frame-pointer walk (`--user-stack fp`). Real kernel, real
//! servers: a C server built `-O2 -fomit-frame-pointer` (tests/c/deep_close.c)
//! and the Rust scenario server in release mode. Needs root and, for the C
//! server, a C compiler (`cc`): without them the tests fail (see
//! `common::require`).
mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use common::{
    Kill, Tracer, free_port, require_root, require_tool, serial, server, spawn_ready, target,
    upgrade_once,
};

/// tests/c/deep_close.c, compiled like a distro server: optimised, no frame
/// pointers (sibling calls off so the chain is real calls, as it would be
/// in a server doing work after each call).
fn deep_close_bin(cc: &Path) -> PathBuf {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/c/deep_close.c");
    let out = target().join("c/deep_close");
    std::fs::create_dir_all(out.parent().expect("parent")).expect("mkdir target/c");
    let status = Command::new(cc)
        .args([
            "-O2",
            "-g",
            "-fomit-frame-pointer",
            "-fno-optimize-sibling-calls",
            "-o",
        ])
        .arg(&out)
        .arg(&src)
        .status()
        .unwrap_or_else(|e| panic!("running {}: {e}", cc.display()));
    assert!(status.success(), "cc failed on {}", src.display());
    out
}

fn deep_close(cc: &Path, args: &[&str]) -> (Kill, u16) {
    spawn_ready(Command::new(deep_close_bin(cc)).arg("0").args(args))
}

/// The C compiler for tests/c/deep_close.c; see `common::require`.
fn require_cc() -> Option<PathBuf> {
    require_tool(
        "cc",
        "install a C compiler: apt-get install gcc (`cargo xtask setup` does)",
    )
}

/// One upgrade through wstrace with `extra` flags: the server side's
/// report. This test's own socket (it read the 101) is the client side,
/// with its own report: closed by the server, upgraded by this process.
fn one_report(port: u16, extra: &[&str]) -> serde_json::Value {
    let t = Tracer::start(port, extra);
    upgrade_once(port);
    let (server, client) = t.wait_for_both_ends(port, Duration::from_secs(10));
    assert_eq!(client["closed_by"], "peer", "{client:#}");
    assert_eq!(
        client["upgraded_by"]["pid"].as_u64(),
        Some(u64::from(std::process::id())),
        "{client:#}"
    );
    server
}

/// The user stack's frame objects (function, offset, module, file, line,
/// inlined, ...), innermost first.
fn user_stack(r: &serde_json::Value) -> Vec<serde_json::Value> {
    r["user_stack"].as_array().cloned().unwrap_or_default()
}

fn function(f: &serde_json::Value) -> &str {
    f["function"].as_str().unwrap_or("[unknown]")
}

/// A frame of `name` itself (with an offset), not one inlined into it.
fn is_fn(f: &serde_json::Value, name: &str) -> bool {
    function(f) == name && f["inlined"] == false
}

/// The ws_level_N numbers in the order the frames list them.
fn levels(stack: &[serde_json::Value]) -> Vec<u32> {
    stack
        .iter()
        .filter_map(|f| {
            let rest = function(f).strip_prefix("ws_level_")?;
            let n: String = rest.chars().take_while(char::is_ascii_digit).collect();
            n.parse().ok()
        })
        .collect()
}

#[test]
fn dwarf_unwinding_lists_every_frame_that_frame_pointers_miss() {
    if !require_root() {
        return;
    }
    let Some(cc) = require_cc() else {
        return;
    };
    let _serial = serial();
    let (_srv, port) = deep_close(&cc, &[]);

    let dwarf = one_report(port, &["--user-stack", "dwarf"]);
    let stack = user_stack(&dwarf);
    assert_eq!(dwarf["user_stack_unwind"], "dwarf", "{dwarf}");
    assert_eq!(dwarf["user_stack_end"], "complete", "{dwarf}");
    assert_eq!(
        levels(&stack),
        [9, 8, 7, 6, 5, 4, 3, 2, 1],
        "every level, innermost first: {stack:#?}"
    );
    // Below the chain: main, with its source line (built with -g).
    let main = stack
        .iter()
        .position(|f| is_fn(f, "main"))
        .unwrap_or_else(|| panic!("main in the dwarf stack: {stack:#?}"));
    assert!(
        stack[main]["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("deep_close.c"))
            && stack[main]["line"].is_u64(),
        "{}",
        stack[main]
    );
    assert!(
        stack.iter().position(|f| is_fn(f, "ws_level_1")) < Some(main),
        "{stack:#?}"
    );

    let fp = one_report(port, &["--user-stack", "fp"]);
    let fp_stack = user_stack(&fp);
    assert_eq!(fp["user_stack_unwind"], "fp", "{fp}");
    assert_eq!(fp["user_stack_end"], serde_json::Value::Null, "{fp}");
    assert!(
        levels(&fp_stack).len() <= 2 && fp_stack.len() < stack.len(),
        "the frame-pointer walk should stop early in code without frame pointers: {fp_stack:#?}"
    );
    eprintln!(
        "deep_close: dwarf {} frames ({} levels), frame pointers {} frames ({} levels)",
        stack.len(),
        levels(&stack).len(),
        fp_stack.len(),
        levels(&fp_stack).len()
    );

    // auto (the default) picks the longer, dwarf, walk.
    let auto = one_report(port, &[]);
    assert_eq!(auto["user_stack_unwind"], "dwarf", "{auto}");
    assert_eq!(levels(&user_stack(&auto)).len(), 9, "{auto}");
}

#[test]
fn a_closer_that_exits_at_once_is_still_unwound() {
    if !require_root() {
        return;
    }
    let Some(cc) = require_cc() else {
        return;
    };
    let _serial = serial();
    let (mut srv, port) = deep_close(&cc, &["exit"]);
    let r = one_report(port, &["--user-stack", "dwarf"]);
    let _ = srv.0.wait();
    let stack = user_stack(&r);
    assert_eq!(r["user_stack_unwind"], "dwarf", "{r}");
    assert_eq!(levels(&stack), [9, 8, 7, 6, 5, 4, 3, 2, 1], "{stack:#?}");
}

#[test]
fn a_tiny_stack_copy_gives_the_frames_it_holds_and_says_truncated() {
    if !require_root() {
        return;
    }
    let Some(cc) = require_cc() else {
        return;
    };
    let _serial = serial();
    let (_srv, port) = deep_close(&cc, &[]);
    let r = one_report(port, &["--user-stack", "dwarf", "--user-stack-size", "64"]);
    let stack = user_stack(&r);
    assert_eq!(r["user_stack_unwind"], "dwarf", "{r}");
    assert_eq!(r["user_stack_end"], "truncated", "{r}");
    let got = levels(&stack);
    assert!(
        !got.is_empty() && got.len() < 9 && got[0] == 9,
        "the innermost levels only: {stack:#?}"
    );
}

#[test]
fn a_rust_release_server_unwinds_to_main() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let (_srv, port) = server(&["--mode", "close-after101"]);
    let r = one_report(port, &["--user-stack", "dwarf"]);
    let stack = user_stack(&r);
    assert_eq!(r["user_stack_unwind"], "dwarf", "{r}");
    assert!(
        stack
            .iter()
            .any(|f| function(f).starts_with("ws_scenario::main")),
        "the Rust main: {stack:#?}"
    );
    assert!(
        stack.iter().any(|f| is_fn(f, "main")),
        "the C main below it: {stack:#?}"
    );
}

/// tests/c/cold_close.cpp, built `-O2 -g` by g++: hot/cold split functions.
fn cold_close_bin(cxx: &Path) -> PathBuf {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/c/cold_close.cpp");
    let out = target().join("c/cold_close");
    std::fs::create_dir_all(out.parent().expect("parent")).expect("mkdir target/c");
    let status = Command::new(cxx)
        .args(["-O2", "-g", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .unwrap_or_else(|e| panic!("running {}: {e}", cxx.display()));
    assert!(status.success(), "g++ failed on {}", src.display());
    out
}

/// `nm -C -S` of `bin`: demangled name -> (address, size), as gdb's
/// `info symbol` reads them.
fn symbols(nm: &Path, bin: &Path) -> Vec<(String, u64, u64)> {
    let out = Command::new(nm)
        .args(["-C", "-S", "--defined-only"])
        .arg(bin)
        .output()
        .unwrap_or_else(|e| panic!("running nm: {e}"));
    assert!(out.status.success(), "nm failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            // "0000000000001148 0000000000000031 t name with spaces"
            let mut it = l.splitn(4, ' ');
            let addr = u64::from_str_radix(it.next()?, 16).ok()?;
            let size = u64::from_str_radix(it.next()?, 16).ok()?;
            let _kind = it.next()?;
            Some((it.next()?.to_string(), addr, size))
        })
        .collect()
}

/// The frame whose function is exactly `name`: its offset.
fn offset_of(stack: &[serde_json::Value], name: &str) -> Option<u64> {
    stack
        .iter()
        .find(|f| is_fn(f, name))
        .and_then(|f| f["offset"].as_u64())
}

#[test]
fn a_cold_split_cpp_function_reads_as_gdb_prints_it() {
    if !require_root() {
        return;
    }
    let Some(cxx) = require_tool(
        "g++",
        "install a C++ compiler: apt-get install g++ (`cargo xtask setup` does)",
    ) else {
        return;
    };
    let Some(nm) = require_tool(
        "nm",
        "install binutils: apt-get install binutils (it comes with g++)",
    ) else {
        return;
    };
    let _serial = serial();
    let bin = cold_close_bin(&cxx);
    let syms = symbols(&nm, &bin);
    let (_srv, port) = spawn_ready(&mut Command::new(&bin));
    let t = Tracer::start(port, &["--user-stack", "dwarf"]);
    {
        use std::io::{Read as _, Write as _};
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        c.write_all(
            b"GET /ws HTTP/1.0\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        )
        .expect("send");
        let mut buf = [0u8; 512];
        while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
    }
    // This test's socket read the 101 in one read: the client side, its
    // own report.
    let (r, client) = t.wait_for_both_ends(port, Duration::from_secs(10));
    assert_eq!(client["closed_by"], "peer", "{client:#}");
    let stack = user_stack(&r);
    eprintln!("cold_close user stack:\n{stack:#?}");
    // Every function frame that the symbol table names is named and placed
    // as the symbol table (gdb) has it: inside that symbol.
    for name in [
        "ws::conn::finish(int, bool) [clone .cold]",
        "std::_Function_handler<void (int, bool), main::{lambda(int, bool)#1}>::_M_invoke(std::_Any_data const&, int&&, bool&&)",
        "main",
    ] {
        let (_, _, size) = syms
            .iter()
            .find(|(n, _, _)| n == name)
            .unwrap_or_else(|| panic!("nm lists no {name:?}: is this g++ splitting functions?"));
        let off =
            offset_of(&stack, name).unwrap_or_else(|| panic!("no frame {name}+0x… in {stack:#?}"));
        assert!(
            off > 0 && off <= *size,
            "{name}+{off:#x} lies outside the symbol ({size:#x} bytes): {stack:#?}"
        );
    }
    // Innermost first: close, the cold part, the std::function call, main.
    let at = |name: &str| stack.iter().position(|f| is_fn(f, name));
    let handler = stack
        .iter()
        .position(|f| function(f).starts_with("std::_Function_handler<"));
    assert!(
        at("ws::conn::finish(int, bool) [clone .cold]") < handler && handler < at("main"),
        "{stack:#?}"
    );
}

/// tests/c/crash_after_101.c built like [`deep_close_bin`] (no frame
/// pointers: the crash stack is the dwarf unwind of the kernel's copy).
fn crash_bin(cc: &Path) -> PathBuf {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/c/crash_after_101.c");
    let out = target().join("c/crash_after_101");
    std::fs::create_dir_all(out.parent().expect("parent")).expect("mkdir target/c");
    let status = Command::new(cc)
        .args([
            "-O2",
            "-g",
            "-fomit-frame-pointer",
            "-fno-optimize-sibling-calls",
            "-pthread",
            "-o",
        ])
        .arg(&out)
        .arg(&src)
        .status()
        .unwrap_or_else(|e| panic!("running {}: {e}", cc.display()));
    assert!(status.success(), "cc failed on {}", src.display());
    out
}

/// Connects to `port` until it accepts (gdb starts the server slowly; it
/// accepts one connection), upgrades and reads until the server is gone.
fn upgrade_when_listening(port: u16) {
    use std::io::{Read as _, Write as _};
    let start = std::time::Instant::now();
    let mut c = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(c) => break c,
            Err(e) => assert!(
                start.elapsed() < Duration::from_secs(30),
                "nothing listens on {port}: {e}"
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    c.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    c.write_all(common::UPGRADE).expect("send the upgrade");
    let mut buf = [0u8; 512];
    while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
}

/// `(function, line)` of each frame of gdb's `bt` of the crash, innermost
/// first: `#1  0x… in f (args) at file.c:25` or `#0  f () at file.S:291`.
fn gdb_backtrace(gdb: &Path, bin: &Path) -> Vec<(String, Option<u32>)> {
    let port = free_port();
    let child = Command::new(gdb)
        .args(["-batch", "-nx", "-ex", "run", "-ex", "bt", "--args"])
        .arg(bin)
        .arg(port.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("running {}: {e}", gdb.display()));
    let mut child = Kill(child);
    upgrade_when_listening(port);
    // gdb -batch prints the backtrace and exits (killing the program).
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut child.0.stdout.take().expect("gdb's stdout is piped"),
        &mut text,
    )
    .expect("gdb's output");
    let frames: Vec<(String, Option<u32>)> = text
        .lines()
        .filter(|l| l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.split_once("  ")?.1;
            let rest = rest.split_once(" in ").map_or(rest, |(_, r)| r);
            let function = rest.split_whitespace().next()?.to_string();
            let line = rest
                .rsplit_once(':')
                .and_then(|(_, n)| n.trim().parse().ok());
            Some((function, line))
        })
        .collect();
    assert!(!frames.is_empty(), "no backtrace from gdb:\n{text}");
    frames
}

/// Issue 26, item 5: a server whose handler thread dereferences NULL (in
/// strcmp) right after its 101 is `process_crashed` with where it
/// crashed: the faulting thread's stack, taken by the kernel at the
/// signal, frame for frame what gdb's `bt` shows, and the program's own
/// function and line in the diagnosis.
#[test]
fn a_crash_after_the_101_names_where_it_crashed_as_gdb_does() {
    if !require_root() {
        return;
    }
    let (Some(cc), Some(gdb)) = (
        require_cc(),
        require_tool("gdb", "apt-get install gdb (`cargo xtask setup` does)"),
    ) else {
        return;
    };
    let _serial = serial();
    let bin = crash_bin(&cc);
    let expected = gdb_backtrace(&gdb, &bin);
    let (server, port) = spawn_ready(Command::new(&bin).arg("0"));
    let pid = server.0.id();
    let t = Tracer::start(port, &[]);
    upgrade_once(port);
    // This test's socket read the 101 in one read: the client side, which
    // sees the server's process crash as the peer's close.
    let (r, client) = t.wait_for_both_ends(port, Duration::from_secs(15));
    assert_eq!(client["closed_by"], "peer", "{client:#}");
    let r = &r;
    assert_eq!(r["pid"].as_u64(), Some(u64::from(pid)), "{r:#}");
    assert_eq!(r["diagnosis"]["code"], "process_crashed", "{r:#}");
    let end = &r["process_end"];
    assert_eq!(end["signal"], "SIGSEGV", "{r:#}");
    // The handler thread crashed, not the main one; the fault's signal is
    // matched to the process all the same: the kernel raised it.
    let tid = end["crash_tid"].as_u64().expect("crash_tid");
    assert_ne!(tid, u64::from(pid), "{r:#}");
    assert_eq!(end["killed_by"], "kernel", "{r:#}");
    let stack: Vec<(String, Option<u32>)> = end["crash_stack"]
        .as_array()
        .expect("crash_stack")
        .iter()
        .filter(|f| f["inlined"] == false)
        .map(|f| {
            (
                f["function"].as_str().unwrap_or("[unknown]").to_string(),
                f["line"].as_u64().map(|l| l as u32),
            )
        })
        .collect();
    assert_eq!(stack, expected, "wstrace's crash stack vs gdb's bt: {r:#}");
    let line = expected
        .iter()
        .find(|(f, _)| f == "negotiate_subprotocol")
        .and_then(|(_, l)| *l)
        .expect("gdb names negotiate_subprotocol with its line");
    let msg = r["diagnosis"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains(&format!(
            "crashed with SIGSEGV in negotiate_subprotocol ({}:{line})",
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/c/crash_after_101.c")
                .display()
        )),
        "{msg}"
    );
}
