//! `models list` and `models fetch`: what the manifest knows, where each file was found, and the
//! verified download.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use serde::Serialize;

use edge_mnv2::fetch::{self, FetchError, Fetched};
use edge_mnv2::models::{self, Manifest, ModelSpec};

use super::args::{ModelsAction, ModelsArgs};
use super::{errors, progress};

/// One model of `models list --json`; fields in name order, the order it has always printed.
#[derive(Serialize)]
struct ModelRow<'a> {
    default: bool,
    description: &'a str,
    embedding: bool,
    file: &'a str,
    licence: &'a str,
    name: &'a str,
    path: Option<&'a PathBuf>,
    scores: bool,
    /// "" when not pinned, as the list has always shown it.
    sha256: &'a str,
    status: &'a str,
    /// "" when the file has no download.
    url: &'a str,
}

pub fn run(args: &ModelsArgs) -> Result<ExitCode> {
    match &args.action {
        None => list(args.json),
        Some(ModelsAction::List { json }) => list(args.json || *json),
        Some(ModelsAction::Fetch {
            name,
            all,
            url,
            force,
        }) => fetch(name.as_deref(), *all, url.clone(), *force),
    }
}

/// Where a manifest entry's file is and whether its checksum holds; and whether this build can
/// read it at all.
fn status_of(spec: &ModelSpec) -> (Option<PathBuf>, String) {
    let (path, status) = file_status(spec);
    match spec.format.missing_feature() {
        Some(feature) => (
            path,
            format!("{status}; this build cannot read it: rebuild with `--features {feature}`"),
        ),
        None => (path, status),
    }
}

fn file_status(spec: &ModelSpec) -> (Option<PathBuf>, String) {
    let Some((path, _)) = models::locate(spec) else {
        return (None, "not found".to_string());
    };
    let status = match (models::sha256_file(&path), &spec.sha256) {
        (Err(e), _) => format!("unreadable: {e}"),
        (Ok(_), None) => "found (checksum not pinned)".into(),
        (Ok(sum), Some(pinned)) if sum == *pinned => "ok".into(),
        (Ok(sum), Some(_)) => format!("CHECKSUM MISMATCH (sha256 {sum})"),
    };
    (Some(path), status)
}

fn list(json: bool) -> Result<ExitCode> {
    let manifest = Manifest::builtin();
    let rows: Vec<(&ModelSpec, Option<PathBuf>, String)> = manifest
        .models
        .iter()
        .map(|spec| {
            let (path, status) = status_of(spec);
            (spec, path, status)
        })
        .collect();
    let mut out = errors::stdout();
    if json {
        let list: Vec<ModelRow> = rows
            .iter()
            .map(|(spec, path, status)| ModelRow {
                default: spec.name == manifest.default,
                description: &spec.description,
                embedding: true,
                file: &spec.file,
                licence: &spec.licence,
                name: &spec.name,
                path: path.as_ref(),
                scores: spec.has_scores(),
                sha256: spec.sha256.as_deref().unwrap_or(""),
                status,
                url: spec.url.as_deref().unwrap_or(""),
            })
            .collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
    } else {
        for (spec, path, status) in &rows {
            let mark = if spec.name == manifest.default {
                " (default)"
            } else {
                ""
            };
            let kind = if spec.has_scores() {
                "classifier+embedding"
            } else {
                "embedding"
            };
            writeln!(out, "{}{mark}  [{kind}]", spec.name)?;
            writeln!(out, "    {}", spec.description)?;
            match path {
                Some(p) => writeln!(out, "    {}: {status}", p.display())?,
                None => writeln!(out, "    {}: {status}", spec.file)?,
            }
        }
        let dirs: Vec<String> = models::search_dirs()
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        writeln!(out, "searched: {}", dirs.join(", ")).context("writing to stdout")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// One model (or every downloadable one with --all) and its label file; exit 1 if any failed.
fn fetch(name: Option<&str>, all: bool, url: Option<String>, force: bool) -> Result<ExitCode> {
    let manifest = Manifest::builtin();
    let specs = fetch::select(&manifest, name, all, url.is_some())?;
    let opts = fetch::FetchOptions { url, force };
    let cancel = progress::cancel_on_ctrl_c();
    let bar = progress::Download::new();
    let mut failed = 0;
    for spec in &specs {
        let fetched = fetch::fetch(spec, &opts, &bar, cancel).map(Some);
        // The label file only after the model: a failed model download leaves nothing at all.
        let ok = report(&spec.name, fetched)?
            && report(
                &format!("{} labels", spec.name),
                fetch::fetch_labels(&manifest, spec, &opts, &bar, cancel),
            )?;
        if !ok {
            failed += 1;
        }
    }
    Ok(if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Prints what became of one download; whether it succeeded (or had nothing to do).
fn report(what: &str, fetched: Result<Option<Fetched>, FetchError>) -> Result<bool> {
    let mut out = errors::stdout();
    match fetched {
        Ok(None) => {}
        Ok(Some(Fetched::AlreadyPresent { path })) => writeln!(
            out,
            "{what}: already present at {} (sha256 ok); --force downloads it again",
            path.display()
        )?,
        Ok(Some(Fetched::Downloaded { path, url, bytes })) => writeln!(
            out,
            "{what}: downloaded {url} to {} ({bytes} bytes, sha256 ok)",
            path.display()
        )?,
        Err(e) => {
            errors::print(&e.into());
            return Ok(false);
        }
    }
    Ok(true)
}
