//! Frames as text: the one place a [`Frame`] becomes a line. The text
//! output, the folded storm and `wstrace report` print what is made here;
//! nothing reads these lines back (JSON has the frame's fields).
//!
//! Forms (unescaped: callers escape for their medium):
//! - kernel: `tcp_close+0x1f`, or `[unknown] 0xffffffff81234567`;
//! - user: `func+0x1f (/usr/lib/x86_64-linux-gnu/libc.so.6) at src/x.rs:12`,
//!   an inlined callee as `callee [inlined] (module) at file:line`, an
//!   unknown one as `[unknown] 0x7f12345678 (module)`, or with why it was
//!   not looked up: `[unknown] 0x7f… (symbolization timed out: module)`.
use std::fmt::Write as _;

use crate::model::{Frame, Language};

/// The frame's whole line, as `--full-stacks` and JSON readers know it.
pub fn line(f: &Frame) -> String {
    let mut s = name(f, true);
    push_module(&mut s, f);
    push_location(&mut s, f);
    s
}

/// The frame without its offset or source line (`close (/lib/libc.so.6)`):
/// the same call path groups across builds and lines.
pub fn key(f: &Frame) -> String {
    let mut s = name(f, false);
    push_module(&mut s, f);
    s
}

/// `func+0x1f`, `func [inlined]`, or `[unknown] 0x…`.
fn name(f: &Frame, with_offset: bool) -> String {
    let mut s = label(f);
    if f.function.is_some() {
        if f.inlined {
            s.push_str(" [inlined]");
        } else if let (true, Some(off)) = (with_offset, f.offset) {
            let _ = write!(s, "+{off:#x}");
        }
    }
    s
}

/// The function's name, or `[unknown] 0x…` (`[unknown]` without an
/// address): a frame's label in the flame graph.
pub fn label(f: &Frame) -> String {
    match (&f.function, f.address) {
        (Some(function), _) => function.clone(),
        (None, Some(a)) => format!("[unknown] {a:#x}"),
        (None, None) => "[unknown]".to_string(),
    }
}

/// What follows the name in parentheses: `module`, `why: module` or `why`.
pub fn module_text(f: &Frame) -> Option<String> {
    match (f.unresolved, &f.module) {
        (Some(why), Some(m)) => Some(format!("{}: {m}", why.as_str())),
        (Some(why), None) => Some(why.as_str().to_string()),
        (None, Some(m)) => Some(m.clone()),
        (None, None) => None,
    }
}

/// `file:line`, `file` without a line; `None` without a file.
pub fn location(f: &Frame) -> Option<String> {
    match (&f.file, f.line) {
        (Some(file), Some(line)) if !file.is_empty() => Some(format!("{file}:{line}")),
        (Some(file), None) if !file.is_empty() => Some(file.clone()),
        _ => None,
    }
}

fn push_module(s: &mut String, f: &Frame) {
    if let Some(m) = module_text(f) {
        let _ = write!(s, " ({m})");
    }
}

fn push_location(s: &mut String, f: &Frame) {
    if let Some(l) = location(f) {
        let _ = write!(s, " at {l}");
    }
}

/// The frame as the compact user stack shows it: its function,
/// `[inlined]`, and `file.rs:line` (the module's name when there is no
/// line); an unknown frame as its whole line.
pub fn compact(f: &Frame) -> String {
    let Some(function) = &f.function else {
        return line(f);
    };
    let inlined = if f.inlined { " [inlined]" } else { "" };
    match (
        f.file.as_deref().filter(|x| !x.is_empty()),
        f.line,
        &f.module,
    ) {
        (Some(file), Some(n), _) => format!("{function}{inlined}  {}:{n}", basename(file)),
        (Some(file), None, _) => format!("{function}{inlined}  {}", basename(file)),
        (None, _, Some(m)) => format!("{function}{inlined}  ({})", basename(m)),
        (None, _, None) => format!("{function}{inlined}"),
    }
}

pub fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Is this a frame of Go's runtime or standard library (`runtime.goexit`,
/// `net/http.(*conn).serve`, `internal/poll.(*FD).Close`), which a reader
/// skips to find the program's own (`main.(*hub).drop`, a
/// `github.com/...` package)? Go frames are known by their language (from
/// the debug info); the runtime's assembly (`asm_amd64.s`) by its package.
/// A standard package's import path has no dot in its first element.
pub fn go_runtime(f: &Frame) -> bool {
    let Some(name) = f.function.as_deref() else {
        return false;
    };
    // The package path ends at the first '.' after its last '/'.
    let slash = name.rfind('/').map_or(0, |i| i + 1);
    let Some(dot) = name[slash..].find('.') else {
        return false;
    };
    let path = &name[..slash + dot];
    let first = path.split('/').next().unwrap_or(path);
    let std = !first.contains('.') && path != "main";
    match f.language {
        Some(Language::Go) => std,
        _ => {
            (path == "runtime" || path.starts_with("runtime/"))
                && f.file.as_deref().is_some_and(|p| p.ends_with(".s"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FrameKind, Unresolved};

    fn named(function: &str, offset: u64) -> Frame {
        Frame {
            function: Some(function.into()),
            offset: Some(offset),
            address: Some(0x1000),
            ..Frame::default()
        }
    }

    #[test]
    fn kernel_frames() {
        let mut f = named("tcp_close", 0x1f);
        f.kind = FrameKind::Kernel;
        assert_eq!(line(&f), "tcp_close+0x1f");
        assert_eq!(line(&named("tcp_close", 0)), "tcp_close+0x0");
        f.file = Some("net/ipv4/tcp.c".into());
        f.line = Some(3000);
        assert_eq!(line(&f), "tcp_close+0x1f at net/ipv4/tcp.c:3000");
        let u = Frame::unknown(FrameKind::Kernel, 0xffffffff81234567, None);
        assert_eq!(line(&u), "[unknown] 0xffffffff81234567");
        assert_eq!(
            line(&Frame::unknown(FrameKind::Kernel, 0, None)),
            "[unknown] 0x0"
        );
    }

    #[test]
    fn user_frames_with_module_and_line() {
        let mut f = named("close", 0x1f);
        f.module = Some("/usr/lib/x86_64-linux-gnu/libc.so.6".into());
        assert_eq!(line(&f), "close+0x1f (/usr/lib/x86_64-linux-gnu/libc.so.6)");
        f.module = Some("/srv/app".into());
        f.file = Some("/src/server/src/main.rs".into());
        f.line = Some(123);
        assert_eq!(
            line(&f),
            "close+0x1f (/srv/app) at /src/server/src/main.rs:123"
        );
        assert_eq!(key(&f), "close (/srv/app)");
        assert_eq!(location(&f).as_deref(), Some("/src/server/src/main.rs:123"));
        assert_eq!(compact(&f), "close  main.rs:123");
        f.module = None;
        f.line = None;
        f.file = Some("main.rs".into());
        assert_eq!(line(&f), "close+0x1f at main.rs");
        f.file = Some(String::new());
        f.line = Some(7);
        assert_eq!(line(&f), "close+0x1f");
    }

    #[test]
    fn inlined_and_unknown_frames() {
        let mut f = named("app::inner", 0);
        f.offset = None;
        f.inlined = true;
        f.module = Some("/srv/app".into());
        f.file = Some("src/inner.rs".into());
        f.line = Some(30);
        assert_eq!(
            line(&f),
            "app::inner [inlined] (/srv/app) at src/inner.rs:30"
        );
        assert_eq!(key(&f), "app::inner [inlined] (/srv/app)");
        assert_eq!(compact(&f), "app::inner [inlined]  inner.rs:30");
        let u = Frame::unknown(
            FrameKind::Native,
            0x7f1234567890,
            Some("/usr/lib/libfoo.so (deleted)"),
        );
        assert_eq!(
            line(&u),
            "[unknown] 0x7f1234567890 (/usr/lib/libfoo.so (deleted))"
        );
        assert_eq!(compact(&u), line(&u));
        let mut t = Frame::unknown(FrameKind::Native, 0x55, Some("/bin/x"));
        t.unresolved = Some(Unresolved::TimedOut);
        assert_eq!(line(&t), "[unknown] 0x55 (symbolization timed out: /bin/x)");
        t.module = None;
        t.unresolved = Some(Unresolved::Unavailable);
        assert_eq!(line(&t), "[unknown] 0x55 (symbolization unavailable)");
    }

    #[test]
    fn names_with_parentheses_and_spaces_are_printed_verbatim() {
        let mut f = named("ws::conn::finish(int, bool) [clone .cold]", 0x13);
        f.module = Some("/tmp/cold/cold close".into());
        assert_eq!(
            line(&f),
            "ws::conn::finish(int, bool) [clone .cold]+0x13 (/tmp/cold/cold close)"
        );
        assert_eq!(
            key(&f),
            "ws::conn::finish(int, bool) [clone .cold] (/tmp/cold/cold close)"
        );
        assert_eq!(
            compact(&f),
            "ws::conn::finish(int, bool) [clone .cold]  (cold close)"
        );
    }

    #[test]
    fn a_frame_with_nothing_known_is_unknown() {
        assert_eq!(line(&Frame::default()), "[unknown]");
    }
}
