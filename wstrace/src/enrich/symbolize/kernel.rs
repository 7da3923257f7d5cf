//! Kernel stacks, symbolized from `/proc/kallsyms` on the caller's thread,
//! less the tracer's own frames at the top.

use std::collections::HashMap;
use std::sync::Arc;

use blazesym::MaybeDefault;
use blazesym::symbolize::Input;
use blazesym::symbolize::source::{Kernel, Source};

use super::cache_insert;
use super::frames::{Lookup, ResolvedFrame, classify, lookup_addrs};
use crate::model::{Frame, FrameKind};
/// kallsyms lists start addresses only, so blazesym names any address after
/// the last symbol of a region by that symbol, however far away. No kernel
/// function is anywhere near 1 MiB long: an offset this large means the address
/// lies in memory kallsyms does not describe (e.g. a BPF trampoline on an old
/// kernel), and naming a function there would mislead.
pub(super) const MAX_KERNEL_SYM_OFFSET: u64 = 1 << 20;

/// Kernel stacks, symbolized from `/proc/kallsyms` on the caller's thread.
pub(super) struct KernelSymbols {
    pub(super) inner: blazesym::symbolize::Symbolizer,
    pub(super) kernel: Source<'static>,
    /// Symbolized kernel stacks by their addresses. A server closes its
    /// sockets through a handful of code paths, so at thousands of closes a
    /// second nearly every stack is one seen before; blazesym lookups,
    /// demangling and formatting cost ~30 µs a stack, a hit well under 1 µs.
    pub(super) stacks: HashMap<Vec<u64>, Arc<[Frame]>>,
}

impl KernelSymbols {
    /// Kernel symbols come from `/proc/kallsyms` only. blazesym's default
    /// kernel source also looks for `/boot/vmlinux-<release>` and
    /// `/usr/lib/debug/boot/vmlinux-<release>` and, when one exists, parses
    /// its DWARF, derives the KASLR offset, and decompresses `.ko.{xz,zst,gz}`
    /// modules to temporary files: seconds of work and hundreds of MiB for
    /// a line number we do not print. kallsyms also covers modules and BPF
    /// programs. It is read once, on the first kernel stack (~120k symbols).
    pub(super) fn new() -> Self {
        let kernel = Kernel {
            kallsyms: MaybeDefault::Default,
            vmlinux: MaybeDefault::None,
            kaslr_offset: None,
            debug_syms: false,
            ..Kernel::default()
        };
        Self {
            // Defaults: code info, inlined functions and demangling on, files
            // re-read when they change on disk (pinned ones excepted).
            inner: blazesym::symbolize::Symbolizer::new(),
            kernel: Source::Kernel(kernel),
            stacks: HashMap::new(),
        }
    }

    /// Kernel frames, innermost first, one per address (an unknown frame
    /// where nothing names it), less the tracer's own frames at the top.
    ///
    /// Everything is `[unknown]` when `/proc/kallsyms` shows no addresses
    /// (not root, or `kernel.kptr_restrict=2`). The module of a module symbol
    /// is not shown: blazesym drops kallsyms' `[module]` column.
    ///
    /// Symbolized once per distinct stack and handed out shared: under
    /// churn every close has the same kernel stack, and a copy per report
    /// (a dozen frames of strings) was an allocation storm; the JSON
    /// printer also renders one `Arc` once.
    pub(super) fn kernel_stack(&mut self, addrs: &[u64]) -> Arc<[Frame]> {
        if addrs.is_empty() {
            return Arc::default();
        }
        if let Some(frames) = self.stacks.get(addrs) {
            return frames.clone();
        }
        let mut frames = self.symbolize_kernel(addrs);
        drop_tracer_frames(&mut frames);
        let frames: Arc<[Frame]> = frames.into();
        cache_insert(&mut self.stacks, addrs.to_vec(), frames.clone());
        frames
    }

    fn symbolize_kernel(&mut self, addrs: &[u64]) -> Vec<Frame> {
        let lookups = lookup_addrs(addrs);
        let resolved: Vec<Option<ResolvedFrame>> =
            match self.inner.symbolize(&self.kernel, Input::AbsAddr(&lookups)) {
                Ok(syms) if syms.len() == addrs.len() => syms
                    .into_iter()
                    .zip(addrs.iter().zip(&lookups))
                    .map(
                        |(sym, (&addr, &lookup))| match classify(sym, addr - lookup) {
                            Lookup::Found(frame) => Some(frame),
                            Lookup::Unmapped | Lookup::Unknown => None,
                        },
                    )
                    .collect(),
                // No kallsyms at all, or blazesym broke its contract: say unknown, keep every frame.
                _ => vec![None; addrs.len()],
            };
        addrs
            .iter()
            .zip(&resolved)
            .map(|(&addr, frame)| kernel_frame(addr, frame.as_ref()))
            .collect()
    }
}

/// One kernel frame; unknown when unresolved or implausibly far from the
/// symbol (see [`MAX_KERNEL_SYM_OFFSET`]).
pub(super) fn kernel_frame(addr: u64, frame: Option<&ResolvedFrame>) -> Frame {
    match frame {
        Some(f) if !f.name.is_empty() && f.offset < MAX_KERNEL_SYM_OFFSET => Frame {
            function: Some(f.name.clone()),
            offset: Some(f.offset),
            file: f.loc.as_ref().map(|l| l.file.clone()),
            line: f.loc.as_ref().and_then(|l| l.line),
            kind: FrameKind::Kernel,
            address: Some(addr),
            ..Frame::default()
        },
        _ => Frame::unknown(FrameKind::Kernel, addr, None),
    }
}

/// Is this kernel frame the tracer's own (see
/// [`wstrace_common::TRACER_FRAME_PREFIXES`])?
fn is_tracer_frame(f: &Frame) -> bool {
    f.function
        .as_deref()
        .is_some_and(wstrace_common::is_tracer_function)
}

/// Drops the tracer's frames at the top of a kernel stack, so that it
/// starts where the traced kernel code was (`inet_sk_state_store`,
/// `tcp_close` ...): every probe set shows the same stack. Unknown frames
/// among them go too (a trampoline or JITed program on a kernel whose
/// kallsyms does not list it), but only up to the last named tracer frame:
/// an unknown frame after it may be the kernel's own. Frames further down
/// are never touched.
pub(super) fn drop_tracer_frames(frames: &mut Vec<Frame>) {
    let mut cut = 0;
    for (i, f) in frames.iter().enumerate() {
        if is_tracer_frame(f) {
            cut = i + 1;
        } else if f.function.is_some() {
            break;
        }
    }
    // A stack made only of tracer frames would say nothing: keep it whole.
    if cut < frames.len() {
        frames.drain(..cut);
    }
}
