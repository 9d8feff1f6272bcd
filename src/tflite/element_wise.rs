//! ADD, QUANTIZE and RESHAPE.

use tract_core::ops::change_axes::wire_with_rank_broadcast;
use tract_core::ops::math;
use tract_tflite::internal::*;
use tract_tflite::tflite::{ActivationFunctionType, TensorType};

use super::ops::RequantizedAdd;
use super::{Builder, OpCtx, TfliteError};

/// An ADD's options, checked: what every precision's graph is built from.
pub(super) struct AddOptions {
    pub act: ActivationFunctionType,
}

pub(super) fn add_options(ctx: &OpCtx) -> Result<AddOptions, TfliteError> {
    if ctx.inputs.len() != 2 {
        return Err(ctx.unsupported("expected two inputs"));
    }
    let act = ctx
        .flat
        .builtin_options_as_add_options()
        .map(|o| o.fused_activation_function())
        .unwrap_or(ActivationFunctionType::NONE);
    Ok(AddOptions { act })
}

/// A RESHAPE's two shapes, checked to hold as many values.
pub(super) struct ReshapeOptions {
    pub from: Vec<usize>,
    pub to: Vec<usize>,
}

pub(super) fn reshape_options(b: &Builder, ctx: &OpCtx) -> Result<ReshapeOptions, TfliteError> {
    let from = b.shape(ctx.inputs[0])?;
    let to = b.shape(ctx.outputs[0])?;
    if from.iter().product::<usize>() != to.iter().product::<usize>() {
        return Err(ctx.unsupported(format!("reshape {from:?} to {to:?}")));
    }
    Ok(ReshapeOptions { from, to })
}

/// QUANTIZE has no options; what we read of it is a change from one 8-bit grid to another.
pub(super) fn check_quantize(b: &Builder, ctx: &OpCtx) -> Result<(), TfliteError> {
    if b.tensor(ctx.outputs[0])?.type_() == TensorType::FLOAT32 {
        return Err(ctx.unsupported("dequantizing to float inside the graph"));
    }
    Ok(())
}

impl Builder<'_> {
    pub(super) fn add(&mut self, ctx: &OpCtx, o: &AddOptions) -> Result<OutletId, TfliteError> {
        let name = self.unique(&format!("op{}.add", ctx.index));
        // Both inputs brought to the output's grid, summed, rounded once, as TFLite does.
        let so = self.scale(ctx.outputs[0])?;
        let (sa, sb) = (self.scale(ctx.inputs[0])?, self.scale(ctx.inputs[1])?);
        let a = self.wire(ctx, ctx.inputs[0])?;
        let b = self.wire(ctx, ctx.inputs[1])?;
        if self.target.outlet_fact(a)?.shape == self.target.outlet_fact(b)?.shape {
            let (lo, hi) = self.output_range(ctx, o.act)?;
            let (ma, mb) = (sa / so, sb / so);
            let op = RequantizedAdd { ma, mb, lo, hi };
            return Ok(self.target.wire_node(name, op, &[a, b])?[0]);
        }
        let a = self.affine(a, &format!("{name}.a"), sa / so, 0.0)?;
        let b = self.affine(b, &format!("{name}.b"), sb / so, 0.0)?;
        let sum = wire_with_rank_broadcast(&name, &mut self.target, math::add(), &[a, b])?[0];
        self.requantize_f32(ctx, sum, &[1.0], o.act)
    }

    /// The same values in another shape, on any precision's wires.
    pub(super) fn reshape(
        &mut self,
        ctx: &OpCtx,
        o: &ReshapeOptions,
    ) -> Result<OutletId, TfliteError> {
        let x = self.wire(ctx, ctx.inputs[0])?;
        let dims = |s: &[usize]| s.iter().map(|d| d.to_dim()).collect::<TVec<TDim>>();
        Ok(self.target.wire_node(
            self.unique(&format!("op{}.reshape", ctx.index)),
            AxisOp::Reshape(0, dims(&o.from), dims(&o.to)),
            &[x],
        )?[0])
    }

    /// QUANTIZE from one 8-bit grid to another (TF2 files turn the uint8 input into int8).
    pub(super) fn requantize(&mut self, ctx: &OpCtx) -> Result<OutletId, TfliteError> {
        let (x_i, y_i) = (ctx.inputs[0], ctx.outputs[0]);
        let x = self.wire(ctx, x_i)?;
        let m = self.scale(x_i)? / self.scale(y_i)?;
        self.requantize_f32(ctx, x, &[m], ActivationFunctionType::NONE)
    }
}
