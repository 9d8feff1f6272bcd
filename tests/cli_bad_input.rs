//! Every kind of bad input gives a one-line error naming the file and the reason, exit code 1,
//! and never a panic; in multi-image commands the good images are still processed.

mod common;

use std::path::{Path, PathBuf};

use common::*;

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn bmp(name: &str) -> PathBuf {
    models_dir().join("images").join(format!("{name}.bmp"))
}

/// A BMP header declaring `w`×`h` 24-bit pixels, with no pixel data behind it.
fn bmp_header(w: u32, h: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"BM");
    b.extend_from_slice(&(54 + w * h * 3).to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&54u32.to_le_bytes());
    b.extend_from_slice(&40u32.to_le_bytes());
    b.extend_from_slice(&w.to_le_bytes());
    b.extend_from_slice(&h.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&24u16.to_le_bytes());
    b.extend_from_slice(&[0; 24]);
    b
}

/// Asserts exit 1, no panic, and an error line for `file` containing `reason`.
fn assert_fails(args: &[&str], file: &Path, reason: &str) {
    let out = edge(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let line = err
        .lines()
        .find(|l| l.contains(&*file.to_string_lossy()))
        .unwrap_or_else(|| panic!("no error line naming {}: {err}", file.display()));
    assert!(line.starts_with("edge-mnv2: error: "), "{line}");
    assert!(line.contains(reason), "expected '{reason}' in: {line}");
}

fn classify_fails(file: &Path, reason: &str) {
    assert_fails(&["classify", file.to_str().unwrap()], file, reason);
}

#[test]
fn missing_file() {
    classify_fails(Path::new("/nonexistent/cat.jpg"), "no such file");
}

#[test]
fn zero_byte_file() {
    let d = tmp();
    let p = d.path().join("empty.jpg");
    std::fs::write(&p, b"").unwrap();
    classify_fails(&p, "empty file");
}

#[test]
fn text_file_named_jpg() {
    let d = tmp();
    let p = d.path().join("notes.jpg");
    std::fs::write(&p, "these are my notes, not a picture\n").unwrap();
    classify_fails(&p, "corrupt or unreadable image");
}

#[test]
fn directory_instead_of_file() {
    let d = tmp();
    classify_fails(d.path(), "is a directory");
}

#[test]
fn truncated_image() {
    let d = tmp();
    let p = d.path().join("half.bmp");
    let bytes = std::fs::read(bmp("cat")).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    classify_fails(&p, "truncated");
}

#[test]
fn corrupt_jpeg() {
    let d = tmp();
    let p = d.path().join("garbage.jpg");
    let mut bytes = vec![0xFF, 0xD8, 0xFF, 0xE0];
    bytes.extend((0..4000u32).map(|i| (i * 7919 % 251) as u8));
    std::fs::write(&p, &bytes).unwrap();
    classify_fails(&p, "image");
}

#[test]
fn one_pixel_image() {
    let d = tmp();
    let p = d.path().join("dot.png");
    image::RgbImage::new(1, 1).save(&p).unwrap();
    classify_fails(&p, "1x1 pixels, too small");
}

#[test]
fn huge_image_is_refused_before_decoding() {
    let d = tmp();
    let p = d.path().join("huge.bmp");
    std::fs::write(&p, bmp_header(20_000, 20_000)).unwrap();
    classify_fails(
        &p,
        "image is 20000x20000 (400 megapixels), over the 64-megapixel limit",
    );
}

#[test]
fn good_images_are_processed_despite_bad_ones() {
    let d = tmp();
    let bad = d.path().join("bad.png");
    std::fs::write(&bad, b"nope").unwrap();
    let cat = bmp("cat");
    let bird = bmp("bird");
    let out = edge(&[
        "classify",
        "--top",
        "1",
        cat.to_str().unwrap(),
        bad.to_str().unwrap(),
        bird.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.contains("Egyptian cat") && text.contains("chickadee"),
        "{text}"
    );
    assert!(
        stderr(&out).contains("1 of 3 images failed"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn embed_writes_atomically_and_reports_bad_images() {
    let d = tmp();
    let out_file = d.path().join("emb.jsonl");
    let missing = d.path().join("missing.png");
    // A previous output with a second name (hard link): an atomic write renames a new file over
    // the name, so the old file, still reachable by the link, keeps its bytes; writing in place
    // would change them (and a crash mid-write would leave a torn file).
    std::fs::write(&out_file, "previous\n").unwrap();
    let link = d.path().join("previous.link");
    std::fs::hard_link(&out_file, &link).unwrap();
    let out = edge(&[
        "embed",
        "--json",
        "--out",
        out_file.to_str().unwrap(),
        bmp("cat").to_str().unwrap(),
        missing.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = std::fs::read_to_string(&out_file).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(line["embedding"].as_array().unwrap().len(), 1280);
    assert_eq!(text.lines().count(), 1);
    assert_eq!(std::fs::read_to_string(&link).unwrap(), "previous\n");
    // No temporary file left behind.
    let mut names: Vec<String> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["emb.jsonl", "previous.link"]);
}

#[test]
fn unknown_model_file() {
    let labels = models_dir().join("imagenet_labels.txt");
    let cat = bmp("cat");
    assert_fails(
        &[
            "classify",
            "--model",
            labels.to_str().unwrap(),
            cat.to_str().unwrap(),
        ],
        &labels,
        "not a known model file",
    );
}

#[test]
fn corrupt_model_with_a_known_name_fails_its_checksum() {
    let d = tmp();
    // The default model, found by name.
    let p = d.path().join("mobilenet_v2_1.0_224_quant.tflite");
    let mut bytes = std::fs::read(models_dir().join("mobilenet_v2_1.0_224_quant.tflite")).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&p, &bytes).unwrap();
    let cat = bmp("cat");
    // By path, and by name through $EDGE_MNV2_MODELS (searched first).
    assert_fails(
        &[
            "classify",
            "--model",
            p.to_str().unwrap(),
            cat.to_str().unwrap(),
        ],
        &p,
        "checksum mismatch",
    );
    let out = edge_command()
        .args(["classify", cat.to_str().unwrap()])
        .env("EDGE_MNV2_MODELS", d.path())
        .current_dir(d.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("checksum mismatch"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn unknown_model_name() {
    let out = edge(&[
        "classify",
        "--model",
        "resnet50",
        bmp("cat").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("unknown model 'resnet50'"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn help_on_every_command_and_usage_errors() {
    for cmd in [
        vec!["--help"],
        vec!["classify", "--help"],
        vec!["embed", "--help"],
        vec!["models", "--help"],
    ] {
        let out = edge(&cmd);
        assert_eq!(out.status.code(), Some(0), "{cmd:?}");
        assert!(stdout(&out).contains("Usage"), "{cmd:?}");
    }
    let out = edge(&["classify"]);
    assert_eq!(out.status.code(), Some(1));
    let out = edge(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn models_lists_the_shared_files_as_verified() {
    let out = edge(&["models", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let list: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let default = list
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["default"] == true)
        .unwrap();
    assert_eq!(default["status"], "ok");
}

/// The shipped binary reads .tflite only; an ONNX model must say how to get ONNX support.
#[cfg(not(feature = "onnx"))]
#[test]
fn onnx_model_without_the_onnx_feature() {
    let m = models_dir().join("derived/mnv2_1.0_224_dequant.f32.backbone.onnx");
    assert_fails(
        &[
            "embed",
            "--model",
            m.to_str().unwrap(),
            bmp("cat").to_str().unwrap(),
        ],
        &m,
        "--features onnx",
    );
}

/// f16 on a CPU without FP16 arithmetic (x86, armv7, a Pi 4's Cortex-A72): one line saying what
/// is missing and what to use instead, exit 1, no panic. Where the CPU has FP16 it classifies.
#[test]
fn f16_without_fp16_is_refused_in_one_line() {
    let cat = bmp("cat");
    let out = edge(&["classify", "--precision", "f16", cat.to_str().unwrap()]);
    let err = stderr(&out);
    if edge_mnv2::backbone::check_precision(edge_mnv2::models::Precision::F16).is_ok() {
        assert!(out.status.success(), "{err}");
        return;
    }
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].starts_with("edge-mnv2: error: "), "{err}");
    for part in ["precision f16", "FP16", "does not have", "use f32 or int8"] {
        assert!(lines[0].contains(part), "expected '{part}' in: {err}");
    }
}
