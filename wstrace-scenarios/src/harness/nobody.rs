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

/// `program` as nobody, through the glibc loader of another release when
/// `libs` holds one (`ld-linux-x86-64.so.2`): that loader, that libc first,
/// this machine's libraries (zlib, expat ...) after. How the tests run a
/// newer distribution's unmodified binary on this machine's older glibc.
pub fn as_nobody_with_libc(program: &Path, libs: &Path) -> Command {
    let loader = libs.join("ld-linux-x86-64.so.2");
    if !loader.is_file() {
        return as_nobody(program);
    }
    let mut c = as_nobody(&loader);
    c.arg("--library-path")
        .arg(format!(
            "{}:/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu",
            libs.display()
        ))
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

/// A CPython of another release that `cargo xtask setup` extracted into
/// ~/.cache/wstrace/python/VERSION (xtask `pythons.rs`): the
/// distribution's unmodified interpreter binary and standard library, and,
/// where it needs a newer glibc than this machine's, that release's glibc,
/// whose own loader then starts it.
pub struct ExtractedPython {
    pub version: &'static str,
    root: PathBuf,
}

/// CPython `version` ("3.13") as extracted by `cargo xtask setup`, with
/// root and setpriv; see [`require`].
#[must_use]
pub fn require_extracted_python(version: &'static str) -> Option<ExtractedPython> {
    if !require_nobody_python() {
        return None;
    }
    let root = super::skip::cache_dir()?.join("python").join(version);
    super::require_file(
        &format!("CPython {version}"),
        &[root.join("COMPLETE")],
        "run `cargo xtask setup` (extracts Debian's and Ubuntu's CPython packages into ~/.cache/wstrace/python)",
    )?;
    Some(ExtractedPython { version, root })
}

impl ExtractedPython {
    /// `python SCRIPT ARGS…` as nobody from `dir`, like
    /// [`nobody_python_server`], run by a copy of the interpreter tree in
    /// `dir` ([`ExtractedPython::copy_into`]).
    pub fn nobody_server(
        &self,
        dir: &WorldReadableDir,
        name: &str,
        script: &str,
        args: &[&str],
    ) -> (Kill, u16) {
        let tree = self.copy_into(dir);
        self.nobody_server_from(&tree, dir, name, script, args)
    }

    /// Copies the interpreter tree into `dir` (nobody cannot read root's
    /// cache); returns the copy, whose `usr/bin/pythonVERSION` a test may
    /// replace before [`ExtractedPython::nobody_server_from`].
    pub fn copy_into(&self, dir: &WorldReadableDir) -> PathBuf {
        let tree = dir.path().join(format!("python{}", self.version));
        let copied = Command::new("cp")
            .arg("-a")
            .arg(&self.root)
            .arg(&tree)
            .status()
            .unwrap_or_else(|e| panic!("cp -a {}: {e}", self.root.display()));
        assert!(
            copied.success(),
            "cp -a {} {}",
            self.root.display(),
            tree.display()
        );
        tree
    }

    /// The interpreter binary in a copied `tree`.
    pub fn binary_in(&self, tree: &Path) -> PathBuf {
        tree.join(format!("usr/bin/python{}", self.version))
    }

    /// [`ExtractedPython::nobody_server`] with the copy `tree`; PYTHONHOME
    /// is its own standard library.
    pub fn nobody_server_from(
        &self,
        tree: &Path,
        dir: &WorldReadableDir,
        name: &str,
        script: &str,
        args: &[&str],
    ) -> (Kill, u16) {
        let path = dir.write(name, script);
        let python = self.binary_in(tree);
        let mut cmd = as_nobody_with_libc(&python, &tree.join("usr/lib/x86_64-linux-gnu"));
        cmd.arg(&path)
            .args(args)
            .env("PYTHONHOME", tree.join("usr"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .current_dir(dir.path());
        spawn_ready(&mut cmd)
    }
}
