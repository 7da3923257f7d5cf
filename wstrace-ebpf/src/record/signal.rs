//! How a process that wrote a 101 may end: its crash (stacks at the
//! fault), and signals or an OOM kill aimed at it.
use aya_ebpf::EbpfContext;
use wstrace_common::{CloseEvent, EventKind, SignalEvent};

use crate::record::{
    close::fill_close,
    emit::{fill_header, reserve},
};
use crate::{maps::UPGRADERS, ptr::KPtr, ustack};

/// The current thread of a process that wrote a 101 faulted or aborted
/// (`signal`): its stacks now, at the signal, are where it crashed; by
/// the time its sockets close at exit its memory is gone. A close event's
/// layout (and its user stack copy, under the same per-site budget).
pub fn crash<C: EbpfContext>(ctx: &C, signal: u32) {
    let Some(mut entry) = reserve::<CloseEvent>(EventKind::Crash) else {
        return;
    };
    let ev = entry.as_mut_ptr();
    unsafe {
        fill_close(ctx, ev, EventKind::Crash, 0, KPtr::NULL, 0, 0);
        (*ev).header.arg = signal;
        ustack::copy_for_close(ev);
    }
    entry.submit(0);
}

/// Is `tgid` a process that wrote a 101 (its signals are recorded)?
#[inline(always)]
pub fn is_upgrader(tgid: u32) -> bool {
    UPGRADERS.get_ptr(tgid).is_some()
}

/// A signal (or an OOM kill) aimed at a process that wrote a 101: the
/// header names the current task, the sender.
pub fn signal(target_pid: u32, signal: u32, code: i32, oom: u32) {
    let Some(mut entry) = reserve::<SignalEvent>(EventKind::Signal) else {
        return;
    };
    let ev = entry.as_mut_ptr();
    unsafe {
        fill_header(
            &raw mut (*ev).header,
            EventKind::Signal,
            0,
            KPtr::NULL,
            0,
            0,
        );
        (*ev).target_pid = target_pid;
        (*ev).signal = signal;
        (*ev).code = code;
        (*ev).oom = oom;
    }
    entry.submit(0);
}
