//! The root cause across a proxy chain's hops: the report of a hop that
//! closed after another hop of its chain gets `upstream_closed` (or
//! `downstream_closed`) naming the first hop's closer, its diagnosis and
//! its fix. The matcher releases a chain's reports first close first
//! (`pipeline::chain`), so the root's diagnosis is known when the others
//! come; it is remembered a while for hops that close much later.
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use serde::Serialize;

use super::{Diagnosis, Finding};
use crate::model::{CloseReport, ClosedBy, LinkedBy, Side};

/// What the first close of a chain was, as other hops' reports cite it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HopCause {
    /// The hop that closed first (0 nearest the client).
    pub hop: u32,
    /// The process that closed it, when it is on this host.
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// That hop's connection: its server end and client end.
    pub server: SocketAddr,
    pub client: SocketAddr,
    /// That hop's diagnosis.
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// How long before this hop's first close it was.
    pub ms_before: f64,
    /// When it closed (monotonic ns), for the hops that cite it.
    #[serde(skip)]
    pub close_ts_ns: u64,
}

// `ms_before` is never NaN (a difference of integers): equality is total.
impl Eq for HopCause {}

/// Chains whose root is remembered at once (oldest forgotten first): a
/// hop that closes after it was forgotten keeps its own diagnosis.
const MAX_CAUSES: usize = 4096;

#[derive(Debug, Default)]
pub struct ChainCauses {
    by_id: HashMap<String, HopCause>,
    order: VecDeque<String>,
}

impl ChainCauses {
    /// The diagnosis of `r`, with the chain's root cause when another hop
    /// closed first; remembers `r`'s when it is the root.
    pub fn apply(&mut self, r: &CloseReport, own: Diagnosis) -> Diagnosis {
        let Some(chain) = &r.chain else {
            return own;
        };
        let (Some(root), Some(hop), LinkedBy::Handshake | LinkedBy::Thread) =
            (chain.root, chain.hop, chain.linked_by)
        else {
            return own;
        };
        if root.sk == r.sk {
            self.remember(chain.id.clone(), cause_of(r, hop, &own));
            return own;
        }
        if root.hop == hop {
            // The other end of the connection that closed first.
            return own;
        }
        let Some(cause) = self.by_id.get(&chain.id) else {
            return own;
        };
        across(r, hop, cause, own)
    }

    fn remember(&mut self, id: String, cause: HopCause) {
        if self.by_id.len() >= MAX_CAUSES
            && !self.by_id.contains_key(&id)
            && let Some(old) = self.order.pop_front()
        {
            self.by_id.remove(&old);
        }
        if self.by_id.insert(id.clone(), cause).is_none() {
            self.order.push_back(id);
        }
    }
}

fn cause_of(r: &CloseReport, hop: u32, d: &Diagnosis) -> HopCause {
    let local_closer = r.closer.as_ref().filter(|_| r.closed_by == ClosedBy::Local);
    let (server, client) = match r.side {
        Side::Server => (r.local, r.remote),
        Side::Client => (r.remote, r.local),
    };
    HopCause {
        hop,
        pid: local_closer.map(|c| c.pid),
        comm: local_closer.map(|c| c.comm.clone()),
        server,
        client,
        code: d.code,
        message: d.message.clone(),
        fix: d.fix.clone(),
        ms_before: 0.0,
        close_ts_ns: r.close_ts_ns,
    }
}

/// `own`, explained by the chain's first close on hop `cause.hop`.
fn across(r: &CloseReport, hop: u32, cause: &HopCause, own: Diagnosis) -> Diagnosis {
    let upstream = cause.hop > hop;
    let ms = r.close_ts_ns.saturating_sub(cause.close_ts_ns) as f64 / 1e6;
    let ms = (ms * 1000.0).round() / 1000.0;
    let this = match (&r.closer, r.closed_by) {
        (Some(c), ClosedBy::Local) => format!(
            "{} (pid {}) closed {}",
            c.comm,
            c.pid,
            match r.side {
                Side::Server => format!("the client's side ({})", r.remote),
                Side::Client => format!("its connection to {}", r.remote),
            }
        ),
        (_, ClosedBy::Peer) => format!("{} closed this connection", r.remote),
        (_, ClosedBy::Kernel) => "the kernel closed this connection".to_string(),
        (None, ClosedBy::Local) => "this end closed".to_string(),
    };
    let root_who = match (&cause.comm, cause.pid) {
        (Some(comm), Some(pid)) => format!("{comm} (pid {pid})"),
        _ if upstream => format!("the server at {}", cause.server),
        _ => format!("the client at {}", cause.client),
    };
    let root_what = if upstream {
        format!("the upstream connection to {}", cause.server)
    } else {
        format!("the downstream connection from {}", cause.client)
    };
    let message = format!(
        "{this} {ms} ms after {root_who} closed {root_what}, {} hop{} {}: {}: {}",
        cause.hop.abs_diff(hop),
        if cause.hop.abs_diff(hop) == 1 {
            ""
        } else {
            "s"
        },
        if upstream { "up" } else { "down" },
        cause.code,
        cause.message
    );
    let mut also = vec![Finding {
        code: own.code,
        message: own.message,
        fix: own.fix,
    }];
    also.extend(own.also);
    Diagnosis {
        code: if upstream {
            "upstream_closed"
        } else {
            "downstream_closed"
        },
        message,
        fix: cause.fix.clone(),
        also,
        front: own.front,
        cause: Some(HopCause {
            ms_before: ms,
            ..cause.clone()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Chain, ChainRoot, Closer, How, Stacks, Upgrader};
    use wstrace_common::ProbeSet;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn report(
        sk: u64,
        hop: u32,
        side: Side,
        (local, remote): (u16, u16),
        by: ClosedBy,
        closer: Option<(u32, &str)>,
        ts: u64,
    ) -> CloseReport {
        CloseReport {
            sk,
            close_ts_ns: ts,
            upgrade_ts_ns: 0,
            local: addr(local),
            remote: addr(remote),
            closed_by: by,
            how: How::Fin,
            closer: closer.map(|(pid, comm)| Closer {
                pid,
                tid: pid,
                comm: comm.into(),
                at_exit: false,
                exit_code: None,
                stacks: Stacks {
                    kernel: Ok(Vec::new()),
                    user: Ok(Vec::new()),
                    user_copy: None,
                    dwarf: None,
                    fate: Default::default(),
                    shared: None,
                    interp: Default::default(),
                },
            }),
            upgrader: Upgrader {
                pid: 1,
                tid: 1,
                comm: "x".into(),
            },
            bytes_sent_after_upgrade: 0,
            bytes_received_after_upgrade: 0,
            probe: ProbeSet::Tracepoint,
            request_head: Vec::new(),
            close_frames: Vec::new(),
            heartbeat: Default::default(),
            jiffies_at_close: None,
            notes: Vec::new(),
            kernel_close: None,
            tls: None,
            side,
            chain: Some(Chain {
                id: "00000000000000aa".into(),
                hop: Some(hop),
                hops: Some(2),
                upstream: None,
                downstream: None,
                linked_by: LinkedBy::Handshake,
                root: Some(ChainRoot { hop: 1, sk: 4 }),
            }),
        }
    }

    fn diag(code: &'static str, fix: Option<&str>) -> Diagnosis {
        Diagnosis {
            code,
            message: format!("{code} message"),
            fix: fix.map(String::from),
            also: Vec::new(),
            front: None,
            cause: None,
        }
    }

    #[test]
    fn the_edge_names_the_backend_closer_and_carries_its_fix() {
        let mut c = ChainCauses::default();
        let backend = report(
            4,
            1,
            Side::Server,
            (1215, 40000),
            ClosedBy::Local,
            Some((30, "php")),
            1_000_000,
        );
        let d = c.apply(
            &backend,
            diag("http10_upgrade", Some("proxy_http_version 1.1;")),
        );
        assert_eq!(d.code, "http10_upgrade");
        // nginx's upstream socket: same hop as the root, its own story.
        let up = report(
            3,
            1,
            Side::Client,
            (40000, 1215),
            ClosedBy::Peer,
            Some((20, "nginx")),
            1_000_050,
        );
        assert_eq!(c.apply(&up, diag("peer_closed", None)).code, "peer_closed");
        let edge = report(
            2,
            0,
            Side::Server,
            (18080, 50000),
            ClosedBy::Local,
            Some((20, "nginx")),
            1_100_000,
        );
        let d = c.apply(&edge, diag("unknown", None));
        assert_eq!(d.code, "upstream_closed");
        assert_eq!(d.fix.as_deref(), Some("proxy_http_version 1.1;"));
        assert_eq!(
            d.message,
            "nginx (pid 20) closed the client's side (127.0.0.1:50000) 0.1 ms after php (pid 30) closed the upstream connection to 127.0.0.1:1215, 1 hop up: http10_upgrade: http10_upgrade message"
        );
        let cause = d.cause.as_ref().expect("cause");
        assert_eq!(
            (
                cause.pid,
                cause.comm.as_deref(),
                cause.code,
                cause.ms_before
            ),
            (Some(30), Some("php"), "http10_upgrade", 0.1)
        );
        assert_eq!(d.also[0].code, "unknown");
        // The browser's own socket: closed by its peer.
        let browser = report(
            1,
            0,
            Side::Client,
            (50000, 18080),
            ClosedBy::Peer,
            None,
            1_100_050,
        );
        let d = c.apply(&browser, diag("peer_closed", None));
        assert_eq!(d.code, "upstream_closed");
        assert!(
            d.message
                .starts_with("127.0.0.1:18080 closed this connection 0.1 ms after php (pid 30)"),
            "{}",
            d.message
        );
    }

    #[test]
    fn no_root_known_or_no_chain_keeps_the_own_diagnosis() {
        let mut c = ChainCauses::default();
        let edge = report(
            2,
            0,
            Side::Server,
            (18080, 50000),
            ClosedBy::Local,
            Some((20, "nginx")),
            1,
        );
        assert_eq!(c.apply(&edge, diag("unknown", None)).code, "unknown");
        let mut plain = edge.clone();
        plain.chain = None;
        assert_eq!(c.apply(&plain, diag("unknown", None)).code, "unknown");
        let mut amb = edge;
        if let Some(ch) = amb.chain.as_mut() {
            ch.linked_by = LinkedBy::Ambiguous;
        }
        assert_eq!(c.apply(&amb, diag("unknown", None)).code, "unknown");
    }

    #[test]
    fn a_root_downstream_is_downstream_closed_and_memory_is_bounded() {
        let mut c = ChainCauses::default();
        let mut browser = report(
            1,
            0,
            Side::Client,
            (50000, 18080),
            ClosedBy::Local,
            Some((10, "node")),
            5,
        );
        if let Some(ch) = browser.chain.as_mut() {
            ch.root = Some(ChainRoot { hop: 0, sk: 1 });
        }
        c.apply(&browser, diag("client_closed", Some("keep the tab open")));
        let mut backend = report(4, 1, Side::Server, (1215, 40000), ClosedBy::Peer, None, 9);
        if let Some(ch) = backend.chain.as_mut() {
            ch.root = Some(ChainRoot { hop: 0, sk: 1 });
        }
        let d = c.apply(&backend, diag("peer_closed", None));
        assert_eq!(d.code, "downstream_closed");
        assert!(
            d.message
                .contains("node (pid 10) closed the downstream connection from 127.0.0.1:50000"),
            "{}",
            d.message
        );
        for i in 0..MAX_CAUSES + 5 {
            c.remember(format!("{i}"), d.cause.clone().expect("cause"));
        }
        assert_eq!(c.by_id.len(), MAX_CAUSES);
        assert_eq!(c.order.len(), MAX_CAUSES);
    }
}
