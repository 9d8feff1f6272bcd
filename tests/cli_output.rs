//! What the commands print and how they end beyond the happy path: a closed stdout, ONNX models
//! in a build that cannot read them, the class a rejected image was closest to, and `calibrate`
//! away from a source checkout. Real binary, real model, the shared head, real images.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::*;
use serde_json::Value;

/// What a shell shows for a process SIGPIPE ended (128 + 13), as `cat` and `grep` end in `| head`.
const STDOUT_CLOSED: i32 = 141;

fn bmp(name: &str) -> PathBuf {
    models_dir().join("images").join(format!("{name}.bmp"))
}

/// Runs `args` with a stdout whose reader is gone before the first byte (`| head -0`, or a
/// `| head` that read enough): its exit code and stderr.
fn with_stdout_closed(args: &[&str]) -> (Option<i32>, String) {
    let mut child = edge_command()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running edge-mnv2");
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    (out.status.code(), stderr(&out))
}

#[test]
fn a_closed_stdout_ends_every_command_quietly_with_141() {
    let tmp = tempfile::tempdir().unwrap();
    let head = shared_head().to_str().unwrap();
    let testdir = tmp.path().join("test");
    copy_hymenoptera(&testdir, &[("ants", 2), ("bees", 2)]);
    let calibration_images = tmp.path().join("frames");
    std::fs::create_dir(&calibration_images).unwrap();
    for name in ["cat", "bird"] {
        std::fs::copy(bmp(name), calibration_images.join(format!("{name}.bmp"))).unwrap();
    }
    let calibration_out = tmp.path().join("board.json");
    let (cat, bird) = (bmp("cat"), bmp("bird"));
    let (cat, bird) = (s(&cat), s(&bird));
    for args in [
        vec!["classify", cat, bird],
        vec!["classify", "--json", cat, bird],
        vec!["embed", cat, bird],
        vec!["predict", "--head", head, cat, bird],
        vec!["predict", "--head", head, "--json", cat, bird],
        vec!["evaluate", "--head", head, s(&testdir)],
        vec!["evaluate", "--head", head, "--json", s(&testdir)],
        vec!["models", "list"],
        vec!["models", "list", "--json"],
        vec![
            "calibrate",
            "--images",
            s(&calibration_images),
            "--runs",
            "1",
            "--out",
            s(&calibration_out),
        ],
    ] {
        let (code, err) = with_stdout_closed(&args);
        assert_eq!(code, Some(STDOUT_CLOSED), "{args:?}: {err}");
        assert!(
            !err.contains("error") && !err.contains("failed") && !err.contains("panicked"),
            "{args:?} printed {err}"
        );
    }
}

#[test]
fn models_list_says_an_onnx_model_needs_the_feature_this_build_lacks() {
    let out = edge(&["models", "list", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rows: Vec<Value> = serde_json::from_str(&stdout(&out)).unwrap();
    let onnx_found: Vec<&Value> = rows
        .iter()
        .filter(|r| r["file"].as_str().unwrap().ends_with(".onnx") && !r["path"].is_null())
        .collect();
    assert!(
        onnx_found.len() >= 5,
        "the shared models have the derived ONNX files: {rows:?}"
    );
    for row in onnx_found {
        let status = row["status"].as_str().unwrap();
        if cfg!(feature = "onnx") {
            assert_eq!(status, "ok", "{row}");
        } else {
            assert_eq!(
                status, "ok; this build cannot read it: rebuild with `--features onnx`",
                "{row}"
            );
        }
    }
    let tflite = rows.iter().find(|r| r["default"] == true).unwrap();
    assert_eq!(tflite["status"], "ok");
    // The table says the same.
    let text = stdout(&edge(&["models", "list"]));
    let derived = "derived/mnv2_1.0_224_dequant.f32out.onnx: ok";
    let line = text.lines().find(|l| l.contains(derived)).unwrap();
    assert_eq!(
        line.ends_with("rebuild with `--features onnx`"),
        !cfg!(feature = "onnx"),
        "{text}"
    );
}

/// Imagenette images (no ants, no bees) the shared head's novelty threshold mostly rejects, and a
/// bee it accepts.
fn known_and_unknown() -> Vec<PathBuf> {
    let val = shared().join("datasets/imagenette_224_subset/val/n01440764");
    let mut images: Vec<PathBuf> = ["n01440764_12211", "n01440764_14731", "n01440764_4360"]
        .iter()
        .map(|n| val.join(format!("{n}.JPEG")))
        .collect();
    images.push(shared().join("datasets/hymenoptera/val/bees/10870992_eebeeb3a12.jpg"));
    images
}

#[test]
fn text_predict_names_the_class_it_rejected() {
    let head = shared_head();
    let images = known_and_unknown();
    let predict = |json: bool| {
        let mut args = vec!["predict", "--head", s(head)];
        if json {
            args.push("--json");
        }
        args.extend(images.iter().map(|p| s(p)));
        let out = edge(&args);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        stdout(&out)
    };
    let json: Vec<Value> = predict(true)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let text = predict(false);
    let mut rejected = 0;
    for (line, j) in text.lines().zip(&json) {
        // The class the head found most probable: the one whose confidence is reported.
        let probs = j["probs"].as_object().unwrap();
        let (top, _) = probs
            .iter()
            .max_by(|a, b| a.1.as_f64().partial_cmp(&b.1.as_f64()).unwrap())
            .unwrap();
        let confidence = format!("{:.4}", j["confidence"].as_f64().unwrap());
        let novelty = format!("novelty {:.4}", j["novelty"].as_f64().unwrap());
        let file = j["file"].as_str().unwrap();
        let want = if j["label"] == "unknown" {
            rejected += 1;
            format!("{file}\tunknown\t{confidence} ({top})\t{novelty}")
        } else {
            assert_eq!(j["label"], top.as_str());
            format!("{file}\t{top}\t{confidence}\t{novelty}")
        };
        assert_eq!(line, want);
    }
    assert_eq!(text.lines().count(), images.len(), "{text}");
    assert!(rejected >= 1 && rejected < images.len(), "{text}");
}

#[test]
fn calibrate_away_from_a_checkout_says_what_to_pass() {
    // The isolated working directory has no calibration/ folder, as an installed board has none.
    let out = edge(&["calibrate"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("edge-mnv2: error: no images to calibrate on: give --images DIR"),
        "{err}"
    );
    assert!(!err.contains("No such file"), "{err}");
    // What it says to pass works.
    let tmp = tempfile::tempdir().unwrap();
    let frames = tmp.path().join("frames");
    std::fs::create_dir(&frames).unwrap();
    std::fs::copy(bmp("cat"), frames.join("cat.bmp")).unwrap();
    let written = tmp.path().join("board.json");
    let out = edge(&[
        "calibrate",
        "--images",
        s(&frames),
        "--runs",
        "1",
        "--out",
        s(&written),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(Path::new(&written).is_file());
}
