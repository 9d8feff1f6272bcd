//! `serve` and `capture`: their flags (with the config file's keys, `super::config`) checked and
//! turned into the library's settings, then the service or the capture.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};

use edge_mnv2::classifier::NO_THRESHOLD;
use edge_mnv2::serve::auth::{self, Token};
use edge_mnv2::serve::topics::{self, BrokerUrl, MqttSettings, PublishMode, Topics};
use edge_mnv2::serve::{self, ServeOptions};
use edge_mnv2::source::{CameraSettings, SourceSpec};
use edge_mnv2::{capture, loader};

use super::args::{CaptureArgs, ServeArgs, SourceArgs};
use super::{errors, progress};

/// The source a config names, or the first camera.
const DEFAULT_SOURCE: &str = "/dev/video0";
/// Loopback only unless told otherwise: beyond it the API needs a token (`serve::auth`).
const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

fn camera_settings(source: &SourceArgs) -> Result<CameraSettings> {
    let default = CameraSettings::default();
    let fps = source.fps.unwrap_or(default.fps as f64);
    if !(fps.is_finite() && fps > 0.0 && fps <= 1000.0) {
        anyhow::bail!("--fps {fps}: must be a number of frames per second in (0, 1000]");
    }
    let settings = CameraSettings {
        width: source.width.unwrap_or(default.width),
        height: source.height.unwrap_or(default.height),
        fps: fps.round().max(1.0) as u32,
    };
    for (name, v) in [("--width", settings.width), ("--height", settings.height)] {
        if !(16..=8192).contains(&v) {
            anyhow::bail!("{name} {v}: must be between 16 and 8192 pixels");
        }
    }
    Ok(settings)
}

/// `args` (the config file already laid under them, `super::config`) checked and turned into
/// the library's settings, then the service until it stops.
pub fn serve(args: ServeArgs) -> Result<ExitCode> {
    let camera = camera_settings(&args.source)?;
    let threshold = args.threshold.unwrap_or(NO_THRESHOLD);
    if !(0.0..=1.0).contains(&threshold) {
        anyhow::bail!("--threshold {threshold}: must be between 0 and 1");
    }
    let head = args
        .head
        .clone()
        .context("no head: give --head DIR (or `head` in the config file)")?;
    let listen = if args.no_http {
        None
    } else {
        Some(args.listen.clone().unwrap_or_else(|| DEFAULT_LISTEN.into()))
    };
    // Read once: the HTTP bearer token and the MQTT commands' HMAC key are the same secret.
    let token = args.token_file.as_deref().map(Token::load).transpose()?;
    if let Some(listen) = &listen {
        // Before the model loads: a refused start-up should not take seconds.
        auth::check_listen(listen, token.as_ref(), args.insecure_no_token)?;
    }
    let mqtt = mqtt_settings(&args, token.clone())?;
    let opts = ServeOptions {
        source: SourceSpec::parse(args.source.source.as_deref().unwrap_or(DEFAULT_SOURCE)),
        camera,
        fps: args.source.fps,
        threshold,
        views: args.views,
        max_frames: args.frames,
        listen,
        token,
        insecure_no_token: args.insecure_no_token,
        mqtt,
        head,
    };
    // The backbone the head was trained on, as `predict` loads it; reloads replace only the head.
    let (head, backbone) = loader::head_and_backbone(&opts.head, &args.model.choice())?;
    serve::run(backbone, head, &opts)?;
    Ok(ExitCode::SUCCESS)
}

/// A secret from a file (password, token): its content without surrounding whitespace.
pub fn read_secret(path: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(text.trim().to_string())
}

/// The MQTT settings when `--mqtt` is given, checked (URL, board name, files) before starting;
/// `token` is the one `--token-file` holds.
fn mqtt_settings(args: &ServeArgs, token: Option<Token>) -> Result<Option<MqttSettings>> {
    let Some(url) = &args.mqtt else {
        return Ok(None);
    };
    let broker = BrokerUrl::parse(url)?;
    let board = match &args.board {
        Some(b) => topics::check_board(b)?,
        None => topics::board_from_hostname(),
    };
    let heartbeat = args
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
    let publish = PublishMode::parse(args.mqtt_publish.as_deref().unwrap_or("every"), heartbeat)?;
    let password = args
        .mqtt_password_file
        .as_deref()
        .map(read_secret)
        .transpose()?;
    Ok(Some(MqttSettings {
        broker,
        username: args.mqtt_username.clone(),
        password,
        ca_file: args.mqtt_ca_file.clone(),
        topics: Topics {
            prefix: args
                .mqtt_prefix
                .clone()
                .unwrap_or_else(|| topics::DEFAULT_PREFIX.into()),
            board,
        },
        publish,
        discovery: args.mqtt_discovery.unwrap_or(true),
        token,
    }))
}

pub fn capture(args: CaptureArgs) -> Result<ExitCode> {
    let camera = camera_settings(&args.source)?;
    if !(args.interval.is_finite() && args.interval >= 0.0) {
        anyhow::bail!(
            "--interval {}: must be a number of seconds >= 0",
            args.interval
        );
    }
    let spec = SourceSpec::parse(args.source.source.as_deref().unwrap_or(DEFAULT_SOURCE));
    let cancel = progress::cancel_on_ctrl_c();
    let captured = capture::capture(
        &spec,
        camera,
        &args.class,
        args.count,
        &args.data,
        Duration::from_secs_f64(args.interval),
        cancel,
    )?;
    let saved = captured.saved;
    let duplicates = match captured.duplicates {
        0 => String::new(),
        n => format!(" (skipped {n} duplicates)"),
    };
    writeln!(
        errors::stdout(),
        "saved {} frames to {}{duplicates}",
        saved.len(),
        args.data.join(&args.class).display()
    )?;
    Ok(if saved.len() == args.count {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
