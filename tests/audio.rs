//! End-to-end tests of `callsign audio`: device listing, and the offline loopback on real speech.

mod common;

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::Value;

fn callsign() -> Command {
    Command::cargo_bin("callsign").unwrap()
}

fn speech() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("node/tests/data/speech-16k.wav")
}

fn loopback(output: &Path, extra: &[&str]) -> Value {
    let stdout = common::success_stdout(
        callsign()
            .args(["audio", "loopback", "--input"])
            .arg(speech())
            .arg("--output")
            .arg(output)
            .args(["--json"])
            .args(extra),
    );
    serde_json::from_slice(&stdout).unwrap()
}

/// Expects exit 1 with one `error:` line containing `needle`, and no panic.
fn assert_clean_failure(cmd: &mut Command, needle: &str) {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in {stderr}");
}

#[test]
fn loopback_is_deterministic_per_seed_and_reports_stats() {
    let dir = tempfile::tempdir().unwrap();
    let flags = [
        "--loss",
        "10%",
        "--jitter-ms",
        "15",
        "--reorder",
        "0.02",
        "--seed",
        "11",
    ];
    let a = loopback(&dir.path().join("a.wav"), &flags);
    let b = loopback(&dir.path().join("b.wav"), &flags);
    let a_bytes = std::fs::read(dir.path().join("a.wav")).unwrap();
    assert_eq!(a_bytes, std::fs::read(dir.path().join("b.wav")).unwrap());
    assert_eq!(a, b);
    assert_eq!(&a_bytes[..4], b"RIFF");

    let frames = a["frames"].as_u64().unwrap();
    let lost = a["lost_in_network"].as_u64().unwrap();
    assert!(frames > 400);
    assert!(lost > 20 && lost < 80, "{a}");
    assert!(a["recovered_fec"].as_u64().unwrap() > 0);
    assert!(a["mean_playout_delay_ms"].as_f64().unwrap() > 40.0);

    let c = loopback(
        &dir.path().join("c.wav"),
        &["--loss", "10%", "--seed", "12"],
    );
    assert_ne!(a["lost_in_network"], c["lost_in_network"]);
}

#[test]
fn loopback_without_fec_conceals_instead() {
    let dir = tempfile::tempdir().unwrap();
    let r = loopback(
        &dir.path().join("o.wav"),
        &[
            "--loss",
            "0.15",
            "--no-fec",
            "--frame-ms",
            "40",
            "--bitrate",
            "16000",
        ],
    );
    assert_eq!(r["recovered_fec"].as_u64(), Some(0));
    assert!(r["concealed"].as_u64().unwrap() >= r["lost_in_network"].as_u64().unwrap());
}

#[test]
fn loopback_refuses_bad_input_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.wav");
    let missing = dir.path().join("missing.wav");
    assert_clean_failure(
        callsign()
            .args(["audio", "loopback", "--input"])
            .arg(&missing)
            .arg("--output")
            .arg(&out),
        "missing.wav",
    );
    let corrupt = dir.path().join("corrupt.wav");
    std::fs::write(&corrupt, b"RIFF\x10\x00\x00\x00WAVEfmt garbage").unwrap();
    assert_clean_failure(
        callsign()
            .args(["audio", "loopback", "--input"])
            .arg(&corrupt)
            .arg("--output")
            .arg(&out),
        "corrupt.wav",
    );
    assert!(!out.exists(), "no output for a failed run");
    for (flag, value, needle) in [
        ("--loss", "5", "percentage"),
        ("--frame-ms", "30", "10, 20, 40 or 60"),
        ("--bitrate", "100000", "6000..=64000"),
        ("--burst-loss", "0.1", "P,R"),
        ("--jitter-ms", "1e9", "jitter"),
    ] {
        assert_clean_failure(
            callsign()
                .args(["audio", "loopback", "--input"])
                .arg(speech())
                .arg("--output")
                .arg(&out)
                .args([flag, value]),
            needle,
        );
    }
}

#[test]
fn devices_lists_or_explains() {
    let out = callsign().args(["audio", "devices"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    // A machine without sound hardware says so; one with it lists devices.
    if out.status.success() {
        assert!(
            stdout.contains("input") || stdout.contains("no audio devices"),
            "{stdout}"
        );
    } else {
        assert!(stderr.contains("sound"), "{stderr}");
    }
}
