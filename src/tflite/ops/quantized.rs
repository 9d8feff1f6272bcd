//! The int8 graph's operators: u8 maps in, u8 maps out, on the file's own grids.
//! `QuantizedConv` (CONV_2D: a product, after gathering windows for k×k kernels),
//! `QuantizedDepthwise` and `QuantizedAdd`.

use tract_core::internal::*;

use super::kernels::{self, DepthwiseGeometry, DepthwiseParams};
use super::qkernels::{self, AddParams, PackedWeights, Requant};

/// Checks an NHWC u8 input's channels and returns the output fact with `out_c` channels and
/// `hw` (or the input's) spatial size.
fn nhwc_u8_fact(
    what: &str,
    x: &TypedFact,
    in_c: usize,
    out: Option<(usize, usize)>,
    out_c: usize,
) -> TractResult<TVec<TypedFact>> {
    ensure!(
        x.datum_type == u8::datum_type(),
        "{what} takes u8, got {x:?}"
    );
    ensure!(
        x.rank() == 4 && x.shape[3].to_usize().ok() == Some(in_c),
        "{what} built for {in_c} channels, got {:?}",
        x.shape
    );
    let (h, w) = match out {
        Some((h, w)) => (h.to_dim(), w.to_dim()),
        None => (x.shape[1].clone(), x.shape[2].clone()),
    };
    Ok(tvec!(u8::fact([x.shape[0].clone(), h, w, out_c.to_dim()])))
}

/// CONV_2D on u8 maps: each pixel's channels (or, for a k×k kernel, its gathered window) times
/// the weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantizedConv {
    pub weights: Arc<PackedWeights>,
    pub requant: Arc<Requant>,
    /// The window, for anything but a 1×1 kernel at stride 1; `channels` is the input's.
    pub window: Option<(DepthwiseGeometry, u8)>,
}

impl Op for QuantizedConv {
    fn name(&self) -> StaticName {
        "QuantizedConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{} -> {} channels{}",
            self.weights.k,
            self.weights.n,
            if self.window.is_some() {
                ", windows gathered"
            } else {
                ""
            }
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for QuantizedConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        let xs = x.try_as_plain_ram()?.as_slice::<u8>()?;
        let batch = x.shape()[0];
        let (h, w) = match &self.window {
            Some((g, _)) => (g.out_h, g.out_w),
            None => (x.shape()[1], x.shape()[2]),
        };
        let pixels = batch * h * w;
        let gathered;
        let rows = match &self.window {
            Some((g, zero_point)) => {
                let mut buf = vec![0u8; pixels * self.weights.k];
                let in_len = g.in_h * g.in_w * g.channels;
                let out_len = h * w * self.weights.k;
                for (x, out) in xs.chunks_exact(in_len).zip(buf.chunks_exact_mut(out_len)) {
                    qkernels::im2col(g, x, *zero_point, out);
                }
                gathered = buf;
                &gathered[..]
            }
            None => xs,
        };
        // Safety: the product writes every output byte.
        let mut y = unsafe { Tensor::uninitialized::<u8>(&[batch, h, w, self.weights.n])? };
        {
            let mut view = y.try_as_plain_ram_mut()?;
            qkernels::matmul(
                rows,
                pixels,
                &self.weights,
                &self.requant,
                view.as_slice_mut::<u8>()?,
            );
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for QuantizedConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        match &self.window {
            Some((g, _)) => nhwc_u8_fact(
                "QuantizedConv",
                inputs[0],
                g.channels,
                Some((g.out_h, g.out_w)),
                self.weights.n,
            ),
            None => nhwc_u8_fact(
                "QuantizedConv",
                inputs[0],
                self.weights.k,
                None,
                self.weights.n,
            ),
        }
    }

    as_op!();
}

/// DEPTHWISE_CONV_2D (depth multiplier 1) on u8 maps, on the f32 graph's loop (exact integer
/// sums; converted in registers) with LiteRT's rounding.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedDepthwise {
    pub geometry: DepthwiseGeometry,
    pub x_zero_point: f32,
    pub y_zero_point: f32,
    /// `[kernel_h, kernel_w, C]` weight offsets from their zero points, f32.
    pub kernel: Arc<Tensor>,
    /// The file's int32 bias, as f32 (exact).
    pub bias: Vec<f32>,
    pub multiplier: Vec<f32>,
    /// The output range, in offsets from the output zero point.
    pub lo: f32,
    pub hi: f32,
}

// Zero points, weights, multipliers and bounds are finite numbers from the model file.
impl Eq for QuantizedDepthwise {}

impl Op for QuantizedDepthwise {
    fn name(&self) -> StaticName {
        "QuantizedDepthwise".into()
    }

    op_as_typed_op!();
}

impl EvalOp for QuantizedDepthwise {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let g = &self.geometry;
        let x = &inputs[0];
        let batch = x.shape()[0];
        let xs = x.try_as_plain_ram()?.as_slice::<u8>()?;
        let k = self.kernel.try_as_plain_ram()?.as_slice::<f32>()?;
        let (in_len, out_len) = (g.in_h * g.in_w * g.channels, g.out_h * g.out_w * g.channels);
        let params = DepthwiseParams {
            kernel: k,
            bias: &self.bias,
            multiplier: &self.multiplier,
            lo: self.lo,
            hi: self.hi,
            x_zero_point: self.x_zero_point,
            y_zero_point: self.y_zero_point,
        };
        // Safety: every output byte is written below.
        let mut y = unsafe { Tensor::uninitialized::<u8>(&[batch, g.out_h, g.out_w, g.channels])? };
        {
            let mut view = y.try_as_plain_ram_mut()?;
            let ys = view.as_slice_mut::<u8>()?;
            for (x, y) in xs.chunks_exact(in_len).zip(ys.chunks_exact_mut(out_len)) {
                kernels::depthwise::<u8, u8, true>(g, &params, x, y);
            }
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl QuantizedDepthwise {
    /// The output range, as offsets, kept within the u8 grid (the loop's unchecked conversion
    /// relies on it).
    pub fn clamp_range(lo: f32, hi: f32, y_zero_point: f32) -> (f32, f32) {
        (lo.max(-y_zero_point), hi.min(255.0 - y_zero_point))
    }
}

impl TypedOp for QuantizedDepthwise {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let g = &self.geometry;
        let x = inputs[0];
        ensure!(
            x.shape[1].to_usize().ok() == Some(g.in_h)
                && x.shape[2].to_usize().ok() == Some(g.in_w),
            "QuantizedDepthwise built for {}x{}, got {:?}",
            g.in_h,
            g.in_w,
            x.shape
        );
        nhwc_u8_fact(
            "QuantizedDepthwise",
            x,
            g.channels,
            Some((g.out_h, g.out_w)),
            g.channels,
        )
    }

    as_op!();
}

/// TFLite's 8-bit ADD of two maps on different grids, onto the output's grid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantizedAdd {
    pub params: AddParams,
}

impl Op for QuantizedAdd {
    fn name(&self) -> StaticName {
        "QuantizedAdd".into()
    }

    op_as_typed_op!();
}

impl EvalOp for QuantizedAdd {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (a, b) = (&inputs[0], &inputs[1]);
        // Safety: `add` writes every output byte (one per input pair; the shapes are equal).
        let mut y = unsafe { Tensor::uninitialized::<u8>(a.shape())? };
        {
            let mut view = y.try_as_plain_ram_mut()?;
            qkernels::add(
                a.try_as_plain_ram()?.as_slice::<u8>()?,
                b.try_as_plain_ram()?.as_slice::<u8>()?,
                &self.params,
                view.as_slice_mut::<u8>()?,
            );
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for QuantizedAdd {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let (a, b) = (inputs[0], inputs[1]);
        ensure!(
            a.datum_type == u8::datum_type() && b.datum_type == u8::datum_type(),
            "QuantizedAdd takes u8"
        );
        ensure!(
            a.shape == b.shape,
            "QuantizedAdd: shapes {a:?} and {b:?} differ"
        );
        Ok(tvec!(u8::fact(a.shape.clone())))
    }

    as_op!();
}
