//! Deterministic test-time (and training) views of an image already at the model's input size:
//! the image itself, its horizontal flip, a central 87.5% crop, and that crop's flip. Averaging
//! the head's probabilities over the same few views at training and test time was the one
//! consistent gain over a plain linear probe on a frozen backbone (issue 15); unlike random
//! augmentation they need no seed, so an image's views are the same everywhere (cache, serve).

use image::imageops::{self, FilterType};
use image::RgbImage;
use serde::{Deserialize, Serialize};

/// The share of each side the centre crop keeps.
pub const CROP: f32 = 0.875;

/// How many fixed views to use: 1 (plain), 2 (+ flip), 4 (+ centre crop, + its flip).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct Views(u8);

impl Views {
    pub const ONE: Views = Views(1);
    pub const TWO: Views = Views(2);
    pub const FOUR: Views = Views(4);

    pub fn count(self) -> usize {
        self.0 as usize
    }

    /// The names of the views in use, for reports and logs.
    pub fn names(self) -> Vec<&'static str> {
        (0..self.count()).map(view_name).collect()
    }
}

impl Default for Views {
    /// What a head from before views existed was trained and evaluated on.
    fn default() -> Self {
        Views::ONE
    }
}

impl TryFrom<u8> for Views {
    type Error = String;
    fn try_from(n: u8) -> Result<Views, String> {
        match n {
            1 | 2 | 4 => Ok(Views(n)),
            _ => Err(format!("views must be 1, 2 or 4, not {n}")),
        }
    }
}

impl From<Views> for u8 {
    fn from(v: Views) -> u8 {
        v.0
    }
}

impl std::str::FromStr for Views {
    type Err = String;
    fn from_str(s: &str) -> Result<Views, String> {
        let n: u8 = s
            .parse()
            .map_err(|_| format!("views must be 1, 2 or 4, not '{s}'"))?;
        Views::try_from(n)
    }
}

impl std::fmt::Display for Views {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The name of fixed view `v` (also part of its embedding cache key).
pub fn view_name(v: usize) -> &'static str {
    match v {
        0 => "plain",
        1 => "flip",
        2 => "crop",
        _ => "crop-flip",
    }
}

/// Fixed view `v` of `img` (same size out as in); view 0 is `img` itself.
pub fn view(img: &RgbImage, v: usize) -> RgbImage {
    match v {
        0 => img.clone(),
        1 => imageops::flip_horizontal(img),
        2 => centre_crop(img),
        _ => imageops::flip_horizontal(&centre_crop(img)),
    }
}

fn centre_crop(img: &RgbImage) -> RgbImage {
    let (w, h) = img.dimensions();
    let (cw, ch) = (
        ((w as f32 * CROP).round() as u32).max(1),
        ((h as f32 * CROP).round() as u32).max(1),
    );
    let crop = imageops::crop_imm(img, (w - cw) / 2, (h - ch) / 2, cw, ch).to_image();
    imageops::resize(&crop, w, h, FilterType::Triangle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_are_what_they_say() {
        let img = RgbImage::from_fn(16, 16, |x, y| image::Rgb([x as u8 * 10, y as u8 * 10, 0]));
        assert_eq!(view(&img, 0), img);
        let f = view(&img, 1);
        assert_eq!(f.get_pixel(0, 3), img.get_pixel(15, 3));
        let c = view(&img, 2);
        assert_eq!(c.dimensions(), (16, 16));
        // The crop zooms in: its corner is inside the original's border.
        assert!(c.get_pixel(0, 0)[0] > 0 && c.get_pixel(0, 0)[1] > 0);
        assert_eq!(view(&img, 3), imageops::flip_horizontal(&c));
        assert!("3".parse::<Views>().is_err());
        assert_eq!("4".parse::<Views>().unwrap().names().len(), 4);
    }
}
