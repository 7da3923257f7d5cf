//! The interpreter walk's own programs (`interp`), attached with every
//! probe set to the entry and exit of close(2) and shutdown(2): the walk
//! happens here, verified once, and the close program inside the call
//! takes its result.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

use crate::interp;

/// sys_enter_close, sys_enter_shutdown: walk a registered interpreter's
/// thread into its stash.
#[tracepoint(category = "syscalls", name = "sys_enter_close")]
pub fn interp_stash(_ctx: TracePointContext) -> u32 {
    interp::stash();
    0
}

/// sys_exit_close, sys_exit_shutdown: drop the stash.
#[tracepoint(category = "syscalls", name = "sys_exit_close")]
pub fn interp_unstash(_ctx: TracePointContext) -> u32 {
    interp::unstash();
    0
}
