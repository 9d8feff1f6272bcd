//! Backbone latency: cold start (resolve + checksum + load + optimise + first frame) and the
//! median of warm batch-1 frames, for the default model in every precision (`Precision::ALL`),
//! then the other runnable model files, with each one's ratio against the first row (the default
//! model in f32) measured in the same process. For the default model it also gives the lowest
//! cosine of its embeddings against LiteRT's (the golden features of the six frames).
//!
//! `cargo bench --bench backbone` (release profile; `--features onnx` adds the ONNX reference
//! files). Environment:
//! - `BENCH_RUNS=N`: timed warm frames per row (default and minimum 30);
//! - `BENCH_THREADS=N`: threads per frame (default 1; `Backbone::set_threads`);
//! - `BENCH_DEFAULT_ONLY=1`: only the default model's precisions (what
//!   `benches/backbone_vs_peers.sh` runs).
//!
//! Besides the table, each row is printed as one machine-readable line of `key=value` fields
//! without spaces, starting with `BENCH `:
//! `BENCH engine=edge-mnv2 model=M precision=P threads=T runs=N cold_ms=C median_ms=X p90_ms=Y
//! cos_litert_min=Z` (`cos_litert_min=na` where there is no golden reference), or
//! `BENCH engine=edge-mnv2 model=M precision=P threads=T status=skipped` when the model does not
//! load in that precision here (the reason is in the table).

use std::path::Path;
use std::time::{Duration, Instant};

use edge_mnv2::backbone::{cosine, Backbone};
use edge_mnv2::models::Precision;
use edge_mnv2::models::{self, Manifest};
use edge_mnv2::preprocess;

/// The other model files (manifest name, precision), measured after the default model's
/// precisions unless `BENCH_DEFAULT_ONLY` is set.
const OTHER_MODELS: [(&str, Precision); 1] = [("tf2_mobilenet_v2_1.0_224_ptq", Precision::F32)];

/// The ONNX reference files, measured when the bench is built with `--features onnx`.
const ONNX_MODELS: [(&str, Precision); 3] = [
    ("mnv2-1.0-224-dequant-backbone", Precision::F32),
    ("mnv2-1.0-224-quant-qdq-backbone", Precision::F32),
    ("mobilenetv2-12-int8-backbone", Precision::F32),
];

/// The golden frames, fed round-robin (the same ones `benches/peer/backbone_peers.py` uses).
const FRAMES: [&str; 6] = [
    "bird",
    "cat",
    "dragonfly",
    "grace_hopper",
    "missvickie_potato_chips",
    "sunflower",
];

/// LiteRT's pooled features of [`FRAMES`] on the default model (1280 little-endian f32 each).
const LITERT_FEATURES: &str = "golden/features_litert_mobilenet_v2_1.0_224_quant_AvgPool";

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn env_usize(name: &str) -> Option<usize> {
    let v = std::env::var(name).ok()?;
    match v.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => {
            eprintln!("error: {name}={v:?} is not a whole number");
            std::process::exit(2);
        }
    }
}

fn read_f32s(path: &Path) -> Option<Vec<f32>> {
    let bytes = std::fs::read(path).ok()?;
    Some(
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    )
}

/// One row: loads `name` in `precision` on `threads`, runs the frames once each (the first
/// closes the cold start), then times `runs` frames round-robin.
struct Row {
    cold: Duration,
    median: Duration,
    p90: Duration,
    /// The lowest cosine of the embeddings against `reference` (one per frame), if given.
    cos_min: Option<f32>,
    precision: Option<Precision>,
}

fn measure(
    manifest: &Manifest,
    name: &str,
    precision: Precision,
    threads: usize,
    frames: &[image::RgbImage],
    reference: Option<&[Vec<f32>]>,
    runs: usize,
) -> Result<Row, String> {
    let t0 = Instant::now();
    let resolved = models::resolve(manifest, Some(name)).map_err(|e| e.to_string())?;
    let mut backbone =
        Backbone::load_with_precision(&resolved, false, precision).map_err(|e| e.to_string())?;
    backbone.set_threads(threads);
    let first = backbone.embed(&frames[0]).map_err(|e| e.to_string())?;
    let cold = t0.elapsed();
    // Warm-up: every frame once, keeping the embeddings for the agreement check.
    let mut embeddings = vec![first];
    for f in &frames[1..] {
        embeddings.push(backbone.embed(f).map_err(|e| e.to_string())?);
    }
    let cos_min = reference.map(|r| {
        embeddings
            .iter()
            .zip(r)
            .map(|(a, b)| cosine(a, b))
            .fold(f32::INFINITY, f32::min)
    });
    let mut times: Vec<Duration> = (0..runs)
        .map(|i| {
            let t = Instant::now();
            std::hint::black_box(backbone.embed(&frames[i % frames.len()]).unwrap());
            t.elapsed()
        })
        .collect();
    times.sort();
    Ok(Row {
        cold,
        median: times[times.len() / 2],
        p90: times[times.len() * 9 / 10],
        cos_min,
        precision: backbone.precision(),
    })
}

fn main() {
    let runs = env_usize("BENCH_RUNS").unwrap_or(30).max(30);
    let threads = env_usize("BENCH_THREADS").unwrap_or(1).max(1);
    let default_only = std::env::var("BENCH_DEFAULT_ONLY").is_ok_and(|v| !v.is_empty() && v != "0");
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models");
    std::env::set_var(models::MODELS_ENV, &shared);
    let frames: Vec<_> = FRAMES
        .iter()
        .map(|n| {
            preprocess::load_raw_rgb(&shared.join(format!("images/rgb224/{n}.rgb")), 224).unwrap()
        })
        .collect();
    let litert: Option<Vec<Vec<f32>>> = FRAMES
        .iter()
        .map(|n| read_f32s(&shared.join(LITERT_FEATURES).join(format!("{n}.f32"))))
        .collect();
    let manifest = Manifest::builtin();
    let default = manifest.default.clone();

    // (model, precision, whether LiteRT's golden features are its reference)
    let mut rows: Vec<(String, Precision, bool)> = Precision::ALL
        .into_iter()
        .map(|p| (default.clone(), p, true))
        .collect();
    if !default_only {
        let onnx: &[(&str, Precision)] = if cfg!(feature = "onnx") {
            &ONNX_MODELS
        } else {
            &[]
        };
        rows.extend(
            OTHER_MODELS
                .iter()
                .chain(onnx)
                .map(|&(n, p)| (n.to_string(), p, false)),
        );
    }

    println!(
        "backbone latency, batch 1, 224x224, {threads} thread(s) per frame, {runs} warm runs, {} ({})",
        std::env::consts::ARCH,
        edge_mnv2::calibration::cpu_name()
    );
    println!(
        "{:<42} {:>9} {:>10} {:>9} {:>9} {:>10}",
        "model", "cold ms", "median ms", "p90 ms", "vs first", "cos LiteRT"
    );
    let mut base = None;
    for (name, precision, against_litert) in rows {
        let reference = litert.as_deref().filter(|_| against_litert);
        match measure(
            &manifest, &name, precision, threads, &frames, reference, runs,
        ) {
            Ok(row) => {
                // ONNX files have no precision of their own to show.
                let label = match row.precision {
                    Some(p) => format!("{name} {p}"),
                    None => name.clone(),
                };
                let base_med = *base.get_or_insert(row.median);
                let cos = row.cos_min.map_or("na".to_string(), |c| format!("{c:.5}"));
                println!(
                    "{label:<42} {:>9.1} {:>10.2} {:>9.2} {:>8.2}x {cos:>10}",
                    ms(row.cold),
                    ms(row.median),
                    ms(row.p90),
                    ms(row.median) / ms(base_med)
                );
                println!(
                    "BENCH engine=edge-mnv2 model={name} precision={} threads={threads} runs={runs} \
                     cold_ms={:.1} median_ms={:.3} p90_ms={:.3} cos_litert_min={cos}",
                    row.precision.map_or("file", Precision::as_str),
                    ms(row.cold),
                    ms(row.median),
                    ms(row.p90),
                );
            }
            Err(reason) => {
                println!("{:<42} skipped: {reason}", format!("{name} {precision}"));
                println!(
                    "BENCH engine=edge-mnv2 model={name} precision={precision} threads={threads} \
                     status=skipped"
                );
            }
        }
    }
}
