//! Large JPEGs are decoded at a reduced size (a scaled inverse DCT) before the resize to the
//! model's input. That changes pixels slightly: the preprocessing version was bumped (new cache
//! keys), and heads of the previous version still run, because the change is no larger than
//! another JPEG decoder's at full size.

mod common;

use common::*;
use edge_mnv2::backbone::{cosine, Backbone};
use edge_mnv2::models::{self, Manifest, Precision};
use edge_mnv2::preprocess;

fn backbone() -> Backbone {
    let m = Manifest::builtin();
    let path = models_dir().join(&m.get(&m.default).unwrap().file);
    let resolved = models::resolve(&m, Some(path.to_str().unwrap())).unwrap();
    Backbone::load_with_precision(&resolved, false, Precision::F32).unwrap()
}

/// Every hymenoptera JPEG at least four times `min_side` in both directions (reduced to at least
/// twice the model's side, so these are the ones reduced at all).
fn large_jpegs(min_side: u32) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![shared().join("datasets/hymenoptera")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|e| e.eq_ignore_ascii_case("jpg")) {
                let (w, h) = image::image_dimensions(&p).unwrap();
                if w >= 4 * min_side && h >= 4 * min_side {
                    found.push(p);
                }
            }
        }
    }
    found.sort();
    found
}

#[test]
fn reduced_jpeg_decode_keeps_embeddings_within_the_contract() {
    let b = backbone();
    let side = b.input_size();
    let images = large_jpegs(side);
    assert!(!images.is_empty(), "no large JPEGs found");
    let mut worst = (f32::INFINITY, String::new());
    for p in &images {
        let full = preprocess::load_rgb(p).unwrap();
        let reduced = preprocess::load_rgb_reduced(p, side).unwrap();
        // Reduced, and still at least the model's side: the resize only ever shrinks.
        assert!(reduced.width() < full.width() && reduced.height() < full.height());
        assert!(reduced.width() >= 2 * side && reduced.height() >= 2 * side);
        let c = cosine(&b.embed(&full).unwrap(), &b.embed(&reduced).unwrap());
        if c < worst.0 {
            worst = (c, p.display().to_string());
        }
    }
    eprintln!(
        "{} reduced decodes; lowest cosine to the full decode {:.6} ({})",
        images.len(),
        worst.0,
        worst.1
    );
    // Not 0.999: the quantized backbone moves by ~0.003 in cosine for ±1-level pixel changes
    // (another JPEG decoder at full size, see below), so the preprocessing version was bumped.
    assert!(worst.0 >= 0.995, "{worst:?}");
}

#[test]
fn small_jpegs_and_other_formats_decode_exactly_as_before() {
    let side = 224;
    // 500x375: not twice 224 on both sides, so decoded in full by the same decoder as before.
    let small = large_jpegs(1)
        .into_iter()
        .find(|p| {
            let (w, h) = image::image_dimensions(p).unwrap();
            w < 4 * side || h < 4 * side
        })
        .unwrap();
    assert_eq!(
        preprocess::load_rgb_reduced(&small, side).unwrap(),
        preprocess::load_rgb(&small).unwrap()
    );
    let bmp = models_dir().join("images/bird.bmp");
    assert_eq!(
        preprocess::load_rgb_reduced(&bmp, side).unwrap(),
        preprocess::load_rgb(&bmp).unwrap()
    );
}

#[test]
fn reduced_decode_refuses_what_the_full_decode_refuses() {
    let dir = tempfile::tempdir().unwrap();
    // A JPEG start marker, then nothing a decoder can use: refused with the full decoder's words.
    let bad = dir.path().join("bad.jpg");
    std::fs::write(&bad, [0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x02, 0x13, 0x37]).unwrap();
    let full = preprocess::load_rgb(&bad)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    let reduced = preprocess::load_rgb_reduced(&bad, 224)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert_eq!(full, reduced);
    assert!(
        reduced.starts_with(&format!("{}: ", bad.display())),
        "{reduced}"
    );
}

/// The reduced decode changes pixels no more than swapping the JPEG decoder does: on the same
/// images, jpeg-decoder at full size against the image crate's decoder.
#[test]
fn reduction_costs_no_more_than_another_decoder() {
    let b = backbone();
    for p in large_jpegs(b.input_size()) {
        let bytes = std::fs::read(&p).unwrap();
        let mut d = jpeg_decoder::Decoder::new(&bytes[..]);
        let pixels = d.decode().unwrap();
        let info = d.info().unwrap();
        let other =
            image::RgbImage::from_raw(info.width.into(), info.height.into(), pixels).unwrap();
        let full = b.embed(&preprocess::load_rgb(&p).unwrap()).unwrap();
        let decoder_swap = cosine(&full, &b.embed(&other).unwrap());
        let reduced = cosine(
            &full,
            &b.embed(&preprocess::load_rgb_reduced(&p, b.input_size()).unwrap())
                .unwrap(),
        );
        eprintln!(
            "{}: decoder swap {decoder_swap:.6}, reduced {reduced:.6}",
            p.display()
        );
        assert!(
            reduced >= decoder_swap - 0.001,
            "{reduced} vs {decoder_swap}"
        );
    }
}

#[test]
fn heads_of_the_previous_preprocessing_still_run() {
    use edge_mnv2::classifier::{backbone_ref, check_compatible};
    use edge_mnv2::head::{Dense, Head, TrainConfig};
    let b = backbone();
    let head = |preprocessing: &str| {
        let mut backbone = backbone_ref(&b);
        backbone.preprocessing = preprocessing.to_string();
        let d = backbone.embedding_dim;
        Head {
            backbone,
            classes: vec!["a".into(), "b".into()],
            dense: Dense::untrained(d, 2),
            config: TrainConfig::default(),
            temperature: 1.0,
            views: Default::default(),
            novelty: None,
        }
    };
    for accepted in preprocess::PREPROCESS_ACCEPTED {
        check_compatible(&head(accepted), &b).unwrap();
    }
    assert!(check_compatible(&head("decode, bgr8, crop-resize"), &b).is_err());
}
