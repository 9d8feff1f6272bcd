//! Which files are images and how a folder of them is walked: the one rule every reader of
//! folders follows (`finetune`/`evaluate`'s datasets and unknown images, `calibrate`'s image
//! folder, the folder frame source), so an image that is served is also trained on.
//!
//! - An image is a file whose extension is one of [`IMAGE_EXTENSIONS`], in any case.
//! - Hidden entries (a name starting with `.`: `.DS_Store`, `._x.jpg`, `.git/`, a dot-folder an
//!   editor or a sync tool leaves) are skipped, files and folders alike.
//! - A link to a file is followed wherever it points: a class folder of links into a photo
//!   library is a real way to curate one, and a file link can neither loop nor bring in more than
//!   the one file it names.
//! - A link to a folder is followed only if it stays inside the folder being read (the data set's
//!   root) and leads to a folder not read yet, every folder being known by its canonical path:
//!   real folders are read first, links after them, so a link never takes a folder from the class
//!   that holds it. A link out of the root, back up the tree (a loop), or to a folder read already
//!   (another class's, or one twice) is not followed and is returned as [`Skipped`], for the
//!   caller to report.
//! - Results are sorted by path, so every run sees the same files in the same order.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Serialize;
use thiserror::Error;

/// File extensions taken for images (compared without regard to case).
pub const IMAGE_EXTENSIONS: [&str; 7] = ["jpg", "jpeg", "png", "bmp", "gif", "webp", "jfif"];

/// A folder that could not be listed. Its message holds the reason, so it is not also given as
/// the error's source (a one-line error would say it twice).
#[derive(Debug, Error)]
#[error("{}: {error}", dir.display())]
pub struct WalkError {
    /// The folder whose listing failed (the walk's root or one below it).
    pub dir: PathBuf,
    pub error: std::io::Error,
}

/// The extension says `path` is an image.
pub fn is_image_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// The name of `path` starts with a dot.
pub fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.as_encoded_bytes().starts_with(b"."))
}

/// The entries of `dir` that are not hidden, sorted by path.
pub fn entries(dir: &Path) -> Result<Vec<PathBuf>, WalkError> {
    let fail = |error| WalkError {
        dir: dir.to_path_buf(),
        error,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(fail)? {
        let path = entry.map_err(fail)?.path();
        if !is_hidden(&path) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// The files under a folder, at any depth.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Found {
    /// The images, sorted by path.
    pub images: Vec<PathBuf>,
    /// Every other (not hidden) file, sorted by path: what a report counts as ignored.
    pub other: Vec<PathBuf>,
    /// The folder links not followed, sorted by path.
    pub skipped: Vec<Skipped>,
}

/// Why a link to a folder was not followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// It points out of the folder being read.
    OutsideRoot,
    /// It points to a folder above it: following it would go round for ever.
    Loop,
    /// It points to a folder that is read already (or holds one): its images would count twice.
    ReadTwice,
}

/// A link to a folder that the walk did not follow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// The link, as found in the walk.
    pub link: PathBuf,
    /// The folder it resolves to.
    pub target: PathBuf,
    pub reason: SkipReason,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let why = match self.reason {
            SkipReason::OutsideRoot => "it leads out of the folder being read",
            SkipReason::Loop => "it leads back up the tree (a loop)",
            SkipReason::ReadTwice => "that folder is read already (its images count once)",
        };
        write!(
            f,
            "{}: link to {} not followed: {why}",
            self.link.display(),
            self.target.display()
        )
    }
}

/// A folder to read: the path the walk reached it by, its canonical path, and the index of the
/// `dirs` entry it belongs to.
struct Pending {
    path: PathBuf,
    canonical: PathBuf,
    owner: usize,
}

/// One walk of several folders under one root (see the module's rules on links).
struct Walk {
    root: PathBuf,
    /// Canonical paths of the folders read (or queued to be).
    visited: HashSet<PathBuf>,
    /// Folder links met on the way, followed once every real folder has been read.
    links: Vec<Pending>,
    found: Vec<Found>,
}

fn canonical(path: &Path) -> Result<PathBuf, WalkError> {
    std::fs::canonicalize(path).map_err(|error| WalkError {
        dir: path.to_path_buf(),
        error,
    })
}

impl Walk {
    /// Why the folder link `link` (to `target`, canonical) is not to be followed, if it is not.
    fn refusal(&self, link: &Path, target: &Path) -> Option<SkipReason> {
        if !target.starts_with(&self.root) {
            return Some(SkipReason::OutsideRoot);
        }
        let here = link
            .parent()
            .and_then(|p| std::fs::canonicalize(p).ok())
            .unwrap_or_default();
        if here.starts_with(target) {
            return Some(SkipReason::Loop);
        }
        if self.visited.iter().any(|v| v.starts_with(target)) {
            return Some(SkipReason::ReadTwice);
        }
        None
    }

    /// Reads `start` and the real folders below it; folder links are queued.
    fn read_tree(&mut self, start: Pending) -> Result<(), WalkError> {
        let owner = start.owner;
        let mut stack = vec![start];
        while let Some(d) = stack.pop() {
            for path in entries(&d.path)? {
                let is_link = path.symlink_metadata().is_ok_and(|m| m.is_symlink());
                if !path.is_dir() {
                    let found = &mut self.found[owner];
                    if is_image_path(&path) {
                        found.images.push(path);
                    } else {
                        found.other.push(path);
                    }
                } else if is_link {
                    let canonical = canonical(&path)?;
                    self.links.push(Pending {
                        path,
                        canonical,
                        owner,
                    });
                } else if let Some(name) = path.file_name() {
                    let canonical = d.canonical.join(name);
                    if self.visited.insert(canonical.clone()) {
                        stack.push(Pending {
                            path,
                            canonical,
                            owner,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Follows the queued links in path order (links found under a followed link join the queue).
    fn follow_links(&mut self) -> Result<(), WalkError> {
        while !self.links.is_empty() {
            let mut links = std::mem::take(&mut self.links);
            links.sort_by(|a, b| a.path.cmp(&b.path));
            for link in links {
                match self.refusal(&link.path, &link.canonical) {
                    Some(reason) => self.found[link.owner].skipped.push(Skipped {
                        link: link.path,
                        target: link.canonical,
                        reason,
                    }),
                    None => {
                        self.visited.insert(link.canonical.clone());
                        self.read_tree(link)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Every file under each of `dirs` (folders inside `root`), at any depth, split into images and
/// the rest, one [`Found`] per folder. Folder links are followed only inside `root` and to a
/// folder read nowhere else in the walk: no folder is read twice, whichever of `dirs` reaches it.
pub fn walk_all(root: &Path, dirs: &[PathBuf]) -> Result<Vec<Found>, WalkError> {
    let mut walk = Walk {
        root: canonical(root)?,
        visited: HashSet::new(),
        links: Vec::new(),
        found: vec![Found::default(); dirs.len()],
    };
    for (owner, dir) in dirs.iter().enumerate() {
        let pending = Pending {
            path: dir.clone(),
            canonical: canonical(dir)?,
            owner,
        };
        let is_link = dir.symlink_metadata().is_ok_and(|m| m.is_symlink());
        // The walk's own root is read even when the caller named it by a link.
        if is_link && dir.as_path() != root {
            walk.links.push(pending);
        } else if walk.visited.insert(pending.canonical.clone()) {
            walk.read_tree(pending)?;
        }
    }
    walk.follow_links()?;
    for found in &mut walk.found {
        found.images.sort();
        found.other.sort();
        found.skipped.sort_by(|a, b| a.link.cmp(&b.link));
    }
    Ok(walk.found)
}

/// Every file under `dir`, at any depth, split into images and the rest; folder links are
/// followed only inside `dir`.
pub fn walk(dir: &Path) -> Result<Found, WalkError> {
    let mut found = walk_all(dir, &[dir.to_path_buf()])?;
    Ok(found.pop().unwrap_or_default())
}

/// The images under `dir`, at any depth, sorted by path. Each folder link not followed is
/// logged as a warning: a caller that keeps no report of its own still says what it left out.
pub fn images_under(dir: &Path) -> Result<Vec<PathBuf>, WalkError> {
    let found = walk(dir)?;
    for s in &found.skipped {
        log::warn!("{s}");
    }
    Ok(found.images)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    fn names(root: &Path, paths: &[PathBuf]) -> Vec<String> {
        paths
            .iter()
            .map(|p| p.strip_prefix(root).unwrap().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn images_are_known_by_extension_in_any_case() {
        for name in [
            "a.jpg", "a.JPG", "a.jpeg", "a.png", "a.bmp", "a.gif", "a.webp", "a.jfif", "a.JFIF",
        ] {
            assert!(is_image_path(Path::new(name)), "{name}");
        }
        for name in ["a.txt", "a", "jpg", "a.jpg.txt", "a.tiff"] {
            assert!(!is_image_path(Path::new(name)), "{name}");
        }
    }

    #[test]
    fn walk_is_sorted_recursive_and_skips_hidden_files_and_folders() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for f in [
            "b/2.jpg",
            "b/c/3.JFIF",
            "a.png",
            "notes.txt",
            ".hidden.jpg",
            ".git/x.jpg",
            "b/.thumbs/t.jpg",
            "b/._2.jpg",
        ] {
            touch(&r.join(f));
        }
        let found = walk(r).unwrap();
        assert_eq!(names(r, &found.images), ["a.png", "b/2.jpg", "b/c/3.JFIF"]);
        assert_eq!(names(r, &found.other), ["notes.txt"]);
        assert_eq!(images_under(r).unwrap(), found.images);
        assert_eq!(names(r, &entries(r).unwrap()), ["a.png", "b", "notes.txt"]);
    }

    #[cfg(unix)]
    #[test]
    fn file_links_are_followed_anywhere_folder_links_only_inside() {
        use std::os::unix::fs::symlink;
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        touch(&r.join("elsewhere/e.jpg"));
        touch(&r.join("set/a/1.jpg"));
        touch(&r.join("set/.pool/p.jpg"));
        symlink(r.join("elsewhere"), r.join("set/a/linked")).unwrap();
        // A class curated as links into a photo library: each link names one file on purpose.
        symlink(r.join("elsewhere/e.jpg"), r.join("set/a/file-link.png")).unwrap();
        // A folder link inside the root to a folder read nowhere else: read once, by the link.
        symlink(r.join("set/.pool"), r.join("set/a/pool")).unwrap();
        symlink(r.join("set/.pool"), r.join("set/a/pool-again")).unwrap();
        let set = r.join("set");
        let found = walk(&set).unwrap();
        assert_eq!(
            names(&set, &found.images),
            ["a/1.jpg", "a/file-link.png", "a/pool/p.jpg"]
        );
        assert!(found.other.is_empty(), "{:?}", found.other);
        let skipped: Vec<_> = found
            .skipped
            .iter()
            .map(|s| (s.link.strip_prefix(&set).unwrap(), s.reason))
            .collect();
        assert_eq!(
            skipped,
            [
                (Path::new("a/linked"), SkipReason::OutsideRoot),
                (Path::new("a/pool-again"), SkipReason::ReadTwice)
            ]
        );
        assert_eq!(
            found.skipped[0].target,
            std::fs::canonicalize(r.join("elsewhere")).unwrap()
        );
    }

    /// The finding: `ants/up -> ..` and `ants/sib -> ../bees` made 20 images 1,210
    /// "ants" (bees among them), paths 40 folders deep.
    #[cfg(unix)]
    #[test]
    fn a_loop_and_a_link_to_another_class_are_not_followed_and_are_reported() {
        use std::os::unix::fs::symlink;
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for f in ["ants/1.jpg", "ants/2.jpg", "bees/1.jpg", "bees/deep/2.jpg"] {
            touch(&r.join(f));
        }
        symlink("..", r.join("ants/up")).unwrap();
        symlink("../bees", r.join("ants/sib")).unwrap();
        // A link two levels up, from a folder reached by a link, loops just the same.
        symlink("../..", r.join("bees/deep/top")).unwrap();
        let dirs = [r.join("ants"), r.join("bees")];
        let found = walk_all(r, &dirs).unwrap();
        assert_eq!(names(r, &found[0].images), ["ants/1.jpg", "ants/2.jpg"]);
        assert_eq!(
            names(r, &found[1].images),
            ["bees/1.jpg", "bees/deep/2.jpg"]
        );
        let canon = |p: &str| std::fs::canonicalize(r.join(p)).unwrap();
        assert_eq!(
            found[0].skipped,
            [
                Skipped {
                    link: r.join("ants/sib"),
                    target: canon("bees"),
                    reason: SkipReason::ReadTwice
                },
                Skipped {
                    link: r.join("ants/up"),
                    target: canon("."),
                    reason: SkipReason::Loop
                },
            ]
        );
        assert_eq!(found[1].skipped.len(), 1);
        assert_eq!(found[1].skipped[0].reason, SkipReason::Loop);
        let line = found[0].skipped[1].to_string();
        assert!(line.starts_with(&format!("{}: link to ", r.join("ants/up").display())));
        assert!(
            line.ends_with("not followed: it leads back up the tree (a loop)"),
            "{line}"
        );
        // Alone, the ants folder is the root: both links lead out of it.
        let alone = walk(&r.join("ants")).unwrap();
        assert_eq!(alone.images.len(), 2);
        let reasons: Vec<_> = alone.skipped.iter().map(|s| s.reason).collect();
        assert_eq!(reasons, [SkipReason::OutsideRoot, SkipReason::OutsideRoot]);
    }

    /// A real folder is read as itself, even when a link to it comes first in path order.
    #[cfg(unix)]
    #[test]
    fn a_class_folder_that_links_to_another_class_is_not_read_twice() {
        use std::os::unix::fs::symlink;
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        touch(&r.join("b/1.jpg"));
        symlink("b", r.join("a")).unwrap();
        let found = walk_all(r, &[r.join("a"), r.join("b")]).unwrap();
        assert!(found[0].images.is_empty());
        assert_eq!(found[0].skipped[0].reason, SkipReason::ReadTwice);
        assert_eq!(names(r, &found[1].images), ["b/1.jpg"]);
    }

    #[test]
    fn a_missing_folder_is_named() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("nope");
        let e = walk(&missing).unwrap_err();
        assert_eq!(e.dir, missing);
        assert_eq!(e.error.kind(), std::io::ErrorKind::NotFound);
        assert!(e.to_string().starts_with(&missing.display().to_string()));
    }
}
