//! The int8 graph: every wire holds the file's 8-bit values as u8 (int8 tensors shifted by 128,
//! with their zero point, so one set of kernels serves uint8 and int8 files). Convolutions and
//! ADDs run on our 8-bit operators with TFLite's own integer arithmetic; the global pooling and
//! QUANTIZE (one each, small) run as the f32 graph does, between a conversion to offsets and one
//! back to u8.

use tract_core::ops::cast::cast;
use tract_tflite::internal::*;
use tract_tflite::tflite::{ActivationFunctionType, TensorType};

use super::conv::ConvOptions;
use super::element_wise::AddOptions;
use super::ops::{
    AddParams, DepthwiseMaps, PackedWeights, QuantizedAdd, QuantizedConv, Requant,
    RequantizedDepthwise,
};
use super::read::values;
use super::{Builder, Built, OpCtx, TfliteError};
use crate::models::Precision;

impl Builder<'_> {
    /// The zero point of tensor `i` on the u8 grid its wire uses.
    pub(super) fn zero_point_u8(&self, i: i32) -> Result<i64, TfliteError> {
        let q = self
            .quant(i)?
            .filter(|q| q.per_tensor())
            .ok_or_else(|| TfliteError::Graph(format!("tensor {i} is not per-tensor quantized")))?;
        let shift = match self.tensor(i)?.type_() {
            TensorType::INT8 => 128,
            _ => 0,
        };
        Ok(q.zero_point[0] + shift)
    }

    /// A u8 wire as f32 offsets from its zero point, the f32 graph's form.
    pub(super) fn u8_to_offsets(&mut self, i: i32, w: OutletId) -> Result<OutletId, TfliteError> {
        let zp = self.zero_point_u8(i)?;
        let name = self.unique(&format!("t{i}.offsets"));
        let x = self.target.wire_node(&name, cast(DatumType::F32), &[w])?[0];
        self.affine(x, &name, 1.0, -(zp as f32))
    }

    /// f32 offsets (integers within the 8-bit range) back to a u8 wire.
    fn offsets_to_u8(&mut self, i: i32, w: OutletId) -> Result<OutletId, TfliteError> {
        let zp = self.zero_point_u8(i)?;
        let name = self.unique(&format!("t{i}.u8"));
        let x = self.affine(w, &name, 1.0, zp as f32)?;
        Ok(self.target.wire_node(name, cast(DatumType::U8), &[x])?[0])
    }

    /// Runs `translate` as the f32 graph would, on offsets made from the op's u8 inputs, and
    /// turns its output back into u8 (an embedding it cuts stays f32).
    pub(super) fn via_offsets(
        &mut self,
        ctx: &OpCtx,
        translate: impl FnOnce(&mut Self) -> Result<Built, TfliteError>,
    ) -> Result<Built, TfliteError> {
        let mut saved = Vec::new();
        for &i in &ctx.inputs {
            if let Some(&w) = self.wires.get(&i) {
                let offsets = self.u8_to_offsets(i, w)?;
                saved.push((i, w));
                self.wires.insert(i, offsets);
            }
        }
        self.precision = Precision::F32;
        let translated = translate(self);
        self.precision = Precision::Int8;
        // Other readers of these tensors (a residual ADD) still take the u8 wires.
        for (i, w) in saved {
            self.wires.insert(i, w);
        }
        let translated = translated?;
        self.fallbacks.push(format!("#{} {}", ctx.index, ctx.name));
        let out = ctx.outputs[0];
        Ok(match translated {
            Built::Wire(wire) => Built::Wire(self.offsets_to_u8(out, wire)?),
            Built::Pooled { wire, embedding } => Built::Pooled {
                wire: self.offsets_to_u8(out, wire)?,
                embedding,
            },
            Built::Logits(logits) => Built::Logits(logits),
        })
    }

    /// The output's 8-bit range met with the fused activation, on the u8 grid.
    fn range_u8(
        &self,
        ctx: &OpCtx,
        act: ActivationFunctionType,
    ) -> Result<(i32, i32), TfliteError> {
        let (lo, hi) = self.output_range(ctx, act)?;
        let zp = self.zero_point_u8(ctx.outputs[0])? as i32;
        Ok((lo as i32 + zp, hi as i32 + zp))
    }

    /// A CONV_2D or DEPTHWISE_CONV_2D on our 8-bit operators; `None` for what they do not run
    /// (dilated windows, windows over 25 taps).
    pub(super) fn conv_int8(
        &mut self,
        ctx: &OpCtx,
        o: &ConvOptions,
    ) -> Result<Option<OutletId>, TfliteError> {
        let ConvOptions {
            depthwise,
            ref k_shape,
            ref pool_spec,
            act,
            out_c,
            window,
            ..
        } = *o;
        let (x_i, k_i) = (ctx.inputs[0], ctx.inputs[1]);
        let pointwise = !depthwise
            && k_shape[1] == 1
            && k_shape[2] == 1
            && pool_spec.strides().iter().all(|&s| s == 1);
        let window = window.filter(|_| !pointwise);
        if !pointwise && window.is_none() {
            return Ok(None);
        }
        let x = self.wire(ctx, x_i)?;
        let x_zero_point = self.zero_point_u8(x_i)? as i32;
        // TFLite adds the file's int32 bias as it is, in accumulator units.
        let bias = match ctx.inputs.get(2).copied().filter(|&b| b >= 0) {
            Some(b_i) => values::<i32>(&self.raw_const(ctx, b_i)?)?,
            None => vec![0; out_c],
        };
        if bias.len() != out_c {
            return Err(ctx.unsupported(format!(
                "bias has {} values for {out_c} channels",
                bias.len()
            )));
        }
        let multiplier = self.conv_multipliers(ctx, out_c)?;
        let k: Vec<i16> = self
            .offsets_const(ctx, k_i)?
            .iter()
            .map(|&v| v as i16)
            .collect();
        let zero_point = self.zero_point_u8(ctx.outputs[0])? as i32;
        let name = self.unique(&format!("op{}.{}", ctx.index, ctx.name.to_lowercase()));
        let op: Box<dyn TypedOp> = match window {
            Some(geometry) if depthwise => {
                let maps = DepthwiseMaps::Bytes {
                    x_zero_point: x_zero_point as f32,
                    y_zero_point: zero_point as f32,
                };
                let (lo, hi) = self.output_range(ctx, act)?;
                let (lo, hi) = RequantizedDepthwise::range(maps, lo, hi);
                Box::new(RequantizedDepthwise {
                    geometry,
                    maps,
                    kernel: tensor1(&k.iter().map(|&w| w as f32).collect::<Vec<_>>())
                        .into_arc_tensor(),
                    bias: bias.iter().map(|&b| b as f32).collect(),
                    multiplier,
                    lo,
                    hi,
                    integer: Default::default(),
                })
            }
            window => {
                let (lo, hi) = self.range_u8(ctx, act)?;
                let mut requant = Requant::new(bias, multiplier, zero_point, lo, hi);
                let row = k.len() / out_c;
                // Pixels enter as raw bytes: their zero point's share of each sum goes in the bias.
                let sums: Vec<i32> = k
                    .chunks_exact(row)
                    .map(|w| w.iter().map(|&w| w as i32).sum())
                    .collect();
                requant.fold_input_zero_point(x_zero_point, &sums);
                Box::new(QuantizedConv {
                    weights: Arc::new(PackedWeights::pack(&k, out_c, row)),
                    requant: Arc::new(requant),
                    window: window.map(|g| (g, x_zero_point as u8)),
                })
            }
        };
        Ok(Some(self.target.wire_node(name, op, &[x])?[0]))
    }

    /// An ADD of two maps of one shape on our 8-bit operator; `None` for broadcasting ADDs.
    pub(super) fn add_int8(
        &mut self,
        ctx: &OpCtx,
        o: &AddOptions,
    ) -> Result<Option<OutletId>, TfliteError> {
        let (a_i, b_i) = (ctx.inputs[0], ctx.inputs[1]);
        let (a, b) = (self.wire(ctx, a_i)?, self.wire(ctx, b_i)?);
        if self.target.outlet_fact(a)?.shape != self.target.outlet_fact(b)?.shape {
            return Ok(None);
        }
        let (lo, hi) = self.range_u8(ctx, o.act)?;
        let scales = [a_i, b_i, ctx.outputs[0]].map(|i| self.scale(i));
        let zero_points = [a_i, b_i, ctx.outputs[0]].map(|i| self.zero_point_u8(i));
        let [sa, sb, so] = scales;
        let [za, zb, zo] = zero_points;
        let params = AddParams::new(
            [sa?, sb?, so?],
            [za? as i32, zb? as i32, zo? as i32],
            lo,
            hi,
        );
        let name = self.unique(&format!("op{}.add", ctx.index));
        Ok(Some(
            self.target
                .wire_node(name, QuantizedAdd { params }, &[a, b])?[0],
        ))
    }
}
