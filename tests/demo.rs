//! `callsign demo`: three nodes on loopback QUIC, the acceptance numbers of voice over the mesh.

mod common;

use assert_cmd::Command;
use common::success_stdout;
use serde_json::Value;

fn demo(args: &[&str]) -> Value {
    let out = success_stdout(
        Command::cargo_bin("callsign")
            .unwrap()
            .arg("demo")
            .args(args),
    );
    serde_json::from_slice(&out).unwrap()
}

#[test]
fn three_nodes_hear_every_allowed_stream_and_nothing_else() {
    let report = demo(&["--nodes", "3", "--seconds", "5", "--json"]);
    let streams = report["streams"].as_array().unwrap();
    let find = |from: &str, to: &str, channel: &str| {
        streams
            .iter()
            .find(|s| s["from"] == from && s["to"] == to && s["channel"] == channel)
    };
    // The script: officer simulcasts command+flight, pilot talks on flight, recruit whispers to
    // the officer (and is refused on command), then the pilot and the officer on /net.
    for (from, to, channel) in [
        ("officer-0", "pilot-1", "command"),
        ("officer-0", "pilot-1", "flight"),
        ("officer-0", "recruit-2", "flight"),
        ("pilot-1", "officer-0", "flight"),
        ("pilot-1", "recruit-2", "flight"),
        ("recruit-2", "officer-0", "whisper"),
    ] {
        let s = find(from, to, channel).unwrap_or_else(|| panic!("{from}->{to} {channel}"));
        let sent = s["frames_sent"].as_u64().unwrap();
        let played = s["frames_played"].as_u64().unwrap();
        assert!(sent >= 20, "{s}");
        assert!(played * 100 >= sent * 98, "{s}");
        let p50 = s["mouth_to_ear_ms"]["p50"].as_f64().unwrap();
        assert!(p50 <= 60.0, "{s}");
    }
    // The half-duplex net: the pilot talks, the officer (priority 3) pre-empts it; both are
    // heard by the other two, never at once.
    for (from, to) in [
        ("pilot-1", "officer-0"),
        ("pilot-1", "recruit-2"),
        ("officer-0", "pilot-1"),
        ("officer-0", "recruit-2"),
    ] {
        let s = find(from, to, "net").unwrap_or_else(|| panic!("{from}->{to} net"));
        let (sent, played) = (
            s["frames_sent"].as_u64().unwrap(),
            s["frames_played"].as_u64().unwrap(),
        );
        // The pilot's frames sent before it heard of its pre-emption are dropped as out of
        // turn (none on an idle machine, a few on a loaded one).
        assert!(sent >= 5 && played * 10 >= sent * 7, "{s}");
    }
    // The pilot was cut off after ~0.15 s of its 0.5 s turn.
    let pilot = find("pilot-1", "officer-0", "net").unwrap()["frames_sent"]
        .as_u64()
        .unwrap();
    assert!(pilot < 15, "{report}");
    let floor: Vec<&str> = report["floor"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        floor.contains(&"pilot-1: floor pre-empted on net by officer-0"),
        "{report}"
    );
    assert!(
        floor.contains(&"officer-0: floor granted on net"),
        "{report}"
    );
    assert!(
        report["out_of_turn_drops"].as_u64().unwrap() <= 25,
        "{report}"
    );
    assert_eq!(streams.len(), 10, "{report}");
    // The recruit may not listen on command: nothing was sent to it there, nothing played.
    assert!(find("officer-0", "recruit-2", "command").is_none());
    assert_eq!(report["unauthorised_frames"], 0);
    assert_eq!(report["decrypt_failures"], 0);
    assert_eq!(report["acl_drops"], 0);
    assert_eq!(report["ptt_denied"], 1);
}

#[test]
fn demo_writes_what_each_node_heard_and_refuses_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("heard");
    let text = success_stdout(
        Command::cargo_bin("callsign")
            .unwrap()
            .args(["demo", "--nodes", "2", "--seconds", "3", "--out"])
            .arg(&out),
    );
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains("officer-0 -> pilot-1 on command"), "{text}");
    for name in ["officer-0", "pilot-1"] {
        let wav = out.join(format!("{name}.wav"));
        let reader = hound::WavReader::open(&wav).unwrap();
        assert_eq!(reader.spec().channels, 2);
        // The pilot heard the officer: its file is not silent.
        if name == "pilot-1" {
            let loud = reader
                .into_samples::<i16>()
                .filter_map(Result::ok)
                .filter(|s| s.unsigned_abs() > 1000)
                .count();
            assert!(loud > 1000, "{name} heard nothing");
        }
    }
    let bad = Command::cargo_bin("callsign")
        .unwrap()
        .args(["demo", "--nodes", "1"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--nodes"));
}
