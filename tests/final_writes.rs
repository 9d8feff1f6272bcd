//! `finetune`'s final writes are all or nothing: `--out` holds exactly the previous set or
//! exactly the new one, whatever fails or whoever kills the process, and nothing is left behind
//! that a later run trips over. Through the binary where a user can cause it, and through
//! [`fsutil::replace_files_with`]'s hook for a failure or a SIGKILL at every step.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use edge_mnv2::fsutil::{self, Step};

/// Every entry under `dir` (relative path → contents; directories as `<dir>`), so two states
/// compare exactly.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, d: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            if p.is_dir() {
                out.insert(rel, b"<dir>".to_vec());
                walk(root, &p, out);
            } else {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut m = BTreeMap::new();
    walk(dir, dir, &mut m);
    m
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// `out` inside a fresh parent, holding a previous run's files and one file of the user's.
fn previous_run(tmp: &Path) -> PathBuf {
    let out = tmp.join("out");
    std::fs::create_dir_all(out.join("notes")).unwrap();
    std::fs::write(out.join("report.json"), b"old report.json").unwrap();
    std::fs::write(out.join("report.md"), b"old report.md").unwrap();
    std::fs::write(out.join("head.json"), b"old head.json").unwrap();
    std::fs::write(out.join("notes/mine.txt"), b"the user's own file").unwrap();
    out
}

const NEW: [(&str, &[u8]); 3] = [
    ("report.json", b"new report.json, a little longer"),
    ("report.md", b"new report.md"),
    ("head.json", b"new head.json"),
];

fn with_new(old: &BTreeMap<PathBuf, Vec<u8>>) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut m = old.clone();
    for (n, b) in NEW {
        m.insert(PathBuf::from(n), b.to_vec());
    }
    m
}

/// Every step a hook sees for [`NEW`], in order.
fn steps() -> Vec<Step<'static>> {
    let mut v = vec![Step::Staged];
    for (n, _) in NEW {
        v.push(Step::Writing(n));
        v.push(Step::Written(n));
    }
    v.extend([Step::Kept, Step::Swapped]);
    v
}

/// The reproduction through the binary: a directory where `head.json` would go. Before
/// the fix the run trained, replaced both reports, then failed on the head.
#[test]
fn a_directory_at_the_head_path_fails_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    copy_hymenoptera(&data, &[("ants", 6), ("bees", 6)]);
    let out = previous_run(tmp.path());
    std::fs::remove_file(out.join("head.json")).unwrap();
    std::fs::create_dir(out.join("head.json")).unwrap();
    std::fs::write(out.join("head.json/inside"), b"kept").unwrap();
    let before = snapshot(&out);
    let o = edge_command()
        .args(["finetune", data.to_str().unwrap(), "--out"])
        .arg(&out)
        .args([
            "--augment",
            "0",
            "--views",
            "1",
            "--no-cache",
            "--epochs",
            "5",
        ])
        .env("EDGE_MNV2_MODELS", models_dir())
        // No calibration: none named, and none in the working directory.
        .env_remove("EDGE_MNV2_CALIBRATION")
        .current_dir(tmp.path())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "stderr: {}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("head.json") && err.contains("directory"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(snapshot(&out), before, "--out changed");
    assert_eq!(names(tmp.path()), ["data", "out"], "leftovers beside --out");
}

/// The same race at the library level: the directory appears after the up-front checks.
#[test]
fn replace_files_refuses_to_put_a_file_over_a_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let out = previous_run(tmp.path());
    std::fs::remove_file(out.join("head.json")).unwrap();
    std::fs::create_dir(out.join("head.json")).unwrap();
    let before = snapshot(&out);
    let e = fsutil::replace_files(&out, &NEW).unwrap_err();
    assert!(format!("{e:#}").contains("head.json"), "{e:#}");
    assert_eq!(snapshot(&out), before);
    assert_eq!(names(tmp.path()), ["out"]);
}

#[test]
fn replaces_the_set_keeps_other_entries_and_leaves_nothing_beside() {
    let tmp = tempfile::tempdir().unwrap();
    let out = previous_run(tmp.path());
    let before = snapshot(&out);
    let mut seen = Vec::new();
    fsutil::replace_files_with(&out, &NEW, &mut |s| {
        seen.push(format!("{s:?}"));
        Ok(())
    })
    .unwrap();
    assert_eq!(snapshot(&out), with_new(&before));
    assert_eq!(names(tmp.path()), ["out"]);
    let expected: Vec<String> = steps().iter().map(|s| format!("{s:?}")).collect();
    assert_eq!(seen, expected);
    // Written with the umask's ordinary mode, like every other file (0644 under 022), not 0600.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(out.join("head.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_ne!(mode & 0o044, 0, "mode {mode:o}");
    // Through a symlink, the directory it names gets the files; the link stays a link.
    let link = tmp.path().join("current");
    std::os::unix::fs::symlink(&out, &link).unwrap();
    fsutil::replace_files(&link, &[("head.json", b"via the link")]).unwrap();
    assert!(link.symlink_metadata().unwrap().is_symlink());
    assert_eq!(
        std::fs::read(out.join("head.json")).unwrap(),
        b"via the link"
    );
}

/// A failure (ENOSPC) at each step: before the swap `--out` is untouched and the staging
/// directory is gone; at the swap's tidying step the new set is already in place.
#[test]
fn a_failure_at_each_step_leaves_the_old_set_or_the_new_one() {
    for fail_at in steps() {
        let tmp = tempfile::tempdir().unwrap();
        let out = previous_run(tmp.path());
        let before = snapshot(&out);
        let r = fsutil::replace_files_with(&out, &NEW, &mut |s| {
            if s == fail_at {
                Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
            } else {
                Ok(())
            }
        });
        if fail_at == Step::Swapped {
            r.unwrap();
            assert_eq!(snapshot(&out), with_new(&before), "{fail_at:?}");
        } else {
            let e = r.unwrap_err();
            assert!(
                format!("{e:#}").contains("No space left"),
                "{fail_at:?}: {e:#}"
            );
            assert_eq!(snapshot(&out), before, "{fail_at:?}");
        }
        assert_eq!(names(tmp.path()), ["out"], "{fail_at:?}: leftovers");
        fsutil::replace_files(&out, &NEW).unwrap();
        assert_eq!(
            snapshot(&out),
            with_new(&before),
            "{fail_at:?}: the next run"
        );
    }
}

const CHILD_ENV: &str = "FINAL_WRITES_KILL_AT";

/// Run in a child process by the next test: replaces the set in `$FINAL_WRITES_DIR` and SIGKILLs
/// itself at step number `$FINAL_WRITES_KILL_AT`. Does nothing in an ordinary test run.
#[test]
fn child_killed_at_a_step() {
    let Ok(at) = std::env::var(CHILD_ENV) else {
        return;
    };
    let at: usize = at.parse().unwrap();
    let dir = PathBuf::from(std::env::var("FINAL_WRITES_DIR").unwrap());
    let mut n = 0;
    let _ = fsutil::replace_files_with(&dir, &NEW, &mut |_| {
        if n == at {
            // SAFETY: raising a signal; the process ends here, as under `kill -9`.
            unsafe { libc::raise(libc::SIGKILL) };
        }
        n += 1;
        Ok(())
    });
    panic!("not killed at step {at}");
}

/// A SIGKILL at each step (the second Ctrl-C exits as abruptly): `--out` is the old set or the
/// new one, exactly; whatever the kill left beside it is hidden, and the next run removes it.
#[test]
fn a_kill_at_each_step_leaves_the_old_set_or_the_new_one() {
    for (at, step) in steps().iter().enumerate() {
        let tmp = tempfile::tempdir().unwrap();
        let out = previous_run(tmp.path());
        let before = snapshot(&out);
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_killed_at_a_step",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, at.to_string())
            .env("FINAL_WRITES_DIR", &out)
            .output()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.status.signal(),
            Some(libc::SIGKILL),
            "{step:?}: {status:?}"
        );
        let now = snapshot(&out);
        let new = with_new(&before);
        if matches!(step, Step::Swapped) {
            assert_eq!(now, new, "{step:?}");
        } else {
            assert_eq!(now, before, "{step:?}");
        }
        for n in names(tmp.path()) {
            assert!(
                n == "out" || n.starts_with(".out.edge-mnv2-swap-"),
                "{step:?}: {n}"
            );
        }
        fsutil::replace_files(&out, &NEW).unwrap();
        assert_eq!(snapshot(&out), new, "{step:?}: the next run");
        assert_eq!(
            names(tmp.path()),
            ["out"],
            "{step:?}: leftovers after the next run"
        );
    }
}
