//! The `edge-mnv2` command line: parses arguments, calls the library, prints results.
//! Exit codes: 0 success, 1 any error (a one-line message on stderr), 2 never used.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use edge_mnv2::backbone::Backbone;
use edge_mnv2::models::{self, Manifest};
use edge_mnv2::{fsutil, preprocess};

#[derive(Parser)]
#[command(
    name = "edge-mnv2",
    version,
    about = "A trainable MobileNetV2 image classifier for Linux boards"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct ModelArg {
    /// Model name from `edge-mnv2 models`, or a path to a model file
    #[arg(long, short = 'm', value_name = "PATH|NAME")]
    model: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Print the top-K ImageNet classes of each image
    Classify {
        #[command(flatten)]
        model: ModelArg,
        /// How many classes to print per image
        #[arg(long, short = 'k', default_value_t = 5)]
        top: usize,
        /// One JSON object per image on stdout
        #[arg(long)]
        json: bool,
        #[arg(required = true, value_name = "IMAGE")]
        images: Vec<PathBuf>,
    },
    /// Write the 1280-d MobileNetV2 embedding of each image
    ///
    /// Output: one line per image. Default format is tab-separated: the image path, then the 1280
    /// values separated by spaces. With --json, JSON lines: {"file", "model", "embedding": [...]}.
    Embed {
        #[command(flatten)]
        model: ModelArg,
        /// JSON lines instead of tab-separated text
        #[arg(long)]
        json: bool,
        /// Write to FILE (atomically) instead of stdout
        #[arg(long, short = 'o', value_name = "FILE")]
        out: Option<PathBuf>,
        #[arg(required = true, value_name = "IMAGE")]
        images: Vec<PathBuf>,
    },
    /// List the known models, where each was found, and whether its checksum matches
    Models {
        /// JSON instead of a table
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_target(false)
        .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("edge-mnv2: error: {}", one_line(&e));
            ExitCode::from(1)
        }
    }
}

/// anyhow's `{:#}` joins the causes with ": "; tract errors may still carry newlines.
fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Classify {
            model,
            top,
            json,
            images,
        } => classify(model.model.as_deref(), top, json, &images),
        Command::Embed {
            model,
            json,
            out,
            images,
        } => embed(model.model.as_deref(), json, out.as_deref(), &images),
        Command::Models { json } => list_models(json),
    }
}

fn load_backbone(model: Option<&str>, with_scores: bool) -> Result<Backbone> {
    let resolved = models::resolve(&Manifest::builtin(), model)?;
    Ok(Backbone::load(&resolved, with_scores)?)
}

/// Runs `f` on every image, reporting failures one line each on stderr and going on;
/// the exit code is 1 if any image failed.
fn for_each_image(images: &[PathBuf], mut f: impl FnMut(&Path) -> Result<()>) -> ExitCode {
    let mut failed = 0;
    for path in images {
        if let Err(e) = f(path) {
            eprintln!("edge-mnv2: error: {}", one_line(&e));
            failed += 1;
        }
    }
    if failed > 0 {
        eprintln!("edge-mnv2: {failed} of {} images failed", images.len());
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn classify(model: Option<&str>, top: usize, json: bool, images: &[PathBuf]) -> Result<ExitCode> {
    let backbone = load_backbone(model, true)?;
    let stdout = std::io::stdout();
    Ok(for_each_image(images, |path| {
        let img = preprocess::load_rgb(path)?;
        let best = backbone.classify(&img, top)?;
        let mut out = stdout.lock();
        if json {
            let top: Vec<_> = best
                .iter()
                .map(|(i, l, p)| json!({"index": i, "label": l, "score": p}))
                .collect();
            let line = json!({"file": path, "model": backbone.name(), "top": top});
            writeln!(out, "{line}")?;
        } else {
            writeln!(out, "{}", path.display())?;
            for (i, label, p) in &best {
                writeln!(out, "  {p:.4}  {i:>4}  {label}")?;
            }
        }
        Ok(())
    }))
}

fn embed(
    model: Option<&str>,
    json: bool,
    out: Option<&Path>,
    images: &[PathBuf],
) -> Result<ExitCode> {
    if let Some(out) = out {
        if out.is_dir() {
            anyhow::bail!("{}: is a directory, expected an output file", out.display());
        }
    }
    let backbone = load_backbone(model, false)?;
    let mut text = String::new();
    let stdout = std::io::stdout();
    let code = for_each_image(images, |path| {
        let img = preprocess::load_rgb(path)?;
        let embedding = backbone.embed(&img)?;
        let line = if json {
            json!({"file": path, "model": backbone.name(), "embedding": embedding}).to_string()
        } else {
            let values: Vec<String> = embedding.iter().map(|v| v.to_string()).collect();
            format!("{}\t{}", path.display(), values.join(" "))
        };
        match out {
            Some(_) => {
                text.push_str(&line);
                text.push('\n');
            }
            None => writeln!(stdout.lock(), "{line}")?,
        }
        Ok(())
    });
    if let Some(out) = out {
        fsutil::write_atomic(out, text.as_bytes())?;
    }
    Ok(code)
}

fn list_models(json: bool) -> Result<ExitCode> {
    let manifest = Manifest::builtin();
    let mut rows = Vec::new();
    for spec in &manifest.models {
        let (path, status) = match models::locate(spec) {
            None => (None, "not found".to_string()),
            Some((path, _)) => {
                let status = match models::sha256_file(&path) {
                    Err(e) => format!("unreadable: {e}"),
                    Ok(_) if spec.sha256.is_empty() => "found (checksum not pinned)".into(),
                    Ok(sum) if sum == spec.sha256 => "ok".into(),
                    Ok(sum) => format!("CHECKSUM MISMATCH (sha256 {sum})"),
                };
                (Some(path), status)
            }
        };
        rows.push((spec, path, status));
    }
    let mut out = std::io::stdout().lock();
    if json {
        let list: Vec<_> = rows
            .iter()
            .map(|(spec, path, status)| {
                json!({
                    "name": spec.name, "default": spec.name == manifest.default,
                    "file": spec.file, "path": path, "status": status,
                    "sha256": spec.sha256, "url": spec.url,
                    "embedding": true, "scores": spec.has_scores(),
                    "description": spec.description, "licence": spec.licence,
                })
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
