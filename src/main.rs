//! `callsign`: the command-line front end of the Callsign voice mesh.
//!
//! This binary parses arguments, reads and writes files the user names, and prints results.
//! Protocol and key logic live in the library crates; nothing here is reused by them.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod commands;
mod passphrase;

/// Decentralised push-to-talk voice for squads and orgs.
#[derive(Parser, Debug)]
#[command(name = "callsign", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create and inspect identity key files.
    #[command(subcommand)]
    Keys(commands::keys::KeysCommand),
    /// Create and inspect invite tickets.
    #[command(subcommand)]
    Ticket(commands::ticket::TicketCommand),
    /// Sound devices, and the voice path run offline on WAV files.
    #[command(subcommand)]
    Audio(commands::audio::AudioCommand),
    /// QUIC links: listen, and check reachability and RTT to another node.
    #[command(subcommand)]
    Link(commands::link::LinkCommand),
    /// Create and edit org charters: channels, roles, members, relays, presets.
    Org(commands::org::OrgArgs),
    /// Start several nodes in this process on loopback, script a PTT session and report every
    /// stream (frames, concealment, mouth-to-ear latency).
    Demo(commands::demo::DemoArgs),
    /// Run a headless node: join the org, log who talks where, until Ctrl-C or --seconds.
    Up(Box<commands::up::UpArgs>),
    /// The deterministic network simulator: run scenarios, replay traces.
    #[command(subcommand)]
    Sim(commands::sim::SimCommand),
}

/// Restores the default SIGPIPE action, so `callsign … | head` ends quietly like any Unix tool
/// instead of panicking in `println!` when the reader goes away (Rust ignores SIGPIPE). Runs
/// after argument parsing, before any thread is started.
#[cfg(unix)]
fn default_sigpipe() {
    // SAFETY: called first thing in `main`, before any other thread exists; setting a signal
    // disposition to SIG_DFL has no other preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Log timestamps: virtual time inside a simulated run (so two runs' logs line up), the wall
/// clock otherwise.
struct LogTime;

impl tracing_subscriber::fmt::time::FormatTime for LogTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        match callsign_sim::sim_elapsed() {
            Some(at) => write!(w, "sim+{:.3}s", at.as_secs_f64()),
            None => tracing_subscriber::fmt::time::SystemTime.format_time(w),
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,libp2p_kad=error")),
        )
        .with_writer(std::io::stderr)
        .with_timer(LogTime)
        .init();

    let cli = Cli::parse();
    // A long-running listener keeps serving links when nobody reads its output any more.
    let serves = matches!(
        cli.command,
        Command::Link(commands::link::LinkCommand::Listen(_)) | Command::Up(_)
    );
    #[cfg(unix)]
    if !serves {
        default_sigpipe();
    }
    #[cfg(not(unix))]
    let _ = serves;
    let result = match cli.command {
        Command::Keys(cmd) => commands::keys::run(cmd),
        Command::Ticket(cmd) => commands::ticket::run(cmd),
        Command::Org(args) => commands::org::run(args),
        Command::Audio(cmd) => commands::audio::run(cmd),
        Command::Link(cmd) => commands::link::run(cmd),
        Command::Demo(args) => commands::demo::run(args),
        Command::Up(args) => commands::up::run(*args),
        Command::Sim(cmd) => commands::sim::run_command(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` prints the whole context chain on one line.
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
