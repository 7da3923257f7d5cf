//! The prerequisite gate, with one meaning everywhere: a test whose
//! environment is incomplete (not root, a tool missing) FAILS and says how
//! to provide it, so a suite run without its inputs cannot pass untested.
//! Only `WSTRACE_TEST_ALLOW_SKIP=1` (exactly "1"; for a developer's laptop,
//! never set by CI) turns that failure into a `SKIPPED: <test>: <why>` line
//! on stderr.
use std::{io::Write as _, path::PathBuf};

/// The variable that lets a test skip instead of failing (when it is "1").
pub const ALLOW_SKIP: &str = "WSTRACE_TEST_ALLOW_SKIP";

/// Whether [`ALLOW_SKIP`] is set to "1" (any other value, or unset: no).
pub fn skipping_allowed() -> bool {
    allows_skipping(std::env::var_os(ALLOW_SKIP).as_deref())
}

/// The one meaning of the variable's value: exactly "1" allows skipping.
fn allows_skipping(value: Option<&std::ffi::OsStr>) -> bool {
    value.is_some_and(|v| v == "1")
}

/// The running test's name (libtest names each test's thread after it).
fn test_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_string()
}

/// True when `ok`. Otherwise panics with `missing` (what is missing and how
/// to provide it), unless WSTRACE_TEST_ALLOW_SKIP=1: then prints
/// `SKIPPED: <test>: <missing>` and returns false, and the caller skips
/// what needs it (usually the whole test: `if !require(..) { return; }`).
#[must_use]
pub fn require(ok: bool, missing: &str) -> bool {
    if ok {
        return true;
    }
    let test = test_name();
    if skipping_allowed() {
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

fn is_root() -> bool {
    // SAFETY: plain getter.
    unsafe { libc::geteuid() == 0 }
}

/// Root, to load BPF (CAP_BPF/CAP_PERFMON); see [`require`].
#[must_use]
pub fn require_root() -> bool {
    require(
        is_root(),
        "needs root to load BPF (CAP_BPF/CAP_PERFMON): run `cargo xtask test` as root",
    )
}

/// Root for the reason `why` (what the test reads or does that needs it);
/// see [`require`].
#[must_use]
pub fn require_root_because(why: &str) -> bool {
    require(
        is_root(),
        &format!("needs root ({why}): run the tests as root"),
    )
}

/// The first of `paths` that is a file; see [`require`] for when there is
/// none (`what` names it, `how` says how to install it).
#[must_use]
pub fn require_file(what: &str, paths: &[PathBuf], how: &str) -> Option<PathBuf> {
    let found = paths.iter().find(|p| p.is_file()).cloned();
    let tried: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    let missing = format!("{what} missing (looked at {}): {how}", tried.join(", "));
    if require(found.is_some(), &missing) {
        found
    } else {
        None
    }
}

/// `name` from $PATH or an sbin directory (not on every user's PATH); see
/// [`require`] for when it is nowhere (`how` says how to install it).
#[must_use]
pub fn require_tool(name: &str, how: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    let missing = format!("{name} is not on $PATH or in /usr/local/sbin, /usr/sbin: {how}");
    if require(found.is_some(), &missing) {
        found
    } else {
        None
    }
}

/// ~/.cache/wstrace (or $XDG_CACHE_HOME/wstrace), where `cargo xtask
/// setup` puts the test dependencies; None without HOME or XDG_CACHE_HOME.
pub fn cache_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|d| d.join("wstrace"))
}

fn require_cache_dir() -> Option<PathBuf> {
    let dir = cache_dir();
    if require(
        dir.is_some(),
        "neither HOME nor XDG_CACHE_HOME is set: the test dependencies live in ~/.cache/wstrace",
    ) {
        dir
    } else {
        None
    }
}

/// The venv's python3 (with `websockets`); see [`require`].
#[must_use]
pub fn require_venv_python() -> Option<PathBuf> {
    require_file(
        "the test venv's python3",
        &[require_cache_dir()?.join("venv/bin/python3")],
        "run `cargo xtask setup` (creates the venv with websockets)",
    )
}

/// `node` and the `node_modules` directory holding the npm package `ws`
/// (for NODE_PATH); see [`require`].
#[must_use]
pub fn require_node_ws() -> Option<(PathBuf, PathBuf)> {
    let node = require_tool("node", "apt-get install nodejs (cargo xtask setup)")?;
    let modules = require_cache_dir()?.join("node/node_modules");
    require_file(
        "the npm package ws",
        &[modules.join("ws/package.json")],
        "run `cargo xtask setup` (installs ws with npm into ~/.cache/wstrace/node)",
    )?;
    Some((node, modules))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_met_prerequisite_passes_whatever_the_variable_says() {
        assert!(require(true, "unused"));
    }

    #[test]
    fn only_exactly_1_allows_skipping() {
        use std::ffi::OsStr;
        assert!(allows_skipping(Some(OsStr::new("1"))));
        for v in ["0", "", "yes", "true", " 1", "1 "] {
            assert!(!allows_skipping(Some(OsStr::new(v))), "{v:?}");
        }
        assert!(!allows_skipping(None));
    }
}
