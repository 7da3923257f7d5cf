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
use crate::report::summary::{FIELD_CHARS, Row, clip};

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
            (Some(t), Some(ms)) if ms.is_finite() && ms >= 0.0 && ms < 1e12 => {
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
    crate::report::summary::clip_to(s, 4 * FIELD_CHARS)
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::diagnose::Diagnosis;
    use crate::enrich::Enriched;
    use crate::model::{
        Chain, ChainRoot, CloseReport, ClosedBy, Closer, How, ProcInfo, Stacks, Upgrader, UserWalk,
    };
    use crate::report::summary::{Filters, GroupBy, Summary, render, render_json};

    /// One socket as a host's daemon logged it.
    pub struct Sock {
        pub host: &'static str,
        pub pid: u32,
        pub comm: &'static str,
        pub side: Side,
        pub local: &'static str,
        pub remote: &'static str,
        pub closed_by: ClosedBy,
        /// Close time, µs after 2026-12-07T04:00:00Z on that host's clock.
        pub close_us: u64,
        /// Lifetime after the 101, µs.
        pub life_us: u64,
        pub id: &'static str,
        pub hop: Option<u32>,
        pub hops: u32,
        pub linked_by: LinkedBy,
        pub first: Option<u32>,
        pub code: &'static str,
        pub fix: Option<&'static str>,
    }

    /// The JSON line the daemon writes for `s`: the real `output::json`
    /// renderer, so the shape read here is the shape written.
    pub fn line(s: &Sock) -> String {
        let stacks = Stacks {
            kernel: Ok(vec![]),
            user: Ok(vec![]),
            user_copy: None,
            dwarf: None,
            fate: Default::default(),
            shared: None,
        };
        let r = CloseReport {
            sk: u64::from(s.pid) << 8 | u64::from(s.hop.unwrap_or(0)),
            close_ts_ns: 10_000_000_000 + s.life_us * 1000,
            upgrade_ts_ns: 10_000_000_000,
            local: s.local.parse().expect("addr"),
            remote: s.remote.parse().expect("addr"),
            closed_by: s.closed_by,
            how: How::Fin,
            closer: (s.closed_by == ClosedBy::Local).then(|| Closer {
                pid: s.pid,
                tid: s.pid,
                comm: s.comm.into(),
                at_exit: false,
                exit_code: None,
                stacks,
            }),
            upgrader: Upgrader {
                pid: s.pid,
                tid: s.pid,
                comm: s.comm.into(),
            },
            bytes_sent_after_upgrade: 0,
            bytes_received_after_upgrade: 0,
            probe: wstrace_common::ProbeSet::Tracepoint,
            request_head: Vec::new(),
            close_frames: Vec::new(),
            heartbeat: Default::default(),
            jiffies_at_close: None,
            notes: Vec::new(),
            kernel_close: None,
            tls: None,
            side: s.side,
            chain: Some(Chain {
                id: s.id.into(),
                hop: s.hop,
                hops: (s.linked_by == LinkedBy::Handshake).then_some(s.hops),
                upstream: None,
                downstream: None,
                linked_by: s.linked_by,
                root: s.first.map(|hop| ChainRoot { hop, sk: 0 }),
            }),
        };
        let base = humantime::parse_rfc3339("2026-12-07T04:00:00Z").expect("time");
        let v = crate::output::View {
            enriched: Enriched {
                report: &r,
                ts: base + Duration::from_micros(s.close_us),
                exe: None,
                process: ProcInfo::default(),
                host: s.host,
                kernel_stack: Vec::new(),
                user_stack: std::sync::Arc::default(),
                kernel_stack_errno: None,
                user_stack_errno: None,
                user_walk: UserWalk::default(),
                request: None,
                frames: Vec::new(),
                idle_ms: None,
                peer: None,
                ending: None,
                crash: None,
            },
            diagnosis: Diagnosis {
                code: s.code,
                message: format!("{} closed ({})", s.comm, s.code),
                fix: s.fix.map(String::from),
                also: Vec::new(),
                front: None,
                cause: None,
            },
        };
        crate::output::json::render(&v)
    }

    const ID: &str = "8f3a52c1d09e7b44";

    /// The seed case across two hosts: nginx on `edge` (hop 0 facing the
    /// browser, hop 1 its upstream connection) in front of php on `web-1`,
    /// which closed first. web-1's clock runs 5 ms ahead, so by the clocks
    /// php's close comes last: the join must not depend on them.
    pub fn seed() -> Vec<Sock> {
        let base = Sock {
            host: "edge",
            pid: 993,
            comm: "nginx",
            side: Side::Server,
            local: "10.0.0.1:443",
            remote: "203.0.113.5:55550",
            closed_by: ClosedBy::Local,
            close_us: 300,
            life_us: 250,
            id: ID,
            hop: Some(0),
            hops: 2,
            linked_by: LinkedBy::Handshake,
            first: Some(1),
            code: "upstream_closed",
            fix: Some("proxy_http_version 1.1;"),
        };
        vec![
            Sock { ..base },
            Sock {
                side: Side::Client,
                local: "10.0.0.1:48785",
                remote: "10.0.0.2:1215",
                closed_by: ClosedBy::Peer,
                close_us: 200,
                life_us: 150,
                hop: Some(1),
                code: "peer_closed_first",
                fix: None,
                ..base
            },
            Sock {
                host: "web-1",
                pid: 931,
                comm: "php",
                local: "10.0.0.2:1215",
                remote: "10.0.0.1:48785",
                close_us: 5_150,
                life_us: 100,
                hop: Some(0),
                hops: 1,
                first: Some(0),
                code: "http10_upgrade",
                ..base
            },
        ]
    }

    /// The summary of `socks`, each host's lines in a log of its own.
    pub fn summary_of(socks: &[Sock]) -> Summary {
        let mut s = Summary::default();
        let mut hosts: Vec<&str> = Vec::new();
        for s in socks {
            if !hosts.contains(&s.host) {
                hosts.push(s.host);
            }
        }
        for host in hosts {
            let text: String = socks
                .iter()
                .filter(|s| s.host == host)
                .map(|s| line(s) + "\n")
                .collect();
            s.add_text(&format!("{host}/closes.jsonl"), &text, &Filters::default());
        }
        s
    }

    fn only(s: &Summary) -> Joined {
        let all = s.chains.joined();
        assert_eq!(all.len(), 1, "{all:#?}");
        all.into_iter().next().expect("one chain")
    }

    fn path(j: &Joined) -> Vec<(String, Option<u32>, Side)> {
        j.hops
            .iter()
            .map(|h| (h.row.host.clone(), h.hop, h.side))
            .collect()
    }

    #[test]
    fn two_hosts_join_into_one_chain_rooted_at_the_backend() {
        let s = summary_of(&seed());
        assert_eq!(s.closes, 3);
        let j = only(&s);
        assert_eq!(j.unjoined, None);
        assert_eq!(j.hosts, ["edge", "web-1"]);
        assert_eq!(
            path(&j),
            [
                ("edge".into(), Some(0), Side::Server),
                ("edge".into(), Some(1), Side::Client),
                ("web-1".into(), Some(0), Side::Server),
            ]
        );
        let root = j.root().expect("a root");
        assert_eq!((root.row.host.as_str(), root.row.pid), ("web-1", Some(931)));
        assert_eq!(root.row.diagnosis, "http10_upgrade");
        assert_eq!(root.fix.as_deref(), Some("proxy_http_version 1.1;"));
        let text = render(&s, 5, GroupBy::Program);
        assert!(
            text.contains(&format!(
                "proxy chains (reports joined across hosts by chain.id): 1 (1 joined, 0 unjoined)\n  chain {ID}: 3 sockets on 2 hosts\n    root: php (pid 931) on web-1 closed first (local, fin): http10_upgrade\n"
            )),
            "{text}"
        );
        assert!(
            text.contains("    fix: proxy_http_version 1.1;\n"),
            "{text}"
        );
        assert!(
            text.contains("    * web-1 hop 0 server php (pid 931) 10.0.0.2:1215 ⇄ 10.0.0.1:48785, closed by local (fin): http10_upgrade\n"),
            "{text}"
        );
        let v: Value = serde_json::from_str(&render_json(&s, 5, GroupBy::Program)).expect("JSON");
        let c = &v["chains"];
        assert_eq!(
            (c["count"].as_u64(), c["joined"].as_u64()),
            (Some(1), Some(1))
        );
        let first = &c["list"][0];
        assert_eq!(first["id"], ID);
        assert_eq!(first["root"]["host"], "web-1");
        assert_eq!(first["root"]["code"], "http10_upgrade");
        assert_eq!(first["root"]["fix"], "proxy_http_version 1.1;");
        assert_eq!(first["hops"].as_array().map(Vec::len), Some(3));
        assert_eq!(first["hops"][0]["closed_first_hop"], 1);
    }

    #[test]
    fn logs_read_in_any_order_join_the_same() {
        let mut socks = seed();
        socks.reverse();
        let j = only(&summary_of(&socks));
        assert_eq!(j.root().map(|r| r.row.host.as_str()), Some("web-1"));
        assert_eq!(j.hops[0].row.host, "edge");
        assert_eq!(j.hops[0].hop, Some(0));
    }

    /// Behind address translation (a Kubernetes service) the two ends of
    /// the upstream connection do not mirror each other: the hosts are
    /// ordered by who answered and by their 101s, and the root is still
    /// the backend (the proxy's first close says its peer closed).
    #[test]
    fn without_mirrored_addresses_the_answering_host_is_last() {
        let mut socks = seed();
        socks[2].local = "10.244.1.7:1215";
        socks[2].remote = "10.244.0.3:40001";
        let j = only(&summary_of(&socks));
        assert_eq!(j.unjoined, None);
        assert_eq!(
            j.hops
                .iter()
                .map(|h| h.row.host.as_str())
                .collect::<Vec<_>>(),
            ["edge", "edge", "web-1"]
        );
        assert_eq!(j.root().map(|r| r.row.pid), Some(Some(931)));
    }

    /// Only the proxy host's log: its own first close is the root.
    #[test]
    fn one_host_roots_at_its_closed_first_hop() {
        let socks: Vec<Sock> = seed().into_iter().filter(|s| s.host == "edge").collect();
        let j = only(&summary_of(&socks));
        let root = j.root().expect("root");
        assert_eq!((root.hop, root.side), (Some(1), Side::Client));
    }

    #[test]
    fn an_ambiguous_report_leaves_the_chain_unjoined() {
        let mut socks = seed();
        socks[0].linked_by = LinkedBy::Ambiguous;
        socks[0].hop = None;
        socks[0].first = None;
        let s = summary_of(&socks);
        let j = only(&s);
        assert_eq!(
            j.unjoined,
            Some(Unjoined::MarkedAmbiguous {
                host: "edge".into()
            })
        );
        assert!(j.root().is_none());
        let text = render(&s, 5, GroupBy::Program);
        assert!(text.contains("1 (0 joined, 1 unjoined)"), "{text}");
        assert!(
            text.contains(
                "    unjoined: the tracer on edge saw this handshake on unrelated connections"
            ),
            "{text}"
        );
        let v: Value = serde_json::from_str(&render_json(&s, 5, GroupBy::Program)).expect("JSON");
        assert_eq!(
            v["chains"]["list"][0]["unjoined"]["code"],
            "marked_ambiguous"
        );
        assert_eq!(v["chains"]["list"][0]["root"], Value::Null);
    }

    /// A client replaying another's Key through a second proxy to a second
    /// backend: two hosts answered the same handshake.
    #[test]
    fn two_answering_hosts_cannot_be_one_path() {
        let mut socks = seed();
        let mut other = Sock {
            host: "web-2",
            local: "10.0.0.3:1215",
            remote: "10.0.0.9:40000",
            ..seed().remove(2)
        };
        other.pid = 77;
        socks.push(other);
        let j = only(&summary_of(&socks));
        assert_eq!(
            j.unjoined,
            Some(Unjoined::TwoServers {
                hosts: ["web-1".into(), "web-2".into()]
            })
        );
    }

    #[test]
    fn one_host_logging_a_hop_twice_is_not_a_path() {
        let mut socks = seed();
        socks.push(Sock {
            remote: "198.51.100.1:1",
            ..seed().remove(0)
        });
        let j = only(&summary_of(&socks));
        assert_eq!(
            j.unjoined,
            Some(Unjoined::SameHopTwice {
                host: "edge".into(),
                hop: 0
            })
        );
    }

    #[test]
    fn more_sockets_than_a_path_are_bounded_and_named() {
        let socks: Vec<Sock> = (0..40)
            .map(|i| Sock {
                host: ["a", "b", "c", "d", "e"][i % 5],
                hop: Some(i as u32),
                ..seed().remove(1)
            })
            .collect();
        let s = summary_of(&socks);
        let j = only(&s);
        assert_eq!(j.hops.len(), MAX_SOCKETS + 1);
        assert_eq!(s.chains.excess, 40 - (MAX_SOCKETS as u64 + 1));
        assert_eq!(
            j.unjoined,
            Some(Unjoined::TooManySockets {
                sockets: MAX_SOCKETS + 1
            })
        );
    }

    #[test]
    fn hostile_ids_and_comms_are_escaped_and_bounded() {
        let mut s = Summary::default();
        let id = format!("<script>\u{1b}[31m\u{202e}{}", "x".repeat(5000));
        let mut v: Value = serde_json::from_str(&line(&seed()[0])).expect("JSON");
        v["chain"]["id"] = Value::String(id);
        v["comm"] = Value::String("ng<b>x\u{1b}]0;t\u{7}".into());
        s.add_text("edge", &format!("{v}\n"), &Filters::default());
        // A chain that is not a chain object is counted, not joined.
        v["chain"] = serde_json::json!({"id": 5});
        s.add_text("edge", &format!("{v}\n"), &Filters::default());
        assert_eq!(s.chains.unreadable, 1);
        let j = only(&s);
        assert_eq!(j.id.chars().count(), FIELD_CHARS + 1);
        let text = render(&s, 5, GroupBy::Program);
        for l in text.lines() {
            assert!(!l.chars().any(crate::output::escape::is_unsafe), "{l:?}");
        }
        assert!(
            text.contains("chain <script>\\x1b[31m\\u{202e}xxx"),
            "{text}"
        );
        assert!(text.contains("ng<b>x\\x1b]0;t\\x07 (pid 993)"), "{text}");
        assert!(
            text.contains("(1 reports with an unreadable chain object"),
            "{text}"
        );
    }

    #[test]
    fn the_page_shows_a_chain_as_one_row_leading_with_its_root() {
        let page = crate::report::html::page(&summary_of(&seed()));
        let section = page
            .split_once("<section id=\"chains\">")
            .and_then(|(_, rest)| rest.split_once("</section>"))
            .map(|(s, _)| s)
            .expect("a chains section");
        assert!(section.contains("<h2>Proxy chains: 1</h2>"), "{section}");
        assert_eq!(section.matches("<tr data-chain=").count(), 1, "{section}");
        let summary = section
            .split_once("<summary>")
            .and_then(|(_, r)| r.split_once("</summary>"))
            .map(|(s, _)| s)
            .expect("a summary");
        assert!(
            summary.contains("<b>http10_upgrade</b>: php (pid 931) on web-1 closed first (local, fin) — fix: proxy_http_version 1.1;"),
            "{summary}"
        );
        // Expanded: every hop, client first, the root marked.
        let hops: Vec<&str> = section.split("<tr").skip(4).collect();
        assert_eq!(hops.len(), 3, "{section}");
        assert!(hops[0].contains("<td>edge</td><td>0</td><td>server</td><td>nginx (993)</td>"));
        assert!(
            hops[2].starts_with(" class=\"root\"><td>web-1</td>"),
            "{}",
            hops[2]
        );
        // Every close is still listed in the table of closes.
        assert_eq!(page.matches("<tr data-diag=").count(), 3);
        // No chained report, no section: pages of other logs are as before.
        let mut plain = seed();
        plain.truncate(0);
        assert!(!crate::report::html::page(&summary_of(&plain)).contains("id=\"chains\""));
    }

    #[test]
    fn hostile_chain_values_are_inert_in_the_page() {
        let mut socks = seed();
        socks[2].id = "<img src=x onerror=alert(1)>\u{1b}[2J";
        socks[2].comm = "php</td><script>alert(2)</script>";
        socks[0].linked_by = LinkedBy::Ambiguous;
        socks[0].hop = None;
        socks[0].id = socks[2].id;
        socks[1].id = socks[2].id;
        let page = crate::report::html::page(&summary_of(&socks));
        assert_eq!(page.matches("<script").count(), 1, "only the page's own");
        assert!(!page.contains("<img"));
        assert!(page.contains("&lt;img src=x onerror=alert(1)&gt;\\x1b[2J"));
        assert!(page.contains("php&lt;/td&gt;&lt;script&gt;alert(2)&lt;/script&gt; (931)"));
        assert!(
            page.contains(
                "<span class=\"unjoined\">unjoined: the tracer on edge saw this handshake"
            )
        );
        let raw: Vec<char> = page
            .chars()
            .filter(|&c| c != '\n' && crate::output::escape::is_unsafe(c))
            .collect();
        assert!(raw.is_empty(), "{raw:?}");
    }
}
