//! The graph input: the file's uint8 image tensor, fed raw pixels.

use tract_core::ops::cast::cast;
use tract_tflite::internal::*;
use tract_tflite::tflite::TensorType;

use super::read::Quant;
use super::{Builder, TfliteError};
use crate::models::Precision;

impl Builder<'_> {
    pub(super) fn wire_input(&mut self, i: i32) -> Result<(DatumType, u32), TfliteError> {
        let t = self.tensor(i)?;
        let shape = self.shape(i)?;
        if shape.len() != 4 || shape[0] != 1 || shape[3] != 3 || shape[1] != shape[2] {
            return Err(TfliteError::Format(format!(
                "input shape {shape:?}; expected [1, S, S, 3] RGB"
            )));
        }
        if t.type_() != TensorType::UINT8 {
            return Err(TfliteError::Format(format!(
                "input type {}; edge-mnv2 feeds uint8 pixels to TFLite models",
                t.type_().variant_name().unwrap_or("?")
            )));
        }
        let q = self.quant(i)?.filter(Quant::per_tensor).ok_or_else(|| {
            TfliteError::Format("uint8 input without quantization parameters".into())
        })?;
        let zp = q.zero_point[0];
        let src = self.target.add_source("input", u8::fact(&shape))?;
        let wire = match self.precision {
            Precision::Int8 => src,
            Precision::F32 => {
                let x = self
                    .target
                    .wire_node("input.f32", cast(DatumType::F32), &[src])?[0];
                self.affine(x, "input.offset", 1.0, -(zp as f32))?
            }
            // Real values; the whole graph becomes f16 afterwards (`float::to_half`).
            Precision::F16 => {
                let x = self
                    .target
                    .wire_node("input.f32", cast(DatumType::F32), &[src])?[0];
                self.affine(x, "input.real", q.scale[0], -(zp as f32) * q.scale[0])?
            }
        };
        self.wires.insert(i, wire);
        Ok((DatumType::U8, shape[1] as u32))
    }
}
