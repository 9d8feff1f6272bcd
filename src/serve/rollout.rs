//! Head rollout: a head delivered as bytes (or fetched from an HTTPS URL) is verified against its
//! sha256 and the running backbone, written atomically over the head file, swapped in as a SIGHUP
//! reload would, and the head it replaced is kept beside it (`head.json.previous`) for
//! [`Service::rollback`].
//!
//! Remote commands ([`HeadCommand`]) travel signed: `<hex HMAC-SHA256 of the body>\n<JSON body>`
//! under the board's token (the sha256 of a head proves its integrity, the HMAC proves who sent
//! it). A body names its board and the time it was issued, and its id is remembered, so a
//! command recorded off the wire cannot be replayed to another board, later, or twice.
//! The MQTT transport carries [`SignedCommand`]s and [`HeadAnswer`]s; HTTP (`PUT /head`,
//! `POST /rollback`, behind the bearer token) calls [`Service::install_from`] and
//! [`Service::rollback`] directly and answers a [`RolloutAnswer`].

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::Mac;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

pub use super::auth::Token;
use super::service::Service;
pub use super::service::{Action, RolloutStatus};
use super::slot::lock;
use crate::fsutil;
use crate::head::head_file_path;
use crate::loader;

/// No head is near this (a 1280 × 100-class head is ~3 MB of JSON).
pub const MAX_HEAD_BYTES: u64 = 32 << 20;
/// A signed command older (or further in the future) than this is refused.
pub const COMMAND_MAX_AGE_S: u64 = 300;
/// How many command ids a board remembers to refuse replays within the age window.
const REMEMBERED_IDS: usize = 256;

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

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
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

impl Service {
    /// Installs `bytes` as the head if their sha256 is `expected_sha256` and they are a head for
    /// the running backbone (its hash, input and preprocessing); the replaced head file is kept
    /// for [`Service::rollback`]. A refused head changes nothing, on disk or in memory.
    pub fn install_head(
        &self,
        bytes: &[u8],
        expected_sha256: &str,
    ) -> Result<HeadChange, RolloutError> {
        let result = self.install_unrecorded(bytes, expected_sha256);
        self.record_rollout(Action::Install, &result);
        result
    }

    /// Puts the previous head back (the one the last install or rollback replaced); the head it
    /// replaces becomes the previous one, so a second rollback undoes the first.
    pub fn rollback(&self) -> Result<HeadChange, RolloutError> {
        let result = self.rollback_unrecorded();
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
            HeadSource::Url(url) => match crate::fetch::fetch_bytes(url, MAX_HEAD_BYTES) {
                Ok(bytes) => self.install_head(&bytes, sha256),
                Err(e) => early(RolloutError::Fetch(e.to_string())),
            },
        }
    }

    fn install_unrecorded(&self, bytes: &[u8], expected: &str) -> Result<HeadChange, RolloutError> {
        let actual = sha256_hex(bytes);
        if !actual.eq_ignore_ascii_case(expected.trim()) {
            return Err(RolloutError::Checksum {
                expected: expected.trim().to_string(),
                actual,
            });
        }
        let _one_at_a_time = lock(&self.reload_lock);
        let head_file = head_file_path(&self.head_path);
        let dir = match head_file.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        // Verified where it will live, then renamed into place: never a half-checked head file.
        let tmp = fsutil::synced_temp_file(dir, bytes).map_err(|e| io(dir, format!("{e:#}")))?;
        let mut new = loader::head_for(tmp.path(), &self.backbone)
            .map_err(|e| RolloutError::Refused(format!("{e:#}")))?;
        let previous = self.head().sha256.clone();
        match std::fs::read(&head_file) {
            Ok(old) => fsutil::write_atomic(&previous_path(&head_file), &old)
                .map_err(|e| io(&head_file, format!("{e:#}")))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&head_file, e)),
        }
        tmp.persist(&head_file)
            .map_err(|e| io(&head_file, e.error))?;
        new.path = head_file;
        Ok(self.swap_in(new, previous))
    }

    fn rollback_unrecorded(&self) -> Result<HeadChange, RolloutError> {
        let _one_at_a_time = lock(&self.reload_lock);
        let head_file = head_file_path(&self.head_path);
        let prev_path = previous_path(&head_file);
        if !prev_path.exists() {
            return Err(RolloutError::NoPrevious(prev_path));
        }
        let mut new = loader::head_for(&prev_path, &self.backbone)
            .map_err(|e| RolloutError::Refused(format!("{e:#}")))?;
        let prev_bytes = std::fs::read(&prev_path).map_err(|e| io(&prev_path, e))?;
        let current = std::fs::read(&head_file).map_err(|e| io(&head_file, e))?;
        // Head first: a crash between the two writes leaves the rolled-back head in place.
        fsutil::write_atomic(&head_file, &prev_bytes).map_err(|e| io(&head_file, e))?;
        fsutil::write_atomic(&prev_path, &current).map_err(|e| io(&prev_path, e))?;
        let previous = self.head().sha256.clone();
        new.path = head_file;
        Ok(self.swap_in(new, previous))
    }

    fn swap_in(&self, new: crate::head::HeadFile, previous: String) -> HeadChange {
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
        *lock(&self.rollout) = Some(RolloutStatus {
            action,
            error: result.as_ref().err().map(ToString::to_string),
            ok: result.is_ok(),
            sha256: self.head().sha256.clone(),
            ts: unix_now(),
        });
    }
}

/// A rollout command, the signed body of a [`SignedCommand`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadCommand {
    /// The board it is for: a command signed for one board is refused by another.
    pub board: String,
    /// Echoed in the answer; a board refuses an id it has already seen.
    pub id: String,
    /// Unix seconds when it was signed.
    pub issued: u64,
    pub action: Action,
    /// Install: the head file's sha256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Install: the head file's text...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<String>,
    /// ...or an https:// URL to fetch it from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// A board's answer to a [`HeadCommand`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadAnswer {
    pub board: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub id: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// The head running after the command.
    pub sha256: String,
}

/// `<hex HMAC>\n<JSON body>`: what goes on the wire.
#[derive(Debug, Clone)]
pub struct SignedCommand(pub Vec<u8>);

impl SignedCommand {
    pub fn sign(token: &Token, command: &HeadCommand) -> SignedCommand {
        let body = serde_json::to_vec(command).expect("a command serializes");
        let mut mac = token.mac();
        mac.update(&body);
        let mut out = hex::encode(mac.finalize().into_bytes()).into_bytes();
        out.push(b'\n');
        out.extend_from_slice(&body);
        SignedCommand(out)
    }
}

/// Checks signed commands for one board: the HMAC, the board, the age and replays.
pub struct CommandGate {
    board: String,
    token: Token,
    seen: VecDeque<String>,
}

impl CommandGate {
    pub fn new(board: String, token: Token) -> CommandGate {
        CommandGate {
            board,
            token,
            seen: VecDeque::new(),
        }
    }

    /// The command in `payload` if it is signed under the token, for this board, recent, and new.
    pub fn open(&mut self, payload: &[u8]) -> Result<HeadCommand, RolloutError> {
        let refuse = |why: &str| RolloutError::Command(why.to_string());
        let split = payload.iter().position(|&b| b == b'\n');
        let (mac_hex, body) = match split {
            Some(i) => (&payload[..i], &payload[i + 1..]),
            None => return Err(refuse("not a signed command (no HMAC line)")),
        };
        let tag = std::str::from_utf8(mac_hex)
            .ok()
            .and_then(|t| hex::decode(t.trim()).ok())
            .ok_or_else(|| refuse("the HMAC line is not hex"))?;
        let mut mac = self.token.mac();
        mac.update(body);
        mac.verify_slice(&tag)
            .map_err(|_| refuse("bad HMAC (not signed with this board's token)"))?;
        let cmd: HeadCommand = serde_json::from_slice(body)
            .map_err(|e| RolloutError::Command(format!("unreadable command: {e}")))?;
        if cmd.board != self.board {
            return Err(RolloutError::Command(format!(
                "the command is for board '{}', this is '{}'",
                cmd.board, self.board
            )));
        }
        if unix_now().abs_diff(cmd.issued) > COMMAND_MAX_AGE_S {
            return Err(refuse(
                "issued more than 5 minutes away from this board's clock",
            ));
        }
        if self.seen.contains(&cmd.id) {
            return Err(RolloutError::Command(format!(
                "command id {} was already executed (a replay)",
                cmd.id
            )));
        }
        if self.seen.len() >= REMEMBERED_IDS {
            self.seen.pop_front();
        }
        self.seen.push_back(cmd.id.clone());
        Ok(cmd)
    }
}

/// Runs an opened command against the service; always an answer, never an error.
pub fn execute(svc: &Service, cmd: &HeadCommand) -> HeadAnswer {
    let result = match cmd.action {
        Action::Rollback => svc.rollback(),
        Action::Install => match (&cmd.head, &cmd.url) {
            (Some(text), None) => {
                svc.install_from(HeadSource::Bytes(text.as_bytes()), cmd.sha256.as_deref())
            }
            (None, Some(url)) => svc.install_from(HeadSource::Url(url), cmd.sha256.as_deref()),
            _ => {
                let e =
                    RolloutError::Command("install needs exactly one of `head` and `url`".into());
                svc.record_refusal(Action::Install, &e);
                Err(e)
            }
        },
    };
    answer(svc, &cmd.board, &cmd.id, result)
}

/// The outcome of an install or a rollback, as HTTP answers it (and MQTT, inside [`HeadAnswer`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutAnswer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub ok: bool,
    /// The head it replaced, when it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// The head running after it (the old one when it was refused).
    pub sha256: String,
}

impl RolloutAnswer {
    pub fn new(svc: &Service, result: Result<HeadChange, RolloutError>) -> RolloutAnswer {
        let (ok, previous, error) = match result {
            Ok(change) => (true, Some(change.previous), None),
            Err(e) => (false, None, Some(e.to_string())),
        };
        RolloutAnswer {
            error,
            ok,
            previous,
            sha256: svc.head().sha256.clone(),
        }
    }
}

/// The answer for `result` (the running head's sha256 either way).
pub fn answer(
    svc: &Service,
    board: &str,
    id: &str,
    result: Result<HeadChange, RolloutError>,
) -> HeadAnswer {
    let RolloutAnswer {
        error,
        ok,
        previous,
        sha256,
    } = RolloutAnswer::new(svc, result);
    HeadAnswer {
        board: board.to_string(),
        error,
        id: id.to_string(),
        ok,
        previous,
        sha256,
    }
}

impl Service {
    /// Records a refusal that happened before the head reached [`Service::install_head`].
    pub fn record_refusal(&self, action: Action, e: &RolloutError) {
        lock(&self.stats).rollouts_refused += 1;
        log::error!("head {action:?} refused, keeping the running head: {e}");
        *lock(&self.rollout) = Some(RolloutStatus {
            action,
            error: Some(e.to_string()),
            ok: false,
            sha256: self.head().sha256.clone(),
            ts: unix_now(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> Token {
        Token::from_secret("0123456789abcdef-board-token")
    }

    fn command(board: &str, id: &str) -> HeadCommand {
        HeadCommand {
            board: board.into(),
            id: id.into(),
            issued: unix_now(),
            action: Action::Rollback,
            sha256: None,
            head: None,
            url: None,
        }
    }

    #[test]
    fn gate_opens_only_signed_recent_new_commands_for_its_board() {
        let mut gate = CommandGate::new("a".into(), token());
        let signed = SignedCommand::sign(&token(), &command("a", "1"));
        assert_eq!(gate.open(&signed.0).unwrap(), command("a", "1"));
        let replay = gate.open(&signed.0).unwrap_err().to_string();
        assert!(replay.contains("replay"), "{replay}");
        let other_board = SignedCommand::sign(&token(), &command("b", "2"));
        assert!(gate.open(&other_board.0).is_err());
        let wrong_key = SignedCommand::sign(
            &Token::from_secret("another-token-of-16+"),
            &command("a", "3"),
        );
        let e = gate.open(&wrong_key.0).unwrap_err().to_string();
        assert!(e.contains("bad HMAC"), "{e}");
        let mut tampered = SignedCommand::sign(&token(), &command("a", "4")).0;
        let last = tampered.len() - 2;
        tampered[last] ^= 1;
        assert!(gate.open(&tampered).is_err());
        let mut old = command("a", "5");
        old.issued -= COMMAND_MAX_AGE_S + 10;
        assert!(gate.open(&SignedCommand::sign(&token(), &old).0).is_err());
    }

    #[test]
    fn previous_sits_beside_the_head_file() {
        assert_eq!(
            previous_path(Path::new("/var/lib/edge-mnv2/head/head.json")),
            Path::new("/var/lib/edge-mnv2/head/head.json.previous")
        );
    }
}
