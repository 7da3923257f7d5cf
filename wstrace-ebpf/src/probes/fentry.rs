//! fentry set: BTF trampolines on tcp_sendmsg and tcp_close.
//! Checked against `int tcp_sendmsg(struct sock *sk, struct msghdr *msg,
//! size_t size)` and `void tcp_close(struct sock *sk, long timeout)`, both
//! unchanged from 5.10 to 6.18.
use aya_ebpf::{
    macros::{fentry, fexit},
    programs::{FEntryContext, FExitContext},
};
use wstrace_common::ProbeSet;

use crate::{probes::shared, ptr::KPtr, record};

#[fentry(function = "tcp_sendmsg")]
pub fn fentry_tcp_sendmsg(ctx: FEntryContext) -> u32 {
    let sk = KPtr::new(ctx.arg(0));
    let msg = KPtr::new(ctx.arg(1));
    let size: u64 = ctx.arg(2);
    shared::on_tcp_sendmsg(sk, msg, size, ProbeSet::Fentry);
    0
}

#[fentry(function = "tcp_close")]
pub fn fentry_tcp_close(ctx: FEntryContext) -> u32 {
    let sk = KPtr::new(ctx.arg(0));
    shared::on_tcp_close(&ctx, sk, ProbeSet::Fentry);
    0
}

/// `tcp_recvmsg(struct sock *sk, struct msghdr *msg, size_t len, ...)`:
/// 6 parameters before 5.19 (`nonblock` was dropped), 5 up to 6.12, 4 after
/// (`addr_len` dropped).
#[fentry(function = "tcp_recvmsg")]
pub fn fentry_tcp_recvmsg(ctx: FEntryContext) -> u32 {
    let sk = KPtr::new(ctx.arg(0));
    let msg = KPtr::new(ctx.arg(1));
    let len: u64 = ctx.arg(2);
    shared::on_tcp_recvmsg_entry(sk, msg, len);
    0
}

/// fexit's return value follows the parameters, so where it is depends on
/// the kernel's `tcp_recvmsg` (6, 5 or 4 parameters). One program per count,
/// each reading a fixed slot: the daemon loads the one that matches the
/// running kernel's BTF. A single program branching on a configured count is
/// rejected: the verifier checks the out-of-range slot too.
macro_rules! fexit_tcp_recvmsg {
    ($name:ident, $nargs:literal) => {
        #[fexit(function = "tcp_recvmsg")]
        pub fn $name(ctx: FExitContext) -> u32 {
            let ret: i64 = ctx.arg($nargs);
            record::read_exit(ret as i32 as i64, ProbeSet::Fentry);
            0
        }
    };
}
fexit_tcp_recvmsg!(fexit_tcp_recvmsg4, 4);
fexit_tcp_recvmsg!(fexit_tcp_recvmsg5, 5);
fexit_tcp_recvmsg!(fexit_tcp_recvmsg6, 6);
