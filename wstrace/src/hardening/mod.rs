//! Holding less: what every stage may use to run with the fewest
//! privileges, and nothing of any stage (imports point into here only).
//!
//! - `privileges`: the capability checks up front, the drop after attach,
//!   and the per-thread drops of helper threads;
//! - `uprobe`: the uprobe helper process, the one holder of CAP_SYS_ADMIN
//!   after the drop (wire, policy, client, server).
//!
//! On rustix where it has the call (capabilities, prctl, sockets and fd
//! passing, files); raw libc only for fork, _exit and close_range.
pub mod privileges;
pub mod uprobe;
