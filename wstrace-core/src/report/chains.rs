//! Proxy chains joined across hosts' logs. Every report of a chained
//! socket carries `chain.id`, a keyed digest of the handshake that is the
//! same on the proxy host and the backend host when both run with the same
//! key (the built-in one, or one `--chain-key-file` given to every host).
//! `wstrace report` groups the reports of all its input files by that id:
//! one chain is the hops of one proxied WebSocket from every host, ordered
//! from the client to the server that answered, with its root (the close
//! that came first) named with its diagnosis and fix.
//!
//! A chain is left unjoined, and said so, when it cannot be one path: a
//! report the tracer itself marked `ambiguous` (a reused Key, a forged
//! Accept), one host logging two sockets at the same hop and side, two
//! hosts each holding the server that answered (one handshake has one
//! server end), or more sockets than `MAX_SOCKETS`.
//!
//! Bounded: at most `MAX_CHAINS` ids are kept (later ones counted in
//! `dropped`), each with at most `MAX_SOCKETS + 1` sockets (one more than
//! a path can hold, so that the excess is seen and named), each value cut
//! at `FIELD_CHARS` as the rest of the summary does.
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde_json::Value;

use crate::model::{LinkedBy, Side};
use crate::report::row::{FIELD_CHARS, Row, clip, clip_to};

/// Distinct chain ids kept; more are counted, not joined.
pub const MAX_CHAINS: usize = 65_536;

/// Sockets one chain may have across all hosts: the tracer keeps at most
/// 16 per host and a chain of more than 16 sockets is no proxy path.
pub const MAX_SOCKETS: usize = 16;

/// A report's `chain` object, as `output::json` writes it.
#[derive(Debug, Clone, Deserialize)]
struct ChainIn {
    id: String,
    hop: Option<u32>,
    #[serde(default)]
    hops: Option<u32>,
    linked_by: LinkedBy,
    #[serde(default)]
    closed_first_hop: Option<u32>,
}

/// One socket of a chain as one host logged it.
#[derive(Debug, Clone)]
pub struct Hop {
    /// The close as the table lists it (host, addresses, closer,
    /// diagnosis), values cut at `FIELD_CHARS`.
    pub row: Row,
    pub side: Side,
    /// Its hop on its own host (0 nearest the client there); `None` when
    /// the tracer found the id ambiguous.
    pub hop: Option<u32>,
    /// Hops its host saw.
    pub hops: Option<u32>,
    pub linked_by: LinkedBy,
    /// The hop that closed first, as its host saw it.
    pub closed_first_hop: Option<u32>,
    pub close_ts: Option<SystemTime>,
    /// When its 101 went by: close time less the lifetime.
    pub upgrade_ts: Option<SystemTime>,
    pub message: String,
    pub fix: Option<String>,
}

impl Hop {
    fn closed_by_peer(&self) -> bool {
        self.row.closed_by == "peer"
    }
}

/// Why a chain was left unjoined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unjoined {
    /// The tracer on this host marked the id ambiguous.
    MarkedAmbiguous { host: String },
    /// One host logged two sockets at the same hop and side.
    SameHopTwice { host: String, hop: u32 },
    /// Two hosts each hold the server end that answered the handshake.
    TwoServers { hosts: [String; 2] },
    /// More sockets than one path can have.
    TooManySockets { sockets: usize },
}

impl Unjoined {
    pub fn code(&self) -> &'static str {
        match self {
            Unjoined::MarkedAmbiguous { .. } => "marked_ambiguous",
            Unjoined::SameHopTwice { .. } => "same_hop_twice",
            Unjoined::TwoServers { .. } => "two_servers",
            Unjoined::TooManySockets { .. } => "too_many_sockets",
        }
    }

    /// In words; values raw (escaped by the printer).
    pub fn message(&self) -> String {
        match self {
            Unjoined::MarkedAmbiguous { host } => format!(
                "the tracer on {host} saw this handshake on unrelated connections (a reused Sec-WebSocket-Key or a forged Accept)"
            ),
            Unjoined::SameHopTwice { host, hop } => {
                format!("{host} logged two sockets at hop {hop} with this id")
            }
            Unjoined::TwoServers { hosts } => format!(
                "both {} and {} answered this handshake; one WebSocket has one server",
                hosts[0], hosts[1]
            ),
            Unjoined::TooManySockets { sockets } => format!(
                "{sockets} sockets share this id, more than one proxy path can have ({MAX_SOCKETS})"
            ),
        }
    }
}

/// One chain after the join.
#[derive(Debug, Clone)]
pub struct Joined {
    pub id: String,
    /// From the client to the server that answered when joined; as read
    /// otherwise.
    pub hops: Vec<Hop>,
    /// Distinct hosts.
    pub hosts: Vec<String>,
    /// Index into `hops` of the first close; `None` when unjoined.
    pub root: Option<usize>,
    pub unjoined: Option<Unjoined>,
}

impl Joined {
    pub fn root(&self) -> Option<&Hop> {
        self.root.and_then(|i| self.hops.get(i))
    }
}

/// The chained reports read, by id.
#[derive(Debug, Default)]
pub struct Chains {
    by_id: HashMap<String, Vec<Hop>>,
    /// Chained reports whose id did not fit in `MAX_CHAINS`.
    pub dropped: u64,
    /// Sockets beyond `MAX_SOCKETS + 1` of one id (not kept).
    pub excess: u64,
    /// Reports whose `chain` is not a chain object (a hand-edited or
    /// foreign log): counted, not joined.
    pub unreadable: u64,
}

impl Chains {
    /// Takes the chain of report `v` (already folded into `row`), if any.
    pub fn add(&mut self, v: &Value, row: &Row) {
        let Some(c) = v.get("chain").filter(|c| !c.is_null()) else {
            return;
        };
        let Ok(c) = ChainIn::deserialize(c) else {
            self.unreadable += 1;
            return;
        };
        let side = match v.get("side").and_then(Value::as_str) {
            Some("client") => Side::Client,
            _ => Side::Server,
        };
        let close_ts = v
            .get("ts")
            .and_then(Value::as_str)
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok());
        let upgrade_ts = match (close_ts, row.ms_after_upgrade) {
            (Some(t), Some(ms)) if (0.0..1e12).contains(&ms) => {
                t.checked_sub(Duration::from_secs_f64(ms / 1e3))
            }
            _ => None,
        };
        let text = |p: &str| v.pointer(p).and_then(Value::as_str);
        let hop = Hop {
            row: row.clone(),
            side,
            hop: c.hop,
            hops: c.hops,
            linked_by: c.linked_by,
            closed_first_hop: c.closed_first_hop,
            close_ts,
            upgrade_ts,
            message: cut(text("/diagnosis/message").unwrap_or("")),
            fix: text("/diagnosis/fix").map(cut),
        };
        let id = clip(&c.id);
        let n = self.by_id.len();
        let hops = match self.by_id.get_mut(&id) {
            Some(h) => h,
            None if n < MAX_CHAINS => self.by_id.entry(id).or_default(),
            None => {
                self.dropped += 1;
                return;
            }
        };
        if hops.len() > MAX_SOCKETS {
            self.excess += 1;
        } else {
            hops.push(hop);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Every chain joined, the one whose first close came first first
    /// (then by id).
    pub fn joined(&self) -> Vec<Joined> {
        let mut v: Vec<Joined> = self.by_id.iter().map(|(id, hops)| join(id, hops)).collect();
        let first = |j: &Joined| {
            j.root()
                .and_then(|h| h.close_ts)
                .or_else(|| j.hops.iter().filter_map(|h| h.close_ts).min())
        };
        v.sort_by(|a, b| first(a).cmp(&first(b)).then(a.id.cmp(&b.id)));
        v
    }
}

fn cut(s: &str) -> String {
    clip_to(s, 4 * FIELD_CHARS)
}

/// The sockets of one host, in its own hop order (client end first within
/// a hop).
struct Fragment {
    host: String,
    hops: Vec<Hop>,
}

impl Fragment {
    /// It holds the server end that answered: its last hop has a server end.
    fn answered(&self) -> bool {
        let last = self.hops.iter().filter_map(|h| h.hop).max();
        self.hops
            .iter()
            .any(|h| h.hop == last && h.side == Side::Server)
    }

    fn latest_upgrade(&self) -> Option<SystemTime> {
        self.hops.iter().filter_map(|h| h.upgrade_ts).max()
    }
}

/// `a`'s client end and `b`'s server end are the two ends of one
/// connection (no address translation between them).
fn connects(a: &Fragment, b: &Fragment) -> bool {
    a.hops.iter().any(|x| {
        x.side == Side::Client
            && b.hops.iter().any(|y| {
                y.side == Side::Server && x.row.local == y.row.remote && x.row.remote == y.row.local
            })
    })
}

fn join(id: &str, hops: &[Hop]) -> Joined {
    let mut hosts: Vec<String> = hops.iter().map(|h| h.row.host.clone()).collect();
    hosts.sort();
    hosts.dedup();
    let unjoined = |why: Unjoined| Joined {
        id: id.to_string(),
        hops: hops.to_vec(),
        hosts: hosts.clone(),
        root: None,
        unjoined: Some(why),
    };
    if hops.len() > MAX_SOCKETS {
        return unjoined(Unjoined::TooManySockets {
            sockets: hops.len(),
        });
    }
    if let Some(h) = hops
        .iter()
        .find(|h| h.linked_by == LinkedBy::Ambiguous || h.hop.is_none())
    {
        return unjoined(Unjoined::MarkedAmbiguous {
            host: h.row.host.clone(),
        });
    }
    let mut frags: Vec<Fragment> = hosts
        .iter()
        .map(|host| {
            let mut hs: Vec<Hop> = hops
                .iter()
                .filter(|h| &h.row.host == host)
                .cloned()
                .collect();
            hs.sort_by_key(|h| (h.hop, h.side == Side::Server));
            Fragment {
                host: host.clone(),
                hops: hs,
            }
        })
        .collect();
    for f in &frags {
        if let Some(w) = f
            .hops
            .windows(2)
            .find(|w| w[0].hop == w[1].hop && w[0].side == w[1].side)
        {
            return unjoined(Unjoined::SameHopTwice {
                host: f.host.clone(),
                hop: w[0].hop.unwrap_or(0),
            });
        }
    }
    let servers: Vec<&Fragment> = frags.iter().filter(|f| f.answered()).collect();
    if let [a, b, ..] = servers[..] {
        return unjoined(Unjoined::TwoServers {
            hosts: [a.host.clone(), b.host.clone()],
        });
    }
    order(&mut frags);
    // The root: each host's own first close (its `closed_first_hop`, its
    // own end rather than the peer's), less those that say the peer closed
    // first when that peer's host is in the chain too (its own report is
    // the root); of the rest, the earliest.
    let last = frags.len() - 1;
    let mut candidates: Vec<(usize, usize)> = Vec::new(); // (fragment, hop)
    for (fi, f) in frags.iter().enumerate() {
        let first = f.hops.iter().find_map(|h| h.closed_first_hop);
        let at: Vec<usize> = (0..f.hops.len())
            .filter(|&i| first.is_some() && f.hops[i].hop == first)
            .collect();
        let pick = at
            .iter()
            .copied()
            .min_by_key(|&i| (f.hops[i].closed_by_peer(), f.hops[i].close_ts))
            .or_else(|| (0..f.hops.len()).min_by_key(|&i| f.hops[i].close_ts));
        if let Some(i) = pick {
            candidates.push((fi, i));
        }
    }
    let beyond = |fi: usize, h: &Hop| {
        h.closed_by_peer()
            && match h.side {
                Side::Client => fi < last,
                Side::Server => fi > 0,
            }
    };
    let own: Vec<(usize, usize)> = candidates
        .iter()
        .copied()
        .filter(|&(fi, i)| !beyond(fi, &frags[fi].hops[i]))
        .collect();
    let pool = if own.is_empty() { &candidates } else { &own };
    let root = pool
        .iter()
        .copied()
        .min_by_key(|&(fi, i)| {
            let h = &frags[fi].hops[i];
            (h.close_ts, h.closed_by_peer(), fi)
        })
        .map(|(fi, i)| frags[..fi].iter().map(|f| f.hops.len()).sum::<usize>() + i);
    Joined {
        id: id.to_string(),
        hops: frags.into_iter().flat_map(|f| f.hops).collect(),
        hosts,
        root,
        unjoined: None,
    }
}

/// Orders hosts from the client to the server: by the connections seen
/// from both ends (a proxy host's upstream client end is the backend
/// host's server end) when they link every host into one path; else the
/// host holding the server that answered last and the others by their
/// latest 101, latest first (a proxy writes its 101 downstream after
/// reading the upstream's, so the host nearer the client saw it later;
/// this assumes clocks within that gap, so the address path comes first).
fn order(frags: &mut Vec<Fragment>) {
    let n = frags.len();
    if n < 2 {
        return;
    }
    let next: Vec<Option<usize>> = (0..n)
        .map(|a| {
            let to: Vec<usize> = (0..n)
                .filter(|&b| b != a && connects(&frags[a], &frags[b]))
                .collect();
            match to[..] {
                [b] => Some(b),
                _ => None,
            }
        })
        .collect();
    let starts: Vec<usize> = (0..n).filter(|&b| !next.contains(&Some(b))).collect();
    if let [start] = starts[..] {
        let mut path = vec![start];
        while let Some(b) = next[path[path.len() - 1]] {
            if path.contains(&b) {
                break;
            }
            path.push(b);
        }
        if path.len() == n {
            let mut taken: Vec<Option<Fragment>> = frags.drain(..).map(Some).collect();
            frags.extend(path.into_iter().filter_map(|i| taken[i].take()));
            return;
        }
    }
    frags.sort_by(|a, b| {
        a.answered()
            .cmp(&b.answered())
            .then(b.latest_upgrade().cmp(&a.latest_upgrade()))
            .then(a.host.cmp(&b.host))
    });
}

/// Chains listed one by one in the text summary; all are counted.
pub const CHAINS_SHOWN: usize = 20;

fn side_str(s: Side) -> &'static str {
    s.as_str()
}

fn closer(h: &Hop) -> String {
    match h.row.pid {
        Some(pid) => format!("{} (pid {pid})", h.row.comm),
        None => "(no local process)".into(),
    }
}

/// The chains section of the text summary (nothing when no report was
/// chained). Every value from the logs is escaped.
pub fn render_text(o: &mut String, c: &Chains) {
    use crate::output::escape::text as esc;
    use std::fmt::Write as _;
    if c.is_empty() && c.dropped == 0 && c.unreadable == 0 {
        return;
    }
    let all = c.joined();
    let joined = all.iter().filter(|j| j.unjoined.is_none()).count();
    let _ = writeln!(
        o,
        "\nproxy chains (reports joined across hosts by chain.id): {} ({joined} joined, {} unjoined)",
        all.len(),
        all.len() - joined
    );
    if c.dropped > 0 {
        let _ = writeln!(
            o,
            "  ({} chained reports beyond {MAX_CHAINS} chains counted, not joined)",
            c.dropped
        );
    }
    if c.unreadable > 0 {
        let _ = writeln!(
            o,
            "  ({} reports with an unreadable chain object, not joined)",
            c.unreadable
        );
    }
    for j in all.iter().take(CHAINS_SHOWN) {
        let _ = writeln!(
            o,
            "  chain {}: {} socket{} on {} host{}",
            esc(&j.id),
            j.hops.len(),
            if j.hops.len() == 1 { "" } else { "s" },
            j.hosts.len(),
            if j.hosts.len() == 1 { "" } else { "s" },
        );
        match (&j.unjoined, j.root()) {
            (Some(why), _) => {
                let _ = writeln!(o, "    unjoined: {}", esc(&why.message()));
            }
            (None, Some(r)) => {
                let _ = writeln!(
                    o,
                    "    root: {} on {} closed first ({}, {}): {}",
                    esc(&closer(r)),
                    esc(&r.row.host),
                    esc(&r.row.closed_by),
                    esc(&r.row.how),
                    esc(&r.row.diagnosis)
                );
                if !r.message.is_empty() {
                    let _ = writeln!(o, "          {}", esc(&r.message));
                }
                if let Some(fix) = &r.fix {
                    let _ = writeln!(o, "    fix: {}", esc(fix));
                }
            }
            (None, None) => {}
        }
        for (i, h) in j.hops.iter().enumerate() {
            let _ = writeln!(
                o,
                "    {} {} hop {} {} {} {} ⇄ {}, closed by {} ({}): {}",
                if Some(i) == j.root { "*" } else { "-" },
                esc(&h.row.host),
                h.hop.map_or("?".into(), |n| n.to_string()),
                side_str(h.side),
                esc(&closer(h)),
                esc(&h.row.local),
                esc(&h.row.remote),
                esc(&h.row.closed_by),
                esc(&h.row.how),
                esc(&h.row.diagnosis)
            );
        }
    }
    if all.len() > CHAINS_SHOWN {
        let _ = writeln!(o, "  ... and {} more chains", all.len() - CHAINS_SHOWN);
    }
}

/// The chains of the JSON summary: counts, then every chain with its
/// hops, root and why it was left unjoined.
pub fn to_json(c: &Chains) -> Value {
    use serde_json::json;
    let all = c.joined();
    let hop = |h: &Hop| {
        json!({
            "host": h.row.host, "hop": h.hop, "hops": h.hops, "side": side_str(h.side),
            "ts": h.row.ts, "local": h.row.local, "remote": h.row.remote,
            "closed_by": h.row.closed_by, "how": h.row.how, "pid": h.row.pid,
            "comm": h.row.comm, "program": h.row.program, "diagnosis": h.row.diagnosis,
            "linked_by": h.linked_by.as_str(), "closed_first_hop": h.closed_first_hop,
        })
    };
    let list: Vec<Value> = all
        .iter()
        .map(|j| {
            json!({
                "id": j.id,
                "joined": j.unjoined.is_none(),
                "unjoined": j.unjoined.as_ref().map(|u| json!({"code": u.code(), "message": u.message()})),
                "hosts": j.hosts,
                "root": j.root().map(|r| json!({
                    "host": r.row.host, "hop": r.hop, "side": side_str(r.side),
                    "pid": r.row.pid, "comm": r.row.comm, "program": r.row.program,
                    "closed_by": r.row.closed_by, "how": r.row.how, "ts": r.row.ts,
                    "code": r.row.diagnosis, "message": r.message, "fix": r.fix,
                })),
                "hops": j.hops.iter().map(hop).collect::<Vec<_>>(),
            })
        })
        .collect();
    let joined = all.iter().filter(|j| j.unjoined.is_none()).count();
    json!({
        "count": all.len(),
        "joined": joined,
        "unjoined": all.len() - joined,
        "dropped_reports": c.dropped,
        "unreadable_reports": c.unreadable,
        "list": list,
    })
}
