//! One module per `callsign` subcommand group.

pub mod audio;
pub mod demo;
pub mod keys;
pub mod link;
pub mod org;
pub mod sim;
pub mod ticket;
pub mod up;

use std::path::PathBuf;

use anyhow::{Context, Result};

/// `identity.key` in [`config_dir`].
pub fn default_key_path() -> Result<PathBuf> {
    Ok(config_dir()?.join("identity.key"))
}

/// Where the CLI keeps its configuration: `CALLSIGN_CONFIG_DIR` if set, else
/// `~/.config/callsign` on Linux, `%APPDATA%\Callsign\callsign\config` on Windows, the platform
/// equivalent elsewhere. The variable works the same on every platform (Windows finds its
/// folders by the user's profile, not by environment variables), so scripts and tests can keep
/// a run away from the user's real key.
pub fn config_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CALLSIGN_CONFIG_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let dirs = directories::ProjectDirs::from("org", "Callsign", "callsign")
        .context("cannot find a home directory for the default key path; pass a path")?;
    Ok(dirs.config_dir().to_path_buf())
}

/// Resolves an optional user-given key path to the default.
pub fn key_path(given: Option<PathBuf>) -> Result<PathBuf> {
    match given {
        Some(path) => Ok(path),
        None => default_key_path(),
    }
}
