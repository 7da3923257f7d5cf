//! The user registers and stack bytes of a closing task, for unwinding with
//! `.eh_frame` in userspace (`--user-stack dwarf|auto`).
//!
//! `bpf_get_stack(BPF_F_USER_STACK)` follows frame pointers, which code
//! built without them does not maintain: the walk stops after a frame or
//! two. Unwinding needs the program counter, stack and frame pointers (and
//! on arm64 the link register) at the syscall and the stack above `sp`; the
//! daemon does the rest offline (framehop).
//!
//! The registers come from the `struct pt_regs` that syscall entry saves at
//! the top of the task's kernel stack (`task_pt_regs()`), whose layout is
//! per architecture: x86_64 and arm64 are implemented (`bpf_target_arch`,
//! set by aya-build from the target the daemon is built for); on any other
//! the copy reports NO_REGS and the daemon shows the frame-pointer walk.
use aya_ebpf::helpers::generated::bpf_get_smp_processor_id;
use wstrace_common::{
    CloseEvent, FLAG_TASK_EXITING, STACK_COPIES_PER_SITE, STACK_DEPTH, SiteBudget, StackRecord,
    USER_STACK_MAX, UserStackHeader, stack_copy, ustack,
};

use crate::{
    kernel::config,
    maps::{SITE_BUDGETS, STACK_SCRATCH, STACK_SEQ, STACKS},
    ptr::{KPtr, UPtr},
};

const PAGE: u64 = 4096;

/// The registers the unwinder starts from.
struct UserRegs {
    ip: u64,
    sp: u64,
    fp: u64,
    lr: u64,
}

#[allow(dead_code)]
#[inline(always)]
fn word(addr: KPtr) -> Option<u64> {
    addr.read::<u64>().ok()
}

#[cfg(bpf_target_arch = "x86_64")]
mod arch {
    use super::*;

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

    /// The current task's user registers, if it has a user context.
    #[inline(always)]
    pub(super) fn user_regs() -> Option<UserRegs> {
        let stack = KPtr::current_task()
            .field::<KPtr>(config!(task_stack))
            .ok()?;
        for top in TOPS {
            let regs = stack.add(top - PT_REGS_SIZE);
            let (Some(cs), Some(ss)) = (word(regs.add(PT_CS)), word(regs.add(PT_SS))) else {
                continue;
            };
            if cs & 0xffff == USER_CS && ss & 0xffff == USER_DS {
                return Some(UserRegs {
                    ip: word(regs.add(PT_IP))?,
                    sp: word(regs.add(PT_SP))?,
                    fp: word(regs.add(PT_BP))?,
                    lr: 0,
                });
            }
        }
        None
    }
}

#[cfg(bpf_target_arch = "aarch64")]
mod arch {
    use super::*;
    use wstrace_common::ABSENT;

    /// arm64 `struct pt_regs` starts with the uapi `struct user_pt_regs`
    /// (arch/arm64/include/uapi/asm/ptrace.h: `regs[31]`, `sp`, `pc`,
    /// `pstate`), a user-visible ABI (ptrace, perf) that cannot change. What
    /// follows it did change (orig_addr_limit, sdei_ttbr1, pmr, the frame
    /// record), so the struct's size comes from the kernel's BTF.
    const PT_X29: u64 = 29 * 8;
    const PT_X30: u64 = 30 * 8;
    const PT_SP: u64 = 31 * 8;
    const PT_PC: u64 = 32 * 8;
    const PT_PSTATE: u64 = 33 * 8;
    /// `PSR_MODE_MASK | PSR_MODE32_BIT`: all zero is EL0t in AArch64 state,
    /// i.e. a 64-bit user context.
    const PSTATE_MODE: u64 = 0x1f;
    /// No user address is this high (52-bit VAs at most); kernel addresses
    /// and most stack garbage are.
    const USER_LIMIT: u64 = 1 << 52;

    /// `task_pt_regs()` is `task_stack_page + THREAD_SIZE - sizeof(pt_regs)`:
    /// THREAD_SIZE is 16 KiB (Debian's 4K-page kernels), 32 KiB with KASAN.
    /// A guess inside the real stack reads kernel stack words: the mode bits,
    /// user-range and alignment checks below reject them.
    const TOPS: [u64; 2] = [16384, 32768];

    #[inline(always)]
    fn user_addr(a: u64) -> bool {
        a >= PAGE && a < USER_LIMIT
    }

    /// The current task's user registers, if it has a user context.
    #[inline(always)]
    pub(super) fn user_regs() -> Option<UserRegs> {
        let size = config!(pt_regs_size);
        if size == ABSENT || size < PT_PSTATE + 8 || size > PAGE {
            return None;
        }
        let stack = KPtr::current_task()
            .field::<KPtr>(config!(task_stack))
            .ok()?;
        for top in TOPS {
            let regs = stack.add(top - size);
            let (Some(pstate), Some(pc), Some(sp)) = (
                word(regs.add(PT_PSTATE)),
                word(regs.add(PT_PC)),
                word(regs.add(PT_SP)),
            ) else {
                continue;
            };
            if pstate & PSTATE_MODE == 0
                && pstate >> 32 == 0
                && user_addr(pc)
                && pc & 3 == 0
                && user_addr(sp)
                && sp & 7 == 0
            {
                return Some(UserRegs {
                    ip: pc,
                    sp,
                    fp: word(regs.add(PT_X29))?,
                    lr: word(regs.add(PT_X30))?,
                });
            }
        }
        None
    }
}

#[cfg(not(any(bpf_target_arch = "x86_64", bpf_target_arch = "aarch64")))]
mod arch {
    use super::*;

    /// No saved-register layout known for this architecture.
    #[inline(always)]
    pub(super) fn user_regs() -> Option<UserRegs> {
        None
    }
}

/// Copies the current task's user registers and up to `user_stack_bytes` of
/// its stack (from [`ustack::BELOW_SP`] below `sp` up) into `*h` and `dst`.
/// Returns the bytes copied.
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
    let Some(UserRegs { ip, sp, fp, lr }) = arch::user_regs() else {
        unsafe {
            *h = UserStackHeader {
                status: ustack::NO_REGS,
                ..UserStackHeader::default()
            }
        };
        return 0;
    };
    let dst = dst.cast::<core::ffi::c_void>();
    // `user_regs` checked sp >= PAGE > BELOW_SP.
    let start = UPtr::new(sp - ustack::BELOW_SP);
    let mut len: u64 = 0;
    if unsafe { start.copy_to(dst, want as u32) } == 0 {
        len = want;
    } else {
        let first = PAGE - (start.addr() & (PAGE - 1));
        let mut k = (USER_STACK_MAX as u64) / PAGE;
        while k > 0 {
            k -= 1;
            let n = first + k * PAGE;
            if n < want
                && n <= USER_STACK_MAX as u64
                && unsafe { start.copy_to(dst, n as u32) } == 0
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
            fp,
            lr,
            start: start.addr(),
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

/// One second, the budget's window.
const WINDOW_NS: u64 = 1_000_000_000;

/// Frames of each stack that name a call site: deep enough in the kernel
/// to pass the tracing machinery and reach the close path (`__tcp_close`
/// and its caller), and in user space the syscall wrapper and its callers.
const SITE_KERNEL_FRAMES: usize = 12;
const SITE_USER_FRAMES: usize = 4;
const _: () = assert!(SITE_KERNEL_FRAMES <= STACK_DEPTH && SITE_USER_FRAMES <= STACK_DEPTH);

/// splitmix64's finaliser: cheap (two multiplies), and every input bit
/// moves every output bit, so near-equal addresses give unrelated keys.
#[inline(always)]
fn mix(mut h: u64) -> u64 {
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The call site of a filled close: its process and the top frames of both
/// frame-pointer stacks (only the frames `bpf_get_stack` wrote: ring memory
/// is not zeroed).
#[inline(always)]
unsafe fn site_of(ev: *const CloseEvent) -> u64 {
    unsafe {
        let mut h = mix((*ev).header.pid as u64 ^ 0x9e37_79b9_7f4a_7c15);
        let klen = (*ev).kernel_stack_len;
        for i in 0..SITE_KERNEL_FRAMES {
            if (i as i64) * 8 < klen {
                h = mix(h ^ (*ev).kernel_stack[i]);
            }
        }
        let ulen = (*ev).user_stack_len;
        for i in 0..SITE_USER_FRAMES {
            if (i as i64) * 8 < ulen {
                h = mix(h ^ (*ev).user_stack[i]);
            }
        }
        h
    }
}

/// A fresh id for a stack copy: this CPU's count tagged with the CPU, so
/// ids are unique without a shared counter; never 0.
#[inline(always)]
fn next_id() -> u64 {
    let cpu = unsafe { bpf_get_smp_processor_id() } as u64;
    let n = match STACK_SEQ.get_ptr_mut(0) {
        Some(p) => unsafe {
            *p += 1;
            *p
        },
        None => 0,
    };
    ((cpu + 1) << 48) | (n & ((1 << 48) - 1))
}

/// Copies the current task's user stack into this CPU's scratch slot and
/// sends it, cut to the bytes copied, on `STACKS`. False when it could not
/// be sent (the ring is full).
#[inline(always)]
fn send_copy(id: u64) -> bool {
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(rec) = STACK_SCRATCH.get_ptr_mut(cpu) else {
        return false;
    };
    let mut len = unsafe {
        (*rec).id = id;
        capture(&raw mut (*rec).regs, &raw mut (*rec).bytes)
    } as usize;
    // Bounded again where the verifier checks the output size.
    if len > USER_STACK_MAX {
        len = USER_STACK_MAX;
    }
    let total = size_of::<u64>() + size_of::<UserStackHeader>() + len;
    let bytes = unsafe { core::slice::from_raw_parts(rec.cast::<u8>(), total) };
    STACKS.output::<[u8]>(bytes, 0).is_ok()
}

const _: () = assert!(core::mem::offset_of!(StackRecord, regs) == size_of::<u64>());

/// Decides the user stack copy of the close at `ev` (filled but not yet
/// submitted) and sets its `stack_copy`, `stack_id` and `elided_rate`.
///
/// Each call site may send [`STACK_COPIES_PER_SITE`] copies a second; past
/// that its closes name the site's last copy instead: at 20,000 closes a
/// second from one server loop this sends 8 copies (128 KiB/s) instead of
/// 20,000 (330 MB/s), and the close events, on their own ring, are never
/// crowded out by copies.
#[inline(always)]
pub unsafe fn copy_for_close(ev: *mut CloseEvent) {
    unsafe {
        (*ev).stack_copy = stack_copy::NONE;
        (*ev).elided_rate = 0;
        (*ev).stack_id = 0;
        // No copy asked for, or no user address space left to copy from.
        if config!(user_stack_bytes) == 0 || (*ev).header.flags & FLAG_TASK_EXITING != 0 {
            return;
        }
        let now = (*ev).header.ts_ns;
        let key = site_of(ev);
        let mut budget = SITE_BUDGETS.get_ptr_mut(&key);
        if budget.is_none() {
            let fresh = SiteBudget {
                window_start_ns: now,
                ..SiteBudget::default()
            };
            let _ = SITE_BUDGETS.insert(&key, &fresh, 0);
            budget = SITE_BUDGETS.get_ptr_mut(&key);
        }
        // Without a budget entry (the map refused one) the copy is made:
        // detail is only given up for a site known to be busy.
        if let Some(b) = budget {
            let age = now.wrapping_sub((*b).window_start_ns);
            if age >= WINDOW_NS {
                // After an idle second or more the last rate is stale.
                (*b).prev_elided = if age < 2 * WINDOW_NS { (*b).elided } else { 0 };
                (*b).window_start_ns = now;
                (*b).copies = 0;
                (*b).elided = 0;
            }
            if (*b).copies >= STACK_COPIES_PER_SITE {
                (*b).elided += 1;
                let (elided, prev) = ((*b).elided, (*b).prev_elided);
                (*ev).elided_rate = if prev > elided { prev } else { elided };
                let last = (*b).last_id;
                (*ev).stack_id = last;
                (*ev).stack_copy = if last != 0 {
                    stack_copy::SAME_AS
                } else {
                    stack_copy::ELIDED
                };
                return;
            }
            (*b).copies += 1;
        }
        let id = next_id();
        if send_copy(id) {
            (*ev).stack_copy = stack_copy::COPIED;
            (*ev).stack_id = id;
            if let Some(b) = budget {
                (*b).last_id = id;
            }
        } else {
            (*ev).stack_copy = stack_copy::DROPPED;
        }
    }
}
