//! Which files are images and how a folder of them is walked: the one rule every reader of
//! folders follows (`finetune`/`evaluate`'s datasets and unknown images, `calibrate`'s image
//! folder, the folder frame source), so an image that is served is also trained on.
//!
//! - An image is a file whose extension is one of [`IMAGE_EXTENSIONS`], in any case.
//! - Hidden entries (a name starting with `.`: `.DS_Store`, `._x.jpg`, `.git/`, a dot-folder an
//!   editor or a sync tool leaves) are skipped, files and folders alike.
//! - Symbolic links are followed, to files and to folders, as training always did. A link back up
//!   the tree is not guarded against yet (a later change): the walk goes round it until the system
//!   refuses the path.
//! - Results are sorted by path, so every run sees the same files in the same order.

use std::path::{Path, PathBuf};

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
}

/// Every file under `dir`, at any depth, split into images and the rest.
pub fn walk(dir: &Path) -> Result<Found, WalkError> {
    let mut found = Found::default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for path in entries(&d)? {
            if path.is_dir() {
                stack.push(path);
            } else if is_image_path(&path) {
                found.images.push(path);
            } else {
                found.other.push(path);
            }
        }
    }
    found.images.sort();
    found.other.sort();
    Ok(found)
}

/// The images under `dir`, at any depth, sorted by path.
pub fn images_under(dir: &Path) -> Result<Vec<PathBuf>, WalkError> {
    Ok(walk(dir)?.images)
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
    fn links_to_files_and_folders_are_followed() {
        use std::os::unix::fs::symlink;
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        touch(&r.join("elsewhere/e.jpg"));
        touch(&r.join("set/a/1.jpg"));
        symlink(r.join("elsewhere"), r.join("set/a/linked")).unwrap();
        symlink(r.join("elsewhere/e.jpg"), r.join("set/a/file-link.png")).unwrap();
        let set = r.join("set");
        let found = walk(&set).unwrap();
        assert_eq!(
            names(&set, &found.images),
            ["a/1.jpg", "a/file-link.png", "a/linked/e.jpg"]
        );
        assert!(found.other.is_empty(), "{:?}", found.other);
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
