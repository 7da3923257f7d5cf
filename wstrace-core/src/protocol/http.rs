//! The upgrade request as the server read it: a tolerant HTTP/1.x request-head
//! parser over the bytes the kernel copied (at most HEAD_BUDGET, possibly cut
//! mid-line, possibly several requests on a keep-alive connection); header
//! values pass through `redact` before they are stored.
//!
//! By hand rather than httparse: httparse rejects a head cut mid-line or
//! holding bytes it does not accept, and a cut head is the normal case here.
use std::fmt;

use crate::redact::{REDACTED, Redactor};

/// Shown instead of the value of a header the capture ended inside.
pub const CUT: &str = "[cut]";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpVersion {
    Http10,
    Http11,
    Other(String),
}

impl HttpVersion {
    fn parse(s: &str) -> Self {
        match s.to_ascii_uppercase().as_str() {
            "HTTP/1.0" => Self::Http10,
            "HTTP/1.1" => Self::Http11,
            _ => Self::Other(s.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Http10 => "HTTP/1.0",
            Self::Http11 => "HTTP/1.1",
            Self::Other(s) => s,
        }
    }
}

/// A parsed request head. Values of headers the redactor hides, query
/// values and userinfo are already replaced by [`REDACTED`]: the secret
/// never reaches this struct.
#[derive(Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    pub target: String,
    pub version: HttpVersion,
    /// (name as sent, value trimmed), in order; folded lines joined.
    pub headers: Vec<(String, String)>,
    /// The blank line ending the head was seen.
    pub complete: bool,
}

impl fmt::Debug for RequestHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Values are redacted already; Debug shows exactly what output would.
        f.debug_struct("RequestHead")
            .field(
                "request_line",
                &format!("{} {} {}", self.method, self.target, self.version.as_str()),
            )
            .field("headers", &self.headers)
            .field("complete", &self.complete)
            .finish()
    }
}

impl RequestHead {
    /// First value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Lower-cased tokens of every `Connection` header ("keep-alive, Upgrade"
    /// → ["keep-alive", "upgrade"]).
    pub fn connection_tokens(&self) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
            .flat_map(|(_, v)| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect()
    }

    pub fn has_connection_token(&self, token: &str) -> bool {
        self.connection_tokens()
            .iter()
            .any(|t| t.eq_ignore_ascii_case(token))
    }

    /// `Upgrade: websocket` (any case), whatever `Connection` says.
    pub fn asks_for_websocket(&self) -> bool {
        self.header("upgrade").is_some_and(|u| {
            u.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
        })
    }
}

/// Tokens a request line's method may be made of (RFC 9110 tchar, upper case
/// in practice): anything else means these bytes are not a request.
fn is_method(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 16
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
}

/// Parses the request head the server answered with its 101.
///
/// `bytes` may hold several requests (keep-alive before the upgrade): the
/// last one that asks for a WebSocket wins, else the last one. Tolerates
/// `\n` line endings, leading blank lines, odd spacing around `:`, any header
/// name case, obsolete line folding, non-UTF-8 bytes, and a head cut short
/// (`complete == false`). Returns None when the bytes do not start with a
/// request line (binary garbage, TLS): never panics.
pub fn parse_request_head(bytes: &[u8], redactor: &Redactor) -> Option<RequestHead> {
    let text = String::from_utf8_lossy(bytes);
    let mut heads = Vec::new();
    let mut rest: &str = &text;
    loop {
        let trimmed = rest.trim_start_matches(['\r', '\n']);
        if trimmed.is_empty() {
            break;
        }
        let (head, consumed) = parse_one(trimmed, redactor)?;
        let done = !head.complete;
        heads.push(head);
        if done {
            break;
        }
        rest = &trimmed[consumed..];
        // A body or garbage after a complete head ends the search quietly.
        let next_word = rest
            .trim_start_matches(['\r', '\n'])
            .split(' ')
            .next()
            .unwrap_or("");
        if !is_method(next_word) {
            break;
        }
    }
    let pick = heads
        .iter()
        .rposition(RequestHead::asks_for_websocket)
        .unwrap_or(heads.len().checked_sub(1)?);
    Some(heads.swap_remove(pick))
}

/// One head from the start of `s`: the head and the bytes it used.
fn parse_one(s: &str, redactor: &Redactor) -> Option<(RequestHead, usize)> {
    let mut lines = LineIter { s, pos: 0 };
    let (request_line, _) = lines.next_line()?;
    let mut parts = request_line.split_whitespace();
    let method = parts.next()?;
    if !is_method(method) {
        return None;
    }
    let target = parts.next().unwrap_or("");
    let version = parts.next().unwrap_or("");
    if !version.to_ascii_uppercase().starts_with("HTTP/") && !version.is_empty() {
        return None;
    }
    let mut head = RequestHead {
        method: method.to_string(),
        target: redactor.target(target),
        version: HttpVersion::parse(version),
        headers: Vec::new(),
        complete: false,
    };
    let mut raw: Vec<(String, String, bool)> = Vec::new();
    while let Some((line, terminated)) = lines.next_line() {
        if line.is_empty() {
            head.complete = terminated;
            break;
        }
        if line.starts_with([' ', '\t']) {
            // Obsolete folding: a continuation of the previous value.
            if let Some(last) = raw.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
                last.2 = terminated;
            }
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue; // not a header line: skip it, keep going
        };
        let name = name.trim();
        if name.is_empty() || name.contains(char::is_whitespace) {
            continue;
        }
        raw.push((name.to_string(), value.trim().to_string(), terminated));
    }
    for (name, value, terminated) in raw {
        let value = if redactor.is_sensitive(&name) {
            REDACTED.to_string()
        } else if !terminated {
            // The capture ended inside this line: its value is not known.
            CUT.to_string()
        } else {
            value
        };
        head.headers.push((name, value));
    }
    Some((head, lines.pos))
}

/// Lines ending in `\n` or `\r\n`; the last, unterminated one is returned
/// with `terminated == false` (a head cut short by the capture limit).
struct LineIter<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> LineIter<'a> {
    fn next_line(&mut self) -> Option<(&'a str, bool)> {
        let rest = &self.s[self.pos..];
        if rest.is_empty() {
            return None;
        }
        match rest.find('\n') {
            Some(i) => {
                self.pos += i + 1;
                Some((rest[..i].trim_end_matches('\r'), true))
            }
            None => {
                self.pos = self.s.len();
                Some((rest.trim_end_matches('\r'), false))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &[u8]) -> RequestHead {
        parse_request_head(s, &Redactor::default()).expect("parses")
    }

    const NGINX_HTTP10: &[u8] = b"GET /ws HTTP/1.0\r\nUpgrade: websocket\r\nConnection: upgrade\r\nHost: 127.0.0.1:1215\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nCookie: sid=SECRET1\r\n\r\n";

    #[test]
    fn nginx_http10_upgrade() {
        let h = parse(NGINX_HTTP10);
        assert_eq!(h.version, HttpVersion::Http10);
        assert_eq!((h.method.as_str(), h.target.as_str()), ("GET", "/ws"));
        assert!(h.complete);
        assert!(h.has_connection_token("upgrade"));
        assert!(h.asks_for_websocket());
        assert_eq!(h.header("host"), Some("127.0.0.1:1215"));
        assert_eq!(h.header("SEC-WEBSOCKET-VERSION"), Some("13"));
    }

    #[test]
    fn secrets_never_reach_the_struct_or_its_debug() {
        let h = parse(NGINX_HTTP10);
        assert_eq!(h.header("cookie"), Some(REDACTED));
        assert_eq!(h.header("sec-websocket-key"), Some(REDACTED));
        let dbg = format!("{h:?}");
        assert!(
            !dbg.contains("SECRET1") && !dbg.contains("dGhlIHNhbXBsZSBub25jZQ"),
            "{dbg}"
        );
        let h = parse(b"GET / HTTP/1.1\r\nAuthorization: Bearer abc\r\nX-Session-Id: s1\r\nX-My-Token: t\r\nX-Db-Password: p\r\n\r\n");
        for n in [
            "authorization",
            "x-session-id",
            "x-my-token",
            "x-db-password",
        ] {
            assert_eq!(h.header(n), Some(REDACTED), "{n}");
        }
    }

    #[test]
    fn user_patterns_and_no_redaction() {
        let r = Redactor::new(&["X-Tenant-*".into()], &["x-forwarded-for".into()]).expect("valid");
        let h = parse_request_head(
            b"GET /ws?token=T1 HTTP/1.1\r\nX-Tenant-Id: acme\r\nX-Forwarded-For: 10.0.0.1\r\nHost: h\r\nX-Other: o\r\n\r\n",
            &r,
        )
        .expect("parses");
        assert_eq!(h.header("x-tenant-id"), Some("acme"));
        assert_eq!(h.header("x-forwarded-for"), Some(REDACTED));
        assert_eq!(h.header("host"), Some("h"));
        assert_eq!(h.header("x-other"), Some(REDACTED));
        assert_eq!(h.target, "/ws?token=[redacted]");
        let h = parse_request_head(NGINX_HTTP10, &Redactor::none()).expect("parses");
        assert_eq!(h.header("cookie"), Some("sid=SECRET1"));
    }

    #[test]
    fn lf_endings_spacing_case_and_leading_blank_lines() {
        let h = parse(b"\r\n\nGET /x HTTP/1.1\nHOST:  example  \nconnection:keep-alive,  Upgrade\nupgrade:WebSocket\n\n");
        assert!(h.complete);
        assert_eq!(h.header("Host"), Some("example"));
        assert_eq!(h.connection_tokens(), vec!["keep-alive", "upgrade"]);
        assert!(h.asks_for_websocket());
    }

    #[test]
    fn repeated_connection_headers_and_folding() {
        let h = parse(b"GET / HTTP/1.1\r\nConnection: keep-alive\r\nConnection: Upgrade\r\nUser-Agent: a\r\n  folded b\r\n\tand c\r\n\r\n");
        assert!(h.has_connection_token("upgrade") && h.has_connection_token("KEEP-ALIVE"));
        assert_eq!(h.header("user-agent"), Some("a folded b and c"));
    }

    #[test]
    fn http10_without_connection_upgrade() {
        let h = parse(b"GET /ws HTTP/1.0\r\nUpgrade: websocket\r\nHost: h\r\n\r\n");
        assert_eq!(h.version, HttpVersion::Http10);
        assert!(!h.has_connection_token("upgrade"));
        assert!(h.connection_tokens().is_empty());
    }

    #[test]
    fn cut_short_and_split_across_reads() {
        let full = NGINX_HTTP10;
        for cut in 17..full.len() - 2 {
            let h = parse(&full[..cut]);
            assert_eq!(h.version, HttpVersion::Http10, "cut {cut}");
            assert!(!h.complete, "cut {cut}");
            // A name cut in half never shows a secret's value.
            let dbg = format!("{h:?}");
            assert!(!dbg.contains("SECRET1"), "cut {cut}: {dbg}");
        }
        assert!(parse(full).complete);
    }

    #[test]
    fn keep_alive_requests_before_the_upgrade() {
        let mut b = b"GET /health HTTP/1.1\r\nHost: h\r\n\r\n".to_vec();
        b.extend_from_slice(
            b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        );
        let h = parse(&b);
        assert_eq!(h.target, "/ws");
        // A body after the head is not a request.
        let h = parse(b"POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc");
        assert_eq!(h.target, "/x");
    }

    #[test]
    fn a_line_the_capture_ended_in_shows_as_cut() {
        let h = parse(b"GET /ws HTTP/1.1\r\nHost: h\r\nUser-Agent: Mozilla/5.0 (X11;");
        assert!(!h.complete);
        assert_eq!(h.header("host"), Some("h"));
        assert_eq!(h.header("user-agent"), Some(CUT));
        // A folded continuation that was cut cuts its header.
        let h = parse(b"GET /ws HTTP/1.1\r\nVia: 1.1 a\r\n b");
        assert_eq!(h.header("via"), Some(CUT));
    }

    #[test]
    fn garbage_is_none() {
        let r = Redactor::default();
        assert!(parse_request_head(b"", &r).is_none());
        assert!(parse_request_head(b"\r\n\r\n", &r).is_none());
        assert!(parse_request_head(&[0x16, 0x03, 0x01, 0x02, 0x00], &r).is_none());
        assert!(parse_request_head(b"\x88\x82abcd", &r).is_none());
        assert!(parse_request_head(b"get / HTTP/1.1\r\n\r\n", &r).is_none());
        assert!(parse_request_head(b"GET / SPDY/3\r\n\r\n", &r).is_none());
    }

    #[test]
    fn oversized_head_is_partial_not_an_error() {
        let mut b = b"GET /ws HTTP/1.1\r\n".to_vec();
        for i in 0..500 {
            b.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "v".repeat(40)).as_bytes());
        }
        b.truncate(2048);
        let h = parse(&b);
        assert!(!h.complete);
        assert!(h.headers.len() > 10);
    }

    #[test]
    fn random_bytes_never_panic() {
        let r = Redactor::default();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for round in 0..3000 {
            let len = (round % 300) as usize;
            let mut b = Vec::with_capacity(len + 16);
            if round % 3 == 0 {
                b.extend_from_slice(b"GET / HTTP/1.1\r\n");
            }
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Bias towards the bytes the parser cares about.
                let c = match x % 8 {
                    0 => b'\r',
                    1 => b'\n',
                    2 => b':',
                    3 => b' ',
                    _ => (x >> 8) as u8,
                };
                b.push(c);
            }
            let _ = parse_request_head(&b, &r);
        }
    }
}
