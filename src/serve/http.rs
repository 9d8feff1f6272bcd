//! The HTTP side of `serve` (feature `http`): an accepting thread and one thread per connection
//! (at most [`MAX_CONNECTIONS`]; beyond, an immediate 503), each speaking HTTP/1.1 through
//! [`super::wire`] with deadlines, so a slow or idle client holds up only itself. Inference for
//! `POST /classify` runs one request at a time (beside the frame loop) with at most
//! [`CLASSIFY_QUEUE`] admitted at once; beyond, 429 with `Retry-After`.
//!
//! - `GET /latest`: the newest result (404 before the first).
//! - `GET /healthz`: 200 `{"status":"ok"}` or 503 `{"status":"degraded","reason":…}`.
//! - `GET /metrics`: Prometheus text.
//! - `POST /classify`: image bytes in, prediction out.
//! - `POST /reload`: reload the head (409 and the old head kept when the new one is refused).
//! - `PUT /head?sha256=HEX` with the head file as the body, or `PUT /head` with a JSON body
//!   `{"url": "https://…", "sha256": "HEX"}` the board fetches it from: install a head
//!   ([`Service::install_from`]); `POST /rollback`: put the previous one back. Both answer a
//!   [`RolloutAnswer`]: 200, or 4xx/5xx with the reason and the running head unchanged.
//!
//! With a token configured, every method but GET needs it ([`super::auth::needs_token`]).

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::auth::{check_exposure, Token};
use super::commands::RolloutAnswer;
use super::reply::{write_reply, Reply};
use super::request::{Endpoint, Request, Transport};
use super::rollout::{HeadChange, HeadSource, RolloutError};
use super::service::{round, ImagePrediction, Service};
use super::wire::{self, Api, Ending};
use crate::preprocess;

pub use super::request::MAX_BODY;

/// Connections served at once; more are answered 503 and closed. Each costs a thread that is
/// mostly asleep; the deadlines in [`wire`] bound how long any one is held.
pub const MAX_CONNECTIONS: usize = 32;
/// `POST /classify` requests admitted at once (one inferring, the others uploading or waiting).
pub const CLASSIFY_QUEUE: usize = 4;
/// What 429 and 503 answers tell clients to wait, in seconds.
pub const RETRY_AFTER_S: u32 = 1;
/// A write that makes no progress for this long ends the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a refused upload is drained before closing (see [`Ending::Drain`]).
const DRAIN: Duration = Duration::from_secs(2);
/// How often the accepting thread looks at the stop flag.
const POLL_MS: i32 = 100;

/// `POST /classify`'s answer: the image's prediction and how long it took. The fields are in
/// alphabetical order because that is the key order of the `json!` body it replaced (serde_json
/// without `preserve_order` sorts keys); clients may compare bytes.
#[derive(Debug, Serialize)]
struct ClassifyAnswer {
    confidence: f64,
    head: String,
    label: String,
    /// Decoding and inference; the upload is not counted.
    latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    novelty: Option<f64>,
    probs: BTreeMap<String, f64>,
}

impl ClassifyAnswer {
    fn new(prediction: ImagePrediction, latency: Duration) -> ClassifyAnswer {
        let ImagePrediction {
            confidence,
            head,
            label,
            novelty,
            probs,
            ..
        } = prediction;
        ClassifyAnswer {
            confidence,
            head,
            label,
            latency_ms: round(latency.as_secs_f64() * 1e3, 2),
            novelty,
            probs,
        }
    }
}

/// The service's endpoints behind [`wire`].
struct ServiceApi {
    svc: Arc<Service>,
    /// `POST /classify` requests admitted and not yet answered.
    classify_admitted: AtomicUsize,
    /// Images for the classify thread.
    classify_jobs: mpsc::Sender<ClassifyJob>,
}

/// An uploaded image and where its answer goes.
type ClassifyJob = (Vec<u8>, mpsc::SyncSender<Reply>);

/// Classifies uploaded images one at a time (the frame loop has the other core). One thread for
/// all of them, not the connection's own: decoding and inference allocate megabytes, and in one
/// thread they reuse one allocator arena instead of growing one per connection thread.
fn classify_thread(svc: &Service, jobs: mpsc::Receiver<ClassifyJob>) {
    for (body, answer) in jobs {
        let _ = answer.send(classify(svc, &body));
    }
}

fn classify(svc: &Service, body: &[u8]) -> Reply {
    let started = Instant::now();
    let img = match preprocess::decode_rgb_reduced(body, "request body", svc.input_size()) {
        Ok(img) => img,
        Err(e) => return Reply::error(400, e.to_string()),
    };
    match svc.predict(&img) {
        Ok(prediction) => Reply::json(200, &ClassifyAnswer::new(prediction, started.elapsed())),
        Err(e) => Reply::error(500, format!("{e:#}")),
    }
}

/// A place in the classify queue, given back when dropped.
struct Ticket<'a>(Option<&'a AtomicUsize>);

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if let Some(n) = self.0 {
            n.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl<'a> Api for &'a ServiceApi {
    type Ticket = Ticket<'a>;

    fn admit(&self, endpoint: Endpoint) -> Result<Ticket<'a>, Reply> {
        if endpoint != Endpoint::Classify {
            return Ok(Ticket(None));
        }
        let n = &self.classify_admitted;
        if n.fetch_add(1, Ordering::SeqCst) >= CLASSIFY_QUEUE {
            n.fetch_sub(1, Ordering::SeqCst);
            return Err(Reply::error(
                429,
                format!("{CLASSIFY_QUEUE} images are already being classified: retry later"),
            )
            .retry_after(RETRY_AFTER_S));
        }
        Ok(Ticket(Some(n)))
    }

    fn call(&self, request: Request, _ticket: Ticket<'a>) -> Reply {
        let svc = &*self.svc;
        let Request {
            endpoint,
            query,
            body,
        } = request;
        match endpoint {
            Endpoint::Latest => match svc.latest() {
                Some(v) => Reply::json(200, &v),
                None => Reply::error(404, "no frame classified yet"),
            },
            Endpoint::Healthz => {
                let health = svc.health();
                Reply::json(if health.healthy { 200 } else { 503 }, &health)
            }
            Endpoint::Metrics => Reply::text(svc.metrics()),
            Endpoint::Classify => {
                let (tx, rx) = mpsc::sync_channel(1);
                match self.classify_jobs.send((body, tx)) {
                    Ok(()) => rx
                        .recv()
                        .unwrap_or_else(|_| Reply::error(500, "the classify thread stopped")),
                    Err(_) => Reply::error(500, "the classify thread stopped"),
                }
            }
            Endpoint::Reload => match svc.reload_head() {
                Ok(sha) => Reply::json(200, &json!({"reloaded": true, "head": sha})),
                Err(e) => Reply::json(
                    409,
                    &json!({"reloaded": false, "error": format!("{e:#}"), "head": svc.head().sha256}),
                ),
            },
            Endpoint::Head => put_head(svc, &query, &body),
            Endpoint::Rollback => rollout_reply(svc, svc.rollback()),
        }
    }
}

/// `PUT /head`'s body when the board is to fetch the head itself (the fields of the MQTT command).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeadUrl {
    url: String,
    sha256: String,
}

/// `sha256=HEX` in the query: the body is the head file. Without it: the body is a [`HeadUrl`].
fn put_head(svc: &Service, query: &str, body: &[u8]) -> Reply {
    let sha256 = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("sha256="));
    let result = match sha256 {
        Some(sha256) => svc.install_from(HeadSource::Bytes(body), Some(sha256)),
        None => match serde_json::from_slice::<HeadUrl>(body) {
            Ok(h) => svc.install_from(HeadSource::Url(&h.url), Some(&h.sha256)),
            Err(e) => {
                return Reply::error(
                    400,
                    format!(
                        "PUT /head takes the head file with ?sha256=HEX, or a JSON body \
                         {{\"url\": \"https://…\", \"sha256\": \"HEX\"}} ({e})"
                    ),
                )
            }
        },
    };
    rollout_reply(svc, result)
}

fn rollout_reply(svc: &Service, result: Result<HeadChange, RolloutError>) -> Reply {
    let status = match &result {
        Ok(_) => 200,
        // What the client sent is wrong.
        Err(RolloutError::Checksum { .. } | RolloutError::Command(_)) => 400,
        // It does not fit this board (another backbone, no previous head).
        Err(RolloutError::Refused(_) | RolloutError::NoPrevious(_)) => 409,
        Err(RolloutError::Fetch(_)) => 502,
        Err(RolloutError::Io(_)) => 500,
    };
    Reply::json(status, &RolloutAnswer::new(svc, result))
}

/// A TCP connection whose reads stop at a deadline however slowly bytes arrive.
struct TcpTransport {
    stream: TcpStream,
    deadline: Instant,
}

impl Read for TcpTransport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        self.stream.read(buf)
    }
}

impl Write for TcpTransport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

impl Transport for TcpTransport {
    fn set_read_deadline(&mut self, deadline: Instant) {
        self.deadline = deadline;
    }
}

/// Serves one accepted connection to its end.
fn connection(stream: TcpStream, api: &ServiceApi, token: Option<&Token>) {
    let _ = stream.set_nodelay(true);
    if stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err() {
        return;
    }
    let mut t = TcpTransport {
        stream,
        deadline: Instant::now(),
    };
    if wire::serve_connection(&mut t, &api, token) == Ending::Drain {
        // Stop sending, then swallow what the client still sends for a short while: closing
        // with unread bytes would make the kernel reset the connection before it reads our answer.
        let _ = t.stream.shutdown(Shutdown::Write);
        t.deadline = Instant::now() + DRAIN;
        let _ = io::copy(&mut (&mut t).take(MAX_BODY as u64), &mut io::sink());
    }
}

/// Counts a connection thread while it lives.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Waits up to `ms` for a connection to accept; false on timeout.
fn readable(listener: &TcpListener, ms: i32) -> bool {
    let mut fds = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut fds, 1, ms) > 0 }
}

/// Connections over the cap, answered 503 and closed a little later. Closing at once, with the
/// client's request unread, would make the kernel reset the connection, and a client could lose
/// the answer; so for [`LINGER`] the accepting thread reads and drops what they send, without
/// blocking and without a thread each.
#[derive(Default)]
struct Refused(Vec<(TcpStream, Instant)>);

/// How long a refused connection is kept to be drained.
const LINGER: Duration = Duration::from_millis(500);
/// Refused connections drained at once; more are closed at once.
const MAX_REFUSED: usize = 64;

impl Refused {
    fn push(&mut self, mut stream: TcpStream) {
        let reply = Reply::error(
            503,
            format!("{MAX_CONNECTIONS} connections are open: retry later"),
        )
        .retry_after(RETRY_AFTER_S);
        // The answer fits in a fresh socket's buffer: the non-blocking write does not wait.
        if stream.set_nonblocking(true).is_err()
            || write_reply(&mut stream, &reply, true).is_err()
            || stream.shutdown(Shutdown::Write).is_err()
            || self.0.len() >= MAX_REFUSED
        {
            return;
        }
        self.0.push((stream, Instant::now() + LINGER));
    }

    /// Reads what the refused clients sent; drops those that closed or whose time is up.
    fn drain(&mut self) {
        let now = Instant::now();
        let mut sink = [0u8; 4096];
        self.0.retain_mut(|(stream, until)| {
            *until > now
                && loop {
                    match stream.read(&mut sink) {
                        Ok(0) => break false,
                        Ok(_) => {}
                        Err(e) => break e.kind() == io::ErrorKind::WouldBlock,
                    }
                }
        });
    }

    /// How long the accepting thread may wait for the next connection.
    fn poll_ms(&self) -> i32 {
        if self.0.is_empty() {
            POLL_MS
        } else {
            20
        }
    }
}

/// Binds `addr` and serves until the service stops; returns the bound address (useful with port
/// 0). Refuses an address beyond loopback without a token unless `insecure_no_token`.
pub fn spawn(
    svc: Arc<Service>,
    addr: &str,
    token: Option<Token>,
    insecure_no_token: bool,
) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener.local_addr().context("the bound address")?;
    // Checked again on the address actually bound: a name may resolve differently here.
    check_exposure(addr, &[bound], token.as_ref(), insecure_no_token)?;
    listener
        .set_nonblocking(true)
        .context("setting the listener non-blocking")?;
    let (classify_jobs, jobs) = mpsc::channel();
    {
        let svc = svc.clone();
        std::thread::Builder::new()
            .name("http-classify".into())
            .spawn(move || classify_thread(&svc, jobs))
            .context("starting the classify thread")?;
    }
    let api = Arc::new(ServiceApi {
        svc,
        classify_admitted: AtomicUsize::new(0),
        classify_jobs,
    });
    let token = token.map(Arc::new);
    let active = Arc::new(AtomicUsize::new(0));
    let handle = std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            let mut refused = Refused::default();
            while !api.svc.stopping() {
                refused.drain();
                if !readable(&listener, refused.poll_ms()) {
                    continue;
                }
                let stream = match listener.accept() {
                    Ok((stream, _)) => stream,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => {
                        // Out of file descriptors, typically: let some connections finish.
                        log::warn!("http: accept: {e}");
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                };
                if stream.set_nonblocking(false).is_err() {
                    continue;
                }
                if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                    active.fetch_sub(1, Ordering::SeqCst);
                    refused.push(stream);
                    continue;
                }
                let slot = Slot(active.clone());
                let (api, token) = (api.clone(), token.clone());
                let spawned =
                    std::thread::Builder::new()
                        .name("http-conn".into())
                        .spawn(move || {
                            let _slot = slot;
                            connection(stream, &api, token.as_deref());
                        });
                if let Err(e) = spawned {
                    log::warn!("http: cannot start a connection thread: {e}");
                }
            }
        })
        .context("starting the HTTP thread")?;
    Ok((bound, handle))
}

/// Runs the request handling (routing, token, body limits, answers) on `input` as the bytes of one
/// connection, with endpoints that need no model; returns what was written back. For the fuzz
/// target `http_request`: the first byte chooses whether a token is configured (its low bit) and
/// how many bytes each read delivers (the rest: 1 to 128, as a network splits a request).
pub fn fuzz_connection(input: &[u8]) -> Vec<u8> {
    let (first, input) = input.split_first().unwrap_or((&0, input));
    let token = (first & 1 == 1).then(|| Token::from_secret("fuzz-token-0123456789"));
    let mut t = wire::MemoryTransport {
        input,
        max_read: usize::from(first >> 1) + 1,
        output: Vec::new(),
    };
    wire::serve_connection(&mut t, &wire::EchoApi, token.as_ref());
    t.output
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fuzz target's entry point on mutations of valid requests (a stable-toolchain smoke run
    /// of `fuzz/fuzz_targets/http_request.rs`): every answer is a status line with a 3-digit code.
    #[test]
    fn fuzz_entry_point_answers_mutated_requests_with_status_lines() {
        let seeds: [&[u8]; 3] = [
            b"\x01POST /reload HTTP/1.1\r\nAuthorization: Bearer fuzz-token-0123456789\r\n\r\n",
            b"\x10POST /classify HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
            b"\x00GET /healthz?x HTTP/1.1\r\nConnection: keep-alive\r\n\r\nGET /metrics HTTP/1.0\r\n\r\n",
        ];
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for i in 0..3000 {
            let mut input = seeds[i % seeds.len()].to_vec();
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % input.len();
                match next() % 3 {
                    0 => input[at] = next() as u8,
                    1 => drop(input.remove(at)),
                    _ => input.insert(at, next() as u8),
                }
            }
            let out = fuzz_connection(&input);
            let text = String::from_utf8_lossy(&out);
            for answer in text.split("HTTP/1.1 ").skip(1) {
                let code: u16 = answer[..3].parse().unwrap_or_else(|_| panic!("{text}"));
                assert!((100..600).contains(&code), "{text}");
            }
            assert!(out.is_empty() || out.starts_with(b"HTTP/1.1 "), "{text}");
        }
    }

    #[test]
    fn classify_answer_is_the_prediction_plus_latency_in_key_order() {
        let prediction = ImagePrediction {
            confidence: 0.766412,
            head: "7efa".into(),
            label: "bees".into(),
            novelty: None,
            probs: [("ants".into(), 0.233588), ("bees".into(), 0.766412)].into(),
            novel: false,
        };
        let answer = ClassifyAnswer::new(prediction, Duration::from_micros(146_961));
        let direct = serde_json::to_string(&answer).unwrap();
        // A `Value` sorts its keys, as the `json!` body this replaced did.
        assert_eq!(direct, serde_json::to_value(&answer).unwrap().to_string());
        assert_eq!(
            direct,
            r#"{"confidence":0.766412,"head":"7efa","label":"bees","latency_ms":146.96,"probs":{"ants":0.233588,"bees":0.766412}}"#
        );
    }
}
