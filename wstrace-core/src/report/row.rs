//! One close as `wstrace report` lists it, its values bounded: shared by
//! the summary (`summary.rs`) and the chains joined across hosts
//! (`chains.rs`), which both keep rows.

/// Characters kept of any one value taken from a report (a program, host,
/// address, diagnosis code): enough for any real path, bounded for a
/// hostile one.
pub const FIELD_CHARS: usize = 200;

/// One close as the HTML table lists it; values raw (escaped when
/// written) and cut at `FIELD_CHARS`.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub ts: String,
    pub host: String,
    pub local: String,
    pub remote: String,
    pub closed_by: String,
    pub how: String,
    pub comm: String,
    pub pid: Option<u32>,
    /// The `by_program` key of this close.
    pub program: String,
    /// The `by_pod` key: `namespace/pod`, `container NAME`, or empty.
    pub pod: String,
    pub ms_after_upgrade: Option<f64>,
    pub diagnosis: String,
}

/// `s` cut at `FIELD_CHARS` characters, with `…` when cut.
pub fn clip(s: &str) -> String {
    clip_to(s, FIELD_CHARS)
}

pub fn clip_to(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}
