//! The one test harness of wstrace's tests: the host integration tests
//! (`tests/*.rs`), wstrace's own tests (a dev-dependency) and `ws-scenario
//! check` in the kernel-matrix VMs start wstrace, gate on prerequisites and
//! make sockets through [`harness`], so there is one definition of each.
//!
//! The scenario program itself (`ws-scenario serve|check`) is the binary
//! target (`src/main.rs`): its functions keep the `ws_scenario::` names that
//! the stack assertions look for.
pub mod harness;
