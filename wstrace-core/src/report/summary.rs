//! The post-mortem summary: recorded reports filtered, counted per
//! diagnosis (with an example close), per program, pid and host, the top
//! closing stacks, lifetime percentiles and a time line per diagnosis; the
//! first `ROWS_KEPT` closes are kept for the HTML table. Pure (bytes in,
//! text or JSON out), so it is unit-tested on strings.
//!
//! Memory does not grow with the input: lines are read one at a time and
//! capped at `MAX_LINE` bytes (a longer line is counted as malformed while
//! it is skipped, never held), each report is folded into counters as it is
//! read, the counters keep at most `TALLY_BYTES` of distinct keys each (the
//! rest counted as "other"), lifetimes are kept exactly up to
//! `LIFETIME_SAMPLE` values and sampled beyond, only the first
//! `MALFORMED_SHOWN` malformed lines are kept for naming, and only the
//! first `ROWS_KEPT` closes are listed, each field cut at `FIELD_CHARS`.
use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    io::{self, BufRead},
    time::SystemTime,
};

use serde_json::Value;

use crate::model::{Frame, FrameKind};
use crate::output::escape::text as esc;
use crate::output::frame;
use crate::report::chains::Chains;
use crate::report::frames;
pub use crate::report::row::{FIELD_CHARS, Row, clip, clip_to};

/// Longest line read as a report; a close report with full stacks, command
/// line and request head is tens of KiB.
pub const MAX_LINE: usize = 1024 * 1024;

/// Bytes of distinct keys (with their per-entry overhead) one counter keeps.
pub const TALLY_BYTES: usize = 16 * 1024 * 1024;

/// Lifetimes kept exactly; beyond, a uniform sample of this many.
pub const LIFETIME_SAMPLE: usize = 1 << 20;

/// Malformed lines named in the summary (all are counted).
pub const MALFORMED_SHOWN: usize = 20;

/// Closes listed one by one (the HTML table); later ones are counted.
pub const ROWS_KEPT: usize = 5000;

/// Distinct pids counted per program; beyond, the count is a lower bound.
pub const PIDS_PER_GROUP: usize = 4096;

/// Diagnosis codes that keep an example close.
const EXAMPLES_KEPT: usize = 64;

/// Which closes a summary counts; the default counts every one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filters {
    pub since: Option<SystemTime>,
    pub until: Option<SystemTime>,
    pub port: Option<u16>,
    pub pid: Option<u32>,
}

/// Counts per key, keeping at most `TALLY_BYTES` of distinct keys; a key
/// that does not fit is counted in `other`. Each key may carry the first
/// `note` seen with it (the fix of a diagnosis).
#[derive(Default, Debug)]
pub struct Tally {
    entries: HashMap<String, (u64, Option<String>)>,
    bytes: usize,
    /// Counted, but under no key: the distinct keys filled the budget.
    pub other: u64,
}

/// Per-entry cost of the map besides the key's own bytes.
const ENTRY_OVERHEAD: usize = 64;

impl Tally {
    pub fn add(&mut self, key: String, note: impl FnOnce() -> Option<String>) {
        if let Some(e) = self.entries.get_mut(&key) {
            e.0 += 1;
            return;
        }
        let note = note();
        let cost = key.len() + note.as_ref().map_or(0, String::len) + ENTRY_OVERHEAD;
        if self.bytes + cost > TALLY_BYTES {
            self.other += 1;
            return;
        }
        self.bytes += cost;
        self.entries.insert(key, (1, note));
    }

    /// Most counted first, then by key.
    pub fn sorted(&self) -> Vec<(&str, u64)> {
        let mut v: Vec<(&str, u64)> = self
            .entries
            .iter()
            .map(|(k, e)| (k.as_str(), e.0))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        v
    }

    /// By key.
    pub fn by_key(&self) -> Vec<(&str, u64)> {
        let mut v: Vec<(&str, u64)> = self
            .entries
            .iter()
            .map(|(k, e)| (k.as_str(), e.0))
            .collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        v
    }

    /// Counted under its own key (not in `other`).
    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    pub fn note(&self, key: &str) -> Option<&str> {
        self.entries.get(key).and_then(|e| e.1.as_deref())
    }
}

/// What the closers are grouped by (`--by`): the executable (what an
/// operator fixes), each process, or the host the log came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum GroupBy {
    Pid,
    #[default]
    Program,
    Host,
}

/// One group of closes: how many, by how many distinct pids (counted up
/// to `PIDS_PER_GROUP`) and the first comm seen.
#[derive(Default, Debug)]
pub struct Group {
    pub closes: u64,
    pids: HashSet<u32>,
    /// More distinct pids than `PIDS_PER_GROUP` were seen.
    pub pids_capped: bool,
    pub comm: String,
}

impl Group {
    pub fn pids(&self) -> usize {
        self.pids.len()
    }
}

/// Closes per key with their pids, keeping at most `TALLY_BYTES` of keys
/// and pids; a key that does not fit is counted in `other`.
#[derive(Default, Debug)]
pub struct Groups {
    entries: HashMap<String, Group>,
    bytes: usize,
    pub other: u64,
}

impl Groups {
    pub fn add(&mut self, key: &str, pid: Option<u32>, comm: &str) {
        let g = match self.entries.get_mut(key) {
            Some(g) => g,
            None => {
                let cost = key.len() + comm.len() + ENTRY_OVERHEAD;
                if self.bytes + cost > TALLY_BYTES {
                    self.other += 1;
                    return;
                }
                self.bytes += cost;
                self.entries.entry(key.to_string()).or_insert(Group {
                    comm: comm.to_string(),
                    ..Group::default()
                })
            }
        };
        g.closes += 1;
        if let Some(pid) = pid {
            if g.pids.len() >= PIDS_PER_GROUP || self.bytes + 16 > TALLY_BYTES {
                g.pids_capped |= !g.pids.contains(&pid);
            } else if g.pids.insert(pid) {
                self.bytes += 16;
            }
        }
    }

    /// Most closes first, then by key.
    pub fn sorted(&self) -> Vec<(&str, &Group)> {
        let mut v: Vec<(&str, &Group)> =
            self.entries.iter().map(|(k, g)| (k.as_str(), g)).collect();
        v.sort_by(|a, b| b.1.closes.cmp(&a.1.closes).then(a.0.cmp(b.0)));
        v
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The first close seen with a diagnosis, shown under its headline.
#[derive(Debug, Clone, Default)]
pub struct Example {
    pub row: Row,
    pub message: String,
    /// `GET /ws HTTP/1.0` (the target as recorded, already redacted).
    pub request_line: Option<String>,
}

/// Connection lifetimes: every value up to `LIFETIME_SAMPLE`, then a
/// uniform sample of that size (reservoir sampling, fixed seed so a report
/// is reproducible); the maximum is always exact.
#[derive(Default, Debug)]
pub struct Lifetimes {
    sample: Vec<f64>,
    pub seen: u64,
    pub max: f64,
    rng: u64,
}

impl Lifetimes {
    fn add(&mut self, ms: f64) {
        self.seen += 1;
        if self.seen == 1 || ms > self.max {
            self.max = ms;
        }
        if self.sample.len() < LIFETIME_SAMPLE {
            self.sample.push(ms);
            return;
        }
        // xorshift64*: any fixed generator does.
        if self.rng == 0 {
            self.rng = 0x9e37_79b9_7f4a_7c15;
        }
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let j = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) % self.seen;
        if let Some(slot) = self.sample.get_mut(j as usize) {
            *slot = ms;
        }
    }

    pub fn sorted(&self) -> Vec<f64> {
        let mut v = self.sample.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    pub fn is_sampled(&self) -> bool {
        self.seen > self.sample.len() as u64
    }
}

/// A close's pod (`namespace/pod`) or, outside Kubernetes, its container
/// (`container NAME`), from the report's `k8s` and `container` objects.
pub fn pod_key(v: &Value) -> String {
    let s = |p: &str| {
        v.pointer(p)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    match (s("/k8s/namespace"), s("/k8s/pod"), s("/container/name")) {
        (ns, Some(pod), _) => format!("{}/{pod}", ns.unwrap_or("?")),
        (_, None, Some(name)) => format!("container {name}"),
        _ => String::new(),
    }
}

/// What the summary is built from.
#[derive(Default, Debug)]
pub struct Summary {
    /// Lines that were not blank.
    pub lines: u64,
    /// Reports kept by the filters.
    pub closes: u64,
    pub filtered_out: u64,
    /// Lines that are not reports (too long, not JSON, no `closed_by`).
    pub malformed: u64,
    /// The first `MALFORMED_SHOWN` of them: (file, line number, why).
    pub malformed_first: Vec<(String, u64, String)>,
    pub first: Option<SystemTime>,
    pub last: Option<SystemTime>,
    /// Diagnosis code, with the fix of its first report as note.
    pub by_diagnosis: Tally,
    /// The first close of each diagnosis (up to `EXAMPLES_KEPT` codes).
    pub examples: HashMap<String, Example>,
    pub by_side: Tally,
    /// `comm (pid N) exe`, one entry per process.
    pub by_process: Tally,
    /// The executable (or the comm when it is unknown).
    pub by_program: Groups,
    /// The report's `host`, or the log's file name for reports without one.
    pub by_host: Groups,
    /// Kubernetes `namespace/pod` (`k8s`), else `container NAME` for a
    /// closer in a container outside Kubernetes; closes in neither are not
    /// counted here.
    pub by_pod: Groups,
    /// Frame keys (escaped) joined by newlines.
    pub stacks: Tally,
    pub per_minute: Tally,
    /// Closes per minute and diagnosis: `<minute>\n<code>`.
    pub timeline: Tally,
    /// Flame-graph paths: comm, then the user frames root first, then the
    /// kernel frames (see `report::html`).
    pub folded: Flame,
    /// The first `ROWS_KEPT` closes.
    pub rows: Vec<Row>,
    /// Closes counted beyond `ROWS_KEPT`, not listed.
    pub rows_dropped: u64,
    pub lifetimes: Lifetimes,
    /// Reports of proxy chains, by `chain.id`, joined across hosts when
    /// rendered (`report::chains`).
    pub chains: Chains,
}

/// One line read by `read_line_capped`.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// In the buffer (without its newline).
    Whole,
    /// Longer than the cap: skipped, its length counted; not in the buffer.
    TooLong(u64),
    End,
}

/// Reads up to the next newline into `buf`, keeping at most `max` bytes: a
/// longer line is read through and dropped, so memory stays at `max`.
fn read_line_capped(r: &mut impl BufRead, buf: &mut Vec<u8>, max: usize) -> io::Result<Line> {
    buf.clear();
    let mut total = 0u64;
    let mut too_long = false;
    loop {
        let avail = match r.fill_buf() {
            Ok(a) => a,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            return Ok(match (total, too_long) {
                (0, _) => Line::End,
                (n, true) => Line::TooLong(n),
                (_, false) => Line::Whole,
            });
        }
        let newline = avail.iter().position(|&b| b == b'\n');
        let chunk = &avail[..newline.unwrap_or(avail.len())];
        total += chunk.len() as u64;
        if !too_long {
            if buf.len() + chunk.len() > max {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(chunk);
            }
        }
        let used = chunk.len() + usize::from(newline.is_some());
        r.consume(used);
        if newline.is_some() {
            return Ok(if too_long {
                Line::TooLong(total)
            } else {
                Line::Whole
            });
        }
    }
}

impl Summary {
    /// Reads `r` to its end, line by line. A read error (a truncated gzip)
    /// ends this input and is named like a malformed line; what was read
    /// before it counts.
    pub fn add_reader(&mut self, name: &str, mut r: impl BufRead, f: &Filters) {
        let mut buf = Vec::new();
        let mut lineno = 0u64;
        loop {
            lineno += 1;
            match read_line_capped(&mut r, &mut buf, MAX_LINE) {
                Ok(Line::End) => break,
                Ok(Line::Whole) => self.add_line(name, lineno, &buf, f),
                Ok(Line::TooLong(n)) => {
                    self.lines += 1;
                    self.note_malformed(
                        name,
                        lineno,
                        format!(
                            "line of {n} bytes, longer than {} MiB: skipped",
                            MAX_LINE >> 20
                        ),
                    );
                }
                Err(e) => {
                    self.note_malformed(name, lineno, format!("the input ends early: {e}"));
                    break;
                }
            }
        }
    }

    /// `add_reader` over text in memory.
    #[cfg(test)]
    pub fn add_text(&mut self, name: &str, text: &str, f: &Filters) {
        self.add_reader(name, text.as_bytes(), f);
    }

    fn note_malformed(&mut self, name: &str, lineno: u64, why: String) {
        self.malformed += 1;
        if self.malformed_first.len() < MALFORMED_SHOWN {
            self.malformed_first.push((name.to_string(), lineno, why));
        }
    }

    fn add_line(&mut self, name: &str, lineno: u64, line: &[u8], f: &Filters) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        self.lines += 1;
        let text = String::from_utf8_lossy(line);
        let v: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                self.note_malformed(name, lineno, e.to_string());
                return;
            }
        };
        if v.get("closed_by").and_then(Value::as_str).is_none() {
            self.note_malformed(name, lineno, "not a close report (no closed_by)".into());
            return;
        }
        if keep(&v, f) {
            self.add_close_from(&v, name);
        } else {
            self.filtered_out += 1;
        }
    }

    /// Folds one report into the counters.
    #[cfg(test)]
    pub fn add_close(&mut self, v: &Value) {
        self.add_close_from(v, "-");
    }

    /// Folds one report read from the log `source` into the counters.
    pub fn add_close_from(&mut self, v: &Value, source: &str) {
        self.closes += 1;
        let t = ts(v);
        if let Some(t) = t {
            self.first = Some(self.first.map_or(t, |f| f.min(t)));
            self.last = Some(self.last.map_or(t, |l| l.max(t)));
        }
        let code = clip(
            v.pointer("/diagnosis/code")
                .and_then(Value::as_str)
                .unwrap_or("(none)"),
        );
        self.by_diagnosis.add(code.clone(), || {
            v.pointer("/diagnosis/fix")
                .and_then(Value::as_str)
                .map(|fix| clip_to(fix, 4 * FIELD_CHARS))
        });
        let pid = v
            .get("pid")
            .and_then(Value::as_u64)
            .and_then(|p| u32::try_from(p).ok());
        let comm = v.get("comm").and_then(Value::as_str).unwrap_or("");
        let program = clip(match (pid, v.get("exe").and_then(Value::as_str)) {
            (None, _) => "(no local process)",
            (Some(_), Some(exe)) if !exe.is_empty() => exe,
            (Some(_), _) if !comm.is_empty() => comm,
            (Some(_), _) => "(unknown program)",
        });
        let host = clip(match v.get("host").and_then(Value::as_str) {
            Some(h) if !h.is_empty() => h,
            _ => source_host(source),
        });
        self.by_program.add(&program, pid, comm);
        self.by_host.add(&host, pid, "");
        let pod = clip(&pod_key(v));
        if !pod.is_empty() {
            self.by_pod.add(&pod, pid, comm);
        }
        let row = Row {
            ts: clip(v.get("ts").and_then(Value::as_str).unwrap_or("")),
            host,
            local: clip(str_of(v, "local")),
            remote: clip(str_of(v, "remote")),
            closed_by: clip(str_of(v, "closed_by")),
            how: clip(str_of(v, "how")),
            comm: clip(comm),
            pid,
            program,
            pod,
            ms_after_upgrade: v.get("ms_after_upgrade").and_then(Value::as_f64),
            diagnosis: code.clone(),
        };
        if self.by_diagnosis.contains(&code)
            && !self.examples.contains_key(&code)
            && self.examples.len() < EXAMPLES_KEPT
        {
            let request_line = v.get("request").filter(|r| r.is_object()).map(|r| {
                clip_to(
                    &format!(
                        "{} {} {}",
                        str_of(r, "method"),
                        str_of(r, "target"),
                        str_of(r, "version")
                    ),
                    2 * FIELD_CHARS,
                )
            });
            let message = clip_to(
                v.pointer("/diagnosis/message")
                    .and_then(Value::as_str)
                    .unwrap_or(""),
                4 * FIELD_CHARS,
            );
            self.examples.insert(
                code.clone(),
                Example {
                    row: row.clone(),
                    message,
                    request_line,
                },
            );
        }
        self.by_side.add(
            format!(
                "closed by {} ({})",
                str_of(v, "closed_by"),
                str_of(v, "how")
            ),
            || None,
        );
        let process = match v.get("pid").and_then(Value::as_u64) {
            Some(pid) => format!(
                "{} (pid {pid}) {}",
                str_of(v, "comm"),
                v.get("exe").and_then(Value::as_str).unwrap_or("")
            ),
            None => "(no local process)".into(),
        };
        self.by_process.add(process, || None);
        let user = frames::stack(v, "user_stack", FrameKind::Native);
        if !user.is_empty() {
            // Escaped before joining: a newline inside a frame cannot split it.
            let key = user
                .iter()
                .map(|f| esc(&frame::key(f)).into_owned())
                .collect::<Vec<_>>()
                .join("\n");
            self.stacks.add(key, || None);
        }
        // The flame graph: comm, then frames root first (stacks are
        // innermost first), user then kernel.
        let mut path: Vec<Frame> = user.into_iter().rev().map(bounded).collect();
        path.extend(
            frames::stack(v, "kernel_stack", FrameKind::Kernel)
                .into_iter()
                .rev()
                .map(bounded),
        );
        let comm = if pid.is_none() {
            "(no local process)"
        } else {
            &row.comm
        };
        self.folded.add(FlamePath {
            comm: comm.to_string(),
            frames: path,
        });
        let minute = match t {
            Some(t) => {
                let full = humantime::format_rfc3339_seconds(t).to_string();
                full.get(..16).unwrap_or(&full).to_string()
            }
            None => "(no time)".into(),
        };
        self.timeline.add(format!("{minute}\n{code}"), || None);
        self.per_minute.add(minute, || None);
        self.chains.add(v, &row);
        if self.rows.len() < ROWS_KEPT {
            self.rows.push(row);
        } else {
            self.rows_dropped += 1;
        }
        if let Some(ms) = v.get("ms_after_upgrade").and_then(Value::as_f64) {
            self.lifetimes.add(ms);
        }
    }
}

/// The host of reports without a `host` key: their log's file name with
/// its directory (logs collected from a fleet sit in one directory per
/// host, all named `closes.jsonl`), less the rotation and compression
/// suffixes (`/srv/logs/web1/closes.jsonl.2.gz` -> `web1/closes.jsonl`), so
/// a host's rotated logs count as one host.
pub fn source_host(source: &str) -> &str {
    let mut s = source.strip_suffix(".gz").unwrap_or(source);
    if let Some((head, n)) = s.rsplit_once('.')
        && !n.is_empty()
        && n.bytes().all(|b| b.is_ascii_digit())
    {
        s = head;
    }
    let mut slashes = s.char_indices().rev().filter(|(_, c)| *c == '/');
    match slashes.nth(1) {
        Some((i, _)) => &s[i + 1..],
        None => s,
    }
}

fn ts(v: &Value) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(v.get("ts")?.as_str()?).ok()
}

fn local_port(v: &Value) -> Option<u16> {
    v.get("local")?.as_str()?.rsplit_once(':')?.1.parse().ok()
}

fn keep(v: &Value, f: &Filters) -> bool {
    let t = ts(v);
    if let Some(since) = f.since
        && t.is_none_or(|t| t < since)
    {
        return false;
    }
    if let Some(until) = f.until
        && t.is_none_or(|t| t >= until)
    {
        return false;
    }
    if f.port.is_some() && local_port(v) != f.port {
        return false;
    }
    if f.pid.is_some() && v.get("pid").and_then(Value::as_u64) != f.pid.map(u64::from) {
        return false;
    }
    true
}

/// A frame for the flame graph: its strings cut to `4 * FIELD_CHARS`
/// characters (a hostile log's names cost bounded memory), its offset
/// dropped and, when it has a name, its address (the same call path
/// groups across builds and processes, and with frames of old logs).
fn bounded(f: Frame) -> Frame {
    let cut = |s: Option<String>| s.map(|s| clip_to(&s, 4 * FIELD_CHARS));
    let address = if f.function.is_some() {
        None
    } else {
        f.address
    };
    Frame {
        function: cut(f.function),
        module: cut(f.module),
        file: cut(f.file),
        offset: None,
        address,
        ..f
    }
}

/// One flame-graph path: the closing program's comm, then its frames
/// root first.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FlamePath {
    pub comm: String,
    pub frames: Vec<Frame>,
}

impl FlamePath {
    /// What the path holds in memory, about.
    fn cost(&self) -> usize {
        self.comm.len()
            + self
                .frames
                .iter()
                .map(|f| {
                    [&f.function, &f.module, &f.file]
                        .iter()
                        .map(|s| s.as_ref().map_or(0, String::len))
                        .sum::<usize>()
                        + ENTRY_OVERHEAD
                })
                .sum::<usize>()
    }
}

/// Flame-graph paths and how many closes took each, within
/// [`TALLY_BYTES`] like a [`Tally`].
#[derive(Debug, Default)]
pub struct Flame {
    entries: HashMap<FlamePath, u64>,
    bytes: usize,
    /// Counted, but under no path: the distinct paths filled the budget.
    pub other: u64,
}

impl Flame {
    pub fn add(&mut self, path: FlamePath) {
        if let Some(n) = self.entries.get_mut(&path) {
            *n += 1;
            return;
        }
        let cost = path.cost() + ENTRY_OVERHEAD;
        if self.bytes + cost > TALLY_BYTES {
            self.other += 1;
            return;
        }
        self.bytes += cost;
        self.entries.insert(path, 1);
    }

    /// Every path with its count, in no particular order.
    pub fn paths(&self) -> impl Iterator<Item = (&FlamePath, u64)> {
        self.entries.iter().map(|(p, n)| (p, *n))
    }
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn str_of<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("?")
}

/// The entries of `t`, most counted first, with what did not fit last.
fn rows(t: &Tally) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = t
        .sorted()
        .into_iter()
        .map(|(k, c)| (k.to_string(), c))
        .collect();
    if t.other > 0 {
        v.push((
            format!(
                "(others: more than {} MiB of distinct values, not told apart)",
                TALLY_BYTES >> 20
            ),
            t.other,
        ));
    }
    v
}

fn share(c: u64, n: u64) -> f64 {
    if n == 0 {
        0.0
    } else {
        c as f64 * 100.0 / n as f64
    }
}

/// `count share  key  (comm, N pids)`, the ten largest groups and what is
/// left.
fn group_lines(o: &mut String, g: &Groups, n: u64, with_comm: bool) {
    let all = g.sorted();
    for (k, grp) in all.iter().take(10) {
        let _ = write!(
            o,
            "  {:>6} {:>5.1}%  {}",
            grp.closes,
            share(grp.closes, n),
            esc(k)
        );
        let pids = pid_count(grp);
        match (
            with_comm && !grp.comm.is_empty() && grp.comm != *k,
            grp.pids(),
        ) {
            (_, 0) => {}
            (true, _) => {
                let _ = write!(o, "  ({}, {pids})", esc(&grp.comm));
            }
            (false, _) => {
                let _ = write!(o, "  ({pids})");
            }
        }
        o.push('\n');
    }
    if all.len() > 10 {
        let rest: u64 = all[10..].iter().map(|(_, g)| g.closes).sum();
        let _ = writeln!(
            o,
            "  {rest:>6} {:>5.1}%  ({} more)",
            share(rest, n),
            all.len() - 10
        );
    }
    if g.other > 0 {
        let _ = writeln!(
            o,
            "  {:>6} {:>5.1}%  (others: more than {} MiB of distinct values, not told apart)",
            g.other,
            share(g.other, n),
            TALLY_BYTES >> 20
        );
    }
}

/// `1 pid`, `3 pids`, `at least 4096 pids`.
pub fn pid_count(g: &Group) -> String {
    let n = g.pids();
    format!(
        "{}{n} pid{}",
        if g.pids_capped { "at least " } else { "" },
        if n == 1 { "" } else { "s" }
    )
}

/// The summary as one JSON object (`--format json`), for other tools:
/// the same numbers as the text. Values are as recorded (JSON escaping,
/// with C1 and bidi controls as `\u` escapes as in the daemon's JSON),
/// except stack frames, which are as the text shows them.
pub fn render_json(s: &Summary, top: usize, by: GroupBy) -> String {
    use serde_json::json;
    let n = s.closes;
    let time = |t: Option<SystemTime>| t.map(|t| humantime::format_rfc3339_seconds(t).to_string());
    let round = |x: f64| (x * 10.0).round() / 10.0;
    let diagnoses: Vec<Value> = s
        .by_diagnosis
        .sorted()
        .into_iter()
        .map(|(code, c)| {
            let ex = s.examples.get(code);
            json!({
                "code": code,
                "closes": c,
                "share_pct": round(share(c, n)),
                "fix": s.by_diagnosis.note(code),
                "message": ex.map(|e| e.message.as_str()),
                "example": ex.map(|e| json!({
                    "ts": e.row.ts, "host": e.row.host, "local": e.row.local,
                    "remote": e.row.remote, "closed_by": e.row.closed_by, "how": e.row.how,
                    "pid": e.row.pid, "comm": e.row.comm, "program": e.row.program,
                    "request_line": e.request_line,
                })),
            })
        })
        .collect();
    let groups = |g: &Groups| -> Vec<Value> {
        g.sorted()
            .into_iter()
            .map(|(k, grp)| {
                json!({
                    "key": k, "closes": grp.closes, "share_pct": round(share(grp.closes, n)),
                    "comm": grp.comm, "pids": grp.pids(), "pids_capped": grp.pids_capped,
                })
            })
            .collect()
    };
    let tally = |t: &Tally| -> Vec<Value> {
        t.sorted()
            .into_iter()
            .map(|(k, c)| json!({"key": k, "closes": c, "share_pct": round(share(c, n))}))
            .collect()
    };
    let groups_json = match by {
        GroupBy::Pid => tally(&s.by_process),
        GroupBy::Program => groups(&s.by_program),
        GroupBy::Host => groups(&s.by_host),
    };
    let life = s.lifetimes.sorted();
    let lifetime = (!life.is_empty()).then(|| {
        json!({
            "p50": percentile(&life, 50.0), "p90": percentile(&life, 90.0),
            "p99": percentile(&life, 99.0), "max": s.lifetimes.max,
            "sampled": s.lifetimes.is_sampled(),
        })
    });
    let mut minutes: Vec<(String, u64, serde_json::Map<String, Value>)> = Vec::new();
    for (k, c) in s.timeline.by_key() {
        let (minute, code) = k.split_once('\n').unwrap_or((k, ""));
        if minutes.last().is_none_or(|m| m.0 != minute) {
            minutes.push((minute.to_string(), 0, serde_json::Map::new()));
        }
        if let Some(m) = minutes.last_mut() {
            m.1 += c;
            m.2.insert(code.to_string(), json!(c));
        }
    }
    let v = json!({
        "closes": n,
        "lines": s.lines,
        "filtered_out": s.filtered_out,
        "malformed": s.malformed,
        "first": time(s.first),
        "last": time(s.last),
        "by_diagnosis": diagnoses,
        "by_side": tally(&s.by_side),
        "by": match by { GroupBy::Pid => "pid", GroupBy::Program => "program", GroupBy::Host => "host" },
        "groups": groups_json,
        "hosts": groups(&s.by_host),
        "pods": groups(&s.by_pod),
        "top_stacks": s.stacks.sorted().into_iter().take(top).map(|(k, c)| json!({
            "closes": c, "frames": k.lines().collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "lifetime_ms": lifetime,
        "per_minute": minutes.into_iter().map(|(m, c, d)| json!({
            "minute": m, "closes": c, "by_diagnosis": d,
        })).collect::<Vec<_>>(),
        "chains": crate::report::chains::to_json(&s.chains),
        "malformed_lines": s.malformed_first.iter().map(|(f, l, why)| json!({
            "file": f, "line": l, "why": why,
        })).collect::<Vec<_>>(),
    });
    let mut out = crate::output::escape::to_json_string(&v).unwrap_or_else(|_| "{}".into());
    out.push('\n');
    out
}

/// The summary as text. Every value taken from the input is escaped
/// (`escape::text`): the logs hold what traced processes and clients sent.
pub fn render(s: &Summary, top: usize, by: GroupBy) -> String {
    let mut o = String::new();
    let n = s.closes;
    let _ = writeln!(
        o,
        "wstrace report: {n} closes ({} lines read, {} filtered out, {} malformed)",
        s.lines, s.filtered_out, s.malformed
    );
    if let (Some(first), Some(last)) = (s.first, s.last) {
        let _ = writeln!(
            o,
            "from {} to {}",
            humantime::format_rfc3339_seconds(first),
            humantime::format_rfc3339_seconds(last)
        );
    }
    let pct = |c: u64| {
        if n == 0 {
            0.0
        } else {
            c as f64 * 100.0 / n as f64
        }
    };

    let _ = writeln!(o, "\nby diagnosis:");
    for (code, c) in rows(&s.by_diagnosis) {
        let _ = writeln!(o, "  {c:>6} {:>5.1}%  {}", pct(c), esc(&code));
        if let Some(fix) = s.by_diagnosis.note(&code) {
            let _ = writeln!(o, "                 fix: {}", esc(fix));
        }
    }

    let _ = writeln!(o, "\nby side and how:");
    for (k, c) in rows(&s.by_side) {
        let _ = writeln!(o, "  {c:>6} {:>5.1}%  {}", pct(c), esc(&k));
    }

    match by {
        GroupBy::Pid => {
            let _ = writeln!(o, "\nby closing process:");
            for (k, c) in rows(&s.by_process).into_iter().take(10) {
                let _ = writeln!(o, "  {c:>6} {:>5.1}%  {}", pct(c), esc(k.trim_end()));
            }
        }
        GroupBy::Program => {
            let _ = writeln!(o, "\nby closing program:");
            group_lines(&mut o, &s.by_program, n, true);
        }
        GroupBy::Host => {}
    }
    // Hosts are listed whenever there are several (and always for --by host).
    if by == GroupBy::Host || s.by_host.len() > 1 {
        let _ = writeln!(o, "\nby host:");
        group_lines(&mut o, &s.by_host, n, false);
    }

    let _ = writeln!(o, "\ntop closing user stacks:");
    for (stack, c) in rows(&s.stacks).into_iter().take(top) {
        let _ = writeln!(o, "  {c:>6} {:>5.1}%", pct(c));
        // Frames were escaped when counted; the newlines are ours.
        for frame in stack.lines() {
            let _ = writeln!(o, "           {frame}");
        }
    }

    let life = s.lifetimes.sorted();
    if !life.is_empty() {
        let _ = write!(
            o,
            "\nlifetime after the 101 (ms): p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}",
            percentile(&life, 50.0),
            percentile(&life, 90.0),
            percentile(&life, 99.0),
            s.lifetimes.max
        );
        if s.lifetimes.is_sampled() {
            let _ = write!(
                o,
                " (percentiles of a sample of {} of {})",
                life.len(),
                s.lifetimes.seen
            );
        }
        o.push('\n');
    }

    let minutes = s.per_minute.by_key();
    if !minutes.is_empty() {
        let _ = writeln!(o, "\nper minute (UTC):");
        let most = minutes.iter().map(|m| m.1).max().unwrap_or(1).max(1);
        for (m, c) in minutes {
            let bar = "#".repeat(((c * 40).div_ceil(most)) as usize);
            let _ = writeln!(o, "  {}  {c:>6} {bar}", esc(m));
        }
        if s.per_minute.other > 0 {
            let _ = writeln!(o, "  (other minutes: {})", s.per_minute.other);
        }
    }

    crate::report::chains::render_text(&mut o, &s.chains);

    if s.malformed > 0 {
        let _ = writeln!(o, "\nmalformed lines (skipped):");
        for (file, line, why) in &s.malformed_first {
            let _ = writeln!(o, "  {}:{line}: {}", esc(file), esc(why));
        }
        let shown = s.malformed_first.len() as u64;
        if s.malformed > shown {
            let _ = writeln!(o, "  ... and {} more", s.malformed - shown);
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(input: &[u8], max: usize) -> Vec<Line> {
        let mut r = io::BufReader::with_capacity(7, input);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        loop {
            let l = read_line_capped(&mut r, &mut buf, max).expect("read");
            assert!(buf.len() <= max);
            let end = l == Line::End;
            out.push(l);
            if end {
                break;
            }
        }
        out
    }

    #[test]
    fn capped_lines() {
        use Line::*;
        assert_eq!(read_all(b"", 10), [End]);
        assert_eq!(read_all(b"abc\n\nxyz", 10), [Whole, Whole, Whole, End]);
        assert_eq!(
            read_all(b"0123456789\n0123456789abc\nok\n", 10),
            [Whole, TooLong(13), Whole, End]
        );
        assert_eq!(read_all(&[0u8; 1000], 10), [TooLong(1000), End]);
        let mut r = io::BufReader::with_capacity(4, &b"0123456789abc\nok\n"[..]);
        let mut buf = Vec::new();
        assert_eq!(
            read_line_capped(&mut r, &mut buf, 10).expect("read"),
            TooLong(13)
        );
        assert!(buf.is_empty(), "a long line is not held");
        assert_eq!(read_line_capped(&mut r, &mut buf, 10).expect("read"), Whole);
        assert_eq!(buf, b"ok");
    }

    #[test]
    fn long_and_junk_lines_are_counted_not_kept() {
        let mut s = Summary::default();
        let mut input = Vec::new();
        input.extend_from_slice(b"{\"closed_by\":\"local\",\"how\":\"fin\"}\n");
        input.extend(std::iter::repeat_n(b'x', MAX_LINE + 1));
        input.push(b'\n');
        for i in 0..1000 {
            input.extend_from_slice(format!("junk {i}\n").as_bytes());
        }
        s.add_reader("in", &input[..], &Filters::default());
        assert_eq!(s.closes, 1);
        assert_eq!(s.malformed, 1001);
        assert_eq!(s.lines, 1002);
        assert_eq!(s.malformed_first.len(), MALFORMED_SHOWN);
        assert_eq!(s.malformed_first[0].1, 2);
        assert!(
            s.malformed_first[0].2.contains("longer than 1 MiB"),
            "{:?}",
            s.malformed_first[0]
        );
        let out = render(&s, 5, GroupBy::Program);
        assert!(
            out.contains("1 closes (1002 lines read, 0 filtered out, 1001 malformed)"),
            "{out}"
        );
        assert!(out.contains("... and 981 more"), "{out}");
    }

    #[test]
    fn a_tally_stops_growing_at_its_budget() {
        let mut t = Tally::default();
        let key = |i: u32| format!("{i:08}{}", "k".repeat(4000));
        let fits = TALLY_BYTES / (4008 + ENTRY_OVERHEAD);
        for i in 0..(fits as u32 + 100) {
            t.add(key(i), || None);
        }
        t.add(key(0), || None);
        assert_eq!(t.entries.len(), fits);
        assert_eq!(t.other, 100);
        assert_eq!(t.sorted()[0], (key(0).as_str(), 2));
    }

    #[test]
    fn listed_closes_and_their_values_are_bounded() {
        let mut s = Summary::default();
        let long = "x".repeat(10 * FIELD_CHARS);
        let line = serde_json::json!({
            "closed_by": "local", "how": "fin", "pid": 1, "comm": long, "exe": long,
            "host": long, "local": long, "remote": long, "ts": "2026-11-24T03:00:00Z",
            "diagnosis": {"code": long, "fix": long, "message": long},
            "request": {"method": "GET", "target": long, "version": "HTTP/1.1"},
        })
        .to_string();
        let text = format!("{line}\n").repeat(ROWS_KEPT + 10);
        s.add_text("in", &text, &Filters::default());
        assert_eq!(s.rows.len(), ROWS_KEPT);
        assert_eq!(s.rows_dropped, 10);
        let r = &s.rows[0];
        for v in [
            &r.comm,
            &r.program,
            &r.host,
            &r.local,
            &r.remote,
            &r.diagnosis,
        ] {
            assert_eq!(v.chars().count(), FIELD_CHARS + 1, "cut, with …");
            assert!(v.ends_with('…'));
        }
        let ex = s.examples.values().next().expect("an example");
        assert!(ex.message.chars().count() <= 4 * FIELD_CHARS + 1);
        assert!(
            ex.request_line
                .as_ref()
                .is_some_and(|l| l.chars().count() <= 2 * FIELD_CHARS + 1)
        );
        assert_eq!(s.by_program.len(), 1);
        assert_eq!(s.by_program.sorted()[0].1.pids(), 1);
    }

    #[test]
    fn pids_per_group_are_counted_up_to_a_cap() {
        let mut g = Groups::default();
        for pid in 0..(PIDS_PER_GROUP as u32 + 5) {
            g.add("/usr/bin/php", Some(pid), "php");
            g.add("/usr/bin/php", Some(pid), "php");
        }
        let (_, grp) = g.sorted()[0];
        assert_eq!(grp.closes, 2 * (PIDS_PER_GROUP as u64 + 5));
        assert_eq!(grp.pids(), PIDS_PER_GROUP);
        assert!(grp.pids_capped);
        assert_eq!(pid_count(grp), format!("at least {PIDS_PER_GROUP} pids"));
    }

    #[test]
    fn lifetimes_are_sampled_beyond_the_cap_with_an_exact_max() {
        let mut l = Lifetimes::default();
        let n = LIFETIME_SAMPLE as u64 * 3;
        for i in 0..n {
            l.add((i % 1000) as f64);
        }
        l.add(5e6);
        assert_eq!(l.sample.len(), LIFETIME_SAMPLE);
        assert_eq!(l.seen, n + 1);
        assert_eq!(l.max, 5e6);
        let sorted = l.sorted();
        let p50 = percentile(&sorted, 50.0);
        assert!((480.0..=520.0).contains(&p50), "p50 {p50}");
        assert!(l.is_sampled());
    }

    #[test]
    fn hostile_values_are_escaped_in_the_summary() {
        let mut s = Summary::default();
        let line = serde_json::json!({
            "closed_by": "local\u{1b}[31m",
            "how": "fin\r",
            "pid": 1,
            "comm": "evil\u{202e}cod",
            "exe": "/tmp/x\ny",
            "diagnosis": {"code": "c\u{1b}]0;t\u{7}", "fix": "f\u{9b}"},
            "user_stack": ["f1\n(fake) (/a)", "f2\u{2066} (/b)"],
            "ts": "2026-11-24T03:00:00Z",
            "ms_after_upgrade": 1.0,
        })
        .to_string();
        s.add_text(
            "file\u{1b}name",
            &format!("{line}\nnot json\u{1b}\n"),
            &Filters::default(),
        );
        let by_pid = render(&s, 5, GroupBy::Pid);
        assert!(
            by_pid.contains("evil\\u{202e}cod (pid 1) /tmp/x\\x0ay\n"),
            "{by_pid}"
        );
        let out = render(&s, 5, GroupBy::Program);
        for l in out.lines().chain(by_pid.lines()) {
            assert!(!l.chars().any(crate::output::escape::is_unsafe), "{l:?}");
        }
        for want in [
            "/tmp/x\\x0ay  (evil\\u{202e}cod, 1 pid)",
            "c\\x1b]0;t\\x07",
            "fix: f\\u{9b}",
            "closed by local\\x1b[31m (fin\\x0d)",
            "           f1\\x0a(fake) (/a)\n",
            "           f2\\u{2066} (/b)\n",
            "file\\x1bname:2:",
        ] {
            assert!(out.contains(want), "missing {want:?} in\n{out}");
        }
    }
}
