//! `models fetch`: download a manifest model (and its label file) into the user cache, verified.
//!
//! The body is streamed into a temporary file in the destination directory and hashed on the way;
//! only a complete body (Content-Length honoured when sent) whose sha256 matches the manifest is
//! renamed into place, in one step. Any failure drops the temporary file, so a cut connection, a
//! truncated or corrupted body or an HTTP error leaves nothing behind.
//!
//! URLs must be `https://` (rustls with the `ring` provider and the compiled-in Mozilla roots);
//! plain `http://` is accepted only for loopback hosts, which is what the tests serve from. HTTPS
//! and loopback HTTP go through the same code below; ureq only adds TLS to the transport.

use std::io::{Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use thiserror::Error;
use ureq::http::Uri;

use crate::models::{self, LabelFile, Manifest, ModelSpec};

/// Environment variable naming a mirror: a model is fetched from `<base>/<file name>` instead of
/// its manifest URL (an offline mirror on the LAN, or a test server).
pub const BASE_URL_ENV: &str = "EDGE_MNV2_MODEL_BASE_URL";

/// Connection set-up (DNS, TCP, TLS handshake).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a single read may wait for bytes: a stalled server fails instead of hanging.
const IDLE_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Environment variable setting both timeouts above, in milliseconds: for a link slower than they
/// allow, and for the tests, which show them firing without waiting half a minute.
pub const TIMEOUT_ENV: &str = "EDGE_MNV2_FETCH_TIMEOUT_MS";
/// Redirects followed before giving up; each hop is checked against [`check_url`] before it is
/// contacted.
const MAX_REDIRECTS: usize = 5;
/// No model we know is near this; a server streaming without end must not fill the disk.
const MAX_MODEL_BYTES: u64 = 512 << 20;
/// Delay before the single retry of a transient failure (refused, reset, cut, timed out).
const RETRY_DELAY: Duration = Duration::from_millis(500);

#[derive(Debug, Error)]
pub enum FetchError {
    #[error(transparent)]
    Model(#[from] models::ModelError),
    #[error(
        "model '{name}' is converted locally and has no download URL; downloadable: {downloadable}"
    )]
    NotDownloadable { name: String, downloadable: String },
    #[error("model '{name}' has no download URL (it is derived locally from another file; see the README)")]
    NoUrl { name: String },
    #[error("model '{name}': no sha256 is pinned in the manifest, so a download of {url} could not be verified; download it yourself and pass --model PATH")]
    Unpinned { name: String, url: String },
    #[error("{url}: refusing {reason}")]
    InsecureUrl { url: String, reason: String },
    #[error("{url}: HTTP {status}")]
    Status { url: String, status: String },
    #[error("{url}: {reason}")]
    Connection { url: String, reason: String },
    #[error("{url}: connection cut: got {got} of {expected} bytes ({reason})")]
    Truncated {
        url: String,
        got: u64,
        expected: u64,
        /// What ended it: the I/O error (a timeout, a reset) or an early close.
        reason: String,
    },
    #[error("{url}: larger than {limit} bytes, not a model file")]
    TooLarge { url: String, limit: u64 },
    #[error("{url}: checksum mismatch for {name}: downloaded sha256 {actual}, the manifest expects {expected} (corrupt or wrong file); nothing stored")]
    ChecksumMismatch {
        url: String,
        name: String,
        actual: String,
        expected: String,
    },
    #[error("no model cache directory: set ${} or HOME", models::MODEL_CACHE_ENV)]
    NoCacheDir,
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("{url}: interrupted; nothing stored")]
    Interrupted { url: String },
}

impl FetchError {
    /// Failures a second attempt may cure; HTTP statuses and wrong bytes it will not.
    fn is_transient(&self) -> bool {
        matches!(
            self,
            FetchError::Connection { .. } | FetchError::Truncated { .. }
        )
    }
}

/// Download progress, drawn by the caller (a bar on a terminal, nothing otherwise).
pub trait FetchProgress {
    /// A body of `total` bytes (if the server said) starts.
    fn start(&self, _url: &str, _total: Option<u64>) {}
    fn advance(&self, _done: u64) {}
    fn finish(&self) {}
}

/// A [`FetchProgress`] that shows nothing.
pub struct Quiet;
impl FetchProgress for Quiet {}

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

/// https anywhere; http only to this machine (tests, a local mirror). Anything else refused.
pub fn check_url(url: &str) -> Result<(), FetchError> {
    let refuse = |reason: &str| FetchError::InsecureUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let uri: Uri = url
        .parse()
        .map_err(|e| refuse(&format!("an unparsable URL ({e})")))?;
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if uri.host().is_some_and(is_loopback) => Ok(()),
        Some("http") => Err(refuse(
            "plain http:// to a host other than this machine; use https://",
        )),
        _ => Err(refuse("a URL that is not https://")),
    }
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
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
    let mut result = download_to(&agent, &url, item, sha256, &dest, progress, cancel);
    if result.as_ref().is_err_and(FetchError::is_transient) {
        log::warn!("{}; retrying once", result.as_ref().unwrap_err());
        std::thread::sleep(RETRY_DELAY);
        result = download_to(&agent, &url, item, sha256, &dest, progress, cancel);
    }
    let bytes = result?;
    Ok(Fetched::Downloaded {
        path: dest,
        url,
        bytes,
    })
}

/// GETs `url` (https, or http on loopback) into memory, refusing bodies over `limit` bytes: for
/// small files a caller verifies itself (a head delivered by URL and sha256).
pub fn fetch_bytes(url: &str, limit: u64) -> Result<Vec<u8>, FetchError> {
    let response = get(&agent(), url)?;
    let status = response.status();
    if !status.is_success() {
        return Err(FetchError::Status {
            url: url.to_string(),
            status: status.as_u16().to_string(),
        });
    }
    let mut bytes = Vec::new();
    response
        .into_body()
        .into_reader()
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| FetchError::Connection {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
    if bytes.len() as u64 > limit {
        return Err(FetchError::TooLarge {
            url: url.to_string(),
            limit,
        });
    }
    Ok(bytes)
}

fn agent() -> ureq::Agent {
    let (connect, idle_read) = timeouts();
    ureq::Agent::config_builder()
        .timeout_connect(Some(connect))
        .timeout_per_read(Some(idle_read))
        // Statuses are reported by us, with the reason phrase and the URL.
        .http_status_as_error(false)
        // Followed by hand in `get`: ureq would connect to a redirect's target before we could
        // refuse it.
        .max_redirects(0)
        .user_agent(concat!("edge-mnv2/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

/// (connect, idle read): the constants, or both from [`TIMEOUT_ENV`].
fn timeouts() -> (Duration, Duration) {
    let set = std::env::var(TIMEOUT_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&ms| ms > 0)
        .map(Duration::from_millis);
    match set {
        Some(t) => (t, t),
        None => (CONNECT_TIMEOUT, IDLE_READ_TIMEOUT),
    }
}

/// GETs `url`, following up to [`MAX_REDIRECTS`] redirects, each target checked against
/// [`check_url`] before anything connects to it. Errors name `url`, the one asked for.
fn get(agent: &ureq::Agent, url: &str) -> Result<ureq::http::Response<ureq::Body>, FetchError> {
    check_url(url)?;
    let mut current = url.to_string();
    for _ in 0..=MAX_REDIRECTS {
        let response = agent
            .get(&current)
            .call()
            .map_err(|e| FetchError::Connection {
                url: url.to_string(),
                reason: e.to_string(),
            })?;
        if !response.status().is_redirection() {
            return Ok(response);
        }
        let location = response
            .headers()
            .get(ureq::http::header::LOCATION)
            .and_then(|l| l.to_str().ok());
        let Some(next) = location.and_then(|l| redirect_target(&current, l)) else {
            return Err(FetchError::Status {
                url: url.to_string(),
                status: format!("{} without a usable Location", response.status().as_u16()),
            });
        };
        check_url(&next).map_err(|_| FetchError::InsecureUrl {
            url: url.to_string(),
            reason: format!("a redirect to {next}"),
        })?;
        current = next;
    }
    Err(FetchError::Connection {
        url: url.to_string(),
        reason: format!("more than {MAX_REDIRECTS} redirects"),
    })
}

/// The absolute URL a `Location` header points to from `base` (absolute, scheme-relative,
/// absolute path or relative path).
fn redirect_target(base: &str, location: &str) -> Option<String> {
    let location = location.trim();
    if location.is_empty() {
        return None;
    }
    let base: Uri = base.parse().ok()?;
    let scheme = base.scheme_str()?;
    let authority = base.authority()?.as_str();
    if location.parse::<Uri>().is_ok_and(|u| u.scheme().is_some()) {
        return Some(location.to_string());
    }
    if location.starts_with("//") {
        return Some(format!("{scheme}:{location}"));
    }
    if location.starts_with('/') {
        return Some(format!("{scheme}://{authority}{location}"));
    }
    let dir = base.path().rsplit_once('/').map_or("", |(dir, _)| dir);
    Some(format!("{scheme}://{authority}{dir}/{location}"))
}

/// One attempt: GET `url` into a temporary file beside `dest`, verify, rename. Returns the size.
fn download_to(
    agent: &ureq::Agent,
    url: &str,
    item: &Item,
    sha256: &str,
    dest: &Path,
    progress: &dyn FetchProgress,
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<u64, FetchError> {
    let connection = |reason: String| FetchError::Connection {
        url: url.to_string(),
        reason,
    };
    let response = get(agent, url)?;
    let status = response.status();
    if !status.is_success() {
        return Err(FetchError::Status {
            url: url.to_string(),
            status: format!(
                "{} {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            )
            .trim_end()
            .to_string(),
        });
    }
    let expected_len = response.body().content_length();
    if expected_len.is_some_and(|n| n > MAX_MODEL_BYTES) {
        return Err(FetchError::TooLarge {
            url: url.to_string(),
            limit: MAX_MODEL_BYTES,
        });
    }

    let dir = dest.parent().unwrap_or(Path::new("."));
    let io = |path: &Path, e: std::io::Error| FetchError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    // Same directory as the destination, so the final rename is atomic; dropped (deleted) on
    // every early return below.
    let mut tmp = crate::fsutil::new_temp_file(dir, ".part").map_err(|e| io(dir, e))?;
    let mut reader = response.into_body().into_reader();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut got: u64 = 0;
    progress.start(url, expected_len);
    let streamed = loop {
        if cancel.load(std::sync::atomic::Ordering::SeqCst) {
            break Err(FetchError::Interrupted {
                url: url.to_string(),
            });
        }
        let n = match reader.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                break Err(match expected_len {
                    Some(expected) => FetchError::Truncated {
                        url: url.to_string(),
                        got,
                        expected,
                        reason: e.to_string(),
                    },
                    None => connection(format!("connection cut after {got} bytes: {e}")),
                })
            }
        };
        got += n as u64;
        if got > MAX_MODEL_BYTES {
            break Err(FetchError::TooLarge {
                url: url.to_string(),
                limit: MAX_MODEL_BYTES,
            });
        }
        hasher.update(&buf[..n]);
        if let Err(e) = tmp.write_all(&buf[..n]) {
            break Err(io(tmp.path(), e));
        }
        progress.advance(got);
    };
    progress.finish();
    streamed?;
    // ureq stops at Content-Length and reports an early close as an error, but a short body
    // must never pass on the word of the HTTP library alone.
    if let Some(expected) = expected_len.filter(|&n| n != got) {
        return Err(FetchError::Truncated {
            url: url.to_string(),
            got,
            expected,
            reason: "closed early".to_string(),
        });
    }
    let actual = hex::encode(hasher.finalize());
    if actual != sha256 {
        return Err(FetchError::ChecksumMismatch {
            url: url.to_string(),
            name: item.what.clone(),
            actual,
            expected: sha256.to_string(),
        });
    }
    tmp.as_file().sync_all().map_err(|e| io(tmp.path(), e))?;
    tmp.persist(dest).map_err(|e| io(dest, e.error))?;
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_anywhere_http_only_on_loopback() {
        assert!(check_url("https://example.org/m.tflite").is_ok());
        assert!(check_url("http://127.0.0.1:8080/m.tflite").is_ok());
        assert!(check_url("http://127.3.2.1/m").is_ok());
        assert!(check_url("http://localhost/m").is_ok());
        assert!(check_url("http://[::1]:9/m").is_ok());
        for bad in [
            "http://example.org/m.tflite",
            "http://10.0.0.1/m",
            "http://127.0.0.1.example.org/m",
            "ftp://127.0.0.1/m",
            "file:///etc/passwd",
            "not a url",
        ] {
            let e = check_url(bad).unwrap_err();
            assert!(matches!(e, FetchError::InsecureUrl { .. }), "{bad}: {e}");
        }
    }

    #[test]
    fn redirect_targets_resolve_against_the_current_url() {
        let base = "http://127.0.0.1:8080/models/a/m.tflite";
        for (location, want) in [
            ("https://example.org/x", "https://example.org/x"),
            ("http://10.0.0.1/x", "http://10.0.0.1/x"),
            ("//example.org/x", "http://example.org/x"),
            ("/x/y", "http://127.0.0.1:8080/x/y"),
            ("y.tflite", "http://127.0.0.1:8080/models/a/y.tflite"),
        ] {
            assert_eq!(redirect_target(base, location).as_deref(), Some(want));
        }
        assert_eq!(redirect_target(base, " "), None);
    }

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
