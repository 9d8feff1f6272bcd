//! Fault injection through the binary: `kill -9` of `finetune` (at random points: the seed is
//! printed, `FAULTS_SEED=N` replays it), of `capture` while saving, of `models fetch`
//! mid-download and of `serve` during head reloads; a corrupted cache entry. Afterwards the
//! previous head, report, cache and captured images are intact and readable, and nothing left
//! behind trips a later run. (A write failing midway, ENOSPC, is injected at every step of the
//! final writes in tests/final_writes.rs.)

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::http_server::{Reply, Server};
use common::*;
use edge_mnv2::features::decode_entry;
use edge_mnv2::head::Head;
use rand::{Rng, SeedableRng};
use serde_json::Value;

/// The seed for this run's random kill points, printed so a failure can be replayed.
fn rng(test: &str) -> rand_chacha::ChaCha8Rng {
    let seed = std::env::var("FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("{test}: FAULTS_SEED={seed}");
    rand_chacha::ChaCha8Rng::seed_from_u64(seed)
}

fn edge_env<'a>(cmd: &'a mut Command, scratch: &Path) -> &'a mut Command {
    // No calibration: none named, and none in the working directory (where `calibrate` writes).
    cmd.env("EDGE_MNV2_MODELS", models_dir())
        .env_remove("EDGE_MNV2_CALIBRATION")
        .current_dir(scratch)
        .env_remove("RUST_LOG")
}

fn finetune_cmd(scratch: &Path, data: &Path, out: &Path, cache: &Path, extra: &[&str]) -> Command {
    let mut cmd = edge_command();
    cmd.arg("finetune")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(["--json", "--epochs", "30"])
        .args(extra)
        .env("EDGE_MNV2_CACHE", cache);
    edge_env(&mut cmd, scratch);
    cmd
}

fn ok_json(o: &Output) -> Value {
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(o));
    serde_json::from_str(&stdout(o)).unwrap()
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn hidden(p: &Path) -> bool {
    p.file_name().unwrap().to_string_lossy().starts_with('.')
}

/// Every visible cache entry reads back whole; a killed writer may leave only hidden temporary
/// files, which no reader opens (an entry's name is its key).
fn assert_cache_intact(cache: &Path) -> usize {
    let mut entries = 0;
    for f in files_under(cache) {
        if hidden(&f) {
            continue;
        }
        let bytes = std::fs::read(&f).unwrap();
        let key = f.file_stem().unwrap().to_str().unwrap();
        assert!(
            decode_entry(key, &bytes).is_some(),
            "{}: damaged cache entry",
            f.display()
        );
        entries += 1;
    }
    entries
}

/// A finished `finetune` run shared by the tests here: data, its `--out`, its cache.
struct Trained {
    data: PathBuf,
    out: PathBuf,
    cache: PathBuf,
    report: Value,
    took: Duration,
}

fn trained() -> &'static Trained {
    static T: OnceLock<Trained> = OnceLock::new();
    T.get_or_init(|| {
        let scratch = tempfile::tempdir().unwrap().keep();
        let (data, out, cache) = (
            scratch.join("data"),
            scratch.join("out"),
            scratch.join("cache"),
        );
        copy_hymenoptera(&data, &[("ants", 6), ("bees", 6)]);
        let t = Instant::now();
        let o = finetune_cmd(
            &scratch,
            &data,
            &out,
            &cache,
            &["--augment", "0", "--views", "1"],
        )
        .output()
        .unwrap();
        let report = ok_json(&o);
        Trained {
            took: t.elapsed(),
            data,
            out,
            cache,
            report,
        }
    })
}

/// A copy of the trained run's `--out` and cache, for a test to damage.
fn copy_of(t: &Trained, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let root = tempfile::tempdir().unwrap().keep().join(name);
    let (out, cache) = (root.join("out"), root.join("cache"));
    for (from, to) in [(&t.out, &out), (&t.cache, &cache)] {
        for f in files_under(from) {
            let dest = to.join(f.strip_prefix(from).unwrap());
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(&f, dest).unwrap();
        }
    }
    (root, out, cache)
}

fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<_> = files_under(dir)
        .into_iter()
        .map(|f| {
            (
                f.strip_prefix(dir).unwrap().to_path_buf(),
                std::fs::read(&f).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

/// `out` holds a complete, consistent set: the report and the head of the same run.
fn assert_complete_set(out: &Path) -> Value {
    let report: Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let head = Head::read(out).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report["seed"], head.head.config.seed);
    assert_eq!(report["classes"], serde_json::json!(head.head.classes));
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains(&format!("Seed {},", head.head.config.seed)),
        "{md}"
    );
    report
}

fn kill9(child: &mut Child) {
    // Child::kill is SIGKILL on Unix; a child that has already exited is fine too.
    let _ = child.kill();
    let _ = child.wait();
}

/// `finetune` killed at random points of a run (embedding new images and augmented views,
/// training, writing): `--out` is the previous set or a new complete one, every cache entry
/// reads back whole, and the next run succeeds and leaves nothing beside `--out`.
#[test]
fn finetune_killed_anywhere_keeps_out_and_cache_whole() {
    let t = trained();
    let mut rng = rng("finetune_killed_anywhere");
    let (root, out, cache) = copy_of(t, "killed");
    let data = root.join("data");
    copy_hymenoptera(&data, &[("ants", 9), ("bees", 9)]);
    let old = snapshot(&out);
    // The killed runs embed 6 new images and augmented views, then train: a little longer than
    // the first run, which embedded 12 images.
    let span = t.took.as_secs_f64() * 1.5;
    let mut last = old;
    for seed in 1..=4 {
        let delay = rng.random_range(0.0..span);
        let mut child = finetune_cmd(
            &root,
            &data,
            &out,
            &cache,
            &["--augment", "1", "--seed", &seed.to_string()],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
        std::thread::sleep(Duration::from_secs_f64(delay));
        kill9(&mut child);
        let now = snapshot(&out);
        if now != last {
            let report = assert_complete_set(&out);
            assert_eq!(report["seed"], seed, "killed after {delay:.2} s");
            last = now;
        }
        assert_cache_intact(&cache);
        for e in std::fs::read_dir(&root).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                ["out", "cache", "data"].contains(&name.as_str())
                    || name.starts_with(".out.edge-mnv2-swap-"),
                "killed after {delay:.2} s: {name} beside --out"
            );
        }
    }
    let o = finetune_cmd(
        &root,
        &data,
        &out,
        &cache,
        &["--augment", "1", "--seed", "9"],
    )
    .output()
    .unwrap();
    let report = ok_json(&o);
    assert_eq!(assert_complete_set(&out)["seed"], 9);
    assert_eq!(report["counts"]["unreadable"], 0);
    let mut beside: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    beside.sort();
    assert_eq!(beside, ["cache", "data", "out"], "leftovers");
    let hidden_files: Vec<_> = files_under(&out)
        .into_iter()
        .filter(|f| hidden(f))
        .collect();
    assert!(
        hidden_files.is_empty(),
        "temporary files in --out: {hidden_files:?}"
    );
    assert!(assert_cache_intact(&cache) >= 18);
}

/// Damaged cache entries (a flipped bit, a truncation, a valid-looking entry of another image)
/// are recomputed, never used: the head comes out byte for byte as from a clean cache.
#[test]
fn corrupted_cache_entries_are_recomputed_never_trusted() {
    let t = trained();
    let (root, out, cache) = copy_of(t, "corrupt");
    let head_before = std::fs::read(out.join("head.json")).unwrap();
    let mut entries: Vec<PathBuf> = files_under(&cache)
        .into_iter()
        .filter(|f| !hidden(f))
        .collect();
    entries.sort();
    assert_eq!(entries.len(), 12, "one entry per image");
    let mut flipped = std::fs::read(&entries[0]).unwrap();
    flipped[4 + 3] ^= 0x40; // the exponent of the first value
    std::fs::write(&entries[0], &flipped).unwrap();
    let whole = std::fs::read(&entries[1]).unwrap();
    std::fs::write(&entries[1], &whole[..whole.len() / 2]).unwrap();
    let other = std::fs::read(&entries[3]).unwrap();
    std::fs::write(&entries[2], other).unwrap();
    let o = finetune_cmd(
        &root,
        &t.data,
        &out,
        &cache,
        &["--augment", "0", "--views", "1"],
    )
    .output()
    .unwrap();
    let report = ok_json(&o);
    // The entry replaced by another image's is whole: only its checksum over the key tells.
    assert_eq!(
        report["embeddings"]["computed"], 3,
        "{}",
        report["embeddings"]
    );
    assert_eq!(report["embeddings"]["cached"], 9);
    assert_eq!(std::fs::read(out.join("head.json")).unwrap(), head_before);
    assert_eq!(report["test"], t.report["test"]);
    assert_eq!(assert_cache_intact(&cache), 12);
}

/// `capture` killed while saving frames: every saved image is whole, numbering goes on, and
/// the folder opens as a dataset.
#[test]
fn capture_killed_while_saving_leaves_whole_images() {
    let mut rng = rng("capture_killed_while_saving");
    let tmp = tempfile::tempdir().unwrap();
    let source = shared().join("datasets/hymenoptera/val/ants");
    let data = tmp.path().join("data");
    for round in 0..3 {
        let mut cmd = edge_command();
        cmd.args(["capture", "--source"])
            .arg(&source)
            .args(["--class", "ants", "--count", "100000"])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        edge_env(&mut cmd, tmp.path());
        let mut child = cmd.spawn().unwrap();
        let delay = rng.random_range(0.2..1.5);
        std::thread::sleep(Duration::from_secs_f64(delay));
        kill9(&mut child);
        let dir = data.join("ants");
        if !dir.exists() {
            continue; // killed before the first frame
        }
        let mut saved = 0;
        for f in std::fs::read_dir(&dir).unwrap() {
            let p = f.unwrap().path();
            if hidden(&p) {
                continue; // a temporary file the kill interrupted: never read, never numbered
            }
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                name.ends_with(".jpg") && name.len() == 10,
                "round {round}: {name}"
            );
            edge_mnv2::preprocess::load_rgb(&p)
                .unwrap_or_else(|e| panic!("round {round}, killed after {delay:.2} s: {e}"));
            saved += 1;
        }
        eprintln!("round {round}: killed after {delay:.2} s, {saved} images");
    }
    // A later capture numbers on from the highest saved file, untroubled by any leftover. From
    // other images: capture saves no frame whose bytes the class folder holds already, and the
    // rounds above may have saved every image of `source`.
    let before = std::fs::read_dir(data.join("ants")).unwrap().count();
    let mut cmd = edge_command();
    cmd.args(["capture", "--source"])
        .arg(shared().join("datasets/hymenoptera/train/ants"))
        .args(["--class", "ants", "--count", "2"])
        .arg(&data);
    edge_env(&mut cmd, tmp.path());
    let o = cmd.output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_dir(data.join("ants")).unwrap().count(),
        before + 2
    );
}

const MODEL: &str = "mobilenet_v2_1.0_224_quant";
const MODEL_FILE: &str = "mobilenet_v2_1.0_224_quant.tflite";

/// `models fetch --force` killed mid-download: the verified copy already in the cache is intact,
/// nothing under the model's name is partial, and the next fetch succeeds.
#[test]
fn models_fetch_killed_mid_download_keeps_the_verified_copy() {
    let mut rng = rng("models_fetch_killed");
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("models");
    std::fs::create_dir(&cache).unwrap();
    let original = models_dir().join(MODEL_FILE);
    std::fs::copy(&original, cache.join(MODEL_FILE)).unwrap();
    let sha = edge_mnv2::models::sha256_file(&original).unwrap();
    let fetch = |url: &str| {
        let mut cmd = fetch_command(&cache, tmp.path());
        cmd.args(["models", "fetch", MODEL, "--force", "--url", url]);
        cmd
    };
    let body = std::fs::read(&original).unwrap();
    let sent = rng.random_range(1..3_000_000);
    let stalling = Server::start(Reply::Stall { body, sent });
    let mut child = fetch(&format!("{}/models/{MODEL_FILE}", stalling.base))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    stalling.wait_stalled(Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(rng.random_range(0..200)));
    kill9(&mut child);
    assert_eq!(
        edge_mnv2::models::sha256_file(&cache.join(MODEL_FILE)).unwrap(),
        sha
    );
    for f in files_under(&cache) {
        assert!(hidden(&f) || f.ends_with(MODEL_FILE), "{}", f.display());
    }
    // A real server for the retry, with the whole body.
    let server = Server::start(Reply::SharedFile);
    let base = &server.base;
    let o = fetch(&format!("{base}/models/{MODEL_FILE}"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        edge_mnv2::models::sha256_file(&cache.join(MODEL_FILE)).unwrap(),
        sha
    );
}

/// `serve` reloading its head (SIGHUP) while `finetune`'s final writes replace `--out` over and
/// over: it never reads a partial set (no reload refused), and a `kill -9` in the middle of a
/// reload leaves the head on disk whole for the next start.
#[test]
fn serve_reloading_while_heads_are_replaced_never_sees_a_partial_head() {
    let t = trained();
    let mut rng = rng("serve_reload");
    let (root, out, _cache) = copy_of(t, "serve");
    let head = Head::read(&out).unwrap().head;
    let mut other = head.clone();
    other.dense.bias[0] += 1.0;
    let sets: Vec<Vec<(&str, Vec<u8>)>> = [&head, &other]
        .iter()
        .map(|h| {
            vec![
                (
                    "report.json",
                    std::fs::read(out.join("report.json")).unwrap(),
                ),
                ("report.md", std::fs::read(out.join("report.md")).unwrap()),
                ("head.json", h.to_file_bytes().unwrap()),
            ]
        })
        .collect();
    let mut cmd = edge_command();
    cmd.args(["serve", "--no-http", "--fps", "5", "--head"])
        .arg(&out)
        .arg("--source")
        .arg(shared().join("models/images/cat.bmp"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    edge_env(&mut cmd, &root).env("RUST_LOG", "info");
    let mut child = cmd.spawn().unwrap();
    let pid = child.id() as i32;
    let stderr_lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let lines = std::sync::Arc::clone(&stderr_lines);
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            lines.lock().unwrap().push(l);
        }
    });
    let count = |what: &str| {
        stderr_lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(what))
            .count()
    };
    let started = Instant::now();
    // SIGHUP's handler is installed before the source opens; until then SIGHUP would kill it.
    while count("source open") == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "serve did not start: {:?}",
            stderr_lines.lock().unwrap()
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "serve exited: {:?}",
            stderr_lines.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for i in 0..40 {
        let files: Vec<(&str, &[u8])> = sets[i % 2]
            .iter()
            .map(|(n, b)| (*n, b.as_slice()))
            .collect();
        edge_mnv2::fsutil::replace_files(&out, &files).unwrap();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGHUP) };
        std::thread::sleep(Duration::from_millis(rng.random_range(0..30)));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while count("head reloaded") + count("reload refused") == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    unsafe { libc::kill(pid, libc::SIGHUP) };
    std::thread::sleep(Duration::from_millis(rng.random_range(0..20)));
    kill9(&mut child);
    let log = stderr_lines.lock().unwrap().join("\n");
    assert_eq!(count("reload refused"), 0, "{log}");
    assert!(count("head reloaded") >= 1, "{log}");
    assert_complete_set(&out);
    let o = {
        let mut cmd = edge_command();
        cmd.args(["serve", "--no-http", "--frames", "1", "--head"])
            .arg(&out)
            .arg("--source")
            .arg(shared().join("models/images/cat.bmp"));
        edge_env(&mut cmd, &root);
        cmd.output().unwrap()
    };
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 1, "{}", stdout(&o));
}
