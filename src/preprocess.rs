//! From a file (or bytes) to the exact tensor a model wants.
//!
//! One path for everything — training images, evaluation images, camera frames — so the head
//! never sees pixels prepared differently from the ones it was trained on:
//! decode (JPEG, PNG, BMP, GIF first frame, WebP) → EXIF orientation (JPEG) → RGB8 →
//! resize the whole image to the model's square input, **not keeping the aspect ratio**, with a
//! bilinear (triangle) filter that widens with the downscale factor, like PIL's
//! `resize(BILINEAR)` and Keras' `image_dataset_from_directory` defaults → layout/dtype/normalisation
//! from the manifest's [`InputSpec`].

use std::io::{BufRead, BufReader, Cursor, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};
use thiserror::Error;
use tract_core::prelude::{tract_ndarray, Tensor};

use crate::models::{InputDtype, InputSpec, Layout};

mod jpeg;
use jpeg::{jpeg_is_complete, jpeg_reduced, progressive_jpeg_bytes};

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

/// The most pixels an image may declare in its header: decoders allocate the whole image before
/// the first pixel arrives, so a small file declaring a huge image (a decompression bomb) is
/// refused from its header. 64 megapixels takes a 48-megapixel phone photo and any camera frame,
/// and bounds one decode on a 1-2 GB board (README, "Preprocessing", has the peak measured).
pub const MAX_PIXELS: u64 = 64_000_000;
/// Smaller images carry too little to classify; refusing them beats a confident wrong answer.
pub const MIN_SIDE: u32 = 16;
/// What a decoder may allocate for one image, derived from [`MAX_PIXELS`]: the largest image at
/// 4 bytes a pixel (RGBA8). Deeper images (16-bit PNG) are held to the same bytes, so fewer pixels.
const MAX_DECODE_BYTES: u64 = MAX_PIXELS * 4;

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

/// Whether an image (or frame) of `w`×`h` pixels may be decoded: the one size rule for every
/// image, file or frame, checked from the header before anything the size of the image is
/// allocated. The error is the reason, in one line.
pub fn check_dimensions(w: u32, h: u32) -> Result<(), String> {
    if w < MIN_SIDE || h < MIN_SIDE {
        return Err(format!(
            "image is {w}x{h} pixels, too small (need at least {MIN_SIDE}x{MIN_SIDE})"
        ));
    }
    let pixels = u64::from(w) * u64::from(h);
    if pixels > MAX_PIXELS {
        return Err(format!(
            "image is {w}x{h} ({} megapixels), over the {}-megapixel limit",
            (pixels + 500_000) / 1_000_000,
            MAX_PIXELS / 1_000_000
        ));
    }
    Ok(())
}

fn limits() -> Limits {
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    limits
}

/// Decodes an image file to upright RGB8.
pub fn load_rgb(path: &Path) -> Result<RgbImage, ImageError> {
    load(path, None)
}

/// Decodes an image file to upright RGB8 at least `min_side` pixels on both sides where it was,
/// for a model that resizes to `min_side` anyway: a JPEG at least four times `min_side` on both
/// sides is decoded at 1/2, 1/4 or 1/8 of its size, keeping both sides at least twice `min_side`,
/// which costs a fraction of a full decode (a 12-megapixel phone photo is decoded at 1008×756).
/// Other formats, and smaller JPEGs, decode exactly as [`load_rgb`].
pub fn load_rgb_reduced(path: &Path, min_side: u32) -> Result<RgbImage, ImageError> {
    load(path, Some(min_side))
}

/// [`load_rgb_reduced`] for an in-memory image.
pub fn decode_rgb_reduced(bytes: &[u8], name: &str, min_side: u32) -> Result<RgbImage, ImageError> {
    decode_named(bytes, name, Some(min_side))
}

/// Decodes an in-memory image (an HTTP body, an MJPEG frame); `name` is used in errors.
pub fn decode_rgb(bytes: &[u8], name: &str) -> Result<RgbImage, ImageError> {
    decode_named(bytes, name, None)
}

fn decode_named(bytes: &[u8], name: &str, min_side: Option<u32>) -> Result<RgbImage, ImageError> {
    let path = Path::new(name);
    if bytes.is_empty() {
        return Err(err(path, "empty image (0 bytes)"));
    }
    decode(
        &mut Cursor::new(bytes),
        jpeg_bytes(bytes),
        path,
        None,
        min_side,
    )
    .map(into_rgb8)
}

fn jpeg_bytes(bytes: &[u8]) -> Option<&[u8]> {
    bytes.starts_with(&[0xFF, 0xD8]).then_some(bytes)
}

/// A file is read whole only when it is a JPEG (whose end marker is looked for, and whose
/// reduced decoder wants the bytes); any other format is decoded as it is read, so a large PNG's
/// file does not sit in memory beside its pixels.
fn load(path: &Path, min_side: Option<u32>) -> Result<RgbImage, ImageError> {
    let meta = std::fs::metadata(path).map_err(|e| err(path, io_reason(&e)))?;
    if meta.is_dir() {
        return Err(err(path, "is a directory, expected an image file"));
    }
    if meta.len() == 0 {
        return Err(err(path, "empty file (0 bytes)"));
    }
    let io = |e: std::io::Error| err(path, io_reason(&e));
    let mut file = BufReader::new(std::fs::File::open(path).map_err(io)?);
    // As `ImageReader::open` does: the extension names the format when the content does not.
    let hint = ImageFormat::from_path(path).ok();
    let img = if file.fill_buf().map_err(io)?.starts_with(&[0xFF, 0xD8]) {
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        file.read_to_end(&mut bytes).map_err(io)?;
        let img = decode(&mut Cursor::new(&bytes), Some(&bytes), path, hint, min_side)?;
        // The file's bytes go before the conversion allocates: one buffer fewer at the peak.
        drop(bytes);
        img
    } else {
        decode(&mut file, None, path, hint, min_side)?
    };
    Ok(into_rgb8(img))
}

/// What an image is decoded from: a file as it is read, or bytes in memory. One trait object
/// rather than a type parameter: each reader type would compile every decoder (JPEG, PNG, GIF,
/// WebP, BMP) again, 131 KB of the aarch64 binary for the three there were.
trait ImageSource: BufRead + Seek {}

impl<T: BufRead + Seek> ImageSource for T {}

/// An image reader at the start of `src`, its format the content's, else `hint`'s.
fn reader<'a>(
    src: &'a mut dyn ImageSource,
    path: &Path,
    hint: Option<ImageFormat>,
    limits: Limits,
) -> Result<ImageReader<&'a mut dyn ImageSource>, ImageError> {
    src.seek(SeekFrom::Start(0))
        .map_err(|e| err(path, io_reason(&e)))?;
    let mut reader = ImageReader::new(src);
    if let Some(format) = hint {
        reader.set_format(format);
    }
    let mut reader = reader
        .with_guessed_format()
        .map_err(|e| err(path, io_reason(&e)))?;
    if reader.format().is_none() {
        return Err(err(
            path,
            "not an image in a supported format (JPEG, PNG, BMP, GIF, WebP)",
        ));
    }
    reader.limits(limits);
    Ok(reader)
}

/// The one decode: every image and encoded frame comes through here, `jpeg` holding all of its
/// bytes when they are a JPEG's. The size is checked from the header before any decoder
/// allocates; a JPEG must reach its end marker; with `min_side`, a large JPEG is decoded at
/// reduced size ([`load_rgb_reduced`]).
fn decode(
    src: &mut dyn ImageSource,
    jpeg: Option<&[u8]>,
    path: &Path,
    hint: Option<ImageFormat>,
    min_side: Option<u32>,
) -> Result<DynamicImage, ImageError> {
    // The header alone, without the allocation limit, so an oversized image is refused for its
    // size in pixels rather than for the bytes its decoder would have asked for.
    let (w, h) = reader(src, path, hint, Limits::no_limits())?
        .into_dimensions()
        .map_err(|e| err(path, decode_reason(&e)))?;
    check_dimensions(w, h).map_err(|reason| err(path, reason))?;
    if let Some(bytes) = jpeg {
        if !jpeg_is_complete(bytes) {
            return Err(err(
                path,
                "truncated or corrupt JPEG (its data ends before the end-of-image marker)",
            ));
        }
        let held = progressive_jpeg_bytes(bytes);
        if held > MAX_DECODE_BYTES {
            return Err(err(
                path,
                format!(
                    "progressive JPEG needs {} MB of memory to decode, over the {} MB limit",
                    held.div_ceil(1_000_000),
                    MAX_DECODE_BYTES / 1_000_000
                ),
            ));
        }
        if let Some(img) = min_side.and_then(|side| jpeg_reduced(bytes, side)) {
            return Ok(DynamicImage::ImageRgb8(img));
        }
    }
    let mut decoder = reader(src, path, hint, limits())?
        .into_decoder()
        .map_err(|e| err(path, decode_reason(&e)))?;
    let orientation = decoder.orientation().ok();
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| err(path, decode_reason(&e)))?;
    if let Some(o) = orientation {
        img.apply_orientation(o);
    }
    Ok(img)
}

/// RGB8 of a decoded image, without a second image-sized buffer where that is easy: RGBA8 (most
/// PNG, GIF and WebP images) drops its alpha in place, byte for byte as `into_rgb8` does into a
/// new buffer; a 64-megapixel RGBA image would otherwise need 192 MB more at its peak.
fn into_rgb8(img: DynamicImage) -> RgbImage {
    match img {
        DynamicImage::ImageRgba8(rgba) => {
            let (w, h) = rgba.dimensions();
            let n = w as usize * h as usize;
            let mut px = rgba.into_raw();
            for i in 1..n {
                px.copy_within(i * 4..i * 4 + 3, i * 3);
            }
            px.truncate(n * 3);
            px.shrink_to_fit();
            RgbImage::from_raw(w, h, px).expect("w x h x 3 bytes")
        }
        other => other.into_rgb8(),
    }
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
            "image needs more than {} MB of memory to decode, over the limit",
            MAX_DECODE_BYTES / 1_000_000
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

    /// Every format, cut short at several points, is an error: never an image with the missing
    /// part filled in (the JPEG decoders fill a cut scan with grey and report success).
    #[test]
    fn truncated_images_of_every_format_are_refused() {
        let img = RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 99]));
        for format in [
            image::ImageFormat::Jpeg,
            image::ImageFormat::Png,
            image::ImageFormat::Gif,
            image::ImageFormat::Bmp,
            image::ImageFormat::WebP,
        ] {
            let mut bytes = Vec::new();
            img.write_to(&mut Cursor::new(&mut bytes), format).unwrap();
            let whole = decode_rgb(&bytes, "whole").unwrap();
            assert_eq!(whole.dimensions(), (64, 48), "{format:?}");
            // (A PNG cut inside its end chunk has every pixel: not these cuts.)
            for keep in [bytes.len() / 3, bytes.len() * 2 / 3] {
                let cut = &bytes[..keep];
                assert!(
                    decode_rgb(cut, "cut").is_err(),
                    "{format:?} cut to {keep} of {} bytes decoded",
                    bytes.len()
                );
                assert!(
                    decode_rgb_reduced(cut, "cut", 8).is_err(),
                    "{format:?} {keep}"
                );
            }
        }
    }

    #[test]
    fn the_size_limit_is_in_pixels_and_worded_with_them() {
        assert!(check_dimensions(8000, 8000).is_ok());
        assert_eq!(
            check_dimensions(16_384, 16_384).unwrap_err(),
            "image is 16384x16384 (268 megapixels), over the 64-megapixel limit"
        );
        // A long, thin image is within the limit, whatever its longest side.
        assert!(check_dimensions(65_535, 16).is_ok());
        assert!(check_dimensions(15, 1000).is_err());
    }

    #[test]
    fn rgba_drops_its_alpha_in_place_as_into_rgb8_does() {
        let rgba = image::RgbaImage::from_fn(37, 19, |x, y| {
            image::Rgba([x as u8 * 7, y as u8 * 13, (x * y) as u8, (x + y) as u8])
        });
        let img = DynamicImage::ImageRgba8(rgba);
        assert_eq!(into_rgb8(img.clone()), img.into_rgb8());
    }
}
