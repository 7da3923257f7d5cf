//! What unit tests that read the running system need from it: `require`
//! fails the test when something is missing, so a suite run without its
//! inputs cannot pass untested. WSTRACE_TEST_ALLOW_SKIP=1 turns that
//! failure into a `SKIPPED` line on stderr (for a developer's laptop; CI
//! never sets it).

use std::io::Write as _;

/// The variable that lets a test skip instead of failing.
pub const ALLOW_SKIP: &str = "WSTRACE_TEST_ALLOW_SKIP";

/// True when `ok`. Otherwise panics with `missing` (what is missing and how
/// to provide it), unless WSTRACE_TEST_ALLOW_SKIP=1: then prints
/// `SKIPPED: <test>: <missing>` and returns false, and the caller returns
/// (`if !require(..) { return; }`).
#[must_use]
pub fn require(ok: bool, missing: &str) -> bool {
    if ok {
        return true;
    }
    // libtest names each test's thread after the test.
    let current = std::thread::current();
    let test = current.name().unwrap_or("this test");
    if std::env::var_os(ALLOW_SKIP).is_some_and(|v| v == "1") {
        // Straight to stderr (libtest captures eprintln! of passing tests),
        // in one write so parallel tests do not interleave.
        let line = format!("SKIPPED: {test}: {missing}\n");
        let _ = std::io::stderr().write_all(line.as_bytes());
        return false;
    }
    panic!("{test}: {missing} (or set {ALLOW_SKIP}=1 to skip it instead of failing)");
}

/// The value in `r`, or (see [`require`]) a failure naming `what` and the
/// error, which should say how to provide it.
#[must_use]
pub fn require_ok<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            let _ = require(false, &format!("{what}: {e:#}"));
            None
        }
    }
}

/// Root; see [`require`]. `why` says what the test reads that needs it.
#[must_use]
pub fn require_root(why: &str) -> bool {
    // SAFETY: plain getter.
    let root = unsafe { libc::geteuid() } == 0;
    require(root, &format!("needs root ({why}): run the tests as root"))
}
