//! Tests of proxy chains joined across hosts (`chains.rs`) through the
//! whole report: logs written by the daemon's own JSON renderer, read by
//! the summary, rendered as text, JSON and HTML. A module of its own so
//! that `chains.rs` needs nothing of the summary (imports point one way).
use std::time::Duration;

use serde_json::Value;

use crate::diagnose::Diagnosis;
use crate::enrich::Enriched;
use crate::model::{
    Chain, ChainRoot, CloseReport, ClosedBy, Closer, How, ProcInfo, Stacks, Upgrader, UserWalk,
};
use crate::model::{LinkedBy, Side};
use crate::report::chains::{Joined, MAX_SOCKETS, Unjoined};
use crate::report::row::FIELD_CHARS;
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
        interp: Default::default(),
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
            kernel_stack: Default::default(),
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
        page.contains("<span class=\"unjoined\">unjoined: the tracer on edge saw this handshake")
    );
    let raw: Vec<char> = page
        .chars()
        .filter(|&c| c != '\n' && crate::output::escape::is_unsafe(c))
        .collect();
    assert!(raw.is_empty(), "{raw:?}");
}
