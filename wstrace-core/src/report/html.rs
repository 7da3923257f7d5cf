//! `wstrace report --html OUT`: one self-contained page (no network, no
//! external files, no libraries) that leads with the answer. Top to bottom:
//! a headline per diagnosis (count, share, the fix, one example close with
//! its request line), closes per minute stacked by diagnosis, the closing
//! programs with their pid counts, the hosts (when there are several), a
//! flame graph of the close stacks, and a table of every close that sorts by
//! any column and filters by a click on a diagnosis, program or host.
//!
//! Every value comes from logs that hold what traced processes and remote
//! clients sent: it goes through `escape::text` (control and bidi
//! characters made visible, as in the daemon's text output) and then
//! [`h`] (HTML entities), in element text and in quoted attributes alike.
//! The script reads values back only with `getAttribute` and writes them
//! only with `textContent`, so nothing from the logs is ever parsed as
//! markup or code; a Content-Security-Policy forbids any network access.
use std::{collections::HashMap, fmt::Write as _, time::SystemTime};

use crate::model::{Frame, FrameKind};
use crate::output::escape::text as esc;
use crate::output::frame;
use crate::output::text::{Piece, pieces};
use crate::report::summary::{Groups, Summary, percentile, pid_count};

/// Text safe in HTML element content and in a quoted attribute value.
pub fn h(s: &str) -> String {
    let s = esc(s);
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Colours of the diagnoses, in order of their counts (then grey).
const DIAG_COLOURS: &[&str] = &[
    "#d1495b", "#edae49", "#00798c", "#6a4c93", "#66a182", "#30638e", "#f37735", "#8d6e63",
    "#c2185b", "#7cb342",
];
const OTHER_COLOUR: &str = "#9e9e9e";

/// Bars in the time line at most; longer spans put several minutes in one.
const TIMELINE_BARS: u64 = 240;

/// Width of the charts in SVG units (they scale to the page).
const CHART_W: f64 = 1200.0;

/// Height of one flame-graph row.
const FLAME_ROW: f64 = 17.0;
/// Width of a label character at the flame graph's 11px monospace font
/// (DejaVu Sans Mono: 6.6), rounded up so a label never overflows its box.
const FLAME_CHAR_W: f64 = 6.8;
/// Frames drawn at most: narrower frames (and their callees) are left out.
const FLAME_MIN_W: f64 = 0.4;
/// Stack depth drawn at most.
const FLAME_MAX_DEPTH: usize = 256;

/// The page.
pub fn page(s: &Summary) -> String {
    let diag_colour: HashMap<&str, &str> = s
        .by_diagnosis
        .sorted()
        .into_iter()
        .enumerate()
        .map(|(i, (code, _))| (code, *DIAG_COLOURS.get(i).unwrap_or(&OTHER_COLOUR)))
        .collect();
    let colour = |code: &str| *diag_colour.get(code).unwrap_or(&OTHER_COLOUR);
    let mut o = String::with_capacity(64 * 1024 + s.rows.len() * 600);
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>wstrace report: {} closes</title><style>{STYLE}</style></head><body>\n",
        s.closes
    );
    o.push_str(&header(s));
    o.push_str(&headlines(s, &colour));
    if s.closes > 0 {
        o.push_str(&timeline(s, &colour));
        o.push_str("<section id=\"programs\"><h2>Closing programs</h2>");
        o.push_str(&group_table(&s.by_program, s.closes, "program", "program"));
        o.push_str("</section>\n");
        if !s.by_pod.is_empty() {
            o.push_str("<section id=\"pods\"><h2>Pods and containers</h2>");
            o.push_str(&group_table(
                &s.by_pod,
                s.closes,
                "pod",
                "namespace/pod (or container)",
            ));
            o.push_str("</section>\n");
        }
        if s.by_host.len() > 1 {
            o.push_str("<section id=\"hosts\"><h2>Hosts</h2>");
            o.push_str(&group_table(&s.by_host, s.closes, "host", "host"));
            o.push_str("</section>\n");
        }
        o.push_str(
            "<section id=\"flame\"><h2>Where the closes happened</h2>\
             <p class=\"note\">Each box is a function, as wide as the closes that went through it; \
             callers below, callees above. Hover for the module and source line; click to zoom in, \
             click a wider box below to zoom out. \
             Same module, same colour; <span class=\"k\">blue: kernel</span>; \
             dashed outline: <code>[inlined]</code>.</p>",
        );
        o.push_str(&flame_svg(s));
        o.push_str("<p><button id=\"flame-reset\">reset zoom</button></p>");
        o.push_str("</section>\n");
        o.push_str(&chain_table(s, &colour));
        o.push_str(&close_table(s, &colour));
    }
    o.push_str(&malformed(s));
    o.push_str("<script>");
    o.push_str(
        &SCRIPT
            .replace("CHART_W", &CHART_W.to_string())
            .replace("FLAME_CHAR_W", &FLAME_CHAR_W.to_string()),
    );
    o.push_str("</script></body></html>\n");
    o
}

fn header(s: &Summary) -> String {
    let mut o = format!(
        "<p class=\"meta\">wstrace report: <b>{}</b> closes",
        s.closes
    );
    if let (Some(first), Some(last)) = (s.first, s.last) {
        let _ = write!(
            o,
            " from {} to {}",
            humantime::format_rfc3339_seconds(first),
            humantime::format_rfc3339_seconds(last)
        );
    }
    let _ = write!(
        o,
        " on {} host{}",
        s.by_host.len(),
        if s.by_host.len() == 1 { "" } else { "s" }
    );
    let life = s.lifetimes.sorted();
    if !life.is_empty() {
        let _ = write!(
            o,
            "; lifetime after the 101: p50 {} p90 {} max {}",
            ms(percentile(&life, 50.0)),
            ms(percentile(&life, 90.0)),
            ms(s.lifetimes.max)
        );
    }
    let _ = writeln!(
        o,
        " ({} lines read, {} filtered out, {} malformed)</p>",
        s.lines, s.filtered_out, s.malformed
    );
    o
}

/// `0.41 ms`, `12.5 s`, `3.2 min`.
fn ms(v: f64) -> String {
    if v < 1000.0 {
        format!("{v:.2} ms")
    } else if v < 120_000.0 {
        format!("{:.1} s", v / 1000.0)
    } else {
        format!("{:.1} min", v / 60_000.0)
    }
}

fn pct(c: u64, n: u64) -> f64 {
    if n == 0 {
        0.0
    } else {
        c as f64 * 100.0 / n as f64
    }
}

/// One section per diagnosis, most closes first; the first is the page's
/// `<h1>`: what went wrong most often, and its fix, in one heading.
fn headlines(s: &Summary, colour: &dyn Fn(&str) -> &'static str) -> String {
    let mut o = String::from("<section id=\"diagnoses\">\n");
    let sorted = s.by_diagnosis.sorted();
    if sorted.is_empty() {
        o.push_str("<h1>No closes in the selected reports</h1>\n");
    }
    for (i, (code, c)) in sorted.into_iter().enumerate() {
        let tag = if i == 0 { "h1" } else { "h2" };
        let fix = s
            .by_diagnosis
            .note(code)
            .map_or_else(|| "no fix known: see the facts below".to_string(), h);
        let _ = write!(
            o,
            "<div class=\"headline\" data-diag=\"{d}\" style=\"border-color:{col}\">\
             <{tag}><a href=\"#closes\" class=\"code\" data-kind=\"diag\" data-value=\"{d}\">{d}</a>\
             <span class=\"count\"> {c} of {n} closes ({p:.0}%)</span>\
             <span class=\"fix\">Fix: {fix}</span></{tag}>",
            d = h(code),
            col = colour(code),
            n = s.closes,
            p = pct(c, s.closes),
        );
        if let Some(ex) = s.examples.get(code) {
            if !ex.message.is_empty() {
                let _ = write!(o, "<p class=\"why\">{}</p>", h(&ex.message));
            }
            let r = &ex.row;
            let closer = match r.pid {
                Some(pid) => format!("{} (pid {pid}, {})", h(&r.comm), h(&r.program)),
                None => "no local process".into(),
            };
            let _ = write!(
                o,
                "<p class=\"example\">For example: {} on {}: {} ↔ {} closed by {} ({}), closer {closer}",
                h(&r.ts),
                h(&r.host),
                h(&r.local),
                h(&r.remote),
                h(&r.closed_by),
                h(&r.how),
            );
            if let Some(req) = &ex.request_line {
                let _ = write!(o, "; request <code>{}</code>", h(req));
            }
            o.push_str("</p>");
        }
        o.push_str("</div>\n");
    }
    o.push_str("</section>\n");
    o
}

/// `2026-11-24T03:00` as a whole minute since the epoch.
fn minute_number(m: &str) -> Option<u64> {
    let t = humantime::parse_rfc3339_weak(&format!("{m}:00Z")).ok()?;
    Some(t.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs() / 60)
}

fn minute_label(n: u64) -> String {
    let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(n * 60);
    let full = humantime::format_rfc3339_seconds(t).to_string();
    full.get(..16).unwrap_or(&full).replace('T', " ")
}

/// Closes per minute (or per several minutes over long spans), one bar
/// each, stacked by diagnosis in the order of the headlines.
fn timeline(s: &Summary, colour: &dyn Fn(&str) -> &'static str) -> String {
    // (minute number, code) -> closes.
    let mut cells: HashMap<(u64, &str), u64> = HashMap::new();
    let mut untimed = 0;
    let (mut lo, mut hi) = (u64::MAX, 0);
    for (k, c) in s.timeline.by_key() {
        let (m, code) = k.split_once('\n').unwrap_or((k, ""));
        match minute_number(m) {
            Some(n) => {
                *cells.entry((n, code)).or_default() += c;
                lo = lo.min(n);
                hi = hi.max(n);
            }
            None => untimed += c,
        }
    }
    let mut o = String::from("<section id=\"timeline\"><h2>Closes over time</h2>");
    if cells.is_empty() {
        o.push_str("<p class=\"note\">No close has a time.</p></section>\n");
        return o;
    }
    let step = (hi - lo + 1).div_ceil(TIMELINE_BARS).max(1);
    let bars = (hi - lo) / step + 1;
    let order: Vec<&str> = s.by_diagnosis.sorted().into_iter().map(|x| x.0).collect();
    // bar -> closes per diagnosis, in headline order.
    let mut stacks: Vec<HashMap<&str, u64>> = vec![HashMap::new(); bars as usize];
    for ((n, code), c) in &cells {
        if let Some(bar) = stacks.get_mut(((n - lo) / step) as usize) {
            *bar.entry(code).or_default() += c;
        }
    }
    let most = stacks
        .iter()
        .map(|b| b.values().sum::<u64>())
        .max()
        .unwrap_or(1)
        .max(1);
    let (left, top, plot_h) = (40.0, 10.0, 160.0);
    let plot_w = CHART_W - left - 10.0;
    let bar_w = plot_w / bars as f64;
    let _ = write!(
        o,
        "<p class=\"note\">Closes per {} (UTC), stacked by diagnosis.</p>\
         <svg id=\"timeline-chart\" viewBox=\"0 0 {CHART_W} {}\" xmlns=\"http://www.w3.org/2000/svg\" font-family=\"sans-serif\" font-size=\"11\">",
        if step == 1 {
            "minute".to_string()
        } else {
            format!("{step} minutes")
        },
        top + plot_h + 30.0
    );
    let _ = write!(
        o,
        "<line x1=\"{left}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"#888\"/>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{most}</text><text x=\"{}\" y=\"{y}\" text-anchor=\"end\">0</text>",
        left + plot_w,
        left - 4.0,
        top + 10.0,
        left - 4.0,
        y = top + plot_h,
    );
    for (i, bar) in stacks.iter().enumerate() {
        let x = left + i as f64 * bar_w;
        let mut y = top + plot_h;
        let minute = minute_label(lo + i as u64 * step);
        for code in order.iter().chain(std::iter::once(&"")) {
            let Some(&c) = bar.get(code) else { continue };
            let bh = c as f64 / most as f64 * plot_h;
            y -= bh;
            let _ = write!(
                o,
                "<rect x=\"{x:.2}\" y=\"{y:.2}\" width=\"{:.2}\" height=\"{bh:.2}\" fill=\"{}\"><title>{minute}: {c} {}</title></rect>",
                (bar_w - 1.0).max(0.5),
                colour(code),
                h(code)
            );
        }
    }
    // About six time labels along the axis, none cut by the right edge
    // (a label is about 100 units wide).
    let every = (bars / 6).max(1);
    for i in (0..bars).step_by(every as usize) {
        let x = left + i as f64 * bar_w;
        if i > 0 && x + 100.0 > CHART_W {
            break;
        }
        let _ = write!(
            o,
            "<text x=\"{x:.1}\" y=\"{}\">{}</text>",
            top + plot_h + 16.0,
            minute_label(lo + i * step)
        );
    }
    o.push_str("</svg><p class=\"legend\">");
    for code in &order {
        let _ = write!(
            o,
            "<a href=\"#closes\" data-kind=\"diag\" data-value=\"{d}\"><span class=\"swatch\" style=\"background:{}\"></span>{d}</a> ",
            colour(code),
            d = h(code)
        );
    }
    if untimed > 0 {
        let _ = write!(
            o,
            "<span class=\"note\">({untimed} closes without a time)</span>"
        );
    }
    o.push_str("</p></section>\n");
    o
}

/// Programs or hosts: closes, share (with a bar), distinct pids; a row
/// click filters the table.
fn group_table(g: &Groups, n: u64, kind: &str, what: &str) -> String {
    let mut o = format!(
        "<table class=\"groups\" id=\"{kind}-table\"><thead><tr><th>{what}</th>{}<th>closes</th><th>share</th><th>processes</th></tr></thead><tbody>",
        if kind == "program" {
            "<th>comm</th>"
        } else {
            ""
        }
    );
    for (k, grp) in g.sorted() {
        let p = pct(grp.closes, n);
        let _ = write!(
            o,
            "<tr><td><a href=\"#closes\" data-kind=\"{kind}\" data-value=\"{v}\">{v}</a></td>{}<td class=\"num\">{}</td>\
             <td><span class=\"bar\" style=\"width:{:.0}px\"></span> {p:.1}%</td><td>{}</td></tr>",
            if kind == "program" {
                format!("<td>{}</td>", h(&grp.comm))
            } else {
                String::new()
            },
            grp.closes,
            p * 2.0,
            h(&pid_count(grp)),
            v = h(k),
        );
    }
    if g.other > 0 {
        let _ = write!(
            o,
            "<tr><td>(others, not told apart)</td>{}<td class=\"num\">{}</td><td></td><td></td></tr>",
            if kind == "program" { "<td></td>" } else { "" },
            g.other
        );
    }
    o.push_str("</tbody></table>");
    o
}

/// One box of the flame graph, its texts escaped for a terminal (as the
/// text report shows them) and not yet for HTML.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FlameFrame {
    /// The function (`[unknown] 0x…` when unnamed), without offset.
    pub function: String,
    pub module: Option<String>,
    pub location: Option<String>,
    pub inlined: bool,
    pub kernel: bool,
}

/// A close's path (root first: user frames, then kernel frames) as boxes:
/// the user frames folded as the text stack folds them (`… 6 frames in
/// go`: the program's own frames stand out), the kernel's as they are.
fn flame_frames(path: &[Frame]) -> Vec<FlameFrame> {
    let kernel_from = path
        .iter()
        .position(|f| f.kind == FrameKind::Kernel)
        .unwrap_or(path.len());
    let (user, kernel) = path.split_at(kernel_from);
    // `pieces` reads innermost first.
    let innermost_first: Vec<Frame> = user.iter().rev().cloned().collect();
    let mut out: Vec<FlameFrame> = pieces(&innermost_first)
        .into_iter()
        .rev()
        .map(|p| match p {
            Piece::Frame(f) => FlameFrame::of(&f),
            Piece::Run { len, runtimes } => FlameFrame {
                function: esc(&Piece::run_text(len, &runtimes)).into_owned(),
                ..FlameFrame::default()
            },
        })
        .collect();
    out.extend(kernel.iter().map(FlameFrame::of));
    out
}

impl FlameFrame {
    pub fn of(f: &Frame) -> Self {
        Self {
            function: esc(&frame::label(f)).into_owned(),
            module: frame::module_text(f).map(|m| esc(&m).into_owned()),
            location: frame::location(f).map(|l| esc(&l).into_owned()),
            inlined: f.inlined,
            kernel: f.kind == FrameKind::Kernel,
        }
    }

    /// What the graph sorts sibling boxes by: the frame as the folded
    /// stacks print it (`[k] ` first for kernel frames).
    fn sort_key(&self) -> String {
        let mut s = String::new();
        if self.kernel {
            s.push_str("[k] ");
        }
        s.push_str(&self.function);
        if self.inlined {
            s.push_str(" [inlined]");
        }
        if let Some(m) = &self.module {
            let _ = write!(s, " ({m})");
        }
        if let Some(l) = &self.location {
            let _ = write!(s, " at {l}");
        }
        s
    }
}

/// The function name cut to `chars`: whole first, then without its leading
/// `a::b::` path segments, then cut with `…`; empty when not even two
/// characters fit.
pub fn fit_label(name: &str, chars: usize) -> String {
    if name.chars().count() <= chars {
        return name.to_string();
    }
    // Drop leading path segments (outside generics) while it is too long.
    let mut rest = name;
    while rest.chars().count() > chars {
        let mut depth = 0i32;
        let mut cut = None;
        let b = rest.as_bytes();
        for i in 0..b.len().saturating_sub(1) {
            match b[i] {
                b'<' | b'(' | b'[' => depth += 1,
                b'>' | b')' | b']' => depth -= 1,
                b':' if depth == 0 && b[i + 1] == b':' => {
                    cut = Some(i + 2);
                    break;
                }
                _ => {}
            }
        }
        match cut {
            Some(i) if i < rest.len() => rest = &rest[i..],
            _ => break,
        }
    }
    if rest.chars().count() <= chars {
        return rest.to_string();
    }
    if chars < 2 {
        return String::new();
    }
    let kept: String = rest.chars().take(chars - 1).collect();
    format!("{kept}…")
}

/// FNV-1a: a stable colour per module across runs and pages.
fn hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Warm colours for user modules, blues for the kernel, grey for the
/// program row and unknown frames; one colour per module.
fn frame_colour(f: &FlameFrame, root: bool) -> String {
    if root {
        return "#bdbdbd".into();
    }
    if f.function.starts_with("[unknown]") {
        return "#d6d6d6".into();
    }
    if f.kernel {
        let x = hash(f.module.as_deref().unwrap_or("kernel"));
        // One module for the whole kernel: vary by function a little so
        // neighbours stay apart.
        let y = hash(&f.function);
        return format!(
            "hsl({},{}%,{}%)",
            200 + x % 20 + y % 12,
            55 + y % 15,
            62 + y % 10
        );
    }
    let x = hash(f.module.as_deref().unwrap_or(&f.function));
    format!(
        "hsl({},{}%,{}%)",
        x % 50,
        75 + (x >> 8) % 20,
        55 + (x >> 16) % 12
    )
}

#[derive(Default)]
struct Node {
    /// The frame, or the comm (escaped) as function for the root row.
    frame: FlameFrame,
    /// `frame.sort_key()`, kept.
    order: String,
    closes: u64,
    children: Vec<usize>,
    /// Child index by frame identity (the frame without its source line).
    by_id: HashMap<String, usize>,
}

/// The close stacks as a flame graph: one row per stack depth, callers
/// below callees, boxes labelled by function name only.
fn flame_svg(s: &Summary) -> String {
    let mut nodes = vec![Node::default()];
    // Paths in the order of their text, so that a box's first frame (whose
    // source line its tooltip shows) does not depend on hashing.
    let mut paths: Vec<(Vec<FlameFrame>, u64)> = s
        .folded
        .paths()
        .map(|(p, c)| {
            let mut frames = vec![FlameFrame {
                function: esc(&p.comm).into_owned(),
                ..FlameFrame::default()
            }];
            frames.extend(flame_frames(&p.frames));
            (frames, c)
        })
        .collect();
    let text = |p: &[FlameFrame]| -> String {
        p.iter()
            .enumerate()
            .map(|(i, f)| {
                if i == 0 {
                    f.function.clone()
                } else {
                    f.sort_key()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    paths.sort_by_cached_key(|(p, _)| text(p));
    for (path, c) in paths {
        nodes[0].closes += c;
        let mut at = 0;
        for f in path.into_iter().take(FLAME_MAX_DEPTH) {
            // Frames at the same call site share a box whatever their line.
            let id = format!(
                "{}{}\u{0}{}\u{0}{}",
                if f.kernel { "[k] " } else { "" },
                f.function,
                f.module.as_deref().unwrap_or(""),
                f.inlined
            );
            let next = match nodes[at].by_id.get(&id) {
                Some(&i) => i,
                None => {
                    let order = if at == 0 {
                        f.function.clone()
                    } else {
                        f.sort_key()
                    };
                    nodes.push(Node {
                        frame: f,
                        order,
                        ..Node::default()
                    });
                    let i = nodes.len() - 1;
                    nodes[at].children.push(i);
                    nodes[at].by_id.insert(id, i);
                    i
                }
            };
            nodes[next].closes += c;
            at = next;
        }
    }
    if s.folded.other > 0 {
        nodes[0].closes += s.folded.other;
    }
    let total = nodes[0].closes;
    if total == 0 || nodes[0].children.is_empty() {
        return "<p class=\"note\">No close stacks in the selected reports.</p>".into();
    }
    // Depth of the drawn tree (frames wide enough to draw).
    let scale = CHART_W / total as f64;
    let mut depth = 0;
    let mut work = vec![(0usize, 0usize)];
    while let Some((i, d)) = work.pop() {
        depth = depth.max(d);
        for &c in &nodes[i].children {
            if nodes[c].closes as f64 * scale >= FLAME_MIN_W {
                work.push((c, d + 1));
            }
        }
    }
    let height = depth as f64 * FLAME_ROW + 4.0;
    let mut o = format!(
        "<svg id=\"flamegraph\" viewBox=\"0 0 {CHART_W} {height}\" xmlns=\"http://www.w3.org/2000/svg\" font-family=\"DejaVu Sans Mono,monospace\" font-size=\"11\">"
    );
    // (node, x, depth), children left to right by name.
    let mut work: Vec<(usize, f64, usize)> = Vec::new();
    let mut roots = nodes[0].children.clone();
    roots.sort_by(|a, b| nodes[*a].order.cmp(&nodes[*b].order));
    let mut x = 0.0;
    for r in roots {
        work.push((r, x, 1));
        x += nodes[r].closes as f64 * scale;
    }
    while let Some((i, x, d)) = work.pop() {
        let n = &nodes[i];
        let w = n.closes as f64 * scale;
        if w < FLAME_MIN_W {
            continue;
        }
        let root = d == 1;
        let f = &n.frame;
        let y = height - d as f64 * FLAME_ROW;
        let mut tip = h(&f.function);
        if f.inlined {
            tip.push_str(" [inlined]");
        }
        if root {
            tip.push_str("\nprogram (comm)");
        } else if f.kernel {
            tip.push_str("\nkernel");
        }
        if let Some(m) = &f.module {
            let _ = write!(tip, "\nmodule: {}", h(m));
        }
        if let Some(l) = &f.location {
            let _ = write!(tip, "\nat {}", h(l));
        }
        let _ = write!(tip, "\n{} closes ({:.1}%)", n.closes, pct(n.closes, total));
        let class = if root {
            "root"
        } else if f.kernel {
            "kernel"
        } else {
            "user"
        };
        let _ = write!(
            o,
            "<g class=\"{class}{}\" data-d=\"{d}\" data-x=\"{x:.3}\" data-w=\"{w:.3}\" data-name=\"{}\"><title>{tip}</title><rect x=\"{x:.2}\" y=\"{y:.1}\" width=\"{w:.2}\" height=\"{}\" fill=\"{}\"{}/>",
            if f.inlined { " inlined" } else { "" },
            h(&f.function),
            FLAME_ROW - 1.0,
            frame_colour(f, root),
            if f.inlined {
                " stroke=\"#333\" stroke-dasharray=\"3,2\""
            } else {
                ""
            }
        );
        // Every box has its text element, empty when nothing fits: a zoom
        // (the page's script) fills it once the box is wider.
        let chars = ((w - 6.0) / FLAME_CHAR_W).floor().max(0.0) as usize;
        let _ = write!(
            o,
            "<text x=\"{:.2}\" y=\"{:.1}\">{}</text>",
            x + 3.0,
            y + FLAME_ROW - 5.0,
            h(&fit_label(&f.function, chars))
        );
        o.push_str("</g>");
        let mut kids = n.children.clone();
        kids.sort_by(|a, b| nodes[*a].order.cmp(&nodes[*b].order));
        let mut cx = x;
        for c in kids {
            work.push((c, cx, d + 1));
            cx += nodes[c].closes as f64 * scale;
        }
    }
    o.push_str("</svg>");
    o
}

/// Every close (the first `ROWS_KEPT`): sortable by any column, filtered
/// by a click on a diagnosis, program or host anywhere on the page.
fn close_table(s: &Summary, colour: &dyn Fn(&str) -> &'static str) -> String {
    let mut o = String::from(
        "<section id=\"closes\"><h2>Every close</h2>\
         <p id=\"filter-state\" class=\"note\"></p><p><button id=\"clear-filter\" hidden>show all closes</button></p>",
    );
    if s.rows_dropped > 0 {
        let _ = write!(
            o,
            "<p class=\"note\">The first {} closes are listed; {} more are counted above but not listed.</p>",
            s.rows.len(),
            s.rows_dropped
        );
    }
    o.push_str(
        "<table id=\"close-table\"><thead><tr><th data-type=\"text\">time</th><th data-type=\"text\">host</th>\
         <th data-type=\"text\">local</th><th data-type=\"text\">remote</th><th data-type=\"text\">closed by</th>\
         <th data-type=\"text\">closer</th><th data-type=\"num\">lifetime</th><th data-type=\"text\">diagnosis</th></tr></thead><tbody>\n",
    );
    for r in &s.rows {
        let (diag, program, host, pod) = (h(&r.diagnosis), h(&r.program), h(&r.host), h(&r.pod));
        let closer = match r.pid {
            Some(pid) => format!(
                "<a href=\"#closes\" data-kind=\"program\" data-value=\"{program}\" title=\"{program}\">{} ({pid})</a>",
                h(&r.comm)
            ),
            None => "—".into(),
        };
        let (life, life_sort) = match r.ms_after_upgrade {
            Some(v) => (ms(v), format!("{v}")),
            None => ("?".into(), "-1".into()),
        };
        let _ = writeln!(
            o,
            "<tr data-diag=\"{diag}\" data-program=\"{program}\" data-host=\"{host}\" data-pod=\"{pod}\"><td>{}</td>\
             <td><a href=\"#closes\" data-kind=\"host\" data-value=\"{host}\">{host}</a></td><td>{}</td><td>{}</td><td>{} ({})</td><td>{closer}</td>\
             <td class=\"num\" data-sort=\"{life_sort}\">{life}</td>\
             <td><span class=\"swatch\" style=\"background:{}\"></span><a href=\"#closes\" data-kind=\"diag\" data-value=\"{diag}\">{diag}</a></td></tr>",
            h(&r.ts),
            h(&r.local),
            h(&r.remote),
            h(&r.closed_by),
            h(&r.how),
            colour(&r.diagnosis),
        );
    }
    o.push_str("</tbody></table></section>\n");
    o
}

/// Proxy chains joined across the logs' hosts (`report::chains`): one row
/// per chain, leading with its root cause (who closed first, why, the
/// fix), expandable to a report line per hop; an unjoined chain says why.
/// Every close stays in the table below too. Nothing when no report was
/// chained.
fn chain_table(s: &Summary, colour: &dyn Fn(&str) -> &'static str) -> String {
    let all = s.chains.joined();
    if all.is_empty() {
        return String::new();
    }
    let joined = all.iter().filter(|j| j.unjoined.is_none()).count();
    let mut o = format!(
        "<section id=\"chains\"><h2>Proxy chains: {}</h2>\
         <p class=\"note\">Reports of one proxied WebSocket joined by <code>chain.id</code> across every host's log \
         ({joined} joined, {} unjoined): each row leads with the close that came first; open it for every hop.</p>\
         <table id=\"chain-table\"><thead><tr><th>first close and why</th><th>hosts</th><th>sockets</th><th>chain id</th></tr></thead><tbody>\n",
        all.len(),
        all.len() - joined
    );
    for j in &all {
        let lead = match (&j.unjoined, j.root()) {
            (Some(why), _) => format!(
                "<span class=\"unjoined\">unjoined: {}</span>",
                h(&why.message())
            ),
            (None, Some(r)) => {
                let who = match r.row.pid {
                    Some(pid) => format!("{} (pid {pid})", h(&r.row.comm)),
                    None => "(no local process)".into(),
                };
                let mut l = format!(
                    "<span class=\"swatch\" style=\"background:{}\"></span><b>{}</b>: {who} on {} closed first ({}, {})",
                    colour(&r.row.diagnosis),
                    h(&r.row.diagnosis),
                    h(&r.row.host),
                    h(&r.row.closed_by),
                    h(&r.row.how)
                );
                if let Some(fix) = &r.fix {
                    let _ = write!(l, " — fix: {}", h(fix));
                }
                l
            }
            (None, None) => "?".into(),
        };
        let _ = write!(
            o,
            "<tr data-chain=\"{id}\"><td><details><summary>{lead}</summary><table class=\"hops\"><thead><tr>\
             <th>host</th><th>hop</th><th>side</th><th>closer</th><th>local ⇄ remote</th><th>closed by</th><th>time</th><th>diagnosis</th></tr></thead><tbody>",
            id = h(&j.id)
        );
        for (i, hop) in j.hops.iter().enumerate() {
            let closer = match hop.row.pid {
                Some(pid) => format!("{} ({pid})", h(&hop.row.comm)),
                None => "—".into(),
            };
            let mut diag = h(&hop.row.diagnosis);
            if !hop.message.is_empty() {
                let _ = write!(diag, ": {}", h(&hop.message));
            }
            if let Some(fix) = &hop.fix {
                let _ = write!(diag, " <i>fix:</i> {}", h(fix));
            }
            let _ = write!(
                o,
                "<tr{}><td>{}</td><td>{}</td><td>{}</td><td>{closer}</td><td>{} ⇄ {}</td><td>{} ({})</td><td>{}</td><td>{diag}</td></tr>",
                if Some(i) == j.root {
                    " class=\"root\""
                } else {
                    ""
                },
                h(&hop.row.host),
                hop.hop.map_or("?".into(), |n| n.to_string()),
                hop.side.as_str(),
                h(&hop.row.local),
                h(&hop.row.remote),
                h(&hop.row.closed_by),
                h(&hop.row.how),
                h(&hop.row.ts),
            );
        }
        let _ = writeln!(
            o,
            "</tbody></table></details></td><td>{}</td><td class=\"num\">{}</td><td><code>{}</code></td></tr>",
            j.hosts.iter().map(|x| h(x)).collect::<Vec<_>>().join(", "),
            j.hops.len(),
            h(&j.id)
        );
    }
    o.push_str("</tbody></table></section>\n");
    o
}

fn malformed(s: &Summary) -> String {
    if s.malformed == 0 {
        return String::new();
    }
    let mut o = format!(
        "<section id=\"malformed\"><h2>Malformed lines (skipped): {}</h2><ul>",
        s.malformed
    );
    for (file, line, why) in &s.malformed_first {
        let _ = write!(o, "<li>{}:{line}: {}</li>", h(file), h(why));
    }
    let shown = s.malformed_first.len() as u64;
    if s.malformed > shown {
        let _ = write!(o, "<li>... and {} more</li>", s.malformed - shown);
    }
    o.push_str("</ul></section>\n");
    o
}

const STYLE: &str = "\
body{font-family:sans-serif;margin:1.2em auto;max-width:1250px;padding:0 1em;color:#222}\
.meta{color:#555}\
.headline{border-left:8px solid #999;padding:.2em .8em;margin:.8em 0;background:#fafafa}\
.headline h1,.headline h2{margin:.2em 0}.headline h1{font-size:1.6em}.headline h2{font-size:1.2em}\
.headline .code{color:inherit}.headline .count{font-weight:normal;color:#444}\
.headline .fix{display:block;font-size:.8em;font-weight:normal;margin-top:.3em;background:#fff3cd;padding:.3em .5em}\
.why,.example{margin:.3em 0;font-size:.92em}.example{color:#444}\
code{background:#eee;padding:0 .2em}\
svg{width:100%;height:auto;display:block}\
.swatch{display:inline-block;width:.8em;height:.8em;margin-right:.3em;vertical-align:middle}\
.legend a{margin-right:1em}.note{color:#666;font-size:.9em}.k{color:#2a6fb0}\
table{border-collapse:collapse;font-size:.88em}td,th{padding:.2em .6em;border-bottom:1px solid #e3e3e3;text-align:left}\
th{background:#f0f0f0}#close-table th{cursor:pointer}#close-table th.sorted-asc:after{content:' ▲'}#close-table th.sorted-desc:after{content:' ▼'}\
td.num{text-align:right}.bar{display:inline-block;height:.7em;background:#4a7ebb}\
tr[hidden]{display:none}a[data-kind]{cursor:pointer}\
#chain-table summary{cursor:pointer}#chain-table details table{margin:.4em 0 .4em 1.2em}\
#chain-table tr.root td{font-weight:bold}.unjoined{color:#8a4b00}\
#flamegraph text{pointer-events:none}#flamegraph g:hover rect{stroke:#000;stroke-width:1}\
";

/// Filtering and sorting. Values are read with getAttribute and shown with
/// textContent only: nothing from the logs is parsed as HTML.
const SCRIPT: &str = r#"
(function () {
  "use strict";
  var table = document.getElementById("close-table");
  if (!table) { return; }
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  var state = document.getElementById("filter-state");
  var clear = document.getElementById("clear-filter");
  var names = { diag: "diagnosis", program: "program", host: "host", pod: "pod or container" };
  function filter(kind, value) {
    var shown = 0;
    rows.forEach(function (r) {
      var keep = !kind || r.getAttribute("data-" + kind) === value;
      r.hidden = !keep;
      if (keep) { shown++; }
    });
    state.textContent = kind
      ? "Showing " + shown + " of " + rows.length + " closes with " + names[kind] + " " + value + "."
      : "Showing all " + rows.length + " closes. Click a diagnosis, program or host to filter, a column to sort.";
    clear.hidden = !kind;
  }
  document.addEventListener("click", function (e) {
    var t = e.target.closest ? e.target.closest("[data-kind]") : null;
    if (!t) { return; }
    e.preventDefault();
    filter(t.getAttribute("data-kind"), t.getAttribute("data-value"));
    document.getElementById("closes").scrollIntoView();
  });
  clear.addEventListener("click", function () { filter(null, null); });
  var heads = Array.prototype.slice.call(table.tHead.rows[0].cells);
  heads.forEach(function (th, col) {
    th.addEventListener("click", function () {
      var asc = !th.classList.contains("sorted-asc");
      heads.forEach(function (x) { x.classList.remove("sorted-asc", "sorted-desc"); });
      th.classList.add(asc ? "sorted-asc" : "sorted-desc");
      var num = th.getAttribute("data-type") === "num";
      function key(r) {
        var c = r.cells[col];
        return num ? parseFloat(c.getAttribute("data-sort")) : c.textContent;
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        var d = num ? x - y : (x < y ? -1 : x > y ? 1 : 0);
        return asc ? d : -d;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
  filter(null, null);
})();
(function () {
  "use strict";
  // Flame-graph zoom: the clicked box and its callees fill the width, its
  // callers stay full width, the rest hides. Labels are refitted like the
  // server fits them (leading a::b:: path segments first, then cut).
  var svg = document.getElementById("flamegraph");
  if (!svg) { return; }
  var W = CHART_W, CHAR = FLAME_CHAR_W, eps = 0.01;
  var boxes = Array.prototype.slice.call(svg.querySelectorAll("g[data-d]"));
  function fit(name, n) {
    if (name.length <= n) { return name; }
    var rest = name;
    while (rest.length > n) {
      var depth = 0, cut = -1;
      for (var i = 0; i + 1 < rest.length; i++) {
        var c = rest[i];
        if (c === "<" || c === "(" || c === "[") { depth++; }
        else if (c === ">" || c === ")" || c === "]") { depth--; }
        else if (c === ":" && depth === 0 && rest[i + 1] === ":") { cut = i + 2; break; }
      }
      if (cut < 0 || cut >= rest.length) { break; }
      rest = rest.slice(cut);
    }
    if (rest.length <= n) { return rest; }
    return n < 2 ? "" : rest.slice(0, n - 1) + "\u2026";
  }
  function zoom(x0, w0, d0) {
    boxes.forEach(function (g) {
      var x = parseFloat(g.getAttribute("data-x")), w = parseFloat(g.getAttribute("data-w"));
      var d = parseInt(g.getAttribute("data-d"), 10), nx, nw;
      if (d >= d0 && x >= x0 - eps && x + w <= x0 + w0 + eps) {
        nx = (x - x0) * W / w0; nw = w * W / w0;
      } else if (d < d0 && x <= x0 + eps && x + w >= x0 + w0 - eps) {
        nx = 0; nw = W;
      } else {
        g.style.display = "none";
        return;
      }
      g.style.display = nw < 0.4 ? "none" : "";
      var r = g.querySelector("rect"), t = g.querySelector("text");
      r.setAttribute("x", nx.toFixed(2));
      r.setAttribute("width", nw.toFixed(2));
      t.setAttribute("x", (nx + 3).toFixed(2));
      t.textContent = fit(g.getAttribute("data-name"), Math.max(0, Math.floor((nw - 6) / CHAR)));
    });
  }
  svg.addEventListener("click", function (e) {
    var g = e.target.closest ? e.target.closest("g[data-d]") : null;
    if (!g) { return; }
    zoom(parseFloat(g.getAttribute("data-x")), parseFloat(g.getAttribute("data-w")),
         parseInt(g.getAttribute("data-d"), 10));
  });
  var reset = document.getElementById("flame-reset");
  if (reset) { reset.addEventListener("click", function () { zoom(0, W, 0); }); }
})();
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The flame graph folds a Go close's runtime frames as the text stack
    /// does: the innermost frame and the program's own stay, the kernel's
    /// frames stay as they are.
    #[test]
    fn flame_boxes_fold_runtime_runs_of_the_user_stack_only() {
        let go = |name: &str| Frame {
            function: Some(name.into()),
            file: Some("/usr/lib/go/src/x.go".into()),
            line: Some(1),
            language: Some(crate::model::Language::Go),
            ..Frame::default()
        };
        let kernel = |name: &str| Frame {
            function: Some(name.into()),
            kind: FrameKind::Kernel,
            ..Frame::default()
        };
        // Root first, as summary paths are.
        let path = vec![
            go("net/http.(*conn).serve"),
            go("main.(*hub).ServeHTTP"),
            go("main.(*hub).drop"),
            go("crypto/tls.(*Conn).Close"),
            go("net.(*conn).Close"),
            go("internal/poll.(*FD).Close"),
            go("syscall.Close"),
            go("syscall.Syscall"),
            kernel("__x64_sys_close"),
            kernel("tcp_close"),
        ];
        let names: Vec<String> = flame_frames(&path)
            .into_iter()
            .map(|f| f.function)
            .collect();
        assert_eq!(
            names,
            [
                "net/http.(*conn).serve",
                "main.(*hub).ServeHTTP",
                "main.(*hub).drop",
                "… 4 frames in go",
                "syscall.Syscall",
                "__x64_sys_close",
                "tcp_close",
            ]
        );
    }

    fn summary() -> Summary {
        let mut s = Summary::default();
        for (comm, ms) in [("php", 0.4), ("php", 0.5), ("nginx", 60_000.0)] {
            s.add_close(&json!({
                "comm": comm, "pid": 7, "exe": format!("/usr/bin/{comm}"), "ms_after_upgrade": ms,
                "closed_by": "local", "how": "fin", "ts": "2026-11-24T03:00:01Z",
                "diagnosis": {"code": "http10_upgrade", "fix": "use HTTP/1.1", "message": "m"},
                "user_stack": ["__close+0x1 (/lib/libc.so.6) at close.c:27", "handle;conn+0x2 (/bin/x)", "main+0x3 (/bin/x)"],
                "kernel_stack": ["__tcp_close+0x2", "tcp_close+0x1f"],
            }));
        }
        s
    }

    #[test]
    fn boxes_show_function_module_and_line_from_the_frame() {
        let mut f = Frame {
            function: Some("f(std::function<void (int)>)".into()),
            offset: Some(0x8),
            module: Some("/lib/x.so".into()),
            file: Some("./io/close.c".into()),
            line: Some(27),
            address: Some(0x1000),
            ..Frame::default()
        };
        assert_eq!(
            FlameFrame::of(&f),
            FlameFrame {
                function: "f(std::function<void (int)>)".into(),
                module: Some("/lib/x.so".into()),
                location: Some("./io/close.c:27".into()),
                inlined: false,
                kernel: false
            }
        );
        f.kind = FrameKind::Kernel;
        f.module = None;
        f.file = None;
        f.inlined = true;
        let k = FlameFrame::of(&f);
        assert!(k.kernel && k.inlined && k.module.is_none() && k.location.is_none());
        assert_eq!(k.sort_key(), "[k] f(std::function<void (int)>) [inlined]");
        let u = Frame {
            unresolved: Some(crate::model::Unresolved::TimedOut),
            ..Frame::unknown(FrameKind::Native, 0x7f12, Some("/bin/x"))
        };
        let u = FlameFrame::of(&u);
        assert_eq!(u.function, "[unknown] 0x7f12");
        assert_eq!(u.module.as_deref(), Some("symbolization timed out: /bin/x"));
        // A terminal control in a name is escaped before it reaches HTML.
        f.function = Some("a\u{1b}[2Jb".into());
        assert!(!FlameFrame::of(&f).function.contains('\u{1b}'));
    }

    #[test]
    fn labels_keep_the_function_name_and_drop_its_path_first() {
        assert_eq!(fit_label("swoole_close_fd", 40), "swoole_close_fd");
        assert_eq!(
            fit_label("wstrace::demo::serve::{{closure}}", 20),
            "serve::{{closure}}"
        );
        assert_eq!(fit_label("std::vec::Vec<a::b::C>::push", 12), "push");
        assert_eq!(fit_label("Vec<a::b::Cee>", 10), "Vec<a::b:…");
        assert_eq!(fit_label("ngx_close_connection", 8), "ngx_clo…");
        assert_eq!(fit_label("ngx_close_connection", 1), "");
    }

    #[test]
    fn a_long_time_line_groups_minutes_and_keeps_its_labels_inside() {
        let mut s = Summary::default();
        for ts in ["2026-11-24T00:00:10Z", "2026-11-24T16:39:00Z"] {
            s.add_close(&json!({"closed_by": "peer", "how": "fin", "ts": ts}));
        }
        let html = page(&s);
        assert!(
            html.contains("Closes per 5 minutes (UTC)"),
            "1000 minutes in 240 bars"
        );
        let chart = &html[html.find("id=\"timeline-chart\"").expect("chart")..];
        let chart = &chart[..chart.find("</svg>").expect("end")];
        let bars = chart.matches("<rect").count();
        assert_eq!(bars, 2);
        let xs: Vec<f64> = chart
            .split("<text x=\"")
            .skip(1)
            .filter_map(|t| t.split('"').next()?.parse().ok())
            .collect();
        assert!(xs.len() >= 5, "{xs:?}");
        assert!(xs.iter().all(|x| x + 100.0 <= CHART_W), "{xs:?}");
    }

    #[test]
    fn closes_group_by_namespace_and_pod() {
        let mut s = Summary::default();
        for (ns, pod) in [("shop", "web-1"), ("shop", "web-1"), ("ops", "<b>x</b>")] {
            s.add_close(&json!({
                "comm": "node", "pid": 9, "closed_by": "local", "how": "fin",
                "diagnosis": {"code": "unknown"},
                "container": {"id": "c", "name": "web", "image": "i", "runtime": "containerd"},
                "k8s": {"namespace": ns, "pod": pod, "container": "web"},
            }));
        }
        s.add_close(&json!({
            "comm": "py", "pid": 10, "closed_by": "local", "how": "fin",
            "diagnosis": {"code": "unknown"},
            "container": {"id": "d", "name": "ws-server", "runtime": "podman"},
        }));
        let html = page(&s);
        assert!(html.contains("<section id=\"pods\">"), "{html}");
        assert!(
            html.contains("data-kind=\"pod\" data-value=\"shop/web-1\""),
            "{html}"
        );
        assert!(
            html.contains("data-value=\"container ws-server\""),
            "{html}"
        );
        assert!(html.contains("data-pod=\"shop/web-1\""), "{html}");
        // Pod names are escaped for HTML like every value from the logs.
        assert!(html.contains("ops/&lt;b&gt;x&lt;/b&gt;"), "{html}");
        assert!(!html.contains("<b>x</b>"), "{html}");
    }

    #[test]
    fn hostile_text_is_inert_in_html() {
        assert_eq!(
            h("<script>\"x\"&'y'\u{1b}[31m\u{202e}"),
            "&lt;script&gt;&quot;x&quot;&amp;&#39;y&#39;\\x1b[31m\\u{202e}"
        );
    }

    #[test]
    fn page_leads_with_the_diagnosis_and_is_self_contained() {
        let html = page(&summary());
        let h1 = html.find("<h1>").expect("an h1");
        assert!(html.find("<h2").is_none_or(|h2| h2 > h1));
        assert!(html[h1..].starts_with("<h1><a href=\"#closes\" class=\"code\" data-kind=\"diag\" data-value=\"http10_upgrade\">http10_upgrade</a>"));
        assert!(html.contains("Fix: use HTTP/1.1"));
        for id in [
            "timeline-chart",
            "program-table",
            "flamegraph",
            "close-table",
        ] {
            assert!(html.contains(&format!("id=\"{id}\"")), "{id}");
        }
        assert!(
            !html.contains("host-table") && !html.contains("id=\"hosts\""),
            "one host"
        );
        assert!(
            html.contains(">handle;conn</text>"),
            "label is the function"
        );
        assert!(!html.contains("src=") && !html.contains("href=\"http"));
        let empty = page(&Summary::default());
        assert!(empty.contains("<h1>No closes in the selected reports</h1>"));
    }
}
