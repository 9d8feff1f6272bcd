//! A labelled image folder and its deterministic train / validation / test split.
//!
//! Two layouts are accepted:
//! - `DATA/<class>/<image>`: split by a hash of each file's path relative to `DATA`
//!   (default 70/15/15), so adding images never moves the existing ones between splits;
//! - `DATA/{train,val,test}/<class>/<image>`: used as given. Without `test`, `val` becomes the
//!   held-out test set and validation is carved from `train` by the same hash.
//!
//! Class names are the folder names, sorted. Which files are images, and how folders are walked,
//! is [`crate::discover`]'s rule: hidden entries are skipped, non-image files counted as ignored;
//! files that turn out unreadable are reported later, when they are decoded. All splits' folders
//! are read in one walk, so a folder link never brings a folder into two classes or two splits.
//! A validation or test image whose bytes are a training image's is set aside (listed in
//! `duplicates`): a copy of a training image measures memory, not generalisation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::discover::{Skipped, WalkError};

mod duplicates;
mod scan;
pub use duplicates::content_sha256;
use duplicates::TrainingCopies;
use scan::{scan_class_folders, ClassFolders};

#[derive(Debug, Error)]
pub enum DatasetError {
    #[error("{0}: no such directory")]
    Missing(PathBuf),
    #[error("{0}: not a directory")]
    NotADir(PathBuf),
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("{0}: no class folders with images found (expected DATA/<class>/<image> or DATA/train/<class>/<image>)")]
    Empty(PathBuf),
    #[error("{path}: only one class ('{class}'); a classifier needs at least two class folders")]
    OneClass { path: PathBuf, class: String },
    #[error("{path}: class '{class}' has no images")]
    EmptyClass { path: PathBuf, class: String },
    #[error("{path}: class '{class}' is not among the training classes ({known})")]
    UnknownClass {
        path: PathBuf,
        class: String,
        known: String,
    },
    #[error("invalid split '{0}': expected three percentages like 70/15/15 summing to 100")]
    BadSplit(String),
    /// A data set refused while folder links were left out: they may be why (a class folder that
    /// is a link out of the data folder is no class).
    #[error("{error}; {first}{}", more_links(*.more))]
    LinksNotFollowed {
        error: Box<DatasetError>,
        first: Box<Skipped>,
        more: usize,
    },
}

fn more_links(more: usize) -> String {
    match more {
        0 => String::new(),
        n => format!(" (and {n} more folder link(s))"),
    }
}

impl From<WalkError> for DatasetError {
    fn from(e: WalkError) -> DatasetError {
        DatasetError::Io {
            path: e.dir,
            reason: e.error.to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    /// The name reports give the split (as its JSON spells it).
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub path: PathBuf,
    /// Path relative to the dataset (or split) root with `/` separators: the split hash input
    /// and the name shown in reports.
    pub rel: String,
    pub label: usize,
}

/// Fractions for the flat layout: (train, val); test is the rest.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SplitFractions {
    pub train: f64,
    pub val: f64,
}

impl Default for SplitFractions {
    fn default() -> Self {
        SplitFractions {
            train: 0.70,
            val: 0.15,
        }
    }
}

impl std::str::FromStr for SplitFractions {
    type Err = DatasetError;
    fn from_str(s: &str) -> Result<Self, DatasetError> {
        let bad = || DatasetError::BadSplit(s.to_string());
        let parts: Vec<f64> = s
            .split('/')
            .map(|p| p.trim().parse::<f64>().map_err(|_| bad()))
            .collect::<Result<_, _>>()?;
        if parts.len() != 3
            || parts.iter().any(|p| *p < 0.0)
            || (parts.iter().sum::<f64>() - 100.0).abs() > 1e-6
            || parts[0] <= 0.0
        {
            return Err(bad());
        }
        Ok(SplitFractions {
            train: parts[0] / 100.0,
            val: parts[1] / 100.0,
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Dataset {
    pub root: PathBuf,
    pub classes: Vec<String>,
    pub train: Vec<Sample>,
    pub val: Vec<Sample>,
    pub test: Vec<Sample>,
    /// How the splits were made, for the report and the terminal.
    pub notes: Vec<String>,
    /// Files skipped because they are not images (by extension).
    pub ignored_files: Vec<PathBuf>,
    /// Folder links the walk did not follow (out of the data folder, loops, folders read twice).
    pub skipped_links: Vec<Skipped>,
    /// Validation and test images whose bytes are also a training image's: set aside, since a
    /// copy of a training image measures memory, not generalisation.
    pub duplicates: Vec<Duplicate>,
}

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

/// Uniform in [0, 1) from a relative path; stable across machines and runs.
pub fn path_hash_unit(rel: &str) -> f64 {
    let d = Sha256::digest(rel.as_bytes());
    let v = u64::from_be_bytes(d[..8].try_into().expect("8 bytes"));
    v as f64 / 2f64.powi(64)
}

fn rel_to(path: &Path, root: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// `DATA` is laid out as `DATA/{train,val,test}/<class>/<image>`.
fn has_split_layout(root: &Path) -> bool {
    root.join("train").is_dir()
}

impl Dataset {
    /// Reads a dataset folder in either layout.
    pub fn open(root: &Path, fractions: SplitFractions) -> Result<Dataset, DatasetError> {
        if !root.exists() {
            return Err(DatasetError::Missing(root.to_path_buf()));
        }
        if !root.is_dir() {
            return Err(DatasetError::NotADir(root.to_path_buf()));
        }
        if has_split_layout(root) {
            Self::open_split_layout(root)
        } else {
            Self::open_flat(root, fractions)
        }
    }

    /// The folder of a training class: `DATA/train/<class>` or `DATA/<class>`.
    pub fn class_dir(&self, class: &str) -> PathBuf {
        if has_split_layout(&self.root) {
            self.root.join("train").join(class)
        } else {
            self.root.join(class)
        }
    }

    fn open_flat(root: &Path, fr: SplitFractions) -> Result<Dataset, DatasetError> {
        let mut scan = scan_class_folders(root, &[root.to_path_buf()])?;
        let (folders, ignored) = scan.folders.remove(0);
        let classes = check_classes(root, &folders).map_err(|e| e.with_links(&scan.skipped))?;
        let mut ds = Dataset::empty(root, classes, ignored);
        ds.skipped_links = scan.skipped;
        for (label, (_, paths)) in folders.iter().enumerate() {
            for path in paths {
                let rel = rel_to(path, root);
                let u = path_hash_unit(&rel);
                let sample = Sample {
                    path: path.clone(),
                    rel,
                    label,
                };
                if u < fr.train {
                    ds.train.push(sample);
                } else if u < fr.train + fr.val {
                    ds.val.push(sample);
                } else {
                    ds.test.push(sample);
                }
            }
        }
        ds.notes.push(format!(
            "one folder per class: split by path hash {:.0}/{:.0}/{:.0} (train/val/test)",
            fr.train * 100.0,
            fr.val * 100.0,
            (1.0 - fr.train - fr.val) * 100.0
        ));
        ds.ensure_every_class_trains();
        ds.set_aside_duplicates();
        Ok(ds)
    }

    fn open_split_layout(root: &Path) -> Result<Dataset, DatasetError> {
        let train_root = root.join("train");
        let has_val = root.join("val").is_dir();
        let has_test = root.join("test").is_dir();
        let held_out_names: Vec<&str> = [("val", has_val), ("test", has_test)]
            .into_iter()
            .filter_map(|(name, has)| has.then_some(name))
            .collect();
        let dirs: Vec<PathBuf> = std::iter::once(train_root.clone())
            .chain(held_out_names.iter().map(|name| root.join(name)))
            .collect();
        // One walk over train/, val/ and test/: a link cannot bring a folder into two splits.
        let scan = scan_class_folders(root, &dirs)?;
        let mut scanned = scan.folders.into_iter();
        let (folders, mut ignored) = scanned.next().expect("train/ is scanned");
        let mut held_out: BTreeMap<&str, ClassFolders> = BTreeMap::new();
        for (name, (folders, ign)) in held_out_names.into_iter().zip(scanned) {
            ignored.extend(ign);
            held_out.insert(name, folders);
        }
        let classes =
            check_classes(&train_root, &folders).map_err(|e| e.with_links(&scan.skipped))?;
        let mut ds = Dataset::empty(root, classes.clone(), Vec::new());
        ds.skipped_links = scan.skipped;
        let carve_val = !has_test || !has_val;
        for (label, (_, paths)) in folders.iter().enumerate() {
            for path in paths {
                let rel = rel_to(path, &train_root);
                let to_val = carve_val && path_hash_unit(&rel) < 0.15;
                let sample = Sample {
                    path: path.clone(),
                    rel: format!("train/{rel}"),
                    label,
                };
                if to_val {
                    ds.val.push(sample)
                } else {
                    ds.train.push(sample)
                }
            }
        }
        let mut load_split = |name: &str| -> Result<Vec<Sample>, DatasetError> {
            let folders = held_out.remove(name).unwrap_or_default();
            labelled_samples(&root.join(name), folders, &classes, &format!("{name}/"))
        };
        match (has_val, has_test) {
            (true, true) => {
                ds.val = load_split("val")?;
                ds.test = load_split("test")?;
                ds.notes.push("train/val/test folders used as given".into());
            }
            (true, false) => {
                ds.test = load_split("val")?;
                ds.notes.push(
                    "no test/ folder: val/ is the held-out test set; validation carved from train/ by path hash (15%)".into(),
                );
            }
            (false, true) => {
                ds.test = load_split("test")?;
                ds.notes.push("no val/ folder: validation carved from train/ by path hash (15%)".into());
            }
            (false, false) => {
                return Err(DatasetError::Io {
                    path: root.to_path_buf(),
                    reason: "has train/ but neither val/ nor test/; put the held-out images in test/<class>/ or use one folder per class".into(),
                })
            }
        }
        ds.ignored_files = ignored;
        ds.ensure_every_class_trains();
        ds.set_aside_duplicates();
        Ok(ds)
    }

    fn empty(root: &Path, classes: Vec<String>, ignored: Vec<PathBuf>) -> Dataset {
        Dataset {
            root: root.to_path_buf(),
            classes,
            train: Vec::new(),
            val: Vec::new(),
            test: Vec::new(),
            notes: Vec::new(),
            ignored_files: ignored,
            skipped_links: Vec::new(),
            duplicates: Vec::new(),
        }
    }

    /// A class the hash put entirely into val/test would be unlearnable: move one of its images
    /// (the first by path) into training.
    fn ensure_every_class_trains(&mut self) {
        for label in 0..self.classes.len() {
            if self.train.iter().any(|s| s.label == label) {
                continue;
            }
            for split in [&mut self.val, &mut self.test] {
                if let Some(i) = split.iter().position(|s| s.label == label) {
                    let s = split.remove(i);
                    self.notes.push(format!(
                        "class '{}' had no training image; moved {} into training",
                        self.classes[label], s.rel
                    ));
                    self.train.push(s);
                    break;
                }
            }
        }
    }

    /// Takes out of validation and test every image whose bytes are a training image's, and
    /// lists it in `duplicates` (in split, then path order). A file that cannot be read is left
    /// where it is: embedding reports it as unreadable.
    fn set_aside_duplicates(&mut self) {
        if self.val.is_empty() && self.test.is_empty() {
            return;
        }
        let copies = TrainingCopies::of(
            self.train
                .iter()
                .map(|s| (s.path.as_path(), s.rel.as_str())),
        );
        let mut duplicates = Vec::new();
        for (split, samples) in [(Split::Val, &mut self.val), (Split::Test, &mut self.test)] {
            samples.retain(|s| match copies.find(&s.path) {
                Some((train_file, sha256)) => {
                    duplicates.push(Duplicate {
                        file: s.rel.clone(),
                        split,
                        train_file: train_file.to_string(),
                        sha256,
                    });
                    false
                }
                None => true,
            });
        }
        self.duplicates = duplicates;
    }

    pub fn counts(&self, split: Split) -> Vec<usize> {
        let samples = match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
            Split::Test => &self.test,
        };
        let mut c = vec![0; self.classes.len()];
        for s in samples {
            c[s.label] += 1;
        }
        c
    }
}

impl DatasetError {
    /// This error, naming the folder links the walk did not follow when there were any.
    fn with_links(self, skipped: &[Skipped]) -> DatasetError {
        match skipped.split_first() {
            None => self,
            Some((first, rest)) => DatasetError::LinksNotFollowed {
                error: Box::new(self),
                first: Box::new(first.clone()),
                more: rest.len(),
            },
        }
    }
}

fn check_classes(root: &Path, folders: &ClassFolders) -> Result<Vec<String>, DatasetError> {
    if folders.values().all(Vec::is_empty) {
        return Err(DatasetError::Empty(root.to_path_buf()));
    }
    if let Some((class, _)) = folders.iter().find(|(_, v)| v.is_empty()) {
        return Err(DatasetError::EmptyClass {
            path: root.join(class),
            class: class.clone(),
        });
    }
    if folders.len() == 1 {
        return Err(DatasetError::OneClass {
            path: root.to_path_buf(),
            class: folders.keys().next().cloned().unwrap_or_default(),
        });
    }
    Ok(folders.keys().cloned().collect())
}

/// A folder of `<class>/<image>` to evaluate a trained head on (its classes must be the head's).
pub fn open_labelled_folder(root: &Path, classes: &[String]) -> Result<Labelled, DatasetError> {
    if !root.is_dir() {
        return Err(if root.exists() {
            DatasetError::NotADir(root.to_path_buf())
        } else {
            DatasetError::Missing(root.to_path_buf())
        });
    }
    let mut scan = scan_class_folders(root, &[root.to_path_buf()])?;
    let (folders, ignored) = scan.folders.remove(0);
    let samples = labelled_samples(root, folders, classes, "")?;
    if samples.is_empty() {
        return Err(DatasetError::Empty(root.to_path_buf()));
    }
    Ok(Labelled {
        samples,
        ignored,
        skipped_links: scan.skipped,
    })
}

/// A labelled folder as read: its samples, the non-image files, the folder links not followed.
#[derive(Debug, Clone)]
pub struct Labelled {
    pub samples: Vec<Sample>,
    pub ignored: Vec<PathBuf>,
    pub skipped_links: Vec<Skipped>,
}

/// The samples of the `<class>/<image>` folder `root`, read as `folders`, whose classes must all
/// be among `classes` (an empty folder of an unknown class is ignored). `rel_prefix` is
/// prepended to each `rel`.
fn labelled_samples(
    root: &Path,
    folders: ClassFolders,
    classes: &[String],
    rel_prefix: &str,
) -> Result<Vec<Sample>, DatasetError> {
    let mut out = Vec::new();
    for (class, paths) in folders {
        let Some(label) = classes.iter().position(|c| *c == class) else {
            if paths.is_empty() {
                continue;
            }
            return Err(DatasetError::UnknownClass {
                path: root.join(&class),
                class,
                known: classes.join(", "),
            });
        };
        out.extend(paths.into_iter().map(|p| Sample {
            rel: format!("{rel_prefix}{}", rel_to(&p, root)),
            path: p,
            label,
        }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file whose bytes are its path: no two alike, as no two photos are.
    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, p.as_os_str().as_encoded_bytes()).unwrap();
    }

    #[test]
    fn split_strings() {
        let f: SplitFractions = "80/10/10".parse().unwrap();
        assert!((f.train - 0.8).abs() < 1e-9 && (f.val - 0.1).abs() < 1e-9);
        assert!("80/10".parse::<SplitFractions>().is_err());
        assert!("50/10/10".parse::<SplitFractions>().is_err());
    }

    #[test]
    fn flat_layout_split_is_by_hash_and_stable() {
        let d = tempfile::tempdir().unwrap();
        for c in ["b", "a"] {
            for i in 0..40 {
                touch(&d.path().join(format!("{c}/{i}.jpg")));
            }
        }
        touch(&d.path().join("a/readme.txt"));
        touch(&d.path().join("a/.hidden.jpg"));
        let ds = Dataset::open(d.path(), SplitFractions::default()).unwrap();
        assert_eq!(ds.classes, vec!["a", "b"]);
        assert_eq!(ds.train.len() + ds.val.len() + ds.test.len(), 80);
        assert_eq!(ds.ignored_files.len(), 1);
        for s in &ds.train {
            assert!(path_hash_unit(&s.rel) < 0.7);
        }
        // Adding an image does not move any existing one.
        touch(&d.path().join("a/new.jpg"));
        let ds2 = Dataset::open(d.path(), SplitFractions::default()).unwrap();
        let before: Vec<_> = ds.test.iter().map(|s| &s.rel).collect();
        assert!(before.iter().all(|r| ds2.test.iter().any(|s| &&s.rel == r)));
    }

    #[test]
    fn bad_layouts() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(
            Dataset::open(d.path(), SplitFractions::default()),
            Err(DatasetError::Empty(_))
        ));
        touch(&d.path().join("only/1.jpg"));
        assert!(matches!(
            Dataset::open(d.path(), SplitFractions::default()),
            Err(DatasetError::OneClass { .. })
        ));
        std::fs::create_dir(d.path().join("empty")).unwrap();
        let e = Dataset::open(d.path(), SplitFractions::default()).unwrap_err();
        assert!(e.to_string().contains("class 'empty' has no images"), "{e}");
    }

    #[test]
    fn split_layout_without_test_uses_val_as_test() {
        let d = tempfile::tempdir().unwrap();
        for c in ["x", "y"] {
            for i in 0..10 {
                touch(&d.path().join(format!("train/{c}/{i}.png")));
            }
            touch(&d.path().join(format!("val/{c}/v.png")));
        }
        let ds = Dataset::open(d.path(), SplitFractions::default()).unwrap();
        assert_eq!(ds.test.len(), 2);
        assert_eq!(ds.train.len() + ds.val.len(), 20);
        assert!(ds.notes[0].contains("val/ is the held-out test set"));
        touch(&d.path().join("val/z/1.png"));
        let e = Dataset::open(d.path(), SplitFractions::default()).unwrap_err();
        assert!(
            e.to_string()
                .contains("class 'z' is not among the training classes"),
            "{e}"
        );
    }
}
