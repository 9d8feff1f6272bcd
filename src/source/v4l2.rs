//! V4L2 capture (feature `camera`): open `/dev/videoN`, negotiate MJPEG (else YUYV) at the asked
//! resolution and rate, and stream through memory-mapped buffers.
//!
//! Frames leave here raw (JPEG bytes or packed YUYV) and are decoded by
//! [`decode_frame`](super::decode::decode_frame), the path file sources use too. Errors are
//! phrased for the person at the board: missing device, busy device, missing permission, no
//! usable format.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use v4l::buffer::Type;
use v4l::capability::Flags as CapFlags;
use v4l::io::traits::CaptureStream;
use v4l::video::Capture;
use v4l::{Device, Format, FourCC};

use super::frame::{CameraSettings, FramePixels, FrameSource, RawFrame, SourceError};

const MJPEG: [u8; 4] = *b"MJPG";
const YUYV: [u8; 4] = *b"YUYV";
/// Buffers the driver fills in turn; four is what most capture tools use.
const BUFFERS: u32 = 4;
/// A frame that takes longer than this is treated as the camera having gone away, so that an
/// unplugged device is noticed (and reopened) rather than waited on for ever.
const FRAME_TIMEOUT: Duration = Duration::from_secs(1);

pub struct V4l2Source {
    path: PathBuf,
    // Declared before `device` so the buffers are unmapped and streaming stops first.
    stream: v4l::io::mmap::Stream<'static>,
    _device: Device,
    format: Format,
    fps: u32,
    sequence: u64,
}

fn open_reason(e: &std::io::Error) -> String {
    match (e.kind(), e.raw_os_error()) {
        (ErrorKind::NotFound, _) => "no such device (is the camera plugged in?)".into(),
        (ErrorKind::PermissionDenied, _) => {
            "permission denied (is this user in the `video` group?)".into()
        }
        (_, Some(libc::EBUSY)) => "device busy (another program is using the camera)".into(),
        (_, Some(libc::ENODEV | libc::ENXIO)) => "device gone (camera unplugged?)".into(),
        (_, Some(libc::ENOTTY | libc::EINVAL)) => "not a V4L2 video device".into(),
        _ => e.to_string(),
    }
}

fn err(path: &Path, reason: String) -> SourceError {
    SourceError::Open {
        source_name: path.display().to_string(),
        reason,
    }
}

impl V4l2Source {
    pub fn open(path: &Path, want: CameraSettings) -> Result<V4l2Source, SourceError> {
        let device = Device::with_path(path).map_err(|e| err(path, open_reason(&e)))?;
        let caps = device.query_caps().map_err(|e| {
            err(
                path,
                format!("cannot query capabilities: {}", open_reason(&e)),
            )
        })?;
        if !caps.capabilities.contains(CapFlags::VIDEO_CAPTURE) {
            return Err(err(
                path,
                format!("'{}' is not a video capture device", caps.card),
            ));
        }
        if !caps.capabilities.contains(CapFlags::STREAMING) {
            return Err(err(
                path,
                format!("'{}' does not support streaming I/O", caps.card),
            ));
        }
        let offered = device
            .enum_formats()
            .map_err(|e| err(path, format!("cannot list formats: {}", open_reason(&e))))?;
        let fourcc = [MJPEG, YUYV]
            .into_iter()
            .map(|f| FourCC::new(&f))
            .find(|f| offered.iter().any(|d| d.fourcc == *f))
            .ok_or_else(|| {
                let names: Vec<String> = offered.iter().map(|d| d.fourcc.to_string()).collect();
                err(
                    path,
                    format!(
                        "camera offers no supported format (need MJPG or YUYV; it has {})",
                        names.join(", ")
                    ),
                )
            })?;
        let format = device
            .set_format(&Format::new(want.width, want.height, fourcc))
            .map_err(|e| err(path, format!("cannot set format: {}", open_reason(&e))))?;
        if format.fourcc != fourcc {
            return Err(err(
                path,
                format!("driver refused {fourcc} and chose {}", format.fourcc),
            ));
        }
        if (format.width, format.height) != (want.width, want.height) {
            log::warn!(
                "{}: asked for {}x{}, the camera gives {}x{}",
                path.display(),
                want.width,
                want.height,
                format.width,
                format.height
            );
        }
        let fps = match device.set_params(&v4l::video::capture::Parameters::with_fps(want.fps)) {
            Ok(p) if p.interval.numerator > 0 => p.interval.denominator / p.interval.numerator,
            Ok(_) => want.fps,
            Err(e) => {
                log::warn!("{}: cannot set {} fps: {e}", path.display(), want.fps);
                want.fps
            }
        };
        let mut stream = v4l::io::mmap::Stream::with_buffers(&device, Type::VideoCapture, BUFFERS)
            .map_err(|e| err(path, format!("cannot map buffers: {}", open_reason(&e))))?;
        stream.set_timeout(FRAME_TIMEOUT);
        Ok(V4l2Source {
            path: path.to_path_buf(),
            stream,
            _device: device,
            format,
            fps,
            sequence: 0,
        })
    }
}

/// What a failed dequeue means: the stream's poll gives up after [`FRAME_TIMEOUT`] without a
/// frame (a stalled or unplugged camera), or the driver said why.
fn read_error(path: &Path, e: &std::io::Error) -> SourceError {
    SourceError::Read {
        source_name: path.display().to_string(),
        reason: if e.kind() == ErrorKind::TimedOut {
            format!("no frame within {FRAME_TIMEOUT:?} (camera stalled or unplugged)")
        } else {
            open_reason(e)
        },
    }
}

impl FrameSource for V4l2Source {
    fn next_frame(&mut self) -> Result<RawFrame, SourceError> {
        let path = &self.path;
        let (buf, meta) = self.stream.next().map_err(|e| read_error(path, &e))?;
        let used = (meta.bytesused as usize).min(buf.len());
        let data = buf[..used].to_vec();
        self.sequence += 1;
        let pixels = if self.format.fourcc == FourCC::new(&MJPEG) {
            FramePixels::Encoded(data)
        } else {
            FramePixels::Yuyv {
                width: self.format.width,
                height: self.format.height,
                stride: self.format.stride,
                data,
            }
        };
        Ok(RawFrame {
            pixels,
            name: format!("{}#{}", self.path.display(), self.sequence),
            captured: Instant::now(),
        })
    }

    fn describe(&self) -> String {
        format!(
            "{} {}x{} {} @ {} fps",
            self.path.display(),
            self.format.width,
            self.format.height,
            self.format.fourcc,
            self.fps
        )
    }

    fn is_live(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_device_is_a_clear_open_error() {
        let e = V4l2Source::open(Path::new("/dev/video99"), CameraSettings::default())
            .err()
            .expect("no /dev/video99 on a test machine");
        let text = e.to_string();
        assert!(matches!(e, SourceError::Open { .. }));
        assert!(text.starts_with("/dev/video99: "), "{text}");
        assert!(text.contains("no such device"), "{text}");
    }

    #[test]
    fn a_stalled_stream_is_a_read_error_saying_so() {
        let stalled = read_error(
            Path::new("/dev/video0"),
            &std::io::Error::from(ErrorKind::TimedOut),
        );
        assert!(matches!(stalled, SourceError::Read { .. }));
        assert_eq!(
            stalled.to_string(),
            "/dev/video0: no frame within 1s (camera stalled or unplugged)"
        );
    }

    #[test]
    fn a_non_video_file_is_refused_not_streamed() {
        let e = V4l2Source::open(Path::new("/dev/null"), CameraSettings::default())
            .err()
            .expect("/dev/null is no camera");
        assert!(e.to_string().starts_with("/dev/null: "), "{e}");
    }
}
