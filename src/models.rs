//! The model manifest (`models/manifest.toml`) and where model files are found.
//!
//! A model is named on the command line (`--model NAME`) or given as a path. Names resolve through
//! [`search_dirs`]; every file's sha256 is checked against the manifest before it is used, so a
//! truncated download or a wrong file is refused before tract ever parses it.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// The manifest, compiled in so the binary is self-contained on a board.
const MANIFEST_TOML: &str = include_str!("../models/manifest.toml");

/// Environment variable naming an extra models directory, searched first.
pub const MODELS_ENV: &str = "EDGE_MNV2_MODELS";

/// Environment variable replacing the per-user model cache directory (where `models fetch`
/// stores downloads), e.g. for a read-only home or a shared models disk.
pub const MODEL_CACHE_ENV: &str = "EDGE_MNV2_MODEL_CACHE";

#[derive(Debug, Error)]
pub enum ModelError {
    #[error("unknown model '{name}' (known: {known}); see `edge-mnv2 models`")]
    UnknownName { name: String, known: String },
    #[error("model '{name}' ({file}) not found in {searched}; see the README for how to get it")]
    NotFound {
        name: String,
        file: String,
        searched: String,
    },
    #[error("{path}: checksum mismatch for model '{name}': sha256 is {actual}, the manifest expects {expected} (corrupt or wrong file)")]
    ChecksumMismatch {
        path: PathBuf,
        name: String,
        actual: String,
        expected: String,
    },
    #[error(
        "{path}: not a known model file (sha256 {sha256} matches no entry of models/manifest.toml)"
    )]
    UnknownFile { path: PathBuf, sha256: String },
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: String },
}

/// The file format of a model: what reads it into a tract graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    /// Read by [`crate::tflite`] into tract-core ops; runs in any [`Precision`].
    Tflite,
    /// Read by tract-onnx (feature `onnx`); its arithmetic is the file's own.
    Onnx,
}

impl ModelFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelFormat::Tflite => "tflite",
            ModelFormat::Onnx => "onnx",
        }
    }

    /// The cargo feature this build lacks to read the format, if any.
    pub fn missing_feature(self) -> Option<&'static str> {
        match self {
            ModelFormat::Tflite => None,
            ModelFormat::Onnx => (!cfg!(feature = "onnx")).then_some("onnx"),
        }
    }
}

impl fmt::Display for ModelFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the backbone's arithmetic is done on a TFLite file (see [`crate::tflite`]). A setting of
/// the model, chosen by `--precision` or this board's calibration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// The file's integer arithmetic carried out in f32 kernels (tract's matrix products).
    F32,
    /// LiteRT's own 8-bit arithmetic on 8-bit kernels of ours (the pooling in f32, see `tflite`):
    /// the reference the other precisions are measured against.
    Int8,
    /// The dequantized float network (no per-layer 8-bit rounding) in half precision, on
    /// tract's FP16 kernels: only offered where the CPU has FP16 arithmetic (ARMv8.2-A, e.g. a
    /// Raspberry Pi 5's Cortex-A76); [`crate::backbone`] refuses it elsewhere.
    F16,
}

impl Precision {
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::Int8, Precision::F16];

    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Int8 => "int8",
            Precision::F16 => "f16",
        }
    }

    /// One line on what the arithmetic is (the command line's help shows it).
    pub fn description(self) -> &'static str {
        match self {
            Precision::F32 => {
                "The file's integer arithmetic in f32 kernels (within 0.999 of LiteRT)"
            }
            Precision::Int8 => "LiteRT's 8-bit arithmetic on 8-bit kernels (the reference)",
            Precision::F16 => {
                "The dequantized network in half precision; only on CPUs with FP16 (ARMv8.2, Pi 5)"
            }
        }
    }
}

impl Precision {
    /// The precision whose arithmetic is LiteRT's: `calibrate` measures agreement against it.
    pub const REFERENCE: Precision = Precision::Int8;
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Precision, String> {
        Precision::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown precision '{s}'"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Nhwc,
    Nchw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InputDtype {
    /// Raw 0..255 pixels; the model does its own normalisation.
    U8,
    /// `(x / 255 - mean) / std` per channel.
    F32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ScoresKind {
    Probabilities,
    Logits,
}

/// What a model expects as input: everything preprocessing needs to know.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct InputSpec {
    pub layout: Layout,
    pub dtype: InputDtype,
    pub size: u32,
    #[serde(default)]
    pub mean: Option<[f32; 3]>,
    #[serde(default)]
    pub std: Option<[f32; 3]>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ModelSpec {
    pub name: String,
    pub file: String,
    /// The file's pinned checksum; `None` when we never had the file to pin it.
    #[serde(default)]
    pub sha256: Option<String>,
    /// The official download; `None` for files derived locally from another.
    #[serde(default)]
    pub url: Option<String>,
    pub description: String,
    pub format: ModelFormat,
    pub input: InputSpec,
    /// The node whose output is the pooled feature map; `None`: found by structure.
    #[serde(default)]
    pub embedding: Option<String>,
    /// The ImageNet class-score node; `None`: the graph's own output.
    #[serde(default)]
    pub scores: Option<String>,
    pub scores_kind: ScoresKind,
    /// The label file of the class scores (relative to a models directory).
    #[serde(default)]
    pub labels: Option<String>,
    pub classes: usize,
    pub licence: String,
}

impl ModelSpec {
    /// Whether the file carries ImageNet class scores (a full classifier) or only features.
    pub fn has_scores(&self) -> bool {
        self.classes > 0
    }

    /// Whether `models fetch` can download it: an official URL and a pinned checksum to verify.
    pub fn is_downloadable(&self) -> bool {
        self.url.is_some() && self.sha256.is_some()
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub default: String,
    #[serde(rename = "model")]
    pub models: Vec<ModelSpec>,
    /// Label files with an official download, fetched along with the models that name them.
    #[serde(rename = "labels", default)]
    pub label_files: Vec<LabelFile>,
}

/// A label file `models fetch` can download (pinned like a model file).
#[derive(Debug, Clone, Deserialize)]
pub struct LabelFile {
    /// Path relative to a models directory, as in a model's `labels` key.
    pub file: String,
    pub sha256: String,
    pub url: String,
}

impl Manifest {
    /// The manifest shipped in the binary. It is checked by a unit test, so a parse failure here
    /// cannot reach a user.
    pub fn builtin() -> Manifest {
        toml::from_str(MANIFEST_TOML).expect("models/manifest.toml is valid (unit-tested)")
    }

    pub fn get(&self, name: &str) -> Option<&ModelSpec> {
        self.models.iter().find(|m| m.name == name)
    }

    /// The downloadable label file a model's scores are named by, if the manifest has one.
    pub fn label_file_of(&self, spec: &ModelSpec) -> Option<&LabelFile> {
        self.label_files
            .iter()
            .find(|l| spec.labels.as_deref() == Some(l.file.as_str()))
    }

    /// The model names, comma-separated, for error messages.
    pub fn known_names(&self) -> String {
        self.models
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A model file located on disk and matched to its manifest entry.
#[derive(Debug, Clone)]
pub struct ResolvedModel {
    pub spec: ModelSpec,
    pub path: PathBuf,
    /// The models directory the file was found in; label files are looked up there first.
    pub root: Option<PathBuf>,
    pub sha256: String,
}

impl ResolvedModel {
    /// The label file for this model's class scores, if it has any.
    pub fn labels_path(&self) -> Option<PathBuf> {
        let labels = self.spec.labels.as_ref()?;
        let mut dirs: Vec<PathBuf> = self.root.iter().cloned().collect();
        dirs.extend(search_dirs());
        dirs.into_iter()
            .map(|d| d.join(labels))
            .find(|p| p.is_file())
    }
}

/// Where model names are looked up, in order.
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os(MODELS_ENV).filter(|d| !d.is_empty()) {
        dirs.push(PathBuf::from(d));
    }
    dirs.push(PathBuf::from("models"));
    dirs.push(PathBuf::from("../shared/models"));
    if let Some(d) = cache_dir() {
        dirs.push(d);
    }
    dirs
}

/// The per-user cache where `models fetch` stores downloads: `$EDGE_MNV2_MODEL_CACHE`, else
/// `~/.cache/edge-mnv2/models` (`$XDG_CACHE_HOME/edge-mnv2/models`).
pub fn cache_dir() -> Option<PathBuf> {
    match std::env::var_os(MODEL_CACHE_ENV).filter(|d| !d.is_empty()) {
        Some(d) => Some(PathBuf::from(d)),
        None => dirs::cache_dir().map(|d| d.join("edge-mnv2").join("models")),
    }
}

pub fn sha256_file(path: &Path) -> Result<String, ModelError> {
    let io = |e: std::io::Error| ModelError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut f = File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Where a manifest entry's file is, if anywhere, with the directory it was found in.
pub fn locate(spec: &ModelSpec) -> Option<(PathBuf, PathBuf)> {
    locate_all(spec).into_iter().next()
}

/// Every copy of a manifest entry's file in the search dirs, in lookup order, with the directory
/// each was found in (`models fetch` looks past a bad first copy for a good one).
pub fn locate_all(spec: &ModelSpec) -> Vec<(PathBuf, PathBuf)> {
    locate_file(&spec.file)
}

/// Every search directory holding `file` (as given, or by its base name): (path, directory).
pub fn locate_file(file: &str) -> Vec<(PathBuf, PathBuf)> {
    let Some(basename) = Path::new(file).file_name() else {
        return Vec::new();
    };
    search_dirs()
        .into_iter()
        .filter_map(|dir| {
            [dir.join(file), dir.join(basename)]
                .into_iter()
                .find(|p| p.is_file())
                .map(|p| (p, dir))
        })
        .collect()
}

fn verify(
    spec: &ModelSpec,
    path: &Path,
    root: Option<PathBuf>,
) -> Result<ResolvedModel, ModelError> {
    let sha256 = sha256_file(path)?;
    match &spec.sha256 {
        None => log::warn!(
            "{}: model '{}' has no pinned checksum in the manifest; using it unverified (sha256 {sha256})",
            path.display(),
            spec.name
        ),
        Some(expected) if *expected != sha256 => {
            return Err(ModelError::ChecksumMismatch {
                path: path.to_path_buf(),
                name: spec.name.clone(),
                actual: sha256,
                expected: expected.clone(),
            })
        }
        Some(_) => {}
    }
    Ok(ResolvedModel {
        spec: spec.clone(),
        path: path.to_path_buf(),
        root,
        sha256,
    })
}

fn looks_like_path(arg: &str) -> bool {
    arg.contains(std::path::MAIN_SEPARATOR)
        || arg.contains('/')
        || arg.ends_with(".onnx")
        || Path::new(arg).exists()
}

/// Resolves `--model` (a name, a path, or nothing for the default) to a verified file.
pub fn resolve(manifest: &Manifest, arg: Option<&str>) -> Result<ResolvedModel, ModelError> {
    let arg = arg.unwrap_or(&manifest.default);
    if looks_like_path(arg) {
        return resolve_path(manifest, Path::new(arg));
    }
    let spec = manifest.get(arg).ok_or_else(|| ModelError::UnknownName {
        name: arg.to_string(),
        known: manifest.known_names(),
    })?;
    let (path, root) = locate(spec).ok_or_else(|| ModelError::NotFound {
        name: spec.name.clone(),
        file: spec.file.clone(),
        searched: search_dirs()
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })?;
    verify(spec, &path, Some(root))
}

/// A path is matched to its manifest entry by checksum, or else by file name (and then the
/// checksum must match, or be unpinned).
fn resolve_path(manifest: &Manifest, path: &Path) -> Result<ResolvedModel, ModelError> {
    if path.is_dir() {
        return Err(ModelError::Io {
            path: path.to_path_buf(),
            reason: "is a directory, expected a model file".into(),
        });
    }
    let sha256 = sha256_file(path)?;
    if let Some(spec) = manifest
        .models
        .iter()
        .find(|m| m.sha256.as_deref() == Some(sha256.as_str()))
    {
        return Ok(ResolvedModel {
            spec: spec.clone(),
            path: path.to_path_buf(),
            root: models_root_of(path, spec),
            sha256,
        });
    }
    let basename = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    match manifest
        .models
        .iter()
        .find(|m| Path::new(&m.file).file_name().and_then(|n| n.to_str()) == Some(basename))
    {
        Some(spec) => verify(spec, path, models_root_of(path, spec)),
        None => Err(ModelError::UnknownFile {
            path: path.to_path_buf(),
            sha256,
        }),
    }
}

/// The models directory a file sits in, undoing the manifest's relative `file` path
/// (`derived/x.onnx` found at `/m/derived/x.onnx` has root `/m`).
fn models_root_of(path: &Path, spec: &ModelSpec) -> Option<PathBuf> {
    let depth = Path::new(&spec.file).components().count();
    let mut root = path.to_path_buf();
    for _ in 0..depth {
        root = root.parent()?.to_path_buf();
    }
    let root = if root.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        root
    };
    if root.join(&spec.file) == path {
        Some(root)
    } else {
        path.parent().map(Path::to_path_buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_manifest_parses_and_default_exists() {
        let m = Manifest::builtin();
        assert!(m.get(&m.default).is_some());
        for spec in &m.models {
            // `models fetch` refuses unpinned downloads, and plain http is for tests only.
            assert!(
                spec.url.as_ref().is_none_or(|u| u.starts_with("https://")),
                "{}",
                spec.name
            );
            assert!(
                spec.sha256.as_ref().is_none_or(|s| s.len() == 64),
                "{}",
                spec.name
            );
            if spec.input.dtype == InputDtype::F32 {
                assert!(
                    spec.input.mean.is_some() && spec.input.std.is_some(),
                    "{}",
                    spec.name
                );
            }
            if spec.has_scores() {
                assert!(spec.labels.is_some(), "{}", spec.name);
            }
        }
        // Whoever fetches the default model can also `classify`: its labels are downloadable.
        let default = m.get(&m.default).unwrap();
        assert!(m.label_file_of(default).is_some());
        for l in &m.label_files {
            assert!(
                l.url.starts_with("https://") && l.sha256.len() == 64,
                "{}",
                l.file
            );
        }
    }

    #[test]
    fn precision_names_round_trip() {
        for p in Precision::ALL {
            assert_eq!(p.as_str().parse::<Precision>(), Ok(p));
        }
        assert!("f64".parse::<Precision>().is_err());
    }

    #[test]
    fn root_of_nested_file() {
        let m = Manifest::builtin();
        let spec = m.get("mnv2-1.0-224-dequant").unwrap();
        let root = models_root_of(
            Path::new("/x/y/derived/mnv2_1.0_224_dequant.f32out.onnx"),
            spec,
        );
        assert_eq!(root, Some(PathBuf::from("/x/y")));
        let flat = models_root_of(Path::new("/x/mnv2_1.0_224_dequant.f32out.onnx"), spec);
        assert_eq!(flat, Some(PathBuf::from("/x")));
    }
}
