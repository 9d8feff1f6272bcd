//! Paths to the shared read-only models and datasets beside the checkout, and small helpers.
#![allow(dead_code)]

pub mod http_server;
#[cfg(feature = "mqtt")]
pub mod mqtt;
pub mod served;
pub mod shared_head;

// Most test files need no head: re-exported for those that do.
#[allow(unused_imports)]
pub use shared_head::shared_head;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// `../shared` next to the checkout. Tests need it and fail (not skip) without it: a test that
/// silently passes on a machine without the data would prove nothing.
pub fn shared() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared");
    assert!(
        p.join("models/MANIFEST.md").is_file(),
        "../shared/models is missing: {}",
        p.display()
    );
    p
}

/// A path as the `&str` a command line takes (test paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

pub fn models_dir() -> PathBuf {
    shared().join("models")
}

pub const GOLDEN_IMAGES: [&str; 6] = [
    "bird",
    "cat",
    "dragonfly",
    "grace_hopper",
    "missvickie_potato_chips",
    "sunflower",
];

pub fn read_f32s(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Runs the edge-mnv2 binary with the shared models directory as the model search path.
pub fn edge(args: &[&str]) -> Output {
    edge_command()
        .args(args)
        .output()
        .expect("running edge-mnv2")
}

/// An empty directory of this test binary's own, deleted with it: the working directory and the
/// caches of every command the tests run (see [`edge_command`]).
pub fn isolated_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = tempfile::Builder::new()
            .prefix("edge-mnv2-test-")
            .tempdir()
            .expect("a temporary directory");
        std::fs::create_dir(d.path().join("cwd")).expect("creating cwd");
        d
    })
    .path()
}

/// The binary as a command, isolated from the machine it runs on: nothing the tests did not put
/// there can change what it does.
/// - The working directory is an empty directory, so the default calibration file
///   (`calibration/<board>.json`, relative to it) does not exist: no calibration unless a test
///   sets `EDGE_MNV2_CALIBRATION` (a `calibrate` run at the repository root, where it writes by
///   default, would otherwise change the precision every test uses). The relative model
///   directories (`./models`, `../shared/models`) are not there either.
/// - Models come from `$EDGE_MNV2_MODELS` = ../shared/models; the model cache (searched last) and
///   the embedding cache are directories of this test binary's own, not the user's.
/// - No log filter, proxy, mirror, journald or systemd variable leaks in from the caller.
///
/// A test may still override any of these (`.env(...)` / `.current_dir(...)` after this).
///
/// Under cross-testing the tests themselves run in qemu-user, which cannot exec a foreign binary
/// by itself: `EDGE_MNV2_TEST_RUNNER` (set by .ci/cross-env.sh) names the emulator to run it with.
pub fn edge_command() -> Command {
    let bin = env!("CARGO_BIN_EXE_edge-mnv2");
    let mut cmd = match std::env::var("EDGE_MNV2_TEST_RUNNER")
        .ok()
        .filter(|r| !r.trim().is_empty())
    {
        Some(runner) => {
            let mut parts = runner.split_whitespace();
            let mut cmd = Command::new(parts.next().expect("non-empty"));
            cmd.args(parts).arg(bin);
            cmd
        }
        None => Command::new(bin),
    };
    let iso = isolated_dir();
    cmd.current_dir(iso.join("cwd"))
        .env("EDGE_MNV2_MODELS", models_dir())
        .env("EDGE_MNV2_CACHE", iso.join("embeddings"))
        .env("EDGE_MNV2_MODEL_CACHE", iso.join("model-cache"));
    for var in [
        "EDGE_MNV2_CALIBRATION",
        "EDGE_MNV2_MODEL_BASE_URL",
        "RUST_LOG",
        "JOURNAL_STREAM",
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// `models fetch` and friends: downloads go to `cache`, run in `cwd`, and no model directory is
/// searched but the cache (the shared models would otherwise count as a verified copy).
pub fn fetch_command(cache: &Path, cwd: &Path) -> Command {
    let mut cmd = edge_command();
    cmd.current_dir(cwd)
        .env("EDGE_MNV2_MODEL_CACHE", cache)
        .env_remove("EDGE_MNV2_MODELS");
    cmd
}

pub fn edge_in(args: &[&str], cwd: &Path) -> Output {
    edge_command()
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("running edge-mnv2")
}

/// Runs the binary with the embedding cache in `cache` (a test's own, to count what it embeds).
pub fn edge_cached(args: &[&str], cache: &Path) -> Output {
    edge_command()
        .args(args)
        .env("EDGE_MNV2_CACHE", cache)
        .output()
        .expect("running edge-mnv2")
}

/// The JSON on stdout of a run that must have succeeded.
pub fn ok_json(out: &Output) -> serde_json::Value {
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(out));
    serde_json::from_str(&stdout(out)).unwrap_or_else(|e| panic!("{e}: {}", stdout(out)))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The images of a hymenoptera `split` ("train" or "val") class, sorted by name.
pub fn hymenoptera_images(split: &str, class: &str) -> Vec<PathBuf> {
    let src = shared()
        .join("datasets/hymenoptera")
        .join(split)
        .join(class);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

/// Copies the first `n` images (sorted by name) of each hymenoptera/train `(class, n)` into
/// `dir/<class>/`.
pub fn copy_hymenoptera(dir: &Path, per_class: &[(&str, usize)]) {
    for (class, n) in per_class {
        std::fs::create_dir_all(dir.join(class)).unwrap();
        for f in &hymenoptera_images("train", class)[..*n] {
            std::fs::copy(f, dir.join(class).join(f.file_name().unwrap())).unwrap();
        }
    }
}

/// `DIR/data/<class>/<image>` with the first `n` images (sorted by name) of each hymenoptera/train
/// class: a data set small enough to embed in a few seconds. Returns `DIR/data`.
pub fn small_hymenoptera(dir: &Path, n: usize) -> PathBuf {
    let data = dir.join("data");
    copy_hymenoptera(&data, &[("ants", n), ("bees", n)]);
    data
}

/// The nth image (sorted by name) of a hymenoptera/train class, beyond those `small_hymenoptera`
/// takes when `nth >= n`.
pub fn hymenoptera_train_image(class: &str, nth: usize) -> PathBuf {
    hymenoptera_images("train", class)[nth].clone()
}

/// A calibration file at `path` for the default model choosing `precision` on one thread.
pub fn write_calibration(path: &Path, precision: edge_mnv2::models::Precision) {
    use sha2::Digest;
    let model = models_dir().join("mobilenet_v2_1.0_224_quant.tflite");
    let sha = hex::encode(sha2::Sha256::digest(std::fs::read(&model).unwrap()));
    let cal = edge_mnv2::calibration::Calibration {
        format: edge_mnv2::calibration::FORMAT.into(),
        version: edge_mnv2::calibration::VERSION,
        board: "test-board".into(),
        arch: std::env::consts::ARCH.into(),
        cpu: "test".into(),
        cores: 1,
        model: "mobilenet_v2_1.0_224_quant".into(),
        model_sha256: sha,
        images: 6,
        runs: 2,
        min_top1_agreement: 0.99,
        measurements: Vec::new(),
        int8_f32_layers: Vec::new(),
        unavailable: Vec::new(),
        choice: edge_mnv2::calibration::Choice {
            precision,
            threads: 1,
        },
    };
    cal.save(path).unwrap();
}

/// A copy of the head file `source` in `dir/name/head.json`, optionally changed; returns the
/// directory.
pub fn head_in(
    source: &Path,
    dir: &Path,
    name: &str,
    change: impl FnOnce(&mut edge_mnv2::head::Head),
) -> PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    let mut head = edge_mnv2::head::Head::load(source).unwrap();
    change(&mut head);
    head.save(&d.join("head.json")).unwrap();
    d
}
