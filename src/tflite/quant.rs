//! Quantization arithmetic in the graph: real values, requantization, fused activations.

use tract_core::ops::change_axes::wire_with_rank_broadcast;
use tract_core::ops::math;
use tract_tflite::internal::*;
use tract_tflite::tflite::{ActivationFunctionType, TensorType};

use super::ops::Requantize;
use super::read::Quant;
use super::{Builder, OpCtx, TfliteError};
use crate::models::Precision;

impl Builder<'_> {
    /// `x * mul + add` with scalar constants.
    pub(super) fn affine(
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
    pub(super) fn scalar_step(
        &mut self,
        x: OutletId,
        name: &str,
        op: impl Into<Box<dyn TypedOp>>,
        value: f32,
    ) -> Result<OutletId, TfliteError> {
        let c = self.konst(self.unique(&format!("{name}.value")), tensor0(value))?;
        Ok(wire_with_rank_broadcast(self.unique(name), &mut self.target, op, &[x, c])?[0])
    }

    /// Tensor `i` as f32 real values: `offset × scale`, from the f32 graph's offsets or the
    /// int8 graph's u8 values.
    pub(super) fn real(&mut self, i: i32, name: &str) -> Result<OutletId, TfliteError> {
        let w = *self.wires.get(&i).ok_or_else(|| {
            TfliteError::Graph(format!("tensor {i} is not produced by any operator"))
        })?;
        match self.precision {
            Precision::F32 => {
                let s = self.scale(i)?;
                self.affine(w, &format!("{name}.real"), s, 0.0)
            }
            // The real-valued graph's wires already are.
            Precision::F16 => Ok(w),
            Precision::Int8 => {
                let x = self.u8_to_offsets(i, w)?;
                let s = self.scale(i)?;
                self.affine(x, &format!("{name}.real"), s, 0.0)
            }
        }
    }

    /// The per-tensor scale of an activation tensor.
    pub(super) fn scale(&self, i: i32) -> Result<f32, TfliteError> {
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
    pub(super) fn output_range(
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
    pub(super) fn requantize_f32(
        &mut self,
        ctx: &OpCtx,
        x: OutletId,
        multiplier: &[f32],
        act: ActivationFunctionType,
    ) -> Result<OutletId, TfliteError> {
        let (lo, hi) = self.output_range(ctx, act)?;
        let multiplier = self.per_channel(ctx, x, multiplier)?;
        let name = self.unique(&format!("op{}.requant", ctx.index));
        let op = Requantize { multiplier, lo, hi };
        Ok(self.target.wire_node(name, op, &[x])?[0])
    }

    /// One multiplier per channel of `x` (its last axis), from one for all or one per channel.
    pub(super) fn per_channel(
        &self,
        ctx: &OpCtx,
        x: OutletId,
        multiplier: &[f32],
    ) -> Result<Vec<f32>, TfliteError> {
        let fact = self.target.outlet_fact(x)?;
        let channels = fact
            .shape
            .last()
            .and_then(|d| d.to_usize().ok())
            .ok_or_else(|| ctx.unsupported(format!("no channel axis in {fact:?}")))?;
        match multiplier.len() {
            1 => Ok(vec![multiplier[0]; channels]),
            n if n == channels => Ok(multiplier.to_vec()),
            n => Err(ctx.unsupported(format!("{n} multipliers for {channels} channels"))),
        }
    }
}
