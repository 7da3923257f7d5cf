//! The interpreter's own call stack of a closing thread (CPython): which
//! Python functions were running when the socket closed.
//!
//! The native stack shows `_PyEval_EvalFrameDefault` for every Python
//! function; the functions themselves are in the interpreter's frame chain,
//! which changes as soon as the thread moves on, so it is read here, at the
//! close. Only two addresses per frame are copied (code object, instruction
//! pointer): code objects live as long as their functions, and the daemon
//! reads names and lines from them afterwards.
//!
//! The walk runs in programs of its own, at the entry of close(2) and
//! shutdown(2) (`probes::interp`), into a per-thread stash the close
//! program copies with one helper call (`take`). In the close programs
//! themselves, 5.10's verifier explored the bounded walk once for every
//! path that reached it and everything after it once for each way out:
//! fentry/tcp_close hit the million-instruction limit there, and on
//! emulated 6.1 arm64 the load outlasted minutes. On its own the walk
//! is verified once. What that leaves out: a close that is no close(2) or
//! shutdown(2) of the interpreter's thread (exit, dup2, close_range,
//! io_uring) has no interpreter frames, and neither has a crash.
//!
//! Only processes the daemon registered in `INTERP_PROCS` (with the offsets
//! of their interpreter build) are walked: every other close costs one
//! lookup. Everything read is the process's, so hostile: every address is
//! a `UPtr`, read with `bpf_probe_read_user` (a bad pointer fails the read,
//! never the kernel),
//! both loops are bounded, and the walk ends with a status saying why.
use aya_ebpf::helpers::bpf_get_current_pid_tgid;
use wstrace_common::{
    ABSENT, INTERP_FRAMES, INTERP_THREADS, INTERP_WINDOW_MAX, InterpConfig, InterpFrame,
    InterpStack, interp,
};

use crate::{
    maps::{INTERP_PROCS, INTERP_SCRATCH, INTERP_STASH, INTERP_WINDOW},
    ptr::{KPtr, UPtr},
};

/// The pointer at `addr` in the interpreter's memory.
#[inline(always)]
fn user_word(addr: UPtr) -> Option<UPtr> {
    if addr.is_null() {
        return None;
    }
    addr.read::<UPtr>().ok()
}

/// Word `i` (0..16) of a frame's window. The window is in a map value, not
/// on the stack: a load at a variable offset into the stack is refused by
/// 5.10's verifier, one into a map value within its bounds is not.
#[inline(always)]
fn pick(w: *const [u64; 16], i: u64) -> u64 {
    unsafe { *(w as *const u64).add((i & 15) as usize) }
}

/// At the entry of close(2)/shutdown(2): walks a registered interpreter's
/// closing thread into its stash (replacing any earlier one).
#[inline(always)]
pub fn stash() {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(c) = INTERP_PROCS.get_ptr((pid_tgid >> 32) as u32) else {
        return;
    };
    let Some(out) = INTERP_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let c: &InterpConfig = unsafe { &*c };
    let tid = pid_tgid as u32;
    unsafe {
        (*out).count = 0;
        (*out).entry_mask = 0;
        (*out)._pad = 0;
        (*out).status = frames(c, pid_tgid, out);
        // A full map (more threads closing at once than it holds) evicts
        // the oldest: that close shows no interpreter frames.
        let _ = INTERP_STASH.insert(&tid, &*out, 0);
    }
}

/// At the exit of close(2)/shutdown(2): the stash has served (a later close
/// by this thread that is no syscall must not show these frames).
#[inline(always)]
pub fn unstash() {
    let pid_tgid = bpf_get_current_pid_tgid();
    if INTERP_PROCS.get_ptr((pid_tgid >> 32) as u32).is_some() {
        let _ = INTERP_STASH.remove(&(pid_tgid as u32));
    }
}

/// Fills `*out` (in a reserved ring entry: every field is written) from the
/// closing thread's stash, or with no frames (status NONE).
///
/// # Safety
/// `out` points to writable memory of an `InterpStack`.
#[inline(always)]
pub unsafe fn take(out: *mut InterpStack) {
    let tid = bpf_get_current_pid_tgid() as u32;
    if let Some(src) = INTERP_STASH.get_ptr(&tid) {
        // One helper call, whatever the size: a verifier-cheap copy.
        let copied = unsafe {
            KPtr::of(src).copy_to(out.cast(), core::mem::size_of::<InterpStack>() as u32)
        };
        if copied == 0 {
            return;
        }
    }
    unsafe {
        (*out).status = interp::NONE;
        (*out).count = 0;
        (*out).entry_mask = 0;
        (*out)._pad = 0;
    }
}

#[inline(always)]
unsafe fn frames(c: &InterpConfig, pid_tgid: u64, out: *mut InterpStack) -> u32 {
    let frame = if c.threads_head == ABSENT {
        // One interpreter state per process, at a fixed place (PHP
        // non-ZTS: `executor_globals.current_execute_data`).
        user_word(UPtr::new(c.runtime).add(c.frame_ptr_current)).ok_or(interp::READ_FAILED)
    } else {
        innermost_python_frame(c, pid_tgid)
    };
    match frame {
        Ok(f) => unsafe { walk_frames(c, f, out) },
        Err(status) => status,
    }
}

/// The closing thread's innermost frame, through the interpreter's list of
/// thread states, each naming its OS thread (3.10: its `pthread_t`, known
/// for the main thread only).
#[inline(always)]
fn innermost_python_frame(c: &InterpConfig, pid_tgid: u64) -> Result<UPtr, u32> {
    let tid = pid_tgid as u32;
    let want = if c.main_thread == ABSENT {
        tid as u64
    } else if tid == (pid_tgid >> 32) as u32 {
        UPtr::new(c.runtime)
            .add(c.main_thread)
            .read::<u64>()
            .map_err(|_| interp::READ_FAILED)?
    } else {
        return Err(interp::NO_THREAD);
    };
    let is = user_word(UPtr::new(c.runtime).add(c.interp_head)).ok_or(interp::READ_FAILED)?;
    let mut ts = user_word(is.add(c.threads_head)).ok_or(interp::READ_FAILED)?;
    let mut found = UPtr::NULL;
    for _ in 0..INTERP_THREADS {
        if ts.is_null() {
            break;
        }
        // `unsigned long` in every version.
        let t = ts
            .add(c.tstate_tid)
            .read::<u64>()
            .map_err(|_| interp::READ_FAILED)?;
        if t == want {
            found = ts;
            break;
        }
        ts = user_word(ts.add(c.tstate_next)).ok_or(interp::READ_FAILED)?;
    }
    if found.is_null() {
        return Err(interp::NO_THREAD);
    }
    let fp = user_word(found.add(c.tstate_frame_ptr)).ok_or(interp::READ_FAILED)?;
    if c.frame_ptr_current == ABSENT {
        // The thread state points at the frame itself (3.10, 3.13); no
        // frame yet is an empty chain.
        return Ok(fp);
    }
    user_word(fp.add(c.frame_ptr_current)).ok_or(interp::READ_FAILED)
}

/// Copies the chain from `frame` out; returns the walk's status.
#[inline(always)]
unsafe fn walk_frames(c: &InterpConfig, mut frame: UPtr, out: *mut InterpStack) -> u32 {
    let Some(w) = INTERP_WINDOW.get_ptr_mut(0) else {
        return interp::NONE;
    };
    let (code_i, prev_i, instr_i) = (
        (c.code >> 3) & 15,
        (c.previous >> 3) & 15,
        (c.instr >> 3) & 15,
    );
    let has_entry = c.entry != ABSENT;
    let (entry_i, entry_shift) = ((c.entry >> 3) & 15, (c.entry & 7) * 8);
    let entry_value = c.entry_value & 0xff;
    let first = frame;
    let mut mask = 0u32;
    let mut n = 0u32;
    let mut status = interp::TRUNCATED;
    for i in 0..INTERP_FRAMES {
        if frame.is_null() {
            status = interp::OK;
            break;
        }
        // The length is loaded and masked here, next to the call: a value
        // kept across iterations may be spilled, and 5.10's verifier then
        // forgets its bound.
        let len = unsafe { core::ptr::read_volatile(&c.window_len) } & INTERP_WINDOW_MAX;
        // SAFETY: a map value of 128 bytes, this CPU's; `len` < 128.
        let read = unsafe { frame.add(c.frame_window).copy_to(w.cast(), len as u32) };
        if read != 0 {
            status = interp::READ_FAILED;
            break;
        }
        let slot = InterpFrame {
            code: pick(w, code_i),
            instr: pick(w, instr_i),
        };
        unsafe {
            if let Some(f) = (*out).frames.get_mut(i) {
                *f = slot;
            }
        }
        if has_entry && (pick(w, entry_i) >> entry_shift) & 0xff == entry_value {
            mask |= 1 << i;
        }
        n = i as u32 + 1;
        let prev = UPtr::new(pick(w, prev_i));
        if prev == frame || prev == first {
            status = interp::LOOP;
            break;
        }
        frame = prev;
    }
    unsafe {
        (*out).count = n;
        (*out).entry_mask = mask;
    }
    status
}
