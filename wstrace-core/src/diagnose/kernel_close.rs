//! Rules for a connection the kernel ended on its own: no process here
//! closed it, so the fix is about the network or the peer, not the code.
use super::{Facts, peer_name};
use crate::model::ClosedBy;

type Found = Option<(String, Option<String>)>;

/// Retransmission, keepalive or TCP_USER_TIMEOUT expiry (ETIMEDOUT, or the
/// ICMP error that preceded it).
pub fn tcp_timeout(f: &Facts) -> Found {
    let k = f.kernel_close?;
    if f.closed_by != ClosedBy::Kernel || k.reason() != "tcp_timeout" {
        return None;
    }
    let message = format!(
        "the kernel gave up on the connection ({}): {} stopped acknowledging what this host sent \
         (retransmission timeout, keepalive or TCP_USER_TIMEOUT), {:.1} ms after the 101; no process here closed it",
        k.error_name(),
        peer_name(f),
        f.ms_after_upgrade
    );
    let fix = "the peer or the path to it went away (a client that lost its network, a host that died, a firewall or NAT that dropped the flow): look at the network between the two; WebSocket pings detect this sooner than TCP timeouts".to_string();
    Some((message, Some(fix)))
}

/// Aborted by a local request to the kernel (`ss -K`, SOCK_DESTROY).
pub fn kernel_abort(f: &Facts) -> Found {
    let k = f.kernel_close?;
    if f.closed_by != ClosedBy::Kernel {
        return None;
    }
    let message = format!(
        "the kernel aborted the connection ({}, {}) without any process closing it",
        k.reason(),
        k.error_name()
    );
    let fix = "something on this host destroyed the socket (`ss -K`, a SOCK_DESTROY from a firewall or orchestration agent): find which".to_string();
    Some((message, Some(fix)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::{diagnose, tests::facts};
    use crate::model::{How, KernelClose};

    #[test]
    fn a_timeout_blames_the_path_not_a_process() {
        let f = Facts {
            closed_by: ClosedBy::Kernel,
            how: How::Abort,
            closer: None,
            kernel_close: Some(KernelClose { errno: 110 }),
            ..facts()
        };
        let d = diagnose(&f);
        assert_eq!(d.code, "tcp_timeout");
        assert!(
            d.message.contains("ETIMEDOUT") && d.message.contains("nginx (pid 77)"),
            "{}",
            d.message
        );
        let d = diagnose(&Facts {
            kernel_close: Some(KernelClose { errno: 103 }),
            ..f
        });
        assert_eq!(d.code, "kernel_abort");
    }
}
