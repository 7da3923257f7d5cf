//! Imports point one way, in every crate of the workspace. This test reads
//! each crate's `src`, builds the graph of `crate::` imports between its
//! modules (the whole of each file, its `#[cfg(test)]` modules included:
//! a test that reaches into a later stage couples the stages as much as
//! code does; comments and string literals are not code) and fails on
//! - any cycle, in any crate;
//! - in `wstrace` and `wstrace-core`, a stage importing a later stage
//!   (daemon: attach < pipeline < enrich < diagnose < output; core: enrich
//!   < diagnose < output < report);
//! - a shared module (`model`, `protocol`, `redact`) importing anything but
//!   another shared module;
//! - `hardening` (privileges, the uprobe helper: what every stage may use
//!   to hold less) importing any stage;
//! - the test-support module (`testenv`, compiled for tests only, which any
//!   module's tests may use) importing anything of the crate.
//!
//! What cargo sees itself is not repeated here: `wstrace-core` cannot
//! import `wstrace` (a dependency cycle), and what `wstrace-core` may
//! depend on at all is checked from `cargo tree` (no aya, libc or tokio).
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One crate's order: its stages (earliest first), its shared modules, the
/// modules that may use shared ones only, and its test support.
struct Rules {
    stages: &'static [&'static str],
    shared: &'static [&'static str],
    leaf: &'static [&'static str],
    test_support: &'static [&'static str],
}

const DAEMON: Rules = Rules {
    stages: &["attach", "pipeline", "enrich", "diagnose", "output"],
    shared: &["model", "protocol", "redact"],
    leaf: &["hardening"],
    test_support: &["testenv"],
};

const CORE: Rules = Rules {
    stages: &["enrich", "diagnose", "output", "report"],
    shared: &["model", "protocol", "redact"],
    leaf: &[],
    test_support: &[],
};

/// `wstrace-foo` -> the workspace's `wstrace-foo/src`.
fn crate_src(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(name)
        .join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `attach/btf.rs` -> `attach::btf`; `attach/mod.rs` -> `attach`.
fn module_name(src: &Path, file: &Path) -> String {
    let rel = file
        .strip_prefix(src)
        .expect("under src")
        .with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.join("::")
}

/// `text` with comments, string literals and character literals blanked
/// out (each replaced by a space), so that a doc comment or a message that
/// mentions `crate::output` is not an import. Lifetimes (`'a`) stay code.
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    // The previous character was part of an identifier (`br"` vs `var"`).
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let prev_ident = i > 0 && ident(chars[i - 1]);
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            out.push(' ');
        } else if c == '/' && next == Some('*') {
            // Block comments nest in Rust.
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if !prev_ident && (c == 'r' || (c == 'b' && next == Some('r'))) && {
            let mut j = i + if c == 'b' { 2 } else { 1 };
            while chars.get(j) == Some(&'#') {
                j += 1;
            }
            chars.get(j) == Some(&'"')
        } {
            // A raw string: r"..", r#".."#, br#".."#; ends at `"` and as
            // many `#` as it opened with.
            i += if c == 'b' { 2 } else { 1 };
            let mut hashes = 0;
            while chars[i] == '#' {
                hashes += 1;
                i += 1;
            }
            i += 1;
            while i < chars.len() {
                if chars[i] == '"' && (1..=hashes).all(|k| chars.get(i + k) == Some(&'#')) {
                    i += 1 + hashes;
                    break;
                }
                i += 1;
            }
            out.push(' ');
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push(' ');
        } else if c == '\'' && next == Some('\\') {
            // An escaped character literal: '\n', '\'', '\u{..}'.
            i += 2;
            while i < chars.len() && chars[i] != '\'' {
                i += 1;
            }
            i += 1;
            out.push(' ');
        } else if c == '\'' && chars.get(i + 2) == Some(&'\'') {
            // 'x' (a lifetime is `'a` with no closing quote after one char).
            i += 3;
            out.push(' ');
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Every `crate::a::b::...` path, including each leaf of a nested
/// `use crate::{a::{b, c::{self, D}}, e}` tree, as the list of its
/// lower-case segments (a path ends at a type, a glob or `self`).
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let starts = chars[i..].starts_with(&['c', 'r', 'a', 't', 'e', ':', ':'])
            && (i == 0 || !(chars[i - 1].is_ascii_alphanumeric() || chars[i - 1] == '_'));
        if starts {
            i = use_tree(&chars, i + "crate::".len(), Vec::new(), &mut out);
        } else {
            i += 1;
        }
    }
    for p in &mut out {
        let keep = p
            .iter()
            .take_while(|s| !s.is_empty() && s.chars().all(|c| !c.is_ascii_uppercase()))
            .count();
        p.truncate(keep);
    }
    out
}

/// Parses one use tree at `i` under `prefix`, pushing its leaves; returns
/// where it ended.
fn use_tree(
    chars: &[char],
    mut i: usize,
    mut path: Vec<String>,
    out: &mut Vec<Vec<String>>,
) -> usize {
    let skip_ws = |i: &mut usize| {
        while chars.get(*i).is_some_and(|c| c.is_whitespace()) {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        if chars.get(i) == Some(&'{') {
            i += 1;
            loop {
                skip_ws(&mut i);
                match chars.get(i) {
                    None => return i,
                    Some('}') => return i + 1,
                    Some(',') => i += 1,
                    Some(_) => {
                        let before = i;
                        i = use_tree(chars, i, path.clone(), out);
                        if i == before {
                            // Not a path (stray text): step over it.
                            i += 1;
                        }
                    }
                }
            }
        }
        let start = i;
        while chars
            .get(i)
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
        {
            i += 1;
        }
        let ident: String = chars[start..i].iter().collect();
        if !ident.is_empty() && ident != "self" {
            path.push(ident);
        }
        skip_ws(&mut i);
        if chars.get(i) == Some(&':') && chars.get(i + 1) == Some(&':') && !path.is_empty() {
            i += 2;
            continue;
        }
        if !path.is_empty() {
            out.push(path);
        }
        return i;
    }
}

fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let names: BTreeSet<String> = files.iter().map(|f| module_name(src, f)).collect();
    let mut g = BTreeMap::new();
    for f in &files {
        let me = module_name(src, f);
        let text = std::fs::read_to_string(f).expect("read source");
        let mut deps = BTreeSet::new();
        for mut path in crate_paths(&code_only(&text)) {
            // The longest prefix that names a module of ours.
            while !path.is_empty() && !names.contains(&path.join("::")) {
                path.pop();
            }
            let dep = path.join("::");
            if !dep.is_empty() && dep != me && !me.starts_with(&format!("{dep}::")) {
                deps.insert(dep);
            }
        }
        g.insert(me, deps);
    }
    g
}

fn top(module: &str) -> &str {
    module.split("::").next().unwrap_or(module)
}

/// The first import cycle of `g`, as `a -> b -> a`.
fn cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<String> {
    // Depth-first search; a back edge is a cycle.
    fn visit<'a>(
        g: &'a BTreeMap<String, BTreeSet<String>>,
        m: &'a str,
        state: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
    ) -> Option<String> {
        state.insert(m, 1);
        stack.push(m);
        for d in g.get(m).into_iter().flatten() {
            match state.get(d.as_str()) {
                Some(1) => {
                    let at = stack.iter().position(|s| *s == d).unwrap_or(0);
                    return Some(format!("{} -> {d}", stack[at..].join(" -> ")));
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(g, d, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(m, 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in g.keys() {
        if !state.contains_key(m.as_str())
            && let Some(c) = visit(g, m, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

/// The imports of `g` against `rules`, as `from -> to`.
fn against_order(g: &BTreeMap<String, BTreeSet<String>>, rules: &Rules) -> Vec<String> {
    let mut wrong = Vec::new();
    for (m, deps) in g {
        let rank = |x: &str| rules.stages.iter().position(|s| *s == top(x));
        let shared = |x: &str| rules.shared.contains(&top(x));
        for d in deps {
            let ok = if rules.test_support.contains(&top(m)) {
                false
            } else if rules.test_support.contains(&top(d)) {
                true
            } else if shared(m) {
                shared(d)
            } else if rules.leaf.contains(&top(m)) {
                shared(d) || top(d) == top(m)
            } else if let Some(mine) = rank(m) {
                shared(d)
                    || rules.leaf.contains(&top(d))
                    || rank(d).is_some_and(|theirs| theirs <= mine)
            } else {
                true
            };
            if !ok {
                wrong.push(format!("{m} -> {d}"));
            }
        }
    }
    wrong
}

#[test]
fn no_crate_has_an_import_cycle() {
    let crates = [
        "wstrace",
        "wstrace-core",
        "wstrace-common",
        "wstrace-ebpf",
        "wstrace-scenarios",
        "wstrace-bench",
        // Not xtask yet: its `setup -> build -> setup` cycle goes with the
        // split of its bench lab into wstrace-bench (issue 23 item 7).
    ];
    let mut seen = 0;
    for name in crates {
        let src = crate_src(name);
        if !src.is_dir() {
            continue;
        }
        seen += 1;
        let g = graph(&src);
        assert!(
            !g.is_empty(),
            "{name}: no sources read in {}",
            src.display()
        );
        if let Some(c) = cycle(&g) {
            panic!("{name}: import cycle: {c}");
        }
    }
    assert!(seen >= 3, "the workspace's crates were not found");
}

/// In the kernel crate only `ptr.rs` calls the probe-read helpers and
/// `bpf_get_current_task` (whose result is a kernel address): everywhere
/// else memory is read through `UPtr` (user memory) or `KPtr` (kernel
/// memory), so an address a traced process handed a syscall cannot reach
/// `bpf_probe_read_kernel`, nor a `struct sock *` `bpf_probe_read_user`.
#[test]
fn only_ptr_rs_reads_memory_in_the_kernel_crate() {
    const RAW: [&str; 2] = ["bpf_probe_read", "bpf_get_current_task"];
    let src = crate_src("wstrace-ebpf");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let ptr = src.join("ptr.rs");
    assert!(files.contains(&ptr), "no {}", ptr.display());
    let mut raw = Vec::new();
    for f in &files {
        let code = code_only(&std::fs::read_to_string(f).expect("read source"));
        if *f == ptr {
            // The needles are right: ptr.rs is where the helpers are.
            for helper in ["bpf_probe_read_user", "bpf_probe_read_kernel"] {
                assert!(code.contains(helper), "ptr.rs does not call {helper}");
            }
            continue;
        }
        for helper in RAW {
            if code.contains(helper) {
                raw.push(format!("{} calls {helper}*", module_name(&src, f)));
            }
        }
    }
    assert!(
        raw.is_empty(),
        "read memory through ptr::UPtr / ptr::KPtr: {raw:?}"
    );
}

#[test]
fn the_daemons_stages_import_only_earlier_stages_and_shared_modules() {
    let g = graph(&crate_src("wstrace"));
    assert!(
        g.contains_key("daemon")
            && g.contains_key("enrich::process")
            && g.contains_key("hardening::uprobe::wire"),
        "{g:#?}"
    );
    let wrong = against_order(&g, &DAEMON);
    assert!(
        wrong.is_empty(),
        "wstrace: imports against the pipeline's order: {wrong:#?}"
    );
}

#[test]
fn the_cores_stages_import_only_earlier_stages_and_shared_modules() {
    let g = graph(&crate_src("wstrace-core"));
    assert!(
        g.contains_key("model") && g.contains_key("report::summary"),
        "{g:#?}"
    );
    let wrong = against_order(&g, &CORE);
    assert!(
        wrong.is_empty(),
        "wstrace-core: imports against the pipeline's order: {wrong:#?}"
    );
}

#[test]
fn the_rules_catch_a_late_import_and_a_stage_in_hardening() {
    let g: BTreeMap<String, BTreeSet<String>> = [
        ("attach::tls", &["output::text"][..]),
        ("hardening::privileges", &["attach"][..]),
        ("enrich", &["hardening::privileges", "model"][..]),
        ("model", &["protocol"][..]),
    ]
    .into_iter()
    .map(|(m, d)| (m.to_string(), d.iter().map(|s| s.to_string()).collect()))
    .collect();
    assert_eq!(
        against_order(&g, &DAEMON),
        vec![
            "attach::tls -> output::text",
            "hardening::privileges -> attach"
        ]
    );
    let looped: BTreeMap<String, BTreeSet<String>> = [("a", "b"), ("b", "c"), ("c", "a")]
        .into_iter()
        .map(|(m, d)| (m.to_string(), BTreeSet::from([d.to_string()])))
        .collect();
    assert_eq!(cycle(&looped).as_deref(), Some("a -> b -> c -> a"));
}

/// What `wstrace-core` is built from (normal and build dependencies,
/// with the `clap` feature wstrace turns on): none of the crates that
/// reach the kernel or need a runtime.
#[test]
fn the_core_depends_on_no_kernel_or_runtime_crate() {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            "wstrace-core",
            "--features",
            "clap",
            "-e",
            "normal,build",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo tree");
    assert!(
        out.status.success(),
        "cargo tree: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let names: BTreeSet<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        names.contains("wstrace-core") && names.contains("serde"),
        "{tree}"
    );
    for banned in [
        "aya", "aya-obj", "libc", "tokio", "rustix", "nix", "wstrace",
    ] {
        assert!(
            !names.contains(banned),
            "wstrace-core depends on {banned}:\n{tree}"
        );
    }
}

#[test]
fn the_parser_sees_groups_and_plain_paths() {
    let code =
        "use crate::{a::b::{C, d}, e};\nlet x = crate::f::g::h(1);\nuse crate::model::Event;";
    let paths = crate_paths(code);
    assert_eq!(
        paths,
        vec![
            vec!["a".to_string(), "b".to_string()],
            vec!["a".to_string(), "b".to_string(), "d".to_string()],
            vec!["e".to_string()],
            vec!["f".to_string(), "g".to_string(), "h".to_string()],
            vec!["model".to_string()],
        ]
    );
}

fn paths_of(code: &str) -> Vec<String> {
    crate_paths(&code_only(code))
        .into_iter()
        .map(|p| p.join("::"))
        .collect()
}

#[test]
fn comments_and_strings_are_not_imports() {
    let code = r##"
        // use crate::output::text;
        /// See [`crate::output::json`].
        /* crate::enrich /* nested crate::diagnose */ still crate::attach */
        let s = "crate::cli";
        let r = r#"crate::daemon "quoted" crate::demo"#;
        let b = br"crate::report";
        let e = "escaped \" crate::model";
        use crate::pipeline::matcher;
    "##;
    assert_eq!(paths_of(code), vec!["pipeline::matcher"]);
}

#[test]
fn char_literals_and_lifetimes_do_not_hide_code() {
    // A `'"'` must not open a string that swallows the import after it;
    // a lifetime must not be taken for an unterminated character.
    let code = "fn f<'a>(x: &'a str) -> char { let q = '\"'; let n = '\\n'; 'x' }\n\
                use crate::enrich::peer;\n\
                let c = '{'; use crate::{model::Event, output};";
    assert_eq!(paths_of(code), vec!["enrich::peer", "model", "output"]);
}

#[test]
fn test_modules_are_seen() {
    // The old checker stopped at the first `#[cfg(test)]`.
    let code = "use crate::attach::btf;\n#[cfg(test)]\nmod tests {\n    use super::*;\n    use crate::output::text::render;\n}\n#[cfg(test)]\nmod more { use crate::diagnose; }";
    assert_eq!(
        paths_of(code),
        vec!["attach::btf", "output::text::render", "diagnose"]
    );
}

#[test]
fn nested_groups_and_type_names_end_a_path() {
    let code = "use crate::{enrich::{peer::{self, Peer}, symbolize}, model::{Event, Report}};\nlet x = crate::output::Format::Json;";
    assert_eq!(
        paths_of(code),
        vec![
            "enrich::peer",
            "enrich::peer",
            "enrich::symbolize",
            "model",
            "model",
            "output"
        ]
    );
}
