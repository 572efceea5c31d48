//! Runs a scenario: one turmoil host per member running the real `Node` ([`crate::host`]), one
//! director for network events, then the report.

use crate::host::{run_host, sim_now, HostPlan, Shared};
use crate::network::SimNetwork;
use crate::org::build_org;
use crate::report::{Collected, Report};
use crate::scenario::{Action, Scenario};
use callsign_keys::IdentityKey;
use callsign_mesh::charter::EditError;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("building the org: {0}")]
    Charter(#[from] EditError),
    #[error("simulation: {0}")]
    Simulation(String),
}

/// Runs `scenario` (with its own seed, or `seed`) and reports what every member heard.
pub fn run(scenario: &Scenario, seed: Option<u64>) -> Result<Report, RunError> {
    let seed = seed.unwrap_or(scenario.seed);
    let org = Arc::new(build_org(scenario, seed)?);
    let names: BTreeMap<String, IdentityKey> = scenario
        .nodes
        .iter()
        .zip(&org.keys)
        .map(|(n, k)| (n.name.clone(), k.identity.public()))
        .collect();
    let by_key: BTreeMap<IdentityKey, String> =
        names.iter().map(|(n, k)| (*k, n.clone())).collect();
    let duration = Duration::from_secs_f64(scenario.duration_s);
    let mut sim = turmoil::Builder::new()
        .min_message_latency(Duration::ZERO)
        .max_message_latency(Duration::ZERO)
        .tick_duration(Duration::from_millis(4))
        .simulation_duration(duration + Duration::from_secs(30))
        .rng_seed(seed)
        .build();
    let network = Arc::new(SimNetwork::new(seed ^ 0x6e65_7477, scenario.link.clone()));
    let shared = Arc::new(Shared::default());
    for (index, spec) in scenario.nodes.iter().enumerate() {
        let plan = HostPlan::new(scenario, index, &org, &names, &by_key, seed);
        // Every log line from the node's code names the node it came from.
        let span = tracing::info_span!("node", name = %spec.name);
        let host = run_host(plan, org.clone(), network.clone(), shared.clone()).instrument(span);
        sim.client(spec.name.as_str(), host);
    }
    sim.client("director", direct(scenario, network.clone()));
    sim.run().map_err(|e| RunError::Simulation(e.to_string()))?;
    let mut trace: Vec<_> = take(&shared.trace);
    trace.sort_by_key(|(t, n, _)| (*t, *n));
    let collected = Collected {
        stats: take(&shared.stats),
        baselines: take(&shared.baselines),
        live_at_end: take(&shared.live_at_end),
        rosters: take(&shared.rosters),
        trace,
        last_edit: *shared.last_edit.lock().unwrap_or_else(|e| e.into_inner()),
    };
    Ok(crate::report::build(
        scenario,
        seed,
        &org,
        &by_key,
        collected,
        network.counts(),
    ))
}

/// The director: partitions, heals and link changes at their times.
fn direct(
    scenario: &Scenario,
    director_network: Arc<SimNetwork>,
) -> impl std::future::Future<Output = turmoil::Result> {
    let mut network_events: Vec<(Duration, Action)> = scenario
        .events
        .iter()
        .filter(|e| {
            matches!(
                e.action,
                Action::Partition { .. } | Action::Heal | Action::Link { .. }
            )
        })
        .map(|e| (Duration::from_secs_f64(e.at_s), e.action.clone()))
        .collect();
    network_events.sort_by_key(|(t, _)| *t);
    async move {
        let start = tokio::time::Instant::now() - sim_now();
        for (at, action) in network_events {
            tokio::time::sleep_until(start + at).await;
            match action {
                Action::Partition { groups } => {
                    let groups: Vec<Vec<IpAddr>> = groups
                        .iter()
                        .map(|g| g.iter().map(|n| turmoil::lookup(n.as_str())).collect())
                        .collect();
                    director_network.partition(&groups);
                }
                Action::Heal => director_network.heal(),
                Action::Link {
                    a: Some(a),
                    b: Some(b),
                    model,
                } => director_network.set_pair(
                    turmoil::lookup(a.as_str()),
                    turmoil::lookup(b.as_str()),
                    model,
                ),
                Action::Link { model, .. } => director_network.set_default(model),
                _ => {}
            }
        }
        Ok(())
    }
}

/// What a host left in `slot` (a host that panicked still leaves what it wrote).
fn take<T: Default>(slot: &std::sync::Mutex<T>) -> T {
    std::mem::take(&mut *slot.lock().unwrap_or_else(|e| e.into_inner()))
}
