//! wss:// served by a Go program: gorilla/websocket over Go's own
//! `crypto/tls` (no OpenSSL anywhere), built here by Debian's Go 1.19 in
//! GOPATH mode (offline). The kernel sees ciphertext; the 101, the request
//! head and close frames are read from uprobes on `(*Conn).Write`,
//! `(*Conn).Read` and each RET of `Read`, the socket found through the
//! `tls.Conn`'s fd. Real sockets, the real probes; wstrace started after
//! the server (uprobes go on the servers found at start-up).
//!
//! Needs root, `go` and gorilla/websocket (`golang-go`,
//! `golang-github-gorilla-websocket-dev`) and /usr/bin/python3
//! (`cargo xtask setup --for test`): a missing one FAILS unless
//! WSTRACE_TEST_ALLOW_SKIP=1.
mod common;

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use common::{
    Kill, Tracer, WorldReadableDir, as_nobody, require_file, require_root, require_tool, serial,
    write_executable,
};
use serde_json::Value;

const PYTHON: &str = "/usr/bin/python3";

/// The Go server: the kernel matrix's own program
/// (wstrace-scenarios/go/ws-go-tls), gorilla/websocket behind
/// `http.Server.ServeTLS` with a certificate made in memory. By mode,
/// `close` closes right after the upgrade (in `(*hub).drop`); `goaway`
/// sends a close frame 1001 "restarting", reads until the client's answer,
/// then closes; `ping` pings every 300 ms and closes when no pong came in
/// 1.5 s. Prints `READY <port>`.
const SERVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/go/ws-go-tls/main.go");

/// A WebSocket client over Python's `ssl`: `http10` sends an HTTP/1.0
/// upgrade and reads until the server closes; `answer` (HTTP/1.1) echoes a
/// close frame it gets, then reads until the server closes; `silent`
/// (HTTP/1.1) answers nothing, pings included.
const CLIENT: &str = r#"
import os, socket, ssl, sys, time
port, mode = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost")
version = "HTTP/1.0" if mode == "http10" else "HTTP/1.1"
s.sendall(("GET /ws?token=SECRET " + version + "\r\nHost: localhost\r\nConnection: Upgrade\r\n"
           "Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           "Sec-WebSocket-Version: 13\r\nCookie: session=TOPSECRET\r\n\r\n").encode())
s.settimeout(5)
got = s.recv(4096)
assert got.startswith(b"HTTP/1.1 101 "), got
try:
    while True:
        d = s.recv(4096)
        if not d:
            break
        if mode == "answer" and d[0] == 0x88:
            mask = os.urandom(4)
            s.sendall(bytes([0x88, 0x82]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(d[2:4])))
except (OSError, ssl.SSLError):
    pass
# Go sends close_notify before its close(): the socket is closed here only
# after the server's FIN had time to come, so the server closes first.
time.sleep(0.5)
s.close()
"#;

struct Setup {
    dir: WorldReadableDir,
    python: PathBuf,
    /// The Go server, built with symbols.
    server: PathBuf,
}

/// Where Go keeps its build cache between runs (the standard library's
/// net/http and crypto/tls take a minute to compile the first time).
fn go_cache() -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/wstrace/go-build")
}

/// Builds [`SERVER`] into `dir` (GOPATH mode, Debian's gorilla/websocket,
/// no network) with extra `go build` flags.
fn build_server(go: &Path, dir: &Path, name: &str, flags: &[&str]) -> PathBuf {
    let src = Path::new(SERVER);
    let out = dir.join(name);
    let built = Command::new(go)
        .arg("build")
        .args(flags)
        .arg("-o")
        .arg(&out)
        .arg(src)
        .current_dir(dir)
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOCACHE", go_cache())
        .env("GOFLAGS", "")
        .env("CGO_ENABLED", "0")
        .output()
        .expect("go build");
    assert!(
        built.status.success(),
        "go build failed: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    out
}

/// Root, go, gorilla/websocket, python3; a world-readable temp dir with the
/// built server and the client.
fn setup(name: &str) -> Option<Setup> {
    if !require_root() {
        return None;
    }
    let go = require_tool(
        "go",
        "apt-get install golang-go (or cargo xtask setup --for test)",
    )?;
    require_file(
        "gorilla/websocket",
        &[PathBuf::from(
            "/usr/share/gocode/src/github.com/gorilla/websocket/conn.go",
        )],
        "apt-get install golang-github-gorilla-websocket-dev (or cargo xtask setup --for test)",
    )?;
    let python = require_file(
        "python3",
        &[PathBuf::from(PYTHON)],
        "apt-get install python3",
    )?;
    let dir = WorldReadableDir::new(&format!("gotls-{name}"));
    std::fs::write(dir.path().join("client.py"), CLIENT).expect("client script");
    let server = build_server(&go, dir.path(), "srv", &[]);
    Some(Setup {
        dir,
        python,
        server,
    })
}

/// `cmd` (a Go server) in `mode`: its process and port.
fn start(mut cmd: Command, mode: &str) -> (Kill, u16) {
    let mut c = cmd
        .arg("server")
        .arg(mode)
        .stdout(Stdio::piped())
        .spawn()
        .expect("go server");
    let mut line = String::new();
    BufReader::new(c.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("READY line");
    let port = line
        .trim()
        .strip_prefix("READY ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("server said {line:?}"));
    (Kill(c), port)
}

fn run_client(s: &Setup, port: u16, mode: &str) {
    let out = Command::new(&s.python)
        .arg(s.dir.path().join("client.py"))
        .arg(port.to_string())
        .arg(mode)
        .output()
        .expect("python3 client");
    assert!(
        out.status.success(),
        "client {mode} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn frames(r: &Value) -> Vec<(String, u64)> {
    r["frames"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|f| {
                    (
                        f["direction"].as_str().unwrap_or_default().to_string(),
                        f["code"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn report_on_port(reports: &[Value], port: u16) -> &Value {
    reports
        .iter()
        .find(|r| {
            r["local"]
                .as_str()
                .is_some_and(|l| l.ends_with(&format!(":{port}")))
        })
        .unwrap_or_else(|| panic!("no report for port {port}: {reports:#?}"))
}

#[test]
fn go_tls_server_closing_after_an_http10_upgrade_is_named_from_the_plaintext() {
    let Some(s) = setup("http10") else { return };
    let _g = serial();
    let (server, port) = start(Command::new(&s.server), "close");
    let pid = server.0.id();
    let t = Tracer::start(port, &[]);
    let stderr = t.stderr_text();
    assert!(
        stderr.contains(&format!("wstrace: tls: pid {pid} (srv): Go go1.19"))
            && stderr.contains(
                "(amd64) crypto/tls covered: uprobes on (*Conn).Write, (*Conn).Read and its "
            ),
        "no Go coverage line for the server:\n{stderr}"
    );
    // Built with its DWARF and symbol table: the struct offsets are its
    // own, and a conn is walked only when its itab is *net.TCPConn's.
    assert!(
        stderr.contains("; offsets from DWARF, the *net.TCPConn itab checked"),
        "the walk's offsets and itab not from the binary:\n{stderr}"
    );

    for _ in 0..3 {
        run_client(&s, port, "http10");
    }
    // The server side's reports: a TLS client on this host is the client
    // side only where its library's reads are probed.
    let reports = t.wait_for_server_reports(3, Duration::from_secs(20));
    assert_eq!(reports.len(), 3, "{}", t.stderr_text());
    for r in &reports {
        assert_eq!(r["tls"], "go", "{r}");
        assert_eq!(r["closed_by"], "local", "{r}");
        assert_eq!(r["pid"], pid, "{r}");
        assert_eq!(r["upgraded_by"]["pid"], pid, "{r}");
        assert_eq!(r["diagnosis"]["code"], "http10_upgrade", "{r}");
        // The request head is the plaintext from (*Conn).Read's RETs,
        // redacted as any other.
        assert_eq!(r["request"]["version"], "HTTP/1.0", "{r}");
        assert_eq!(r["request"]["upgrade"], "websocket", "{r}");
        let text = r.to_string();
        assert!(
            !text.contains("TOPSECRET") && !text.contains("SECRET "),
            "secret printed: {r}"
        );
        // The closing goroutine's stack names the program's own frame, as
        // Go code (its DWARF).
        let stack = r["user_stack"].as_array().cloned().unwrap_or_default();
        assert!(
            stack
                .iter()
                .any(|f| f["function"] == "main.(*hub).drop" && f["language"] == "go"),
            "the close is not in main.(*hub).drop: {stack:#?}"
        );
    }
}

#[test]
fn go_tls_close_frame_1001_is_read_from_the_plaintext() {
    let Some(s) = setup("goaway") else { return };
    let _g = serial();
    let (_server, port) = start(Command::new(&s.server), "goaway");
    let t = Tracer::start(port, &[]);
    run_client(&s, port, "answer");
    // The server side's reports: a TLS client on this host is the client
    // side only where its library's reads are probed.
    let reports = t.wait_for_server_reports(1, Duration::from_secs(20));
    assert_eq!(reports.len(), 1, "{}", t.stderr_text());
    let r = report_on_port(&reports, port);
    assert_eq!(r["tls"], "go", "{r}");
    assert_eq!(r["diagnosis"]["code"], "server_close_frame", "{r}");
    assert_eq!(frames(r).first(), Some(&("sent".to_string(), 1001)), "{r}");
    assert!(
        frames(r).contains(&("received".to_string(), 1001)),
        "the client's answer, read at a RET of (*Conn).Read: {r}"
    );
}

/// ELF64 little-endian section `i` of `elf`: (type, addr, offset, size, link).
fn section(elf: &[u8], i: usize) -> (u32, u64, u64, u64, u32) {
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().expect("8 bytes"));
    let shoff = u64_at(0x28) as usize;
    let at = shoff + i * u16_at(0x3a);
    (
        u32_at(at + 4),
        u64_at(at + 0x10),
        u64_at(at + 0x18),
        u64_at(at + 0x20),
        u32_at(at + 0x28),
    )
}

/// Where, in `elf`, the `.symtab` entry of `name` is, and the file offset
/// of the code it names (through the section holding it).
fn symbol(elf: &[u8], name: &str) -> (usize, usize) {
    let shnum = u16::from_le_bytes([elf[0x3c], elf[0x3d]]) as usize;
    let (_, _, symoff, symsize, link) = (0..shnum)
        .map(|i| section(elf, i))
        .find(|s| s.0 == 2)
        .expect("a .symtab");
    let (_, _, stroff, _, _) = section(elf, link as usize);
    for at in (symoff as usize..(symoff + symsize) as usize).step_by(24) {
        let n = u32::from_le_bytes(elf[at..at + 4].try_into().expect("4 bytes")) as usize;
        let s = &elf[stroff as usize + n..];
        let end = s.iter().position(|&b| b == 0).expect("NUL");
        if &s[..end] != name.as_bytes() {
            continue;
        }
        let shndx = u16::from_le_bytes([elf[at + 6], elf[at + 7]]) as usize;
        let value = u64::from_le_bytes(elf[at + 8..at + 16].try_into().expect("8 bytes"));
        let (_, addr, off, _, _) = section(elf, shndx);
        return (at, (value - addr + off) as usize);
    }
    panic!("no symbol {name}");
}

/// The file offset of section `name` of `elf`.
fn section_named(elf: &[u8], name: &str) -> usize {
    let shoff = u64::from_le_bytes(elf[0x28..0x30].try_into().expect("8 bytes")) as usize;
    let shnum = u16::from_le_bytes([elf[0x3c], elf[0x3d]]) as usize;
    let shstrndx = u16::from_le_bytes([elf[0x3e], elf[0x3f]]) as usize;
    let (_, _, names, _, _) = section(elf, shstrndx);
    for i in 0..shnum {
        let at = shoff + i * 64;
        let n = u32::from_le_bytes(elf[at..at + 4].try_into().expect("4 bytes")) as usize;
        let s = &elf[names as usize + n..];
        if s.starts_with(name.as_bytes()) && s.get(name.len()) == Some(&0) {
            return section(elf, i).2 as usize;
        }
    }
    panic!("no section {name}");
}

/// A Go server whose DWARF lies (its compressed `.debug_info` claims
/// 128 MiB, over the 64 MiB read): the offsets come from the table for its
/// release, and start-up says why its DWARF was not used; it is covered
/// and reported as usual. (128 MiB: over the Go survey's read, under the
/// stack symbolizer's 256 MiB bound, so only the offsets' source changes;
/// a claim past that bound is the test below.)
#[test]
fn go_binary_with_lying_dwarf_falls_back_to_the_table() {
    let Some(s) = setup("dwarf") else { return };
    let _g = serial();
    let mut elf = std::fs::read(&s.server).expect("read the server");
    let info = section_named(&elf, ".debug_info");
    // Elf64_Chdr: ch_type 1 (zlib), reserved, ch_size.
    assert_eq!(&elf[info..info + 4], &[1, 0, 0, 0], "a zlib .debug_info");
    elf[info + 8..info + 16].copy_from_slice(&(128u64 << 20).to_le_bytes());
    let bin = s.dir.path().join("lying-dwarf");
    write_executable(&bin, &elf);
    let (server, port) = start(as_nobody(&bin), "close");
    let t = Tracer::start(port, &[]);
    let stderr = t.stderr_text();
    let line = stderr
        .lines()
        .find(|l| {
            l.starts_with(&format!(
                "wstrace: tls: pid {} (lying-dwarf)",
                server.0.id()
            ))
        })
        .unwrap_or_else(|| panic!("no line for the server:\n{stderr}"));
    assert!(
        line.contains("crypto/tls covered")
            && line.contains(
                "offsets for go1.19 (table; its DWARF not used: a section is 128 MiB decompressed (read up to 64 MiB)), the *net.TCPConn itab checked"
            ),
        "{line}"
    );
    run_client(&s, port, "http10");
    // The server side's reports: a TLS client on this host is the client
    // side only where its library's reads are probed.
    let reports = t.wait_for_server_reports(1, Duration::from_secs(20));
    assert_eq!(reports.len(), 1, "{}", t.stderr_text());
    let r = report_on_port(&reports, port);
    assert_eq!(r["tls"], "go", "{r}");
    assert_eq!(r["request"]["version"], "HTTP/1.0", "{r}");
}

/// TLS over a wrapping `net.Conn` (`ws-go-tls server wrapped`): the
/// wrapper's first word points at a `bufio.Reader` whose third word is the
/// fd of the connection accepted before it, so a `tls.Conn` walked as if
/// over a `*net.TCPConn` lands on that other, traced socket. The itab
/// check keeps the second connection's plaintext reads (its client's close
/// frame 1001) off the first connection's report: they are not walked at
/// all. (Run against the stripped build, which has no itab to check, the
/// first report does get the 1001: what this test guards against.)
#[test]
fn go_tls_over_a_wrapped_conn_is_not_walked_as_a_tcpconn() {
    let Some(s) = setup("wrapped") else { return };
    let _g = serial();
    let (_server, port) = start(Command::new(&s.server), "wrapped");
    let t = Tracer::start(port, &[]);
    assert!(
        t.stderr_text().contains("the *net.TCPConn itab checked"),
        "{}",
        t.stderr_text()
    );
    // The first connection stays open (silent) until the second is done.
    let first = Command::new(&s.python)
        .arg(s.dir.path().join("client.py"))
        .arg(port.to_string())
        .arg("silent")
        .spawn()
        .expect("python3 client");
    let first = Kill(first);
    std::thread::sleep(Duration::from_millis(500));
    run_client(&s, port, "answer");
    // The server side's reports: a TLS client on this host is the client
    // side only where its library's reads are probed.
    let reports = t.wait_for_server_reports(2, Duration::from_secs(20));
    drop(first);
    assert_eq!(reports.len(), 2, "{}", t.stderr_text());
    for r in &reports {
        assert_eq!(r["tls"], "go", "{r}");
        assert!(
            !frames(r).contains(&("received".to_string(), 1001)),
            "a read of a wrapped conn was walked as a *net.TCPConn: {r}"
        );
    }
    // The second connection's own writes are still seen (they need no walk).
    assert!(
        reports
            .iter()
            .any(|r| frames(r).first() == Some(&("sent".to_string(), 1001))),
        "{reports:#?}"
    );
}

/// `nobody` runs copies of the Go server that lie to the survey: a
/// stripped one whose `.gopclntab` claims 2^60 functions, one whose
/// symbol table says `(*Conn).Read` is 1 TiB long, one whose `Read` starts
/// with bytes that are no x86-64 instruction, one whose build info claims
/// a pre-register-ABI Go with a terminal escape in it. Each is named, not
/// covered, with an escaped reason; the survey stays bounded; a genuine
/// Go server on another traced port is covered and reported as usual.
#[test]
fn hostile_go_binaries_are_refused_and_other_reports_unaffected() {
    let Some(s) = setup("hostile") else { return };
    let _g = serial();
    let elf = std::fs::read(&s.server).expect("read the server");
    let (read_sym, read_code) = symbol(&elf, "crypto/tls.(*Conn).Read");
    let write = |name: &str, bytes: &[u8]| {
        let p = s.dir.path().join(name);
        write_executable(&p, bytes);
        p
    };
    let mut huge = elf.clone();
    huge[read_sym + 16..read_sym + 24].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let mut undecodable = elf.clone();
    // 0x06 (push es) does not exist in 64-bit mode.
    undecodable[read_code..read_code + 4].copy_from_slice(&[0x06; 4]);
    let mut old = elf.clone();
    // .go.buildinfo: its header, then (Go 1.18+) at +32 the version's
    // length (one byte here) and bytes.
    let v = old
        .windows(14)
        .position(|w| w == b"\xff Go buildinf:")
        .expect("a .go.buildinfo header")
        + 33;
    assert_eq!(&old[v - 1..v + 8], b"\x08go1.19.8", "the inline version");
    old[v..v + 8].copy_from_slice(b"go1.1\x1b[J");
    // A stripped copy whose .gopclntab claims 2^60 functions.
    let go = require_tool("go", "apt-get install golang-go").expect("checked by setup");
    let mut pcln = std::fs::read(build_server(
        &go,
        s.dir.path(),
        "srv-stripped",
        &["-ldflags=-s -w"],
    ))
    .expect("read the stripped server");
    let h = pcln
        .windows(8)
        .position(|w| w == [0xf0, 0xff, 0xff, 0xff, 0, 0, 1, 8])
        .expect("a Go 1.18+ .gopclntab header");
    pcln[h + 8..h + 16].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let bins = [
        (
            write("pclntab", &pcln),
            "claims more functions than it holds",
        ),
        (
            write("huge", &huge),
            "its (*Conn).Read is 1099511627776 bytes",
        ),
        (
            write("undecodable", &undecodable),
            "do not decode as x86-64",
        ),
        (write("old", &old), "passes arguments on the stack"),
    ];
    let mut servers = Vec::new();
    for (bin, _) in &bins {
        servers.push(start(as_nobody(bin), "close"));
    }
    let (good, good_port) = start(Command::new(&s.server), "close");
    let extra: Vec<String> = servers
        .iter()
        .flat_map(|(_, p)| ["--port".to_string(), p.to_string()])
        .collect();
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let t = Tracer::start(good_port, &extra);
    let stderr = t.stderr_text();
    for ((bin, why), (server, _)) in bins.iter().zip(&servers) {
        let name = bin.file_name().and_then(|n| n.to_str()).expect("name");
        let line = stderr
            .lines()
            .find(|l| l.starts_with(&format!("wstrace: tls: pid {} ({name})", server.0.id())))
            .unwrap_or_else(|| panic!("no line for {name}:\n{stderr}"));
        assert!(
            line.contains("crypto/tls not covered") && line.contains(why),
            "{name}: {line}"
        );
        assert!(!line.contains('\x1b'), "unescaped: {line:?}");
    }
    assert!(
        stderr.contains(&format!(
            "wstrace: tls: pid {} (srv): Go go1.19",
            good.0.id()
        )) && stderr.contains("crypto/tls covered"),
        "{stderr}"
    );
    run_client(&s, good_port, "http10");
    // The server side's reports: a TLS client on this host is the client
    // side only where its library's reads are probed.
    let reports = t.wait_for_server_reports(1, Duration::from_secs(20));
    assert_eq!(reports.len(), 1, "{}", t.stderr_text());
    let r = report_on_port(&reports, good_port);
    assert_eq!(r["tls"], "go", "{r}");
    assert_eq!(r["diagnosis"]["code"], "http10_upgrade", "{r}");
}

/// The index of the section named `name` (through `.shstrtab`).
fn section_index(elf: &[u8], name: &str) -> usize {
    let shnum = u16::from_le_bytes([elf[0x3c], elf[0x3d]]) as usize;
    let shstrndx = u16::from_le_bytes([elf[0x3e], elf[0x3f]]) as usize;
    let (_, _, stroff, _, _) = section(elf, shstrndx);
    let shoff = u64::from_le_bytes(elf[0x28..0x30].try_into().expect("8 bytes")) as usize;
    let entsize = u16::from_le_bytes([elf[0x3a], elf[0x3b]]) as usize;
    (0..shnum)
        .find(|&i| {
            let at = shoff + i * entsize;
            let n = u32::from_le_bytes(elf[at..at + 4].try_into().expect("4 bytes")) as usize;
            let s = &elf[stroff as usize + n..];
            s.iter()
                .position(|&b| b == 0)
                .is_some_and(|e| &s[..e] == name.as_bytes())
        })
        .unwrap_or_else(|| panic!("no section {name}"))
}

/// `nobody` runs, from a root-owned directory (so its debug info would be
/// read), a copy of the Go server whose compressed `.debug_info` claims
/// (`Elf64_Chdr.ch_size`) 1 TiB decompressed: blazesym would allocate
/// that and abort the daemon. wstrace refuses the file's DWARF, says so
/// once, reports that server's close with frames named from its symbol
/// table, then a genuine server's close, with source lines, and is alive.
#[test]
fn go_binary_claiming_a_tebibyte_of_debug_info_is_named_from_its_symtab() {
    let Some(s) = setup("dwarfbomb") else { return };
    let _g = serial();
    let mut elf = std::fs::read(&s.server).expect("read the server");
    let i = section_index(&elf, ".debug_info");
    let (_, _, off, _, _) = section(&elf, i);
    let shdr_flags = {
        let shoff = u64::from_le_bytes(elf[0x28..0x30].try_into().expect("8 bytes")) as usize;
        shoff + i * u16::from_le_bytes([elf[0x3a], elf[0x3b]]) as usize + 8
    };
    let flags = u64::from_le_bytes(elf[shdr_flags..shdr_flags + 8].try_into().expect("8"));
    assert!(
        flags & 0x800 != 0,
        "Go compresses .debug_info (SHF_COMPRESSED)"
    );
    let off = off as usize;
    elf[off + 8..off + 16].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let bomb = s.dir.path().join("dwarfbomb");
    write_executable(&bomb, &elf);
    let (hostile, hport) = start(as_nobody(&bomb), "close");
    let (_good, good_port) = start(Command::new(&s.server), "close");
    let t = Tracer::start(hport, &["--port", &good_port.to_string()]);
    run_client(&s, hport, "http10");
    // The server side's reports: a TLS client on this host is the client
    // side only where its library's reads are probed.
    let reports = t.wait_for_server_reports(1, Duration::from_secs(20));
    let stderr = t.stderr_text();
    assert_eq!(reports.len(), 1, "{stderr}");
    let h = report_on_port(&reports, hport);
    run_client(&s, good_port, "http10");
    // The server side's reports: a TLS client on this host is the client
    // side only where its library's reads are probed.
    let reports = t.wait_for_server_reports(2, Duration::from_secs(20));
    let stderr = t.stderr_text();
    assert_eq!(reports.len(), 2, "{stderr}");
    let g = report_on_port(&reports, good_port);
    let named = |r: &Value| {
        r["user_stack"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|f| f["function"].as_str().map(str::to_string))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    let with_lines = |r: &Value| {
        r["user_stack"]
            .as_array()
            .is_some_and(|a| a.iter().any(|f| f["line"].as_u64().is_some()))
    };
    eprintln!("hostile user stack: {}", h["user_stack"]);
    eprintln!("genuine user stack: {}", g["user_stack"]);
    let hn = named(h);
    assert!(
        hn.iter()
            .any(|n| n.starts_with("main.") || n.contains("websocket")),
        "the hostile server's frames are named from its symbol table: {h}"
    );
    assert!(
        !with_lines(h),
        "no DWARF was read for the hostile binary: {h}"
    );
    assert!(
        named(g)
            .iter()
            .any(|n| n.starts_with("main.") || n.contains("websocket"))
            && with_lines(g),
        "the genuine server keeps names and source lines: {g}"
    );
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("its debug info is not used"))
        .collect();
    assert_eq!(lines.len(), 1, "said once per binary:\n{stderr}");
    assert!(
        lines[0].contains(&format!("pid {}", hostile.0.id()))
            && lines[0].contains("dwarfbomb")
            && lines[0].contains("section .debug_info (#")
            && lines[0].contains("1099511627776 bytes decompressed"),
        "{}",
        lines[0]
    );
    let mut t = t;
    assert!(
        t.child.0.try_wait().expect("try_wait").is_none(),
        "wstrace died:\n{stderr}"
    );
}

#[test]
fn stripped_go_binary_is_covered_through_its_pclntab() {
    let Some(s) = setup("stripped") else { return };
    let _g = serial();
    let go = require_tool("go", "apt-get install golang-go").expect("checked by setup");
    let stripped = build_server(&go, s.dir.path(), "srv-stripped", &["-ldflags=-s -w"]);
    let (server, port) = start(Command::new(&stripped), "close");
    let t = Tracer::start(port, &[]);
    let stderr = t.stderr_text();
    assert!(
        stderr.contains(&format!(
            "wstrace: tls: pid {} (srv-stripped): Go go1.19",
            server.0.id()
        )) && stderr.contains("crypto/tls covered"),
        "the stripped server is not covered:\n{stderr}"
    );
    // No DWARF, no symbol table: the table's offsets for its release, the
    // conn walked unchecked (and said so).
    assert!(
        stderr.contains(
            "; offsets for go1.19 (table), no symbol table: conns walked as *net.TCPConn unchecked"
        ),
        "the stripped server's walk is not said:\n{stderr}"
    );
    run_client(&s, port, "http10");
    // The server side's reports: a TLS client on this host is the client
    // side only where its library's reads are probed.
    let reports = t.wait_for_server_reports(1, Duration::from_secs(20));
    assert_eq!(reports.len(), 1, "{}", t.stderr_text());
    let r = report_on_port(&reports, port);
    assert_eq!(r["tls"], "go", "{r}");
    assert_eq!(r["diagnosis"]["code"], "http10_upgrade", "{r}");
    assert_eq!(r["request"]["version"], "HTTP/1.0", "{r}");
}

#[test]
fn go_tls_pings_without_pongs_are_a_heartbeat_timeout() {
    let Some(s) = setup("ping") else { return };
    let _g = serial();
    let (_server, port) = start(Command::new(&s.server), "ping");
    let t = Tracer::start(port, &[]);
    run_client(&s, port, "silent");
    // The server side's reports: a TLS client on this host is the client
    // side only where its library's reads are probed.
    let reports = t.wait_for_server_reports(1, Duration::from_secs(20));
    assert_eq!(reports.len(), 1, "{}", t.stderr_text());
    let r = report_on_port(&reports, port);
    assert_eq!(r["tls"], "go", "{r}");
    assert_eq!(r["closed_by"], "local", "{r}");
    // The pings are (*Conn).Write plaintext: none answered.
    assert_eq!(r["diagnosis"]["code"], "heartbeat_timeout", "{r}");
}
