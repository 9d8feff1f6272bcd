//! Training-time augmentation: random horizontal flip, rotation and zoom, as Keras'
//! `RandomFlip("horizontal")`, `RandomRotation`, `RandomZoom` do, applied to the image already
//! resized to the model's input (one affine resample instead of two).
//!
//! Each view's randomness comes from (seed, image content hash, view index) alone, so a view is
//! the same whichever thread makes it and in whatever order — which is what lets the embedding
//! cache key on those three things.

use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AugmentParams {
    /// Random horizontal flips (never vertical: most photos have a fixed up).
    pub flip: bool,
    /// Rotation drawn uniformly in ±degrees.
    pub rotate_deg: f32,
    /// Zoom factor drawn uniformly in 1 ± zoom (>1 crops in, <1 shows more, edges reflected).
    pub zoom: f32,
}

impl Default for AugmentParams {
    fn default() -> Self {
        AugmentParams {
            flip: true,
            rotate_deg: 15.0,
            zoom: 0.15,
        }
    }
}

impl AugmentParams {
    /// A stable text form for cache keys.
    pub fn key(&self) -> String {
        format!(
            "flip={} rot={} zoom={}",
            self.flip, self.rotate_deg, self.zoom
        )
    }
}

/// The random generator for one augmented view.
pub fn view_rng(seed: u64, image_sha256: &str, view: usize) -> ChaCha8Rng {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(image_sha256.as_bytes());
    h.update((view as u64).to_le_bytes());
    ChaCha8Rng::from_seed(h.finalize().into())
}

/// One random view of `img` (same size out as in).
pub fn augment(img: &RgbImage, p: &AugmentParams, rng: &mut impl Rng) -> RgbImage {
    let flip = p.flip && rng.random_bool(0.5);
    let angle = if p.rotate_deg > 0.0 {
        rng.random_range(-p.rotate_deg..=p.rotate_deg).to_radians()
    } else {
        0.0
    };
    let zoom = if p.zoom > 0.0 {
        rng.random_range(1.0 - p.zoom..=1.0 + p.zoom)
    } else {
        1.0
    };
    affine(img, flip, angle, zoom)
}

/// Inverse-maps every output pixel to the source (rotate about the centre, scale by 1/zoom,
/// optional mirror), bilinear sampling, reflecting at the borders like Keras' default fill.
fn affine(img: &RgbImage, flip: bool, angle: f32, zoom: f32) -> RgbImage {
    let (w, h) = img.dimensions();
    let (cx, cy) = ((w as f32 - 1.0) / 2.0, (h as f32 - 1.0) / 2.0);
    let (sin, cos) = angle.sin_cos();
    let inv = 1.0 / zoom;
    RgbImage::from_fn(w, h, |x, y| {
        let dx = x as f32 - cx;
        let dy = y as f32 - cy;
        let mut sx = (cos * dx + sin * dy) * inv;
        let sy = (-sin * dx + cos * dy) * inv;
        if flip {
            sx = -sx;
        }
        bilinear(img, sx + cx, sy + cy)
    })
}

fn reflect(v: f32, n: u32) -> f32 {
    let max = (n - 1) as f32;
    if max <= 0.0 {
        return 0.0;
    }
    let period = 2.0 * max;
    let m = v.rem_euclid(period);
    if m > max {
        period - m
    } else {
        m
    }
}

fn bilinear(img: &RgbImage, x: f32, y: f32) -> Rgb<u8> {
    let (w, h) = img.dimensions();
    let x = reflect(x, w);
    let y = reflect(y, h);
    let x0 = x.floor() as u32;
    let y0 = y.floor() as u32;
    let x1 = (x0 + 1).min(w - 1);
    let y1 = (y0 + 1).min(h - 1);
    let fx = x - x0 as f32;
    let fy = y - y0 as f32;
    let p = |xx, yy| img.get_pixel(xx, yy).0;
    let (a, b, c, d) = (p(x0, y0), p(x1, y0), p(x0, y1), p(x1, y1));
    let mut out = [0u8; 3];
    for i in 0..3 {
        let top = a[i] as f32 * (1.0 - fx) + b[i] as f32 * fx;
        let bot = c[i] as f32 * (1.0 - fx) + d[i] as f32 * fx;
        out[i] = (top * (1.0 - fy) + bot * fy).round().clamp(0.0, 255.0) as u8;
    }
    Rgb(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient() -> RgbImage {
        RgbImage::from_fn(32, 32, |x, y| Rgb([(x * 8) as u8, (y * 8) as u8, 100]))
    }

    #[test]
    fn identity_transform_is_exact() {
        let img = gradient();
        assert_eq!(affine(&img, false, 0.0, 1.0), img);
    }

    #[test]
    fn flip_mirrors() {
        let img = gradient();
        let f = affine(&img, true, 0.0, 1.0);
        assert_eq!(f.get_pixel(0, 5), img.get_pixel(31, 5));
    }

    #[test]
    fn views_are_deterministic_per_seed_image_and_view() {
        let img = gradient();
        let p = AugmentParams::default();
        let a = augment(&img, &p, &mut view_rng(7, "abc", 1));
        let b = augment(&img, &p, &mut view_rng(7, "abc", 1));
        let c = augment(&img, &p, &mut view_rng(7, "abc", 2));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn reflect_folds_into_range() {
        assert_eq!(reflect(-1.0, 10), 1.0);
        assert_eq!(reflect(10.0, 10), 8.0);
        assert_eq!(reflect(4.5, 10), 4.5);
    }
}
