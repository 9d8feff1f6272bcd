//! The walk of a data set's `<class>/<image>` folders: every split's class folders in one
//! [`discover::walk_all`], so no folder is read twice, by two classes or two splits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::discover::{self, Skipped, WalkError};

/// Class name → its image paths, sorted.
pub type ClassFolders = BTreeMap<String, Vec<PathBuf>>;

/// `<class>/<image>` folders read in one walk (no folder read twice across them).
pub(super) struct Scan {
    /// Per folder: its classes, and the non-image files it holds.
    pub folders: Vec<(ClassFolders, Vec<PathBuf>)>,
    pub skipped: Vec<Skipped>,
}

/// Reads each of `dirs` (inside `root`) as a `<class>/<image>` folder. Nested sub-folders inside
/// a class folder are searched too; a class folder that is a link the walk does not follow is
/// no class.
pub(super) fn scan_class_folders(root: &Path, dirs: &[PathBuf]) -> Result<Scan, WalkError> {
    let mut folders: Vec<(ClassFolders, Vec<PathBuf>)> = Vec::new();
    let mut class_dirs = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let mut ignored = Vec::new();
        for entry in discover::entries(dir)? {
            if entry.is_dir() {
                class_dirs.push((i, entry));
            } else {
                ignored.push(entry);
            }
        }
        folders.push((BTreeMap::new(), ignored));
    }
    let paths: Vec<PathBuf> = class_dirs.iter().map(|(_, d)| d.clone()).collect();
    let found = discover::walk_all(root, &paths)?;
    let mut skipped = Vec::new();
    for ((i, dir), f) in class_dirs.into_iter().zip(found) {
        let (classes, ignored) = &mut folders[i];
        ignored.extend(f.other);
        let refused = f.skipped.iter().any(|s| s.link == dir);
        skipped.extend(f.skipped);
        if !refused {
            let name = dir
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            classes.insert(name, f.images);
        }
    }
    for (_, ignored) in &mut folders {
        ignored.sort();
    }
    skipped.sort_by(|a, b| a.link.cmp(&b.link));
    Ok(Scan { folders, skipped })
}

#[cfg(test)]
mod tests {
    use super::super::{Dataset, SplitFractions};
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, p.as_os_str().as_encoded_bytes()).unwrap();
    }

    /// Finding 2 on a split layout: a link from train/ into test/ would train on test images.
    #[cfg(unix)]
    #[test]
    fn a_link_from_train_into_test_is_not_followed() {
        let d = tempfile::tempdir().unwrap();
        for c in ["x", "y"] {
            for i in 0..4 {
                touch(&d.path().join(format!("train/{c}/{i}.png")));
                touch(&d.path().join(format!("test/{c}/{i}.png")));
            }
        }
        std::os::unix::fs::symlink("../../test/x", d.path().join("train/x/peek")).unwrap();
        let ds = Dataset::open(d.path(), SplitFractions::default()).unwrap();
        assert_eq!(ds.train.len() + ds.val.len(), 8);
        assert_eq!(ds.test.len(), 8);
        assert_eq!(ds.skipped_links.len(), 1);
        assert_eq!(ds.skipped_links[0].link, d.path().join("train/x/peek"));
        assert_eq!(ds.skipped_links[0].reason, discover::SkipReason::ReadTwice);
    }

    /// A class folder that is a link out of the data folder is no class, and the error that
    /// follows says so.
    #[cfg(unix)]
    #[test]
    fn a_class_folder_linked_from_outside_is_named_in_the_error() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("data");
        for i in 0..3 {
            touch(&data.join(format!("ants/{i}.jpg")));
            touch(&d.path().join(format!("elsewhere/bees/{i}.jpg")));
        }
        std::os::unix::fs::symlink(d.path().join("elsewhere/bees"), data.join("bees")).unwrap();
        let e = Dataset::open(&data, SplitFractions::default()).unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with(&format!("{}: only one class ('ants')", data.display())),
            "{text}"
        );
        assert!(
            text.ends_with(&format!(
                "; {}: link to {} not followed: it leads out of the folder being read",
                data.join("bees").display(),
                std::fs::canonicalize(d.path().join("elsewhere/bees"))
                    .unwrap()
                    .display()
            )),
            "{text}"
        );
        assert_eq!(text.lines().count(), 1);
    }

    #[test]
    fn every_image_discover_knows_is_trained_on() {
        let d = tempfile::tempdir().unwrap();
        for c in ["a", "b"] {
            touch(&d.path().join(format!("{c}/1.jpg")));
            touch(&d.path().join(format!("{c}/2.jfif")));
            touch(&d.path().join(format!("{c}/deep/3.JFIF")));
        }
        let ds = Dataset::open(d.path(), SplitFractions::default()).unwrap();
        let mut rels: Vec<&str> = [&ds.train, &ds.val, &ds.test]
            .into_iter()
            .flatten()
            .map(|s| s.rel.as_str())
            .collect();
        rels.sort();
        assert_eq!(
            rels,
            [
                "a/1.jpg",
                "a/2.jfif",
                "a/deep/3.JFIF",
                "b/1.jpg",
                "b/2.jfif",
                "b/deep/3.JFIF"
            ]
        );
        assert!(ds.ignored_files.is_empty(), "{:?}", ds.ignored_files);
    }
}
