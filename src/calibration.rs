//! Per-board calibration: which precision and how many threads the backbone should use here.
//!
//! `edge-mnv2 calibrate` runs the model in every precision over a set of images, measures latency
//! per thread count and agreement with f32 (embedding cosine, ImageNet top-1), and picks the
//! fastest setting within the agreement budget. The result is a JSON file per board that
//! `classify`, `embed`, `finetune` and `serve` read when no `--precision` is given.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::backbone::{cosine, top_k, Backbone};
use crate::models::ResolvedModel;
use crate::tflite::Precision;
use crate::{dataset, fsutil, preprocess};

pub const FORMAT: &str = "edge-mnv2-calibration";
pub const VERSION: u32 = 1;
/// An explicit calibration file, overriding `./calibration/<board>.json`.
pub const CALIBRATION_ENV: &str = "EDGE_MNV2_CALIBRATION";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Measurement {
    pub precision: Precision,
    pub threads: usize,
    pub median_ms: f64,
    pub p90_ms: f64,
    /// Against f32 on the same images: lowest and mean embedding cosine, share of equal top-1.
    pub cosine_min: f64,
    pub cosine_mean: f64,
    pub top1_agreement: f64,
    pub within_budget: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Choice {
    pub precision: Precision,
    pub threads: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Calibration {
    pub format: String,
    pub version: u32,
    pub board: String,
    pub arch: String,
    pub cpu: String,
    pub cores: usize,
    pub model: String,
    pub model_sha256: String,
    pub images: usize,
    pub runs: usize,
    /// Least top-1 agreement with f32 a precision needs to be chosen.
    pub min_top1_agreement: f64,
    pub measurements: Vec<Measurement>,
    /// Operators the int8 graph runs in f32 (between a dequantize and a requantize).
    #[serde(default)]
    pub int8_f32_layers: Vec<String>,
    pub choice: Choice,
}

pub struct CalibrateOptions {
    pub images: Vec<PathBuf>,
    pub threads: Vec<usize>,
    /// Timed frames per (precision, threads).
    pub runs: usize,
    pub min_top1_agreement: f64,
}

/// This board's name: the device-tree model on ARM boards ("raspberry-pi-4-model-b-rev-1-4"),
/// the DMI product name on PCs, else architecture and CPU model.
pub fn board_id() -> String {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| {
                s.trim_matches(|c: char| c.is_whitespace() || c == '\0')
                    .to_string()
            })
            .filter(|s| !s.is_empty())
    };
    let raw = read("/proc/device-tree/model")
        .or_else(|| read("/sys/class/dmi/id/product_name"))
        .unwrap_or_else(|| format!("{}-{}", std::env::consts::ARCH, cpu_name()));
    slug(&raw)
}

fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    out.trim_end_matches('-').to_string()
}

pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name") || l.starts_with("Model"))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown cpu".into())
}

/// Where this board's calibration is read from and written to by default.
pub fn default_path() -> PathBuf {
    match std::env::var_os(CALIBRATION_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => Path::new("calibration").join(format!("{}.json", board_id())),
    }
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
        collect_images(dir, &mut images)?;
        images.sort();
    }
    anyhow::ensure!(
        !images.is_empty(),
        "{}: no images to calibrate on (give a folder of images or an images.txt list)",
        dir.display()
    );
    Ok(images)
}

fn collect_images(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_images(&path, out)?;
        } else if dataset::is_image_path(&path) {
            out.push(path);
        }
    }
    Ok(())
}

impl Calibration {
    pub fn load(path: &Path) -> Result<Calibration> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let c: Calibration = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a calibration file", path.display()))?;
        anyhow::ensure!(
            c.format == FORMAT && c.version == VERSION,
            "{}: format {} v{}, expected {FORMAT} v{VERSION}",
            path.display(),
            c.format,
            c.version
        );
        Ok(c)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut json = serde_json::to_string_pretty(self)?;
        json.push('\n');
        fsutil::write_atomic(path, json.as_bytes())
    }

    /// The choice for `model`, if this calibration was made with that very file.
    pub fn choice_for(&self, model: &ResolvedModel) -> Option<&Choice> {
        (self.model_sha256 == model.sha256).then_some(&self.choice)
    }

    pub fn to_table(&self) -> String {
        let mut s = format!(
            "{:<6} {:>7} {:>10} {:>9} {:>10} {:>11} {:>13}\n",
            "prec", "threads", "median ms", "p90 ms", "cos min", "cos mean", "top-1 agree"
        );
        for m in &self.measurements {
            let mark = if m.precision == self.choice.precision && m.threads == self.choice.threads {
                "  <- chosen"
            } else if !m.within_budget {
                "  (outside budget)"
            } else {
                ""
            };
            s.push_str(&format!(
                "{:<6} {:>7} {:>10.2} {:>9.2} {:>10.6} {:>11.6} {:>12.1}%{mark}\n",
                m.precision.as_str(),
                m.threads,
                m.median_ms,
                m.p90_ms,
                m.cosine_min,
                m.cosine_mean,
                m.top1_agreement * 100.0
            ));
        }
        if !self.int8_f32_layers.is_empty() {
            s.push_str(&format!(
                "note: int8 runs {} operator(s) in f32 (dequantize, op, requantize): {}\n",
                self.int8_f32_layers.len(),
                self.int8_f32_layers.join(", ")
            ));
        }
        s
    }
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
        model.spec.format == "tflite",
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
    anyhow::ensure!(
        cfg!(feature = "threads") || threads == [1],
        "--threads {threads:?}: this build runs each frame on one thread (rebuild with \
         `--features threads` to measure more)"
    );

    let mut reference: Option<Pass> = None;
    let mut measurements = Vec::new();
    let mut int8_f32_layers = Vec::new();
    for precision in Precision::ALL {
        let mut backbone = Backbone::load_with_precision(model, with_scores, precision)?;
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
    let best = measurements
        .iter()
        .filter(|m| m.within_budget)
        .min_by(|a, b| a.median_ms.total_cmp(&b.median_ms))
        .expect("f32 agrees with itself, so it is always within budget");
    let choice = Choice {
        precision: best.precision,
        threads: best.threads,
    };
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
        choice,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slug_makes_a_file_name() {
        assert_eq!(
            slug("Raspberry Pi 4 Model B Rev 1.4\0"),
            "raspberry-pi-4-model-b-rev-1-4"
        );
        assert_eq!(slug("x86_64-Intel(R) Xeon(R)"), "x86-64-intel-r-xeon-r");
    }
}
