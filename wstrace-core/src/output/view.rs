//! The enriched report every printer reads: a `CloseReport` with the
//! stacks symbolized, the request and frames parsed, the process described
//! and the diagnosis made.
use std::ops::Deref;
use std::time::SystemTime;

use crate::diagnose::Diagnosis;
use crate::enrich::Enriched;

/// An enriched report and its diagnosis: what every printer reads. Derefs
/// to the [`Enriched`] report, so printers read `v.report`, `v.kernel_stack`.
pub struct View<'a> {
    pub enriched: Enriched<'a>,
    pub diagnosis: Diagnosis,
}

impl<'a> Deref for View<'a> {
    type Target = Enriched<'a>;
    fn deref(&self) -> &Enriched<'a> {
        &self.enriched
    }
}

/// RFC 3339 in UTC with microseconds, as both outputs print it.
pub fn rfc3339(ts: SystemTime) -> String {
    humantime::format_rfc3339_micros(ts).to_string()
}
