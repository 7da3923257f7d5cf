//! The process at the other end of a connection whose both ends are on this
//! host (a local proxy such as an nginx worker).
//!
//! First from the kernel ([`KernelPeers`]): the programs record who wrote a
//! request on any socket whose remote port is traced, keyed by that socket's
//! tuple, so the peer is known even when it closed and exited microseconds
//! after the 101. Only when the kernel has no record (a request written
//! through a path the probes do not see, or evicted from the LRU map), the
//! fallback ([`PeerFinder`]) looks it up the way `ss -p` does: the peer
//! socket's inode in /proc/net/tcp{,6}, then the process holding
//! `socket:[inode]` in /proc/<pid>/fd, at the 101, which loses the race
//! against a peer that has already closed.
//!
//! sock_diag is spoken by hand (two request shapes, one reply field): the
//! netlink crates would add a protocol stack of dependencies for an inode
//! lookup and a LISTEN dump, both checked below against /proc/net/tcp on
//! real sockets.
use crate::model::{PeerProcess, PeerSource, Ports};
use aya::maps::{HashMap as BpfHashMap, MapData};
use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

/// Is `ip` an address of this host whose peer process we can look up?
/// Loopback only: other local addresses would need the host's address list,
/// and loopback is where local proxies sit.
pub fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback()
}

/// The kernel's record of request writers (wstrace-ebpf `maps::PEER_WRITERS`).
pub struct KernelPeers {
    map: BpfHashMap<MapData, wstrace_common::SockTuple, wstrace_common::PeerWriter>,
}

impl KernelPeers {
    pub fn new(
        map: BpfHashMap<MapData, wstrace_common::SockTuple, wstrace_common::PeerWriter>,
    ) -> Self {
        Self { map }
    }

    /// The process that wrote the request on the other end of the server
    /// socket `local` <-> `remote`, if the kernel saw it. The record is
    /// removed once read: each connection asks once, and the LRU map then
    /// only holds what nobody asked for.
    pub fn find(&mut self, local: SocketAddr, remote: SocketAddr) -> Option<PeerProcess> {
        for key in client_keys(local, remote) {
            if let Ok(w) = self.map.get(&key, 0) {
                let _ = self.map.remove(&key);
                return Some(PeerProcess {
                    pid: w.pid,
                    tid: Some(w.tid),
                    comm: crate::pipeline::decode::comm_string(&w.comm),
                    source: PeerSource::Kernel,
                    exe: None,
                });
            }
        }
        None
    }
}

/// The tuples the client's socket of the server socket `local` <-> `remote`
/// may have in the kernel (ends swapped, as `fill_tuple` writes them): its
/// own family's, and for IPv4 also a dual-stack (AF_INET6) client's, which
/// holds the addresses as `::ffff:a.b.c.d`.
pub fn client_keys(local: SocketAddr, remote: SocketAddr) -> Vec<wstrace_common::SockTuple> {
    use wstrace_common::{AF_INET, AF_INET6, SockTuple};
    let key = |family: u16, laddr: [u8; 16], raddr: [u8; 16]| SockTuple {
        family,
        lport: remote.port(),
        rport: local.port(),
        _pad: 0,
        laddr,
        raddr,
    };
    let v4 = |ip: Ipv4Addr| {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&ip.octets());
        b
    };
    match (remote.ip(), local.ip()) {
        (IpAddr::V4(r), IpAddr::V4(l)) => vec![
            key(AF_INET, v4(r), v4(l)),
            key(
                AF_INET6,
                r.to_ipv6_mapped().octets(),
                l.to_ipv6_mapped().octets(),
            ),
        ],
        (r, l) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                IpAddr::V6(v6) => v6.octets(),
            };
            vec![key(AF_INET6, v6(r), v6(l))]
        }
    }
}

/// Finds the process at the other end of loopback connections, cheaply
/// enough to run at every upgrade of a busy port.
///
/// The peer socket's inode comes from one exact sock_diag query (O(1); the
/// /proc/net/tcp text, read only if netlink fails, grows with every
/// TIME_WAIT socket). Its owner is looked for first among the processes that
/// owned earlier peers (a proxy's few workers), and only then in every
/// process's fd table, at most once per [`FULL_SCAN_INTERVAL`]: at 10k
/// upgrades a second, a full scan each time cost ~10 ms per upgrade and
/// starved the event loop.
#[derive(Default)]
pub struct PeerFinder {
    /// Recent owners, most recent first.
    owners: Vec<u32>,
    last_full_scan: Option<Instant>,
    /// The sock_diag socket, kept across lookups (one socket(2) + close(2)
    /// per upgrade was a tenth of the daemon's time under churn); dropped
    /// and reopened after any error.
    diag: Option<std::os::fd::OwnedFd>,
    /// Sequence number of the last request: a reply must carry it.
    seq: u32,
    /// The fd entries the owner checks and full scans may still examine.
    budget: FdBudget,
}

pub const FULL_SCAN_INTERVAL: Duration = Duration::from_millis(200);

/// fd entries the fallback may examine a second (owners' tables and full
/// scans together; a burst of one second's worth). Each entry is one
/// fstatat or readlink of /proc: without a bound, a host holding 200,000
/// idle sockets (100,000 connections, both ends here) made every lookup
/// read up to ~100,000 entries, and the daemon fell minutes behind its
/// events. Past it a peer is left unnamed, as for one already gone.
pub const FDS_PER_SEC: f64 = 50_000.0;

/// A token bucket of fd entries ([`FDS_PER_SEC`]).
#[derive(Debug)]
struct FdBudget {
    tokens: f64,
    at: Option<Instant>,
}

impl Default for FdBudget {
    fn default() -> Self {
        Self {
            tokens: FDS_PER_SEC,
            at: None,
        }
    }
}

impl FdBudget {
    fn refill(&mut self, now: Instant) {
        if let Some(at) = self.at {
            let secs = now.saturating_duration_since(at).as_secs_f64();
            self.tokens = (self.tokens + secs * FDS_PER_SEC).min(FDS_PER_SEC);
        }
        self.at = Some(now);
    }

    /// One entry may be examined.
    fn take(&mut self) -> bool {
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
const MAX_OWNERS: usize = 64;

impl PeerFinder {
    /// The process owning the TCP socket whose local end is `peer_local` and
    /// remote end is `peer_remote` (our remote and local, swapped).
    pub fn find(&mut self, peer_local: SocketAddr, peer_remote: SocketAddr) -> Option<PeerProcess> {
        // "No such socket" from netlink is an answer (the peer is already
        // gone); only a failing netlink falls back to the slow /proc table.
        let inode = match self.inode_by_diag(peer_local, peer_remote) {
            Ok(Some(i)) => i,
            Ok(None) => self
                .inode_by_diag(mapped(peer_local), mapped(peer_remote))
                .ok()??,
            Err(()) => inode_by_proc(peer_local, peer_remote)?,
        };
        let want = format!("socket:[{inode}]");
        self.budget.refill(Instant::now());
        let budget = &mut self.budget;
        if let Some(i) = self
            .owners
            .iter()
            .position(|&pid| holds(pid, inode, budget))
        {
            let pid = self.owners.remove(i);
            self.owners.insert(0, pid);
            return Some(process(pid));
        }
        if self
            .last_full_scan
            .is_some_and(|t| t.elapsed() < FULL_SCAN_INTERVAL)
        {
            return None;
        }
        self.last_full_scan = Some(Instant::now());
        let found = owner_of(&want, &mut self.budget)?;
        self.owners.insert(0, found.pid);
        self.owners.truncate(MAX_OWNERS);
        Some(found)
    }
}

impl PeerFinder {
    /// `Ok(None)`: no such socket; `Err`: netlink itself failed.
    fn inode_by_diag(&mut self, local: SocketAddr, remote: SocketAddr) -> Result<Option<u64>, ()> {
        let result = self.diag_exchange(local, remote);
        if result.is_err() {
            // A reply left unread or a broken socket must not answer the next query.
            self.diag = None;
        }
        result
    }

    fn diag_exchange(&mut self, local: SocketAddr, remote: SocketAddr) -> Result<Option<u64>, ()> {
        use std::os::fd::AsRawFd as _;
        if self.diag.is_none() {
            self.diag = Some(sock_diag_socket().ok_or(())?);
        }
        let fd = self.diag.as_ref().ok_or(())?.as_raw_fd();
        self.seq = self.seq.wrapping_add(1);
        let mut req = diag_request(local, remote);
        req[8..12].copy_from_slice(&self.seq.to_ne_bytes());
        // SAFETY: valid fd and buffer of the given length.
        let sent = unsafe { libc::send(fd, req.as_ptr().cast(), req.len(), 0) };
        if sent != req.len() as isize {
            return Err(());
        }
        // One request, one datagram back: an exact lookup answers with the
        // socket or with an NLMSG_ERROR (no such socket), never a dump.
        let mut buf = [0u8; 512];
        // SAFETY: valid fd and buffer of the given length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        let reply = buf.get(..n.max(0) as usize).unwrap_or_default();
        // A reply to another request means the exchange is out of step.
        if reply.get(8..12) != Some(&self.seq.to_ne_bytes()[..]) {
            return Err(());
        }
        Ok(diag_reply_inode(reply))
    }
}

fn process(pid: u32) -> PeerProcess {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    PeerProcess {
        pid,
        tid: None,
        comm: comm.trim_end().to_string(),
        source: PeerSource::SocketTable,
        exe: None,
    }
}

/// The executable of `pid` as /proc/PID/exe shows it: its path (readlink,
/// the kernel's own record, bounded by PATH_MAX) and whether root owns it
/// with no one else able to write it (stat through the link: no open, so
/// nothing another user controls can block it).
pub fn exe_of(pid: u32) -> Option<crate::model::PeerExe> {
    let link = format!("/proc/{pid}/exe");
    let path = fs::read_link(&link).ok()?;
    let meta = fs::metadata(&link).ok();
    use std::os::unix::fs::MetadataExt as _;
    let root_owned = meta.is_some_and(|m| m.uid() == 0 && m.mode() & 0o022 == 0);
    Some(crate::model::PeerExe {
        path: path.to_string_lossy().into_owned(),
        root_owned,
    })
}

/// Does process `pid` have socket `inode` open? One stat per fd, relative
/// to the opened `/proc/<pid>/fd` (a readlink of `/proc/<pid>/fd/N` walks
/// the whole path each time, and was a quarter of the daemon's time at 12k
/// upgrades/s with a local client). Stops (false) when `budget` is spent.
fn holds(pid: u32, inode: u64, budget: &mut FdBudget) -> bool {
    use std::os::fd::AsRawFd as _;
    use std::os::unix::ffi::OsStrExt as _;
    let path = format!("/proc/{pid}/fd");
    let (Ok(dir), Ok(fds)) = (fs::File::open(&path), fs::read_dir(&path)) else {
        return false;
    };
    fds.flatten().take_while(|_| budget.take()).any(|fd| {
        let mut name = fd.file_name().as_bytes().to_vec();
        name.push(0);
        // SAFETY: zeroed stat is a valid out-buffer; `name` is NUL-terminated.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr().cast(), &mut st, 0) };
        rc == 0 && st.st_mode & libc::S_IFMT == libc::S_IFSOCK && st.st_ino == inode
    })
}

fn inode_by_proc(peer_local: SocketAddr, peer_remote: SocketAddr) -> Option<u64> {
    let table = if peer_local.is_ipv4() {
        "/proc/net/tcp"
    } else {
        "/proc/net/tcp6"
    };
    fs::read_to_string(table)
        .ok()
        .and_then(|t| inode_of(&t, peer_local, peer_remote))
        // Dual-stack listeners see IPv4 peers in tcp6 as ::ffff:a.b.c.d.
        .or_else(|| {
            let t = fs::read_to_string("/proc/net/tcp6").ok()?;
            inode_of(&t, mapped(peer_local), mapped(peer_remote))
        })
}

/// `SOCK_DIAG_BY_FAMILY` (linux/sock_diag.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// nlmsghdr (16) + inet_diag_req_v2 (8 + inet_diag_sockid 48).
const DIAG_REQ_LEN: usize = 16 + 56;
/// Offset of `idiag_inode` in the reply: nlmsghdr (16) + 4 bytes of
/// family/state/timer/retrans + sockid (48) + expires, rqueue, wqueue, uid.
const DIAG_INODE_AT: usize = 16 + 68;

/// The request for the one TCP socket `local` <-> `remote` (exact lookup:
/// no dump flag, cookie "none").
fn diag_request(local: SocketAddr, remote: SocketAddr) -> [u8; DIAG_REQ_LEN] {
    let mut r = [0u8; DIAG_REQ_LEN];
    r[0..4].copy_from_slice(&(DIAG_REQ_LEN as u32).to_ne_bytes());
    r[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    r[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    r[16] = if local.is_ipv4() {
        libc::AF_INET as u8
    } else {
        libc::AF_INET6 as u8
    };
    r[17] = libc::IPPROTO_TCP as u8;
    r[20..24].copy_from_slice(&u32::MAX.to_ne_bytes()); // every state
    let id = 24;
    r[id..id + 2].copy_from_slice(&local.port().to_be_bytes());
    r[id + 2..id + 4].copy_from_slice(&remote.port().to_be_bytes());
    let put = |r: &mut [u8; DIAG_REQ_LEN], at: usize, ip: IpAddr| match ip {
        IpAddr::V4(v4) => r[at..at + 4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => r[at..at + 16].copy_from_slice(&v6.octets()),
    };
    put(&mut r, id + 4, local.ip());
    put(&mut r, id + 20, remote.ip());
    // idiag_if = 0, idiag_cookie = INET_DIAG_NOCOOKIE.
    r[id + 40..id + 48].fill(0xff);
    r
}

/// The inode from a sock_diag reply, if it is one socket's record.
fn diag_reply_inode(reply: &[u8]) -> Option<u64> {
    let kind = u16::from_ne_bytes(reply.get(4..6)?.try_into().ok()?);
    if kind != SOCK_DIAG_BY_FAMILY {
        return None; // NLMSG_ERROR: no such socket
    }
    let inode = u32::from_ne_bytes(
        reply
            .get(DIAG_INODE_AT..DIAG_INODE_AT + 4)?
            .try_into()
            .ok()?,
    );
    (inode != 0).then_some(u64::from(inode))
}

fn mapped(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    }
}

/// The process holding `want` (`socket:[inode]`), every process's fd
/// table read until `budget` is spent.
fn owner_of(want: &str, budget: &mut FdBudget) -> Option<PeerProcess> {
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if !budget.take() {
                return None;
            }
            if fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == want) {
                return Some(process(pid));
            }
        }
    }
    None
}

/// The processes with an open fd whose link target (`socket:[123]`, a
/// path) `wanted` accepts, skipping the pids `skip` names (their fd tables
/// are not read). Their comm is read only for a match.
fn processes_with_fd(
    skip: impl Fn(u32) -> bool,
    wanted: impl Fn(&Path) -> bool,
) -> impl Iterator<Item = PeerProcess> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(move |entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            if skip(pid) {
                return None;
            }
            let mut fds = fs::read_dir(entry.path().join("fd")).ok()?.flatten();
            if !fds.any(|fd| fs::read_link(fd.path()).is_ok_and(|l| wanted(&l))) {
                return None;
            }
            let comm = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            Some(PeerProcess {
                pid,
                tid: None,
                comm: comm.trim_end().to_string(),
                source: PeerSource::SocketTable,
                exe: None,
            })
        })
}

/// Inodes of the listening sockets (state `0A`) on any of `ports`, from the
/// text of /proc/net/tcp or /proc/net/tcp6.
pub fn listening_inodes(table: &str, ports: &Ports) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (l, st, inode) = (cols.get(1)?, cols.get(3)?, cols.get(9)?);
            (*st == "0A" && ports.contains(parse_addr(l)?.port())).then(|| inode.parse().ok())?
        })
        .collect()
}

/// Every process holding a listening socket on one of `ports`, except those
/// `known` says to skip (their fd tables are not read again). These are the
/// processes that will accept, upgrade and close the traced sockets:
/// pre-forked workers inherit the listener, so they are found before their
/// first connection, and can be described even if they exit microseconds
/// after a close (a PHP-FPM or Swoole worker at its request limit).
///
/// Cost: one readlink per open fd of every other process; the caller runs
/// it rarely (at start and every few seconds).
pub fn listeners(ports: &Ports, known: impl Fn(u32) -> bool) -> Vec<PeerProcess> {
    // sock_diag walks only the listening hash when asked for LISTEN alone;
    // /proc/net/tcp prints every socket, and a churning server leaves
    // 100k+ in TIME_WAIT (reading it then took ~50 ms, every scan).
    let mut inodes: Vec<u64> = match listening_inodes_by_diag(ports) {
        Some(inodes) => inodes,
        None => ["/proc/net/tcp", "/proc/net/tcp6"]
            .iter()
            .filter_map(|t| fs::read_to_string(t).ok())
            .flat_map(|t| listening_inodes(&t, ports))
            .collect(),
    };
    if inodes.is_empty() {
        return Vec::new();
    }
    inodes.sort_unstable();
    processes_with_fd(known, |link| {
        link.to_str()
            .and_then(|l| l.strip_prefix("socket:["))
            .and_then(|l| l.strip_suffix(']'))
            .and_then(|i| i.parse::<u64>().ok())
            .is_some_and(|i| inodes.binary_search(&i).is_ok())
    })
    .collect()
}

/// Inodes of the TCP sockets listening on `ports` (IPv4 and IPv6), by a
/// A NETLINK_SOCK_DIAG socket; `None` if netlink refuses one.
fn sock_diag_socket() -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    // SAFETY: plain socket(2); the fd is owned (and closed) by the OwnedFd.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    (fd >= 0).then(|| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// sock_diag dump of the LISTEN state only; `None` if netlink fails.
fn listening_inodes_by_diag(ports: &Ports) -> Option<Vec<u64>> {
    use std::os::fd::AsRawFd as _;
    let sock = sock_diag_socket()?;
    let mut inodes = Vec::new();
    for family in [libc::AF_INET, libc::AF_INET6] {
        let mut req = [0u8; DIAG_REQ_LEN];
        req[0..4].copy_from_slice(&(DIAG_REQ_LEN as u32).to_ne_bytes());
        req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
        req[6..8].copy_from_slice(&flags.to_ne_bytes());
        req[16] = family as u8;
        req[17] = libc::IPPROTO_TCP as u8;
        req[20..24].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
        // SAFETY: valid fd and buffer of the given length.
        let sent = unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
        if sent != req.len() as isize {
            return None;
        }
        let mut buf = vec![0u8; 32 * 1024];
        'dump: loop {
            // SAFETY: valid fd and buffer of the given length.
            let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            let batch = buf.get(..usize::try_from(n).ok()?)?;
            if batch.is_empty() {
                return None;
            }
            for msg in netlink_messages(batch) {
                match u16::from_ne_bytes(msg.get(4..6)?.try_into().ok()?) {
                    NLMSG_DONE => break 'dump,
                    NLMSG_ERROR => return None,
                    _ => {}
                }
                // inet_diag_msg: family, state, timer, retrans, then sockid (sport first, big-endian).
                let sport = u16::from_be_bytes(msg.get(20..22)?.try_into().ok()?);
                if ports.contains(sport)
                    && let Some(inode) = diag_reply_inode(msg)
                {
                    inodes.push(inode);
                }
            }
        }
    }
    Some(inodes)
}

const TCP_LISTEN: u32 = 10;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

/// The netlink messages in one datagram (each `nlmsg_len` long, 4-aligned).
fn netlink_messages(mut batch: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let len = u32::from_ne_bytes(batch.get(0..4)?.try_into().ok()?) as usize;
        if len < 16 || len > batch.len() {
            return None;
        }
        let msg = &batch[..len];
        batch = batch.get((len + 3) & !3..).unwrap_or_default();
        Some(msg)
    })
}

/// The inode of the row whose local/remote addresses match, from the text of
/// /proc/net/tcp or /proc/net/tcp6.
pub fn inode_of(table: &str, local: SocketAddr, remote: SocketAddr) -> Option<u64> {
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (l, r, inode) = (cols.get(1)?, cols.get(2)?, cols.get(9)?);
        (parse_addr(l)? == local && parse_addr(r)? == remote).then(|| inode.parse().ok())?
    })
}

/// `0100007F:04BF` -> 127.0.0.1:1215. The kernel prints each 32-bit word of
/// the address in host byte order (little-endian here), the port in hex.
pub fn parse_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Option<Vec<u32>> = (0..ip.len() / 8)
        .map(|i| {
            ip.get(i * 8..i * 8 + 8)
                .and_then(|w| u32::from_str_radix(w, 16).ok())
        })
        .collect();
    let words = words?;
    let ip = match (ip.len(), words.as_slice()) {
        (8, [w]) => IpAddr::V4(Ipv4Addr::from(w.swap_bytes())),
        (32, [a, b, c, d]) => {
            let mut bytes = [0u8; 16];
            for (i, w) in [a, b, c, d].iter().enumerate() {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_fd_budget_refills_at_its_rate_up_to_one_second() {
        let mut b = FdBudget::default();
        let t0 = Instant::now();
        b.refill(t0);
        let mut taken = 0u64;
        while b.take() {
            taken += 1;
        }
        assert_eq!(taken, FDS_PER_SEC as u64, "a second's worth at first");
        b.refill(t0 + Duration::from_millis(100));
        let mut again = 0u64;
        while b.take() {
            again += 1;
        }
        assert_eq!(again, (FDS_PER_SEC / 10.0) as u64, "a tenth of a second");
        b.refill(t0 + Duration::from_secs(60));
        assert!(b.tokens <= FDS_PER_SEC, "never more than a second's worth");
    }

    #[test]
    fn a_spent_budget_stops_the_owner_check() {
        let mut b = FdBudget {
            tokens: 0.0,
            at: None,
        };
        // Our own process holds fds, but none is examined.
        let held = std::net::TcpListener::bind("127.0.0.1:0").expect("a socket");
        use std::os::fd::AsRawFd as _;
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::fstat(held.as_raw_fd(), &mut st) }, 0);
        assert!(!holds(std::process::id(), st.st_ino, &mut b));
        let mut full = FdBudget::default();
        assert!(holds(std::process::id(), st.st_ino, &mut full));
    }

    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:04BF 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 41234 1 0000000000000000 100 0 0 10 0
   1: 0100007F:C4EC 0100007F:04BF 01 00000000:00000000 00:00000000 00000000    33        0 55667 1 0000000000000000 20 4 30 10 -1
";

    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:04BF 00000000000000000000000001000000:D431 01 00000000:00000000 00:00000000 00000000     0        0 77001 1 0000000000000000 20 4 0 10 -1
   1: 0000000000000000FFFF00000100007F:1F90 0000000000000000FFFF00000100007F:E001 01 00000000:00000000 00:00000000 00000000     0        0 77002 1 0000000000000000 20 4 0 10 -1
";

    #[test]
    fn client_keys_swap_the_ends_in_the_kernel_layout() {
        use wstrace_common::{AF_INET, AF_INET6};
        let server: SocketAddr = "127.0.0.1:1215".parse().expect("addr");
        let client: SocketAddr = "127.0.0.2:50412".parse().expect("addr");
        let keys = client_keys(server, client);
        assert_eq!(keys.len(), 2);
        // An AF_INET client: its own address and port first, 4-byte
        // addresses, the rest zero (as fill_tuple writes them).
        let k = keys[0];
        assert_eq!(
            (k.family, k.lport, k.rport, k._pad),
            (AF_INET, 50412, 1215, 0)
        );
        assert_eq!(&k.laddr[..4], &[127, 0, 0, 2]);
        assert_eq!(&k.raddr[..4], &[127, 0, 0, 1]);
        assert!(k.laddr[4..].iter().chain(&k.raddr[4..]).all(|&b| b == 0));
        // A dual-stack client socket holds ::ffff:a.b.c.d.
        let m = keys[1];
        assert_eq!((m.family, m.lport, m.rport), (AF_INET6, 50412, 1215));
        assert_eq!(
            Ipv6Addr::from(m.laddr),
            "::ffff:127.0.0.2".parse::<Ipv6Addr>().expect("v6")
        );
        let v6 = client_keys(
            "[::1]:1215".parse().expect("addr"),
            "[::1]:40000".parse().expect("addr"),
        );
        assert_eq!(v6.len(), 1);
        assert_eq!(
            (v6[0].family, v6[0].lport, v6[0].rport),
            (AF_INET6, 40000, 1215)
        );
        assert_eq!(Ipv6Addr::from(v6[0].raddr), Ipv6Addr::LOCALHOST);
    }

    #[test]
    fn listening_rows_on_traced_ports_only() {
        assert_eq!(listening_inodes(TCP, &Ports::Only(vec![1215])), vec![41234]);
        assert_eq!(
            listening_inodes(TCP, &Ports::Only(vec![80])),
            Vec::<u64>::new()
        );
        assert_eq!(
            listening_inodes(TCP, &Ports::All),
            vec![41234],
            "every port"
        );
        // Established rows on the port are not listeners.
        assert_eq!(
            listening_inodes(TCP6, &Ports::Only(vec![1215, 8080])),
            Vec::<u64>::new()
        );
    }

    #[test]
    fn finds_this_process_as_a_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let me = std::process::id();
        let found = listeners(&Ports::Only(vec![port]), |_| false);
        assert!(found.iter().any(|p| p.pid == me), "{found:?}");
        assert!(
            listeners(&Ports::Only(vec![port]), |pid| pid == me)
                .iter()
                .all(|p| p.pid != me)
        );
    }

    #[test]
    fn listener_dump_by_sock_diag_matches_proc_net_tcp() {
        let v4 = std::net::TcpListener::bind("127.0.0.1:0").expect("bind v4");
        let v6 = std::net::TcpListener::bind("[::1]:0").expect("bind v6");
        // An established connection on the v4 port must not count.
        let _c = std::net::TcpStream::connect(v4.local_addr().expect("addr")).expect("connect");
        let ports = Ports::from_args(&[
            v4.local_addr().expect("addr").port(),
            v6.local_addr().expect("addr").port(),
        ]);
        let mut by_proc: Vec<u64> = ["/proc/net/tcp", "/proc/net/tcp6"]
            .iter()
            .filter_map(|t| fs::read_to_string(t).ok())
            .flat_map(|t| listening_inodes(&t, &ports))
            .collect();
        let mut by_diag = listening_inodes_by_diag(&ports).expect("sock_diag works");
        by_proc.sort_unstable();
        by_diag.sort_unstable();
        assert_eq!(by_diag.len(), 2);
        assert_eq!(by_diag, by_proc);
    }

    #[test]
    fn netlink_messages_split_on_lengths_and_stop_on_garbage() {
        let mut batch = Vec::new();
        for (len, kind) in [(20u32, 20u16), (16, NLMSG_DONE)] {
            let mut m = vec![0u8; len as usize];
            m[0..4].copy_from_slice(&len.to_ne_bytes());
            m[4..6].copy_from_slice(&kind.to_ne_bytes());
            batch.extend(m);
        }
        let kinds: Vec<u16> = netlink_messages(&batch)
            .map(|m| u16::from_ne_bytes([m[4], m[5]]))
            .collect();
        assert_eq!(kinds, vec![20, NLMSG_DONE]);
        // A length past the end, or below a header, ends the walk.
        assert_eq!(netlink_messages(&[255, 0, 0, 0, 1, 2]).count(), 0);
        assert_eq!(netlink_messages(&[4, 0, 0, 0]).count(), 0);
    }

    #[test]
    fn parses_kernel_address_notation() {
        assert_eq!(
            parse_addr("0100007F:04BF"),
            Some("127.0.0.1:1215".parse().expect("addr"))
        );
        assert_eq!(
            parse_addr("00000000000000000000000001000000:04BF"),
            Some("[::1]:1215".parse().expect("addr"))
        );
        assert_eq!(parse_addr("zz:01"), None);
        assert_eq!(parse_addr("0100007F"), None);
        assert_eq!(parse_addr("0100007F:XYZ"), None);
    }

    #[test]
    fn finds_the_peer_row_of_a_loopback_connection() {
        // Our socket: 127.0.0.1:1215 <-> 127.0.0.1:50412. The peer's row is
        // the swapped one.
        let local: SocketAddr = "127.0.0.1:50412".parse().expect("addr");
        let remote: SocketAddr = "127.0.0.1:1215".parse().expect("addr");
        assert_eq!(inode_of(TCP, local, remote), Some(55667));
        assert_eq!(inode_of(TCP, remote, local), None, "no such row");
        let v6l: SocketAddr = "[::1]:1215".parse().expect("addr");
        let v6r: SocketAddr = "[::1]:54321".parse().expect("addr");
        assert_eq!(inode_of(TCP6, v6l, v6r), Some(77001));
        let l: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
        let r: SocketAddr = "127.0.0.1:57345".parse().expect("addr");
        assert_eq!(inode_of(TCP6, mapped(l), mapped(r)), Some(77002));
    }

    #[test]
    fn finds_a_real_loopback_peer_in_this_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        let (peer_local, peer_remote) = (
            server.peer_addr().expect("peer"),
            server.local_addr().expect("local"),
        );
        // sock_diag names the client socket's inode, as /proc/net/tcp does,
        // and the kept socket answers again (its replies stay in step).
        let mut finder = PeerFinder::default();
        for _ in 0..3 {
            let by_diag = finder
                .inode_by_diag(peer_local, peer_remote)
                .expect("netlink works")
                .expect("sock_diag finds the socket");
            assert_eq!(Some(by_diag), inode_by_proc(peer_local, peer_remote));
        }
        let gone: std::net::SocketAddr = "127.0.0.1:1".parse().expect("addr");
        assert_eq!(finder.inode_by_diag(gone, peer_remote), Ok(None));
        // From the server's point of view, the peer is the client socket.
        let peer = finder
            .find(peer_local, peer_remote)
            .expect("the client socket is found in /proc");
        assert_eq!(peer.pid, std::process::id());
        // The second lookup is served from the known owners, with no full scan.
        let c2 =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (s2, _) = listener.accept().expect("accept");
        let again = finder
            .find(
                s2.peer_addr().expect("peer"),
                s2.local_addr().expect("local"),
            )
            .expect("found among known owners, within the full-scan interval");
        assert_eq!(again.pid, std::process::id());
        drop((client, c2));
    }

    #[test]
    fn diag_request_layout() {
        let r = diag_request(
            "127.0.0.1:1215".parse().expect("addr"),
            "127.0.0.2:50000".parse().expect("addr"),
        );
        assert_eq!(u32::from_ne_bytes(r[0..4].try_into().expect("4")), 72);
        assert_eq!((r[16], r[17]), (libc::AF_INET as u8, 6));
        assert_eq!(&r[24..28], &[0x04, 0xbf, 0xc3, 0x50]);
        assert_eq!(&r[28..32], &[127, 0, 0, 1]);
        assert_eq!(&r[44..48], &[127, 0, 0, 2]);
        assert_eq!(&r[64..72], &[0xff; 8]);
        // An error reply (no such socket) is no inode.
        let mut err = [0u8; 36];
        err[4..6].copy_from_slice(&2u16.to_ne_bytes());
        assert_eq!(diag_reply_inode(&err), None);
    }
}
