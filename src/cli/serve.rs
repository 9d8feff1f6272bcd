//! `serve` and `capture`: the flags laid over the config file, then the service or the capture.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};

use edge_mnv2::serve::auth::{self, Token};
use edge_mnv2::serve::topics::{self, BrokerUrl, MqttSettings, PublishMode, Topics};
use edge_mnv2::serve::{self, ServeConfig, ServeOptions};
use edge_mnv2::source::{CameraSettings, SourceSpec};
use edge_mnv2::{capture, loader};

use super::args::{CaptureArgs, ServeArgs, SourceArgs};
use super::progress;

/// The source a config names, or the first camera.
const DEFAULT_SOURCE: &str = "/dev/video0";
/// Loopback only unless told otherwise: beyond it the API needs a token (`serve::auth`).
const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// The config file (if any) with the flags laid over it.
fn config(source: &SourceArgs, flags: ServeConfig) -> Result<ServeConfig> {
    let flags = ServeConfig {
        source: source.source.clone(),
        fps: source.fps,
        width: source.width,
        height: source.height,
        ..flags
    };
    Ok(match &source.config {
        Some(path) => ServeConfig::load(path)?.overridden_by(flags),
        None => flags,
    })
}

fn camera_settings(cfg: &ServeConfig) -> Result<CameraSettings> {
    let default = CameraSettings::default();
    let fps = cfg.fps.unwrap_or(default.fps as f64);
    if !(fps.is_finite() && fps > 0.0 && fps <= 1000.0) {
        anyhow::bail!("--fps {fps}: must be a number of frames per second in (0, 1000]");
    }
    let settings = CameraSettings {
        width: cfg.width.unwrap_or(default.width),
        height: cfg.height.unwrap_or(default.height),
        fps: fps.round().max(1.0) as u32,
    };
    for (name, v) in [("--width", settings.width), ("--height", settings.height)] {
        if !(16..=8192).contains(&v) {
            anyhow::bail!("{name} {v}: must be between 16 and 8192 pixels");
        }
    }
    Ok(settings)
}

pub fn serve(args: ServeArgs) -> Result<ExitCode> {
    let flags = ServeConfig {
        head: args.head,
        model: args.model.model,
        precision: args.model.precision,
        listen: args.listen,
        threshold: args.threshold,
        views: args.views,
        frames: args.frames,
        no_http: args.no_http.then_some(true),
        token_file: args.token_file,
        insecure_no_token: args.insecure_no_token.then_some(true),
        mqtt: args.mqtt,
        board: args.board,
        ..ServeConfig::default()
    };
    let cfg = config(&args.source, flags)?;
    let camera = camera_settings(&cfg)?;
    let threshold = cfg.threshold.unwrap_or(0.0);
    if !(0.0..=1.0).contains(&threshold) {
        anyhow::bail!("--threshold {threshold}: must be between 0 and 1");
    }
    let head = cfg
        .head
        .clone()
        .context("no head: give --head DIR (or `head` in the config file)")?;
    let listen = if cfg.no_http == Some(true) {
        None
    } else {
        Some(cfg.listen.clone().unwrap_or_else(|| DEFAULT_LISTEN.into()))
    };
    // Read once: the HTTP bearer token and the MQTT commands' HMAC key are the same secret.
    let token = cfg.token_file.as_deref().map(Token::load).transpose()?;
    let insecure_no_token = cfg.insecure_no_token == Some(true);
    if let Some(listen) = &listen {
        // Before the model loads: a refused start-up should not take seconds.
        auth::check_listen(listen, token.as_ref(), insecure_no_token)?;
    }
    let mqtt = mqtt_settings(&cfg, token.clone())?;
    let opts = ServeOptions {
        source: SourceSpec::parse(cfg.source.as_deref().unwrap_or(DEFAULT_SOURCE)),
        camera,
        fps: cfg.fps,
        threshold,
        views: cfg.views,
        max_frames: cfg.frames,
        listen,
        token,
        insecure_no_token,
        mqtt,
        head,
    };
    // The backbone the head was trained on, as `predict` loads it; reloads replace only the head.
    let choice = loader::BackboneChoice {
        model: cfg.model.clone(),
        precision: cfg.precision,
    };
    let (head, backbone) = loader::head_and_backbone(&opts.head, &choice)?;
    serve::run(backbone, head, &opts)?;
    Ok(ExitCode::SUCCESS)
}

/// A secret from a file (password, token): its content without surrounding whitespace.
pub fn read_secret(path: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(text.trim().to_string())
}

/// The MQTT settings when `mqtt` is given, checked (URL, board name, files) before starting;
/// `token` is the one `token_file` holds.
fn mqtt_settings(cfg: &ServeConfig, token: Option<Token>) -> Result<Option<MqttSettings>> {
    let Some(url) = &cfg.mqtt else {
        return Ok(None);
    };
    let broker = BrokerUrl::parse(url)?;
    let board = match &cfg.board {
        Some(b) => topics::check_board(b)?,
        None => topics::board_from_hostname(),
    };
    let heartbeat = cfg
        .mqtt_heartbeat_s
        .map(|s| {
            if s.is_finite() && s > 0.0 {
                Ok(Duration::from_secs_f64(s))
            } else {
                Err(anyhow::anyhow!("mqtt_heartbeat_s {s}: must be > 0"))
            }
        })
        .transpose()?
        .unwrap_or(topics::DEFAULT_HEARTBEAT);
    let publish = PublishMode::parse(cfg.mqtt_publish.as_deref().unwrap_or("every"), heartbeat)?;
    let password = cfg
        .mqtt_password_file
        .as_deref()
        .map(read_secret)
        .transpose()?;
    Ok(Some(MqttSettings {
        broker,
        username: cfg.mqtt_username.clone(),
        password,
        ca_file: cfg.mqtt_ca_file.clone(),
        topics: Topics {
            prefix: cfg
                .mqtt_prefix
                .clone()
                .unwrap_or_else(|| topics::DEFAULT_PREFIX.into()),
            board,
        },
        publish,
        discovery: cfg.mqtt_discovery.unwrap_or(true),
        token,
    }))
}

pub fn capture(args: CaptureArgs) -> Result<ExitCode> {
    let cfg = config(&args.source, ServeConfig::default())?;
    let camera = camera_settings(&cfg)?;
    if !(args.interval.is_finite() && args.interval >= 0.0) {
        anyhow::bail!(
            "--interval {}: must be a number of seconds >= 0",
            args.interval
        );
    }
    let spec = SourceSpec::parse(cfg.source.as_deref().unwrap_or(DEFAULT_SOURCE));
    let cancel = progress::cancel_on_ctrl_c();
    let saved = capture::capture(
        &spec,
        camera,
        &args.class,
        args.count,
        &args.data,
        Duration::from_secs_f64(args.interval),
        cancel,
    )?;
    println!(
        "saved {} frames to {}",
        saved.len(),
        args.data.join(&args.class).display()
    );
    Ok(if saved.len() == args.count {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
