//! Where frames come from: a camera, a folder of images, one image repeated, or an MJPEG stream
//! file — all behind [`FrameSource`], and all decoded by [`decode_frame`], so a replayed file goes
//! through exactly the decode and preprocessing a camera frame does.
//!
//! A source hands out *raw* frames (compressed bytes or packed YUYV). Decoding happens later, in
//! the consumer, so that a frame dropped under load costs a copy, not a JPEG decode.
//!
//! This file is the factory ([`SourceSpec`]) and the public face of the module: the parts live in
//! child files and are re-exported here. The children depend only on `frame` (a test also on
//! `decode`), never on this file, so opening a camera from the factory forms no import cycle.

use std::path::{Path, PathBuf};

mod decode;
mod files;
mod frame;
mod mjpeg;
mod pacer;

pub use decode::{decode_frame, yuyv_to_rgb};
pub use files::FileSource;
pub use frame::{CameraSettings, FramePixels, FrameSource, RawFrame, SourceError};
pub use mjpeg::{next_jpeg, MjpegFileSource, SplitError, MAX_JPEG_FRAME};
pub use pacer::Pacer;

#[cfg(feature = "camera")]
mod v4l2;
#[cfg(feature = "camera")]
pub use v4l2::V4l2Source;

/// What `--source` names.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceSpec {
    /// A V4L2 device such as /dev/video0.
    Camera(PathBuf),
    /// A folder of images, or one image.
    Files(PathBuf),
    /// A `.mjpeg`/`.mjpg` file of concatenated JPEGs.
    Mjpeg(PathBuf),
}

impl SourceSpec {
    pub fn parse(s: &str) -> SourceSpec {
        let path = PathBuf::from(s);
        if s.starts_with("/dev/") {
            return SourceSpec::Camera(path);
        }
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase());
        match ext.as_deref() {
            Some("mjpeg" | "mjpg") => SourceSpec::Mjpeg(path),
            _ => SourceSpec::Files(path),
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            SourceSpec::Camera(p) | SourceSpec::Files(p) | SourceSpec::Mjpeg(p) => p,
        }
    }

    /// Opens the source; file sources loop when `looping`.
    pub fn open(
        &self,
        camera: CameraSettings,
        looping: bool,
    ) -> Result<Box<dyn FrameSource>, SourceError> {
        match self {
            SourceSpec::Files(p) => Ok(Box::new(FileSource::open(p, looping)?)),
            SourceSpec::Mjpeg(p) => Ok(Box::new(MjpegFileSource::open(p, looping)?)),
            #[cfg(feature = "camera")]
            SourceSpec::Camera(p) => Ok(Box::new(v4l2::V4l2Source::open(p, camera)?)),
            #[cfg(not(feature = "camera"))]
            SourceSpec::Camera(p) => {
                let _ = camera;
                Err(frame::open_error(
                    p,
                    "this edge-mnv2 was built without the `camera` feature (no V4L2 support)",
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::frame::jpeg_of;
    use super::*;

    #[test]
    fn mjpeg_file_source_loops_and_names_frames() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("clip.mjpeg");
        let mut bytes = jpeg_of([250, 0, 0], 32, 32);
        bytes.extend(jpeg_of([0, 0, 250], 32, 32));
        std::fs::write(&p, bytes).unwrap();
        let mut s = SourceSpec::parse(p.to_str().unwrap())
            .open(CameraSettings::default(), true)
            .unwrap();
        let names: Vec<String> = (0..3).map(|_| s.next_frame().unwrap().name).collect();
        assert!(names[0].ends_with("#0") && names[1].ends_with("#1") && names[2].ends_with("#0"));
        let mut once = MjpegFileSource::open(&p, false).unwrap();
        once.next_frame().unwrap();
        once.next_frame().unwrap();
        assert!(matches!(once.next_frame(), Err(SourceError::End(_))));
    }

    #[test]
    fn source_spec_parses_devices_streams_and_files() {
        assert_eq!(
            SourceSpec::parse("/dev/video0"),
            SourceSpec::Camera("/dev/video0".into())
        );
        assert_eq!(
            SourceSpec::parse("a.MJPG"),
            SourceSpec::Mjpeg("a.MJPG".into())
        );
        assert_eq!(SourceSpec::parse("dir"), SourceSpec::Files("dir".into()));
    }
}
