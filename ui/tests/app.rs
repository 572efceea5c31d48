//! The app's main flows, driven headless through egui_kittest (AccessKit): first run with a real
//! node, the admin adding a channel on it, PTT by button and by hotkey, listen toggles, a
//! talker's name in the right row, unlocking an encrypted identity, and the roster's figures.

mod common;

use callsign_keys::Identity;
use callsign_mesh::floor::FloorEvent;
use callsign_mesh::topology::Route;
use callsign_node::audio::Device;
use callsign_node::runtime::{
    AudioInput, AudioSettings, LinkKind, PeerStats, ReceivedStream, StreamChannel,
};
use callsign_node::{NodeCommand, NodeEvent, NodeStats};
use callsign_ui::{NodeBridge, Profile, RadioApp};
use common::*;
use egui_kittest::kittest::{NodeT, Queryable};
use std::rc::Rc;
use std::time::Duration;

#[test]
fn first_run_creates_an_identity_and_an_org_and_the_admin_adds_a_channel() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = first_run(dir.path(), "Maverick", "Org name", "Top Gun");
    h.step();
    // The profile is remembered, with its key and the charter log.
    let profile = Profile::load(dir.path()).unwrap().expect("profile saved");
    assert_eq!(profile.name, "Maverick");
    assert!(dir.path().join("identity.key").exists());
    let org = profile.org_key().unwrap();
    assert!(Profile::charter_log(dir.path(), &org).exists());
    // The radio stack runs on a real node; the founder is admin and adds a channel.
    step_until(&mut h, |h| h.query_by_label("Org admin").is_some());
    assert!(h.query_by_label("No channels yet.").is_some());
    h.get_by_label("Org admin").click();
    h.step();
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
    // A saved, unencrypted profile opens straight on the radio stack.
    let Opened {
        dir: _dir,
        ops,
        ends,
        mut h,
    } = open_saved();
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
    // Record toggle: asks the node; the box follows what the node says it records.
    h.get_by_label("record /ops").click();
    h.step();
    assert_eq!(
        commands(&ends),
        expect(&[NodeCommand::Record {
            channel: ops,
            on: true
        }])
    );
    node_events(&ends)
        .send(NodeEvent::Recording {
            channel: ops,
            on: true,
        })
        .unwrap();
    h.step();
    assert_eq!(
        h.get_by_label("record /ops").accesskit_node().toggled(),
        Some(eframe::egui::accesskit::Toggled::True)
    );
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
    goose_talks(&ends, ops);
    h.step();
    assert!(h.query_by_label("/ops: Goose").is_some());
    node_events(&ends)
        .send(NodeEvent::TalkerStopped { peer: goose() })
        .unwrap();
    h.step();
    assert!(h.query_by_label("/ops: Goose").is_none());
}

#[test]
fn a_row_shows_its_floor_state_and_route() {
    let Opened {
        dir: _dir,
        ends,
        mut h,
        ..
    } = open_saved();
    // Nobody pressed yet: the half-duplex channel says its floor is free; /ops is open.
    assert_eq!(h.query_all_by_label("half-duplex, free").count(), 1);
    let goose = Identity::from_secret_bytes([9; 32]).public();
    let events = node_events(&ends);
    events
        .send(NodeEvent::Presence {
            peer: goose,
            name: "Goose".into(),
            listening: Vec::new(),
            recording: Vec::new(),
        })
        .unwrap();
    let squad = h.state_mut().radio().unwrap().channels()[1].0;
    events
        .send(NodeEvent::Floor(FloorEvent::Holder {
            channel: squad,
            holder: Some(goose),
        }))
        .unwrap();
    h.step();
    assert!(h
        .query_by_label("Goose holds the floor on /squad")
        .is_some());
    assert!(h.query_by_label("half-duplex, free").is_none());
    // Routes: the mesh, or the relay by the name its presence gives.
    let ops = h.state_mut().radio().unwrap().channels()[0].0;
    events
        .send(NodeEvent::RouteChanged {
            channel: ops,
            route: Route::Mesh,
        })
        .unwrap();
    events
        .send(NodeEvent::RouteChanged {
            channel: squad,
            route: Route::Relay(goose),
        })
        .unwrap();
    h.step();
    assert_eq!(h.query_all_by_label("mesh").count(), 1);
    assert!(h.query_by_label("via Goose").is_some());
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
    assert!(h.query_by_label("Org admin").is_some());
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
    assert!(h.query_by_label("Org admin").is_some());
}

#[test]
fn the_roster_shows_each_member_s_link_round_trip_loss_and_buffer() {
    let Opened {
        dir: _dir,
        ops,
        ends,
        mut h,
    } = open_saved();
    let goose = Identity::from_secret_bytes([9; 32]).public();
    let events = node_events(&ends);
    events
        .send(NodeEvent::Presence {
            peer: goose,
            name: "Goose".into(),
            listening: vec![ops],
            recording: vec![ops],
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
            frames_dred: 0,
            mouth_to_ear_ms: None,
            jitter_delay_ms: 38.0,
            placed: None,
        }],
        ..NodeStats::default()
    };
    let want = "Goose (relayed, 42 ms, loss 5 %, buffer 38 ms)";
    step_with_stats(&mut h, &ends, &stats, want, |h| {
        h.query_by_label(want).is_some()
    });
    // When Goose talks, the channel's row shows the link's quality beside the name.
    goose_talks(&ends, ops);
    let row = "/ops: Goose (42 ms, 5 % lost)";
    step_with_stats(&mut h, &ends, &stats, row, |h| {
        h.query_by_label(row).is_some()
    });
    // Goose records /ops, and everyone listening sees it.
    assert!(h.query_by_label("● recording /ops").is_some());
    // The default policy (notice) has the app say so when it starts.
    assert!(h.query_by_label("● Goose is recording /ops").is_some());
}

#[test]
fn the_radio_stack_works_from_the_keyboard_alone() {
    let Opened {
        dir: _dir,
        ops,
        ends,
        mut h,
    } = open_saved();
    commands(&ends);
    // Tab walks the widgets in order until the listen toggle has focus.
    let tab_to = |h: &mut egui_kittest::Harness<'static, RadioApp>, label: &str| {
        for _ in 0..60 {
            if h.get_by_label(label).is_focused() {
                return;
            }
            h.key_press(eframe::egui::Key::Tab);
            h.step();
        }
        panic!("Tab never reached {label:?}");
    };
    tab_to(&mut h, "listen /ops");
    h.key_press(eframe::egui::Key::Space);
    h.step();
    assert_eq!(commands(&ends), expect(&[NodeCommand::Unlisten(ops)]));
    // The PTT button transmits while Space is held on it.
    tab_to(&mut h, "PTT /ops");
    h.key_down(eframe::egui::Key::Space);
    h.step();
    assert_eq!(commands(&ends), expect(&[NodeCommand::PttDown(vec![ops])]));
    h.key_up(eframe::egui::Key::Space);
    h.step();
    assert_eq!(commands(&ends), expect(&[NodeCommand::PttUp]));
    // While a text field has focus, keys are the field's: a channel key does not transmit.
    h.get_by_label("Org admin").click();
    h.step();
    h.get_by_label("New channel").focus();
    h.step();
    h.key_down(eframe::egui::Key::F1);
    h.step();
    h.key_up(eframe::egui::Key::F1);
    h.step();
    assert!(commands(&ends).is_empty());
}

#[test]
fn first_run_with_an_invite_ticket_joins_a_running_org() {
    // The org's admin runs a real node; its invite names its address.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let org = callsign_node::runtime::demo_org::DemoOrg::new(1, 5).unwrap();
    let member = &org.members[0];
    let admin = runtime
        .block_on(callsign_node::Node::start(callsign_node::NodeConfig::new(
            member.keys.clone(),
            org.charter.clone(),
            &member.name,
        )))
        .unwrap();
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let grant =
        callsign_keys::InviteGrant::issue(&org.root, org.charter.org(), "pilot", expires, [3; 16])
            .unwrap();
    let ticket = callsign_keys::Ticket {
        org: org.charter.org(),
        bootstrap: vec![admin.address().clone()],
        grant: Some(grant),
    }
    .encode()
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut h = first_run(dir.path(), "Goose", "Invite ticket", &ticket);
    h.step();
    // Admitted by the admin's node, the charter arrives and the org's channels appear.
    step_until(&mut h, |h| h.query_by_label("PTT /flight").is_some());
    assert!(h
        .query_by_label_contains("Waiting to be admitted")
        .is_none());
    let profile = Profile::load(dir.path()).unwrap().unwrap();
    assert_eq!(profile.invite, None, "the used ticket is forgotten");
    drop(h);
    drop(runtime);
}

#[test]
fn the_local_api_turned_on_in_the_settings_serves_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = first_run(dir.path(), "Maverick", "Org name", "Top Gun");
    step_until(&mut h, |h| h.query_by_label("Org admin").is_some());
    // Off by default; turned on, it waits for the next start.
    h.get_by_label("Settings").click();
    h.step();
    assert!(h.query_by_label("Local API: off").is_some());
    h.get_by_label_contains("Local API for bots").click();
    h.step();
    assert!(h
        .query_by_label("The change applies at the next start.")
        .is_some());
    let mut profile = Profile::load(dir.path()).unwrap().unwrap();
    assert_eq!(profile.api.map(|a| a.port()), Some(7070));
    drop(h);
    // Any free port for the test.
    profile.api = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    profile.save(dir.path()).unwrap();

    let app = RadioApp::new(dir.path().to_path_buf(), Box::new(NodeBridge::start));
    let mut h = harness(app);
    step_until(&mut h, |h| h.query_by_label("Org admin").is_some());
    h.get_by_label("Settings").click();
    h.step();
    let node = h.get_by_label_contains("Local API: on at http://");
    let node = node.accesskit_node();
    let label = node.label().or_else(|| node.value()).unwrap_or_default();
    let url = label
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("{label:?}"))
        .trim_end_matches(',')
        .to_string();
    let token = std::fs::read_to_string(dir.path().join("api.token")).unwrap();
    let status: serde_json::Value = ureq::get(&format!("{url}/v1/status"))
        .set("Authorization", &format!("Bearer {}", token.trim()))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(status["name"], "Maverick", "{status}");
    assert_eq!(status["admin"], true, "{status}");
    let refused = ureq::get(&format!("{url}/v1/status")).call();
    assert!(matches!(refused, Err(ureq::Error::Status(401, _))));
}
