//! The `serve` config file ([`ServeConfig`]): a TOML file whose keys are the flags of `serve`,
//! read relative to its own folder and overridden key by key by the flags given.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

/// The keys a config file may hold: the flags of `serve` (and `capture`'s source settings).
#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    pub head: Option<PathBuf>,
    pub model: Option<String>,
    /// Backbone arithmetic for TFLite models (default: this board's calibration, else f32).
    pub precision: Option<crate::models::Precision>,
    pub source: Option<String>,
    pub listen: Option<String>,
    pub threshold: Option<f32>,
    /// Views averaged per frame (1, 2 or 4; default: the head's).
    pub views: Option<crate::views::Views>,
    pub fps: Option<f64>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub frames: Option<u64>,
    /// Serve without the HTTP server (JSON lines only).
    pub no_http: Option<bool>,
    /// The file holding the API token (see `auth`); relative to the config file.
    pub token_file: Option<PathBuf>,
    /// Listen beyond loopback without a token.
    pub insecure_no_token: Option<bool>,
    /// MQTT broker, `mqtt://HOST:PORT` or `mqtts://HOST:PORT`.
    pub mqtt: Option<String>,
    pub mqtt_username: Option<String>,
    /// A file holding the broker password (kept out of this world-readable file).
    pub mqtt_password_file: Option<PathBuf>,
    /// PEM CA certificates for mqtts:// (default: the compiled-in Mozilla roots).
    pub mqtt_ca_file: Option<PathBuf>,
    /// Topic prefix (default `edge-mnv2`): topics are `<prefix>/<board>/...`.
    pub mqtt_prefix: Option<String>,
    /// `every` result (default) or only label `changes` plus a heartbeat.
    pub mqtt_publish: Option<String>,
    /// Seconds between heartbeats in `changes` mode (default 60).
    pub mqtt_heartbeat_s: Option<f64>,
    /// Publish Home Assistant discovery configs (default true).
    pub mqtt_discovery: Option<bool>,
    /// The board's name in topics and Home Assistant (default: the host name).
    pub board: Option<String>,
}

impl ServeConfig {
    pub fn load(path: &Path) -> anyhow::Result<ServeConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read config file", path.display()))?;
        ServeConfig::parse(&text, path)
    }

    /// As [`ServeConfig::load`] on the file's text already in memory; `path` is named in errors
    /// and relative paths are resolved against its directory.
    pub fn parse(text: &str, path: &Path) -> anyhow::Result<ServeConfig> {
        let cfg: ServeConfig = toml::from_str(text).map_err(|e| {
            anyhow::anyhow!(
                "{}: invalid config: {}",
                path.display(),
                e.to_string().trim()
            )
        })?;
        // Relative paths in a config file are relative to the file, not to the working directory
        // (systemd starts services in /).
        let base = path.parent().unwrap_or(Path::new("."));
        Ok(ServeConfig {
            head: cfg.head.map(|h| base.join(h)),
            token_file: cfg.token_file.map(|p| base.join(p)),
            mqtt_password_file: cfg.mqtt_password_file.map(|p| base.join(p)),
            mqtt_ca_file: cfg.mqtt_ca_file.map(|p| base.join(p)),
            ..cfg
        })
    }

    /// `self` with every key that `flags` sets replaced.
    pub fn overridden_by(self, flags: ServeConfig) -> ServeConfig {
        ServeConfig {
            head: flags.head.or(self.head),
            model: flags.model.or(self.model),
            precision: flags.precision.or(self.precision),
            source: flags.source.or(self.source),
            listen: flags.listen.or(self.listen),
            threshold: flags.threshold.or(self.threshold),
            views: flags.views.or(self.views),
            fps: flags.fps.or(self.fps),
            width: flags.width.or(self.width),
            height: flags.height.or(self.height),
            frames: flags.frames.or(self.frames),
            no_http: flags.no_http.or(self.no_http),
            token_file: flags.token_file.or(self.token_file),
            insecure_no_token: flags.insecure_no_token.or(self.insecure_no_token),
            mqtt: flags.mqtt.or(self.mqtt),
            mqtt_username: flags.mqtt_username.or(self.mqtt_username),
            mqtt_password_file: flags.mqtt_password_file.or(self.mqtt_password_file),
            mqtt_ca_file: flags.mqtt_ca_file.or(self.mqtt_ca_file),
            mqtt_prefix: flags.mqtt_prefix.or(self.mqtt_prefix),
            mqtt_publish: flags.mqtt_publish.or(self.mqtt_publish),
            mqtt_heartbeat_s: flags.mqtt_heartbeat_s.or(self.mqtt_heartbeat_s),
            mqtt_discovery: flags.mqtt_discovery.or(self.mqtt_discovery),
            board: flags.board.or(self.board),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keys_are_the_flags_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.toml");
        std::fs::write(
            &p,
            "head = \"heads/bees\"\nsource = \"/dev/video1\"\nthreshold = 0.7\nfps = 5\nlisten = \"0.0.0.0:9000\"\ntoken_file = \"token\"\n",
        )
        .unwrap();
        let cfg = ServeConfig::load(&p).unwrap();
        assert_eq!(cfg.head, Some(dir.path().join("heads/bees")));
        assert_eq!(cfg.fps, Some(5.0));
        assert_eq!(cfg.token_file, Some(dir.path().join("token")));
        let flags = ServeConfig {
            threshold: Some(0.9),
            ..ServeConfig::default()
        };
        let merged = cfg.overridden_by(flags);
        assert_eq!(merged.threshold, Some(0.9));
        assert_eq!(merged.source.as_deref(), Some("/dev/video1"));
        std::fs::write(&p, "treshold = 0.5\n").unwrap();
        let e = format!("{:#}", ServeConfig::load(&p).unwrap_err());
        assert!(e.contains("config.toml") && e.contains("treshold"), "{e}");
    }
}
