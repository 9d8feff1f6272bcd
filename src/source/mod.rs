//! Where frames come from: a camera, a folder of images, one image repeated, or an MJPEG stream
//! file — all behind [`FrameSource`], and all decoded by [`decode_frame`], so a replayed file goes
//! through exactly the decode and preprocessing a camera frame does.
//!
//! A source hands out *raw* frames (compressed bytes or packed YUYV). Decoding happens later, in
//! the consumer, so that a frame dropped under load costs a copy, not a JPEG decode.

use std::fs::File;
use std::io::{BufRead, BufReader, ErrorKind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;

mod decode;
mod frame;

pub use decode::{decode_frame, yuyv_to_rgb};
use frame::{io_reason, open_error};
pub use frame::{CameraSettings, FramePixels, FrameSource, RawFrame, SourceError};

#[cfg(feature = "camera")]
mod v4l2;
#[cfg(feature = "camera")]
pub use v4l2::V4l2Source;

/// A JPEG bigger than this inside an MJPEG stream is treated as corrupt rather than read into
/// memory without end (a 4K MJPEG frame is well under 4 MiB).
pub const MAX_JPEG_FRAME: usize = 32 * 1024 * 1024;

/// File extensions the folder source picks up (case-insensitive).
const IMAGE_EXTENSIONS: [&str; 7] = ["jpg", "jpeg", "png", "bmp", "gif", "webp", "jfif"];

#[derive(Debug, Error, PartialEq)]
pub enum SplitError {
    #[error("stream ends inside a JPEG frame (truncated)")]
    Truncated,
    #[error("JPEG frame larger than {MAX_JPEG_FRAME} bytes (corrupt stream?)")]
    TooLarge,
    #[error("malformed JPEG marker segment (length {0})")]
    BadSegment(u16),
    #[error("read error: {0}")]
    Io(String),
}

fn read_byte<R: BufRead>(r: &mut R) -> Result<Option<u8>, SplitError> {
    let mut b = [0u8; 1];
    loop {
        return match r.read(&mut b) {
            Ok(0) => Ok(None),
            Ok(_) => Ok(Some(b[0])),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => Err(SplitError::Io(e.to_string())),
        };
    }
}

fn need_byte<R: BufRead>(r: &mut R) -> Result<u8, SplitError> {
    read_byte(r)?.ok_or(SplitError::Truncated)
}

fn push(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), SplitError> {
    if out.len() + bytes.len() > MAX_JPEG_FRAME {
        return Err(SplitError::TooLarge);
    }
    out.extend_from_slice(bytes);
    Ok(())
}

/// Reads the next complete JPEG (SOI … EOI) from a stream of concatenated JPEGs; `Ok(None)` at a
/// clean end. Bytes before an SOI are skipped. Marker segments are walked by their lengths rather
/// than by searching for FF D9, because an EXIF thumbnail inside APP1 carries its own SOI/EOI;
/// inside entropy-coded data FF is always followed by 00 (stuffing) or a restart marker.
pub fn next_jpeg<R: BufRead>(r: &mut R) -> Result<Option<Vec<u8>>, SplitError> {
    // Find SOI.
    let mut prev = match read_byte(r)? {
        None => return Ok(None),
        Some(b) => b,
    };
    loop {
        let b = match read_byte(r)? {
            None => return Ok(None),
            Some(b) => b,
        };
        if prev == 0xFF && b == 0xD8 {
            break;
        }
        prev = b;
    }
    let mut out = vec![0xFF, 0xD8];
    // `pending` is a marker already read from entropy-coded data.
    let mut pending: Option<u8> = None;
    loop {
        let marker = match pending.take() {
            Some(m) => m,
            None => {
                if need_byte(r)? != 0xFF {
                    return Err(SplitError::BadSegment(0));
                }
                let mut m = need_byte(r)?;
                while m == 0xFF {
                    m = need_byte(r)?; // fill bytes
                }
                m
            }
        };
        push(&mut out, &[0xFF, marker])?;
        match marker {
            0xD9 => return Ok(Some(out)),
            0xD0..=0xD7 | 0x01 => continue,
            _ => {}
        }
        let len = u16::from_be_bytes([need_byte(r)?, need_byte(r)?]);
        if len < 2 {
            return Err(SplitError::BadSegment(len));
        }
        push(&mut out, &len.to_be_bytes())?;
        let mut segment = vec![0u8; len as usize - 2];
        r.read_exact(&mut segment).map_err(|e| match e.kind() {
            ErrorKind::UnexpectedEof => SplitError::Truncated,
            _ => SplitError::Io(e.to_string()),
        })?;
        push(&mut out, &segment)?;
        if marker == 0xDA {
            // Start of scan: entropy-coded data runs until a marker other than RSTn.
            loop {
                let b = need_byte(r)?;
                if b != 0xFF {
                    push(&mut out, &[b])?;
                    continue;
                }
                let mut next = need_byte(r)?;
                while next == 0xFF {
                    next = need_byte(r)?;
                }
                if next == 0x00 || (0xD0..=0xD7).contains(&next) {
                    push(&mut out, &[0xFF, next])?;
                } else {
                    pending = Some(next);
                    break;
                }
            }
        }
    }
}

fn is_image_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Image files under `dir` (recursively), in sorted path order, skipping hidden entries.
fn list_images(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            if entry.file_type()?.is_dir() {
                stack.push(path);
            } else if is_image_file(&path) {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// A folder of images (sorted, recursive) or a single image, replayed in a loop.
pub struct FileSource {
    root: PathBuf,
    files: Vec<PathBuf>,
    next: usize,
    looping: bool,
}

impl FileSource {
    pub fn open(path: &Path, looping: bool) -> Result<FileSource, SourceError> {
        let meta = std::fs::metadata(path).map_err(|e| open_error(path, io_reason(&e)))?;
        let files = if meta.is_dir() {
            list_images(path).map_err(|e| open_error(path, io_reason(&e)))?
        } else {
            vec![path.to_path_buf()]
        };
        if files.is_empty() {
            return Err(open_error(
                path,
                format!(
                    "no image files in this folder ({})",
                    IMAGE_EXTENSIONS.join(", ")
                ),
            ));
        }
        Ok(FileSource {
            root: path.to_path_buf(),
            files,
            next: 0,
            looping,
        })
    }
}

impl FrameSource for FileSource {
    fn next_frame(&mut self) -> Result<RawFrame, SourceError> {
        if self.next == self.files.len() {
            if !self.looping {
                return Err(SourceError::End(self.root.display().to_string()));
            }
            self.next = 0;
        }
        let path = &self.files[self.next];
        self.next += 1;
        let bytes = std::fs::read(path).map_err(|e| SourceError::Read {
            source_name: path.display().to_string(),
            reason: io_reason(&e),
        })?;
        Ok(RawFrame {
            pixels: FramePixels::Encoded(bytes),
            name: path.display().to_string(),
            captured: Instant::now(),
        })
    }

    fn describe(&self) -> String {
        if self.files.len() == 1 && self.files[0] == self.root {
            format!("image {} (repeated)", self.root.display())
        } else {
            format!(
                "folder {} ({} images)",
                self.root.display(),
                self.files.len()
            )
        }
    }
}

/// A file of concatenated JPEGs (what `ffmpeg -f mjpeg` or `curl` of an MJPEG camera writes),
/// replayed from the start when it ends.
pub struct MjpegFileSource {
    path: PathBuf,
    reader: BufReader<File>,
    index: u64,
    looping: bool,
}

impl MjpegFileSource {
    pub fn open(path: &Path, looping: bool) -> Result<MjpegFileSource, SourceError> {
        let file = File::open(path).map_err(|e| open_error(path, io_reason(&e)))?;
        Ok(MjpegFileSource {
            path: path.to_path_buf(),
            reader: BufReader::with_capacity(1 << 16, file),
            index: 0,
            looping,
        })
    }

    fn rewind(&mut self) -> Result<(), SourceError> {
        let file = File::open(&self.path).map_err(|e| SourceError::Read {
            source_name: self.path.display().to_string(),
            reason: io_reason(&e),
        })?;
        self.reader = BufReader::with_capacity(1 << 16, file);
        Ok(())
    }
}

impl FrameSource for MjpegFileSource {
    fn next_frame(&mut self) -> Result<RawFrame, SourceError> {
        let name = self.path.display().to_string();
        let read_err = |e: SplitError, index: u64| SourceError::Read {
            source_name: name.clone(),
            reason: format!("frame {index}: {e}"),
        };
        let jpeg = match next_jpeg(&mut self.reader).map_err(|e| read_err(e, self.index))? {
            Some(j) => j,
            None if self.index == 0 => {
                return Err(SourceError::Read {
                    source_name: self.path.display().to_string(),
                    reason: "no JPEG frames in this MJPEG stream".into(),
                })
            }
            None if !self.looping => return Err(SourceError::End(self.path.display().to_string())),
            None => {
                self.rewind()?;
                self.index = 0;
                next_jpeg(&mut self.reader)
                    .map_err(|e| read_err(e, 0))?
                    .ok_or_else(|| SourceError::Read {
                        source_name: self.path.display().to_string(),
                        reason: "stream became empty".into(),
                    })?
            }
        };
        let name = format!("{}#{}", self.path.display(), self.index);
        self.index += 1;
        Ok(RawFrame {
            pixels: FramePixels::Encoded(jpeg),
            name,
            captured: Instant::now(),
        })
    }

    fn describe(&self) -> String {
        format!("MJPEG stream {}", self.path.display())
    }
}

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
                Err(open_error(
                    p,
                    "this edge-mnv2 was built without the `camera` feature (no V4L2 support)",
                ))
            }
        }
    }
}

/// Sleeps so that successive calls are at least `1/fps` apart (no-op for `fps == 0`).
pub struct Pacer {
    period: Option<Duration>,
    next: Option<Instant>,
}

impl Pacer {
    pub fn new(fps: f64) -> Pacer {
        Pacer {
            period: (fps > 0.0).then(|| Duration::from_secs_f64(1.0 / fps)),
            next: None,
        }
    }

    /// How long to wait before the next frame is due (zero when due or unpaced), and books it.
    pub fn wait_time(&mut self) -> Duration {
        let Some(period) = self.period else {
            return Duration::ZERO;
        };
        let now = Instant::now();
        let due = self.next.unwrap_or(now);
        // After a long stall, restart the schedule instead of bursting to catch up.
        let due = if now > due + period * 4 { now } else { due };
        self.next = Some(due + period);
        due.saturating_duration_since(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{codecs::jpeg::JpegEncoder, Rgb, RgbImage};
    use std::io::Cursor;

    fn jpeg_of(colour: [u8; 3], w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_pixel(w, h, Rgb(colour));
        let mut out = Vec::new();
        JpegEncoder::new_with_quality(&mut out, 95)
            .encode_image(&img)
            .unwrap();
        out
    }

    fn mean_rgb(img: &RgbImage) -> [f64; 3] {
        let n = (img.width() * img.height()) as f64;
        let mut s = [0.0; 3];
        for p in img.pixels() {
            for (sum, v) in s.iter_mut().zip(p.0) {
                *sum += v as f64;
            }
        }
        s.map(|v| v / n)
    }

    #[test]
    fn mjpeg_stream_splits_into_frames_that_decode_to_their_colours() {
        let colours = [[250, 10, 10], [10, 250, 10], [10, 10, 250]];
        let mut stream = b"garbage before the first frame".to_vec();
        for c in colours {
            stream.extend(jpeg_of(c, 48, 32));
        }
        let mut r = Cursor::new(stream);
        for c in colours {
            let jpeg = next_jpeg(&mut r).unwrap().expect("a frame");
            assert_eq!(&jpeg[..2], &[0xFF, 0xD8]);
            assert_eq!(&jpeg[jpeg.len() - 2..], &[0xFF, 0xD9]);
            let frame = RawFrame {
                pixels: FramePixels::Encoded(jpeg),
                name: "test".into(),
                captured: Instant::now(),
            };
            let img = decode_frame(&frame).unwrap();
            assert_eq!(img.dimensions(), (48, 32));
            let m = mean_rgb(&img);
            for ch in 0..3 {
                assert!((m[ch] - c[ch] as f64).abs() < 6.0, "{m:?} vs {c:?}");
            }
        }
        assert_eq!(next_jpeg(&mut r).unwrap(), None);
    }

    #[test]
    fn mjpeg_split_skips_an_embedded_thumbnails_eoi() {
        // An APP1 segment holding a complete small JPEG (its own SOI … EOI), as EXIF thumbnails do.
        let thumb = jpeg_of([0, 0, 0], 16, 16);
        let main = jpeg_of([200, 200, 200], 32, 32);
        let mut frame = vec![0xFF, 0xD8, 0xFF, 0xE1];
        frame.extend(((thumb.len() + 2) as u16).to_be_bytes());
        frame.extend(&thumb);
        frame.extend(&main[2..]);
        let mut stream = frame.clone();
        stream.extend(jpeg_of([5, 5, 5], 16, 16));
        let mut r = Cursor::new(stream);
        assert_eq!(next_jpeg(&mut r).unwrap().unwrap(), frame);
        assert!(next_jpeg(&mut r).unwrap().is_some());
    }

    #[test]
    fn mjpeg_truncated_frame_is_an_error() {
        let jpeg = jpeg_of([1, 2, 3], 32, 32);
        let mut r = Cursor::new(jpeg[..jpeg.len() - 10].to_vec());
        assert_eq!(next_jpeg(&mut r), Err(SplitError::Truncated));
    }

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
    fn folder_source_is_sorted_recursive_and_loops() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("b")).unwrap();
        std::fs::write(dir.path().join("b/2.jpg"), jpeg_of([0, 0, 0], 16, 16)).unwrap();
        std::fs::write(dir.path().join("a.png"), b"x").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        std::fs::write(dir.path().join(".hidden.jpg"), b"x").unwrap();
        let mut s = FileSource::open(dir.path(), true).unwrap();
        let names: Vec<String> = (0..3).map(|_| s.next_frame().unwrap().name).collect();
        assert!(names[0].ends_with("a.png"), "{names:?}");
        assert!(names[1].ends_with("b/2.jpg"), "{names:?}");
        assert_eq!(names[2], names[0]);
        let empty = tempfile::tempdir().unwrap();
        let e = FileSource::open(empty.path(), true)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("no image files"), "{e}");
        let e = FileSource::open(Path::new("/nonexistent/x"), true)
            .err()
            .unwrap();
        assert!(e.to_string().contains("no such file"), "{e}");
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

    #[test]
    fn pacer_spaces_frames() {
        let mut p = Pacer::new(100.0);
        assert_eq!(p.wait_time(), Duration::ZERO);
        let w = p.wait_time();
        assert!(
            w > Duration::from_millis(5) && w <= Duration::from_millis(10),
            "{w:?}"
        );
        assert_eq!(Pacer::new(0.0).wait_time(), Duration::ZERO);
    }
}
