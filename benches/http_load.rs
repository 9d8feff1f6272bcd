//! Load test of `serve`'s HTTP API on 127.0.0.1 (not part of CI or `cargo test`):
//!
//!     cargo bench --bench http_load                 # release build (slow to build: fat LTO)
//!     cargo bench --profile dev --bench http_load   # the dev profile (every crate at opt-level 3)
//!
//! env: REQUESTS (200000), CLIENTS (16), CLASSIFY_CLIENTS (2), LIMIT_S (300), FPS (15), HEAD=DIR
//! (else a head is trained on hymenoptera/train first), EDGE_MNV2_BIN (else this build's binary).
//!
//! `serve` runs on hymenoptera/val looped at FPS while CLIENTS keep-alive connections send requests
//! back to back: CLASSIFY_CLIENTS of them `POST /classify` (a real val image; 429 when the queue is
//! full is provoked back-pressure), the others a mix of `GET /latest`, `/healthz`, `/metrics` and
//! `GET /no-such-endpoint` (2 ‰, a provoked 404). One request of each kind is sent first, so the
//! first 1,000 include the classify path's warm-up. It stops after REQUESTS requests or
//! LIMIT_S seconds, reports requests/s, p50/p99 latency per endpoint, the answers by status, and the
//! serve process's RSS at start, after the first 1,000 requests and at the end, and exits non-zero
//! unless: ≥ 50,000 requests, no error but the provoked 404s and 429s, RSS at the end ≤ RSS after
//! 1,000 requests + 5 MiB.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Latest,
    Healthz,
    Metrics,
    Classify,
    NotFound,
}

impl Kind {
    fn request(self, image: &[u8]) -> Vec<u8> {
        let (method, path, body): (&str, &str, &[u8]) = match self {
            Kind::Latest => ("GET", "/latest", b""),
            Kind::Healthz => ("GET", "/healthz", b""),
            Kind::Metrics => ("GET", "/metrics", b""),
            Kind::Classify => ("POST", "/classify", image),
            Kind::NotFound => ("GET", "/no-such-endpoint", b""),
        };
        let mut r = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    }

    /// Whether `status` is what this request should get (429 is the provoked back-pressure).
    fn expected(self, status: u16) -> bool {
        match self {
            Kind::Classify => status == 200 || status == 429,
            Kind::NotFound => status == 404,
            _ => status == 200,
        }
    }
}

/// One answer on a kept-alive connection: (status, whether the server closes).
fn exchange(c: &mut BufReader<TcpStream>, request: &[u8]) -> std::io::Result<(u16, bool)> {
    c.get_mut().write_all(request)?;
    let mut line = String::new();
    if c.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let (mut len, mut close) = (0usize, false);
    loop {
        line.clear();
        c.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some(v) = l.strip_prefix("Content-Length: ") {
            len = v.parse().map_err(std::io::Error::other)?;
        }
        close |= l.eq_ignore_ascii_case("connection: close");
    }
    let mut body = vec![0u8; len];
    c.read_exact(&mut body)?;
    Ok((status, close))
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() -> ExitCode {
    let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared");
    let bin =
        std::env::var("EDGE_MNV2_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_edge-mnv2").into());
    let total: u64 = env_or("REQUESTS", 200_000);
    let clients: usize = env_or("CLIENTS", 16);
    let classify_clients: usize = env_or("CLASSIFY_CLIENTS", 2);
    let limit = Duration::from_secs(env_or("LIMIT_S", 300));
    let fps: f64 = env_or("FPS", 15.0);
    let work = tempfile::tempdir().unwrap();
    let models = shared.join("models");
    let head = match std::env::var("HEAD") {
        Ok(h) => PathBuf::from(h),
        Err(_) => {
            eprintln!("training a head on hymenoptera/train ...");
            let out = work.path().join("head");
            let o = Command::new(&bin)
                .arg("finetune")
                .arg(shared.join("datasets/hymenoptera/train"))
                .arg("--out")
                .arg(&out)
                .args(["--augment", "0"])
                .env("EDGE_MNV2_MODELS", &models)
                .env("EDGE_MNV2_CACHE", work.path().join("cache"))
                .env_remove("RUST_LOG")
                .output()
                .expect("running finetune");
            assert!(
                o.status.success(),
                "finetune: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            out
        }
    };
    let val = shared.join("datasets/hymenoptera/val");
    let image = std::fs::read(val.join("bees/10870992_eebeeb3a12.jpg")).unwrap();

    let mut child = Command::new(&bin)
        .arg("serve")
        .arg("--head")
        .arg(&head)
        .arg("--source")
        .arg(&val)
        .args(["--fps", &fps.to_string(), "--listen", "127.0.0.1:0"])
        .env("EDGE_MNV2_MODELS", &models)
        .env_remove("RUST_LOG")
        .env_remove("JOURNAL_STREAM")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting serve");
    let pid = child.id();
    let err = BufReader::new(child.stderr.take().unwrap());
    let serve = Serve(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in err.lines().map_while(Result::ok) {
            if let Some(a) = line.split("listening on http://").nth(1) {
                let _ = tx.send(a.trim().to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("serve did not report its address");
    let ready = Instant::now();
    loop {
        let ok = TcpStream::connect(&addr).ok().and_then(|c| {
            let mut c = BufReader::new(c);
            exchange(&mut c, &Kind::Latest.request(&[])).ok()
        });
        if ok.is_some_and(|(s, _)| s == 200) {
            break;
        }
        assert!(
            ready.elapsed() < Duration::from_secs(60),
            "no frame classified"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let rss_start = rss_kib(pid);
    let mut warm_up = Vec::new();
    for kind in [
        Kind::Latest,
        Kind::Healthz,
        Kind::Metrics,
        Kind::Classify,
        Kind::NotFound,
    ] {
        let mut c = BufReader::new(TcpStream::connect(&addr).unwrap());
        let (status, _) = exchange(&mut c, &kind.request(&image)).unwrap();
        assert!(kind.expected(status), "{kind:?}: {status}");
        warm_up.push(kind);
    }

    let issued = Arc::new(AtomicU64::new(warm_up.len() as u64));
    let done = Arc::new(AtomicU64::new(warm_up.len() as u64));
    let stop = Arc::new(AtomicBool::new(false));
    let rss_1000 = Arc::new(AtomicU64::new(0));
    {
        let (done, stop, rss_1000) = (done.clone(), stop.clone(), rss_1000.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) && done.load(Ordering::Relaxed) < 1000 {
                std::thread::sleep(Duration::from_millis(1));
            }
            rss_1000.store(rss_kib(pid), Ordering::Relaxed);
        });
    }
    type Results = (
        BTreeMap<Kind, Vec<u32>>,
        BTreeMap<(Kind, u16), u64>,
        Vec<String>,
    );
    let results: Arc<Mutex<Results>> = Arc::default();
    let started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|i| {
            let (issued, done, stop, results, image, addr) = (
                issued.clone(),
                done.clone(),
                stop.clone(),
                results.clone(),
                image.clone(),
                addr.clone(),
            );
            std::thread::spawn(move || {
                let mut lat: BTreeMap<Kind, Vec<u32>> = BTreeMap::new();
                let mut statuses: BTreeMap<(Kind, u16), u64> = BTreeMap::new();
                let mut errors = Vec::new();
                let mut rng =
                    0x9E37_79B9_7F4A_7C15u64 ^ (i as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                let mut conn: Option<BufReader<TcpStream>> = None;
                while !stop.load(Ordering::Relaxed) && started.elapsed() < limit {
                    if issued.fetch_add(1, Ordering::Relaxed) >= total {
                        break;
                    }
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let roll = rng % 1000;
                    let kind = if i < classify_clients {
                        Kind::Classify
                    } else if roll < 2 {
                        Kind::NotFound
                    } else {
                        [Kind::Latest, Kind::Healthz, Kind::Metrics][(rng >> 20) as usize % 3]
                    };
                    let request = kind.request(&image);
                    let t = Instant::now();
                    let c = match conn.take() {
                        Some(c) => Ok(c),
                        None => TcpStream::connect(&addr).map(BufReader::new),
                    };
                    let answer = c.and_then(|mut c| exchange(&mut c, &request).map(|a| (a, c)));
                    match answer {
                        Ok(((status, close), c)) => {
                            lat.entry(kind)
                                .or_default()
                                .push(t.elapsed().as_micros() as u32);
                            *statuses.entry((kind, status)).or_default() += 1;
                            if !kind.expected(status) {
                                errors.push(format!("{kind:?}: status {status}"));
                            }
                            if !close {
                                conn = Some(c);
                            }
                        }
                        Err(e) => errors.push(format!("{kind:?}: {e}")),
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                let mut r = results.lock().unwrap();
                for (k, v) in lat {
                    r.0.entry(k).or_default().extend(v);
                }
                for (k, n) in statuses {
                    *r.1.entry(k).or_default() += n;
                }
                r.2.extend(errors);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(500)); // let freed memory settle before measuring
    let rss_end = rss_kib(pid);
    drop(serve);

    let (mut lat, statuses, errors) = std::mem::take(&mut *results.lock().unwrap());
    let n = done.load(Ordering::Relaxed);
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "http_load: {n} requests by {clients} clients in {:.1} s = {:.0} requests/s (frame loop at {fps} fps; load average {})",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        loadavg.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!(
        "{:<10} {:>8} {:>10} {:>10}",
        "endpoint", "count", "p50 ms", "p99 ms"
    );
    for (kind, v) in lat.iter_mut() {
        v.sort_unstable();
        println!(
            "{:<10} {:>8} {:>10.2} {:>10.2}",
            format!("{kind:?}"),
            v.len(),
            percentile(v, 0.5),
            percentile(v, 0.99)
        );
    }
    let statuses: Vec<String> = statuses
        .iter()
        .map(|((k, s), n)| format!("{k:?} {s}: {n}"))
        .collect();
    println!("answers: {}", statuses.join(", "));
    println!("errors: {}", errors.len());
    for e in errors.iter().take(10) {
        println!("  {e}");
    }
    let rss_1000 = rss_1000.load(Ordering::Relaxed);
    println!(
        "serve RSS: start {:.1} MiB, after 1,000 requests {:.1} MiB, end {:.1} MiB",
        rss_start as f64 / 1024.0,
        rss_1000 as f64 / 1024.0,
        rss_end as f64 / 1024.0
    );
    let mut ok = true;
    let mut check = |what: &str, pass: bool| {
        println!("{} {what}", if pass { "PASS" } else { "FAIL" });
        ok &= pass;
    };
    check("at least 50,000 requests", n >= 50_000);
    check("no errors but the provoked 404 and 429", errors.is_empty());
    check(
        "RSS at the end <= RSS after 1,000 requests + 5 MiB",
        rss_end <= rss_1000 + 5 * 1024,
    );
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
