//! Stacks read back from a log: `kernel_stack` / `user_stack` as arrays of
//! frame objects (`model::Frame`, what wstrace writes), or as arrays of
//! strings (logs written before frames were objects).
//!
//! An old string frame is taken apart once here, into the fields the report
//! groups by (function without its offset, module, source line); nothing
//! else in the report reads frame text.
use serde::Deserialize as _;
use serde_json::Value;

use crate::model::{Frame, FrameKind};

/// Frames kept per stack read from a log: the daemon writes at most a few
/// hundred; a hostile or corrupt line gets no more.
const MAX_FRAMES: usize = 512;

/// The stack under `key` of a report line, innermost first; empty when
/// absent or not an array. `kind` is what an old string frame was (it
/// carried none); a frame object that does not read as one is an unknown
/// frame, so the stack keeps its depth.
pub fn stack(v: &Value, key: &str, kind: FrameKind) -> Vec<Frame> {
    let Some(frames) = v.get(key).and_then(Value::as_array) else {
        return Vec::new();
    };
    frames
        .iter()
        .take(MAX_FRAMES)
        .filter_map(|f| match f {
            Value::String(text) => Some(legacy(text, kind)),
            Value::Object(_) => Some(Frame::deserialize(f).unwrap_or(Frame {
                kind,
                ..Frame::default()
            })),
            _ => None,
        })
        .collect()
}

/// A frame as old logs wrote it:
/// `name[+0x1f][ [inlined]][ (module)][ at file[:line]]`. Read from the
/// right: the module is the last parenthesised group (balanced, so
/// `f(std::function<void (int)>)` keeps its own parentheses). Anything
/// else (`[unknown] 0x…`, `[kernel stack unavailable: …]`) stays whole in
/// `function`, which is how it is printed again.
pub fn legacy(text: &str, kind: FrameKind) -> Frame {
    let mut s = text;
    let mut location = None;
    if let Some(i) = s.rfind(") at ") {
        location = Some(&s[i + 5..]);
        s = &s[..=i];
    } else if let Some(i) = s.rfind(" at ")
        && !s[..i].ends_with(')')
        && !s.starts_with('[')
    {
        location = Some(&s[i + 4..]);
        s = &s[..i];
    }
    let mut module = None;
    if s.ends_with(')') {
        let mut depth = 0i32;
        for (i, c) in s.char_indices().rev() {
            match c {
                ')' => depth += 1,
                '(' => {
                    depth -= 1;
                    if depth == 0 {
                        if s[..i].ends_with(' ') {
                            module = Some(&s[i + 1..s.len() - 1]);
                            s = &s[..i - 1];
                        }
                        break;
                    }
                }
                _ => {}
            }
        }
    }
    let (inlined, s) = match s.strip_suffix(" [inlined]") {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (function, offset) = match s.rfind("+0x") {
        Some(i) if !s.starts_with('[') => match u64::from_str_radix(&s[i + 3..], 16) {
            Ok(off) => (&s[..i], Some(off)),
            Err(_) => (s, None),
        },
        _ => (s, None),
    };
    let (file, line) = match location.map(|l| (l, l.rsplit_once(':'))) {
        Some((_, Some((f, n)))) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            (Some(f), n.parse().ok())
        }
        Some((l, _)) => (Some(l), None),
        None => (None, None),
    };
    Frame {
        function: Some(function.to_string()),
        offset,
        module: module.map(str::to_string),
        file: file.map(str::to_string),
        line,
        inlined,
        kind,
        ..Frame::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::frame::{key, line, location};

    fn user(text: &str) -> Frame {
        legacy(text, FrameKind::Native)
    }

    #[test]
    fn old_frames_split_into_function_module_and_line() {
        let f = user("__GI___close+0x3a (/usr/lib/libc.so.6) at ./io/close.c:27");
        assert_eq!(
            (
                f.function.as_deref(),
                f.offset,
                f.module.as_deref(),
                f.file.as_deref(),
                f.line
            ),
            (
                Some("__GI___close"),
                Some(0x3a),
                Some("/usr/lib/libc.so.6"),
                Some("./io/close.c"),
                Some(27)
            )
        );
        assert_eq!(key(&f), "__GI___close (/usr/lib/libc.so.6)");
        assert_eq!(
            line(&f),
            "__GI___close+0x3a (/usr/lib/libc.so.6) at ./io/close.c:27"
        );
        let f = user(
            "wstrace::demo::serve::{{closure}} [inlined] (/bin/w (deleted)) at src/demo.rs:60",
        );
        assert_eq!(
            f.function.as_deref(),
            Some("wstrace::demo::serve::{{closure}}")
        );
        assert_eq!(f.module.as_deref(), Some("/bin/w (deleted)"));
        assert!(f.inlined && f.offset.is_none());
        assert_eq!(
            key(&f),
            "wstrace::demo::serve::{{closure}} [inlined] (/bin/w (deleted))"
        );
        let k = legacy("tcp_close+0x1f", FrameKind::Kernel);
        assert_eq!(
            (k.function.as_deref(), k.offset, k.kind),
            (Some("tcp_close"), Some(0x1f), FrameKind::Kernel)
        );
        let f = user("f(std::function<void (int)>)+0x8 (/lib/x.so)");
        assert_eq!(f.function.as_deref(), Some("f(std::function<void (int)>)"));
        assert_eq!(f.module.as_deref(), Some("/lib/x.so"));
        let f = user("main+0x1 at main.rs");
        assert_eq!((f.file.as_deref(), f.line), (Some("main.rs"), None));
        assert_eq!(location(&f).as_deref(), Some("main.rs"));
    }

    #[test]
    fn old_non_frames_stay_whole() {
        for text in [
            "[unknown] 0x7f12 (symbolization timed out: /bin/x)",
            "[unknown] 0x1234",
            "[kernel stack unavailable: errno 14]",
            "main",
            "weird+0xzz",
        ] {
            assert_eq!(line(&user(text)), text);
        }
        assert_eq!(
            key(&user("[unknown] 0x7f12 (/bin/x)")),
            "[unknown] 0x7f12 (/bin/x)"
        );
    }

    #[test]
    fn both_shapes_read_and_hostile_ones_are_bounded() {
        let v = serde_json::json!({
            "user_stack": [
                "close+0x1 (/lib/libc.so.6)",
                {"function": "main", "offset": 16, "module": "/bin/x", "file": null, "line": null,
                 "inlined": false, "kind": "native", "language": null, "address": "0x401000",
                 "unresolved": null},
                {"function": 7},
                42
            ],
            "kernel_stack": "not an array",
        });
        let s = stack(&v, "user_stack", FrameKind::Native);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].function.as_deref(), Some("close"));
        assert_eq!(
            (s[1].function.as_deref(), s[1].address),
            (Some("main"), Some(0x401000))
        );
        assert_eq!(line(&s[2]), "[unknown]");
        assert!(stack(&v, "kernel_stack", FrameKind::Kernel).is_empty());
        assert!(stack(&v, "absent", FrameKind::Kernel).is_empty());
        let many = serde_json::json!({ "user_stack": vec!["f+0x1"; MAX_FRAMES + 10] });
        assert_eq!(
            stack(&many, "user_stack", FrameKind::Native).len(),
            MAX_FRAMES
        );
    }
}
