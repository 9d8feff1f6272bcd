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
    pub fps: Option<f64>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub frames: Option<u64>,
    /// Serve without the HTTP server (JSON lines only).
    pub no_http: Option<bool>,
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
            fps: flags.fps.or(self.fps),
            width: flags.width.or(self.width),
            height: flags.height.or(self.height),
            frames: flags.frames.or(self.frames),
            no_http: flags.no_http.or(self.no_http),
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
            "head = \"heads/bees\"\nsource = \"/dev/video1\"\nthreshold = 0.7\nfps = 5\nlisten = \"0.0.0.0:9000\"\n",
        )
        .unwrap();
        let cfg = ServeConfig::load(&p).unwrap();
        assert_eq!(cfg.head, Some(dir.path().join("heads/bees")));
        assert_eq!(cfg.fps, Some(5.0));
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
