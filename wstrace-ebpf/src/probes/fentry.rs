//! fentry set: BTF trampolines on tcp_sendmsg and tcp_close.
//! Checked against `int tcp_sendmsg(struct sock *sk, struct msghdr *msg,
//! size_t size)` and `void tcp_close(struct sock *sk, long timeout)`, both
//! unchanged from 5.10 to 6.18.
use aya_ebpf::{macros::fentry, programs::FEntryContext};
use wstrace_common::ProbeSet;

use crate::probes::shared;

#[fentry(function = "tcp_sendmsg")]
pub fn fentry_tcp_sendmsg(ctx: FEntryContext) -> u32 {
    let sk: u64 = ctx.arg(0);
    let msg: u64 = ctx.arg(1);
    let size: u64 = ctx.arg(2);
    shared::on_tcp_sendmsg(sk, msg, size, ProbeSet::Fentry);
    0
}

#[fentry(function = "tcp_close")]
pub fn fentry_tcp_close(ctx: FEntryContext) -> u32 {
    let sk: u64 = ctx.arg(0);
    shared::on_tcp_close(&ctx, sk, ProbeSet::Fentry);
    0
}
