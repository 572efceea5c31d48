//! Recording with real nodes on loopback QUIC and real libopus: the file plays in opus-tools,
//! its talker segments match what was said, the listener's peers see it record, and a channel
//! whose charter policy forbids recording is not recorded.

mod common;

use callsign_mesh::charter::{OpBody, RecordingPolicy};
use callsign_node::audio::wav::read_wav;
use callsign_node::runtime::demo_org::DemoOrg;
use callsign_node::{NodeCommand, NodeEvent};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::squad::{linked_pair, WAIT};

fn tool(name: &str) -> Command {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{name} is missing: install opus-tools (bash scripts/setup)"
    );
    Command::new(name)
}

fn rms(samples: &[f32]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    (samples.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>() / samples.len() as f64).sqrt()
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    out.sort();
    out
}

#[tokio::test]
async fn a_recording_plays_in_opus_tools_with_the_talkers_where_they_spoke() {
    let mut org = DemoOrg::new(2, 41).unwrap();
    // The org forbids recording /command.
    org.charter
        .edit(
            &org.root,
            OpBody::SetRecording {
                channel: org.command,
                policy: Some(RecordingPolicy::Forbidden),
            },
            0,
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut talker, mut listener) = linked_pair(&org, 5, |i, c| {
        if i == 1 {
            c.recordings = Some(dir.path().to_path_buf());
        }
    })
    .await;

    listener
        .command(NodeCommand::Record {
            channel: org.command,
            on: true,
        })
        .unwrap();
    let refused = listener
        .wait_for(WAIT, |e| matches!(e, NodeEvent::RecordingRefused { .. }))
        .await;
    assert!(
        matches!(refused, Some(NodeEvent::RecordingRefused { channel, .. }) if channel == org.command)
    );
    listener
        .command(NodeCommand::Record {
            channel: org.flight,
            on: true,
        })
        .unwrap();
    listener
        .wait_for(
            WAIT,
            |e| matches!(e, NodeEvent::Recording { on: true, channel } if *channel == org.flight),
        )
        .await
        .expect("recording starts");
    // Everyone listening sees it.
    let flight = org.flight;
    talker
        .wait_for(
            WAIT,
            |e| matches!(e, NodeEvent::Presence { recording, .. } if recording == &vec![flight]),
        )
        .await
        .expect("the talker sees the listener record");

    // Two transmissions on /flight (1.0 s and 0.8 s, 1.0 s apart), one on /command.
    let started = Instant::now();
    let mut spoken = Vec::new();
    for (channel, millis) in [(org.flight, 1000), (org.command, 500), (org.flight, 800)] {
        let from = started.elapsed();
        talker.command(NodeCommand::PttDown(vec![channel])).unwrap();
        tokio::time::sleep(Duration::from_millis(millis)).await;
        talker.command(NodeCommand::PttUp).unwrap();
        if channel == org.flight {
            spoken.push((from, started.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    listener
        .command(NodeCommand::Record {
            channel: org.flight,
            on: false,
        })
        .unwrap();
    listener
        .wait_for(WAIT, |e| {
            matches!(e, NodeEvent::Recording { on: false, .. })
        })
        .await
        .expect("recording stops");

    let found = files(dir.path());
    assert_eq!(found.len(), 2, "one recording and its sidecar: {found:?}");
    let opus = found
        .iter()
        .find(|p| p.extension().is_some_and(|e| e == "opus"))
        .expect("an .opus file");
    assert!(opus
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("flight-"));

    let info = tool("opusinfo").arg(opus).output().unwrap();
    let text =
        String::from_utf8_lossy(&info.stdout).to_string() + &String::from_utf8_lossy(&info.stderr);
    assert!(info.status.success(), "opusinfo: {text}");
    assert!(
        !text.contains("WARNING") && !text.contains("ERROR"),
        "opusinfo complains: {text}"
    );
    assert!(text.contains("Playback length"), "{text}");

    let sidecar: serde_json::Value =
        serde_json::from_slice(&std::fs::read(opus.with_extension("opus.json")).unwrap()).unwrap();
    let segments = sidecar["segments"].as_array().unwrap();
    assert_eq!(segments.len(), 2, "{sidecar}");
    let talker_key = org.members[0].keys.identity.public().to_string();
    let ms = |v: &serde_json::Value| v.as_u64().unwrap() as i64;
    for (segment, (from, to)) in segments.iter().zip(&spoken) {
        assert_eq!(segment["talker"], talker_key.as_str());
        assert_eq!(segment["overlapped"], 0);
        let said = (to.as_millis() - from.as_millis()) as i64;
        let heard = ms(&segment["end_ms"]) - ms(&segment["start_ms"]);
        assert!(
            (heard - said).abs() <= 150,
            "segment of {heard} ms for {said} ms spoken: {segment}"
        );
    }
    // The gap between the two spurts is the time between them.
    let gap_said = (spoken[1].0.as_millis() - spoken[0].1.as_millis()) as i64;
    let gap_heard = ms(&segments[1]["start_ms"]) - ms(&segments[0]["end_ms"]);
    assert!(
        (gap_heard - gap_said).abs() <= 150,
        "gap of {gap_heard} ms in the file for {gap_said} ms"
    );

    // Decoded by opusdec: speech inside the segments, silence between them.
    let wav = dir.path().join("decoded.wav");
    let status = tool("opusdec")
        .args(["--quiet", "--rate", "48000"])
        .arg(opus)
        .arg(&wav)
        .status()
        .unwrap();
    assert!(status.success());
    let pcm = read_wav(&wav).unwrap();
    let at = |ms: i64| ((ms.max(0) as usize) * 48).min(pcm.len());
    let inside =
        rms(&pcm[at(ms(&segments[0]["start_ms"]) + 100)..at(ms(&segments[0]["end_ms"]) - 100)]);
    let between =
        rms(&pcm[at(ms(&segments[0]["end_ms"]) + 100)..at(ms(&segments[1]["start_ms"]) - 100)]);
    println!(
        "{text}\n{sidecar:#}\nspoken {spoken:?}\nspeech rms {inside:.4}, gap rms {between:.4}"
    );
    assert!(
        inside > 0.01 && between < inside / 30.0,
        "speech {inside:.4}, gap {between:.4}"
    );
    talker.shutdown().await.unwrap();
    listener.shutdown().await.unwrap();
}
