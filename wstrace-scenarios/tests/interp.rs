//! Interpreter frames in close stacks (issue 26): the kernel walks the
//! closing thread's CPython frame chain at the close, wstrace names the
//! code objects afterwards. Real kernel, Debian's /usr/bin/python3 (3.11),
//! Ubuntu jammy's python3.10, noble's python3.12 and Debian trixie's
//! python3.13 (extracted by `cargo xtask setup`), run as `nobody`; the
//! hostile server (3.11) rewrites its own frame chain with ctypes before
//! it closes. Needs root, setpriv, the system python3 and the extracted
//! ones (see `common::require`). PHP: the same close in each PHP version
//! wstrace knows (8.1 to 8.4), distribution builds, run as `nobody`.
mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use common::{
    Tracer, WorldReadableDir, as_nobody, as_nobody_with_libc, nobody_python_server, require,
    require_extracted_python, require_file, require_nobody_python, serial, spawn_ready,
    upgrade_once,
};

/// A plain-socket WebSocket server that closes in `drop_client()`, called
/// from `handle()`. The line numbers below are asserted.
const SERVER: &str = "\
import socket

def drop_client(c):
    c.close()  # line 4

def handle(c):
    c.recv(4096)
    c.sendall(b'HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\n\\r\\n')
    drop_client(c)  # line 9

def main():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('127.0.0.1', 0))
    s.listen()
    print('READY', s.getsockname()[1], flush=True)
    while True:
        c, _ = s.accept()
        handle(c)

main()
";

/// Closes in `evil_close()` after pointing its own frame's `previous` (CPython
/// 3.11 `_PyInterpreterFrame`: f_code +32, previous +48, prev_instr +56) at
/// itself (`loop`) or at a two-frame cycle of garbage in an anonymous
/// mapping (`garbage`); restores it before returning.
const HOSTILE: &str = "\
import ctypes, mmap, socket, sys

MODE = sys.argv[1]
ts_get = ctypes.pythonapi.PyThreadState_Get
ts_get.restype = ctypes.c_void_p
fake = mmap.mmap(-1, 4096)
base = ctypes.addressof(ctypes.c_char.from_buffer(fake))

def word(a):
    return ctypes.c_uint64.from_address(a)

def evil_close(c):
    cframe = word(ts_get() + 56).value
    frame = word(cframe + 8).value
    prev = word(frame + 48)
    saved = prev.value
    if MODE == 'loop':
        prev.value = frame
    else:
        a, b = base, base + 256
        for x, y in ((a, b), (b, a)):
            word(x + 32).value = 0x4141414141414141
            word(x + 48).value = y
            word(x + 56).value = 0x4242424242424242
        prev.value = a
    try:
        c.close()
    finally:
        prev.value = saved

s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', 0))
s.listen()
print('READY', s.getsockname()[1], flush=True)
while True:
    c, _ = s.accept()
    c.recv(4096)
    c.sendall(b'HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\n\\r\\n')
    evil_close(c)
";

fn user_stack(r: &serde_json::Value) -> Vec<serde_json::Value> {
    r["user_stack"].as_array().cloned().unwrap_or_default()
}

/// The Python frames of a report: (function, file, line), innermost first.
fn python_frames(r: &serde_json::Value) -> Vec<(String, String, Option<u64>)> {
    user_stack(r)
        .iter()
        .filter(|f| f["kind"] == "interpreted")
        .map(|f| {
            assert_eq!(f["language"], "python", "{f}");
            (
                f["function"].as_str().unwrap_or("[unknown]").to_string(),
                f["file"].as_str().unwrap_or("").to_string(),
                f["line"].as_u64(),
            )
        })
        .collect()
}

fn one_report(port: u16, format: &str) -> (Tracer, serde_json::Value) {
    let t = Tracer::start_format(port, format, &[]);
    upgrade_once(port);
    // The server's report; this test's socket (it read the 101) is the
    // client side, closed by the server.
    let (r, client) = t.wait_for_both_ends(port, Duration::from_secs(20));
    assert_eq!(client["closed_by"], "peer", "{client:#}");
    (t, r)
}

/// Which CPython runs [`SERVER`]: Debian bookworm's own (3.11), or one
/// `cargo xtask setup` extracted from another release.
enum Interpreter {
    System,
    Extracted(&'static str),
}

#[test]
fn a_python_close_names_the_function_file_and_line_and_its_caller() {
    python_close_names_the_function_file_and_line(Interpreter::System);
}

/// Debian trixie's python3.13 (its `_Py_DebugOffsets` read).
#[test]
fn a_python_3_13_close_names_the_function_file_and_line_and_its_caller() {
    python_close_names_the_function_file_and_line(Interpreter::Extracted("3.13"));
}

/// Ubuntu noble's python3.12.
#[test]
fn a_python_3_12_close_names_the_function_file_and_line_and_its_caller() {
    python_close_names_the_function_file_and_line(Interpreter::Extracted("3.12"));
}

/// Ubuntu jammy's python3.10 (PyFrameObject chain, 3.10's line table; the
/// server closes in its main thread, the one 3.10 lets the kernel find).
#[test]
fn a_python_3_10_close_names_the_function_file_and_line_and_its_caller() {
    python_close_names_the_function_file_and_line(Interpreter::Extracted("3.10"));
}

/// The close in `drop_client()` of [`SERVER`], run by `python` as nobody:
/// the frames `drop_client server.py:4`, its caller `handle server.py:9`,
/// `main` outside them, the socket module's close inside; in JSON and in
/// the compact text.
fn python_close_names_the_function_file_and_line(python: Interpreter) {
    let extracted = match python {
        Interpreter::System => {
            if !require_nobody_python() {
                return;
            }
            None
        }
        Interpreter::Extracted(version) => match require_extracted_python(version) {
            Some(py) => Some(py),
            None => return,
        },
    };
    let _s = serial();
    let dir = WorldReadableDir::new(&format!(
        "interp-python{}",
        extracted.as_ref().map_or("", |p| p.version)
    ));
    let (_srv, port) = match &extracted {
        None => nobody_python_server(&dir, "server.py", SERVER, &[]),
        Some(py) => py.nobody_server(&dir, "server.py", SERVER, &[]),
    };
    let (t, r) = one_report(port, "json");
    assert_eq!(r["closed_by"], "local", "{r}");
    let py = python_frames(&r);
    let at = |name: &str| {
        py.iter()
            .position(|(f, _, _)| f == name)
            .unwrap_or_else(|| panic!("no Python frame {name}: {py:#?}\n{}", t.stderr_text()))
    };
    let (inner, handle, main) = (at("drop_client"), at("handle"), at("main"));
    assert!(inner < handle && handle < main, "{py:#?}");
    assert!(py[inner].1.ends_with("/server.py"), "{py:#?}");
    assert_eq!(py[inner].2, Some(4), "{py:#?}");
    assert_eq!(py[handle].2, Some(9), "{py:#?}");
    // Inside drop_client: the socket module's close, from the standard library.
    assert!(
        py[..inner]
            .iter()
            .any(|(f, file, _)| f.contains("close") && file.ends_with("/socket.py")),
        "{py:#?}"
    );
    assert!(r["interp_stack_note"].is_null(), "{r}");
    drop(t);

    // The compact text stack shows the script's frames, not the
    // interpreter loop.
    let t = Tracer::start_format(port, "text", &[]);
    upgrade_once(port);
    let text = wait_text(&t, "handle  server.py");
    assert!(text.contains("drop_client  server.py:4"), "{text}");
    assert!(text.contains("handle  server.py:9"), "{text}");
    assert!(!text.contains("_PyEval_EvalFrameDefault"), "{text}");
}

/// A python3.13 whose `_Py_DebugOffsets` says its frames' `previous` is
/// beyond the bytes the kernel reads (a copy of trixie's binary, changed
/// in that one word, which CPython itself never reads): wstrace refuses
/// it, with no Python frames and the reason, rather than walking with
/// guessed offsets.
#[test]
fn a_python_3_13_whose_debug_offsets_fail_the_checks_shows_no_frames_and_says_why() {
    let Some(py) = require_extracted_python("3.13") else {
        return;
    };
    let _s = serial();
    let dir = WorldReadableDir::new("interp-python3.13-refused");
    let tree = py.copy_into(&dir);
    let binary = py.binary_in(&tree);
    let mut bytes = std::fs::read(&binary).unwrap_or_else(|e| panic!("{}: {e}", binary.display()));
    let cookies: Vec<usize> = bytes
        .windows(8)
        .enumerate()
        .filter(|(_, w)| w == b"xdebugpy")
        .map(|(i, _)| i)
        // The struct (its version next: 3.13.x), not the bare string.
        .filter(|i| bytes.get(i + 10..i + 16) == Some(&[13, 3, 0, 0, 0, 0][..]))
        .collect();
    assert_eq!(
        cookies.len(),
        1,
        "one _Py_DebugOffsets in {}",
        binary.display()
    );
    // interpreter_frame.previous (3.13.5 pycore_runtime.h: byte 232).
    let previous = cookies[0] + 232;
    assert_eq!(bytes[previous..previous + 8], 8u64.to_le_bytes());
    bytes[previous..previous + 8].copy_from_slice(&200u64.to_le_bytes());
    common::write_executable(&binary, &bytes);
    let (_srv, port) = py.nobody_server_from(&tree, &dir, "server.py", SERVER, &[]);
    let (t, r) = one_report(port, "json");
    assert_eq!(r["closed_by"], "local", "{r}");
    assert!(python_frames(&r).is_empty(), "{r}");
    let note = r["interp_stack_note"].as_str().unwrap_or_default();
    assert!(
        note.contains("python frames: none") && note.contains("frame.previous at 200"),
        "{r}"
    );
    // Said on every close of it, and once on stderr.
    upgrade_once(port);
    let (servers, _) = t.wait_for_ends(port, 2, Duration::from_secs(20));
    assert!(
        servers
            .iter()
            .all(|s| s["interp_stack_note"] == r["interp_stack_note"]),
        "{servers:#?}"
    );
    let stderr = t.stderr_text();
    assert_eq!(
        stderr.matches("frame.previous at 200").count(),
        1,
        "{stderr}"
    );
}

/// Waits for `needle` in wstrace's text output (or 20 s), returns the text.
fn wait_text(t: &Tracer, needle: &str) -> String {
    let start = std::time::Instant::now();
    loop {
        let text = t.raw_lines().concat();
        if text.contains(needle) || start.elapsed() > Duration::from_secs(20) {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_frame_chain_that_loops_ends_the_walk_with_a_note() {
    if !require_nobody_python() {
        return;
    }
    let _s = serial();
    let dir = WorldReadableDir::new("interp-loop");
    let (_srv, port) = nobody_python_server(&dir, "hostile.py", HOSTILE, &["loop"]);
    let (_t, r) = one_report(port, "json");
    let py = python_frames(&r);
    // The frames up to the loop are named, the loop is not followed.
    let names: Vec<&str> = py.iter().map(|(f, _, _)| f.as_str()).collect();
    assert_eq!(names.last(), Some(&"evil_close"), "{py:#?}");
    assert_eq!(
        names.iter().filter(|n| **n == "evil_close").count(),
        1,
        "{py:#?}"
    );
    let note = r["interp_stack_note"].as_str().unwrap_or_default();
    assert!(note.contains("loops after"), "{r}");
}

#[test]
fn a_frame_chain_into_garbage_ends_at_the_budget_with_a_note() {
    if !require_nobody_python() {
        return;
    }
    let _s = serial();
    let dir = WorldReadableDir::new("interp-garbage");
    let (_srv, port) = nobody_python_server(&dir, "hostile.py", HOSTILE, &["garbage"]);
    let (_t, r) = one_report(port, "json");
    let py = python_frames(&r);
    assert_eq!(py.len(), 32, "{py:#?}");
    assert!(py.iter().any(|(f, _, _)| f == "evil_close"), "{py:#?}");
    // The fake frames' "code objects" are not code objects: unnamed.
    let after: Vec<_> = py
        .iter()
        .skip_while(|(f, _, _)| f != "evil_close")
        .skip(1)
        .collect();
    assert!(!after.is_empty(), "{py:#?}");
    assert!(
        after
            .iter()
            .all(|(f, _, l)| f == "[unknown]" && l.is_none()),
        "{py:#?}"
    );
    let note = r["interp_stack_note"].as_str().unwrap_or_default();
    assert!(note.contains("the chain goes on"), "{r}");
}

/// A `stream_socket_server` WebSocket server that closes in `closeStale()`,
/// called from `serve()`. The line numbers below are asserted.
const PHP_SERVER: &str = "<?php
function closeStale($c) {
    fclose($c); // line 3
}

function serve($s) {
    $c = stream_socket_accept($s, -1);
    fread($c, 4096);
    fwrite($c, \"HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\n\\r\\n\");
    closeStale($c); // line 10
}

$s = stream_socket_server('tcp://127.0.0.1:0');
$name = stream_socket_get_name($s, false);
echo 'READY ' . substr(strrchr($name, ':'), 1) . \"\\n\";
while (true) {
    serve($s);
}
";

/// `php -n SCRIPT` as nobody for PHP `minor`, or `None` (see `require`):
/// bookworm's /usr/bin/php8.2, or the distribution build `cargo xtask
/// setup` unpacked under ~/.cache/wstrace/php/<minor> (xtask `php.rs`),
/// copied into `dir` (nobody cannot read root's home) and, when its
/// release's libc6 came with it, run through that release's own loader.
/// `-n`: no php.ini, so no extension of this machine's PHP is loaded.
fn nobody_php(minor: &str, dir: &WorldReadableDir, script: &Path) -> Option<Command> {
    if minor == "8.2" {
        let php = require_file(
            "Debian's PHP 8.2",
            &[PathBuf::from("/usr/bin/php8.2")],
            "apt-get install php8.2-cli (cargo xtask setup installs it)",
        )?;
        let mut cmd = as_nobody(&php);
        cmd.arg("-n").arg(script);
        return Some(cmd);
    }
    let cache = wstrace_scenarios::harness::skip::cache_dir();
    if !require(
        cache.is_some(),
        "neither HOME nor XDG_CACHE_HOME is set: the test PHPs live in ~/.cache/wstrace",
    ) {
        return None;
    }
    let root = cache?.join("php").join(minor).join("root");
    let binary = require_file(
        &format!("PHP {minor}"),
        &[root.join(format!("usr/bin/php{minor}"))],
        "run `cargo xtask setup` (downloads and unpacks it)",
    )?;
    let copy = dir.path().join(format!("php{minor}"));
    std::fs::copy(&binary, &copy).unwrap_or_else(|e| panic!("copying {}: {e}", binary.display()));
    let libc = root.join("usr/lib/x86_64-linux-gnu");
    let mut cmd = if libc.join("ld-linux-x86-64.so.2").is_file() {
        let lib = dir.path().join("lib");
        std::fs::create_dir(&lib).unwrap_or_else(|e| panic!("{}: {e}", lib.display()));
        for entry in std::fs::read_dir(&libc).unwrap_or_else(|e| panic!("{}: {e}", libc.display()))
        {
            let from = entry
                .unwrap_or_else(|e| panic!("{}: {e}", libc.display()))
                .path();
            if from.is_file() {
                let to = lib.join(from.file_name().unwrap_or_default());
                std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
            }
        }
        as_nobody_with_libc(&copy, &lib)
    } else {
        as_nobody(&copy)
    };
    cmd.arg("-n").arg(script);
    Some(cmd)
}

/// The PHP frames of a report: (function, file, line), innermost first.
fn php_frames(r: &serde_json::Value) -> Vec<(String, String, Option<u64>)> {
    user_stack(r)
        .iter()
        .filter(|f| f["kind"] == "interpreted")
        .map(|f| {
            assert_eq!(f["language"], "php", "{f}");
            (
                f["function"].as_str().unwrap_or("[unknown]").to_string(),
                f["file"].as_str().unwrap_or("").to_string(),
                f["line"].as_u64(),
            )
        })
        .collect()
}

/// The PHP test, on PHP `minor`: the close in `closeStale()` names it, its
/// file and line, its caller `serve()` with its line, `fclose` inside and
/// `{main}` outside, in that order.
fn a_php_close_names_the_function_file_and_line_and_its_caller(minor: &str) {
    if !require_nobody_python() {
        return;
    }
    let _s = serial();
    let dir = WorldReadableDir::new(&format!("interp-php{minor}"));
    let script = dir.write("server.php", PHP_SERVER);
    let Some(mut php) = nobody_php(minor, &dir, &script) else {
        return;
    };
    let (_srv, port) = spawn_ready(php.current_dir(dir.path()));
    let (t, r) = one_report(port, "json");
    assert_eq!(r["closed_by"], "local", "{r}");
    let frames = php_frames(&r);
    let at = |name: &str| {
        frames
            .iter()
            .position(|(f, _, _)| f == name)
            .unwrap_or_else(|| {
                panic!(
                    "PHP {minor}: no PHP frame {name}: {frames:#?}\n{}",
                    t.stderr_text()
                )
            })
    };
    let (fclose, inner, serve, main) = (at("fclose"), at("closeStale"), at("serve"), at("{main}"));
    assert!(
        fclose < inner && inner < serve && serve < main,
        "{frames:#?}"
    );
    assert!(frames[inner].1.ends_with("/server.php"), "{frames:#?}");
    assert_eq!(frames[inner].2, Some(3), "{frames:#?}");
    assert_eq!(frames[serve].2, Some(10), "{frames:#?}");
    assert!(r["interp_stack_note"].is_null(), "{r}");
    // Known, so not refused: no note about this PHP.
    assert!(
        !t.stderr_text().contains("show no PHP frames"),
        "{}",
        t.stderr_text()
    );
}

/// Ubuntu 22.04's php8.1-cli.
#[test]
fn a_php_8_1_close_names_the_function_file_and_line_and_its_caller() {
    a_php_close_names_the_function_file_and_line_and_its_caller("8.1");
}

/// Debian 12's php8.2-cli.
#[test]
fn a_php_8_2_close_names_the_function_file_and_line_and_its_caller() {
    a_php_close_names_the_function_file_and_line_and_its_caller("8.2");
}

/// Ubuntu 24.04's php8.3-cli, through noble's own glibc.
#[test]
fn a_php_8_3_close_names_the_function_file_and_line_and_its_caller() {
    a_php_close_names_the_function_file_and_line_and_its_caller("8.3");
}

/// Debian 13's php8.4-cli, through trixie's own glibc.
#[test]
fn a_php_8_4_close_names_the_function_file_and_line_and_its_caller() {
    a_php_close_names_the_function_file_and_line_and_its_caller("8.4");
}

/// How a copy of Debian's php8.2 is made to disagree with what wstrace
/// knows of PHP 8.2.
enum Misfit {
    /// Named `php8.3`: the name and the version in the code disagree.
    Renamed,
    /// `zend_is_executing()` patched to test `executor_globals+496`: the
    /// code and the table disagree on `current_execute_data`.
    Patched,
}

/// A PHP wstrace cannot vouch for is refused: one note on stderr naming
/// why, and closes with no PHP frames rather than wrong ones.
fn a_php_it_cannot_vouch_for_is_refused_with_a_note(misfit: Misfit) {
    if !require_nobody_python() {
        return;
    }
    let Some(php) = require_file(
        "Debian's PHP 8.2",
        &[PathBuf::from("/usr/bin/php8.2")],
        "apt-get install php8.2-cli (cargo xtask setup installs it)",
    ) else {
        return;
    };
    let _s = serial();
    let dir = WorldReadableDir::new("interp-php-misfit");
    let script = dir.write("server.php", PHP_SERVER);
    let mut code = std::fs::read(&php).unwrap_or_else(|e| panic!("{}: {e}", php.display()));
    let (name, why) = match misfit {
        Misfit::Renamed => ("php8.3", "its name says PHP 8.3 but its code says 8.2."),
        Misfit::Patched => {
            // cmp qword [rax+0x1e8], 0; setne al; ret: zend_is_executing's
            // test of current_execute_data, once in the binary.
            let test = [
                0x48, 0x83, 0xb8, 0xe8, 0x01, 0, 0, 0, 0x0f, 0x95, 0xc0, 0xc3,
            ];
            let at: Vec<usize> = code
                .windows(test.len())
                .enumerate()
                .filter(|(_, w)| *w == test)
                .map(|(i, _)| i)
                .collect();
            assert_eq!(at.len(), 1, "zend_is_executing's code in {}", php.display());
            code[at[0] + 3] = 0xf0;
            (
                "php8.2",
                "keeps current_execute_data at +496 of executor_globals",
            )
        }
    };
    let copy = dir.path().join(name);
    std::fs::write(&copy, &code).unwrap_or_else(|e| panic!("{}: {e}", copy.display()));
    std::fs::set_permissions(&copy, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", copy.display()));
    let (_srv, port) = spawn_ready(
        as_nobody(&copy)
            .arg("-n")
            .arg(&script)
            .current_dir(dir.path()),
    );
    let (t, r) = one_report(port, "json");
    assert_eq!(r["closed_by"], "local", "{r}");
    assert_eq!(php_frames(&r), vec![], "{r}");
    let stderr = t.stderr_text();
    let notes: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("show no PHP frames"))
        .collect();
    assert_eq!(notes.len(), 1, "{stderr}");
    assert!(notes[0].contains(why), "{stderr}");
}

#[test]
fn a_php_whose_name_and_version_disagree_is_refused_with_a_note() {
    a_php_it_cannot_vouch_for_is_refused_with_a_note(Misfit::Renamed);
}

#[test]
fn a_php_whose_code_disagrees_with_the_table_is_refused_with_a_note() {
    a_php_it_cannot_vouch_for_is_refused_with_a_note(Misfit::Patched);
}
