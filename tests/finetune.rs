//! `finetune`, `evaluate` and `predict` end to end on the real datasets, plus the bad inputs.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::Value;

fn datasets() -> PathBuf {
    shared().join("datasets")
}

/// The product's main job on its defaults, then the same again from the cache.
#[test]
fn hymenoptera_with_defaults_then_cached_rerun() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let out = tmp.path().join("out");
    let data = datasets().join("hymenoptera");
    let first = ok_json(&edge_cached(
        &["finetune", s(&data), "--out", s(&out), "--json"],
        &cache,
    ));
    let acc = first["test"]["accuracy"].as_f64().unwrap();
    eprintln!(
        "hymenoptera test accuracy {acc}, macro F1 {}, timings {}",
        first["test"]["macro_f1"], first["timings"]
    );
    assert!(acc >= 0.93, "test accuracy {acc}");
    assert_eq!(first["test"]["samples"], 153);
    assert_eq!(first["classes"], serde_json::json!(["ants", "bees"]));
    for key in ["epochs_run", "best_epoch", "history"] {
        assert!(!first[key].is_null(), "{key}");
    }
    for key in [
        "balanced_accuracy",
        "macro_f1",
        "per_class",
        "confusion_matrix",
    ] {
        assert!(!first["test"][key].is_null(), "test.{key}");
    }
    for key in ["embed_s", "train_s", "total_s"] {
        assert!(first["timings"][key].as_f64().is_some(), "timings.{key}");
    }
    assert!(first["embeddings"]["computed"].as_u64().unwrap() >= 397);
    assert!(out.join("report.md").is_file() && out.join("head.json").is_file());

    // Same data, same seed: nothing re-embedded, identical metrics and history.
    let second = ok_json(&edge_cached(
        &["finetune", s(&data), "--out", s(&out), "--json"],
        &cache,
    ));
    assert_eq!(second["embeddings"]["computed"], 0);
    assert_eq!(second["test"], first["test"]);
    assert_eq!(second["history"], first["history"]);

    // evaluate on the held-out folder gives the report's figures; predict labels single images.
    let eval = ok_json(&edge_cached(
        &[
            "evaluate",
            "--head",
            s(&out),
            s(&data.join("val")),
            "--json",
        ],
        &cache,
    ));
    assert_eq!(eval["test"]["accuracy"], first["test"]["accuracy"]);
    let bee = data.join("val/bees/10870992_eebeeb3a12.jpg");
    let ant = data.join("val/ants/10308379_1b6c72e180.jpg");
    let pred = edge_cached(
        &[
            "predict",
            "--head",
            s(&out.join("head.json")),
            "--json",
            s(&bee),
            s(&ant),
        ],
        &cache,
    );
    assert_eq!(pred.status.code(), Some(0), "{}", stderr(&pred));
    let lines: Vec<Value> = stdout(&pred)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["label"], "bees");
    assert_eq!(lines[1]["label"], "ants");
    let p =
        lines[0]["probs"]["bees"].as_f64().unwrap() + lines[0]["probs"]["ants"].as_f64().unwrap();
    assert!((p - 1.0).abs() < 1e-4);
}

/// Ten classes: checks the multi-class path (its images are ImageNet's own, so this is not an
/// honest accuracy figure).
#[test]
fn imagenette_ten_classes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let data = datasets().join("imagenette_224_subset");
    let r = ok_json(&edge_cached(
        &[
            "finetune",
            s(&data),
            "--out",
            s(&out),
            "--augment",
            "0",
            // One view: the four-view default is covered on hymenoptera; here it would embed
            // every image four times for the same check of the ten-class path.
            "--views",
            "1",
            "--json",
        ],
        &tmp.path().join("cache"),
    ));
    let f1 = r["test"]["macro_f1"].as_f64().unwrap();
    eprintln!(
        "imagenette macro F1 {f1}, accuracy {}, timings {}",
        r["test"]["accuracy"], r["timings"]
    );
    assert_eq!(r["classes"].as_array().unwrap().len(), 10);
    assert_eq!(r["test"]["samples"], 3925);
    assert!(f1 >= 0.96, "macro F1 {f1}");
}

fn finetune_err(data: &Path, out: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "finetune",
        s(data),
        "--out",
        s(out),
        "--augment",
        "0",
        "--no-cache",
    ];
    args.extend_from_slice(extra);
    let o = edge_cached(&args, out);
    assert_eq!(
        o.status.code(),
        Some(1),
        "expected failure; stdout {}",
        stdout(&o)
    );
    let err = stderr(&o);
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        !out.join("head.json").exists() || extra.contains(&"keep"),
        "no head may be written"
    );
    err
}

#[test]
fn bad_datasets_are_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");

    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert!(finetune_err(&empty, &out, &[]).contains("no class folders with images"));

    let missing = tmp.path().join("nope");
    assert!(finetune_err(&missing, &out, &[]).contains("no such directory"));

    let one = tmp.path().join("one");
    copy_hymenoptera(&one, &[("ants", 5)]);
    assert!(finetune_err(&one, &out, &[]).contains("only one class ('ants')"));

    let single = tmp.path().join("single");
    copy_hymenoptera(&single, &[("ants", 8), ("bees", 1)]);
    let e = finetune_err(&single, &out, &[]);
    assert!(
        e.contains("class 'bees' has 1 readable training image(s); need at least 2"),
        "{e}"
    );

    let unreadable = tmp.path().join("unreadable");
    copy_hymenoptera(&unreadable, &[("ants", 8)]);
    std::fs::create_dir(unreadable.join("bees")).unwrap();
    for i in 0..4 {
        std::fs::write(unreadable.join(format!("bees/{i}.jpg")), b"not a jpeg").unwrap();
    }
    let e = finetune_err(&unreadable, &out, &[]);
    assert!(
        e.contains("class 'bees' has 0 readable training image(s)"),
        "{e}"
    );
    assert!(e.contains("bees/0.jpg"), "unreadable files are named: {e}");

    let unknown = tmp.path().join("unknown");
    copy_hymenoptera(&unknown.join("train"), &[("ants", 6), ("bees", 6)]);
    copy_hymenoptera(&unknown.join("val"), &[("ants", 2), ("bees", 2)]);
    std::fs::create_dir_all(unknown.join("val/wasps")).unwrap();
    std::fs::copy(
        datasets().join("hymenoptera/val/bees/10870992_eebeeb3a12.jpg"),
        unknown.join("val/wasps/w.jpg"),
    )
    .unwrap();
    let e = finetune_err(&unknown, &out, &[]);
    assert!(
        e.contains("class 'wasps' is not among the training classes (ants, bees)"),
        "{e}"
    );

    // A class folder named like the label of rejected images, in any case, in either layout.
    let reserved = tmp.path().join("reserved");
    copy_hymenoptera(&reserved, &[("ants", 6), ("bees", 6)]);
    std::fs::rename(reserved.join("bees"), reserved.join("unknown")).unwrap();
    let e = finetune_err(&reserved, &out, &[]);
    assert!(
        e.contains(&format!(
            "{}: a class cannot be named 'unknown': rejected images are labelled 'unknown'; rename the folder",
            reserved.join("unknown").display()
        )),
        "{e}"
    );
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    let reserved = tmp.path().join("reserved-split");
    copy_hymenoptera(&reserved.join("train"), &[("ants", 6), ("bees", 6)]);
    copy_hymenoptera(&reserved.join("test"), &[("ants", 2), ("bees", 2)]);
    for split in ["train", "test"] {
        std::fs::rename(
            reserved.join(split).join("bees"),
            reserved.join(split).join("Unknown"),
        )
        .unwrap();
    }
    let e = finetune_err(&reserved, &out, &[]);
    assert!(
        e.contains(&format!(
            "{}: a class cannot be named 'Unknown'",
            reserved.join("train/Unknown").display()
        )),
        "{e}"
    );
    // The rule every head's class names follow: a folder name with a newline would print as two
    // lines in every result and metric.
    let newline = tmp.path().join("newline");
    copy_hymenoptera(&newline, &[("ants", 6), ("bees", 6)]);
    std::fs::rename(newline.join("bees"), newline.join("be\nes")).unwrap();
    let e = finetune_err(&newline, &out, &[]);
    assert!(
        e.contains(&format!(
            "{}: the class folder \"be\\nes\" contains a newline; rename the folder",
            newline.display()
        )),
        "{e}"
    );
    assert_eq!(e.trim().lines().count(), 1, "{e}");

    let file_as_out = tmp.path().join("a-file");
    std::fs::write(&file_as_out, b"x").unwrap();
    let mixed = tmp.path().join("mixed");
    copy_hymenoptera(&mixed, &[("ants", 6), ("bees", 6)]);
    let e = finetune_err(&mixed, &file_as_out.join("sub"), &[]);
    assert!(e.contains("cannot create the output directory"), "{e}");
}

#[test]
fn mixed_files_are_ignored_and_unreadable_images_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    copy_hymenoptera(&data, &[("ants", 12), ("bees", 12)]);
    // `serve` reads a .jfif from a folder, so training takes it too.
    // A copy of the first ant by name (not the directory's first entry, which varies by file
    // system): the copy hashes into training, the original into the test split.
    let first_ant = &hymenoptera_images("train", "ants")[0];
    std::fs::copy(first_ant, data.join("ants/copy.JFIF")).unwrap();
    std::fs::write(data.join("ants/notes.txt"), "hello").unwrap();
    std::fs::write(data.join("ants/.DS_Store"), "x").unwrap();
    std::fs::write(data.join("bees/broken.jpg"), "not a jpeg").unwrap();
    // A JPEG cut short (the first 5 KB of one beyond the 12 copied): its decoders fill the
    // rest with grey, and it must not be trained on as if it were whole.
    let whole = std::fs::read(hymenoptera_train_image("bees", 12)).unwrap();
    std::fs::write(data.join("bees/cut.jpg"), &whole[..5_000]).unwrap();
    let out = tmp.path().join("out");
    let r = ok_json(&edge_cached(
        &[
            "finetune",
            s(&data),
            "--out",
            s(&out),
            "--augment",
            "1",
            "--json",
        ],
        &tmp.path().join("c"),
    ));
    assert_eq!(r["counts"]["ignored_files"], 1);
    assert_eq!(r["counts"]["unreadable"], 2);
    let unreadable: Vec<&str> = r["unreadable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["file"].as_str().unwrap())
        .collect();
    assert!(unreadable.iter().any(|f| f.ends_with("broken.jpg")));
    assert!(
        unreadable.iter().any(|f| f.ends_with("cut.jpg")),
        "{unreadable:?}"
    );
    let total: u64 = ["train", "val", "test"]
        .iter()
        .map(|k| {
            r["counts"][k]
                .as_object()
                .unwrap()
                .values()
                .map(|v| v.as_u64().unwrap())
                .sum::<u64>()
        })
        .sum();
    // 12 ants, 12 readable bees and the .JFIF copy, which is trained on; so its original (whose
    // path hashes into the test split) is left out of evaluation, a copy of a training image.
    assert_eq!(total, 24);
    assert_eq!(
        r["duplicates"].as_array().unwrap().len(),
        1,
        "{}",
        r["duplicates"]
    );
    assert_eq!(r["duplicates"][0]["file"], "ants/0013035.jpg");
    assert_eq!(r["duplicates"][0]["train_file"], "ants/copy.JFIF");
    assert_eq!(r["duplicates"][0]["split"], "test");
}

/// One `finetune` of the first 10 ants and 10 bees, without augmentation: the small trained run
/// the tests below share (one training for all of them).
struct SmallRun {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    out: PathBuf,
    cache: PathBuf,
    /// What the run printed: its report on stdout, its warnings on stderr.
    output: std::process::Output,
}

fn small_run() -> &'static SmallRun {
    static RUN: std::sync::OnceLock<SmallRun> = std::sync::OnceLock::new();
    RUN.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        copy_hymenoptera(&data, &[("ants", 10), ("bees", 10)]);
        let out = tmp.path().join("out");
        let cache = tmp.path().join("c");
        let output = edge_cached(
            &[
                "finetune",
                s(&data),
                "--out",
                s(&out),
                "--augment",
                "0",
                "--json",
            ],
            &cache,
        );
        SmallRun {
            _tmp: tmp,
            data,
            out,
            cache,
            output,
        }
    })
}

/// The finding 8: the path hash leaves these 20 images no validation ant, no test bee
/// and two validation images in all; a temperature fitted on those once made the test ECE
/// 0.34 → 0.50. The split is accepted, but said to be lopsided, and no temperature is fitted.
#[test]
fn a_class_missing_from_validation_or_test_is_reported_and_fits_no_temperature() {
    let run = small_run();
    let r = ok_json(&run.output);
    assert_eq!(
        r["counts"]["val"],
        serde_json::json!({"ants": 0, "bees": 2})
    );
    assert_eq!(
        r["counts"]["test"],
        serde_json::json!({"ants": 4, "bees": 0})
    );
    assert_eq!(r["classes_without_validation"], serde_json::json!(["ants"]));
    assert_eq!(r["classes_without_test"], serde_json::json!(["bees"]));
    let choice = &r["temperature_choice"];
    assert_eq!(choice["temperature"], 1.0);
    assert_eq!(
        choice["not_fitted"],
        "validation has 2 image(s), fewer than 20: temperature kept at 1"
    );
    let err = stderr(&run.output);
    for line in [
        "class(es) with no validation image: ants",
        "class(es) with no test image: bees",
        "validation has 2 image(s), fewer than 20: temperature kept at 1",
    ] {
        assert!(err.contains(line), "{line} not in: {err}");
    }
    let md = std::fs::read_to_string(run.out.join("report.md")).unwrap();
    for line in [
        "\n## Warnings\n\n",
        "\n- class(es) with no validation image: ants\n",
        "\n- class(es) with no test image: bees\n",
        "\n- no temperature fitted: validation has 2 image(s), fewer than 20: temperature kept at 1\n",
    ] {
        assert!(md.contains(line), "{line:?} not in:\n{md}");
    }
}

/// The finding 2, where a data set is read without training: `ants/up -> ..` and
/// `ants/sib -> ../bees` once made 20 images 1,210 "ants", bees among them, with exit 0 and no
/// word. Each link is now named on stderr and in the JSON, and every image counts once, under
/// its own class.
#[cfg(unix)]
#[test]
fn evaluate_follows_no_link_up_the_tree_or_into_another_class() {
    let run = small_run();
    ok_json(&run.output);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("linked");
    copy_hymenoptera(&data, &[("ants", 10), ("bees", 10)]);
    std::os::unix::fs::symlink("..", data.join("ants/up")).unwrap();
    std::os::unix::fs::symlink("../bees", data.join("ants/sib")).unwrap();
    let o = edge_cached(
        &["evaluate", "--head", s(&run.out), s(&data), "--json"],
        &run.cache,
    );
    let r = ok_json(&o);
    assert_eq!(r["test"]["samples"], 20);
    let support: Vec<(String, u64)> = r["test"]["per_class"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["class"].as_str().unwrap().to_string(),
                m["support"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(support, [("ants".into(), 10), ("bees".into(), 10)]);
    let skipped: Vec<(&str, &str)> = r["skipped_links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["link"].as_str().unwrap(), l["reason"].as_str().unwrap()))
        .collect();
    let (sib, up) = (data.join("ants/sib"), data.join("ants/up"));
    assert_eq!(skipped, [(s(&sib), "read_twice"), (s(&up), "loop")]);
    let err = stderr(&o);
    let warned: Vec<&str> = err.lines().filter(|l| l.contains("not followed")).collect();
    assert_eq!(warned.len(), 2, "{err}");
    assert!(
        warned[0].contains(&format!("{}: link to ", sib.display())),
        "{err}"
    );
    assert!(
        warned[1].contains("it leads back up the tree (a loop)"),
        "{err}"
    );
}

#[test]
fn heads_are_checked_before_use() {
    let run = small_run();
    ok_json(&run.output);
    let tmp = tempfile::tempdir().unwrap();
    let (data, out, cache) = (run.data.clone(), run.out.clone(), run.cache.clone());
    let img = data
        .join("ants")
        .read_dir()
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();

    // A head on another backbone.
    let o = edge_cached(
        &[
            "predict",
            "--head",
            s(&out),
            "--model",
            "tf2_mobilenet_v2_1.0_224_ptq",
            s(&img),
        ],
        &cache,
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("head was trained on backbone 'mobilenet_v2_1.0_224_quant'"),
        "{}",
        stderr(&o)
    );

    // A truncated head, and a file that is no head at all.
    let head = out.join("head.json");
    let text = std::fs::read_to_string(&head).unwrap();
    let bad = tmp.path().join("truncated.json");
    std::fs::write(&bad, &text[..text.len() / 2]).unwrap();
    let o = edge_cached(&["predict", "--head", s(&bad), s(&img)], &cache);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("truncated.json: corrupt or truncated head file"),
        "{}",
        stderr(&o)
    );
    // Heads whose sizes are right but whose values or class names would break every answer.
    let zero_std = head_in(&head, tmp.path(), "zero-std", |h| h.dense.std.fill(0.0));
    let newline = head_in(&head, tmp.path(), "newline", |h| {
        h.classes[1] = "be\nes".into()
    });
    for (hostile, reason) in [
        (zero_std, "std[0] is 0 (must be a number above 0)"),
        (newline, "class 1's name contains a newline"),
    ] {
        let o = edge_cached(&["predict", "--head", s(&hostile), s(&img)], &cache);
        assert_eq!(o.status.code(), Some(1));
        let e = stderr(&o);
        let file = hostile.join("head.json");
        assert!(e.contains(&format!("{}: {reason}", file.display())), "{e}");
        assert_eq!(e.trim().lines().count(), 1, "{e}");
    }
    let o = edge_cached(&["evaluate", "--head", s(&img), s(&data)], &cache);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("not an edge-mnv2 head file"),
        "{}",
        stderr(&o)
    );

    // A failed run leaves the previous good head untouched.
    let before = std::fs::read(&head).unwrap();
    let o = edge_cached(
        &["finetune", s(&tmp.path().join("missing")), "--out", s(&out)],
        &cache,
    );
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(std::fs::read(&head).unwrap(), before);
}

#[test]
fn ctrl_c_stops_without_writing_and_keeps_the_old_head() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("head.json"), b"previous head").unwrap();
    let data = datasets().join("hymenoptera");
    let child = edge_command()
        .args(["finetune", s(&data), "--out", s(&out), "--no-cache"])
        .env("EDGE_MNV2_MODELS", models_dir())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("interrupted"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(out.join("head.json")).unwrap(),
        b"previous head"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
}
