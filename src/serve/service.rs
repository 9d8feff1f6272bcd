//! The [`Service`] the threads share: the backbone and the current head (swapped whole on
//! reload), classification of images and frames into typed, serializable results
//! ([`ImagePrediction`], [`FrameResult`]), the health body ([`Health`]), the status line and the
//! counters. Heads come from [`crate::loader`], at start-up and on every reload.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use image::RgbImage;
use serde::Serialize;

use super::failures::FrameFailures;
use super::prometheus::{self, MqttStats, Stats};
use super::rollout::{self, Action, HeadChange, HeadSource, RolloutError, RolloutStatus};
use super::slot::{lock, Captured, FrameSlot};
use crate::backbone::Backbone;
use crate::classifier::{classify, UNKNOWN_LABEL};
use crate::head::HeadFile;
use crate::loader;
use crate::source::{decode_frame, CameraSettings, SourceSpec};
use crate::views::Views;

/// `x` rounded to `digits` decimals: every number the service reports goes through this, so
/// results stay short and the same value always prints the same way.
pub fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

fn unix_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

// The result structs below declare their fields in alphabetical order on purpose: the JSON was
// built with `json!` before, and serde_json (without `preserve_order`) writes object keys sorted.
// Clients may compare these bodies byte for byte, so the key order must stay alphabetical.

/// One image's classification, as `POST /classify` and every frame report it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImagePrediction {
    /// The top class's probability, even when `label` is the unknown label.
    pub confidence: f64,
    /// sha256 of the head file that classified the image.
    pub head: String,
    /// The top class, or [`UNKNOWN_LABEL`] below the confidence threshold or above the novelty one.
    pub label: String,
    /// How far the image is from the head's training images (absent for heads without a novelty
    /// model); above the head's threshold the label is [`UNKNOWN_LABEL`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub novelty: Option<f64>,
    pub probs: BTreeMap<String, f64>,
    /// The novelty is above the head's threshold (counted apart in the metrics).
    #[serde(skip)]
    pub novel: bool,
}

/// One classified frame: the JSON line `serve` prints and what `GET /latest` returns.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FrameResult {
    pub confidence: f64,
    /// Frames dropped so far (since the service started).
    pub dropped: u64,
    /// The frame's sequence number; gaps are dropped frames.
    pub frame: u64,
    pub head: String,
    pub label: String,
    /// From capture to result.
    pub latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub novelty: Option<f64>,
    pub probs: BTreeMap<String, f64>,
    /// The frame's name (file path, or the camera's frame name).
    pub source: String,
    /// Unix time of the result, in seconds.
    pub ts: f64,
}

/// The `GET /healthz` body. `detail` (healthy) and `reason` (degraded) are exclusive.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Health {
    /// Decides the HTTP status; the body says it with `status`.
    #[serde(skip)]
    pub healthy: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub dropped: u64,
    pub frames: u64,
    pub head: HeadHealth,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The last head install or rollback since the service started, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
    pub source: String,
    pub status: &'static str,
    pub uptime_s: f64,
}

/// The head part of [`Health`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeadHealth {
    pub classes: Vec<String>,
    pub path: PathBuf,
    pub sha256: String,
}

#[derive(Debug, Clone)]
enum SourceState {
    Starting,
    Up(String),
    Down(String),
}

/// Everything `serve` is told (flags merged over the config file).
#[derive(Clone)]
pub struct ServeOptions {
    pub head: PathBuf,
    pub source: SourceSpec,
    pub camera: CameraSettings,
    /// Pace file sources to this rate (like a camera, dropping frames under load); `None` replays
    /// them as fast as inference takes them.
    pub fps: Option<f64>,
    pub threshold: f32,
    /// Views to average over; `None` follows the head.
    pub views: Option<Views>,
    /// Stop after this many classified frames.
    pub max_frames: Option<u64>,
    /// HTTP listen address; `None` for no HTTP server.
    pub listen: Option<String>,
    /// Required for every HTTP method but GET when set ([`super::auth`]).
    pub token: Option<super::auth::Token>,
    /// Serve beyond loopback without a token (the operator's explicit choice).
    pub insecure_no_token: bool,
    /// MQTT publishing and commands; `None` for none.
    pub mqtt: Option<super::topics::MqttSettings>,
}

pub struct Service {
    backbone: Backbone,
    head: RwLock<Arc<HeadFile>>,
    head_path: PathBuf,
    /// Held by whatever replaces the head (reload, install, rollback): one at a time.
    reload_lock: Mutex<()>,
    threshold: f32,
    views: Option<Views>,
    slot: FrameSlot,
    stats: Mutex<Stats>,
    rollout: Mutex<Option<RolloutStatus>>,
    latest: Mutex<Option<FrameResult>>,
    source_state: Mutex<SourceState>,
    failures: Mutex<FrameFailures>,
    source_name: String,
    started: Instant,
    /// Last time the inference thread went round its loop (for the systemd watchdog).
    heartbeat: Mutex<Instant>,
    stop: AtomicBool,
}

impl Service {
    /// The backbone's square input side: frames and uploads are decoded no smaller than this.
    pub fn input_size(&self) -> u32 {
        self.backbone.input_size()
    }

    pub fn new(backbone: Backbone, head: HeadFile, opts: &ServeOptions) -> Service {
        Service {
            backbone,
            head: RwLock::new(Arc::new(head)),
            head_path: opts.head.clone(),
            reload_lock: Mutex::new(()),
            threshold: opts.threshold,
            views: opts.views,
            slot: FrameSlot::default(),
            stats: Mutex::new(Stats::default()),
            rollout: Mutex::new(None),
            latest: Mutex::new(None),
            source_state: Mutex::new(SourceState::Starting),
            failures: Mutex::default(),
            source_name: opts.source.path().display().to_string(),
            started: Instant::now(),
            heartbeat: Mutex::new(Instant::now()),
            stop: AtomicBool::new(false),
        }
    }

    pub fn head(&self) -> Arc<HeadFile> {
        self.head.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Asks every thread of the service to stop.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// The mailbox between the capture and inference threads.
    pub fn slot(&self) -> &FrameSlot {
        &self.slot
    }

    /// Reloads the head from its path; a head that fails to load or does not fit the backbone is
    /// refused and the running one stays. Returns the new head's sha256.
    pub fn reload_head(&self) -> anyhow::Result<String> {
        let _one_at_a_time = lock(&self.reload_lock);
        match loader::head_for(&self.head_path, &self.backbone) {
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

    /// Classifies one decoded image with the current head.
    pub fn predict(&self, img: &RgbImage) -> anyhow::Result<ImagePrediction> {
        let head = self.head();
        let p = classify(&self.backbone, &head.head, img, self.views)?;
        let label = p.reported_label(self.threshold).to_string();
        let probs = p.probs_by_class(&head.head.classes, |v| round(f64::from(v), 6));
        Ok(ImagePrediction {
            confidence: round(p.confidence as f64, 6),
            head: head.sha256.clone(),
            label,
            novelty: p.novelty.map(|n| round(f64::from(n), 6)),
            probs,
            novel: p.novel,
        })
    }

    /// Decodes and classifies a captured frame; records it in the statistics and as the latest.
    pub fn classify_frame(&self, captured: &Captured) -> anyhow::Result<FrameResult> {
        let img = decode_frame(&captured.frame, Some(self.backbone.input_size()))?;
        let ImagePrediction {
            confidence,
            head,
            label,
            novelty,
            probs,
            novel,
        } = self.predict(&img)?;
        let latency = captured.frame.captured.elapsed().as_secs_f64();
        let ts = round(unix_time(), 3);
        let dropped = {
            let mut s = lock(&self.stats);
            s.classified += 1;
            s.novel += u64::from(novel);
            *s.per_class.entry(label.clone()).or_default() += 1;
            s.latency.observe(latency);
            s.dropped
        };
        let result = FrameResult {
            confidence,
            dropped,
            frame: captured.seq,
            head,
            label,
            latency_ms: round(latency * 1e3, 2),
            novelty,
            probs,
            source: captured.frame.name.clone(),
            ts,
        };
        *lock(&self.latest) = Some(result.clone());
        lock(&self.failures).succeeded();
        Ok(result)
    }

    pub fn latest(&self) -> Option<FrameResult> {
        lock(&self.latest).clone()
    }

    /// Counts a frame that failed (logged at most once a minute); how long the inference loop
    /// waits before the next, so a source that yields no image is not spun on.
    pub fn frame_failed(&self, name: &str, e: &anyhow::Error) -> Duration {
        lock(&self.stats).frame_errors += 1;
        let failed = lock(&self.failures).failed(name, &format!("{e:#}"), Instant::now());
        if let Some(w) = failed.warning {
            log::warn!("{w}");
        }
        failed.wait
    }

    /// Counts a frame the capture thread put in the slot; `replaced_one` when it overwrote a frame
    /// inference had not taken.
    pub fn frame_captured(&self, replaced_one: bool) {
        let mut s = lock(&self.stats);
        s.captured += 1;
        s.dropped += u64::from(replaced_one);
    }

    /// The source is open and delivering; `description` is what /healthz shows as its detail.
    pub fn source_up(&self, description: String) {
        *lock(&self.source_state) = SourceState::Up(description);
    }

    /// The source failed to open or to deliver (it will be reopened); `reason` is what /healthz
    /// shows until it is up again.
    pub fn source_down(&self, reason: String) {
        lock(&self.stats).source_errors += 1;
        *lock(&self.source_state) = SourceState::Down(reason);
    }

    /// The /healthz body: degraded until the source is up, and while its frames fail.
    pub fn health(&self) -> Health {
        let head = self.head();
        let s = lock(&self.stats);
        let failing = lock(&self.failures).degraded();
        let (healthy, status, detail, reason) = match &*lock(&self.source_state) {
            SourceState::Up(_) if failing.is_some() => (false, "degraded", None, failing),
            SourceState::Up(d) => (true, "ok", Some(d.clone()), None),
            SourceState::Starting => (false, "degraded", None, Some("source is starting".into())),
            SourceState::Down(r) => (false, "degraded", None, Some(r.clone())),
        };
        Health {
            healthy,
            detail,
            dropped: s.dropped,
            frames: s.classified,
            head: HeadHealth {
                classes: head.head.classes.clone(),
                path: self.head_path.clone(),
                sha256: head.sha256.clone(),
            },
            reason,
            rollout: lock(&self.rollout).clone(),
            source: self.source_name.clone(),
            status,
            uptime_s: round(self.started.elapsed().as_secs_f64(), 1),
        }
    }

    /// One line for systemd's STATUS= and the exit summary.
    pub fn status_line(&self) -> String {
        let s = lock(&self.stats);
        let failing = lock(&self.failures).degraded();
        let source = match &*lock(&self.source_state) {
            SourceState::Up(_) if failing.is_some() => {
                format!("source degraded: {}", failing.unwrap_or_default())
            }
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

    /// Called by the inference thread on every round of its loop.
    pub fn record_heartbeat(&self) {
        *lock(&self.heartbeat) = Instant::now();
    }

    /// Age of the inference thread's heartbeat.
    pub fn heartbeat_age(&self) -> Duration {
        lock(&self.heartbeat).elapsed()
    }

    /// Installs and rollbacks tried so far, whatever their outcome.
    pub fn rollouts_tried(&self) -> u64 {
        let s = lock(&self.stats);
        s.rollouts_ok + s.rollouts_refused
    }

    /// What the MQTT side last reported, for `/metrics`.
    pub fn set_mqtt_stats(&self, stats: MqttStats) {
        lock(&self.stats).mqtt = Some(stats);
    }

    /// Installs `bytes` as the head if their sha256 is `expected_sha256` and they are a head for
    /// the running backbone (its hash, input and preprocessing); the replaced head file is kept
    /// for [`Service::rollback`]. A refused head changes nothing, on disk or in memory.
    pub fn install_head(
        &self,
        bytes: &[u8],
        expected_sha256: &str,
    ) -> Result<HeadChange, RolloutError> {
        let result = rollout::check_sha256(bytes, expected_sha256).and_then(|()| {
            let _one_at_a_time = lock(&self.reload_lock);
            let running = self.head();
            let new =
                rollout::install_file(&self.head_path, &self.backbone, bytes, &running.bytes)?;
            Ok(self.swap_in(new))
        });
        self.record_rollout(Action::Install, &result);
        result
    }

    /// Puts the previous head back (the one the last install or rollback replaced); the head it
    /// replaces becomes the previous one, so a second rollback undoes the first.
    pub fn rollback(&self) -> Result<HeadChange, RolloutError> {
        let result = {
            let _one_at_a_time = lock(&self.reload_lock);
            rollout::roll_back_file(&self.head_path, &self.backbone, &self.head().bytes)
                .map(|new| self.swap_in(new))
        };
        self.record_rollout(Action::Rollback, &result);
        result
    }

    /// Installs the head from `source` with [`Service::install_head`], after fetching it if it
    /// is a URL. Refusals before the head is checked (no sha256, the fetch failed) are recorded
    /// too, so every outcome shows in `/healthz` and the metrics.
    pub fn install_from(
        &self,
        source: HeadSource<'_>,
        sha256: Option<&str>,
    ) -> Result<HeadChange, RolloutError> {
        let early = |e: RolloutError| {
            self.record_refusal(Action::Install, &e);
            Err(e)
        };
        let Some(sha256) = sha256.filter(|s| !s.trim().is_empty()) else {
            return early(RolloutError::Command("install without a sha256".into()));
        };
        match source {
            HeadSource::Bytes(bytes) => self.install_head(bytes, sha256),
            HeadSource::Url(url) => match crate::fetch::fetch_bytes(url, rollout::MAX_HEAD_BYTES) {
                Ok(bytes) => self.install_head(&bytes, sha256),
                Err(e) => early(RolloutError::Fetch(e.to_string())),
            },
        }
    }

    /// Records a refusal that happened before the head reached [`Service::install_head`].
    pub fn record_refusal(&self, action: Action, e: &RolloutError) {
        lock(&self.stats).rollouts_refused += 1;
        log::error!("head {action:?} refused, keeping the running head: {e}");
        self.set_rollout_status(action, Some(e.to_string()));
    }

    /// Runs `new` in place of the current head (under the reload lock).
    fn swap_in(&self, new: HeadFile) -> HeadChange {
        let previous = self.head().sha256.clone();
        log::info!(
            "head installed at {}: classes {:?}, sha256 {} (was {previous})",
            new.path.display(),
            new.head.classes,
            new.sha256
        );
        let sha256 = new.sha256.clone();
        *self.head.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
        HeadChange { previous, sha256 }
    }

    fn record_rollout(&self, action: Action, result: &Result<HeadChange, RolloutError>) {
        {
            let mut s = lock(&self.stats);
            match result {
                Ok(_) => s.rollouts_ok += 1,
                Err(_) => s.rollouts_refused += 1,
            }
        }
        if let Err(e) = result {
            log::error!("head {action:?} refused, keeping the running head: {e}");
        }
        self.set_rollout_status(action, result.as_ref().err().map(ToString::to_string));
    }

    fn set_rollout_status(&self, action: Action, error: Option<String>) {
        let status = RolloutStatus::now(action, error, self.head().sha256.clone());
        *lock(&self.rollout) = Some(status);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    /// `value` serialized directly, and through a `serde_json::Value` (whose objects sort their
    /// keys, as the `json!` bodies did before they were typed).
    fn both_ways(value: &impl Serialize) -> (String, String) {
        let direct = serde_json::to_string(value).unwrap();
        let via_value: Value = serde_json::to_value(value).unwrap();
        (direct, via_value.to_string())
    }

    fn probs() -> BTreeMap<String, f64> {
        [
            ("bees".to_string(), 0.039142),
            ("ants".to_string(), 0.960858),
        ]
        .into()
    }

    #[test]
    fn round_keeps_the_digits_asked_for() {
        assert_eq!(round(0.9608581, 6), 0.960858);
        assert_eq!(round(192.634, 2), 192.63);
        assert_eq!(round(1796019983.0064, 3), 1796019983.006);
    }

    #[test]
    fn results_serialize_with_sorted_keys_like_the_json_they_replace() {
        let frame = FrameResult {
            confidence: 0.960858,
            dropped: 2,
            frame: 7,
            head: "7efa".into(),
            label: "ants".into(),
            latency_ms: 192.63,
            novelty: None,
            probs: probs(),
            source: "val/ants/1.jpg".into(),
            ts: 1796019983.006,
        };
        let (direct, via_value) = both_ways(&frame);
        assert_eq!(direct, via_value);
        assert_eq!(
            direct,
            r#"{"confidence":0.960858,"dropped":2,"frame":7,"head":"7efa","label":"ants","latency_ms":192.63,"probs":{"ants":0.960858,"bees":0.039142},"source":"val/ants/1.jpg","ts":1796019983.006}"#
        );
        let image = ImagePrediction {
            confidence: 0.5,
            head: "7efa".into(),
            label: UNKNOWN_LABEL.into(),
            novelty: None,
            probs: probs(),
            novel: false,
        };
        let (direct, via_value) = both_ways(&image);
        assert_eq!(direct, via_value);
    }

    #[test]
    fn health_serializes_detail_or_reason_in_key_order() {
        let mut health = Health {
            healthy: true,
            detail: Some("folder x (3 images)".into()),
            dropped: 0,
            frames: 3,
            head: HeadHealth {
                classes: vec!["ants".into(), "bees".into()],
                path: PathBuf::from("/tmp/head"),
                sha256: "7efa".into(),
            },
            reason: None,
            rollout: None,
            source: "x".into(),
            status: "ok",
            uptime_s: 3.1,
        };
        let (direct, via_value) = both_ways(&health);
        assert_eq!(direct, via_value);
        assert!(direct.starts_with(r#"{"detail":"folder x (3 images)","dropped":0,"#));
        assert!(!direct.contains("healthy") && !direct.contains("reason"));
        health.healthy = false;
        health.detail = None;
        health.reason = Some("x: no such file or directory".into());
        health.status = "degraded";
        let (direct, via_value) = both_ways(&health);
        assert_eq!(direct, via_value);
        assert!(!direct.contains("detail"));
    }
}
