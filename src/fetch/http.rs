//! The transport under `models fetch` and head downloads: the URL rule (https, or http on
//! loopback), the agent's timeouts, redirects followed by hand so each hop is checked before it
//! is contacted, and the streamed, hashed, size-capped download into a temporary file.

use std::io::{Read, Write};
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};
use ureq::http::Uri;

use super::error::FetchError;

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

pub(super) fn agent() -> ureq::Agent {
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
pub(super) fn download_to(
    agent: &ureq::Agent,
    url: &str,
    what: &str,
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
            name: what.to_string(),
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
}
