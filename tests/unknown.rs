//! Knowing what it does not know, end to end on the real data: a head trained on hymenoptera
//! (ants, bees) meets Imagenette images (fish, dogs, churches...) in `finetune --unknown`,
//! `evaluate --unknown`, `predict` and `serve`; the report's calibration figures and its SVG plots.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::*;
use serde_json::Value;

fn datasets() -> PathBuf {
    shared().join("datasets")
}

/// Every 40th Imagenette validation image (99, all ten classes), linked into two nested folders
/// so the recursive search is exercised.
fn unknown_images(dir: &Path) -> Vec<PathBuf> {
    let val = datasets().join("imagenette_224_subset/val");
    let mut all: Vec<PathBuf> = std::fs::read_dir(&val)
        .unwrap()
        .flat_map(|c| std::fs::read_dir(c.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .collect();
    all.sort();
    let picked: Vec<PathBuf> = all.into_iter().step_by(40).collect();
    for (i, p) in picked.iter().enumerate() {
        let sub = dir.join(format!("part{}/deeper", i % 2));
        std::fs::create_dir_all(&sub).unwrap();
        std::os::unix::fs::symlink(p, sub.join(p.file_name().unwrap())).unwrap();
    }
    picked
}

struct Trained {
    _tmp: tempfile::TempDir,
    out: PathBuf,
    cache: PathBuf,
    unknown: PathBuf,
    unknown_files: Vec<PathBuf>,
    report: Value,
}

/// hymenoptera with two fixed views and no random ones (quicker than the defaults, which
/// tests/finetune.rs runs), Imagenette as the unknown images.
fn trained() -> &'static Trained {
    static T: OnceLock<Trained> = OnceLock::new();
    T.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let cache = tmp.path().join("cache");
        let out = tmp.path().join("out");
        let unknown = tmp.path().join("unknown");
        let unknown_files = unknown_images(&unknown);
        let data = datasets().join("hymenoptera");
        let report = ok_json(&edge_cached(
            &[
                "finetune",
                s(&data),
                "--out",
                s(&out),
                "--views",
                "2",
                "--augment",
                "0",
                "--unknown",
                s(&unknown),
                "--json",
            ],
            &cache,
        ));
        Trained {
            _tmp: tmp,
            out,
            cache,
            unknown,
            unknown_files,
            report,
        }
    })
}

#[test]
fn finetune_reports_rejection_calibration_and_views() {
    let t = trained();
    let r = &t.report;
    eprintln!(
        "unknown {} test.rejected_rate {} calibration {} {} novelty {}",
        r["unknown"],
        r["test"]["rejected_rate"],
        r["calibration"]["ece_before"],
        r["calibration"]["ece_after"],
        r["novelty"]
    );
    assert_eq!(r["views"], serde_json::json!(["plain", "flip"]));
    assert_eq!(r["unknown"]["images"], 99);
    let auroc = r["unknown"]["auroc"].as_f64().unwrap();
    assert!(auroc >= 0.97, "AUROC {auroc}");
    let accepted = r["unknown"]["accepted_rate"].as_f64().unwrap();
    assert!(accepted <= 0.15, "unknowns accepted {accepted}");
    let rejected = r["test"]["rejected_rate"].as_f64().unwrap();
    assert!(rejected <= 0.12, "known test images rejected {rejected}");
    // Closed-set figures stay closed-set: rejection does not enter the accuracy.
    assert!(r["test"]["accuracy"].as_f64().unwrap() >= 0.9);
    let (before, after) = (
        r["calibration"]["ece_before"].as_f64().unwrap(),
        r["calibration"]["ece_after"].as_f64().unwrap(),
    );
    assert!(
        after <= 0.08 && after <= before + 0.01,
        "ECE {before} -> {after}"
    );
    // The temperature used is the validation fit only when it held up out of fold, else 1.
    let choice = &r["temperature_choice"];
    let used = choice["temperature"].as_f64().unwrap();
    assert_eq!(r["calibration"]["temperature"].as_f64().unwrap(), used);
    assert!(
        used == 1.0 || used == choice["fitted"].as_f64().unwrap(),
        "{choice}"
    );
    assert!(choice["cv_nll_plain"].as_f64().unwrap() > 0.0, "{choice}");
    assert_eq!(r["novelty"]["threshold_from"], "validation");
    assert!((r["novelty"]["keep_rate"].as_f64().unwrap() - 0.95).abs() < 1e-6);

    // The head carries its views, temperature and novelty model, in a bounded size.
    let head_text = std::fs::read_to_string(t.out.join("head.json")).unwrap();
    assert!(head_text.starts_with("{\"format\":\"edge-mnv2-head\",\"version\":2"));
    let payload: Value = serde_json::from_str(head_text.lines().nth(1).unwrap()).unwrap();
    assert_eq!(payload["views"], 2);
    assert!(payload["temperature"].as_f64().unwrap() > 0.0);
    assert_eq!(payload["novelty"]["score"], "knn1-cosine");
}

/// Which legend entries (series) an SVG names, after checking it parses.
fn svg_texts(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let doc =
        roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    doc.descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text().map(|t| t.trim().to_string()))
        .collect()
}

fn count_tag(path: &Path, tag: &str) -> usize {
    let text = std::fs::read_to_string(path).unwrap();
    let doc = roxmltree::Document::parse(&text).unwrap();
    doc.descendants().filter(|n| n.has_tag_name(tag)).count()
}

#[test]
fn report_plots_parse_and_show_their_series() {
    let t = trained();
    let md = std::fs::read_to_string(t.out.join("report.md")).unwrap();
    let plots = t.report["plots"].as_array().unwrap();
    let names: Vec<&str> = plots.iter().map(|p| p.as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "training.svg",
            "confusion.svg",
            "reliability.svg",
            "novelty.svg"
        ]
    );
    for n in &names {
        assert!(md.contains(&format!("]({n})")), "report.md links {n}");
    }
    let has = |texts: &[String], want: &str| texts.iter().any(|t| t.starts_with(want));

    let training = svg_texts(&t.out.join("training.svg"));
    for want in [
        "train loss",
        "validation loss",
        "train accuracy",
        "validation accuracy",
        "best epoch",
    ] {
        assert!(
            has(&training, want),
            "training.svg lacks '{want}': {training:?}"
        );
    }
    // Two lines per panel plus the best-epoch marker in each, plus the legend samples.
    let epochs = t.report["epochs_run"].as_u64().unwrap() as usize;
    assert!(epochs > 1);
    assert!(count_tag(&t.out.join("training.svg"), "polyline") >= 6);

    let confusion = svg_texts(&t.out.join("confusion.svg"));
    assert!(
        has(&confusion, "ants") && has(&confusion, "bees"),
        "{confusion:?}"
    );
    let cm = &t.report["test"]["confusion_matrix"];
    for row in cm.as_array().unwrap() {
        for v in row.as_array().unwrap() {
            assert!(
                confusion.contains(&v.to_string()),
                "count {v} in confusion.svg"
            );
        }
    }

    let reliability = svg_texts(&t.out.join("reliability.svg"));
    for want in [
        "perfect calibration",
        "before (temperature 1)",
        "after (temperature",
    ] {
        assert!(has(&reliability, want), "reliability.svg lacks '{want}'");
    }

    let novelty = svg_texts(&t.out.join("novelty.svg"));
    for want in ["known (153)", "unknown (99)", "threshold"] {
        assert!(
            has(&novelty, want),
            "novelty.svg lacks '{want}': {novelty:?}"
        );
    }
}

#[test]
fn evaluate_and_predict_report_novelty_and_unknown() {
    let t = trained();
    let data = datasets().join("hymenoptera/val");
    let eval_out = t.out.parent().unwrap().join("eval");
    let eval = ok_json(&edge_cached(
        &[
            "evaluate",
            "--head",
            s(&t.out),
            s(&data),
            "--unknown",
            s(&t.unknown),
            "--out",
            s(&eval_out),
            "--json",
        ],
        &t.cache,
    ));
    // The same images, views and head as finetune's test split: the same figures.
    assert_eq!(eval["test"]["accuracy"], t.report["test"]["accuracy"]);
    assert_eq!(eval["unknown"]["auroc"], t.report["unknown"]["auroc"]);
    assert_eq!(eval["views"], serde_json::json!(["plain", "flip"]));
    assert!(eval_out.join("novelty.svg").is_file() && eval_out.join("report.md").is_file());

    let bee = data.join("bees/10870992_eebeeb3a12.jpg");
    let threshold = t.report["novelty"]["threshold"].as_f64().unwrap();
    let mut args = vec![
        "predict".to_string(),
        "--head".into(),
        s(&t.out).into(),
        "--json".into(),
        s(&bee).into(),
    ];
    args.extend(t.unknown_files.iter().map(|p| s(p).to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = edge_cached(&args, &t.cache);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let lines: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["label"], "bees");
    assert!(lines[0]["novelty"].as_f64().unwrap() <= threshold);
    let mut unknown = 0;
    for l in &lines[1..] {
        let novelty = l["novelty"].as_f64().unwrap();
        assert_eq!(l["label"] == "unknown", novelty > threshold, "{l}");
        unknown += usize::from(l["label"] == "unknown");
    }
    let accepted = 1.0 - unknown as f64 / (lines.len() - 1) as f64;
    assert!(
        (accepted - t.report["unknown"]["accepted_rate"].as_f64().unwrap()).abs() < 1e-9,
        "predict accepts as many as the report says"
    );
}

#[test]
fn serve_marks_unknown_frames_with_their_novelty() {
    let t = trained();
    let tmp = tempfile::tempdir().unwrap();
    let frames = tmp.path().join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    let val = datasets().join("hymenoptera/val");
    let known = [
        val.join("ants/10308379_1b6c72e180.jpg"),
        val.join("bees/10870992_eebeeb3a12.jpg"),
    ];
    // Interleaved so the folder's sorted order alternates known and unknown.
    for (i, p) in known.iter().chain(&t.unknown_files[..4]).enumerate() {
        let ext = p.extension().unwrap().to_str().unwrap();
        let kind = if i < 2 { "known" } else { "unknown" };
        std::os::unix::fs::symlink(p, frames.join(format!("{i}-{kind}.{ext}"))).unwrap();
    }
    let o = edge_command()
        .args(["serve", "--head", s(&t.out), "--source", s(&frames)])
        .args(["--no-http", "--frames", "6"])
        .env("EDGE_MNV2_MODELS", models_dir())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("views per frame: 2"), "{}", stderr(&o));
    let threshold = t.report["novelty"]["threshold"].as_f64().unwrap();
    let lines: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6);
    let mut unknown = 0;
    for l in &lines {
        let source = l["source"].as_str().unwrap();
        let novelty = l["novelty"].as_f64().unwrap();
        if source.contains("-known") {
            assert_ne!(l["label"], "unknown", "{l}");
            assert!(novelty <= threshold, "{l}");
        } else {
            unknown += usize::from(l["label"] == "unknown");
            assert_eq!(l["label"] == "unknown", novelty > threshold, "{l}");
        }
    }
    assert!(unknown >= 3, "{lines:?}");
}
