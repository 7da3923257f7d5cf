//! The process at the other end of a loopback connection (a local proxy such
//! as an nginx worker), found the way `ss -p` does: the peer socket's inode in
//! /proc/net/tcp{,6}, then the process holding `socket:[inode]` in
//! /proc/<pid>/fd. Looked up when the 101 is seen, while the peer is alive.
use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerProcess {
    pub pid: u32,
    pub comm: String,
}

/// Is `ip` an address of this host whose peer process we can look up?
/// Loopback only: other local addresses would need the host's address list,
/// and loopback is where local proxies sit.
pub fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback()
}

/// The process owning the TCP socket whose local end is `peer_local` and
/// remote end is `peer_remote` (our remote and local, swapped).
pub fn find(peer_local: SocketAddr, peer_remote: SocketAddr) -> Option<PeerProcess> {
    let table = if peer_local.is_ipv4() {
        "/proc/net/tcp"
    } else {
        "/proc/net/tcp6"
    };
    let inode = fs::read_to_string(table)
        .ok()
        .and_then(|t| inode_of(&t, peer_local, peer_remote))
        // Dual-stack listeners see IPv4 peers in tcp6 as ::ffff:a.b.c.d.
        .or_else(|| {
            let t = fs::read_to_string("/proc/net/tcp6").ok()?;
            inode_of(&t, mapped(peer_local), mapped(peer_remote))
        })?;
    owner_of(inode)
}

fn mapped(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    }
}

fn owner_of(inode: u64) -> Option<PeerProcess> {
    let want = format!("socket:[{inode}]");
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == want.as_str()) {
                let comm = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
                return Some(PeerProcess {
                    pid,
                    comm: comm.trim_end().to_string(),
                });
            }
        }
    }
    None
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
        // From the server's point of view, the peer is the client socket.
        let peer = find(
            server.peer_addr().expect("peer"),
            server.local_addr().expect("local"),
        )
        .expect("the client socket is found in /proc");
        assert_eq!(peer.pid, std::process::id());
        drop(client);
    }
}
