//! The classification service: a capture thread, an inference thread and (feature `http`) an HTTP
//! thread around one [`Service`]. This file starts and stops them ([`run`]: threads, signals,
//! systemd notifications) and holds the two frame loops; the parts live in the submodules:
//!
//! - `slot`: the one-frame mailbox ([`FrameSlot`]) between capture and inference.
//! - `backoff`: the waits before reopening a source or reconnecting to the broker.
//! - `failures`: frames failing one after another: the wait between them, the warnings a
//!   minute, the degraded health.
//! - `service`: [`Service`] (head, classification, health, head installs and rollbacks) and its
//!   typed results.
//! - `prometheus`: the counters and their `/metrics` text.
//! - [`config`]: the TOML config file, as the flags its keys stand for.
//! - `auth`: the board's token (HTTP bearer credential and HMAC key of rollout commands) and the
//!   rule that a service reachable beyond loopback has one.
//! - `http`: the HTTP API (feature `http`; a plain name, since the link breaks without it): the
//!   threads and the endpoints.
//! - `wire`: HTTP/1.1 on one connection (feature `http`): deadlines, limits, admission; `request`
//!   reads and routes a request, `reply` writes the answer.
//! - `rollout`: head files installed from bytes and rolled back, and the outcomes.
//! - `commands`: the signed rollout commands and their answers (`push-head` sends them,
//!   [`crate::push`]).
//! - `topics`: the MQTT settings, topic names and Home Assistant discovery payloads.
//! - `mqtt`: the MQTT publisher and command listener (feature `mqtt`), and the broker options
//!   `push-head` connects with.
//!
//! The submodules never import this file, so the dependencies run one way: `mod.rs` → `http` →
//! `wire` → `request`, `reply`, `auth`, `rollout`; `http`, `mqtt` → `commands` → `service` →
//! `rollout`, `slot`, `prometheus`, `auth`, `failures` → `backoff`; `mqtt` → `topics`; `mod.rs`,
//! `mqtt` → `backoff`.
//!
//! A file source without an `fps` is replayed: the capture thread reads a frame only when
//! inference asks for one (every frame, no drops), instead of feeding the slot at its own pace.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::backbone::Backbone;
use crate::head::HeadFile;
use crate::source::{CameraSettings, FrameSource, Pacer, SourceError, SourceSpec};
use backoff::Backoff;

pub mod auth;
mod backoff;
pub mod commands;
pub mod config;
mod failures;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "mqtt")]
pub mod mqtt;
mod prometheus;
#[cfg(feature = "http")]
mod reply;
#[cfg(feature = "http")]
mod request;
pub mod rollout;
mod service;
mod slot;
pub mod topics;
#[cfg(feature = "http")]
mod wire;

pub use prometheus::{Histogram, LATENCY_BUCKETS};
pub use service::{FrameResult, HeadHealth, Health, ImagePrediction, ServeOptions, Service};
pub use slot::{Captured, FrameSlot};

/// How often blocked threads look at the stop flag; bounds the shutdown time.
const POLL: Duration = Duration::from_millis(100);

/// Sleeps `d` in short steps, returning early (false) when the service stops.
fn sleep_unless_stopped(svc: &Service, d: Duration) -> bool {
    let end = Instant::now() + d;
    while !svc.stopping() {
        let now = Instant::now();
        if now >= end {
            return true;
        }
        std::thread::sleep((end - now).min(POLL));
    }
    false
}

/// The capture thread: opens the source (reopening with exponential backoff after any failure)
/// and feeds the slot.
pub fn capture_loop(svc: &Service, spec: &SourceSpec, camera: CameraSettings, fps: Option<f64>) {
    capture_loop_with(
        svc,
        || spec.open(camera, true),
        fps,
        |wait| {
            sleep_unless_stopped(svc, wait);
        },
    );
}

/// [`capture_loop`] with its two dependencies on the world passed in: how a source is opened, and
/// how the wait before reopening one is spent (a test opens fake sources and only records waits).
fn capture_loop_with(
    svc: &Service,
    mut open: impl FnMut() -> Result<Box<dyn FrameSource>, SourceError>,
    fps: Option<f64>,
    mut wait_before_reopening: impl FnMut(Duration),
) {
    let mut backoff = Backoff::new();
    let mut seq = 0u64;
    while !svc.stopping() {
        let mut source = match open() {
            Ok(s) => s,
            Err(e) => {
                let wait = backoff.next_wait();
                log::error!("cannot open source: {e}; retrying in {wait:?}");
                svc.source_down(e.to_string());
                wait_before_reopening(wait);
                continue;
            }
        };
        let description = source.describe();
        log::info!("source open: {description}");
        svc.source_up(description);
        let replay = !source.is_live() && fps.is_none();
        let mut pacer = Pacer::new(if source.is_live() {
            0.0
        } else {
            fps.unwrap_or(0.0)
        });
        let mut delivered = false;
        while !svc.stopping() {
            if replay && !svc.slot().wait_wanted(POLL) {
                continue;
            }
            if !sleep_unless_stopped(svc, pacer.wait_time()) {
                break;
            }
            match source.next_frame() {
                Ok(frame) => {
                    seq += 1;
                    let replaced = svc.slot().put(Captured { seq, frame });
                    svc.frame_captured(replaced);
                    if !delivered {
                        delivered = true;
                        backoff.reset();
                    }
                }
                Err(e) => {
                    let e = match e {
                        SourceError::End(name) => format!("{name}: ended"),
                        other => other.to_string(),
                    };
                    let wait = backoff.next_wait();
                    log::error!("source failed: {e}; reopening in {wait:?}");
                    svc.source_down(e);
                    drop(source);
                    wait_before_reopening(wait);
                    break;
                }
            }
        }
    }
}

/// The inference thread: classifies the newest frame, prints it as a JSON line, hands it to
/// `also` (the MQTT queue, which never blocks), and stops the service after `max_frames`.
pub fn inference_loop(
    svc: &Service,
    max_frames: Option<u64>,
    out: &mut dyn Write,
    also: &dyn Fn(&FrameResult),
) {
    let mut out_ok = true;
    while !svc.stopping() {
        svc.record_heartbeat();
        let Some(captured) = svc.slot().take(POLL) else {
            continue;
        };
        match svc.classify_frame(&captured) {
            Ok(result) => {
                if out_ok {
                    let written = serde_json::to_writer(&mut *out, &result)
                        .map_err(std::io::Error::from)
                        .and_then(|()| writeln!(out))
                        .and_then(|()| out.flush());
                    if let Err(e) = written {
                        // A closed stdout must not stop the HTTP side of the service.
                        log::error!("stdout: {e}; JSON lines are no longer written");
                        out_ok = false;
                    }
                }
                also(&result);
                if max_frames.is_some_and(|m| svc.classified() >= m) {
                    log::info!("classified {} frames: stopping", svc.classified());
                    svc.stop();
                }
            }
            Err(e) => {
                let wait = svc.frame_failed(&captured.frame.name, &e);
                // Backing off is not hanging: the heartbeat goes on, and the watchdog is fed.
                let end = Instant::now() + wait;
                while !svc.stopping() && Instant::now() < end {
                    std::thread::sleep(end.saturating_duration_since(Instant::now()).min(POLL));
                    svc.record_heartbeat();
                }
            }
        }
    }
}

/// How a `serve` run ended.
#[derive(Debug)]
pub struct ServeSummary {
    pub status: String,
    pub classified: u64,
}

/// Runs the service until SIGTERM/SIGINT (or `max_frames`): capture, inference, HTTP, SIGHUP
/// reloads and the systemd notifications. `backbone` and `head` come from the caller's
/// [`crate::loader::head_and_backbone`], checked together; reloads only ever replace the head.
pub fn run(
    backbone: Backbone,
    head: HeadFile,
    opts: &ServeOptions,
) -> anyhow::Result<ServeSummary> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

    log::info!(
        "head {}: classes {:?}, sha256 {}",
        head.path.display(),
        head.head.classes,
        head.sha256
    );
    let views = opts.views.unwrap_or(head.head.views);
    let side_by_side = crate::classifier::view_threads(views.count());
    let rounds = views.count().div_ceil(side_by_side);
    log::info!(
        "views per frame: {} ({}): each frame is embedded {} time(s), {} at a time (one per core), so inference takes about {}× a single view's time and the frame rate is about 1/{} of it{}",
        views.count(),
        views.names().join(", "),
        views.count(),
        side_by_side,
        rounds,
        rounds,
        if views.count() > 1 { " (--views 1 for speed)" } else { "" }
    );
    match &head.head.novelty {
        Some(n) => log::info!(
            "novelty threshold {:.4}: frames farther from the training images are `unknown`",
            n.threshold
        ),
        None => log::info!("this head has no novelty model (trained before it existed): only --threshold makes frames `unknown`"),
    }
    let svc = Arc::new(Service::new(backbone, head, opts));

    let terminate = Arc::new(AtomicBool::new(false));
    let hangup = Arc::new(AtomicBool::new(false));
    for sig in [SIGTERM, SIGINT] {
        // A second signal while stopping exits at once (code 1): nothing is half-written.
        signal_hook::flag::register_conditional_shutdown(sig, 1, terminate.clone())
            .context("installing signal handlers")?;
        signal_hook::flag::register(sig, terminate.clone())
            .context("installing signal handlers")?;
    }
    signal_hook::flag::register(SIGHUP, hangup.clone()).context("installing signal handlers")?;

    let mut threads = Vec::new();
    #[cfg(feature = "http")]
    if let Some(addr) = &opts.listen {
        let (bound, handle) = http::spawn(
            svc.clone(),
            addr,
            opts.token.clone(),
            opts.insecure_no_token,
        )?;
        log::info!("listening on http://{bound}");
        threads.push(handle);
    }
    #[cfg(not(feature = "http"))]
    if let Some(addr) = &opts.listen {
        anyhow::bail!(
            "--listen {addr}: this edge-mnv2 was built without the `http` feature (use --no-http)"
        );
    }
    {
        let svc = svc.clone();
        let (spec, camera, fps) = (opts.source.clone(), opts.camera, opts.fps);
        threads.push(
            std::thread::Builder::new()
                .name("capture".into())
                .spawn(move || capture_loop(&svc, &spec, camera, fps))
                .context("starting the capture thread")?,
        );
    }
    #[cfg(feature = "mqtt")]
    let publisher = match &opts.mqtt {
        Some(settings) => {
            let (publisher, handles) = mqtt::start(svc.clone(), settings.clone())?;
            threads.extend(handles);
            Some(publisher)
        }
        None => None,
    };
    #[cfg(not(feature = "mqtt"))]
    if opts.mqtt.is_some() {
        anyhow::bail!("--mqtt: this edge-mnv2 was built without the `mqtt` feature");
    }
    {
        let svc = svc.clone();
        let max_frames = opts.max_frames;
        #[cfg(feature = "mqtt")]
        let also = move |r: &FrameResult| {
            if let Some(p) = &publisher {
                p.offer(r);
            }
        };
        #[cfg(not(feature = "mqtt"))]
        let also = |_: &FrameResult| {};
        threads.push(
            std::thread::Builder::new()
                .name("inference".into())
                .spawn(move || {
                    inference_loop(&svc, max_frames, &mut std::io::stdout().lock(), &also)
                })
                .context("starting the inference thread")?,
        );
    }

    notify(&[sd_notify::NotifyState::Ready]);
    let watchdog = sd_notify::watchdog_enabled();
    if let Some(w) = watchdog {
        log::info!("systemd watchdog every {w:?}: pinging every {:?}", w / 2);
    }
    let mut last_ping = Instant::now();
    let mut last_status = Instant::now() - Duration::from_secs(60);
    while !svc.stopping() {
        if terminate.load(Ordering::SeqCst) {
            log::info!("stop requested by signal");
            svc.stop();
            break;
        }
        if hangup.swap(false, Ordering::SeqCst) {
            log::info!("SIGHUP: reloading the head");
            // Refusal is logged inside; the service goes on with the old head either way.
            let _ = svc.reload_head();
        }
        if let Some(w) = watchdog {
            // Ping only while inference is alive: a wedged pipeline should be restarted.
            if last_ping.elapsed() >= w / 2 && svc.heartbeat_age() < w / 2 {
                notify(&[sd_notify::NotifyState::Watchdog]);
                last_ping = Instant::now();
            }
        }
        if last_status.elapsed() >= Duration::from_secs(5) {
            let status = svc.status_line();
            notify(&[sd_notify::NotifyState::Status(&status)]);
            last_status = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    notify(&[sd_notify::NotifyState::Stopping]);
    for t in threads {
        if t.join().is_err() {
            log::error!("a service thread panicked");
        }
    }
    let status = svc.status_line();
    log::info!("stopped: {status}");
    Ok(ServeSummary {
        status,
        classified: svc.classified(),
    })
}

fn notify(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        log::warn!("sd_notify: {e}");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use super::*;
    use crate::source::{FramePixels, RawFrame};

    /// A camera that delivers `frames` frames, then stalls: what the V4L2 source reports when no
    /// frame comes within its timeout (src/source/v4l2.rs).
    struct FakeCamera {
        frames: usize,
    }

    impl FrameSource for FakeCamera {
        fn next_frame(&mut self) -> Result<RawFrame, SourceError> {
            if self.frames == 0 {
                return Err(SourceError::Read {
                    source_name: "/dev/video7".into(),
                    reason: "no frame within 1s (camera stalled or unplugged)".into(),
                });
            }
            self.frames -= 1;
            Ok(RawFrame {
                pixels: FramePixels::Encoded(vec![0xff, 0xd8]),
                name: "/dev/video7#1".into(),
                captured: Instant::now(),
            })
        }
        fn describe(&self) -> String {
            "/dev/video7 (fake)".into()
        }
        fn is_live(&self) -> bool {
            true
        }
    }

    /// A file that is no image, replayed: what `serve --source /etc/passwd` reads.
    struct NoImage;

    impl FrameSource for NoImage {
        fn next_frame(&mut self) -> Result<RawFrame, SourceError> {
            Ok(RawFrame {
                pixels: FramePixels::Encoded(b"root:x:0:0:root:/root:/bin/sh\n".to_vec()),
                name: "passwd".into(),
                captured: Instant::now(),
            })
        }
        fn describe(&self) -> String {
            "image passwd (repeated)".into()
        }
        fn is_live(&self) -> bool {
            false
        }
    }

    /// A service around the default model and an untrained two-class head (the capture loop
    /// never classifies; it needs the service for its slot, counters and health).
    fn service() -> Service {
        let backbone =
            crate::loader::backbone(&crate::loader::BackboneChoice::default(), false).unwrap();
        let head = crate::head::Head {
            backbone: crate::classifier::backbone_ref(&backbone),
            classes: vec!["a".into(), "b".into()],
            dense: crate::head::Dense::untrained(crate::backbone::EMBEDDING_DIM, 2),
            config: Default::default(),
            temperature: 1.0,
            views: Default::default(),
            novelty: None,
        };
        let opts = ServeOptions {
            head: "head.json".into(),
            source: SourceSpec::Camera("/dev/video7".into()),
            camera: CameraSettings::default(),
            fps: None,
            threshold: 0.0,
            max_frames: None,
            listen: None,
            views: None,
            token: None,
            insecure_no_token: false,
            mqtt: None,
        };
        let file = HeadFile {
            head,
            path: "head.json".into(),
            sha256: "0".repeat(64),
            bytes: Vec::new(),
        };
        Service::new(backbone, file, &opts)
    }

    /// Frames that all fail are taken ever more slowly (10 ms doubling), not spun on, while the
    /// heartbeat the watchdog is fed by goes on; the service is degraded.
    #[test]
    fn a_source_of_no_image_is_backed_off_with_the_heartbeat_going_on() {
        let svc = &service();
        let mut oldest = Duration::ZERO;
        std::thread::scope(|s| {
            let open = || Ok(Box::new(NoImage) as Box<dyn FrameSource>);
            s.spawn(move || capture_loop_with(svc, open, None, |_| {}));
            s.spawn(|| inference_loop(svc, None, &mut std::io::sink(), &|_| {}));
            let end = Instant::now() + Duration::from_secs(3);
            while Instant::now() < end {
                oldest = oldest.max(svc.heartbeat_age());
                std::thread::sleep(Duration::from_millis(20));
            }
            svc.stop();
        });
        // Waits of 10, 20, ... 1280 ms: 2.55 s for the first 9 failures.
        let status = svc.status_line();
        let failed: u64 = status
            .split(", ")
            .nth(2)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!((5..=10).contains(&failed), "{status}");
        assert!(status.contains("source degraded: the last"), "{status}");
        let health = svc.health();
        assert!(!health.healthy && health.status == "degraded", "{health:?}");
        assert!(oldest < Duration::from_secs(1), "heartbeat {oldest:?} old");
    }

    /// Stalls and failed opens are reopened after 0.5 s, 1 s, 2 s, ... up to 30 s, with the
    /// service degraded meanwhile; a source that delivers resets the wait to 0.5 s. The waits are
    /// recorded, not slept.
    #[test]
    fn stalls_and_failed_opens_are_reopened_with_backoff() {
        let svc = service();
        // What each open gives: Err = the device cannot be opened, Ok(n) = a camera that delivers
        // n frames and then stalls.
        let script: Vec<Result<usize, &str>> = vec![
            Err("no such device"),
            Err("no such device"),
            Ok(2),
            Err("busy"),
            Ok(0),
            Err("busy"),
            Err("busy"),
            Err("busy"),
            Err("busy"),
            Err("busy"),
            Err("busy"),
        ];
        let script = Mutex::new(VecDeque::from(script));
        let health = Mutex::new(Vec::new());
        let waits = Mutex::new(Vec::new());
        capture_loop_with(
            &svc,
            || {
                let next = script.lock().unwrap().pop_front();
                if script.lock().unwrap().is_empty() {
                    svc.stop();
                }
                match next.expect("not called after the stop") {
                    Ok(frames) => Ok(Box::new(FakeCamera { frames }) as Box<dyn FrameSource>),
                    Err(reason) => Err(SourceError::Open {
                        source_name: "/dev/video7".into(),
                        reason: reason.into(),
                    }),
                }
            },
            None,
            |wait| {
                waits.lock().unwrap().push(wait.as_secs_f64());
                health.lock().unwrap().push(svc.health());
            },
        );
        assert_eq!(
            *waits.lock().unwrap(),
            [0.5, 1.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
        );
        let health = health.lock().unwrap();
        assert!(health.iter().all(|h| !h.healthy && h.status == "degraded"));
        assert_eq!(
            health[2].reason.as_deref(),
            Some("/dev/video7: no frame within 1s (camera stalled or unplugged)")
        );
        assert_eq!(
            health[0].reason.as_deref(),
            Some("/dev/video7: no such device")
        );
        // The two frames the first camera gave reached the slot.
        assert_eq!(svc.slot().take(Duration::ZERO).map(|c| c.seq), Some(2));
    }
}
