//! `callsign sim`: run a scenario file, write a trace, replay it; refuse damaged traces.

mod common;

use assert_cmd::Command;
use common::success_stdout;
use std::path::Path;

fn scenario(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/scenarios")
        .join(format!("{name}.toml"))
}

#[test]
fn run_json_trace_and_replay() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("lan.trace");
    let out = success_stdout(
        Command::cargo_bin("callsign")
            .unwrap()
            .args(["sim", "run", "--json", "--trace"])
            .arg(&trace)
            .arg(scenario("lan-squad")),
    );
    let report: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(report["scenario"], "lan-squad");
    assert_eq!(report["seed"], 7);
    assert_eq!(report["charter"]["converged"], true);
    let streams = report["streams"].as_array().unwrap();
    assert!(streams.len() >= 7);
    for s in streams {
        assert!(s["frames_played"].as_u64() >= Some(s["frames_sent"].as_u64().unwrap() * 98 / 100));
        assert!(s["mouth_to_ear_ms"]["p95"].as_f64().is_some());
    }
    let replay = String::from_utf8(success_stdout(
        Command::cargo_bin("callsign")
            .unwrap()
            .args(["sim", "replay"])
            .arg(&trace),
    ))
    .unwrap();
    assert!(
        replay.contains(report["trace_hash"].as_str().unwrap()),
        "{replay}"
    );

    // A damaged trace is refused with a reason.
    let mut bytes = std::fs::read(&trace).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&trace, bytes).unwrap();
    let bad = Command::cargo_bin("callsign")
        .unwrap()
        .args(["sim", "replay"])
        .arg(&trace)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).starts_with("error:"));
}

/// `sim chaos --seed` runs the seed in a child process and checks it replays in another; a
/// batch names its failing seeds the same way. Seed 14 is a three-member squad.
#[test]
fn chaos_seed_runs_in_child_processes_and_replays() {
    let out = String::from_utf8(success_stdout(
        Command::cargo_bin("callsign")
            .unwrap()
            .args(["sim", "chaos", "--seed", "14", "--json"]),
    ))
    .unwrap();
    let mut lines = out.lines();
    let report: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert!(report["trace_hash"].as_str().is_some(), "{out}");
    let verdict = lines.next().unwrap();
    assert!(verdict.starts_with("seed 14: ok (3 members"), "{out}");
    assert!(
        !out.contains("chaos-outcome"),
        "the child's tagged line stays inside: {out}"
    );
}
