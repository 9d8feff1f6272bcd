//! What `push-head` sends: one signed command per board ([`BoardCommand`]), made from the head
//! file or URL ([`Payload`]), and the [`HeadTransport`] that carries them.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;

use crate::head::head_file_path;
use crate::loader;
use crate::serve::auth::Token;
use crate::serve::commands::{HeadAnswer, HeadCommand, SignedCommand};
use crate::serve::rollout::Action;

/// One board's signed command, and what to match its answer by.
pub struct BoardCommand {
    pub board: String,
    pub id: String,
    pub signed: SignedCommand,
    /// What `signed` carries, for transports that authenticate otherwise (HTTP's bearer token).
    pub command: HeadCommand,
}

/// How commands reach boards. Answers come back in the order of `commands`; a board that does not
/// answer within `timeout` gets an error, not a hang.
pub trait HeadTransport {
    fn push(
        &mut self,
        commands: &[BoardCommand],
        timeout: Duration,
    ) -> Vec<anyhow::Result<HeadAnswer>>;
}

/// What to send.
pub enum Payload {
    /// The head file's text (read and checked locally first).
    Inline {
        text: String,
        sha256: String,
    },
    /// An https:// URL the boards fetch the head from, and its sha256.
    Url {
        url: String,
        sha256: String,
    },
    Rollback,
}

impl Payload {
    /// The head in `dir_or_file` (as `--head` takes it), checked to be a readable head file.
    pub fn from_head(dir_or_file: &Path) -> anyhow::Result<Payload> {
        let path = head_file_path(dir_or_file);
        // The bytes that were checked are the bytes sent.
        let head = loader::head(&path)?;
        let text = String::from_utf8(head.bytes)
            .with_context(|| format!("{}: not text", path.display()))?;
        Ok(Payload::Inline {
            text,
            sha256: head.sha256,
        })
    }
}

/// The signed command for each board.
pub fn commands(token: &Token, boards: &[String], payload: &Payload) -> Vec<BoardCommand> {
    let issued = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    boards
        .iter()
        .enumerate()
        .map(|(i, board)| {
            // Unique per run and board: boards refuse an id they have seen (replays).
            let id = format!("{issued}-{}-{i}", std::process::id());
            let (action, sha256, head, url) = match payload {
                Payload::Inline { text, sha256 } => (
                    Action::Install,
                    Some(sha256.clone()),
                    Some(text.clone()),
                    None,
                ),
                Payload::Url { url, sha256 } => (
                    Action::Install,
                    Some(sha256.clone()),
                    None,
                    Some(url.clone()),
                ),
                Payload::Rollback => (Action::Rollback, None, None, None),
            };
            let cmd = HeadCommand {
                board: board.clone(),
                id: id.clone(),
                issued,
                action,
                sha256,
                head,
                url,
            };
            BoardCommand {
                board: board.clone(),
                id,
                signed: SignedCommand::sign(token, &cmd),
                command: cmd,
            }
        })
        .collect()
}
