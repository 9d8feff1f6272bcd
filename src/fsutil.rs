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
use std::path::Path;

use anyhow::{Context, Result};

/// Atomically replaces `path` with `bytes`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = synced_temp_file(dir, bytes)?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("{}: replacing", path.display()))?;
    Ok(())
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
    let mut tmp = new_temp_file(dir, ".tmp")
        .with_context(|| format!("{}: cannot create a file in this directory", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|_| tmp.as_file().sync_all())
        .with_context(|| format!("{}: writing", dir.display()))?;
    Ok(tmp)
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
