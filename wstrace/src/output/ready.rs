//! Saying "tracing" to scripts and service managers without any parsing:
//! `--ready-file PATH` appears, and systemd gets `READY=1` on
//! `$NOTIFY_SOCKET`, once the probes are attached.
use std::{
    fs::File,
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

/// The ready file in waiting: a private temporary file next to PATH, created
/// before the probes attach (so a bad path stops the start) and renamed over
/// PATH once tracing; PATH is removed when the run ends.
pub struct ReadyFile {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<File>,
    published: bool,
}

impl ReadyFile {
    /// Removes a stale PATH (a symlink is removed, never followed) and
    /// creates the temporary file with O_CREAT|O_EXCL|O_NOFOLLOW, 0644.
    pub fn prepare(path: &Path) -> Result<ReadyFile> {
        let name = path
            .file_name()
            .with_context(|| format!("--ready-file {}: not a file name", path.display()))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{}.tmp", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("--ready-file {}: removing the old file", path.display())
                });
            }
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .with_context(|| format!("--ready-file: creating {}", tmp.display()))?;
        Ok(ReadyFile {
            path: path.to_owned(),
            tmp,
            file: Some(file),
            published: false,
        })
    }

    /// Writes `probes=<set>` and `pid=<pid>` lines and renames the file into
    /// place: PATH appears whole or not at all.
    pub fn publish(&mut self, probe_set: &str) -> Result<()> {
        let mut file = self
            .file
            .take()
            .context("--ready-file: already published")?;
        writeln!(file, "probes={probe_set}\npid={}", std::process::id())
            .and_then(|()| file.sync_all())
            .and_then(|()| std::fs::rename(&self.tmp, &self.path))
            .with_context(|| format!("--ready-file: writing {}", self.path.display()))?;
        self.published = true;
        Ok(())
    }
}

impl Drop for ReadyFile {
    fn drop(&mut self) {
        if self.published {
            let _ = std::fs::remove_file(&self.path);
        } else {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Sends `READY=1` (and a STATUS line) to `$NOTIFY_SOCKET` when it is set:
/// one datagram, as sd_notify(3) does. `@name` is an abstract socket.
/// Returns whether a message was sent.
pub fn notify_systemd(status: &str) -> Result<bool> {
    let Some(addr) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let sock = std::os::unix::net::UnixDatagram::unbound().context("sd_notify: socket")?;
    let msg = format!("READY=1\nSTATUS={status}\n");
    let bytes = addr.as_encoded_bytes();
    if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt as _;
        let a = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
            .context("sd_notify: NOTIFY_SOCKET")?;
        sock.send_to_addr(msg.as_bytes(), &a)
    } else {
        sock.send_to(msg.as_bytes(), Path::new(&addr))
    }
    .with_context(|| format!("sd_notify: sending to {}", addr.to_string_lossy()))?;
    Ok(true)
}
