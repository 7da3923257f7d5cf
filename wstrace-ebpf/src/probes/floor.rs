//! Near-empty programs on the fentry and kprobe sets' hooks: the floor the
//! kernel-matrix cost benchmark compares wstrace's programs with (what any
//! program on that hook costs: the trampoline or the kprobe, and the stats'
//! own clock reads). Not part of the tracer's sets; `wstrace floor`
//! (hidden) attaches them, and the fentry set asks with `floor_fe_send`
//! whether the kernel attaches fentry at all (attached and detached at
//! once, before the set's own programs are verified). Names fit the kernel's 15 bytes, so they stay whole in
//! `bpf_prog_info`.
use aya_ebpf::{
    macros::{fentry, fexit, kprobe, kretprobe},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};

#[fentry(function = "tcp_sendmsg")]
pub fn floor_fe_send(_ctx: FEntryContext) -> u32 {
    0
}

#[fentry(function = "tcp_close")]
pub fn floor_fe_close(_ctx: FEntryContext) -> u32 {
    0
}

#[fentry(function = "tcp_recvmsg")]
pub fn floor_fe_recv(_ctx: FEntryContext) -> u32 {
    0
}

#[fexit(function = "tcp_recvmsg")]
pub fn floor_fx_recv(_ctx: FExitContext) -> u32 {
    0
}

#[kprobe]
pub fn floor_kp_send(_ctx: ProbeContext) -> u32 {
    0
}

#[kprobe]
pub fn floor_kp_close(_ctx: ProbeContext) -> u32 {
    0
}

#[kprobe]
pub fn floor_kp_recv(_ctx: ProbeContext) -> u32 {
    0
}

#[kretprobe]
pub fn floor_kr_recv(_ctx: RetProbeContext) -> u32 {
    0
}
