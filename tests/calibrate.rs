//! `edge-mnv2 calibrate` on the real TFLite model and six real frames: the table, the JSON file,
//! and `classify` reading the choice back (and `--precision` overriding it).

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;
use serde_json::Value;

/// Thread counts measured: one frame on one thread and split over two.
const THREADS: &str = "1,2";

fn classify_json(cal: &Path, extra: &[&str]) -> Value {
    let img = models_dir().join("images/bird.bmp");
    let mut args = vec!["classify", "--json", "-k", "1"];
    args.extend_from_slice(extra);
    args.push(img.to_str().unwrap());
    let out = edge_command()
        .args(&args)
        .env("EDGE_MNV2_MODELS", models_dir())
        .env("EDGE_MNV2_CALIBRATION", cal)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_str(stdout(&out).lines().next().unwrap()).unwrap();
    assert_eq!(v["top"][0]["index"], 20, "bird is a chickadee: {v}");
    v
}

/// `calibrate --threads THREADS <args>` on an `images.txt` (a `# comment` line, then `images`) in
/// a temporary folder: that folder (kept alive), the `--out` file's path and the output.
fn calibrate_on(
    comment: &str,
    images: &[PathBuf],
    args: &[&str],
) -> (tempfile::TempDir, PathBuf, Output) {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("images");
    std::fs::create_dir(&folder).unwrap();
    let list: String = images
        .iter()
        .map(|f| format!("{}\n", f.display()))
        .collect();
    std::fs::write(folder.join("images.txt"), format!("# {comment}\n{list}")).unwrap();
    let cal = dir.path().join("board.json");
    let out = edge(
        &[
            &["calibrate", "--images", folder.to_str().unwrap()][..],
            &["--threads", THREADS, "--out", cal.to_str().unwrap()],
            args,
        ]
        .concat(),
    );
    (dir, cal, out)
}

#[test]
fn calibrate_writes_a_table_and_a_file_that_classify_follows() {
    let golden: Vec<PathBuf> = GOLDEN_IMAGES
        .iter()
        .map(|n| models_dir().join(format!("images/{n}.bmp")))
        .collect();
    let (_dir, cal, out) = calibrate_on("golden frames", &golden, &["--runs", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    eprintln!("{table}");
    assert!(
        table.contains("top-1 agree") && table.contains("<- chosen"),
        "{table}"
    );
    // f32 and int8, each on every thread count.
    assert_eq!(
        table
            .lines()
            .filter(|l| l.starts_with("f32") || l.starts_with("int8"))
            .count(),
        2 * THREADS.split(',').count()
    );

    let v: Value = serde_json::from_str(&std::fs::read_to_string(&cal).unwrap()).unwrap();
    assert_eq!(v["format"], "edge-mnv2-calibration");
    assert_eq!(v["images"], 6);
    // The global pooling is the int8 graph's only f32 layer.
    let fallbacks = v["int8_f32_layers"].as_array().unwrap();
    assert_eq!(fallbacks.len(), 1, "{fallbacks:?}");
    assert!(
        table.contains("note: int8 runs 1 operator(s) in f32"),
        "{table}"
    );
    // f16 without FP16 arithmetic (this x86 machine): noted, not measured.
    if edge_mnv2::backbone::check_precision(edge_mnv2::models::Precision::F16).is_err() {
        assert!(
            table.contains("note: f16 not measured: precision f16 needs FP16 arithmetic"),
            "{table}"
        );
        assert_eq!(v["unavailable"][0]["precision"], "f16", "{v}");
    }
    let ms = v["measurements"].as_array().unwrap();
    assert_eq!(ms.len(), 2 * THREADS.split(',').count());
    for m in ms {
        assert!(m["median_ms"].as_f64().unwrap() > 0.0);
        assert_eq!(m["within_budget"], true, "{m}");
        // int8 is LiteRT's arithmetic and the reference: identical to itself. f32 tracks it, with
        // a few roundings a layer of difference (README: cosine 0.99878-0.99951 to LiteRT), and
        // the same top-1 on all six golden frames.
        let (cmin, cmean) = (
            m["cosine_min"].as_f64().unwrap(),
            m["cosine_mean"].as_f64().unwrap(),
        );
        assert_eq!(m["top1_agreement"].as_f64().unwrap(), 1.0, "{m}");
        if m["precision"] == "int8" {
            assert!(cmin > 0.9999995, "{m}");
        } else {
            assert!(
                (0.998..0.9999).contains(&cmin) && cmin <= cmean && cmean < 0.9999,
                "{m}"
            );
        }
    }
    let chosen = v["choice"]["precision"].as_str().unwrap().to_string();
    let fastest = ms
        .iter()
        .min_by(|a, b| {
            a["median_ms"]
                .as_f64()
                .unwrap()
                .total_cmp(&b["median_ms"].as_f64().unwrap())
        })
        .unwrap();
    assert_eq!(v["choice"]["precision"], fastest["precision"]);
    assert_eq!(v["choice"]["threads"], fastest["threads"]);

    // classify follows the file...
    let c = classify_json(&cal, &[]);
    assert_eq!(c["precision"], chosen.as_str());
    assert_eq!(c["threads"], v["choice"]["threads"]);

    // ...whatever it says: hand it f32 (not the default, int8) on 2 threads...
    let mut edited = v.clone();
    edited["choice"] = serde_json::json!({"precision": "f32", "threads": 2});
    std::fs::write(&cal, serde_json::to_string(&edited).unwrap()).unwrap();
    let c = classify_json(&cal, &[]);
    assert_eq!(c["precision"], "f32");
    assert_eq!(c["threads"], 2);

    // ...unless --precision says otherwise.
    let c = classify_json(&cal, &["--precision", "int8"]);
    assert_eq!(c["precision"], "int8");

    // A calibration made with another file is not applied to this one: the default, int8.
    edited["model_sha256"] = serde_json::json!("0".repeat(64));
    std::fs::write(&cal, serde_json::to_string(&edited).unwrap()).unwrap();
    let c = classify_json(&cal, &[]);
    assert_eq!(c["precision"], "int8");
}

#[test]
fn a_broken_calibration_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cal = dir.path().join("board.json");
    std::fs::write(&cal, "{ not json").unwrap();
    let img = models_dir().join("images/bird.bmp");
    let out = edge_command()
        .args(["classify", img.to_str().unwrap()])
        .env("EDGE_MNV2_MODELS", models_dir())
        .env("EDGE_MNV2_CALIBRATION", &cal)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("board.json") && err.contains("not a calibration file"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn calibrate_refuses_an_onnx_model() {
    let out = edge(&[
        "calibrate",
        "-m",
        "mnv2-1.0-224-dequant",
        "--images",
        "/nonexistent",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("mnv2-1.0-224-dequant") && err.contains("onnx"),
        "{err}"
    );
}

/// `--min-agreement` decides: on frames where f32's top-1 differs from LiteRT's int8 arithmetic
/// (three hymenoptera/val images found so, near-ties between two classes), f32 agrees on fewer
/// than all of them, so with `--min-agreement 1` every f32 row is out of budget and int8, the
/// reference, is chosen whatever the timings.
#[test]
fn rows_below_min_agreement_are_out_of_budget_and_never_chosen() {
    let val = shared().join("datasets/hymenoptera/val");
    let near_ties: Vec<PathBuf> = [
        "ants/Hormiga.jpg",
        "bees/1519368889_4270261ee3.jpg",
        "bees/54736755_c057723f64.jpg",
    ]
    .iter()
    .map(|f| val.join(f))
    .collect();
    let (_dir, cal, out) = calibrate_on(
        "near-ties",
        &near_ties,
        &["--runs", "1", "--min-agreement", "1"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&cal).unwrap()).unwrap();
    assert_eq!(v["min_top1_agreement"], 1.0, "{v}");
    let ms = v["measurements"].as_array().unwrap();
    assert_eq!(ms.len(), 2 * THREADS.split(',').count(), "{v}");
    for m in ms {
        let agreement = m["top1_agreement"].as_f64().unwrap();
        if m["precision"] == "int8" {
            assert_eq!(agreement, 1.0, "{m}");
            assert_eq!(m["within_budget"], true, "{m}");
        } else {
            assert!(agreement < 1.0, "f32 should disagree on a near-tie: {m}");
            assert_eq!(m["within_budget"], false, "{m}");
        }
    }
    assert_eq!(v["choice"]["precision"], "int8", "{v}");
}

/// On x86 the kernels run in copies compiled for AVX2 (`*_avx2`, `x86::avx2`, `x86::avx512vnni`),
/// picked at run time; the binary itself targets baseline x86-64, where rounding is a libm call
/// per value. A call from such a copy into code of ours that is not one (a closure the compiler
/// kept out of line) or into libm runs at the baseline's speed: f6690e2 did that to the depthwise
/// loop, and int8 frames took 2.4x as long. Read from the binary's own disassembly (binutils, which
/// come with the C linker).
#[cfg(target_arch = "x86_64")]
#[test]
fn x86_kernels_call_no_baseline_code() {
    use std::collections::HashMap;
    use std::process::Command;
    let bin = env!("CARGO_BIN_EXE_edge-mnv2");
    let run = |program: &str, args: &[&str]| -> String {
        let out = Command::new(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{program} (binutils): {e}"));
        assert!(out.status.success(), "{program}: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    // Every function by address, and the kernels with their extents.
    let mut names = HashMap::new();
    let mut kernels = Vec::new();
    for line in run("nm", &["-C", "--defined-only", "-S", bin]).lines() {
        let mut fields = line.splitn(4, ' ');
        let (Some(at), Some(size), Some(_), Some(name)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let (Some(at), Some(size)) = (hex(at), hex(size)) else {
            continue;
        };
        let kernel = |n: &str| n.ends_with("_avx2") || n.contains("::x86::");
        if name.starts_with("edge_mnv2::tflite::ops::") && kernel(name) {
            kernels.push((at, size, name.to_string()));
        }
        names.insert(at, name.to_string());
    }
    assert!(
        kernels.len() >= 5,
        "the x86 kernels are not in {bin}: {kernels:?}"
    );
    // Indirect calls go through a GOT slot that the loader fills with a function's address.
    let mut slots = HashMap::new();
    for line in run("objdump", &["-R", bin]).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if let [slot, "R_X86_64_RELATIVE", target] = f[..] {
            if let (Some(slot), Some(target)) = (hex(slot), target.strip_prefix("*ABS*+")) {
                slots.insert(slot, hex(target));
            }
        }
    }
    // Allocation, copies and panics are once per call; rounding and our own loops are per value.
    let libm = [
        "rintf", "roundf", "fminf", "fmaxf", "floorf", "ceilf", "truncf", "lrintf",
    ];
    let baseline = |callee: &str| {
        let name = callee.split('@').next().unwrap_or(callee);
        libm.contains(&name)
            || (name.starts_with("edge_mnv2::") && !kernels.iter().any(|(_, _, k)| k == name))
    };
    let mut wrong = Vec::new();
    for (at, size, kernel) in &kernels {
        let (from, to) = (
            format!("--start-address={at:#x}"),
            format!("--stop-address={:#x}", at + size),
        );
        for line in run("objdump", &["-d", "--no-show-raw-insn", &from, &to, bin]).lines() {
            let Some((_, call)) = line.split_once("\tcall") else {
                continue;
            };
            let target = match call.split_once("# ") {
                Some((_, slot)) => hex(slot.split(' ').next().unwrap_or(""))
                    .and_then(|s| slots.get(&s).copied().flatten()),
                None => hex(call.split_whitespace().next().unwrap_or("")),
            };
            // A symbol of the binary, or the shared library's name objdump shows (`<memcpy@GLIBC_2.14>`).
            let shown = call.rsplit_once('<').map(|(_, n)| n.trim_end_matches('>'));
            let callee = target
                .and_then(|t| names.get(&t).map(String::as_str))
                .or(shown);
            match callee {
                Some(callee) if !baseline(callee) => {}
                other => wrong.push(format!("{kernel} calls {}", other.unwrap_or(call.trim()))),
            }
        }
    }
    wrong.sort();
    wrong.dedup();
    assert!(
        wrong.is_empty(),
        "x86 kernels leave their AVX2 code:\n{}",
        wrong.join("\n")
    );
}
