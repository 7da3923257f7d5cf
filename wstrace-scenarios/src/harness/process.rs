//! Children the tests start: killed with their process group when dropped,
//! so no failing assertion leaks one (nginx's workers, wstrace's uprobe
//! helper).
use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
};

/// A child killed, with its process group if it leads one, when dropped.
pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        // The child is not reaped yet, so its pid cannot name another
        // process group: if it does not lead a group, this is ESRCH.
        if let Ok(pid) = i32::try_from(self.0.id()) {
            // SAFETY: signalling our own child's process group.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `cmd` in its own process group (so [`Kill`] ends its children
/// too).
pub fn spawn_group(cmd: &mut Command) -> Kill {
    use std::os::unix::process::CommandExt as _;
    cmd.process_group(0);
    Kill(
        cmd.spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}")),
    )
}

/// Spawns a test server that prints `READY <port>` once listening.
pub fn spawn_ready(cmd: &mut Command) -> (Kill, u16) {
    let mut c = Kill(
        cmd.stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}")),
    );
    let port = read_ready(&mut c);
    (c, port)
}

/// `READY <port>` from a started server's piped stdout.
pub fn read_ready(c: &mut Kill) -> u16 {
    let out = c.0.stdout.take().expect("the server's stdout is piped");
    let mut line = String::new();
    let _ = BufReader::new(out).read_line(&mut line);
    line.trim()
        .strip_prefix("READY ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("server did not print READY <port>: {line:?}"))
}

/// Writes `bytes` as an executable (mode 0755) at `path`, safe to exec at
/// once from a multi-threaded test binary.
///
/// A file written here (`fs::write`) is briefly open for writing in this
/// process, and a test thread that forks at that moment hands the open fd
/// to its child until the child execs: an exec of the file then fails with
/// ETXTBSY ("Text file busy", seen in CI). So the bytes go to a sibling
/// file that is never executed, and `install` (its own process, which
/// nobody forks from) writes the executable and closes it before exiting.
pub fn write_executable(path: &std::path::Path, bytes: &[u8]) {
    let staged = path.with_extension("staged");
    std::fs::write(&staged, bytes).unwrap_or_else(|e| panic!("write {}: {e}", staged.display()));
    install_executable(&staged, path);
    let _ = std::fs::remove_file(&staged);
}

/// Copies `from` to `to` as an executable (mode 0755); see
/// [`write_executable`] for why through `install`.
pub fn install_executable(from: &std::path::Path, to: &std::path::Path) {
    let out = Command::new("install")
        .args(["-m", "0755"])
        .arg(from)
        .arg(to)
        .output()
        .unwrap_or_else(|e| panic!("run install (coreutils): {e}"));
    assert!(
        out.status.success(),
        "install -m 0755 {} {}: {}",
        from.display(),
        to.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}
