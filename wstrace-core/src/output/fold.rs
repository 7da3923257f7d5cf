//! Storms read as one event (text output only): closes that share the
//! closer, the cause and the moment — one process exiting with 4000
//! upgraded connections open, a pid dropping hundreds within a few
//! milliseconds — print as one summary with the first and last 4-tuple and
//! the first connection's full report (its stacks), instead of 4000 blocks.
//!
//! Nothing is lost: JSON, `--output` and the metrics still get one object
//! per connection (the folder sees only rendered text); every close is
//! counted in a summary; a group is printed once it has been quiet for
//! [`QUIET`] (the daemon's timer), after [`MAX_OPEN`] at the latest, and
//! all groups at exit. `--no-fold` prints each report as it comes.
//!
//! Memory is bounded: a group holds the first report's text and a few
//! numbers, and at most [`MAX_GROUPS`] are open (the oldest is printed to
//! make room).
use std::time::{Duration, Instant};

use crate::model::{ClosedBy, How};
use crate::output::view::{View, rfc3339};

/// Closes further apart than this (kernel time) are not one moment.
pub const GAP_NS: u64 = 100_000_000;
/// A group is printed once no close joined it for this long.
pub const QUIET: Duration = Duration::from_millis(300);
/// ... and at the latest this long after its first close was read, so a
/// steady trickle still prints.
pub const MAX_OPEN: Duration = Duration::from_secs(5);
pub const MAX_GROUPS: usize = 256;

/// What closes must share to fold: the closer (pid and name), whether it
/// was exiting, the side, FIN or RST, and the cause: the diagnosis, or for
/// closes at process exit the exit itself (one event, whatever each
/// connection's own diagnosis says about it).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Key {
    closer: Option<(u32, String)>,
    at_exit: bool,
    closed_by: ClosedBy,
    how: How,
    code: Option<&'static str>,
}

/// One connection's place in a storm: where, when, how long after its 101.
#[derive(Clone, Debug, PartialEq)]
pub struct Conn {
    pub local: String,
    pub remote: String,
    pub ts: String,
    pub ms_after_upgrade: f64,
}

/// A folded storm, for `text::render_storm`.
#[derive(Clone, Debug, PartialEq)]
pub struct Storm {
    /// `php (pid 4242)`, unescaped; `None`: no local process closed them.
    pub closer: Option<String>,
    pub at_exit: bool,
    pub closed_by: ClosedBy,
    pub how: How,
    pub probe: &'static str,
    pub count: u64,
    pub first: Conn,
    pub last: Conn,
    /// Kernel time from the first close to the last.
    pub span_ms: f64,
    pub min_ms_after_upgrade: f64,
    pub max_ms_after_upgrade: f64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Diagnosis codes and how many connections got each, first seen first
    /// (a closed set of codes: bounded).
    pub codes: Vec<(&'static str, u64)>,
    /// The first connection's whole text report.
    pub first_text: String,
}

struct Group {
    key: Key,
    storm: Storm,
    first_ns: u64,
    last_ns: u64,
    opened: Instant,
    touched: Instant,
}

/// What to print: a report as it was rendered, or a storm's summary.
#[derive(Debug, PartialEq)]
pub enum Ready {
    One(String),
    Storm(Box<Storm>),
}

#[derive(Default)]
pub struct Folder {
    /// Oldest first.
    groups: Vec<Group>,
}

impl Folder {
    /// Takes one report (and its text as rendered); returns what must be
    /// printed now to keep the bounds (a full table, or a group of the same
    /// closer whose moment has passed).
    pub fn add(&mut self, v: &View<'_>, text: String, now: Instant) -> Vec<Ready> {
        let r = v.report;
        let at_exit = r.closer.as_ref().is_some_and(|c| c.at_exit);
        let key = Key {
            closer: r.closer.as_ref().map(|c| (c.pid, c.comm.clone())),
            at_exit,
            closed_by: r.closed_by,
            how: r.how,
            code: (!at_exit).then_some(v.diagnosis.code),
        };
        let conn = Conn {
            local: r.local.to_string(),
            remote: r.remote.to_string(),
            ts: rfc3339(v.ts),
            ms_after_upgrade: r.ms_after_upgrade(),
        };
        let ns = r.close_ts_ns;
        let mut out = Vec::new();
        if let Some(i) = self.groups.iter().position(|g| g.key == key) {
            let g = &mut self.groups[i];
            let near = ns.abs_diff(g.last_ns) <= GAP_NS || (g.first_ns <= ns && ns <= g.last_ns);
            if near {
                let s = &mut g.storm;
                s.count += 1;
                s.min_ms_after_upgrade = s.min_ms_after_upgrade.min(conn.ms_after_upgrade);
                s.max_ms_after_upgrade = s.max_ms_after_upgrade.max(conn.ms_after_upgrade);
                s.bytes_sent = s.bytes_sent.saturating_add(r.bytes_sent_after_upgrade);
                s.bytes_received = s
                    .bytes_received
                    .saturating_add(r.bytes_received_after_upgrade);
                match s.codes.iter_mut().find(|(c, _)| *c == v.diagnosis.code) {
                    Some((_, n)) => *n += 1,
                    None => s.codes.push((v.diagnosis.code, 1)),
                }
                if ns >= g.last_ns {
                    g.last_ns = ns;
                    s.last = conn;
                }
                if ns < g.first_ns {
                    g.first_ns = ns;
                }
                s.span_ms = (g.last_ns - g.first_ns) as f64 / 1e6;
                g.touched = now;
                return out;
            }
            // Same closer, another moment: the earlier one is over.
            out.push(ready(self.groups.remove(i)));
        }
        if self.groups.len() >= MAX_GROUPS {
            out.push(ready(self.groups.remove(0)));
        }
        self.groups.push(Group {
            storm: Storm {
                closer: key
                    .closer
                    .as_ref()
                    .map(|(pid, comm)| format!("{comm} (pid {pid})")),
                at_exit: key.at_exit,
                closed_by: key.closed_by,
                how: key.how,
                probe: r.probe.name(),
                count: 1,
                first: conn.clone(),
                last: conn.clone(),
                span_ms: 0.0,
                min_ms_after_upgrade: conn.ms_after_upgrade,
                max_ms_after_upgrade: conn.ms_after_upgrade,
                bytes_sent: r.bytes_sent_after_upgrade,
                bytes_received: r.bytes_received_after_upgrade,
                codes: vec![(v.diagnosis.code, 1)],
                first_text: text,
            },
            key,
            first_ns: ns,
            last_ns: ns,
            opened: now,
            touched: now,
        });
        out
    }

    /// Groups that are done at `now`: quiet for [`QUIET`], or open for
    /// [`MAX_OPEN`].
    pub fn due(&mut self, now: Instant) -> Vec<Ready> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.groups.len() {
            let g = &self.groups[i];
            let done = now.saturating_duration_since(g.touched) >= QUIET
                || now.saturating_duration_since(g.opened) >= MAX_OPEN;
            if done {
                out.push(ready(self.groups.remove(i)));
            } else {
                i += 1;
            }
        }
        out
    }

    /// Everything still held (at exit).
    pub fn flush(&mut self) -> Vec<Ready> {
        self.groups.drain(..).map(ready).collect()
    }

    /// Connections held, not yet printed.
    #[cfg(test)]
    pub fn held(&self) -> u64 {
        self.groups.iter().map(|g| g.storm.count).sum()
    }
}

fn ready(g: Group) -> Ready {
    if g.storm.count == 1 {
        Ready::One(g.storm.first_text)
    } else {
        Ready::Storm(Box::new(g.storm))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnose::Diagnosis;
    use crate::enrich::Enriched;
    use crate::model::{CloseReport, Closer, ProcInfo, Stacks, Upgrader, UserWalk};

    fn report(pid: u32, close_ms: u64, remote_port: u16, at_exit: bool) -> CloseReport {
        CloseReport {
            sk: u64::from(remote_port),
            close_ts_ns: close_ms * 1_000_000,
            upgrade_ts_ns: 0,
            local: "127.0.0.1:8080".parse().expect("addr"),
            remote: format!("127.0.0.1:{remote_port}").parse().expect("addr"),
            closed_by: ClosedBy::Local,
            how: How::Fin,
            closer: Some(Closer {
                pid,
                tid: pid,
                comm: "php".into(),
                at_exit,
                exit_code: None,
                stacks: Stacks {
                    kernel: Ok(vec![]),
                    user: Ok(vec![]),
                    user_copy: None,
                    dwarf: None,
                    fate: Default::default(),
                    shared: None,
                    interp: Default::default(),
                },
            }),
            upgrader: Upgrader {
                pid,
                tid: pid,
                comm: "php".into(),
            },
            bytes_sent_after_upgrade: 10,
            bytes_received_after_upgrade: 1,
            probe: wstrace_common::ProbeSet::Tracepoint,
            request_head: Vec::new(),
            close_frames: Vec::new(),
            heartbeat: Default::default(),
            jiffies_at_close: None,
            notes: Vec::new(),
            kernel_close: None,
            tls: None,
            side: crate::model::Side::Server,
            chain: None,
        }
    }

    fn view<'a>(r: &'a CloseReport, code: &'static str) -> View<'a> {
        View {
            enriched: Enriched {
                report: r,
                ts: std::time::SystemTime::UNIX_EPOCH,
                exe: None,
                process: ProcInfo::default(),
                host: "h",
                kernel_stack: std::sync::Arc::default(),
                user_stack: std::sync::Arc::default(),
                kernel_stack_errno: None,
                user_stack_errno: None,
                user_walk: UserWalk::default(),
                request: None,
                frames: Vec::new(),
                idle_ms: None,
                peer: None,
                ending: None,
                crash: None,
            },
            diagnosis: Diagnosis {
                code,
                message: String::new(),
                fix: None,
                also: Vec::new(),
                front: None,
                cause: None,
            },
        }
    }

    fn add(f: &mut Folder, r: &CloseReport, code: &'static str, now: Instant) -> Vec<Ready> {
        f.add(&view(r, code), format!("text of {}", r.remote), now)
    }

    #[test]
    fn one_exit_with_thousands_open_is_one_storm() {
        let t0 = Instant::now();
        let mut f = Folder::default();
        // 4000 closes within 40 ms of kernel time, read over 200 ms.
        for i in 0..4000u16 {
            let r = report(4242, 1000 + u64::from(i) / 100, 20000 + i, true);
            let now = t0 + Duration::from_micros(u64::from(i) * 50);
            assert!(add(&mut f, &r, "unknown", now).is_empty());
        }
        assert_eq!(f.held(), 4000);
        // Not quiet yet.
        assert!(f.due(t0 + Duration::from_millis(250)).is_empty());
        let out = f.due(t0 + Duration::from_millis(200) + QUIET);
        assert_eq!(out.len(), 1);
        let Ready::Storm(s) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(s.count, 4000);
        assert_eq!(s.closer.as_deref(), Some("php (pid 4242)"));
        assert!(s.at_exit);
        assert_eq!(s.first.remote, "127.0.0.1:20000");
        assert_eq!(s.last.remote, "127.0.0.1:23999");
        assert_eq!(s.first_text, "text of 127.0.0.1:20000");
        assert_eq!((s.bytes_sent, s.bytes_received), (40_000, 4000));
        assert!((s.span_ms - 39.0).abs() < 1e-9, "{}", s.span_ms);
        assert_eq!(s.codes, vec![("unknown", 4000)]);
        assert_eq!(f.held(), 0);
    }

    #[test]
    fn one_exit_is_one_storm_whatever_each_diagnosis() {
        let t0 = Instant::now();
        let mut f = Folder::default();
        for (i, code) in ["unknown", "idle_timeout", "unknown"]
            .into_iter()
            .enumerate()
        {
            let r = report(9, 1000, 20000 + i as u16, true);
            assert!(add(&mut f, &r, code, t0).is_empty());
        }
        let out = f.flush();
        let [Ready::Storm(s)] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(s.codes, vec![("unknown", 2), ("idle_timeout", 1)]);
        // Not at exit: the diagnosis is part of the cause.
        for (i, code) in ["unknown", "idle_timeout"].into_iter().enumerate() {
            let r = report(9, 1000, 20000 + i as u16, false);
            assert!(add(&mut f, &r, code, t0).is_empty());
        }
        assert_eq!(f.flush().len(), 2);
    }

    #[test]
    fn a_lone_close_prints_as_it_was_rendered() {
        let t0 = Instant::now();
        let mut f = Folder::default();
        let r = report(1, 5, 40000, false);
        assert!(add(&mut f, &r, "http10_upgrade", t0).is_empty());
        assert_eq!(
            f.due(t0 + QUIET),
            vec![Ready::One("text of 127.0.0.1:40000".into())]
        );
    }

    #[test]
    fn another_closer_cause_or_moment_is_another_group() {
        let t0 = Instant::now();
        let mut f = Folder::default();
        let a = report(1, 1000, 40000, false);
        let other_pid = report(2, 1000, 40001, false);
        let other_code = report(1, 1000, 40002, false);
        let exiting = report(1, 1000, 40003, true);
        assert!(add(&mut f, &a, "unknown", t0).is_empty());
        assert!(add(&mut f, &other_pid, "unknown", t0).is_empty());
        assert!(add(&mut f, &other_code, "idle_timeout", t0).is_empty());
        assert!(add(&mut f, &exiting, "unknown", t0).is_empty());
        assert_eq!(f.held(), 4);
        // Same closer and cause 5 s later: the first moment is over and
        // prints now.
        let later = report(1, 6000, 40004, false);
        let out = add(&mut f, &later, "unknown", t0);
        assert_eq!(out, vec![Ready::One("text of 127.0.0.1:40000".into())]);
        let all = f.flush();
        assert_eq!(all.len(), 4);
        assert!(all.iter().all(|r| matches!(r, Ready::One(_))));
    }

    #[test]
    fn a_steady_trickle_still_prints() {
        let t0 = Instant::now();
        let mut f = Folder::default();
        let mut printed = 0;
        // A close every 50 ms for 12 s: never quiet, printed every MAX_OPEN.
        for i in 0..240u64 {
            let r = report(7, 50 * i, 30000 + i as u16, false);
            let now = t0 + Duration::from_millis(50 * i);
            printed += add(&mut f, &r, "peer_closed_first", now).len();
            printed += f.due(now).len();
        }
        assert_eq!(printed, 2);
        let rest = f.flush();
        let total: u64 = rest
            .iter()
            .map(|r| match r {
                Ready::Storm(s) => s.count,
                Ready::One(_) => 1,
            })
            .sum();
        assert_eq!(rest.len(), 1);
        assert!(total > 0 && total < 240);
    }

    #[test]
    fn the_table_is_bounded() {
        let t0 = Instant::now();
        let mut f = Folder::default();
        let mut printed = 0;
        for pid in 0..(MAX_GROUPS as u32 + 10) {
            printed += add(&mut f, &report(pid, 1, 1000, false), "unknown", t0).len();
        }
        assert_eq!(printed, 10);
        assert_eq!(f.held(), MAX_GROUPS as u64);
    }
}
