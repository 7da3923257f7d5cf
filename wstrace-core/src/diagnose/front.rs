//! What sits in front of the server: a known proxy (nginx, Apache httpd,
//! HAProxy, Envoy, Traefik, Caddy, Varnish, lighttpd), some other program
//! that forwards requests, the client itself, or nothing we can tell.
//!
//! The fix for a bad upgrade request is in the words of whatever sent it, so
//! the verdict says which evidence it rests on, strongest first:
//! 1. the peer process, when it is on this host: the program that wrote the
//!    request bytes, named by its executable (/proc/PID/exe), and only a
//!    root-owned executable no one else can write names a proxy. Its comm
//!    is whatever it set with prctl: a comm that names a proxy its
//!    executable is not is shown as such, and proves nothing. Headers from
//!    a local peer do not name a proxy either (it wrote them);
//! 2. a `Via` header naming a known proxy, or a header only one proxy adds
//!    (`X-Varnish`, `X-Envoy-*`);
//! 3. a generic forwarding header (`Forwarded`, `X-Forwarded-For`,
//!    `X-Real-IP`, `Via`): some proxy, which one unknown;
//! 4. none of these: no proxy shows, and the client most likely sent the
//!    request itself. Not proof: nginx adds no forwarding header unless
//!    told to, and a peer on another host cannot be looked up.
//!
//! Program names and header values come from other processes and clients:
//! they are matched, never trusted to be short or printable (the printers
//! escape them).
use std::net::SocketAddr;

use serde::Serialize;

use crate::model::PeerExe;
use crate::protocol::http::{CUT, RequestHead};
use crate::redact::REDACTED;

/// A reverse proxy this module knows the configuration language of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proxy {
    Nginx,
    ApacheHttpd,
    Haproxy,
    Envoy,
    Traefik,
    Caddy,
    Varnish,
    Lighttpd,
}

const PROXIES: [Proxy; 8] = [
    Proxy::Nginx,
    Proxy::ApacheHttpd,
    Proxy::Haproxy,
    Proxy::Envoy,
    Proxy::Traefik,
    Proxy::Caddy,
    Proxy::Varnish,
    Proxy::Lighttpd,
];

impl Proxy {
    /// The stable name in JSON (`diagnosis.front.kind`).
    pub fn code(self) -> &'static str {
        match self {
            Self::Nginx => "nginx",
            Self::ApacheHttpd => "apache_httpd",
            Self::Haproxy => "haproxy",
            Self::Envoy => "envoy",
            Self::Traefik => "traefik",
            Self::Caddy => "caddy",
            Self::Varnish => "varnish",
            Self::Lighttpd => "lighttpd",
        }
    }

    /// As its users write it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Nginx => "nginx",
            Self::ApacheHttpd => "Apache httpd",
            Self::Haproxy => "HAProxy",
            Self::Envoy => "Envoy",
            Self::Traefik => "Traefik",
            Self::Caddy => "Caddy",
            Self::Varnish => "Varnish",
            Self::Lighttpd => "lighttpd",
        }
    }

    /// Does a program (process or thread) name belong to this proxy? Names
    /// are the kernel's comm (at most 15 bytes) or an executable's base
    /// name: Envoy's workers are threads named `wrk:worker_N`, Varnish's
    /// child process and threads `cache-main`/`cache-worker`, Debian's
    /// Apache is `apache2` and Red Hat's `httpd`.
    fn owns_program(self, name: &str) -> bool {
        let n = name.to_ascii_lowercase();
        match self {
            // OpenResty and Kong run as `nginx` too.
            Self::Nginx => n == "nginx" || n.starts_with("nginx:") || n == "openresty",
            Self::ApacheHttpd => n == "apache2" || n == "httpd" || n == "httpd.worker",
            Self::Haproxy => n == "haproxy",
            Self::Envoy => n == "envoy" || n.starts_with("wrk:worker_"),
            Self::Traefik => n == "traefik",
            Self::Caddy => n == "caddy",
            Self::Varnish => n == "varnishd" || n == "cache-main" || n == "cache-worker",
            Self::Lighttpd => n == "lighttpd",
        }
    }

    /// Does a `Via` entry's pseudonym or comment name this proxy
    /// (`1.1 varnish (Varnish/7.1)`, `1.1 host (Apache/2.4.57)`)?
    fn named_in_via(self, via: &str) -> bool {
        let v = via.to_ascii_lowercase();
        let word = |w: &str| {
            v.split(|c: char| !c.is_ascii_alphanumeric())
                .any(|t| t == w)
        };
        match self {
            Self::Nginx => word("nginx") || word("openresty"),
            Self::ApacheHttpd => word("apache") || word("httpd"),
            Self::Haproxy => word("haproxy"),
            Self::Envoy => word("envoy"),
            Self::Traefik => word("traefik"),
            Self::Caddy => word("caddy"),
            Self::Varnish => word("varnish"),
            Self::Lighttpd => word("lighttpd"),
        }
    }

    /// A request header only this proxy adds (name only: values may be
    /// redacted): Varnish sends `X-Varnish: <xid>` on backend fetches,
    /// Envoy its `x-envoy-*` headers.
    fn owns_header(self, name: &str) -> bool {
        let n = name.to_ascii_lowercase();
        match self {
            Self::Varnish => n == "x-varnish",
            Self::Envoy => n.starts_with("x-envoy-"),
            _ => false,
        }
    }

    fn by_program(name: &str) -> Option<Self> {
        PROXIES.into_iter().find(|p| p.owns_program(name))
    }
}

/// Headers a forwarding proxy adds, in the order they are looked for.
pub const FORWARDING_HEADERS: [&str; 4] = ["Via", "Forwarded", "X-Forwarded-For", "X-Real-IP"];

/// What sent the request to the server, as far as the evidence goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sender {
    /// A known proxy.
    Proxy(Proxy),
    /// A program that forwards requests but is not one we know: the local
    /// peer's name when it is on this host, else `None`.
    OtherProxy(Option<String>),
    /// The client connected directly (a local program that is no known
    /// proxy, and no forwarding header).
    Client(String),
    /// Nothing points either way.
    Unknown,
}

/// The verdict and what it rests on. Serialized as `diagnosis.front`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Front {
    /// `nginx`, `apache_httpd`, `haproxy`, `envoy`, `traefik`, `caddy`,
    /// `varnish`, `lighttpd`; `proxy` (a forwarding program of unknown
    /// kind); `client` (no proxy: the client itself); `unknown`.
    pub kind: &'static str,
    /// `peer_process`, `via_header`, `proxy_header`, `forwarding_header`
    /// or `none`.
    pub evidence: &'static str,
    /// The evidence in words (quotes the peer's name and header values).
    pub detail: String,
    #[serde(skip)]
    pub sender: Sender,
}

impl Front {
    /// What the text output shows after `front:`.
    pub fn describe(&self) -> String {
        let who = match &self.sender {
            Sender::Proxy(p) => p.name().to_string(),
            Sender::OtherProxy(Some(prog)) => format!("{prog}, a program that forwards requests"),
            Sender::OtherProxy(None) => "a proxy of unknown kind".into(),
            Sender::Client(_) => "no proxy: the client itself".into(),
            Sender::Unknown => "no proxy seen".into(),
        };
        format!("{who} (evidence: {})", self.detail)
    }
}

/// The proxy a peer's executable proves it to be: its file name names
/// one, and root owns the file with no one else able to write it.
fn proven_proxy(exe: Option<&PeerExe>) -> Option<Proxy> {
    let exe = exe.filter(|e| e.root_owned)?;
    let base = exe.path.rsplit('/').next().unwrap_or(&exe.path);
    // A deleted (upgraded in place) binary reads as `nginx (deleted)`.
    Proxy::by_program(base.strip_suffix(" (deleted)").unwrap_or(base))
}

/// Decides what sent the request. `peer` is the process at the other end
/// when it is on this host, `exe` its executable when it could be read;
/// `remote` the far end's address as the server saw it.
pub fn decide(
    peer: Option<&(u32, String)>,
    exe: Option<&PeerExe>,
    request: Option<&RequestHead>,
    remote: &str,
) -> Front {
    let forwarding = request.and_then(forwarding_header);
    if let Some((pid, comm)) = peer {
        if let Some(p) = proven_proxy(exe) {
            let path = exe.map_or("", |e| e.path.as_str());
            return Front {
                kind: p.code(),
                evidence: "peer_process",
                detail: format!(
                    "the process that sent the request is {comm} (pid {pid}, executable {path}), on this host"
                ),
                sender: Sender::Proxy(p),
            };
        }
        // Named by what it runs; a comm claiming a proxy it is not is
        // said, not believed.
        let me = match (exe, Proxy::by_program(comm)) {
            (Some(e), Some(claimed)) => format!(
                "{comm} (pid {pid}; it calls itself {} but runs {}{})",
                claimed.name(),
                e.path,
                if e.root_owned {
                    ""
                } else {
                    ", not a root-owned binary"
                }
            ),
            (None, Some(claimed)) => format!(
                "{comm} (pid {pid}; it calls itself {} but its executable could not be read)",
                claimed.name()
            ),
            (Some(e), None) => format!("{comm} (pid {pid}, executable {})", e.path),
            (None, None) => format!("{comm} (pid {pid})"),
        };
        // The program to fix, by what it runs (its whole path: a copy
        // named like a proxy is not that proxy).
        let prog = match exe {
            Some(e) => e.path.clone(),
            // Not the name it claims, unverified.
            None if Proxy::by_program(comm).is_some() => me.clone(),
            None => comm.clone(),
        };
        // A program we do not know that passes forwarding headers on is a
        // proxy of its own (a Node or Python gateway, say); without them,
        // the client itself.
        return match forwarding {
            Some(h) => Front {
                kind: "proxy",
                evidence: "forwarding_header",
                detail: format!("{me} on this host sent the request, with {h}"),
                sender: Sender::OtherProxy(Some(prog)),
            },
            None => Front {
                kind: "client",
                evidence: "peer_process",
                detail: format!(
                    "the process that sent the request is {me}, on this host: no known proxy, and the request has no {}",
                    FORWARDING_HEADERS.join(", ")
                ),
                sender: Sender::Client(me),
            },
        };
    }
    if let Some(req) = request {
        if let Some(via) = req.header("via")
            && let Some(p) = PROXIES.into_iter().find(|p| p.named_in_via(via))
        {
            return Front {
                kind: p.code(),
                evidence: "via_header",
                detail: format!("Via: {via}"),
                sender: Sender::Proxy(p),
            };
        }
        for (name, _) in &req.headers {
            if let Some(p) = PROXIES.into_iter().find(|p| p.owns_header(name)) {
                return Front {
                    kind: p.code(),
                    evidence: "proxy_header",
                    detail: format!("the request carries {name}, which only {} adds", p.name()),
                    sender: Sender::Proxy(p),
                };
            }
        }
    }
    if let Some(h) = forwarding {
        return Front {
            kind: "proxy",
            evidence: "forwarding_header",
            detail: format!("the request carries {h}"),
            sender: Sender::OtherProxy(None),
        };
    }
    let whence = match remote.parse::<SocketAddr>() {
        Ok(a) if a.ip().is_loopback() => {
            format!("the process at {remote} was not found (it had closed)")
        }
        Ok(_) => format!("the peer {remote} is not on this host"),
        Err(_) => "the peer is unknown".into(),
    };
    let headers = if request.is_some() {
        format!("the request has no {}", FORWARDING_HEADERS.join(", "))
    } else {
        "the request head was not seen".into()
    };
    Front {
        kind: "unknown",
        evidence: "none",
        detail: format!("{whence}, and {headers}"),
        sender: Sender::Unknown,
    }
}

/// The first forwarding header, as `Name: value` (or just `Name` when its
/// value is hidden or cut: presence is the evidence).
fn forwarding_header(req: &RequestHead) -> Option<String> {
    FORWARDING_HEADERS.iter().find_map(|want| {
        let (name, value) = req
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(want))?;
        Some(if value == REDACTED || value == CUT {
            name.clone()
        } else {
            format!("{name}: {value}")
        })
    })
}

/// What is wrong with the upgrade request, for [`fix`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    /// Sent as HTTP/1.0 (RFC 6455 requires HTTP/1.1).
    Http10,
    /// No `upgrade` token in `Connection`.
    NoConnectionUpgrade,
}

/// The fix, in the words of what sent the request.
pub fn fix(front: &Front, problem: Problem) -> String {
    use Problem::*;
    match (&front.sender, problem) {
        (Sender::Proxy(p), _) => proxy_fix(*p, problem),
        (Sender::OtherProxy(prog), _) => {
            let it = match prog {
                Some(prog) => format!("make {prog} (it forwards the request)"),
                None => "a proxy sits in front but which one is not known: make it".into(),
            };
            let what = match problem {
                Http10 => "forward the WebSocket upgrade as HTTP/1.1",
                NoConnectionUpgrade => {
                    "pass `Connection: upgrade` and `Upgrade: websocket` through with the WebSocket upgrade"
                }
            };
            // The known proxies' words only when which proxy is unknown:
            // a program on this host that runs none of them gets none.
            match prog {
                Some(_) => format!("{it} {what}"),
                None => format!(
                    "{it} {what} (nginx: `proxy_http_version 1.1;` with `proxy_set_header Upgrade $http_upgrade;` and `proxy_set_header Connection \"upgrade\";`; Apache httpd: `ProxyPass ... upgrade=websocket`; Envoy: `upgrade_configs: [{{upgrade_type: websocket}}]`)"
                ),
            }
        }
        (Sender::Client(who), Http10) => format!(
            "{who} connected directly and sent its upgrade as HTTP/1.0, but RFC 6455 requires HTTP/1.1: make the client send `GET ... HTTP/1.1` (fix or update its WebSocket library)"
        ),
        (Sender::Client(who), NoConnectionUpgrade) => format!(
            "{who} connected directly without `Connection: Upgrade`, which RFC 6455 requires with `Upgrade: websocket`: make the client send both"
        ),
        (Sender::Unknown, Http10) => "no proxy shows in front of the server, so the client itself most likely sent HTTP/1.0: make it send the upgrade as HTTP/1.1 (RFC 6455 requires it); if a proxy that adds no forwarding header does sit in front, make it forward the upgrade as HTTP/1.1".into(),
        (Sender::Unknown, NoConnectionUpgrade) => "no proxy shows in front of the server, so the client itself most likely left out `Connection: Upgrade`: make it send `Connection: Upgrade` with `Upgrade: websocket` (RFC 6455); if a proxy that adds no forwarding header does sit in front, make it pass both headers through".into(),
    }
}

fn proxy_fix(p: Proxy, problem: Problem) -> String {
    use Problem::*;
    match (p, problem) {
        (Proxy::Nginx, Http10) => "add `proxy_http_version 1.1;` (with `proxy_set_header Upgrade $http_upgrade;` and `proxy_set_header Connection \"upgrade\";`) to the nginx location that proxies the WebSocket".into(),
        (Proxy::Nginx, NoConnectionUpgrade) => "add `proxy_set_header Upgrade $http_upgrade;` and `proxy_set_header Connection \"upgrade\";` to the nginx location (nginx does not pass these hop-by-hop headers on by itself)".into(),
        (Proxy::ApacheHttpd, Http10) => "in Apache httpd, proxy the WebSocket path with `ProxyPass \"/ws\" \"http://backend/ws\" upgrade=websocket` (httpd 2.4.47+) or mod_proxy_wstunnel's `ProxyPass \"/ws\" \"ws://backend/ws\"`, and drop `force-proxy-request-1.0` for it (it makes mod_proxy send HTTP/1.0)".into(),
        (Proxy::ApacheHttpd, NoConnectionUpgrade) => "in Apache httpd, proxy the WebSocket path with `ProxyPass \"/ws\" \"http://backend/ws\" upgrade=websocket` (httpd 2.4.47+) or mod_proxy_wstunnel's `ProxyPass \"/ws\" \"ws://backend/ws\"`: plain mod_proxy_http drops `Connection: upgrade`".into(),
        (Proxy::Haproxy, Http10) => "HAProxy in `mode http` forwards a WebSocket upgrade as HTTP/1.1 by itself: look in its config for an `http-request` rule that rewrites the request, check that clients send HTTP/1.1 to HAProxy, and set `timeout tunnel` (e.g. `1h`) so open WebSockets are not cut".into(),
        (Proxy::Haproxy, NoConnectionUpgrade) => "HAProxy in `mode http` passes `Connection: upgrade` through by itself: look for an `http-request del-header`/`set-header` rule on Connection or Upgrade, or `option httpclose`, on this backend; `mode tcp` forwards the bytes untouched".into(),
        (Proxy::Envoy, _) => "in Envoy, add `upgrade_configs: [{upgrade_type: websocket}]` to the http_connection_manager (or the route): without it Envoy does not forward the WebSocket upgrade with `Connection: upgrade` over HTTP/1.1".into(),
        (Proxy::Traefik, _) => "Traefik forwards WebSocket upgrades over HTTP/1.1 by itself: look at the router's middlewares (a `headers` middleware setting `Connection` or `Upgrade`) and check that the service URL is `http://`, not `h2c://`".into(),
        (Proxy::Caddy, _) => "Caddy's `reverse_proxy` forwards WebSocket upgrades over HTTP/1.1 by itself: remove any `header_up` that sets or deletes `Connection`/`Upgrade`, and any `transport http { versions h2c 2 }` for this upstream".into(),
        (Proxy::Varnish, _) => "in Varnish, pipe WebSocket upgrades: in `vcl_recv`, `if (req.http.upgrade ~ \"(?i)websocket\") { return (pipe); }`, and in `vcl_pipe`, `if (req.http.upgrade) { set bereq.http.upgrade = req.http.upgrade; set bereq.http.connection = req.http.connection; }`".into(),
        (Proxy::Lighttpd, _) => "in lighttpd (1.4.46+), add `proxy.header = ( \"upgrade\" => \"enable\" )` to the mod_proxy setup of the WebSocket path".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::http::parse_request_head;
    use crate::redact::Redactor;

    fn req(extra: &str) -> RequestHead {
        let s = format!(
            "GET /ws HTTP/1.0\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n{extra}\r\n"
        );
        parse_request_head(s.as_bytes(), &Redactor::default()).expect("parses")
    }

    fn peer(comm: &str) -> Option<(u32, String)> {
        Some((77, comm.to_string()))
    }

    /// A packaged binary: root-owned, writable by no one else.
    fn exe(path: &str) -> Option<PeerExe> {
        Some(PeerExe {
            path: path.into(),
            root_owned: true,
        })
    }

    const LOCAL: &str = "127.0.0.1:50412";

    #[test]
    fn every_proxy_by_its_program_name() {
        for (comm, want) in [
            ("nginx", Proxy::Nginx),
            ("openresty", Proxy::Nginx),
            ("apache2", Proxy::ApacheHttpd),
            ("httpd", Proxy::ApacheHttpd),
            ("haproxy", Proxy::Haproxy),
            ("envoy", Proxy::Envoy),
            ("wrk:worker_3", Proxy::Envoy),
            ("traefik", Proxy::Traefik),
            ("caddy", Proxy::Caddy),
            ("varnishd", Proxy::Varnish),
            ("cache-worker", Proxy::Varnish),
            ("lighttpd", Proxy::Lighttpd),
        ] {
            let path = format!("/usr/sbin/{comm}");
            let f = decide(
                peer(comm).as_ref(),
                exe(&path).as_ref(),
                Some(&req("")),
                LOCAL,
            );
            assert_eq!(f.sender, Sender::Proxy(want), "{comm}");
            assert_eq!((f.kind, f.evidence), (want.code(), "peer_process"));
            assert!(
                f.detail
                    .contains(&format!("{comm} (pid 77, executable {path})")),
                "{}",
                f.detail
            );
            assert!(f.describe().starts_with(want.name()), "{}", f.describe());
        }
    }

    #[test]
    fn each_proxy_gets_its_own_fix() {
        // The words only that proxy's configuration uses.
        for (p, words) in [
            (Proxy::Nginx, "proxy_http_version 1.1;"),
            (Proxy::ApacheHttpd, "upgrade=websocket"),
            (Proxy::Haproxy, "timeout tunnel"),
            (Proxy::Envoy, "upgrade_configs"),
            (Proxy::Traefik, "middleware"),
            (Proxy::Caddy, "reverse_proxy"),
            (Proxy::Varnish, "return (pipe)"),
            (Proxy::Lighttpd, "proxy.header"),
        ] {
            let f = Front {
                kind: p.code(),
                evidence: "peer_process",
                detail: String::new(),
                sender: Sender::Proxy(p),
            };
            let fix = fix(&f, Problem::Http10);
            assert!(fix.contains(words), "{p:?}: {fix}");
            for other in PROXIES.into_iter().filter(|o| *o != p) {
                let f = Front {
                    sender: Sender::Proxy(other),
                    ..f.clone()
                };
                assert!(
                    !super::fix(&f, Problem::Http10).contains(words),
                    "{other:?} says {words}"
                );
            }
        }
        let nginx = Front {
            kind: "nginx",
            evidence: "peer_process",
            detail: String::new(),
            sender: Sender::Proxy(Proxy::Nginx),
        };
        assert!(fix(&nginx, Problem::NoConnectionUpgrade).contains("Connection \"upgrade\""));
        assert!(!fix(&nginx, Problem::NoConnectionUpgrade).contains("proxy_http_version"));
    }

    #[test]
    fn a_plain_local_client_is_the_client_itself() {
        let f = decide(peer("python3").as_ref(), None, Some(&req("")), LOCAL);
        assert_eq!((f.kind, f.evidence), ("client", "peer_process"));
        let fix10 = fix(&f, Problem::Http10);
        assert!(
            fix10.contains("python3 (pid 77) connected directly") && fix10.contains("RFC 6455"),
            "{fix10}"
        );
        assert!(
            !fix10.contains("nginx") && !fix10.contains("proxy_"),
            "{fix10}"
        );
        assert!(fix(&f, Problem::NoConnectionUpgrade).contains("Connection: Upgrade"));
    }

    #[test]
    fn a_local_program_passing_forwarding_headers_is_a_proxy() {
        let f = decide(
            peer("node").as_ref(),
            None,
            Some(&req("X-Forwarded-For: 203.0.113.9\r\n")),
            LOCAL,
        );
        assert_eq!((f.kind, f.evidence), ("proxy", "forwarding_header"));
        assert!(
            f.detail.contains("X-Forwarded-For: 203.0.113.9"),
            "{}",
            f.detail
        );
        assert!(fix(&f, Problem::Http10).starts_with("make node (it forwards"));
    }

    #[test]
    fn the_peer_program_beats_headers() {
        // nginx on this host, behind a Varnish somewhere: nginx wrote the
        // request the server got, so nginx is what to fix.
        let f = decide(
            peer("nginx").as_ref(),
            exe("/usr/sbin/nginx").as_ref(),
            Some(&req("Via: 1.1 varnish (Varnish/7.1)\r\n")),
            LOCAL,
        );
        assert_eq!(f.kind, "nginx");
    }

    /// Issue 25, item 3: a process that names itself nginx (prctl) and
    /// sends `Via: 1.1 nginx` is not nginx unless it runs a root-owned
    /// nginx binary; the report says it calls itself nginx and what it
    /// runs, and no nginx-only fix is given.
    #[test]
    fn a_comm_or_via_claiming_nginx_is_not_proof() {
        let via = req("Via: 1.1 nginx\r\n");
        let python = exe("/usr/bin/python3.11");
        let copied = Some(PeerExe {
            path: "/tmp/x/nginx".into(),
            root_owned: false,
        });
        for (exe, runs) in [
            (python.as_ref(), "runs /usr/bin/python3.11"),
            (
                copied.as_ref(),
                "runs /tmp/x/nginx, not a root-owned binary",
            ),
            (None, "its executable could not be read"),
        ] {
            let f = decide(peer("nginx").as_ref(), exe, Some(&via), LOCAL);
            assert_ne!(f.kind, "nginx", "{f:?}");
            assert_ne!(f.sender, Sender::Proxy(Proxy::Nginx));
            assert!(
                f.detail.contains("it calls itself nginx") && f.detail.contains(runs),
                "{}",
                f.detail
            );
            let fix = fix(&f, Problem::Http10);
            assert!(
                !fix.starts_with("nginx") && !fix.contains("proxy_http_version"),
                "{fix}"
            );
            assert!(
                f.describe().contains("it calls itself nginx"),
                "{}",
                f.describe()
            );
        }
        // The same comm with the real binary is nginx.
        let f = decide(
            peer("nginx").as_ref(),
            exe("/usr/sbin/nginx").as_ref(),
            Some(&via),
            LOCAL,
        );
        assert_eq!(f.sender, Sender::Proxy(Proxy::Nginx));
        // Renamed comm, real binary: still nginx (named by the executable).
        let f = decide(
            peer("worker").as_ref(),
            exe("/usr/sbin/nginx").as_ref(),
            None,
            LOCAL,
        );
        assert_eq!(f.kind, "nginx");
    }

    #[test]
    fn via_naming_a_proxy() {
        for (via, want) in [
            ("1.1 varnish (Varnish/7.1)", Proxy::Varnish),
            (
                "1.1 gw.example (Apache/2.4.57 (Debian))",
                Proxy::ApacheHttpd,
            ),
            ("1.1 Caddy", Proxy::Caddy),
            ("1.0 edge, 1.1 envoy", Proxy::Envoy),
        ] {
            let f = decide(
                None,
                None,
                Some(&req(&format!("Via: {via}\r\n"))),
                "10.0.0.2:5000",
            );
            assert_eq!(f.sender, Sender::Proxy(want), "{via}");
            assert_eq!(f.evidence, "via_header");
            assert_eq!(f.detail, format!("Via: {via}"));
        }
        // A word inside another is no name: "nginxish" is not nginx.
        let f = decide(
            None,
            None,
            Some(&req("Via: 1.1 nginxish\r\n")),
            "10.0.0.2:5000",
        );
        assert_eq!((f.kind, f.evidence), ("proxy", "forwarding_header"));
    }

    #[test]
    fn headers_only_one_proxy_adds() {
        let f = decide(
            None,
            None,
            Some(&req("X-Varnish: 32770\r\n")),
            "10.0.0.2:5000",
        );
        assert_eq!((f.kind, f.evidence), ("varnish", "proxy_header"));
        let f = decide(
            None,
            None,
            Some(&req("x-envoy-expected-rq-timeout-ms: 15000\r\n")),
            "10.0.0.2:5000",
        );
        assert_eq!((f.kind, f.evidence), ("envoy", "proxy_header"));
        assert!(
            f.detail.contains("x-envoy-expected-rq-timeout-ms"),
            "{}",
            f.detail
        );
    }

    #[test]
    fn each_forwarding_header_shows_a_proxy_of_unknown_kind() {
        for h in FORWARDING_HEADERS {
            let f = decide(
                None,
                None,
                Some(&req(&format!("{h}: 198.51.100.7\r\n"))),
                "10.0.0.2:5000",
            );
            assert_eq!((f.kind, f.evidence), ("proxy", "forwarding_header"), "{h}");
            assert!(f.detail.contains(h), "{}", f.detail);
            let fix = fix(&f, Problem::Http10);
            assert!(fix.starts_with("a proxy sits in front"), "{fix}");
            assert!(fix.contains("proxy_http_version 1.1;") && fix.contains("upgrade_configs"));
        }
        // A hidden value still shows the header is there.
        let hidden = parse_request_head(
            b"GET /ws HTTP/1.0\r\nUpgrade: websocket\r\nX-Real-IP: 1.2.3.4\r\n\r\n",
            &Redactor::new(&[], &["X-Real-IP".into()]).expect("redactor"),
        )
        .expect("parses");
        let f = decide(None, None, Some(&hidden), "10.0.0.2:5000");
        assert_eq!(f.kind, "proxy");
        assert_eq!(f.detail, "the request carries X-Real-IP");
    }

    #[test]
    fn no_evidence_is_said_as_such() {
        let f = decide(None, None, Some(&req("")), "10.0.0.2:5000");
        assert_eq!((f.kind, f.evidence), ("unknown", "none"));
        assert!(
            f.detail.contains("not on this host") && f.detail.contains("X-Forwarded-For"),
            "{}",
            f.detail
        );
        let fix10 = fix(&f, Problem::Http10);
        assert!(fix10.contains("the client itself") && fix10.contains("RFC 6455"));
        assert!(!fix10.contains("nginx"), "{fix10}");
        let f = decide(None, None, Some(&req("")), LOCAL);
        assert!(f.detail.contains("was not found"), "{}", f.detail);
        let f = decide(None, None, None, LOCAL);
        assert!(f.detail.contains("not seen"), "{}", f.detail);
    }
}
