//! This board's calibration file: which precision and how many threads the backbone should use
//! here, as measured by `edge-mnv2 calibrate` (see [`crate::calibrate`]).
//!
//! One JSON file per board (`calibration/<board>.json`, or `$EDGE_MNV2_CALIBRATION`), made with
//! one model file; `classify`, `embed`, `finetune`, `predict` and `serve` follow its choice when no
//! `--precision` is given and the model in use is that very file.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::models::{Precision, ResolvedModel};

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

/// A precision `calibrate` did not measure because this CPU does not offer it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Unavailable {
    pub precision: Precision,
    pub reason: String,
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
    /// Precisions not measured here (f16 without FP16 arithmetic), and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unavailable: Vec<Unavailable>,
    pub choice: Choice,
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
        for u in &self.unavailable {
            s.push_str(&format!(
                "note: {} not measured: {}\n",
                u.precision, u.reason
            ));
        }
        s
    }
}

/// This board's calibrated choice for `model`, if there is a calibration file made with that very
/// file. An explicit `$EDGE_MNV2_CALIBRATION` must exist; the default file may be absent.
pub fn board_choice(model: &ResolvedModel) -> Result<Option<Choice>> {
    let path = default_path();
    let explicit = std::env::var_os(CALIBRATION_ENV).is_some_and(|v| !v.is_empty());
    if !explicit && !path.is_file() {
        return Ok(None);
    }
    let cal = Calibration::load(&path)?;
    match cal.choice_for(model) {
        Some(choice) => {
            log::info!(
                "{}: {} on {} thread(s)",
                path.display(),
                choice.precision,
                choice.threads
            );
            Ok(Some(choice.clone()))
        }
        None => {
            log::warn!(
                "{}: made with another model file ({}); not used for {}",
                path.display(),
                cal.model,
                model.spec.name
            );
            Ok(None)
        }
    }
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
