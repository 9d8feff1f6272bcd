//! `RequantizedDepthwise`: DEPTHWISE_CONV_2D (depth multiplier 1) on NHWC f32 offsets, with its
//! requantization fused, so each output value is written once.

use tract_core::internal::*;

use super::kernels::{self, DepthwiseGeometry, DepthwiseParams};

#[derive(Debug, Clone, PartialEq)]
pub struct RequantizedDepthwise {
    pub geometry: DepthwiseGeometry,
    /// `[kernel_h, kernel_w, C]` weight offsets from their zero points.
    pub kernel: Arc<Tensor>,
    /// `C` biases in accumulator units.
    pub bias: Vec<f32>,
    /// `C` requantization multipliers.
    pub multiplier: Vec<f32>,
    pub lo: f32,
    pub hi: f32,
}

// Weights, multipliers and bounds are finite numbers read from the model file, never NaN.
impl Eq for RequantizedDepthwise {}

impl RequantizedDepthwise {
    fn input_shape(&self) -> [usize; 3] {
        let g = &self.geometry;
        [g.in_h, g.in_w, g.channels]
    }
}

impl Op for RequantizedDepthwise {
    fn name(&self) -> StaticName {
        "RequantizedDepthwise".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let g = &self.geometry;
        Ok(vec![format!(
            "{}x{} kernel, stride {}, {} channels, {}x{} -> {}x{}",
            g.kernel_h, g.kernel_w, g.stride_h, g.channels, g.in_h, g.in_w, g.out_h, g.out_w
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for RequantizedDepthwise {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let g = &self.geometry;
        let x = &inputs[0];
        let batch = x.shape()[0];
        let xs = x.try_as_plain_ram()?.as_slice::<f32>()?;
        let k = self.kernel.try_as_plain_ram()?.as_slice::<f32>()?;
        // Safety: every element is written below (each output pixel's channels, all of them).
        let mut y =
            unsafe { Tensor::uninitialized::<f32>(&[batch, g.out_h, g.out_w, g.channels])? };
        let (in_len, out_len) = (g.in_h * g.in_w * g.channels, g.out_h * g.out_w * g.channels);
        let params = DepthwiseParams {
            kernel: k,
            bias: &self.bias,
            multiplier: &self.multiplier,
            lo: self.lo,
            hi: self.hi,
            x_zero_point: 0.0,
            y_zero_point: 0.0,
        };
        {
            let mut view = y.try_as_plain_ram_mut()?;
            let ys = view.as_slice_mut::<f32>()?;
            for (x, y) in xs.chunks_exact(in_len).zip(ys.chunks_exact_mut(out_len)) {
                kernels::depthwise::<f32, f32, false>(g, &params, x, y);
            }
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for RequantizedDepthwise {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = inputs[0];
        ensure!(
            x.datum_type == f32::datum_type(),
            "depthwise takes f32, got {x:?}"
        );
        let shape = x.shape.as_concrete().map(|s| s.to_vec());
        let expected = self.input_shape();
        ensure!(
            shape.as_deref().map(|s| s.len() == 4 && s[1..] == expected) == Some(true),
            "depthwise built for [N, {expected:?}] got {:?}",
            x.shape
        );
        let g = &self.geometry;
        Ok(tvec!(f32::fact([
            x.shape[0].clone(),
            g.out_h.to_dim(),
            g.out_w.to_dim(),
            g.channels.to_dim()
        ])))
    }

    as_op!();
}
