//! Reading the flatbuffer: operator codes, tensors, shapes, quantization and constants.

use tract_tflite::internal::*;
use tract_tflite::tflite as fb;
use tract_tflite::tflite::{BuiltinOperator, TensorType};

use super::{Builder, OpCtx, TfliteError};

/// Quantization of one tensor: scales and zero points, one per slice along `axis` (or just one).
#[derive(Debug, Clone)]
pub(super) struct Quant {
    pub(super) scale: Vec<f32>,
    pub(super) zero_point: Vec<i64>,
    pub(super) axis: usize,
}

impl Quant {
    pub(super) fn per_tensor(&self) -> bool {
        self.scale.len() == 1
    }

    pub(super) fn at(&self, i: usize) -> (f32, i64) {
        let s = self.scale[if self.per_tensor() { 0 } else { i }];
        let z = self.zero_point[if self.zero_point.len() == 1 { 0 } else { i }];
        (s, z)
    }
}

impl<'a> Builder<'a> {
    pub(super) fn opcode(&self, op: &fb::Operator) -> Result<BuiltinOperator, TfliteError> {
        let codes = self
            .file
            .operator_codes()
            .ok_or_else(|| TfliteError::Format("no operator codes".into()))?;
        let i = op.opcode_index() as usize;
        if i >= codes.len() {
            return Err(TfliteError::Format(format!(
                "operator code index {i} out of range"
            )));
        }
        let code = codes.get(i);
        // Files written after opcode 127 keep the real code in `builtin_code`.
        let deprecated = code.deprecated_builtin_code() as i32;
        Ok(
            if deprecated == BuiltinOperator::PLACEHOLDER_FOR_GREATER_OP_CODES.0 {
                code.builtin_code()
            } else {
                BuiltinOperator(deprecated)
            },
        )
    }

    pub(super) fn tensor(&self, i: i32) -> Result<fb::Tensor<'a>, TfliteError> {
        let tensors = self
            .graph
            .tensors()
            .ok_or_else(|| TfliteError::Format("no tensors".into()))?;
        if i < 0 || i as usize >= tensors.len() {
            return Err(TfliteError::Format(format!(
                "tensor index {i} out of range"
            )));
        }
        Ok(tensors.get(i as usize))
    }

    pub(super) fn shape(&self, i: i32) -> Result<Vec<usize>, TfliteError> {
        let t = self.tensor(i)?;
        Ok(t.shape()
            .map(|s| s.iter().map(|d| d.max(0) as usize).collect())
            .unwrap_or_default())
    }

    pub(super) fn quant(&self, i: i32) -> Result<Option<Quant>, TfliteError> {
        let t = self.tensor(i)?;
        let Some(q) = t.quantization() else {
            return Ok(None);
        };
        let (Some(scale), Some(zp)) = (q.scale(), q.zero_point()) else {
            return Ok(None);
        };
        if scale.is_empty() {
            return Ok(None);
        }
        Ok(Some(Quant {
            scale: scale.iter().collect(),
            zero_point: if zp.is_empty() {
                vec![0]
            } else {
                zp.iter().collect()
            },
            axis: q.quantized_dimension().max(0) as usize,
        }))
    }

    pub(super) fn buffer(&self, i: i32) -> Result<Option<&'a [u8]>, TfliteError> {
        let t = self.tensor(i)?;
        let b = t.buffer() as usize;
        if b == 0 {
            return Ok(None);
        }
        let buffers = self
            .file
            .buffers()
            .ok_or_else(|| TfliteError::Format("no buffers".into()))?;
        if b >= buffers.len() {
            return Err(TfliteError::Format(format!(
                "buffer index {b} out of range"
            )));
        }
        Ok(buffers
            .get(b)
            .data()
            .map(|d| d.bytes())
            .filter(|d| !d.is_empty()))
    }

    /// A quantized constant as offsets from its zero points (`q - zp`, per channel), in f32.
    pub(super) fn offsets_const(
        &self,
        ctx: &OpCtx,
        i: i32,
    ) -> Result<tract_ndarray::ArrayD<f32>, TfliteError> {
        let raw = self.raw_const(ctx, i)?;
        let shape = raw.shape().to_vec();
        let values: Vec<f32> = match self.quant(i)? {
            None => values::<f32>(&raw)?,
            Some(q) => {
                let ints = values::<i64>(&raw)?;
                let inner: usize = shape.iter().skip(q.axis + 1).product();
                let dim = shape.get(q.axis).copied().unwrap_or(1).max(1);
                if !q.per_tensor() && q.scale.len() != dim {
                    return Err(ctx.unsupported(format!(
                        "tensor {i} has {} scales for {dim} channels",
                        q.scale.len()
                    )));
                }
                ints.iter()
                    .enumerate()
                    .map(|(k, &v)| {
                        let (_, z) = q.at((k / inner.max(1)) % dim);
                        (v - z) as f32
                    })
                    .collect()
            }
        };
        tract_ndarray::ArrayD::from_shape_vec(shape, values)
            .map_err(|e| ctx.unsupported(e.to_string()))
    }

    /// A constant tensor's stored integers (or floats), untouched.
    pub(super) fn raw_const(&self, ctx: &OpCtx, i: i32) -> Result<Tensor, TfliteError> {
        let t = self.tensor(i)?;
        let data = self.buffer(i)?.ok_or_else(|| {
            ctx.unsupported(format!("input tensor {i} is expected to be a constant"))
        })?;
        let shape = self.shape(i)?;
        let dt = match t.type_() {
            TensorType::UINT8 => DatumType::U8,
            TensorType::INT8 => DatumType::I8,
            TensorType::INT32 => DatumType::I32,
            TensorType::INT64 => DatumType::I64,
            TensorType::FLOAT32 => DatumType::F32,
            other => {
                return Err(ctx.unsupported(format!(
                    "constant of type {}",
                    other.variant_name().unwrap_or("?")
                )))
            }
        };
        let expected = shape.iter().product::<usize>() * dt.size_of();
        if data.len() != expected {
            return Err(ctx.unsupported(format!(
                "constant tensor {i} holds {} bytes, its shape {shape:?} needs {expected}",
                data.len()
            )));
        }
        // Safety: `data` has exactly the length the shape and type need (checked above);
        // `from_raw_dt` copies it into an aligned buffer.
        Ok(unsafe { Tensor::from_raw_dt(dt, &shape, data)? })
    }
}

/// A constant's elements converted to `T`.
pub(super) fn values<T: Datum + Copy>(t: &Tensor) -> TractResult<Vec<T>> {
    Ok(t.cast_to::<T>()?
        .try_as_plain_ram()?
        .as_slice::<T>()?
        .to_vec())
}
