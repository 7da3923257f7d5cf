//! tracefs: where it is, mounting it when missing, and tracepoint field
//! offsets from `events/<category>/<name>/format`.
//!
//! Offsets are read from the running kernel instead of assumed, because
//! tracepoint records do change between versions (tcp_send_reset gained
//! fields in 6.10, for one).
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, anyhow, bail};

const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// The tracefs root, mounting it at /sys/kernel/tracing if nothing is mounted
/// (a tracer should do what it needs itself; on many minimal systems it is
/// not mounted at boot).
pub fn ensure_mounted() -> Result<PathBuf> {
    if let Some(p) = find() {
        return Ok(p);
    }
    // Mounted but not readable: a non-root service without the capability
    // to read root's 0700 tracefs. Mounting again would not help.
    for c in CANDIDATES {
        if let Err(e) = std::fs::read_dir(c)
            && e.kind() == std::io::ErrorKind::PermissionDenied
        {
            bail!(
                "tracefs at {c} is not readable by this user ({e}): run wstrace as root, or grant it CAP_DAC_READ_SEARCH (see packaging/wstrace.service)"
            );
        }
    }
    let target = Path::new(CANDIDATES[0]);
    let src = c"tracefs";
    let dst = std::ffi::CString::new(CANDIDATES[0]).map_err(|e| anyhow!("{e}"))?;
    // SAFETY: plain mount(2) with NUL-terminated strings and no data.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        bail!(
            "tracefs is not mounted and mounting it at {} failed ({err}): run `mount -t tracefs tracefs {}` as root, then retry",
            target.display(),
            target.display()
        );
    }
    find().ok_or_else(|| {
        anyhow!(
            "mounted tracefs at {} but it has no events/ directory",
            target.display()
        )
    })
}

fn find() -> Option<PathBuf> {
    CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("events").is_dir())
}

pub fn event_exists(root: &Path, category: &str, name: &str) -> bool {
    root.join("events")
        .join(category)
        .join(name)
        .join("id")
        .exists()
}

/// Byte offset of `field` in the tracepoint's record.
pub fn field_offset(root: &Path, category: &str, name: &str, field: &str) -> Result<u64> {
    let path = root.join("events").join(category).join(name).join("format");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "tracepoint {category}:{name} is not available ({})",
            path.display()
        )
    })?;
    parse_field_offset(&text, field).ok_or_else(|| {
        anyhow!("tracepoint {category}:{name} has no field `{field}` on this kernel")
    })
}

/// Parses lines like
/// `\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;`.
pub fn parse_field_offset(format: &str, field: &str) -> Option<u64> {
    format.lines().find_map(|line| {
        let line = line.trim();
        let decl = line.strip_prefix("field:")?.split(';').next()?;
        // The name is the last word of the declaration, without array suffix.
        let name = decl.split_whitespace().last()?.trim_start_matches('*');
        let name = name.split('[').next()?;
        if name != field {
            return None;
        }
        let off = line
            .split(';')
            .find_map(|p| p.trim().strip_prefix("offset:"))?;
        off.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SET_STATE: &str = "name: inet_sock_set_state
ID: 1450
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;

print fmt: \"family=%s protocol=%s ...\"
";

    #[test]
    fn finds_fields_by_name() {
        assert_eq!(parse_field_offset(SET_STATE, "skaddr"), Some(8));
        assert_eq!(parse_field_offset(SET_STATE, "oldstate"), Some(16));
        assert_eq!(parse_field_offset(SET_STATE, "newstate"), Some(20));
        assert_eq!(parse_field_offset(SET_STATE, "sport"), Some(24));
        assert_eq!(parse_field_offset(SET_STATE, "protocol"), Some(30));
        assert_eq!(parse_field_offset(SET_STATE, "daddr_v6"), Some(56));
        assert_eq!(
            parse_field_offset(SET_STATE, "saddr"),
            Some(32),
            "array suffix stripped"
        );
    }

    #[test]
    fn missing_field_and_garbage_are_none() {
        assert_eq!(parse_field_offset(SET_STATE, "reason"), None);
        assert_eq!(parse_field_offset("field:int x;offset:zz;", "x"), None);
        assert_eq!(parse_field_offset("", "skaddr"), None);
    }

    /// The running kernel's own format file (mounting tracefs when nothing
    /// is, as wstrace does): needs root, whose 0700 tracefs it is.
    #[test]
    fn host_kernel_set_state_skaddr_is_at_8() {
        let Some(root) = crate::testenv::require_ok("tracefs", ensure_mounted()) else {
            return;
        };
        let off = field_offset(&root, "sock", "inet_sock_set_state", "skaddr")
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(off, 8);
    }
}
