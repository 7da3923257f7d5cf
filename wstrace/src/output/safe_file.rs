//! Opening the files wstrace writes as root (`--output`, `report --html`)
//! so that no other user can redirect or read them.
//!
//! - The directory is opened once and checked: if other users can write to
//!   it without the sticky bit, any of them could replace the file with a
//!   link between our checks and our writes, so it is refused.
//! - Every open, create and rename is relative to that directory's fd, so a
//!   directory path swapped later changes nothing.
//! - The file itself is opened with O_NOFOLLOW (a symlink is refused, not
//!   followed) and O_NONBLOCK (a FIFO cannot hang the start), then checked
//!   with fstat: a regular file with one link, owned by the daemon's user;
//!   its mode is set to 0640.
//! - A file that does not exist yet is created with O_EXCL: whatever
//!   appears under the name in the meantime is never opened.
use std::{
    ffi::{OsStr, OsString},
    fs::File,
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{Result, anyhow, bail};
use rustix::{
    fs::{FileType, Mode, OFlags},
    io::Errno,
};

use crate::output::escape::text as esc;

/// The mode of every file wstrace writes: the owner writes, its group reads.
pub const FILE_MODE: u32 = 0o640;

/// The directory a written file lives in, opened and checked once.
pub struct Dir {
    fd: OwnedFd,
    /// The path as given, for messages only.
    path: PathBuf,
}

/// `path` split into its checked directory and its last component.
pub fn dir_of(path: &Path) -> Result<(Dir, OsString)> {
    let shown = esc(&path.to_string_lossy()).into_owned();
    let name = match path.file_name() {
        Some(n) if !path.as_os_str().as_encoded_bytes().ends_with(b"/") => n.to_os_string(),
        _ => bail!("{shown} does not name a file (it ends in `/` or `..`): give a file name"),
    };
    let dir_path = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let dir_shown = esc(&dir_path.to_string_lossy()).into_owned();
    let fd = rustix::fs::open(
        &dir_path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| {
        anyhow!(
            "{shown}: cannot open its directory {dir_shown}: {}: create the directory first",
            std::io::Error::from(e)
        )
    })?;
    let st = rustix::fs::fstat(&fd).map_err(|e| {
        anyhow!(
            "{shown}: cannot stat {dir_shown}: {}",
            std::io::Error::from(e)
        )
    })?;
    let mode = st.st_mode & 0o7777;
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        bail!(
            "{shown}: the directory {dir_shown} is writable by other users (mode {mode:04o}) and not sticky: \
             any of them could swap the file for a link to another file; \
             write to a directory only root can write to (e.g. /var/log/wstrace), or `chmod o-w,g-w` it"
        );
    }
    Ok((Dir { fd, path: dir_path }, name))
}

impl Dir {
    fn shown(&self, name: &OsStr) -> String {
        esc(&self.path.join(name).to_string_lossy()).into_owned()
    }

    /// Opens `name` for writing: appending (`append`) or truncated, creating
    /// it (0640, O_EXCL) when it does not exist.
    pub fn open_write(&self, name: &OsStr, append: bool) -> Result<File> {
        let shown = self.shown(name);
        let base = OFlags::WRONLY
            | OFlags::NOFOLLOW
            | OFlags::NONBLOCK
            | OFlags::CLOEXEC
            | OFlags::NOCTTY
            | if append {
                OFlags::APPEND
            } else {
                OFlags::empty()
            };
        // Open what is there, or create it; a file appearing between the
        // two (EEXIST) is looked at again, never written blindly.
        for _ in 0..3 {
            match rustix::fs::openat(&self.fd, name, base, Mode::empty()) {
                Ok(fd) => {
                    let file = checked(fd, &shown)?;
                    if !append {
                        file.set_len(0)
                            .map_err(|e| anyhow!("{shown}: cannot truncate: {e}"))?;
                    }
                    return Ok(file);
                }
                Err(Errno::NOENT) => match self.create_new(name) {
                    Ok(file) => return Ok(file),
                    Err(CreateError::Exists) => continue,
                    Err(CreateError::Other(e)) => return Err(e),
                },
                Err(e) => return Err(open_error(e, &shown)),
            }
        }
        bail!(
            "{shown} keeps appearing and disappearing while it is opened: another process is racing for the name"
        )
    }

    /// Creates `name`, which must not exist (O_EXCL, O_NOFOLLOW), mode 0640,
    /// opened for appending.
    fn create_new(&self, name: &OsStr) -> Result<File, CreateError> {
        let shown = self.shown(name);
        let flags = OFlags::WRONLY
            | OFlags::APPEND
            | OFlags::CREATE
            | OFlags::EXCL
            | OFlags::NOFOLLOW
            | OFlags::CLOEXEC
            | OFlags::NOCTTY;
        let fd = match rustix::fs::openat(&self.fd, name, flags, Mode::from_raw_mode(FILE_MODE)) {
            Ok(fd) => fd,
            Err(Errno::EXIST) => return Err(CreateError::Exists),
            Err(e) => return Err(CreateError::Other(open_error(e, &shown))),
        };
        // The umask may have taken bits away; set exactly 0640.
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(FILE_MODE)).map_err(|e| {
            CreateError::Other(anyhow!(
                "{shown}: cannot chmod: {}",
                std::io::Error::from(e)
            ))
        })?;
        Ok(File::from(fd))
    }

    /// Creates a file for appending under a fresh name no other user can
    /// guess (`.NAME.<16 random hex digits>`, O_EXCL, 0640): the next log
    /// of a rotation exists before the old one leaves its name.
    pub fn create_fresh(&self, name: &OsStr) -> Result<(OsString, File)> {
        for _ in 0..8 {
            let mut fresh = OsString::from(".");
            fresh.push(name);
            fresh.push(format!(".{}", random_suffix()?));
            match self.create_new(&fresh) {
                Ok(f) => return Ok((fresh, f)),
                Err(CreateError::Exists) => continue,
                Err(CreateError::Other(e)) => return Err(e),
            }
        }
        bail!(
            "{}: 8 random names next to it all existed",
            self.shown(name)
        )
    }

    /// Swaps `a` and `b` in one step (renameat2 RENAME_EXCHANGE): neither
    /// name is ever vacant, so no other process can create either in
    /// between. When `b` does not exist, `a` takes its name only if it is
    /// still free (RENAME_NOREPLACE).
    pub fn exchange(&self, a: &OsStr, b: &OsStr) -> Result<()> {
        use rustix::fs::RenameFlags;
        let r = match rustix::fs::renameat_with(&self.fd, a, &self.fd, b, RenameFlags::EXCHANGE) {
            Err(Errno::NOENT) => {
                rustix::fs::renameat_with(&self.fd, a, &self.fd, b, RenameFlags::NOREPLACE)
            }
            r => r,
        };
        r.map_err(|e| {
            let why = match e {
                // Sticky directory, `b` owned by another user.
                Errno::PERM | Errno::ACCESS => {
                    ": the name belongs to another user (a sticky directory): write the log in a directory only root can write to"
                }
                Errno::EXIST => ": another process created the name",
                Errno::INVAL => ": the filesystem cannot exchange names atomically",
                _ => "",
            };
            anyhow!(
                "cannot swap {} and {}: {}{why}",
                self.shown(a),
                self.shown(b),
                std::io::Error::from(e)
            )
        })
    }

    /// Removes `name` from the directory; a missing name is no error.
    pub fn remove(&self, name: &OsStr) -> Result<()> {
        match rustix::fs::unlinkat(&self.fd, name, rustix::fs::AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(anyhow!(
                "cannot remove {}: {}",
                self.shown(name),
                std::io::Error::from(e)
            )),
        }
    }

    /// Renames `from` to `to` within the directory (replacing `to`); false
    /// when `from` does not exist.
    pub fn rename(&self, from: &OsStr, to: &OsStr) -> Result<bool> {
        match rustix::fs::renameat(&self.fd, from, &self.fd, to) {
            Ok(()) => Ok(true),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(anyhow!(
                "cannot rename {} to {}: {}",
                self.shown(from),
                self.shown(to),
                std::io::Error::from(e)
            )),
        }
    }
}

enum CreateError {
    Exists,
    Other(anyhow::Error),
}

fn open_error(e: Errno, shown: &str) -> anyhow::Error {
    match e {
        // O_NOFOLLOW on a symlink.
        Errno::LOOP => anyhow!(
            "{shown} is a symbolic link: wstrace does not follow links for files it writes as root; \
             name the real file, or remove the link"
        ),
        // O_NONBLOCK|O_WRONLY on a FIFO without a reader; a socket.
        Errno::NXIO | Errno::OPNOTSUPP => anyhow!(
            "{shown} is not a regular file (a FIFO or socket): name a regular file, or remove it"
        ),
        Errno::ISDIR => anyhow!("{shown} is a directory: name a file in it"),
        e => anyhow!("cannot open {shown}: {}", std::io::Error::from(e)),
    }
}

/// The opened file, if it is a regular file with one link that the daemon's
/// user owns; its mode set to 0640.
fn checked(fd: OwnedFd, shown: &str) -> Result<File> {
    let st = rustix::fs::fstat(&fd)
        .map_err(|e| anyhow!("{shown}: cannot stat: {}", std::io::Error::from(e)))?;
    let kind = FileType::from_raw_mode(st.st_mode);
    if kind != FileType::RegularFile {
        bail!(
            "{shown} is not a regular file ({}): name a regular file, or remove it",
            kind_name(kind)
        );
    }
    let me = rustix::process::geteuid().as_raw();
    if st.st_uid != me {
        bail!(
            "{shown} is owned by uid {}, not by wstrace's user (uid {me}): another user made it, \
             and could read or keep what is written to it; remove it (or `chown` it if it is yours)",
            st.st_uid
        );
    }
    if st.st_nlink != 1 {
        bail!(
            "{shown} has {} hard links: writing to it would write to the other names too; \
             remove it and let wstrace create it",
            st.st_nlink
        );
    }
    if st.st_mode & 0o7777 != FILE_MODE {
        rustix::fs::fchmod(fd.as_fd(), Mode::from_raw_mode(FILE_MODE))
            .map_err(|e| anyhow!("{shown}: cannot chmod to 0640: {}", std::io::Error::from(e)))?;
    }
    Ok(File::from(fd))
}

fn kind_name(k: FileType) -> &'static str {
    match k {
        FileType::Directory => "a directory",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Symlink => "a symbolic link",
        _ => "not a regular file",
    }
}

/// 16 hex digits from the kernel's random pool: the unpredictable part of
/// every temporary name wstrace creates (the ready file's, rotation's), so
/// no other user can create the name first.
pub fn random_suffix() -> Result<String> {
    let mut b = [0u8; 8];
    // SAFETY: `b` is a valid, writable buffer of `b.len()` bytes.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        bail!(
            "getrandom for a temporary file name: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(format!("{:016x}", u64::from_ne_bytes(b)))
}

/// Opens `path` for writing (appending or truncating) with every check
/// above: `--output` and `report --html` in one call.
pub fn open_write(path: &Path, append: bool) -> Result<File> {
    let (dir, name) = dir_of(path)?;
    dir.open_write(&name, append)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};

    fn dir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("wstrace-safefile-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("dir");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        d
    }

    fn err(path: &Path) -> String {
        format!("{:#}", open_write(path, true).expect_err("refused"))
    }

    #[test]
    fn creates_0640_regardless_of_umask() {
        let d = dir("create");
        let p = d.join("new.log");
        let _f = open_write(&p, true).expect("create");
        let m = std::fs::metadata(&p).expect("meta");
        assert_eq!(m.permissions().mode() & 0o7777, 0o640);
    }

    #[test]
    fn existing_world_writable_file_is_set_to_0640() {
        let d = dir("chmod");
        let p = d.join("old.log");
        std::fs::write(&p, "x\n").expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        let _f = open_write(&p, true).expect("open");
        assert_eq!(std::fs::metadata(&p).expect("meta").mode() & 0o7777, 0o640);
        assert_eq!(
            std::fs::read_to_string(&p).expect("read"),
            "x\n",
            "appending keeps it"
        );
    }

    #[test]
    fn symlink_is_refused_not_followed() {
        let d = dir("symlink");
        let target = d.join("target");
        std::fs::write(&target, "precious\n").expect("write");
        let link = d.join("out.log");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let msg = err(&link);
        assert!(msg.contains("is a symbolic link"), "{msg}");
        assert!(msg.contains(&link.display().to_string()), "{msg}");
        // A dangling link is refused too (not created through).
        let dangling = d.join("dangling.log");
        std::os::unix::fs::symlink(d.join("nowhere"), &dangling).expect("symlink");
        assert!(err(&dangling).contains("is a symbolic link"));
        assert!(!d.join("nowhere").exists());
        assert_eq!(
            std::fs::read_to_string(&target).expect("read"),
            "precious\n"
        );
    }

    #[test]
    fn fifo_is_refused_at_once() {
        let d = dir("fifo");
        let p = d.join("out.log");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &p,
            FileType::Fifo,
            Mode::from_raw_mode(0o666),
            0,
        )
        .expect("mkfifo");
        let start = std::time::Instant::now();
        let msg = err(&p);
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
        assert!(msg.contains("not a regular file"), "{msg}");
        // With a reader attached the open succeeds, and fstat refuses it.
        let _reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&p)
            .expect("reader");
        let msg = err(&p);
        assert!(msg.contains("not a regular file (a FIFO)"), "{msg}");
    }

    #[test]
    fn device_and_directory_are_refused() {
        let msg = err(Path::new("/dev/null"));
        assert!(
            msg.contains("not a regular file (a character device)"),
            "{msg}"
        );
        let d = dir("isdir");
        std::fs::create_dir(d.join("sub")).expect("mkdir");
        let msg = err(&d.join("sub"));
        assert!(
            msg.contains("is a directory") || msg.contains("not a regular file"),
            "{msg}"
        );
        let msg = err(&d.join("sub/"));
        assert!(msg.contains("does not name a file"), "{msg}");
    }

    #[test]
    fn file_of_another_user_is_refused() {
        let d = dir("owner");
        let p = d.join("out.log");
        std::fs::write(&p, "theirs\n").expect("write");
        // Only root can give a file away; as another user, their files are
        // refused by the same check (tested by the root run).
        if !crate::testenv::require_root("chowns a file to another user") {
            return;
        }
        std::os::unix::fs::chown(&p, Some(65534), Some(65534)).expect("chown");
        let msg = err(&p);
        assert!(msg.contains("is owned by uid 65534"), "{msg}");
        assert_eq!(std::fs::read_to_string(&p).expect("read"), "theirs\n");
    }

    #[test]
    fn hard_link_is_refused() {
        let d = dir("hardlink");
        let p = d.join("out.log");
        std::fs::write(&p, "x\n").expect("write");
        std::fs::hard_link(&p, d.join("other")).expect("link");
        assert!(err(&p).contains("2 hard links"));
    }

    #[test]
    fn writable_directory_without_sticky_bit_is_refused() {
        let d = dir("worldw");
        for (mode, ok) in [
            (0o777, false),
            (0o775, false),
            (0o757, false),
            (0o1777, true),
            (0o1775, true),
            (0o755, true),
            (0o750, true),
        ] {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let r = open_write(&d.join("out.log"), true);
            match (ok, r) {
                (true, Ok(_)) => {}
                (false, Err(e)) => {
                    let msg = format!("{e:#}");
                    assert!(msg.contains("writable by other users"), "{msg}");
                    assert!(msg.contains(&format!("{mode:04o}")), "{msg}");
                }
                (true, Err(e)) => panic!("{mode:o} refused: {e:#}"),
                (false, Ok(_)) => panic!("{mode:o} accepted"),
            }
        }
    }

    #[test]
    fn truncating_open_empties_own_file() {
        let d = dir("trunc");
        let p = d.join("r.html");
        std::fs::write(&p, "old contents\n").expect("write");
        let mut f = open_write(&p, false).expect("open");
        std::io::Write::write_all(&mut f, b"new\n").expect("write");
        drop(f);
        assert_eq!(std::fs::read_to_string(&p).expect("read"), "new\n");
    }

    #[test]
    fn fresh_names_are_new_and_exchange_swaps_in_one_step() {
        let d = dir("fresh");
        let (dir, _) = dir_of(&d.join("x")).expect("dir");
        std::fs::write(d.join("log"), "old\n").expect("write");
        let (a, mut fa) = dir.create_fresh(OsStr::new("log")).expect("a");
        let (b, _fb) = dir.create_fresh(OsStr::new("log")).expect("b");
        assert_ne!(a, b);
        assert!(a.to_string_lossy().starts_with(".log."), "{a:?}");
        assert_eq!(
            std::fs::metadata(d.join(&a)).expect("meta").mode() & 0o7777,
            0o640
        );
        std::io::Write::write_all(&mut fa, b"new\n").expect("write");
        dir.exchange(&a, OsStr::new("log")).expect("exchange");
        assert_eq!(
            std::fs::read_to_string(d.join("log")).expect("read"),
            "new\n"
        );
        assert_eq!(std::fs::read_to_string(d.join(&a)).expect("read"), "old\n");
        // No FILE at all: the fresh file takes the free name.
        dir.remove(OsStr::new("log")).expect("rm");
        dir.exchange(&b, OsStr::new("log")).expect("takes the name");
        assert!(!d.join(&b).exists());
        dir.remove(OsStr::new("nothing")).expect("missing is fine");
    }

    #[test]
    fn escape_in_path_is_shown_escaped() {
        let d = dir("esc");
        let msg = err(&d.join("no\x1bdir/x"));
        assert!(msg.contains("no\\x1bdir") && !msg.contains('\x1b'), "{msg}");
    }
}
