//! The head every test that needs "some head" uses: trained once per test run and reused by every
//! test binary, instead of once per binary (three full trainings and three small ones per suite).
//!
//! It lives under the target directory (`CARGO_TARGET_TMPDIR`), named by a hash of what makes it:
//! the edge-mnv2 binary's bytes, the training arguments, the data set's and the models' checksum
//! lists. A rebuilt binary (a feature set, a code change, a mutation) or other arguments name
//! another head, so a stale one is never reused. The first binary to need it trains it under an
//! exclusive file lock while the others wait; it appears by one rename, whole or not at all.
#![allow(dead_code)]

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use super::{edge_command, shared, stderr};

/// All of hymenoptera/train (val stays unseen by the head), no augmentation, 60 epochs, the
/// default four views: good enough that serve's labels on val mean something, and what
/// tests/serve.rs has always trained.
const ARGS: [&str; 4] = ["--augment", "0", "--epochs", "60"];

/// `head.json` of the shared head. Tests never write to it: they copy it first
/// ([`super::head_in`]), and a changed file fails the next binary that uses it.
pub fn shared_head() -> &'static Path {
    static HEAD: OnceLock<PathBuf> = OnceLock::new();
    HEAD.get_or_init(|| {
        let data = shared().join("datasets/hymenoptera/train");
        trained_once("hymenoptera-train", &data, &ARGS)
    })
}

/// The sha256 of everything the head depends on, in hex.
fn key(data: &Path, args: &[&str]) -> String {
    let mut h = Sha256::new();
    let mut hash_file = |path: &Path| {
        let mut f = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        h.update(b"\0");
    };
    hash_file(Path::new(env!("CARGO_BIN_EXE_edge-mnv2")));
    // The data set's folder holds the class folders; its checksum list is one level up.
    hash_file(&data.parent().unwrap().join("MANIFEST.sha256"));
    hash_file(&shared().join("models/SHA256SUMS"));
    for a in std::iter::once(data.to_str().unwrap()).chain(args.iter().copied()) {
        h.update(a.as_bytes());
        h.update(b"\0");
    }
    hex::encode(h.finalize())
}

fn sha256_of(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    hex::encode(Sha256::digest(bytes))
}

/// `finetune DATA --out DIR ARGS` once per key: DIR/head.json.
fn trained_once(name: &str, data: &Path, args: &[&str]) -> PathBuf {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("shared-heads");
    std::fs::create_dir_all(&root).unwrap();
    let id = format!("{name}-{}", &key(data, args)[..16]);
    let dir = root.join(&id);
    let sha_file = root.join(format!("{id}.sha256"));
    let lock = File::create(root.join(format!("{id}.lock"))).unwrap();
    lock.lock().unwrap();
    if !dir.join("head.json").is_file() {
        // Trained beside its final place (same file system), then renamed into it: a run killed
        // midway leaves a temporary directory, never a partial head under the final name.
        let tmp = tempfile::tempdir_in(&root).unwrap();
        let out = tmp.path().join("head");
        let o = edge_command()
            .arg("finetune")
            .arg(data)
            .arg("--out")
            .arg(&out)
            .args(args)
            .env("EDGE_MNV2_CACHE", tmp.path().join("cache"))
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "finetune: {}", stderr(&o));
        std::fs::write(&sha_file, sha256_of(&out.join("head.json"))).unwrap();
        std::fs::rename(&out, &dir).unwrap();
    }
    let head = dir.join("head.json");
    let want = std::fs::read_to_string(&sha_file).unwrap();
    assert_eq!(
        sha256_of(&head),
        want,
        "{}: the shared head was changed after training (a test must copy it before changing \
         it); delete {} to train it again",
        head.display(),
        dir.display()
    );
    drop(lock);
    head
}
