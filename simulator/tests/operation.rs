//! Issue 22's acceptance scenario, `operation-24`: 24 members and two rented relays, mixed
//! NATs, a partition with concurrent admin edits and a removal, a relay crash and restart on a
//! new port, then the heal. Every stream from 20 s on must play 95 % of its frames and the
//! charter must converge over the current members.
//!
//! About a minute in a debug build, so it is not in every CI run:
//! `cargo test --release -p callsign-sim --test operation -- --ignored`.

use callsign_sim::{run, Scenario};
use std::path::Path;

#[test]
#[ignore = "slow: run with --ignored (docs/scenarios.md)"]
fn an_operation_of_24_recovers_from_partition_edits_and_a_relay_restart() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/scenarios/operation-24.toml");
    let scenario = Scenario::parse(&std::fs::read_to_string(path).unwrap()).unwrap();
    let report = run(&scenario, None).unwrap();
    assert!(report.charter.converged, "{:?}", report.charter);
    let settled = report.settled.as_ref().expect("measure_from_s is set");
    assert!(
        settled.streams.len() >= 80,
        "{} streams",
        settled.streams.len()
    );
    for s in &settled.streams {
        assert!(
            s.frames_played * 100 >= s.frames_sent * 95,
            "{} -> {} on {}: {} of {}",
            s.from,
            s.to,
            s.channel,
            s.frames_played,
            s.frames_sent
        );
    }
    for relay in ["relay-a", "relay-b"] {
        assert_eq!(report.relay(relay).unwrap().audio_keys_held, 0);
    }
}
