//! `classify`, `embed` and `predict`: one line of output per image, going on past an image that
//! fails (reported on its own line) and exiting 1 if any did.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use serde::Serialize;

use edge_mnv2::classifier::NO_THRESHOLD;
use edge_mnv2::models::Precision;
use edge_mnv2::{fsutil, loader, preprocess};

use super::args::{ClassifyArgs, EmbedArgs, PredictArgs};
use super::errors;

// The JSON lines' fields are declared in name order, and their f32 values widened to f64: that is
// how the outputs have always been printed (through serde_json's `Value`, whose maps sort their
// keys and whose numbers are f64), and scripts may compare lines as text.

#[derive(Serialize)]
struct ClassifyLine<'a> {
    file: &'a Path,
    model: &'a str,
    precision: Option<Precision>,
    threads: usize,
    top: Vec<ClassScore<'a>>,
}

#[derive(Serialize)]
struct ClassScore<'a> {
    index: usize,
    label: &'a str,
    score: f64,
}

#[derive(Serialize)]
struct EmbedLine<'a> {
    embedding: Vec<f64>,
    file: &'a Path,
    model: &'a str,
}

#[derive(Serialize)]
struct PredictLine<'a> {
    confidence: f64,
    file: &'a Path,
    /// The top class, or `unknown` when the novelty is above the head's threshold (predict has
    /// no confidence threshold).
    label: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    novelty: Option<f64>,
    probs: BTreeMap<String, f64>,
}

/// Runs `f` on every image, printing each failure as an error line and going on; a closed
/// stdout ends the run (there is no one left to print to).
fn for_each_image(images: &[PathBuf], mut f: impl FnMut(&Path) -> Result<()>) -> Result<ExitCode> {
    let mut failed = 0;
    for path in images {
        if let Err(e) = f(path) {
            if errors::is_stdout_closed(&e) {
                return Err(e);
            }
            errors::print(&e);
            failed += 1;
        }
    }
    Ok(errors::failed_images(failed, images.len()))
}

pub fn classify(args: &ClassifyArgs) -> Result<ExitCode> {
    let backbone = loader::backbone(&args.model.choice(), true)?;
    let mut out = errors::stdout();
    for_each_image(&args.images, |path| {
        let img = preprocess::load_rgb_reduced(path, backbone.input_size())?;
        let best = backbone.classify(&img, args.top)?;
        if args.json {
            let line = ClassifyLine {
                file: path,
                model: backbone.name(),
                precision: backbone.precision(),
                threads: backbone.threads(),
                top: best
                    .iter()
                    .map(|(index, label, score)| ClassScore {
                        index: *index,
                        label,
                        score: f64::from(*score),
                    })
                    .collect(),
            };
            writeln!(out, "{}", serde_json::to_string(&line)?)?;
        } else {
            writeln!(out, "{}", path.display())?;
            for (i, label, p) in &best {
                writeln!(out, "  {p:.4}  {i:>4}  {label}")?;
            }
        }
        Ok(())
    })
}

pub fn embed(args: &EmbedArgs) -> Result<ExitCode> {
    let out = args.out.as_deref();
    if let Some(out) = out {
        if out.is_dir() {
            anyhow::bail!("{}: is a directory, expected an output file", out.display());
        }
    }
    let backbone = loader::backbone(&args.model.choice(), false)?;
    let mut text = String::new();
    let mut stdout = errors::stdout();
    let code = for_each_image(&args.images, |path| {
        let img = preprocess::load_rgb_reduced(path, backbone.input_size())?;
        let embedding = backbone.embed(&img)?;
        let line = if args.json {
            serde_json::to_string(&EmbedLine {
                embedding: embedding.iter().map(|&v| f64::from(v)).collect(),
                file: path,
                model: backbone.name(),
            })?
        } else {
            let values: Vec<String> = embedding.iter().map(|v| v.to_string()).collect();
            format!("{}\t{}", path.display(), values.join(" "))
        };
        match out {
            Some(_) => {
                text.push_str(&line);
                text.push('\n');
            }
            None => writeln!(stdout, "{line}")?,
        }
        Ok(())
    })?;
    if let Some(out) = out {
        fsutil::write_atomic(out, text.as_bytes())?;
    }
    Ok(code)
}

pub fn predict(args: &PredictArgs) -> Result<ExitCode> {
    let c = loader::classifier(&args.head, &args.model.choice())?;
    let mut out = errors::stdout();
    for_each_image(&args.images, |path| {
        let img = preprocess::load_rgb_reduced(path, c.backbone.input_size())?;
        let p = c.predict(&img, args.views)?;
        let label = p.reported_label(NO_THRESHOLD);
        if args.json {
            let line = PredictLine {
                confidence: f64::from(p.confidence),
                file: path,
                label,
                novelty: p.novelty.map(f64::from),
                probs: p.probs_by_class(&c.head.classes, f64::from),
            };
            writeln!(out, "{}", serde_json::to_string(&line)?)?;
        } else {
            // A rejected image still names the class it was closest to, whose confidence it is.
            let rejected = if p.is_rejected(NO_THRESHOLD) {
                format!(" ({})", p.label)
            } else {
                String::new()
            };
            let novelty = p
                .novelty
                .map_or(String::new(), |n| format!("\tnovelty {n:.4}"));
            writeln!(
                out,
                "{}\t{}\t{:.4}{rejected}{novelty}",
                path.display(),
                label,
                p.confidence
            )?;
        }
        Ok(())
    })
}
