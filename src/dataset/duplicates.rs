//! Held-out images that are copies of training images: found by the sha256 of the file's bytes
//! when the split is made, and set aside, so held-out accuracy measures generalisation, not
//! memory of a training image saved twice (a second `capture` of the same frames, a copied file).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{Dataset, Split};

/// A held-out image whose file is byte for byte a training image.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Duplicate {
    /// The held-out image, relative to the data folder.
    pub file: String,
    /// The split it was taken out of.
    pub split: Split,
    /// The training image with the same bytes.
    pub train_file: String,
    pub sha256: String,
}

/// The sha256 of a file's bytes, read in pieces (any size in bounded memory); `None` if it
/// cannot be read or is empty (no image: embedding reports it as unreadable, which says more
/// than calling empty files copies of each other).
pub fn content_sha256(path: &Path) -> Option<String> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut h = Sha256::new();
    let n = std::io::copy(&mut f, &mut h).ok()?;
    (n > 0).then(|| hex::encode(h.finalize()))
}

impl Dataset {
    /// Takes out of validation and test every image whose bytes are a training image's, and
    /// lists it in `duplicates` (in split, then path order). A file that cannot be read is left
    /// where it is: embedding reports it as unreadable.
    pub(super) fn set_aside_duplicates(&mut self) {
        if self.val.is_empty() && self.test.is_empty() {
            return;
        }
        let mut trained: BTreeMap<String, &str> = BTreeMap::new();
        for s in &self.train {
            if let Some(h) = content_sha256(&s.path) {
                trained.entry(h).or_insert(&s.rel);
            }
        }
        let mut duplicates = Vec::new();
        for (split, samples) in [(Split::Val, &mut self.val), (Split::Test, &mut self.test)] {
            samples.retain(|s| {
                let Some(h) = content_sha256(&s.path) else {
                    return true;
                };
                let Some(train_file) = trained.get(&h) else {
                    return true;
                };
                duplicates.push(Duplicate {
                    file: s.rel.clone(),
                    split,
                    train_file: train_file.to_string(),
                    sha256: h,
                });
                false
            });
        }
        self.duplicates = duplicates;
    }

}

#[cfg(test)]
mod tests {
    use super::super::SplitFractions;
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
