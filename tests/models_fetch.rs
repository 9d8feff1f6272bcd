//! `edge-mnv2 models fetch` against a tiny HTTP/1.1 server on 127.0.0.1 in this process, serving
//! the real model file from ../shared/models (good, truncated, corrupted, wrong file, 404, hang-up)
//! and its label file.
//! No network beyond 127.0.0.1. HTTPS is the same code path with rustls added by ureq; it cannot
//! be reached from here, so only the plain-HTTP loopback path runs.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::http_server::{unanswered_port, Reply, Server};
use common::*;

const NAME: &str = "mobilenet_v2_1.0_224_quant";
const FILE: &str = "mobilenet_v2_1.0_224_quant.tflite";
const SHA256: &str = "7aad0c74c5e3c06e5eb3c827e13304fdd68a83da6087d92ee169c24ff9fd4776";
const LABELS: &str = "imagenet_labels.txt";

/// `model` for the model, the real label file for the label file.
fn server(model: Reply) -> Server {
    server_with(vec![model], Reply::Body(model_bytes(LABELS)))
}

/// `plan[i]` for the i-th model request (the last one repeats), `labels` for the label file.
fn server_with(plan: Vec<Reply>, labels: Reply) -> Server {
    Server::start_plan(plan, Some((LABELS, labels)))
}

fn model_url(server: &Server) -> String {
    format!("{}/models/{FILE}", server.base)
}

/// Model requests (every path but the label file's), in arrival order.
fn model_requests(server: &Server) -> Vec<String> {
    server
        .requests()
        .into_iter()
        .filter(|p| !p.ends_with(LABELS))
        .collect()
}

fn label_requests(server: &Server) -> Vec<String> {
    server
        .requests()
        .into_iter()
        .filter(|p| p.ends_with(LABELS))
        .collect()
}

fn model_bytes(file: &str) -> Vec<u8> {
    std::fs::read(models_dir().join(file)).expect("shared model file")
}

/// A scratch place: `cache/` for downloads and `cwd/` to run in (no ./models, no ../shared).
struct Scratch {
    _dir: tempfile::TempDir,
    cache: PathBuf,
    cwd: PathBuf,
}

fn scratch() -> Scratch {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let cwd = dir.path().join("cwd");
    std::fs::create_dir(&cwd).unwrap();
    Scratch {
        cache,
        cwd,
        _dir: dir,
    }
}

/// Runs `edge-mnv2 <args>` with the model cache in `s.cache` and no other model directory.
fn fetch_cmd(s: &Scratch, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = fetch_command(&s.cache, &s.cwd);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("running edge-mnv2")
}

fn sha256_hex(path: &Path) -> String {
    edge_mnv2::models::sha256_file(path).unwrap()
}

/// Everything in a directory (recursively), hidden temp files included.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        }
        out.push(p);
    }
    out
}

/// Exit 1, one line on stderr naming the URL and containing `reason`, nothing left behind.
fn assert_failed_cleanly(s: &Scratch, out: &Output, url: &str, reason: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(lines.len(), 1, "one error line expected: {err}");
    assert!(lines[0].contains(url), "error should name {url}: {err}");
    assert!(
        lines[0].contains(reason),
        "error should say '{reason}': {err}"
    );
    assert_eq!(files_under(&s.cache), Vec::<PathBuf>::new(), "leftovers");
    assert_eq!(
        files_under(&s.cwd),
        Vec::<PathBuf>::new(),
        "leftovers in cwd"
    );
    assert!(stdout(out).is_empty(), "{}", stdout(out));
}

#[test]
fn good_file_is_stored_verified_and_then_found() {
    let server = server(Reply::Body(model_bytes(FILE)));
    let s = scratch();
    let url = model_url(&server);
    let out = fetch_cmd(&s, &["models", "fetch", NAME, "--url", &url], &[]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let stored = s.cache.join(FILE);
    assert_eq!(sha256_hex(&stored), SHA256);
    // The label file comes from beside the explicit URL, verified like the model.
    let labels = s.cache.join(LABELS);
    assert_eq!(sha256_hex(&labels), sha256_hex(&models_dir().join(LABELS)));
    assert_eq!(label_requests(&server), vec![format!("/models/{LABELS}")]);
    let mut stored_files = files_under(&s.cache);
    stored_files.sort();
    assert_eq!(stored_files, vec![labels, stored.clone()], "leftovers");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&stored).unwrap().permissions().mode();
        assert_eq!(mode & 0o044, 0o044, "readable by others: {mode:o}");
    }
    assert!(stdout(&out).contains("downloaded"), "{}", stdout(&out));
    assert!(stdout(&out).contains(&url), "{}", stdout(&out));

    // The cache is a search directory: the next fetch finds the file and downloads nothing.
    let again = fetch_cmd(&s, &["models", "fetch", NAME, "--url", &url], &[]);
    assert_eq!(again.status.code(), Some(0), "stderr: {}", stderr(&again));
    assert!(
        stdout(&again).contains("already present"),
        "{}",
        stdout(&again)
    );
    assert_eq!(model_requests(&server).len(), 1);

    // `models` sees it, verified.
    let list = fetch_cmd(&s, &["models", "list", "--json"], &[]);
    let list: serde_json::Value = serde_json::from_str(&stdout(&list)).unwrap();
    let entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == NAME)
        .unwrap();
    assert_eq!(entry["status"], "ok");
    assert_eq!(entry["path"], stored.display().to_string());

    // After this one fetch, classify has what it needs: model and class names, from the cache.
    let cat = models_dir().join("images/cat.bmp");
    let out = fetch_cmd(&s, &["classify", "--top", "1", cat.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert!(stdout(&out).contains("cat"), "{}", stdout(&out));
}

#[test]
fn a_bad_label_file_is_an_error_and_leaves_the_model() {
    let server = server_with(
        vec![Reply::Body(model_bytes(FILE))],
        Reply::Body(b"background\nnot the imagenet labels\n".to_vec()),
    );
    let s = scratch();
    let url = model_url(&server);
    let out = fetch_cmd(&s, &["models", "fetch", NAME, "--url", &url], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert_eq!(
        err.lines().filter(|l| l.contains("error")).count(),
        1,
        "{err}"
    );
    assert!(
        err.contains("checksum mismatch") && err.contains(LABELS),
        "{err}"
    );
    // The verified model stays; no partial label file.
    assert_eq!(files_under(&s.cache), vec![s.cache.join(FILE)]);
    assert!(stdout(&out).contains("downloaded"), "{}", stdout(&out));
}

#[test]
fn existing_verified_copy_skips_download_unless_forced() {
    let server = server(Reply::Body(model_bytes(FILE)));
    let s = scratch();
    let url = model_url(&server);
    let shared = models_dir();
    let shared = shared.to_str().unwrap();
    let env = [("EDGE_MNV2_MODELS", shared)];
    let out = fetch_cmd(&s, &["models", "fetch", NAME, "--url", &url], &env);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert!(stdout(&out).contains("already present"), "{}", stdout(&out));
    assert!(server.requests().is_empty());
    assert!(!s.cache.join(FILE).exists());

    let forced = fetch_cmd(
        &s,
        &["models", "fetch", NAME, "--url", &url, "--force"],
        &env,
    );
    assert_eq!(forced.status.code(), Some(0), "stderr: {}", stderr(&forced));
    assert_eq!(sha256_hex(&s.cache.join(FILE)), SHA256);
    assert_eq!(model_requests(&server).len(), 1);
}

#[test]
fn mirror_base_url_from_the_environment() {
    let server = server(Reply::Body(model_bytes(FILE)));
    let s = scratch();
    let base = format!("{}/mirror/", server.base);
    let out = fetch_cmd(
        &s,
        &["models", "fetch", NAME],
        &[("EDGE_MNV2_MODEL_BASE_URL", &base)],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(model_requests(&server), vec![format!("/mirror/{FILE}")]);
    assert_eq!(label_requests(&server), vec![format!("/mirror/{LABELS}")]);
    assert_eq!(sha256_hex(&s.cache.join(FILE)), SHA256);
}

#[test]
fn truncated_body_is_retried_once_then_leaves_nothing() {
    let body = model_bytes(FILE);
    let sent = body.len() / 2;
    let server = server(Reply::Truncated { body, sent });
    let s = scratch();
    let url = model_url(&server);
    let out = fetch_cmd(&s, &["models", "fetch", NAME, "--url", &url], &[]);
    assert_failed_cleanly(&s, &out, &url, "connection cut");
    assert_eq!(model_requests(&server).len(), 2, "one retry expected");
}

#[test]
fn corrupted_body_fails_the_checksum_and_leaves_nothing() {
    let mut body = model_bytes(FILE);
    let mid = body.len() / 2;
    for b in &mut body[mid..mid + 16] {
        *b ^= 0xff;
    }
    let server = server(Reply::Body(body));
    let s = scratch();
    let url = model_url(&server);
    let out = fetch_cmd(&s, &["models", "fetch", NAME, "--url", &url], &[]);
    assert_failed_cleanly(&s, &out, &url, "checksum mismatch");
    assert_eq!(
        model_requests(&server).len(),
        1,
        "a wrong body is not retried"
    );
}

#[test]
fn a_different_valid_model_fails_the_checksum_and_leaves_nothing() {
    let server = server(Reply::Body(model_bytes(
        "tf2_mobilenet_v2_1.0_224_ptq.tflite",
    )));
    let s = scratch();
    let url = model_url(&server);
    let out = fetch_cmd(&s, &["models", "fetch", NAME, "--url", &url], &[]);
    assert_failed_cleanly(&s, &out, &url, "checksum mismatch");
    assert!(stderr(&out).contains(SHA256), "{}", stderr(&out));
}

#[test]
fn http_404_is_an_error_naming_the_url() {
    let server = server(Reply::Status("404 Not Found"));
    let s = scratch();
    let url = model_url(&server);
    let out = fetch_cmd(&s, &["models", "fetch", NAME, "--url", &url], &[]);
    assert_failed_cleanly(&s, &out, &url, "HTTP 404 Not Found");
    assert_eq!(
        model_requests(&server).len(),
        1,
        "an HTTP status is not retried"
    );
}

#[test]
fn hang_up_without_an_answer_is_an_error() {
    let server = server(Reply::HangUp);
    let s = scratch();
    let url = model_url(&server);
    let out = fetch_cmd(&s, &["models", "fetch", NAME, "--url", &url], &[]);
    assert_failed_cleanly(&s, &out, &url, &url);
    assert_eq!(model_requests(&server).len(), 2, "one retry expected");
}

#[test]
fn refusals_before_any_download() {
    let s = scratch();
    // Derived locally: no URL. (The default model is one today.)
    let out = fetch_cmd(&s, &["models", "fetch", "mnv2-1.0-224-dequant"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no download URL"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(NAME),
        "names what can be fetched: {}",
        stderr(&out)
    );
    // Unknown name.
    let out = fetch_cmd(&s, &["models", "fetch", "no-such-model"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("unknown model"), "{}", stderr(&out));
    // The manifest pins no checksum for the zoo's float files.
    let out = fetch_cmd(&s, &["models", "fetch", "mobilenetv2-12"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no sha256 is pinned"),
        "{}",
        stderr(&out)
    );
    assert_eq!(files_under(&s.cache), Vec::<PathBuf>::new());
}

/// `--all`: every manifest entry with a URL and a pinned checksum (the two `.tflite` files, and
/// the label file the default names), each verified and stored; a second run downloads nothing.
#[test]
fn all_fetches_every_pinned_entry_once() {
    const TF2: &str = "tf2_mobilenet_v2_1.0_224_ptq.tflite";
    let server = server(Reply::SharedFile);
    let s = scratch();
    let base = format!("{}/mirror/", server.base);
    let env = [("EDGE_MNV2_MODEL_BASE_URL", base.as_str())];
    let out = fetch_cmd(&s, &["models", "fetch", "--all"], &env);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let mut requests = model_requests(&server);
    requests.sort();
    assert_eq!(
        requests,
        [format!("/mirror/{FILE}"), format!("/mirror/{TF2}")]
    );
    assert_eq!(label_requests(&server), [format!("/mirror/{LABELS}")]);
    assert_eq!(sha256_hex(&s.cache.join(FILE)), SHA256);
    assert_eq!(
        sha256_hex(&s.cache.join(TF2)),
        sha256_hex(&models_dir().join(TF2))
    );
    assert!(s.cache.join(LABELS).is_file());

    let again = fetch_cmd(&s, &["models", "fetch", "--all"], &env);
    assert_eq!(again.status.code(), Some(0), "stderr: {}", stderr(&again));
    assert_eq!(server.requests().len(), 3, "{:?}", server.requests());
}

/// A short timeout for both (connect, idle read) through `EDGE_MNV2_FETCH_TIMEOUT_MS`: the rule
/// is the same at 10 s and 30 s, CI just does not wait for it.
const SHORT_TIMEOUT_MS: u64 = 300;

/// Fetches `url` with the short timeouts: exit 1 naming `url`, both attempts (one retry) each
/// ended by a timeout, not before two timeouts have passed and long before the default ones
/// would have.
fn assert_times_out_twice(url: &str) {
    let s = scratch();
    let timeout = SHORT_TIMEOUT_MS.to_string();
    let start = Instant::now();
    let out = fetch_cmd(
        &s,
        &["models", "fetch", NAME, "--url", url],
        &[("EDGE_MNV2_FETCH_TIMEOUT_MS", &timeout)],
    );
    let took = start.elapsed();
    assert_failed_cleanly(&s, &out, url, "timeout");
    let short = Duration::from_millis(SHORT_TIMEOUT_MS);
    assert!(took >= 2 * short, "{took:?}: both attempts should wait");
    assert!(
        took < Duration::from_secs(8),
        "{took:?}: the timeout did not fire"
    );
}

/// A server that stops sending: mid-body on the first attempt, before answering at all on the
/// retry. Each attempt fails after the idle-read timeout, and the failure is retried once.
#[test]
fn a_stalled_server_times_out_and_is_retried_once() {
    let body = model_bytes(FILE);
    let server = server_with(
        vec![
            Reply::Stall {
                body,
                sent: 100_000,
            },
            Reply::Silent,
        ],
        Reply::Status("404 Not Found"),
    );
    assert_times_out_twice(&model_url(&server));
    assert_eq!(model_requests(&server).len(), 2, "one retry expected");
}

/// A host whose TCP handshake never completes: the connect timeout fires, once per attempt.
#[test]
fn a_connection_that_never_opens_times_out() {
    let (base, _listener, _filler) = unanswered_port();
    assert_times_out_twice(&format!("{base}/models/{FILE}"));
}

/// A connection that fails once and then works: the retry stores the verified file.
#[test]
fn a_failure_then_a_good_answer_is_retried_into_success() {
    let server = server_with(
        vec![Reply::HangUp, Reply::Body(model_bytes(FILE))],
        Reply::Body(model_bytes(LABELS)),
    );
    let s = scratch();
    let url = model_url(&server);
    let out = fetch_cmd(&s, &["models", "fetch", NAME, "--url", &url], &[]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(model_requests(&server).len(), 2);
    assert_eq!(sha256_hex(&s.cache.join(FILE)), SHA256);
}

/// A redirect that stays within the rules (here: loopback http) is followed.
#[test]
fn a_redirect_within_the_rules_is_followed() {
    let server = server_with(
        vec![
            Reply::Redirect(format!("/elsewhere/{FILE}")),
            Reply::Body(model_bytes(FILE)),
        ],
        Reply::Body(model_bytes(LABELS)),
    );
    let s = scratch();
    let url = model_url(&server);
    let out = fetch_cmd(&s, &["models", "fetch", NAME, "--url", &url], &[]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(
        model_requests(&server),
        [format!("/models/{FILE}"), format!("/elsewhere/{FILE}")]
    );
    assert_eq!(sha256_hex(&s.cache.join(FILE)), SHA256);
}

/// A redirect to plain http on another host is refused before anything connects to it. The
/// proof: every non-loopback request goes through a "proxy" (a second local server; loopback is
/// excluded by NO_PROXY), and that server sees no connection at all. (Checking the target after
/// the HTTP client has followed it, as before, sends the request there first.)
#[test]
fn a_redirect_leaving_the_rules_is_refused_before_it_is_contacted() {
    let elsewhere = format!("http://models.example.com/{FILE}");
    let server = server(Reply::Redirect(elsewhere.clone()));
    let proxy = Server::start(Reply::Body(model_bytes(FILE)));
    let s = scratch();
    let url = model_url(&server);
    let out = fetch_cmd(
        &s,
        &["models", "fetch", NAME, "--url", &url],
        &[
            ("HTTP_PROXY", proxy.base.as_str()),
            ("NO_PROXY", "127.0.0.1,localhost"),
        ],
    );
    // The proxy's listener is served by a thread: give a connection the old code would have
    // made time to be counted.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        proxy.connections(),
        0,
        "the redirect target was contacted: {:?}; stderr: {}",
        proxy.requests(),
        stderr(&out)
    );
    assert_failed_cleanly(
        &s,
        &out,
        &url,
        &format!("refusing a redirect to {elsewhere}"),
    );
    assert_eq!(model_requests(&server).len(), 1, "a refusal is not retried");
}
