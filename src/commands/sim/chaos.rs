//! `callsign sim chaos`: random scenarios over a range of seeds, in parallel, each checked
//! against the invariants (callsign_sim::chaos).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use callsign_sim::chaos::{generate, run_seed, ChaosRun};
use clap::Args;

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
}

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
        let run = run_seed(seed, args.determinism_every > 0);
        if let Some(report) = run.report.as_ref().filter(|_| args.json) {
            println!("{}", serde_json::to_string(report)?);
        }
        print_run(&run, None);
        if !run.violations.is_empty() {
            bail!("seed {seed} broke {} invariants", run.violations.len());
        }
        return Ok(());
    }
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let next = AtomicU64::new(args.first);
    let end = args.first + args.seeds;
    let failed: Mutex<Vec<ChaosRun>> = Mutex::new(Vec::new());
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
                let run = run_seed(seed, twice);
                print_run(&run, Some(started.elapsed().as_secs_f64()));
                *virtual_s.lock().unwrap_or_else(|e| e.into_inner()) +=
                    run.virtual_s * if twice { 2.0 } else { 1.0 };
                if !run.violations.is_empty() {
                    failed.lock().unwrap_or_else(|e| e.into_inner()).push(run);
                }
            });
        }
    });
    let mut failed = failed.into_inner().unwrap_or_else(|e| e.into_inner());
    failed.sort_by_key(|r| r.seed);
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
    for run in &failed {
        println!(
            "  seed {}: {} — replay: callsign sim chaos --seed {}",
            run.seed,
            run.violations
                .iter()
                .map(|v| v.invariant)
                .collect::<Vec<_>>()
                .join(", "),
            run.seed
        );
    }
    if !failed.is_empty() {
        bail!("{} of {} chaos seeds failed", failed.len(), args.seeds);
    }
    Ok(())
}

fn print_run(run: &ChaosRun, wall_s: Option<f64>) {
    let members = run.scenario.nodes.iter().filter(|n| n.member).count();
    let relays = run.scenario.nodes.len() - members;
    let wall = wall_s.map_or(String::new(), |w| format!(", {w:.1} s wall"));
    let verdict = if run.violations.is_empty() {
        "ok"
    } else {
        "FAILED"
    };
    println!(
        "seed {}: {verdict} ({members} members, {relays} rented relays, {} events, {:.1} s virtual{wall})",
        run.seed,
        run.scenario.events.len(),
        run.virtual_s
    );
    for v in &run.violations {
        println!("    {v}");
    }
}
