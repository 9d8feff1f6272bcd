//! Where frames come from: a camera, a folder of images, one image repeated, or an MJPEG stream
//! file — all behind [`FrameSource`], and all decoded by [`decode_frame`], so a replayed file goes
//! through exactly the decode and preprocessing a camera frame does.
//!
//! A source hands out *raw* frames (compressed bytes or packed YUYV). Decoding happens later, in
//! the consumer, so that a frame dropped under load costs a copy, not a JPEG decode.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod decode;
mod frame;
mod mjpeg;

pub use decode::{decode_frame, yuyv_to_rgb};
use frame::{io_reason, open_error};
pub use frame::{CameraSettings, FramePixels, FrameSource, RawFrame, SourceError};
pub use mjpeg::{next_jpeg, MjpegFileSource, SplitError, MAX_JPEG_FRAME};

#[cfg(feature = "camera")]
mod v4l2;
#[cfg(feature = "camera")]
pub use v4l2::V4l2Source;

/// File extensions the folder source picks up (case-insensitive).
const IMAGE_EXTENSIONS: [&str; 7] = ["jpg", "jpeg", "png", "bmp", "gif", "webp", "jfif"];

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
