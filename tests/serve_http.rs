//! The HTTP service of `serve` under clients that misbehave: slow and idle connections, missing
//! tokens, a full classify queue, too many connections, malformed requests and bodies over the
//! 16 MiB limit. Each test runs the real binary with the real model and the shared head (trained on
//! hymenoptera/train), on val images.
#![cfg(feature = "http")]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::served::Served;
use common::*;

/// What `serve` allows at once (src/serve/http.rs); the tests fill them exactly.
const CLASSIFY_QUEUE: usize = 4;
const MAX_CONNECTIONS: usize = 32;
const TOKEN: &str = "test-token-5f0c2a9e81d64b7a";

fn val() -> PathBuf {
    shared().join("datasets/hymenoptera/val")
}

fn bee() -> Vec<u8> {
    std::fs::read(val().join("bees/10870992_eebeeb3a12.jpg")).unwrap()
}

/// A token file with mode `mode` in `dir`.
fn token_file(dir: &Path, mode: u32) -> PathBuf {
    let p = dir.join("token");
    std::fs::write(&p, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

/// A running `serve` on the val folder (looped) at 20 frames/s with its address, once healthy
/// and a first frame is classified.
struct Http {
    /// Kept for its drop, which stops the service.
    _served: Served,
    addr: String,
}

fn start_http(extra: &[&str]) -> Http {
    let (head, val) = (shared_head(), val());
    let mut args = vec![
        "--head",
        head.to_str().unwrap(),
        "--source",
        val.to_str().unwrap(),
        "--fps",
        "20",
    ];
    args.extend(extra);
    let mut served = Served::start(&args);
    let addr = served.addr();
    served.wait(
        "healthy, a first frame classified",
        Duration::from_secs(120),
        |_| get(&addr, "/healthz").0 == 200 && get(&addr, "/latest").0 == 200,
    );
    Http {
        _served: served,
        addr,
    }
}

/// (status, head, body) of one request with `Connection: close`.
fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &str,
    body: &[u8],
) -> (u16, String, String) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        c,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    c.write_all(body).unwrap();
    read_answer(&mut c)
}

fn read_answer(c: &mut TcpStream) -> (u16, String, String) {
    let mut text = Vec::new();
    let _ = c.read_to_end(&mut text);
    let text = String::from_utf8_lossy(&text).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    (status, head.to_string(), body.to_string())
}

fn get(addr: &str, path: &str) -> (u16, String, String) {
    request(addr, "GET", path, "", b"")
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}\r\n")
}

#[test]
fn healthz_metrics_and_latest_answer_while_a_body_trickles_in() {
    let served = start_http(&["--listen", "127.0.0.1:0"]);
    let addr = served.addr.clone();
    // One client uploads an image one byte a second, another connects and says nothing.
    let mut slow = TcpStream::connect(&addr).unwrap();
    slow.write_all(b"POST /classify HTTP/1.1\r\nContent-Length: 100000\r\n\r\n")
        .unwrap();
    let _idle = TcpStream::connect(&addr).unwrap();
    let start = Instant::now();
    let mut worst = Duration::ZERO;
    while start.elapsed() < Duration::from_secs(5) {
        slow.write_all(b"x").unwrap();
        for path in ["/healthz", "/metrics", "/latest"] {
            let t = Instant::now();
            let (status, _, body) = get(&addr, path);
            worst = worst.max(t.elapsed());
            assert_eq!(status, 200, "{path}: {body}");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    eprintln!("slowest answer while a body trickled in: {worst:?}");
    assert!(worst < Duration::from_millis(100), "{worst:?}");
    // The trickling client was not cut off: it is still within its deadline.
    slow.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert!(matches!(slow.read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock));
}

#[test]
fn beyond_loopback_post_endpoints_need_the_token() {
    let tmp = tempfile::tempdir().unwrap();
    let token = token_file(tmp.path(), 0o600);
    let served = start_http(&[
        "--listen",
        "0.0.0.0:0",
        "--token-file",
        token.to_str().unwrap(),
    ]);
    let addr = &served.addr;
    for auth in [
        String::new(),
        bearer("wrong-token-5f0c2a9e81d64b7a"),
        format!("Authorization: {TOKEN}\r\n"),
    ] {
        let (status, head, body) = request(addr, "POST", "/reload", &auth, b"");
        assert_eq!(status, 401, "{auth:?}: {body}");
        assert!(head.contains("WWW-Authenticate: Bearer"), "{head}");
        assert_eq!(request(addr, "POST", "/classify", &auth, &bee()).0, 401);
    }
    let (status, _, body) = request(addr, "POST", "/reload", &bearer(TOKEN), b"");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""reloaded":true"#), "{body}");
    let (status, _, body) = request(addr, "POST", "/classify", &bearer(TOKEN), &bee());
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""label":"bees""#), "{body}");
    // Health and metrics stay open.
    assert_eq!(get(addr, "/healthz").0, 200);
    assert_eq!(get(addr, "/metrics").0, 200);
    assert_eq!(get(addr, "/latest").0, 200);
}

#[test]
fn start_up_beyond_loopback_without_a_usable_token_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    // The head is never loaded: the refusal comes first, in well under the model's load time.
    let head = tmp.path().join("no-head");
    let serve = |extra: &[&str]| {
        let mut args = vec![
            "serve",
            "--head",
            head.to_str().unwrap(),
            "--source",
            "/nonexistent",
        ];
        args.extend_from_slice(extra);
        let o = edge(&args);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        let err = stderr(&o);
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        err
    };
    let err = serve(&["--listen", "0.0.0.0:0"]);
    assert!(
        err.contains("--token-file") && err.contains("0.0.0.0"),
        "{err}"
    );
    let err = serve(&["--listen", "[::]:0"]);
    assert!(err.contains("--token-file"), "{err}");
    let token = token_file(tmp.path(), 0o644);
    let err = serve(&[
        "--listen",
        "0.0.0.0:0",
        "--token-file",
        token.to_str().unwrap(),
    ]);
    assert!(
        err.contains(token.to_str().unwrap()) && err.contains("readable by every user"),
        "{err}"
    );
    let missing = tmp.path().join("missing");
    let err = serve(&[
        "--listen",
        "127.0.0.1:0",
        "--token-file",
        missing.to_str().unwrap(),
    ]);
    assert!(err.contains(missing.to_str().unwrap()), "{err}");
    std::fs::write(&token, "\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = serve(&[
        "--listen",
        "0.0.0.0:0",
        "--token-file",
        token.to_str().unwrap(),
    ]);
    assert!(err.contains("token file is empty"), "{err}");
    // The config file says the same as the flag.
    let config = tmp.path().join("config.toml");
    std::fs::write(&config, "listen = \"0.0.0.0:0\"\n").unwrap();
    let err = serve(&["--config", config.to_str().unwrap()]);
    assert!(err.contains("--token-file"), "{err}");
}

#[test]
fn a_full_classify_queue_answers_429_with_retry_after() {
    let served = start_http(&["--listen", "127.0.0.1:0"]);
    let addr = &served.addr;
    // Fill the queue with uploads that have been admitted (100 Continue) and send nothing more.
    let mut holders: Vec<TcpStream> = (0..CLASSIFY_QUEUE)
        .map(|_| {
            let mut c = TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            c.write_all(
                b"POST /classify HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 50000\r\n\r\n",
            )
            .unwrap();
            let mut line = [0u8; 25];
            c.read_exact(&mut line).unwrap();
            assert_eq!(&line, b"HTTP/1.1 100 Continue\r\n\r\n");
            c
        })
        .collect();
    let (status, head, body) = request(addr, "POST", "/classify", "", &bee());
    assert_eq!(status, 429, "{body}");
    assert!(head.contains("Retry-After: 1"), "{head}");
    // Everything else goes on meanwhile.
    assert_eq!(get(addr, "/healthz").0, 200);
    // One holder finishes its upload (not an image: 400); its place is free again.
    let mut h = holders.pop().unwrap();
    h.write_all(&[b'x'; 50000]).unwrap();
    let (status, _, body) = read_answer(&mut h);
    assert_eq!(status, 400, "{body}");
    let (status, _, body) = request(addr, "POST", "/classify", "", &bee());
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""label":"bees""#), "{body}");
}

#[test]
fn too_many_connections_get_503_and_the_service_recovers() {
    let served = start_http(&["--listen", "127.0.0.1:0"]);
    let addr = &served.addr;
    let idle: Vec<TcpStream> = (0..MAX_CONNECTIONS)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    // The accepting thread counts them as it accepts; give it a moment.
    let end = Instant::now() + Duration::from_secs(10);
    let (status, head) = loop {
        let (status, head, _) = get(addr, "/healthz");
        if status == 503 && head.contains("Retry-After") || Instant::now() > end {
            break (status, head);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status, 503, "{head}");
    assert!(head.contains("Retry-After: 1"), "{head}");
    drop(idle);
    let end = Instant::now() + Duration::from_secs(10);
    while get(addr, "/healthz").0 != 200 {
        assert!(Instant::now() < end, "the service did not recover");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn malformed_requests_get_4xx_and_the_service_still_answers() {
    let served = start_http(&["--listen", "127.0.0.1:0"]);
    let addr = &served.addr;
    let raw = |bytes: &[u8]| {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        c.write_all(bytes).unwrap();
        read_answer(&mut c).0
    };
    let long_header = format!("GET /healthz HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
    for (bytes, status) in [
        (&b"\x00\x01\x02\xff garbage\r\n\r\n"[..], 400),
        (b"GET /healthz HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"GET /healthz HTTP/9.9\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nbad header\r\n\r\n", 400),
        (
            b"POST /classify HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            411,
        ),
        (
            b"POST /classify HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n",
            413,
        ),
        (
            b"POST /classify HTTP/1.1\r\nContent-Length: 16777217\r\n\r\n",
            413,
        ),
        (long_header.as_bytes(), 431),
        (b"BREW /healthz HTTP/1.1\r\n\r\n", 405),
        (b"GET /../../etc/passwd HTTP/1.1\r\n\r\n", 404),
    ] {
        assert_eq!(
            raw(bytes),
            status,
            "{}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(60)])
        );
    }
    // Half a request, then the client goes away.
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(b"POST /classify HTTP/1.1\r\nContent-Le")
        .unwrap();
    drop(c);
    let (status, _, body) = get(addr, "/healthz");
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = request(addr, "POST", "/classify", "", &bee());
    assert_eq!(status, 200, "{body}");
}

/// The statuses of the answers in `text`, in order.
fn statuses(text: &str) -> Vec<u16> {
    text.split("HTTP/1.1 ")
        .skip(1)
        .map(|a| a[..3].parse().unwrap())
        .collect()
}

/// Requests pipelined in one write are answered in order on the one connection. A refused one
/// ends it with `Connection: close` (the client knows to send the rest again) and a clean end of
/// stream, not a reset that can take its answer, though the next request is still unread behind
/// it; the 405 names the methods the path takes.
#[test]
fn pipelined_requests_are_answered_in_order_and_a_refusal_closes_cleanly() {
    let served = start_http(&["--listen", "127.0.0.1:0"]);
    let addr = &served.addr;
    let image = bee();
    let classify = [
        format!(
            "POST /classify HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            image.len()
        )
        .as_bytes(),
        &image,
    ]
    .concat();
    let in_one_write = |requests: &[&[u8]]| {
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        c.write_all(&requests.concat()).unwrap();
        let mut text = Vec::new();
        let end = c.read_to_end(&mut text);
        (String::from_utf8_lossy(&text).into_owned(), end)
    };

    let (out, end) = in_one_write(&[
        b"GET /healthz HTTP/1.1\r\n\r\n",
        &classify,
        b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n",
    ]);
    assert!(end.is_ok(), "{end:?}: {out}");
    assert_eq!(statuses(&out), [200, 200, 200], "{out}");
    let answers: Vec<&str> = out.split("HTTP/1.1 ").skip(1).collect();
    assert!(answers[0].contains(r#""status":"ok""#), "{out}");
    assert!(answers[1].contains(r#""label":"bees""#), "{out}");
    assert!(answers[2].contains("edge_mnv2_frames_total"), "{out}");

    for refused in [
        &b"GET /classify HTTP/1.1\r\n\r\n"[..],
        b"GET /nope HTTP/1.1\r\n\r\n",
    ] {
        let (out, end) = in_one_write(&[refused, &classify]);
        assert!(end.is_ok(), "the answer was followed by {end:?}: {out}");
        assert_eq!(statuses(&out).len(), 1, "{out}");
        assert!(out.contains("\r\nConnection: close\r\n"), "{out}");
        let allow = out.contains("\r\nAllow: POST\r\n");
        assert_eq!(allow, statuses(&out) == [405], "{out}");
    }
}

/// `POST /classify` takes image bodies up to 16 MiB (README): one byte more is refused with 413,
/// through the binary's HTTP port, whatever server library is behind it.
const BODY_LIMIT: usize = 16 * 1024 * 1024;

/// Sends a POST /classify of `len` bytes (not an image) and returns the response's status.
fn post_status(addr: &str, len: usize) -> u16 {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        c,
        "POST /classify HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {len}\r\n\r\n"
    )
    .unwrap();
    // The server may answer and close before the body is sent: write from another thread and
    // ignore a reset, then read whatever status came back.
    let mut w = c.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'x'; 1 << 16];
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len());
            if w.write_all(&chunk[..n]).is_err() {
                return;
            }
            left -= n;
        }
    });
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let _ = c.shutdown(std::net::Shutdown::Both);
    let _ = writer.join();
    let text = String::from_utf8_lossy(&head);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"))
}

#[test]
fn classify_bodies_over_16_mib_are_refused_with_413() {
    let bee = val().join("bees/10870992_eebeeb3a12.jpg");
    let mut served = Served::start(&[
        "--head",
        s(shared_head()),
        "--source",
        s(&bee),
        "--fps",
        "1",
        "--listen",
        "127.0.0.1:0",
    ]);
    let addr = served.addr();

    assert_eq!(post_status(&addr, BODY_LIMIT + 1), 413);
    // The limit itself is accepted: 16 MiB of non-image bytes are read and refused as such.
    assert_eq!(post_status(&addr, BODY_LIMIT), 400);
}
