//! `edge-mnv2 calibrate`: measure the backbone in every precision on this board and write the
//! calibration file ([`crate::calibration`]) that the other commands follow.
//!
//! It runs the model in every precision over a set of images, measures latency per thread count
//! and agreement with the reference precision, LiteRT's arithmetic (embedding cosine, ImageNet
//! top-1), and picks the fastest setting within the agreement budget.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use image::RgbImage;

use crate::backbone::{self, cosine, top_k, Backbone};
use crate::calibration::{
    board_id, cpu_name, Calibration, Choice, Measurement, Unavailable, FORMAT, VERSION,
};
use crate::loader;
use crate::models::{ModelFormat, Precision, ResolvedModel};
use crate::{discover, preprocess};

pub struct CalibrateOptions {
    pub images: Vec<PathBuf>,
    pub threads: Vec<usize>,
    /// Timed frames per (precision, threads).
    pub runs: usize,
    pub min_top1_agreement: f64,
}

/// The thread counts `calibrate` tries when none are given: 1, 2, 4, … up to the core count.
pub fn default_threads() -> Vec<usize> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::iter::successors(Some(1usize), |t| Some(t * 2))
        .take_while(|&t| t <= cores)
        .collect()
}

/// The image list of a calibration folder (`images.txt`, paths relative to it), or every image
/// under a folder that has no list.
pub fn images_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let list = dir.join("images.txt");
    let mut images = Vec::new();
    if list.is_file() {
        let text = std::fs::read_to_string(&list)
            .with_context(|| format!("reading {}", list.display()))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let p = dir.join(line);
            anyhow::ensure!(
                p.is_file(),
                "{}:{}: {} does not exist",
                list.display(),
                n + 1,
                p.display()
            );
            images.push(p);
        }
    } else {
        images = discover::images_under(dir).map_err(|e| {
            anyhow::Error::new(e.error).context(format!("reading {}", e.dir.display()))
        })?;
    }
    anyhow::ensure!(
        !images.is_empty(),
        "{}: no images to calibrate on (give a folder of images or an images.txt list)",
        dir.display()
    );
    Ok(images)
}

/// One precision's outputs on every calibration image.
struct Pass {
    embeddings: Vec<Vec<f32>>,
    top1: Vec<Option<usize>>,
}

fn run_pass(backbone: &Backbone, frames: &[RgbImage]) -> Result<Pass> {
    let mut embeddings = Vec::with_capacity(frames.len());
    let mut top1 = Vec::with_capacity(frames.len());
    for f in frames {
        let out = backbone.run(f)?;
        top1.push(out.scores.as_deref().map(|s| top_k(s, 1)[0].0));
        embeddings.push(out.embedding);
    }
    Ok(Pass { embeddings, top1 })
}

fn time_frames(backbone: &Backbone, frames: &[RgbImage], runs: usize) -> Result<(f64, f64)> {
    backbone.run(&frames[0])?;
    let mut times: Vec<Duration> = Vec::with_capacity(runs);
    for i in 0..runs {
        let t = Instant::now();
        std::hint::black_box(backbone.run(&frames[i % frames.len()])?);
        times.push(t.elapsed());
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Ok((
        ms(times[times.len() / 2]),
        ms(times[(times.len() * 9 / 10).min(times.len() - 1)]),
    ))
}

pub fn check_calibratable(model: &ResolvedModel) -> Result<()> {
    anyhow::ensure!(
        model.spec.format == ModelFormat::Tflite,
        "model '{}' is an {} file: only TFLite files run in more than one precision",
        model.spec.name,
        model.spec.format
    );
    Ok(())
}

/// Measures every precision × thread count and picks the fastest within the budget.
/// `report` receives each measurement as it is made (calibrating a slow precision takes a while).
pub fn calibrate(
    model: &ResolvedModel,
    opts: &CalibrateOptions,
    mut report: impl FnMut(&Measurement),
) -> Result<Calibration> {
    check_calibratable(model)?;
    anyhow::ensure!(opts.runs >= 1, "--runs must be at least 1");
    let frames: Vec<RgbImage> = opts
        .images
        .iter()
        .map(|p| preprocess::load_rgb(p).map(|img| preprocess::fit(&img, model.spec.input.size)))
        .collect::<Result<_, _>>()?;
    let with_scores = model.spec.has_scores();
    let mut threads = opts.threads.clone();
    threads.sort_unstable();
    threads.dedup();
    threads.retain(|&t| t >= 1);
    anyhow::ensure!(!threads.is_empty(), "no thread count to measure");

    let mut reference: Option<Pass> = None;
    let mut measurements = Vec::new();
    let mut int8_f32_layers = Vec::new();
    // The reference first: every other precision's agreement is measured against LiteRT's
    // arithmetic, not against whichever precision happens to come first.
    let order = std::iter::once(Precision::REFERENCE).chain(
        Precision::ALL
            .into_iter()
            .filter(|&p| p != Precision::REFERENCE),
    );
    let mut unavailable = Vec::new();
    for precision in order {
        // f16 exists only on CPUs with FP16 arithmetic; elsewhere it is noted, not measured.
        if let Err(e) = backbone::check_precision(precision) {
            unavailable.push(Unavailable {
                precision,
                reason: e.to_string(),
            });
            continue;
        }
        let mut backbone = loader::backbone_in(model, precision, with_scores)?;
        if precision == Precision::Int8 {
            int8_f32_layers = backbone.f32_fallbacks().to_vec();
        }
        let pass = run_pass(&backbone, &frames)?;
        let reference = reference.get_or_insert_with(|| Pass {
            embeddings: pass.embeddings.clone(),
            top1: pass.top1.clone(),
        });
        let cosines: Vec<f64> = pass
            .embeddings
            .iter()
            .zip(&reference.embeddings)
            .map(|(a, b)| cosine(a, b) as f64)
            .collect();
        let cosine_min = cosines.iter().copied().fold(f64::INFINITY, f64::min);
        let cosine_mean = cosines.iter().sum::<f64>() / cosines.len() as f64;
        // Without class scores, agreement falls back to embedding nearness.
        let top1_agreement = if with_scores {
            let same = pass
                .top1
                .iter()
                .zip(&reference.top1)
                .filter(|(a, b)| a == b)
                .count();
            same as f64 / frames.len() as f64
        } else {
            cosines.iter().filter(|&&c| c >= 0.99).count() as f64 / frames.len() as f64
        };
        for &t in &threads {
            backbone.set_threads(t);
            let (median_ms, p90_ms) = time_frames(&backbone, &frames, opts.runs)?;
            let m = Measurement {
                precision,
                threads: t,
                median_ms,
                p90_ms,
                cosine_min,
                cosine_mean,
                top1_agreement,
                within_budget: top1_agreement >= opts.min_top1_agreement,
            };
            report(&m);
            measurements.push(m);
        }
    }
    let choice = choose(&measurements);
    Ok(Calibration {
        format: FORMAT.into(),
        version: VERSION,
        board: board_id(),
        arch: std::env::consts::ARCH.into(),
        cpu: cpu_name(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        model: model.spec.name.clone(),
        model_sha256: model.sha256.clone(),
        images: frames.len(),
        runs: opts.runs,
        min_top1_agreement: opts.min_top1_agreement,
        measurements,
        int8_f32_layers,
        unavailable,
        choice,
    })
}

/// The fastest measurement within the agreement budget. The reference precision agrees with
/// itself, so there is always one.
fn choose(measurements: &[Measurement]) -> Choice {
    let best = measurements
        .iter()
        .filter(|m| m.within_budget)
        .min_by(|a, b| a.median_ms.total_cmp(&b.median_ms))
        .expect("the reference agrees with itself, so it is always within budget");
    Choice {
        precision: best.precision,
        threads: best.threads,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(precision: Precision, threads: usize, median_ms: f64, agreement: f64) -> Measurement {
        Measurement {
            precision,
            threads,
            median_ms,
            p90_ms: median_ms,
            cosine_min: 0.999,
            cosine_mean: 0.999,
            top1_agreement: agreement,
            within_budget: agreement >= 0.99,
        }
    }

    #[test]
    fn the_fastest_setting_within_the_agreement_budget_is_chosen() {
        // f32 on 2 threads is fastest but disagrees too often: int8 on 1 thread, the fastest of
        // the rest.
        let rows = [
            m(Precision::Int8, 1, 10.0, 1.0),
            m(Precision::Int8, 2, 12.0, 1.0),
            m(Precision::F32, 1, 11.0, 0.99),
            m(Precision::F32, 2, 5.0, 0.9),
        ];
        assert_eq!(
            choose(&rows),
            Choice {
                precision: Precision::Int8,
                threads: 1
            }
        );
        // Within budget, the fastest wins whatever its precision.
        let mut rows = rows;
        rows[3].within_budget = true;
        assert_eq!(
            choose(&rows),
            Choice {
                precision: Precision::F32,
                threads: 2
            }
        );
    }
}
