//! Untrusted text made safe for a terminal and for JSON readers.
//!
//! Request paths and headers come from remote clients; comm, command lines,
//! executable paths, symbol and source file names from any local process.
//! Printed raw, an ESC starts a terminal control sequence (recolour, move
//! the cursor, set the window title, OSC 52 clipboard writes), CR, BS and a
//! newline overwrite or forge report lines, and bidi controls reorder what
//! the operator reads. [`text`] shows every such character visibly and
//! leaves everything else as it is; [`JsonFormatter`] does the same for
//! JSON, where serde_json already escapes C0 but passes C1 and bidi raw.
use std::{borrow::Cow, fmt::Write as _, io};

/// Characters shown escaped: C0 controls (NUL..US, including TAB, LF, CR,
/// ESC, BS), DEL, C1 controls (U+0080..U+009F, of which U+009B is a one-byte
/// CSI on some terminals), the bidi embedding, override and isolate
/// controls, the bidi marks, and the Unicode line and paragraph separators
/// (a reader may break the line there).
pub fn is_unsafe(c: char) -> bool {
    matches!(c,
        '\u{00}'..='\u{1f}'
        | '\u{7f}'..='\u{9f}'
        | '\u{061c}'
        | '\u{200e}' | '\u{200f}'
        | '\u{2028}' | '\u{2029}'
        | '\u{202a}'..='\u{202e}'
        | '\u{2066}'..='\u{2069}')
}

/// Printable ASCII only: nothing [`is_unsafe`] in it. A byte loop the
/// compiler vectorises, where `find(is_unsafe)` decodes every char: under
/// churn (20k reports a second, ~40 strings each) the char-by-char search
/// was the daemon's largest userspace cost (12% of its samples, perf).
#[inline]
fn plain_ascii(s: &str) -> bool {
    s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// `s` with every [`is_unsafe`] character written visibly: ASCII controls
/// and DEL as `\x1b`, the others as `\u{202e}`. Borrowed (no copy) when
/// there is nothing to escape, which is nearly always.
pub fn text(s: &str) -> Cow<'_, str> {
    if plain_ascii(s) {
        return Cow::Borrowed(s);
    }
    let Some(first) = s.find(is_unsafe) else {
        return Cow::Borrowed(s);
    };
    let mut out = String::with_capacity(s.len() + 16);
    out.push_str(&s[..first]);
    for c in s[first..].chars() {
        if !is_unsafe(c) {
            out.push(c);
        } else if c.is_ascii() {
            let _ = write!(out, "\\x{:02x}", c as u32);
        } else {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
    Cow::Owned(out)
}

/// A serde_json formatter that also writes C1 controls, DEL, bidi controls
/// and the line/paragraph separators as `\uXXXX`: a log viewer or a `jq -r`
/// that prints the decoded string to a terminal still gets them raw, but the
/// JSON line itself is safe to `cat`/`tail`, and it stays valid JSON that
/// decodes to exactly the original text.
pub struct JsonFormatter;

impl serde_json::ser::Formatter for JsonFormatter {
    fn write_string_fragment<W>(&mut self, writer: &mut W, fragment: &str) -> io::Result<()>
    where
        W: ?Sized + io::Write,
    {
        // serde_json hands over the runs between the characters it escapes
        // itself (quote, backslash, C0); escape ours within each run.
        if plain_ascii(fragment) {
            return writer.write_all(fragment.as_bytes());
        }
        let mut rest = fragment;
        while let Some(i) = rest.find(is_unsafe) {
            writer.write_all(&rest.as_bytes()[..i])?;
            let c = rest[i..].chars().next().unwrap_or('\u{fffd}');
            write!(writer, "\\u{:04x}", c as u32)?;
            rest = &rest[i + c.len_utf8()..];
        }
        writer.write_all(rest.as_bytes())
    }
}

/// `value` as one line of JSON written with [`JsonFormatter`].
pub fn to_json_string<T: serde::Serialize + ?Sized>(value: &T) -> serde_json::Result<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, JsonFormatter);
    value.serialize(&mut ser)?;
    // The serializer writes UTF-8 only (its input is `str`, its escapes
    // ASCII); a lossy conversion never has anything to replace.
    Ok(String::from_utf8(buf)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ascii_fast_path_agrees_with_is_unsafe() {
        for b in 0u8..0x80 {
            let s = (b as char).to_string();
            assert_eq!(plain_ascii(&s), !is_unsafe(b as char), "{b:#x}");
        }
        assert!(!plain_ascii("caf\u{e9}"), "non-ASCII takes the full check");
        assert!(plain_ascii("close+0x1f (/usr/lib/libc.so.6)"));
    }

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        for s in [
            "",
            "nginx",
            "GET /ws?room=1 HTTP/1.1",
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
            "std::sys::pal::unix::fs::File::open+0x1a (/bin/x) at src/fs.rs:12",
            "héllo wörld — «ok» 日本語 emoji 🚀",
            "back\\slash and \"quotes\" and 'single'",
            "\u{a0}no-break space and \u{ad} soft hyphen",
            "arabic \u{0627}\u{0644}\u{0639}\u{0631}\u{0628}\u{064a}\u{0629} hebrew \u{05e9}\u{05dc}\u{05d5}\u{05dd}",
        ] {
            assert!(matches!(text(s), Cow::Borrowed(b) if b == s), "{s:?}");
        }
    }

    #[test]
    fn every_c0_control_and_del_become_hex_escapes() {
        for b in (0u8..0x20).chain([0x7f]) {
            let s = format!("a{}b", b as char);
            assert_eq!(text(&s), format!("a\\x{b:02x}b"), "byte {b:#x}");
        }
    }

    #[test]
    fn named_controls() {
        assert_eq!(text("\x1b[31mred\x1b[0m"), "\\x1b[31mred\\x1b[0m");
        assert_eq!(text("line\nfake line"), "line\\x0afake line");
        assert_eq!(text("over\rwrite"), "over\\x0dwrite");
        assert_eq!(text("back\x08space"), "back\\x08space");
        assert_eq!(text("nul\0byte"), "nul\\x00byte");
        assert_eq!(text("tab\tinside"), "tab\\x09inside");
        assert_eq!(text("bell\x07"), "bell\\x07");
        assert_eq!(text("del\x7f"), "del\\x7f");
        // OSC 52 (clipboard write) and OSC 8 (hyperlink) lose their ESC and BEL.
        assert_eq!(text("\x1b]52;c;ZXZpbA==\x07"), "\\x1b]52;c;ZXZpbA==\\x07");
        assert_eq!(
            text("\x1b]8;;http://evil/\x1b\\x\x1b]8;;\x1b\\"),
            "\\x1b]8;;http://evil/\\x1b\\x\\x1b]8;;\\x1b\\"
        );
    }

    #[test]
    fn every_c1_control_becomes_a_unicode_escape() {
        for cp in 0x80u32..=0x9f {
            let c = char::from_u32(cp).expect("c1");
            let s = format!("a{c}b");
            assert_eq!(text(&s), format!("a\\u{{{cp:x}}}b"), "U+{cp:04X}");
        }
        // The one-byte CSI and NEL (a line break for some readers).
        assert_eq!(text("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(text("a\u{85}b"), "a\\u{85}b");
        // Just past C1: printable, unchanged.
        assert_eq!(text("\u{a0}\u{a9}"), "\u{a0}\u{a9}");
    }

    #[test]
    fn bidi_controls_become_unicode_escapes() {
        for cp in (0x202au32..=0x202e)
            .chain(0x2066..=0x2069)
            .chain([0x200e, 0x200f, 0x061c, 0x2028, 0x2029])
        {
            let c = char::from_u32(cp).expect("bidi");
            assert_eq!(
                text(&format!("x{c}y")),
                format!("x\\u{{{cp:x}}}y"),
                "U+{cp:04X}"
            );
        }
        assert_eq!(text("evil\u{202e}gpj.exe"), "evil\\u{202e}gpj.exe");
        // Neighbours that are not controls stay as they are.
        for c in [
            '\u{2027}', '\u{202f}', '\u{2065}', '\u{206a}', '\u{200d}', '\u{061b}',
        ] {
            assert!(!is_unsafe(c), "U+{:04X}", c as u32);
        }
    }

    #[test]
    fn escaped_output_has_no_unsafe_character_left() {
        // Every code point from 0 to U+2100, each between two letters.
        let all: String = (0u32..0x2100).filter_map(char::from_u32).collect();
        let out = text(&all);
        assert!(!out.chars().any(is_unsafe));
        assert!(!out.contains('\n') && !out.contains('\x1b'));
        // The escapes are ASCII: the printable text is there unchanged.
        assert!(out.contains("ABC") && out.contains("\u{e9}"));
    }

    #[test]
    fn mixed_and_adjacent() {
        assert_eq!(
            text("\x1b\x1b\u{202e}\u{202e}ok\n"),
            "\\x1b\\x1b\\u{202e}\\u{202e}ok\\x0a"
        );
        assert_eq!(text("日本\x1b語"), "日本\\x1b語");
    }

    fn json<T: serde::Serialize>(v: &T) -> String {
        to_json_string(v).expect("json")
    }

    #[test]
    fn json_escapes_c1_bidi_and_del_and_round_trips() {
        let s = "a\u{202e}b\u{9b}c\u{7f}d\u{2066}\u{2028}e\x1bf\n\"\\ 日本";
        let out = json(&s);
        assert_eq!(
            out,
            "\"a\\u202eb\\u009bc\\u007fd\\u2066\\u2028e\\u001bf\\n\\\"\\\\ 日本\""
        );
        assert!(!out.chars().any(is_unsafe), "{out}");
        let back: String = serde_json::from_str(&out).expect("valid JSON");
        assert_eq!(back, s);
    }

    #[test]
    fn json_of_structs_and_keys() {
        #[derive(serde::Serialize)]
        struct S<'a> {
            comm: &'a str,
            frames: Vec<&'a str>,
            n: u32,
        }
        let v = S {
            comm: "x\u{202e}y",
            frames: vec!["f\u{85}", "plain"],
            n: 3,
        };
        let out = json(&v);
        assert_eq!(
            out,
            r#"{"comm":"x\u202ey","frames":["f\u0085","plain"],"n":3}"#
        );
        let mut m = std::collections::BTreeMap::new();
        m.insert("k\u{2067}", 1);
        assert_eq!(json(&m), r#"{"k\u2067":1}"#);
    }

    #[test]
    fn json_of_plain_text_matches_serde_json() {
        let s = "GET /ws?x=1 HTTP/1.1 — «日本» \u{a0}\t\r\n\"\\";
        assert_eq!(json(&s), serde_json::to_string(&s).expect("json"));
    }
}
