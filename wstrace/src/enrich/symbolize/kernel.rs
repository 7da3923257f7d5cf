//! Kernel stacks, symbolized from `/proc/kallsyms` on the caller's thread,
//! less the tracer's own frames at the top.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::cache_insert;
use super::frames::{ResolvedFrame, lookup_addrs};
use super::kallsyms::Kallsyms;
use crate::model::{Frame, FrameKind};
/// kallsyms lists start addresses only, so a lookup names any address after
/// the last symbol of a region by that symbol, however far away. No kernel
/// function is anywhere near 1 MiB long: an offset this large means the address
/// lies in memory kallsyms does not describe (e.g. a BPF trampoline on an old
/// kernel), and naming a function there would mislead.
pub(super) const MAX_KERNEL_SYM_OFFSET: u64 = 1 << 20;

/// Kernel stacks, symbolized from `/proc/kallsyms` on the caller's thread.
pub(super) struct KernelSymbols {
    /// Where the symbols are read from (`/proc/kallsyms`; a file in tests).
    pub(super) kallsyms: PathBuf,
    /// Read once, on the first kernel stack (~120k symbols); empty when the
    /// file could not be read.
    pub(super) table: Option<Kallsyms>,
    /// Symbolized kernel stacks by their addresses. A server closes its
    /// sockets through a handful of code paths, so at thousands of closes a
    /// second nearly every stack is one seen before; lookups and formatting
    /// cost ~30 µs a stack, a hit well under 1 µs.
    pub(super) stacks: HashMap<Vec<u64>, Arc<[Frame]>>,
}

impl KernelSymbols {
    /// Kernel symbols come from `/proc/kallsyms` only, in wstrace's own
    /// compact table (`kallsyms`: 4.5 MiB where blazesym's source held
    /// 10 MiB). blazesym's kernel source would also look for
    /// `/boot/vmlinux-<release>` and `/usr/lib/debug/boot/vmlinux-<release>`
    /// and parse their DWARF: seconds of work and hundreds of MiB for a line
    /// number we do not print. kallsyms also covers modules and BPF programs.
    pub(super) fn new() -> Self {
        Self {
            kallsyms: PathBuf::from("/proc/kallsyms"),
            table: None,
            stacks: HashMap::new(),
        }
    }

    /// Kernel frames, innermost first, one per address (an unknown frame
    /// where nothing names it), less the tracer's own frames at the top.
    ///
    /// Everything is `[unknown]` when `/proc/kallsyms` shows no addresses
    /// (not root, or `kernel.kptr_restrict=2`). The module of a module symbol
    /// is not shown (kallsyms' `[module]` column is not kept).
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

    fn table(&mut self) -> &Kallsyms {
        let path = &self.kallsyms;
        self.table.get_or_insert_with(|| {
            // Unreadable: no names, every frame unknown (as before, when
            // blazesym failed); kallsyms is not retried.
            std::fs::File::open(path)
                .and_then(|f| Kallsyms::parse(std::io::BufReader::new(f)))
                .unwrap_or_default()
        })
    }

    fn symbolize_kernel(&mut self, addrs: &[u64]) -> Vec<Frame> {
        let lookups = lookup_addrs(addrs);
        let table = self.table();
        addrs
            .iter()
            .zip(&lookups)
            .map(|(&addr, &lookup)| {
                let found = table.find(lookup).map(|(name, offset)| ResolvedFrame {
                    name: name.to_string(),
                    // The offset of the captured address, not the looked-up one.
                    offset: offset + (addr - lookup),
                    loc: None,
                    inlined: Vec::new(),
                    module: None,
                });
                kernel_frame(addr, found.as_ref())
            })
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
