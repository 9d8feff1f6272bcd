//! AVERAGE_POOL_2D and MEAN over the whole map: where the embedding is cut.

use tract_core::ops::cnn::{PaddingSpec, PoolSpec, SumPool};
use tract_core::ops::nn::DataFormat;
use tract_tflite::internal::*;
use tract_tflite::tflite::{ActivationFunctionType, BuiltinOperator};

use super::read::values;
use super::{Builder, OpCtx, TfliteError};

/// A global pooling's map size and fused activation, checked to cover the whole map: what every
/// precision's graph is built from.
pub(super) struct PoolOptions {
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub act: ActivationFunctionType,
}

/// The options of an AVERAGE_POOL_2D over the whole map or a MEAN over H and W.
pub(super) fn pool_options(b: &Builder, ctx: &OpCtx) -> Result<PoolOptions, TfliteError> {
    let shape = b.shape(ctx.inputs[0])?;
    if shape.len() != 4 {
        return Err(ctx.unsupported(format!("input shape {shape:?}")));
    }
    let (h, w, c) = (shape[1], shape[2], shape[3]);
    let act = if ctx.code == BuiltinOperator::AVERAGE_POOL_2D {
        let o = ctx
            .flat
            .builtin_options_as_pool_2_doptions()
            .ok_or_else(|| ctx.unsupported("missing options"))?;
        if (o.filter_height() as usize, o.filter_width() as usize) != (h, w) {
            return Err(ctx.unsupported("only global average pooling is supported"));
        }
        o.fused_activation_function()
    } else {
        let axes = values::<i64>(&b.raw_const(ctx, ctx.inputs[1])?)?;
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
    Ok(PoolOptions { h, w, c, act })
}

impl Builder<'_> {
    /// AVERAGE_POOL_2D over the whole map, or MEAN over H and W: the embedding.
    /// Returns (wire for the next op, f32 embedding wire).
    pub(super) fn global_pool(
        &mut self,
        ctx: &OpCtx,
        o: &PoolOptions,
    ) -> Result<(OutletId, OutletId), TfliteError> {
        let y = self.mean_pool(ctx, o)?;
        // The embedding is the 8-bit pooled tensor, as LiteRT's is, in real units.
        let m = self.scale(ctx.inputs[0])? / self.scale(ctx.outputs[0])?;
        let next = self.requantize_f32(ctx, y, &[m], o.act)?;
        self.wires.insert(ctx.outputs[0], next);
        let embedding = self.real(ctx.outputs[0], &format!("op{}.pool", ctx.index))?;
        Ok((next, embedding))
    }

    /// The mean over the whole map, shaped as the output tensor; the fused activation (in `o`)
    /// is still to apply.
    pub(super) fn mean_pool(
        &mut self,
        ctx: &OpCtx,
        o: &PoolOptions,
    ) -> Result<OutletId, TfliteError> {
        let PoolOptions { h, w, c, .. } = *o;
        let name = self.unique(&format!("op{}.pool", ctx.index));
        let x = self.wire(ctx, ctx.inputs[0])?;
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
        Ok(y)
    }
}
