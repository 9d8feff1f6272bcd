//! Head rollout over HTTP: `push-head --url` installs a head on a running `serve` through
//! `PUT /head`; a head with a wrong checksum, for another backbone or with other preprocessing is
//! refused (4xx, the reason in the answer) and the running head stays; `POST /rollback` puts the
//! previous head back; beyond loopback nothing changes without the token. The real binary, the
//! real model, copies of the shared head (trained on hymenoptera/train), on 127.0.0.1.
#![cfg(feature = "http")]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use edge_mnv2::head::Head;
use serde_json::Value;

const TOKEN: &str = "rollout-token-0123456789abcdef";

/// A copy of the shared head in `dir/name/head.json`, optionally changed; returns the directory.
fn head_in(dir: &Path, name: &str, change: impl FnOnce(&mut Head)) -> PathBuf {
    common::head_in(shared_head(), dir, name, change)
}

fn sha256_of_file(file: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(file).unwrap()))
}

fn sha256_of(dir: &Path) -> String {
    sha256_of_file(&dir.join("head.json"))
}

/// The token file `serve` and `push-head` read, mode 0600.
fn token_file(dir: &Path) -> PathBuf {
    let p = dir.join("token");
    std::fs::write(&p, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// A running `serve` on the bees of hymenoptera/val, its stderr collected.
struct Served {
    child: Child,
    log: Arc<Mutex<String>>,
    addr: String,
}

impl Served {
    fn start(head: &Path, listen: &str, token: &Path, extra: &[&str]) -> Served {
        let mut child = edge_command()
            .arg("serve")
            .args([
                "--head",
                s(head),
                "--listen",
                listen,
                "--token-file",
                s(token),
            ])
            .args(extra)
            .arg("--source")
            .arg(shared().join("datasets/hymenoptera/val/bees"))
            // One view a frame, as the one-view head these tests had before the shared one:
            // rollout does not depend on the views, and four would quadruple the inference load.
            .args(["--fps", "4", "--views", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting serve");
        let log = Arc::new(Mutex::new(String::new()));
        let err = child.stderr.take().unwrap();
        let g = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut g = g.lock().unwrap();
                g.push_str(&line);
                g.push('\n');
            }
        });
        let mut served = Served {
            child,
            log,
            addr: String::new(),
        };
        let end = Instant::now() + Duration::from_secs(120);
        loop {
            let log = served.log();
            if let Some(a) = log
                .lines()
                .find_map(|l| l.split("listening on http://").nth(1))
            {
                // A wildcard address is reached through loopback: no traffic leaves this machine.
                let port = a.trim().rsplit(':').next().unwrap();
                served.addr = format!("127.0.0.1:{port}");
                break;
            }
            if let Some(status) = served.child.try_wait().unwrap() {
                panic!("serve exited ({status}); log:\n{log}");
            }
            assert!(Instant::now() < end, "serve did not listen; log:\n{log}");
            std::thread::sleep(Duration::from_millis(50));
        }
        served
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// One request on its own connection: (status, body).
    fn request(
        &self,
        method: &str,
        target: &str,
        token: Option<&str>,
        body: &[u8],
    ) -> (u16, String) {
        let mut c = TcpStream::connect(&self.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(
            c,
            "{method} {target} HTTP/1.1\r\nHost: test\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .unwrap();
        // A refused request is answered before its body is read; the write may then fail.
        let _ = c.write_all(body);
        let mut out = Vec::new();
        let _ = c.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no answer to {method} {target}: {text:?}"));
        let body = text
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_string();
        (status, body)
    }

    fn json(&self, method: &str, target: &str, token: Option<&str>, body: &[u8]) -> (u16, Value) {
        let (status, body) = self.request(method, target, token, body);
        let v = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{method} {target}: {status} {body:?}: {e}"));
        (status, v)
    }

    fn health(&self) -> Value {
        self.json("GET", "/healthz", None, b"").1
    }

    fn metric(&self, line_start: &str) -> String {
        let (_, text) = self.request("GET", "/metrics", None, b"");
        text.lines()
            .find_map(|l| l.strip_prefix(line_start))
            .unwrap_or_else(|| panic!("{line_start} not in the metrics:\n{text}"))
            .trim()
            .to_string()
    }

    /// Waits until `/latest` comes from the head `sha256`; returns that result.
    fn wait_latest_from(&self, sha256: &str) -> Value {
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, body) = self.request("GET", "/latest", None, b"");
            if status == 200 {
                let v: Value = serde_json::from_str(&body).unwrap();
                if v["head"] == sha256 {
                    return v;
                }
            }
            assert!(
                Instant::now() < end,
                "no result from head {sha256}; last {status} {body}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn push_head(args: &[&str], token: &Path) -> (Option<i32>, String, String) {
    let o = edge_command()
        .arg("push-head")
        .args(args)
        .args(["--token-file", s(token)])
        .output()
        .unwrap();
    (o.status.code(), stdout(&o), stderr(&o))
}

#[test]
fn push_head_over_http_installs_refuses_and_rolls_back() {
    let tmp = tempfile::tempdir().unwrap();
    let token = token_file(tmp.path());
    let board = head_in(tmp.path(), "board", |_| {});
    let first = sha256_of(&board);
    let served = Served::start(&board, "127.0.0.1:0", &token, &[]);
    served.wait_latest_from(&first);

    // A new head (other class names) through push-head --url.
    let new = head_in(tmp.path(), "new", |h| {
        h.classes = vec!["fourmis".into(), "abeilles".into()]
    });
    let new_sha = sha256_of(&new);
    let (code, out, err) = push_head(&["--head", s(&new), "--url", &served.url()], &token);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(
        out.trim(),
        format!("{}: ok, head {new_sha} (was {first})", served.url())
    );
    let latest = served.wait_latest_from(&new_sha);
    assert!(
        latest["label"] == "abeilles" || latest["label"] == "fourmis",
        "{latest}"
    );
    let health = served.health();
    assert_eq!(health["head"]["sha256"], new_sha.as_str());
    assert_eq!(health["head"]["classes"][1], "abeilles");
    assert_eq!(health["rollout"]["action"], "install");
    assert_eq!(health["rollout"]["ok"], true);
    assert_eq!(sha256_of(&board), new_sha, "written over the head file");
    assert_eq!(
        sha256_of_file(&board.join("head.json.previous")),
        first,
        "the replaced head is kept"
    );

    // A wrong checksum: 400, the reason, nothing changes.
    let first_bytes = std::fs::read(shared_head()).unwrap();
    let zeros = "0".repeat(64);
    let (status, answer) = served.json(
        "PUT",
        &format!("/head?sha256={zeros}"),
        Some(TOKEN),
        &first_bytes,
    );
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["ok"], false);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .starts_with(&format!("checksum mismatch: the head's sha256 is {first}")),
        "{answer}"
    );
    assert_eq!(answer["sha256"], new_sha.as_str());

    // A head for another backbone (through push-head), and one with other preprocessing (by
    // hand, with its right checksum): 409, the reason named, the running head stays.
    let other = head_in(tmp.path(), "other", |h| h.backbone.sha256 = "0".repeat(64));
    let (code, out, err) = push_head(&["--head", s(&other), "--url", &served.url()], &token);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.contains(&format!("{}: refused: head refused:", served.url()))
            && out.contains("trained on backbone")
            && out.contains(&format!("(running head {new_sha})")),
        "{out}"
    );
    let preprocessed = head_in(tmp.path(), "preprocessed", |h| {
        h.backbone.preprocessing = "resize-to-64-v0".into()
    });
    let (status, answer) = served.json(
        "PUT",
        &format!("/head?sha256={}", sha256_of(&preprocessed)),
        Some(TOKEN),
        &std::fs::read(preprocessed.join("head.json")).unwrap(),
    );
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("different preprocessing ('resize-to-64-v0')"),
        "{answer}"
    );
    assert_eq!(answer["sha256"], new_sha.as_str());
    // Neither the wrong-checksum head nor the others reached the disk or the service.
    assert_eq!(sha256_of(&board), new_sha);
    let health = served.health();
    assert_eq!(health["head"]["sha256"], new_sha.as_str());
    assert_eq!(health["rollout"]["ok"], false);
    assert_eq!(served.wait_latest_from(&new_sha)["head"], new_sha.as_str());

    // Rollback: the token is needed on loopback too once one is configured.
    let (status, _) = served.request("POST", "/rollback", None, b"");
    assert_eq!(status, 401);
    let (status, answer) = served.json("POST", "/rollback", Some(TOKEN), b"");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["ok"], true);
    assert_eq!(answer["sha256"], first.as_str());
    assert_eq!(answer["previous"], new_sha.as_str());
    served.wait_latest_from(&first);
    assert_eq!(sha256_of(&board), first);
    let health = served.health();
    assert_eq!(health["head"]["sha256"], first.as_str());
    assert_eq!(health["rollout"]["action"], "rollback");

    // Every outcome counted: install and rollback ok; checksum, backbone, preprocessing refused.
    assert_eq!(
        served.metric("edge_mnv2_head_rollouts_total{result=\"ok\"}"),
        "2"
    );
    assert_eq!(
        served.metric("edge_mnv2_head_rollouts_total{result=\"refused\"}"),
        "3"
    );
}

#[test]
fn beyond_loopback_put_head_needs_the_token() {
    let tmp = tempfile::tempdir().unwrap();
    let token = token_file(tmp.path());
    let board = head_in(tmp.path(), "board", |_| {});
    let first = sha256_of(&board);
    let served = Served::start(&board, "0.0.0.0:0", &token, &[]);
    let new = head_in(tmp.path(), "new", |h| {
        h.classes = vec!["fourmis".into(), "abeilles".into()]
    });
    let bytes = std::fs::read(new.join("head.json")).unwrap();
    let target = format!("/head?sha256={}", sha256_of(&new));
    for presented in [None, Some("rollout-token-0123456789abcdeX")] {
        let (status, body) = served.request("PUT", &target, presented, &bytes);
        assert_eq!(status, 401, "{presented:?}: {body}");
        assert!(body.contains("needs the API token"), "{body}");
    }
    let (status, _) = served.request("POST", "/rollback", None, b"");
    assert_eq!(status, 401);
    assert_eq!(served.health()["head"]["sha256"], first.as_str());
    assert_eq!(sha256_of(&board), first);
    assert!(!board.join("head.json.previous").exists());
    // The same request with the token goes through.
    let (status, answer) = served.json("PUT", &target, Some(TOKEN), &bytes);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["sha256"], sha256_of(&new).as_str());
}

#[test]
fn push_head_sends_the_token_only_over_https_or_to_this_machine() {
    let tmp = tempfile::tempdir().unwrap();
    let token = token_file(tmp.path());
    let new = head_in(tmp.path(), "new", |_| {});
    for url in ["http://192.0.2.7:8080", "ftp://127.0.0.1/"] {
        let started = Instant::now();
        let (code, out, err) = push_head(&["--head", s(&new), "--url", url], &token);
        assert_eq!(code, Some(1), "{url}: {out}{err}");
        assert_eq!(out, "", "{url}: nothing sent, no board answered");
        let line = err.trim();
        assert!(
            line.contains(&format!("--url {url}: refusing")) && !line.contains('\n'),
            "{url}: {err}"
        );
        // Refused before connecting (192.0.2.0/24 would time out).
        assert!(started.elapsed() < Duration::from_secs(5), "{url}");
    }
}

/// `dir/head.json` with `from` replaced by `to` in its payload and the payload's checksum
/// recomputed: how a value JSON cannot carry from a `Head` (an overflowing number) gets in.
fn edit_payload(dir: &Path, from: &str, to: &str) {
    use sha2::Digest;
    let file = dir.join("head.json");
    let text = std::fs::read_to_string(&file).unwrap();
    let payload = text.split_once('\n').unwrap().1.trim_end();
    assert!(payload.contains(from), "{from} not in the payload");
    let payload = payload.replacen(from, to, 1);
    let mut header: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    header["payload_sha256"] = hex::encode(sha2::Sha256::digest(payload.as_bytes())).into();
    std::fs::write(&file, format!("{header}\n{payload}\n")).unwrap();
}

/// Heads with every size right that would break results, metrics or logs: each refused over
/// HTTP (409) with what is wrong in it by field or class, and without the server's paths (the
/// body is checked in a temporary file beside the head file).
#[test]
fn hostile_heads_are_refused_by_field_without_a_server_path() {
    let tmp = tempfile::tempdir().unwrap();
    let token = token_file(tmp.path());
    let board = head_in(tmp.path(), "board", |_| {});
    let first = sha256_of(&board);
    let served = Served::start(&board, "127.0.0.1:0", &token, &[]);
    let name = |n: &str| {
        let n = n.to_string();
        move |h: &mut Head| h.classes[1] = n
    };
    let long = "b".repeat(1 << 20);
    /// A case's name, how its head is changed, the edit to its payload's text, the refusal.
    type Case<'a> = (
        &'a str,
        Box<dyn FnOnce(&mut Head)>,
        Option<(&'a str, &'a str)>,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "zero-std",
            Box::new(|h| h.dense.std.fill(0.0)),
            None,
            "std[0] is 0 (must be a number above 0)",
        ),
        (
            "newline",
            Box::new(name("bees\nedge_mnv2_frames_total 1e9")),
            None,
            "class 1's name contains a newline",
        ),
        (
            "duplicate",
            Box::new(|h| h.classes[1] = h.classes[0].clone()),
            None,
            "class 1's name is also class 0's ('ants')",
        ),
        (
            "long",
            Box::new(name(&long)),
            None,
            "class 1's name is 1048576 bytes long (at most 64)",
        ),
        ("empty", Box::new(name("")), None, "class 1's name is empty"),
        (
            "unknown",
            Box::new(name("unknown")),
            None,
            "class 1's name 'unknown' is reserved: rejected images are labelled 'unknown'",
        ),
        (
            "path",
            Box::new(name("../../etc/passwd")),
            None,
            "class 1's name contains '/' (a class is one folder)",
        ),
        (
            "temperature",
            Box::new(|h| h.temperature = 0.0),
            None,
            "temperature is 0 (must be a number above 0)",
        ),
        (
            "infinite-weight",
            Box::new(|h| h.dense.weights[[0, 0]] = 12345.0),
            Some(("12345.0", "1e39")),
            "weights[0] is inf (must be a finite number)",
        ),
        // JSON has no NaN: written, it is `null`, which no array of numbers reads.
        (
            "nan-weight",
            Box::new(|h| h.dense.weights[[0, 1]] = f32::NAN),
            None,
            "corrupt head file: invalid type: null, expected f32",
        ),
    ];
    for (case, change, edit, expected) in cases {
        let dir = head_in(tmp.path(), case, change);
        if let Some((from, to)) = edit {
            edit_payload(&dir, from, to);
        }
        let (status, answer) = served.json(
            "PUT",
            &format!("/head?sha256={}", sha256_of(&dir)),
            Some(TOKEN),
            &std::fs::read(dir.join("head.json")).unwrap(),
        );
        assert_eq!(status, 409, "{case}: {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(
            error.starts_with(&format!("head refused: {expected}")),
            "{case}: {error}"
        );
        let root = tmp.path().to_str().unwrap();
        assert!(
            !error.contains(root) && !error.contains(".tmp") && error.len() < 200,
            "{case}: {error}"
        );
        assert_eq!(answer["sha256"], first.as_str(), "{case}");
    }
    assert_eq!(sha256_of(&board), first);
    assert!(!board.join("head.json.previous").exists());
    assert_eq!(served.health()["head"]["sha256"], first.as_str());
    assert_eq!(
        served.metric("edge_mnv2_head_rollouts_total{result=\"refused\"}"),
        "10"
    );
}

/// What `POST /rollback` puts back is the head that ran before the install, by its bytes, not
/// whatever the head file held: a file copied in without a reload, or one whose reload was
/// refused, never ran and is not what an install replaced.
#[test]
fn rollback_restores_the_head_that_ran_not_the_file_on_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let token = token_file(tmp.path());
    let board = head_in(tmp.path(), "board", |_| {});
    let first = sha256_of(&board);
    let served = Served::start(&board, "127.0.0.1:0", &token, &[]);
    served.wait_latest_from(&first);
    let new = head_in(tmp.path(), "new", |h| {
        h.classes = vec!["fourmis".into(), "abeilles".into()]
    });
    let new_sha = sha256_of(&new);
    let new_bytes = std::fs::read(new.join("head.json")).unwrap();
    let install = |bytes: &[u8], sha: &str| {
        let (status, answer) =
            served.json("PUT", &format!("/head?sha256={sha}"), Some(TOKEN), bytes);
        assert_eq!(status, 200, "{answer}");
        answer
    };

    // A different head copied over the file, never reloaded; then an install.
    let copied = head_in(tmp.path(), "copied", |h| {
        h.classes = vec!["formiche".into(), "api".into()]
    });
    std::fs::copy(copied.join("head.json"), board.join("head.json")).unwrap();
    let answer = install(&new_bytes, &new_sha);
    assert_eq!(answer["previous"], first.as_str());
    assert_eq!(sha256_of_file(&board.join("head.json.previous")), first);
    let (status, answer) = served.json("POST", "/rollback", Some(TOKEN), b"");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["sha256"], first.as_str(), "{answer}");
    assert_eq!(answer["previous"], new_sha.as_str());
    assert_eq!(served.health()["head"]["sha256"], first.as_str());
    served.wait_latest_from(&first);
    assert_eq!(sha256_of(&board), first);
    assert_eq!(sha256_of_file(&board.join("head.json.previous")), new_sha);

    // A corrupt file whose reload (SIGHUP) was refused; then an install and a rollback.
    std::fs::write(board.join("head.json"), b"{\"format\":\"edge-mnv2-head\"").unwrap();
    let refused = |log: &str| log.matches("head reload refused").count();
    let before = refused(&served.log());
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(
        unsafe { libc::kill(served.child.id() as i32, libc::SIGHUP) },
        0
    );
    let end = Instant::now() + Duration::from_secs(20);
    while refused(&served.log()) == before {
        assert!(Instant::now() < end, "no refused reload:\n{}", served.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let answer = install(&new_bytes, &new_sha);
    assert_eq!(answer["previous"], first.as_str());
    let (status, answer) = served.json("POST", "/rollback", Some(TOKEN), b"");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["sha256"], first.as_str(), "{answer}");
    served.wait_latest_from(&first);
    assert_eq!(sha256_of(&board), first);
}

/// Serves `bytes` to every GET on a free 127.0.0.1 port (plain http is allowed on loopback);
/// returns the URL of the file and how many times it was fetched.
fn file_server(bytes: Vec<u8>) -> (String, Arc<Mutex<usize>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/head.json", listener.local_addr().unwrap());
    let fetched = Arc::new(Mutex::new(0));
    let count = fetched.clone();
    std::thread::spawn(move || {
        for mut c in listener.incoming().map_while(Result::ok) {
            let mut reader = BufReader::new(c.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            *count.lock().unwrap() += 1;
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                bytes.len()
            );
            let _ = c.write_all(head.as_bytes());
            let _ = c.write_all(&bytes);
        }
    });
    (url, fetched)
}

#[test]
fn a_head_fetched_by_url_is_checked_like_one_sent() {
    let tmp = tempfile::tempdir().unwrap();
    let token = token_file(tmp.path());
    let board = head_in(tmp.path(), "board", |_| {});
    let first = sha256_of(&board);
    let served = Served::start(&board, "127.0.0.1:0", &token, &[]);
    let new = head_in(tmp.path(), "new", |h| {
        h.classes = vec!["fourmis".into(), "abeilles".into()]
    });
    let new_sha = sha256_of(&new);
    let (url, fetched) = file_server(std::fs::read(new.join("head.json")).unwrap());

    // By hand, with a wrong sha256: fetched, refused, nothing changes.
    let body = serde_json::json!({"url": url, "sha256": "0".repeat(64)}).to_string();
    let (status, answer) = served.json("PUT", "/head", Some(TOKEN), body.as_bytes());
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains(&format!("the head's sha256 is {new_sha}")),
        "{answer}"
    );
    assert_eq!(*fetched.lock().unwrap(), 1);
    assert_eq!(served.health()["head"]["sha256"], first.as_str());

    // Through push-head --head-url: fetched by the board and installed.
    let (code, out, err) = push_head(
        &[
            "--head-url",
            &url,
            "--sha256",
            &new_sha,
            "--url",
            &served.url(),
        ],
        &token,
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(
        out.trim(),
        format!("{}: ok, head {new_sha} (was {first})", served.url())
    );
    assert_eq!(*fetched.lock().unwrap(), 2);
    served.wait_latest_from(&new_sha);
    assert_eq!(sha256_of(&board), new_sha);

    // Neither a sha256 in the query nor a JSON body: 400 saying what PUT /head takes.
    let (status, answer) = served.json("PUT", "/head", Some(TOKEN), b"{\"head\": 1}");
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("?sha256=HEX"),
        "{answer}"
    );
}

/// A Mosquitto broker on a free loopback port (anonymous: this test is about the board's
/// reports, not the broker's authentication, which tests/mqtt.rs covers).
#[cfg(feature = "mqtt")]
struct Broker {
    child: Child,
    port: u16,
}

#[cfg(feature = "mqtt")]
impl Broker {
    /// None (the test skips) where mosquitto is not installed, unless CI requires it.
    fn start(dir: &Path) -> Option<Broker> {
        if std::process::Command::new("mosquitto")
            .arg("-h")
            .output()
            .is_err()
        {
            assert!(
                std::env::var("EDGE_MNV2_REQUIRE_MOSQUITTO").as_deref() != Ok("1"),
                "mosquitto is not installed and EDGE_MNV2_REQUIRE_MOSQUITTO=1"
            );
            eprintln!("SKIPPED: mosquitto is not installed (apt-get install mosquitto)");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .unwrap();
        let child = std::process::Command::new("mosquitto")
            .args(["-c", s(&conf)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let broker = Broker { child, port };
        let end = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < end, "mosquitto did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(broker)
    }
}

#[cfg(feature = "mqtt")]
impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for a message on `topic` (retained or new) that `f` accepts; returns it.
#[cfg(feature = "mqtt")]
fn wait_message(port: u16, topic: &str, f: impl Fn(&Value) -> bool) -> Value {
    use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
    let o = MqttOptions::new(
        format!("rollout-test-{}", std::process::id()),
        "127.0.0.1",
        port,
    );
    let (client, mut connection) = Client::new(o, 16);
    client.subscribe(topic, QoS::AtLeastOnce).unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while Instant::now() < end {
        if let Ok(Ok(Event::Incoming(Packet::Publish(p)))) =
            connection.recv_timeout(Duration::from_millis(100))
        {
            let v: Value = serde_json::from_slice(&p.payload).unwrap();
            if f(&v) {
                return v;
            }
            seen.push(v);
        }
    }
    panic!("no matching message on {topic}; saw {seen:?}");
}

/// With `--mqtt`, a head installed over HTTP shows on the board's retained `head` topic too.
#[cfg(feature = "mqtt")]
#[test]
fn an_http_install_updates_the_retained_mqtt_head_state() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(broker) = Broker::start(tmp.path()) else {
        return;
    };
    let token = token_file(tmp.path());
    let board = head_in(tmp.path(), "board", |_| {});
    let first = sha256_of(&board);
    let mqtt = format!("mqtt://127.0.0.1:{}", broker.port);
    let served = Served::start(
        &board,
        "127.0.0.1:0",
        &token,
        &["--mqtt", &mqtt, "--board", "b1"],
    );
    served.wait_latest_from(&first);
    wait_message(broker.port, "edge-mnv2/b1/head", |v| {
        v["sha256"] == first.as_str()
    });
    let new = head_in(tmp.path(), "new", |h| {
        h.classes = vec!["fourmis".into(), "abeilles".into()]
    });
    let new_sha = sha256_of(&new);
    let (status, answer) = served.json(
        "PUT",
        &format!("/head?sha256={new_sha}"),
        Some(TOKEN),
        &std::fs::read(new.join("head.json")).unwrap(),
    );
    assert_eq!(status, 200, "{answer}");
    let state = wait_message(broker.port, "edge-mnv2/b1/head", |v| {
        v["sha256"] == new_sha.as_str()
    });
    assert_eq!(state["classes"][1], "abeilles");
    assert_eq!(state["rollout"]["action"], "install");
    assert_eq!(state["rollout"]["ok"], true);
}
