//! The `callsign-relay` binary as an operator runs it: make a key, start from a config, answer
//! `/health` and `/metrics`, stop cleanly on SIGTERM; and clear errors for a relay the charter
//! does not rent, an empty mirror and a bad config.

mod common;

use common::org_renting;
use std::path::Path;
use std::process::Command;
// For the tests that start a relay and signal it (Unix).
#[cfg(unix)]
use {
    common::{http_get, metrics_addr, orgs_config},
    std::io::{BufRead, BufReader},
    std::process::Stdio,
    std::time::Duration,
};

const BIN: &str = env!("CARGO_BIN_EXE_callsign-relay");

fn make_key(dir: &Path) -> callsign_keys::IdentityKey {
    let out = Command::new(BIN)
        .args(["key", "relay.key"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let peer = String::from_utf8(out.stdout).unwrap();
    peer.trim().parse().unwrap()
}

fn write_charter(dir: &Path, rent: Option<callsign_keys::IdentityKey>) {
    org_renting(&dir.join("org.charter"), 3, rent);
}

const CONFIG: &str = "version = 1\nkey = \"relay.key\"\nlisten = \"127.0.0.1:0\"\n\
    metrics = \"127.0.0.1:0\"\ndata_dir = \"state\"\n[org]\ncharter = \"org.charter\"\n";

/// Starts the relay from `dir/relay.toml`, its stdout piped.
#[cfg(unix)]
fn start(dir: &Path) -> std::process::Child {
    Command::new(BIN)
        .args(["run", "--config"])
        .arg(dir.join("relay.toml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

// Signals: Unix. On Windows the relay stops on Ctrl-C (docs/windows.md).
#[cfg(unix)]
#[test]
fn runs_from_a_config_answers_health_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let relay = make_key(dir.path());
    // The same key file again: not overwritten, same peer id.
    assert_eq!(make_key(dir.path()), relay);
    write_charter(dir.path(), Some(relay));
    std::fs::write(dir.path().join("relay.toml"), CONFIG).unwrap();
    let mut child = start(dir.path());
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let listening = lines.next().unwrap().unwrap();
    assert!(
        listening.starts_with("relay listening on /ip4/127.0.0.1/udp/"),
        "{listening}"
    );
    assert!(
        listening.ends_with(&relay.peer_id().to_string()),
        "{listening}"
    );
    let addr = metrics_addr(&lines.next().unwrap().unwrap());
    // The first stats poll lands within a second.
    std::thread::sleep(Duration::from_millis(1500));
    let health = http_get(&addr, "/health");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.contains("\"status\":\"ok\""), "{health}");
    let text = http_get(&addr, "/metrics");
    assert!(
        text.contains("callsign_relay_charter_ops{org=\"default\"} "),
        "{text}"
    );
    assert!(
        text.contains("callsign_relay_audio_keys_held{org=\"default\"} 0"),
        "{text}"
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let stopped = lines.next().unwrap().unwrap();
    assert!(stopped.starts_with("stopped: "), "{stopped}");
    assert!(child.wait().unwrap().success());
    // The mirror is on disk: a second start needs no bundle.
    std::fs::remove_file(dir.path().join("org.charter")).unwrap();
    std::fs::write(
        dir.path().join("relay.toml"),
        CONFIG.replace("charter = \"org.charter\"", ""),
    )
    .unwrap();
    let mut again = start(dir.path());
    let first = BufReader::new(again.stdout.take().unwrap())
        .lines()
        .next()
        .unwrap()
        .unwrap();
    assert!(first.starts_with("relay listening on"), "{first}");
    again.kill().unwrap();
    again.wait().unwrap();
}

fn run_fails(dir: &Path, want: &str) {
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(dir.join("relay.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(want), "{err}");
}

#[test]
fn refuses_to_start_with_a_clear_reason() {
    let dir = tempfile::tempdir().unwrap();
    make_key(dir.path());
    std::fs::write(dir.path().join("relay.toml"), CONFIG).unwrap();
    // No bundle file.
    run_fails(dir.path(), "cannot read charter bundle");
    // The org does not rent this relay.
    write_charter(dir.path(), None);
    run_fails(dir.path(), "does not rent this relay");
    // A damaged bundle.
    std::fs::write(dir.path().join("org.charter"), b"not a bundle").unwrap();
    std::fs::remove_dir_all(dir.path().join("state")).ok();
    run_fails(dir.path(), "org.charter");
    // A config from the future.
    std::fs::write(
        dir.path().join("relay.toml"),
        CONFIG.replace("version = 1", "version = 9"),
    )
    .unwrap();
    run_fails(dir.path(), "unknown config version 9");
}

/// `callsign-relay bench --json` with `args`, which must succeed: its report.
#[cfg(target_os = "linux")]
fn bench_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new(BIN)
        .arg("bench")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

// The bench reads its forwarders' CPU time from /proc: Linux only.
#[cfg(target_os = "linux")]
#[test]
fn the_bench_runs_both_forwarders_and_every_copy_arrives() {
    // Where there are two cores, the forwarders run alone on one of them (Linux only).
    let pin = cfg!(target_os = "linux")
        && std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2);
    let mut args = vec!["--subscribers", "4", "--seconds", "1", "--rounds", "2"];
    args.extend(pin.then_some("--pin"));
    let report = bench_json(&args);
    for side in ["baseline", "relay"] {
        let m = &report[side];
        // 50 frames to 3 other subscribers each.
        assert_eq!(m["copies_expected"], 150, "{report}");
        assert_eq!(m["copies_delivered"], m["copies_expected"], "{report}");
        assert!(
            m["copies_per_cpu_second"].as_f64().unwrap() > 0.0,
            "{report}"
        );
    }
    assert!(report["efficiency_ratio"].as_f64().unwrap() > 0.0);
    assert_eq!(report["forwarder_cpu"].is_u64(), pin, "{report}");
    // Two rounds, and the reported ratio is one of them (the median of two: the larger).
    let rounds = report["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 2, "{report}");
    assert!(rounds
        .iter()
        .any(|r| r["efficiency_ratio"] == report["efficiency_ratio"]));
}

// The bench reads its forwarders' CPU time from /proc: Linux only.
#[cfg(target_os = "linux")]
#[test]
fn the_bench_can_run_both_forwarders_at_once() {
    let report = bench_json(&["--subscribers", "4", "--seconds", "1", "--together"]);
    assert_eq!(report["together"], true, "{report}");
    for side in ["baseline", "relay"] {
        let m = &report[side];
        assert_eq!(m["copies_delivered"], 150, "{report}");
        // Each forwarder's CPU is its own, measured over the same second.
        assert!(m["cpu_percent"].as_f64().unwrap() > 0.0, "{report}");
    }
}

#[cfg(unix)]
#[test]
fn sighup_starts_an_org_added_to_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let relay = make_key(dir.path());
    write_charter(dir.path(), Some(relay));
    let orgs = |names: &[&str]| orgs_config(names, |_| "org.charter".into());
    std::fs::write(dir.path().join("relay.toml"), orgs(&["alpha"])).unwrap();
    let mut child = start(dir.path());
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let listening = lines.next().unwrap().unwrap();
    assert!(
        listening.starts_with("org alpha listening on /ip4/127.0.0.1/udp/"),
        "{listening}"
    );
    let addr = metrics_addr(&lines.next().unwrap().unwrap());
    assert!(http_get(&addr, "/health/bravo").starts_with("HTTP/1.1 404"));
    // A broken file changes nothing; the relay keeps running.
    std::fs::write(dir.path().join("relay.toml"), "version = 1\n[[org]]\n").unwrap();
    let hup = || {
        let status = Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    hup();
    std::fs::write(dir.path().join("relay.toml"), orgs(&["alpha", "bravo"])).unwrap();
    hup();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let health = http_get(&addr, "/health/bravo");
        if health.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{health}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(http_get(&addr, "/health/alpha").starts_with("HTTP/1.1 200"));
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(child.wait().unwrap().success());
}

// The bench reads its forwarders' CPU time from /proc: Linux only.
#[cfg(target_os = "linux")]
#[test]
fn the_orgs_bench_keeps_a_quiet_org_whole_while_another_floods() {
    let report = bench_json(&["--orgs", "2", "--subscribers", "3", "--seconds", "1"]);
    for org in report["quiet"]["orgs"].as_array().unwrap() {
        assert_eq!(org["copies_delivered"], org["copies_expected"], "{report}");
    }
    let flood = &report["flood"];
    // org0 sent 20 × 100 packets a second: most were refused, by its link's limit before
    // decryption or by its members' limit after.
    assert!(
        flood["orgs"][0]["packets_sent"].as_u64().unwrap() >= 1900,
        "{report}"
    );
    let refused: u64 = ["org0/plane_rate_limited", "org0/ratelimited"]
        .iter()
        .filter_map(|k| flood["drops"][*k].as_u64())
        .sum();
    assert!(refused >= 1500, "{report}");
    assert!(
        flood["drops"]
            .as_object()
            .unwrap()
            .keys()
            .all(|k| k.starts_with("org0/")),
        "{report}"
    );
    assert_eq!(
        flood["orgs"][1]["copies_delivered"], flood["orgs"][1]["copies_expected"],
        "{report}"
    );
}

// The bench reads its forwarders' CPU time from /proc: Linux only.
#[cfg(target_os = "linux")]
#[test]
fn a_strangers_garbage_is_dropped_and_counted_against_the_org_it_was_sent_to() {
    let report = bench_json(&[
        "--orgs",
        "2",
        "--subscribers",
        "3",
        "--seconds",
        "1",
        "--flood-with",
        "garbage",
    ]);
    let flood = &report["flood"];
    assert!(
        flood["garbage_per_second"].as_f64().unwrap() > 1000.0,
        "{report}"
    );
    // Each kind the stranger sends is refused by its own check, before any work for a link.
    for reason in ["not_quic", "plane_unknown_link", "handshake_rate_limited"] {
        assert!(
            flood["drops"][format!("org0/{reason}")]
                .as_u64()
                .unwrap_or(0)
                > 0,
            "{reason}: {report}"
        );
    }
    let drops = flood["drops"].as_object().unwrap();
    assert!(drops.keys().all(|k| k.starts_with("org0/")), "{report}");
    // The other org, on its own port and thread, hears its speaker throughout.
    let other = &flood["orgs"][1];
    let (heard, expected) = (
        other["copies_delivered"].as_u64().unwrap(),
        other["copies_expected"].as_u64().unwrap(),
    );
    assert!(heard * 100 >= expected * 95, "{report}");
}
