//! What the fentry and kprobe sets do at tcp_sendmsg / tcp_close entry.
use aya_ebpf::EbpfContext;
use wstrace_common::ProbeSet;

use crate::{
    kernel::{msghdr_user_buf, port_traced, sk_local_port, sk_state},
    record,
};

/// Port filter first: every other socket on the host leaves after one read.
#[inline(always)]
pub fn on_tcp_sendmsg(sk: u64, msg: u64, size: u64, probe: ProbeSet) {
    if sk == 0 || !port_traced(sk_local_port(sk)) {
        return;
    }
    let Some(buf) = msghdr_user_buf(msg) else { return };
    if record::user_buf_is_upgrade(buf, size) {
        record::mark_upgraded(sk, size, probe);
    }
}

/// The process context of close(): `old_state` tells the daemon whether the
/// peer had closed first (CLOSE_WAIT) or not (ESTABLISHED).
#[inline(always)]
pub fn on_tcp_close<C: EbpfContext>(ctx: &C, sk: u64, probe: ProbeSet) {
    if record::is_upgraded(sk) {
        record::close(ctx, probe, sk, sk_state(sk), 0);
    }
}
