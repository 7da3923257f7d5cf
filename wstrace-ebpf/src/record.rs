//! The one recording path every probe set feeds: mark a socket upgraded, and
//! turn what happens to an upgraded socket into ring-buffer events.
use aya_ebpf::{
    EbpfContext,
    bindings::BPF_F_USER_STACK,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        bpf_probe_read_user_buf, generated::bpf_get_stack,
    },
};
use wstrace_common::{
    CloseEvent, EventHeader, EventKind, FLAG_TASK_EXITING, ProbeSet, STACK_DEPTH, SockTuple,
    UPGRADE_PREFIX_LEN, is_upgrade_response,
};

use crate::{
    kernel::{current_task_exiting, sk_is_tcp, sk_local_port, sk_tuple, tcp_bytes},
    maps::{EVENTS, LOST, UPGRADED},
};

fn count_lost() {
    if let Some(lost) = LOST.get_ptr_mut(0) {
        unsafe { *lost += 1 };
    }
}

#[inline(always)]
fn header(kind: EventKind, probe: u8, sk: u64, old_state: u8, new_state: u8) -> EventHeader {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (bytes_received, bytes_acked) = tcp_bytes(sk);
    EventHeader {
        kind: kind as u8,
        probe,
        old_state,
        new_state,
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        flags: 0,
        arg: 0,
        _reserved: 0,
        ts_ns: unsafe { bpf_ktime_get_ns() },
        sk,
        bytes_received,
        bytes_acked,
        tuple: SockTuple::default(),
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    }
}

#[inline(always)]
fn emit(h: &EventHeader) {
    if EVENTS.output::<EventHeader>(h, 0).is_err() {
        count_lost();
    }
}

/// True when the first bytes at user address `buf` are an HTTP/1.x 101 status
/// line. Cheap enough to run on every write: one 13-byte copy, 13 compares.
#[inline(always)]
pub fn user_buf_is_upgrade(buf: u64, len: u64) -> bool {
    if buf == 0 || len < UPGRADE_PREFIX_LEN as u64 {
        return false;
    }
    let mut head = [0u8; UPGRADE_PREFIX_LEN];
    if unsafe { bpf_probe_read_user_buf(buf as *const u8, &mut head) }.is_err() {
        return false;
    }
    is_upgrade_response(&head)
}

/// The local end of `sk` wrote a 101: start tracing the socket. Callers have
/// already checked the port.
pub fn mark_upgraded(sk: u64, write_len: u64, probe: ProbeSet) {
    if !sk_is_tcp(sk) {
        return;
    }
    let mut h = header(EventKind::Upgrade, probe as u8, sk, 0, 0);
    h.arg = write_len as u32;
    h.tuple = sk_tuple(sk);
    if UPGRADED.insert(sk, h.ts_ns, 0).is_err() {
        count_lost();
        return;
    }
    emit(&h);
}

/// Is `sk` a traced, upgraded socket? Port first: unrelated sockets never
/// reach the map.
#[inline(always)]
pub fn is_upgraded(sk: u64) -> bool {
    sk != 0 && sk_tuple_port_ok(sk) && UPGRADED.get_ptr(sk).is_some()
}

#[inline(always)]
fn sk_tuple_port_ok(sk: u64) -> bool {
    crate::kernel::port_traced(sk_local_port(sk))
}

/// A TCP state transition of an upgraded socket.
pub fn state_change(sk: u64, old_state: u8, new_state: u8) {
    let mut h = header(EventKind::State, 0, sk, old_state, new_state);
    h.tuple = sk_tuple(sk);
    emit(&h);
}

/// A process is closing an upgraded socket: who, and the call path.
/// `new_state` is 0 when the caller runs before the transition (tcp_close).
pub fn close<C: EbpfContext>(ctx: &C, probe: ProbeSet, sk: u64, old_state: u8, new_state: u8) {
    let mut h = header(EventKind::Close, probe as u8, sk, old_state, new_state);
    h.tuple = sk_tuple(sk);
    if current_task_exiting() {
        h.flags |= FLAG_TASK_EXITING;
    }
    let Some(mut entry) = EVENTS.reserve::<CloseEvent>(0) else {
        count_lost();
        return;
    };
    let ev = entry.as_mut_ptr();
    const STACK_BYTES: u32 = (STACK_DEPTH * 8) as u32;
    unsafe {
        (*ev).header = h;
        (*ev).kernel_stack_len =
            bpf_get_stack(ctx.as_ptr(), (*ev).kernel_stack.as_mut_ptr().cast(), STACK_BYTES, 0);
        (*ev).user_stack_len = bpf_get_stack(
            ctx.as_ptr(),
            (*ev).user_stack.as_mut_ptr().cast(),
            STACK_BYTES,
            BPF_F_USER_STACK as u64,
        );
    }
    entry.submit(0);
}

pub fn reset(sk: u64, kind: EventKind) {
    let mut h = header(kind, 0, sk, 0, 0);
    h.tuple = sk_tuple(sk);
    emit(&h);
}

/// The kernel is destroying an upgraded socket: forget it (its address may be
/// reused by the next socket) and tell the daemon.
pub fn destroy(sk: u64) {
    let _ = UPGRADED.remove(sk);
    let mut h = header(EventKind::Destroy, 0, sk, 0, 0);
    h.tuple = sk_tuple(sk);
    emit(&h);
}
