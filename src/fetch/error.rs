//! What can go wrong fetching a model, and which failures a retry may cure.

use std::path::PathBuf;

use thiserror::Error;

use crate::models;

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
    pub(super) fn is_transient(&self) -> bool {
        matches!(
            self,
            FetchError::Connection { .. } | FetchError::Truncated { .. }
        )
    }
}
