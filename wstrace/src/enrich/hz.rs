//! The kernel's tick rate (CONFIG_HZ), to turn the jiffies the kernel keeps
//! per socket (last data sent/received) into milliseconds.
//!
//! Read from the kernel's own config when it is available
//! (/proc/config.gz, /boot/config-<release>); otherwise measured from
//! /proc/timer_list over a short interval and snapped to the values kernels
//! are built with.
use std::{io::Read as _, time::Duration};

/// Tick rates kernels are configured with.
const STANDARD: [u32; 5] = [100, 250, 300, 1000, 1200];

pub fn detect() -> Option<u32> {
    from_config_gz().or_else(from_boot_config).or_else(measure)
}

fn from_config_gz() -> Option<u32> {
    let f = std::fs::File::open("/proc/config.gz").ok()?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(f)
        .read_to_string(&mut text)
        .ok()?;
    parse_config(&text)
}

fn from_boot_config() -> Option<u32> {
    let rel = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    parse_config(&std::fs::read_to_string(format!("/boot/config-{}", rel.trim())).ok()?)
}

pub fn parse_config(text: &str) -> Option<u32> {
    text.lines()
        .find_map(|l| l.strip_prefix("CONFIG_HZ=")?.trim().parse().ok())
}

fn jiffies_now() -> Option<u64> {
    let t = std::fs::read_to_string("/proc/timer_list").ok()?;
    t.lines()
        .find_map(|l| l.strip_prefix("jiffies:")?.trim().parse().ok())
}

/// Tries at measuring before giving up: a try that is descheduled between
/// a read and its clock reading (a loaded host, an emulated VM) lands off
/// every standard rate, and the next one usually does not.
const MEASURE_TRIES: usize = 5;

fn measure() -> Option<u32> {
    (0..MEASURE_TRIES).find_map(|_| {
        // Each clock reading right after its read of timer_list, so the
        // time reading the file takes is in neither or both.
        let j0 = jiffies_now()?;
        let t0 = std::time::Instant::now();
        std::thread::sleep(Duration::from_millis(200));
        let j1 = jiffies_now()?;
        snap(j1.saturating_sub(j0) as f64 / t0.elapsed().as_secs_f64())
    })
}

/// The standard rate within 10% of a measured one.
pub fn snap(measured: f64) -> Option<u32> {
    STANDARD
        .into_iter()
        .find(|&hz| (measured - hz as f64).abs() <= hz as f64 * 0.1)
}

pub fn jiffies_to_ms(jiffies: u32, hz: u32) -> u64 {
    u64::from(jiffies) * 1000 / u64::from(hz.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_config_hz() {
        assert_eq!(
            parse_config("# CONFIG_HZ_100 is not set\nCONFIG_HZ_250=y\nCONFIG_HZ=250\n"),
            Some(250)
        );
        assert_eq!(parse_config("CONFIG_HZ_1000=y\n"), None);
    }

    #[test]
    fn snaps_measurements() {
        assert_eq!(snap(247.0), Some(250));
        assert_eq!(snap(1010.0), Some(1000));
        assert_eq!(snap(99.0), Some(100));
        assert_eq!(snap(500.0), None);
    }

    #[test]
    fn converts() {
        assert_eq!(jiffies_to_ms(15_000, 250), 60_000);
        assert_eq!(jiffies_to_ms(1, 1000), 1);
    }

    #[test]
    fn this_kernel_has_a_standard_rate() {
        let hz = detect().ok_or(
            "no /proc/config.gz or /boot/config-<release>, and /proc/timer_list is unreadable: run as root (timer_list is root's)",
        );
        let Some(hz) = crate::testenv::require_ok("the kernel's CONFIG_HZ", hz) else {
            return;
        };
        assert!(STANDARD.contains(&hz), "{hz}");
    }
}
