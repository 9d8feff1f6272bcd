//! `serve` as a process, with or without the `camera` and `http` features: starting and stopping
//! (signals), the systemd protocol (READY/STATUS/WATCHDOG on a NOTIFY_SOCKET this test binds), the
//! journald priority prefix, the reopen backoff of a missing camera, `--fps` pacing and drops,
//! and the config file's precedence (flags over file over defaults). CI also runs this file with
//! `--no-default-features`.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::served::Served;
use common::*;
use serde_json::Value;

/// The README: SIGTERM/SIGINT stop the service "within a few hundred milliseconds". Measured
/// with margin for a loaded 2-core CI machine.
const STOP_WITHIN: Duration = Duration::from_millis(1000);

fn bee() -> PathBuf {
    shared().join("datasets/hymenoptera/val/bees/10870992_eebeeb3a12.jpg")
}

/// A missing camera (a build with or without the `camera` feature): the failure is logged with
/// the device and reason, reopened after 0.5 s, 1 s, 2 s..., and the service stops cleanly on
/// SIGTERM within the README's few hundred milliseconds. Under journald (JOURNAL_STREAM) each
/// line carries its syslog priority and no timestamp.
#[test]
fn missing_camera_backs_off_logs_for_journald_and_stops_on_sigterm() {
    let mut r = Served::start_with(
        &[
            "--head",
            s(shared_head()),
            "--source",
            "/dev/video99",
            "--no-http",
        ],
        &[("JOURNAL_STREAM", "8:12345")],
    );
    r.wait_for_log("three failed opens", Duration::from_secs(120), |l| {
        l.matches("cannot open source").count() >= 3
    });
    let log = r.log();
    let fails: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("cannot open source"))
        .collect();
    let reason = if cfg!(feature = "camera") {
        "no such device"
    } else {
        "without the `camera` feature"
    };
    for (line, wait) in fails.iter().zip(["500ms", "1s", "2s"]) {
        // Errors are priority 3, as the first thing on the line.
        assert!(
            line.starts_with("<3>cannot open source: /dev/video99: "),
            "{line}"
        );
        assert!(line.contains(reason), "{line}");
        assert!(line.ends_with(&format!("retrying in {wait}")), "{line}");
    }
    // Information is priority 6; no line has a timestamp or anything else before its priority.
    assert!(log.lines().any(|l| l.starts_with("<6>head ")), "{log}");
    for l in log.lines() {
        assert!(
            l.len() > 3 && l.starts_with('<') && l.as_bytes()[2] == b'>',
            "{l}"
        );
    }

    let t = Instant::now();
    r.signal(libc::SIGTERM);
    let (took, code) = r.exit_after(t);
    assert_eq!(code, Some(0), "{}", r.log());
    assert!(took < STOP_WITHIN, "stopped in {took:?}");
    assert!(r.log().contains("<6>stopped: "), "{}", r.log());
}

/// Without JOURNAL_STREAM the log lines are env_logger's own, with a timestamp.
#[test]
fn without_journald_log_lines_have_timestamps() {
    let o = edge_command()
        .args(["serve", "--head", s(shared_head()), "--source", s(&bee())])
        .args(["--no-http", "--frames", "1"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.lines().count() >= 2, "{e}");
    assert!(e.lines().all(|l| l.starts_with("[20")), "{e}");
}

/// A second SIGTERM while the service is stopping ends the process at once, with exit code 1
/// (the first alone ends it cleanly with 0, above).
#[test]
fn a_second_signal_exits_at_once() {
    let mut r = Served::start_with(
        &[
            "--head",
            s(shared_head()),
            "--source",
            s(&bee()),
            "--no-http",
        ],
        &[],
    );
    r.wait_for_log("the source", Duration::from_secs(120), |l| {
        l.contains("source open")
    });
    // Signals of one kind do not queue: one sent while another is pending is lost. So keep
    // sending, every 5 ms (far less than a clean stop takes, ~100 ms), until the process is gone.
    let t = Instant::now();
    let code = loop {
        r.signal(libc::SIGTERM);
        if let Some(status) = r.child.try_wait().unwrap() {
            break status.code();
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{}", r.log());
        std::thread::sleep(Duration::from_millis(5));
    };
    let took = t.elapsed();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(code, Some(1), "{}", r.log());
    assert!(took < STOP_WITHIN, "exited in {took:?}");
    // It did not wait for the threads: no clean-stop summary.
    assert!(!r.log().contains("stopped: "), "{}", r.log());
}

/// The systemd protocol on a NOTIFY_SOCKET bound here: READY=1 once running, a STATUS= line
/// with the counts at once and every 5 s, WATCHDOG=1 at half of WATCHDOG_USEC, STOPPING=1.
#[test]
fn systemd_ready_status_watchdog_and_stopping() {
    let tmp = tempfile::tempdir().unwrap();
    let sock_path = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut r = Served::start_with(
        &[
            "--head",
            s(shared_head()),
            "--source",
            s(&bee()),
            "--no-http",
        ],
        &[
            ("NOTIFY_SOCKET", s(&sock_path)),
            // 1 s: pings every 500 ms.
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    let mut messages: Vec<(Instant, String)> = Vec::new();
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    let mut stop_sent: Option<Instant> = None;
    loop {
        if let Ok(n) = sock.recv(&mut buf) {
            // sd-notify ends each message with a newline.
            let text = String::from_utf8_lossy(&buf[..n]).trim_end().to_string();
            messages.push((Instant::now(), text));
        }
        let watchdogs = messages.iter().filter(|(_, m)| m == "WATCHDOG=1").count();
        let has_status = messages.iter().any(|(_, m)| m.starts_with("STATUS="));
        if stop_sent.is_none() && watchdogs >= 4 && has_status {
            stop_sent = Some(Instant::now());
            r.signal(libc::SIGTERM);
        }
        if messages.iter().any(|(_, m)| m.contains("STOPPING=1")) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "messages so far: {messages:?}\n{}",
            r.log()
        );
    }
    let (_, code) = r.exit_after(stop_sent.unwrap());
    assert_eq!(code, Some(0), "{}", r.log());
    let texts: Vec<&str> = messages.iter().map(|(_, m)| m.as_str()).collect();
    // READY=1 first, once the backbone is loaded and the threads run.
    assert_eq!(texts[0], "READY=1", "{texts:?}");
    assert!(
        r.log()
            .contains("systemd watchdog every 1s: pinging every 500ms"),
        "{}",
        r.log()
    );
    let status = texts.iter().find(|m| m.starts_with("STATUS=")).unwrap();
    assert!(
        status.contains("frames classified") && status.contains("dropped"),
        "{status}"
    );
    // Pings about every 500 ms: not a burst, not late enough for systemd to kill the service.
    let pings: Vec<Instant> = messages
        .iter()
        .filter(|(_, m)| m == "WATCHDOG=1")
        .map(|(t, _)| *t)
        .collect();
    for w in pings.windows(2) {
        let gap = w[1] - w[0];
        assert!(
            gap >= Duration::from_millis(450) && gap < Duration::from_millis(1000),
            "watchdog gap {gap:?}"
        );
    }
}

/// `--fps` paces a file source like a camera (frames at the given rate), and when inference is
/// slower than the rate the single slot drops frames: sequence gaps and a `dropped` count.
#[test]
fn fps_paces_a_file_source_and_drops_under_load() {
    let lines = |fps: &str, frames: &str| -> Vec<Value> {
        let o = edge_command()
            .args(["serve", "--head", s(shared_head()), "--source", s(&bee())])
            .args(["--no-http", "--fps", fps, "--frames", frames])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        stdout(&o)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    // 2 fps: frames are captured 2 a second (a file source unpaced gives hundreds), whatever
    // inference keeps up with (on a loaded machine it may drop some).
    let paced = lines("2", "4");
    assert_eq!(paced.len(), 4);
    let (first, last) = (&paced[0], &paced[3]);
    let captured = last["frame"].as_f64().unwrap() - first["frame"].as_f64().unwrap();
    let span = last["ts"].as_f64().unwrap() - first["ts"].as_f64().unwrap();
    assert!(span > 1.0, "4 frames at 2 fps in {span} s");
    assert!(
        captured / span < 2.5,
        "{captured} frames in {span} s at 2 fps"
    );
    // 1000 fps: the capture thread outruns inference; each result is the newest frame.
    let flooded = lines("1000", "4");
    assert_eq!(flooded.len(), 4);
    let last = &flooded[3];
    let (seq, dropped) = (
        last["frame"].as_u64().unwrap(),
        last["dropped"].as_u64().unwrap(),
    );
    assert!(seq > 4 && dropped > 0, "{last}");
    // Every frame before the last one classified was either classified or dropped.
    assert!(dropped >= seq - 4, "{last}");
    for w in flooded.windows(2) {
        assert!(w[1]["frame"].as_u64() > w[0]["frame"].as_u64());
    }
}

/// Each setting comes from the flag if given, else from the config file, else the default.
#[test]
fn config_precedence_flags_over_file_over_defaults() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("config.toml");
    // The head by a path relative to the file.
    let rel_head = tmp.path().join("h");
    std::fs::create_dir(&rel_head).unwrap();
    std::fs::copy(shared_head(), rel_head.join("head.json")).unwrap();
    std::fs::write(
        &cfg,
        format!(
            "head = \"h\"\nsource = \"{}\"\nframes = 2\nthreshold = 1.0\nno_http = true\n",
            s(&bee())
        ),
    )
    .unwrap();
    let run = |args: &[&str]| -> Vec<Value> {
        let o = edge_command().arg("serve").args(args).output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert!(!stderr(&o).contains("listening"), "{}", stderr(&o));
        stdout(&o)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let label_of_bee = {
        let o = edge_command()
            .args(["predict", "--head", s(shared_head()), "--json", s(&bee())])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        serde_json::from_str::<Value>(&stdout(&o)).unwrap()["label"].clone()
    };
    assert_ne!(label_of_bee, "unknown");

    // All from the file: 2 frames, threshold 1 (everything unknown), no HTTP.
    let from_file = run(&["--config", s(&cfg)]);
    assert_eq!(from_file.len(), 2);
    assert!(from_file.iter().all(|l| l["label"] == "unknown"));

    // Flags win over the file, key by key.
    let flags = run(&["--config", s(&cfg), "--frames", "3", "--threshold", "0"]);
    assert_eq!(flags.len(), 3);
    assert!(flags.iter().all(|l| l["label"] == label_of_bee));

    // No file: the default threshold (0) labels the frame.
    let defaults = run(&[
        "--head",
        s(shared_head()),
        "--source",
        s(&bee()),
        "--no-http",
        "--frames",
        "1",
    ]);
    assert_eq!(defaults.len(), 1);
    assert_eq!(defaults[0]["label"], label_of_bee);
}

/// A head whose preprocessing differs from this build's is refused by every command that loads
/// one, with a one-line error naming the file.
#[test]
fn a_head_made_with_other_preprocessing_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("head.json");
    let mut h = edge_mnv2::head::Head::load(shared_head()).unwrap();
    h.backbone.preprocessing = format!("{}-other", h.backbone.preprocessing);
    h.save(&file).unwrap();
    let val = shared().join("datasets/hymenoptera/val");
    for args in [
        vec!["predict", "--head", s(&file), s(&bee())],
        vec!["evaluate", "--head", s(&file), s(&val)],
        vec![
            "serve",
            "--head",
            s(&file),
            "--source",
            s(&bee()),
            "--no-http",
            "--frames",
            "1",
        ],
    ] {
        let o = edge_command().args(&args).output().unwrap();
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(stdout(&o).is_empty(), "{args:?}: {}", stdout(&o));
        let e = stderr(&o);
        let error: Vec<&str> = e.lines().filter(|l| l.contains("error")).collect();
        assert_eq!(error.len(), 1, "{args:?}: {e}");
        assert!(
            error[0].contains(s(&file)) && error[0].contains("preprocessing"),
            "{args:?}: {e}"
        );
    }
}
