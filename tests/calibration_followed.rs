//! The board's calibration file is followed by every command that runs the backbone (`classify`,
//! `embed`, `finetune`, `evaluate`, `predict`, `serve`), and the tests themselves never see a
//! calibration file they did not write (tests/common: an empty working directory).

mod common;

use std::path::Path;
use std::process::Output;

use common::*;
use edge_mnv2::models::Precision;
use serde_json::Value;

fn ok(o: Output) -> String {
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    stdout(&o)
}

fn with_cal(cal: &Path, args: &[&str]) -> Output {
    edge_command()
        .args(args)
        .env("EDGE_MNV2_CALIBRATION", cal)
        .output()
        .unwrap()
}

/// The tests' own commands run without a calibration: int8, whatever calibration file this machine
/// has lying around (a `calibrate` run at the repository root writes `calibration/<board>.json`
/// there, the working directory the test harness gives).
#[test]
fn tests_run_without_the_machines_calibration() {
    let bird = models_dir().join("images/bird.bmp");
    let out = ok(edge(&["classify", "--json", "-k", "1", s(&bird)]));
    let v: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(v["precision"], "int8", "{v}");
}

#[test]
fn every_command_follows_the_calibration_file() {
    let tmp = tempfile::tempdir().unwrap();
    let cal = tmp.path().join("board.json");
    write_calibration(&cal, Precision::F32);
    let bird = models_dir().join("images/bird.bmp");

    // classify says which precision it ran.
    let v: Value =
        serde_json::from_str(&ok(with_cal(&cal, &["classify", "--json", s(&bird)]))).unwrap();
    assert_eq!(v["precision"], "f32", "{v}");

    // embed: the f32 embedding, not the int8 one (the default without a calibration).
    let embed = |extra: &[&str]| {
        let mut args = vec!["embed", s(&bird)];
        args.extend_from_slice(extra);
        ok(with_cal(&cal, &args))
    };
    let followed = embed(&[]);
    assert_eq!(followed, embed(&["--precision", "f32"]));
    assert_ne!(followed, embed(&["--precision", "int8"]));

    // finetune records the precision it embedded with in its report.
    let data = small_hymenoptera(tmp.path(), 8);
    let out = tmp.path().join("head");
    let report: Value = serde_json::from_str(&ok(with_cal(
        &cal,
        &[
            "finetune",
            s(&data),
            "--out",
            s(&out),
            "--augment",
            "0",
            "--epochs",
            "20",
            "--no-cache",
            "--json",
        ],
    )))
    .unwrap();
    assert_eq!(report["model"]["precision"], "f32", "{}", report["model"]);

    // predict, evaluate and serve: the same output as with --precision f32, not as with int8.
    let bee = shared().join("datasets/hymenoptera/val/bees/10870992_eebeeb3a12.jpg");
    let ant = shared().join("datasets/hymenoptera/val/ants/10308379_1b6c72e180.jpg");
    let predict = |extra: &[&str]| {
        let mut args = vec!["predict", "--head", s(&out), "--json", s(&bee), s(&ant)];
        args.extend_from_slice(extra);
        ok(with_cal(&cal, &args))
    };
    let followed = predict(&[]);
    assert_eq!(followed, predict(&["--precision", "f32"]));
    assert_ne!(followed, predict(&["--precision", "int8"]));

    let val = shared().join("datasets/hymenoptera/val");
    let evaluate = |extra: &[&str]| {
        let mut args = vec![
            "evaluate",
            "--head",
            s(&out),
            s(&val),
            "--no-cache",
            "--json",
        ];
        args.extend_from_slice(extra);
        ok(with_cal(&cal, &args))
    };
    let followed = evaluate(&[]);
    assert_eq!(followed, evaluate(&["--precision", "f32"]));
    assert_ne!(followed, evaluate(&["--precision", "int8"]));

    // serve's JSON lines carry the probabilities; compare them with predict's for the same image.
    let probs_of = |line: &str| json_probs(serde_json::from_str(line).unwrap());
    let serve = |extra: &[&str]| {
        let mut args = vec![
            "serve",
            "--head",
            s(&out),
            "--source",
            s(&bee),
            "--no-http",
            "--frames",
            "1",
        ];
        args.extend_from_slice(extra);
        probs_of(ok(with_cal(&cal, &args)).lines().next().unwrap())
    };
    let served = serve(&[]);
    assert_eq!(served, serve(&["--precision", "f32"]));
    assert_ne!(served, serve(&["--precision", "int8"]));
}

fn json_probs(v: Value) -> Vec<(String, f64)> {
    v["probs"]
        .as_object()
        .unwrap_or_else(|| panic!("no probs in {v}"))
        .iter()
        .map(|(k, p)| (k.clone(), p.as_f64().unwrap()))
        .collect()
}
