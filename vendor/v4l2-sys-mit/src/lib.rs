//! Raw V4L2 bindings: upstream v4l2-sys-mit 0.3.0's bindgen output for `<linux/videodev2.h>`,
//! generated ahead of time per target architecture (README.md says how to regenerate them), so
//! building needs no libclang.
#![allow(clippy::all)]
#![allow(deref_nullptr)]
#![allow(non_camel_case_types)]
#![allow(non_snake_case)]
#![allow(non_upper_case_globals)]

#[cfg(target_arch = "x86_64")]
include!("bindings/x86_64.rs");

#[cfg(target_arch = "aarch64")]
include!("bindings/aarch64.rs");

#[cfg(target_arch = "arm")]
include!("bindings/arm.rs");

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "arm")))]
compile_error!(
    "vendor/v4l2-sys-mit has V4L2 bindings for x86_64, aarch64 and arm only: add this target to \
     regen/src/main.rs and run it, or build edge-mnv2 without the camera feature \
     (--no-default-features --features http)"
);
