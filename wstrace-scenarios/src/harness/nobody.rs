//! Attackers: processes run as `nobody:nogroup` with no supplementary
//! groups, by Debian's /usr/bin/python3 (pyenv's shim lives under /root,
//! which nobody cannot read), from a world-readable directory.
use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use super::{Kill, require, require_root, spawn_ready};

/// The system python, readable by `nobody`.
pub const PYTHON: &str = "/usr/bin/python3";
const SETPRIV: &str = "/usr/bin/setpriv";

/// Root, setpriv and the system python3; see [`require`](super::require).
#[must_use]
pub fn require_nobody_python() -> bool {
    require_root()
        && require(
            Path::new(SETPRIV).is_file(),
            "needs /usr/bin/setpriv (apt-get install util-linux)",
        )
        && require(
            Path::new(PYTHON).is_file(),
            "needs /usr/bin/python3 (apt-get install python3)",
        )
}

/// A fresh directory everyone can read (0755), removed when dropped.
pub struct WorldReadableDir(PathBuf);

impl WorldReadableDir {
    pub fn new(name: &str) -> WorldReadableDir {
        let d = std::env::temp_dir().join(format!("wstrace-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", d.display()));
        WorldReadableDir(d)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `text` to `name` in the directory, world-readable (0644).
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
        p
    }
}

impl Drop for WorldReadableDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `program` run as nobody:nogroup with no supplementary groups.
pub fn as_nobody(program: &Path) -> Command {
    let mut c = Command::new(SETPRIV);
    c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .arg(program);
    c
}

/// `PYTHON SCRIPT ARGS…` as nobody (`python`: the system python3 or a
/// copy of it the attacker placed), with the system's standard library.
pub fn nobody_python(python: &Path, script: &Path, args: &[&str]) -> Command {
    let mut cmd = as_nobody(python);
    cmd.arg(script).args(args).env("PYTHONHOME", "/usr");
    cmd
}

/// `python3 SCRIPT ARGS…` as nobody from `dir` (the script written there
/// as `name`), a server that prints `READY <port>`: (server, port).
pub fn nobody_python_server(
    dir: &WorldReadableDir,
    name: &str,
    script: &str,
    args: &[&str],
) -> (Kill, u16) {
    let path = dir.write(name, script);
    spawn_ready(nobody_python(Path::new(PYTHON), &path, args).current_dir(dir.path()))
}
