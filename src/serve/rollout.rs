//! Head rollout on disk: a head delivered as bytes is verified against its sha256 and the running
//! backbone, written atomically over the head file, and the head it replaced is kept beside it
//! (`head.json.previous`) for a rollback; what an install or a rollback did ([`HeadChange`]) or
//! why it was refused ([`RolloutError`]), and the last outcome as `/healthz` shows it
//! ([`RolloutStatus`]).
//!
//! These functions only touch files and return the head to run; [`super::Service`] holds the
//! reload lock around them, swaps the head in as a SIGHUP reload would and records the outcome.
//! The signed commands that ask for rollouts are in `super::commands`.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

pub use super::auth::Token;
use crate::backbone::Backbone;
use crate::fsutil;
use crate::head::{head_file_path, HeadFile};
use crate::loader;

/// No head is near this (a 1280 × 100-class head is ~3 MB of JSON).
pub const MAX_HEAD_BYTES: u64 = 32 << 20;

#[derive(Debug, Error)]
pub enum RolloutError {
    #[error("checksum mismatch: the head's sha256 is {actual}, the command expects {expected}")]
    Checksum { expected: String, actual: String },
    #[error("head refused: {0}")]
    Refused(String),
    #[error("no previous head to roll back to ({0} does not exist)")]
    NoPrevious(PathBuf),
    #[error("{0}")]
    Io(String),
    #[error("fetching the head: {0}")]
    Fetch(String),
    #[error("command refused: {0}")]
    Command(String),
}

/// Where a head to install comes from.
#[derive(Debug, Clone, Copy)]
pub enum HeadSource<'a> {
    /// The head file's bytes.
    Bytes(&'a [u8]),
    /// An https:// URL (or http:// on loopback) the board fetches it from.
    Url(&'a str),
}

/// What an install or a rollback did: the head running now and the one it replaced.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeadChange {
    pub previous: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Install,
    Rollback,
}

/// The last rollout outcome, as `/healthz` and the MQTT state report it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolloutStatus {
    pub action: Action,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub ok: bool,
    /// The head running after the action (the old one when it was refused).
    pub sha256: String,
    pub ts: u64,
}

impl RolloutStatus {
    /// The outcome of `action` now: `error` when it was refused; `sha256` is the running head.
    pub fn now(action: Action, error: Option<String>, sha256: String) -> RolloutStatus {
        RolloutStatus {
            action,
            ok: error.is_none(),
            error,
            sha256,
            ts: unix_now(),
        }
    }
}

pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Where the head replaced by an install is kept.
pub fn previous_path(head_file: &Path) -> PathBuf {
    let mut name = head_file.file_name().unwrap_or_default().to_os_string();
    name.push(".previous");
    head_file.with_file_name(name)
}

fn io(path: &Path, e: impl std::fmt::Display) -> RolloutError {
    RolloutError::Io(format!("{}: {e}", path.display()))
}

/// Refuses `bytes` unless their sha256 is `expected` (any case, surrounding blanks ignored).
pub(super) fn check_sha256(bytes: &[u8], expected: &str) -> Result<(), RolloutError> {
    let actual = hex::encode(Sha256::digest(bytes));
    if actual.eq_ignore_ascii_case(expected.trim()) {
        Ok(())
    } else {
        Err(RolloutError::Checksum {
            expected: expected.trim().to_string(),
            actual,
        })
    }
}

/// Writes `bytes` (already checked by [`check_sha256`]) over the head file of `head_path` if they
/// are a head for `backbone`, keeping `running` (the bytes of the head the service runs, whatever
/// the file holds now) as its previous one; the new head, to be swapped in. The caller holds the
/// reload lock. A refused head changes no file, and its refusal names no file.
pub(super) fn install_file(
    head_path: &Path,
    backbone: &Backbone,
    bytes: &[u8],
    running: &[u8],
) -> Result<HeadFile, RolloutError> {
    let head_file = head_file_path(head_path);
    let new = loader::head_from_bytes(bytes.to_vec(), head_file.clone(), backbone)
        .map_err(|e| RolloutError::Refused(format!("{e:#}")))?;
    let dir = match head_file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // Written where it will live, then renamed into place: never a half-written head file.
    let tmp = fsutil::synced_temp_file(dir, bytes).map_err(|e| io(dir, format!("{e:#}")))?;
    fsutil::write_atomic(&previous_path(&head_file), running)
        .map_err(|e| io(&head_file, format!("{e:#}")))?;
    tmp.persist(&head_file)
        .map_err(|e| io(&head_file, e.error))?;
    Ok(new)
}

/// Puts the previous head in the head file of `head_path` if it is a head for `backbone`, and
/// `running` (the bytes of the head the service runs) as the previous one, so a second rollback
/// undoes the first; the head now in the file, to be swapped in. The caller holds the reload
/// lock.
pub(super) fn roll_back_file(
    head_path: &Path,
    backbone: &Backbone,
    running: &[u8],
) -> Result<HeadFile, RolloutError> {
    let head_file = head_file_path(head_path);
    let prev_path = previous_path(&head_file);
    if !prev_path.exists() {
        return Err(RolloutError::NoPrevious(prev_path));
    }
    let prev_bytes = std::fs::read(&prev_path).map_err(|e| io(&prev_path, e))?;
    let new = loader::head_from_bytes(prev_bytes, head_file.clone(), backbone)
        .map_err(|e| RolloutError::Refused(format!("{e:#}")))?;
    // Head first: a crash between the two writes leaves the rolled-back head in place.
    fsutil::write_atomic(&head_file, &new.bytes).map_err(|e| io(&head_file, e))?;
    fsutil::write_atomic(&prev_path, running).map_err(|e| io(&prev_path, e))?;
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previous_sits_beside_the_head_file() {
        assert_eq!(
            previous_path(Path::new("/var/lib/edge-mnv2/head/head.json")),
            Path::new("/var/lib/edge-mnv2/head/head.json.previous")
        );
    }
}
