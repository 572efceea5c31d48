//! `callsign keys`: create and inspect key files.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use callsign_keys::{KdfParams, KeyFile, KeyFileError, NodeKeys};
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::passphrase;

/// Key file commands.
#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Generate a new identity and Noise key and write them to a key file.
    New(NewArgs),
    /// Show the peer id and Noise public key stored in a key file.
    Show(ShowArgs),
}

/// Arguments of `keys new`.
#[derive(Args, Debug)]
pub struct NewArgs {
    /// Where to write the key [default: the platform config dir, e.g. ~/.config/callsign/identity.key]
    #[arg(long, env = "CALLSIGN_KEY")]
    pub out: Option<PathBuf>,
    /// Encrypt the key with the passphrase held in this environment variable.
    #[arg(long, value_name = "VAR", conflicts_with = "ask_passphrase")]
    pub passphrase_env: Option<String>,
    /// Ask for a passphrase on the terminal.
    #[arg(long)]
    pub ask_passphrase: bool,
    /// Replace an existing key file (the old identity is lost).
    #[arg(long)]
    pub force: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `keys show`.
#[derive(Args, Debug)]
pub struct ShowArgs {
    /// Key file to read [default: the platform config dir, e.g. ~/.config/callsign/identity.key]
    #[arg(env = "CALLSIGN_KEY")]
    pub path: Option<PathBuf>,
    /// Passphrase for an encrypted key, read from this environment variable.
    #[arg(long, value_name = "VAR")]
    pub passphrase_env: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What `keys show` and `keys new` report.
#[derive(Serialize)]
struct KeyReport {
    peer_id: String,
    noise_public_key: String,
    key_file_version: u8,
    encrypted: bool,
    path: String,
}

pub fn run(cmd: KeysCommand) -> Result<()> {
    match cmd {
        KeysCommand::New(args) => new(args),
        KeysCommand::Show(args) => show(args),
    }
}

fn new(args: NewArgs) -> Result<()> {
    let path = super::key_path(args.out)?;
    // Checked before asking for a passphrase, so the user is not prompted for nothing.
    if !args.force && path.exists() {
        return Err(KeyFileError::AlreadyExists(path)).context("cannot create key");
    }
    let passphrase = match (&args.passphrase_env, args.ask_passphrase) {
        (Some(var), _) => Some(passphrase::from_env(var)?),
        (None, true) => Some(passphrase::prompt_new()?),
        (None, false) => None,
    };
    let keys = NodeKeys::generate(&mut rand::rngs::OsRng);
    let file = KeyFile::seal(
        &keys,
        passphrase
            .as_ref()
            .map(|p| (p.as_bytes(), KdfParams::default())),
        &mut rand::rngs::OsRng,
    )?;
    file.save(&path, args.force)
        .with_context(|| format!("cannot write key file {}", path.display()))?;
    if passphrase.is_none() && !args.json {
        eprintln!(
            "note: the key is not passphrase-protected (see --passphrase-env, --ask-passphrase)"
        );
    }
    print_report(&report(&keys, &file, &path), args.json)
}

fn show(args: ShowArgs) -> Result<()> {
    let path = super::key_path(args.path)?;
    let (keys, file) = unlock(&path, args.passphrase_env.as_deref())?;
    print_report(&report(&keys, &file, &path), args.json)
}

/// Loads and unlocks a key file, asking for the passphrase on the terminal if needed.
pub fn unlock(path: &Path, passphrase_env: Option<&str>) -> Result<(NodeKeys, KeyFile)> {
    let context = || format!("cannot read key file {}", path.display());
    let file = KeyFile::load(path).with_context(context)?;
    let passphrase = match passphrase_env {
        Some(var) => Some(passphrase::from_env(var)?),
        None if file.is_encrypted() => passphrase::prompt("Passphrase: ")?,
        None => None,
    };
    let keys = file
        .unlock(passphrase.as_ref().map(|p| p.as_bytes()))
        .map_err(|e| match e {
            KeyFileError::PassphraseRequired => {
                anyhow::anyhow!("{e}; pass --passphrase-env VAR or run on a terminal")
            }
            other => other.into(),
        })
        .with_context(context)?;
    Ok((keys, file))
}

fn report(keys: &NodeKeys, file: &KeyFile, path: &Path) -> KeyReport {
    KeyReport {
        peer_id: keys.identity.peer_id().to_string(),
        noise_public_key: keys.noise.public().to_base64(),
        key_file_version: file.version(),
        encrypted: file.is_encrypted(),
        path: path.display().to_string(),
    }
}

fn print_report(report: &KeyReport, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        println!("peer id:          {}", report.peer_id);
        println!("noise public key: {}", report.noise_public_key);
        println!(
            "key file:         {} (version {}, {})",
            report.path,
            report.key_file_version,
            if report.encrypted {
                "passphrase-protected"
            } else {
                "not encrypted"
            }
        );
    }
    Ok(())
}
