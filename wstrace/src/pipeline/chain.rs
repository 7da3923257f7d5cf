//! Links the sockets of one proxied WebSocket into a chain of hops, by the
//! handshake: a proxy passes the client's `Sec-WebSocket-Key` upstream and
//! relays the upstream's `101` (its `Sec-WebSocket-Accept`) downstream
//! unchanged, so every socket of the chain, on every host, sees the same
//! Accept. Only a keyed digest of it is kept (the Key and Accept are
//! nonces: never printed, logged or stored).
//!
//! Where a socket's digest comes from:
//! - server side (it wrote the 101): the Accept derived from the Key of the
//!   request head it read (RFC 6455 §4.2.2: base64(SHA-1(Key ‖ GUID))), the
//!   Accept every conforming server writes. The kernel does not copy the
//!   101's bytes on the write path (the Upgrade event is its length only),
//!   and deriving it costs no copy there;
//! - client side (it read the 101): the Accept in the 101 it read (the read
//!   is copied whole, `FLAG_UPGRADE_READ`, up to `DATA_CAP`).
//!
//! Where a proxy rewrites the handshake (its own Key upstream, the Accept
//! due for the client's Key downstream), no digest is on both hops. Then
//! the hops are linked by the same-thread hand-off (DeepFlow's idea, for
//! requests): a proxy thread that read a `101` on an upstream (client)
//! socket and then, soon after and on the same thread, wrote a `101` on a
//! downstream (server) socket whose request arrived before that read, has
//! relayed one to the other (`linked_by: thread`). The digest stays the
//! stronger evidence: sockets it already links are not re-linked, and a
//! thread that read two upstream 101s before writing one links nothing.
//!
//! Pure: the table takes members, reports and `now`, and says which
//! reports to release, with their `Chain`.
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use sha1::{Digest as _, Sha1};

use crate::model::{Chain, ChainRoot, CloseReport, ClosedBy, HopRef, LinkedBy, Side};

/// The key of the chain digest. The same on every host by default (a
/// built-in key), so a proxy host and its backends agree with no per-host
/// configuration; a fleet that does not want outsiders to compute its ids
/// from a captured handshake gives its own secret (`--chain-key-file`).
#[derive(Clone)]
pub struct ChainKey(Vec<u8>);

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A fleet secret is never printed.
        f.write_str("ChainKey(..)")
    }
}

/// The built-in key: not a secret, just a domain separator.
const DEFAULT_KEY: &[u8] = b"wstrace chain id v1";

impl Default for ChainKey {
    fn default() -> Self {
        Self(DEFAULT_KEY.to_vec())
    }
}

/// Shortest and longest fleet secret accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 16;
pub const MAX_KEY_BYTES: usize = 4096;

impl ChainKey {
    /// A fleet secret from a key file's bytes (trailing whitespace, such
    /// as the newline an editor adds, is not part of it).
    pub fn from_secret(bytes: &[u8]) -> Result<Self, String> {
        let end = bytes
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        let secret = &bytes[..end];
        if secret.len() < MIN_KEY_BYTES {
            return Err(format!(
                "the chain key is {} bytes; give at least {MIN_KEY_BYTES} (e.g. `head -c 32 /dev/urandom | base64 > FILE`)",
                secret.len()
            ));
        }
        if secret.len() > MAX_KEY_BYTES {
            return Err(format!(
                "the chain key is longer than {MAX_KEY_BYTES} bytes: is this the right file?"
            ));
        }
        Ok(Self(secret.to_vec()))
    }

    /// HMAC-SHA1 (RFC 2104) of `msg`.
    fn mac(&self, msg: &[u8]) -> [u8; 20] {
        const BLOCK: usize = 64;
        let mut k = [0u8; BLOCK];
        if self.0.len() > BLOCK {
            k[..20].copy_from_slice(&Sha1::digest(&self.0));
        } else {
            k[..self.0.len()].copy_from_slice(&self.0);
        }
        let pad = |x: u8| k.map(|b| b ^ x);
        let inner = Sha1::new()
            .chain_update(pad(0x36))
            .chain_update(msg)
            .finalize();
        Sha1::new()
            .chain_update(pad(0x5c))
            .chain_update(inner)
            .finalize()
            .into()
    }

    /// The digest of a handshake's Accept value.
    pub fn digest(&self, accept: &str) -> ChainDigest {
        let m = self.mac(accept.trim().as_bytes());
        let mut d = [0u8; 8];
        d.copy_from_slice(&m[..8]);
        ChainDigest(u64::from_be_bytes(d))
    }
}

/// A keyed digest of one handshake: the chain id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChainDigest(pub u64);

impl ChainDigest {
    pub fn id(self) -> String {
        format!("{:016x}", self.0)
    }
}

const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The Accept a server answers `key` with (RFC 6455 §4.2.2).
pub fn accept_for_key(key: &str) -> String {
    let sha = Sha1::new()
        .chain_update(key.trim().as_bytes())
        .chain_update(WS_GUID.as_bytes())
        .finalize();
    base64(&sha)
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Longest Key or Accept value taken (both are 24-28 base64 characters; a
/// longer one is not a handshake this links).
const MAX_NONCE_LEN: usize = 64;

/// The value of header `name` in an HTTP head (`bytes` up to the blank
/// line), if it is a plausible nonce.
fn nonce_header<'a>(bytes: &'a [u8], name: &str) -> Option<&'a str> {
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(bytes.len());
    let head = std::str::from_utf8(&bytes[..end]).ok()?;
    let mut found = None;
    for line in head.split("\r\n").skip(1) {
        let Some((n, v)) = line.split_once(':') else {
            continue;
        };
        if n.trim().eq_ignore_ascii_case(name) {
            if found.is_some() {
                // Two of them: which one the peer used is anyone's guess.
                return None;
            }
            found = Some(v.trim());
        }
    }
    found.filter(|v| {
        !v.is_empty()
            && v.len() <= MAX_NONCE_LEN
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
    })
}

/// Server side: the digest of the Accept due for the request head's Key.
pub fn digest_of_request(key: &ChainKey, head: &[u8]) -> Option<ChainDigest> {
    let k = nonce_header(head, "sec-websocket-key")?;
    Some(key.digest(&accept_for_key(k)))
}

/// Client side: the digest of the Accept in the 101 it read.
pub fn digest_of_response(key: &ChainKey, head: &[u8]) -> Option<ChainDigest> {
    if !head.starts_with(b"HTTP/1.") {
        return None;
    }
    Some(key.digest(nonce_header(head, "sec-websocket-accept")?))
}

/// How long after a digest's first socket others may join it: a proxy
/// reads the upstream 101 and writes the downstream one microseconds
/// apart, across hosts within a round trip. A socket that comes later
/// with the same digest reused a Key (or forged an Accept): the whole
/// digest links nothing.
pub const JOIN_WINDOW_NS: u64 = 10_000_000_000;
/// How long a chained report waits for the other sockets of its chain to
/// close. A proxy closes its other side within a fraction of a millisecond
/// of the first close (0.1 ms measured with nginx): 100 ms is a thousand
/// times that, and still reads as "at once" on a terminal. Bounded, so a
/// chain whose other hop stays open costs its reports no more than that.
pub const HOLD_NS: u64 = 100_000_000;
/// How long a chain is remembered after its last socket reported (a hop
/// that closes later, e.g. a browser that closes its end seconds after
/// the proxy did, still finds the root).
pub const KEEP_NS: u64 = 30_000_000_000;
/// Chains kept at once at least; the oldest is dropped (counted) beyond.
/// The table holds as many as the sockets tracked (`--max-sockets`) when
/// that is more ([`ChainTable::with_capacity`]): every connection with a
/// Key is a chain of its own while it is open, and 100,000 idle ones
/// evicted 34,464 chains at this bound alone.
pub const MAX_CHAINS: usize = 65536;
/// Sockets per digest: a chain of 4 proxies seen from both ends is 10; more
/// is a Key replayed at scale, and links nothing.
pub const MAX_MEMBERS: usize = 16;
/// How soon after a thread read an upstream 101 its downstream 101 write
/// counts as the relay of it: a proxy writes it in the same event-loop
/// turn (microseconds; the window leaves room for a slow, emulated CPU).
pub const THREAD_WINDOW_NS: u64 = 1_000_000_000;
/// Upstream 101 reads remembered for the thread hand-off at once (the
/// oldest forgotten first).
pub const MAX_THREAD_READS: usize = 4096;

/// A thread: (pid, tid).
type Thread = (u32, u32);

/// Recent upstream 101 reads (client-side sockets' 101s, each the hand-off
/// link's upstream candidate), by the thread that read them.
///
/// A downstream 101 asks for its own thread's reads since its request
/// arrived: one lookup and a binary search in that thread's reads, not a
/// scan of every thread's (under churn the window holds thousands, and
/// the scan, three passes per server-side upgrade, was 8% of the daemon's
/// CPU). Each thread's reads are in time order (one thread's events are);
/// `order` holds every read once, oldest first, for expiry and the bound.
#[derive(Debug, Default)]
struct ThreadReads {
    by_thread: HashMap<Thread, VecDeque<(u64, ChainDigest)>>,
    /// (time, thread) of each read remembered; a read already taken is
    /// passed over when its entry comes out.
    order: VecDeque<(u64, Thread)>,
    /// Reads remembered and not taken.
    live: usize,
}

impl ThreadReads {
    /// Forgets reads older than the window.
    fn expire(&mut self, now_ns: u64) {
        while self
            .order
            .front()
            .is_some_and(|&(ts, _)| now_ns.saturating_sub(ts) > THREAD_WINDOW_NS)
        {
            self.pop_oldest();
        }
    }

    /// Drops the oldest entry of `order`, and its thread's reads up to it
    /// (none when they were taken already).
    fn pop_oldest(&mut self) {
        let Some((ts, thread)) = self.order.pop_front() else {
            return;
        };
        let Some(q) = self.by_thread.get_mut(&thread) else {
            return;
        };
        while q.front().is_some_and(|&(t, _)| t <= ts) {
            q.pop_front();
            self.live -= 1;
        }
        if q.is_empty() {
            self.by_thread.remove(&thread);
        }
    }

    /// Remembers `thread`'s read of an upstream 101 at `ts`, within
    /// `MAX_THREAD_READS` (the oldest forgotten first; `order`, taken
    /// entries included, within twice that).
    fn push(&mut self, thread: Thread, ts: u64, digest: ChainDigest) {
        while self.live >= MAX_THREAD_READS || self.order.len() >= 2 * MAX_THREAD_READS {
            self.pop_oldest();
        }
        let q = self.by_thread.entry(thread).or_default();
        // In time order, even if a clock stepped back.
        let ts = q.back().map_or(ts, |&(last, _)| ts.max(last));
        q.push_back((ts, digest));
        self.order.push_back((ts, thread));
        self.live += 1;
    }

    /// Takes (forgets) `thread`'s reads at or after `since`; returns the
    /// read's digest when there was exactly one (two: no evidence of which
    /// one the thread relays).
    fn take_since(&mut self, thread: Thread, since: u64) -> Option<ChainDigest> {
        let q = self.by_thread.get_mut(&thread)?;
        let first = q.partition_point(|&(t, _)| t < since);
        let taken = q.len() - first;
        let one = (taken == 1).then(|| q[first].1);
        q.truncate(first);
        self.live -= taken;
        if q.is_empty() {
            self.by_thread.remove(&thread);
        }
        one
    }
}

#[derive(Clone, Debug)]
struct Member {
    sk: u64,
    upgrade_ts: u64,
    pid: u32,
    comm: String,
    side: Side,
    local: SocketAddr,
    remote: SocketAddr,
    /// (first close ts, closed by) once its report is made.
    closed: Option<(u64, ClosedBy)>,
    /// Its report is made and held here, or released.
    reported: bool,
}

#[derive(Debug)]
struct Group {
    created_ts: u64,
    /// Last time a member reported (for `KEEP_NS`).
    last_ts: u64,
    /// It has an entry in `ChainTable::done`.
    queued_done: bool,
    members: Vec<Member>,
    /// Reused Key, forged Accept, too many sockets: links nothing.
    ambiguous: bool,
    /// Reports waiting for the chain's other hops, and since when.
    held: Vec<CloseReport>,
    hold_since: Option<u64>,
    /// Hops joined by the same-thread hand-off, not by one handshake.
    by_thread: bool,
}

/// A chain's shape: connections (a socket pair seen from both ends, or one
/// end), ordered from the client (hop 0) to the last server.
#[derive(Debug, PartialEq)]
struct Shape {
    /// Per hop: indices into `members`, client end first when both seen.
    hops: Vec<Vec<usize>>,
}

fn mirrored(a: &Member, b: &Member) -> bool {
    a.side != b.side && a.local == b.remote && a.remote == b.local
}

/// Orders a digest's sockets into hops, or `None` when they do not form
/// one chain: two unrelated connections share the digest.
fn shape(members: &[Member]) -> Option<Shape> {
    if members.is_empty() || members.len() > MAX_MEMBERS {
        return None;
    }
    // Connections: mirrored pairs, then lone ends.
    let mut conn_of = vec![usize::MAX; members.len()];
    let mut conns: Vec<(Option<usize>, Option<usize>)> = Vec::new(); // (client end, server end)
    for i in 0..members.len() {
        if conn_of[i] != usize::MAX {
            continue;
        }
        let partners: Vec<usize> = (i + 1..members.len())
            .filter(|&j| mirrored(&members[i], &members[j]))
            .collect();
        if partners.len() > 1 {
            return None;
        }
        let c = conns.len();
        conn_of[i] = c;
        let mut pair = (None, None);
        let mut put = |m: usize| match members[m].side {
            Side::Client => pair.0 = Some(m),
            Side::Server => pair.1 = Some(m),
        };
        put(i);
        if let Some(&j) = partners.first() {
            if conn_of[j] != usize::MAX {
                return None;
            }
            conn_of[j] = c;
            put(j);
        }
        conns.push(pair);
    }
    // A proxy: the process of one connection's server end is the process
    // of another's client end; that other connection is upstream.
    let pid = |m: Option<usize>| m.map(|m| members[m].pid);
    let mut up: Vec<Option<usize>> = vec![None; conns.len()];
    let mut has_down = vec![false; conns.len()];
    for (x, cx) in conns.iter().enumerate() {
        for (y, cy) in conns.iter().enumerate() {
            if x != y && pid(cx.1).is_some() && pid(cx.1) == pid(cy.0) {
                if up[x].is_some() || has_down[y] {
                    return None;
                }
                up[x] = Some(y);
                has_down[y] = true;
            }
        }
    }
    // One path from the connection nothing is upstream of.
    let edges: Vec<usize> = (0..conns.len()).filter(|&c| !has_down[c]).collect();
    let [edge] = edges[..] else {
        return None;
    };
    let mut hops = Vec::new();
    let mut at = Some(edge);
    while let Some(c) = at {
        if hops.len() >= conns.len() {
            return None; // a cycle
        }
        let (client, server) = conns[c];
        hops.push(client.into_iter().chain(server).collect());
        at = up[c];
    }
    (hops.len() == conns.len()).then_some(Shape { hops })
}

/// A group's place in a deadline queue: (due, digest, the group's
/// `created_ts`), so an entry whose group was evicted (or made again under
/// the same digest) is skipped when it comes due.
type Due = (u64, ChainDigest, u64);

/// The digest → sockets table, and the hold of chained reports.
///
/// A tick costs what comes due, not the table's size: holds and done
/// chains wait in deadline queues (each ordered by its due time, since
/// `now` only grows and each is `now` plus a constant), instead of every
/// chain being looked at every tick (up to `MAX_CHAINS`, 50 times a
/// second, under churn).
#[derive(Debug)]
pub struct ChainTable {
    /// Chains kept at once (at least `MAX_CHAINS`).
    capacity: usize,
    groups: HashMap<ChainDigest, Group>,
    by_sk: HashMap<u64, ChainDigest>,
    /// (digest, created) in the order they began, for eviction.
    order: VecDeque<(ChainDigest, u64)>,
    /// Held reports' release times (`HOLD_NS` after the hold began).
    holds: VecDeque<Due>,
    /// Done chains' forget times (`KEEP_NS` after their last report); at
    /// most one entry per chain, at most `MAX_CHAINS` (the oldest done
    /// chain is forgotten early beyond that).
    done: VecDeque<Due>,
    /// Chains dropped while some socket was still open: more than
    /// `MAX_CHAINS` at once (`wstrace_lost_events_total{reason="chain_evicted"}`).
    pub evicted: u64,
    /// Recent upstream 101 reads (`THREAD_WINDOW_NS`, `MAX_THREAD_READS`).
    thread_reads: ThreadReads,
}

impl Default for ChainTable {
    fn default() -> Self {
        Self::with_capacity(MAX_CHAINS)
    }
}

impl ChainTable {
    /// A table for `sockets` followed sockets at once (`--max-sockets`):
    /// a socket is in one chain at most.
    pub fn with_capacity(sockets: usize) -> Self {
        Self {
            capacity: sockets.max(MAX_CHAINS),
            groups: HashMap::new(),
            by_sk: HashMap::new(),
            order: VecDeque::new(),
            holds: VecDeque::new(),
            done: VecDeque::new(),
            evicted: 0,
            thread_reads: ThreadReads::default(),
        }
    }

    /// A followed socket's handshake digest is known.
    pub fn join(&mut self, digest: ChainDigest, r: MemberInfo<'_>, now_ns: u64) {
        if self.by_sk.contains_key(&r.sk) {
            return;
        }
        if !self.groups.contains_key(&digest) {
            if self.groups.len() >= self.capacity {
                self.evict_oldest();
            }
            self.order.push_back((digest, now_ns));
            self.compact_order();
            self.groups.insert(
                digest,
                Group {
                    created_ts: now_ns,
                    last_ts: now_ns,
                    queued_done: false,
                    members: Vec::new(),
                    ambiguous: false,
                    held: Vec::new(),
                    hold_since: None,
                    by_thread: false,
                },
            );
        }
        let Some(g) = self.groups.get_mut(&digest) else {
            return;
        };
        if now_ns.saturating_sub(g.created_ts) > JOIN_WINDOW_NS || g.members.len() >= MAX_MEMBERS {
            g.ambiguous = true;
        }
        if g.members.len() < MAX_MEMBERS {
            // Exactly what is used: most chains are one or two sockets,
            // and a Vec's first growth would make room for four.
            g.members.reserve_exact(1);
            g.members.push(Member {
                sk: r.sk,
                upgrade_ts: r.upgrade_ts,
                pid: r.pid,
                comm: r.comm.to_string(),
                side: r.side,
                local: r.local,
                remote: r.remote,
                closed: None,
                reported: false,
            });
            self.by_sk.insert(r.sk, digest);
        }
        self.hand_off(digest, &r, now_ns);
    }

    /// The same-thread hand-off: an upstream 101 read is remembered; a
    /// downstream 101 written by the thread that read exactly one such 101
    /// since the request arrived links the two digests' chains.
    fn hand_off(&mut self, digest: ChainDigest, r: &MemberInfo<'_>, now_ns: u64) {
        self.thread_reads.expire(now_ns);
        let thread = (r.pid, r.tid);
        match r.side {
            Side::Client => self.thread_reads.push(thread, now_ns, digest),
            Side::Server => {
                let Some(since) = r.request_ts else {
                    return;
                };
                // None, or two upstream 101s this thread could be relaying:
                // no evidence of which, no link.
                if let Some(up) = self.thread_reads.take_since(thread, since)
                    && up != digest
                {
                    self.merge(up, digest);
                }
            }
        }
    }

    /// The chain of `from` (upstream) joins the chain of `into`, unless
    /// either links nothing or the two would be too many sockets.
    fn merge(&mut self, from: ChainDigest, into: ChainDigest) {
        let ok = match (self.groups.get(&from), self.groups.get(&into)) {
            (Some(f), Some(i)) => {
                !f.ambiguous && !i.ambiguous && f.members.len() + i.members.len() <= MAX_MEMBERS
            }
            _ => false,
        };
        if !ok {
            return;
        }
        let Some(f) = self.groups.remove(&from) else {
            return;
        };
        for m in &f.members {
            self.by_sk.insert(m.sk, into);
        }
        if let Some(g) = self.groups.get_mut(&into) {
            g.created_ts = g.created_ts.min(f.created_ts);
            g.last_ts = g.last_ts.max(f.last_ts);
            g.members.extend(f.members);
            g.held.extend(f.held);
            g.hold_since = match (g.hold_since, f.hold_since) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            g.by_thread = true;
        }
    }

    /// `order` keeps an entry per chain made until it is evicted: chains
    /// forgotten when done leave theirs behind. Dropped here once they are
    /// as many as the chains kept, so the queue stays within twice that.
    fn compact_order(&mut self) {
        if self.order.len() > 2 * self.capacity {
            let groups = &self.groups;
            self.order
                .retain(|(d, created)| groups.get(d).is_some_and(|g| g.created_ts == *created));
        }
    }

    /// Queues `d`'s forgetting if it is done (every socket reported, no
    /// report held) and not queued yet.
    fn queue_if_done(&mut self, d: ChainDigest) {
        let Some(g) = self.groups.get_mut(&d) else {
            return;
        };
        if g.queued_done || !g.held.is_empty() || !g.members.iter().all(|m| m.reported) {
            return;
        }
        g.queued_done = true;
        let due = g.last_ts.saturating_add(KEEP_NS);
        // In order (`last_ts` is at most now, so an entry may belong a
        // little before the last one).
        let at = self.done.partition_point(|e| e.0 <= due);
        self.done.insert(at, (due, d, g.created_ts));
        if self.done.len() > self.capacity
            && let Some((_, old, created)) = self.done.pop_front()
        {
            self.forget_done(old, created, u64::MAX);
        }
    }

    /// Forgets chain `d` (made at `created`) if it is still done and its
    /// last report is `KEEP_NS` old at `now_ns` (`u64::MAX`: at once);
    /// queues it again for its newer last report otherwise.
    fn forget_done(&mut self, d: ChainDigest, created: u64, now_ns: u64) {
        let Some(g) = self.groups.get_mut(&d) else {
            return;
        };
        if g.created_ts != created {
            return;
        }
        g.queued_done = false;
        let done = g.held.is_empty() && g.members.iter().all(|m| m.reported);
        if !done {
            // A report to come queues it again.
            return;
        }
        if now_ns.saturating_sub(g.last_ts) >= KEEP_NS {
            if let Some(g) = self.groups.remove(&d) {
                for m in &g.members {
                    self.by_sk.remove(&m.sk);
                }
            }
        } else {
            self.queue_if_done(d);
        }
    }

    fn evict_oldest(&mut self) {
        while let Some((d, created)) = self.order.pop_front() {
            if self.groups.get(&d).is_some_and(|g| g.created_ts == created) {
                if let Some(g) = self.groups.remove(&d) {
                    for m in &g.members {
                        self.by_sk.remove(&m.sk);
                    }
                    if g.members.iter().any(|m| !m.reported) || !g.held.is_empty() {
                        self.evicted += 1;
                    }
                }
                return;
            }
        }
    }

    /// A followed socket went away unreported (evicted by the matcher).
    pub fn forget(&mut self, sk: u64) {
        let Some(d) = self.by_sk.remove(&sk) else {
            return;
        };
        if let Some(g) = self.groups.get_mut(&d) {
            g.members.retain(|m| m.sk != sk);
        }
        self.queue_if_done(d);
    }

    /// A report is made: returned at once when its socket is in no chain,
    /// else held for the chain's other hops (see `HOLD_NS`); what that
    /// completes is released, first close first.
    pub fn on_report(&mut self, r: CloseReport, now_ns: u64) -> Vec<CloseReport> {
        let Some(&d) = self.by_sk.get(&r.sk) else {
            return vec![r];
        };
        let Some(g) = self.groups.get_mut(&d) else {
            return vec![r];
        };
        let Some(m) = g
            .members
            .iter_mut()
            .find(|m| m.sk == r.sk && m.upgrade_ts == r.upgrade_ts_ns)
        else {
            self.by_sk.remove(&r.sk);
            return vec![r];
        };
        m.closed = Some((r.close_ts_ns, r.closed_by));
        m.reported = true;
        self.by_sk.remove(&r.sk);
        g.last_ts = now_ns;
        g.held.push(r);
        if g.hold_since.is_none() {
            g.hold_since = Some(now_ns);
            self.holds
                .push_back((now_ns.saturating_add(HOLD_NS), d, g.created_ts));
        }
        if g.members.iter().all(|m| m.reported) && has_its_client(&g.members) {
            let out = release(d, g);
            self.queue_if_done(d);
            return out;
        }
        Vec::new()
    }

    /// Held reports whose hold is over; chains long done are forgotten.
    /// Looks only at what came due.
    pub fn tick(&mut self, now_ns: u64) -> Vec<CloseReport> {
        let mut out = Vec::new();
        while let Some(&(due, d, created)) = self.holds.front() {
            if due > now_ns {
                break;
            }
            self.holds.pop_front();
            let Some(g) = self.groups.get_mut(&d) else {
                continue;
            };
            // Released already (the chain completed), and maybe held again
            // since: that hold has an entry of its own.
            if g.created_ts != created
                || g.hold_since
                    .is_none_or(|t| now_ns.saturating_sub(t) < HOLD_NS)
            {
                continue;
            }
            out.extend(release(d, g));
            self.queue_if_done(d);
        }
        while let Some(&(due, d, created)) = self.done.front() {
            if due > now_ns {
                break;
            }
            self.done.pop_front();
            self.forget_done(d, created, now_ns);
        }
        out.sort_by_key(|r| r.close_ts_ns);
        out
    }

    /// Everything held, for a clean exit.
    pub fn flush(&mut self) -> Vec<CloseReport> {
        let mut out = Vec::new();
        for (d, g) in self.groups.iter_mut() {
            out.extend(release(*d, g));
        }
        out.sort_by_key(|r| r.close_ts_ns);
        out
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.groups.len()
    }
}

/// Is the chain's own client among the sockets: a client end in a process
/// that is no proxy of this chain (no server end there)? Upstream 101s
/// come before downstream ones, so once the client read its 101 every
/// socket of the chain on this host has joined: when all of them have
/// reported, nothing more can come. Without it (the client is on another
/// host, or has not read its 101 yet) the reports wait out `HOLD_NS`.
fn has_its_client(members: &[Member]) -> bool {
    members.iter().any(|c| {
        c.side == Side::Client
            && !members
                .iter()
                .any(|s| s.side == Side::Server && s.pid == c.pid)
    })
}

/// What the table keeps of a followed socket.
pub struct MemberInfo<'a> {
    pub sk: u64,
    pub upgrade_ts: u64,
    pub pid: u32,
    /// The thread that wrote (server side) or read (client side) the 101.
    pub tid: u32,
    /// Server side: when the first bytes of its request head arrived.
    pub request_ts: Option<u64>,
    pub comm: &'a str,
    pub side: Side,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// The group's held reports, each with its `Chain`, first close first.
fn release(d: ChainDigest, g: &mut Group) -> Vec<CloseReport> {
    g.hold_since = None;
    let mut out = std::mem::take(&mut g.held);
    let shape = if g.ambiguous { None } else { shape(&g.members) };
    // The socket that closed first, of those that closed: its own end
    // (local or the kernel) if that end is visible, else the earliest.
    let root = shape.as_ref().and_then(|s| {
        let closed = |i: &usize| g.members[*i].closed.map(|(ts, by)| (ts, by, *i));
        s.hops
            .iter()
            .enumerate()
            .flat_map(|(h, ms)| ms.iter().filter_map(closed).map(move |c| (h, c)))
            .min_by_key(|(_, (ts, by, _))| (*ts, *by == ClosedBy::Peer))
            .map(|(h, (_, _, i))| ChainRoot {
                hop: h as u32,
                sk: g.members[i].sk,
            })
    });
    for r in &mut out {
        r.chain = Some(match &shape {
            None => Chain {
                id: d.id(),
                hop: None,
                hops: None,
                upstream: None,
                downstream: None,
                linked_by: LinkedBy::Ambiguous,
                root: None,
            },
            Some(s) => {
                let hop = s
                    .hops
                    .iter()
                    .position(|ms| ms.iter().any(|&i| g.members[i].sk == r.sk))
                    .unwrap_or(0);
                let hop_ref = |h: usize| {
                    s.hops.get(h).map(|ms| {
                        // A hop is named by its server end where seen (the
                        // process that answered), else by its client end.
                        let server = ms.iter().find(|&&i| g.members[i].side == Side::Server);
                        let m = &g.members[*server.or(ms.first()).unwrap_or(&0)];
                        HopRef {
                            hop: h as u32,
                            server: match m.side {
                                Side::Server => m.local,
                                Side::Client => m.remote,
                            },
                            client: match m.side {
                                Side::Server => m.remote,
                                Side::Client => m.local,
                            },
                            pid: server.map(|_| m.pid),
                            comm: server.map(|_| m.comm.clone()),
                        }
                    })
                };
                Chain {
                    id: d.id(),
                    hop: Some(hop as u32),
                    hops: Some(s.hops.len() as u32),
                    upstream: hop_ref(hop + 1),
                    downstream: hop.checked_sub(1).and_then(hop_ref),
                    linked_by: if g.by_thread {
                        LinkedBy::Thread
                    } else {
                        LinkedBy::Handshake
                    },
                    root,
                }
            }
        });
    }
    out.sort_by_key(|r| r.close_ts_ns);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_table_holds_as_many_chains_as_sockets_tracked() {
        assert_eq!(ChainTable::default().capacity, MAX_CHAINS);
        assert_eq!(ChainTable::with_capacity(64).capacity, MAX_CHAINS);
        assert_eq!(ChainTable::with_capacity(262_144).capacity, 262_144);
    }

    use super::*;
    use crate::model::{How, Upgrader};
    use wstrace_common::ProbeSet;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn accept_matches_rfc6455_example() {
        assert_eq!(
            accept_for_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
    }

    #[test]
    fn hmac_sha1_matches_rfc2202() {
        // RFC 2202 test case 2.
        let k = ChainKey(b"Jefe".to_vec());
        let m = k.mac(b"what do ya want for nothing?");
        let hex: String = m.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79");
        // Keys longer than a block are hashed first (test case 6).
        let k = ChainKey(vec![0xaa; 80]);
        let m = k.mac(b"Test Using Larger Than Block-Size Key - Hash Key First");
        let hex: String = m.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "aa4ae5e15272d00e95705637ce8a3b55ed402112");
    }

    const REQ: &[u8] =
        b"GET /ws HTTP/1.1\r\nHost: x\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    const RESP: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nsec-websocket-accept:  s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x88\x02\x03\xe8";

    #[test]
    fn request_and_response_of_one_handshake_give_one_digest() {
        let k = ChainKey::default();
        let a = digest_of_request(&k, REQ).expect("key");
        let b = digest_of_response(&k, RESP).expect("accept");
        assert_eq!(a, b);
        // Another key (a fleet secret) gives another id for the same handshake.
        let fleet = ChainKey::from_secret(b"0123456789abcdef0123\n").expect("secret");
        assert_ne!(digest_of_request(&fleet, REQ), Some(a));
        assert_eq!(
            digest_of_request(&fleet, REQ),
            digest_of_response(&fleet, RESP)
        );
        assert_eq!(a.id().len(), 16);
    }

    #[test]
    fn bad_nonces_and_short_secrets_are_refused() {
        let k = ChainKey::default();
        assert!(digest_of_request(&k, b"GET / HTTP/1.1\r\n\r\n").is_none());
        let two = b"GET / HTTP/1.1\r\nSec-WebSocket-Key: a\r\nSec-WebSocket-Key: b\r\n\r\n";
        assert!(digest_of_request(&k, two).is_none());
        let long = format!(
            "GET / HTTP/1.1\r\nSec-WebSocket-Key: {}\r\n\r\n",
            "A".repeat(65)
        );
        assert!(digest_of_request(&k, long.as_bytes()).is_none());
        let odd = b"GET / HTTP/1.1\r\nSec-WebSocket-Key: a\x1b[31m\r\n\r\n";
        assert!(digest_of_request(&k, odd).is_none());
        assert!(digest_of_response(&k, REQ).is_none());
        assert!(ChainKey::from_secret(b"short\n").is_err());
        assert!(ChainKey::from_secret(&[b'a'; 5000]).is_err());
        assert_eq!(format!("{:?}", ChainKey::default()), "ChainKey(..)");
    }

    struct Sock {
        sk: u64,
        pid: u32,
        comm: &'static str,
        side: Side,
        local: u16,
        remote: u16,
    }

    /// browser :50000 ⇄ nginx :18080, nginx :40000 ⇄ backend :1215.
    const BROWSER: Sock = Sock {
        sk: 1,
        pid: 10,
        comm: "browser",
        side: Side::Client,
        local: 50000,
        remote: 18080,
    };
    const NGINX_DOWN: Sock = Sock {
        sk: 2,
        pid: 20,
        comm: "nginx",
        side: Side::Server,
        local: 18080,
        remote: 50000,
    };
    const NGINX_UP: Sock = Sock {
        sk: 3,
        pid: 20,
        comm: "nginx",
        side: Side::Client,
        local: 40000,
        remote: 1215,
    };
    const BACKEND: Sock = Sock {
        sk: 4,
        pid: 30,
        comm: "php",
        side: Side::Server,
        local: 1215,
        remote: 40000,
    };

    fn join(t: &mut ChainTable, d: u64, s: &Sock, ts: u64) {
        t.join(
            ChainDigest(d),
            MemberInfo {
                sk: s.sk,
                upgrade_ts: 0,
                pid: s.pid,
                tid: s.pid,
                request_ts: Some(0),
                comm: s.comm,
                side: s.side,
                local: addr(s.local),
                remote: addr(s.remote),
            },
            ts,
        );
    }

    fn report(s: &Sock, close_ts: u64, by: ClosedBy) -> CloseReport {
        CloseReport {
            sk: s.sk,
            close_ts_ns: close_ts,
            upgrade_ts_ns: 0,
            local: addr(s.local),
            remote: addr(s.remote),
            closed_by: by,
            how: How::Fin,
            closer: None,
            upgrader: Upgrader {
                pid: s.pid,
                tid: s.pid,
                comm: s.comm.into(),
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
            side: s.side,
            chain: None,
        }
    }

    fn seed_chain() -> ChainTable {
        let mut t = ChainTable::default();
        for (i, s) in [&BACKEND, &NGINX_UP, &NGINX_DOWN, &BROWSER]
            .into_iter()
            .enumerate()
        {
            join(&mut t, 7, s, i as u64 * 1000);
        }
        t
    }

    #[test]
    fn four_sockets_of_one_proxied_websocket_are_two_hops_rooted_at_the_first_close() {
        let mut t = seed_chain();
        // php closes first; nginx closes both sides 0.1 ms later; the
        // reports of the edge come out before the upstream's is complete.
        assert!(
            t.on_report(report(&NGINX_DOWN, 1_100_000, ClosedBy::Local), 1_200_000)
                .is_empty()
        );
        assert!(
            t.on_report(report(&BACKEND, 1_000_000, ClosedBy::Local), 1_300_000)
                .is_empty()
        );
        assert!(
            t.on_report(report(&NGINX_UP, 1_000_050, ClosedBy::Peer), 1_400_000)
                .is_empty()
        );
        let out = t.on_report(report(&BROWSER, 1_100_050, ClosedBy::Peer), 1_500_000);
        let order: Vec<u64> = out.iter().map(|r| r.sk).collect();
        assert_eq!(order, [BACKEND.sk, NGINX_UP.sk, NGINX_DOWN.sk, BROWSER.sk]);
        for r in &out {
            let c = r.chain.as_ref().expect("chained");
            assert_eq!(c.linked_by, LinkedBy::Handshake);
            assert_eq!(c.hops, Some(2));
            assert_eq!(
                c.root,
                Some(ChainRoot {
                    hop: 1,
                    sk: BACKEND.sk
                })
            );
            assert_eq!(c.id, ChainDigest(7).id());
        }
        let edge = out[2].chain.as_ref().expect("chained");
        assert_eq!(edge.hop, Some(0));
        let up = edge.upstream.as_ref().expect("upstream hop");
        assert_eq!(
            (up.hop, up.server, up.pid, up.comm.as_deref()),
            (1, addr(1215), Some(30), Some("php"))
        );
        assert!(edge.downstream.is_none());
        let back = out[0].chain.as_ref().expect("chained");
        assert_eq!(back.hop, Some(1));
        assert_eq!(
            back.downstream.as_ref().map(|d| d.server),
            Some(addr(18080))
        );
    }

    #[test]
    fn a_hop_that_stays_open_costs_the_others_only_the_hold() {
        let mut t = seed_chain();
        assert!(
            t.on_report(report(&BACKEND, 1_000, ClosedBy::Local), 1_000)
                .is_empty()
        );
        assert!(t.tick(1_000 + HOLD_NS - 1).is_empty());
        let out = t.tick(1_000 + HOLD_NS);
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].chain.as_ref().and_then(|c| c.root).map(|r| r.hop),
            Some(1)
        );
        // The edge closes later: still linked, still rooted at the backend.
        t.on_report(report(&NGINX_DOWN, 5_000, ClosedBy::Local), 2 * HOLD_NS);
        t.on_report(report(&NGINX_UP, 4_000, ClosedBy::Peer), 2 * HOLD_NS);
        let out = t.on_report(report(&BROWSER, 6_000, ClosedBy::Peer), 2 * HOLD_NS);
        assert_eq!(out.len(), 3);
        assert!(
            out.iter()
                .all(|r| r.chain.as_ref().and_then(|c| c.root).map(|r| r.hop) == Some(1))
        );
    }

    #[test]
    fn proxy_host_and_backend_host_each_see_their_part() {
        // The proxy host: nginx's two sockets only (browser and backend elsewhere).
        let mut t = ChainTable::default();
        join(&mut t, 7, &NGINX_DOWN, 0);
        join(&mut t, 7, &NGINX_UP, 0);
        t.on_report(report(&NGINX_UP, 10, ClosedBy::Peer), 20);
        // The client is elsewhere: nothing tells the chain is complete.
        assert!(
            t.on_report(report(&NGINX_DOWN, 11, ClosedBy::Local), 20)
                .is_empty()
        );
        let out = t.tick(20 + HOLD_NS);
        assert_eq!(out.len(), 2);
        let c = out[1].chain.as_ref().expect("chained");
        assert_eq!((c.hop, c.hops), (Some(0), Some(2)));
        // The upstream's server end is not here: named by its address only.
        let up = c.upstream.as_ref().expect("upstream");
        assert_eq!((up.server, up.pid), (addr(1215), None));
        assert_eq!(c.root.as_ref().map(|r| r.hop), Some(1));
        // The backend host: one socket, same id.
        let mut b = ChainTable::default();
        join(&mut b, 7, &BACKEND, 0);
        assert!(
            b.on_report(report(&BACKEND, 9, ClosedBy::Local), 20)
                .is_empty()
        );
        let out = b.tick(20 + HOLD_NS);
        assert_eq!(
            out[0].chain.as_ref().map(|c| c.id.clone()),
            Some(ChainDigest(7).id())
        );
    }

    #[test]
    fn a_backend_that_closes_before_the_proxy_relayed_its_101_waits_for_the_others() {
        // php wrote the 101 and closed before nginx read it: alone in the
        // table when it reports, it must not be released as a chain of one.
        let mut t = ChainTable::default();
        join(&mut t, 7, &BACKEND, 0);
        assert!(
            t.on_report(report(&BACKEND, 10, ClosedBy::Local), 10)
                .is_empty()
        );
        join(&mut t, 7, &NGINX_UP, 20);
        join(&mut t, 7, &NGINX_DOWN, 30);
        join(&mut t, 7, &BROWSER, 40);
        t.on_report(report(&NGINX_UP, 50, ClosedBy::Peer), 50);
        t.on_report(report(&NGINX_DOWN, 60, ClosedBy::Local), 60);
        let out = t.on_report(report(&BROWSER, 70, ClosedBy::Peer), 70);
        assert_eq!(out.len(), 4);
        assert!(
            out.iter()
                .all(|r| r.chain.as_ref().and_then(|c| c.root).map(|r| r.hop) == Some(1))
        );
        assert!(
            out.iter()
                .all(|r| r.chain.as_ref().and_then(|c| c.hops) == Some(2))
        );
    }

    #[test]
    fn a_reused_key_links_nothing() {
        // A second browser sends the first one's Key to the same backend
        // directly: the digest now spans two unrelated connections.
        let mut t = seed_chain();
        let intruder_c = Sock {
            sk: 5,
            pid: 66,
            comm: "evil",
            side: Side::Client,
            local: 51000,
            remote: 1215,
        };
        let intruder_s = Sock {
            sk: 6,
            pid: 30,
            comm: "php",
            side: Side::Server,
            local: 1215,
            remote: 51000,
        };
        join(&mut t, 7, &intruder_c, 5000);
        join(&mut t, 7, &intruder_s, 5000);
        for s in [&BACKEND, &NGINX_UP, &NGINX_DOWN, &BROWSER, &intruder_c] {
            t.on_report(report(s, 10, ClosedBy::Local), 20);
        }
        let out = t.on_report(report(&intruder_s, 10, ClosedBy::Local), 20);
        assert_eq!(out.len(), 6);
        for r in &out {
            let c = r.chain.as_ref().expect("chain");
            assert_eq!(
                (c.linked_by, c.hop, c.root),
                (LinkedBy::Ambiguous, None, None)
            );
        }
    }

    #[test]
    fn a_forged_accept_on_an_unrelated_client_links_nothing() {
        let mut t = seed_chain();
        let forged = Sock {
            sk: 5,
            pid: 77,
            comm: "node",
            side: Side::Client,
            local: 52000,
            remote: 9000,
        };
        join(&mut t, 7, &forged, 10);
        let out = t.on_report(report(&forged, 10, ClosedBy::Peer), 20);
        assert!(out.is_empty());
        let out = t.tick(20 + HOLD_NS);
        assert_eq!(
            out[0].chain.as_ref().map(|c| c.linked_by),
            Some(LinkedBy::Ambiguous)
        );
    }

    #[test]
    fn a_late_joiner_makes_the_digest_ambiguous() {
        let mut t = ChainTable::default();
        join(&mut t, 7, &NGINX_DOWN, 0);
        join(&mut t, 7, &NGINX_UP, JOIN_WINDOW_NS + 1);
        t.on_report(report(&NGINX_UP, 10, ClosedBy::Peer), 20);
        t.on_report(report(&NGINX_DOWN, 11, ClosedBy::Local), 20);
        let out = t.flush();
        assert_eq!(out.len(), 2);
        assert!(
            out.iter()
                .all(|r| r.chain.as_ref().map(|c| c.linked_by) == Some(LinkedBy::Ambiguous))
        );
    }

    #[test]
    fn sockets_in_no_chain_pass_at_once_and_the_table_is_bounded() {
        let mut t = ChainTable::default();
        assert_eq!(
            t.on_report(report(&BACKEND, 1, ClosedBy::Local), 2).len(),
            1
        );
        for i in 0..MAX_CHAINS as u64 + 10 {
            let s = Sock {
                sk: 100 + i,
                ..BACKEND
            };
            join(&mut t, i, &s, i);
        }
        assert_eq!(t.len(), MAX_CHAINS);
        assert_eq!(t.evicted, 10);
        // An evicted chain's socket reports unchained, not lost.
        let out = t.on_report(report(&Sock { sk: 100, ..BACKEND }, 1, ClosedBy::Local), 2);
        assert!(out[0].chain.is_none());
        // Forgotten sockets do not hold the others.
        let mut t = seed_chain();
        t.forget(BROWSER.sk);
        t.forget(NGINX_UP.sk);
        t.on_report(report(&BACKEND, 1, ClosedBy::Local), 2);
        assert!(
            t.on_report(report(&NGINX_DOWN, 2, ClosedBy::Local), 3)
                .is_empty()
        );
        assert_eq!(t.tick(2 + HOLD_NS).len(), 2);
        // Done chains are forgotten after KEEP_NS.
        t.tick(3 + KEEP_NS);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn churn_of_short_chains_keeps_the_table_and_its_queues_bounded() {
        // 20,000 two-socket chains a second (a client and its server on
        // this host), each done at once, for longer than KEEP_NS holds them.
        let mut t = ChainTable::default();
        let step = 50_000;
        let n = 3 * MAX_CHAINS as u64;
        for i in 0..n {
            let now = i * step;
            let client = Sock {
                sk: 2 * i + 1000,
                pid: 10,
                comm: "client",
                side: Side::Client,
                local: 40000,
                remote: 1215,
            };
            let server = Sock {
                sk: 2 * i + 1001,
                pid: 30,
                comm: "server",
                side: Side::Server,
                local: 1215,
                remote: 40000,
            };
            join(&mut t, i, &server, now);
            join(&mut t, i, &client, now);
            assert!(
                t.on_report(report(&server, now, ClosedBy::Local), now)
                    .is_empty()
            );
            // The client's report completes the chain: both at once, no hold.
            assert_eq!(
                t.on_report(report(&client, now, ClosedBy::Peer), now).len(),
                2
            );
            if i % 1000 == 0 {
                assert!(t.tick(now).is_empty());
            }
        }
        assert!(t.len() <= MAX_CHAINS);
        assert!(t.order.len() <= 2 * MAX_CHAINS + 1);
        assert!(t.done.len() <= MAX_CHAINS);
        assert!(t.holds.len() <= 2 * (HOLD_NS / step) as usize + 1000);
        assert!(t.by_sk.is_empty());
        assert_eq!(t.evicted, 0);
        // Once KEEP_NS has passed, everything is forgotten.
        assert!(t.tick(n * step + KEEP_NS).is_empty());
        assert_eq!(t.len(), 0);
        assert!(t.done.is_empty() && t.holds.is_empty());
    }

    #[test]
    fn a_chain_held_again_after_its_release_waits_its_own_hold() {
        let mut t = seed_chain();
        t.on_report(report(&BACKEND, 1_000, ClosedBy::Local), 1_000);
        assert_eq!(t.tick(1_000 + HOLD_NS).len(), 1);
        // A second hold begins later: the first hold's time does not cut it.
        let later = 1_000 + HOLD_NS + 10;
        assert!(
            t.on_report(report(&NGINX_UP, 2_000, ClosedBy::Peer), later)
                .is_empty()
        );
        assert!(t.tick(later + HOLD_NS - 1).is_empty());
        assert_eq!(t.tick(later + HOLD_NS).len(), 1);
        // Not done (two sockets open): not forgotten however long it waits.
        t.tick(later + 2 * KEEP_NS);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn more_sockets_than_a_chain_has_link_nothing() {
        let mut t = ChainTable::default();
        for i in 0..MAX_MEMBERS as u64 + 1 {
            let s = Sock {
                sk: 100 + i,
                local: 2000 + i as u16,
                ..BACKEND
            };
            join(&mut t, 7, &s, 0);
        }
        let out = t.flush();
        assert!(out.is_empty());
        let out = t.on_report(
            report(
                &Sock {
                    sk: 100,
                    local: 2000,
                    ..BACKEND
                },
                1,
                ClosedBy::Local,
            ),
            2,
        );
        assert!(out.is_empty());
        let out = t.flush();
        assert_eq!(
            out[0].chain.as_ref().map(|c| c.linked_by),
            Some(LinkedBy::Ambiguous)
        );
    }

    /// `join`, with the thread and the request's arrival given.
    fn join_by(t: &mut ChainTable, d: u64, s: &Sock, ts: u64, tid: u32, request_ts: u64) {
        t.join(
            ChainDigest(d),
            MemberInfo {
                sk: s.sk,
                upgrade_ts: 0,
                pid: s.pid,
                tid,
                request_ts: Some(request_ts),
                comm: s.comm,
                side: s.side,
                local: addr(s.local),
                remote: addr(s.remote),
            },
            ts,
        );
    }

    /// The seed chain behind a proxy that rewrites the Key: the backend's
    /// hop has digest 8, the browser's 7. nginx's thread 21 read the
    /// request at 500, the upstream 101 at `up_ts`, wrote the downstream
    /// 101 at 2000 from thread `down_tid`.
    fn rewritten(up_ts: u64, down_tid: u32) -> ChainTable {
        let mut t = ChainTable::default();
        join_by(&mut t, 8, &BACKEND, 0, 30, 0);
        join_by(&mut t, 8, &NGINX_UP, up_ts, 21, 0);
        join_by(&mut t, 7, &NGINX_DOWN, 2000, down_tid, 500);
        join_by(&mut t, 7, &BROWSER, 3000, 10, 0);
        t
    }

    fn close_all(t: &mut ChainTable) -> Vec<CloseReport> {
        let mut out = Vec::new();
        out.extend(t.on_report(report(&BACKEND, 1_000_000, ClosedBy::Local), 1_100_000));
        out.extend(t.on_report(report(&NGINX_UP, 1_000_050, ClosedBy::Peer), 1_200_000));
        out.extend(t.on_report(report(&NGINX_DOWN, 1_100_000, ClosedBy::Local), 1_300_000));
        out.extend(t.on_report(report(&BROWSER, 1_100_050, ClosedBy::Peer), 1_400_000));
        out.extend(t.flush());
        out
    }

    #[test]
    fn a_proxy_that_rewrites_the_handshake_is_linked_by_its_thread() {
        let mut t = rewritten(1000, 21);
        let out = close_all(&mut t);
        let order: Vec<u64> = out.iter().map(|r| r.sk).collect();
        assert_eq!(order, [BACKEND.sk, NGINX_UP.sk, NGINX_DOWN.sk, BROWSER.sk]);
        for (r, hop) in out.iter().zip([1, 1, 0, 0]) {
            let c = r.chain.as_ref().expect("chained");
            assert_eq!(
                (c.linked_by, c.hop, c.hops, c.root.map(|r| r.sk)),
                (LinkedBy::Thread, Some(hop), Some(2), Some(BACKEND.sk)),
                "{}",
                r.sk
            );
            // The client's handshake names the chain.
            assert_eq!(c.id, ChainDigest(7).id());
        }
        let up = out[2].chain.as_ref().and_then(|c| c.upstream.as_ref());
        assert_eq!(up.and_then(|u| u.pid), Some(BACKEND.pid));
    }

    #[test]
    fn no_hand_off_from_another_thread_or_before_the_request_or_too_late() {
        // Another thread wrote the downstream 101.
        let out = close_all(&mut rewritten(1000, 22));
        // The upstream 101 was read before the downstream request arrived.
        let early = close_all(&mut rewritten(400, 21));
        // The downstream 101 came long after the upstream one.
        let mut t = ChainTable::default();
        join_by(&mut t, 8, &BACKEND, 0, 30, 0);
        join_by(&mut t, 8, &NGINX_UP, 1000, 21, 0);
        join_by(&mut t, 7, &NGINX_DOWN, 1001 + THREAD_WINDOW_NS, 21, 500);
        join_by(&mut t, 7, &BROWSER, 1002 + THREAD_WINDOW_NS, 10, 0);
        let late = close_all(&mut t);
        for out in [out, early, late] {
            assert_eq!(out.len(), 4);
            for r in &out {
                let c = r.chain.as_ref().expect("chained");
                assert_eq!((c.linked_by, c.hops), (LinkedBy::Handshake, Some(1)));
            }
        }
    }

    #[test]
    fn a_thread_that_read_two_upstream_101s_links_neither() {
        let mut t = ChainTable::default();
        join_by(&mut t, 8, &BACKEND, 0, 30, 0);
        join_by(&mut t, 8, &NGINX_UP, 1000, 21, 0);
        let other_up = Sock {
            sk: 9,
            local: 40001,
            ..NGINX_UP
        };
        join_by(&mut t, 9, &other_up, 1100, 21, 0);
        join_by(&mut t, 7, &NGINX_DOWN, 2000, 21, 500);
        join_by(&mut t, 7, &BROWSER, 3000, 10, 0);
        let out = close_all(&mut t);
        for r in &out {
            let c = r.chain.as_ref().expect("chained");
            assert_eq!((c.linked_by, c.hops), (LinkedBy::Handshake, Some(1)));
        }
        // Neither read is left for a later write of the thread to take.
        let next_down = Sock {
            sk: 11,
            local: 18080,
            remote: 50001,
            ..NGINX_DOWN
        };
        join_by(&mut t, 12, &next_down, 2500, 21, 500);
        t.on_report(report(&next_down, 3000, ClosedBy::Local), 3000);
        let out = t.flush();
        assert_eq!(
            out[0].chain.as_ref().map(|c| c.linked_by),
            Some(LinkedBy::Handshake)
        );
    }

    #[test]
    fn a_relay_of_the_same_handshake_stays_linked_by_it() {
        // nginx relays the Key unchanged: the thread's read and write have
        // one digest; the hand-off adds nothing.
        let mut t = ChainTable::default();
        join_by(&mut t, 7, &BACKEND, 0, 30, 0);
        join_by(&mut t, 7, &NGINX_UP, 1000, 21, 0);
        join_by(&mut t, 7, &NGINX_DOWN, 2000, 21, 500);
        join_by(&mut t, 7, &BROWSER, 3000, 10, 0);
        for r in close_all(&mut t) {
            let c = r.chain.as_ref().expect("chained");
            assert_eq!((c.linked_by, c.hops), (LinkedBy::Handshake, Some(2)));
        }
    }

    #[test]
    fn a_threads_reads_since_its_request_are_taken_once() {
        let mut r = ThreadReads::default();
        let (a, b) = ((1, 10), (1, 11));
        r.push(a, 100, ChainDigest(1));
        r.push(b, 150, ChainDigest(2));
        r.push(a, 200, ChainDigest(3));
        // Thread a's read before its request does not count.
        assert_eq!(r.take_since(a, 150), Some(ChainDigest(3)));
        assert_eq!(r.take_since(a, 150), None, "taken");
        // Two reads since the request: no evidence of which; both taken.
        r.push(b, 300, ChainDigest(4));
        assert_eq!(r.take_since(b, 100), None);
        assert_eq!(r.take_since(b, 0), None);
        assert_eq!(r.live, 1, "thread a's read at 100 is still remembered");
        assert_eq!(r.take_since(a, 0), Some(ChainDigest(1)));
        assert_eq!((r.live, r.by_thread.len()), (0, 0));
    }

    #[test]
    fn reads_expire_after_the_window_and_taken_ones_are_passed_over() {
        let mut r = ThreadReads::default();
        let a = (1, 10);
        r.push(a, 100, ChainDigest(1));
        r.push(a, 200, ChainDigest(2));
        assert_eq!(r.take_since(a, 150), Some(ChainDigest(2)));
        r.expire(100 + THREAD_WINDOW_NS + 1);
        assert_eq!(
            (r.live, r.order.len()),
            (0, 1),
            "the taken read's entry waits"
        );
        r.expire(200 + THREAD_WINDOW_NS + 1);
        assert_eq!((r.live, r.order.len(), r.by_thread.len()), (0, 0, 0));
        // A clock that steps back keeps the thread's reads in order.
        r.push(a, 500, ChainDigest(3));
        r.push(a, 400, ChainDigest(4));
        assert_eq!(r.take_since(a, 450), None, "both count as since 450");
    }

    #[test]
    fn upstream_reads_remembered_are_bounded() {
        let mut t = ChainTable::default();
        for i in 0..MAX_THREAD_READS as u64 + 10 {
            let s = Sock {
                sk: 1000 + i,
                ..NGINX_UP
            };
            join_by(&mut t, 1000 + i, &s, i, 21, 0);
        }
        assert_eq!(t.thread_reads.live, MAX_THREAD_READS);
        assert!(t.thread_reads.order.len() <= 2 * MAX_THREAD_READS);
    }
}
