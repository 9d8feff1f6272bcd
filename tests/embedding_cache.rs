//! The embedding cache end to end, through `finetune`'s report: a second run embeds nothing, a
//! damaged entry is re-embedded (alone), added images are embedded (alone), and int8 never reuses
//! f32's entries.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

/// `finetune DATA` with `cache` and `extra`; (computed, cached) from its report.
fn embed_counts(data: &Path, out: &Path, cache: &Path, extra: &[&str]) -> (u64, u64) {
    let mut args = vec![
        "finetune",
        s(data),
        "--out",
        s(out),
        "--cache",
        s(cache),
        "--augment",
        "1",
        "--epochs",
        "5",
        "--json",
    ];
    args.extend_from_slice(extra);
    let o = edge_command().args(&args).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let r: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let e = &r["embeddings"];
    (
        e["computed"].as_u64().unwrap(),
        e["cached"].as_u64().unwrap(),
    )
}

fn entries(cache: &Path) -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    for d in std::fs::read_dir(cache).unwrap() {
        for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
            v.push(f.unwrap().path());
        }
    }
    v.sort();
    v
}

#[test]
fn reruns_damage_additions_and_precisions() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_hymenoptera(tmp.path(), 8);
    let cache = tmp.path().join("cache");
    let out = tmp.path().join("out");
    // 16 images; `computed`/`cached` count images. Train images get a plain and one augmented
    // view: one cache entry each; held-out images only the plain one.
    let (computed, cached) = embed_counts(&data, &out, &cache, &[]);
    assert_eq!((computed, cached), (16, 0));
    let first = entries(&cache);
    assert!(first.len() > 16, "{} entries", first.len());

    assert_eq!(embed_counts(&data, &out, &cache, &[]), (0, 16));

    // A damaged entry (one flipped bit in the middle) is detected and that image re-embedded.
    let victim = &first[first.len() / 2];
    let mut bytes = std::fs::read(victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(victim, &bytes).unwrap();
    assert_eq!(embed_counts(&data, &out, &cache, &[]), (1, 15));
    assert_ne!(
        std::fs::read(victim).unwrap(),
        bytes,
        "the entry is rewritten"
    );
    // A truncated one too.
    std::fs::write(victim, &bytes[..100]).unwrap();
    assert_eq!(embed_counts(&data, &out, &cache, &[]), (1, 15));

    // Two more images: only they are embedded.
    for (class, nth) in [("ants", 20), ("bees", 20)] {
        let f = hymenoptera_train_image(class, nth);
        std::fs::copy(&f, data.join(class).join(f.file_name().unwrap())).unwrap();
    }
    assert_eq!(embed_counts(&data, &out, &cache, &[]), (2, 16));

    // f32 arithmetic never reuses the default int8's embeddings, then has its own entries.
    assert_eq!(
        embed_counts(&data, &out, &cache, &["--precision", "f32"]),
        (18, 0)
    );
    assert_eq!(
        embed_counts(&data, &out, &cache, &["--precision", "f32"]),
        (0, 18)
    );
    assert_eq!(embed_counts(&data, &out, &cache, &[]), (0, 18));
}
