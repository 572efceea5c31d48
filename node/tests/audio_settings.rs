//! Audio settings changed while real nodes run on loopback QUIC: bitrate, input switch and the
//! input meter, jitter-buffer bounds, and refusals of settings that make no sense.

mod common;

use callsign_node::audio::mixer::DuckRule;
use callsign_node::runtime::{AudioInput, AudioSettings};
use callsign_node::{Node, NodeCommand, NodeEvent};
use std::time::Duration;

use common::squad::{squad, WAIT};

/// Mean size of the voice packets `node` sends while it talks on `channel` for `millis`.
async fn mean_packet_bytes(node: &mut Node, channel: callsign_mesh::charter::ChannelId) -> f64 {
    while node.try_event().is_some() {}
    node.command(NodeCommand::PttDown(vec![channel])).unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    node.command(NodeCommand::PttUp).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut sizes = Vec::new();
    while let Some(event) = node.try_event() {
        if let NodeEvent::VoiceSent { packet, .. } = event {
            sizes.push(packet.len() as f64);
        }
    }
    assert!(sizes.len() > 20, "only {} packets sent", sizes.len());
    sizes.iter().sum::<f64>() / sizes.len() as f64
}

#[tokio::test]
async fn bitrate_input_and_jitter_bounds_change_while_running() {
    let mut s = squad(2).await;
    let flight = s.org.flight;

    // Both members start on synthetic speech: the meter shows it.
    let mut loudest = f32::MIN;
    for _ in 0..10 {
        let stats = s.nodes[1].stats().await.unwrap();
        loudest = loudest.max(stats.audio.input_level_db);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        loudest > -40.0,
        "synthetic speech metered at {loudest} dBFS"
    );
    // Switched to silence, the meter falls to the floor.
    s.nodes[1]
        .command(NodeCommand::SetInput(AudioInput::Silence))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let quiet = s.nodes[1].stats().await.unwrap().audio;
    assert!(quiet.input_level_db <= -89.0, "{quiet:?}");
    assert_eq!(quiet.capture_feed, None, "no sound card in use");

    // A lower bitrate makes smaller packets from the next frame on.
    let before = mean_packet_bytes(&mut s.nodes[0], flight).await;
    let low = AudioSettings {
        bitrate: 8_000,
        jitter_min: Duration::from_millis(60),
        jitter_max: Duration::from_millis(200),
        ..AudioSettings::default()
    };
    s.nodes[0]
        .command(NodeCommand::SetAudio(low.clone()))
        .unwrap();
    let after = mean_packet_bytes(&mut s.nodes[0], flight).await;
    // 24 kb/s is 60 bytes of Opus per 20 ms frame, 8 kb/s is 20 (plus FEC); the header and
    // AEAD tag are the same size in both.
    assert!(
        before - after > 20.0,
        "24 kb/s packets averaged {before:.1} B, 8 kb/s {after:.1} B"
    );

    // The listener's jitter buffer holds at least its new minimum.
    s.nodes[1].command(NodeCommand::SetAudio(low)).unwrap();
    s.nodes[0]
        .command(NodeCommand::PttDown(vec![flight]))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.nodes[0].command(NodeCommand::PttUp).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = s.nodes[1].stats().await.unwrap();
    let heard = stats
        .received
        .iter()
        .find(|r| r.from == s.org.members[0].keys.identity.public())
        .expect("the listener heard the talker");
    assert!(
        heard.jitter_delay_ms >= 40.0,
        "jitter buffer delay {} ms under a 60 ms minimum",
        heard.jitter_delay_ms
    );
}

#[tokio::test]
async fn nonsense_settings_and_missing_devices_are_refused_with_a_reason() {
    let mut s = squad(1).await;
    let node = &mut s.nodes[0];
    let refusals = [
        AudioSettings {
            bitrate: 1_000,
            ..AudioSettings::default()
        },
        AudioSettings {
            jitter_min: Duration::from_millis(300),
            jitter_max: Duration::from_millis(100),
            ..AudioSettings::default()
        },
        AudioSettings {
            vad_threshold: 1.5,
            ..AudioSettings::default()
        },
        AudioSettings {
            ducking: vec![DuckRule {
                when_active: s.org.flight,
                ducked: s.org.flight,
                db: 12.0,
            }],
            ..AudioSettings::default()
        },
    ];
    for settings in refusals {
        node.command(NodeCommand::SetAudio(settings.clone()))
            .unwrap();
        let warning = node
            .wait_for(WAIT, |e| matches!(e, NodeEvent::Warning(_)))
            .await;
        assert!(
            matches!(&warning, Some(NodeEvent::Warning(w)) if w.starts_with("audio settings refused")),
            "{settings:?} gave {warning:?}"
        );
    }
    // No sound card here (or no such device): the node says so and keeps its input.
    node.command(NodeCommand::SetInput(AudioInput::Device(
        callsign_node::audio::Device::Named("no such microphone".into()),
    )))
    .unwrap();
    let warning = node
        .wait_for(WAIT, |e| matches!(e, NodeEvent::Warning(_)))
        .await;
    assert!(
        matches!(&warning, Some(NodeEvent::Warning(w)) if w.starts_with("input unchanged")),
        "{warning:?}"
    );
    let stats = node.stats().await.unwrap();
    assert!(
        stats.audio.input_level_db > -90.0,
        "the synthetic input still runs"
    );
}
