//! Raw frame → RGB8: the one decode every source's frames go through, so a replayed file is
//! decoded exactly as a camera frame is. JPEG goes to the image decoder; YUYV is converted here
//! because UVC cameras that cannot do MJPEG send it.

use std::path::PathBuf;

use image::RgbImage;

use super::frame::{FramePixels, RawFrame};
use crate::preprocess::{self, ImageError};

/// Decodes a raw frame to RGB8; every source's frames pass through here. With `min_side` (the
/// model's input side, when the frame is only going to be classified), a large JPEG frame is
/// decoded at a reduced size that keeps both sides at least `min_side`
/// ([`preprocess::decode_rgb_reduced`]); without it (capture), at full size.
pub fn decode_frame(frame: &RawFrame, min_side: Option<u32>) -> Result<RgbImage, ImageError> {
    match &frame.pixels {
        FramePixels::Encoded(bytes) => match min_side {
            Some(side) => preprocess::decode_rgb_reduced(bytes, &frame.name, side),
            None => preprocess::decode_rgb(bytes, &frame.name),
        },
        FramePixels::Yuyv {
            width,
            height,
            stride,
            data,
        } => yuyv_to_rgb(*width, *height, *stride, data).map_err(|reason| ImageError {
            path: PathBuf::from(&frame.name),
            reason,
        }),
    }
}

/// BT.601 limited-range ("studio swing", what UVC webcams send) YUV → RGB for one pixel, in
/// 16.16 fixed point: R = 1.164(Y−16) + 1.596(V−128), G = 1.164(Y−16) − 0.392(U−128) − 0.813(V−128),
/// B = 1.164(Y−16) + 2.018(U−128).
fn yuv_to_rgb_pixel(y: u8, u: u8, v: u8) -> [u8; 3] {
    let c = (y as i32 - 16) * 76_284;
    let d = u as i32 - 128;
    let e = v as i32 - 128;
    let clamp = |x: i32| ((x + 32_768) >> 16).clamp(0, 255) as u8;
    [
        clamp(c + 104_595 * e),
        clamp(c - 25_690 * d - 53_281 * e),
        clamp(c + 132_186 * d),
    ]
}

/// Converts a packed YUYV 4:2:2 frame to RGB8. Errors (as a reason) when the buffer is too short
/// for the stated geometry, which is what a truncated or mis-negotiated frame looks like.
pub fn yuyv_to_rgb(width: u32, height: u32, stride: u32, data: &[u8]) -> Result<RgbImage, String> {
    preprocess::check_dimensions(width, height).map_err(|e| format!("YUYV frame: {e}"))?;
    if !width.is_multiple_of(2) {
        return Err(format!("YUYV frame width {width} is odd"));
    }
    let row_bytes = width as usize * 2;
    let stride = (stride as usize).max(row_bytes);
    // Checked: a driver's stride is a u32, and on 32-bit boards stride × height can overflow.
    let needed = stride
        .checked_mul(height as usize - 1)
        .and_then(|n| n.checked_add(row_bytes))
        .ok_or_else(|| format!("YUYV frame stride {stride} is too large for {height} rows"))?;
    if data.len() < needed {
        return Err(format!(
            "YUYV frame is {} bytes, {width}x{height} needs {needed} (truncated frame?)",
            data.len()
        ));
    }
    let mut out = Vec::with_capacity(width as usize * height as usize * 3);
    for row in data.chunks(stride).take(height as usize) {
        for quad in row[..row_bytes].chunks_exact(4) {
            let (y0, u, y1, v) = (quad[0], quad[1], quad[2], quad[3]);
            out.extend_from_slice(&yuv_to_rgb_pixel(y0, u, v));
            out.extend_from_slice(&yuv_to_rgb_pixel(y1, u, v));
        }
    }
    Ok(RgbImage::from_raw(width, height, out).expect("buffer sized to width x height x 3"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// BT.601 limited-range YUV of pure colours (rounded) and the RGB they stand for.
    const COLOURS: [([u8; 3], [u8; 3]); 6] = [
        ([235, 128, 128], [255, 255, 255]),
        ([16, 128, 128], [0, 0, 0]),
        ([81, 90, 240], [255, 0, 0]),
        ([145, 54, 34], [0, 255, 0]),
        ([41, 240, 110], [0, 0, 255]),
        ([126, 128, 128], [128, 128, 128]),
    ];

    fn yuyv_frame(w: u32, h: u32, stride: u32, yuv: impl Fn(u32, u32) -> [u8; 3]) -> Vec<u8> {
        let mut data = vec![0xAAu8; (stride * h) as usize];
        for y in 0..h {
            for x in (0..w).step_by(2) {
                let [yy, u, v] = yuv(x, y);
                let o = (y * stride + x * 2) as usize;
                data[o..o + 4].copy_from_slice(&[yy, u, yy, v]);
            }
        }
        data
    }

    fn close(a: &[u8], b: &[u8], tol: i32) -> bool {
        a.iter()
            .zip(b)
            .all(|(&x, &y)| (x as i32 - y as i32).abs() <= tol)
    }

    #[test]
    fn yuyv_pure_colours_convert_to_their_rgb() {
        for (yuv, rgb) in COLOURS {
            let data = yuyv_frame(32, 16, 64, |_, _| yuv);
            let img = yuyv_to_rgb(32, 16, 64, &data).unwrap();
            for p in img.pixels() {
                assert!(
                    close(&p.0, &rgb, 2),
                    "YUV {yuv:?} gave {:?}, want {rgb:?}",
                    p.0
                );
            }
        }
    }

    #[test]
    fn yuyv_honours_stride_and_position() {
        // Left half red, right half blue, with 16 bytes of padding per row (filled with 0xAA).
        let (w, h, stride) = (32u32, 16u32, 80u32);
        let data = yuyv_frame(w, h, stride, |x, _| {
            if x < w / 2 {
                COLOURS[2].0
            } else {
                COLOURS[4].0
            }
        });
        let img = yuyv_to_rgb(w, h, stride, &data).unwrap();
        assert!(close(&img.get_pixel(0, 0).0, &[255, 0, 0], 2));
        assert!(close(&img.get_pixel(15, 15).0, &[255, 0, 0], 2));
        assert!(close(&img.get_pixel(16, 0).0, &[0, 0, 255], 2));
        assert!(close(&img.get_pixel(31, 15).0, &[0, 0, 255], 2));
    }

    #[test]
    fn yuyv_short_or_odd_frames_are_errors_not_panics() {
        let data = vec![0u8; 32 * 2 * 15];
        let e = yuyv_to_rgb(32, 16, 64, &data).unwrap_err();
        assert!(e.contains("truncated"), "{e}");
        assert!(yuyv_to_rgb(33, 16, 66, &[0u8; 66 * 16])
            .unwrap_err()
            .contains("odd"));
        assert!(yuyv_to_rgb(0, 16, 0, &[]).is_err());
        // A stride whose product with the height overflows a 32-bit usize (armv7): an error,
        // not an overflow panic or a short image.
        assert!(yuyv_to_rgb(16, 16, u32::MAX, &[0u8; 64]).is_err());
    }
}
