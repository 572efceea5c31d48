//! `callsign ticket`: create and decode invite tickets.

use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use callsign_keys::{InviteGrant, Multiaddr, Ticket};
use clap::{Args, Subcommand};
use rand::RngCore;
use serde::Serialize;

/// Ticket commands.
#[derive(Subcommand, Debug)]
pub enum TicketCommand {
    /// Create an invite ticket for the org whose root key is the given key file.
    New(NewArgs),
    /// Decode and validate a ticket: checksum, version and grant signature.
    Decode(DecodeArgs),
}

/// Arguments of `ticket new`.
#[derive(Args, Debug)]
pub struct NewArgs {
    /// The org root key file [default: the platform config dir, e.g. ~/.config/callsign/identity.key]
    #[arg(long, env = "CALLSIGN_KEY")]
    pub key: Option<PathBuf>,
    /// Passphrase for an encrypted key, read from this environment variable.
    #[arg(long, value_name = "VAR")]
    pub passphrase_env: Option<String>,
    /// A bootstrap address to put in the ticket (repeatable), e.g. /ip4/203.0.113.5/udp/4433/quic-v1
    #[arg(long = "addr", value_name = "MULTIADDR")]
    pub addrs: Vec<Multiaddr>,
    /// Sign a grant admitting the holder with this role.
    #[arg(long)]
    pub role: Option<String>,
    /// How long the grant stays valid, e.g. 7d, 12h, 30m.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration, requires = "role")]
    pub expires_in: Duration,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `ticket decode`.
#[derive(Args, Debug)]
pub struct DecodeArgs {
    /// The ticket text, or `-` to read it from standard input.
    pub ticket: String,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct TicketReport {
    ticket: String,
    version: u8,
    org: String,
    bootstrap: Vec<String>,
    grant: Option<GrantReport>,
}

#[derive(Serialize)]
struct GrantReport {
    role: String,
    expires_at: u64,
    expires_at_rfc3339: String,
    expired: bool,
    issuer: String,
    issuer_is_org_root: bool,
    nonce: String,
    signature_valid: bool,
}

pub fn run(cmd: TicketCommand) -> Result<()> {
    match cmd {
        TicketCommand::New(args) => new(args),
        TicketCommand::Decode(args) => decode(args),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn new(args: NewArgs) -> Result<()> {
    let path = super::key_path(args.key)?;
    let (keys, _) = super::keys::unlock(&path, args.passphrase_env.as_deref())?;
    let org = keys.identity.public();
    let grant = match args.role {
        Some(role) => {
            let mut nonce = [0u8; 16];
            rand::rngs::OsRng.fill_bytes(&mut nonce);
            let expires_at = unix_now().saturating_add(args.expires_in.as_secs());
            Some(
                InviteGrant::issue(&keys.identity, org, role, expires_at, nonce)
                    .context("cannot sign invite grant")?,
            )
        }
        None => None,
    };
    let ticket = Ticket {
        org,
        bootstrap: args.addrs,
        grant,
    };
    let text = ticket.encode().context("cannot create ticket")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report(&ticket, text))?);
    } else {
        println!("{text}");
    }
    Ok(())
}

fn decode(args: DecodeArgs) -> Result<()> {
    let text = if args.ticket == "-" {
        let mut text = String::new();
        std::io::stdin()
            .take(64 * 1024)
            .read_to_string(&mut text)
            .context("cannot read ticket from standard input")?;
        text
    } else {
        args.ticket
    };
    if text.trim().is_empty() {
        bail!("no ticket given");
    }
    let ticket = Ticket::decode(&text).context("invalid ticket")?;
    let report = report(&ticket, text.trim().to_string());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("org:       {}", report.org);
    if report.bootstrap.is_empty() {
        println!("bootstrap: (none: find members on the local network)");
    }
    for (i, addr) in report.bootstrap.iter().enumerate() {
        let label = if i == 0 { "bootstrap:" } else { "" };
        println!("{label:<10} {addr}");
    }
    match &report.grant {
        None => println!("grant:     none (joining needs an admin's approval)"),
        Some(grant) => {
            println!("grant:     role {}", grant.role);
            println!(
                "           expires {}{}",
                grant.expires_at_rfc3339,
                if grant.expired { " (EXPIRED)" } else { "" }
            );
            println!(
                "           issued by {}{}",
                grant.issuer,
                if grant.issuer_is_org_root {
                    " (org root)"
                } else {
                    " (must be an admin in the org charter)"
                }
            );
            println!("           signature valid, nonce {}", grant.nonce);
        }
    }
    Ok(())
}

fn report(ticket: &Ticket, text: String) -> TicketReport {
    let now = unix_now();
    TicketReport {
        ticket: text,
        version: callsign_keys::TICKET_VERSION,
        org: ticket.org.to_string(),
        bootstrap: ticket.bootstrap.iter().map(|a| a.to_string()).collect(),
        grant: ticket.grant.as_ref().map(|grant| GrantReport {
            role: grant.role.clone(),
            expires_at: grant.expires_at,
            expires_at_rfc3339: UNIX_EPOCH
                .checked_add(Duration::from_secs(grant.expires_at))
                .map(|t| humantime::format_rfc3339_seconds(t).to_string())
                .unwrap_or_else(|| "far future".into()),
            expired: grant.is_expired(now),
            issuer: grant.issuer.to_string(),
            issuer_is_org_root: grant.issuer == ticket.org,
            nonce: data_encoding::HEXLOWER.encode(&grant.nonce),
            // Decoding (and encoding) refuse tickets whose grant does not verify.
            signature_valid: true,
        }),
    }
}
