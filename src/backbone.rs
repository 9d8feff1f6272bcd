//! The frozen MobileNetV2: where an image becomes a 1280-d embedding (and, for a full classifier
//! file, ImageNet scores).
//!
//! The graph (a .tflite file read by `tflite`, or an ONNX file with the `onnx` feature) is loaded
//! once, given a concrete input shape, cut at the nodes we need and optimised once; every frame
//! after that is one `run` of the same plan.

use std::path::Path;
use std::sync::Arc;

use image::RgbImage;
use thiserror::Error;
use tract_core::prelude::*;
#[cfg(feature = "onnx")]
use tract_onnx::prelude::{Framework, InferenceFact, InferenceModel, InferenceModelExt};

#[cfg(feature = "onnx")]
use crate::models::Layout;
use crate::models::{InputDtype, ModelFormat, ModelSpec, Precision, ResolvedModel, ScoresKind};
use crate::numeric;
use crate::tflite;
pub use crate::tflite::{frames_may_spread, one_thread_per_frame};
use crate::{calibration, preprocess};

/// Width of MobileNetV2 1.0's pooled feature vector.
pub const EMBEDDING_DIM: usize = 1280;

#[derive(Debug, Error)]
pub enum BackboneError {
    #[error("{path}: cannot load model '{name}': {reason}")]
    Load {
        path: String,
        name: String,
        reason: String,
    },
    #[error("model '{0}' is embedding-only and has no ImageNet scores; use a full classifier model (see `edge-mnv2 models`)")]
    NoScores(String),
    #[error("{path}: label file: {reason}")]
    Labels { path: String, reason: String },
    #[error("inference failed: {0}")]
    Run(String),
    #[error("precision {precision} needs FP16 arithmetic (ARMv8.2-A, e.g. a Raspberry Pi 5's Cortex-A76), which this CPU ({cpu}) does not have; use f32 or int8")]
    NoFp16 { precision: Precision, cpu: String },
    #[error("precision {precision}: this CPU has FP16 arithmetic but tract did not detect it (it reads asimdhp in /proc/cpuinfo, which qemu-user does not emulate), so f16 would run on slow generic kernels; set TRACT_CPU_AARCH64_KIND=a75 to tell it")]
    Fp16Undetected { precision: Precision },
}

/// Whether this CPU runs `precision`: f16 needs FP16 arithmetic, and tract must know it has it
/// so that the plan gets its FP16 kernels rather than a slow emulation of f16 in f32.
pub fn check_precision(precision: Precision) -> Result<(), BackboneError> {
    leave_out_tract_amx();
    if precision != Precision::F16 {
        return Ok(());
    }
    if !cpu_has_fp16() {
        return Err(BackboneError::NoFp16 {
            precision,
            cpu: format!("{}: {}", std::env::consts::ARCH, calibration::cpu_name()),
        });
    }
    if !tract_core::internal::tract_linalg::has_fp16() {
        return Err(BackboneError::Fp16Undetected { precision });
    }
    Ok(())
}

/// What identifies the embeddings of the file with checksum `sha256` in `precision` (`None`: an
/// ONNX file's own arithmetic), for every precision, including those this CPU does not offer.
pub fn embedding_id(sha256: &str, precision: Option<Precision>) -> String {
    match precision {
        None | Some(Precision::F32) => sha256.to_string(),
        Some(p) => format!("{sha256}+{p}.{}", tflite::arithmetic_revision(p)),
    }
}

/// FEAT_FP16 as the kernel reports it (the auxiliary vector's HWCAP_FPHP/ASIMDHP).
fn cpu_has_fp16() -> bool {
    #[cfg(target_arch = "aarch64")]
    return std::arch::is_aarch64_feature_detected!("fp16");
    #[cfg(not(target_arch = "aarch64"))]
    false
}

/// What one forward pass returns.
#[derive(Debug, Clone)]
pub struct Outputs {
    pub embedding: Vec<f32>,
    /// Class probabilities (softmax applied when the model emits logits).
    pub scores: Option<Vec<f32>>,
}

pub struct Backbone {
    spec: ModelSpec,
    sha256: String,
    plan: Arc<TypedRunnableModel>,
    /// Type tag the input tensor needs (the int8 TFLite graph takes quantized u8).
    input_type: DatumType,
    /// The arithmetic this backbone runs in: TFLite files offer both, ONNX files are what they are.
    precision: Option<Precision>,
    /// TFLite operators the int8 graph runs in f32.
    f32_fallbacks: Vec<String>,
    labels: Option<Vec<String>>,
    with_scores: bool,
    /// Threads one frame's own operators (the int8 products, the depthwise convolutions) are
    /// split over (1: the calling thread only).
    threads: usize,
}

impl std::fmt::Debug for Backbone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backbone")
            .field("model", &self.spec.name)
            .finish()
    }
}

impl Backbone {
    /// Loads and optimises the model for batch-1 frames, in `precision` for TFLite files (ignored
    /// for ONNX files, whose precision is fixed by the file). There is no default precision here:
    /// `loader` owns that choice. `with_scores` keeps the classifier layers; without it the graph
    /// is cut at the pooled features and the rest is dropped.
    pub fn load_with_precision(
        model: &ResolvedModel,
        with_scores: bool,
        precision: Precision,
    ) -> Result<Backbone, BackboneError> {
        let spec = &model.spec;
        if with_scores && !spec.has_scores() {
            return Err(BackboneError::NoScores(spec.name.clone()));
        }
        keep_freed_memory_for_the_next_frame();
        leave_out_tract_amx();
        let load_err = |reason: String| BackboneError::Load {
            path: model.path.display().to_string(),
            name: spec.name.clone(),
            reason,
        };
        if spec.format == ModelFormat::Tflite {
            check_precision(precision)?;
        }
        let built = match spec.format {
            ModelFormat::Tflite => build_tflite_plan(&model.path, spec, with_scores, precision),
            ModelFormat::Onnx => build_plan(&model.path, spec, with_scores).map(|plan| Built {
                plan,
                input_type: match spec.input.dtype {
                    InputDtype::U8 => DatumType::U8,
                    InputDtype::F32 => DatumType::F32,
                },
                precision: None,
                f32_fallbacks: Vec::new(),
            }),
        }
        .map_err(|e| load_err(format!("{e:#}")))?;
        let labels = match (with_scores, model.labels_path()) {
            (false, _) => None,
            (true, Some(p)) => Some(read_labels(&p, spec.classes)?),
            (true, None) => {
                return Err(BackboneError::Labels {
                    path: spec.labels.clone().unwrap_or_default(),
                    reason: "not found next to the model or in the models directories".into(),
                })
            }
        };
        Ok(Backbone {
            spec: spec.clone(),
            sha256: model.sha256.clone(),
            plan: built.plan,
            input_type: built.input_type,
            precision: built.precision,
            f32_fallbacks: built.f32_fallbacks,
            labels,
            with_scores,
            threads: 1,
        })
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Splits each frame over `n` threads (1: the calling thread only): our own operators (the
    /// int8 graph's products and every depthwise convolution) share their output rows out;
    /// tract's f32 products stay on the calling thread. Cuts single-stream latency (camera,
    /// classify) on multi-core boards (`calibrate` measures by how much); batch embedding runs
    /// frames side by side instead ([`one_thread_per_frame`]).
    pub fn set_threads(&mut self, n: usize) {
        self.threads = n.max(1);
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// `Some` for TFLite files, which can run in either precision.
    pub fn precision(&self) -> Option<Precision> {
        self.precision
    }

    /// TFLite operators that the int8 graph runs in f32 (between a dequantize and a requantize).
    pub fn f32_fallbacks(&self) -> &[String] {
        &self.f32_fallbacks
    }

    /// What identifies this backbone's embeddings: the file, and the arithmetic when it varies.
    pub fn embedding_id(&self) -> String {
        embedding_id(&self.sha256, self.precision)
    }

    /// The square side images are resized to before [`Backbone::embed`].
    pub fn input_size(&self) -> u32 {
        self.spec.input.size
    }

    pub fn labels(&self) -> Option<&[String]> {
        self.labels.as_deref()
    }

    /// Runs one image of any size (resized as documented in [`preprocess`]).
    pub fn run(&self, img: &RgbImage) -> Result<Outputs, BackboneError> {
        let size = self.input_size();
        let fitted;
        let img = if img.dimensions() == (size, size) {
            img
        } else {
            fitted = preprocess::fit(img, size);
            &fitted
        };
        let mut input = preprocess::to_tensor(&self.spec.input, &[img]);
        if input.datum_type() != self.input_type {
            // Safety: both types are u8 underneath; only the quantization tag differs.
            unsafe { input.set_datum_type(self.input_type) };
        }
        let outputs =
            tflite::with_frame_threads(self.threads, || self.plan.run(tvec!(input.into())));
        let outputs = outputs.map_err(|e| BackboneError::Run(format!("{e:#}")))?;
        let embedding = f32_values(&outputs[0])?;
        let scores = if self.with_scores {
            let raw = f32_values(&outputs[1])?;
            Some(match self.spec.scores_kind {
                ScoresKind::Probabilities => raw,
                ScoresKind::Logits => {
                    let mut p = raw;
                    numeric::softmax(&mut p, 1.0);
                    p
                }
            })
        } else {
            None
        };
        Ok(Outputs { embedding, scores })
    }

    /// The 1280-d pooled embedding of one image.
    pub fn embed(&self, img: &RgbImage) -> Result<Vec<f32>, BackboneError> {
        Ok(self.run(img)?.embedding)
    }

    /// The `k` most probable ImageNet classes as (index, label, probability).
    pub fn classify(
        &self,
        img: &RgbImage,
        k: usize,
    ) -> Result<Vec<(usize, String, f32)>, BackboneError> {
        let scores = self
            .run(img)?
            .scores
            .ok_or_else(|| BackboneError::NoScores(self.spec.name.clone()))?;
        let labels = self.labels.as_deref().unwrap_or(&[]);
        Ok(top_k(&scores, k)
            .into_iter()
            .map(|(i, p)| {
                (
                    i,
                    labels
                        .get(i)
                        .cloned()
                        .unwrap_or_else(|| format!("class {i}")),
                    p,
                )
            })
            .collect())
    }
}

/// Every run allocates the plan's activation maps (up to ~5 MB each in f32) afresh. glibc gives
/// such blocks back to the kernel when they are freed (a worker thread's arena unmaps or shrinks
/// its heap), so the next frame page-faults them in again, zeroed: measured over 397 images in
/// f32 on one worker, 2.3 million faults and a third of the CPU time. A 32 MiB pad keeps them:
/// 0.41 million faults, 29% less CPU, for ~20 MB more peak memory per worker (finetune on two
/// workers: 74 → 118 MB; 64 MiB saved little more and cost 153 MB; 16 MiB saved little).
fn keep_freed_memory_for_the_next_frame() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        // Safety: mallopt only sets an allocator parameter; it is called once, before frames run.
        ONCE.call_once(|| unsafe {
            libc::mallopt(libc::M_TOP_PAD, 32 << 20);
        });
    }
}

/// tract picks its AMX int8 matrix kernel where the CPU has AMX (Intel Xeon, 4th generation on),
/// and with tract-linalg 0.23.9 that kernel crashes the process (SIGSEGV in
/// `avx512amx_mmm_i32_8x8`): on an AMX Xeon the ONNX int8 golden tests died in 16 runs of 26,
/// and in none of 14 with AMX left out. Integer products are exact in every kernel, so leaving it out
/// changes no result; tract then takes its AVX-512 VNNI kernel (our TFLite int8 graph uses our
/// own products either way). Set below the environment, before tract first reads the CPU's
/// features: a `TRACT_CPU_ISA` the user sets still decides. x86-64 only: tract refuses (panics on)
/// a feature of another architecture in that setting.
fn leave_out_tract_amx() {
    #[cfg(target_arch = "x86_64")]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // Fails only if another configuration in this process set a different value first.
            if let Err(e) = tract_core::knobs::set_config_global("TRACT_CPU_ISA", "-amx-int8") {
                log::debug!("TRACT_CPU_ISA left as configured: {e:#}");
            }
        });
    }
}

fn f32_values(t: &Tensor) -> Result<Vec<f32>, BackboneError> {
    t.try_as_plain_ram()
        .and_then(|v| v.as_slice::<f32>().map(<[f32]>::to_vec))
        .map_err(|e| BackboneError::Run(format!("{e:#}")))
}

struct Built {
    plan: Arc<TypedRunnableModel>,
    input_type: DatumType,
    precision: Option<Precision>,
    f32_fallbacks: Vec<String>,
}

fn build_tflite_plan(
    path: &Path,
    spec: &ModelSpec,
    with_scores: bool,
    precision: Precision,
) -> anyhow::Result<Built> {
    let bytes = std::fs::read(path)?;
    let built = tflite::build(&bytes, precision)?;
    anyhow::ensure!(
        built.input_size == spec.input.size,
        "the file takes {0}x{0} images, the manifest says {1}",
        built.input_size,
        spec.input.size
    );
    let mut model = built.model;
    let mut outputs = vec![built.embedding];
    if with_scores {
        outputs.push(
            built
                .logits
                .ok_or_else(|| anyhow::anyhow!("the file has no SOFTMAX classifier output"))?,
        );
    }
    model.select_output_outlets(&outputs)?;
    let model = model.into_optimized()?;
    check_embedding(&model, "pooling")?;
    Ok(Built {
        plan: model.into_runnable()?,
        input_type: built.input_type,
        precision: Some(precision),
        f32_fallbacks: built.f32_fallbacks,
    })
}

fn check_embedding(model: &TypedModel, what: &str) -> TractResult<()> {
    let emb_fact = model.output_fact(0)?;
    let emb_len: usize = emb_fact
        .shape
        .as_concrete()
        .map(|d| d.iter().product())
        .unwrap_or(0);
    anyhow::ensure!(
        emb_len == EMBEDDING_DIM && emb_fact.datum_type == f32::datum_type(),
        "embedding {what} gives {:?}, expected {EMBEDDING_DIM} f32 values",
        emb_fact
    );
    Ok(())
}

#[cfg(not(feature = "onnx"))]
fn build_plan(
    _path: &Path,
    _spec: &ModelSpec,
    _with_scores: bool,
) -> TractResult<Arc<TypedRunnableModel>> {
    anyhow::bail!(
        "this edge-mnv2 was built without ONNX support; use a .tflite model (the default) or \
         rebuild with `cargo build --release --features onnx`"
    )
}

#[cfg(feature = "onnx")]
fn build_plan(
    path: &Path,
    spec: &ModelSpec,
    with_scores: bool,
) -> TractResult<Arc<TypedRunnableModel>> {
    let mut model = tract_onnx::onnx().model_for_path(path)?;
    let s = spec.input.size as usize;
    let shape: [usize; 4] = match spec.input.layout {
        Layout::Nhwc => [1, s, s, 3],
        Layout::Nchw => [1, 3, s, s],
    };
    let dt = match spec.input.dtype {
        InputDtype::U8 => u8::datum_type(),
        InputDtype::F32 => f32::datum_type(),
    };
    model.set_input_fact(0, InferenceFact::dt_shape(dt, shape))?;
    let embedding = match &spec.embedding {
        Some(node) => node.clone(),
        None => find_global_pool(&model)?,
    };
    let mut outputs = vec![embedding];
    if with_scores {
        outputs.push(match &spec.scores {
            Some(node) => node.clone(),
            None => {
                let out = model.output_outlets()?[0];
                model.node(out.node).name.clone()
            }
        });
    }
    model.select_outputs_by_name(&outputs)?;
    let model = model.into_optimized()?;
    check_embedding(&model, &format!("node {}", outputs[0]))?;
    model.into_runnable()
}

/// For files whose manifest entry names no embedding node: the last global pooling node.
#[cfg(feature = "onnx")]
fn find_global_pool(model: &InferenceModel) -> TractResult<String> {
    model
        .eval_order()?
        .into_iter()
        .rev()
        .map(|id| model.node(id))
        .find(|n| {
            let op = n.op.name();
            op.contains("GlobalAveragePool") || op.contains("AveragePool") || op.contains("Reduce")
        })
        .map(|n| n.name.clone())
        .ok_or_else(|| anyhow::anyhow!("no global average pool found to take the embedding from"))
}

fn read_labels(path: &Path, classes: usize) -> Result<Vec<String>, BackboneError> {
    let text = std::fs::read_to_string(path).map_err(|e| BackboneError::Labels {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let labels: Vec<String> = text.lines().map(|l| l.trim().to_string()).collect();
    if labels.len() != classes {
        return Err(BackboneError::Labels {
            path: path.display().to_string(),
            reason: format!(
                "has {} labels, the model has {classes} classes",
                labels.len()
            ),
        });
    }
    Ok(labels)
}

/// Indices and values of the `k` largest entries, largest first (ties: lower index first).
pub fn top_k(scores: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    idx.into_iter().take(k).map(|i| (i, scores[i])).collect()
}

pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    (dot / (na * nb)) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_and_breaks_ties_by_index() {
        assert_eq!(
            top_k(&[0.1, 0.5, 0.5, 0.2], 3),
            vec![(1, 0.5), (2, 0.5), (3, 0.2)]
        );
    }
}
