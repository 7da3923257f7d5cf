//! The uprobe helper: a small process, forked before the daemon drops its
//! privileges, that opens uprobe perf events for the daemon and nothing
//! else, so a TLS server that starts after wstrace can still be probed.
//!
//! Why a process: opening a uprobe perf event on a `/proc/<pid>/map_files/`
//! file needs CAP_SYS_ADMIN (measured on 6.18: CAP_PERFMON with CAP_BPF
//! gets EACCES), and the daemon, which parses files and bytes other
//! processes control, must not keep it. The helper keeps CAP_SYS_ADMIN
//! (plus the two capabilities the daemon keeps to look into another user's
//! /proc entries: `privileges::keep_uprobe_helper_only`), drops the rest and
//! its bounding set, sets no_new_privs, closes every fd but its end of a
//! SOCK_SEQPACKET socketpair, and serves one request shape on it:
//! ([`Request`]: pid, `/proc/<pid>/map_files/<range>` path, device and
//! inode, file offset, return probe or not) -> the perf event fd (passed
//! with SCM_RIGHTS), or why not. It never reads ELF or anything else a
//! traced process controls: symbol lookup stays in the daemon. It exits
//! when the daemon's end closes (or the daemon dies: PDEATHSIG).
//!
//! - `wire`: the request and reply on the socket, and the fd passing;
//! - `policy`: what may be opened ([`check_path`], [`check_file`], pure and
//!   unit-tested; [`open_file_checked`]): the file is opened once (O_PATH)
//!   and the probe is made on `/proc/self/fd/<n>`, so the file checked is
//!   the file probed, even if the process remaps that range in between;
//! - `client`: the daemon's [`Helper`] (fork, ask, reap);
//! - `server`: the helper's loop.
//!
//! The perf event itself (the uprobe PMU, perf_event_open scoped to the
//! pid) is `attach::uprobe`, handed to [`Helper::start`]: this module
//! imports no stage. The same checked open runs in the daemon itself at
//! start-up when no helper could be started (then nothing is opened after
//! the drop).
mod client;
mod policy;
mod server;
mod wire;

pub use client::Helper;
pub use policy::{OpenError, Refusal, open_file_checked, parse_maps_dev};
pub use wire::Request;

/// The helper's tests; `a_mapped_file` serves `attach::uprobe`'s too.
#[cfg(test)]
pub(crate) mod tests;
