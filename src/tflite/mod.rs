//! Reads a quantized TFLite MobileNet file (the official `mobilenet_v2_*_quant.tflite` family and
//! TF2 post-training int8 files) and builds a tract model from tract-core operators.
//!
//! tract's own TFLite loader refuses these files (a quantized ADD whose inputs have different
//! scales; QUANTIZE), so we walk the flatbuffer ourselves, using the schema code tract-tflite
//! generates, and wire only the handful of operators MobileNets use. Two precisions:
//!
//! - [`Precision::F32`]: the file's integer arithmetic carried out with f32 kernels. Every
//!   activation wire holds `q - zero_point` (an integer, stored as f32), weights hold
//!   `q - zero_point`, and each layer ends as TFLite's does: accumulator × (input scale × weight
//!   scale / output scale), rounded, clamped to the 8-bit range and the fused activation. Integer
//!   sums of this size are exact in f32, so the result is LiteRT's to the rare rounding tie, at
//!   tract's f32 speed. (Plain dequantized weights with float activations drift further: cosine
//!   0.9978 to LiteRT on one golden frame.)
//! - [`Precision::Int8`]: the same integers on u8 maps, with 8-bit operators of our own for the
//!   1×1 and depthwise convolutions and the ADD (`int8`); the first convolution, the pooling and
//!   QUANTIZE run as in the f32 graph between conversions. Same outputs as the f32 graph, a
//!   quarter of the memory traffic.
//! - [`Precision::F16`]: not the integer arithmetic (its accumulators overflow f16) but the
//!   dequantized network: real weights and activations, each layer clamped to its output's range
//!   and activation without rounding to the 8-bit grid, on tract's own operators, converted to
//!   f16 as a whole (`float`). Only worth running where the CPU has FP16 arithmetic.
//!
//! The graph is cut at the global pooling (the embedding) and at the input of the final SOFTMAX
//! (the class logits; softmax is applied by the caller).
//!
//! In the f32 graph the steps tract has no fast kernel for are operators of our own ([`ops`]):
//! each layer's requantization in one pass, the 8-bit ADD, and the NHWC depthwise convolution
//! with its requantization fused. They compute the same numbers as the tract ops they replace.
//!
//! The translator is split as tract-tflite's is: `registry`, the one table from operator code
//! to its reader (options parsed once, then the precision's builder), and by concern: `read`
//! (the flatbuffer: tensors, quantization, constants), `input`, `quant` (requantization and
//! activations), `conv` (CONV_2D, DEPTHWISE_CONV_2D), `element_wise` (ADD, QUANTIZE, RESHAPE),
//! `pool` (the global pooling, where the embedding is cut), `int8` and `float` (those
//! precisions' own builders) and `ops`.

mod conv;
mod element_wise;
mod float;
mod input;
mod int8;
pub mod ops;
mod pool;
mod quant;
mod read;
mod registry;

use std::collections::HashMap;

use thiserror::Error;
use tract_tflite::internal::*;
use tract_tflite::tflite as fb;
use tract_tflite::tflite::BuiltinOperator;

use crate::models::Precision;
pub use ops::frame_threads::{frames_may_spread, one_thread_per_frame, with_frame_threads};

#[derive(Debug, Error)]
pub enum TfliteError {
    #[error("not a TFLite flatbuffer: {0}")]
    Format(String),
    #[error("operator #{index} {op} is not supported (edge-mnv2 reads the MobileNet family: CONV_2D, DEPTHWISE_CONV_2D, ADD, AVERAGE_POOL_2D, MEAN, RESHAPE, SOFTMAX, QUANTIZE)")]
    UnsupportedOp { index: usize, op: String },
    #[error("operator #{index} {op}: {reason}")]
    Unsupported {
        index: usize,
        op: String,
        reason: String,
    },
    #[error("{0}")]
    Graph(String),
}

impl From<TractError> for TfliteError {
    fn from(e: TractError) -> Self {
        TfliteError::Graph(format!("{e:#}"))
    }
}

/// A model built from a TFLite file, not yet optimised.
pub struct TfliteModel {
    pub model: TypedModel,
    /// Datum type the input tensor must carry (raw u8 pixels, possibly tagged with the file's
    /// quantization for the int8 graph).
    pub input_type: DatumType,
    /// Square input side in pixels.
    pub input_size: u32,
    /// The pooled features, f32 `[1, 1, 1, C]` or `[1, C]`.
    pub embedding: OutletId,
    /// The class logits (input of the final SOFTMAX), f32, if the file has a classifier.
    pub logits: Option<OutletId>,
    /// Operators that run in f32 in the int8 graph (empty for f32).
    pub f32_fallbacks: Vec<String>,
}

/// Which arithmetic a precision's graph carries out, for cache keys: it changes whenever the
/// numbers an embedding has change (f32 is still revision 1, keyed by the file alone; int8 became
/// LiteRT's arithmetic on our kernels in revision 2; f16, the dequantized network in half
/// precision, is at its first).
pub fn arithmetic_revision(precision: Precision) -> u32 {
    match precision {
        Precision::F32 => 1,
        Precision::Int8 => 2,
        Precision::F16 => 1,
    }
}

pub fn build(bytes: &[u8], precision: Precision) -> Result<TfliteModel, TfliteError> {
    let model = fb::root_as_model(bytes).map_err(|e| TfliteError::Format(e.to_string()))?;
    let graphs = model
        .subgraphs()
        .ok_or_else(|| TfliteError::Format("no subgraph".into()))?;
    if graphs.len() != 1 {
        return Err(TfliteError::Format(format!(
            "{} subgraphs; expected one",
            graphs.len()
        )));
    }
    let b = Builder {
        file: model,
        graph: graphs.get(0),
        target: TypedModel::default(),
        wires: HashMap::new(),
        precision,
        fallbacks: Vec::new(),
    };
    b.build()
}

struct Builder<'a> {
    file: fb::Model<'a>,
    graph: fb::SubGraph<'a>,
    target: TypedModel,
    /// Activation tensor index → the wire carrying it.
    wires: HashMap<i32, OutletId>,
    precision: Precision,
    fallbacks: Vec<String>,
}

/// One operator being translated.
struct OpCtx<'a> {
    index: usize,
    code: BuiltinOperator,
    /// The code's name, for error messages and node names.
    name: String,
    flat: fb::Operator<'a>,
    inputs: Vec<i32>,
    outputs: Vec<i32>,
}

/// What an operator's builder wired.
enum Built {
    /// The operator's output.
    Wire(OutletId),
    /// The global pooling: the wire the next operator reads, and the embedding cut there.
    Pooled { wire: OutletId, embedding: OutletId },
    /// The input of the final SOFTMAX, the class logits: the graph ends here.
    Logits(OutletId),
}

impl OpCtx<'_> {
    fn unsupported(&self, reason: impl Into<String>) -> TfliteError {
        TfliteError::Unsupported {
            index: self.index,
            op: self.name.clone(),
            reason: reason.into(),
        }
    }
}

impl<'a> Builder<'a> {
    fn build(mut self) -> Result<TfliteModel, TfliteError> {
        let inputs: Vec<i32> = self
            .graph
            .inputs()
            .map(|v| v.iter().collect())
            .unwrap_or_default();
        if inputs.len() != 1 {
            return Err(TfliteError::Format(format!(
                "{} graph inputs; expected one image",
                inputs.len()
            )));
        }
        let (input_type, input_size) = self.wire_input(inputs[0])?;

        let ops = self
            .graph
            .operators()
            .ok_or_else(|| TfliteError::Format("no operators".into()))?;
        let mut embedding = None;
        let mut logits = None;
        for (index, flat) in ops.iter().enumerate() {
            let code = self.opcode(&flat)?;
            let ctx = OpCtx {
                index,
                code,
                name: code
                    .variant_name()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("builtin op {}", code.0)),
                flat,
                inputs: flat
                    .inputs()
                    .map(|v| v.iter().collect())
                    .unwrap_or_default(),
                outputs: flat
                    .outputs()
                    .map(|v| v.iter().collect())
                    .unwrap_or_default(),
            };
            if ctx.outputs.len() != 1 {
                return Err(ctx.unsupported("expected exactly one output"));
            }
            let out = match self.translate(&ctx)? {
                Built::Wire(wire) => wire,
                Built::Pooled { wire, embedding: e } => {
                    embedding = Some(e);
                    wire
                }
                Built::Logits(wire) => {
                    logits = Some(wire);
                    break;
                }
            };
            self.wires.insert(ctx.outputs[0], out);
        }
        let embedding = embedding.ok_or_else(|| {
            TfliteError::Graph(
                "no global pooling (AVERAGE_POOL_2D or MEAN) found: cannot cut the embedding"
                    .into(),
            )
        })?;
        let mut outputs = vec![embedding];
        outputs.extend(logits);
        self.target.select_output_outlets(&outputs)?;
        let (embedding, logits) = if self.precision == Precision::F16 {
            let outputs = self.translate_to_f16(&outputs)?;
            (outputs[0], outputs.get(1).copied())
        } else {
            (embedding, logits)
        };
        Ok(TfliteModel {
            model: self.target,
            input_type,
            input_size,
            embedding,
            logits,
            f32_fallbacks: self.fallbacks,
        })
    }

    fn wire(&self, ctx: &OpCtx, i: i32) -> Result<OutletId, TfliteError> {
        self.wires.get(&i).copied().ok_or_else(|| {
            ctx.unsupported(format!(
                "input tensor {i} is not produced by an earlier operator"
            ))
        })
    }

    fn konst(&mut self, name: String, t: impl IntoArcTensor) -> Result<OutletId, TfliteError> {
        Ok(self.target.add_const(name, t.into_arc_tensor())?)
    }

    fn unique(&self, base: &str) -> String {
        self.target.unique_name(base).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_core::ops::cnn::{PaddingSpec, PoolSpec};
    use tract_core::ops::nn::DataFormat;

    #[test]
    fn garbage_is_not_a_flatbuffer() {
        let err = build(b"definitely not a tflite file", Precision::F32)
            .err()
            .expect("garbage must not load");
        assert!(matches!(err, TfliteError::Format(_)), "{err}");
    }

    /// A real TFLite file (written by tract-tflite) whose only operator we do not read.
    #[test]
    fn an_unsupported_operator_is_named() {
        let mut model = TypedModel::default();
        let qu8 = DatumType::QU8(QParams::ZpScale {
            zero_point: 128,
            scale: 1.0 / 128.0,
        });
        let x = model.add_source("input", qu8.fact([1, 8, 8, 3])).unwrap();
        let pool = tract_core::ops::cnn::MaxPool {
            pool_spec: PoolSpec {
                data_format: DataFormat::NHWC,
                kernel_shape: tvec!(2, 2),
                padding: PaddingSpec::Valid,
                strides: Some(tvec!(2, 2)),
                dilations: None,
                input_channels: 3,
                output_channels: 3,
            },
            with_index_outputs: None,
        };
        let y = model.wire_node("pool", pool, &[x]).unwrap();
        model.select_output_outlets(&y).unwrap();
        let mut bytes = Vec::new();
        tract_tflite::tflite().write(&model, &mut bytes).unwrap();
        for precision in Precision::ALL {
            let err = build(&bytes, precision)
                .err()
                .expect("MAX_POOL_2D is not read");
            assert!(
                matches!(&err, TfliteError::UnsupportedOp { op, .. } if op == "MAX_POOL_2D"),
                "{err}"
            );
            assert!(err.to_string().contains("MAX_POOL_2D"), "{err}");
        }
    }
}
