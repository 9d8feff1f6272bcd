//! tract operators of our own, for the steps tract has no fast kernel for.
//!
//! The exact f32 graph: the per-layer requantization (multiply, round, clamp in one pass),
//! TFLite's 8-bit ADD, and the NHWC depthwise convolution with its requantization fused
//! (tract-linalg has channel-inner depthwise kernels on aarch64 only; elsewhere its NHWC
//! depthwise is a scalar loop). The int8 graph: the same three on u8 maps with LiteRT's
//! requantization, and CONV_2D as a u8 × i16 product (tract's quantized convolution with non-zero weight zero
//! points spent 400 ms a frame in broadcasting corrections around its kernels).
//!
//! They sit inside tract's graph like any other operator: the plan runs them, its profiler times
//! them, and the loops they call live in [`kernels`].

pub mod kernels;
pub mod qkernels;

mod depthwise;
#[cfg(target_arch = "aarch64")]
mod depthwise_neon;
pub mod frame_threads;
mod quantized;
mod requantize;

pub use depthwise::{DepthwiseMaps, RequantizedDepthwise};
pub use qkernels::{AddParams, PackedWeights, Requant};
pub use quantized::{QuantizedAdd, QuantizedConv};
pub use requantize::{Requantize, RequantizedAdd};
