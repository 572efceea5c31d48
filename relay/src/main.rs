//! `callsign-relay`: run an org's rented relay, make its identity key, or benchmark it.

use anyhow::{Context, Result};
use callsign_keys::{KeyFile, NodeKeys};
use callsign_relay::bench::{self, BenchOptions};
use callsign_relay::service::{unlock, Relay};
use callsign_relay::RelayConfig;
use clap::{Parser, Subcommand};
use std::future::Future;
use std::path::PathBuf;

#[cfg(windows)]
mod win_service;

#[derive(Parser, Debug)]
#[command(name = "callsign-relay", version, about = "Callsign relay node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the relay from its configuration file until SIGINT or SIGTERM; SIGHUP re-reads the
    /// file and starts or stops the orgs that changed.
    Run {
        /// The TOML configuration.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Create the relay's identity key file (if missing) and print its peer id, which an admin
    /// registers with `callsign org relay add`.
    Key {
        /// The key file.
        path: PathBuf,
        /// Encrypt a new key file under the passphrase in this environment variable.
        #[arg(long)]
        passphrase_env: Option<String>,
    },
    /// The relay as a Windows service (Windows only; on Linux use the systemd unit in deploy/):
    /// `sc start callsign-relay`, `sc stop callsign-relay`, and
    /// `sc control callsign-relay paramchange` to re-read the configuration.
    #[command(subcommand)]
    Service(ServiceAction),
    /// Forward over real loopback sockets, against a plain UDP forwarder in the same run.
    Bench(BenchOptions),
    /// The plain UDP forwarder the benchmark compares with (started by `bench`).
    #[command(hide = true)]
    UdpForward {
        /// Forward every datagram to each of these ports on 127.0.0.1.
        #[arg(long, value_delimiter = ',')]
        to: Vec<u16>,
    },
}

#[derive(Subcommand, Debug)]
enum ServiceAction {
    /// Register the service (as LocalService, started at boot) to run from this configuration.
    Install {
        /// The TOML configuration (made absolute).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Stop and remove the service.
    Uninstall,
    /// What the service manager starts; logs to `callsign-relay.log` beside the configuration.
    #[command(hide = true)]
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Command::Service(action) = cli.command {
        return service(action);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,libp2p=warn,quinn=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Run { config } => run(config),
        Command::Key {
            path,
            passphrase_env,
        } => key(path, passphrase_env),
        Command::Service(_) => unreachable!("handled above"),
        Command::Bench(options) => bench::run(options),
        Command::UdpForward { to } => bench::udp_forward(&to),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

#[cfg(windows)]
fn service(action: ServiceAction) -> Result<()> {
    match action {
        ServiceAction::Install { config } => win_service::install(&config),
        ServiceAction::Uninstall => win_service::uninstall(),
        ServiceAction::Run { config } => win_service::run(config),
    }
}

#[cfg(not(windows))]
fn service(_: ServiceAction) -> Result<()> {
    anyhow::bail!(
        "the service commands are for Windows; on Linux run the relay under systemd \
         (deploy/callsign-relay.service)"
    )
}

fn run(path: PathBuf) -> Result<()> {
    let rt = runtime()?;
    // The SIGHUP listener needs the runtime it will run on.
    let reloads = {
        let _entered = rt.enter();
        reloads(path.clone())
    };
    run_until(rt, path, shutdown_signal(), reloads)
}

/// Runs the relay from the configuration at `path` until `stop`, taking each configuration
/// `reloads` yields: for a terminal (signals) and for the Windows service (its controls).
fn run_until(
    runtime: tokio::runtime::Runtime,
    path: PathBuf,
    stop: impl Future<Output = ()>,
    reloads: tokio::sync::mpsc::UnboundedReceiver<RelayConfig>,
) -> Result<()> {
    let config = RelayConfig::load(&path)?;
    runtime.block_on(async {
        let relay = Relay::start(&config)
            .await
            .with_context(|| format!("starting the relay from {}", path.display()))?;
        // Scripts and tests read these lines.
        if config.single {
            println!("relay listening on {}", relay.address());
        } else {
            for (name, address) in relay.addresses() {
                println!("org {name} listening on {address}");
            }
        }
        println!("metrics on http://{}/metrics", relay.metrics_addr());
        let stats = relay.run(stop, reloads).await?;
        for (name, stats) in &stats {
            if let Some(f) = &stats.forwarding {
                let org = if config.single {
                    String::new()
                } else {
                    format!("org {name}: ")
                };
                println!(
                    "stopped: {org}{} packets in, {} out, {} subscribers",
                    f.counts.packets_in, f.counts.packets_out, f.subscribers
                );
            }
        }
        Ok(())
    })
}

/// The configuration re-read on each SIGHUP (Unix); a file that does not load is logged and
/// changes nothing.
fn reloads(path: PathBuf) -> tokio::sync::mpsc::UnboundedReceiver<RelayConfig> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        // Installed now, before the addresses are printed: a SIGHUP's default action is to
        // end the process.
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: reloads are off");
            return rx;
        };
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                match RelayConfig::load(&path) {
                    Ok(config) => {
                        tracing::info!(path = %path.display(), "SIGHUP: reloading");
                        if tx.send(config).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::error!(%e, "SIGHUP: the configuration does not load; nothing changed")
                    }
                }
            }
        });
    }
    #[cfg(not(unix))]
    drop((tx, path));
    rx
}

/// SIGINT (Ctrl-C) or, on Unix, SIGTERM (systemd, docker stop).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn key(path: PathBuf, passphrase_env: Option<String>) -> Result<()> {
    if !path.exists() {
        let keys = NodeKeys::generate(&mut rand::rngs::OsRng);
        let passphrase = match &passphrase_env {
            Some(var) => Some(
                std::env::var(var)
                    .with_context(|| format!("reading the passphrase from ${var}"))?,
            ),
            None => None,
        };
        let file = KeyFile::seal(
            &keys,
            passphrase
                .as_deref()
                .map(|p| (p.as_bytes(), Default::default())),
            &mut rand::rngs::OsRng,
        )?;
        file.save(&path, false)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("created {}", path.display());
    }
    let keys = unlock(&path, passphrase_env.as_deref())?;
    println!("{}", keys.identity.peer_id());
    Ok(())
}
