//! MJPEG streams: [`next_jpeg`] cuts a byte stream of concatenated JPEGs into frames, and
//! [`MjpegFileSource`] replays such a stream file. The splitter takes any `BufRead`, not a file,
//! so it is tested on in-memory streams and does not care where the bytes come from.

use std::fs::File;
use std::io::{BufRead, BufReader, ErrorKind};
use std::path::{Path, PathBuf};
use std::time::Instant;

use thiserror::Error;

use super::frame::{open_error, FramePixels, FrameSource, RawFrame, SourceError};
use crate::preprocess::io_reason;

/// A JPEG bigger than this inside an MJPEG stream is treated as corrupt rather than read into
/// memory without end (a 4K MJPEG frame is well under 4 MiB).
pub const MAX_JPEG_FRAME: usize = 32 * 1024 * 1024;

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

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use image::RgbImage;

    use super::super::decode::decode_frame;
    use super::super::frame::jpeg_of;
    use super::*;

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
            let img = decode_frame(&frame, None).unwrap();
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
}
