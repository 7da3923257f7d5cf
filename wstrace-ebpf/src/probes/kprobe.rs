//! kprobe set: the fentry set's logic for kernels without BTF trampolines
//! (same prototypes; see fentry.rs).
use aya_ebpf::{
    macros::{kprobe, kretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use wstrace_common::ProbeSet;

use crate::{probes::shared, ptr::KPtr, record};

#[kprobe]
pub fn kprobe_tcp_sendmsg(ctx: ProbeContext) -> u32 {
    let sk = KPtr::new(ctx.arg(0).unwrap_or(0));
    let msg = KPtr::new(ctx.arg(1).unwrap_or(0));
    let size: u64 = ctx.arg(2).unwrap_or(0);
    shared::on_tcp_sendmsg(sk, msg, size, ProbeSet::Kprobe);
    0
}

#[kprobe]
pub fn kprobe_tcp_close(ctx: ProbeContext) -> u32 {
    let sk = KPtr::new(ctx.arg(0).unwrap_or(0));
    shared::on_tcp_close(&ctx, sk, ProbeSet::Kprobe);
    0
}

#[kprobe]
pub fn kprobe_tcp_recvmsg(ctx: ProbeContext) -> u32 {
    let sk = KPtr::new(ctx.arg(0).unwrap_or(0));
    let msg = KPtr::new(ctx.arg(1).unwrap_or(0));
    let len: u64 = ctx.arg(2).unwrap_or(0);
    shared::on_tcp_recvmsg_entry(sk, msg, len);
    0
}

#[kretprobe]
pub fn kretprobe_tcp_recvmsg(ctx: RetProbeContext) -> u32 {
    let ret: i64 = ctx.ret();
    record::read_exit(ret as i32 as i64, ProbeSet::Kprobe);
    0
}
