//! The Callsign node runtime.
//!
//! Owns everything a node does with real time, sockets and devices: the QUIC links ([`link`]:
//! the libp2p transport on quinn with datagrams, over real or turmoil sockets, the `Links`
//! registry, the Swarm) and the audio engine ([`audio`]: Opus encode/decode, the adaptive
//! jitter buffer, the mixer, the capture chain, the device callbacks and the WAV/synthetic
//! backends), and the Node API ([`runtime`]) whose driver feeds the sans-IO
//! `callsign_mesh::member::Member` and carries out its outputs on the links and the audio
//! engine.
//!
//! Must not: hold protocol decisions (those live sans-IO in `callsign-mesh`), read the wall
//! clock in the link layer or the audio pipeline (they run on tokio time or take `now` / media
//! timestamps, so the simulator can drive them in virtual time), or allocate, lock or do I/O
//! inside a device callback.

pub mod audio;
pub mod link;
pub mod recording;
pub mod runtime;

pub use runtime::{Node, NodeCommand, NodeConfig, NodeControl, NodeEvent, NodeStats};
