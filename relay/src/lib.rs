//! The relay node an org rents (a VPS): it forwards members' end-to-end encrypted voice to the
//! members who subscribe, serves relay v2 circuits to members behind NATs, mirrors the org's
//! charter, and reports what it does on `/metrics` (Prometheus text) and `/health`.
//!
//! - [`config`]: the TOML file it runs from.
//! - [`store`]: the charter mirror on disk (first filled from an admin's export).
//! - [`metrics`]: Prometheus metrics from the node's counters.
//! - [`http`]: the `/metrics` and `/health` endpoints.
//! - [`service`]: starts the node in relay mode and runs until told to stop.
//! - [`bench`]: one sender to many subscribers over loopback, against a plain UDP forwarder.
//!
//! Must not: hold or ask for a voice key (the relay is no member; the charter's key schedule
//! never grants it one), decide protocol questions (forwarding rules live in
//! `callsign_mesh::forward`, the runtime in `callsign_node`), or forward for anyone the charter
//! does not list as a member.

pub mod bench;
pub mod config;
pub mod http;
pub mod metrics;
pub mod occupancy;
pub mod service;
pub mod store;

pub use config::RelayConfig;
