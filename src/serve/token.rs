//! The board's shared secret ([`Token`]), read from its token file: the key of the HMAC-SHA256
//! that signs head rollout commands. Its own file so that the settings (`topics`) and the
//! commands (`rollout`) can both hold one without importing each other.

use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The board's shared secret, from its token file.
#[derive(Clone)]
pub struct Token(Vec<u8>);

impl Token {
    #[cfg(test)]
    pub(super) fn from_bytes(b: &[u8]) -> Token {
        Token(b.to_vec())
    }
}

impl Token {
    /// Reads a token file: its content, surrounding whitespace trimmed, at least 16 bytes.
    pub fn load(path: &Path) -> anyhow::Result<Token> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: cannot read the token file: {e}", path.display()))?;
        let token = text.trim();
        if token.len() < 16 {
            anyhow::bail!(
                "{}: the token is shorter than 16 characters (make one with `head -c 32 /dev/urandom | base64`)",
                path.display()
            );
        }
        Ok(Token(token.as_bytes().to_vec()))
    }

    pub(super) fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length")
    }
}
