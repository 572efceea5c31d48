//! The sound-card path end to end, headless: ALSA's `null` device (a `~/.asoundrc` in a temp
//! home makes it the default) runs real cpal streams at 44.1 kHz stereo, so the device threads,
//! the capture and playback rings and the feeds' resampling all run. The null device keeps no
//! clock: it captures and plays as fast as it is asked, which is the worst runaway card there
//! is, so this also shows the feeds keep the worker's latency and time bounded.
#![cfg(all(feature = "device-audio", target_os = "linux"))]

use callsign_node::audio::Device;
use callsign_node::runtime::demo_org::DemoOrg;
use callsign_node::runtime::AudioInput;
use callsign_node::{Node, NodeCommand, NodeConfig};
use std::time::Duration;

#[tokio::test]
async fn a_node_captures_from_and_plays_to_a_sound_card() {
    let home = tempfile::tempdir().unwrap();
    std::fs::write(
        home.path().join(".asoundrc"),
        "pcm.!default { type plug slave.pcm \"null\" }\n",
    )
    .unwrap();
    // This test binary has this one test: nothing else reads the environment meanwhile.
    std::env::set_var("HOME", home.path());
    let (_, devices) = callsign_node::audio::device::list_devices().unwrap();
    assert!(
        devices.iter().any(|d| d.input && d.is_default),
        "ALSA lists no default input: {devices:?}"
    );

    let org = DemoOrg::new(1, 9).unwrap();
    let member = &org.members[0];
    let mut config = NodeConfig::new(member.keys.clone(), org.charter.clone(), &member.name);
    config.input = AudioInput::Device(Device::Default);
    config.output_device = Some(Device::Default);
    let node = Node::start(config).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let audio = node.stats().await.unwrap().audio;
    let capture = audio.capture_feed.expect("capturing from the sound card");
    let playback = audio.playback_feed.expect("playing to the sound card");
    // Two seconds is 96,000 samples at 48 kHz. The card delivered at least that (the first
    // frames may be padded while its stream starts: up to half a second on a loaded machine,
    // seen 200 ms in CI) and far more: the surplus was dropped, not queued, so the frame
    // timer kept its pace (the stats came back on time).
    assert!(capture.capture_padded <= 24_000, "{audio:?}");
    assert!(capture.capture_dropped > 0, "{audio:?}");
    assert!(audio.capture_overruns > 0, "{audio:?}");
    // The card took every block the mixer made (and asked for more: underruns).
    assert_eq!(playback.playback_dropped, 0, "{audio:?}");
    assert!(audio.playback_underruns > 0, "{audio:?}");
    // The null device captures silence.
    assert!(audio.input_level_db <= -89.0, "{audio:?}");

    // Switching the input back to synthetic speech closes the card and the meter moves.
    node.command(NodeCommand::SetInput(AudioInput::Synthetic { seed: 1 }))
        .unwrap();
    node.command(NodeCommand::SetOutputDevice(None)).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let audio = node.stats().await.unwrap().audio;
    assert_eq!(audio.capture_feed, None);
    assert_eq!(audio.playback_feed, None);
    node.shutdown().await.unwrap();
}
