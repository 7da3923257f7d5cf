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

use crate::output::safe_file;

/// The ready file in waiting: a private temporary file next to PATH, created
/// before the probes attach (so a bad path stops the start) and renamed over
/// PATH once tracing; PATH is removed when the run ends.
///
/// The temporary name ends in 16 random hex digits: a name another user
/// could guess (say `.NAME.<pid>.tmp`) could be created first and refuse
/// the start. A name that exists anyway is skipped for a fresh one.
pub struct ReadyFile {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<File>,
    published: bool,
}

/// Fresh random names tried before giving up: every try that finds its name
/// taken means another process guessed 64 random bits.
const NAME_TRIES: usize = 8;

impl ReadyFile {
    /// Removes a stale PATH (a symlink is removed, never followed) and
    /// creates the temporary file with O_CREAT|O_EXCL|O_NOFOLLOW, 0644.
    pub fn prepare(path: &Path) -> Result<ReadyFile> {
        let name = path
            .file_name()
            .with_context(|| format!("--ready-file {}: not a file name", path.display()))?;
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("--ready-file {}: removing the old file", path.display())
                });
            }
        }
        let mut last = None;
        for _ in 0..NAME_TRIES {
            let mut tmp_name = std::ffi::OsString::from(".");
            tmp_name.push(name);
            tmp_name.push(format!(".{}.tmp", safe_file::random_suffix()?));
            let tmp = path.with_file_name(tmp_name);
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&tmp)
            {
                Ok(file) => {
                    return Ok(ReadyFile {
                        path: path.to_owned(),
                        tmp,
                        file: Some(file),
                        published: false,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("--ready-file: creating {}", tmp.display()));
                }
            }
        }
        Err(last.map_or_else(|| anyhow::anyhow!("no name tried"), anyhow::Error::from))
            .with_context(|| {
                format!(
                    "--ready-file {}: {NAME_TRIES} random temporary names next to it all existed",
                    path.display()
                )
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("wstrace-ready-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("dir");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        d
    }

    /// Issue 25, item 4: another user pre-creating the temporary names a
    /// pid-based scheme would use (`.NAME.<pid>.tmp`) cannot refuse the
    /// start; the published file is whole and the planted files untouched.
    #[test]
    fn planted_pid_temp_names_do_not_refuse_the_start() {
        let d = dir("planted");
        let path = d.join("wsready");
        let me = std::process::id();
        for pid in me.saturating_sub(4)..me + 64 {
            std::fs::write(d.join(format!(".wsready.{pid}.tmp")), "planted\n").expect("plant");
        }
        let mut r = ReadyFile::prepare(&path).expect("start refused by a planted name");
        r.publish("tracepoint").expect("publish");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text, format!("probes=tracepoint\npid={me}\n"));
        assert_eq!(
            std::fs::read_to_string(d.join(format!(".wsready.{me}.tmp"))).expect("planted"),
            "planted\n"
        );
        drop(r);
        assert!(!path.exists(), "removed at the end of the run");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn temporary_names_differ_between_runs() {
        let d = dir("random");
        let a = ReadyFile::prepare(&d.join("r")).expect("a");
        let b = ReadyFile::prepare(&d.join("s")).expect("b");
        let sa = a
            .tmp
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let sb = b
            .tmp
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        assert_ne!(sa[3..], sb[3..], "{sa} {sb}");
        assert!(
            !sa.contains(&std::process::id().to_string()) || sa.len() > 20,
            "{sa}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}
