//! What may be shown of data a traced process or a remote client controls:
//! request header values and command-line arguments. Every printer gets its
//! values through here.

/// Shown instead of a sensitive header's value.
pub const REDACTED: &str = "[redacted]";

/// Decides which header values must never be printed or stored.
#[derive(Clone, Debug)]
pub struct Redactor {
    patterns: Vec<String>,
}

/// Always redacted (unless redaction is turned off): credentials, session
/// identifiers and the WebSocket key.
const SENSITIVE: &[&str] = &[
    "cookie",
    "set-cookie",
    "authorization",
    "proxy-authorization",
    "sec-websocket-key",
    "x-api-key",
    "x-auth-token",
    "*token*",
    "*secret*",
    "*password*",
    "*session*",
];

impl Redactor {
    /// The default sensitive names plus `extra` patterns (`--redact`):
    /// case-insensitive header names, `*` matching any run of characters.
    pub fn new(extra: &[String]) -> Result<Self, String> {
        let mut patterns: Vec<String> = SENSITIVE.iter().map(|s| s.to_string()).collect();
        for p in extra {
            let p = p.trim();
            if p.is_empty() {
                return Err("empty --redact pattern: give a header name such as X-Tenant-Id or X-Internal-*".into());
            }
            if p.chars().any(|c| c.is_whitespace() || c == ':') {
                return Err(format!(
                    "--redact {p:?}: a header name cannot contain spaces or ':'"
                ));
            }
            patterns.push(p.to_ascii_lowercase());
        }
        Ok(Self { patterns })
    }

    /// Nothing redacted (an explicit user choice).
    pub fn none() -> Self {
        Self {
            patterns: Vec::new(),
        }
    }

    pub fn is_sensitive(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        self.patterns
            .iter()
            .any(|p| glob(p.as_bytes(), name.as_bytes()))
    }
}

impl Default for Redactor {
    fn default() -> Self {
        Self {
            patterns: SENSITIVE.iter().map(|s| s.to_string()).collect(),
        }
    }
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

/// Joins arguments with spaces, hiding the values of options whose names
/// the redactor calls sensitive (`--password=x`, `--api-token x`, `-p` is
/// left alone: too ambiguous) and URL credentials (`redis://user:pw@host`).
pub fn redact_cmdline(args: &[String], redactor: &Redactor) -> String {
    let mut out: Vec<String> = Vec::with_capacity(args.len());
    let mut hide_next = false;
    for arg in args {
        if hide_next {
            out.push(REDACTED.into());
            hide_next = false;
            continue;
        }
        let name = arg.trim_start_matches('-');
        if arg.starts_with("--") || (arg.starts_with('-') && name.len() > 1) {
            match name.split_once('=') {
                Some((key, _)) if redactor.is_sensitive(key) || sensitive_word(key) => {
                    out.push(format!(
                        "{}={REDACTED}",
                        &arg[..arg.len() - name.len() + key.len()]
                    ));
                    continue;
                }
                None if redactor.is_sensitive(name) || sensitive_word(name) => {
                    out.push(arg.clone());
                    hide_next = true;
                    continue;
                }
                _ => {}
            }
        }
        out.push(redact_url_credentials(arg));
    }
    out.join(" ")
}

/// Option names that hold secrets on command lines (beyond header names).
fn sensitive_word(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "password",
        "passwd",
        "secret",
        "token",
        "key",
        "credential",
        "auth",
    ]
    .iter()
    .any(|w| n.contains(w))
}

/// `scheme://user:password@host` -> `scheme://user:[redacted]@host`.
fn redact_url_credentials(arg: &str) -> String {
    let Some(scheme_end) = arg.find("://") else {
        return arg.to_string();
    };
    let rest = &arg[scheme_end + 3..];
    let Some(at) = rest.find('@') else {
        return arg.to_string();
    };
    let userinfo = &rest[..at];
    match userinfo.split_once(':') {
        Some((user, _)) if !userinfo.contains('/') => {
            format!("{}{user}:{REDACTED}{}", &arg[..scheme_end + 3], &rest[at..])
        }
        _ => arg.to_string(),
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
    fn urls_without_passwords_are_unchanged() {
        assert_eq!(
            redact_url_credentials("http://host/path@x"),
            "http://host/path@x"
        );
        assert_eq!(redact_url_credentials("ws://user@host"), "ws://user@host");
        assert_eq!(redact_url_credentials("plain"), "plain");
    }
}
