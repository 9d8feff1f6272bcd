//! `POST /classify` takes image bodies up to 16 MiB (README): one byte more is refused with 413,
//! through the binary's HTTP port, whatever server library is behind it.
#![cfg(feature = "http")]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

const LIMIT: usize = 16 * 1024 * 1024;

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
    let tmp = tempfile::tempdir().unwrap();
    let data = small_hymenoptera(tmp.path(), 4);
    let head = tmp.path().join("head");
    let o = edge_command()
        .args([
            "finetune",
            data.to_str().unwrap(),
            "--out",
            head.to_str().unwrap(),
        ])
        .args(["--augment", "0", "--epochs", "5", "--no-cache"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let bee = shared().join("datasets/hymenoptera/val/bees/10870992_eebeeb3a12.jpg");
    let mut child = edge_command()
        .args(["serve", "--head", head.to_str().unwrap(), "--source"])
        .arg(&bee)
        .args(["--fps", "1", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let started = Instant::now();
    let addr = loop {
        let mut line = String::new();
        assert!(err.read_line(&mut line).unwrap() > 0, "serve exited");
        if let Some(a) = line.split("listening on http://").nth(1) {
            break a.trim().to_string();
        }
        assert!(started.elapsed() < Duration::from_secs(120));
    };
    std::thread::spawn(move || for _ in err.lines() {});

    assert_eq!(post_status(&addr, LIMIT + 1), 413);
    // The limit itself is accepted: 16 MiB of non-image bytes are read and refused as such.
    assert_eq!(post_status(&addr, LIMIT), 400);

    let _ = child.kill();
    let _ = child.wait();
}
