//! Turns the event stream of upgraded sockets into one `CloseReport` per
//! socket: who closed first, how, and which process closed the local end.
//!
//! Pure (no I/O, no clocks of its own): events and `tick(now)` in, reports
//! out, so every ordering the kernel can produce is unit-tested here.
//!
//! Facts the rules rest on (see KERNEL-NOTES and the probes' comments):
//! - ESTABLISHED->FIN_WAIT1 is a local close (or shutdown); it runs in the
//!   closing process's context.
//! - ESTABLISHED->CLOSE_WAIT is the peer's FIN; it runs in softirq (or, on
//!   loopback, the peer's process): its pid means nothing.
//! - CLOSE_WAIT->LAST_ACK is the local process closing after the peer did.
//! - ->CLOSE straight from ESTABLISHED/CLOSE_WAIT is a reset: ours if the
//!   kernel sent one (SO_LINGER 0, unread data at close), the peer's if one
//!   arrived (tcp_receive_reset fires before the transition).
use std::collections::HashMap;

use wstrace_common::{EventKind, ProbeSet, tcp_state};

use super::chain::{self, ChainKey, ChainTable, MemberInfo};
use crate::model::{
    CloseReport, ClosedBy, Closer, Data, Direction, Event, Heartbeat, How, JiffiesSample,
    KernelClose, Side, Upgrader,
};
use crate::protocol::wsframe::{Control, FrameStream};

/// Did the request the server answered ask for an upgrade? True unless a
/// complete head was captured and it has no `Upgrade` header: a head that
/// was not seen (probe set without a read path, budget exceeded) must not
/// cost a real upgrade its report.
fn asked_for_upgrade(head: &[u8]) -> bool {
    match crate::protocol::http::parse_request_head(head, &crate::redact::Redactor::none()) {
        Some(h) if h.complete => h.header("upgrade").is_some(),
        _ => true,
    }
}

const ESTABLISHED_: u8 = tcp_state::ESTABLISHED;
const CLOSE_: u8 = tcp_state::CLOSE;

/// How long to wait, after the peer closed, for a local process to close its
/// end before reporting "still open" (a CLOSE_WAIT leak is itself a finding).
pub const PEER_CLOSE_HOLD_NS: u64 = 2_000_000_000;
/// How long to wait after a reset transition for the reset event that says
/// whose it was (they come from the same kernel call path, microseconds apart).
pub const RESET_SETTLE_NS: u64 = 50_000_000;

#[derive(Debug)]
struct Tracked {
    upgrade: Event,
    first: Option<(ClosedBy, How, u64)>,
    closer: Option<Closer>,
    rst_sent: bool,
    rst_received: bool,
    /// Saw ->CLOSE from a live state; wait for the reset events to settle.
    reset_transition_ts: Option<u64>,
    /// The local end has sent its FIN (FIN_WAIT1 or LAST_ACK).
    local_fin_done: bool,
    /// fentry/kprobe: tcp_close entry on a live socket, before the transition
    /// says whether it ends in a FIN or a RST.
    local_close_ts: Option<u64>,
    last_bytes: (u64, u64),
    /// The peer's FIN arrived (it takes one sequence number, counted in
    /// `bytes_received`).
    peer_fin_seen: bool,
    /// `last_bytes` came from the destroy, after our own FIN was acked (one
    /// sequence number in `bytes_acked`).
    bytes_at_destroy: bool,
    /// Set once reported: later events for the socket are ignored.
    reported: bool,
    request_head: Vec<u8>,
    close_frames: Vec<(Direction, Vec<u8>)>,
    /// Frames after the upgrade, per direction: [received, sent].
    streams: [FrameStream; 2],
    heartbeat: Heartbeat,
    jiffies_at_close: Option<JiffiesSample>,
    /// The kernel closed the socket itself (sk_err at the ->CLOSE transition).
    kernel_close: Option<KernelClose>,
}

pub struct Matcher {
    probe: ProbeSet,
    sockets: HashMap<u64, Tracked>,
    /// Bytes read on traced-port sockets not (yet) upgraded: the request
    /// heads, keyed by socket, oldest dropped beyond `MAX_HEADS`.
    /// The remote end is kept too: a freed socket's address is reused by
    /// the next connection, whose head must not be glued to the old one.
    heads: HashMap<u64, Head>,
    /// (socket, first_ts) of each head in the order they began: the oldest
    /// is evicted in O(1) (with every port traced, every plain HTTP
    /// connection on the host starts a head, and a scan of all heads per
    /// new one cost O(MAX_HEADS) each). Entries whose head is gone are
    /// skipped when met, and dropped when they outnumber the heads.
    head_order: std::collections::VecDeque<(u64, u64)>,
    /// Events for sockets the matcher never saw upgrade (started mid-way,
    /// or an Upgrade event was lost).
    pub orphan_events: u64,
    /// 101-looking writes on sockets whose complete request asked for no
    /// upgrade (ignored).
    pub not_upgrades: u64,
    /// Upgraded sockets dropped because more than `capacity` were open at
    /// once (the kernel's LRU map of the same size dropped them too).
    pub evicted: u64,
    capacity: usize,
    /// The handshake digests of followed sockets, and chained reports
    /// held for their other hops.
    pub chains: ChainTable,
    chain_key: ChainKey,
}

/// The tests' capacity (the CLI's `--max-sockets` default).
#[cfg(test)]
const MAX_TRACKED: usize = 65536;

#[derive(Debug)]
struct Head {
    first_ts: u64,
    remote: std::net::SocketAddr,
    bytes: Vec<u8>,
    /// Bytes of the stream were not copied after `bytes` (a read longer
    /// than the kernel's copy, or the budget spent): nothing read later is
    /// appended, so two distant pieces of the request are never joined.
    cut: bool,
}

/// Request heads of not-yet-upgraded sockets kept at once.
pub const MAX_HEADS: usize = 4096;

impl Matcher {
    #[cfg(test)]
    pub fn new(probe: ProbeSet) -> Self {
        Self::with_capacity(probe, MAX_TRACKED)
    }

    /// `capacity`: the kernel map's size (`--max-sockets`), so userspace
    /// forgets what the kernel forgot, and counts it.
    pub fn with_capacity(probe: ProbeSet, capacity: usize) -> Self {
        Self {
            probe,
            sockets: HashMap::new(),
            heads: HashMap::new(),
            head_order: std::collections::VecDeque::new(),
            orphan_events: 0,
            not_upgrades: 0,
            evicted: 0,
            capacity: capacity.max(1),
            chains: ChainTable::with_capacity(capacity),
            chain_key: ChainKey::default(),
        }
    }

    /// The key of the chain ids (`--chain-key-file`; a built-in one otherwise).
    pub fn set_chain_key(&mut self, key: ChainKey) {
        self.chain_key = key;
    }

    /// The socket joins the chain of its handshake's digest.
    /// `request_ts`: server side, when its request head began to arrive.
    fn join_chain(
        &mut self,
        digest: Option<chain::ChainDigest>,
        up: &Event,
        request_ts: Option<u64>,
        now_ns: u64,
    ) {
        if let Some(d) = digest {
            self.chains.join(
                d,
                MemberInfo {
                    sk: up.sk,
                    upgrade_ts: up.ts_ns,
                    pid: up.pid,
                    tid: up.tid,
                    request_ts,
                    comm: &up.comm,
                    side: if up.client_side {
                        Side::Client
                    } else {
                        Side::Server
                    },
                    local: up.local,
                    remote: up.remote,
                },
                now_ns,
            );
        }
    }

    /// Feed one event; returns the reports it completes (a chained one
    /// after its chain's other hops, see `chain::HOLD_NS`).
    pub fn on_event(&mut self, ev: Event) -> Vec<CloseReport> {
        let now = ev.ts_ns;
        let mut out = Vec::new();
        for r in self.on_event_unchained(ev) {
            out.extend(self.chains.on_report(r, now));
        }
        out
    }

    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.sockets.len()
    }

    fn on_event_unchained(&mut self, ev: Event) -> Vec<CloseReport> {
        let mut out = Vec::new();
        // Signals and crashes are about processes, not sockets (enrich
        // keeps them).
        if matches!(ev.kind, EventKind::Signal | EventKind::Crash) {
            return out;
        }
        if let (EventKind::Data, Some(data)) = (ev.kind, &ev.data) {
            self.on_data(ev.sk, ev.ts_ns, ev.remote, data);
            return out;
        }
        if ev.kind == EventKind::Upgrade {
            let (head, head_ts) = match self.heads.remove(&ev.sk) {
                Some(h) if h.remote == ev.remote => (h.bytes, Some(h.first_ts)),
                _ => (Vec::new(), None),
            };
            if !asked_for_upgrade(&head) {
                // "HTTP/1.1 101 ..." written on a socket whose request asked
                // for no upgrade: a response body that happens to start
                // like a 101, not a protocol switch.
                self.not_upgrades += 1;
                return out;
            }
            if self.sockets.len() >= self.capacity {
                self.evict_oldest();
                self.evicted += 1;
            }
            let last_bytes = (ev.bytes_received, ev.bytes_acked);
            // Server side: the Accept due for the request's Key. The client
            // side's comes with the 101 it read (`on_data`).
            if !ev.client_side {
                let digest = chain::digest_of_request(&self.chain_key, &head);
                self.join_chain(digest, &ev, head_ts, ev.ts_ns);
            }
            self.sockets.insert(
                ev.sk,
                Tracked {
                    upgrade: ev,
                    first: None,
                    closer: None,
                    rst_sent: false,
                    rst_received: false,
                    reset_transition_ts: None,
                    local_fin_done: false,
                    local_close_ts: None,
                    last_bytes,
                    peer_fin_seen: false,
                    bytes_at_destroy: false,
                    reported: false,
                    request_head: head,
                    close_frames: Vec::new(),
                    streams: Default::default(),
                    heartbeat: Heartbeat::default(),
                    jiffies_at_close: None,
                    kernel_close: None,
                },
            );
            return out;
        }
        let sk = ev.sk;
        let Some(t) = self.sockets.get_mut(&sk) else {
            self.orphan_events += 1;
            return out;
        };
        if ev.kind == EventKind::Destroy {
            let t = self.sockets.remove(&sk);
            if let Some(mut t) = t
                && !t.reported
            {
                t.last_bytes = (ev.bytes_received, ev.bytes_acked);
                t.bytes_at_destroy = true;
                // No close seen at all, but the kernel left its error:
                // the ->CLOSE transition was missed, not a local close.
                if t.first.is_none() && t.local_close_ts.is_none() && ev.arg != 0 {
                    apply_transition(&mut t, ESTABLISHED_, CLOSE_, ev.ts_ns, ev.arg);
                }
                out.push(self.report(t, ev.ts_ns));
            }
            return out;
        }
        if t.reported {
            return out;
        }
        t.last_bytes = (ev.bytes_received, ev.bytes_acked);
        match ev.kind {
            EventKind::ResetReceived => {
                t.rst_received = true;
                t.first.get_or_insert((ClosedBy::Peer, How::Rst, ev.ts_ns));
            }
            EventKind::ResetSent => {
                t.rst_sent = true;
                t.first.get_or_insert((ClosedBy::Local, How::Rst, ev.ts_ns));
            }
            EventKind::State => apply_transition(t, ev.old_state, ev.new_state, ev.ts_ns, ev.arg),
            EventKind::Close => {
                let is_reset_by_peer = ev.new_state == tcp_state::CLOSE && t.rst_received;
                if t.closer.is_none()
                    && !is_reset_by_peer
                    && let Some(stacks) = ev.stacks.clone()
                {
                    t.closer = Some(Closer {
                        pid: ev.pid,
                        tid: ev.tid,
                        comm: ev.comm.clone(),
                        at_exit: ev.task_exiting,
                        exit_code: ev.exit_code,
                        stacks: *stacks,
                    });
                }
                if ev.new_state != 0 {
                    // Tracepoint set: the close is itself the transition.
                    // A close is never the kernel's own (no sk_err there).
                    apply_transition(t, ev.old_state, ev.new_state, ev.ts_ns, 0);
                } else if ev.old_state == tcp_state::ESTABLISHED {
                    // fentry/kprobe: tcp_close entry on a live socket. How it
                    // ends (FIN or RST) comes with the next transition.
                    t.local_close_ts.get_or_insert(ev.ts_ns);
                }
            }
            EventKind::Upgrade
            | EventKind::Destroy
            | EventKind::Data
            | EventKind::Signal
            | EventKind::Crash => {}
        }
        if t.jiffies_at_close.is_none() && (t.first.is_some() || t.local_close_ts.is_some()) {
            t.jiffies_at_close = Some(ev.jiffies);
        }
        if ready(t) {
            if let Some(t) = self.sockets.get_mut(&sk) {
                t.reported = true;
            }
            if let Some(t) = self.sockets.get(&sk) {
                out.push(self.report_ref(t, ev.ts_ns));
            }
        }
        out
    }

    /// Reports that have waited long enough: a peer close whose local end
    /// never closed, or a reset whose direction has settled.
    pub fn tick(&mut self, now_ns: u64) -> Vec<CloseReport> {
        let mut out = Vec::new();
        for r in self.tick_unchained(now_ns) {
            out.extend(self.chains.on_report(r, now_ns));
        }
        out.extend(self.chains.tick(now_ns));
        out
    }

    fn tick_unchained(&mut self, now_ns: u64) -> Vec<CloseReport> {
        let due: Vec<u64> = self
            .sockets
            .iter()
            .filter(|(_, t)| !t.reported)
            .filter(|(_, t)| match (t.first, t.reset_transition_ts) {
                (_, Some(ts)) => now_ns.saturating_sub(ts) >= RESET_SETTLE_NS,
                (Some((ClosedBy::Peer, _, ts)), None) => {
                    t.closer.is_none() && now_ns.saturating_sub(ts) >= PEER_CLOSE_HOLD_NS
                }
                _ => false,
            })
            .map(|(&sk, _)| sk)
            .collect();
        let mut out = Vec::new();
        for sk in due {
            if let Some(t) = self.sockets.get_mut(&sk) {
                t.reported = true;
            }
            if let Some(t) = self.sockets.get(&sk) {
                out.push(self.report_ref(t, now_ns));
            }
        }
        out
    }

    /// Everything still pending, for a clean exit: reported with what is known.
    pub fn flush(&mut self, now_ns: u64) -> Vec<CloseReport> {
        let pending: Vec<u64> = self
            .sockets
            .iter()
            .filter(|(_, t)| !t.reported && (t.first.is_some() || t.local_close_ts.is_some()))
            .map(|(&sk, _)| sk)
            .collect();
        let mut out = Vec::new();
        for sk in pending {
            if let Some(t) = self.sockets.remove(&sk) {
                let r = self.report(t, now_ns);
                out.extend(self.chains.on_report(r, now_ns));
            }
        }
        out.extend(self.chains.flush());
        out
    }

    fn on_data(&mut self, sk: u64, ts_ns: u64, remote: std::net::SocketAddr, data: &Data) {
        if let Some(t) = self.sockets.get_mut(&sk) {
            if !t.reported {
                on_frames(t, ts_ns, data);
            }
            if data.upgrade_read && t.upgrade.client_side {
                let digest = chain::digest_of_response(&self.chain_key, &data.bytes);
                let up = t.upgrade.clone();
                self.join_chain(digest, &up, None, ts_ns);
            }
            return;
        }
        if data.direction != Direction::Received {
            return;
        }
        if self.heads.get(&sk).is_some_and(|h| h.remote != remote) {
            self.heads.remove(&sk);
        }
        if !self.heads.contains_key(&sk) {
            if self.heads.len() >= MAX_HEADS {
                self.evict_oldest_head();
            }
            self.head_order.push_back((sk, ts_ns));
            if self.head_order.len() > 2 * MAX_HEADS {
                let heads = &self.heads;
                self.head_order
                    .retain(|(s, ts)| heads.get(s).is_some_and(|h| h.first_ts == *ts) || *s == sk);
            }
        }
        let head = self.heads.entry(sk).or_insert_with(|| Head {
            first_ts: ts_ns,
            remote,
            bytes: Vec::new(),
            cut: false,
        });
        if head.cut {
            return;
        }
        let room = (wstrace_common::HEAD_BUDGET as usize).saturating_sub(head.bytes.len());
        let take = data.bytes.len().min(room);
        head.bytes.extend_from_slice(&data.bytes[..take]);
        head.cut = take < data.bytes.len() || data.total as usize > data.bytes.len();
    }

    /// Drops the head that began first (of those still kept).
    fn evict_oldest_head(&mut self) {
        while let Some((sk, ts)) = self.head_order.pop_front() {
            if self.heads.get(&sk).is_some_and(|h| h.first_ts == ts) {
                self.heads.remove(&sk);
                return;
            }
        }
    }

    fn evict_oldest(&mut self) {
        if let Some((&sk, _)) = self.sockets.iter().min_by_key(|(_, t)| t.upgrade.ts_ns) {
            self.sockets.remove(&sk);
            self.chains.forget(sk);
        }
    }

    fn report(&self, t: Tracked, now_ns: u64) -> CloseReport {
        self.report_ref(&t, now_ns)
    }

    fn report_ref(&self, t: &Tracked, now_ns: u64) -> CloseReport {
        let mut notes = Vec::new();
        let (closed_by, how, close_ts) = match (t.first, t.local_close_ts) {
            (Some(f), _) => f,
            // Closed at tcp_close entry, transition not seen (yet).
            (None, Some(ts)) => (ClosedBy::Local, How::Fin, ts),
            (None, None) => {
                notes.push("the kernel destroyed the socket without a close being seen".into());
                (ClosedBy::Local, How::Fin, now_ns)
            }
        };
        let closer = match (&t.closer, closed_by) {
            // The peer reset the connection: nobody here closed it.
            (_, ClosedBy::Peer) if how == How::Rst => None,
            // The kernel gave up on it: a process that closed the dead
            // socket afterwards did not end the connection.
            (_, ClosedBy::Kernel) => None,
            (c, _) => c.clone(),
        };
        match &closer {
            Some(c) if c.at_exit => notes.push(format!(
                "closed at process exit: {} (pid {}) ended without closing the socket itself",
                c.comm, c.pid
            )),
            None if closed_by == ClosedBy::Peer && how == How::Fin => notes.push(
                "the local end is still open (CLOSE_WAIT): no process here has closed it yet"
                    .into(),
            ),
            _ => {}
        }
        let up = &t.upgrade;
        let (rx, acked) = t.last_bytes;
        // FINs take a sequence number each: they are not payload.
        let rx = rx.saturating_sub(u64::from(t.peer_fin_seen));
        let acked = acked.saturating_sub(u64::from(t.bytes_at_destroy && t.local_fin_done));
        CloseReport {
            sk: up.sk,
            close_ts_ns: close_ts,
            upgrade_ts_ns: up.ts_ns,
            local: up.local,
            remote: up.remote,
            closed_by,
            how,
            closer,
            upgrader: Upgrader {
                pid: up.pid,
                tid: up.tid,
                comm: up.comm.clone(),
            },
            // bytes_acked at the upgrade event was read before the 101 itself
            // went out: discount the 101 write.
            bytes_sent_after_upgrade: acked
                .saturating_sub(up.bytes_acked)
                .saturating_sub(up.arg as u64),
            bytes_received_after_upgrade: rx.saturating_sub(up.bytes_received),
            probe: self.probe,
            request_head: t.request_head.clone(),
            close_frames: {
                // A close frame still waiting for its rest counts as far as
                // it goes.
                let mut frames = t.close_frames.clone();
                for (stream, dir) in t.streams.iter().zip([Direction::Received, Direction::Sent]) {
                    if let Some(bytes) = stream.pending_close()
                        && frames.len() < MAX_CLOSE_FRAMES
                    {
                        frames.push((dir, bytes));
                    }
                }
                frames
            },
            heartbeat: t.heartbeat,
            jiffies_at_close: t.jiffies_at_close,
            notes,
            kernel_close: t.kernel_close,
            tls: up.tls,
            side: if up.client_side {
                Side::Client
            } else {
                Side::Server
            },
            chain: None,
        }
    }
}

/// Close frames kept per socket (the first one is the diagnosis; a few
/// more show the handshake).
const MAX_CLOSE_FRAMES: usize = 4;

/// A read or write after the upgrade, copied because it starts with (or
/// continues) a control frame: every frame in it counts.
fn on_frames(t: &mut Tracked, ts_ns: u64, data: &Data) {
    // Frames from the client are masked (RFC 6455 §5.3): received ones when
    // the local end is the server (it wrote the 101), sent ones when it is
    // the client.
    let client = t.upgrade.client_side;
    let (stream, masked) = match data.direction {
        Direction::Received => (&mut t.streams[0], !client),
        Direction::Sent => (&mut t.streams[1], client),
    };
    let bytes = if data.upgrade_read {
        // The 101's head first: frames start after its blank line.
        match after_head(&data.bytes) {
            Some(rest) if !rest.is_empty() => rest,
            _ => return,
        }
    } else {
        &data.bytes[..]
    };
    let complete = data.total as usize <= data.bytes.len();
    for frame in stream.feed(bytes, masked, complete, data.continues) {
        match (frame, data.direction) {
            (Control::Ping, Direction::Sent) => t.heartbeat.local.ping(ts_ns),
            (Control::Pong, Direction::Received) => t.heartbeat.local.pong(ts_ns),
            (Control::Ping, Direction::Received) => t.heartbeat.peer.ping(ts_ns),
            (Control::Pong, Direction::Sent) => t.heartbeat.peer.pong(ts_ns),
            (Control::Close(bytes), dir) => {
                if t.close_frames.len() < MAX_CLOSE_FRAMES {
                    t.close_frames.push((dir, bytes));
                }
            }
        }
    }
}

/// What follows the first blank line (`\r\n\r\n`) of an HTTP head.
fn after_head(bytes: &[u8]) -> Option<&[u8]> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    Some(&bytes[end + 4..])
}

/// `sk_err`: the socket's hard error at a ->CLOSE transition (0 otherwise).
fn apply_transition(t: &mut Tracked, old: u8, new: u8, ts: u64, sk_err: u32) {
    use tcp_state::*;
    // A local close seen at tcp_close entry dates the close.
    let local_ts = t.local_close_ts.unwrap_or(ts);
    if old == CLOSE_WAIT && t.first.is_none() {
        // The peer's FIN came first, before the socket was followed: a
        // server that closes right after the handshake, whose FIN a client
        // had received by the time its read of the 101 returned. It came no
        // later than the upgrade.
        t.peer_fin_seen = true;
        t.first = Some((ClosedBy::Peer, How::Fin, t.upgrade.ts_ns));
    }
    match (old, new) {
        (ESTABLISHED, FIN_WAIT1) => {
            t.first.get_or_insert((ClosedBy::Local, How::Fin, local_ts));
            t.local_fin_done = true;
        }
        (ESTABLISHED, CLOSE_WAIT) => {
            t.peer_fin_seen = true;
            t.first.get_or_insert((ClosedBy::Peer, How::Fin, ts));
        }
        (CLOSE_WAIT, LAST_ACK) => t.local_fin_done = true,
        (ESTABLISHED | CLOSE_WAIT, CLOSE) => {
            let kernel = (sk_err != 0).then_some(KernelClose { errno: sk_err });
            t.kernel_close = t.kernel_close.or(kernel);
            match kernel {
                // A reset arrived (its event may have been lost): the peer's.
                _ if t.rst_received || kernel.is_some_and(KernelClose::is_reset) => {
                    t.first.get_or_insert((ClosedBy::Peer, How::Rst, ts));
                }
                // The kernel gave up (timeout, abort). An RST it sent on the
                // way (tcp_abort) does not make it a local close.
                Some(_) => {
                    if matches!(t.first, None | Some((ClosedBy::Local, How::Rst, _))) {
                        t.first = Some((ClosedBy::Kernel, How::Abort, ts));
                    }
                }
                None => {
                    t.first.get_or_insert((ClosedBy::Local, How::Rst, local_ts));
                }
            }
            t.reset_transition_ts = Some(ts);
        }
        _ => {}
    }
}

/// Complete when the first close and the local end's closer are both known,
/// and no reset is still settling.
fn ready(t: &Tracked) -> bool {
    if t.reset_transition_ts.is_some() {
        return false; // destroy or tick() finishes it
    }
    match t.first {
        Some((_, How::Fin, _)) => t.local_fin_done && t.closer.is_some(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Stacks;
    use std::net::SocketAddr;
    use std::net::{IpAddr, Ipv4Addr};
    use tcp_state::*;

    const SK: u64 = 0xffff_8880_1234_5000;

    fn ev(kind: EventKind, ts_ns: u64) -> Event {
        Event {
            kind,
            probe: 0,
            old_state: 0,
            new_state: 0,
            pid: 0,
            tid: 0,
            comm: String::new(),
            task_exiting: false,
            arg: 0,
            ts_ns,
            sk: SK,
            bytes_received: 0,
            bytes_acked: 0,
            process_start_ns: 0,
            local: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1215),
            remote: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 50000),
            jiffies: JiffiesSample::default(),
            stacks: None,
            data: None,
            exit_code: None,
            signal: None,
            tls: None,
            client_side: false,
        }
    }

    fn upgrade(ts: u64) -> Event {
        Event {
            pid: 100,
            tid: 101,
            comm: "swoole".into(),
            arg: 129,
            bytes_received: 300,
            bytes_acked: 0,
            ..ev(EventKind::Upgrade, ts)
        }
    }

    fn state(old: u8, new: u8, ts: u64) -> Event {
        // State events fire wherever the kernel is: give them a misleading pid.
        Event {
            old_state: old,
            new_state: new,
            pid: 999,
            comm: "client".into(),
            ..ev(EventKind::State, ts)
        }
    }

    fn stacks() -> Stacks {
        Stacks {
            kernel: Ok(vec![0xffffffff81000000]),
            user: Ok(vec![0x7f0000001000]),
            user_copy: None,
            dwarf: None,
            fate: Default::default(),
            shared: None,
            interp: Default::default(),
        }
    }

    fn close(old: u8, new: u8, pid: u32, ts: u64) -> Event {
        Event {
            old_state: old,
            new_state: new,
            pid,
            tid: pid + 1,
            comm: "swoole".into(),
            stacks: Some(Box::new(stacks())),
            ..ev(EventKind::Close, ts)
        }
    }

    fn one(reports: Vec<CloseReport>) -> CloseReport {
        assert_eq!(
            reports.len(),
            1,
            "expected exactly one report: {reports:#?}"
        );
        reports.into_iter().next().expect("one report")
    }

    #[test]
    fn server_close_after_101_names_the_server_tracepoint_set() {
        let mut m = Matcher::new(ProbeSet::Tracepoint);
        assert!(m.on_event(upgrade(1_000_000)).is_empty());
        let r = one(m.on_event(close(ESTABLISHED, FIN_WAIT1, 100, 2_500_000)));
        assert_eq!(r.closed_by, ClosedBy::Local);
        assert_eq!(r.how, How::Fin);
        let c = r.closer.as_ref().expect("closer");
        assert_eq!((c.pid, c.tid, c.comm.as_str()), (100, 101, "swoole"));
        assert_eq!(r.ms_after_upgrade(), 1.5);
        // Later transitions and the destroy do not report twice.
        assert!(
            m.on_event(state(FIN_WAIT1, FIN_WAIT2, 3_000_000))
                .is_empty()
        );
        assert!(m.on_event(ev(EventKind::Destroy, 4_000_000)).is_empty());
        assert_eq!(m.tracked(), 0);
    }

    #[test]
    fn server_close_fentry_set_waits_for_the_transition() {
        let mut m = Matcher::new(ProbeSet::Fentry);
        m.on_event(upgrade(0));
        // tcp_close entry comes before the state change.
        assert!(m.on_event(close(ESTABLISHED, 0, 100, 10)).is_empty());
        let r = one(m.on_event(state(ESTABLISHED, FIN_WAIT1, 11)));
        assert_eq!((r.closed_by, r.how), (ClosedBy::Local, How::Fin));
        assert_eq!(r.closer.expect("closer").pid, 100);
        assert_eq!(r.close_ts_ns, 10);
    }

    #[test]
    fn client_close_first_is_peer_and_names_the_process_that_closed_after() {
        for (set, closer) in [
            (ProbeSet::Tracepoint, close(CLOSE_WAIT, LAST_ACK, 100, 30)),
            (ProbeSet::Kprobe, close(CLOSE_WAIT, 0, 100, 30)),
        ] {
            let mut m = Matcher::new(set);
            m.on_event(upgrade(0));
            assert!(m.on_event(state(ESTABLISHED, CLOSE_WAIT, 20)).is_empty());
            let mut reports = m.on_event(closer);
            if set == ProbeSet::Kprobe {
                assert!(reports.is_empty());
                reports = m.on_event(state(CLOSE_WAIT, LAST_ACK, 31));
            }
            let r = one(reports);
            assert_eq!((r.closed_by, r.how), (ClosedBy::Peer, How::Fin), "{set:?}");
            assert_eq!(
                r.closer.expect("closer").pid,
                100,
                "not the softirq/peer pid 999"
            );
            assert_eq!(r.close_ts_ns, 20, "the close time is the peer's FIN");
        }
    }

    #[test]
    fn peer_close_without_local_close_reports_close_wait_after_hold() {
        let mut m = Matcher::new(ProbeSet::Tracepoint);
        m.on_event(upgrade(0));
        m.on_event(state(ESTABLISHED, CLOSE_WAIT, 10));
        assert!(m.tick(10 + PEER_CLOSE_HOLD_NS - 1).is_empty());
        let r = one(m.tick(10 + PEER_CLOSE_HOLD_NS));
        assert_eq!(r.closed_by, ClosedBy::Peer);
        assert!(r.closer.is_none());
        assert!(r.notes.iter().any(|n| n.contains("CLOSE_WAIT")));
        assert!(m.tick(u64::MAX).is_empty(), "reported once");
    }

    #[test]
    fn linger_zero_close_is_local_rst() {
        // tcp_disconnect: ->CLOSE first, then the active reset, then destroy.
        let mut m = Matcher::new(ProbeSet::Tracepoint);
        m.on_event(upgrade(0));
        assert!(m.on_event(close(ESTABLISHED, CLOSE, 100, 10)).is_empty());
        assert!(
            m.on_event(Event {
                pid: 100,
                ..ev(EventKind::ResetSent, 11)
            })
            .is_empty()
        );
        let r = one(m.on_event(ev(EventKind::Destroy, 12)));
        assert_eq!((r.closed_by, r.how), (ClosedBy::Local, How::Rst));
        assert_eq!(r.closer.expect("closer").pid, 100);
    }

    #[test]
    fn linger_zero_close_fentry_set_is_local_rst() {
        let mut m = Matcher::new(ProbeSet::Fentry);
        m.on_event(upgrade(0));
        assert!(m.on_event(close(ESTABLISHED, 0, 100, 10)).is_empty());
        assert!(m.on_event(state(ESTABLISHED, CLOSE, 11)).is_empty());
        m.on_event(ev(EventKind::ResetSent, 12));
        let r = one(m.on_event(ev(EventKind::Destroy, 13)));
        assert_eq!(
            (r.closed_by, r.how, r.close_ts_ns),
            (ClosedBy::Local, How::Rst, 10)
        );
        assert_eq!(r.closer.expect("closer").pid, 100);
    }

    #[test]
    fn reset_settles_by_tick_when_destroy_is_not_seen() {
        let mut m = Matcher::new(ProbeSet::Tracepoint);
        m.on_event(upgrade(0));
        m.on_event(close(ESTABLISHED, CLOSE, 100, 10));
        assert!(m.tick(10 + RESET_SETTLE_NS - 1).is_empty());
        let r = one(m.tick(10 + RESET_SETTLE_NS));
        assert_eq!((r.closed_by, r.how), (ClosedBy::Local, How::Rst));
    }

    #[test]
    fn peer_reset_has_no_local_closer_even_in_process_context() {
        // The RST may be processed from the socket backlog in the server's own
        // context: that process did not close anything.
        let mut m = Matcher::new(ProbeSet::Tracepoint);
        m.on_event(upgrade(0));
        m.on_event(ev(EventKind::ResetReceived, 10));
        m.on_event(close(ESTABLISHED, CLOSE, 100, 10));
        let r = one(m.on_event(ev(EventKind::Destroy, 12)));
        assert_eq!((r.closed_by, r.how), (ClosedBy::Peer, How::Rst));
        assert!(r.closer.is_none());
    }

    /// ->CLOSE with the socket's sk_err, as the kernel's own closes record it.
    fn kernel_close(errno: u32, ts: u64) -> Event {
        Event {
            arg: errno,
            ..state(ESTABLISHED, CLOSE, ts)
        }
    }

    #[test]
    fn retransmission_timeout_is_the_kernels_close_not_a_bystanders() {
        // Tracepoint set: the timer fired on whatever task was running (the
        // state event's pid is meaningless); no close event at all.
        let mut m = Matcher::new(ProbeSet::Tracepoint);
        m.on_event(upgrade(0));
        assert!(m.on_event(kernel_close(110, 10)).is_empty());
        let r = one(m.on_event(ev(EventKind::Destroy, 12)));
        assert_eq!((r.closed_by, r.how), (ClosedBy::Kernel, How::Abort));
        assert!(r.closer.is_none());
        let k = r.kernel_close.expect("kernel close");
        assert_eq!(
            (k.reason(), k.error_name().as_str()),
            ("tcp_timeout", "ETIMEDOUT")
        );

        // fentry/kprobe: the server closes the dead socket later; it did not
        // end the connection.
        let mut m = Matcher::new(ProbeSet::Fentry);
        m.on_event(upgrade(0));
        m.on_event(kernel_close(110, 10));
        m.on_event(close(CLOSE, 0, 100, 20));
        let r = one(m.tick(10 + RESET_SETTLE_NS));
        assert_eq!(
            (r.closed_by, r.how, r.close_ts_ns),
            (ClosedBy::Kernel, How::Abort, 10)
        );
        assert!(r.closer.is_none());
    }

    #[test]
    fn a_missed_timeout_transition_is_known_from_the_destroy() {
        // The ->CLOSE tracepoint run was skipped (recursion): the server
        // closes the dead socket, then it is destroyed with sk_err set.
        let mut m = Matcher::new(ProbeSet::Kprobe);
        m.on_event(upgrade(0));
        m.on_event(close(CLOSE, 0, 100, 20));
        let r = one(m.on_event(Event {
            arg: 110,
            ..ev(EventKind::Destroy, 21)
        }));
        assert_eq!((r.closed_by, r.how), (ClosedBy::Kernel, How::Abort));
        assert!(r.closer.is_none());
        assert_eq!(r.kernel_close.map(|k| k.reason()), Some("tcp_timeout"));
    }

    #[test]
    fn an_abort_that_sends_a_reset_is_still_the_kernels() {
        // tcp_abort (ss -K): sk_err, the active reset, then ->CLOSE.
        let mut m = Matcher::new(ProbeSet::Tracepoint);
        m.on_event(upgrade(0));
        m.on_event(ev(EventKind::ResetSent, 10));
        m.on_event(kernel_close(103, 10));
        let r = one(m.on_event(ev(EventKind::Destroy, 12)));
        assert_eq!((r.closed_by, r.how), (ClosedBy::Kernel, How::Abort));
        assert_eq!(r.kernel_close.map(|k| k.reason()), Some("aborted"));
    }

    #[test]
    fn a_reset_known_only_from_sk_err_is_the_peers() {
        // The tcp_receive_reset event was lost; ECONNRESET still says whose.
        let mut m = Matcher::new(ProbeSet::Tracepoint);
        m.on_event(upgrade(0));
        m.on_event(kernel_close(104, 10));
        let r = one(m.on_event(ev(EventKind::Destroy, 12)));
        assert_eq!((r.closed_by, r.how), (ClosedBy::Peer, How::Rst));
        assert!(r.closer.is_none());
        assert_eq!(r.kernel_close.map(|k| k.reason()), Some("reset_received"));
    }

    #[test]
    fn close_at_process_exit_is_noted() {
        let mut m = Matcher::new(ProbeSet::Tracepoint);
        m.on_event(upgrade(0));
        let r = one(m.on_event(Event {
            task_exiting: true,
            ..close(ESTABLISHED, FIN_WAIT1, 100, 10)
        }));
        assert!(r.closer.expect("closer").at_exit);
        assert!(r.notes.iter().any(|n| n.contains("process exit")));
    }

    #[test]
    fn sockets_never_upgraded_produce_nothing() {
        let mut m = Matcher::new(ProbeSet::Tracepoint);
        assert!(
            m.on_event(close(ESTABLISHED, FIN_WAIT1, 100, 10))
                .is_empty()
        );
        assert!(m.on_event(ev(EventKind::Destroy, 11)).is_empty());
        assert_eq!(m.orphan_events, 2);
        assert!(m.flush(100).is_empty());
    }

    #[test]
    fn bytes_after_upgrade_discount_the_101_itself() {
        let mut m = Matcher::new(ProbeSet::Tracepoint);
        m.on_event(upgrade(0)); // rx 300 (the request), acked 0, 101 is 129 bytes
        let r = one(m.on_event(Event {
            bytes_received: 300 + 6,
            bytes_acked: 129 + 4,
            ..close(ESTABLISHED, FIN_WAIT1, 100, 10)
        }));
        assert_eq!(r.bytes_sent_after_upgrade, 4);
        assert_eq!(r.bytes_received_after_upgrade, 6);
    }

    #[test]
    fn fins_are_not_counted_as_payload() {
        let mut m = Matcher::new(ProbeSet::Tracepoint);
        m.on_event(upgrade(0));
        m.on_event(Event {
            bytes_received: 300 + 10 + 1,
            ..state(ESTABLISHED, CLOSE_WAIT, 5)
        });
        // At LAST_ACK our FIN is only queued: acked counts payload only.
        let r = one(m.on_event(Event {
            bytes_received: 311,
            bytes_acked: 129 + 7,
            ..close(CLOSE_WAIT, LAST_ACK, 100, 7)
        }));
        assert_eq!(
            r.bytes_received_after_upgrade, 10,
            "the peer's FIN is not payload"
        );
        assert_eq!(r.bytes_sent_after_upgrade, 7);
        let mut m = Matcher::new(ProbeSet::Fentry);
        m.on_event(upgrade(0));
        m.on_event(close(ESTABLISHED, 0, 100, 10));
        m.on_event(Event {
            bytes_acked: 129 + 5 + 1,
            ..state(ESTABLISHED, CLOSE, 11)
        });
        let r = one(m.on_event(Event {
            bytes_acked: 129 + 5 + 1,
            ..ev(EventKind::Destroy, 12)
        }));
        assert_eq!(
            r.bytes_sent_after_upgrade, 6,
            "RST close: no FIN to discount"
        );
    }

    #[test]
    fn a_read_copied_in_part_ends_the_head_there() {
        // nginx reads a 1071-byte request at once; the kernel copies the
        // start. The next read's bytes must not be joined to that start.
        let mut m = Matcher::new(ProbeSet::Tracepoint);
        let mut first = data(
            Direction::Received,
            b"GET /ws HTTP/1.1\r\nUser-Agent: Mozilla/5.0 (X11;",
            1,
        );
        if let Some(d) = &mut first.data {
            d.total = 1024;
        }
        m.on_event(first);
        m.on_event(data(
            Direction::Received,
            b"OiJIUzI1NiJ9.SESSIONSECRET\r\n\r\n",
            2,
        ));
        m.on_event(upgrade(3));
        let r = one(m.on_event(close(ESTABLISHED, FIN_WAIT1, 100, 4)));
        assert_eq!(
            r.request_head,
            b"GET /ws HTTP/1.1\r\nUser-Agent: Mozilla/5.0 (X11;"
        );
    }

    fn data(dir: Direction, bytes: &[u8], ts: u64) -> Event {
        Event {
            data: Some(Data {
                direction: dir,
                bytes: bytes.to_vec(),
                total: bytes.len() as u32,
                continues: false,
                upgrade_read: false,
            }),
            ..ev(EventKind::Data, ts)
        }
    }

    #[test]
    fn request_head_read_before_the_upgrade_lands_in_the_report() {
        let mut m = Matcher::new(ProbeSet::Tracepoint);
        m.on_event(data(Direction::Received, b"GET /ws HTTP/1.0\r\nUpg", 0));
        m.on_event(data(Direction::Received, b"rade: websocket\r\n\r\n", 1));
        m.on_event(upgrade(2));
        m.on_event(data(Direction::Sent, &[0x88, 0x02, 0x03, 0xf3], 3));
        let r = one(m.on_event(close(ESTABLISHED, FIN_WAIT1, 100, 4)));
        assert_eq!(
            r.request_head,
            b"GET /ws HTTP/1.0\r\nUpgrade: websocket\r\n\r\n"
        );
        assert_eq!(
            r.close_frames,
            vec![(Direction::Sent, vec![0x88, 0x02, 0x03, 0xf3])]
        );
    }

    #[test]
    fn pings_and_pongs_are_counted_per_side_and_close_frames_found_anywhere() {
        let mut m = Matcher::new(ProbeSet::Tracepoint);
        m.on_event(upgrade(0));
        let masked_pong = [0x8A, 0x80, 1, 2, 3, 4];
        m.on_event(data(Direction::Sent, &[0x89, 0x00], 100));
        m.on_event(data(Direction::Received, &masked_pong, 101));
        for ts in [200, 300, 400] {
            m.on_event(data(Direction::Sent, &[0x89, 0x00], ts));
        }
        // The client pings once; the server answers.
        m.on_event(data(Direction::Received, &[0x89, 0x80, 9, 9, 9, 9], 410));
        m.on_event(data(Direction::Sent, &[0x8A, 0x00], 411));
        // A close frame after a text frame, split across two writes.
        m.on_event(data(
            Direction::Sent,
            &[0x81, 0x01, b'x', 0x88, 0x03, 0x0F],
            500,
        ));
        m.on_event(Event {
            data: Some(Data {
                direction: Direction::Sent,
                bytes: vec![0xA1, b'!'],
                total: 2,
                continues: true,
                upgrade_read: false,
            }),
            ..ev(EventKind::Data, 501)
        });
        let r = one(m.on_event(close(ESTABLISHED, FIN_WAIT1, 100, 600)));
        let h = r.heartbeat;
        assert_eq!(
            (h.local.pings, h.local.pongs, h.local.unanswered),
            (4, 1, 3)
        );
        assert_eq!(
            (h.local.first_unanswered_ns, h.local.last_ping_ns),
            (Some(200), Some(400))
        );
        assert_eq!(h.local.last_pong_ns, Some(101));
        assert_eq!((h.peer.pings, h.peer.pongs, h.peer.unanswered), (1, 1, 0));
        assert_eq!(
            r.close_frames,
            vec![(Direction::Sent, vec![0x88, 0x03, 0x0F, 0xA1, b'!'])]
        );
    }

    #[test]
    fn more_open_sockets_than_the_map_holds_are_evicted_and_counted() {
        let mut m = Matcher::with_capacity(ProbeSet::Tracepoint, 2);
        for (sk, ts) in [(1, 10), (2, 20), (3, 30)] {
            m.on_event(Event { sk, ..upgrade(ts) });
        }
        assert_eq!((m.tracked(), m.evicted), (2, 1));
        // The oldest (sk 1) is gone; its close is an orphan, not a report.
        assert!(
            m.on_event(Event {
                sk: 1,
                ..close(ESTABLISHED, FIN_WAIT1, 100, 40)
            })
            .is_empty()
        );
        one(m.on_event(Event {
            sk: 3,
            ..close(ESTABLISHED, FIN_WAIT1, 100, 50)
        }));
    }

    #[test]
    fn a_101_for_a_request_that_asked_for_no_upgrade_is_ignored() {
        let mut m = Matcher::new(ProbeSet::Tracepoint);
        m.on_event(data(
            Direction::Received,
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            0,
        ));
        assert!(m.on_event(upgrade(1)).is_empty());
        assert!(m.on_event(close(ESTABLISHED, FIN_WAIT1, 100, 2)).is_empty());
        assert!(m.flush(10).is_empty());
        assert_eq!(m.not_upgrades, 1);
    }

    #[test]
    fn an_unseen_or_cut_head_does_not_cost_a_real_upgrade() {
        let mut m = Matcher::new(ProbeSet::Fentry);
        m.on_event(upgrade(0));
        one(m.on_event(close(ESTABLISHED, FIN_WAIT1, 100, 1)));
        let mut m = Matcher::new(ProbeSet::Tracepoint);
        m.on_event(data(
            Direction::Received,
            b"GET /ws HTTP/1.1\r\nHost: x\r\nX-Long: aaaa",
            0,
        ));
        m.on_event(upgrade(1));
        one(m.on_event(close(ESTABLISHED, FIN_WAIT1, 100, 2)));
    }

    #[test]
    fn a_reused_socket_address_does_not_inherit_the_old_head() {
        let mut m = Matcher::new(ProbeSet::Tracepoint);
        // An upgrade request on a connection that never upgraded...
        m.on_event(data(
            Direction::Received,
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            0,
        ));
        // ...then the same struct sock, a new connection, a plain request and
        // a body that looks like a 101.
        let other = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 50001);
        m.on_event(Event {
            remote: other,
            ..data(Direction::Received, b"GET / HTTP/1.1\r\n\r\n", 1)
        });
        assert!(
            m.on_event(Event {
                remote: other,
                ..upgrade(2)
            })
            .is_empty()
        );
        assert_eq!(m.not_upgrades, 1);
    }

    #[test]
    fn idle_sample_is_taken_at_the_first_close() {
        let mut m = Matcher::new(ProbeSet::Tracepoint);
        m.on_event(upgrade(0));
        let sample = JiffiesSample {
            now: 1000,
            last_send: 400,
            last_recv: 500,
        };
        m.on_event(Event {
            jiffies: sample,
            ..state(ESTABLISHED, CLOSE_WAIT, 10)
        });
        let later = JiffiesSample {
            now: 9000,
            last_send: 400,
            last_recv: 500,
        };
        let r = one(m.on_event(Event {
            jiffies: later,
            ..close(CLOSE_WAIT, LAST_ACK, 100, 20)
        }));
        assert_eq!(r.jiffies_at_close, Some(sample));
    }

    /// A client that read the 101 and, in the same read, the server's close
    /// 1001 (unmasked: from the server), then the server's FIN.
    #[test]
    fn client_side_frames_follow_the_101_head_in_the_same_read() {
        let mut m = Matcher::new(ProbeSet::Tracepoint);
        m.on_event(Event {
            client_side: true,
            ..upgrade(0)
        });
        let mut read = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n".to_vec();
        read.extend_from_slice(&[0x88, 0x04, 0x03, 0xE9, b'o', b'k']);
        m.on_event(Event {
            data: Some(Data {
                upgrade_read: true,
                ..data(Direction::Received, &read, 5).data.expect("data")
            }),
            ..ev(EventKind::Data, 5)
        });
        // Its answer: masked, as a client's frames are.
        m.on_event(data(
            Direction::Sent,
            &[0x88, 0x82, 1, 2, 3, 4, 0x03 ^ 1, 0xE9 ^ 2],
            6,
        ));
        assert!(m.on_event(state(ESTABLISHED, CLOSE_WAIT, 20)).is_empty());
        let r = one(m.on_event(close(CLOSE_WAIT, LAST_ACK, 100, 30)));
        assert_eq!(r.side, Side::Client);
        assert_eq!(r.closed_by, ClosedBy::Peer);
        assert_eq!(r.close_frames.len(), 2, "{:?}", r.close_frames);
        assert_eq!(r.close_frames[0].0, Direction::Received);
        assert_eq!(&r.close_frames[0].1[..4], &[0x88, 0x04, 0x03, 0xE9]);
        assert_eq!(r.close_frames[1].0, Direction::Sent);
    }

    /// The server's FIN arrived before the client's read of the 101
    /// returned (so before the socket was followed): the first transition
    /// seen leaves CLOSE_WAIT, which only a peer's FIN enters.
    #[test]
    fn a_peer_fin_before_the_socket_was_followed_is_still_the_peers() {
        for probe in [ProbeSet::Tracepoint, ProbeSet::Fentry] {
            let mut m = Matcher::new(probe);
            m.on_event(Event {
                client_side: true,
                ..upgrade(10)
            });
            let reports = match probe {
                ProbeSet::Tracepoint => m.on_event(close(CLOSE_WAIT, LAST_ACK, 100, 30)),
                _ => {
                    assert!(m.on_event(close(CLOSE_WAIT, 0, 100, 30)).is_empty());
                    m.on_event(state(CLOSE_WAIT, LAST_ACK, 31))
                }
            };
            let r = one(reports);
            assert_eq!(
                (r.closed_by, r.how),
                (ClosedBy::Peer, How::Fin),
                "{probe:?}"
            );
            assert_eq!(r.close_ts_ns, 10, "no later than the upgrade");
            assert_eq!(r.closer.expect("closer").pid, 100);
        }
    }

    #[test]
    fn a_101_read_without_frames_after_its_head_adds_none() {
        let mut m = Matcher::new(ProbeSet::Tracepoint);
        m.on_event(Event {
            client_side: true,
            ..upgrade(0)
        });
        m.on_event(Event {
            data: Some(Data {
                upgrade_read: true,
                ..data(
                    Direction::Received,
                    b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
                    5,
                )
                .data
                .expect("data")
            }),
            ..ev(EventKind::Data, 5)
        });
        assert!(m.on_event(state(ESTABLISHED, CLOSE_WAIT, 20)).is_empty());
        let r = one(m.on_event(close(CLOSE_WAIT, LAST_ACK, 100, 30)));
        assert!(r.close_frames.is_empty(), "{:?}", r.close_frames);
        assert_eq!(r.side, Side::Client);
    }

    #[test]
    fn heads_of_sockets_that_never_upgrade_are_bounded() {
        let mut m = Matcher::new(ProbeSet::Tracepoint);
        for sk in 0..(MAX_HEADS as u64 + 10) {
            m.on_event(Event {
                sk,
                ..data(Direction::Received, b"GET / HTTP/1.1\r\n", sk)
            });
        }
        assert_eq!(m.heads.len(), MAX_HEADS);
        assert!(!m.heads.contains_key(&0), "the oldest went first");
        assert!(m.heads.contains_key(&10), "and only the 10 oldest");
        assert!(m.head_order.len() <= 2 * MAX_HEADS);
    }

    #[test]
    fn head_order_stays_bounded_when_heads_upgrade_or_are_replaced() {
        let mut m = Matcher::new(ProbeSet::Tracepoint);
        // Many rounds of heads whose sockets upgrade (the head leaves by
        // another door): the order list must not grow with them.
        for sk in 0..(5 * MAX_HEADS as u64) {
            m.on_event(Event {
                sk,
                ..data(
                    Direction::Received,
                    b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
                    sk,
                )
            });
            m.on_event(Event { sk, ..upgrade(sk) });
        }
        assert!(m.heads.is_empty(), "{}", m.heads.len());
        assert!(
            m.head_order.len() <= 2 * MAX_HEADS + 1,
            "{}",
            m.head_order.len()
        );
        // Then the oldest still goes first.
        for sk in 0..(MAX_HEADS as u64 + 1) {
            m.on_event(Event {
                sk: 1_000_000 + sk,
                ..data(Direction::Received, b"GET / HTTP/1.1\r\n", sk)
            });
        }
        assert_eq!(m.heads.len(), MAX_HEADS);
        assert!(!m.heads.contains_key(&1_000_000));
    }

    #[test]
    fn socket_address_reuse_after_destroy_starts_fresh() {
        let mut m = Matcher::new(ProbeSet::Tracepoint);
        m.on_event(upgrade(0));
        one(m.on_event(close(ESTABLISHED, FIN_WAIT1, 100, 10)));
        m.on_event(ev(EventKind::Destroy, 20));
        m.on_event(upgrade(30));
        let r = one(m.on_event(close(ESTABLISHED, FIN_WAIT1, 200, 40)));
        assert_eq!(r.closer.expect("closer").pid, 200);
        assert_eq!(r.upgrade_ts_ns, 30);
    }

    #[test]
    fn flush_reports_pending_closes_on_exit() {
        let mut m = Matcher::new(ProbeSet::Tracepoint);
        m.on_event(upgrade(0));
        m.on_event(state(ESTABLISHED, CLOSE_WAIT, 10));
        let r = one(m.flush(20));
        assert_eq!(r.closed_by, ClosedBy::Peer);
    }

    /// Both ends of one connection on this host: the server's digest from
    /// the Key it read, the client's from the Accept it read; one chain.
    #[test]
    fn both_ends_of_one_handshake_are_one_chain_and_the_first_close_its_root() {
        let mut m = Matcher::new(ProbeSet::Tracepoint);
        let req = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        let data = |bytes: &[u8], upgrade_read: bool| {
            Some(Data {
                direction: Direction::Received,
                bytes: bytes.to_vec(),
                total: bytes.len() as u32,
                continues: false,
                upgrade_read,
            })
        };
        m.on_event(Event {
            data: data(req, false),
            ..ev(EventKind::Data, 10)
        });
        m.on_event(upgrade(20));
        // The client: the same connection, ends swapped.
        const CLIENT: u64 = SK + 0x1000;
        let client = |e: Event| Event {
            sk: CLIENT,
            local: e.remote,
            remote: e.local,
            ..e
        };
        m.on_event(client(Event {
            client_side: true,
            pid: 200,
            ..upgrade(21)
        }));
        let resp = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        m.on_event(client(Event {
            data: data(resp, true),
            ..ev(EventKind::Data, 21)
        }));
        // The server closes: held for the client's end.
        assert!(
            m.on_event(close(ESTABLISHED, FIN_WAIT1, 100, 30))
                .is_empty()
        );
        m.on_event(client(state(ESTABLISHED, CLOSE_WAIT, 31)));
        let out = m.on_event(client(close(CLOSE_WAIT, LAST_ACK, 200, 40)));
        assert_eq!(out.len(), 2, "{out:#?}");
        assert_eq!((out[0].sk, out[1].sk), (SK, CLIENT));
        let (a, b) = (out[0].chain.as_ref(), out[1].chain.as_ref());
        let a = a.expect("server chained");
        let b = b.expect("client chained");
        assert_eq!(a.id, b.id);
        assert_eq!(
            (a.linked_by, a.hop, a.hops),
            (crate::model::LinkedBy::Handshake, Some(0), Some(1))
        );
        assert_eq!(a.root.map(|r| r.sk), Some(SK));
        // Another fleet key: another id, same linking.
        let mut m2 = Matcher::new(ProbeSet::Tracepoint);
        m2.set_chain_key(ChainKey::from_secret(b"a fleet secret of some length").expect("key"));
        m2.on_event(Event {
            data: data(req, false),
            ..ev(EventKind::Data, 10)
        });
        m2.on_event(upgrade(20));
        m2.on_event(close(ESTABLISHED, FIN_WAIT1, 100, 30));
        let out = m2.flush(40);
        let other = out[0].chain.as_ref().expect("chained");
        assert_ne!(other.id, a.id);
    }
}
