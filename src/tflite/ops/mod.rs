//! tract operators of our own, for the steps of the exact f32 graph that tract has no fast kernel
//! for: the per-layer requantization (multiply, round, clamp in one pass), TFLite's 8-bit ADD, and
//! the NHWC depthwise convolution with its requantization fused (tract-linalg has channel-inner
//! depthwise kernels on aarch64 only; elsewhere its NHWC depthwise is a scalar loop).
//!
//! They sit inside tract's graph like any other operator: the plan runs them, its profiler times
//! them, and the loops they call live in [`kernels`].

pub mod kernels;

mod depthwise;
mod requantize;

pub use depthwise::RequantizedDepthwise;
pub use requantize::{Requantize, RequantizedAdd};
