//! `RequantizedDepthwise`: DEPTHWISE_CONV_2D (depth multiplier 1) on NHWC maps with its
//! requantization fused, so each output value is written once. The f32 graph's maps are f32
//! offsets (TFLite's reference rounding); the int8 graph's are u8 values with their zero points
//! (LiteRT's rounding). Both run the same loop (at most 25 products of 8-bit offsets a value,
//! whose sums are exact in f32), except the int8 graph's on aarch64, which sums in integers
//! with NEON (`depthwise_neon`): the same results in a fraction of the instructions.

use std::sync::OnceLock;

use tract_core::internal::*;

use super::frame_threads::split_rows;
use super::kernels::{self, DepthwiseGeometry, DepthwiseParams, IntegerWeights};

/// What the operator reads and writes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DepthwiseMaps {
    /// f32 offsets from the zero points, rounding half away from zero (the f32 graph).
    Offsets,
    /// u8 values, rounding half to even (the int8 graph).
    Bytes {
        x_zero_point: f32,
        y_zero_point: f32,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct RequantizedDepthwise {
    pub geometry: DepthwiseGeometry,
    pub maps: DepthwiseMaps,
    /// `[kernel_h, kernel_w, C]` weight offsets from their zero points, f32.
    pub kernel: Arc<Tensor>,
    /// `C` biases in accumulator units.
    pub bias: Vec<f32>,
    /// `C` requantization multipliers.
    pub multiplier: Vec<f32>,
    /// The output range, in offsets from the output zero point.
    pub lo: f32,
    pub hi: f32,
    /// The int8 graph's weights as integers where the CPU sums in integers (aarch64): made at
    /// the first frame, not at every one.
    pub integer: OnceLock<Option<IntegerWeights>>,
}

// Weights, zero points, multipliers and bounds are finite numbers read from the model file.
impl Eq for RequantizedDepthwise {}

impl RequantizedDepthwise {
    fn input_shape(&self) -> [usize; 3] {
        let g = &self.geometry;
        [g.in_h, g.in_w, g.channels]
    }

    fn datum_type(&self) -> DatumType {
        match self.maps {
            DepthwiseMaps::Offsets => f32::datum_type(),
            DepthwiseMaps::Bytes { .. } => u8::datum_type(),
        }
    }

    /// The output range in offsets, kept within the u8 grid for byte maps (the loop's unchecked
    /// conversion to u8 relies on it).
    pub fn range(maps: DepthwiseMaps, lo: f32, hi: f32) -> (f32, f32) {
        match maps {
            DepthwiseMaps::Offsets => (lo, hi),
            DepthwiseMaps::Bytes { y_zero_point, .. } => {
                (lo.max(-y_zero_point), hi.min(255.0 - y_zero_point))
            }
        }
    }

    fn run<X: kernels::Sample + Datum, Y: kernels::Sample + Datum, const TIES_EVEN: bool>(
        &self,
        x: &Tensor,
        params: &DepthwiseParams,
    ) -> TractResult<Tensor> {
        self.run_with::<X, Y>(x, |g, x, y| {
            kernels::depthwise::<X, Y, TIES_EVEN>(g, params, x, y)
        })
    }

    /// `band` on each image of the batch, into a new tensor: on bands of output rows spread over
    /// the frame's threads, each with its geometry and its slices of the input and output.
    fn run_with<X: Datum, Y: Datum>(
        &self,
        x: &Tensor,
        band: impl Fn(&DepthwiseGeometry, &[X], &mut [Y]) + Sync,
    ) -> TractResult<Tensor> {
        let g = &self.geometry;
        let xs = x.try_as_plain_ram()?.as_slice::<X>()?;
        let shape = [x.shape()[0], g.out_h, g.out_w, g.channels];
        // Safety: every element is written below (each output pixel's channels, all of them).
        let mut y = unsafe { Tensor::uninitialized::<Y>(&shape)? };
        let (in_len, out_len) = (g.in_h * g.in_w * g.channels, g.out_h * g.out_w * g.channels);
        {
            let mut view = y.try_as_plain_ram_mut()?;
            let ys = view.as_slice_mut::<Y>()?;
            let in_row = g.in_w * g.channels;
            let out_row = g.out_w * g.channels;
            let work_per_row = out_row * g.kernel_h * g.kernel_w;
            for (x, y) in xs.chunks_exact(in_len).zip(ys.chunks_exact_mut(out_len)) {
                split_rows(y, out_row, 1, work_per_row, |rows, y| {
                    let (g, input_rows) = g.band(rows);
                    band(
                        &g,
                        &x[input_rows.start * in_row..input_rows.end * in_row],
                        y,
                    )
                });
            }
        }
        Ok(y)
    }
}

impl Op for RequantizedDepthwise {
    fn name(&self) -> StaticName {
        "RequantizedDepthwise".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let g = &self.geometry;
        Ok(vec![format!(
            "{}x{} kernel, stride {}, {} channels, {}x{} -> {}x{}, {:?}",
            g.kernel_h,
            g.kernel_w,
            g.stride_h,
            g.channels,
            g.in_h,
            g.in_w,
            g.out_h,
            g.out_w,
            self.maps
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for RequantizedDepthwise {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let k = self.kernel.try_as_plain_ram()?.as_slice::<f32>()?;
        let mut params = DepthwiseParams {
            kernel: k,
            bias: &self.bias,
            multiplier: &self.multiplier,
            lo: self.lo,
            hi: self.hi,
            x_zero_point: 0.0,
            y_zero_point: 0.0,
        };
        let y = match self.maps {
            DepthwiseMaps::Offsets => self.run::<f32, f32, false>(&inputs[0], &params)?,
            DepthwiseMaps::Bytes {
                x_zero_point,
                y_zero_point,
            } => {
                params.x_zero_point = x_zero_point;
                params.y_zero_point = y_zero_point;
                #[cfg(target_arch = "aarch64")]
                if let Some(w) = self.integer.get_or_init(|| IntegerWeights::new(&params)) {
                    let y = self.run_with::<u8, u8>(&inputs[0], |g, x, y| {
                        super::depthwise_neon::depthwise(g, &params, w, x, y)
                    })?;
                    return Ok(tvec!(y.into_tvalue()));
                }
                self.run::<u8, u8, true>(&inputs[0], &params)?
            }
        };
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for RequantizedDepthwise {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = inputs[0];
        let dt = self.datum_type();
        ensure!(x.datum_type == dt, "depthwise takes {dt:?}, got {x:?}");
        let shape = x.shape.as_concrete().map(|s| s.to_vec());
        let expected = self.input_shape();
        ensure!(
            shape.as_deref().map(|s| s.len() == 4 && s[1..] == expected) == Some(true),
            "depthwise built for [N, {expected:?}] got {:?}",
            x.shape
        );
        let g = &self.geometry;
        Ok(tvec!(dt.fact([
            x.shape[0].clone(),
            g.out_h.to_dim(),
            g.out_w.to_dim(),
            g.channels.to_dim()
        ])))
    }

    as_op!();
}
