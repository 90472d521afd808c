//! The library's shape: each module sits in a layer, and imports (`crate::…`, `super::…`) run
//! only to its own layer or the ones below, with no circle anywhere. A module and its own
//! submodules are one unit (a parent uses its children; a child may use its parent's items).
//! The binary (`src/main.rs`, `src/cli/`) is the top layer and may use everything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The layers, bottom to top, and the top-level modules of each. A new module must be placed
/// here: the test fails on one it cannot place.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "formats",
        &[
            "clock",
            "exit",
            "json_float",
            "rng",
            "choice",
            "fuzz",
            "layout",
            "shard",
            "slide",
            "metrics",
            "spec",
            "store",
            "predictions",
            "process",
            "kube_syntax",
            "output",
            "pickle",
        ],
    ),
    ("datasets", &["dataset", "stage", "weights"]),
    ("experiment", &["experiment"]),
    ("run records", &["run", "attempt"]),
    ("backends", &["backend"]),
    (
        "sweeps, predict, reports, tracking",
        &["sweep", "predict", "report", "tracking", "track", "listing"],
    ),
];

/// One source file: its module path (`["backend", "kube", "job"]`) and text.
struct Source {
    file: String,
    module: Vec<String>,
    text: String,
}

/// One import: from the file's module to the module its path names, at a line.
#[derive(Debug, Clone)]
struct Edge {
    from: Vec<String>,
    to: Vec<String>,
    file: String,
    line: usize,
}

/// The library's source files under `src`, without the binary's.
fn library_sources(src: &Path) -> Vec<Source> {
    let mut out = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path
                .strip_prefix(src)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if rel == "cli" || rel == "main.rs" {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if rel.ends_with(".rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                out.push(source(&format!("src/{rel}"), text));
            }
        }
    }
    out
}

/// `file` (`src/backend/kube/mod.rs`) as a source with its module path.
fn source(file: &str, text: String) -> Source {
    let rel = file
        .strip_prefix("src/")
        .unwrap()
        .strip_suffix(".rs")
        .unwrap();
    let mut module: Vec<String> = rel.split('/').map(String::from).collect();
    if matches!(module.last().map(String::as_str), Some("mod" | "lib")) {
        module.pop();
    }
    Source {
        file: file.to_string(),
        module,
        text,
    }
}

/// `text` with comments and the contents of string literals blanked (lines kept), so that
/// doc links and messages are not taken for imports.
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            while i < b.len() && !b[i..].starts_with(b"*/") {
                out.push(if b[i] == b'\n' { '\n' } else { ' ' });
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' || b[i..].starts_with(b"r#\"") || b[i..].starts_with(b"r\"") {
            let hashes = if b[i] == b'r' {
                b[i + 1..].iter().take_while(|&&c| c == b'#').count()
            } else {
                0
            };
            let raw = b[i] == b'r';
            i += if raw { 2 + hashes } else { 1 };
            out.push('"');
            while i < b.len() {
                if !raw && b[i] == b'\\' {
                    i += 2;
                    continue;
                }
                if b[i] == b'"' && b[i + 1..].iter().take(hashes).all(|&c| c == b'#') {
                    i += 1 + hashes;
                    break;
                }
                if b[i] == b'\n' {
                    out.push('\n');
                }
                i += 1;
            }
            out.push('"');
        } else if b[i] == b'\'' && i + 2 < b.len() && (b[i + 2] == b'\'' || b[i + 1] == b'\\') {
            // A char literal ('"', '\\', '{'): skipped so its quote or brace is not code.
            i += if b[i + 1] == b'\\' { 2 } else { 1 };
            while i < b.len() && b[i] != b'\'' {
                i += 1;
            }
            if b[i - 1] == b'\\' && b[i - 2] == b'\'' {
                // '\'': the escaped quote is the char, the next one closes it.
                i += 1;
            }
            out.push_str("' '");
            i += 1;
        } else {
            let ch = text[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// The paths a use tree names, starting at byte `i` of `code` just after `prefix::`: `a::b`,
/// `a::{b, c::{d, e}}`, `a::*`, `self`, `a as b`. Returns where the tree ends.
fn use_tree(code: &[u8], mut i: usize, prefix: &[String], out: &mut Vec<Vec<String>>) -> usize {
    let skip_space = |mut i: usize| {
        while i < code.len() && code[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    let ident_end = |mut i: usize| {
        while i < code.len() && (code[i].is_ascii_alphanumeric() || code[i] == b'_') {
            i += 1;
        }
        i
    };
    let mut path = prefix.to_vec();
    loop {
        i = skip_space(i);
        if code.get(i) == Some(&b'{') {
            i += 1;
            loop {
                i = skip_space(i);
                if code.get(i) == Some(&b'}') {
                    return i + 1;
                }
                let end = use_tree(code, i, &path, out);
                i = skip_space(end);
                match code.get(i) {
                    Some(b',') => i += 1,
                    Some(b'}') => return i + 1,
                    _ => return i,
                }
            }
        }
        let start = i;
        i = ident_end(i);
        let ident = std::str::from_utf8(&code[start..i]).unwrap();
        if !ident.is_empty() && ident != "self" {
            path.push(ident.to_string());
        }
        if code[i..].starts_with(b"::") {
            i += 2;
            continue;
        }
        out.push(path);
        // `name as other`: the rename is no path.
        let after = skip_space(i);
        if code[after..].starts_with(b"as")
            && code.get(after + 2).is_some_and(u8::is_ascii_whitespace)
        {
            return ident_end(skip_space(after + 2));
        }
        return i;
    }
}

/// Every import in `s`: the `crate::`, `super::` and `self::` paths it names, resolved to
/// module paths (items are dropped by the caller, which knows the modules).
fn paths_in(s: &Source) -> Vec<(Vec<String>, usize)> {
    let code = code_only(&s.text);
    let b = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let boundary = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        let base: Option<(usize, Vec<String>)> = if !boundary {
            None
        } else if b[i..].starts_with(b"crate::") {
            Some((i + 7, Vec::new()))
        } else if b[i..].starts_with(b"self::") {
            Some((i + 6, s.module.clone()))
        } else if b[i..].starts_with(b"super::") {
            // `super` is the parent module, for `a/b.rs` and `a/b/mod.rs` alike.
            let mut m = s.module.clone();
            m.pop();
            let mut j = i + 7;
            while b[j..].starts_with(b"super::") {
                m.pop();
                j += 7;
            }
            Some((j, m))
        } else {
            None
        };
        match base {
            Some((start, prefix)) => {
                let line = code[..i].matches('\n').count() + 1;
                let mut paths = Vec::new();
                i = use_tree(b, start, &prefix, &mut paths);
                out.extend(paths.into_iter().map(|p| (p, line)));
            }
            None => i += 1,
        }
    }
    out
}

/// The imports between modules: each path cut to the longest module it names; a module's
/// imports of itself, its ancestors and its descendants are left out.
fn edges(sources: &[Source]) -> Vec<Edge> {
    let modules: BTreeSet<&[String]> = sources.iter().map(|s| s.module.as_slice()).collect();
    let mut out = Vec::new();
    for s in sources {
        for (path, line) in paths_in(s) {
            let Some(to) = (1..=path.len())
                .rev()
                .map(|n| &path[..n])
                .find(|p| modules.contains(p))
            else {
                continue;
            };
            let related = to.starts_with(&s.module) || s.module.starts_with(to);
            if !related {
                out.push(Edge {
                    from: s.module.clone(),
                    to: to.to_vec(),
                    file: s.file.clone(),
                    line,
                });
            }
        }
    }
    out
}

/// The layer (index into [`LAYERS`]) of module `m`.
fn layer_of(m: &[String]) -> Option<usize> {
    let top = m.first()?;
    LAYERS.iter().position(|(_, ms)| ms.contains(&top.as_str()))
}

/// What is wrong with the shape of `sources`: modules no layer holds, imports that run upward,
/// and circles, one line each naming the file and line.
fn violations(sources: &[Source]) -> Vec<String> {
    let mut out = Vec::new();
    for s in sources {
        if !s.module.is_empty() && layer_of(&s.module).is_none() {
            out.push(format!(
                "{}: module {} is in no layer: place it in LAYERS",
                s.file,
                s.module.join("::")
            ));
        }
    }
    let edges = edges(sources);
    for e in &edges {
        if let (Some(from), Some(to)) = (layer_of(&e.from), layer_of(&e.to))
            && to > from
        {
            out.push(format!(
                "{}:{}: {} ({}) imports {} ({}), a layer above it",
                e.file,
                e.line,
                e.from.join("::"),
                LAYERS[from].0,
                e.to.join("::"),
                LAYERS[to].0
            ));
        }
    }
    out.extend(circles(&edges));
    out
}

/// The circles among `edges`: for each group of modules that reach one another, the shortest
/// way around from its first module, with the import that makes each step.
fn circles(edges: &[Edge]) -> Vec<String> {
    let mut next: BTreeMap<&[String], Vec<&Edge>> = BTreeMap::new();
    for e in edges {
        next.entry(e.from.as_slice()).or_default().push(e);
    }
    let reach = |from: &[String]| -> BTreeSet<Vec<String>> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_vec()];
        while let Some(m) = todo.pop() {
            for e in next.get(m.as_slice()).into_iter().flatten() {
                if seen.insert(e.to.clone()) {
                    todo.push(e.to.clone());
                }
            }
        }
        seen
    };
    let mut grouped: BTreeSet<Vec<String>> = BTreeSet::new();
    let mut out = Vec::new();
    for start in next.keys() {
        if grouped.contains(*start) || !reach(start).contains(*start) {
            continue;
        }
        // The group: every module on a way from `start` back to it.
        let group: BTreeSet<Vec<String>> = reach(start)
            .into_iter()
            .filter(|m| reach(m).contains(*start))
            .collect();
        grouped.extend(group.iter().cloned());
        out.push(shortest_circle(start, &next));
    }
    out
}

/// The shortest way from `start` back to itself, breadth first, as one line.
fn shortest_circle(start: &[String], next: &BTreeMap<&[String], Vec<&Edge>>) -> String {
    let mut came: BTreeMap<&[String], &Edge> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    let mut last = None;
    'search: while let Some(m) = queue.pop_front() {
        for e in next.get(m).into_iter().flatten() {
            if e.to.as_slice() == start {
                last = Some(*e);
                break 'search;
            }
            if !came.contains_key(e.to.as_slice()) {
                came.insert(e.to.as_slice(), e);
                queue.push_back(e.to.as_slice());
            }
        }
    }
    let mut steps = vec![last.expect("start is on a circle")];
    while steps.last().unwrap().from.as_slice() != start {
        steps.push(came[steps.last().unwrap().from.as_slice()]);
    }
    steps.reverse();
    let path: Vec<String> = steps
        .iter()
        .map(|e| format!("{} ({}:{})", e.from.join("::"), e.file, e.line))
        .collect();
    format!("circle: {} -> {}", path.join(" -> "), start.join("::"))
}

fn real_tree() -> Vec<Source> {
    library_sources(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
}

#[test]
fn imports_run_down_the_layers_without_a_circle() {
    let sources = real_tree();
    assert!(sources.len() > 50, "found {} files", sources.len());
    let bad = violations(&sources);
    assert!(bad.is_empty(), "the module graph:\n{}", bad.join("\n"));
}

/// The check finds what it is for: a planted upward import, a circle inside one layer, and a
/// module nobody placed.
#[test]
fn a_planted_upward_import_or_circle_is_found() {
    let plant = |file: &str, line: &str| {
        let mut sources = real_tree();
        let s = sources.iter_mut().find(|s| s.file == file).unwrap();
        s.text = format!("{line}\n{}", s.text);
        violations(&sources)
    };
    let bad = plant("src/metrics.rs", "use crate::backend::BackendError;");
    assert_eq!(
        bad[0],
        "src/metrics.rs:1: metrics (formats) imports backend (backends), a layer above it"
    );
    // The backends use the metrics, so the planted import also closes a circle.
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert!(
        bad[1].starts_with("circle: ") && bad[1].contains("metrics (src/metrics.rs:1)"),
        "{bad:?}"
    );
    let bad = plant(
        "src/report/page.rs",
        "use crate::report::{html::{self, write_run_report}};",
    );
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(
        bad[0].starts_with("circle: report::html (src/report/html.rs:")
            && bad[0].contains("report::page (src/report/page.rs:1)"),
        "{bad:?}"
    );
    let mut sources = real_tree();
    sources.push(source("src/gadget.rs", "use crate::clock;".into()));
    assert_eq!(
        violations(&sources),
        ["src/gadget.rs: module gadget is in no layer: place it in LAYERS"]
    );
}

#[test]
fn imports_are_read_from_use_trees_and_paths_not_comments_or_strings() {
    let s = source(
        "src/backend/kube/job.rs",
        r#"
use super::{defaults::Defaults, kueue};
use crate::{clock, dataset::{manifest::{self, X}, split::Split}};
// crate::report::html is only mentioned here
let url = "crate::sweep::driver";
let c = '"'; let x = crate::spec::ATTEMPT_ENV; super::super::local::f();
"#
        .into(),
    );
    let mut got: Vec<String> = paths_in(&s)
        .into_iter()
        .map(|(p, l)| format!("{l}:{}", p.join("::")))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            "2:backend::kube::defaults::Defaults",
            "2:backend::kube::kueue",
            "3:clock",
            "3:dataset::manifest",
            "3:dataset::manifest::X",
            "3:dataset::split::Split",
            "6:backend::local::f",
            "6:spec::ATTEMPT_ENV",
        ]
    );
}
