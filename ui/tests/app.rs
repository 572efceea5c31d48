//! The app's main flows, driven headless through egui_kittest (AccessKit): first run with a real
//! node, the admin adding a channel on it, PTT by button and by hotkey, listen toggles, a
//! talker's name in the right row, and unlocking an encrypted identity.

use callsign_keys::{Identity, KeyFile, NodeKeys, Ticket};
use callsign_mesh::charter::log::OpLog;
use callsign_mesh::charter::{ChannelId, Charter, OpBody, Permissions, Priority, Role};
use callsign_node::audio::Device;
use callsign_node::runtime::{
    AudioInput, AudioSettings, AudioStats, LinkKind, PeerStats, ReceivedStream, StreamChannel,
};
use callsign_node::{NodeCommand, NodeEvent, NodeStats};
use callsign_ui::app::NodeStarter;
use callsign_ui::{NodeBridge, Profile, RadioApp};
use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

fn harness(app: RadioApp) -> Harness<'static, RadioApp> {
    Harness::builder()
        .with_size(eframe::egui::vec2(1100.0, 700.0))
        .build_state(|ctx, app: &mut RadioApp| app.ui(ctx), app)
}

/// Steps the UI (the node works on its own threads) until `done` or 10 s.
fn step_until(
    h: &mut Harness<'static, RadioApp>,
    mut done: impl FnMut(&Harness<RadioApp>) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done(h) {
        assert!(Instant::now() < deadline, "timed out");
        h.step();
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn type_into(h: &mut Harness<'static, RadioApp>, label: &str, text: &str) {
    h.get_by_label(label).focus();
    h.step();
    h.get_by_label(label).type_text(text);
    h.step();
}

/// The node's end of a bridge, for tests that check what the app sends it.
type NodeEnds = Rc<
    RefCell<
        Option<(
            mpsc::UnboundedReceiver<NodeCommand>,
            mpsc::UnboundedSender<NodeEvent>,
        )>,
    >,
>;

fn channel_starter(ends: NodeEnds) -> NodeStarter {
    Box::new(move |_config, _log| {
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (events_tx, events) = mpsc::unbounded_channel();
        *ends.borrow_mut() = Some((commands_rx, events_tx));
        Ok(NodeBridge::from_channels(commands, events))
    })
}

/// What the app sent since the last call, as `Debug` text (commands carry reply channels,
/// so they have no `PartialEq`), without its snapshot requests.
fn commands(ends: &NodeEnds) -> Vec<String> {
    let mut out = Vec::new();
    if let Some((rx, _)) = ends.borrow_mut().as_mut() {
        while let Ok(c) = rx.try_recv() {
            // Snapshot requests (counters, charter) go out on their own schedule.
            if !matches!(c, NodeCommand::Stats(_) | NodeCommand::Charter(_)) {
                out.push(format!("{c:?}"));
            }
        }
    }
    out
}

fn expect(commands: &[NodeCommand]) -> Vec<String> {
    commands.iter().map(|c| format!("{c:?}")).collect()
}

/// A saved profile whose org has `/ops`, the identity unencrypted.
fn saved_profile(dir: &Path) -> ChannelId {
    let keys = NodeKeys::generate(&mut rand::rngs::OsRng);
    let (mut charter, first) = Charter::create(&keys.identity, "Wing", 0).unwrap();
    let second = charter
        .edit(
            &keys.identity,
            OpBody::AddChannel {
                parent: None,
                name: "ops".into(),
            },
            0,
        )
        .unwrap();
    let third = charter
        .edit(
            &keys.identity,
            OpBody::PutRole {
                name: "pilot".into(),
                role: Role {
                    perms: Permissions::LISTEN.union(Permissions::SPEAK),
                    priority: Priority::NORMAL,
                },
            },
            0,
        )
        .unwrap();
    let org = charter.org();
    let profile = Profile::new("Iceman", &org, Vec::new());
    KeyFile::seal(&keys, None, &mut rand::rngs::OsRng)
        .unwrap()
        .save(&dir.join(&profile.key), false)
        .unwrap();
    let log_path = Profile::charter_log(dir, &org);
    std::fs::create_dir_all(log_path.parent().unwrap()).unwrap();
    let mut log = OpLog::create(&log_path, org).unwrap();
    log.append(
        [first.encode(), second.encode(), third.encode()]
            .iter()
            .map(Vec::as_slice),
    )
    .unwrap();
    profile.save(dir).unwrap();
    charter.state().find("/ops").unwrap()
}

#[test]
fn first_run_creates_an_identity_and_an_org_and_the_admin_adds_a_channel() {
    let dir = tempfile::tempdir().unwrap();
    let app = RadioApp::new(dir.path().to_path_buf(), Box::new(NodeBridge::start));
    let mut h = harness(app);
    h.step();
    type_into(&mut h, "Callsign", "Maverick");
    type_into(&mut h, "Org name", "Top Gun");
    h.get_by_label("Start").click();
    h.step();
    // The profile is remembered, with its key and the charter log.
    let profile = Profile::load(dir.path()).unwrap().expect("profile saved");
    assert_eq!(profile.name, "Maverick");
    assert!(dir.path().join("identity.key").exists());
    let org = profile.org_key().unwrap();
    assert!(Profile::charter_log(dir.path(), &org).exists());
    // The radio stack runs on a real node; the founder is admin and adds a channel.
    step_until(&mut h, |h| h.query_by_label("Add channel").is_some());
    assert!(h.query_by_label("No channels yet.").is_some());
    type_into(&mut h, "New channel", "flight");
    h.get_by_label("Add channel").click();
    step_until(&mut h, |h| h.query_by_label("PTT /flight").is_some());
    // Its hotkey (F1) keys the real node: it reports transmitting, and the row lights up.
    h.key_down(eframe::egui::Key::F1);
    step_until(&mut h, |h| h.query_by_label("TX /flight").is_some());
    h.key_up(eframe::egui::Key::F1);
    step_until(&mut h, |h| h.query_by_label("TX /flight").is_none());
}

#[test]
fn buttons_and_hotkeys_send_the_node_its_commands_and_talkers_show_in_their_row() {
    let dir = tempfile::tempdir().unwrap();
    let ops = saved_profile(dir.path());
    let ends: NodeEnds = Rc::default();
    // A saved, unencrypted profile opens straight on the radio stack.
    let app = RadioApp::new(dir.path().to_path_buf(), channel_starter(ends.clone()));
    let mut h = harness(app);
    h.step();
    // The profile's sound settings go to the node first: the default devices.
    assert_eq!(
        commands(&ends),
        expect(&[
            NodeCommand::SetInput(AudioInput::Device(Device::Default)),
            NodeCommand::SetOutputDevice(Some(Device::Default)),
            NodeCommand::SetAudio(AudioSettings::default()),
        ])
    );
    // Listen toggle.
    h.get_by_label("listen /ops").click();
    h.step();
    assert_eq!(commands(&ends), expect(&[NodeCommand::Unlisten(ops)]));
    h.get_by_label("listen /ops").click();
    h.step();
    assert_eq!(commands(&ends), expect(&[NodeCommand::Listen(ops)]));
    // The PTT button: down on press, up on release.
    h.get_by_label("PTT /ops").click();
    h.step();
    assert_eq!(
        commands(&ends),
        expect(&[NodeCommand::PttDown(vec![ops]), NodeCommand::PttUp])
    );
    // Its hotkey does the same, held as long as the key.
    h.key_down(eframe::egui::Key::F1);
    h.step();
    assert_eq!(commands(&ends), expect(&[NodeCommand::PttDown(vec![ops])]));
    h.key_up(eframe::egui::Key::F1);
    h.step();
    assert_eq!(commands(&ends), expect(&[NodeCommand::PttUp]));
    // A talker's name shows in the row of the channel it talks on, and goes when it stops.
    let goose = Identity::from_secret_bytes([9; 32]).public();
    let events = ends.borrow().as_ref().map(|(_, e)| e.clone()).unwrap();
    events
        .send(NodeEvent::TalkerStarted {
            peer: goose,
            name: "Goose".into(),
            channels: vec![ops],
            whisper: false,
        })
        .unwrap();
    h.step();
    assert!(h.query_by_label("/ops: Goose").is_some());
    events
        .send(NodeEvent::TalkerStopped { peer: goose })
        .unwrap();
    h.step();
    assert!(h.query_by_label("/ops: Goose").is_none());
}

#[test]
fn an_encrypted_identity_is_unlocked_with_its_passphrase() {
    let dir = tempfile::tempdir().unwrap();
    let ends: NodeEnds = Rc::default();
    let mut h = harness(RadioApp::new(
        dir.path().to_path_buf(),
        channel_starter(ends.clone()),
    ));
    h.step();
    type_into(&mut h, "Callsign", "Viper");
    type_into(&mut h, "Passphrase (optional)", "hunter2 hunter2");
    type_into(&mut h, "Org name", "Fightertown");
    h.get_by_label("Start").click();
    h.step();
    h.step();
    assert!(h.query_by_label("Add channel").is_some());
    drop(h);
    // Next start: the key is encrypted, so the app asks; a wrong passphrase is refused.
    let mut h = harness(RadioApp::new(
        dir.path().to_path_buf(),
        channel_starter(ends.clone()),
    ));
    h.step();
    assert!(h.query_by_label("Unlock").is_some());
    type_into(&mut h, "Passphrase", "wrong");
    h.get_by_label("Unlock").click();
    h.step();
    h.step();
    assert!(h.query_by_label("Unlock").is_some());
    type_into(&mut h, "Passphrase", "hunter2 hunter2");
    h.get_by_label("Unlock").click();
    h.step();
    h.step();
    assert!(h.query_by_label("Add channel").is_some());
}

#[test]
fn hotkeys_are_rebound_without_conflicts_and_remembered() {
    let dir = tempfile::tempdir().unwrap();
    let ops = saved_profile(dir.path());
    let ends: NodeEnds = Rc::default();
    let mut h = harness(RadioApp::new(
        dir.path().to_path_buf(),
        channel_starter(ends.clone()),
    ));
    h.step();
    h.get_by_label("Settings").click();
    h.step();
    // The simulcast group's key is taken: refused, the old key stays.
    h.get_by_label("key for /ops: F1").click();
    h.step();
    h.key_press(eframe::egui::Key::F12);
    h.step();
    h.step();
    assert!(h.query_by_label("key for /ops: F1").is_some());
    // A free key is taken, works at once and is saved in the profile.
    h.get_by_label("key for /ops: F1").click();
    h.step();
    h.key_press(eframe::egui::Key::F5);
    h.step();
    h.step();
    assert!(h.query_by_label("key for /ops: F5").is_some());
    let saved = Profile::load(dir.path()).unwrap().unwrap();
    assert_eq!(saved.hotkeys.get("/ops").map(String::as_str), Some("F5"));
    commands(&ends);
    h.key_down(eframe::egui::Key::F5);
    h.step();
    assert_eq!(commands(&ends), expect(&[NodeCommand::PttDown(vec![ops])]));
    h.key_up(eframe::egui::Key::F5);
    h.step();
}

#[test]
fn an_admin_copies_a_signed_invite_ticket_for_a_role() {
    let dir = tempfile::tempdir().unwrap();
    saved_profile(dir.path());
    let ends: NodeEnds = Rc::default();
    let mut h = harness(RadioApp::new(
        dir.path().to_path_buf(),
        channel_starter(ends.clone()),
    ));
    h.step();
    h.get_by_label("Copy invite ticket").click();
    h.step();
    h.step();
    let label = h
        .query_by_label_contains("ticket: callsign")
        .expect("the ticket is shown")
        .value()
        .unwrap_or_default();
    let text = label.strip_prefix("ticket: ").unwrap();
    let ticket = Ticket::decode(text).unwrap();
    let profile = Profile::load(dir.path()).unwrap().unwrap();
    assert_eq!(ticket.org, profile.org_key().unwrap());
    let grant = ticket.grant.expect("a signed grant");
    assert_eq!(grant.role, "pilot");
}

/// Answers the app's counter requests with `stats` (the meter reads them).
fn answer_stats(ends: &NodeEnds, stats: &NodeStats) -> Vec<String> {
    let mut out = Vec::new();
    if let Some((rx, _)) = ends.borrow_mut().as_mut() {
        while let Ok(c) = rx.try_recv() {
            match c {
                NodeCommand::Stats(reply) => {
                    let _ = reply.send(stats.clone());
                }
                NodeCommand::Charter(_) => {}
                other => out.push(format!("{other:?}")),
            }
        }
    }
    out
}

#[test]
fn audio_settings_reach_the_node_and_stay_in_the_profile() {
    let dir = tempfile::tempdir().unwrap();
    let ops = saved_profile(dir.path());
    let ends: NodeEnds = Rc::default();
    let app = RadioApp::new(dir.path().to_path_buf(), channel_starter(ends.clone()));
    let mut h = harness(app);
    h.step();
    commands(&ends);
    h.get_by_label("Audio").click();
    h.step();
    // The meter shows the node's input level.
    let stats = NodeStats {
        audio: AudioStats {
            input_level_db: -23.0,
            speech_probability: 0.9,
            ..AudioStats::default()
        },
        ..NodeStats::default()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.query_by_label_contains("-23 dBFS").is_none() {
        assert!(
            Instant::now() < deadline,
            "the meter never showed the level"
        );
        answer_stats(&ends, &stats);
        h.step();
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(h.query_by_label("speech 90 %").is_some());
    // Noise suppression off.
    h.get_by_label("noise suppression").click();
    h.step();
    let without = AudioSettings {
        noise_suppression: false,
        ..AudioSettings::default()
    };
    assert_eq!(
        answer_stats(&ends, &stats),
        expect(&[NodeCommand::SetAudio(without.clone())])
    );
    // Voice activation on /ops instead of push-to-talk.
    h.get_by_label("voice activation on /ops").click();
    h.step();
    assert_eq!(
        answer_stats(&ends, &stats),
        expect(&[
            NodeCommand::SetAudio(without.clone()),
            NodeCommand::VoiceActivation(vec![ops]),
        ])
    );
    // No sound card: the input goes silent.
    h.get_by_label("Input device").click();
    h.step();
    h.get_by_label("none").click();
    h.step();
    assert_eq!(
        answer_stats(&ends, &stats)[..2],
        expect(&[
            NodeCommand::SetInput(AudioInput::Silence),
            NodeCommand::SetOutputDevice(Some(Device::Default)),
        ])[..]
    );
    // A channel cannot duck itself: explained here, nothing sent.
    h.get_by_label("Add ducking rule").click();
    h.step();
    assert!(h.query_by_label("a channel cannot duck itself").is_some());
    assert_eq!(answer_stats(&ends, &stats), Vec::<String>::new());
    // All of it is in the profile, and comes back on the next start.
    let profile = Profile::load(dir.path()).unwrap().unwrap();
    assert!(!profile.audio.noise_suppression);
    assert_eq!(profile.audio.voice_activation.as_deref(), Some("/ops"));
    assert_eq!(profile.audio.input, "none");
    drop(h);
    let ends: NodeEnds = Rc::default();
    let mut h = harness(RadioApp::new(
        dir.path().to_path_buf(),
        channel_starter(ends.clone()),
    ));
    h.step();
    assert_eq!(
        commands(&ends),
        expect(&[
            NodeCommand::SetInput(AudioInput::Silence),
            NodeCommand::SetOutputDevice(Some(Device::Default)),
            NodeCommand::SetAudio(without),
            NodeCommand::VoiceActivation(vec![ops]),
        ])
    );
}

#[test]
fn the_roster_shows_each_member_s_link_round_trip_loss_and_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let ops = saved_profile(dir.path());
    let ends: NodeEnds = Rc::default();
    let app = RadioApp::new(dir.path().to_path_buf(), channel_starter(ends.clone()));
    let mut h = harness(app);
    h.step();
    let goose = Identity::from_secret_bytes([9; 32]).public();
    let events = ends.borrow().as_ref().map(|(_, e)| e.clone()).unwrap();
    events
        .send(NodeEvent::Presence {
            peer: goose,
            name: "Goose".into(),
            listening: vec![ops],
        })
        .unwrap();
    events
        .send(NodeEvent::LinkUp {
            peer: goose.peer_id(),
            kind: LinkKind::Relayed,
            remote: "/ip4/127.0.0.1/udp/1/quic-v1".parse().unwrap(),
        })
        .unwrap();
    let stats = NodeStats {
        peers: vec![PeerStats {
            peer: goose.peer_id().to_string(),
            kind: LinkKind::Relayed,
            rtt: Some(Duration::from_millis(42)),
        }],
        received: vec![ReceivedStream {
            from: goose,
            channel: StreamChannel::Channel(ops),
            frames_played: 95,
            frames_concealed: 5,
            frames_lost: 5,
            frames_fec: 0,
            mouth_to_ear_ms: None,
            jitter_delay_ms: 38.0,
        }],
        ..NodeStats::default()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let want = "Goose (relayed, 42 ms, loss 5 %, buffer 38 ms)";
    while h.query_by_label(want).is_none() {
        assert!(
            Instant::now() < deadline,
            "the roster never showed {want:?}"
        );
        answer_stats(&ends, &stats);
        h.step();
        std::thread::sleep(Duration::from_millis(50));
    }
}
