//! The default output: one header line per close, then who closed it and the
//! stacks, indented. Colour only when stdout is a terminal.
//!
//! Every field that a traced process or a remote client controls (request,
//! comm, command line, executable, frames, close reasons, the diagnosis
//! that quotes them) goes through `escape::text`: a report is exactly the
//! lines printed here, with no terminal control or bidi reordering in them.
use std::fmt::Write as _;

use crate::model::{ClosedBy, Frame, Heartbeat, PeerSource, Pings, Side, signal_name};
use crate::output::escape::text as esc;
use crate::output::fold::Storm;
use crate::output::frame::{self, basename};
use crate::output::view::{View, rfc3339};
use crate::protocol::wsframe::close_code_meaning;

struct Paint(bool);

impl Paint {
    fn wrap(&self, code: &str, s: &str) -> String {
        if self.0 {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
    fn bold(&self, s: &str) -> String {
        self.wrap("1", s)
    }
    fn red(&self, s: &str) -> String {
        self.wrap("1;31", s)
    }
    fn yellow(&self, s: &str) -> String {
        self.wrap("33", s)
    }
    fn dim(&self, s: &str) -> String {
        self.wrap("2", s)
    }
}

pub fn render(v: &View<'_>, color: bool, full_stacks: bool) -> String {
    let p = Paint(color);
    let r = v.report;
    let mut out = String::new();
    let who = match r.closed_by {
        ClosedBy::Local => p.red("closed by LOCAL"),
        ClosedBy::Peer => p.yellow("closed by PEER"),
        ClosedBy::Kernel => p.yellow("closed by KERNEL"),
    };
    let _ = writeln!(
        out,
        "{} {} {} <-> {} {} ({}) {:.3} ms after 101{} [{}]",
        rfc3339(v.ts),
        p.bold("CLOSE"),
        r.local,
        r.remote,
        who,
        r.how.as_str().to_uppercase(),
        r.ms_after_upgrade(),
        match r.side {
            Side::Server => "",
            Side::Client => " (client side: the 101 was read here)",
        },
        r.probe.name(),
    );
    let d = &v.diagnosis;
    let _ = writeln!(
        out,
        "  {} {}: {}",
        p.bold("why:     "),
        d.code,
        esc(&d.message)
    );
    // One story per chain: the hop that closed first has the full report;
    // the chain's other sockets, printed after it, one line each.
    if let Some(c) = &r.chain
        && let (Some(root), Some(hop)) = (c.root, c.hop)
        && root.sk != r.sk
        && (d.cause.is_some() || root.hop == hop)
    {
        if let (Some(fix), Some(_)) = (&d.fix, &d.cause) {
            let _ = writeln!(out, "  {} {}", p.bold("fix:     "), esc(fix));
        }
        let _ = writeln!(out, "  chain:    {}", esc(&chain_line(r, c)));
        return out;
    }
    if let Some(fix) = &d.fix {
        let _ = writeln!(out, "  {} {}", p.bold("fix:     "), esc(fix));
    }
    for a in &d.also {
        let _ = writeln!(out, "  also:     {}: {}", a.code, esc(&a.message));
        if let Some(fix) = &a.fix {
            let _ = writeln!(out, "  also fix: {}", esc(fix));
        }
    }
    if let Some(k) = r.kernel_close {
        let _ = writeln!(
            out,
            "  kernel:   {} ({}): no process here closed it",
            k.reason(),
            k.error_name()
        );
    }
    if let Some(front) = &d.front {
        let _ = writeln!(out, "  front:    {}", esc(&front.describe()));
    }
    if let Some(c) = &r.chain {
        let _ = writeln!(out, "  chain:    {}", esc(&chain_line(r, c)));
    }
    match &r.closer {
        Some(c) => {
            let _ = writeln!(
                out,
                "  closer:   pid {} tid {} ({}) {}{}",
                c.pid,
                c.tid,
                esc(&c.comm),
                esc(v.exe.as_deref().unwrap_or("[exe unknown]")),
                if c.at_exit {
                    " — at process exit"
                } else {
                    ""
                }
            );
        }
        None => {
            let _ = writeln!(
                out,
                "  closer:   {}",
                p.dim("no local process closed it (yet)")
            );
        }
    }
    let _ = writeln!(
        out,
        "  upgraded: by pid {} ({}); after the 101: sent {} B, received {} B",
        r.upgrader.pid,
        esc(&r.upgrader.comm),
        r.bytes_sent_after_upgrade,
        r.bytes_received_after_upgrade
    );
    if let Some(tls) = r.tls {
        let calls = if tls == "go" {
            "crypto/tls (*Conn).Write/Read"
        } else {
            "SSL_write/SSL_read"
        };
        let _ = writeln!(
            out,
            "  tls:      {tls}: the 101 and the request were read from its {calls} (uprobes); bytes count TLS records"
        );
    }
    if let Some(cmd) = &v.process.cmdline {
        let container = match (&v.process.container, &v.process.container_id) {
            (None, Some(id)) => format!(" [container {}]", esc(id.get(..12).unwrap_or(id))),
            _ => String::new(),
        };
        let _ = writeln!(out, "  command:  {}{container}", esc(cmd));
    }
    if let Some(c) = &v.process.container {
        let _ = writeln!(out, "  container: {}", esc(&container_line(c)));
    }
    if let Some(peer) = &v.peer {
        let how = match peer.source {
            PeerSource::Kernel => "named by the kernel: it wrote the request",
            PeerSource::SocketTable => "found in the socket table at the 101",
        };
        let _ = writeln!(
            out,
            "  peer:     pid {} ({}) at {} [{how}]",
            peer.pid,
            esc(&peer.comm),
            r.remote
        );
    }
    if let Some(h) = &v.request {
        let mut line = format!("{} {} {}", h.method, h.target, h.version.as_str());
        for name in [
            "Connection",
            "Upgrade",
            "Host",
            "X-Forwarded-For",
            "User-Agent",
        ] {
            if let Some(value) = h.header(name) {
                let _ = write!(line, "; {name}: {value}");
            }
        }
        if !h.complete {
            line.push_str(" [head cut short]");
        }
        let _ = writeln!(out, "  request:  {}", esc(&line));
    }
    for (dir, f) in &v.frames {
        let code = f
            .code
            .map(|c| format!("{c} ({})", close_code_meaning(c)))
            .unwrap_or_else(|| "no code".into());
        // Quoted as Rust does (`\"`, `\n`), then escaped: Debug leaves some
        // format characters (bidi controls among them) as they are.
        let reason = if f.reason.is_empty() {
            String::new()
        } else {
            format!(" {}", esc(&format!("{:?}", f.reason)))
        };
        let _ = writeln!(out, "  frame:    close {} {code}{reason}", dir.as_str());
    }
    if let Some(line) = heartbeat_line(&r.heartbeat) {
        let _ = writeln!(out, "  pings:    {line}");
    }
    if let Some(idle) = v.idle_ms {
        let _ = writeln!(
            out,
            "  idle:     {:.3} s without data before the close",
            idle as f64 / 1000.0
        );
    }
    for n in &r.notes {
        let _ = writeln!(out, "  note:     {}", esc(n));
    }
    if r.closer.is_some() {
        let unavailable = |what: &str, errno: Option<i64>| {
            errno.map(|e| vec![format!("[{what} stack unavailable: errno {e}]")])
        };
        let kernel = unavailable("kernel", v.kernel_stack_errno)
            .unwrap_or_else(|| v.kernel_stack.iter().map(frame::line).collect());
        stack(&mut out, &p, "kernel stack", &kernel);
        let how = v.user_walk.describe();
        let title = if how.is_empty() {
            "user stack".to_string()
        } else {
            format!("user stack ({})", esc(&how))
        };
        if let Some(lines) = unavailable("user", v.user_stack_errno) {
            stack(&mut out, &p, &title, &lines);
        } else if full_stacks {
            let lines: Vec<String> = v.user_stack.iter().map(frame::line).collect();
            stack(&mut out, &p, &title, &lines);
        } else {
            let lines = compact_stack(&v.user_stack);
            let title = if lines.len() < v.user_stack.len() {
                format!("{title}; --full-stacks for every frame")
            } else {
                title
            };
            stack(&mut out, &p, &title, &lines);
        }
    }
    if let Some(c) = &v.crash {
        let title = format!(
            "where it crashed (tid {}, {}; the user stack at the signal)",
            c.tid,
            signal_name(c.signal)
        );
        let lines: Vec<String> = if full_stacks {
            c.stack.iter().map(frame::line).collect()
        } else {
            compact_stack(&c.stack)
        };
        stack(&mut out, &p, &title, &lines);
    }
    out
}

/// `server sent 5, 2 pongs back, the last 3 unanswered; client sent none`,
/// or None when neither end pinged nor ponged (most connections).
/// One story per chain: `client ⇄ proxy (pid) :port ⇄ server (pid) :port`,
/// this socket's hop marked, and which hop closed first.
fn chain_line(r: &crate::model::CloseReport, c: &crate::model::Chain) -> String {
    use crate::model::LinkedBy;
    if c.linked_by == LinkedBy::Ambiguous {
        return format!(
            "{} ambiguous: this handshake was seen on unrelated connections (a reused Sec-WebSocket-Key or a forged Accept); nothing linked",
            c.id
        );
    }
    let Some(hop) = c.hop else {
        return c.id.clone();
    };
    // This hop, as its neighbours would name it.
    let (server, client) = match r.side {
        Side::Server => (r.local, r.remote),
        Side::Client => (r.remote, r.local),
    };
    let mut parts = Vec::new();
    let name = |h: &crate::model::HopRef| match (&h.comm, h.pid) {
        (Some(comm), Some(pid)) => format!("{comm} ({pid}) :{}", h.server.port()),
        _ => h.server.to_string(),
    };
    match &c.downstream {
        Some(d) => {
            if d.hop == 0 {
                parts.push(format!("client {}", d.client));
            } else {
                parts.push(format!("… {}", d.client));
            }
            parts.push(name(d));
        }
        None => parts.push(format!("client {client}")),
    }
    let here = match (r.side, c.upstream.is_some() || c.downstream.is_some()) {
        (Side::Server, _) => format!(
            "[{} ({}) :{}]",
            r.upgrader.comm,
            r.upgrader.pid,
            server.port()
        ),
        (Side::Client, _) => format!("[{server}]"),
    };
    parts.push(here);
    if let Some(u) = &c.upstream {
        parts.push(name(u));
    }
    let first = match c.root {
        Some(root) if root.hop == hop => " — this hop closed first".to_string(),
        Some(root) => format!(" — hop {} closed first", root.hop),
        None => String::new(),
    };
    format!(
        "{} hop {}/{} (linked by {}): {}{first}",
        c.id,
        hop,
        c.hops.unwrap_or(1),
        c.linked_by.as_str(),
        parts.join(" ⇄ ")
    )
}

fn heartbeat_line(h: &Heartbeat) -> Option<String> {
    if *h == Heartbeat::default() {
        return None;
    }
    let side = |who: &str, p: &Pings| {
        if p.pings == 0 && p.pongs == 0 {
            return format!("{who} sent none");
        }
        let mut s = format!(
            "{who} sent {}, {} pong{} back",
            p.pings,
            p.pongs,
            plural(p.pongs)
        );
        if p.unanswered > 0 {
            let _ = write!(s, ", the last {} unanswered", p.unanswered);
        }
        s
    };
    Some(format!(
        "{}; {}",
        side("server", &h.local),
        side("client", &h.peer)
    ))
}

/// `web-1 (image nginx:1.25, podman 3f4e2c1b0a9d); pod shop/web-7d9f container web`.
pub fn container_line(c: &crate::model::Container) -> String {
    let mut s = c.name.clone().unwrap_or_else(|| "[name unknown]".into());
    let mut inner = Vec::new();
    if let Some(image) = &c.image {
        inner.push(format!("image {image}"));
    }
    inner.push(format!(
        "{}{}",
        c.runtime.map(|r| format!("{r} ")).unwrap_or_default(),
        c.id.get(..12).unwrap_or(&c.id)
    ));
    s.push_str(&format!(" ({})", inner.join(", ")));
    if c.pod_name.is_some() || c.pod_uid.is_some() {
        s.push_str(&format!(
            "; pod {}/{}",
            c.namespace.as_deref().unwrap_or("?"),
            c.pod_name
                .as_deref()
                .or(c.pod_uid.as_deref())
                .unwrap_or("?")
        ));
        if let Some(k) = &c.k8s_container {
            s.push_str(&format!(" container {k}"));
        }
    }
    s
}

fn plural(n: u32) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn stack(out: &mut String, p: &Paint, title: &str, frames: &[String]) {
    let _ = writeln!(out, "  {}:", p.dim(title));
    if frames.is_empty() {
        let _ = writeln!(out, "    [none]");
    }
    for f in frames {
        let _ = writeln!(out, "    {}", esc(f));
    }
}

/// Runtime frames in a row fold into one line from this many on.
const FOLD_RUN: usize = 3;

/// The runtime a frame belongs to, by its function, source file or module:
/// the frames a reader skips to find the program's own. Unknown frames
/// belong to none.
fn runtime_of(l: &Frame) -> Option<&'static str> {
    let module = l.module.as_deref().map(basename).unwrap_or("");
    let Some(f) = l.function.as_deref() else {
        // The interpreter's stripped internals: its runtime all the same.
        return interp_runtime(module);
    };
    let file = l.file.as_deref().unwrap_or("");
    if frame::go_runtime(l) {
        Some("go")
    } else if f.starts_with("tokio::") || f.starts_with("<tokio::") || file.contains("/tokio-") {
        Some("tokio")
    } else if [
        "std::", "core::", "alloc::", "<std::", "<core::", "<alloc::", "__rust",
    ]
    .iter()
    .any(|p| f.starts_with(p))
        || file.starts_with("/rustc/")
        || file.starts_with("/usr/include/c++/")
        || f.starts_with("__gnu_cxx::")
        || module.starts_with("libstdc++")
    {
        Some("std")
    } else if let Some(r) = interp_runtime(module) {
        Some(r)
    } else if l.kind == crate::model::FrameKind::Interpreted && file.starts_with("/usr/lib/python3")
    {
        // The standard library's Python frames.
        Some("python")
    } else if l.language == Some(crate::model::Language::JavaScript) && file.starts_with("node:") {
        // node's own JavaScript (`node:net`, `node:internal/timers`).
        Some("node")
    } else if ["libc.so", "libc-", "ld-linux", "libpthread"]
        .iter()
        .any(|p| module.starts_with(p))
        // The C runtime's entry points, linked into the program itself.
        || ["_start", "__libc_start_main", "start_thread", "clone", "clone3"].contains(&f)
    {
        Some("libc")
    } else {
        None
    }
}

/// PHP's and CPython's own native code, by module: with the script's
/// frames named in place of the interpreter loop, the rest is the runtime's.
fn interp_runtime(module: &str) -> Option<&'static str> {
    if module.starts_with("php8.") || module.starts_with("libphp") {
        Some("php")
    } else if module.starts_with("python3.") || module.starts_with("libpython3.") {
        Some("python")
    } else if module == "node" || module == "nodejs" || module.starts_with("libnode.so") {
        // node's C++, libuv and V8 (with its JavaScript frames named).
        Some("node")
    } else {
        None
    }
}

/// One line of a compact user stack: a frame, or a run of runtime frames
/// folded into one.
#[derive(Clone, Debug, PartialEq)]
pub enum Piece {
    Frame(Frame),
    /// `len` frames of the runtimes named (`std/tokio`), in a row.
    Run {
        len: usize,
        runtimes: String,
    },
}

impl Piece {
    /// A run's text: `… 12 frames in std/tokio`.
    pub fn run_text(len: usize, runtimes: &str) -> String {
        format!("… {len} frames in {runtimes}")
    }
}

/// A user stack (innermost first) as a reader wants it: the innermost
/// frame always; runs of [`FOLD_RUN`] or more runtime frames as one
/// [`Piece::Run`]; with interpreter frames named, without the interpreter
/// loop frames that ran them. The text stack and the report's flame graph
/// both show this.
pub fn pieces(frames: &[Frame]) -> Vec<Piece> {
    // With Python frames named, the interpreter loop frame that ran them
    // says nothing more.
    let owned: Vec<Frame>;
    let frames = if frames
        .iter()
        .any(|f| f.kind == crate::model::FrameKind::Interpreted)
    {
        owned = frames
            .iter()
            .filter(|f| !f.is_python_eval_loop() && !f.is_php_exec_loop())
            .cloned()
            .collect();
        &owned[..]
    } else {
        frames
    };
    let runtime: Vec<Option<&'static str>> = frames
        .iter()
        .enumerate()
        .map(|(i, f)| if i == 0 { None } else { runtime_of(f) })
        .collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < frames.len() {
        let run = runtime[i..].iter().take_while(|r| r.is_some()).count();
        if run >= FOLD_RUN {
            let mut names: Vec<&str> = Vec::new();
            for r in runtime[i..i + run].iter().flatten() {
                if !names.contains(r) {
                    names.push(r);
                }
            }
            out.push(Piece::Run {
                len: run,
                runtimes: names.join("/"),
            });
            i += run;
            continue;
        }
        out.push(Piece::Frame(frames[i].clone()));
        i += 1;
    }
    out
}

/// The default user stack: each frame as its function, `[inlined]` and
/// `file.rs:line` (the module's name when there is no line), folded as
/// [`pieces`] says (`… 12 frames in std/tokio`). Unknown frames as their
/// whole line. Unescaped: the caller escapes.
pub fn compact_stack(frames: &[Frame]) -> Vec<String> {
    pieces(frames)
        .iter()
        .map(|p| match p {
            Piece::Frame(f) => frame::compact(f),
            Piece::Run { len, runtimes } => Piece::run_text(*len, runtimes),
        })
        .collect()
}

/// A folded storm (`fold`): one header naming the closer and the count,
/// the first and last connection, then the first connection's report, whose
/// stacks stand for all (they share the closer, the cause and the moment).
pub fn render_storm(s: &Storm, color: bool) -> String {
    let p = Paint(color);
    let mut out = String::new();
    let who = match &s.closer {
        Some(c) => format!("{}: ", esc(c)),
        None => String::new(),
    };
    let side = match s.closed_by {
        ClosedBy::Local => p.red("closed by LOCAL"),
        ClosedBy::Peer => p.yellow("closed by PEER"),
        ClosedBy::Kernel => p.yellow("closed by KERNEL"),
    };
    let _ = writeln!(
        out,
        "{} {} {who}{} upgraded connections {side} ({}){} within {:.3} ms [{}]",
        s.first.ts,
        p.bold("CLOSES"),
        s.count,
        s.how.as_str().to_uppercase(),
        if s.at_exit { " at its exit," } else { "," },
        s.span_ms,
        s.probe,
    );
    for (name, c) in [("first:   ", &s.first), ("last:    ", &s.last)] {
        let _ = writeln!(
            out,
            "  {name} {} <-> {} at {}, {:.3} ms after 101",
            c.local, c.remote, c.ts, c.ms_after_upgrade
        );
    }
    let codes: Vec<String> = s.codes.iter().map(|(c, n)| format!("{c} ×{n}")).collect();
    let _ = writeln!(
        out,
        "  why:      {} (the first connection's diagnosis in full below)",
        codes.join(", ")
    );
    let _ = writeln!(
        out,
        "  lived:    {:.3} to {:.3} ms after their 101; after it, in all: sent {} B, received {} B",
        s.min_ms_after_upgrade, s.max_ms_after_upgrade, s.bytes_sent, s.bytes_received
    );
    let _ = writeln!(
        out,
        "  {}",
        p.dim(&format!(
            "{} reports folded into this one: --format json and --output have one per connection, --no-fold prints each",
            s.count
        ))
    );
    let _ = writeln!(out, "  the first connection:");
    for l in s.first_text.lines() {
        let _ = writeln!(out, "    {l}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FrameKind, How};
    use crate::output::fold::Conn;

    /// A user frame: `inlined` ones have no offset.
    fn uf(function: &str, module: &str, file: Option<(&str, u32)>, inlined: bool) -> Frame {
        Frame {
            function: Some(function.into()),
            offset: (!inlined).then_some(0x10),
            module: Some(module.into()),
            file: file.map(|(f, _)| f.into()),
            line: file.map(|(_, l)| l),
            inlined,
            address: Some(0x1000),
            ..Frame::default()
        }
    }

    /// A node close with its JavaScript frames named (enrich/node.rs):
    /// node's C++ and its own `node:` scripts fold, the program's and its
    /// packages' JavaScript stays.
    #[test]
    fn node_stacks_keep_the_javascript_and_fold_node() {
        let node = "/usr/bin/node";
        let js = |f: &str, file: &str, line: u32| Frame {
            function: Some(f.into()),
            file: Some(file.into()),
            line: Some(line),
            kind: FrameKind::Interpreted,
            language: Some(crate::model::Language::JavaScript),
            address: Some(0x2000),
            ..Frame::default()
        };
        let frames = vec![
            uf("uv_close", node, None, false),
            uf("node::HandleWrap::Close", node, None, false),
            uf(
                "Builtins_CEntry_Return1_ArgvOnStack_BuiltinExit",
                node,
                None,
                false,
            ),
            js("_destroy", "node:net", 800),
            js("destroy", "node:internal/streams/destroy", 40),
            js("terminate", "/srv/node_modules/ws/lib/websocket.js", 470),
            js("reapDeadClients", "/srv/server.js", 8),
            uf("Builtins_JSEntry", node, None, false),
            uf("node::Environment::RunTimers", node, None, false),
            uf("uv_run", node, None, false),
        ];
        let c = compact_stack(&frames);
        assert_eq!(
            c,
            [
                "uv_close  (node)",
                "… 4 frames in node",
                "terminate  websocket.js:470",
                "reapDeadClients  server.js:8",
                "… 3 frames in node",
            ]
            .map(str::to_string)
        );
    }

    /// What a gorilla/websocket server's close looks like (tests/gotls.rs).
    #[test]
    fn go_stacks_keep_the_programs_goroutine_frames_and_fold_go_runtime() {
        let go = |f: &str, file: &str| Frame {
            language: Some(crate::model::Language::Go),
            ..uf(f, "/srv/app", Some((file, 10)), false)
        };
        let frames = vec![
            uf(
                "runtime/internal/syscall.Syscall6",
                "/srv/app",
                Some((
                    "/usr/lib/go-1.19/src/runtime/internal/syscall/asm_linux_amd64.s",
                    36,
                )),
                false,
            ),
            go(
                "syscall.Syscall",
                "/usr/lib/go/src/syscall/syscall_linux.go",
            ),
            go(
                "syscall.Close",
                "/usr/lib/go/src/syscall/zsyscall_linux_amd64.go",
            ),
            go(
                "internal/poll.(*FD).Close",
                "/usr/lib/go/src/internal/poll/fd_unix.go",
            ),
            go("net.(*conn).Close", "/usr/lib/go/src/net/net.go"),
            go(
                "crypto/tls.(*Conn).Close",
                "/usr/lib/go/src/crypto/tls/conn.go",
            ),
            go(
                "github.com/gorilla/websocket.(*Conn).Close",
                "/usr/share/gocode/src/github.com/gorilla/websocket/conn.go",
            ),
            go("main.(*hub).drop", "/srv/main.go"),
            go(
                "net/http.serverHandler.ServeHTTP",
                "/usr/lib/go/src/net/http/server.go",
            ),
            go(
                "net/http.(*conn).serve",
                "/usr/lib/go/src/net/http/server.go",
            ),
            uf(
                "runtime.goexit",
                "/srv/app",
                Some(("/usr/lib/go/src/runtime/asm_amd64.s", 1594)),
                false,
            ),
        ];
        let got = compact_stack(&frames);
        assert_eq!(
            got,
            vec![
                "runtime/internal/syscall.Syscall6  asm_linux_amd64.s:36",
                "… 5 frames in go",
                "github.com/gorilla/websocket.(*Conn).Close  conn.go:10",
                "main.(*hub).drop  main.go:10",
                "… 3 frames in go",
            ],
            "{got:#?}"
        );
        // Without debug info nothing says a frame is Go: a C function with
        // a dot (`close.cold`) is never taken for a package.
        let mut c = go("net.(*conn).Close", "/x/net.go");
        c.language = None;
        assert!(!frame::go_runtime(&c));
    }

    #[test]
    fn compact_stacks_keep_the_programs_frames_and_fold_runtime_runs() {
        let bin = "/srv/app";
        let libc = "/usr/lib/x86_64-linux-gnu/libc.so.6";
        let std = |f: &str| {
            uf(
                f,
                bin,
                Some(("/rustc/5980761/library/core/src/ptr/mod.rs", 805)),
                true,
            )
        };
        let mut frames = vec![uf(
            "__GI___close",
            libc,
            Some(("./io/../sysdeps/unix/sysv/linux/close.c", 27)),
            false,
        )];
        for f in [
            "core::ptr::drop_in_place<A>",
            "core::ptr::drop_in_place<B>",
            "<std::os::fd::owned::OwnedFd as core::ops::drop::Drop>::drop",
        ] {
            frames.push(std(f));
        }
        frames.push(uf(
            "app::handle",
            bin,
            Some(("/srv/app/src/demo.rs", 107)),
            false,
        ));
        frames.push(uf(
            "app::serve::{{closure}}",
            bin,
            Some(("/srv/app/src/demo.rs", 67)),
            true,
        ));
        frames.push(std("std::sys::backtrace::__rust_begin_short_backtrace"));
        frames.push(uf(
            "tokio::runtime::task::harness::poll",
            bin,
            Some((
                "/root/.cargo/registry/src/x/tokio-1.40.0/src/runtime/task/harness.rs",
                3,
            )),
            false,
        ));
        frames.push(uf(
            "start_thread",
            libc,
            Some(("./nptl/pthread_create.c", 442)),
            false,
        ));
        frames.push(Frame::unknown(FrameKind::Native, 0x1234, Some(bin)));
        frames.push(uf("main", bin, None, false));
        let c = compact_stack(&frames);
        assert_eq!(
            c,
            [
                "__GI___close  close.c:27",
                "… 3 frames in std",
                "app::handle  demo.rs:107",
                "app::serve::{{closure}} [inlined]  demo.rs:67",
                "… 3 frames in std/tokio/libc",
                "[unknown] 0x1234 (/srv/app)",
                "main  (app)",
            ]
            .map(str::to_string)
        );
        // Two runtime frames in a row are shown, not folded.
        let short = compact_stack(&frames[..3]);
        assert_eq!(short.len(), 3, "{short:?}");
        assert!(short[1].starts_with("core::ptr::drop_in_place<A> [inlined]  mod.rs:805"));
    }

    #[test]
    fn a_storm_is_one_header_with_the_count_both_ends_and_the_first_report() {
        let conn = |port: u16, ts: &str| Conn {
            local: "127.0.0.1:8080".into(),
            remote: format!("127.0.0.1:{port}"),
            ts: ts.into(),
            ms_after_upgrade: 12.5,
        };
        let s = Storm {
            closer: Some("php\u{1b}[2J (pid 4242)".into()),
            at_exit: true,
            closed_by: ClosedBy::Local,
            how: How::Fin,
            probe: "tracepoint",
            count: 4000,
            first: conn(20000, "2026-11-30T17:00:00.000001Z"),
            last: conn(23999, "2026-11-30T17:00:00.040001Z"),
            span_ms: 40.0,
            min_ms_after_upgrade: 1.0,
            max_ms_after_upgrade: 900.0,
            bytes_sent: 10,
            bytes_received: 20,
            codes: vec![("unknown", 3999), ("idle_timeout", 1)],
            first_text: "2026-11-30T17:00:00.000001Z CLOSE ...\n  kernel stack:\n    do_exit+0x1\n"
                .into(),
        };
        let out = render_storm(&s, false);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "2026-11-30T17:00:00.000001Z CLOSES php\\x1b[2J (pid 4242): 4000 upgraded connections closed by LOCAL (FIN) at its exit, within 40.000 ms [tracepoint]"
        );
        assert_eq!(
            lines[1],
            "  first:    127.0.0.1:8080 <-> 127.0.0.1:20000 at 2026-11-30T17:00:00.000001Z, 12.500 ms after 101"
        );
        assert!(lines[2].starts_with("  last:     127.0.0.1:8080 <-> 127.0.0.1:23999"));
        assert!(out.contains("sent 10 B, received 20 B"), "{out}");
        assert!(
            out.contains("  why:      unknown ×3999, idle_timeout ×1 ("),
            "{out}"
        );
        assert!(out.contains("--no-fold"), "{out}");
        // The first report, indented under the summary: only the header
        // line starts at column 0.
        assert_eq!(lines.iter().filter(|l| !l.starts_with(' ')).count(), 1);
        assert!(out.contains("\n        do_exit+0x1\n"), "{out}");
        let no_closer = Storm {
            closer: None,
            at_exit: false,
            closed_by: ClosedBy::Peer,
            how: How::Rst,
            ..s
        };
        assert!(
            render_storm(&no_closer, false)
                .contains(" CLOSES 4000 upgraded connections closed by PEER (RST), within")
        );
    }
}
