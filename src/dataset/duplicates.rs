//! Held-out images that are copies of training images: found by the sha256 of the file's bytes
//! when the split is made, and set aside, so held-out accuracy measures generalisation, not
//! memory of a training image saved twice (a second `capture` of the same frames, a copied file).

use std::collections::BTreeMap;
use std::path::Path;

use sha2::{Digest, Sha256};

/// The sha256 of a file's bytes, read in pieces (any size in bounded memory); `None` if it
/// cannot be read or is empty (no image: embedding reports it as unreadable, which says more
/// than calling empty files copies of each other).
pub fn content_sha256(path: &Path) -> Option<String> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut h = Sha256::new();
    let n = std::io::copy(&mut f, &mut h).ok()?;
    (n > 0).then(|| hex::encode(h.finalize()))
}

/// The training images by content hash (the first by path for bytes saved twice), to look
/// held-out images up in.
pub struct TrainingCopies<'a> {
    by_hash: BTreeMap<String, &'a str>,
}

impl<'a> TrainingCopies<'a> {
    /// From each training image's path and name (`rel`).
    pub fn of(train: impl Iterator<Item = (&'a Path, &'a str)>) -> TrainingCopies<'a> {
        let mut by_hash = BTreeMap::new();
        for (path, rel) in train {
            if let Some(h) = content_sha256(path) {
                by_hash.entry(h).or_insert(rel);
            }
        }
        TrainingCopies { by_hash }
    }

    /// The training image with the bytes of the file at `path`, and their sha256.
    pub fn find(&self, path: &Path) -> Option<(&'a str, String)> {
        let h = content_sha256(path)?;
        self.by_hash.get(&h).map(|rel| (*rel, h))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Dataset, Duplicate, Split, SplitFractions};
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, p.as_os_str().as_encoded_bytes()).unwrap();
    }

    /// The finding: a frame captured twice under two numbers, one copy trained on and the
    /// other in the test split, made held-out accuracy measure memory.
    #[test]
    fn held_out_copies_of_training_images_are_set_aside() {
        let d = tempfile::tempdir().unwrap();
        for c in ["a", "b"] {
            for i in 0..20 {
                touch(&d.path().join(format!("{c}/{i}.jpg")));
            }
        }
        let fresh = Dataset::open(d.path(), SplitFractions::default()).unwrap();
        assert!(fresh.duplicates.is_empty());
        let (trained, held) = (&fresh.train[0], &fresh.test[0]);
        std::fs::copy(&trained.path, &held.path).unwrap();
        // An empty file is no copy of anything (it is reported as unreadable instead).
        std::fs::write(&fresh.val[0].path, b"").unwrap();
        std::fs::write(&fresh.train[1].path, b"").unwrap();
        let ds = Dataset::open(d.path(), SplitFractions::default()).unwrap();
        assert_eq!(
            ds.duplicates,
            [Duplicate {
                file: held.rel.clone(),
                split: Split::Test,
                train_file: trained.rel.clone(),
                sha256: content_sha256(&trained.path).unwrap(),
            }]
        );
        assert_eq!(ds.test.len(), fresh.test.len() - 1);
        assert!(ds.test.iter().all(|s| s.rel != held.rel));
        assert_eq!(ds.train.len(), fresh.train.len());
        assert_eq!(ds.val.len(), fresh.val.len());
        // Deterministic: the same list every time.
        let again = Dataset::open(d.path(), SplitFractions::default()).unwrap();
        assert_eq!(again.duplicates, ds.duplicates);
    }
}
