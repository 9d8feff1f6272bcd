//! The types every frame source and consumer shares: the [`FrameSource`] trait, the raw frame it
//! hands out, its errors and the camera settings. Kept free of any other source file so that each
//! source (and the factory in `mod.rs`) can depend on it without an import cycle.

use std::path::Path;
use std::time::Instant;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum SourceError {
    /// Opening failed; `reason` says why in terms a user can act on.
    #[error("{source_name}: {reason}")]
    Open { source_name: String, reason: String },
    /// A frame could not be read (device unplugged, file vanished, stream corrupt).
    #[error("{source_name}: {reason}")]
    Read { source_name: String, reason: String },
    /// The source has no more frames (only a non-looping source ends).
    #[error("{0}: end of stream")]
    End(String),
}

/// The pixels of one frame as the source delivered them.
#[derive(Debug, Clone)]
pub enum FramePixels {
    /// A complete encoded image (JPEG from an MJPEG camera or stream, or any image file).
    Encoded(Vec<u8>),
    /// Packed YUYV 4:2:2 (Y0 U Y1 V per two pixels), `stride` bytes per row.
    Yuyv {
        width: u32,
        height: u32,
        stride: u32,
        data: Vec<u8>,
    },
}

/// One frame and where it came from.
#[derive(Debug, Clone)]
pub struct RawFrame {
    pub pixels: FramePixels,
    /// What to call the frame in results and errors: a file path, or the device and its sequence.
    pub name: String,
    /// When the source handed it out (latency is measured from here).
    pub captured: Instant,
}

pub trait FrameSource: Send {
    /// Blocks until the next frame is available.
    fn next_frame(&mut self) -> Result<RawFrame, SourceError>;
    /// A short human description ("/dev/video0 640x480 MJPG @ 15 fps", "folder X (24 images)").
    fn describe(&self) -> String;
    /// Whether frames arrive at their own pace (a camera) rather than as fast as they are asked
    /// for (a file); the service paces the latter only when told an fps.
    fn is_live(&self) -> bool {
        false
    }
}

/// Resolution and rate asked of a camera.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CameraSettings {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
}

impl Default for CameraSettings {
    fn default() -> Self {
        CameraSettings {
            width: 640,
            height: 480,
            fps: 15,
        }
    }
}

/// Lives with the error type because the file sources and the factory all phrase open failures
/// this way (their I/O reasons from `preprocess::io_reason`); one copy keeps messages identical.
pub(super) fn open_error(path: &Path, reason: impl Into<String>) -> SourceError {
    SourceError::Open {
        source_name: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Test helper: a JPEG of one flat colour. Here because the splitter, folder and factory tests all
/// need one, and every source file may depend on frame.rs without forming a cycle.
#[cfg(test)]
pub(super) fn jpeg_of(colour: [u8; 3], w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(w, h, image::Rgb(colour));
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95)
        .encode_image(&img)
        .unwrap();
    out
}
