//! Callsign's deterministic network simulator.
//!
//! Owns: scenario files ([`scenario`], version 1, docs/scenarios.md), the simulated network
//! ([`network::SimNetwork`]: latency, jitter, uniform and Gilbert–Elliott loss, reordering,
//! duplication, bandwidth queues, partitions, NATs that translate addresses: [`nat`]), and the runner ([`run`]) that
//! starts the real `callsign_node::Node` for every member on turmoil sockets in virtual time and
//! reports per-stream delivery, mouth-to-ear latency, paths, charter convergence, floor grants,
//! drops and a trace hash ([`report`]); chaos runs ([`chaos`]): random scenarios from a seed,
//! checked against invariants.
//!
//! Must not: read the wall clock or an unseeded RNG on the simulated path, or iterate a std
//! `HashMap` where order could change the trace. Same scenario + seed → same trace hash.

pub mod chaos;
mod host;
pub mod nat;
pub mod network;
mod org;
pub mod report;
pub mod run;
pub mod scenario;
pub mod trace;

pub use report::Report;

/// Virtual time since the running simulation started, when called from inside one (log lines
/// of a simulated run carry it instead of the wall clock).
pub fn sim_elapsed() -> Option<std::time::Duration> {
    turmoil::sim_elapsed()
}
pub use run::{run, RunError};
pub use scenario::{Scenario, ScenarioError};
pub use trace::{FloorTrace, TraceEvent, TraceRecord};
