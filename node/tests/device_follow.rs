//! A sound card unplugged while the node runs, headless: ALSA's `null` device under two names
//! (`default` and a `headset` with a hint, so ALSA lists it), made and unmade by rewriting
//! `~/.asoundrc`, which ALSA reads again when it changes. The streams are real cpal streams;
//! the node keeps capturing and playing through the move and back.
#![cfg(all(feature = "device-audio", target_os = "linux"))]

use callsign_node::audio::Device;
use callsign_node::runtime::demo_org::DemoOrg;
use callsign_node::runtime::{AudioInput, AudioStats};
use callsign_node::{Node, NodeConfig};
use std::path::Path;
use std::time::{Duration, Instant};

const DEFAULT: &str = "pcm.!default { type plug slave.pcm \"null\" }\n";
const HEADSET: &str = "pcm.headset { type plug slave.pcm \"null\" \
                       hint { show on description \"Test headset\" } }\n";

fn sound_system(home: &Path, headset: bool) {
    let mut rc = DEFAULT.to_owned();
    if headset {
        rc.push_str(HEADSET);
    }
    std::fs::write(home.join(".asoundrc"), rc).unwrap();
}

/// Waits (up to 10 s) until both directions are on `device`, and returns the stats then.
async fn on_device(node: &Node, device: &str) -> AudioStats {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let audio = node.stats().await.unwrap().audio;
        let there = audio.input_device.as_deref() == Some(device)
            && audio.output_device.as_deref() == Some(device);
        if there {
            return audio;
        }
        assert!(
            Instant::now() < deadline,
            "never moved to {device}: {audio:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn reopened(audio: &AudioStats) -> (u64, u64) {
    (
        audio.capture_feed.unwrap().reopened,
        audio.playback_feed.unwrap().reopened,
    )
}

#[tokio::test]
async fn a_chosen_sound_card_unplugged_and_plugged_back_is_left_and_taken_back() {
    let home = tempfile::tempdir().unwrap();
    sound_system(home.path(), true);
    // This test binary has this one test: nothing else reads the environment meanwhile.
    std::env::set_var("HOME", home.path());

    let org = DemoOrg::new(1, 9).unwrap();
    let member = &org.members[0];
    let mut config = NodeConfig::new(member.keys.clone(), org.charter.clone(), &member.name);
    config.input = AudioInput::Device(Device::Named("headset".into()));
    config.output_device = Some(Device::Named("headset".into()));
    let node = Node::start(config).await.unwrap();
    let audio = on_device(&node, "headset").await;
    assert_eq!(reopened(&audio), (0, 0), "{audio:?}");

    // Unplugged: the default stands in, and audio keeps flowing through the same rings.
    sound_system(home.path(), false);
    let audio = on_device(&node, "default").await;
    assert_eq!(reopened(&audio), (1, 1), "{audio:?}");
    let padded = audio.capture_feed.unwrap().capture_padded;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let audio = node.stats().await.unwrap().audio;
    // A second at 48 kHz is 48,000 samples: the card delivered nearly all of them.
    let missing = audio.capture_feed.unwrap().capture_padded - padded;
    assert!(missing < 12_000, "{missing} samples padded: {audio:?}");

    // Plugged back: the node returns to the card the user chose.
    sound_system(home.path(), true);
    let audio = on_device(&node, "headset").await;
    assert_eq!(reopened(&audio), (2, 2), "{audio:?}");
    node.shutdown().await.unwrap();
}
