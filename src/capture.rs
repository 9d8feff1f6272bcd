//! `capture`: save frames from a source as JPEG files into `DATA/<class>/`, the layout `finetune`
//! reads — how a user collects samples on the board.
//!
//! Files are numbered `000001.jpg`, `000002.jpg`, … after the highest number already there, and
//! each is written to a temporary file and linked into place without replacing anything, so an
//! interrupted capture leaves no partial file and a second capture never overwrites the first.
//!
//! A frame whose bytes are already in the class folder (by sha256, the content hash `finetune`
//! checks its splits with) is not saved again: capturing the same folder twice would otherwise
//! save every image twice, and a copy could land in training and the other in the test split.

use std::collections::HashSet;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use image::codecs::jpeg::JpegEncoder;
use sha2::{Digest, Sha256};

use crate::dataset::content_sha256;
use crate::discover;
use crate::source::{decode_frame, CameraSettings, FramePixels, SourceError, SourceSpec};

/// JPEG quality for frames that arrive as raw pixels (YUYV) or in another format.
const JPEG_QUALITY: u8 = 92;

/// Refuses class names that would leave `DATA/` or hide the folder.
pub fn check_class_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.starts_with('.')
        || name.contains(['/', '\\', '\0'])
        || name.trim() != name
    {
        bail!("--class '{name}': not a usable folder name (no '/', no leading '.', no surrounding spaces)");
    }
    Ok(())
}

/// The highest `NNNNNN.jpg` number in `dir` (0 when there is none).
fn highest_number(dir: &Path) -> Result<u64> {
    let mut highest = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("{}: listing", dir.display()))? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name
            .strip_suffix(".jpg")
            .and_then(|stem| stem.parse::<u64>().ok())
        {
            highest = highest.max(n);
        }
    }
    Ok(highest)
}

/// The sha256 of every image already in `dir` (hidden files, such as an interrupted capture's
/// temporary file, are not images of the class).
fn saved_hashes(dir: &Path) -> Result<HashSet<String>> {
    let entries = discover::entries(dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(entries
        .iter()
        .filter(|p| discover::is_image_path(p) && p.is_file())
        .filter_map(|p| content_sha256(p))
        .collect())
}

/// What a capture did: the files written, and the frames not written because their bytes were
/// already in the class folder.
#[derive(Debug, Default, PartialEq)]
pub struct Captured {
    pub saved: Vec<PathBuf>,
    pub duplicates: usize,
}

/// Writes `bytes` as the next free `NNNNNN.jpg` in `dir`, never replacing an existing file.
fn save_next(dir: &Path, next: &mut u64, bytes: &[u8]) -> Result<PathBuf> {
    let mut tmp = crate::fsutil::synced_temp_file(dir, bytes)?;
    loop {
        *next += 1;
        let path = dir.join(format!("{:06}.jpg", *next));
        match tmp.persist_noclobber(&path) {
            Ok(_) => return Ok(path),
            // Another capture took this number meanwhile: try the next one.
            Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => tmp = e.file,
            Err(e) => {
                return Err(e.error).with_context(|| format!("{}: saving", path.display()));
            }
        }
    }
}

/// Captures `count` frames into `data/class/`, `interval` apart (live sources only), and returns
/// the files written. Every frame is decoded first, so only readable images are saved; JPEG frames
/// are saved byte for byte, anything else is encoded as JPEG; a frame whose bytes the folder
/// holds already is counted in `duplicates`, not saved.
pub fn capture(
    spec: &SourceSpec,
    camera: CameraSettings,
    class: &str,
    count: usize,
    data: &Path,
    interval: Duration,
    cancel: &AtomicBool,
) -> Result<Captured> {
    check_class_name(class)?;
    let dir = data.join(class);
    std::fs::create_dir_all(&dir).with_context(|| format!("{}: creating", dir.display()))?;
    let mut source = spec.open(camera, false)?;
    log::info!("capturing {count} frames from {}", source.describe());
    let mut next = highest_number(&dir)?;
    let mut hashes = saved_hashes(&dir)?;
    let mut duplicates = 0;
    let mut saved = Vec::with_capacity(count);
    let mut last = None::<Instant>;
    while saved.len() < count {
        if cancel.load(Ordering::SeqCst) {
            bail!("interrupted after {} of {count} frames", saved.len());
        }
        if let Some(t) = last {
            if source.is_live() && t.elapsed() < interval {
                // Keep the camera's buffers flowing; only the frame at the interval is kept.
                source.next_frame()?;
                continue;
            }
        }
        let frame = match source.next_frame() {
            Ok(f) => f,
            Err(SourceError::End(_)) => {
                log::warn!("source ended after {} of {count} frames", saved.len());
                break;
            }
            Err(e) => return Err(e.into()),
        };
        last = Some(Instant::now());
        let img = match decode_frame(&frame, None) {
            Ok(img) => img,
            Err(e) => {
                log::warn!("skipped: {e}");
                continue;
            }
        };
        let bytes = match &frame.pixels {
            FramePixels::Encoded(b) if b.starts_with(&[0xFF, 0xD8]) => b.clone(),
            _ => {
                let mut out = Cursor::new(Vec::new());
                JpegEncoder::new_with_quality(&mut out, JPEG_QUALITY)
                    .encode_image(&img)
                    .with_context(|| format!("{}: encoding as JPEG", frame.name))?;
                out.into_inner()
            }
        };
        if !hashes.insert(hex::encode(Sha256::digest(&bytes))) {
            log::info!(
                "{}: already in {}, not saved again",
                frame.name,
                dir.display()
            );
            duplicates += 1;
            continue;
        }
        let path = save_next(&dir, &mut next, &bytes)?;
        log::info!("{} -> {}", frame.name, path.display());
        saved.push(path);
    }
    if duplicates > 0 {
        log::warn!(
            "skipped {duplicates} duplicate(s): frames whose bytes {} holds already",
            dir.display()
        );
    }
    Ok(Captured { saved, duplicates })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage};

    #[test]
    fn numbers_continue_after_existing_files_and_nothing_is_overwritten() {
        let src = tempfile::tempdir().unwrap();
        RgbImage::from_pixel(32, 32, Rgb([10, 200, 30]))
            .save(src.path().join("a.png"))
            .unwrap();
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().join("plants");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("000007.jpg"), b"keep me").unwrap();
        let spec = SourceSpec::Files(src.path().join("a.png"));
        let never = AtomicBool::new(false);
        let saved = capture(
            &spec,
            CameraSettings::default(),
            "plants",
            3,
            data.path(),
            Duration::ZERO,
            &never,
        )
        .unwrap()
        .saved;
        // A single non-looping image gives one frame.
        assert_eq!(saved, vec![dir.join("000008.jpg")]);
        assert_eq!(std::fs::read(dir.join("000007.jpg")).unwrap(), b"keep me");
        let img = image::open(&saved[0]).unwrap().into_rgb8();
        assert_eq!(img.dimensions(), (32, 32));
        assert!(std::fs::read_dir(&dir).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp")));
    }

    /// The finding: `capture` from a folder twice saved every frame again.
    #[test]
    fn a_second_capture_of_the_same_folder_saves_nothing() {
        let src = tempfile::tempdir().unwrap();
        for (i, g) in [10u8, 90, 170].into_iter().enumerate() {
            RgbImage::from_pixel(16, 16, Rgb([g, 40, 200]))
                .save(src.path().join(format!("{i}.png")))
                .unwrap();
        }
        // The same image twice in the source: saved once.
        std::fs::copy(src.path().join("0.png"), src.path().join("3.png")).unwrap();
        let data = tempfile::tempdir().unwrap();
        let spec = SourceSpec::Files(src.path().to_path_buf());
        let never = AtomicBool::new(false);
        let run = || {
            capture(
                &spec,
                CameraSettings::default(),
                "c",
                10,
                data.path(),
                Duration::ZERO,
                &never,
            )
            .unwrap()
        };
        let first = run();
        assert_eq!(first.saved.len(), 3);
        assert_eq!(first.duplicates, 1);
        let second = run();
        assert_eq!(
            second,
            Captured {
                saved: Vec::new(),
                duplicates: 4
            }
        );
        assert_eq!(std::fs::read_dir(data.path().join("c")).unwrap().count(), 3);
    }

    #[test]
    fn bad_class_names_are_refused() {
        for bad in ["", "../x", ".hidden", "a/b", " a"] {
            assert!(check_class_name(bad).is_err(), "{bad:?}");
        }
        check_class_name("honey bees").unwrap();
    }
}
