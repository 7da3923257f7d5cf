//! A process closing an upgraded socket: the close event with both
//! frame-pointer stacks, its user stack copy and interpreter frames.
use aya_ebpf::{EbpfContext, bindings::BPF_F_USER_STACK, helpers::generated::bpf_get_stack};
use wstrace_common::{
    CloseEvent, EventKind, FLAG_EXIT_CODE, FLAG_TASK_EXITING, ProbeSet, STACK_DEPTH,
};

use crate::record::emit::{fill_header, reserve};
use crate::{
    kernel::{current_exit_code, current_task_exiting},
    ptr::KPtr,
    ustack,
};

/// A process is closing an upgraded socket: who, and the call path.
/// `new_state` is 0 when the caller runs before the transition (tcp_close).
///
/// The close is built in place in `EVENTS`; a user stack copy, when asked
/// for (`user_stack_bytes`) and within its call site's budget, goes to the
/// `STACKS` ring before the close is submitted (`ustack::copy_for_close`).
pub fn close<C: EbpfContext>(ctx: &C, probe: ProbeSet, sk: KPtr, old_state: u8, new_state: u8) {
    let Some(mut entry) = reserve::<CloseEvent>(EventKind::Close) else {
        return;
    };
    let ev = entry.as_mut_ptr();
    unsafe {
        fill_close(
            ctx,
            ev,
            EventKind::Close,
            probe as u8,
            sk,
            old_state,
            new_state,
        );
        ustack::copy_for_close(ev);
    }
    entry.submit(0);
}

/// Fills a close (or crash) event (header and both frame-pointer stacks)
/// at `ev`.
#[inline(always)]
pub(super) unsafe fn fill_close<C: EbpfContext>(
    ctx: &C,
    ev: *mut CloseEvent,
    kind: EventKind,
    probe: u8,
    sk: KPtr,
    old_state: u8,
    new_state: u8,
) {
    const STACK_BYTES: u32 = (STACK_DEPTH * 8) as u32;
    unsafe {
        let h = &raw mut (*ev).header;
        fill_header(h, kind, probe, sk, old_state, new_state);
        if current_task_exiting() {
            (*h).flags |= FLAG_TASK_EXITING;
            // How the process ended: exit status, or the signal that ended it.
            if let Some(code) = current_exit_code() {
                (*h).flags |= FLAG_EXIT_CODE;
                (*h).arg = code;
            }
        }
        (*ev).kernel_stack_len = bpf_get_stack(
            ctx.as_ptr(),
            (*ev).kernel_stack.as_mut_ptr().cast(),
            STACK_BYTES,
            0,
        );
        (*ev).user_stack_len = bpf_get_stack(
            ctx.as_ptr(),
            (*ev).user_stack.as_mut_ptr().cast(),
            STACK_BYTES,
            BPF_F_USER_STACK as u64,
        );
        crate::interp::take(&raw mut (*ev).interp);
    }
}
