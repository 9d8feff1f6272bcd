//! The f16 graph: the file's network dequantized to real values (weights `(q - zp) × scale`,
//! activations clamped to each tensor's 8-bit range and fused activation, no per-layer rounding)
//! on tract's own operators, then converted to half precision with tract's float translator.
//!
//! The f32 graph's integer offsets cannot be carried in f16: a layer's accumulator reaches
//! millions, far past f16's 65504. Real values stay within a few units (ReLU6), where f16's
//! 11-bit mantissa is enough for LiteRT agreement. Only tract operators are used, so the
//! convolutions lower to tract's FP16 matrix kernels (`arm64fp16`) and its FP16 depthwise loop,
//! and the range clamps fuse into the matrix products.

use tract_core::floats::FloatPrecisionTranslator;
use tract_core::model::translator::Translate;
use tract_core::ops::cast::cast;
use tract_core::ops::change_axes::wire_with_rank_broadcast;
use tract_core::ops::math;
use tract_ndarray::Dimension;
use tract_tflite::internal::*;
use tract_tflite::tflite::ActivationFunctionType;

use super::conv::ConvOptions;
use super::element_wise::AddOptions;
use super::{Builder, OpCtx, TfliteError};

impl Builder<'_> {
    pub(super) fn conv_real(
        &mut self,
        ctx: &OpCtx,
        o: &ConvOptions,
    ) -> Result<OutletId, TfliteError> {
        let ConvOptions {
            depthwise,
            ref x_shape,
            ref pool_spec,
            act,
            out_c,
            ..
        } = *o;
        let x = self.wire(ctx, ctx.inputs[0])?;
        let kq = self
            .quant(ctx.inputs[1])?
            .ok_or_else(|| ctx.unsupported("weights are not quantized"))?;
        let mut k = self.offsets_const(ctx, ctx.inputs[1])?;
        for (at, v) in k.indexed_iter_mut() {
            *v *= kq.at(at.slice().get(kq.axis).copied().unwrap_or(0)).0;
        }
        let xs = self.scale(ctx.inputs[0])?;
        let bias: Vec<f32> = match ctx.inputs.get(2).copied().filter(|&b| b >= 0) {
            Some(b_i) => self
                .bias_in_accumulator_units(ctx, b_i, xs, &kq, out_c)?
                .iter()
                .enumerate()
                .map(|(c, &v)| v * xs * kq.at(c).0)
                .collect(),
            None => vec![0.0; out_c],
        };
        let name = self.unique(&format!("op{}.{}", ctx.index, ctx.name.to_lowercase()));
        let group = if depthwise { x_shape[3] } else { 1 };
        let y = self.wire_float_conv(&name, x, k.into_tensor(), &bias, pool_spec.clone(), group)?;
        self.clamp_real(ctx, y, act)
    }

    pub(super) fn add_real(
        &mut self,
        ctx: &OpCtx,
        o: &AddOptions,
    ) -> Result<OutletId, TfliteError> {
        let a = self.wire(ctx, ctx.inputs[0])?;
        let b = self.wire(ctx, ctx.inputs[1])?;
        let name = self.unique(&format!("op{}.add", ctx.index));
        let sum = wire_with_rank_broadcast(&name, &mut self.target, math::add(), &[a, b])?[0];
        self.clamp_real(ctx, sum, o.act)
    }

    /// The output tensor's 8-bit range met with the fused activation, in real units: what LiteRT
    /// clamps to, without its rounding to the grid. As `max` then `min` with scalars, the form
    /// tract fuses into a matrix product's epilogue.
    pub(super) fn clamp_real(
        &mut self,
        ctx: &OpCtx,
        x: OutletId,
        act: ActivationFunctionType,
    ) -> Result<OutletId, TfliteError> {
        let (lo, hi) = self.output_range(ctx, act)?;
        let s = self.scale(ctx.outputs[0])?;
        let name = format!("op{}.clamp", ctx.index);
        let x = self.scalar_step(x, &format!("{name}.lo"), math::max(), lo * s)?;
        self.scalar_step(x, &format!("{name}.hi"), math::min(), hi * s)
    }

    /// The real-valued graph built so far (f32, u8 pixels in) in half precision, its `outputs`
    /// cast back to f32 as every caller reads them. Returns the new output wires, in order.
    pub(super) fn translate_to_f16(
        &mut self,
        outputs: &[OutletId],
    ) -> Result<Vec<OutletId>, TfliteError> {
        let mut model = std::mem::take(&mut self.target);
        model.select_output_outlets(outputs)?;
        let mut half = FloatPrecisionTranslator::new(DatumType::F32, DatumType::F16)
            .translate_model(&model)?;
        let mut f32_outputs = Vec::with_capacity(outputs.len());
        for (i, &o) in half.output_outlets()?.to_vec().iter().enumerate() {
            let name = half.unique_name(format!("output{i}.f32")).to_string();
            f32_outputs.push(half.wire_node(name, cast(DatumType::F32), &[o])?[0]);
        }
        half.select_output_outlets(&f32_outputs)?;
        self.target = half;
        Ok(f32_outputs)
    }
}
