//! From a file (or bytes) to the exact tensor a model wants.
//!
//! One path for everything — training images, evaluation images, camera frames — so the head
//! never sees pixels prepared differently from the ones it was trained on:
//! decode (JPEG, PNG, BMP, GIF first frame, WebP) → EXIF orientation (JPEG) → RGB8 →
//! resize the whole image to the model's square input, **not keeping the aspect ratio**, with a
//! bilinear (triangle) filter that widens with the downscale factor, like PIL's
//! `resize(BILINEAR)` and Keras' `image_dataset_from_directory` defaults → layout/dtype/normalisation
//! from the manifest's [`InputSpec`].

use std::io::{BufRead, Cursor, Seek};
use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use image::{DynamicImage, ImageDecoder, ImageReader, Limits, RgbImage};
use thiserror::Error;
use tract_core::prelude::{tract_ndarray, Tensor};

use crate::models::{InputDtype, InputSpec, Layout};

/// What a head records of the pixels it was trained on, and part of every embedding-cache key:
/// bump it when anything between file bytes and model input changes (decode, resize, augmentation
/// maths), so a head is never run on pixels prepared differently and stale cached embeddings are
/// never reused.
pub const PREPROCESS_VERSION: &str =
    "decode+exif (large JPEG reduced to >= 2x input), rgb8, stretch-resize triangle; augment affine-reflect v1";

/// The preprocessing versions a head may record and still run here: the current one, and the one
/// before reduced JPEG decoding, whose pixels differ only for JPEGs four times the input side,
/// and then by no more than a different JPEG decoder's do (`tests/reduced_decode.rs`).
pub const PREPROCESS_ACCEPTED: [&str; 2] = [
    PREPROCESS_VERSION,
    "decode+exif, rgb8, stretch-resize triangle; augment affine-reflect v1",
];

/// Images larger than this on either side are refused before decoding (a 20000×20000 RGB image
/// would need 1.2 GB).
pub const MAX_SIDE: u32 = 16_384;
/// Smaller images carry too little to classify; refusing them beats a confident wrong answer.
pub const MIN_SIDE: u32 = 16;
/// Upper bound on what the decoder may allocate for one image.
const MAX_ALLOC: u64 = 512 * 1024 * 1024;

#[derive(Debug, Error)]
#[error("{path}: {reason}")]
pub struct ImageError {
    pub path: PathBuf,
    pub reason: String,
}

fn err(path: &Path, reason: impl Into<String>) -> ImageError {
    ImageError {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn limits() -> Limits {
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_ALLOC);
    limits
}

/// Decodes an image file to upright RGB8.
pub fn load_rgb(path: &Path) -> Result<RgbImage, ImageError> {
    let meta = std::fs::metadata(path).map_err(|e| err(path, io_reason(&e)))?;
    if meta.is_dir() {
        return Err(err(path, "is a directory, expected an image file"));
    }
    if meta.len() == 0 {
        return Err(err(path, "empty file (0 bytes)"));
    }
    let reader = ImageReader::open(path).map_err(|e| err(path, io_reason(&e)))?;
    decode(reader, path)
}

/// Decodes an image file to upright RGB8 at least `min_side` pixels on both sides where it was,
/// for a model that resizes to `min_side` anyway: a JPEG at least four times `min_side` on both
/// sides is decoded at 1/2, 1/4 or 1/8 of its size, keeping both sides at least twice `min_side`,
/// which costs a fraction of a full decode (a 12-megapixel phone photo is decoded at 1008×756).
/// Other formats, and smaller JPEGs, decode exactly as [`load_rgb`].
pub fn load_rgb_reduced(path: &Path, min_side: u32) -> Result<RgbImage, ImageError> {
    let bytes = read_image_file(path)?;
    if let Some(img) = jpeg_reduced(&bytes, min_side) {
        return Ok(img);
    }
    // As `ImageReader::open` does: the extension names the format when the content does not.
    let mut reader = ImageReader::new(Cursor::new(bytes));
    if let Ok(format) = image::ImageFormat::from_path(path) {
        reader.set_format(format);
    }
    decode(reader, path)
}

/// [`load_rgb_reduced`] for an in-memory image.
pub fn decode_rgb_reduced(bytes: &[u8], name: &str, min_side: u32) -> Result<RgbImage, ImageError> {
    match jpeg_reduced(bytes, min_side) {
        Some(img) => Ok(img),
        None => decode_rgb(bytes, name),
    }
}

fn read_image_file(path: &Path) -> Result<Vec<u8>, ImageError> {
    let meta = std::fs::metadata(path).map_err(|e| err(path, io_reason(&e)))?;
    if meta.is_dir() {
        return Err(err(path, "is a directory, expected an image file"));
    }
    if meta.len() == 0 {
        return Err(err(path, "empty file (0 bytes)"));
    }
    std::fs::read(path).map_err(|e| err(path, io_reason(&e)))
}

/// The JPEG decoded with a scaled inverse DCT, if it is a JPEG at least four times `min_side` on
/// both sides that decodes cleanly; `None` otherwise, and the full decode then decides (and words any
/// error), so reduced decoding never changes which files are accepted.
fn jpeg_reduced(bytes: &[u8], min_side: u32) -> Option<RgbImage> {
    use jpeg_decoder::{Decoder, PixelFormat};
    if min_side == 0 || !bytes.starts_with(&[0xFF, 0xD8]) {
        return None;
    }
    let mut decoder = Decoder::new(bytes);
    decoder.read_info().ok()?;
    let info = decoder.info()?;
    let (w, h) = (u32::from(info.width), u32::from(info.height));
    if w > MAX_SIDE
        || h > MAX_SIDE
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
    decoder.set_max_decoding_buffer_size(MAX_ALLOC as usize);
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

/// Decodes an in-memory image (an HTTP body, an MJPEG frame); `name` is used in errors.
pub fn decode_rgb(bytes: &[u8], name: &str) -> Result<RgbImage, ImageError> {
    let path = Path::new(name);
    if bytes.is_empty() {
        return Err(err(path, "empty image (0 bytes)"));
    }
    decode(ImageReader::new(Cursor::new(bytes)), path)
}

fn decode<R: BufRead + Seek>(reader: ImageReader<R>, path: &Path) -> Result<RgbImage, ImageError> {
    let mut reader = reader
        .with_guessed_format()
        .map_err(|e| err(path, io_reason(&e)))?;
    if reader.format().is_none() {
        return Err(err(
            path,
            "not an image in a supported format (JPEG, PNG, BMP, GIF, WebP)",
        ));
    }
    reader.limits(limits());
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| err(path, decode_reason(&e)))?;
    let (w, h) = decoder.dimensions();
    check_size(path, w, h)?;
    let orientation = decoder.orientation().ok();
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| err(path, decode_reason(&e)))?;
    if let Some(o) = orientation {
        img.apply_orientation(o);
    }
    Ok(img.into_rgb8())
}

fn check_size(path: &Path, w: u32, h: u32) -> Result<(), ImageError> {
    if w < MIN_SIDE || h < MIN_SIDE {
        return Err(err(
            path,
            format!("image is {w}x{h} pixels, too small (need at least {MIN_SIDE}x{MIN_SIDE})"),
        ));
    }
    Ok(())
}

/// How an I/O failure on a file or folder reads in a one-line error: the everyday cases in plain
/// words, the rest as the OS puts them. Every reader of files (images here, frame sources) says
/// it this way.
pub fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

fn decode_reason(e: &image::ImageError) -> String {
    match e {
        image::ImageError::Limits(_) => format!(
            "image too large to decode (limit {MAX_SIDE}x{MAX_SIDE} pixels, {} MiB): {e}",
            MAX_ALLOC >> 20
        ),
        image::ImageError::Unsupported(_) => format!("unsupported image: {e}"),
        image::ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            "truncated image (file ends early)".into()
        }
        _ => format!("corrupt or unreadable image: {e}"),
    }
}

/// Resizes to the model's square input side (stretching, see the module doc).
pub fn fit(img: &RgbImage, size: u32) -> RgbImage {
    if img.width() == size && img.height() == size {
        return img.clone();
    }
    image::imageops::resize(img, size, size, FilterType::Triangle)
}

/// Builds the model's input tensor for a batch of images already at the model's size.
pub fn to_tensor(spec: &InputSpec, images: &[&RgbImage]) -> Tensor {
    let n = images.len();
    let s = spec.size as usize;
    debug_assert!(images
        .iter()
        .all(|i| i.width() as usize == s && i.height() as usize == s));
    match (spec.dtype, spec.layout) {
        (InputDtype::U8, Layout::Nhwc) => {
            let mut data = Vec::with_capacity(n * s * s * 3);
            for img in images {
                data.extend_from_slice(img.as_raw());
            }
            tract_ndarray::Array4::from_shape_vec((n, s, s, 3), data)
                .expect("batch of size-checked images")
                .into()
        }
        (InputDtype::U8, Layout::Nchw) => {
            tract_ndarray::Array4::from_shape_fn((n, 3, s, s), |(b, c, y, x)| {
                images[b].get_pixel(x as u32, y as u32)[c]
            })
            .into()
        }
        (InputDtype::F32, layout) => {
            let mean = spec.mean.unwrap_or([0.0; 3]);
            let std = spec.std.unwrap_or([1.0; 3]);
            let px = |b: usize, c: usize, y: usize, x: usize| {
                (images[b].get_pixel(x as u32, y as u32)[c] as f32 / 255.0 - mean[c]) / std[c]
            };
            match layout {
                Layout::Nchw => {
                    tract_ndarray::Array4::from_shape_fn((n, 3, s, s), |(b, c, y, x)| {
                        px(b, c, y, x)
                    })
                    .into()
                }
                Layout::Nhwc => {
                    tract_ndarray::Array4::from_shape_fn((n, s, s, 3), |(b, y, x, c)| {
                        px(b, c, y, x)
                    })
                    .into()
                }
            }
        }
    }
}

/// Reads a raw `size`×`size` RGB8 frame (HWC, no header), as the golden test frames are stored.
pub fn load_raw_rgb(path: &Path, size: u32) -> Result<RgbImage, ImageError> {
    let bytes = std::fs::read(path).map_err(|e| err(path, io_reason(&e)))?;
    let expected = (size * size * 3) as usize;
    if bytes.len() != expected {
        return Err(err(
            path,
            format!(
                "raw RGB frame has {} bytes, expected {expected} ({size}x{size}x3)",
                bytes.len()
            ),
        ));
    }
    Ok(RgbImage::from_raw(size, size, bytes).expect("length checked"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nchw_f32_normalises_each_channel() {
        let img = RgbImage::from_fn(2, 2, |x, y| image::Rgb([255, 0, (x + y) as u8]));
        let spec = InputSpec {
            layout: Layout::Nchw,
            dtype: InputDtype::F32,
            size: 2,
            mean: Some([0.5, 0.5, 0.0]),
            std: Some([0.5, 0.25, 1.0]),
        };
        let t = to_tensor(&spec, &[&img]);
        assert_eq!(t.shape(), &[1, 3, 2, 2]);
        let v = t.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap();
        assert_eq!(v[0], 1.0); // (1 - .5) / .5
        assert_eq!(v[4], -2.0); // (0 - .5) / .25
        assert!((v[11] - 2.0 / 255.0).abs() < 1e-7); // pixel (1,1), blue = 2
    }

    #[test]
    fn nhwc_u8_is_raw_bytes() {
        let img = RgbImage::from_fn(2, 2, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let spec = InputSpec {
            layout: Layout::Nhwc,
            dtype: InputDtype::U8,
            size: 2,
            mean: None,
            std: None,
        };
        let t = to_tensor(&spec, &[&img, &img]);
        assert_eq!(t.shape(), &[2, 2, 2, 3]);
        assert_eq!(
            &t.try_as_plain_ram().unwrap().as_slice::<u8>().unwrap()[..6],
            &[0, 0, 7, 1, 0, 7]
        );
    }

    #[test]
    fn tiny_and_empty_inputs_are_refused() {
        let mut png = Vec::new();
        RgbImage::new(1, 1)
            .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let e = decode_rgb(&png, "one.png").unwrap_err();
        assert!(e.to_string().contains("1x1 pixels, too small"), "{e}");
        let e = decode_rgb(&[], "zero.jpg").unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
        let e = decode_rgb(b"hello, I am text", "text.jpg").unwrap_err();
        assert!(e.to_string().starts_with("text.jpg: "), "{e}");
    }
}
