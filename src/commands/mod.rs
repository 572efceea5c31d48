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

/// `~/.config/callsign/identity.key` on Linux, the platform equivalent elsewhere.
pub fn default_key_path() -> Result<PathBuf> {
    let dirs = directories::ProjectDirs::from("org", "Callsign", "callsign")
        .context("cannot find a home directory for the default key path; pass a path")?;
    Ok(dirs.config_dir().join("identity.key"))
}

/// Resolves an optional user-given key path to the default.
pub fn key_path(given: Option<PathBuf>) -> Result<PathBuf> {
    match given {
        Some(path) => Ok(path),
        None => default_key_path(),
    }
}
