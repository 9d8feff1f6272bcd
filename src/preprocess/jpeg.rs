//! What the JPEG decoders do not check or do not offer: whether the file runs whole to its end
//! marker, what a progressive JPEG holds while it decodes, and the reduced-size decode.

use image::{DynamicImage, RgbImage};

use super::{check_dimensions, MAX_DECODE_BYTES};

/// Whether a JPEG's segments and scans run whole up to its end-of-image marker. Both JPEG
/// decoders fill a scan cut short with grey and report success, so a truncated file (a copy
/// interrupted, a download cut off) would be classified and trained on as if it were whole.
/// Bytes after the marker are allowed (some cameras append data); so are stray bytes between
/// segments, which the decoders skip too.
pub(super) fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let n = bytes.len();
    let mut i = 2; // after SOI
    loop {
        while i < n && bytes[i] != 0xFF {
            i += 1;
        }
        while i < n && bytes[i] == 0xFF {
            i += 1;
        }
        let Some(&marker) = bytes.get(i) else {
            return false;
        };
        i += 1;
        match marker {
            0xD9 => return true,
            // Standalone markers: no length follows.
            0x00 | 0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let Some(len) = bytes.get(i..i + 2) else {
            return false;
        };
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        if len < 2 || i + len > n {
            return false;
        }
        i += len;
        if marker == 0xDA {
            // Entropy-coded data runs to the first marker that is neither a stuffed 0xFF
            // (FF 00) nor a restart marker.
            loop {
                let Some(ff) = bytes[i..].iter().position(|&b| b == 0xFF) else {
                    return false;
                };
                let mut j = i + ff + 1;
                while j < n && bytes[j] == 0xFF {
                    j += 1;
                }
                match bytes.get(j) {
                    None => return false,
                    Some(0x00 | 0xD0..=0xD7) => i = j + 1,
                    Some(_) => {
                        i += ff;
                        break;
                    }
                }
            }
        }
    }
}

/// What a progressive JPEG's decoder holds besides the pixels: every coefficient of the whole
/// image (2 bytes each, 64 a block), whatever size it is decoded at, until the last scan. 0 for
/// any other JPEG, which decoders stream block row by block row.
pub(super) fn progressive_jpeg_bytes(bytes: &[u8]) -> u64 {
    let mut i = 2;
    while let (Some(&0xFF), Some(&marker)) = (bytes.get(i), bytes.get(i + 1)) {
        if marker == 0xFF {
            i += 1;
            continue;
        }
        let Some(len) = bytes.get(i + 2..i + 4) else {
            return 0;
        };
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        if matches!(marker, 0xC2 | 0xC6 | 0xCA | 0xCE) {
            let Some(sof) = bytes.get(i + 4..i + 2 + len) else {
                return 0;
            };
            let (h, w) = (
                u64::from(u16::from_be_bytes([sof[1], sof[2]])),
                u64::from(u16::from_be_bytes([sof[3], sof[4]])),
            );
            let comps: Vec<(u64, u64)> = sof[6..]
                .chunks_exact(3)
                .take(usize::from(sof[5]))
                .map(|c| (u64::from(c[1] >> 4).max(1), u64::from(c[1] & 15).max(1)))
                .collect();
            let hmax = comps.iter().map(|c| c.0).max().unwrap_or(1);
            let vmax = comps.iter().map(|c| c.1).max().unwrap_or(1);
            return comps
                .iter()
                .map(|&(hs, vs)| (w * hs).div_ceil(hmax * 8) * (h * vs).div_ceil(vmax * 8) * 128)
                .sum();
        }
        if matches!(marker, 0xC0..=0xCF | 0xDA | 0xD9) {
            return 0;
        }
        i += 2 + len;
    }
    0
}

/// The JPEG decoded with a scaled inverse DCT, if it is a JPEG at least four times `min_side` on
/// both sides that decodes cleanly; `None` otherwise, and the full decode then decides (and words any
/// error), so reduced decoding never changes which files are accepted. Its size was checked.
pub(super) fn jpeg_reduced(bytes: &[u8], min_side: u32) -> Option<RgbImage> {
    use jpeg_decoder::{Decoder, PixelFormat};
    if min_side == 0 {
        return None;
    }
    let mut decoder = Decoder::new(bytes);
    decoder.read_info().ok()?;
    let info = decoder.info()?;
    let (w, h) = (u32::from(info.width), u32::from(info.height));
    if check_dimensions(w, h).is_err()
        || !matches!(info.pixel_format, PixelFormat::RGB24 | PixelFormat::L8)
    {
        return None;
    }
    // Keep at least twice the model's side: the scaled DCT averages each block like a box filter,
    // and only with the triangle resize still doing the last 2x or more do the embeddings match
    // the full decode's (at 1x margin the worst hymenoptera image fell to cosine 0.986).
    let floor = 2 * min_side;
    let factor = [8, 4, 2]
        .into_iter()
        .find(|f| w.div_ceil(*f) >= floor && h.div_ceil(*f) >= floor)?;
    let (sw, sh) = decoder
        .scale(w.div_ceil(factor) as u16, h.div_ceil(factor) as u16)
        .ok()?;
    decoder.set_max_decoding_buffer_size(MAX_DECODE_BYTES as usize);
    let pixels = decoder.decode().ok()?;
    let (sw, sh) = (u32::from(sw), u32::from(sh));
    let rgb = match info.pixel_format {
        PixelFormat::RGB24 => RgbImage::from_raw(sw, sh, pixels)?,
        _ => DynamicImage::ImageLuma8(image::GrayImage::from_raw(sw, sh, pixels)?).into_rgb8(),
    };
    let mut img = DynamicImage::ImageRgb8(rgb);
    if let Some(o) = decoder
        .exif_data()
        .and_then(image::metadata::Orientation::from_exif_chunk)
    {
        img.apply_orientation(o);
    }
    Some(img.into_rgb8())
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;
    use crate::preprocess::decode_rgb;

    #[test]
    fn jpeg_end_marker_is_found_past_segments_and_scans() {
        let img = RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8 * 4, y as u8 * 4, 7]));
        let mut bytes = Vec::new();
        img.write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Jpeg)
            .unwrap();
        assert!(jpeg_is_complete(&bytes));
        // Trailing bytes after the end marker (some cameras append data) are fine.
        let mut trailing = bytes.clone();
        trailing.extend_from_slice(b"\0\0trailer");
        assert!(jpeg_is_complete(&trailing));
        assert!(decode_rgb(&trailing, "trailing.jpg").is_ok());
        for keep in 2..bytes.len() - 1 {
            assert!(!jpeg_is_complete(&bytes[..keep]), "cut at {keep}");
        }
        let e = decode_rgb(&bytes[..bytes.len() - 2], "cut.jpg").unwrap_err();
        assert!(e.to_string().starts_with("cut.jpg: truncated"), "{e}");
    }

    #[test]
    fn progressive_jpeg_memory_is_counted_from_its_frame_header() {
        let img = RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8 * 4, y as u8 * 4, 7]));
        let mut bytes = Vec::new();
        img.write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Jpeg)
            .unwrap();
        assert_eq!(progressive_jpeg_bytes(&bytes), 0);
        // The same header marked progressive (SOF2): 64x64 in 3 components at any sampling
        // of this encoder is at most 3 x 64 blocks of 128 bytes.
        let sof = bytes.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        bytes[sof + 1] = 0xC2;
        let held = progressive_jpeg_bytes(&bytes);
        assert!(held > 0 && held <= 3 * 64 * 128, "{held}");
        // 8000x8000 declared (within the pixel limit), each component at full resolution:
        // 3 x 1000 x 1000 blocks of 128 bytes, over the memory limit.
        bytes[sof + 5..sof + 9].copy_from_slice(&[0x1F, 0x40, 0x1F, 0x40]);
        for c in 0..3 {
            bytes[sof + 11 + 3 * c] = 0x11;
        }
        assert_eq!(progressive_jpeg_bytes(&bytes), 384_000_000);
        let e = decode_rgb(&bytes, "p.jpg").unwrap_err().to_string();
        assert_eq!(
            e,
            "p.jpg: progressive JPEG needs 384 MB of memory to decode, over the 256 MB limit"
        );
    }
}
