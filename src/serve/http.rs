//! The HTTP side of `serve` (feature `http`): one thread, one request at a time, on tiny_http.
//! A board serves a handful of local clients; a single thread keeps inference for
//! `POST /classify` from competing with itself and keeps the binary free of an async runtime.
//!
//! - `GET /latest`: the newest result (404 before the first).
//! - `GET /healthz`: 200 `{"status":"ok"}` or 503 `{"status":"degraded","reason":…}`.
//! - `GET /metrics`: Prometheus text.
//! - `POST /classify`: image bytes in, prediction out.
//! - `POST /reload`: reload the head (409 and the old head kept when the new one is refused).

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use serde::Serialize;
use serde_json::json;
use tiny_http::{Header, ListenAddr, Method, Request, Response, Server};

use super::service::{round, ImagePrediction, Service};
use crate::preprocess;

/// Bodies larger than this are refused (413) without being read: no camera image is this big.
pub const MAX_BODY: usize = 16 * 1024 * 1024;

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("static ASCII header")
}

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

fn json_response(status: u16, body: &impl Serialize) -> Response<std::io::Cursor<Vec<u8>>> {
    match serde_json::to_string(body) {
        Ok(text) => Response::from_string(text + "\n")
            .with_status_code(status)
            .with_header(header("Content-Type", "application/json")),
        // Only a non-UTF-8 path could get here; a client should still get an answer.
        Err(e) => error(500, format!("serializing the answer: {e}")),
    }
}

fn error(status: u16, message: impl Into<String>) -> Response<std::io::Cursor<Vec<u8>>> {
    json_response(status, &json!({"error": message.into()}))
}

/// Binds `addr` and serves until the service stops; returns the bound address (useful with port 0).
pub fn spawn(svc: Arc<Service>, addr: &str) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let server = Server::http(addr).map_err(|e| anyhow!("cannot listen on {addr}: {e}"))?;
    let bound = match server.server_addr() {
        ListenAddr::IP(a) => a,
        #[allow(unreachable_patterns)]
        _ => return Err(anyhow!("{addr}: not an IP address")),
    };
    let handle = std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            while !svc.stopping() {
                match server.recv_timeout(Duration::from_millis(100)) {
                    Ok(Some(request)) => handle(&svc, request),
                    Ok(None) => {}
                    Err(e) => log::warn!("http: {e}"),
                }
            }
        })
        .context("starting the HTTP thread")?;
    Ok((bound, handle))
}

fn handle(svc: &Service, mut request: Request) {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.url().split('?').next().unwrap_or("").to_string();
    let response = match (&method, path.as_str()) {
        (Method::Get, "/latest") => match svc.latest() {
            Some(v) => json_response(200, &v),
            None => error(404, "no frame classified yet"),
        },
        (Method::Get, "/healthz") => {
            let health = svc.health();
            json_response(if health.healthy { 200 } else { 503 }, &health)
        }
        (Method::Get, "/metrics") => Response::from_string(svc.metrics()).with_header(header(
            "Content-Type",
            "text/plain; version=0.0.4; charset=utf-8",
        )),
        (Method::Post, "/classify") => classify(svc, &mut request),
        (Method::Post, "/reload") => match svc.reload_head() {
            Ok(sha) => json_response(200, &json!({"reloaded": true, "head": sha})),
            Err(e) => json_response(
                409,
                &json!({"reloaded": false, "error": format!("{e:#}"), "head": svc.head().sha256}),
            ),
        },
        (_, "/latest" | "/healthz" | "/metrics" | "/classify" | "/reload") => {
            error(405, format!("{method} is not allowed on {path}"))
        }
        _ => error(404, format!("no such endpoint: {path}")),
    };
    let status = response.status_code().0;
    if let Err(e) = request.respond(response) {
        log::debug!("http: {method} {path}: client went away: {e}");
    }
    log::debug!(
        "http: {method} {path} -> {status} in {:?}",
        started.elapsed()
    );
}

fn classify(svc: &Service, request: &mut Request) -> Response<std::io::Cursor<Vec<u8>>> {
    if request.body_length().is_some_and(|n| n > MAX_BODY) {
        return error(413, format!("image larger than {MAX_BODY} bytes"));
    }
    let mut body = Vec::new();
    if let Err(e) = request
        .as_reader()
        .take(MAX_BODY as u64 + 1)
        .read_to_end(&mut body)
    {
        return error(400, format!("reading the request body: {e}"));
    }
    if body.len() > MAX_BODY {
        return error(413, format!("image larger than {MAX_BODY} bytes"));
    }
    let started = Instant::now();
    let img = match preprocess::decode_rgb(&body, "request body") {
        Ok(img) => img,
        Err(e) => return error(400, e.to_string()),
    };
    match svc.predict(&img) {
        Ok(prediction) => json_response(200, &ClassifyAnswer::new(prediction, started.elapsed())),
        Err(e) => error(500, format!("{e:#}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
