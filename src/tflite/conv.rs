//! CONV_2D and DEPTHWISE_CONV_2D.

use tract_core::ops::cnn::{Conv, KernelFormat, PaddingSpec, PoolSpec};
use tract_core::ops::nn::DataFormat;
use tract_tflite::internal::*;
use tract_tflite::tflite::{ActivationFunctionType, BuiltinOperator, Padding};

use super::ops::kernels::{DepthwiseGeometry, MAX_TAPS};
use super::ops::{DepthwiseMaps, RequantizedDepthwise};
use super::read::{values, Quant};
use super::{Builder, OpCtx, TfliteError};

/// A convolution's options and shapes, checked: what every precision's graph is built from.
pub(super) struct ConvOptions {
    /// DEPTHWISE_CONV_2D (one filter per channel) rather than CONV_2D.
    pub depthwise: bool,
    pub x_shape: Vec<usize>,
    /// OHWI; a depthwise's is `[1, H, W, C]`.
    pub k_shape: Vec<usize>,
    pub pool_spec: PoolSpec,
    pub act: ActivationFunctionType,
    pub out_c: usize,
    /// The window geometry where our loops run it (no dilation, at most 25 taps).
    pub window: Option<DepthwiseGeometry>,
}

/// The options of a CONV_2D or DEPTHWISE_CONV_2D, read once for whichever graph is built.
pub(super) fn conv_options(b: &Builder, ctx: &OpCtx) -> Result<ConvOptions, TfliteError> {
    let depthwise = ctx.code == BuiltinOperator::DEPTHWISE_CONV_2D;
    if ctx.inputs.len() < 2 {
        return Err(ctx.unsupported("expected input, weights and bias"));
    }
    let (x_i, k_i) = (ctx.inputs[0], ctx.inputs[1]);
    let k_shape = b.shape(k_i)?;
    if k_shape.len() != 4 {
        return Err(ctx.unsupported(format!("weights shape {k_shape:?}")));
    }
    let x_shape = b.shape(x_i)?;
    let in_c = *x_shape.last().unwrap_or(&0);
    let (padding, strides, dilations, act, out_c) = if depthwise {
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
    let dilations = [dilations[0].max(1) as usize, dilations[1].max(1) as usize];
    let pool_spec = PoolSpec {
        data_format: DataFormat::NHWC,
        kernel_shape: tvec!(k_shape[1], k_shape[2]),
        padding,
        strides: Some(tvec!(
            strides[0].max(1) as usize,
            strides[1].max(1) as usize
        )),
        dilations: Some(tvec!(dilations[0], dilations[1])),
        input_channels: in_c,
        output_channels: out_c,
    };
    let window = depthwise_geometry(&x_shape, &k_shape, &pool_spec)
        .filter(|_| dilations.iter().all(|&d| d == 1));
    Ok(ConvOptions {
        depthwise,
        x_shape,
        k_shape,
        pool_spec,
        act,
        out_c,
        window,
    })
}

impl Builder<'_> {
    /// The f32 graph's convolution: f32 offsets in, requantized f32 offsets out.
    pub(super) fn conv(&mut self, ctx: &OpCtx, o: &ConvOptions) -> Result<OutletId, TfliteError> {
        let ConvOptions {
            depthwise,
            ref x_shape,
            ref k_shape,
            ref pool_spec,
            act,
            out_c,
            window,
        } = *o;
        let x = self.wire(ctx, ctx.inputs[0])?;
        let k = self.offsets_const(ctx, ctx.inputs[1])?;
        let bias = self.conv_bias(ctx, out_c)?;
        let multiplier = self.conv_multipliers(ctx, out_c)?;
        let name = self.unique(&format!("op{}.{}", ctx.index, ctx.name.to_lowercase()));
        if let Some(geometry) = window.filter(|_| depthwise) {
            let (lo, hi) = self.output_range(ctx, act)?;
            let op = RequantizedDepthwise {
                geometry,
                maps: DepthwiseMaps::Offsets,
                // [1, H, W, C] → [H, W, C]: the same values, the layout the loop reads.
                kernel: k.into_tensor().into_shape(&k_shape[1..])?.into_arc_tensor(),
                bias,
                multiplier,
                lo,
                hi,
                integer: Default::default(),
            };
            return Ok(self.target.wire_node(&name, op, &[x])?[0]);
        }
        let group = if depthwise { x_shape[3] } else { 1 };
        let acc =
            self.wire_float_conv(&name, x, k.into_tensor(), &bias, pool_spec.clone(), group)?;
        self.requantize_f32(ctx, acc, &multiplier, act)
    }

    /// tract's own float `Conv` on `x`: OHWI weights `k` and `bias` as constants of the graph.
    pub(super) fn wire_float_conv(
        &mut self,
        name: &str,
        x: OutletId,
        k: Tensor,
        bias: &[f32],
        pool_spec: PoolSpec,
        group: usize,
    ) -> Result<OutletId, TfliteError> {
        let kw = self.konst(format!("{name}.weights"), k)?;
        let bw = self.konst(format!("{name}.bias"), tensor1(bias))?;
        let op = Conv {
            pool_spec,
            kernel_fmt: KernelFormat::OHWI,
            group,
            q_params: None,
        };
        Ok(self.target.wire_node(name, op, &[x, kw, bw])?[0])
    }

    /// The f32 graph's bias in accumulator units.
    fn conv_bias(&self, ctx: &OpCtx, out_c: usize) -> Result<Vec<f32>, TfliteError> {
        let kq = self
            .quant(ctx.inputs[1])?
            .ok_or_else(|| ctx.unsupported("weights are not quantized"))?;
        let xs = self.scale(ctx.inputs[0])?;
        Ok(match ctx.inputs.get(2).copied().filter(|&b| b >= 0) {
            Some(b_i) => self
                .bias_in_accumulator_units(ctx, b_i, xs, &kq, out_c)?
                .iter()
                .copied()
                .collect(),
            None => vec![0.0; out_c],
        })
    }

    /// The requantization multiplier of each output channel: input scale × weight scale /
    /// output scale, in f32 (as XNNPACK computes it).
    pub(super) fn conv_multipliers(
        &self,
        ctx: &OpCtx,
        out_c: usize,
    ) -> Result<Vec<f32>, TfliteError> {
        let kq = self
            .quant(ctx.inputs[1])?
            .ok_or_else(|| ctx.unsupported("weights are not quantized"))?;
        let (xs, ys) = (self.scale(ctx.inputs[0])?, self.scale(ctx.outputs[0])?);
        Ok((0..out_c).map(|c| xs * kq.at(c).0 / ys).collect())
    }

    /// The bias in accumulator units (input scale × weight scale of its channel), which is how
    /// TFLite stores it; rescaled if a file gives it another scale.
    pub(super) fn bias_in_accumulator_units(
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
}

/// The window geometry of a depthwise convolution over one NHWC image, with TFLite's SAME padding
/// (the extra row or column, if any, at the bottom and right, as tract's `SameUpper`); `None`
/// where our kernel does not apply (tract's own convolution runs those).
fn depthwise_geometry(
    x_shape: &[usize],
    k_shape: &[usize],
    spec: &PoolSpec,
) -> Option<DepthwiseGeometry> {
    let [_, in_h, in_w, channels] = *x_shape else {
        return None;
    };
    let (kernel_h, kernel_w) = (k_shape[1], k_shape[2]);
    if kernel_h * kernel_w > MAX_TAPS {
        return None;
    }
    let strides = spec.strides.as_deref()?;
    let (stride_h, stride_w) = (strides[0], strides[1]);
    let same = |input: usize, kernel: usize, stride: usize| {
        let out = input.div_ceil(stride);
        let pad = ((out - 1) * stride + kernel).saturating_sub(input);
        (out, pad / 2)
    };
    let valid = |input: usize, kernel: usize, stride: usize| {
        (
            input
                .checked_sub(kernel)
                .map(|d| d / stride + 1)
                .unwrap_or(0),
            0,
        )
    };
    let ((out_h, pad_top), (out_w, pad_left)) = match spec.padding {
        PaddingSpec::SameUpper => (
            same(in_h, kernel_h, stride_h),
            same(in_w, kernel_w, stride_w),
        ),
        PaddingSpec::Valid => (
            valid(in_h, kernel_h, stride_h),
            valid(in_w, kernel_w, stride_w),
        ),
        _ => return None,
    };
    (out_h > 0 && out_w > 0).then_some(DepthwiseGeometry {
        in_h,
        in_w,
        channels,
        kernel_h,
        kernel_w,
        stride_h,
        stride_w,
        pad_top,
        pad_left,
        out_h,
        out_w,
    })
}
