//! Paths to the shared read-only models and datasets beside the checkout, and small helpers.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

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

pub fn read_f32s(path: &std::path::Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Runs the edge-mnv2 binary with the shared models directory as the model search path.
pub fn edge(args: &[&str]) -> Output {
    edge_in(args, &std::env::temp_dir())
}

/// The binary as a command. Under cross-testing the tests themselves run in qemu-user, which
/// cannot exec a foreign binary by itself: `EDGE_MNV2_TEST_RUNNER` (set by .ci/cross-env.sh)
/// names the emulator to run it with.
pub fn edge_command() -> Command {
    let bin = env!("CARGO_BIN_EXE_edge-mnv2");
    match std::env::var("EDGE_MNV2_TEST_RUNNER")
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
    }
}

pub fn edge_in(args: &[&str], cwd: &std::path::Path) -> Output {
    edge_command()
        .args(args)
        .current_dir(cwd)
        .env("EDGE_MNV2_MODELS", models_dir())
        .env_remove("RUST_LOG")
        .output()
        .expect("running edge-mnv2")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
