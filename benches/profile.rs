//! Where a frame's time goes: the default model's optimised plan in each precision, run batch 1
//! on one thread, every node timed through tract's own evaluation hook (`run_plan_with_eval`).
//! Prints the time per operator kind (the profile table in PERFORMANCE.md), then the slowest
//! nodes with their output shapes, then an unprofiled run for comparison.
//!
//! `cargo bench --bench profile` (release profile). `PROFILE_RUNS=N` sets the timed runs (20);
//! `PROFILE_PRECISION=f32|int8` restricts to one precision.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use edge_mnv2::models::{self, Manifest, Precision};
use edge_mnv2::{preprocess, tflite};
use tract_core::internal::*;

fn main() -> TractResult<()> {
    let runs: usize = std::env::var("PROFILE_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
        .max(1);
    let only: Option<Precision> = std::env::var("PROFILE_PRECISION")
        .ok()
        .map(|p| p.parse().map_err(|e| format_err!("PROFILE_PRECISION: {e}")))
        .transpose()?;
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models");
    std::env::set_var(models::MODELS_ENV, &shared);
    let manifest = Manifest::builtin();
    let spec = manifest
        .get(&manifest.default)
        .ok_or_else(|| format_err!("no default model in the manifest"))?;
    let bytes = std::fs::read(shared.join(&spec.file))?;
    let frame = preprocess::load_raw_rgb(&shared.join("images/rgb224/cat.rgb"), 224)
        .map_err(|e| format_err!("{e}"))?;
    println!(
        "per-operator profile, {} ({}), batch 1, one thread, {runs} runs",
        spec.name,
        std::env::consts::ARCH
    );
    for precision in Precision::ALL {
        if only.is_some_and(|p| p != precision) {
            continue;
        }
        let built = tflite::build(&bytes, precision).map_err(|e| format_err!("{e}"))?;
        let mut model = built.model;
        model.select_output_outlets(&[built.embedding])?;
        let plan = model.into_optimized()?.into_runnable()?;
        let input = tensor1(frame.as_raw()).into_shape(&[1, 224, 224, 3])?;
        let mut state = SimpleState::new(&plan)?;
        for _ in 0..3 {
            state.run(tvec!(input.clone().into_tvalue()))?;
        }
        let mut per_op: BTreeMap<String, (Duration, usize)> = BTreeMap::new();
        let mut per_node: BTreeMap<usize, (String, Duration)> = BTreeMap::new();
        let started = Instant::now();
        for _ in 0..runs {
            state.run_plan_with_eval(
                tvec!(input.clone().into_tvalue()),
                |session, op_state, node, inputs| {
                    let t0 = Instant::now();
                    let out = tract_core::plan::eval(session, op_state, node, inputs);
                    let took = t0.elapsed();
                    let e = per_op.entry(node.op().name().to_string()).or_default();
                    e.0 += took;
                    e.1 += 1;
                    let n = per_node.entry(node.id).or_insert_with(|| {
                        let shape = format!("{:?}", node.outputs[0].fact.shape);
                        (
                            format!("{} {shape} {}", node.op().name(), node.name),
                            Duration::ZERO,
                        )
                    });
                    n.1 += took;
                    out
                },
            )?;
        }
        let profiled = started.elapsed().as_secs_f64() * 1e3 / runs as f64;
        let started = Instant::now();
        for _ in 0..runs {
            state.run(tvec!(input.clone().into_tvalue()))?;
        }
        let plain = started.elapsed().as_secs_f64() * 1e3 / runs as f64;
        println!(
            "\n{precision}: {} nodes, {profiled:.2} ms a frame profiled, {plain:.2} ms unprofiled",
            plan.model().nodes().len()
        );
        let mut ops: Vec<_> = per_op.into_iter().collect();
        ops.sort_by_key(|(_, (d, _))| std::cmp::Reverse(*d));
        println!("| operator | nodes | ms a frame | share |\n|---|---|---|---|");
        for (op, (d, n)) in ops.iter().filter(|(_, (d, _))| !d.is_zero()) {
            let ms = d.as_secs_f64() * 1e3 / runs as f64;
            if ms >= 0.005 {
                println!(
                    "| {op} | {} | {ms:.2} | {:.1}% |",
                    n / runs,
                    ms / profiled * 100.0
                );
            }
        }
        let mut nodes: Vec<_> = per_node.into_values().collect();
        nodes.sort_by_key(|(_, d)| std::cmp::Reverse(*d));
        println!("slowest nodes:");
        for (what, d) in nodes.iter().take(8) {
            println!("  {:>7.3} ms  {what}", d.as_secs_f64() * 1e3 / runs as f64);
        }
    }
    Ok(())
}
