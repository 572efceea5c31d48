//! Where passphrases come from: an environment variable named by the user, or the terminal.

use std::io::IsTerminal;

use anyhow::{bail, Context, Result};
use zeroize::Zeroizing;

/// Reads the passphrase from the environment variable `var`.
pub fn from_env(var: &str) -> Result<Zeroizing<String>> {
    let value = std::env::var(var)
        .with_context(|| format!("cannot read passphrase from environment variable {var}"))?;
    if value.is_empty() {
        bail!("passphrase in environment variable {var} is empty");
    }
    Ok(Zeroizing::new(value))
}

/// Asks on the terminal, if there is one.
pub fn prompt(question: &str) -> Result<Option<Zeroizing<String>>> {
    if !std::io::stdin().is_terminal() {
        return Ok(None);
    }
    let value = rpassword::prompt_password(question).context("cannot read passphrase")?;
    Ok(Some(Zeroizing::new(value)))
}

/// Asks twice for a new passphrase and insists the answers match.
pub fn prompt_new() -> Result<Zeroizing<String>> {
    let first = prompt("New passphrase: ")?
        .context("--ask-passphrase needs a terminal; use --passphrase-env VAR in scripts")?;
    if first.is_empty() {
        bail!("passphrase is empty");
    }
    let second = prompt("Repeat passphrase: ")?.context("no terminal")?;
    if *first != *second {
        bail!("passphrases do not match");
    }
    Ok(first)
}
