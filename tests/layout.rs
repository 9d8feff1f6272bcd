//! The crate's layout rules, read from the sources (their `crate::`, `super::` and child-module
//! paths): the library's modules form layers with no import cycle, between modules or between
//! the files of a folder module; clap stays in the command line; files stay readable in size;
//! `lib.rs` documents every module; the image extensions and the `unknown` label each have one
//! home, and there is one softmax and one argmax. Run with the other tests
//! (`cargo test --test layout`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The library's modules by layer, lowest first. A module may import from its own layer (as
/// long as no cycle forms) and from the ones below, never from one above.
const LAYERS: &[&[&str]] = &[
    &[
        "head",
        "dataset",
        "discover",
        "augment",
        "tflite",
        "preprocess",
        "models",
        "fetch",
        "metrics",
        "fsutil",
        "calibration",
        "views",
        "novelty",
        "confidence",
        "plots",
        "numeric",
    ],
    &["classifier", "features", "backbone", "source"],
    &["loader"],
    &["finetune", "calibrate", "capture"],
    &["serve"],
    &["push"],
];

const MAX_LINES: usize = 600;
const MAX_MAIN_LINES: usize = 250;

/// The file that holds the one softmax and the one argmax.
const NUMERIC: &str = "src/numeric.rs";
/// Files that call `exp` outside [`NUMERIC`] for something that is not a softmax, with how many
/// times: the temperature search steps in log t.
const EXP_ELSEWHERE: &[(&str, usize)] = &[("src/confidence.rs", 2)];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A source file as the layout sees it: its module path below `src/` and its code, with comments
/// and unit-test modules (whose `super::` means the file itself) left out.
struct SourceFile {
    rel: String,
    /// e.g. ["serve", "http"]; ["serve"] for serve/mod.rs; [] for lib.rs and main.rs.
    module: Vec<String>,
    code: String,
    lines: usize,
}

fn read_sources() -> Vec<SourceFile> {
    let root = src();
    let mut paths = Vec::new();
    rust_files(&root, &mut paths);
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let rel = path
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            let mut module: Vec<String> = rel
                .trim_end_matches(".rs")
                .split('/')
                .map(String::from)
                .collect();
            if matches!(
                module.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                module.pop();
            }
            let code = without_test_module(&text)
                .lines()
                .map(|l| match l.find("//") {
                    Some(i) => &l[..i],
                    None => l,
                })
                .collect::<Vec<_>>()
                .join("\n");
            SourceFile {
                rel: format!("src/{rel}"),
                module,
                code,
                lines: text.lines().count(),
            }
        })
        .collect()
}

/// `text` without its `#[cfg(test)] mod tests { … }` block, wherever it stands.
fn without_test_module(text: &str) -> String {
    let marker = "#[cfg(test)]\nmod tests {";
    match text.find(marker) {
        Some(start) => {
            let body = &text[start + marker.len()..];
            let end = start + marker.len() + matching_brace(body) + 1;
            format!("{}{}", &text[..start], &text[end.min(text.len())..])
        }
        None => text.to_string(),
    }
}

/// Every path `prefix::a::b…` in `code`, as its segments after the prefix; grouped imports
/// (`prefix::{a::b, c}`) give one path per item.
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().last();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = matching_brace(group);
            for item in split_top_level(&group[..end]) {
                out.push(segments(item.trim()));
            }
        } else {
            out.push(segments(rest));
        }
    }
    out.retain(|p| !p.is_empty());
    out
}

fn matching_brace(s: &str) -> usize {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return i,
            '}' => depth -= 1,
            _ => {}
        }
    }
    s.len()
}

fn split_top_level(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut items) = (0, 0, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&s[start..]);
    items
}

fn segments(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s;
    loop {
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if end == 0 {
            break;
        }
        out.push(rest[..end].to_string());
        match rest[end..].strip_prefix("::") {
            Some(next) if next.starts_with(|c: char| c.is_alphanumeric() || c == '_') => {
                rest = next
            }
            _ => break,
        }
    }
    out
}

fn library_files(files: &[SourceFile]) -> impl Iterator<Item = &SourceFile> {
    files.iter().filter(|f| {
        f.rel != "src/main.rs" && !f.rel.starts_with("src/cli/") && !f.module.is_empty()
    })
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// A cycle in `graph`, if there is one, as the nodes along it.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_string(), 1);
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            match state.get(next.as_str()).copied().unwrap_or(0) {
                1 => {
                    let from = stack.iter().position(|n| n == next).unwrap();
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(next, graph, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(node.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if state.get(node.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(node, graph, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

/// Module → the other top-level modules its files name through `crate::`.
fn module_graph(files: &[SourceFile]) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in library_files(files) {
        let from = &f.module[0];
        let deps = graph.entry(from.clone()).or_default();
        for path in paths_after(&f.code, "crate::") {
            if path[0] != *from {
                deps.insert(path[0].clone());
            }
        }
    }
    graph
}

#[test]
fn library_modules_import_only_downwards_and_form_no_cycle() {
    let files = read_sources();
    let graph = module_graph(&files);
    let mut wrong = Vec::new();
    for (from, deps) in &graph {
        let Some(from_layer) = layer_of(from) else {
            wrong.push(format!("module `{from}` has no layer in tests/layout.rs"));
            continue;
        };
        for to in deps {
            match layer_of(to) {
                None => wrong.push(format!("`{from}` imports `{to}`, which has no layer")),
                Some(l) if l > from_layer => wrong.push(format!(
                    "`{from}` (layer {from_layer}) imports `{to}` (layer {l})"
                )),
                Some(_) => {}
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
    assert_eq!(find_cycle(&graph), None, "import cycle between modules");
    // The check must see imports at all: a reader that found none would pass anything.
    assert!(graph["serve"].contains("loader") && graph["backbone"].contains("tflite"));
}

#[test]
fn files_of_a_folder_module_form_no_cycle() {
    let files = read_sources();
    let mut folders: BTreeMap<String, Vec<&SourceFile>> = BTreeMap::new();
    for f in &files {
        let is_folder_file = f.rel.matches('/').count() >= 2;
        if is_folder_file {
            let folder = f.rel.rsplit_once('/').unwrap().0.to_string();
            folders.entry(folder).or_default().push(f);
        }
    }
    assert!(folders.contains_key("src/serve") && folders.contains_key("src/source"));
    for (folder, members) in &folders {
        // A file is named by its module's last segment; the folder's mod.rs by "mod".
        let name_of = |f: &SourceFile| -> String {
            if f.rel.ends_with("/mod.rs") {
                "mod".into()
            } else {
                f.module.last().unwrap().clone()
            }
        };
        let children: BTreeSet<String> = members
            .iter()
            .map(|f| name_of(f))
            .filter(|n| n != "mod")
            .collect();
        let folder_module = folder.trim_start_matches("src/").replace('/', "::");
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for f in members {
            let me = name_of(f);
            let mut deps = BTreeSet::new();
            let mut target = |first: &str| {
                let to = if children.contains(first) {
                    first.to_string()
                } else {
                    "mod".to_string()
                };
                if to != me {
                    deps.insert(to);
                }
            };
            if me == "mod" {
                for child in &children {
                    if !paths_after(&f.code, &format!("{child}::")).is_empty() {
                        target(child);
                    }
                }
            } else {
                for path in paths_after(&f.code, "super::") {
                    target(&path[0]);
                }
            }
            let crate_prefix = format!("crate::{folder_module}::");
            for path in paths_after(&f.code, &crate_prefix) {
                target(&path[0]);
            }
            graph.insert(me, deps);
        }
        assert_eq!(
            find_cycle(&graph),
            None,
            "import cycle between the files of {folder}: {graph:?}"
        );
    }
}

#[test]
fn clap_is_used_only_by_the_command_line() {
    let offenders: Vec<String> = read_sources()
        .iter()
        .filter(|f| f.rel != "src/main.rs" && !f.rel.starts_with("src/cli/"))
        .filter(|f| f.code.contains("clap::") || f.code.contains("clap;"))
        .map(|f| f.rel.clone())
        .collect();
    assert!(offenders.is_empty(), "clap used in {offenders:?}");
}

#[test]
fn files_stay_short_and_main_only_dispatches() {
    let files = read_sources();
    let main = files.iter().find(|f| f.rel == "src/main.rs").unwrap();
    assert!(
        main.lines < MAX_MAIN_LINES,
        "src/main.rs has {} lines",
        main.lines
    );
    let long: Vec<String> = files
        .iter()
        .filter(|f| f.lines > MAX_LINES)
        .map(|f| format!("{} ({} lines)", f.rel, f.lines))
        .collect();
    assert!(long.is_empty(), "files over {MAX_LINES} lines: {long:?}");
}

#[test]
fn lib_rs_documents_every_module() {
    let files = read_sources();
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let mut modules: BTreeSet<String> = BTreeSet::new();
    for f in library_files(&files) {
        modules.insert(f.module[0].clone());
    }
    let undocumented: Vec<&String> = modules
        .iter()
        .filter(|m| !lib.contains(&format!("//! - [`{m}`]")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "modules without a line in lib.rs: {undocumented:?}"
    );
    let unlayered: Vec<&String> = modules.iter().filter(|m| layer_of(m).is_none()).collect();
    assert!(unlayered.is_empty(), "modules with no layer: {unlayered:?}");
}

/// The `src/` files, other than `owner`, whose code (unit tests included, comments left out,
/// compared in lower case) holds one of the lower-case `needles`, each with the needles it holds.
/// Unit tests count: a rule's second copy is one wherever it stands, and the files are read
/// whole because finding a test module's end by its braces is thrown off by a `{` in a string.
fn outside_owner(owner: &str, needles: &[&str]) -> Vec<String> {
    read_sources()
        .iter()
        .filter(|f| f.rel != owner)
        .filter_map(|f| {
            let text = std::fs::read_to_string(src().join(&f.rel["src/".len()..])).unwrap();
            let code: String = text
                .lines()
                .map(|l| l.find("//").map_or(l, |i| &l[..i]).to_ascii_lowercase() + "\n")
                .collect();
            let found: Vec<&str> = needles
                .iter()
                .copied()
                .filter(|n| code.contains(n))
                .collect();
            (!found.is_empty()).then(|| format!("{}: {found:?}", f.rel))
        })
        .collect()
}

#[test]
fn image_extensions_are_listed_only_in_discover() {
    // Any one of them quoted is a second list (or a second `is_image`) in the making; the
    // extension lists had drifted apart once (`.jfif` served but not trained on).
    let extensions = [
        "\"jpg\"", "\"jpeg\"", "\"jfif\"", "\"png\"", "\"bmp\"", "\"gif\"", "\"webp\"",
    ];
    let offenders = outside_owner("src/discover.rs", &extensions);
    assert!(
        offenders.is_empty(),
        "image extensions outside src/discover.rs (use discover::is_image_path or IMAGE_EXTENSIONS): {offenders:?}"
    );
}

#[test]
fn the_unknown_label_is_defined_only_in_classifier() {
    // Lower case: the code is compared without case.
    let definitions = ["const unknown_label", "static unknown_label", "\"unknown\""];
    let offenders = outside_owner("src/classifier.rs", &definitions);
    assert!(
        offenders.is_empty(),
        "the unknown label defined outside src/classifier.rs (use classifier::UNKNOWN_LABEL): {offenders:?}"
    );
}

/// The names of the functions `code` defines.
fn fn_names(code: &str) -> Vec<String> {
    paths_after(code, "fn ")
        .into_iter()
        .map(|segments| segments[0].clone())
        .collect()
}

#[test]
fn one_softmax_and_one_argmax() {
    let files = read_sources();
    let numeric = files.iter().find(|f| f.rel == NUMERIC).unwrap();
    // The check must see the functions it protects, or it would pass anything.
    let own = fn_names(&numeric.code);
    assert!(own.contains(&"softmax".to_string()) && own.contains(&"argmax".to_string()));
    let mut wrong = Vec::new();
    for f in files.iter().filter(|f| f.rel != NUMERIC) {
        for name in fn_names(&f.code) {
            if name.contains("softmax") || name.contains("argmax") {
                wrong.push(format!("{}: fn {name} (use numeric's)", f.rel));
            }
        }
        // A softmax needs an exponential, however its function is named.
        let exps = f.code.matches(".exp()").count() + f.code.matches("::exp(").count();
        let allowed = EXP_ELSEWHERE
            .iter()
            .find(|(rel, _)| *rel == f.rel)
            .map_or(0, |(_, n)| *n);
        if exps != allowed {
            wrong.push(format!(
                "{}: {exps} exp call(s), {allowed} expected (a softmax belongs in {NUMERIC}; \
                 an exp that is not one goes in EXP_ELSEWHERE, with why)",
                f.rel
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "a second softmax or argmax:\n{}",
        wrong.join("\n")
    );
}
