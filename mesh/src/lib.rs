//! Callsign's protocol core, sans-IO.
//!
//! This crate owns the logic every node must agree on, and one member's whole protocol as one
//! machine ([`member::Member`]: inputs with `now` in, outputs to carry out). The parts it joins:
//! the org charter (signed op-DAG, fold into channels/roles/ACLs, anti-entropy sync, the op log
//! format), control messages and the ordered per-peer outbox, the voice packet (sealed with
//! sender keys, replay window), the E2EE key schedule and pair sessions, presence records,
//! floor control on half-duplex channels, the topology rule (mesh or which relay), a relay's
//! forwarding rule (signed subscriptions; relays see only clear headers), admission,
//! reachability and hole punching, and the versioned wire framing they share ([`wire`]).
//!
//! It must not: open sockets, spawn threads or tasks, read the wall clock, or iterate a std
//! `HashMap`/`HashSet` where the order could change a decision. Every entry point takes `now`
//! (and randomness comes from a seeded RNG), so the simulator replays runs exactly. The only I/O
//! is the charter log file ([`charter::log`]), blocking `std::fs`, called by the runtime.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admission;
pub mod charter;
pub mod control;
pub mod e2ee;
pub mod floor;
pub mod forward;
pub mod member;
pub mod pairing;
pub mod path;
pub mod presence;
pub mod punch;
pub mod rate;
pub mod reachability;
pub mod routing;
pub mod spatial;
pub mod topology;
pub mod voice;
pub mod wire;
