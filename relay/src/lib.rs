//! The relay node orgs rent (a VPS): for each org it serves (one, or several in one process,
//! each on its own port) it forwards members' end-to-end encrypted voice to the members who
//! subscribe, serves relay v2 circuits to members behind NATs, mirrors the org's charter, and
//! reports what it does on `/metrics` (Prometheus text, labelled by org) and `/health`.
//!
//! - [`config`]: the TOML file it runs from.
//! - [`store`]: an org's charter mirror on disk (first filled from an admin's export).
//! - [`metrics`]: Prometheus metrics from each org's node counters.
//! - [`http`]: the `/metrics`, `/health` and API endpoints.
//! - [`service`]: starts a node in relay mode per org, applies reloads, runs until told to stop.
//! - [`bench`]: one sender to many subscribers over loopback, against a plain UDP forwarder;
//!   or several orgs, one flooding.
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
