//! The daemon's tree is its pipeline, and imports point one way: this test
//! reads `wstrace/src`, builds the graph of `crate::` imports between
//! modules (test modules excluded) and fails on
//! - any cycle;
//! - a stage importing a later stage (attach < pipeline < enrich < diagnose
//!   < output);
//! - a shared module (`model`, `protocol`, `redact`) importing anything but
//!   another shared module.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const STAGES: &[&str] = &["attach", "pipeline", "enrich", "diagnose", "output"];
const SHARED: &[&str] = &["model", "protocol", "redact"];

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

/// The code outside `#[cfg(test)]` modules (they sit at the end of a file).
fn non_test_code(text: &str) -> &str {
    text.split("#[cfg(test)]").next().unwrap_or(text)
}

/// Every `crate::a::b::...` path, including those inside `use crate::{...}`
/// groups, as the list of its lower-case segments.
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if rest.starts_with('{') {
            // A group: split it at top-level commas and take each item.
            let mut depth = 0;
            let mut end = 0;
            for (j, c) in rest.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = j;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let group = &rest[1..end];
            let mut depth = 0;
            let mut item = String::new();
            let mut items = Vec::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        items.push(std::mem::take(&mut item));
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            items.push(item);
            for it in items {
                out.push(segments(it.trim()));
            }
            rest = &rest[end..];
        } else {
            out.push(segments(rest));
        }
    }
    out
}

fn segments(path: &str) -> Vec<String> {
    let end = path
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(path.len());
    path[..end]
        .split("::")
        .map(|s| {
            s.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .take_while(|s| !s.is_empty() && s.chars().all(|c| !c.is_ascii_uppercase()))
        .collect()
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
        for mut path in crate_paths(non_test_code(&text)) {
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
            let ok = if SHARED.contains(&top(m)) {
                SHARED.contains(&top(d))
            } else if let Some(mine) = rank(m) {
                SHARED.contains(&top(d)) || rank(d).is_some_and(|theirs| theirs <= mine)
                    // `--check` takes the parsed options.
                    || (m == "attach::check" && d == "cli")
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
            vec!["e".to_string()],
            vec!["f".to_string(), "g".to_string(), "h".to_string()],
            vec!["model".to_string()],
        ]
    );
}
