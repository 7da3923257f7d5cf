//! `--debug-probes`: the kernel programs' decision lines, read from
//! aya-log's ring and printed to stderr as `wstrace: probe: …`.
//!
//! The kernel writes numbers only (`wstrace_common::probe_log`): a code,
//! the process, the socket's ports and one number. The text is rendered
//! here, at the edge. Bounded: each CPU logs at most
//! `probe_log::LINES_PER_SECOND` lines a second; what the limit dropped is
//! counted in the kernel (`LOG_BUDGET`) and said here at most once a
//! second. A line that finds aya-log's 128 KiB ring full is lost uncounted
//! (the daemon drains it every 20 ms, far above the rate limit's fill).
use std::{
    io::{Read as _, Write as _},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray},
};
use wstrace_common::probe_log::{self, LINES_PER_SECOND, LogBudget};

use crate::output::escape;

/// One decision as the kernel logged it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub code: u32,
    pub pid: u32,
    pub local_port: u16,
    pub remote_port: u16,
    pub arg: u64,
}

impl Decision {
    /// Parses the kernel's `d CODE PID LOCAL REMOTE ARG` line.
    pub fn parse(line: &str) -> Option<Decision> {
        let mut f = line.split(' ');
        if f.next()? != "d" {
            return None;
        }
        let d = Decision {
            code: f.next()?.parse().ok()?,
            pid: f.next()?.parse().ok()?,
            local_port: f.next()?.parse().ok()?,
            remote_port: f.next()?.parse().ok()?,
            arg: f.next()?.parse().ok()?,
        };
        f.next().is_none().then_some(d)
    }

    /// The line after `wstrace: probe: `; `comm` is the process's name if
    /// known (escaped here).
    pub fn render(&self, comm: Option<&str>) -> String {
        let who = match comm {
            Some(c) => format!("pid {} ({})", self.pid, escape::text(c)),
            None => format!("pid {}", self.pid),
        };
        let socket = if self.local_port == 0 && self.remote_port == 0 {
            String::new()
        } else {
            format!(" socket :{} ⇄ :{}", self.local_port, self.remote_port)
        };
        let what = probe_log::describe(self.code).unwrap_or("unknown decision");
        let arg = match self.code {
            probe_log::REQUEST_WRITTEN => String::new(),
            probe_log::IGNORED_NOT_AT_START => format!(" (at byte {})", self.arg),
            c => format!(" ({} {} bytes)", probe_log::arg_name(c), self.arg),
        };
        let code = if probe_log::describe(self.code).is_none() {
            format!(" [code {}]", self.code)
        } else {
            String::new()
        };
        format!("{who}{socket}: {what}{arg}{code}")
    }
}

/// The process's name from /proc, bounded; None once it is gone.
fn comm(pid: u32) -> Option<String> {
    let f = std::fs::File::open(format!("/proc/{pid}/comm")).ok()?;
    let mut s = String::new();
    f.take(64).read_to_string(&mut s).ok()?;
    Some(s.trim_end_matches('\n').to_string())
}

/// The `log` sink aya-log formats each record into: one stderr line each.
struct StderrLines;

impl log::Log for StderrLines {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let text = record.args().to_string();
        let line = match Decision::parse(&text) {
            Some(d) => d.render(comm(d.pid).as_deref()),
            // Only our programs log, in one format; anything else is shown
            // escaped and cut, never trusted.
            None => {
                let cut: String = text.chars().take(200).collect();
                format!("unparsed line: {}", escape::text(&cut))
            }
        };
        // A closed stderr loses the line, never the daemon.
        let _ = writeln!(std::io::stderr().lock(), "wstrace: probe: {line}");
    }

    fn flush(&self) {}
}

/// The reader of the decision log, made only under `--debug-probes`.
pub struct ProbeLog {
    logger: aya_log::EbpfLogger<StderrLines>,
    budget: Option<PerCpuArray<MapData, LogBudget>>,
    dropped_said: u64,
    last_said: Instant,
}

impl ProbeLog {
    /// Takes aya-log's ring (and the budget map) out of the loaded object.
    pub fn start(ebpf: &mut Ebpf) -> Result<ProbeLog> {
        let logger = aya_log::EbpfLogger::init_with_logger(ebpf, StderrLines)
            .context("--debug-probes: the eBPF object has no log ring (rebuild wstrace)")?;
        let budget = ebpf
            .take_map("LOG_BUDGET")
            .and_then(|m| PerCpuArray::try_from(m).ok());
        Ok(ProbeLog {
            logger,
            budget,
            dropped_said: 0,
            last_said: Instant::now(),
        })
    }

    /// Prints every line the kernel logged so far, and, at most once a
    /// second (or when `last`), how many the rate limit dropped since said.
    pub fn drain(&mut self, last: bool) {
        self.logger.flush();
        if !last && self.last_said.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.last_said = Instant::now();
        let dropped = self
            .budget
            .as_ref()
            .and_then(|b| b.get(&0, 0).ok())
            .map(|v| v.iter().map(|b| b.dropped).sum::<u64>())
            .unwrap_or(0);
        if dropped > self.dropped_said {
            let _ = writeln!(
                std::io::stderr().lock(),
                "wstrace: probe: {} line(s) not printed: over the limit of {LINES_PER_SECOND} a second per CPU",
                dropped - self.dropped_said
            );
            self.dropped_said = dropped;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_lines_parse_and_render_with_their_reason() {
        let d = Decision::parse("d 3 4242 1215 55550 180").expect("parses");
        assert_eq!(
            d,
            Decision {
                code: probe_log::IGNORED_NOT_ACCEPTED,
                pid: 4242,
                local_port: 1215,
                remote_port: 55550,
                arg: 180,
            }
        );
        let line = d.render(Some("python3"));
        assert!(
            line.starts_with("pid 4242 (python3) socket :1215 ⇄ :55550: 101 ignored: no listener accepted this socket"),
            "{line}"
        );
        assert!(line.ends_with("(wrote 180 bytes)"), "{line}");
        let at = Decision::parse("d 8 1 80 2 25").expect("parses");
        assert!(
            at.render(None)
                .ends_with("not at the start of the write (only a write that starts with the status line is seen) (at byte 25)"),
            "{}",
            at.render(None)
        );
    }

    #[test]
    fn unknown_codes_and_hostile_names_are_shown_safely() {
        let d = Decision::parse("d 99 7 0 0 1").expect("parses");
        let line = d.render(Some("evil\u{1b}[2J\nname"));
        assert!(line.contains("unknown decision") && line.contains("[code 99]"));
        assert!(!line.contains('\u{1b}') && !line.contains('\n'), "{line:?}");
        assert!(!line.contains("socket"), "no ports, no socket: {line}");
    }

    #[test]
    fn malformed_lines_do_not_parse() {
        for bad in [
            "",
            "d",
            "d 1 2 3 4",
            "d 1 2 3 4 5 6",
            "x 1 2 3 4 5",
            "d 1 2 70000 4 5",
            "d -1 2 3 4 5",
        ] {
            assert_eq!(Decision::parse(bad), None, "{bad:?}");
        }
    }
}
