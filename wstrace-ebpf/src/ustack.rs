//! The user registers and stack bytes of a closing task, for unwinding with
//! `.eh_frame` in userspace (`--user-stack dwarf|auto`).
//!
//! `bpf_get_stack(BPF_F_USER_STACK)` follows frame pointers, which code
//! built without them does not maintain: the walk stops after a frame or
//! two. Unwinding needs `ip`, `sp`, `bp` at the syscall and the stack above
//! `sp`; the daemon does the rest offline (framehop).
//!
//! x86_64 only: the registers come from the `struct pt_regs` that syscall
//! entry saves at the top of the task's kernel stack (`task_pt_regs()`).
use aya_ebpf::helpers::{
    bpf_get_current_task, bpf_probe_read_kernel, generated::bpf_probe_read_user,
};
use wstrace_common::{USER_STACK_MAX, UserStackHeader, ustack};

use crate::kernel::{config, read};

/// x86_64 `struct pt_regs` (arch/x86/include/asm/ptrace.h): 21 slots of 8
/// bytes in the order syscall entry pushes them; the order is part of the
/// entry ABI and has not changed since the x86_64 port.
const PT_REGS_SIZE: u64 = 21 * 8;
const PT_BP: u64 = 4 * 8;
const PT_IP: u64 = 16 * 8;
const PT_CS: u64 = 17 * 8;
const PT_SP: u64 = 19 * 8;
const PT_SS: u64 = 20 * 8;
/// `__USER_CS` / `__USER_DS`: the selectors of a 64-bit user context. With
/// FRED (6.9+) the upper bits of both slots carry other fields: compare the
/// low 16 bits only.
const USER_CS: u64 = 0x33;
const USER_DS: u64 = 0x2b;

/// Where `task_pt_regs()` may be: top of the kernel stack (THREAD_SIZE 16 KiB,
/// 32 KiB with KASAN) minus TOP_OF_KERNEL_STACK_PADDING (0, or 16 bytes with
/// CONFIG_X86_FRED), minus the struct. The one whose CS and SS are the user
/// selectors is the real one; a wrong guess fails both compares.
const TOPS: [u64; 4] = [16384, 16384 - 16, 32768, 32768 - 16];

const PAGE: u64 = 4096;

#[inline(always)]
fn word(addr: u64) -> Option<u64> {
    unsafe { bpf_probe_read_kernel(addr as *const u64) }.ok()
}

/// `(ip, sp, bp)` of the current task's user context, if it has one.
#[inline(always)]
fn user_regs() -> Option<(u64, u64, u64)> {
    let task = unsafe { bpf_get_current_task() };
    let stack = read::<u64>(task, config!(task_stack)).ok()?;
    for top in TOPS {
        let regs = stack + top - PT_REGS_SIZE;
        let (Some(cs), Some(ss)) = (word(regs + PT_CS), word(regs + PT_SS)) else {
            continue;
        };
        if cs & 0xffff == USER_CS && ss & 0xffff == USER_DS {
            return Some((
                word(regs + PT_IP)?,
                word(regs + PT_SP)?,
                word(regs + PT_BP)?,
            ));
        }
    }
    None
}

/// Copies the current task's user registers and up to `user_stack_bytes` of
/// its stack (from `sp` up) into `*h` and `dst`. Returns the bytes copied.
///
/// A copy that runs past the top of the stack mapping fails as a whole, so
/// on failure it is retried ending at each page boundary below the asked
/// size, largest first: the copy then ends exactly at the top of the stack.
#[inline(always)]
pub unsafe fn capture(h: *mut UserStackHeader, dst: *mut [u8; USER_STACK_MAX]) -> u32 {
    let mut want = config!(user_stack_bytes);
    if want > USER_STACK_MAX as u64 {
        want = USER_STACK_MAX as u64;
    }
    let Some((ip, sp, bp)) = user_regs() else {
        unsafe {
            *h = UserStackHeader {
                status: ustack::NO_REGS,
                ..UserStackHeader::default()
            }
        };
        return 0;
    };
    let dst = dst.cast::<core::ffi::c_void>();
    let mut len: u64 = 0;
    if unsafe { bpf_probe_read_user(dst, want as u32, sp as *const _) } == 0 {
        len = want;
    } else {
        let first = PAGE - (sp & (PAGE - 1));
        let mut k = (USER_STACK_MAX as u64) / PAGE;
        while k > 0 {
            k -= 1;
            let n = first + k * PAGE;
            if n < want
                && n <= USER_STACK_MAX as u64
                && unsafe { bpf_probe_read_user(dst, n as u32, sp as *const _) } == 0
            {
                len = n;
                break;
            }
        }
    }
    unsafe {
        *h = UserStackHeader {
            ip,
            sp,
            bp,
            len: len as u32,
            status: if len == 0 && want > 0 {
                ustack::READ_FAILED
            } else {
                ustack::OK
            },
        };
    }
    len as u32
}
