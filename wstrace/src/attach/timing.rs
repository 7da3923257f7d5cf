//! Where start-up time goes: each loading, verifying and attaching step's
//! wall time, kept for the one line start-up prints when it was slow.
//!
//! Start-up is seconds on a busy host and can be a minute on an old kernel
//! under emulation (5.10's verifier in a QEMU TCG guest): the user, and the
//! kernel matrix's timing lines, need to know which step it was. The steps
//! run on the start-up thread only, one after another, so a thread-local
//! list is enough and costs nothing once tracing.
use std::{
    cell::RefCell,
    time::{Duration, Instant},
};

thread_local! {
    static STEPS: RefCell<Vec<Step>> = const { RefCell::new(Vec::new()) };
}

/// One timed start-up step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// What it did, e.g. `load sys_exit_read` (verification is the load).
    pub what: String,
    pub took: Duration,
}

/// Runs `f` and records its wall time under `what`.
pub fn timed<T>(what: impl FnOnce() -> String, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    let took = start.elapsed();
    STEPS.with(|s| s.borrow_mut().push(Step { what: what(), took }));
    out
}

/// The steps recorded on this thread so far, in order; the list is emptied.
pub fn take() -> Vec<Step> {
    STEPS.with(|s| std::mem::take(&mut *s.borrow_mut()))
}

/// Start-ups shorter than this are not explained.
pub const SLOW: Duration = Duration::from_secs(5);

/// How many of the slowest steps the line names.
const NAMED: usize = 6;

/// `<label> 23.4 s: load sys_exit_read 9.1 s, attach ... ; N other
/// step(s) 1.2 s`: the slowest steps first, the rest summed.
pub fn summary(label: &str, total: Duration, steps: &[Step]) -> String {
    let mut by_time: Vec<&Step> = steps.iter().collect();
    by_time.sort_by_key(|s| std::cmp::Reverse(s.took));
    let named: Vec<String> = by_time
        .iter()
        .take(NAMED)
        .map(|s| format!("{} {:.1} s", s.what, s.took.as_secs_f64()))
        .collect();
    let rest: Duration = by_time.iter().skip(NAMED).map(|s| s.took).sum();
    let others = by_time.len().saturating_sub(NAMED);
    let mut out = format!("{label} {:.1} s", total.as_secs_f64());
    if !named.is_empty() {
        out.push_str(": ");
        out.push_str(&named.join(", "));
    }
    if others > 0 {
        out.push_str(&format!(
            "; {others} other step(s) {:.1} s",
            rest.as_secs_f64()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(what: &str, ms: u64) -> Step {
        Step {
            what: what.into(),
            took: Duration::from_millis(ms),
        }
    }

    #[test]
    fn the_slowest_steps_come_first_and_the_rest_is_summed() {
        let steps: Vec<Step> = (0..8).map(|i| step(&format!("s{i}"), i * 100)).collect();
        assert_eq!(
            summary("start-up took", Duration::from_millis(9_000), &steps),
            "start-up took 9.0 s: s7 0.7 s, s6 0.6 s, s5 0.5 s, s4 0.4 s, s3 0.3 s, s2 0.2 s; \
             2 other step(s) 0.1 s"
        );
    }

    #[test]
    fn few_steps_name_them_all() {
        assert_eq!(
            summary(
                "took",
                Duration::from_millis(6_000),
                &[step("load a", 5_500)]
            ),
            "took 6.0 s: load a 5.5 s"
        );
        assert_eq!(
            summary("start-up took", Duration::from_secs(6), &[]),
            "start-up took 6.0 s"
        );
    }

    #[test]
    fn timed_records_in_order_and_take_empties() {
        let _ = take();
        let v = timed(|| "first".into(), || 7);
        timed(|| "second".into(), || ());
        assert_eq!(v, 7);
        let steps = take();
        assert_eq!(
            steps.iter().map(|s| s.what.as_str()).collect::<Vec<_>>(),
            ["first", "second"]
        );
        assert!(take().is_empty());
    }
}
