//! Who may change the service or make it infer: the board's token ([`Token`]), read once from its
//! file and used both ways — the HTTP bearer credential, compared in constant time, and the key of
//! the HMAC-SHA256 that signs MQTT head rollout commands — and the start-up rule that a service
//! reachable beyond this machine has one ([`check_exposure`]).
//!
//! The rule at request time lives in one place, [`needs_token`]: every method but `GET` (state
//! changes and inference) needs the token when one is configured. An endpoint added later is
//! covered by choosing its method, with nothing to remember.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Shortest token accepted: guessing 16 random characters over HTTP is out of reach.
pub const MIN_TOKEN_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{}: cannot read token file: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: token file is empty", path.display())]
    Empty { path: PathBuf },
    #[error(
        "{}: token file is readable by every user (mode {mode:o}): `chmod 600` it",
        path.display()
    )]
    WorldReadable { path: PathBuf, mode: u32 },
    #[error(
        "{}: the token must be one line of at least {MIN_TOKEN_LEN} visible ASCII characters (no spaces)",
        path.display()
    )]
    Malformed { path: PathBuf },
}

/// The board's token. Bearer checks compare SHA-256 digests (what a client presents is hashed),
/// so they take the same time whatever its length or how much of it is right; the secret itself is
/// kept only because the HMAC needs it as its key.
#[derive(Clone)]
pub struct Token {
    secret: Vec<u8>,
    digest: [u8; 32],
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

fn valid_secret(secret: &str) -> bool {
    secret.len() >= MIN_TOKEN_LEN && secret.bytes().all(|b| b.is_ascii_graphic())
}

impl Token {
    /// The token in `path`: one line (surrounding whitespace is ignored), not readable by every
    /// user, at least [`MIN_TOKEN_LEN`] visible ASCII characters.
    pub fn load(path: &Path) -> Result<Token, TokenError> {
        let read_err = |source| TokenError::Read {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read_err)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o004 != 0 {
                return Err(TokenError::WorldReadable {
                    path: path.to_path_buf(),
                    mode,
                });
            }
        }
        #[cfg(not(unix))]
        let _ = meta;
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        let secret = text.trim();
        if secret.is_empty() {
            return Err(TokenError::Empty {
                path: path.to_path_buf(),
            });
        }
        if !valid_secret(secret) {
            return Err(TokenError::Malformed {
                path: path.to_path_buf(),
            });
        }
        Ok(Token::from_secret(secret))
    }

    /// A token from its secret text (tests, fuzzing); [`Token::load`] checks the text first.
    pub fn from_secret(secret: &str) -> Token {
        Token {
            secret: secret.as_bytes().to_vec(),
            digest: Sha256::digest(secret.as_bytes()).into(),
        }
    }

    /// The `Authorization` header value that carries this token (`push-head --url`).
    pub fn authorization(&self) -> String {
        format!("Bearer {}", String::from_utf8_lossy(&self.secret))
    }

    /// A fresh HMAC-SHA256 keyed with the secret: what signs and checks rollout commands.
    pub(super) fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes keys of any length")
    }

    /// Whether an `Authorization` header value is `Bearer <this token>`.
    pub fn accepts(&self, authorization: &[u8]) -> bool {
        let Some(presented) = bearer(authorization) else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(presented).into();
        digest.ct_eq(&self.digest).into()
    }
}

/// The credentials of a `Bearer` authorization value (the scheme is case-insensitive).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || rest.first() != Some(&b' ') {
        return None;
    }
    let rest = rest.trim_ascii();
    (!rest.is_empty()).then_some(rest)
}

/// Whether a request with this method needs the token (when one is configured): every method
/// but `GET`, i.e. every state change and every inference.
pub fn needs_token(method: &str) -> bool {
    method != "GET"
}

/// Refuses a listen address that reaches beyond loopback when there is no token, unless the
/// operator opted out (`--insecure-no-token`). `addrs` are what `listen` resolves or bound to.
pub fn check_exposure(
    listen: &str,
    addrs: &[SocketAddr],
    token: Option<&Token>,
    insecure_no_token: bool,
) -> anyhow::Result<()> {
    let beyond = addrs.iter().find(|a| !a.ip().is_loopback());
    match beyond {
        Some(a) if token.is_none() && !insecure_no_token => anyhow::bail!(
            "--listen {listen}: {} is reachable beyond this machine and POST /classify and /reload \
             would be open to it: give --token-file FILE (or `token_file` in the config), or \
             --insecure-no-token",
            a.ip()
        ),
        _ => Ok(()),
    }
}

/// [`check_exposure`] on what `listen` resolves to (before the model is loaded, to fail fast).
pub fn check_listen(
    listen: &str,
    token: Option<&Token>,
    insecure_no_token: bool,
) -> anyhow::Result<()> {
    let addrs: Vec<SocketAddr> = listen
        .to_socket_addrs()
        .map_err(|e| anyhow::anyhow!("--listen {listen}: {e}"))?
        .collect();
    check_exposure(listen, &addrs, token, insecure_no_token)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef-token";

    #[test]
    fn only_the_exact_bearer_token_is_accepted() {
        let t = Token::from_secret(SECRET);
        assert!(t.accepts(format!("Bearer {SECRET}").as_bytes()));
        assert!(t.accepts(format!("bearer  {SECRET} ").as_bytes()));
        for wrong in [
            format!("Bearer {SECRET}x"),
            format!("Bearer {}", &SECRET[1..]),
            format!("Basic {SECRET}"),
            format!("Bearer{SECRET}"),
            SECRET.to_string(),
            "Bearer ".into(),
            String::new(),
        ] {
            assert!(!t.accepts(wrong.as_bytes()), "{wrong:?}");
        }
    }

    #[test]
    fn only_get_is_open() {
        assert!(!needs_token("GET"));
        for m in ["POST", "PUT", "DELETE", "PATCH", "HEAD", "get", "X"] {
            assert!(needs_token(m), "{m}");
        }
    }

    #[test]
    fn token_files_are_checked_and_errors_name_the_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        let write = |text: &str, mode: u32| {
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        let err = |text: &str, mode: u32| {
            write(text, mode);
            let e = Token::load(&p).unwrap_err().to_string();
            assert!(
                e.starts_with(&p.display().to_string()) && !e.contains('\n'),
                "{e}"
            );
            e
        };
        write(&format!("{SECRET}\n"), 0o600);
        assert!(Token::load(&p)
            .unwrap()
            .accepts(format!("Bearer {SECRET}").as_bytes()));
        assert!(err(" \n", 0o600).contains("empty"));
        assert!(err(&format!("{SECRET}\n"), 0o644).contains("readable by every user"));
        assert!(err("short", 0o600).contains("at least 16"));
        assert!(err("has a space in the middle", 0o640).contains("visible ASCII"));
        std::fs::remove_file(&p).unwrap();
        assert!(Token::load(&p)
            .unwrap_err()
            .to_string()
            .contains("cannot read token file"));
    }

    #[test]
    fn beyond_loopback_needs_a_token_or_the_opt_out() {
        let t = Token::from_secret(SECRET);
        assert!(check_listen("127.0.0.1:0", None, false).is_ok());
        assert!(check_listen("[::1]:0", None, false).is_ok());
        let e = check_listen("0.0.0.0:8080", None, false).unwrap_err();
        assert!(e.to_string().contains("--token-file"), "{e}");
        assert!(check_listen("0.0.0.0:8080", Some(&t), false).is_ok());
        assert!(check_listen("0.0.0.0:8080", None, true).is_ok());
    }
}
