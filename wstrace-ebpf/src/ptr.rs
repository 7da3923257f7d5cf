//! User and kernel addresses as two types: [`UPtr`] is read only with
//! `bpf_probe_read_user`, [`KPtr`] only with `bpf_probe_read_kernel`, so a
//! buffer a syscall was handed cannot reach a kernel read, nor a `struct
//! sock *` a user read. This file is the only one that calls the probe-read
//! helpers (`tests/module_graph.rs` in the wstrace crate checks it).
//!
//! Where an address comes from says its type, once: a syscall argument or a
//! uprobe register is a `UPtr`; a kernel function's or tracepoint's `struct
//! sock *`, the current task, a map value are `KPtr`s; a pointer read out of
//! memory is read as the type of what it points to (`msg_iter.ubuf` is a
//! `UPtr` inside kernel memory, `file->private_data` a `KPtr`).
//!
//! Both are `#[repr(transparent)]` over the `u64` a program is handed, and
//! every method is `#[inline(always)]`: the same loads and helper calls as
//! the bare numbers (the object's instruction counts are unchanged).
use aya_ebpf::helpers::{
    bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_user, bpf_probe_read_user_buf,
    generated,
};
use core::ffi::c_void;
use wstrace_common::ABSENT;

/// An address in the current task's user memory.
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct UPtr(u64);

impl UPtr {
    pub const NULL: Self = Self(0);

    /// `addr`, which the caller knows to be a user address (a syscall's
    /// argument, a uprobe's register, an address a user process told the
    /// daemon).
    #[inline(always)]
    pub const fn new(addr: u64) -> Self {
        Self(addr)
    }

    /// The address as a number: for events and arithmetic, never to read.
    #[inline(always)]
    pub const fn addr(self) -> u64 {
        self.0
    }

    #[inline(always)]
    pub const fn is_null(self) -> bool {
        self.0 == 0
    }

    /// `off` bytes further (wrapping: a traced process's pointer may be
    /// anything; the read then fails, the program does not).
    #[inline(always)]
    pub const fn add(self, off: u64) -> Self {
        Self(self.0.wrapping_add(off))
    }

    /// `*(T *)self` in user memory.
    #[inline(always)]
    pub fn read<T>(self) -> Result<T, i32> {
        // SAFETY: the helper checks the address; it fails, not faults.
        unsafe { bpf_probe_read_user(self.0 as *const T) }
    }

    /// Fills `dst` from user memory at `self`.
    #[inline(always)]
    pub fn read_buf(self, dst: &mut [u8]) -> Result<(), i32> {
        // SAFETY: as `read`; `dst` is a live slice.
        unsafe { bpf_probe_read_user_buf(self.0 as *const u8, dst) }
    }

    /// Copies `len` bytes of user memory at `self` to `dst` (zeroed by the
    /// helper on failure); 0 or a negative errno.
    ///
    /// # Safety
    /// `dst` is valid for `len` bytes of writes.
    #[inline(always)]
    pub unsafe fn copy_to(self, dst: *mut c_void, len: u32) -> i64 {
        unsafe { generated::bpf_probe_read_user(dst, len, self.0 as *const c_void) }
    }
}

/// An address in kernel memory.
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KPtr(u64);

impl KPtr {
    pub const NULL: Self = Self(0);

    /// `addr`, which the caller knows to be a kernel address (an argument
    /// the hooked function's or tracepoint's prototype says is one).
    #[inline(always)]
    pub const fn new(addr: u64) -> Self {
        Self(addr)
    }

    /// The current task's `struct task_struct *`.
    #[inline(always)]
    pub fn current_task() -> Self {
        // SAFETY: a helper without arguments.
        Self(unsafe { bpf_get_current_task() })
    }

    /// Memory the program holds a pointer to (a map value).
    #[inline(always)]
    pub fn of<T>(p: *const T) -> Self {
        Self(p as u64)
    }

    /// The address as a number: a map key, an event's socket id (the
    /// daemon never dereferences it), never to read.
    #[inline(always)]
    pub const fn addr(self) -> u64 {
        self.0
    }

    #[inline(always)]
    pub const fn is_null(self) -> bool {
        self.0 == 0
    }

    /// `off` bytes further.
    #[inline(always)]
    pub const fn add(self, off: u64) -> Self {
        Self(self.0.wrapping_add(off))
    }

    /// `*(T *)self` in kernel memory, unchecked (the helper fails on a bad
    /// address).
    #[inline(always)]
    pub fn read<T>(self) -> Result<T, i32> {
        // SAFETY: the helper checks the address; it fails, not faults.
        unsafe { bpf_probe_read_kernel(self.0 as *const T) }
    }

    /// `*(T *)(self + off)`: a field at an offset the daemon resolved from
    /// BTF. Fails for a NULL base or a field this kernel lacks (`ABSENT`).
    ///
    /// The error is widened to `i64` for its layout, not its value: LLVM
    /// packs a `Result<u16, i32>` into one register, with shifts and masks
    /// at every port read (4% more instructions in all), a
    /// `Result<u16, i64>` not.
    #[inline(always)]
    pub fn field<T>(self, off: u64) -> Result<T, i64> {
        if self.0 == 0 || off == ABSENT {
            return Err(-1);
        }
        self.add(off).read().map_err(|e| e as i64)
    }

    /// Copies `len` bytes of the field at `self + off` to `dst`; leaves
    /// `dst` as it was for a NULL base or an absent field (and zeroes it,
    /// the helper's doing, when the read fails).
    ///
    /// # Safety
    /// `dst` is valid for `len` bytes of writes.
    #[inline(always)]
    pub unsafe fn copy_field_to(self, off: u64, dst: *mut u8, len: u32) {
        if self.0 == 0 || off == ABSENT {
            return;
        }
        unsafe { self.add(off).copy_to(dst.cast(), len) };
    }

    /// Copies `len` bytes of kernel memory at `self` to `dst` (zeroed by
    /// the helper on failure); 0 or a negative errno.
    ///
    /// # Safety
    /// `dst` is valid for `len` bytes of writes.
    #[inline(always)]
    pub unsafe fn copy_to(self, dst: *mut c_void, len: u32) -> i64 {
        unsafe { generated::bpf_probe_read_kernel(dst, len, self.0 as *const c_void) }
    }
}

/// `struct iovec` (uapi): where an iovec lives (kernel copy, or a user
/// array) is its reader's pointer type; its base is always user memory.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Iovec {
    pub base: UPtr,
    pub len: u64,
}

impl Iovec {
    pub const EMPTY: Self = Self {
        base: UPtr::NULL,
        len: 0,
    };
}
