//! `models fetch`: download a manifest model (and its label file) into the user cache, verified.
//!
//! The body is streamed into a temporary file in the destination directory and hashed on the way;
//! only a complete body (Content-Length honoured when sent) whose sha256 matches the manifest is
//! renamed into place, in one step. Any failure drops the temporary file, so a cut connection, a
//! truncated or corrupted body or an HTTP error leaves nothing behind.
//!
//! URLs must be `https://` (rustls with the `ring` provider and the compiled-in Mozilla roots);
//! plain `http://` is accepted only for loopback hosts, which is what the tests serve from. HTTPS
//! and loopback HTTP go through the same code (`http`); ureq only adds TLS to the transport.
//!
//! Here: what to fetch (the manifest entry or its label file, from which URL) and the retry;
//! `http` the transport and the verified download; `error` the failures.

mod error;
mod http;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::models::{self, LabelFile, Manifest, ModelSpec};
pub use error::FetchError;
use http::{agent, download_to};
pub use http::{check_url, fetch_bytes, FetchProgress, Quiet, TIMEOUT_ENV};

/// Environment variable naming a mirror: a model is fetched from `<base>/<file name>` instead of
/// its manifest URL (an offline mirror on the LAN, or a test server).
pub const BASE_URL_ENV: &str = "EDGE_MNV2_MODEL_BASE_URL";

/// Delay before the single retry of a transient failure (refused, reset, cut, timed out).
const RETRY_DELAY: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    /// Download from this URL instead of the manifest's (or the mirror's).
    pub url: Option<String>,
    /// Download even if a verified copy is already in a search directory.
    pub force: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// A verified copy was already there; nothing was downloaded.
    AlreadyPresent { path: PathBuf },
    Downloaded {
        path: PathBuf,
        url: String,
        bytes: u64,
    },
}

/// One file to download and verify: a model, or the label file of one.
struct Item<'a> {
    /// For messages: "model 'x'" or "label file 'y'".
    what: String,
    /// Model name for errors about the manifest entry.
    name: &'a str,
    file: &'a str,
    sha256: Option<&'a str>,
    url: Option<&'a str>,
}

impl<'a> Item<'a> {
    fn model(spec: &'a ModelSpec) -> Item<'a> {
        Item {
            what: format!("model '{}'", spec.name),
            name: &spec.name,
            file: &spec.file,
            sha256: spec.sha256.as_deref(),
            url: spec.url.as_deref(),
        }
    }

    fn labels(spec: &'a ModelSpec, labels: &'a LabelFile) -> Item<'a> {
        Item {
            what: format!("label file '{}'", labels.file),
            name: &spec.name,
            file: &labels.file,
            sha256: Some(&labels.sha256),
            url: Some(&labels.url),
        }
    }

    /// The URL it is fetched from: the explicit one, else the mirror's, else the manifest's.
    fn source_url(&self, explicit: Option<&str>) -> Result<String, FetchError> {
        if let Some(url) = explicit.filter(|u| !u.is_empty()) {
            return Ok(url.to_string());
        }
        let Some(url) = self.url else {
            return Err(FetchError::NoUrl {
                name: self.name.to_string(),
            });
        };
        let mirror = std::env::var(BASE_URL_ENV).ok().filter(|b| !b.is_empty());
        Ok(match mirror {
            Some(base) => format!("{}/{}", base.trim_end_matches('/'), self.base_name()),
            None => url.to_string(),
        })
    }

    fn base_name(&self) -> &str {
        Path::new(self.file)
            .file_name()
            .and_then(|f| f.to_str())
            .unwrap_or(self.file)
    }

    /// A verified copy already in a search directory, if any.
    fn find_verified(&self) -> Option<PathBuf> {
        models::locate_file(self.file)
            .into_iter()
            .map(|(path, _)| path)
            .find(|path| {
                models::sha256_file(path).is_ok_and(|sum| Some(sum.as_str()) == self.sha256)
            })
    }
}

/// The manifest models `models fetch --all` downloads: those with a URL and a pinned checksum.
pub fn downloadable(manifest: &Manifest) -> Vec<&ModelSpec> {
    manifest
        .models
        .iter()
        .filter(|m| m.is_downloadable())
        .collect()
}

/// What `models fetch` is asked for: every downloadable model (`all`), else `name` or the
/// default. One model with no URL of its own is refused up front unless `explicit_url` stands in.
pub fn select<'m>(
    manifest: &'m Manifest,
    name: Option<&str>,
    all: bool,
    explicit_url: bool,
) -> Result<Vec<&'m ModelSpec>, FetchError> {
    if all {
        return Ok(downloadable(manifest));
    }
    let name = name.unwrap_or(&manifest.default);
    let spec = manifest
        .get(name)
        .ok_or_else(|| models::ModelError::UnknownName {
            name: name.to_string(),
            known: manifest.known_names(),
        })?;
    if spec.url.is_none() && !explicit_url {
        let names: Vec<&str> = downloadable(manifest)
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        return Err(FetchError::NotDownloadable {
            name: spec.name.clone(),
            downloadable: names.join(", "),
        });
    }
    Ok(vec![spec])
}

/// The URL a model is fetched from: the explicit one, else the mirror's, else the manifest's.
pub fn source_url(spec: &ModelSpec, explicit: Option<&str>) -> Result<String, FetchError> {
    Item::model(spec).source_url(explicit)
}

/// A verified copy of the model already in a search directory, if any.
pub fn find_verified(spec: &ModelSpec) -> Option<PathBuf> {
    Item::model(spec).find_verified()
}

/// Fetches one manifest model into [`models::cache_dir`] unless a verified copy exists.
/// `cancel` is polled between reads (Ctrl-C): a cancelled download stores nothing.
pub fn fetch(
    spec: &ModelSpec,
    opts: &FetchOptions,
    progress: &dyn FetchProgress,
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<Fetched, FetchError> {
    let item = Item::model(spec);
    let url = item.source_url(opts.url.as_deref())?;
    fetch_item(&item, url, opts.force, progress, cancel)
}

/// Fetches the label file a model's class scores are named by (`classify` needs it), when the
/// manifest has a download for it; `None` when it has none. With an explicit model URL the label
/// file is taken from the same directory (a mirror holds both), else from the mirror or manifest.
pub fn fetch_labels(
    manifest: &Manifest,
    spec: &ModelSpec,
    opts: &FetchOptions,
    progress: &dyn FetchProgress,
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<Option<Fetched>, FetchError> {
    let Some(labels) = manifest.label_file_of(spec) else {
        return Ok(None);
    };
    let item = Item::labels(spec, labels);
    let url = match opts.url.as_deref().filter(|u| !u.is_empty()) {
        Some(model_url) => match model_url.rsplit_once('/') {
            Some((dir, _)) => format!("{dir}/{}", item.base_name()),
            None => item.source_url(None)?,
        },
        None => item.source_url(None)?,
    };
    fetch_item(&item, url, opts.force, progress, cancel).map(Some)
}

fn fetch_item(
    item: &Item,
    url: String,
    force: bool,
    progress: &dyn FetchProgress,
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<Fetched, FetchError> {
    let Some(sha256) = item.sha256 else {
        return Err(FetchError::Unpinned {
            name: item.name.to_string(),
            url,
        });
    };
    check_url(&url)?;
    if !force {
        if let Some(path) = item.find_verified() {
            return Ok(Fetched::AlreadyPresent { path });
        }
    }
    let dest = models::cache_dir()
        .ok_or(FetchError::NoCacheDir)?
        .join(item.file);
    let dir = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| FetchError::Io {
        path: dir.to_path_buf(),
        reason: format!("cannot create the model cache directory: {e}"),
    })?;
    let agent = agent();
    let mut result = download_to(&agent, &url, &item.what, sha256, &dest, progress, cancel);
    if result.as_ref().is_err_and(FetchError::is_transient) {
        log::warn!("{}; retrying once", result.as_ref().unwrap_err());
        std::thread::sleep(RETRY_DELAY);
        result = download_to(&agent, &url, &item.what, sha256, &dest, progress, cancel);
    }
    let bytes = result?;
    Ok(Fetched::Downloaded {
        path: dest,
        url,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_url_beats_manifest_and_derived_files_have_none() {
        let m = models::Manifest::builtin();
        let tflite = m.get("mobilenet_v2_1.0_224_quant").unwrap();
        assert!(source_url(tflite, None).unwrap().starts_with("https://"));
        assert_eq!(
            source_url(tflite, Some("http://127.0.0.1:1/x")).unwrap(),
            "http://127.0.0.1:1/x"
        );
        let derived = m.get("mnv2-1.0-224-dequant").unwrap();
        assert!(matches!(
            source_url(derived, None),
            Err(FetchError::NoUrl { .. })
        ));
    }

    #[test]
    fn unpinned_entries_are_refused_before_any_network() {
        let m = models::Manifest::builtin();
        let unpinned = m.get("mobilenetv2-12").unwrap();
        let cancel = std::sync::atomic::AtomicBool::new(false);
        let e = fetch(unpinned, &FetchOptions::default(), &Quiet, &cancel).unwrap_err();
        assert!(matches!(e, FetchError::Unpinned { .. }), "{e}");
    }
}
