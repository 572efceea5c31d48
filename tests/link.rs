//! End-to-end tests of `callsign link`: a listener process and a pinger process on loopback.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command as StdCommand, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use assert_cmd::cargo::CommandCargoExt;
use assert_cmd::Command;
use serde_json::Value;

struct Listener {
    child: Child,
    addrs: Vec<String>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How long the listener may take to print its addresses, and a ping to finish: far above
/// what either takes, so that a broken listener fails the test instead of hanging the run.
const PATIENCE: Duration = Duration::from_secs(60);

/// Starts `callsign link listen --json` and collects its loopback addresses.
fn listener() -> Listener {
    let mut child = StdCommand::cargo_bin("callsign")
        .unwrap()
        .args(["link", "listen", "--port", "0", "--json"])
        .env_remove("CALLSIGN_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // A thread reads the lines so that this end can stop waiting. It ends after the second
    // loopback address and drops the reader on purpose: the listener must keep serving when
    // nobody reads its output any more (its later "connected" lines go to a closed pipe).
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut loopback = 0;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let value: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            let addr = value["addr"].as_str().unwrap_or_default().to_owned();
            if addr.starts_with("/ip4/127.0.0.1/") {
                loopback += 1;
            }
            if tx.send(line).is_err() || loopback == 2 {
                break;
            }
        }
    });
    let deadline = Instant::now() + PATIENCE;
    let mut lines = Vec::new();
    let mut addrs = Vec::new();
    while addrs.len() < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            panic!("the listener printed no two loopback addresses within {PATIENCE:?}: {lines:?}");
        };
        let value: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["event"], "listening", "{line}");
        let addr = value["addr"].as_str().unwrap().to_owned();
        if addr.starts_with("/ip4/127.0.0.1/") {
            addrs.push(addr);
        }
        lines.push(line);
    }
    Listener { child, addrs }
}

fn ping(addr: &str) -> Value {
    let stdout = common::success_stdout(
        Command::cargo_bin("callsign")
            .unwrap()
            .args(["link", "ping", addr, "--count", "3", "--json"])
            .env_remove("CALLSIGN_KEY")
            .timeout(PATIENCE),
    );
    serde_json::from_slice(&stdout).unwrap()
}

#[test]
fn ping_measures_stream_and_datagram_rtt_over_quic_and_tcp() {
    let listener = listener();
    let quic = listener
        .addrs
        .iter()
        .find(|a| a.contains("/quic-v1/"))
        .unwrap();
    let tcp = listener.addrs.iter().find(|a| a.contains("/tcp/")).unwrap();

    let report = ping(quic);
    assert_eq!(report["transport"], "quic");
    assert_eq!(report["stream"]["received"], 3);
    assert_eq!(report["datagram"]["received"], 3);
    assert!(report["datagram"]["avg_ms"].as_f64().unwrap() < 100.0);
    assert!(quic.ends_with(report["peer"].as_str().unwrap()));

    let report = ping(tcp);
    assert_eq!(report["transport"], "tcp");
    assert_eq!(report["stream"]["received"], 3);
    assert!(report["datagram"].is_null());
}

#[test]
fn ping_failures_are_clear_errors() {
    let unreachable =
        "/ip4/127.0.0.1/udp/9/quic-v1/p2p/12D3KooWGhxGtqMmNKwt2FAZo56zceWTU7SNBC7eGB4jo6fpDFXw";
    let out = Command::cargo_bin("callsign")
        .unwrap()
        .args(["link", "ping", unreachable, "--timeout", "1s"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("cannot reach") || stderr.contains("cannot connect"),
        "{stderr}"
    );

    let out = Command::cargo_bin("callsign")
        .unwrap()
        .args(["link", "ping", "/ip4/127.0.0.1/udp/9/quic-v1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("/p2p/"), "{stderr}");
}
