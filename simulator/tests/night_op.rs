//! Issue 70's night operation (`examples/scenarios/night-op.toml`): two rented relays that both
//! arbitrate the command floor, one crashing mid-transmission, a partition that leaves its side
//! with no relay while admins on both sides edit the charter and one removes a member, the heal,
//! the relay back on a new port, then the officer from the side that had no relay keys command.
//! After the heal every listener plays every talker (less what the network itself loses, as the
//! chaos check allows), no listener drops more than 5 frames per press as out of turn, and the
//! charter converges.
//!
//! About ten seconds a seed in a release build, so not in every CI run:
//! `cargo test --release -p callsign-sim --test night_op -- --ignored` (seeds 1 to 20).

use callsign_sim::chaos::min_delivery;
use callsign_sim::{run, Scenario};
use std::path::Path;

#[test]
#[ignore = "slow: run with --ignored (docs/scenarios.md)"]
fn a_night_op_hears_command_after_a_relay_restart_and_a_partition() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/scenarios/night-op.toml");
    let scenario = Scenario::parse(&std::fs::read_to_string(path).unwrap()).unwrap();
    for seed in 1..=20 {
        let report = run(&scenario, Some(seed)).unwrap();
        assert!(
            report.charter.converged,
            "seed {seed}: {:?}",
            report.charter
        );
        let settled = report.settled.as_ref().expect("measure_from_s is set");
        assert!(settled.talkers.len() >= 80, "seed {seed}");
        for s in &settled.talkers {
            let floor = min_delivery(&scenario, s.frames_sent);
            assert!(
                s.frames_played as f64 >= floor * s.frames_sent as f64,
                "seed {seed}: {} -> {}: {} of {} (at least {floor:.3})",
                s.from,
                s.to,
                s.frames_played,
                s.frames_sent
            );
        }
        // After the heal command is keyed twice (m04, then bravo): no listener drops more
        // than a handful of a granted talker's frames as out of turn.
        for (node, drops) in &settled.floor_drops {
            assert!(
                *drops <= 5 * 2,
                "seed {seed}: {node} dropped {drops} frames as out of turn"
            );
        }
        for relay in ["relay-a", "relay-b"] {
            assert_eq!(report.relay(relay).unwrap().audio_keys_held, 0);
        }
    }
}
