//! Checking up front what the kernel will refuse later, so the user reads one
//! clear line instead of an EPERM from deep inside a load.
use anyhow::{Result, bail};

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

pub fn has_tracing_caps(caps: u64) -> bool {
    let has = |c: u32| caps & (1u64 << c) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
}

pub fn check() -> Result<()> {
    match effective_caps() {
        Some(caps) if has_tracing_caps(caps) => Ok(()),
        Some(_) => bail!(
            "wstrace needs root (or CAP_BPF and CAP_PERFMON) to load eBPF programs: run it with sudo"
        ),
        // No /proc: let the load itself report.
        None => Ok(()),
    }
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; later ones use
/// memcg and do not need this. Failure is only worth a word on old kernels.
pub fn raise_memlock() -> Option<String> {
    let lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) } == 0 {
        return None;
    }
    let err = std::io::Error::last_os_error();
    match kernel_version() {
        Some(v) if v < (5, 11) => Some(format!(
            "could not raise RLIMIT_MEMLOCK ({err}); kernel {}.{} accounts BPF maps against it, so loading may fail: run as root with CAP_SYS_RESOURCE or `ulimit -l unlimited`",
            v.0, v.1
        )),
        _ => None,
    }
}

pub fn kernel_version() -> Option<(u32, u32)> {
    let rel = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    parse_release(&rel)
}

pub fn parse_release(rel: &str) -> Option<(u32, u32)> {
    let mut it = rel.trim().split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps() {
        assert!(has_tracing_caps(1 << CAP_SYS_ADMIN));
        assert!(has_tracing_caps((1 << CAP_BPF) | (1 << CAP_PERFMON)));
        assert!(!has_tracing_caps(1 << CAP_BPF));
        assert!(!has_tracing_caps(0));
    }

    #[test]
    fn releases() {
        assert_eq!(parse_release("6.18.44-fc-v669\n"), Some((6, 18)));
        assert_eq!(parse_release("5.10.0-32-cloud-amd64"), Some((5, 10)));
        assert_eq!(parse_release("garbage"), None);
    }
}
