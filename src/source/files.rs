//! Still images as a frame source: a folder (recursive, sorted, the images [`crate::discover`]
//! finds, as training does) or one image, replayed in a loop. Frames are the files' bytes as-is,
//! so they take the same decode path as camera JPEGs.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::frame::{open_error, FramePixels, FrameSource, RawFrame, SourceError};
use crate::discover::{self, IMAGE_EXTENSIONS};
use crate::preprocess::io_reason;

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
            discover::images_under(path).map_err(|e| open_error(path, io_reason(&e.error)))?
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

#[cfg(test)]
mod tests {
    use super::super::frame::jpeg_of;
    use super::*;

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
}
