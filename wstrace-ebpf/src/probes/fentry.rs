//! fentry set: BTF trampolines on tcp_sendmsg and tcp_close.
//! Checked against `int tcp_sendmsg(struct sock *sk, struct msghdr *msg,
//! size_t size)` and `void tcp_close(struct sock *sk, long timeout)`, both
//! unchanged from 5.10 to 6.18.
use aya_ebpf::{
    macros::{fentry, fexit},
    programs::{FEntryContext, FExitContext},
};
use wstrace_common::ProbeSet;

use crate::{
    kernel::{TCP_RECVMSG_NARGS, g},
    probes::shared,
    record,
};

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

/// `tcp_recvmsg(struct sock *sk, struct msghdr *msg, size_t len, ...)`:
/// 6 parameters before 5.19 (`nonblock` was dropped), 5 after.
#[fentry(function = "tcp_recvmsg")]
pub fn fentry_tcp_recvmsg(ctx: FEntryContext) -> u32 {
    let sk: u64 = ctx.arg(0);
    let msg: u64 = ctx.arg(1);
    shared::on_tcp_recvmsg_entry(sk, msg);
    0
}

/// fexit's return value follows the parameters; their count comes from BTF
/// (TCP_RECVMSG_NARGS, a frozen constant, so the verifier prunes the branch
/// not taken on this kernel).
#[fexit(function = "tcp_recvmsg")]
pub fn fexit_tcp_recvmsg(ctx: FExitContext) -> u32 {
    let ret: i64 = if g(&TCP_RECVMSG_NARGS) == 5 { ctx.arg(5) } else { ctx.arg(6) };
    record::read_exit(ret as i32 as i64);
    0
}
