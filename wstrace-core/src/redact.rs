//! What may be shown of data a traced process or a remote client controls:
//! request header values, the request target and command-line arguments.
//!
//! An allowlist, not a denylist: a secret travels in headers nobody can list
//! in advance (`X-Amzn-Oidc-Data`, `Cf-Access-Jwt-Assertion`, a bearer token
//! in `Sec-WebSocket-Protocol`), so only the headers the diagnosis needs show
//! their values; every other header shows its name and `[redacted]`. Query
//! values and URL userinfo are always hidden; command-line arguments show
//! only what cannot be a secret (option names, numbers, paths, short words).

/// Shown instead of a hidden value.
pub const REDACTED: &str = "[redacted]";

/// Request headers whose values are shown by default: what the diagnosis
/// reads (HTTP version, `Connection`, `Upgrade`), where the request came
/// from (forwarding headers) and who sent it.
const SHOWN_HEADERS: &[&str] = &[
    "connection",
    "upgrade",
    "host",
    "origin",
    "user-agent",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
    "forwarded",
    "via",
    "content-length",
    "transfer-encoding",
    "keep-alive",
];

/// Option names whose values are hidden on command lines whatever they
/// look like.
const SECRET_WORDS: &[&str] = &[
    "password",
    "passwd",
    "pass",
    "secret",
    "token",
    "key",
    "credential",
    "auth",
    "session",
    "cookie",
    "jwt",
    "sig",
];

/// Decides which values may be printed or stored.
#[derive(Clone, Debug)]
pub struct Redactor {
    /// Off (`--show-secrets`): everything is shown.
    enabled: bool,
    /// Header name patterns shown besides [`SHOWN_HEADERS`] (`--show-header`).
    shown: Vec<String>,
    /// Header name patterns hidden even if listed as shown (`--redact`).
    hidden: Vec<String>,
}

impl Redactor {
    /// The default allowlist, widened by `show` (`--show-header`) and
    /// narrowed by `hide` (`--redact`): case-insensitive header names, `*`
    /// matching any run of characters.
    pub fn new(show: &[String], hide: &[String]) -> Result<Self, String> {
        Ok(Self {
            enabled: true,
            shown: patterns("--show-header", show)?,
            hidden: patterns("--redact", hide)?,
        })
    }

    /// Nothing redacted (`--show-secrets`, an explicit user choice).
    pub fn none() -> Self {
        Self {
            enabled: false,
            shown: Vec::new(),
            hidden: Vec::new(),
        }
    }

    /// Must this header's value be hidden?
    pub fn is_sensitive(&self, name: &str) -> bool {
        if !self.enabled {
            return false;
        }
        let name = name.to_ascii_lowercase();
        let matches = |ps: &[String]| ps.iter().any(|p| glob(p.as_bytes(), name.as_bytes()));
        matches(&self.hidden) || !(SHOWN_HEADERS.contains(&name.as_str()) || matches(&self.shown))
    }

    /// A request target with query values and userinfo hidden:
    /// `/ws?token=abc&room=1` -> `/ws?token=[redacted]&room=[redacted]`.
    pub fn target(&self, target: &str) -> String {
        if !self.enabled {
            return target.to_string();
        }
        redact_url(target)
    }
}

impl Default for Redactor {
    fn default() -> Self {
        Self {
            enabled: true,
            shown: Vec::new(),
            hidden: Vec::new(),
        }
    }
}

fn patterns(flag: &str, given: &[String]) -> Result<Vec<String>, String> {
    let mut out = Vec::with_capacity(given.len());
    for p in given {
        let p = p.trim();
        if p.is_empty() {
            return Err(format!(
                "empty {flag} pattern: give a header name such as X-Tenant-Id or X-Internal-*"
            ));
        }
        if p.chars().any(|c| c.is_whitespace() || c == ':') {
            return Err(format!(
                "{flag} {p:?}: a header name cannot contain spaces or ':'"
            ));
        }
        out.push(p.to_ascii_lowercase());
    }
    Ok(out)
}

/// Hides the userinfo (`scheme://user:pw@host` -> `scheme://[redacted]@host`)
/// and every query value (`?a=1&b` -> `?a=[redacted]&b`) of a URL or request
/// target; the fragment goes too.
pub fn redact_url(s: &str) -> String {
    let (s, had_fragment) = match s.split_once('#') {
        Some((before, _)) => (before, true),
        None => (s, false),
    };
    let (base, query) = match s.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (s, None),
    };
    let mut out = String::with_capacity(s.len());
    match base.find("://") {
        Some(i) => {
            let rest = &base[i + 3..];
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => {
                    out.push_str(&base[..i + 3]);
                    out.push_str(REDACTED);
                    out.push_str(&rest[at..]);
                }
                None => out.push_str(base),
            }
        }
        None => out.push_str(base),
    }
    if let Some(q) = query {
        out.push('?');
        let params: Vec<String> = q
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) => format!("{k}={REDACTED}"),
                None => p.to_string(),
            })
            .collect();
        out.push_str(&params.join("&"));
    }
    if had_fragment {
        out.push('#');
        out.push_str(REDACTED);
    }
    out
}

/// `*`-only glob, iterative (no recursion blow-up on hostile patterns).
fn glob(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while i < s.len() {
        if p < pat.len() && pat[p] != b'*' && pat[p] == s[i] {
            p += 1;
            i += 1;
        } else if p < pat.len() && pat[p] == b'*' {
            star = Some(p);
            mark = i;
            p += 1;
        } else if let Some(sp) = star {
            p = sp + 1;
            mark += 1;
            i = mark;
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

/// Joins arguments with spaces, showing only what cannot be a secret:
/// option names, numbers, paths and short lower-case words; URLs with
/// userinfo and query values hidden; the value of an option whose name
/// says secret (`--db-password=x`, `--api-token x`) hidden whatever it is.
/// Everything else prints as `[redacted]`.
pub fn redact_cmdline(args: &[String], redactor: &Redactor) -> String {
    if !redactor.enabled {
        return args.join(" ");
    }
    let mut out: Vec<String> = Vec::with_capacity(args.len());
    let mut hide_next = false;
    for (i, arg) in args.iter().enumerate() {
        if std::mem::take(&mut hide_next) && !is_option(arg) {
            out.push(REDACTED.into());
            continue;
        }
        if i == 0 {
            // The program itself.
            out.push(arg.clone());
            continue;
        }
        if is_option(arg) {
            let name = arg.trim_start_matches('-');
            match name.split_once('=') {
                Some((key, value)) => {
                    let prefix = &arg[..arg.len() - name.len() + key.len()];
                    let value = if secret_word(key) {
                        REDACTED.to_string()
                    } else {
                        shown_value(value)
                    };
                    out.push(format!("{prefix}={value}"));
                }
                None => {
                    hide_next = secret_word(name);
                    out.push(arg.clone());
                }
            }
            continue;
        }
        out.push(shown_value(arg));
    }
    out.join(" ")
}

/// `-v`, `--port`, `--port=1`; not `-` (stdin) or a negative number.
fn is_option(arg: &str) -> bool {
    arg.len() > 1 && arg.starts_with('-') && !arg[1..].starts_with(|c: char| c.is_ascii_digit())
}

/// Does an option name say its value is a secret?
fn secret_word(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|w| n.contains(w))
}

/// An argument or option value as it may be shown.
fn shown_value(v: &str) -> String {
    if v.contains("://") {
        return redact_url(v);
    }
    let number = !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_digit() || b == b'.' || b == b':');
    let path = v.contains('/')
        && !v.contains(['?', '@', '='])
        && v.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    let word = (1..=24).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && v.bytes().filter(u8::is_ascii_digit).count() <= 3;
    if number || path || word {
        v.to_string()
    } else {
        REDACTED.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matching() {
        assert!(glob(b"*token*", b"x-auth-token-2"));
        assert!(glob(b"x-*", b"x-"));
        assert!(!glob(b"x-*", b"y-a"));
        assert!(glob(b"a*b*c", b"a-b-b-c"));
        assert!(!glob(b"a*b*c", b"a-b-b-d"));
        assert!(glob(b"***", b""));
        // Many stars on a long name finish quickly (no exponential backtracking).
        let long = vec![b'a'; 4096];
        assert!(!glob(b"*a*a*a*a*a*a*a*b", &long));
    }

    #[test]
    fn only_listed_headers_show_their_values() {
        let r = Redactor::default();
        for shown in [
            "Connection",
            "upgrade",
            "HOST",
            "User-Agent",
            "X-Forwarded-For",
            "Via",
        ] {
            assert!(!r.is_sensitive(shown), "{shown}");
        }
        // The usual carriers, and names nobody would think to list.
        for hidden in [
            "Cookie",
            "Authorization",
            "Sec-WebSocket-Key",
            "Sec-WebSocket-Protocol",
            "Api-Key",
            "X-Forwarded-Authorization",
            "Cf-Access-Jwt-Assertion",
            "X-Amzn-Oidc-Data",
            "Ocp-Apim-Subscription-Key",
            "X-Anything-New",
        ] {
            assert!(r.is_sensitive(hidden), "{hidden}");
        }
        let r = Redactor::new(&["X-Tenant-*".into()], &["x-forwarded-for".into()]).expect("valid");
        assert!(!r.is_sensitive("x-tenant-id"));
        assert!(r.is_sensitive("X-Forwarded-For"));
        assert!(!Redactor::none().is_sensitive("Cookie"));
        assert!(Redactor::new(&[], &["".into()]).is_err());
        assert!(Redactor::new(&["bad name".into()], &[]).is_err());
        assert!(Redactor::new(&["x:y".into()], &[]).is_err());
    }

    #[test]
    fn query_values_userinfo_and_fragments_are_hidden() {
        let r = Redactor::default();
        assert_eq!(r.target("/ws"), "/ws");
        assert_eq!(
            r.target("/ws?access_token=eyJ.x.y&room=7&flag"),
            "/ws?access_token=[redacted]&room=[redacted]&flag"
        );
        assert_eq!(
            r.target("http://alice:pw@example.com/ws?jwt=1"),
            "http://[redacted]@example.com/ws?jwt=[redacted]"
        );
        assert_eq!(r.target("/ws#frag"), "/ws#[redacted]");
        // An @ after the authority is not userinfo.
        assert_eq!(r.target("http://h/a@b"), "http://h/a@b");
        assert_eq!(Redactor::none().target("/ws?t=1"), "/ws?t=1");
    }

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn command_lines_show_only_what_cannot_be_a_secret() {
        let r = Redactor::default();
        assert_eq!(
            redact_cmdline(
                &args(&[
                    "php",
                    "server.php",
                    "--db-password=hunter2",
                    "--api-token",
                    "abc",
                    "--port",
                    "1215",
                    "redis://app:pw1@cache:6379",
                    "-v",
                    "--url=https://h/x?access_token=T",
                    "sk_live_9f8a7b6c5d4e3f2a1b0c",
                    "/etc/app/conf.yaml",
                    "-m",
                    "websockets",
                ]),
                &r
            ),
            "php server.php --db-password=[redacted] --api-token [redacted] --port 1215 \
             redis://[redacted]@cache:6379 -v --url=https://h/x?access_token=[redacted] \
             [redacted] /etc/app/conf.yaml -m websockets"
        );
        // A flag after a secret option is not its value.
        assert_eq!(
            redact_cmdline(&args(&["x", "--token", "--verbose"]), &r),
            "x --token --verbose"
        );
        assert_eq!(
            redact_cmdline(&args(&["x", "--token=a"]), &Redactor::none()),
            "x --token=a"
        );
    }
}
