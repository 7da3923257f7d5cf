//! The uprobe perf events the TLS probes attach to: this kernel's uprobe
//! PMU, and the checked open of one probe (the checks and the process that
//! runs them with CAP_SYS_ADMIN are `hardening::uprobe`).
use std::{
    ffi::CString,
    os::fd::{AsRawFd as _, OwnedFd},
};

use super::perf::{self, PerfEventAttr};
use crate::hardening::uprobe::{OpenError, Refusal, Request, open_file_checked};

/// The uprobe PMU of this kernel: its perf type and which `config` bit
/// makes a return probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UprobePmu {
    pub type_: u32,
    pub retprobe_bit: u32,
}

const PMU_DIR: &str = "/sys/bus/event_source/devices/uprobe";

impl UprobePmu {
    /// From sysfs (`type`, `format/retprobe`).
    pub fn read() -> Result<Self, String> {
        let read = |f: &str| {
            std::fs::read_to_string(format!("{PMU_DIR}/{f}"))
                .map_err(|e| format!("reading {PMU_DIR}/{f}: {e} (a kernel without CONFIG_UPROBE_EVENTS has no uprobe PMU)"))
        };
        let type_ = read("type")?
            .trim()
            .parse()
            .map_err(|e| format!("{PMU_DIR}/type: {e}"))?;
        let format = read("format/retprobe")?;
        let retprobe_bit = parse_format_bit(&format)
            .ok_or_else(|| format!("{PMU_DIR}/format/retprobe: unexpected {format:?}"))?;
        Ok(Self {
            type_,
            retprobe_bit,
        })
    }
}

/// `config:0` (a PMU format file naming one bit) -> 0.
fn parse_format_bit(text: &str) -> Option<u32> {
    let bit: u32 = text.trim().strip_prefix("config:")?.parse().ok()?;
    (bit < 64).then_some(bit)
}

/// Checks `req` and opens its uprobe perf event, scoped to the process
/// (needs CAP_SYS_ADMIN: in the helper, or in the daemon before the drop).
/// The event is enabled; nothing runs on a hit until a program is
/// attached ([`perf::attach_program`]).
pub fn open_checked(pmu: &UprobePmu, req: &Request) -> Result<OwnedFd, OpenError> {
    let file = open_file_checked(req)?;
    // The probe goes on the file just checked, whatever the map_files
    // entry names by the time the kernel resolves the path.
    let probe_path = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|_| OpenError::Refused(Refusal::Malformed))?;
    let config = if req.retprobe {
        1u64 << pmu.retprobe_bit
    } else {
        0
    };
    let attr = PerfEventAttr {
        config1: probe_path.as_ptr() as u64,
        config2: req.offset,
        ..PerfEventAttr::new(pmu.type_, config)
    };
    let pid = i32::try_from(req.pid).map_err(|_| OpenError::Refused(Refusal::Malformed))?;
    // SAFETY: config1 points at `probe_path`, alive through the call.
    unsafe { perf::open(&attr, pid, -1) }.map_err(OpenError::Kernel)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hardening::uprobe::{Helper, tests::a_mapped_file};

    #[test]
    fn format_bits_parse() {
        assert_eq!(parse_format_bit("config:0\n"), Some(0));
        assert_eq!(parse_format_bit("config:63"), Some(63));
        assert_eq!(parse_format_bit("config:64"), None);
        assert_eq!(parse_format_bit("config1:0"), None);
        assert_eq!(parse_format_bit(""), None);
    }

    /// Through the helper, a good request comes back as a uprobe perf
    /// event (offset 0 is the ELF header, mapped without exec: no
    /// breakpoint goes anywhere); a refused one is still refused.
    #[test]
    fn the_helper_opens_a_perf_event_for_a_good_request() {
        if !crate::testenv::require_root("forks the uprobe helper, which needs CAP_SYS_ADMIN") {
            return;
        }
        let Some(pmu) = crate::testenv::require_ok("the uprobe PMU", UprobePmu::read()) else {
            return;
        };
        let helper =
            Helper::start(move |r: &Request| open_checked(&pmu, r)).expect("helper starts as root");
        let me = std::process::id();
        let (path, dev, inode, _) = a_mapped_file(me);
        let good = Request {
            pid: me,
            path,
            dev,
            inode,
            offset: 0,
            retprobe: false,
        };
        let fd = helper.open(&good).expect("a good request gets a probe");
        let link =
            std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("fd link");
        assert_eq!(link.to_string_lossy(), "anon_inode:[perf_event]");
        match helper.open(&Request {
            inode: inode + 1,
            ..good
        }) {
            Err(OpenError::Refused(Refusal::NotThatFile)) => {}
            other => panic!("another inode: {other:?}"),
        }
    }
}
