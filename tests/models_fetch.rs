//! `edge-mnv2 models fetch` against a tiny HTTP/1.1 server on 127.0.0.1 in this process, serving
//! the real model file from ../shared/models (good, truncated, corrupted, wrong file, 404, hang-up)
//! and its label file.
//! No network beyond 127.0.0.1. HTTPS is the same code path with rustls added by ureq; it cannot
//! be reached from here, so only the plain-HTTP loopback path runs.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

const NAME: &str = "mobilenet_v2_1.0_224_quant";
const FILE: &str = "mobilenet_v2_1.0_224_quant.tflite";
const SHA256: &str = "7aad0c74c5e3c06e5eb3c827e13304fdd68a83da6087d92ee169c24ff9fd4776";
const LABELS: &str = "imagenet_labels.txt";

/// What the server answers to every request.
#[derive(Clone)]
enum Reply {
    /// 200 with the body and its Content-Length.
    Body(Vec<u8>),
    /// 200 announcing `body.len()` bytes, sending only the first `sent`, then closing.
    Truncated { body: Vec<u8>, sent: usize },
    /// This status line with a short body.
    Status(&'static str),
    /// Close the connection without answering.
    HangUp,
    /// 200 with the ../shared/models file the path's last segment names.
    SharedFile,
}

struct Server {
    base: String,
    /// Request paths in arrival order.
    requests: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Serves `reply` for the model and the real label file, to at most 8 connections, then
    /// stops by itself.
    fn start(reply: Reply) -> Server {
        Server::start_with(reply, Reply::Body(model_bytes(LABELS)))
    }

    /// `reply` for every path but the label file's, which gets `labels`.
    fn start_with(reply: Reply, labels: Reply) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let base = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&requests);
        std::thread::spawn(move || {
            for stream in listener.incoming().take(8) {
                let Ok(stream) = stream else { continue };
                let _ = answer(stream, &reply, &labels, &log);
            }
        });
        Server { base, requests }
    }

    fn url(&self) -> String {
        format!("{}/models/{FILE}", self.base)
    }

    /// Model requests (every path but the label file's), in arrival order.
    fn requests(&self) -> Vec<String> {
        self.all_requests()
            .into_iter()
            .filter(|p| !p.ends_with(LABELS))
            .collect()
    }

    fn label_requests(&self) -> Vec<String> {
        self.all_requests()
            .into_iter()
            .filter(|p| p.ends_with(LABELS))
            .collect()
    }

    fn all_requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

fn answer(
    stream: TcpStream,
    model: &Reply,
    labels: &Reply,
    log: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Read the whole head: closing with unread request bytes would make the kernel send a reset.
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_string();
    let reply = if path.ends_with(LABELS) {
        labels
    } else {
        model
    };
    log.lock().unwrap().push(path.clone());
    let mut stream = stream;
    let head = |status: &str, len: usize| {
        format!("HTTP/1.1 {status}\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n")
    };
    match reply {
        Reply::Body(body) => {
            stream.write_all(head("200 OK", body.len()).as_bytes())?;
            stream.write_all(body)?;
        }
        Reply::Truncated { body, sent } => {
            stream.write_all(head("200 OK", body.len()).as_bytes())?;
            stream.write_all(&body[..*sent])?;
        }
        Reply::Status(status) => {
            let body = b"no such file\n";
            stream.write_all(head(status, body.len()).as_bytes())?;
            stream.write_all(body)?;
        }
        Reply::HangUp => {}
        Reply::SharedFile => {
            let name = path.rsplit('/').next().unwrap_or("");
            let body = model_bytes(name);
            stream.write_all(head("200 OK", body.len()).as_bytes())?;
            stream.write_all(&body)?;
        }
    }
    stream.flush()?;
    stream.shutdown(std::net::Shutdown::Both)
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

/// Runs `edge-mnv2 <args>` with the model cache in `s.cache`, no other model directory, and no
/// proxy (a proxy from the environment must not see test traffic).
fn fetch_cmd(s: &Scratch, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = edge_command();
    cmd.args(args)
        .current_dir(&s.cwd)
        .env("EDGE_MNV2_MODEL_CACHE", &s.cache)
        .env_remove("EDGE_MNV2_MODELS")
        .env_remove("EDGE_MNV2_MODEL_BASE_URL")
        .env_remove("RUST_LOG");
    for var in [
        "ALL_PROXY",
        "all_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
    ] {
        cmd.env_remove(var);
    }
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
    let server = Server::start(Reply::Body(model_bytes(FILE)));
    let s = scratch();
    let url = server.url();
    let out = fetch_cmd(&s, &["models", "fetch", NAME, "--url", &url], &[]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let stored = s.cache.join(FILE);
    assert_eq!(sha256_hex(&stored), SHA256);
    // The label file comes from beside the explicit URL, verified like the model.
    let labels = s.cache.join(LABELS);
    assert_eq!(sha256_hex(&labels), sha256_hex(&models_dir().join(LABELS)));
    assert_eq!(server.label_requests(), vec![format!("/models/{LABELS}")]);
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
    assert_eq!(server.requests().len(), 1);

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
    let server = Server::start_with(
        Reply::Body(model_bytes(FILE)),
        Reply::Body(b"background\nnot the imagenet labels\n".to_vec()),
    );
    let s = scratch();
    let url = server.url();
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
    let server = Server::start(Reply::Body(model_bytes(FILE)));
    let s = scratch();
    let url = server.url();
    let shared = models_dir();
    let shared = shared.to_str().unwrap();
    let env = [("EDGE_MNV2_MODELS", shared)];
    let out = fetch_cmd(&s, &["models", "fetch", NAME, "--url", &url], &env);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert!(stdout(&out).contains("already present"), "{}", stdout(&out));
    assert!(server.all_requests().is_empty());
    assert!(!s.cache.join(FILE).exists());

    let forced = fetch_cmd(
        &s,
        &["models", "fetch", NAME, "--url", &url, "--force"],
        &env,
    );
    assert_eq!(forced.status.code(), Some(0), "stderr: {}", stderr(&forced));
    assert_eq!(sha256_hex(&s.cache.join(FILE)), SHA256);
    assert_eq!(server.requests().len(), 1);
}

#[test]
fn mirror_base_url_from_the_environment() {
    let server = Server::start(Reply::Body(model_bytes(FILE)));
    let s = scratch();
    let base = format!("{}/mirror/", server.base);
    let out = fetch_cmd(
        &s,
        &["models", "fetch", NAME],
        &[("EDGE_MNV2_MODEL_BASE_URL", &base)],
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(server.requests(), vec![format!("/mirror/{FILE}")]);
    assert_eq!(server.label_requests(), vec![format!("/mirror/{LABELS}")]);
    assert_eq!(sha256_hex(&s.cache.join(FILE)), SHA256);
}

#[test]
fn truncated_body_is_retried_once_then_leaves_nothing() {
    let body = model_bytes(FILE);
    let sent = body.len() / 2;
    let server = Server::start(Reply::Truncated { body, sent });
    let s = scratch();
    let url = server.url();
    let out = fetch_cmd(&s, &["models", "fetch", NAME, "--url", &url], &[]);
    assert_failed_cleanly(&s, &out, &url, "connection cut");
    assert_eq!(server.requests().len(), 2, "one retry expected");
}

#[test]
fn corrupted_body_fails_the_checksum_and_leaves_nothing() {
    let mut body = model_bytes(FILE);
    let mid = body.len() / 2;
    for b in &mut body[mid..mid + 16] {
        *b ^= 0xff;
    }
    let server = Server::start(Reply::Body(body));
    let s = scratch();
    let url = server.url();
    let out = fetch_cmd(&s, &["models", "fetch", NAME, "--url", &url], &[]);
    assert_failed_cleanly(&s, &out, &url, "checksum mismatch");
    assert_eq!(server.requests().len(), 1, "a wrong body is not retried");
}

#[test]
fn a_different_valid_model_fails_the_checksum_and_leaves_nothing() {
    let server = Server::start(Reply::Body(model_bytes(
        "tf2_mobilenet_v2_1.0_224_ptq.tflite",
    )));
    let s = scratch();
    let url = server.url();
    let out = fetch_cmd(&s, &["models", "fetch", NAME, "--url", &url], &[]);
    assert_failed_cleanly(&s, &out, &url, "checksum mismatch");
    assert!(stderr(&out).contains(SHA256), "{}", stderr(&out));
}

#[test]
fn http_404_is_an_error_naming_the_url() {
    let server = Server::start(Reply::Status("404 Not Found"));
    let s = scratch();
    let url = server.url();
    let out = fetch_cmd(&s, &["models", "fetch", NAME, "--url", &url], &[]);
    assert_failed_cleanly(&s, &out, &url, "HTTP 404 Not Found");
    assert_eq!(server.requests().len(), 1, "an HTTP status is not retried");
}

#[test]
fn hang_up_without_an_answer_is_an_error() {
    let server = Server::start(Reply::HangUp);
    let s = scratch();
    let url = server.url();
    let out = fetch_cmd(&s, &["models", "fetch", NAME, "--url", &url], &[]);
    assert_failed_cleanly(&s, &out, &url, &url);
    assert_eq!(server.requests().len(), 2, "one retry expected");
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
    let server = Server::start(Reply::SharedFile);
    let s = scratch();
    let base = format!("{}/mirror/", server.base);
    let env = [("EDGE_MNV2_MODEL_BASE_URL", base.as_str())];
    let out = fetch_cmd(&s, &["models", "fetch", "--all"], &env);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let mut requests = server.requests();
    requests.sort();
    assert_eq!(
        requests,
        [format!("/mirror/{FILE}"), format!("/mirror/{TF2}")]
    );
    assert_eq!(server.label_requests(), [format!("/mirror/{LABELS}")]);
    assert_eq!(sha256_hex(&s.cache.join(FILE)), SHA256);
    assert_eq!(
        sha256_hex(&s.cache.join(TF2)),
        sha256_hex(&models_dir().join(TF2))
    );
    assert!(s.cache.join(LABELS).is_file());

    let again = fetch_cmd(&s, &["models", "fetch", "--all"], &env);
    assert_eq!(again.status.code(), Some(0), "stderr: {}", stderr(&again));
    assert_eq!(
        server.all_requests().len(),
        3,
        "{:?}",
        server.all_requests()
    );
}
