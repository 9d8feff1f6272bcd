//! The backbone against reference runtimes: embeddings of the six golden frames must match
//! onnxruntime's features of the same file and LiteRT's features of the original .tflite, and
//! the full classifiers must give the expected ImageNet top-1.

mod common;

use common::*;
use edge_mnv2::backbone::{check_precision, cosine, embedding_id, Backbone, BackboneError};
use edge_mnv2::models::Precision;
use edge_mnv2::models::{self, Manifest};
use edge_mnv2::{classifier, preprocess, views};

#[cfg(feature = "onnx")]
fn backbone(name: &str, with_scores: bool) -> Backbone {
    backbone_in(name, with_scores, Precision::F32)
}

fn backbone_in(name: &str, with_scores: bool, precision: Precision) -> Backbone {
    let path = {
        let m = Manifest::builtin();
        models_dir().join(&m.get(name).unwrap().file)
    };
    let resolved = models::resolve(&Manifest::builtin(), Some(path.to_str().unwrap())).unwrap();
    assert_eq!(resolved.spec.name, name);
    Backbone::load_with_precision(&resolved, with_scores, precision).unwrap()
}

/// The precisions this CPU runs: f16 only with FP16 arithmetic (each test that skips it checks
/// the refusal instead, in `tflite_f16_matches_litert_or_is_refused`).
fn offered() -> Vec<Precision> {
    Precision::ALL
        .into_iter()
        .filter(|&p| check_precision(p).is_ok())
        .collect()
}

fn frame(name: &str) -> image::RgbImage {
    preprocess::load_raw_rgb(&models_dir().join(format!("images/rgb224/{name}.rgb")), 224).unwrap()
}

/// Min cosine over the six frames between our embedding and a golden feature folder.
fn min_cosine(b: &Backbone, golden: &str) -> f32 {
    GOLDEN_IMAGES
        .iter()
        .map(|img| {
            let ours = b.embed(&frame(img)).unwrap();
            let theirs = read_f32s(&models_dir().join(format!("golden/{golden}/{img}.f32")));
            assert_eq!(ours.len(), theirs.len());
            let c = cosine(&ours, &theirs);
            eprintln!("{} vs {golden} on {img}: cosine {c:.6}", b.name());
            c
        })
        .fold(f32::INFINITY, f32::min)
}

const LITERT: &str = "features_litert_mobilenet_v2_1.0_224_quant_AvgPool";

#[cfg(feature = "onnx")]
#[test]
fn dequant_backbone_matches_onnxruntime_and_litert() {
    let b = backbone("mnv2-1.0-224-dequant-backbone", false);
    assert!(min_cosine(&b, "features_ort_mnv2_1.0_224_dequant.f32.backbone") >= 0.999);
    assert!(min_cosine(&b, LITERT) >= 0.995);
}

#[cfg(feature = "onnx")]
#[test]
fn full_classifier_cut_gives_the_same_embedding() {
    let b = backbone("mnv2-1.0-224-dequant", false);
    assert!(min_cosine(&b, "features_ort_mnv2_1.0_224_dequant.f32.backbone") >= 0.999);
}

// The quantized files round activations to 8 bits at every layer; one value landing on the other
// side of a rounding boundary (tract's fake-quant f32 vs onnxruntime's integer kernels) shifts
// what follows. Measured: qdq 0.9988..0.9995 vs onnxruntime, zoo int8 1.0 on four frames and
// 0.987/0.990 on two. The thresholds below sit just under those figures.
#[cfg(feature = "onnx")]
#[test]
fn qdq_backbone_matches_onnxruntime_and_litert() {
    let b = backbone("mnv2-1.0-224-quant-qdq-backbone", false);
    assert!(min_cosine(&b, "features_ort_mnv2_1.0_224_quant.qdq.backbone") >= 0.998);
    assert!(min_cosine(&b, LITERT) >= 0.995);
}

#[cfg(feature = "onnx")]
#[test]
fn zoo_int8_backbone_matches_onnxruntime() {
    let b = backbone("mobilenetv2-12-int8-backbone", false);
    assert!(min_cosine(&b, "features_ort_mobilenetv2-12-int8.qdq-add.backbone") >= 0.98);
}

/// Expected top-1 per image: the manifest's accepted classes in the 1001-class label space.
const EXPECTED_1001: [(&str, &[usize]); 6] = [
    ("bird", &[20]),
    ("cat", &[286, 282]),
    ("dragonfly", &[320]),
    ("grace_hopper", &[653]),
    ("missvickie_potato_chips", &[693]),
    ("sunflower", &[986]),
];

#[cfg(feature = "onnx")]
fn assert_top1(name: &str, offset: usize) {
    assert_top1_in(name, offset, Precision::F32)
}

fn assert_top1_in(name: &str, offset: usize, precision: Precision) {
    let b = backbone_in(name, true, precision);
    for (img, expected) in EXPECTED_1001 {
        // Decoded from the BMP through the full preprocessing path, not the raw frame.
        let rgb = preprocess::load_rgb(&models_dir().join(format!("images/{img}.bmp"))).unwrap();
        let (idx, label, p) = b.classify(&rgb, 1).unwrap().remove(0);
        eprintln!("{name} {img}: {idx} {label} {p:.3}");
        assert!(
            expected.iter().any(|e| e - offset == idx),
            "{name} {img}: got {idx} {label}"
        );
    }
}

#[cfg(feature = "onnx")]
#[test]
fn dequant_classifier_top1() {
    assert_top1("mnv2-1.0-224-dequant", 0);
}

#[cfg(feature = "onnx")]
#[test]
fn zoo_int8_classifier_top1() {
    // 1000 classes, no background: indices are one lower.
    assert_top1("mobilenetv2-12-int8", 1);
}

// The official .tflite read by src/tflite/, against LiteRT's features of the same file.
// f32 carries the integer arithmetic in f32 kernels; the f32 requantization multiplier (24-bit
// mantissa against TFLite's 31-bit fixed point) flips a few roundings per layer. Measured:
// 0.99878..0.99951; the bar is 0.998.
#[test]
fn tflite_f32_matches_litert() {
    let b = backbone_in("mobilenet_v2_1.0_224_quant", false, Precision::F32);
    assert!(min_cosine(&b, LITERT) >= 0.998);
}

// int8: our 8-bit kernels with LiteRT's requantization (XNNPACK's: f32 multipliers, ties to
// even; its integer ADD); measured 1.000000 on all six.
#[test]
fn tflite_int8_matches_litert() {
    let b = backbone_in("mobilenet_v2_1.0_224_quant", false, Precision::Int8);
    assert!(min_cosine(&b, LITERT) >= 0.9999);
}

/// A frame split over threads (each of our operators in bands of output rows, one per thread)
/// gives the very numbers one thread gives, in both precisions whose graphs hold our operators.
/// Two frames and two splits (even and odd): this file also runs under qemu, frame by frame.
#[test]
fn frames_split_over_threads_give_the_same_embeddings() {
    for precision in [Precision::Int8, Precision::F32] {
        let mut b = backbone_in("mobilenet_v2_1.0_224_quant", false, precision);
        let frames: Vec<_> = GOLDEN_IMAGES[..2].iter().map(|img| frame(img)).collect();
        let one: Vec<Vec<f32>> = frames.iter().map(|f| b.embed(f).unwrap()).collect();
        for threads in [2, 3] {
            b.set_threads(threads);
            assert_eq!(b.threads(), threads);
            for ((f, expected), img) in frames.iter().zip(&one).zip(GOLDEN_IMAGES) {
                let split = b.embed(f).unwrap();
                assert!(
                    split == *expected,
                    "{precision:?}, {threads} threads, {img}"
                );
            }
        }
    }
}

/// tract's AMX int8 kernel crashes (see `backbone::leave_out_tract_amx`): once a backbone is
/// loaded, tract's kernel choice no longer includes it, on any CPU. On an AMX CPU without the
/// fix this fails (and the ONNX int8 tests here die with SIGSEGV in most runs).
#[test]
fn tract_never_picks_its_amx_int8_kernel() {
    let _b = backbone_in("mobilenet_v2_1.0_224_quant", false, Precision::Int8);
    use tract_core::tract_linalg::isa::{native, Isa};
    assert!(!native().has(Isa::X86_64AmxInt8), "{:?}", native());
}

/// The views of a frame side by side on threads (as `serve` and `predict` run them) give each
/// view's own embedding, in view order, whatever the thread count.
#[test]
fn views_side_by_side_give_each_views_embedding_in_order() {
    let b = backbone_in("mobilenet_v2_1.0_224_quant", false, Precision::Int8);
    let fitted = frame(GOLDEN_IMAGES[0]);
    let one_by_one: Vec<Vec<f32>> = (0..4)
        .map(|v| b.embed(&views::view(&fitted, v)).unwrap())
        .collect();
    assert!(one_by_one[0] != one_by_one[1]);
    for threads in [2, 3] {
        let side_by_side = classifier::embed_views(&b, &fitted, 4, threads).unwrap();
        assert!(side_by_side == one_by_one, "{threads} threads");
    }
}

// f16: the dequantized network in half precision (no 8-bit rounding between layers), so it is
// held to the bar for a float variant, not to f32's: cosine >= 0.997 to LiteRT, and the
// same top-1 (the classifier tests below). Where the CPU has no FP16 the load must be refused
// with the error that says so.
#[test]
fn tflite_f16_matches_litert_or_is_refused() {
    // Set by .ci/run where the (emulated) CPU has FP16, so that a refusal there fails.
    let expected = std::env::var_os("EDGE_MNV2_EXPECT_FP16").is_some();
    assert!(
        !expected || check_precision(Precision::F16).is_ok(),
        "EDGE_MNV2_EXPECT_FP16 is set but f16 is refused here"
    );
    if check_precision(Precision::F16).is_ok() {
        let b = backbone_in("mobilenet_v2_1.0_224_quant", false, Precision::F16);
        assert!(min_cosine(&b, LITERT) >= 0.997);
        return;
    }
    let resolved = models::resolve(
        &Manifest::builtin(),
        Some(
            models_dir()
                .join("mobilenet_v2_1.0_224_quant.tflite")
                .to_str()
                .unwrap(),
        ),
    )
    .unwrap();
    let err = Backbone::load_with_precision(&resolved, false, Precision::F16).unwrap_err();
    eprintln!("f16 refused here: {err}");
    assert!(matches!(err, BackboneError::NoFp16 { .. }), "{err}");
}

#[test]
fn tflite_classifier_top1_in_every_precision() {
    for p in offered() {
        assert_top1_in("mobilenet_v2_1.0_224_quant", 0, p);
    }
}

#[test]
fn tf2_int8_tflite_classifier_top1_in_every_precision() {
    for p in offered() {
        assert_top1_in("tf2_mobilenet_v2_1.0_224_ptq", 0, p);
    }
}

/// Set by .ci/run: the host run writes its results for the six frames here, the aarch64 run under
/// qemu reads them back and must agree with them.
const CROSS_WRITE: &str = "EDGE_MNV2_CROSS_ARCH_WRITE";
const CROSS_CHECK: &str = "EDGE_MNV2_CROSS_ARCH_CHECK";

/// Both precisions of the default model on the six frames: each frame's embedding and top-1.
/// Alone, it checks the expected top-1; with the variables above it also compares one machine's
/// run with another's: the same top-1 and embeddings equal to six decimals of cosine (README,
/// "Building for a Raspberry Pi"). Not bit for bit: tract's f32 kernels, and the int8 graph's
/// f32 pooling, may add in another order on another architecture's SIMD.
#[test]
fn default_model_agrees_across_machines() {
    let mut ours = serde_json::Map::new();
    for p in offered() {
        let b = backbone_in("mobilenet_v2_1.0_224_quant", true, p);
        for (img, expected) in EXPECTED_1001 {
            let out = b.run(&frame(img)).unwrap();
            let top1 = edge_mnv2::backbone::top_k(&out.scores.unwrap(), 1)[0].0;
            assert!(expected.contains(&top1), "{p} {img}: top-1 {top1}");
            ours.insert(
                format!("{p}/{img}"),
                serde_json::json!({ "top1": top1, "embedding": out.embedding }),
            );
        }
    }
    if let Some(path) = std::env::var_os(CROSS_WRITE) {
        let text = serde_json::to_vec(&ours).unwrap();
        edge_mnv2::fsutil::write_atomic(std::path::Path::new(&path), &text).unwrap();
    }
    if let Some(path) = std::env::var_os(CROSS_CHECK) {
        let text = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{CROSS_CHECK}={}: {e}", path.to_string_lossy()));
        let theirs: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&text).unwrap();
        // f16 runs only where the CPU has FP16: compared where both machines offer it.
        let both_offer = |key: &str| !key.starts_with("f16/");
        for map in [&ours, &theirs] {
            assert!(
                ours.keys()
                    .chain(theirs.keys())
                    .filter(|k| both_offer(k))
                    .all(|k| map.contains_key(k.as_str())),
                "{:?} vs {:?}",
                ours.keys().collect::<Vec<_>>(),
                theirs.keys().collect::<Vec<_>>()
            );
        }
        for (key, mine) in &ours {
            let Some(other) = theirs.get(key) else {
                continue;
            };
            let emb = |v: &serde_json::Value| -> Vec<f32> {
                serde_json::from_value(v["embedding"].clone()).unwrap()
            };
            let (a, b) = (emb(mine), emb(other));
            let c = cosine(&a, &b);
            let max_diff = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            eprintln!(
                "{key}: top-1 {} here, {} there; cosine {c:.9}, largest difference {max_diff:e}",
                mine["top1"], other["top1"]
            );
            assert_eq!(mine["top1"], other["top1"], "{key}");
            // 1.00000 to five decimals, as the README claims (f32 sums may be added in another
            // order on another architecture; int8's sums are exact).
            assert!(c >= 0.99999, "{key}: cosine {c}");
        }
    }
}

/// The two precisions' embeddings differ (cosine ~0.999), so the embedding cache must never hand
/// one's entries to the other; int8's key names the revision of its arithmetic, which changed
/// when it moved to our kernels.
#[test]
fn precisions_never_share_embedding_cache_keys() {
    let f32 = backbone_in("mobilenet_v2_1.0_224_quant", false, Precision::F32);
    let int8 = backbone_in("mobilenet_v2_1.0_224_quant", false, Precision::Int8);
    assert_ne!(f32.embedding_id(), int8.embedding_id());
    assert!(
        int8.embedding_id().ends_with("+int8.2"),
        "{}",
        int8.embedding_id()
    );
    // Every precision, offered here or not (a calibrated cache may come from another board).
    let sha = f32.sha256();
    let ids: Vec<String> = Precision::ALL
        .into_iter()
        .map(|p| embedding_id(sha, Some(p)))
        .collect();
    for (i, a) in ids.iter().enumerate() {
        assert!(ids[i + 1..].iter().all(|b| a != b), "{ids:?}");
    }
    assert_eq!(f32.embedding_id(), embedding_id(sha, Some(Precision::F32)));
    assert_eq!(
        int8.embedding_id(),
        embedding_id(sha, Some(Precision::Int8))
    );
    if check_precision(Precision::F16).is_ok() {
        let f16 = backbone_in("mobilenet_v2_1.0_224_quant", false, Precision::F16);
        assert_eq!(f16.embedding_id(), embedding_id(sha, Some(Precision::F16)));
    }
}
