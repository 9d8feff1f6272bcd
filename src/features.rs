//! Embeddings of a whole image set: decoded once, augmented views made, run through the frozen
//! backbone on every core, and kept in an on-disk cache so a second run re-embeds nothing.
//!
//! A cache entry's key is the hash of (the backbone's embedding id — its file's sha256, plus the
//! precision when that is not f32 —, image content sha256, preprocessing version, for a fixed view
//! (flip, centre crop...) its name, and for a random augmented view: its parameters, the seed and
//! the view index), so embeddings from other
//! arithmetic are never reused. Entries are
//! written atomically and carry their own checksum, so an interrupted run never leaves an entry
//! that reads back wrong; a damaged entry is recomputed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;

use sha2::{Digest, Sha256};

use crate::augment::{self, AugmentParams};
use crate::backbone::{self, Backbone, EMBEDDING_DIM};
use crate::fsutil;
use crate::preprocess::{self, PREPROCESS_VERSION};
use crate::views::{self, Views};

/// Environment variable overriding the cache directory.
pub const CACHE_ENV: &str = "EDGE_MNV2_CACHE";

/// Version 2: the checksum covers the key too (version 1 entries are recomputed).
const MAGIC: &[u8; 4] = b"EMB2";

pub fn default_cache_dir() -> Option<PathBuf> {
    match std::env::var_os(CACHE_ENV).filter(|v| !v.is_empty()) {
        Some(d) => Some(PathBuf::from(d)),
        None => dirs::cache_dir().map(|d| d.join("edge-mnv2").join("embeddings")),
    }
}

/// Which views of each image to embed: first the fixed views (view 0 is the plain image), then
/// `augment` random ones.
#[derive(Debug, Clone, Copy)]
pub struct ViewSpec {
    pub fixed: Views,
    pub augment: usize,
    pub params: AugmentParams,
    pub seed: u64,
}

impl ViewSpec {
    pub fn plain() -> ViewSpec {
        ViewSpec::fixed(Views::ONE)
    }

    /// The fixed views alone (what evaluation and prediction use).
    pub fn fixed(fixed: Views) -> ViewSpec {
        ViewSpec {
            fixed,
            augment: 0,
            params: AugmentParams::default(),
            seed: 0,
        }
    }

    /// How many embeddings each image gets.
    pub fn count(&self) -> usize {
        self.fixed.count() + self.augment
    }
}

pub struct Cache {
    dir: Option<PathBuf>,
}

impl Cache {
    pub fn new(dir: Option<PathBuf>) -> Cache {
        Cache { dir }
    }

    fn key(embedding_id: &str, image_sha: &str, views: &ViewSpec, view: usize) -> String {
        let mut h = Sha256::new();
        h.update(b"edge-mnv2 embedding\0");
        h.update(PREPROCESS_VERSION.as_bytes());
        h.update(b"\0");
        h.update(embedding_id.as_bytes());
        h.update(b"\0");
        h.update(image_sha.as_bytes());
        let fixed = views.fixed.count();
        if view >= fixed {
            // Random views keep the key they had before fixed views existed: view 1..=augment.
            let r = view - fixed + 1;
            h.update(format!("\0{}\0seed={}\0view={r}", views.params.key(), views.seed).as_bytes());
        } else if view > 0 {
            h.update(format!("\0fixed={}", views::view_name(view)).as_bytes());
        }
        hex::encode(h.finalize())
    }

    fn path(&self, key: &str) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|d| d.join(&key[..2]).join(format!("{key}.emb")))
    }

    fn get(&self, key: &str) -> Option<Vec<f32>> {
        let bytes = std::fs::read(self.path(key)?).ok()?;
        decode_entry(key, &bytes)
    }

    /// Best effort: a cache that cannot be written only costs time, so failures are logged once.
    fn put(&self, key: &str, v: &[f32], warned: &AtomicBool) {
        let Some(path) = self.path(key) else { return };
        let bytes = encode_entry(key, v);
        let res = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .map_err(anyhow::Error::from)
            .and_then(|_| fsutil::write_atomic_unsynced(&path, &bytes));
        if let Err(e) = res {
            if !warned.swap(true, Ordering::Relaxed) {
                log::warn!("embedding cache not writable, continuing without it: {e:#}");
            }
        }
    }
}

/// A cache entry's bytes: magic, the embedding as little-endian f32, then the sha256 of the key
/// and those bytes, so an entry is only ever read back under its own key: a damaged entry, or a
/// whole one of another image copied or renamed into its place, is recomputed.
pub fn encode_entry(key: &str, v: &[f32]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(4 + v.len() * 4 + 32);
    bytes.extend_from_slice(MAGIC);
    for x in v {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    let digest = entry_digest(key, &bytes[4..]);
    bytes.extend_from_slice(&digest);
    bytes
}

fn entry_digest(key: &str, data: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(key.as_bytes());
    h.update(b"\0");
    h.update(data);
    h.finalize().into()
}

/// The embedding in the entry stored under `key`, or `None` for anything that is not a
/// complete, intact entry of [`EMBEDDING_DIM`] values written under that key (which is then
/// recomputed, never trusted).
pub fn decode_entry(key: &str, bytes: &[u8]) -> Option<Vec<f32>> {
    let n = EMBEDDING_DIM * 4;
    if bytes.len() != 4 + n + 32 || &bytes[..4] != MAGIC {
        return None;
    }
    let data = &bytes[4..4 + n];
    if entry_digest(key, data) != bytes[4 + n..] {
        return None;
    }
    Some(
        data.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

/// The embeddings of one image: `views[0]` plain, the other fixed views, then the random ones.
#[derive(Debug, Clone)]
pub struct ImageEmbeddings {
    pub views: Vec<Vec<f32>>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct EmbedStats {
    pub computed: usize,
    pub cached: usize,
}

/// Embeds every path (with `views`), on `threads` workers. Results are in input order; an image
/// that cannot be read or decoded gives its one-line error instead. `on_done` is called from
/// this thread after each image (for progress); `cancel` stops early with an error.
pub fn embed_all(
    backbone: &Backbone,
    paths: &[&Path],
    views: &ViewSpec,
    cache: &Cache,
    threads: usize,
    cancel: &AtomicBool,
    mut on_done: impl FnMut(usize),
) -> anyhow::Result<(Vec<Result<ImageEmbeddings, String>>, EmbedStats)> {
    let next = AtomicUsize::new(0);
    let warned = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel();
    let mut results: Vec<Option<Result<ImageEmbeddings, String>>> = vec![None; paths.len()];
    let mut stats = EmbedStats::default();
    std::thread::scope(|s| {
        let workers = threads.max(1);
        for _ in 0..workers {
            let tx = tx.clone();
            let (next, warned) = (&next, &warned);
            let work = move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= paths.len() || cancel.load(Ordering::Relaxed) {
                    break;
                }
                let r = embed_one(backbone, paths[i], views, cache, warned);
                if tx.send((i, r)).is_err() {
                    break;
                }
            };
            // Workers side by side already fill the cores: a frame split again would only
            // add threads that wait for them.
            s.spawn(move || match workers {
                1 => work(),
                _ => backbone::one_thread_per_frame(work),
            });
        }
        drop(tx);
        for (done, (i, r)) in rx.into_iter().enumerate() {
            if let Ok((_, from_cache)) = &r {
                if *from_cache {
                    stats.cached += 1
                } else {
                    stats.computed += 1
                }
            }
            results[i] = Some(r.map(|(e, _)| e));
            on_done(done + 1);
        }
    });
    if cancel.load(Ordering::Relaxed) {
        anyhow::bail!("interrupted");
    }
    Ok((
        results
            .into_iter()
            .map(|r| r.expect("every index is sent once"))
            .collect(),
        stats,
    ))
}

/// Returns the embeddings and whether they all came from the cache.
fn embed_one(
    backbone: &Backbone,
    path: &Path,
    views: &ViewSpec,
    cache: &Cache,
    warned: &AtomicBool,
) -> Result<(ImageEmbeddings, bool), String> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| format!("{name}: {e}"))?;
    let image_sha = hex::encode(Sha256::digest(&bytes));
    let keys: Vec<String> = (0..views.count())
        .map(|v| Cache::key(&backbone.embedding_id(), &image_sha, views, v))
        .collect();
    let cached: Vec<Option<Vec<f32>>> = keys.iter().map(|k| cache.get(k)).collect();
    if cached.iter().all(Option::is_some) {
        let views = cached.into_iter().map(|v| v.expect("checked")).collect();
        return Ok((ImageEmbeddings { views }, true));
    }
    let rgb = preprocess::decode_rgb_reduced(&bytes, &name, backbone.input_size())
        .map_err(|e| e.to_string())?;
    let fitted = preprocess::fit(&rgb, backbone.input_size());
    let mut out = Vec::with_capacity(keys.len());
    for (v, (key, hit)) in keys.iter().zip(cached).enumerate() {
        let emb = match hit {
            Some(e) => e,
            None => {
                let fixed = views.fixed.count();
                let e = if v < fixed {
                    backbone.embed(&views::view(&fitted, v))
                } else {
                    let mut rng = augment::view_rng(views.seed, &image_sha, v - fixed + 1);
                    backbone.embed(&augment::augment(&fitted, &views.params, &mut rng))
                }
                .map_err(|e| format!("{name}: {e}"))?;
                cache.put(key, &e, warned);
                e
            }
        };
        out.push(emb);
    }
    Ok((ImageEmbeddings { views: out }, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_round_trip_and_damage_detection() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::new(Some(d.path().to_path_buf()));
        let key = Cache::key("m", "i", &ViewSpec::plain(), 0);
        let v: Vec<f32> = (0..EMBEDDING_DIM).map(|i| i as f32 * 0.5).collect();
        cache.put(&key, &v, &AtomicBool::new(false));
        assert_eq!(cache.get(&key).unwrap(), v);
        let p = cache.path(&key).unwrap();
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[100] ^= 1;
        std::fs::write(&p, &bytes).unwrap();
        assert!(cache.get(&key).is_none());
    }

    #[test]
    fn keys_separate_views_seeds_and_params() {
        let a = ViewSpec {
            fixed: Views::ONE,
            augment: 2,
            params: AugmentParams::default(),
            seed: 1,
        };
        let b = ViewSpec { seed: 2, ..a };
        assert_eq!(Cache::key("m", "i", &a, 0), Cache::key("m", "i", &b, 0));
        assert_ne!(Cache::key("m", "i", &a, 1), Cache::key("m", "i", &b, 1));
        assert_ne!(Cache::key("m", "i", &a, 1), Cache::key("m", "i", &a, 2));
        // Every fixed view has its own entry, and a random view keeps its key when fixed views
        // come before it.
        let four = ViewSpec {
            fixed: Views::FOUR,
            ..a
        };
        let keys: std::collections::BTreeSet<String> =
            (0..6).map(|v| Cache::key("m", "i", &four, v)).collect();
        assert_eq!(keys.len(), 6);
        assert_eq!(Cache::key("m", "i", &four, 4), Cache::key("m", "i", &a, 1));
        assert_eq!(Cache::key("m", "i", &four, 0), Cache::key("m", "i", &a, 0));
        // Each augmentation parameter is part of an augmented view's key; the plain view has none.
        for params in [
            AugmentParams {
                flip: !a.params.flip,
                ..a.params
            },
            AugmentParams {
                rotate_deg: a.params.rotate_deg + 1.0,
                ..a.params
            },
            AugmentParams {
                zoom: a.params.zoom + 0.05,
                ..a.params
            },
        ] {
            let c = ViewSpec { params, ..a };
            assert_ne!(Cache::key("m", "i", &a, 1), Cache::key("m", "i", &c, 1));
            assert_eq!(Cache::key("m", "i", &a, 0), Cache::key("m", "i", &c, 0));
        }
        // Another embedding id (another model file, or int8 beside f32) and another image never
        // share an entry, plain or augmented.
        for v in 0..=1 {
            assert_ne!(
                Cache::key("m", "i", &a, v),
                Cache::key("m:int8", "i", &a, v)
            );
            assert_ne!(Cache::key("m", "i", &a, v), Cache::key("m", "j", &a, v));
        }
    }
}
