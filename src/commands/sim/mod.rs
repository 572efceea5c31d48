//! `callsign sim`: run a scenario on the real node stack in virtual time; replay a trace; run
//! random chaos scenarios against the invariants.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use callsign_sim::{run, Report, Scenario};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};

mod chaos;

/// Simulator commands.
#[derive(Subcommand, Debug)]
pub enum SimCommand {
    /// Run a scenario file (docs/scenarios.md) and report what every member heard.
    Run(RunArgs),
    /// Re-run a trace's scenario and seed and check that the run is identical.
    Replay(ReplayArgs),
    /// Run random scenarios (one per seed) and check the invariants; exits 1 naming the
    /// failing seeds, each with the command that replays it.
    Chaos(chaos::ChaosArgs),
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The scenario (TOML).
    pub file: PathBuf,
    /// Seed [default: the scenario's].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Write the event trace (zstd-compressed JSON lines) here.
    #[arg(long)]
    pub trace: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// A trace written by `callsign sim run --trace`.
    pub trace: PathBuf,
}

/// First line of a trace file.
#[derive(Serialize, Deserialize)]
struct TraceHeader {
    version: u32,
    scenario: String,
    seed: u64,
    trace_hash: String,
}

const TRACE_VERSION: u32 = 1;

pub fn run_command(cmd: SimCommand) -> Result<()> {
    match cmd {
        SimCommand::Run(args) => run_scenario(args),
        SimCommand::Replay(args) => replay(args),
        SimCommand::Chaos(args) => chaos::run_chaos(args),
    }
}

fn load(text: &str, origin: &str) -> Result<Scenario> {
    Scenario::parse(text).with_context(|| format!("scenario {origin}"))
}

fn run_scenario(args: RunArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read scenario {}", args.file.display()))?;
    let scenario = load(&text, &args.file.display().to_string())?;
    let wall = std::time::Instant::now();
    let report = run(&scenario, args.seed).context("running the scenario")?;
    let wall = wall.elapsed();
    if let Some(path) = &args.trace {
        write_trace(path, &text, &report)?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_summary(&report, scenario.duration_s, wall);
    }
    Ok(())
}

fn write_trace(path: &PathBuf, scenario: &str, report: &Report) -> Result<()> {
    let file = std::fs::File::create(path)
        .with_context(|| format!("cannot create trace {}", path.display()))?;
    let mut out = zstd::Encoder::new(file, 3)?.auto_finish();
    let header = TraceHeader {
        version: TRACE_VERSION,
        scenario: scenario.to_string(),
        seed: report.seed,
        trace_hash: report.trace_hash.clone(),
    };
    writeln!(out, "{}", serde_json::to_string(&header)?)?;
    for line in &report.trace {
        writeln!(out, "{}", serde_json::to_string(line)?)?;
    }
    Ok(())
}

fn replay(args: ReplayArgs) -> Result<()> {
    let file = std::fs::File::open(&args.trace)
        .with_context(|| format!("cannot open trace {}", args.trace.display()))?;
    let reader = BufReader::new(
        zstd::Decoder::new(file)
            .with_context(|| format!("{} is not a trace", args.trace.display()))?,
    );
    let first = reader
        .lines()
        .next()
        .context("trace is empty")?
        .with_context(|| {
            format!(
                "{} is not a trace (not zstd JSON lines)",
                args.trace.display()
            )
        })?;
    let header: TraceHeader = serde_json::from_str(&first).context("trace header is damaged")?;
    if header.version != TRACE_VERSION {
        bail!(
            "unknown trace version {} (this build reads {TRACE_VERSION})",
            header.version
        );
    }
    let scenario = load(&header.scenario, "in the trace")?;
    let report = run(&scenario, Some(header.seed)).context("re-running the scenario")?;
    if report.trace_hash != header.trace_hash {
        bail!(
            "replay differs: trace hash {} recorded, {} now",
            header.trace_hash,
            report.trace_hash
        );
    }
    println!(
        "replay of {} (seed {}) matches: {}",
        scenario.name, header.seed, report.trace_hash
    );
    Ok(())
}

fn print_summary(report: &Report, duration_s: f64, wall: std::time::Duration) {
    println!(
        "{} (seed {}): {:.1} s virtual in {:.2} s wall",
        report.scenario,
        report.seed,
        duration_s,
        wall.as_secs_f64()
    );
    for s in &report.streams {
        let latency = s.mouth_to_ear_ms.map_or(String::new(), |l| {
            format!(
                ", mouth-to-ear p50 {:.0} / p95 {:.0} / p99 {:.0} ms",
                l.p50, l.p95, l.p99
            )
        });
        let placed = s.placed.map_or(String::new(), |p| {
            format!(
                ", placed {:.1} to {:.1} dB, pan {:+.2}",
                p.min_gain_db, p.max_gain_db, p.last_pan
            )
        });
        println!(
            "  {} -> {} on {}: sent {}, played {} ({:.1}%), concealed {}, lost {}{latency}{placed}",
            s.from,
            s.to,
            s.channel,
            s.frames_sent,
            s.frames_played,
            100.0 * s.frames_played as f64 / s.frames_sent.max(1) as f64,
            s.frames_concealed,
            s.frames_lost
        );
    }
    for p in &report.paths {
        println!("  path {} <-> {}: {}", p.a, p.b, p.kind);
    }
    println!(
        "  charter: {} ({} ops{})",
        if report.charter.converged {
            "converged"
        } else {
            "DIVERGED"
        },
        report.charter.ops,
        report
            .charter
            .convergence_ms
            .map_or(String::new(), |ms| format!(
                ", {ms:.0} ms after the last edit"
            ))
    );
    for press in &report.floor.presses {
        let ms = |v: Option<u64>| v.map_or("n/a".to_string(), |v| format!("{v} ms"));
        println!(
            "  floor: {} pressed {} at {} ms{}: granted after {}, first frame after {}",
            press.node,
            press.channel,
            press.pressed_ms,
            if press.queued { " (queued)" } else { "" },
            ms(press.grant_ms),
            ms(press.first_frame_ms)
        );
    }
    if let Some(grant) = report.floor.grant_ms {
        println!(
            "  floor: press to grant p50 {:.0} / p99 {:.0} ms without queueing; {} frames dropped out of turn",
            grant.p50, grant.p99, report.floor.drops
        );
    }
    println!(
        "  drops: {}",
        serde_json::to_string(&report.drops).unwrap_or_default()
    );
    println!("  trace hash {}", report.trace_hash);
}
