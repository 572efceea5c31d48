//! The bearer token that guards the API: random, kept in a file only its owner can read.

use std::io::Write;
use std::path::Path;

use rand::RngCore;

use crate::ApiError;

/// A bearer token: 32 random bytes, written as 64 hex digits.
#[derive(Clone)]
pub struct ApiToken(String);

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(..)")
    }
}

/// Tokens shorter than this are refused: a guessable token is no lock.
pub const MIN_TOKEN_LEN: usize = 16;

impl ApiToken {
    /// A fresh token from the OS's random source.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// A token the user chose (for a dashboard configured ahead of time).
    pub fn new(token: &str) -> Result<Self, ApiError> {
        let token = token.trim();
        if token.len() < MIN_TOKEN_LEN || !token.chars().all(|c| c.is_ascii_graphic()) {
            return Err(ApiError::Config(format!(
                "an API token needs at least {MIN_TOKEN_LEN} printable characters and no spaces"
            )));
        }
        Ok(Self(token.to_string()))
    }

    /// The token's text, for a client.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Writes the token to `path`, readable and writable by its owner only (mode 0600 on
    /// Unix, an owner-only DACL on Windows: `callsign_keys::private_file`), replacing what was
    /// there.
    pub fn write_to(&self, path: &Path) -> Result<(), ApiError> {
        let io =
            |e: std::io::Error| ApiError::Config(format!("token file {}: {e}", path.display()));
        // Remove first: an existing file keeps its old (possibly wider) mode when rewritten.
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
            _ => {}
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(io)?;
        // Before the token is written (on Unix the mode above already holds).
        #[cfg(not(unix))]
        callsign_keys::private_file::restrict_file(path).map_err(io)?;
        file.write_all(self.0.as_bytes()).map_err(io)?;
        file.write_all(b"\n").map_err(io)?;
        file.sync_all().map_err(io)
    }

    /// Whether `presented` is this token, in time that does not depend on where they differ.
    pub fn matches(&self, presented: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), presented.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_differ_and_match_only_themselves() {
        let (a, b) = (ApiToken::generate(), ApiToken::generate());
        assert_eq!(a.as_str().len(), 64);
        assert_ne!(a.as_str(), b.as_str());
        assert!(a.matches(a.as_str()));
        assert!(!a.matches(b.as_str()));
        assert!(!a.matches(""));
        assert!(!a.matches(&a.as_str()[..63]));
    }

    #[test]
    fn short_or_spaced_tokens_are_refused() {
        assert!(ApiToken::new("short").is_err());
        assert!(ApiToken::new("has a space in the middle").is_err());
        assert!(ApiToken::new("0123456789abcdef").is_ok());
    }

    #[test]
    fn the_token_file_is_private() {
        use callsign_keys::private_file::owner_only;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.token");
        // An old token file open to everyone (on Windows: inheriting the folder's DACL).
        std::fs::write(&path, "old").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        assert!(!owner_only(&path).unwrap());
        let token = ApiToken::generate();
        token.write_to(&path).unwrap();
        assert!(owner_only(&path).unwrap());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap().trim(),
            token.as_str()
        );
    }
}
