//! Written files follow the process's umask (0666 & !umask), like any file the user creates, and
//! not the temporary file's 0600. The umask is process-wide, so this binary holds one test that
//! sets it in turn and restores it; the command-line check sets it in the child only.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;

use common::*;
use edge_mnv2::fsutil;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn written_files_follow_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    // SAFETY: umask(2) cannot fail; this is the only test in this binary, so no other thread of
    // it creates files meanwhile.
    let before = unsafe { libc::umask(0o022) };
    for (umask, want) in [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)] {
        unsafe { libc::umask(umask) };
        // write_atomic: head.json, reports, calibration files, the embedding cache, `embed --out`.
        let p = dir.path().join(format!("atomic-{umask:03o}.json"));
        fsutil::write_atomic(&p, b"{}").unwrap();
        assert_eq!(mode(&p), want, "write_atomic under umask {umask:03o}");
        // Replacing an existing file gives the new file's mode, still atomically.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        fsutil::write_atomic(&p, b"{\"again\":1}").unwrap();
        assert_eq!(
            mode(&p),
            want,
            "write_atomic over a 0600 file, umask {umask:03o}"
        );
        // synced_temp_file + persist_noclobber: captured images.
        let q = dir.path().join(format!("capture-{umask:03o}.jpg"));
        fsutil::synced_temp_file(dir.path(), b"jpeg")
            .unwrap()
            .persist_noclobber(&q)
            .unwrap();
        assert_eq!(mode(&q), want, "captured image under umask {umask:03o}");
        // new_temp_file: model downloads (`models fetch`).
        let r = dir.path().join(format!("model-{umask:03o}.tflite"));
        fsutil::new_temp_file(dir.path(), ".part")
            .unwrap()
            .persist(&r)
            .unwrap();
        assert_eq!(mode(&r), want, "download under umask {umask:03o}");
    }
    unsafe { libc::umask(before) };
    // Only the files persisted above: no temporary file left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3 * 3);

    // The binary, end to end: `embed --out` under the child's own umask.
    for (umask, want) in [(0o022, 0o644), (0o077, 0o600)] {
        let out = dir.path().join(format!("embed-{umask:03o}.txt"));
        let image = models_dir().join("images/cat.bmp");
        let mut cmd = edge_command();
        cmd.args(["embed", "--out"])
            .arg(&out)
            .arg(&image)
            .env("EDGE_MNV2_MODELS", models_dir())
            .env_remove("RUST_LOG");
        // SAFETY: umask(2) is async-signal-safe, as pre_exec requires.
        unsafe {
            cmd.pre_exec(move || {
                libc::umask(umask);
                Ok(())
            });
        }
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "embed: {}", stderr(&o));
        assert_eq!(mode(&out), want, "embed --out under umask {umask:03o}");
    }
}
