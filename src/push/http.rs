//! `push-head --url`: a board's HTTP API as the transport of its commands.

use std::time::Duration;

use serde::Deserialize;

use super::send::{BoardCommand, HeadTransport};
use crate::serve::auth::Token;
use crate::serve::commands::{HeadAnswer, HeadCommand, RolloutAnswer};
use crate::serve::rollout::Action;

/// `push-head --url`: each board's HTTP API, at `https://HOST:PORT` (a TLS proxy in front of
/// `serve`) or `http://` on this machine. The boards are the URLs; every board gets its request at
/// once, on its own thread.
pub struct HttpTransport {
    authorization: String,
}

/// A board URL `push-head --url` accepts: https anywhere; plain http only to loopback, since the
/// bearer token would cross the network in clear text.
pub fn check_board_url(url: &str) -> anyhow::Result<()> {
    crate::fetch::check_url(url).map_err(|e| anyhow::anyhow!("--url {e}"))
}

/// An error body (`{"error": …}`), as the API answers what it refuses before any rollout.
#[derive(Deserialize)]
struct ErrorBody {
    error: String,
}

impl HttpTransport {
    pub fn new(token: &Token) -> HttpTransport {
        HttpTransport {
            authorization: token.authorization(),
        }
    }

    fn send(&self, base: &str, cmd: &HeadCommand, timeout: Duration) -> anyhow::Result<HeadAnswer> {
        check_board_url(base)?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            // A redirect would take the token (or the head) somewhere else: refused.
            .max_redirects(0)
            .http_status_as_error(false)
            .user_agent(concat!("edge-mnv2/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let base = base.trim_end_matches('/');
        let sent = match (cmd.action, &cmd.head, &cmd.url) {
            (Action::Rollback, _, _) => agent
                .post(format!("{base}/rollback"))
                .header("Authorization", &self.authorization)
                .send_empty(),
            (Action::Install, Some(text), _) => agent
                .put(format!(
                    "{base}/head?sha256={}",
                    cmd.sha256.as_deref().unwrap_or_default()
                ))
                .header("Authorization", &self.authorization)
                .header("Content-Type", "application/json")
                .send(text.as_bytes()),
            (Action::Install, None, url) => agent
                .put(format!("{base}/head"))
                .header("Authorization", &self.authorization)
                .header("Content-Type", "application/json")
                .send(
                    serde_json::to_vec(&serde_json::json!({
                        "url": url.as_deref().unwrap_or_default(),
                        "sha256": cmd.sha256.as_deref().unwrap_or_default(),
                    }))
                    .expect("a JSON object serializes"),
                ),
        };
        let mut response = sent.map_err(|e| anyhow::anyhow!("{e}"))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .read_to_string()
            .map_err(|e| anyhow::anyhow!("HTTP {status}, reading the answer: {e}"))?;
        if let Ok(a) = serde_json::from_str::<RolloutAnswer>(&body) {
            return Ok(HeadAnswer {
                board: cmd.board.clone(),
                error: a.error,
                id: cmd.id.clone(),
                ok: a.ok,
                previous: a.previous,
                sha256: a.sha256,
            });
        }
        match serde_json::from_str::<ErrorBody>(&body) {
            Ok(e) => anyhow::bail!("HTTP {status}: {}", e.error),
            Err(_) => anyhow::bail!(
                "HTTP {status}: not an edge-mnv2 answer: {}",
                body.chars().take(120).collect::<String>().trim()
            ),
        }
    }
}

impl HeadTransport for HttpTransport {
    fn push(
        &mut self,
        commands: &[BoardCommand],
        timeout: Duration,
    ) -> Vec<anyhow::Result<HeadAnswer>> {
        let this = &*self;
        std::thread::scope(|scope| {
            let running: Vec<_> = commands
                .iter()
                .map(|c| scope.spawn(move || this.send(&c.board, &c.command, timeout)))
                .collect();
            running
                .into_iter()
                .map(|t| {
                    t.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("the request thread panicked")))
                })
                .collect()
        })
    }
}
