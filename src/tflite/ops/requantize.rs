//! `Requantize` and `RequantizedAdd`: the end of a layer in the exact f32 graph.

use tract_core::internal::*;

use super::kernels;

/// `round(x × m)` clamped to `[lo, hi]`, with one multiplier per channel (the last axis): TFLite's
/// requantization of a layer's accumulators onto its output grid, as offsets from the zero point.
#[derive(Debug, Clone, PartialEq)]
pub struct Requantize {
    pub multiplier: Vec<f32>,
    pub lo: f32,
    pub hi: f32,
}

// Multipliers and bounds are finite numbers read from the model file, never NaN.
impl Eq for Requantize {}

impl Op for Requantize {
    fn name(&self) -> StaticName {
        "Requantize".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{} channel(s), range [{}, {}]",
            self.multiplier.len(),
            self.lo,
            self.hi
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for Requantize {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, mut inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        // The accumulators are not read again: rewrite them in place (no copy when the plan holds
        // the only reference, as it does for a convolution's output).
        let mut x = inputs.remove(0).into_tensor();
        let mut view = x.try_as_plain_ram_mut()?;
        kernels::requantize(
            view.as_slice_mut::<f32>()?,
            &self.multiplier,
            self.lo,
            self.hi,
        );
        Ok(tvec!(x.into_tvalue()))
    }
}

impl TypedOp for Requantize {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = inputs[0];
        ensure!(
            x.datum_type == f32::datum_type(),
            "Requantize takes f32, got {x:?}"
        );
        let last = x.shape.last().and_then(|d| d.to_usize().ok());
        ensure!(
            last == Some(self.multiplier.len()),
            "Requantize has {} multipliers for a last axis of {last:?}",
            self.multiplier.len()
        );
        Ok(tvec!(f32::fact(x.shape.clone())))
    }

    as_op!();
}

/// TFLite's 8-bit ADD in offsets from the zero points: `round(a × ma + b × mb)` clamped to
/// `[lo, hi]`, both inputs of the same shape.
#[derive(Debug, Clone, PartialEq)]
pub struct RequantizedAdd {
    pub ma: f32,
    pub mb: f32,
    pub lo: f32,
    pub hi: f32,
}

// Multipliers and bounds are finite numbers read from the model file, never NaN.
impl Eq for RequantizedAdd {}

impl Op for RequantizedAdd {
    fn name(&self) -> StaticName {
        "RequantizedAdd".into()
    }

    op_as_typed_op!();
}

impl EvalOp for RequantizedAdd {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, mut inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let b = inputs.remove(1);
        let mut a = inputs.remove(0).into_tensor();
        let b = b.try_as_plain_ram()?.as_slice::<f32>()?;
        let mut view = a.try_as_plain_ram_mut()?;
        kernels::add(
            view.as_slice_mut::<f32>()?,
            b,
            self.ma,
            self.mb,
            self.lo,
            self.hi,
        );
        Ok(tvec!(a.into_tvalue()))
    }
}

impl TypedOp for RequantizedAdd {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let (a, b) = (inputs[0], inputs[1]);
        ensure!(
            a.datum_type == f32::datum_type() && b.datum_type == f32::datum_type(),
            "RequantizedAdd takes f32"
        );
        ensure!(
            a.shape == b.shape,
            "RequantizedAdd: shapes {a:?} and {b:?} differ"
        );
        Ok(tvec!(f32::fact(a.shape.clone())))
    }

    as_op!();
}
