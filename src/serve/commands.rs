//! Rollout commands from afar ([`HeadCommand`]) travel signed: `<hex HMAC-SHA256 of the
//! body>\n<JSON body>` under the board's token (the sha256 of a head proves its integrity, the
//! HMAC proves who sent it). A body names its board and the time it was issued, and its id is
//! remembered ([`CommandGate`]), so a command recorded off the wire cannot be replayed to another
//! board, later, or twice. The MQTT transport carries [`SignedCommand`]s and [`HeadAnswer`]s;
//! HTTP (`PUT /head`, `POST /rollback`, behind the bearer token) calls
//! [`Service::install_from`] and [`Service::rollback`] directly and answers a [`RolloutAnswer`].
//! Both sides use these types: the service here, and `push-head` ([`crate::push`]).

use std::collections::VecDeque;

use hmac::Mac;
use serde::{Deserialize, Serialize};

use super::auth::Token;
use super::rollout::{unix_now, Action, HeadChange, HeadSource, RolloutError};
use super::service::Service;

/// A signed command older (or further in the future) than this is refused.
pub const COMMAND_MAX_AGE_S: u64 = 300;
/// How many command ids a board remembers to refuse replays within the age window.
const REMEMBERED_IDS: usize = 256;

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
}
