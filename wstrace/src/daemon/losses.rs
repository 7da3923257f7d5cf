//! Loss accounting: everything that can make a report go missing, by
//! reason, warned about on stderr as it grows, counted in the metrics and
//! totalled at exit; and the closes reported without a stack copy of their
//! own (not losses, said beside them).
use std::collections::HashMap;

use crate::{attach as probes, attach::Attached, output::Outputs, pipeline::matcher::Matcher};
use wstrace_common::{ProcessBudget, lost};

/// What `tgid` lost over its fair share since `before` (both the kernel's
/// running totals; an entry the kernel evicted and made again starts from
/// 0), or None if nothing new.
fn over_budget_line(tgid: u32, before: &ProcessBudget, now: &ProcessBudget) -> Option<String> {
    let since = |n: u32, b: u32| if n >= b { n - b } else { n };
    let events = since(now.dropped, before.dropped);
    if events == 0 {
        return None;
    }
    Some(format!(
        "pid {tgid}: {events} event(s) not sent over its fair share of the ring (past half full, {} per {}th of the ring read): {} close(s) not reported, {} connection(s) not traced [over_budget]",
        wstrace_common::FAIR_SHARE_EVENTS,
        wstrace_common::FAIR_SHARE_WINDOW,
        since(now.dropped_closes, before.dropped_closes),
        since(now.dropped_upgrades, before.dropped_upgrades),
    ))
}

/// Closes whose user stack copy the kernel did not make, by reason: said
/// at exit beside the losses, and counted in `wstrace_stacks_elided_total`.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct StacksElided {
    /// The call site was over its copies a second.
    budget: u64,
    /// The stack ring was full.
    ring_full: u64,
}

impl StacksElided {
    pub(super) fn count(&mut self, reason: &str) {
        match reason {
            "budget" => self.budget += 1,
            _ => self.ring_full += 1,
        }
    }
}

/// Everything that can make a report go missing, by reason: nothing is
/// dropped silently. Each is warned about on stderr as it grows, counted in
/// `wstrace_lost_events_total{reason}` and totalled at exit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Losses {
    /// The kernel could not write an event: the ring buffer was full.
    ring_full: u64,
    /// The kernel did not write an event: the ring was past half full and
    /// the process over its share (`wstrace_common::FAIR_SHARE_EVENTS`).
    over_budget: u64,
    /// 101s the kernel ignored: written on a socket no listener accepted
    /// while wstrace ran (older than wstrace, or opened by the process).
    not_accepted: u64,
    /// 101s whose socket the kernel could not add to its map of upgraded
    /// sockets (an allocation failure of the LRU map): not traced.
    map_full: u64,
    /// The kernel skipped a program run (another BPF program was running on
    /// that CPU): the event it would have written was never made.
    recursion_miss: u64,
    /// Returns of tcp_recvmsg the kprobe set's kretprobe missed (no free
    /// instance): a request head or a received close frame never seen.
    retprobe_miss: u64,
    /// Upgraded sockets evicted: more than --max-sockets were open at once.
    max_sockets: u64,
    /// Events for sockets whose upgrade was never seen (lost, or before the
    /// probes attached).
    orphan_event: u64,
    /// 101-looking writes whose request asked for no upgrade (ignored on
    /// purpose: a response body that starts like a 101).
    not_an_upgrade: u64,
    /// Proxy chains forgotten while a socket of theirs was open: more than
    /// `pipeline::chain::MAX_CHAINS` at once; their reports are unlinked.
    chain_evicted: u64,
}

impl Losses {
    /// (metric label, count, what to tell the operator).
    pub(super) fn each(&self) -> [(&'static str, u64, &'static str); 10] {
        [
            (
                "ring_full",
                self.ring_full,
                "events lost (ring buffer full); reports may be missing",
            ),
            (
                "over_budget",
                self.over_budget,
                "events not sent: the ring was past half full and their process over its fair share; that process's reports may be missing, other processes' are kept",
            ),
            (
                "not_accepted",
                self.not_accepted,
                "101(s) not traced: written on a socket no listener accepted while wstrace ran (a connection older than wstrace, or one the process opened itself; --debug-probes names them)",
            ),
            (
                "map_full",
                self.map_full,
                "101(s) not traced: the kernel could not add the socket to its map of upgraded sockets (out of memory for BPF maps)",
            ),
            (
                "recursion_miss",
                self.recursion_miss,
                "probe runs skipped by the kernel (another BPF program was running on the CPU); reports may be missing",
            ),
            (
                "retprobe_miss",
                self.retprobe_miss,
                "tcp_recvmsg returns missed by the kretprobe (more tasks inside tcp_recvmsg than it has room for); request heads or close frames may be missing",
            ),
            (
                "max_sockets",
                self.max_sockets,
                "upgraded socket(s) evicted: more than --max-sockets were open at once, and the oldest are no longer traced (raise --max-sockets)",
            ),
            (
                "orphan_event",
                self.orphan_event,
                "event(s) for sockets whose 101 was not seen (upgraded before tracing started, or its event was dropped)",
            ),
            (
                "not_an_upgrade",
                self.not_an_upgrade,
                "101-looking write(s) ignored: the request asked for no upgrade",
            ),
            (
                "chain_evicted",
                self.chain_evicted,
                "proxy chain(s) forgotten while open (too many at once): their hops are reported unlinked",
            ),
        ]
    }
}

/// What was already said about losses: each is warned about and counted
/// once, as it grows.
#[derive(Default)]
pub(super) struct LossBook {
    /// What was already warned about and counted in the metrics.
    reported: Losses,
    /// Closes reported without a stack copy of their own (not losses).
    pub(super) stacks_elided: StacksElided,
    /// Per process, the over-budget totals last said (`name_over_budget`).
    over_budget_said: HashMap<u32, ProcessBudget>,
    /// The `over_budget` count when processes were last named.
    over_budget_named: u64,
}

impl LossBook {
    /// The counts now. The programs' skipped runs take a file read per
    /// program: they are read only when `read_programs`, and otherwise
    /// stay as last read.
    fn now(&self, attached: &Attached, matcher: &Matcher, read_programs: bool) -> Losses {
        Losses {
            ring_full: probes::lost_events(&attached.ebpf, lost::RING_FULL),
            over_budget: probes::lost_events(&attached.ebpf, lost::OVER_BUDGET),
            not_accepted: probes::lost_events(&attached.ebpf, lost::NOT_ACCEPTED),
            map_full: probes::lost_events(&attached.ebpf, lost::MAP_FULL),
            recursion_miss: if read_programs {
                probes::recursion_misses(&attached.ebpf)
            } else {
                self.reported.recursion_miss
            },
            retprobe_miss: match (&attached.retprobe, read_programs) {
                (Some(r), true) => r.missed(),
                _ => self.reported.retprobe_miss,
            },
            max_sockets: matcher.evicted,
            orphan_event: matcher.orphan_events,
            not_an_upgrade: matcher.not_upgrades,
            chain_evicted: matcher.chains.evicted,
        }
    }

    /// Warns about, and counts, what went missing since the last call.
    pub(super) fn warn(
        &mut self,
        attached: &Attached,
        matcher: &Matcher,
        outputs: &Outputs,
        read_programs: bool,
    ) {
        let now = self.now(attached, matcher, read_programs);
        let before = self.reported.each();
        for (i, (reason, n, what)) in now.each().into_iter().enumerate() {
            let new = n.saturating_sub(before[i].1);
            if new > 0 {
                eprintln!("wstrace: warning: {new} {what} [{reason}]");
                outputs.events_lost(reason, new);
            }
        }
        // Named every 2 s at most (with the programs' counts): one line per
        // process, not one per tick of a sustained flood.
        if read_programs && now.over_budget > self.over_budget_named {
            self.name_over_budget(attached);
            self.over_budget_named = now.over_budget;
        }
        self.reported = now;
    }

    /// Says which processes lost events over their fair share, and how many
    /// since last said: an aggregate per process instead of silence (the
    /// kernel keeps the totals, `PROCESS_BUDGETS`).
    fn name_over_budget(&mut self, attached: &Attached) {
        for (tgid, b) in probes::over_budget_processes(&attached.ebpf) {
            let before = self
                .over_budget_said
                .get(&tgid)
                .copied()
                .unwrap_or_default();
            let Some(line) = over_budget_line(tgid, &before, &b) else {
                continue;
            };
            eprintln!("wstrace: warning: {line}");
            // Bounded like the kernel map it mirrors; a process evicted
            // here is only said again in full.
            if self.over_budget_said.len() >= wstrace_common::BUDGET_PROCESSES as usize {
                self.over_budget_said.clear();
            }
            self.over_budget_said.insert(tgid, b);
        }
    }

    /// The totals at exit, once the programs are unloaded: their skipped
    /// runs are final as last read.
    pub(super) fn say_totals(&self, attached: &Attached, matcher: &Matcher, max_sockets: u32) {
        let total = self.now(attached, matcher, false);
        for (reason, n, what) in total.each() {
            match reason {
                _ if n == 0 => {}
                "ring_full" => {
                    eprintln!("wstrace: {n} events were lost in total (ring buffer full)")
                }
                "max_sockets" => eprintln!(
                    "wstrace: {n} upgraded socket(s) were evicted in total (--max-sockets={max_sockets})"
                ),
                _ => eprintln!("wstrace: in total: {n} {what} [{reason}]"),
            }
        }
        let e = self.stacks_elided;
        if e.budget + e.ring_full > 0 {
            eprintln!(
                "wstrace: {} close(s) were reported without a user stack copy of their own: {} over their call site's {} copies a second (each names the site's last copy), {} with the stack ring full",
                e.budget + e.ring_full,
                e.budget,
                wstrace_common::STACK_COPIES_PER_SITE,
                e.ring_full
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(dropped: u32, closes: u32, upgrades: u32) -> ProcessBudget {
        ProcessBudget {
            dropped,
            dropped_closes: closes,
            dropped_upgrades: upgrades,
            ..ProcessBudget::default()
        }
    }

    #[test]
    fn over_budget_line_says_what_is_new_per_process() {
        let none = ProcessBudget::default();
        assert_eq!(over_budget_line(7, &none, &none), None);
        let first = budget(10, 4, 3);
        let line = over_budget_line(7, &none, &first).expect("new drops");
        assert!(line.starts_with("pid 7: 10 event(s) not sent"), "{line}");
        assert!(line.contains("4 close(s) not reported, 3 connection(s) not traced"));
        // Only what is new since last said.
        assert_eq!(over_budget_line(7, &first, &first), None);
        let line = over_budget_line(7, &first, &budget(15, 6, 3)).expect("more");
        assert!(
            line.contains(": 5 event(s)") && line.contains("2 close(s)"),
            "{line}"
        );
        // The kernel evicted and remade the entry: its totals restart.
        let line = over_budget_line(7, &budget(15, 6, 3), &budget(2, 1, 0)).expect("restart");
        assert!(
            line.contains(": 2 event(s)") && line.contains("1 close(s)"),
            "{line}"
        );
    }
}
