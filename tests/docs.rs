//! The documentation agrees with the binary. Every command line `edge-mnv2 <subcommand> …` in
//! README.md, deploy/README.md and the `--help` texts (their examples and the commands they name)
//! is checked against the built binary as far as it can run here:
//! - its subcommand exists and takes every flag the line uses (usage lines, with `[…]` and `|`,
//!   included), as that subcommand's `--help` lists them;
//! - a line with no placeholders (`edge-mnv2 finetune data --out head`) is given to the binary as
//!   written with `--help` appended: clap parses every flag and value before it reaches `--help`,
//!   so a misspelt flag, a flag of another subcommand or a value it refuses fails, while what
//!   needs a camera, the network, a head or a training run is not started;
//! - the few that run here in a moment (`models`, `models list`) are run for real.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;

/// One documented command line: where it is, and its words after `edge-mnv2`.
#[derive(Debug)]
struct DocLine {
    at: String,
    words: Vec<String>,
}

impl DocLine {
    /// No usage notation (`[--x]`, `a|b`, `…`, `<x>`): the line is meant to be typed as it is.
    fn concrete(&self) -> bool {
        !self
            .words
            .iter()
            .any(|w| w.contains(['[', ']', '(', ')', '|', '<', '>', '…', '$']) || w.contains("..."))
    }

    /// The flags the line uses (`--name`, `-x`), without values.
    fn flags(&self) -> Vec<String> {
        self.words
            .iter()
            .map(|w| w.trim_matches(['[', ']', '(', ')']))
            .filter(|w| w.starts_with('-') && w.len() > 1 && *w != "--")
            .map(|w| w.split('=').next().unwrap().to_string())
            .collect()
    }
}

/// Cuts a shell line at what ends its command: a comment, a pipe, a redirection, `&&`, `;`.
fn shell_command(line: &str) -> &str {
    let mut end = line.len();
    for stop in [" #", " | ", " && ", " > ", " 2>", "; "] {
        if let Some(i) = line.find(stop) {
            end = end.min(i);
        }
    }
    &line[..end]
}

fn doc_line(at: String, command: &str) -> Option<DocLine> {
    let rest = command.trim().strip_prefix("edge-mnv2 ")?;
    let words: Vec<String> = rest.split_whitespace().map(str::to_string).collect();
    // "edge-mnv2 <board>" and prose: a subcommand is a lowercase word.
    let first = words.first()?;
    first
        .chars()
        .all(|c| c.is_ascii_lowercase() || c == '-')
        .then_some(DocLine { at, words })
}

/// The command lines of a Markdown file or a help text: lines of fenced code blocks (joined over
/// `\` continuations) and, in a help text, lines that start with `edge-mnv2 ` (its examples); and
/// inline code spans that do (in tables, `\|` is the usage notation's alternative, not a pipe).
fn command_lines(name: &str, text: &str, markdown: bool) -> Vec<DocLine> {
    let mut found = Vec::new();
    let mut in_fence = false;
    let mut pending = String::new();
    for (n, line) in text.lines().enumerate() {
        let at = format!("{name}:{}", n + 1);
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        let trimmed = line.trim();
        if in_fence || (!markdown && trimmed.starts_with("edge-mnv2 ")) {
            if let Some(head) = trimmed.strip_suffix('\\') {
                pending.push_str(head);
                pending.push(' ');
                continue;
            }
            let joined = std::mem::take(&mut pending) + trimmed;
            let joined = joined.trim_start_matches("$ ").trim_start_matches("sudo ");
            found.extend(doc_line(at, shell_command(joined)));
            continue;
        }
        for span in line.split('`').skip(1).step_by(2) {
            let command = match span.find(" | ") {
                Some(pipe) => &span[..pipe],
                None => span,
            };
            found.extend(doc_line(at.clone(), &command.replace("\\|", " | ")));
        }
    }
    found
}

/// `edge-mnv2 <path> --help`: its text, or `None` when clap refuses the path.
fn help(path: &[&str]) -> Option<String> {
    let mut args = path.to_vec();
    args.push("--help");
    let out = edge(&args);
    (out.status.code() == Some(0)).then(|| stdout(&out))
}

/// The flags a help text lists (`-o, --out <FILE>` gives `-o` and `--out`).
fn listed_flags(help: &str) -> BTreeSet<String> {
    help.lines()
        .filter(|l| l.trim_start().starts_with('-'))
        .flat_map(|l| {
            l.split([' ', ','])
                .filter(|w| !w.is_empty())
                .take_while(|w| w.starts_with('-'))
                .filter(|w| w.len() > 1)
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The subcommands a help text lists under `Commands:`.
fn listed_commands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

/// Every subcommand path (`["models", "fetch"]`, …) with its help text.
fn subcommands() -> BTreeMap<Vec<String>, String> {
    let top = help(&[]).expect("edge-mnv2 --help");
    let mut all = BTreeMap::new();
    for c in listed_commands(&top) {
        let text = help(&[&c]).unwrap_or_else(|| panic!("{c} --help"));
        for nested in listed_commands(&text) {
            let nested_help = help(&[&c, &nested]).unwrap_or_else(|| panic!("{c} {nested}"));
            all.insert(vec![c.clone(), nested], nested_help);
        }
        all.insert(vec![c], text);
    }
    all.insert(Vec::new(), top);
    all
}

/// The subcommand path a line names: the longest known prefix of its words (brackets dropped,
/// so `models [list]` is `models list`).
fn path_of(line: &DocLine, known: &BTreeMap<Vec<String>, String>) -> Option<Vec<String>> {
    let words: Vec<String> = line
        .words
        .iter()
        .map(|w| w.trim_matches(['[', ']']).to_string())
        .collect();
    if words[0].starts_with('-') {
        // `edge-mnv2 --help`, `edge-mnv2 --version`.
        return Some(Vec::new());
    }
    (1..=words.len().min(2))
        .rev()
        .map(|n| words[..n].to_vec())
        .find(|p| known.contains_key(p))
}

#[test]
fn every_documented_command_line_parses_with_the_binary() {
    let known = subcommands();
    let mut lines = Vec::new();
    for doc in ["README.md", "deploy/README.md"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(doc);
        let text = std::fs::read_to_string(&path).unwrap();
        lines.extend(command_lines(doc, &text, true));
    }
    let help_lines = known
        .iter()
        .flat_map(|(path, text)| command_lines(&format!("{} --help", path.join(" ")), text, false))
        .collect::<Vec<_>>();
    assert!(
        help_lines
            .iter()
            .any(|l| l.words[0] == "calibrate" && l.words.len() > 1),
        "calibrate --help gives examples: {help_lines:?}"
    );
    lines.extend(help_lines);
    assert!(lines.len() >= 30, "too few command lines found: {lines:#?}");

    let mut problems = Vec::new();
    let mut parsed = 0;
    for line in &lines {
        let Some(path) = path_of(line, &known) else {
            problems.push(format!("{}: no such subcommand: {:?}", line.at, line.words));
            continue;
        };
        let flags = listed_flags(&known[&path]);
        for flag in line.flags() {
            if !flags.contains(&flag) {
                problems.push(format!(
                    "{}: `edge-mnv2 {}` has no {flag} (it has {flags:?})",
                    line.at,
                    path.join(" ")
                ));
            }
        }
        if line.concrete() {
            let mut args: Vec<&str> = line.words.iter().map(String::as_str).collect();
            args.push("--help");
            let out = edge(&args);
            if out.status.code() != Some(0) || !stdout(&out).starts_with(char::is_alphabetic) {
                problems.push(format!(
                    "{}: `edge-mnv2 {}` does not parse: {}",
                    line.at,
                    line.words.join(" "),
                    stderr(&out).trim()
                ));
            }
            parsed += 1;
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(parsed >= 10, "too few concrete lines: {lines:#?}");

    // What runs here in a moment runs: listing the models needs no network.
    for line in lines
        .iter()
        .filter(|l| l.concrete() && l.words[0] == "models")
    {
        if line.words.get(1).is_some_and(|w| w != "list") {
            continue;
        }
        let args: Vec<&str> = line.words.iter().map(String::as_str).collect();
        let out = edge(&args);
        assert_eq!(out.status.code(), Some(0), "{}: {}", line.at, stderr(&out));
    }
}
