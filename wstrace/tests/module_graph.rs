//! The daemon's tree is its pipeline, and imports point one way: this test
//! reads `wstrace/src`, builds the graph of `crate::` imports between
//! modules (the whole of each file, its `#[cfg(test)]` modules included:
//! a test that reaches into a later stage couples the stages as much as
//! code does; comments and string literals are not code) and fails on
//! - any cycle;
//! - a stage importing a later stage (attach < pipeline < enrich < diagnose
//!   < output);
//! - a shared module (`model`, `protocol`, `redact`) importing anything but
//!   another shared module;
//! - the test-support module (`testenv`, compiled for tests only, which any
//!   module's tests may use) importing anything of the crate.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const STAGES: &[&str] = &["attach", "pipeline", "enrich", "diagnose", "output"];
const SHARED: &[&str] = &["model", "protocol", "redact"];
const TEST_SUPPORT: &[&str] = &["testenv"];

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

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let names: BTreeSet<String> = files.iter().map(|f| module_name(&src, f)).collect();
    let mut g = BTreeMap::new();
    for f in &files {
        let me = module_name(&src, f);
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

#[test]
fn module_graph_has_no_cycles() {
    let g = graph();
    assert!(
        g.contains_key("daemon") && g.contains_key("enrich::process"),
        "{g:#?}"
    );
    // Depth-first search; a back edge is a cycle.
    fn visit<'a>(
        g: &'a BTreeMap<String, BTreeSet<String>>,
        m: &'a str,
        state: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
    ) {
        state.insert(m, 1);
        stack.push(m);
        for d in g.get(m).into_iter().flatten() {
            match state.get(d.as_str()) {
                Some(1) => {
                    let at = stack.iter().position(|s| *s == d).unwrap_or(0);
                    panic!("import cycle: {} -> {d}", stack[at..].join(" -> "));
                }
                Some(_) => {}
                None => visit(g, d, state, stack),
            }
        }
        stack.pop();
        state.insert(m, 2);
    }
    let mut state = BTreeMap::new();
    for m in g.keys() {
        if !state.contains_key(m.as_str()) {
            visit(&g, m, &mut state, &mut Vec::new());
        }
    }
}

#[test]
fn stages_import_only_earlier_stages_and_shared_modules() {
    let g = graph();
    let mut wrong = Vec::new();
    for (m, deps) in &g {
        let rank = |x: &str| STAGES.iter().position(|s| *s == top(x));
        for d in deps {
            let ok = if TEST_SUPPORT.contains(&top(m)) {
                false
            } else if TEST_SUPPORT.contains(&top(d)) {
                true
            } else if SHARED.contains(&top(m)) {
                SHARED.contains(&top(d))
            } else if let Some(mine) = rank(m) {
                SHARED.contains(&top(d)) || rank(d).is_some_and(|theirs| theirs <= mine)
            } else {
                true
            };
            if !ok {
                wrong.push(format!("{m} -> {d}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the pipeline's order: {wrong:#?}"
    );
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
