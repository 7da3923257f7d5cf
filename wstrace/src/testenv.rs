//! What unit tests that read the running system need from it: the one
//! prerequisite gate of all wstrace tests, defined in the test harness
//! (`wstrace_scenarios::harness::skip`, a dev-dependency) and re-exported
//! here for `crate::testenv::require*`. A missing prerequisite fails the
//! test; WSTRACE_TEST_ALLOW_SKIP=1 turns that failure into a `SKIPPED` line
//! on stderr (for a developer's laptop; CI never sets it).

pub use wstrace_scenarios::harness::skip::{require, require_ok};

/// Root; see [`require`]. `why` says what the test reads that needs it.
#[must_use]
pub fn require_root(why: &str) -> bool {
    wstrace_scenarios::harness::skip::require_root_because(why)
}
