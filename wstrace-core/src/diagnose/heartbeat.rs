//! Heartbeat timeouts: one end pinged, the other stopped answering, and the
//! pinging end gave up on the connection. The most common close in
//! production (ws's `terminate()` after a missed pong, read deadlines in Go
//! servers, keepalive timeouts in Python's `websockets`), and invisible in
//! the bytes and FINs alone.
//!
//! Two codes, by which end gave up, so a dashboard can tell "our peers went
//! away" from "we stalled" without reading a field:
//! - `heartbeat_timeout`: the local end pinged, the peer stopped answering,
//!   the local end closed. On a server: the client went away; on the
//!   client side (`side: client`): our pings went unanswered, the server
//!   (or the path to it) stopped answering;
//! - `peer_heartbeat_timeout`: the peer pinged, the local end stopped
//!   answering, the peer closed. On a server: the server stalled and the
//!   client gave up; on the client side: the server gave up on our
//!   missing pongs, this client stalled.
//!
//! A close frame sent by the end that gave up does not change the verdict:
//! libraries that send one (`websockets`: 1011 "keepalive ping timeout")
//! say the same thing in their own words, and the 1011 rule's advice (find
//! the exception in the server's log) would send the reader the wrong way.
//! A close frame from the silent end does: it was alive enough to say why.
use super::{Facts, closer_name, peer_name};
use crate::model::{ClosedBy, Direction, Pings, Side};
use crate::protocol::wsframe::close_code_meaning;

type Found = Option<(String, Option<String>)>;

/// Unanswered pings in a row that make a timeout on their own: one ping may
/// still be in flight when an unrelated close comes, two in a row may not.
pub const MISSED_PINGS: u32 = 2;

/// One unanswered ping makes a timeout when it waited at least this long
/// before the close, whatever the close looked like: a pong takes a round
/// trip, and even slow paths bring it back within a second.
pub const ONE_PING_WAIT_MS: f64 = 1000.0;

/// One unanswered ping makes a timeout sooner when the end that sent it
/// gave up the way heartbeat code does: without a close frame (ws's
/// `terminate()` after one missed interval, a Go read deadline) or with a
/// close frame that names the heartbeat (`websockets`: 1011 "keepalive ping
/// timeout"). Libraries let operators set intervals well under a second
/// (ws with a 200 ms interval terminates 200-400 ms after its only ping),
/// and an unrelated close that comes this long after a ping, on a path
/// where the pong had time to come back, is rare; one with a close frame
/// that gives another reason still needs [`ONE_PING_WAIT_MS`].
pub const GAVE_UP_ONE_PING_WAIT_MS: f64 = 100.0;

/// Did the end that pinged (closing in direction `dir`) give up the way
/// heartbeat code does: no close frame, or one whose reason names the
/// heartbeat? The reason is the library's own words, matched loosely.
fn gave_up_on_heartbeat(f: &Facts, dir: Direction) -> bool {
    match f.close_frames.iter().find(|(d, _)| *d == dir) {
        None => true,
        Some((_, frame)) => {
            let reason = frame.reason.to_ascii_lowercase();
            ["ping", "pong", "keepalive", "keep-alive", "heartbeat"]
                .iter()
                .any(|w| reason.contains(w))
        }
    }
}

/// Unanswered pings and how long the oldest waited (ms) before the close,
/// when they make a timeout. `gave_up`: see [`gave_up_on_heartbeat`].
fn missed(p: &Pings, close_ts_ns: u64, gave_up: bool) -> Option<(u32, f64)> {
    let first = p.first_unanswered_ns?;
    let waited_ms = close_ts_ns.saturating_sub(first) as f64 / 1e6;
    let one_ping_wait = if gave_up {
        GAVE_UP_ONE_PING_WAIT_MS
    } else {
        ONE_PING_WAIT_MS
    };
    (p.unanswered >= MISSED_PINGS || (p.unanswered >= 1 && waited_ms >= one_ping_wait))
        .then_some((p.unanswered, waited_ms))
}

pub(super) fn pings(n: u32) -> String {
    if n == 1 {
        "1 ping".into()
    } else {
        format!("{n} pings")
    }
}

/// What the closing end's close frame said, if it sent one.
fn with_frame(f: &Facts, dir: Direction) -> String {
    match f.close_frames.iter().find(|(d, _)| *d == dir) {
        None => " without a close frame".into(),
        Some((_, frame)) => match frame.code {
            Some(c) if frame.reason.is_empty() => {
                format!(" with a close frame {c} ({})", close_code_meaning(c))
            }
            Some(c) => format!(
                " with a close frame {c} ({}), reason {:?}",
                close_code_meaning(c),
                frame.reason
            ),
            None => " with a close frame without a status code".into(),
        },
    }
}

/// Before: answered pings show the other end did answer, until it stopped.
fn history(p: &Pings) -> String {
    match p.pongs {
        0 => "no pong ever came back".into(),
        1 => "after 1 pong earlier".into(),
        n => format!("after {n} pongs earlier"),
    }
}

/// The local end's pings still unanswered when the peer closed (count, and
/// how long the oldest waited in ms), by the same measure as a timeout:
/// the peer had stopped answering before it hung up.
pub(super) fn unanswered_at_close(f: &Facts) -> Option<(u32, f64)> {
    missed(&f.heartbeat.local, f.close_ts_ns, false)
}

pub fn heartbeat_timeout(f: &Facts) -> Found {
    if f.closed_by != ClosedBy::Local
        || f.close_frames
            .iter()
            .any(|(d, _)| *d == Direction::Received)
    {
        return None;
    }
    let p = &f.heartbeat.local;
    let (n, waited) = missed(p, f.close_ts_ns, gave_up_on_heartbeat(f, Direction::Sent))?;
    if f.side == Side::Client {
        let message = format!(
            "this client ({}) sent {} that the server ({}) never answered ({}; the oldest waited {:.0} ms), \
             then closed the connection{}: our pings went unanswered, the server stopped answering \
             (a stalled or overloaded server, or a network or proxy between that drops pongs or the connection)",
            closer_name(f),
            pings(n),
            peer_name(f),
            history(p),
            waited,
            with_frame(f, Direction::Sent),
        );
        let fix = "this client's heartbeat did its job: reconnect with backoff. Then look at the server at \
                   this time (a blocked event loop, CPU starvation, GC pauses, a hung process) and at the path: \
                   every proxy and load balancer between must pass WebSocket pings and pongs; if the server is \
                   only slow, allow a longer ping timeout"
            .to_string();
        return Some((message, Some(fix)));
    }
    let message = format!(
        "{} sent {} that the client ({}) never answered ({}; the oldest waited {:.0} ms), \
         then closed the connection{}: the client stopped answering pings \
         (a frozen browser tab, a sleeping phone, a network or proxy that drops pongs)",
        closer_name(f),
        pings(n),
        peer_name(f),
        history(p),
        waited,
        with_frame(f, Direction::Sent),
    );
    let fix = "the server's heartbeat did its job: a tab or phone that wakes reconnects. If many \
               clients time out at once, look at the path: every proxy and load balancer between \
               must pass WebSocket control frames (pings and pongs) and keep the connection; if \
               clients on slow networks answer late, allow more missed pings or a longer ping timeout"
        .to_string();
    Some((message, Some(fix)))
}

pub fn peer_heartbeat_timeout(f: &Facts) -> Found {
    if f.closed_by != ClosedBy::Peer || f.close_frames.iter().any(|(d, _)| *d == Direction::Sent) {
        return None;
    }
    let p = &f.heartbeat.peer;
    let (n, waited) = missed(
        p,
        f.close_ts_ns,
        gave_up_on_heartbeat(f, Direction::Received),
    )?;
    if f.side == Side::Client {
        let message = format!(
            "the server ({}) sent {} that this client ({}) never answered ({}; the oldest waited {:.0} ms), \
             then closed the connection{}: the server gave up on our missing pongs",
            peer_name(f),
            pings(n),
            closer_name(f),
            history(p),
            waited,
            with_frame(f, Direction::Received),
        );
        let fix = format!(
            "client libraries answer pings from their event loop or reader: look for what stalled {} \
             at this time (long synchronous work in a message handler, a blocked event loop, nobody \
             reading the socket, GC pauses, a suspended host), check that proxies between pass pongs, \
             then reconnect with backoff",
            closer_name(f)
        );
        return Some((message, Some(fix)));
    }
    let message = format!(
        "the client ({}) sent {} that {} never answered ({}; the oldest waited {:.0} ms), \
         then closed the connection{}: the server stopped answering pings",
        peer_name(f),
        pings(n),
        closer_name(f),
        history(p),
        waited,
        with_frame(f, Direction::Received),
    );
    let fix = format!(
        "libraries answer pings from their event loop: look for what stalled {} at this time \
         (long synchronous work, a blocked event loop, GC pauses, CPU starvation), and check \
         that proxies between pass pongs back",
        closer_name(f)
    );
    Some((message, Some(fix)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::{diagnose, tests::facts};
    use crate::model::{Heartbeat, How};
    use crate::protocol::wsframe::CloseFrame;

    const MS: u64 = 1_000_000;

    /// Pings every 100 ms from `start`, pongs for the first `answered`.
    fn pinged(count: u32, answered: u32) -> Pings {
        let mut p = Pings::default();
        for i in 0..count {
            let ts = (i as u64 + 1) * 100 * MS;
            p.ping(ts);
            if i < answered {
                p.pong(ts + MS);
            }
        }
        p
    }

    fn local(p: Pings, close_ms: u64) -> Facts {
        Facts {
            heartbeat: Heartbeat {
                local: p,
                ..Heartbeat::default()
            },
            close_ts_ns: close_ms * MS,
            ..facts()
        }
    }

    #[test]
    fn three_missed_pings_then_a_local_close_is_heartbeat_timeout() {
        let f = local(pinged(5, 2), 550);
        let d = diagnose(&f);
        assert_eq!(d.code, "heartbeat_timeout");
        assert!(
            d.message.contains("php (pid 4242) sent 3 pings"),
            "{}",
            d.message
        );
        assert!(d.message.contains("nginx (pid 77)"), "{}", d.message);
        assert!(d.message.contains("after 2 pongs earlier"), "{}", d.message);
        assert!(
            d.message.contains("the oldest waited 250 ms"),
            "{}",
            d.message
        );
        assert!(d.message.contains("without a close frame"), "{}", d.message);
        assert!(
            d.message.contains("stopped answering pings"),
            "{}",
            d.message
        );
        assert!(d.fix.expect("fix").contains("control frames"));
    }

    #[test]
    fn one_missed_ping_counts_only_after_a_second() {
        // ws's terminate(): the pong did not come by the next interval.
        let f = local(pinged(4, 3), 400 + 30_000);
        assert_eq!(diagnose(&f).code, "heartbeat_timeout");
        // A ping in flight when the server closed for another reason.
        let f = local(pinged(4, 3), 401);
        assert_ne!(diagnose(&f).code, "heartbeat_timeout");
    }

    fn closing_with(dir: Direction, code: u16, reason: &str, f: Facts) -> Facts {
        Facts {
            close_frames: vec![(
                dir,
                CloseFrame {
                    code: Some(code),
                    reason: reason.into(),
                },
            )],
            ..f
        }
    }

    #[test]
    fn ws_terminate_at_a_short_interval_is_a_timeout_after_one_ping() {
        // ws's heartbeat at 200 ms, a client that never answered: its only
        // ping at 100 ms, terminate() (no close frame) at the next tick.
        let f = local(pinged(1, 0), 300);
        let d = diagnose(&f);
        assert_eq!(d.code, "heartbeat_timeout");
        assert!(d.message.contains("sent 1 ping that"), "{}", d.message);
        assert!(
            d.message
                .contains("no pong ever came back; the oldest waited 200 ms"),
            "{}",
            d.message
        );
        // Just under the bound: the pong may still be on its way.
        let f = local(pinged(1, 0), 199);
        assert_ne!(diagnose(&f).code, "heartbeat_timeout");
    }

    #[test]
    fn a_close_frame_with_another_reason_still_needs_a_second_after_one_ping() {
        // 200 ms after its only ping the server says it is going away:
        // that is the shutdown, not the heartbeat.
        let f = closing_with(Direction::Sent, 1001, "restart", local(pinged(1, 0), 300));
        assert_eq!(diagnose(&f).code, "server_close_frame");
        // A 1011 for an exception is the exception, not the heartbeat.
        let f = closing_with(
            Direction::Sent,
            1011,
            "internal error",
            local(pinged(1, 0), 300),
        );
        assert_eq!(diagnose(&f).code, "server_close_frame");
        // The same 1011 naming the heartbeat (websockets' own words).
        let f = closing_with(
            Direction::Sent,
            1011,
            "keepalive ping timeout",
            local(pinged(1, 0), 300),
        );
        assert_eq!(diagnose(&f).code, "heartbeat_timeout");
        // And after a second, any close frame from the pinging end.
        let f = closing_with(Direction::Sent, 1001, "restart", local(pinged(1, 0), 1_100));
        assert_eq!(diagnose(&f).code, "heartbeat_timeout");
    }

    #[test]
    fn a_websockets_client_giving_up_after_its_ping_timeout_is_the_peer_timeout() {
        // websockets client, ping_interval 0.2 s, ping_timeout 0.3 s, a
        // server that never answered: one ping, then 1011 and its FIN.
        let f = Facts {
            closed_by: ClosedBy::Peer,
            how: How::Fin,
            heartbeat: Heartbeat {
                peer: pinged(1, 0),
                ..Heartbeat::default()
            },
            close_ts_ns: 420 * MS,
            ..facts()
        };
        let f = closing_with(Direction::Received, 1011, "keepalive ping timeout", f);
        let d = diagnose(&f);
        assert_eq!(d.code, "peer_heartbeat_timeout");
        assert!(
            d.message.contains(
                "with a close frame 1011 (internal server error), reason \"keepalive ping timeout\""
            ),
            "{}",
            d.message
        );
        // The same client closing for its own reason is its close frame.
        let f = closing_with(Direction::Received, 1000, "done", f);
        assert_eq!(diagnose(&f).code, "client_close_frame");
    }

    #[test]
    fn answered_pings_and_no_pings_are_not_timeouts() {
        assert_ne!(
            diagnose(&local(pinged(5, 5), 600)).code,
            "heartbeat_timeout"
        );
        assert_ne!(
            diagnose(&local(Pings::default(), 600)).code,
            "heartbeat_timeout"
        );
        // An unsolicited pong (one-way heartbeat) answers everything before.
        let mut p = pinged(3, 0);
        p.pong(350 * MS);
        assert_eq!(p.unanswered, 0);
        assert_ne!(diagnose(&local(p, 600)).code, "heartbeat_timeout");
    }

    #[test]
    fn the_silent_ends_own_close_frame_wins() {
        let f = Facts {
            close_frames: vec![(
                Direction::Received,
                CloseFrame {
                    code: Some(1001),
                    reason: "bye".into(),
                },
            )],
            ..local(pinged(5, 0), 600)
        };
        assert_eq!(diagnose(&f).code, "client_close_frame");
    }

    #[test]
    fn a_keepalive_1011_from_the_server_is_still_a_heartbeat_timeout() {
        // Python websockets: close frame 1011 "keepalive ping timeout".
        let f = Facts {
            close_frames: vec![(
                Direction::Sent,
                CloseFrame {
                    code: Some(1011),
                    reason: "keepalive ping timeout".into(),
                },
            )],
            ..local(pinged(2, 1), 100 + 20_000)
        };
        let d = diagnose(&f);
        assert_eq!(d.code, "heartbeat_timeout");
        assert!(
            d.message.contains(
                "with a close frame 1011 (internal server error), reason \"keepalive ping timeout\""
            ),
            "{}",
            d.message
        );
    }

    #[test]
    fn a_peer_close_is_not_the_local_heartbeat() {
        let f = Facts {
            closed_by: ClosedBy::Peer,
            ..local(pinged(5, 0), 600)
        };
        assert_ne!(diagnose(&f).code, "heartbeat_timeout");
    }

    #[test]
    fn the_mirror_a_client_that_pinged_a_stalled_server() {
        let f = Facts {
            closed_by: ClosedBy::Peer,
            how: How::Fin,
            heartbeat: Heartbeat {
                peer: pinged(4, 1),
                ..Heartbeat::default()
            },
            close_ts_ns: 500 * MS,
            ..facts()
        };
        let d = diagnose(&f);
        assert_eq!(d.code, "peer_heartbeat_timeout");
        assert!(
            d.message.starts_with("the client (nginx (pid 77)"),
            "{}",
            d.message
        );
        assert!(
            d.message
                .contains("sent 3 pings that php (pid 4242) never answered"),
            "{}",
            d.message
        );
        assert!(d.fix.expect("fix").contains("event loop"));
        // The local end never pinged: not the local rule.
        let f = Facts {
            closed_by: ClosedBy::Local,
            ..f
        };
        assert_ne!(diagnose(&f).code, "peer_heartbeat_timeout");
    }

    /// The local socket read the 101: a Python client (`websockets`) whose
    /// server is nginx-fronted, as the client-side report sees it.
    fn client(f: Facts) -> Facts {
        Facts {
            side: Side::Client,
            request: None,
            closer: Some((5150, "python3".into())),
            peer: Some((77, "node".into())),
            peer_exe: None,
            ..f
        }
    }

    /// Each heartbeat rule on each side: the same facts give the same code
    /// (which end gave up), in that side's words.
    #[test]
    fn each_heartbeat_rule_on_each_side() {
        // The local end pinged, nothing came back, it closed.
        let ours = local(pinged(5, 2), 550);
        let server = diagnose(&ours);
        assert_eq!(server.code, "heartbeat_timeout");
        assert!(
            server.message.contains("the client (nginx (pid 77)"),
            "{}",
            server.message
        );
        assert!(
            server
                .message
                .contains("the client stopped answering pings"),
            "{}",
            server.message
        );
        let d = diagnose(&client(ours));
        assert_eq!(d.code, "heartbeat_timeout");
        assert!(
            d.message.starts_with(
                "this client (python3 (pid 5150)) sent 3 pings that the server (node (pid 77) at 127.0.0.1:50412) never answered (after 2 pongs earlier; the oldest waited 250 ms)"
            ),
            "{}",
            d.message
        );
        assert!(
            d.message
                .contains("our pings went unanswered, the server stopped answering"),
            "{}",
            d.message
        );
        assert!(!d.message.contains("the client stopped"), "{}", d.message);
        let fix = d.fix.expect("fix");
        assert!(
            fix.contains("reconnect with backoff") && fix.contains("look at the server"),
            "{fix}"
        );

        // The peer pinged, the local end never answered, the peer closed.
        let theirs = Facts {
            closed_by: ClosedBy::Peer,
            heartbeat: Heartbeat {
                peer: pinged(4, 1),
                ..Heartbeat::default()
            },
            close_ts_ns: 500 * MS,
            ..facts()
        };
        let server = diagnose(&theirs);
        assert_eq!(server.code, "peer_heartbeat_timeout");
        assert!(
            server
                .message
                .contains("the server stopped answering pings"),
            "{}",
            server.message
        );
        let d = diagnose(&client(theirs));
        assert_eq!(d.code, "peer_heartbeat_timeout");
        assert!(
            d.message.starts_with(
                "the server (node (pid 77) at 127.0.0.1:50412) sent 3 pings that this client (python3 (pid 5150)) never answered"
            ),
            "{}",
            d.message
        );
        assert!(
            d.message
                .ends_with("the server gave up on our missing pongs"),
            "{}",
            d.message
        );
        let fix = d.fix.expect("fix");
        assert!(
            fix.contains("what stalled python3 (pid 5150)")
                && fix.contains("reconnect with backoff"),
            "{fix}"
        );
    }

    /// The server's 1011 "keepalive ping timeout" to a client that stopped
    /// answering is the server giving up on our pongs, not a server error.
    #[test]
    fn a_client_told_keepalive_timeout_by_the_server_is_the_peer_timeout() {
        let f = client(Facts {
            closed_by: ClosedBy::Peer,
            heartbeat: Heartbeat {
                peer: pinged(1, 0),
                ..Heartbeat::default()
            },
            close_frames: vec![(
                Direction::Received,
                CloseFrame {
                    code: Some(1011),
                    reason: "keepalive ping timeout".into(),
                },
            )],
            close_ts_ns: 300 * MS,
            ..facts()
        });
        let d = diagnose(&f);
        assert_eq!(d.code, "peer_heartbeat_timeout");
        assert!(
            d.message.contains("with a close frame 1011"),
            "{}",
            d.message
        );
        // Our own pings unanswered and we closed with the library's 1011:
        // the local rule, in the client's words.
        let f = client(Facts {
            close_frames: vec![(
                Direction::Sent,
                CloseFrame {
                    code: Some(1011),
                    reason: "keepalive ping timeout".into(),
                },
            )],
            ..local(pinged(1, 0), 300)
        });
        let d = diagnose(&f);
        assert_eq!(d.code, "heartbeat_timeout");
        assert!(
            d.message
                .starts_with("this client (python3 (pid 5150)) sent 1 ping"),
            "{}",
            d.message
        );
    }

    /// A client whose pings were answered, or who never pinged, closing or
    /// being closed is not a heartbeat timeout on either side.
    #[test]
    fn answered_pings_are_no_timeout_on_the_client_side_either() {
        for closed_by in [ClosedBy::Local, ClosedBy::Peer] {
            let f = client(Facts {
                closed_by,
                ..local(pinged(5, 5), 600)
            });
            let code = diagnose(&f).code;
            assert!(!code.contains("heartbeat"), "{closed_by:?}: {code}");
            let f = client(Facts {
                closed_by,
                close_ts_ns: 600 * MS,
                ..facts()
            });
            let code = diagnose(&f).code;
            assert!(!code.contains("heartbeat"), "{closed_by:?}: {code}");
        }
    }
}
