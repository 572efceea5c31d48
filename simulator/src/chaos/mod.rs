//! Chaos runs: a random scenario per seed ([`generate`]), run on the real node stack, checked
//! against invariants ([`check`]); a batch over many seeds names the failing ones.
//!
//! A failing seed replays exactly: `callsign sim chaos --seed N` regenerates the same scenario
//! and run (`--emit FILE` writes it as a scenario file for `callsign sim run`).

mod check;
mod floor_agreement;
mod generate;

pub use check::{check, min_delivery, Violation, MIN_DELIVERY};
pub use generate::{generate, Plan, Probe, ProbeTarget, PROBE_S, SETTLE_S};

use crate::report::Report;
use crate::scenario::Scenario;

/// One seed's outcome.
#[derive(Debug)]
pub struct ChaosRun {
    pub seed: u64,
    pub scenario: Scenario,
    /// `None` when the run itself failed (see `violations`).
    pub report: Option<Report>,
    pub violations: Vec<Violation>,
    /// Virtual seconds run.
    pub virtual_s: f64,
}

/// Generates, runs and checks `seed`, once, in this process.
///
/// A run replays only in a process of its own: libp2p numbers connections from a process-wide
/// counter, and the swarm picks among a peer's connections in an order those numbers set, so a
/// second run in one process (or runs on parallel threads) starts from other numbers and can
/// take another path. `callsign sim chaos` runs every seed, and its determinism check, in a
/// child process.
pub fn run_seed(seed: u64) -> ChaosRun {
    let (scenario, plan) = generate(seed);
    let mut violations = Vec::new();
    let outcome =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| crate::run(&scenario, None)));
    let report = match outcome {
        Ok(Ok(report)) => Some(report),
        Ok(Err(e)) => {
            violations.push(Violation {
                invariant: "runs",
                detail: e.to_string(),
            });
            None
        }
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            violations.push(Violation {
                invariant: "no-panic",
                detail: message,
            });
            None
        }
    };
    if let Some(report) = &report {
        violations.extend(check(&scenario, &plan, report));
    }
    ChaosRun {
        seed,
        virtual_s: scenario.duration_s,
        scenario,
        report,
        violations,
    }
}
