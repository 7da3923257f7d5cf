//! Why an upgraded socket closed: an ordered table of rules over the facts the
//! kernel saw (request head, close frames, FIN/RST, who closed, idle time),
//! each giving a stable `code`, a message and, where there is one, a fix.
//!
//! Order matters; the first rule that matches wins (after the rules about
//! how the closing process ended, which come first of all):
//! 0. a heartbeat timeout (one end pinged, the other stopped answering, the
//!    pinging end closed) explains a close frame the closing end sent too;
//! 1. a close frame is the application saying why, in its own words: it
//!    explains more than anything inferred;
//! 2. an RST is a deliberate abort (or unread data), whatever the request was;
//! 3. the HTTP/1.0 and missing-`Connection: upgrade` rules explain a *local*
//!    close right after the 101 (the story this tool was written for);
//! 4. an idle period matching a well-known timeout explains a close by either
//!    side (usually the proxy in front);
//! 5. otherwise, if the peer closed first, that is where to look;
//! 6. `unknown`: the facts are shown, no guess is made.
//!
//! The fix for a bad upgrade request is given in the words of whatever
//! sent it (`front`): a known proxy, another forwarding program, or the
//! client itself; the report says which evidence that rests on.
pub mod chain;
mod ending;
pub mod front;
mod heartbeat;
mod kernel_close;

use serde::Serialize;

use crate::enrich::Enriched;
use crate::model::{ClosedBy, Direction, How, Side};
use crate::protocol::http::{HttpVersion, RequestHead};
use crate::protocol::wsframe::{CloseFrame, close_code_meaning};
use front::{Front, Problem};

/// Everything the rules may look at.
#[derive(Clone, Debug)]
pub struct Facts {
    pub request: Option<RequestHead>,
    pub closed_by: ClosedBy,
    pub how: How,
    /// The local process that closed its end, if one did.
    pub closer: Option<(u32, String)>,
    /// The process at the other end when it is on this host (loopback).
    pub peer: Option<(u32, String)>,
    /// That process's executable, when it could be read.
    pub peer_exe: Option<crate::model::PeerExe>,
    pub remote: String,
    /// Close frames in the order seen; `Sent` = written by the local end.
    pub close_frames: Vec<(Direction, CloseFrame)>,
    pub ms_after_upgrade: f64,
    /// Time since the last data in either direction when the close began.
    pub idle_ms: Option<u64>,
    /// How the closing process ended, if it closed at its exit.
    pub ending: Option<crate::model::ProcessEnd>,
    /// Where it crashed, when a crash ended it.
    pub crash: Option<crate::model::Crash>,
    /// The kernel closed the socket itself, and why.
    pub kernel_close: Option<crate::model::KernelClose>,
    /// Pings and pongs both ways.
    pub heartbeat: crate::model::Heartbeat,
    /// Monotonic ns of the first close (the clock of the heartbeat's times).
    pub close_ts_ns: u64,
    /// Which end the local socket is (it wrote the 101, or read it).
    pub side: Side,
}

impl Facts {
    /// The facts of one enriched report.
    pub fn of(e: &Enriched<'_>) -> Self {
        let r = e.report;
        Facts {
            // The daemon keeps the bytes a socket *read* before its 101 as
            // the request head. A client reads nothing before the 101 (it
            // wrote the request, and writes are not kept as a head), so
            // whatever sits there on the client side is not its request:
            // the request rules get nothing rather than the wrong thing.
            request: match r.side {
                Side::Server => e.request.clone(),
                Side::Client => None,
            },
            closed_by: r.closed_by,
            how: r.how,
            closer: r.closer.as_ref().map(|c| (c.pid, c.comm.clone())),
            peer: e.peer.as_ref().map(|p| (p.pid, p.comm.clone())),
            peer_exe: e.peer.as_ref().and_then(|p| p.exe.clone()),
            remote: r.remote.to_string(),
            close_frames: e.frames.clone(),
            ms_after_upgrade: r.ms_after_upgrade(),
            idle_ms: e.idle_ms,
            ending: e.ending.clone(),
            crash: e.crash.clone(),
            kernel_close: r.kernel_close,
            heartbeat: r.heartbeat,
            close_ts_ns: r.close_ts_ns,
            side: r.side,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnosis {
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// What else the rules found when a process ending came first (e.g.
    /// the request was HTTP/1.0 too).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<Finding>,
    /// What sits in front of the server, for the diagnoses whose fix
    /// depends on it (the upgrade request rules, first or in `also`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub front: Option<Front>,
    /// A proxy chain's first close, on another hop, that this close
    /// followed (`upstream_closed`, `downstream_closed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<chain::HopCause>,
}

/// A secondary finding: a rule that matched after the first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

type RuleFn = fn(&Facts) -> Option<(String, Option<String>)>;
type Rule = (&'static str, RuleFn);

/// Rules about how the closing process ended: ahead of every other rule.
const ENDING_RULES: &[Rule] = &[
    ("process_crashed", ending::process_crashed),
    ("process_killed", ending::process_killed),
    ("process_exited", ending::process_exited),
];

const RULES: &[Rule] = &[
    ("heartbeat_timeout", heartbeat::heartbeat_timeout),
    ("peer_heartbeat_timeout", heartbeat::peer_heartbeat_timeout),
    ("server_close_frame", |f| close_frame_rule(f, Side::Server)),
    ("client_close_frame", |f| close_frame_rule(f, Side::Client)),
    ("abort_rst", abort_rst),
    ("tcp_timeout", kernel_close::tcp_timeout),
    ("kernel_abort", kernel_close::kernel_abort),
    ("http10_upgrade", |f| server_side_only(f, http10_upgrade)),
    ("connection_header_missing_upgrade", |f| {
        server_side_only(f, connection_missing_upgrade)
    }),
    ("idle_timeout", idle_timeout),
    (
        "server_closed_without_close_frame",
        server_closed_without_close_frame,
    ),
    ("peer_closed_first", peer_closed_first),
];

/// The rules whose fix is for what sent the request: their diagnosis
/// carries the `front` verdict it rests on.
const FRONT_RULES: &[&str] = &["http10_upgrade", "connection_header_missing_upgrade"];

pub fn diagnose(f: &Facts) -> Diagnosis {
    let front = |code: &str| FRONT_RULES.contains(&code).then(|| front_of(f));
    for (code, rule) in ENDING_RULES {
        if let Some((message, fix)) = rule(f) {
            // The connection's own story, if it has one, stays in the report.
            let also: Vec<Finding> = first_match(f)
                .map(|(code, message, fix)| Finding { code, message, fix })
                .into_iter()
                .collect();
            let front = also.first().and_then(|a| front(a.code));
            return Diagnosis {
                code,
                message,
                fix,
                also,
                front,
                cause: None,
            };
        }
    }
    match first_match(f) {
        Some((code, message, fix)) => Diagnosis {
            code,
            message,
            fix,
            also: Vec::new(),
            front: front(code),
            cause: None,
        },
        None => Diagnosis {
            code: "unknown",
            message: unknown_message(f),
            fix: None,
            also: Vec::new(),
            front: None,
            cause: None,
        },
    }
}

fn front_of(f: &Facts) -> Front {
    front::decide(
        f.peer.as_ref(),
        f.peer_exe.as_ref(),
        f.request.as_ref(),
        &f.remote,
    )
}

fn first_match(f: &Facts) -> Option<(&'static str, String, Option<String>)> {
    RULES
        .iter()
        .find_map(|(code, rule)| rule(f).map(|(message, fix)| (*code, message, fix)))
}

fn who(p: &Option<(u32, String)>) -> Option<String> {
    p.as_ref().map(|(pid, comm)| format!("{comm} (pid {pid})"))
}

fn closer_name(f: &Facts) -> String {
    who(&f.closer).unwrap_or_else(|| match f.side {
        Side::Server => "the local server".into(),
        Side::Client => "the local client".into(),
    })
}

fn peer_name(f: &Facts) -> String {
    match who(&f.peer) {
        Some(p) => format!("{p} at {}", f.remote),
        None => f.remote.clone(),
    }
}

/// Rules whose facts and words are the server's (the request it read, the
/// 101 it wrote, the fix for what sent the request): on the client side
/// there is no request head to reason about (see [`Facts::of`]) and the
/// fixes would be for the wrong end, so they do not match there.
fn server_side_only(f: &Facts, rule: RuleFn) -> Option<(String, Option<String>)> {
    if f.side == Side::Client {
        return None;
    }
    rule(f)
}

/// `sender`: the end whose close frame came first (it started the closing
/// handshake), the server or the client, whichever end is local.
fn close_frame_rule(f: &Facts, sender: Side) -> Option<(String, Option<String>)> {
    let (dir, frame) = f.close_frames.first()?;
    let wanted = if sender == f.side {
        Direction::Sent
    } else {
        Direction::Received
    };
    if *dir != wanted {
        return None;
    }
    let name = match wanted {
        Direction::Sent => who(&f.closer).unwrap_or_else(|| "the local end".into()),
        Direction::Received => peer_name(f),
    };
    let side = match (sender, f.side) {
        (Side::Server, Side::Server) => format!("the server ({name}) sent"),
        (Side::Client, Side::Server) => format!("the client ({name}) sent"),
        // Phrased for a client: the server is the other end.
        (Side::Server, Side::Client) => format!("the server ({name}) closed first with"),
        (Side::Client, Side::Client) => format!("this client ({name}) sent"),
    };
    let what = match frame.code {
        Some(c) => format!("{c} ({})", close_code_meaning(c)),
        None => "without a status code".into(),
    };
    let reason = if frame.reason.is_empty() {
        String::new()
    } else {
        format!(", reason {:?}", frame.reason)
    };
    let message = format!("{side} a WebSocket close frame {what}{reason}");
    let fix = match (frame.code, sender) {
        (Some(1011), Side::Server) => Some("the server hit an error: look in its log at this time for the exception behind the 1011".into()),
        (Some(1009), _) => Some("a message exceeded the receiver's size limit: raise the limit (e.g. max_size / maxPayload) or send smaller messages".into()),
        (Some(1008), _) => Some("a policy check rejected the client (auth, origin, rate limit): see the reason and the application's policy".into()),
        (Some(1001 | 1012), Side::Server) if f.side == Side::Client => Some("the server went away (shutting down or restarting: expected during deploys): reconnect with backoff".into()),
        (Some(1001 | 1012), Side::Server) => Some("the server is shutting down or restarting: expected during deploys; clients should reconnect with backoff".into()),
        (Some(1002 | 1003 | 1007), _) => Some("the two ends disagree on the protocol or payload: check library versions and message encoding".into()),
        _ => None,
    };
    Some((message, fix))
}

fn abort_rst(f: &Facts) -> Option<(String, Option<String>)> {
    if f.how != How::Rst {
        return None;
    }
    // A timer that aborts: HAProxy resets both sides of a tunnel when its
    // `timeout tunnel` fires (measured: 2002 ms idle, RST on both hops, with
    // `timeout tunnel 2s`). The timeout is the cause, not a zero linger.
    if idle_timeout(f).is_some() {
        return None;
    }
    Some(match f.closed_by {
        ClosedBy::Local => (
            format!("{} aborted the connection with an RST instead of a FIN", closer_name(f)),
            Some("an RST on close means SO_LINGER {1, 0} was set or unread data was left in the receive buffer: read what the peer sent before closing, or drop the zero linger".into()),
        ),
        // A client's server resetting it is `server_closed_without_close_frame`
        // (after the idle timeouts), in the client's words.
        ClosedBy::Peer if f.side == Side::Client => return None,
        ClosedBy::Peer => (
            format!("the peer ({}) reset the connection", peer_name(f)),
            Some("look at the peer: a proxy or client that crashed, timed out or was killed resets its connections".into()),
        ),
        ClosedBy::Kernel => return None,
    })
}

/// The local end closed soon after the 101: the request is what it reacted to.
fn local_close_after_upgrade(f: &Facts) -> bool {
    f.closed_by == ClosedBy::Local
}

fn http10_upgrade(f: &Facts) -> Option<(String, Option<String>)> {
    let req = f.request.as_ref()?;
    if req.version != HttpVersion::Http10 || !local_close_after_upgrade(f) {
        return None;
    }
    let front = front_of(f);
    let from = match (&front.sender, who(&f.peer)) {
        (front::Sender::Client(c), _) => format!(" sent straight from the client {c}"),
        (_, Some(p)) => format!(" from {p}"),
        (front::Sender::Proxy(p), None) => format!(" forwarded by {}", p.name()),
        _ => String::new(),
    };
    let message = format!(
        "the upgrade request{from} was HTTP/1.0 (RFC 6455 requires HTTP/1.1), and {} closed the connection {:.1} ms after its 101: \
         servers such as Swoole close HTTP/1.0 connections without `Connection: keep-alive` after the response",
        closer_name(f),
        f.ms_after_upgrade
    );
    Some((message, Some(front::fix(&front, Problem::Http10))))
}

fn connection_missing_upgrade(f: &Facts) -> Option<(String, Option<String>)> {
    let req = f.request.as_ref()?;
    if req.has_connection_token("upgrade") || !local_close_after_upgrade(f) {
        return None;
    }
    let conn = match req.connection_tokens() {
        t if t.is_empty() => "no Connection header".to_string(),
        t => format!("`Connection: {}`", t.join(", ")),
    };
    let message = format!(
        "the upgrade request had {conn} (no `upgrade` token), and {} closed the connection after its 101",
        closer_name(f)
    );
    let fix = front::fix(&front_of(f), Problem::NoConnectionUpgrade);
    Some((message, Some(fix)))
}

/// Idle timeouts of common proxies and load balancers, in seconds.
const KNOWN_TIMEOUTS: &[(u64, &str)] = &[
    (
        60,
        "nginx `proxy_read_timeout` / `proxy_send_timeout` (default 60 s) or an AWS ALB's idle timeout (default 60 s)",
    ),
    (
        30,
        "a 30 s idle timeout (a common proxy, client or load-balancer setting)",
    ),
    (75, "a 75 s idle timeout"),
    (90, "a 90 s idle timeout"),
    (100, "Cloudflare's 100 s idle timeout"),
    (120, "a 120 s idle timeout"),
    (300, "a 300 s idle timeout"),
    (350, "an AWS NLB's 350 s idle timeout"),
    (600, "a 600 s idle timeout"),
    (3600, "a one-hour idle timeout"),
];

fn matching_timeout(idle_ms: u64) -> Option<&'static str> {
    KNOWN_TIMEOUTS.iter().find_map(|&(secs, what)| {
        let t = secs * 1000;
        let slack = (t / 10).max(1000);
        (idle_ms + slack >= t && idle_ms <= t + slack).then_some(what)
    })
}

/// How far past a whole second a timer-driven close lands (timer slack,
/// scheduling, jiffies granularity).
const WHOLE_SECOND_SLACK_MS: u64 = 150;
/// How far before a whole second a timer-driven close may land: nginx arms
/// its timers from its cached clock (`ngx_current_msec`, updated once per
/// event-loop pass), which lags the kernel's: its `proxy_read_timeout 2s`
/// closed nginx's upstream socket 1987 ms after its last data here.
const WHOLE_SECOND_EARLY_MS: u64 = 50;

fn idle_timeout(f: &Facts) -> Option<(String, Option<String>)> {
    let idle = f.idle_ms?;
    if idle < 1000 {
        return None;
    }
    let age_ms = f.ms_after_upgrade.max(0.0) as u64;
    let known = matching_timeout(idle).map(str::to_string).or_else(|| {
        // Timeouts are configured in whole seconds and fire just after them:
        // idle for N s + a little, for (nearly) the socket's whole life.
        // A person or program closing at a random moment rarely fits.
        let mostly_idle = age_ms > 0 && idle * 10 >= age_ms * 9;
        let past = idle % 1000;
        let whole = past <= WHOLE_SECOND_SLACK_MS || past >= 1000 - WHOLE_SECOND_EARLY_MS;
        (mostly_idle && whole).then(|| format!("a configured {} s timeout", (idle + 500) / 1000))
    });
    known.as_ref()?;
    let by = match f.closed_by {
        ClosedBy::Local => closer_name(f),
        ClosedBy::Peer => format!("the peer ({})", peer_name(f)),
        ClosedBy::Kernel => "the kernel".to_string(),
    };
    let matches = known.map(|k| format!(", matching {k}")).unwrap_or_default();
    let rst = if f.how == How::Rst {
        " with an RST"
    } else {
        ""
    };
    let message = format!(
        "the connection had been idle for {:.1} s when {by} closed it{rst}{matches}",
        idle as f64 / 1000.0
    );
    let fix = match (f.side, f.closed_by) {
        (Side::Server, _) => {
            "send WebSocket pings more often than the idle timeout, or raise the timeout (nginx: `proxy_read_timeout 3600s;` in the location; HAProxy: `timeout tunnel 1h`)"
        }
        // The client's own read or idle timeout fired.
        (Side::Client, ClosedBy::Local) => {
            "this client's own idle or read timeout fired (in a proxy, its upstream timeout: nginx `proxy_read_timeout`, HAProxy `timeout tunnel`): raise it, or have the server (or this client) send WebSocket pings more often than it"
        }
        // The server, or a proxy or load balancer in front of it, timed the client out.
        (Side::Client, _) => {
            "the server or a proxy or load balancer in front of it closes idle connections: send WebSocket pings from this client more often than the timeout (client libraries have a ping interval setting), or have the server's operators raise the timeout; reconnect with backoff"
        }
    };
    Some((message, Some(fix.to_string())))
}

fn peer_closed_first(f: &Facts) -> Option<(String, Option<String>)> {
    if f.closed_by != ClosedBy::Peer {
        return None;
    }
    Some((
        format!(
            "the other end ({}) closed first (FIN): this host only followed",
            peer_name(f)
        ),
        Some(format!(
            "look at {}: its logs at this time say why it closed",
            peer_name(f)
        )),
    ))
}

/// The client side's server hung up without the closing handshake (FIN or
/// RST, no close frame either way): it exited, crashed, was killed or
/// restarted, a proxy in front dropped the connection, or its code closed
/// the socket without one. From the client nothing tells these apart, so
/// the message says what is known and the fix points at the server.
fn server_closed_without_close_frame(f: &Facts) -> Option<(String, Option<String>)> {
    if f.side != Side::Client || f.closed_by != ClosedBy::Peer || !f.close_frames.is_empty() {
        return None;
    }
    let how = match f.how {
        How::Rst => "reset the connection (RST)",
        How::Fin => "closed the connection (FIN)",
        How::Abort => "dropped the connection",
    };
    // Our pings were going unanswered when it closed: it had stopped
    // answering before it hung up (stalled, then died or was dropped).
    let pinging = match heartbeat::unanswered_at_close(f) {
        Some((n, waited)) => format!(
            ", while this client's last {} went unanswered (the oldest waited {waited:.0} ms): it had stopped answering before it closed",
            heartbeat::pings(n)
        ),
        None => String::new(),
    };
    let message = format!(
        "the server ({}) {how} without a WebSocket close frame {:.1} ms after the 101{pinging}: \
         the server process exited, crashed or was killed, or a proxy or load balancer in front of it dropped the connection",
        peer_name(f),
        f.ms_after_upgrade
    );
    let fix = "reconnect with backoff (and jitter, so clients do not all return at once); then look at the server at this time: \
               its log, restarts, crashes or OOM kills (`journalctl`, `kubectl get events`), and any proxy or load balancer in between. \
               A server that shuts down on purpose should send close frames (1001 going away) first"
        .to_string();
    Some((message, Some(fix)))
}

fn unknown_message(f: &Facts) -> String {
    let request = match (&f.request, f.side) {
        (Some(r), _) => format!(
            "request {} with Connection: {}",
            r.version.as_str(),
            r.connection_tokens().join(", ")
        ),
        (None, Side::Server) => "request head not seen".into(),
        (None, Side::Client) => "client side: the request it sent is not kept".into(),
    };
    let idle = f
        .idle_ms
        .map(|i| format!("idle {:.1} s", i as f64 / 1000.0))
        .unwrap_or_else(|| "idle time unknown".into());
    format!(
        "no rule matched: {} closed with a {} {:.1} ms after the 101 ({request}; {idle}; no close frame)",
        closer_name(f),
        f.how.as_str().to_uppercase(),
        f.ms_after_upgrade
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::protocol::http::parse_request_head;
    use crate::redact::Redactor;

    fn req(s: &str) -> Option<RequestHead> {
        parse_request_head(s.as_bytes(), &Redactor::default())
    }

    pub(super) fn facts() -> Facts {
        Facts {
            request: req("GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"),
            closed_by: ClosedBy::Local,
            how: How::Fin,
            closer: Some((4242, "php".into())),
            peer: Some((77, "nginx".into())),
            peer_exe: Some(crate::model::PeerExe {
                path: "/usr/sbin/nginx".into(),
                root_owned: true,
            }),
            remote: "127.0.0.1:50412".into(),
            close_frames: Vec::new(),
            ms_after_upgrade: 0.4,
            idle_ms: Some(0),
            ending: None,
            crash: None,
            kernel_close: None,
            heartbeat: Default::default(),
            close_ts_ns: 0,
            side: Side::Server,
        }
    }

    /// A client (a websockets client) whose server sent close 1001 and
    /// closed: the local socket read the 101 and the server's FIN came first.
    #[test]
    fn client_side_server_going_away_is_phrased_for_the_client() {
        let f = Facts {
            side: Side::Client,
            request: None,
            closed_by: ClosedBy::Peer,
            closer: None,
            peer: Some((77, "python3".into())),
            close_frames: vec![(
                Direction::Received,
                CloseFrame {
                    code: Some(1001),
                    reason: "bye".into(),
                },
            )],
            ..facts()
        };
        let d = diagnose(&f);
        assert_eq!(d.code, "server_close_frame");
        assert!(
            d.message.starts_with(
                "the server (python3 (pid 77) at 127.0.0.1:50412) closed first with a WebSocket close frame 1001 (going away"
            ) && d.message.ends_with("reason \"bye\""),
            "{}",
            d.message
        );
        assert!(d.fix.expect("fix").contains("reconnect with backoff"));
        // The client's own close frame first: this client started it.
        let f = Facts {
            closer: Some((5, "node".into())),
            closed_by: ClosedBy::Local,
            close_frames: vec![(
                Direction::Sent,
                CloseFrame {
                    code: Some(1000),
                    reason: String::new(),
                },
            )],
            ..f
        };
        let d = diagnose(&f);
        assert_eq!(d.code, "client_close_frame");
        assert!(
            d.message.starts_with("this client (node (pid 5)) sent"),
            "{}",
            d.message
        );
    }

    /// The rules about the request the server read and the 101 it wrote do
    /// not speak for a client, even if a request head were at hand: their
    /// fixes are for whatever sent the request to a server.
    #[test]
    fn client_side_skips_the_servers_request_rules() {
        for head in [
            HTTP10,
            "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: keep-alive\r\n\r\n",
        ] {
            for closed_by in [ClosedBy::Local, ClosedBy::Peer] {
                let f = Facts {
                    side: Side::Client,
                    request: req(head),
                    closed_by,
                    ..facts()
                };
                let d = diagnose(&f);
                assert!(
                    !FRONT_RULES.contains(&d.code),
                    "{head:?} {closed_by:?}: {}",
                    d.code
                );
                assert!(d.front.is_none(), "{head:?}: {:?}", d.front);
                let f = Facts {
                    side: Side::Server,
                    ..f
                };
                if closed_by == ClosedBy::Local {
                    assert!(FRONT_RULES.contains(&diagnose(&f).code), "{head:?}");
                }
            }
        }
    }

    fn client_of_a_server() -> Facts {
        Facts {
            side: Side::Client,
            request: None,
            closed_by: ClosedBy::Peer,
            closer: Some((5150, "python3".into())),
            peer: None,
            peer_exe: None,
            remote: "10.0.0.7:443".into(),
            ms_after_upgrade: 1234.5,
            idle_ms: Some(200),
            ..facts()
        }
    }

    /// The server hung up without a close frame: FIN or RST, said for the
    /// client, with a fix for the client (reconnect) and where to look.
    #[test]
    fn a_server_gone_without_a_close_frame_is_said_for_the_client() {
        let f = client_of_a_server();
        let d = diagnose(&f);
        assert_eq!(d.code, "server_closed_without_close_frame");
        assert!(
            d.message.starts_with(
                "the server (10.0.0.7:443) closed the connection (FIN) without a WebSocket close frame 1234.5 ms after the 101: the server process exited, crashed or was killed"
            ),
            "{}",
            d.message
        );
        let fix = d.fix.expect("fix");
        assert!(
            fix.starts_with("reconnect with backoff") && fix.contains("look at the server"),
            "{fix}"
        );
        let d = diagnose(&Facts {
            how: How::Rst,
            ..f.clone()
        });
        assert_eq!(d.code, "server_closed_without_close_frame");
        assert!(
            d.message
                .contains("reset the connection (RST) without a WebSocket close frame"),
            "{}",
            d.message
        );
        // The same facts on a server: the server-side rules, unchanged.
        let server = Facts {
            side: Side::Server,
            ..f.clone()
        };
        assert_eq!(diagnose(&server).code, "peer_closed_first");
        let d = diagnose(&Facts {
            how: How::Rst,
            ..server
        });
        assert_eq!(d.code, "abort_rst");
        assert!(
            d.message.starts_with("the peer (10.0.0.7:443) reset"),
            "{}",
            d.message
        );
    }

    /// Our pings went unanswered and then the server closed: it had stopped
    /// answering first (one ping under a second, the peer hanging up, is
    /// not yet a sign of anything and is not mentioned).
    #[test]
    fn a_server_that_closed_while_we_were_pinging_says_so() {
        let mut pings = crate::model::Pings::default();
        pings.ping(100_000_000);
        pings.pong(101_000_000);
        pings.ping(200_000_000);
        pings.ping(300_000_000);
        let f = Facts {
            heartbeat: crate::model::Heartbeat {
                local: pings,
                ..Default::default()
            },
            close_ts_ns: 900_000_000,
            ..client_of_a_server()
        };
        let d = diagnose(&f);
        assert_eq!(d.code, "server_closed_without_close_frame");
        assert!(
            d.message.contains(
                "while this client's last 2 pings went unanswered (the oldest waited 700 ms): it had stopped answering before it closed"
            ),
            "{}",
            d.message
        );
        let mut one = crate::model::Pings::default();
        one.ping(800_000_000);
        let f = Facts {
            heartbeat: crate::model::Heartbeat {
                local: one,
                ..Default::default()
            },
            ..f
        };
        let d = diagnose(&f);
        assert_eq!(d.code, "server_closed_without_close_frame");
        assert!(!d.message.contains("unanswered"), "{}", d.message);
    }

    /// What is not a server hanging up on a client: a close frame (its own
    /// rule), the client closing itself, the kernel giving up.
    #[test]
    fn the_client_rule_needs_a_peer_close_without_a_close_frame() {
        let frame = CloseFrame {
            code: Some(1000),
            reason: String::new(),
        };
        let f = Facts {
            close_frames: vec![(Direction::Received, frame.clone())],
            ..client_of_a_server()
        };
        assert_eq!(diagnose(&f).code, "server_close_frame");
        let f = Facts {
            close_frames: vec![(Direction::Sent, frame)],
            ..client_of_a_server()
        };
        assert_eq!(diagnose(&f).code, "client_close_frame");
        let f = Facts {
            closed_by: ClosedBy::Local,
            ..client_of_a_server()
        };
        assert_eq!(diagnose(&f).code, "unknown");
        let f = Facts {
            closed_by: ClosedBy::Kernel,
            how: How::Abort,
            ..client_of_a_server()
        };
        assert_ne!(diagnose(&f).code, "server_closed_without_close_frame");
    }

    /// An idle timeout explains a close on either side; its fix is for the
    /// end that reads it.
    #[test]
    fn a_timer_that_fires_a_little_early_is_still_a_whole_second_timeout() {
        // nginx's proxy_read_timeout 2s, on its upstream (client) socket.
        let f = Facts {
            side: Side::Client,
            closed_by: ClosedBy::Local,
            idle_ms: Some(1987),
            ms_after_upgrade: 1986.3,
            ..client_of_a_server()
        };
        let d = diagnose(&f);
        assert_eq!(d.code, "idle_timeout", "{d:?}");
        assert!(
            d.message.contains("a configured 2 s timeout"),
            "{}",
            d.message
        );
        // Far from a whole second: no timeout guessed.
        let f = Facts {
            idle_ms: Some(1900),
            ms_after_upgrade: 1900.0,
            ..f
        };
        assert_ne!(diagnose(&f).code, "idle_timeout");
    }

    #[test]
    fn idle_timeout_on_each_side() {
        let idle = |side, closed_by| Facts {
            side,
            closed_by,
            idle_ms: Some(60_020),
            ms_after_upgrade: 60_030.0,
            ..client_of_a_server()
        };
        let d = diagnose(&idle(Side::Server, ClosedBy::Peer));
        assert_eq!(d.code, "idle_timeout");
        assert!(d.fix.expect("fix").contains("proxy_read_timeout"));
        // The server (or a proxy before it) timed the client out: before
        // the server-gone rule, and a fix the client can apply.
        let d = diagnose(&idle(Side::Client, ClosedBy::Peer));
        assert_eq!(d.code, "idle_timeout");
        assert!(
            d.message
                .contains("when the peer (10.0.0.7:443) closed it, matching nginx"),
            "{}",
            d.message
        );
        let fix = d.fix.expect("fix");
        assert!(
            fix.contains("from this client") && !fix.contains("proxy_read_timeout 3600s"),
            "{fix}"
        );
        // Also when the server reset it.
        let d = diagnose(&Facts {
            how: How::Rst,
            ..idle(Side::Client, ClosedBy::Peer)
        });
        assert_eq!(d.code, "idle_timeout");
        // The client's own timeout.
        let d = diagnose(&idle(Side::Client, ClosedBy::Local));
        assert_eq!(d.code, "idle_timeout");
        assert!(
            d.message.contains("when python3 (pid 5150) closed it"),
            "{}",
            d.message
        );
        assert!(
            d.fix
                .expect("fix")
                .starts_with("this client's own idle or read timeout")
        );
    }

    /// Nothing known about the local process: it is "the local client" on
    /// the client side, and the unknown verdict says why there is no request.
    #[test]
    fn an_unnamed_local_end_is_named_by_its_side() {
        let f = Facts {
            closed_by: ClosedBy::Local,
            how: How::Rst,
            closer: None,
            ..client_of_a_server()
        };
        let d = diagnose(&f);
        assert_eq!(d.code, "abort_rst");
        assert!(
            d.message.starts_with("the local client aborted"),
            "{}",
            d.message
        );
        let d = diagnose(&Facts { how: How::Fin, ..f });
        assert_eq!(d.code, "unknown");
        assert!(
            d.message
                .starts_with("no rule matched: the local client closed with a FIN")
                && d.message
                    .contains("client side: the request it sent is not kept"),
            "{}",
            d.message
        );
    }

    const HTTP10: &str = "GET /ws HTTP/1.0\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n";

    #[test]
    fn the_story_http10_behind_nginx() {
        let f = Facts {
            request: req(HTTP10),
            ..facts()
        };
        let d = diagnose(&f);
        assert_eq!(d.code, "http10_upgrade");
        assert!(
            d.message.contains("php (pid 4242)") && d.message.contains("nginx (pid 77)"),
            "{}",
            d.message
        );
        assert!(d.fix.expect("fix").contains("proxy_http_version 1.1;"));
    }

    #[test]
    fn http10_behind_another_proxy_names_it() {
        let f = Facts {
            request: req(HTTP10),
            peer: Some((9, "haproxy".into())),
            peer_exe: Some(crate::model::PeerExe {
                path: "/usr/sbin/haproxy".into(),
                root_owned: true,
            }),
            ..facts()
        };
        let d = diagnose(&f);
        assert_eq!(d.code, "http10_upgrade");
        let front = d.front.expect("front");
        assert_eq!((front.kind, front.evidence), ("haproxy", "peer_process"));
        let fix = d.fix.expect("fix");
        assert!(
            fix.starts_with("HAProxy") && !fix.contains("nginx"),
            "{fix}"
        );
    }

    #[test]
    fn http10_straight_from_a_client_gets_no_proxy_fix() {
        let f = Facts {
            request: req(HTTP10),
            peer: Some((9, "python3".into())),
            peer_exe: None,
            ..facts()
        };
        let d = diagnose(&f);
        assert_eq!(d.code, "http10_upgrade");
        assert!(
            d.message
                .contains("sent straight from the client python3 (pid 9) was HTTP/1.0 (RFC 6455"),
            "{}",
            d.message
        );
        let fix = d.fix.expect("fix");
        assert!(!fix.contains("nginx") && !fix.contains("proxy_"), "{fix}");
        assert_eq!(d.front.expect("front").kind, "client");
        // No peer and no forwarding header: no proxy is claimed either.
        let f = Facts {
            request: req(HTTP10),
            peer: None,
            remote: "192.0.2.1:4000".into(),
            ..facts()
        };
        let d = diagnose(&f);
        assert_eq!(d.front.as_ref().map(|f| f.evidence), Some("none"));
        assert!(!d.fix.expect("fix").contains("nginx"));
    }

    #[test]
    fn http10_forwarded_by_a_proxy_seen_only_in_via() {
        let f = Facts {
            request: req(
                "GET /ws HTTP/1.0\r\nUpgrade: websocket\r\nConnection: upgrade\r\nVia: 1.1 varnish (Varnish/7.1)\r\n\r\n",
            ),
            peer: None,
            ..facts()
        };
        let d = diagnose(&f);
        assert!(d.message.contains("forwarded by Varnish"), "{}", d.message);
        assert!(d.fix.expect("fix").contains("return (pipe)"));
        assert_eq!(d.front.expect("front").evidence, "via_header");
    }

    #[test]
    fn only_request_rules_carry_a_front() {
        let f = Facts {
            closed_by: ClosedBy::Peer,
            ..facts()
        };
        assert!(diagnose(&f).front.is_none());
        assert!(diagnose(&facts()).front.is_none());
    }

    #[test]
    fn connection_without_upgrade_token() {
        let f = Facts {
            request: req(
                "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: keep-alive\r\n\r\n",
            ),
            ..facts()
        };
        let d = diagnose(&f);
        assert_eq!(d.code, "connection_header_missing_upgrade");
        assert!(
            d.message.contains("Connection: keep-alive"),
            "{}",
            d.message
        );
        assert!(d.fix.expect("fix").contains("Connection \"upgrade\""));
        let f = Facts {
            request: req("GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"),
            ..facts()
        };
        assert!(diagnose(&f).message.contains("no Connection header"));
    }

    #[test]
    fn close_frames_both_ways() {
        let cf = |code, reason: &str| CloseFrame {
            code: Some(code),
            reason: reason.into(),
        };
        let f = Facts {
            close_frames: vec![(Direction::Sent, cf(1011, "db down"))],
            ..facts()
        };
        let d = diagnose(&f);
        assert_eq!(d.code, "server_close_frame");
        assert!(
            d.message.contains("1011 (internal server error)") && d.message.contains("db down"),
            "{}",
            d.message
        );
        assert!(d.fix.is_some());
        let f = Facts {
            close_frames: vec![
                (Direction::Received, cf(1001, "")),
                (Direction::Sent, cf(1001, "")),
            ],
            ..facts()
        };
        let d = diagnose(&f);
        assert_eq!(d.code, "client_close_frame");
        assert!(d.message.contains("going away"), "{}", d.message);
        let f = Facts {
            close_frames: vec![(
                Direction::Sent,
                CloseFrame {
                    code: None,
                    reason: String::new(),
                },
            )],
            ..facts()
        };
        assert!(diagnose(&f).message.contains("without a status code"));
    }

    #[test]
    fn close_frame_beats_http10() {
        let f = Facts {
            request: req(HTTP10),
            close_frames: vec![(
                Direction::Received,
                CloseFrame {
                    code: Some(1000),
                    reason: String::new(),
                },
            )],
            ..facts()
        };
        assert_eq!(diagnose(&f).code, "client_close_frame");
    }

    #[test]
    fn rst_beats_http10_and_names_the_side() {
        let f = Facts {
            request: req(HTTP10),
            how: How::Rst,
            ..facts()
        };
        let d = diagnose(&f);
        assert_eq!(d.code, "abort_rst");
        assert!(d.fix.expect("fix").contains("SO_LINGER"));
        let f = Facts {
            how: How::Rst,
            closed_by: ClosedBy::Peer,
            ..facts()
        };
        assert!(
            diagnose(&f)
                .message
                .contains("the peer (nginx (pid 77) at 127.0.0.1:50412) reset")
        );
    }

    #[test]
    fn http10_but_peer_closed_first() {
        let f = Facts {
            request: req(HTTP10),
            closed_by: ClosedBy::Peer,
            ..facts()
        };
        let d = diagnose(&f);
        assert_eq!(d.code, "peer_closed_first");
        assert!(d.message.contains("nginx (pid 77)"));
    }

    /// HAProxy's `timeout tunnel` resets both sides of an idle WebSocket:
    /// an RST after a whole-second idle is the timeout, on the proxy's
    /// sockets (local) and on the backend's (peer), not a zero linger.
    #[test]
    fn a_proxy_timeout_that_resets_is_an_idle_timeout() {
        // Measured: haproxy, `timeout tunnel 2s`, its upstream socket.
        let f = Facts {
            side: Side::Client,
            closed_by: ClosedBy::Local,
            how: How::Rst,
            idle_ms: Some(2002),
            ms_after_upgrade: 2003.0,
            ..client_of_a_server()
        };
        let d = diagnose(&f);
        assert_eq!(d.code, "idle_timeout", "{d:?}");
        assert!(
            d.message
                .contains("closed it with an RST, matching a configured 2 s timeout"),
            "{}",
            d.message
        );
        // The proxy's upstream socket: the fix names the proxy's setting.
        assert!(
            d.fix
                .as_deref()
                .is_some_and(|x| x.contains("HAProxy `timeout tunnel`")),
            "{d:?}"
        );
        // Its client-facing socket, and the backend's, reset by it.
        for closed_by in [ClosedBy::Local, ClosedBy::Peer] {
            let d = diagnose(&Facts {
                side: Side::Server,
                closed_by,
                ..f.clone()
            });
            assert_eq!(d.code, "idle_timeout", "{d:?}");
            assert!(d.fix.expect("fix").contains("timeout tunnel"));
        }
        // A reset at a random moment of an idle life is still a zero linger.
        let d = diagnose(&Facts {
            idle_ms: Some(2400),
            ms_after_upgrade: 2401.0,
            ..f
        });
        assert_eq!(d.code, "abort_rst", "{d:?}");
    }

    #[test]
    fn idle_timeouts() {
        // nginx closed (peer) after 60 s of silence.
        let f = Facts {
            closed_by: ClosedBy::Peer,
            idle_ms: Some(60_020),
            ms_after_upgrade: 65_000.0,
            ..facts()
        };
        let d = diagnose(&f);
        assert_eq!(d.code, "idle_timeout");
        assert!(
            d.message.contains("60.0 s") && d.message.contains("proxy_read_timeout"),
            "{}",
            d.message
        );
        assert!(d.fix.expect("fix").contains("ping"));
        // Not a known value, but idle for the whole life of the socket, and
        // just past a whole second: a configured timeout (nginx 2s).
        let f = Facts {
            idle_ms: Some(2_030),
            ms_after_upgrade: 2_050.0,
            closed_by: ClosedBy::Peer,
            ..facts()
        };
        let d = diagnose(&f);
        assert_eq!(d.code, "idle_timeout");
        assert!(
            d.message.contains("a configured 2 s timeout"),
            "{}",
            d.message
        );
        // Idle all along but at a random moment: someone just left.
        let f = Facts {
            idle_ms: Some(1_500),
            ms_after_upgrade: 1_510.0,
            closed_by: ClosedBy::Peer,
            ..facts()
        };
        assert_eq!(diagnose(&f).code, "peer_closed_first");
        // Busy until just before the close: not a timeout.
        let f = Facts {
            idle_ms: Some(4_500),
            ms_after_upgrade: 40_000.0,
            ..facts()
        };
        assert_eq!(diagnose(&f).code, "unknown");
        // Under a second of idle never counts.
        let f = Facts {
            idle_ms: Some(900),
            ms_after_upgrade: 950.0,
            ..facts()
        };
        assert_eq!(diagnose(&f).code, "unknown");
        assert_eq!(matching_timeout(59_000), Some(KNOWN_TIMEOUTS[0].1));
        assert_eq!(matching_timeout(66_500), None);
        assert_eq!(matching_timeout(29_000), Some(KNOWN_TIMEOUTS[1].1));
    }

    #[test]
    fn unknown_lists_the_facts() {
        let d = diagnose(&facts());
        assert_eq!(d.code, "unknown");
        assert!(
            d.message.contains("HTTP/1.1") && d.message.contains("FIN"),
            "{}",
            d.message
        );
        assert!(d.fix.is_none());
        let f = Facts {
            request: None,
            idle_ms: None,
            closer: None,
            ..facts()
        };
        let d = diagnose(&f);
        assert!(
            d.message.contains("request head not seen") && d.message.contains("the local server")
        );
    }

    #[test]
    fn every_rule_code_is_unique() {
        let mut codes: Vec<&str> = RULES.iter().map(|(c, _)| *c).collect();
        codes.push("unknown");
        let n = codes.len();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), n);
    }
}
