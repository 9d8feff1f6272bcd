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
//! - [`Precision::Int8`]: convolutions run on tract's quantized kernels with the file's own scales
//!   and zero points; ADD, pooling and QUANTIZE fall back to f32 between a dequantize and a
//!   requantize, because tract cannot add two 8-bit tensors of different scales.
//!
//! The graph is cut at the global pooling (the embedding) and at the input of the final SOFTMAX
//! (the class logits; softmax is applied by the caller).

use std::collections::HashMap;

use thiserror::Error;
use tract_tflite::internal::*;
use tract_tflite::tflite as fb;
use tract_tflite::tflite::{ActivationFunctionType, BuiltinOperator, Padding, TensorType};

use tract_core::ops::cast::cast;
use tract_core::ops::change_axes::wire_with_rank_broadcast;
use tract_core::ops::cnn::{Conv, KernelFormat, PaddingSpec, PoolSpec, SumPool};
use tract_core::ops::math;
use tract_core::ops::nn::DataFormat;

use crate::models::Precision;

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

/// Quantization of one tensor: scales and zero points, one per slice along `axis` (or just one).
#[derive(Debug, Clone)]
struct Quant {
    scale: Vec<f32>,
    zero_point: Vec<i64>,
    axis: usize,
}

impl Quant {
    fn per_tensor(&self) -> bool {
        self.scale.len() == 1
    }

    fn at(&self, i: usize) -> (f32, i64) {
        let s = self.scale[if self.per_tensor() { 0 } else { i }];
        let z = self.zero_point[if self.zero_point.len() == 1 { 0 } else { i }];
        (s, z)
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

/// One operator being translated, for error messages.
struct OpCtx<'a> {
    index: usize,
    name: String,
    flat: fb::Operator<'a>,
    inputs: Vec<i32>,
    outputs: Vec<i32>,
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
            let out = match code {
                BuiltinOperator::CONV_2D => self.conv(&ctx, false)?,
                BuiltinOperator::DEPTHWISE_CONV_2D => self.conv(&ctx, true)?,
                BuiltinOperator::ADD => self.add(&ctx)?,
                BuiltinOperator::AVERAGE_POOL_2D | BuiltinOperator::MEAN => {
                    let (wire, emb) = self.global_pool(&ctx, code)?;
                    embedding = Some(emb);
                    wire
                }
                BuiltinOperator::RESHAPE => self.reshape(&ctx)?,
                BuiltinOperator::QUANTIZE => self.requantize(&ctx)?,
                BuiltinOperator::SOFTMAX => {
                    // The caller applies softmax in f32; we stop at the logits. What follows a
                    // final softmax only re-encodes the probabilities (TF2's output QUANTIZE).
                    logits = Some(self.real(ctx.inputs[0], "logits")?);
                    break;
                }
                _ => {
                    return Err(TfliteError::UnsupportedOp {
                        index,
                        op: ctx.name,
                    })
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
        Ok(TfliteModel {
            model: self.target,
            input_type,
            input_size,
            embedding,
            logits,
            f32_fallbacks: self.fallbacks,
        })
    }

    fn opcode(&self, op: &fb::Operator) -> Result<BuiltinOperator, TfliteError> {
        let codes = self
            .file
            .operator_codes()
            .ok_or_else(|| TfliteError::Format("no operator codes".into()))?;
        let i = op.opcode_index() as usize;
        if i >= codes.len() {
            return Err(TfliteError::Format(format!(
                "operator code index {i} out of range"
            )));
        }
        let code = codes.get(i);
        // Files written after opcode 127 keep the real code in `builtin_code`.
        let deprecated = code.deprecated_builtin_code() as i32;
        Ok(
            if deprecated == BuiltinOperator::PLACEHOLDER_FOR_GREATER_OP_CODES.0 {
                code.builtin_code()
            } else {
                BuiltinOperator(deprecated)
            },
        )
    }

    fn tensor(&self, i: i32) -> Result<fb::Tensor<'a>, TfliteError> {
        let tensors = self
            .graph
            .tensors()
            .ok_or_else(|| TfliteError::Format("no tensors".into()))?;
        if i < 0 || i as usize >= tensors.len() {
            return Err(TfliteError::Format(format!(
                "tensor index {i} out of range"
            )));
        }
        Ok(tensors.get(i as usize))
    }

    fn shape(&self, i: i32) -> Result<Vec<usize>, TfliteError> {
        let t = self.tensor(i)?;
        Ok(t.shape()
            .map(|s| s.iter().map(|d| d.max(0) as usize).collect())
            .unwrap_or_default())
    }

    fn quant(&self, i: i32) -> Result<Option<Quant>, TfliteError> {
        let t = self.tensor(i)?;
        let Some(q) = t.quantization() else {
            return Ok(None);
        };
        let (Some(scale), Some(zp)) = (q.scale(), q.zero_point()) else {
            return Ok(None);
        };
        if scale.is_empty() {
            return Ok(None);
        }
        Ok(Some(Quant {
            scale: scale.iter().collect(),
            zero_point: if zp.is_empty() {
                vec![0]
            } else {
                zp.iter().collect()
            },
            axis: q.quantized_dimension().max(0) as usize,
        }))
    }

    fn buffer(&self, i: i32) -> Result<Option<&'a [u8]>, TfliteError> {
        let t = self.tensor(i)?;
        let b = t.buffer() as usize;
        if b == 0 {
            return Ok(None);
        }
        let buffers = self
            .file
            .buffers()
            .ok_or_else(|| TfliteError::Format("no buffers".into()))?;
        if b >= buffers.len() {
            return Err(TfliteError::Format(format!(
                "buffer index {b} out of range"
            )));
        }
        Ok(buffers
            .get(b)
            .data()
            .map(|d| d.bytes())
            .filter(|d| !d.is_empty()))
    }

    /// A quantized constant as offsets from its zero points (`q - zp`, per channel), in f32.
    fn offsets_const(
        &self,
        ctx: &OpCtx,
        i: i32,
    ) -> Result<tract_ndarray::ArrayD<f32>, TfliteError> {
        let raw = self.raw_const(ctx, i)?;
        let shape = raw.shape().to_vec();
        let values: Vec<f32> = match self.quant(i)? {
            None => values::<f32>(&raw)?,
            Some(q) => {
                let ints = values::<i64>(&raw)?;
                let inner: usize = shape.iter().skip(q.axis + 1).product();
                let dim = shape.get(q.axis).copied().unwrap_or(1).max(1);
                if !q.per_tensor() && q.scale.len() != dim {
                    return Err(ctx.unsupported(format!(
                        "tensor {i} has {} scales for {dim} channels",
                        q.scale.len()
                    )));
                }
                ints.iter()
                    .enumerate()
                    .map(|(k, &v)| {
                        let (_, z) = q.at((k / inner.max(1)) % dim);
                        (v - z) as f32
                    })
                    .collect()
            }
        };
        tract_ndarray::ArrayD::from_shape_vec(shape, values)
            .map_err(|e| ctx.unsupported(e.to_string()))
    }

    /// A constant tensor's stored integers (or floats), untouched.
    fn raw_const(&self, ctx: &OpCtx, i: i32) -> Result<Tensor, TfliteError> {
        let t = self.tensor(i)?;
        let data = self.buffer(i)?.ok_or_else(|| {
            ctx.unsupported(format!("input tensor {i} is expected to be a constant"))
        })?;
        let shape = self.shape(i)?;
        let dt = match t.type_() {
            TensorType::UINT8 => DatumType::U8,
            TensorType::INT8 => DatumType::I8,
            TensorType::INT32 => DatumType::I32,
            TensorType::INT64 => DatumType::I64,
            TensorType::FLOAT32 => DatumType::F32,
            other => {
                return Err(ctx.unsupported(format!(
                    "constant of type {}",
                    other.variant_name().unwrap_or("?")
                )))
            }
        };
        let expected = shape.iter().product::<usize>() * dt.size_of();
        if data.len() != expected {
            return Err(ctx.unsupported(format!(
                "constant tensor {i} holds {} bytes, its shape {shape:?} needs {expected}",
                data.len()
            )));
        }
        // Safety: `data` has exactly the length the shape and type need (checked above);
        // `from_raw_dt` copies it into an aligned buffer.
        Ok(unsafe { Tensor::from_raw_dt(dt, &shape, data)? })
    }

    /// The 8-bit type of an activation tensor in the int8 graph.
    fn qtype(&self, ctx: &OpCtx, i: i32) -> Result<DatumType, TfliteError> {
        let t = self.tensor(i)?;
        let q = self.quant(i)?.filter(Quant::per_tensor).ok_or_else(|| {
            ctx.unsupported(format!("activation tensor {i} is not per-tensor quantized"))
        })?;
        let params = QParams::ZpScale {
            zero_point: q.zero_point[0] as i32,
            scale: q.scale[0],
        };
        match t.type_() {
            TensorType::UINT8 => Ok(DatumType::QU8(params)),
            TensorType::INT8 => Ok(DatumType::QI8(params)),
            other => Err(ctx.unsupported(format!(
                "activation of type {}",
                other.variant_name().unwrap_or("?")
            ))),
        }
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

    fn wire_input(&mut self, i: i32) -> Result<(DatumType, u32), TfliteError> {
        let t = self.tensor(i)?;
        let shape = self.shape(i)?;
        if shape.len() != 4 || shape[0] != 1 || shape[3] != 3 || shape[1] != shape[2] {
            return Err(TfliteError::Format(format!(
                "input shape {shape:?}; expected [1, S, S, 3] RGB"
            )));
        }
        if t.type_() != TensorType::UINT8 {
            return Err(TfliteError::Format(format!(
                "input type {}; edge-mnv2 feeds uint8 pixels to TFLite models",
                t.type_().variant_name().unwrap_or("?")
            )));
        }
        let q = self.quant(i)?.filter(Quant::per_tensor).ok_or_else(|| {
            TfliteError::Format("uint8 input without quantization parameters".into())
        })?;
        let (scale, zp) = (q.scale[0], q.zero_point[0]);
        let dt = match self.precision {
            Precision::F32 => DatumType::U8,
            Precision::Int8 => DatumType::QU8(QParams::ZpScale {
                zero_point: zp as i32,
                scale,
            }),
        };
        let src = self.target.add_source("input", dt.fact(&shape))?;
        let wire = match self.precision {
            Precision::Int8 => src,
            Precision::F32 => {
                let x = self
                    .target
                    .wire_node("input.f32", cast(DatumType::F32), &[src])?[0];
                self.affine(x, "input.offset", 1.0, -(zp as f32))?
            }
        };
        self.wires.insert(i, wire);
        Ok((dt, shape[1] as u32))
    }

    /// `x * mul + add` with scalar constants.
    fn affine(
        &mut self,
        x: OutletId,
        name: &str,
        mul: f32,
        add: f32,
    ) -> Result<OutletId, TfliteError> {
        // Identity steps are skipped rather than left for the optimiser: this runs per frame.
        let mut x = x;
        if mul != 1.0 {
            x = self.scalar_step(x, &format!("{name}.scale"), math::mul(), mul)?;
        }
        if add != 0.0 {
            x = self.scalar_step(x, &format!("{name}.shift"), math::add(), add)?;
        }
        Ok(x)
    }

    /// `op(x, value)` with a scalar constant broadcast to `x`'s rank.
    fn scalar_step(
        &mut self,
        x: OutletId,
        name: &str,
        op: impl Into<Box<dyn TypedOp>>,
        value: f32,
    ) -> Result<OutletId, TfliteError> {
        let c = self.konst(self.unique(&format!("{name}.value")), tensor0(value))?;
        Ok(wire_with_rank_broadcast(self.unique(name), &mut self.target, op, &[x, c])?[0])
    }

    /// Tensor `i` as f32 real values: `offset × scale` in the f32 graph, a dequantize in the
    /// int8 graph.
    fn real(&mut self, i: i32, name: &str) -> Result<OutletId, TfliteError> {
        let w = *self.wires.get(&i).ok_or_else(|| {
            TfliteError::Graph(format!("tensor {i} is not produced by any operator"))
        })?;
        match self.precision {
            Precision::F32 => {
                let s = self.scale(i)?;
                self.affine(w, &format!("{name}.real"), s, 0.0)
            }
            Precision::Int8 => Ok(self.target.wire_node(
                self.unique(&format!("{name}.dequant")),
                cast(DatumType::F32),
                &[w],
            )?[0]),
        }
    }

    /// The per-tensor scale of an activation tensor.
    fn scale(&self, i: i32) -> Result<f32, TfliteError> {
        self.quant(i)?
            .filter(Quant::per_tensor)
            .map(|q| q.scale[0])
            .filter(|&s| s > 0.0)
            .ok_or_else(|| {
                TfliteError::Graph(format!("activation tensor {i} is not per-tensor quantized"))
            })
    }

    /// TFLite's output range for the op's output tensor, in offsets from its zero point: the
    /// 8-bit range intersected with the fused activation, both on the output's own grid.
    fn output_range(
        &self,
        ctx: &OpCtx,
        act: ActivationFunctionType,
    ) -> Result<(f32, f32), TfliteError> {
        let out = ctx.outputs[0];
        let q = self.quant(out)?.filter(Quant::per_tensor).ok_or_else(|| {
            ctx.unsupported(format!("output tensor {out} is not per-tensor quantized"))
        })?;
        let (s, zp) = (q.scale[0], q.zero_point[0]);
        let (qmin, qmax) = match self.tensor(out)?.type_() {
            TensorType::UINT8 => (0i64, 255i64),
            TensorType::INT8 => (-128, 127),
            other => {
                return Err(ctx.unsupported(format!(
                    "output of type {}",
                    other.variant_name().unwrap_or("?")
                )))
            }
        };
        let q_of = |v: f32| zp + (v / s).round() as i64;
        let (lo, hi) = match act {
            ActivationFunctionType::NONE => (qmin, qmax),
            ActivationFunctionType::RELU => (qmin.max(q_of(0.0)), qmax),
            ActivationFunctionType::RELU6 => (qmin.max(q_of(0.0)), qmax.min(q_of(6.0))),
            ActivationFunctionType::RELU_N1_TO_1 => (qmin.max(q_of(-1.0)), qmax.min(q_of(1.0))),
            other => {
                return Err(ctx.unsupported(format!(
                    "fused activation {}",
                    other.variant_name().unwrap_or("?")
                )))
            }
        };
        Ok(((lo - zp) as f32, (hi - zp) as f32))
    }

    /// The end of every layer in the f32 graph: `round(x × multiplier)` clamped to the output
    /// range. `multiplier` is a scalar or one value per output channel (last axis).
    fn requantize_f32(
        &mut self,
        ctx: &OpCtx,
        x: OutletId,
        multiplier: Tensor,
        act: ActivationFunctionType,
    ) -> Result<OutletId, TfliteError> {
        let (lo, hi) = self.output_range(ctx, act)?;
        let name = self.unique(&format!("op{}.requant", ctx.index));
        let m = self.konst(format!("{name}.m"), multiplier)?;
        let y = wire_with_rank_broadcast(
            format!("{name}.scale"),
            &mut self.target,
            math::mul(),
            &[x, m],
        )?[0];
        let y = self
            .target
            .wire_node(format!("{name}.round"), math::round(), &[y])?[0];
        let lo = self.konst(format!("{name}.lo"), tensor0(lo))?;
        let y = wire_with_rank_broadcast(
            format!("{name}.max"),
            &mut self.target,
            math::max(),
            &[y, lo],
        )?[0];
        let hi = self.konst(format!("{name}.hi"), tensor0(hi))?;
        Ok(wire_with_rank_broadcast(
            format!("{name}.min"),
            &mut self.target,
            math::min(),
            &[y, hi],
        )?[0])
    }

    fn fused_activation(
        &mut self,
        ctx: &OpCtx,
        x: OutletId,
        act: ActivationFunctionType,
    ) -> Result<OutletId, TfliteError> {
        let (lo, hi) = match act {
            ActivationFunctionType::NONE => return Ok(x),
            ActivationFunctionType::RELU => (0.0f32, None),
            ActivationFunctionType::RELU6 => (0.0, Some(6.0f32)),
            ActivationFunctionType::RELU_N1_TO_1 => (-1.0, Some(1.0)),
            other => {
                return Err(ctx.unsupported(format!(
                    "fused activation {}",
                    other.variant_name().unwrap_or("?")
                )))
            }
        };
        let dt = self.target.outlet_fact(x)?.datum_type;
        let bound = |b: &mut Self, v: f32| -> Result<OutletId, TfliteError> {
            let t = match dt.qparams() {
                None => tensor0(v),
                // The clamp bound in the output's own integer grid, as TFLite computes it.
                Some(_) => tensor0(v).cast_to_dt(dt)?.into_owned(),
            };
            b.konst(b.unique(&format!("{}.bound", ctx.name)), t)
        };
        let l = bound(self, lo)?;
        let mut y = wire_with_rank_broadcast(
            self.unique(&format!("op{}.relu", ctx.index)),
            &mut self.target,
            math::max(),
            &[x, l],
        )?[0];
        if let Some(hi) = hi {
            let h = bound(self, hi)?;
            y = wire_with_rank_broadcast(
                self.unique(&format!("op{}.clip", ctx.index)),
                &mut self.target,
                math::min(),
                &[y, h],
            )?[0];
        }
        Ok(y)
    }

    fn conv(&mut self, ctx: &OpCtx, depthwise: bool) -> Result<OutletId, TfliteError> {
        if ctx.inputs.len() < 2 {
            return Err(ctx.unsupported("expected input, weights and bias"));
        }
        let (x_i, k_i) = (ctx.inputs[0], ctx.inputs[1]);
        let b_i = ctx.inputs.get(2).copied().filter(|&b| b >= 0);
        let x = self.wire(ctx, x_i)?;
        let k_shape = self.shape(k_i)?;
        if k_shape.len() != 4 {
            return Err(ctx.unsupported(format!("weights shape {k_shape:?}")));
        }
        let x_shape = self.shape(x_i)?;
        let in_c = *x_shape.last().unwrap_or(&0);
        let (padding, strides, dilations, act, group, out_c) = if depthwise {
            let o = ctx
                .flat
                .builtin_options_as_depthwise_conv_2_doptions()
                .ok_or_else(|| ctx.unsupported("missing options"))?;
            if o.depth_multiplier() > 1 {
                return Err(ctx.unsupported("depth multiplier > 1"));
            }
            (
                o.padding(),
                [o.stride_h(), o.stride_w()],
                [o.dilation_h_factor(), o.dilation_w_factor()],
                o.fused_activation_function(),
                in_c,
                k_shape[3],
            )
        } else {
            let o = ctx
                .flat
                .builtin_options_as_conv_2_doptions()
                .ok_or_else(|| ctx.unsupported("missing options"))?;
            (
                o.padding(),
                [o.stride_h(), o.stride_w()],
                [o.dilation_h_factor(), o.dilation_w_factor()],
                o.fused_activation_function(),
                1,
                k_shape[0],
            )
        };
        // OHWI: a convolution's I is its input depth; a depthwise's [1, H, W, C] has C = in_c.
        if k_shape[3] != in_c || depthwise && out_c != in_c {
            return Err(ctx.unsupported(format!(
                "weights {k_shape:?} do not match {in_c} input channels"
            )));
        }
        let padding = match padding {
            Padding::SAME => PaddingSpec::SameUpper,
            Padding::VALID => PaddingSpec::Valid,
            p => return Err(ctx.unsupported(format!("padding {p:?}"))),
        };
        let pool_spec = PoolSpec {
            data_format: DataFormat::NHWC,
            kernel_shape: tvec!(k_shape[1], k_shape[2]),
            padding,
            strides: Some(tvec!(
                strides[0].max(1) as usize,
                strides[1].max(1) as usize
            )),
            dilations: Some(tvec!(
                dilations[0].max(1) as usize,
                dilations[1].max(1) as usize
            )),
            input_channels: in_c,
            output_channels: out_c,
        };
        let name = self.unique(&format!("op{}.{}", ctx.index, ctx.name.to_lowercase()));
        let y = match self.precision {
            Precision::F32 => {
                let kq = self
                    .quant(k_i)?
                    .ok_or_else(|| ctx.unsupported("weights are not quantized"))?;
                let k = self.offsets_const(ctx, k_i)?;
                let xs = self.scale(x_i)?;
                let b = match b_i {
                    Some(b_i) => self.bias_in_accumulator_units(ctx, b_i, xs, &kq, out_c)?,
                    None => tract_ndarray::Array1::<f32>::zeros(out_c).into_dyn(),
                };
                let kw = self.konst(format!("{name}.weights"), k.into_tensor())?;
                let bw = self.konst(format!("{name}.bias"), b.into_tensor())?;
                let op = Conv {
                    pool_spec,
                    kernel_fmt: KernelFormat::OHWI,
                    group,
                    q_params: None,
                };
                let acc = self.target.wire_node(&name, op, &[x, kw, bw])?[0];
                let ys = self.scale(ctx.outputs[0])?;
                let multiplier = if kq.per_tensor() {
                    tensor0(xs * kq.scale[0] / ys)
                } else {
                    tensor1(&(0..out_c).map(|c| xs * kq.at(c).0 / ys).collect::<Vec<_>>())
                };
                return self.requantize_f32(ctx, acc, multiplier, act);
            }
            Precision::Int8 => self.conv_int8(ctx, &name, x, pool_spec, group, b_i, out_c)?,
        };
        self.fused_activation(ctx, y, act)
    }

    /// The bias in accumulator units (input scale × weight scale of its channel), which is how
    /// TFLite stores it; rescaled if a file gives it another scale.
    fn bias_in_accumulator_units(
        &self,
        ctx: &OpCtx,
        b_i: i32,
        xs: f32,
        kq: &Quant,
        out_c: usize,
    ) -> Result<tract_ndarray::ArrayD<f32>, TfliteError> {
        let raw = self.raw_const(ctx, b_i)?;
        let ints = values::<f32>(&raw)?;
        if ints.len() != out_c {
            return Err(ctx.unsupported(format!(
                "bias has {} values for {out_c} channels",
                ints.len()
            )));
        }
        let bq = self.quant(b_i)?;
        Ok(
            tract_ndarray::Array1::from_iter(ints.iter().enumerate().map(|(c, &v)| {
                let acc_scale = xs * kq.at(c).0;
                let own_scale = match (&bq, raw.datum_type()) {
                    (_, DatumType::F32) => 1.0,
                    (Some(bq), _) => bq.at(c).0,
                    (None, _) => acc_scale,
                };
                if own_scale == acc_scale {
                    v
                } else {
                    v * own_scale / acc_scale
                }
            }))
            .into_dyn(),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn conv_int8(
        &mut self,
        ctx: &OpCtx,
        name: &str,
        x: OutletId,
        pool_spec: PoolSpec,
        group: usize,
        b_i: Option<i32>,
        out_c: usize,
    ) -> Result<OutletId, TfliteError> {
        let k_i = ctx.inputs[1];
        let x_dt = self.target.outlet_fact(x)?.datum_type;
        let (x0, xs) = x_dt
            .qparams()
            .ok_or_else(|| ctx.unsupported("float input in the int8 graph"))?
            .zp_scale();
        let kq = self
            .quant(k_i)?
            .ok_or_else(|| ctx.unsupported("weights are not quantized"))?;
        let y_dt = self.qtype(ctx, ctx.outputs[0])?;
        let (y0, ys) = y_dt.qparams().unwrap().zp_scale();

        let k = self.raw_const(ctx, k_i)?;
        let k0 = if kq.zero_point.iter().all(|&z| z == kq.zero_point[0]) {
            tensor0(kq.zero_point[0] as i32)
        } else {
            tensor1(&kq.zero_point.iter().map(|&z| z as i32).collect::<Vec<_>>())
        };
        let ks = if kq.per_tensor() {
            tensor0(kq.scale[0])
        } else {
            if kq.scale.len() != out_c {
                return Err(ctx.unsupported(format!(
                    "{} weight scales for {out_c} output channels",
                    kq.scale.len()
                )));
            }
            tensor1(&kq.scale)
        };
        let bias = match b_i {
            Some(b_i) => {
                let raw = self.raw_const(ctx, b_i)?;
                if raw.datum_type() != DatumType::I32 {
                    return Err(ctx.unsupported("non-int32 bias in a quantized convolution"));
                }
                raw
            }
            None => tract_ndarray::Array1::<i32>::zeros(out_c).into_tensor(),
        };
        let inputs = [
            x,
            self.konst(format!("{name}.weights"), k)?,
            self.konst(format!("{name}.bias"), bias)?,
            self.konst(format!("{name}.x0"), tensor0(x0))?,
            self.konst(format!("{name}.xs"), tensor0(xs))?,
            self.konst(format!("{name}.k0"), k0)?,
            self.konst(format!("{name}.ks"), ks)?,
            self.konst(format!("{name}.y0"), tensor0(y0))?,
            self.konst(format!("{name}.ys"), tensor0(ys))?,
        ];
        let op = Conv {
            pool_spec,
            kernel_fmt: KernelFormat::OHWI,
            group,
            q_params: Some(y_dt),
        };
        Ok(self.target.wire_node(name, op, &inputs)?[0])
    }

    fn add(&mut self, ctx: &OpCtx) -> Result<OutletId, TfliteError> {
        if ctx.inputs.len() != 2 {
            return Err(ctx.unsupported("expected two inputs"));
        }
        let act = ctx
            .flat
            .builtin_options_as_add_options()
            .map(|o| o.fused_activation_function())
            .unwrap_or(ActivationFunctionType::NONE);
        let name = self.unique(&format!("op{}.add", ctx.index));
        if self.precision == Precision::F32 {
            // Both inputs brought to the output's grid, summed, rounded once, as TFLite does.
            let so = self.scale(ctx.outputs[0])?;
            let (sa, sb) = (self.scale(ctx.inputs[0])?, self.scale(ctx.inputs[1])?);
            let a = self.wire(ctx, ctx.inputs[0])?;
            let b = self.wire(ctx, ctx.inputs[1])?;
            let a = self.affine(a, &format!("{name}.a"), sa / so, 0.0)?;
            let b = self.affine(b, &format!("{name}.b"), sb / so, 0.0)?;
            let sum = wire_with_rank_broadcast(&name, &mut self.target, math::add(), &[a, b])?[0];
            return self.requantize_f32(ctx, sum, tensor0(1.0f32), act);
        }
        let a = self.real(ctx.inputs[0], &format!("{name}.a"))?;
        let b = self.real(ctx.inputs[1], &format!("{name}.b"))?;
        let sum = wire_with_rank_broadcast(&name, &mut self.target, math::add(), &[a, b])?[0];
        let y = self.fused_activation(ctx, sum, act)?;
        self.requantize_output(ctx, y, "ADD")
    }

    /// In the int8 graph, quantizes an f32 intermediate into the op's output type.
    fn requantize_output(
        &mut self,
        ctx: &OpCtx,
        y: OutletId,
        what: &str,
    ) -> Result<OutletId, TfliteError> {
        let dt = self.qtype(ctx, ctx.outputs[0])?;
        self.fallbacks.push(format!("#{} {what}", ctx.index));
        Ok(self.target.wire_node(
            self.unique(&format!("op{}.requant", ctx.index)),
            cast(dt),
            &[y],
        )?[0])
    }

    /// AVERAGE_POOL_2D over the whole map, or MEAN over H and W: the embedding.
    /// Returns (wire for the next op, f32 embedding wire).
    fn global_pool(
        &mut self,
        ctx: &OpCtx,
        code: BuiltinOperator,
    ) -> Result<(OutletId, OutletId), TfliteError> {
        let x_i = ctx.inputs[0];
        let shape = self.shape(x_i)?;
        if shape.len() != 4 {
            return Err(ctx.unsupported(format!("input shape {shape:?}")));
        }
        let (h, w, c) = (shape[1], shape[2], shape[3]);
        let act = if code == BuiltinOperator::AVERAGE_POOL_2D {
            let o = ctx
                .flat
                .builtin_options_as_pool_2_doptions()
                .ok_or_else(|| ctx.unsupported("missing options"))?;
            if (o.filter_height() as usize, o.filter_width() as usize) != (h, w) {
                return Err(ctx.unsupported("only global average pooling is supported"));
            }
            o.fused_activation_function()
        } else {
            let axes = values::<i64>(&self.raw_const(ctx, ctx.inputs[1])?)?;
            let mut axes: Vec<i64> = axes
                .iter()
                .map(|&a| if a < 0 { a + 4 } else { a })
                .collect();
            axes.sort_unstable();
            if axes != [1, 2] {
                return Err(
                    ctx.unsupported(format!("MEAN over axes {axes:?}; only [1, 2] is supported"))
                );
            }
            ActivationFunctionType::NONE
        };
        let name = self.unique(&format!("op{}.pool", ctx.index));
        let x = match self.precision {
            Precision::F32 => self.wire(ctx, x_i)?,
            Precision::Int8 => self.real(x_i, &name)?,
        };
        let pool = SumPool {
            pool_spec: PoolSpec {
                data_format: DataFormat::NHWC,
                kernel_shape: tvec!(h, w),
                padding: PaddingSpec::Valid,
                strides: None,
                dilations: None,
                input_channels: c,
                output_channels: c,
            },
            count_include_pad: false,
            normalize: true,
        };
        let mut y = self.target.wire_node(&name, pool, &[x])?[0];
        if self.precision == Precision::Int8 {
            y = self.fused_activation(ctx, y, act)?;
        }
        let out_shape = self.shape(ctx.outputs[0])?;
        if out_shape.len() == 2 {
            y = self.target.wire_node(
                self.unique(&format!("{name}.squeeze")),
                AxisOp::Reshape(
                    1,
                    tvec!(1.to_dim(), 1.to_dim(), c.to_dim()),
                    tvec!(c.to_dim()),
                ),
                &[y],
            )?[0];
        }
        // The embedding is the 8-bit pooled tensor, as LiteRT's is, in real units.
        let next = match self.precision {
            Precision::F32 => {
                let m = self.scale(x_i)? / self.scale(ctx.outputs[0])?;
                self.requantize_f32(ctx, y, tensor0(m), act)?
            }
            Precision::Int8 => self.requantize_output(ctx, y, ctx.name.as_str())?,
        };
        self.wires.insert(ctx.outputs[0], next);
        let embedding = self.real(ctx.outputs[0], &name)?;
        Ok((next, embedding))
    }

    fn reshape(&mut self, ctx: &OpCtx) -> Result<OutletId, TfliteError> {
        let x = self.wire(ctx, ctx.inputs[0])?;
        let from = self.shape(ctx.inputs[0])?;
        let to = self.shape(ctx.outputs[0])?;
        if from.iter().product::<usize>() != to.iter().product::<usize>() {
            return Err(ctx.unsupported(format!("reshape {from:?} to {to:?}")));
        }
        let dims = |s: &[usize]| s.iter().map(|d| d.to_dim()).collect::<TVec<TDim>>();
        Ok(self.target.wire_node(
            self.unique(&format!("op{}.reshape", ctx.index)),
            AxisOp::Reshape(0, dims(&from), dims(&to)),
            &[x],
        )?[0])
    }

    /// QUANTIZE from one 8-bit grid to another (TF2 files turn the uint8 input into int8).
    fn requantize(&mut self, ctx: &OpCtx) -> Result<OutletId, TfliteError> {
        let (x_i, y_i) = (ctx.inputs[0], ctx.outputs[0]);
        if self.tensor(y_i)?.type_() == TensorType::FLOAT32 {
            return Err(ctx.unsupported("dequantizing to float inside the graph"));
        }
        match self.precision {
            Precision::F32 => {
                let x = self.wire(ctx, x_i)?;
                let m = self.scale(x_i)? / self.scale(y_i)?;
                self.requantize_f32(ctx, x, tensor0(m), ActivationFunctionType::NONE)
            }
            Precision::Int8 => {
                let x = self.real(x_i, &format!("op{}", ctx.index))?;
                self.requantize_output(ctx, x, ctx.name.as_str())
            }
        }
    }
}

/// A constant's elements converted to `T`.
fn values<T: Datum + Copy>(t: &Tensor) -> TractResult<Vec<T>> {
    Ok(t.cast_to::<T>()?
        .try_as_plain_ram()?
        .as_slice::<T>()?
        .to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

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
