//! Backbone latency: cold start (resolve + checksum + load + optimise + first frame) and the
//! median of warm batch-1 frames, for each runnable model file and precision, with each one's
//! ratio against the first row (the default model in f32) measured in the same process.
//!
//! `cargo bench --bench backbone` (release profile; `--features onnx` adds the ONNX reference
//! files). `BENCH_RUNS=N` changes the warm run count.

use std::time::{Duration, Instant};

use edge_mnv2::backbone::Backbone;
use edge_mnv2::models::Precision;
use edge_mnv2::models::{self, Manifest};
use edge_mnv2::preprocess;

/// (manifest name, precision for TFLite files). The first row is the baseline of the ratios.
const MODELS: [(&str, Precision); 3] = [
    ("mobilenet_v2_1.0_224_quant", Precision::F32),
    ("mobilenet_v2_1.0_224_quant", Precision::Int8),
    ("tf2_mobilenet_v2_1.0_224_ptq", Precision::F32),
];

/// The ONNX reference files, measured when the bench is built with `--features onnx`.
const ONNX_MODELS: [(&str, Precision); 3] = [
    ("mnv2-1.0-224-dequant-backbone", Precision::F32),
    ("mnv2-1.0-224-quant-qdq-backbone", Precision::F32),
    ("mobilenetv2-12-int8-backbone", Precision::F32),
];

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30)
        .max(30);
    let shared = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models");
    std::env::set_var(models::MODELS_ENV, &shared);
    let frames: Vec<_> = [
        "bird",
        "cat",
        "dragonfly",
        "grace_hopper",
        "missvickie_potato_chips",
        "sunflower",
    ]
    .iter()
    .map(|n| preprocess::load_raw_rgb(&shared.join(format!("images/rgb224/{n}.rgb")), 224).unwrap())
    .collect();
    let manifest = Manifest::builtin();
    println!(
        "backbone latency, batch 1, 224x224, {runs} warm runs, {} ({})",
        std::env::consts::ARCH,
        edge_mnv2::calibration::cpu_name()
    );
    println!(
        "{:<36} {:>10} {:>10} {:>10} {:>10}",
        "model", "cold ms", "median ms", "p90 ms", "vs first"
    );
    let mut base = None;
    let onnx: &[(&str, Precision)] = if cfg!(feature = "onnx") {
        &ONNX_MODELS
    } else {
        &[]
    };
    for &(name, precision) in MODELS.iter().chain(onnx) {
        let t0 = Instant::now();
        let resolved = models::resolve(&manifest, Some(name)).unwrap();
        let backbone = Backbone::load_with_precision(&resolved, false, precision).unwrap();
        let name = match backbone.precision() {
            Some(p) => format!("{name} {p}"),
            None => name.to_string(),
        };
        backbone.embed(&frames[0]).unwrap();
        let cold = t0.elapsed();
        for f in &frames {
            backbone.embed(f).unwrap();
        }
        let mut times: Vec<Duration> = (0..runs)
            .map(|i| {
                let t = Instant::now();
                std::hint::black_box(backbone.embed(&frames[i % frames.len()]).unwrap());
                t.elapsed()
            })
            .collect();
        times.sort();
        let med = median(times.clone());
        let p90 = times[times.len() * 9 / 10];
        let base_med = *base.get_or_insert(med);
        println!(
            "{name:<36} {:>10.1} {:>10.2} {:>10.2} {:>9.2}x",
            ms(cold),
            ms(med),
            ms(p90),
            ms(med) / ms(base_med)
        );
    }
}
