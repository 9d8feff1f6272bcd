//! The classification service: a capture thread, an inference thread and (feature `http`) an HTTP
//! thread around one [`Service`].
//!
//! Frames meet in a single-slot mailbox ([`FrameSlot`]): the capture thread overwrites whatever
//! the inference thread has not taken yet (counting a drop), so under load the newest frame is
//! always the next one classified and memory never grows with a backlog. A file source without an
//! `fps` instead reads a frame only when inference asks for one (an offline replay: every frame,
//! no drops).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use image::RgbImage;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::backbone::Backbone;
use crate::classifier::{check_compatible, Prediction};
use crate::head::{Head, HEAD_FILE};
use crate::source::{decode_frame, CameraSettings, Pacer, SourceError, SourceSpec};

#[cfg(feature = "http")]
pub mod http;
mod config;
mod prometheus;
mod slot;

pub use config::ServeConfig;
pub use prometheus::{Histogram, LATENCY_BUCKETS};
use prometheus::Stats;
pub use slot::{Captured, FrameSlot};
use slot::lock;

/// The label reported when the most probable class is below the confidence threshold.
pub const UNKNOWN_LABEL: &str = "unknown";
/// First and largest wait between attempts to reopen a failed source.
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often blocked threads look at the stop flag; bounds the shutdown time.
const POLL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
enum SourceState {
    Starting,
    Up(String),
    Down(String),
}

/// A head with the checksum of the file it came from (what /healthz and the logs show).
pub struct LoadedHead {
    pub head: Head,
    pub sha256: String,
}

fn head_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join(HEAD_FILE)
    } else {
        path.to_path_buf()
    }
}

/// Loads a head and checks it runs on `backbone`; what both start-up and reload use.
pub fn load_head(path: &Path, backbone: &Backbone) -> anyhow::Result<LoadedHead> {
    let file = head_file(path);
    let bytes = std::fs::read(&file).with_context(|| format!("{}: reading", file.display()))?;
    let head = Head::load(&file)?;
    check_compatible(&head, backbone).with_context(|| format!("{}", file.display()))?;
    Ok(LoadedHead {
        head,
        sha256: hex::encode(Sha256::digest(&bytes)),
    })
}

/// Everything `serve` is told (flags merged over the config file).
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub head: PathBuf,
    pub source: SourceSpec,
    pub camera: CameraSettings,
    /// Pace file sources to this rate (like a camera, dropping frames under load); `None` replays
    /// them as fast as inference takes them.
    pub fps: Option<f64>,
    pub threshold: f32,
    /// Stop after this many classified frames.
    pub max_frames: Option<u64>,
    /// HTTP listen address; `None` for no HTTP server.
    pub listen: Option<String>,
}

pub struct Service {
    backbone: Backbone,
    head: RwLock<Arc<LoadedHead>>,
    head_path: PathBuf,
    reload_lock: Mutex<()>,
    pub threshold: f32,
    pub slot: FrameSlot,
    stats: Mutex<Stats>,
    latest: Mutex<Option<Value>>,
    source_state: Mutex<SourceState>,
    source_name: String,
    started: Instant,
    /// Last time the inference thread went round its loop (for the systemd watchdog).
    heartbeat: Mutex<Instant>,
    pub stop: AtomicBool,
}

fn unix_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

impl Service {
    pub fn new(backbone: Backbone, head: LoadedHead, opts: &ServeOptions) -> Service {
        Service {
            backbone,
            head: RwLock::new(Arc::new(head)),
            head_path: opts.head.clone(),
            reload_lock: Mutex::new(()),
            threshold: opts.threshold,
            slot: FrameSlot::default(),
            stats: Mutex::new(Stats::default()),
            latest: Mutex::new(None),
            source_state: Mutex::new(SourceState::Starting),
            source_name: opts.source.path().display().to_string(),
            started: Instant::now(),
            heartbeat: Mutex::new(Instant::now()),
            stop: AtomicBool::new(false),
        }
    }

    pub fn head(&self) -> Arc<LoadedHead> {
        self.head.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Reloads the head from its path; a head that fails to load or does not fit the backbone is
    /// refused and the running one stays. Returns the new head's sha256.
    pub fn reload_head(&self) -> anyhow::Result<String> {
        let _one_at_a_time = lock(&self.reload_lock);
        match load_head(&self.head_path, &self.backbone) {
            Ok(new) => {
                let sha = new.sha256.clone();
                log::info!(
                    "head reloaded from {}: classes {:?}, sha256 {}",
                    self.head_path.display(),
                    new.head.classes,
                    sha
                );
                *self.head.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
                lock(&self.stats).reloads_ok += 1;
                Ok(sha)
            }
            Err(e) => {
                let old = self.head().sha256.clone();
                log::error!("head reload refused, keeping head sha256 {old}: {e:#}");
                lock(&self.stats).reloads_refused += 1;
                Err(e)
            }
        }
    }

    /// Classifies one decoded image with the current head; the JSON fields every result shares.
    pub fn predict(&self, img: &RgbImage) -> anyhow::Result<Value> {
        let head = self.head();
        let embedding = self.backbone.embed(img)?;
        let p = Prediction::from_probs(&head.head, head.head.predict(&embedding));
        let label = if p.confidence < self.threshold {
            UNKNOWN_LABEL.to_string()
        } else {
            p.label.clone()
        };
        let probs: serde_json::Map<String, Value> = head
            .head
            .classes
            .iter()
            .zip(&p.probs)
            .map(|(k, v)| (k.clone(), json!(round(*v as f64, 6))))
            .collect();
        Ok(json!({
            "label": label,
            "confidence": round(p.confidence as f64, 6),
            "probs": probs,
            "head": head.sha256,
        }))
    }

    /// Decodes and classifies a captured frame; records it in the statistics and as the latest.
    pub fn classify_frame(&self, captured: &Captured) -> anyhow::Result<Value> {
        let img = decode_frame(&captured.frame)?;
        let mut result = self.predict(&img)?;
        let latency = captured.frame.captured.elapsed().as_secs_f64();
        let label = result["label"].as_str().unwrap_or_default().to_string();
        let fields = result.as_object_mut().expect("predict returns an object");
        fields.insert("ts".into(), json!(round(unix_time(), 3)));
        fields.insert("frame".into(), json!(captured.seq));
        fields.insert("source".into(), json!(captured.frame.name));
        fields.insert("latency_ms".into(), json!(round(latency * 1e3, 2)));
        {
            let mut s = lock(&self.stats);
            s.classified += 1;
            *s.per_class.entry(label).or_default() += 1;
            s.latency.observe(latency);
            fields.insert("dropped".into(), json!(s.dropped));
        }
        *lock(&self.latest) = Some(result.clone());
        Ok(result)
    }

    pub fn latest(&self) -> Option<Value> {
        lock(&self.latest).clone()
    }

    pub fn frame_failed(&self, name: &str, e: &anyhow::Error) {
        lock(&self.stats).frame_errors += 1;
        log::warn!("frame {name} skipped: {e:#}");
    }

    fn set_source_state(&self, state: SourceState) {
        *lock(&self.source_state) = state;
    }

    /// (healthy, JSON body) for /healthz.
    pub fn health(&self) -> (bool, Value) {
        let head = self.head();
        let s = lock(&self.stats);
        let (ok, status, reason) = match &*lock(&self.source_state) {
            SourceState::Up(d) => (true, "ok", json!(d)),
            SourceState::Starting => (false, "degraded", json!("source is starting")),
            SourceState::Down(r) => (false, "degraded", json!(r)),
        };
        let mut body = json!({
            "status": status,
            "source": self.source_name,
            "head": {"sha256": head.sha256, "classes": head.head.classes, "path": self.head_path},
            "frames": s.classified,
            "dropped": s.dropped,
            "uptime_s": round(self.started.elapsed().as_secs_f64(), 1),
        });
        let key = if ok { "detail" } else { "reason" };
        body[key] = reason;
        (ok, body)
    }

    /// One line for systemd's STATUS= and the exit summary.
    pub fn status_line(&self) -> String {
        let s = lock(&self.stats);
        let source = match &*lock(&self.source_state) {
            SourceState::Up(_) => "source ok".to_string(),
            SourceState::Starting => "source starting".to_string(),
            SourceState::Down(r) => format!("source degraded: {r}"),
        };
        format!(
            "{} frames classified, {} dropped, {} failed; {source}",
            s.classified, s.dropped, s.frame_errors
        )
    }

    pub fn classified(&self) -> u64 {
        lock(&self.stats).classified
    }

    /// The Prometheus text exposition of the counters.
    pub fn metrics(&self) -> String {
        let head = self.head();
        let mut labels: Vec<&str> = head.head.classes.iter().map(String::as_str).collect();
        labels.push(UNKNOWN_LABEL);
        let s = lock(&self.stats);
        let up = matches!(&*lock(&self.source_state), SourceState::Up(_));
        prometheus::exposition(&s, up, &labels)
    }
}

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
    let mut backoff = BACKOFF_START;
    let mut seq = 0u64;
    while !svc.stopping() {
        let mut source = match spec.open(camera, true) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot open source: {e}; retrying in {backoff:?}");
                lock(&svc.stats).source_errors += 1;
                svc.set_source_state(SourceState::Down(e.to_string()));
                sleep_unless_stopped(svc, backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let description = source.describe();
        log::info!("source open: {description}");
        svc.set_source_state(SourceState::Up(description));
        let replay = !source.is_live() && fps.is_none();
        let mut pacer = Pacer::new(if source.is_live() {
            0.0
        } else {
            fps.unwrap_or(0.0)
        });
        let mut delivered = false;
        while !svc.stopping() {
            if replay && !svc.slot.wait_wanted(POLL) {
                continue;
            }
            if !sleep_unless_stopped(svc, pacer.wait_time()) {
                break;
            }
            match source.next_frame() {
                Ok(frame) => {
                    seq += 1;
                    let dropped = svc.slot.put(Captured { seq, frame });
                    let mut s = lock(&svc.stats);
                    s.captured += 1;
                    s.dropped += u64::from(dropped);
                    if !delivered {
                        delivered = true;
                        backoff = BACKOFF_START;
                    }
                }
                Err(e) => {
                    let e = match e {
                        SourceError::End(name) => format!("{name}: ended"),
                        other => other.to_string(),
                    };
                    log::error!("source failed: {e}; reopening in {backoff:?}");
                    lock(&svc.stats).source_errors += 1;
                    svc.set_source_state(SourceState::Down(e));
                    drop(source);
                    sleep_unless_stopped(svc, backoff);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    break;
                }
            }
        }
    }
}

/// The inference thread: classifies the newest frame, prints it as a JSON line, and stops the
/// service after `max_frames`.
pub fn inference_loop(svc: &Service, max_frames: Option<u64>, out: &mut dyn Write) {
    let mut out_ok = true;
    while !svc.stopping() {
        *lock(&svc.heartbeat) = Instant::now();
        let Some(captured) = svc.slot.take(POLL) else {
            continue;
        };
        match svc.classify_frame(&captured) {
            Ok(line) => {
                if out_ok {
                    if let Err(e) = writeln!(out, "{line}").and_then(|_| out.flush()) {
                        // A closed stdout must not stop the HTTP side of the service.
                        log::error!("stdout: {e}; JSON lines are no longer written");
                        out_ok = false;
                    }
                }
                if max_frames.is_some_and(|m| svc.classified() >= m) {
                    log::info!("classified {} frames: stopping", svc.classified());
                    svc.stop.store(true, Ordering::SeqCst);
                }
            }
            Err(e) => svc.frame_failed(&captured.frame.name, &e),
        }
    }
}

impl Service {
    /// Age of the inference thread's heartbeat.
    pub fn heartbeat_age(&self) -> Duration {
        lock(&self.heartbeat).elapsed()
    }
}

/// How a `serve` run ended.
#[derive(Debug)]
pub struct ServeSummary {
    pub status: String,
    pub classified: u64,
}

/// Runs the service until SIGTERM/SIGINT (or `max_frames`): capture, inference, HTTP, SIGHUP
/// reloads and the systemd notifications. `backbone` is loaded by the caller, once; reloads only
/// ever replace the head.
pub fn run(backbone: Backbone, opts: &ServeOptions) -> anyhow::Result<ServeSummary> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

    let head = load_head(&opts.head, &backbone)?;
    log::info!(
        "head {}: classes {:?}, sha256 {}",
        head_file(&opts.head).display(),
        head.head.classes,
        head.sha256
    );
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
        let (bound, handle) = http::spawn(svc.clone(), addr)?;
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
    {
        let svc = svc.clone();
        let max_frames = opts.max_frames;
        threads.push(
            std::thread::Builder::new()
                .name("inference".into())
                .spawn(move || inference_loop(&svc, max_frames, &mut std::io::stdout().lock()))
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
            svc.stop.store(true, Ordering::SeqCst);
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
