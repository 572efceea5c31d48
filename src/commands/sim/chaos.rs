//! `callsign sim chaos`: random scenarios over a range of seeds, in parallel, each checked
//! against the invariants (callsign_sim::chaos).
//!
//! Every run happens in a child process (`--child`): a simulation replays only in a process of
//! its own (see [`callsign_sim::chaos::run_seed`]), so a failing seed found in a parallel batch
//! replays alone, and the determinism check compares two fresh processes.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use callsign_sim::chaos::{generate, run_seed};
use callsign_sim::Scenario;
use clap::Args;
use serde::{Deserialize, Serialize};

#[derive(Args, Debug)]
pub struct ChaosArgs {
    /// How many seeds to run, from `--first`.
    #[arg(long, default_value_t = 20, conflicts_with = "seed")]
    pub seeds: u64,
    /// The first seed of the batch.
    #[arg(long, default_value_t = 1)]
    pub first: u64,
    /// Run this one seed (a replay), printing its report.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Write the seed's scenario to this file (for `callsign sim run`) and stop.
    #[arg(long, requires = "seed")]
    pub emit: Option<PathBuf>,
    /// Check determinism (a second run, same trace hash) on every Nth seed; 0: never.
    #[arg(long, default_value_t = 1)]
    pub determinism_every: u64,
    /// With `--seed`: print the run's report as JSON too.
    #[arg(long, requires = "seed")]
    pub json: bool,
    /// Runs at once [default: the machine's cores].
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Run `--seed` once in this process and print its outcome as one tagged JSON line: how
    /// the command runs each seed in a child process.
    #[arg(long, hide = true, requires = "seed")]
    pub child: bool,
}

/// What a child process reports for one run.
#[derive(Debug, Serialize, Deserialize)]
struct Outcome {
    trace_hash: Option<String>,
    violations: Vec<Broken>,
}

/// One broken invariant, as a child reports it.
#[derive(Debug, Serialize, Deserialize)]
struct Broken {
    invariant: String,
    detail: String,
}

/// Tags the child's outcome line among anything else it prints (the report with `--json`).
const OUTCOME_TAG: &str = "chaos-outcome ";

pub fn run_chaos(args: ChaosArgs) -> Result<()> {
    if let Some(seed) = args.seed {
        if let Some(path) = &args.emit {
            let (scenario, _) = generate(seed);
            let text = toml::to_string(&scenario).context("cannot write the scenario")?;
            std::fs::write(path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            println!("wrote chaos seed {seed} to {}", path.display());
            return Ok(());
        }
        if args.child {
            return run_child(seed, args.json);
        }
        let (scenario, _) = generate(seed);
        let outcome = run_isolated(seed, args.determinism_every > 0, args.json)?;
        print_run(seed, &scenario, &outcome, None);
        if !outcome.violations.is_empty() {
            bail!("seed {seed} broke {} invariants", outcome.violations.len());
        }
        return Ok(());
    }
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let next = AtomicU64::new(args.first);
    let end = args.first + args.seeds;
    let failed: Mutex<Vec<(u64, Outcome)>> = Mutex::new(Vec::new());
    let wall = Instant::now();
    let virtual_s = Mutex::new(0.0);
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end {
                    break;
                }
                let twice = args.determinism_every > 0 && seed % args.determinism_every == 0;
                let started = Instant::now();
                let (scenario, _) = generate(seed);
                let outcome = run_isolated(seed, twice, false).unwrap_or_else(|e| Outcome {
                    trace_hash: None,
                    violations: vec![Broken {
                        invariant: "runs".into(),
                        detail: format!("{e:#}"),
                    }],
                });
                print_run(
                    seed,
                    &scenario,
                    &outcome,
                    Some(started.elapsed().as_secs_f64()),
                );
                *virtual_s.lock().unwrap_or_else(|e| e.into_inner()) +=
                    scenario.duration_s * if twice { 2.0 } else { 1.0 };
                if !outcome.violations.is_empty() {
                    failed
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((seed, outcome));
                }
            });
        }
    });
    let mut failed = failed.into_inner().unwrap_or_else(|e| e.into_inner());
    failed.sort_by_key(|(seed, _)| *seed);
    let wall = wall.elapsed().as_secs_f64();
    let virtual_s = virtual_s.into_inner().unwrap_or_else(|e| e.into_inner());
    println!(
        "chaos: {} seeds ({}..{end}), {} failed; {virtual_s:.0} s virtual in {wall:.0} s wall \
         ({:.1}x real time, {jobs} at once)",
        args.seeds,
        args.first,
        failed.len(),
        virtual_s / wall.max(1e-9)
    );
    for (seed, outcome) in &failed {
        println!(
            "  seed {seed}: {} — replay: callsign sim chaos --seed {seed}",
            outcome
                .violations
                .iter()
                .map(|v| v.invariant.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    if !failed.is_empty() {
        bail!("{} of {} chaos seeds failed", failed.len(), args.seeds);
    }
    Ok(())
}

/// The child's side: one run here, the report (with `json`) and then the tagged outcome.
fn run_child(seed: u64, json: bool) -> Result<()> {
    let run = run_seed(seed);
    if let Some(report) = run.report.as_ref().filter(|_| json) {
        println!("{}", serde_json::to_string(report)?);
    }
    let outcome = Outcome {
        trace_hash: run.report.map(|r| r.trace_hash),
        violations: run
            .violations
            .into_iter()
            .map(|v| Broken {
                invariant: v.invariant.into(),
                detail: v.detail,
            })
            .collect(),
    };
    println!("{OUTCOME_TAG}{}", serde_json::to_string(&outcome)?);
    Ok(())
}

/// Runs `seed` in a child process and, with `twice`, again in another, comparing trace hashes.
fn run_isolated(seed: u64, twice: bool, json: bool) -> Result<Outcome> {
    let mut first = run_in_child(seed, json)?;
    let Some(hash) = first.trace_hash.clone().filter(|_| twice) else {
        return Ok(first);
    };
    let again = run_in_child(seed, false)?;
    let detail = match &again.trace_hash {
        Some(h) if *h == hash => return Ok(first),
        Some(h) => format!("trace hash {} then {}", &hash[..12], &h[..12.min(h.len())]),
        None => "the second run failed".into(),
    };
    first.violations.push(Broken {
        invariant: "deterministic".into(),
        detail,
    });
    Ok(first)
}

fn run_in_child(seed: u64, json: bool) -> Result<Outcome> {
    let exe = std::env::current_exe().context("cannot find the callsign executable")?;
    let mut command = Command::new(exe);
    command.args(["sim", "chaos", "--child", "--seed", &seed.to_string()]);
    if json {
        command.arg("--json");
    }
    let output = command
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start the run of seed {seed}"))?;
    let mut outcome = None;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        match line.strip_prefix(OUTCOME_TAG) {
            Some(tagged) => {
                outcome = Some(
                    serde_json::from_str(tagged)
                        .with_context(|| format!("seed {seed}: unreadable outcome"))?,
                )
            }
            None => println!("{line}"),
        }
    }
    Ok(outcome.unwrap_or_else(|| Outcome {
        trace_hash: None,
        violations: vec![Broken {
            invariant: "runs".into(),
            detail: format!(
                "the run's process ended without an outcome ({})",
                output.status
            ),
        }],
    }))
}

fn print_run(seed: u64, scenario: &Scenario, outcome: &Outcome, wall_s: Option<f64>) {
    let members = scenario.nodes.iter().filter(|n| n.member).count();
    let relays = scenario.nodes.len() - members;
    let wall = wall_s.map_or(String::new(), |w| format!(", {w:.1} s wall"));
    let verdict = if outcome.violations.is_empty() {
        "ok"
    } else {
        "FAILED"
    };
    println!(
        "seed {seed}: {verdict} ({members} members, {relays} rented relays, {} events, {:.1} s virtual{wall})",
        scenario.events.len(),
        scenario.duration_s
    );
    for v in &outcome.violations {
        println!("    {}: {}", v.invariant, v.detail);
    }
}
