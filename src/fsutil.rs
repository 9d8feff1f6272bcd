//! Writing results so that a crash, a full disk or Ctrl-C never leaves a half-written file:
//! everything goes to a temporary file in the destination directory, is flushed to disk, and is
//! renamed over the destination in one step.
//!
//! Files are created with the mode any ordinary file gets, 0666 minus the process's umask (0644
//! under the usual 022), not the temporary file's private 0600: a head, a report or a captured
//! image written by one user must stay readable by a service's user after a copy that keeps modes.
//! The mode is given to open(2) and the kernel applies the umask, so the real umask is honoured
//! without reading it (reading it means setting it, process-wide, racing other threads' files).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Atomically replaces `path` with `bytes`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    replace_with_bytes(path, bytes, true)
}

/// As [`write_atomic`], without waiting for the disk: for derived data that checks itself when
/// read back (the embedding cache's checksummed entries). A reader still sees the whole old file
/// or the whole new one; after a power cut the new one may be empty or damaged, which the reader
/// detects and recomputes. One fsync per entry would otherwise pace a finetune run of thousands of
/// images by the disk (an SD card takes milliseconds to tens of milliseconds per fsync).
pub fn write_atomic_unsynced(path: &Path, bytes: &[u8]) -> Result<()> {
    replace_with_bytes(path, bytes, false)
}

fn replace_with_bytes(path: &Path, bytes: &[u8], sync: bool) -> Result<()> {
    let tmp = temp_file_with(parent_dir(path), bytes, sync)?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("{}: replacing", path.display()))?;
    Ok(())
}

/// The directory a file `path` is replaced in: its parent, or `.` for a bare file name.
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// A new, empty, hidden temporary file in `dir` (`.edge-mnv2-XXXXXX<suffix>`), deleted when
/// dropped unless persisted, with mode 0666 & !umask (see the module's doc), so that persisting it
/// gives an ordinary file. Every file this crate writes is made here.
pub fn new_temp_file(dir: &Path, suffix: &str) -> std::io::Result<tempfile::NamedTempFile> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(".edge-mnv2-").suffix(suffix);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    builder.tempfile_in(dir)
}

/// `bytes` in a hidden temporary file in `dir`, flushed to disk, ready to be persisted under its
/// final name (same directory, so the rename is atomic).
pub fn synced_temp_file(dir: &Path, bytes: &[u8]) -> Result<tempfile::NamedTempFile> {
    temp_file_with(dir, bytes, true)
}

/// A new temporary file in `dir` holding `bytes`, flushed to disk when `sync`.
fn temp_file_with(dir: &Path, bytes: &[u8], sync: bool) -> Result<tempfile::NamedTempFile> {
    let mut tmp = new_temp_file(dir, ".tmp")
        .with_context(|| format!("{}: cannot create a file in this directory", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|_| {
            if sync {
                tmp.as_file().sync_all()
            } else {
                Ok(())
            }
        })
        .with_context(|| format!("{}: writing", dir.display()))?;
    Ok(tmp)
}

/// Where a [`replace_files`] run has got to; the hook of [`replace_files_with`] sees each in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step<'a> {
    /// The staging directory beside the destination exists, empty.
    Staged,
    /// Half of this file's bytes are in the staging directory (a write failing here fails midway).
    Writing(&'a str),
    /// This file is complete and flushed to disk in the staging directory.
    Written(&'a str),
    /// The destination's other entries are linked into the staging directory, which is synced.
    Kept,
    /// The staging directory and the destination have traded places: the new set is in place and
    /// the old one sits in the staging directory's name until it is removed.
    Swapped,
}

/// Name prefix of the sibling directory a [`replace_files`] of `dir` stages in.
fn staging_prefix(dir_name: &std::ffi::OsStr) -> std::ffi::OsString {
    let mut p = std::ffi::OsString::from(".");
    p.push(dir_name);
    p.push(".edge-mnv2-swap-");
    p
}

/// Replaces the files named in `files` inside the directory `dir` all at once: afterwards `dir`
/// holds either exactly what it held before (on an error, a crash or a kill at any point) or the
/// whole new set, never some new files beside some old ones. Entries of `dir` not named in
/// `files` are kept.
///
/// How: the new files (and links to the kept entries) are written into a new sibling directory,
/// flushed, and the two directories are exchanged in one `renameat2(RENAME_EXCHANGE)`; the old
/// set, now under the sibling's name, is then removed. A reader opening `dir/NAME` sees one set or
/// the other. A sibling left by a killed run (hidden, `.DIR.edge-mnv2-swap-*`) is removed by the
/// next one and never read. `dir` must exist, and so must be creatable beside it (checked by
/// [`check_replaceable`] up front).
pub fn replace_files(dir: &Path, files: &[(&str, &[u8])]) -> Result<()> {
    replace_files_with(dir, files, &mut |_| Ok(()))
}

/// As [`replace_files`], calling `hook` at each [`Step`]; an error from it fails the run there as
/// a failing disk would (it is ignored at [`Step::Swapped`], where the new set is already in
/// place). The seam through which tests inject faults and kills at every step.
pub fn replace_files_with(
    dir: &Path,
    files: &[(&str, &[u8])],
    hook: &mut dyn FnMut(Step) -> std::io::Result<()>,
) -> Result<()> {
    let (dir, parent, prefix) = check_replaceable(dir)?;
    for (i, (name, _)) in files.iter().enumerate() {
        let plain = !name.is_empty()
            && *name != "."
            && *name != ".."
            && !name.contains('/')
            && !name.starts_with(".edge-mnv2-");
        anyhow::ensure!(plain, "{name:?}: not a plain file name");
        anyhow::ensure!(
            !files[..i].iter().any(|(n, _)| n == name),
            "{name}: named twice"
        );
        let target = dir.join(name);
        if std::fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
            anyhow::bail!(
                "{}: is a directory, not replacing it with a file",
                target.display()
            );
        }
    }
    remove_leftovers(&parent, &prefix);
    let staging = tempfile::Builder::new()
        .prefix(&prefix)
        .tempdir_in(&parent)
        .with_context(|| format!("{}: cannot create a directory here", parent.display()))?;
    let stage = staging.path();
    let fail = |what: &str, e: std::io::Error| {
        anyhow::Error::from(e).context(format!("{}: {what}", dir.display()))
    };
    if let Ok(m) = std::fs::metadata(&dir) {
        let _ = std::fs::set_permissions(stage, m.permissions());
    }
    hook(Step::Staged).map_err(|e| fail("staging", e))?;
    for (name, bytes) in files {
        let path = stage.join(name);
        let mut f = new_file(&path).map_err(|e| fail(&format!("writing {name}"), e))?;
        let half = bytes.len() / 2;
        f.write_all(&bytes[..half])
            .and_then(|_| hook(Step::Writing(name)))
            .and_then(|_| f.write_all(&bytes[half..]))
            .and_then(|_| f.sync_all())
            .and_then(|_| hook(Step::Written(name)))
            .map_err(|e| fail(&format!("writing {name}"), e))?;
    }
    for entry in std::fs::read_dir(&dir).map_err(|e| fail("listing", e))? {
        let entry = entry.map_err(|e| fail("listing", e))?;
        let name = entry.file_name();
        if files.iter().any(|(n, _)| std::ffi::OsStr::new(n) == name) {
            continue;
        }
        keep(&entry.path(), &stage.join(&name))
            .map_err(|e| fail(&format!("keeping {}", name.to_string_lossy()), e))?;
    }
    std::fs::File::open(stage)
        .and_then(|d| d.sync_all())
        .and_then(|_| hook(Step::Kept))
        .map_err(|e| fail("syncing", e))?;
    exchange(stage, &dir).map_err(|e| fail("swapping in the new files", e))?;
    // Committed. What is left is tidying: the old set goes with `staging`'s drop.
    let _ = hook(Step::Swapped);
    let _ = std::fs::File::open(&parent).and_then(|d| d.sync_all());
    if let Err(e) = staging.close() {
        log::warn!(
            "{}: could not remove the previous files: {e}",
            parent.display()
        );
    }
    Ok(())
}

/// Checks up front that [`replace_files`] can work on `dir` (it exists, and a directory can be
/// made beside it), so a long job does not end in a write error. Returns `dir` resolved, its
/// parent and the staging prefix.
pub fn check_replaceable(dir: &Path) -> Result<(PathBuf, PathBuf, std::ffi::OsString)> {
    // Resolved, so that a `--out` symlink keeps pointing at the directory that gets the files.
    let dir = dir
        .canonicalize()
        .with_context(|| format!("{}: cannot open the directory", dir.display()))?;
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        anyhow::bail!(
            "{}: cannot replace files in the root directory",
            dir.display()
        );
    };
    let prefix = staging_prefix(name);
    let probe = || {
        tempfile::Builder::new()
            .prefix(&prefix)
            .tempdir_in(parent)
            .with_context(|| {
                format!(
                    "{}: cannot create a directory beside {} (new files are staged there)",
                    parent.display(),
                    dir.display()
                )
            })
    };
    let (a, b) = (probe()?, probe()?);
    exchange(a.path(), b.path()).with_context(|| {
        format!(
            "{}: this file system cannot swap directories in one step (renameat2 \
             RENAME_EXCHANGE), so files cannot be replaced here all at once",
            parent.display()
        )
    })?;
    Ok((dir.clone(), parent.to_path_buf(), prefix))
}

/// Removes staging directories that a killed run left beside the destination: either a partial
/// new set (never swapped in) or an old set (swapped out); neither is read by anything.
fn remove_leftovers(parent: &Path, prefix: &std::ffi::OsStr) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name()
            .as_encoded_bytes()
            .starts_with(prefix.as_encoded_bytes())
        {
            if let Err(err) = std::fs::remove_dir_all(e.path()) {
                log::warn!("{}: could not remove a leftover: {err}", e.path().display());
            }
        }
    }
}

fn new_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o666);
    }
    o.open(path)
}

/// Puts `from` (an entry of the destination not being replaced) at `to` in the staging
/// directory: a hard link for a file (a copy where linking is refused), the same target for a
/// symlink, a directory of the same for a directory.
fn keep(from: &Path, to: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(from)?;
    if meta.is_symlink() {
        #[cfg(unix)]
        return std::os::unix::fs::symlink(std::fs::read_link(from)?, to);
        #[cfg(not(unix))]
        return std::fs::copy(from, to).map(|_| ());
    }
    if meta.is_dir() {
        std::fs::create_dir(to)?;
        std::fs::set_permissions(to, meta.permissions())?;
        for e in std::fs::read_dir(from)? {
            let e = e?;
            keep(&e.path(), &to.join(e.file_name()))?;
        }
        return Ok(());
    }
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to)?;
        std::fs::File::open(to)?.sync_all()?;
    }
    Ok(())
}

/// Swaps two directories in one step: Linux `renameat2(RENAME_EXCHANGE)` (since 3.15; ext4,
/// btrfs, xfs, f2fs, tmpfs, overlayfs). A file system without it (FAT) is refused rather than
/// given a two-rename swap, which a crash in between would leave without the destination.
fn exchange(new: &Path, dest: &Path) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes());
        let (a, b) = (c(new)?, c(dest)?);
        // SAFETY: two valid NUL-terminated paths; the syscall reads them and keeps no pointer.
        let r = unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                libc::AT_FDCWD,
                a.as_ptr(),
                libc::AT_FDCWD,
                b.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (new, dest);
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "atomic directory exchange needs Linux",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.txt");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn missing_directory_is_an_error_naming_it() {
        let e = write_atomic(Path::new("/nonexistent-dir/x.txt"), b"x").unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent-dir"));
    }
}
