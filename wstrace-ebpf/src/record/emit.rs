//! Events into `EVENTS`: the fair-share gate, reserving an entry, filling
//! the header every event starts with, and counting what was not sent.
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_CONS_POS, BPF_RB_RING_SIZE},
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        generated::{bpf_get_current_comm as bpf_get_current_comm_raw, bpf_jiffies64},
    },
    maps::ring_buf::RingBufEntry,
};
use wstrace_common::{
    EventHeader, EventKind, FAIR_SHARE_EVENTS, FAIR_SHARE_WINDOW, ProcessBudget, lost,
};

use crate::{
    kernel::{config, current_process_start_ns, fill_tuple},
    maps::{EVENTS, LOST, PROCESS_BUDGETS},
    ptr::KPtr,
};

/// Counts one event not sent, by `wstrace_common::lost` reason.
pub(crate) fn count_lost(reason: u32) {
    if let Some(lost) = LOST.get_ptr_mut(reason) {
        unsafe { *lost += 1 };
    }
}

/// May the current process add a `kind` event to `EVENTS`? Always while the
/// ring is under half full (one helper call each for its size and fill);
/// past half, only within its `FAIR_SHARE_EVENTS` per window (an eighth of
/// the ring read by the daemon), so a process that floods the ring cannot
/// crowd out another's close: what it loses is counted
/// (`lost::OVER_BUDGET`) and totalled in its budget entry for the daemon
/// to name it.
#[inline(always)]
fn fair_share(kind: EventKind) -> bool {
    let size = EVENTS.query(BPF_RB_RING_SIZE as u64);
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) < size / 2 {
        return true;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let read = EVENTS.query(BPF_RB_CONS_POS as u64);
    let Some(b) = PROCESS_BUDGETS.get_ptr_mut(&tgid) else {
        let fresh = ProcessBudget {
            window_cons_pos: read,
            events: 1,
            ..ProcessBudget::default()
        };
        // Without an entry (the map refused one) the event is sent: the
        // ring's own limit still holds.
        let _ = PROCESS_BUDGETS.insert(&tgid, &fresh, 0);
        return true;
    };
    unsafe {
        if read.wrapping_sub((*b).window_cons_pos) >= size / FAIR_SHARE_WINDOW {
            (*b).window_cons_pos = read;
            (*b).events = 0;
        }
        if (*b).events < FAIR_SHARE_EVENTS {
            (*b).events += 1;
            return true;
        }
        (*b).dropped += 1;
        if kind as u8 == EventKind::Close as u8 {
            (*b).dropped_closes += 1;
        } else if kind as u8 == EventKind::Upgrade as u8 {
            (*b).dropped_upgrades += 1;
        }
    }
    count_lost(lost::OVER_BUDGET);
    false
}

/// Reserves a `T` in `EVENTS` for a `kind` event, if the process is within
/// its fair share (`fair_share`) and the ring has room; counts it lost
/// otherwise.
#[inline(always)]
pub(super) fn reserve<T: 'static>(kind: EventKind) -> Option<RingBufEntry<T>> {
    if !fair_share(kind) {
        return None;
    }
    let entry = EVENTS.reserve::<T>(0);
    if entry.is_none() {
        count_lost(lost::RING_FULL);
    }
    entry
}

/// Fills `*h`, which points into a reserved ring-buffer entry, field by field.
///
/// Why in place: building the 120-byte header on the BPF stack and copying it
/// in cost more than the 512-byte combined stack limit once a close's call
/// chain was added (kernels before 6.x have no private-stack relief), and the
/// verifier rejected the programs on 5.10-6.12. Ring-buffer memory is not
/// zeroed, so every field is written, padding included.
#[inline(always)]
pub(super) unsafe fn fill_header(
    h: *mut EventHeader,
    kind: EventKind,
    probe: u8,
    sk: KPtr,
    old_state: u8,
    new_state: u8,
) {
    let pid_tgid = bpf_get_current_pid_tgid();
    unsafe {
        (*h).kind = kind as u8;
        (*h).probe = probe;
        (*h).old_state = old_state;
        (*h).new_state = new_state;
        (*h).pid = (pid_tgid >> 32) as u32;
        (*h).tid = pid_tgid as u32;
        (*h).flags = 0;
        (*h).arg = 0;
        (*h).jiffies = bpf_jiffies64() as u32;
        (*h).last_send_jiffies = sk.field::<u32>(config!(tcp_lsndtime)).unwrap_or(0);
        (*h).last_recv_jiffies = sk.field::<u32>(config!(icsk_lrcvtime)).unwrap_or(0);
        (*h).ts_ns = bpf_ktime_get_ns();
        (*h).sk = sk.addr();
        (*h).bytes_received = sk.field::<u64>(config!(tcp_bytes_received)).unwrap_or(0);
        (*h).bytes_acked = sk.field::<u64>(config!(tcp_bytes_acked)).unwrap_or(0);
        (*h).process_start_ns = current_process_start_ns();
        fill_tuple(&raw mut (*h).tuple, sk);
        if bpf_get_current_comm_raw((&raw mut (*h).comm).cast(), 16) != 0 {
            (*h).comm = [0; 16];
        }
    }
}

/// An event that is just a header: reserve, fill in place, submit.
#[inline(always)]
pub(super) fn emit_header(kind: EventKind, probe: u8, sk: KPtr, old_state: u8, new_state: u8) {
    let Some(mut entry) = reserve::<EventHeader>(kind) else {
        return;
    };
    unsafe { fill_header(entry.as_mut_ptr(), kind, probe, sk, old_state, new_state) };
    entry.submit(0);
}
