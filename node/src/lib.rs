//! The Callsign node runtime.
//!
//! Owns everything a node does with real time and real devices: today the audio engine
//! ([`audio`]): Opus encode/decode, the adaptive jitter buffer, the mixer, the capture chain,
//! the device callbacks and the WAV/synthetic backends. Links and the Node API land here next.
//!
//! Must not: hold protocol decisions (those live sans-IO in `callsign-mesh`), read the wall clock
//! inside the audio pipeline (every stage takes `now` or a media timestamp so the simulator can
//! drive it in virtual time), or allocate, lock or do I/O inside a device callback.

pub mod audio;
pub mod link;
