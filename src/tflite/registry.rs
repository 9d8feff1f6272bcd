//! The one table from a TFLite operator code to the code that reads it, as tract-tflite keeps
//! one in its registry. Each operator's options are parsed once, into a typed value, and handed
//! to the builder of the precision being built; adding an operator is one [`Operator`] and one
//! row of [`REGISTRY`].

use tract_tflite::tflite::{ActivationFunctionType, BuiltinOperator};

use super::conv::{conv_options, ConvOptions};
use super::element_wise::{
    add_options, check_quantize, reshape_options, AddOptions, ReshapeOptions,
};
use super::pool::{pool_options, PoolOptions};
use super::{Builder, Built, OpCtx, TfliteError};
use crate::models::Precision;

/// One operator as we read it: its options, and its graph in each precision.
trait Operator {
    /// Options and shapes, checked: the same value whichever precision is built.
    type Options;
    fn options(b: &Builder, ctx: &OpCtx) -> Result<Self::Options, TfliteError>;
    /// The f32 graph: the file's integers as f32 offsets from their zero points.
    fn f32(b: &mut Builder, ctx: &OpCtx, o: &Self::Options) -> Result<Built, TfliteError>;
    /// The int8 graph on u8 wires; `None` where our 8-bit operators do not run it, and the f32
    /// form runs instead, between conversions (`Builder::via_offsets`).
    fn int8(
        _b: &mut Builder,
        _ctx: &OpCtx,
        _o: &Self::Options,
    ) -> Result<Option<Built>, TfliteError> {
        Ok(None)
    }
    /// The real-valued graph that becomes f16 once built.
    fn f16(b: &mut Builder, ctx: &OpCtx, o: &Self::Options) -> Result<Built, TfliteError>;
}

type Read = fn(&mut Builder, &OpCtx) -> Result<Built, TfliteError>;

/// Every operator we read. The order is the one `TfliteError::UnsupportedOp` lists them in.
const REGISTRY: &[(BuiltinOperator, Read)] = &[
    (BuiltinOperator::CONV_2D, read::<Conv>),
    (BuiltinOperator::DEPTHWISE_CONV_2D, read::<Conv>),
    (BuiltinOperator::ADD, read::<Add>),
    (BuiltinOperator::AVERAGE_POOL_2D, read::<GlobalPool>),
    (BuiltinOperator::MEAN, read::<GlobalPool>),
    (BuiltinOperator::RESHAPE, read::<Reshape>),
    (BuiltinOperator::SOFTMAX, read::<Softmax>),
    (BuiltinOperator::QUANTIZE, read::<Quantize>),
];

/// Parses `O`'s options, then builds it in the builder's precision.
fn read<O: Operator>(b: &mut Builder, ctx: &OpCtx) -> Result<Built, TfliteError> {
    let options = O::options(b, ctx)?;
    match b.precision {
        Precision::F32 => O::f32(b, ctx, &options),
        Precision::F16 => O::f16(b, ctx, &options),
        Precision::Int8 => match O::int8(b, ctx, &options)? {
            Some(built) => Ok(built),
            None => b.via_offsets(ctx, |b| O::f32(b, ctx, &options)),
        },
    }
}

impl Builder<'_> {
    /// One operator, through its row of [`REGISTRY`].
    pub(super) fn translate(&mut self, ctx: &OpCtx) -> Result<Built, TfliteError> {
        let read = REGISTRY
            .iter()
            .find(|(code, _)| *code == ctx.code)
            .map(|&(_, read)| read)
            .ok_or_else(|| TfliteError::UnsupportedOp {
                index: ctx.index,
                op: ctx.name.clone(),
            })?;
        read(self, ctx)
    }
}

/// CONV_2D and DEPTHWISE_CONV_2D.
struct Conv;

impl Operator for Conv {
    type Options = ConvOptions;
    fn options(b: &Builder, ctx: &OpCtx) -> Result<ConvOptions, TfliteError> {
        conv_options(b, ctx)
    }
    fn f32(b: &mut Builder, ctx: &OpCtx, o: &ConvOptions) -> Result<Built, TfliteError> {
        Ok(Built::Wire(b.conv(ctx, o)?))
    }
    fn int8(b: &mut Builder, ctx: &OpCtx, o: &ConvOptions) -> Result<Option<Built>, TfliteError> {
        Ok(b.conv_int8(ctx, o)?.map(Built::Wire))
    }
    fn f16(b: &mut Builder, ctx: &OpCtx, o: &ConvOptions) -> Result<Built, TfliteError> {
        Ok(Built::Wire(b.conv_real(ctx, o)?))
    }
}

struct Add;

impl Operator for Add {
    type Options = AddOptions;
    fn options(_b: &Builder, ctx: &OpCtx) -> Result<AddOptions, TfliteError> {
        add_options(ctx)
    }
    fn f32(b: &mut Builder, ctx: &OpCtx, o: &AddOptions) -> Result<Built, TfliteError> {
        Ok(Built::Wire(b.add(ctx, o)?))
    }
    fn int8(b: &mut Builder, ctx: &OpCtx, o: &AddOptions) -> Result<Option<Built>, TfliteError> {
        Ok(b.add_int8(ctx, o)?.map(Built::Wire))
    }
    fn f16(b: &mut Builder, ctx: &OpCtx, o: &AddOptions) -> Result<Built, TfliteError> {
        Ok(Built::Wire(b.add_real(ctx, o)?))
    }
}

/// AVERAGE_POOL_2D or MEAN over the whole map: where the embedding is cut. In the int8 graph
/// it runs as in the f32 one (it is small).
struct GlobalPool;

impl Operator for GlobalPool {
    type Options = PoolOptions;
    fn options(b: &Builder, ctx: &OpCtx) -> Result<PoolOptions, TfliteError> {
        pool_options(b, ctx)
    }
    fn f32(b: &mut Builder, ctx: &OpCtx, o: &PoolOptions) -> Result<Built, TfliteError> {
        let (wire, embedding) = b.global_pool(ctx, o)?;
        Ok(Built::Pooled { wire, embedding })
    }
    fn f16(b: &mut Builder, ctx: &OpCtx, o: &PoolOptions) -> Result<Built, TfliteError> {
        let pooled = b.mean_pool(ctx, o)?;
        let y = b.clamp_real(ctx, pooled, o.act)?;
        Ok(Built::Pooled {
            wire: y,
            embedding: y,
        })
    }
}

/// Reshapes the wire of any precision as it is.
struct Reshape;

impl Operator for Reshape {
    type Options = ReshapeOptions;
    fn options(b: &Builder, ctx: &OpCtx) -> Result<ReshapeOptions, TfliteError> {
        reshape_options(b, ctx)
    }
    fn f32(b: &mut Builder, ctx: &OpCtx, o: &ReshapeOptions) -> Result<Built, TfliteError> {
        Ok(Built::Wire(b.reshape(ctx, o)?))
    }
    fn int8(
        b: &mut Builder,
        ctx: &OpCtx,
        o: &ReshapeOptions,
    ) -> Result<Option<Built>, TfliteError> {
        Self::f32(b, ctx, o).map(Some)
    }
    fn f16(b: &mut Builder, ctx: &OpCtx, o: &ReshapeOptions) -> Result<Built, TfliteError> {
        Self::f32(b, ctx, o)
    }
}

/// The final SOFTMAX: the caller applies softmax in f32, so the graph stops at its input. What
/// follows only re-encodes the probabilities (TF2's output QUANTIZE).
struct Softmax;

impl Operator for Softmax {
    type Options = ();
    fn options(_b: &Builder, _ctx: &OpCtx) -> Result<(), TfliteError> {
        Ok(())
    }
    fn f32(b: &mut Builder, ctx: &OpCtx, _o: &()) -> Result<Built, TfliteError> {
        Ok(Built::Logits(b.real(ctx.inputs[0], "logits")?))
    }
    fn int8(b: &mut Builder, ctx: &OpCtx, o: &()) -> Result<Option<Built>, TfliteError> {
        Self::f32(b, ctx, o).map(Some)
    }
    fn f16(b: &mut Builder, ctx: &OpCtx, o: &()) -> Result<Built, TfliteError> {
        Self::f32(b, ctx, o)
    }
}

/// QUANTIZE from one 8-bit grid to another.
struct Quantize;

impl Operator for Quantize {
    type Options = ();
    fn options(b: &Builder, ctx: &OpCtx) -> Result<(), TfliteError> {
        check_quantize(b, ctx)
    }
    fn f32(b: &mut Builder, ctx: &OpCtx, _o: &()) -> Result<Built, TfliteError> {
        Ok(Built::Wire(b.requantize(ctx)?))
    }
    fn f16(b: &mut Builder, ctx: &OpCtx, _o: &()) -> Result<Built, TfliteError> {
        // A change of 8-bit grid leaves real values as they are, within the new range.
        let x = b.wire(ctx, ctx.inputs[0])?;
        Ok(Built::Wire(b.clamp_real(
            ctx,
            x,
            ActivationFunctionType::NONE,
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The unsupported-operator error lists what we read; the table is what we read.
    #[test]
    fn the_unsupported_operator_error_lists_the_registry() {
        let names: Vec<&str> = REGISTRY
            .iter()
            .map(|(code, _)| code.variant_name().unwrap())
            .collect();
        let message = TfliteError::UnsupportedOp {
            index: 0,
            op: "X".into(),
        }
        .to_string();
        assert!(
            message.ends_with(&format!("MobileNet family: {})", names.join(", "))),
            "{message}"
        );
    }
}
