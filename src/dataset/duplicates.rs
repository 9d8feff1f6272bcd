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
/// cannot be read.
pub fn content_sha256(path: &Path) -> Option<String> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).ok()?;
    Some(hex::encode(h.finalize()))
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
