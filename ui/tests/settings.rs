//! The settings and the org admin window, driven headless through egui_kittest: channel keys,
//! audio settings, and the admin's charter edits and invite tickets.

mod common;

use callsign_keys::{Identity, Ticket};
use callsign_mesh::charter::{FloorMode, OpBody, Permissions, Priority, Role};
use callsign_node::audio::Device;
use callsign_node::runtime::{AudioInput, AudioSettings, AudioStats};
use callsign_node::{NodeCommand, NodeStats};
use callsign_ui::{Profile, RadioApp};
use common::*;
use egui_kittest::kittest::Queryable;
use std::rc::Rc;

#[test]
fn hotkeys_are_rebound_without_conflicts_and_remembered() {
    let Opened {
        dir,
        ops,
        ends,
        mut h,
    } = open_saved();
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
    let Opened {
        dir, ends, mut h, ..
    } = open_saved();
    h.get_by_label("Org admin").click();
    h.step();
    h.get_by_label("Invites").click();
    h.step();
    // The node says where else the org can be reached: a public member, say.
    let anchor = "/ip4/198.51.100.12/udp/4433/quic-v1/p2p/12D3KooWBJS661uaqn5bVnRH2Y3ZE7nyXwcTzUvFsTMGQ1CVJcrB";
    assert_eq!(answer_invite_addresses(&ends, &[anchor]), 1);
    h.step();
    assert!(h.query_by_label_contains(anchor).is_some());
    // Not an address: explained, no ticket.
    type_into(&mut h, "Address in the ticket", "somewhere");
    h.get_by_label("Copy invite ticket").click();
    h.step();
    assert!(h.query_by_label_contains("invite: ").is_some());
    assert!(h.query_by_label_contains("ticket: callsign").is_none());
    // The admin's public address, port forwarded.
    let public = "/ip4/203.0.113.5/udp/47123/quic-v1";
    h.get_by_label("Address in the ticket").focus();
    h.step();
    h.key_press_modifiers(eframe::egui::Modifiers::COMMAND, eframe::egui::Key::A);
    h.step();
    h.get_by_label("Address in the ticket").type_text(public);
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
    assert_eq!(
        ticket
            .bootstrap
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>(),
        vec![public.to_string(), anchor.to_string()]
    );
    let grant = ticket.grant.expect("a signed grant");
    assert_eq!(grant.role, "pilot");
}

#[test]
fn echo_cancellation_shows_what_it_removes_and_can_be_turned_off() {
    let Opened { ends, mut h, .. } = open_saved();
    commands(&ends);
    h.get_by_label("Audio").click();
    h.step();
    let stats = NodeStats {
        audio: AudioStats {
            echo: Some(callsign_node::audio::echo::EchoStats {
                erle_db: Some(31.4),
                linear_erle_db: Some(27.5),
                delay_ms: Some(48),
                device_delay_ms: 40,
                path_restarts: 0,
            }),
            ..AudioStats::default()
        },
        ..NodeStats::default()
    };
    step_with_stats(&mut h, &ends, &stats, "the echo canceller's figures", |h| {
        h.query_by_label_contains("removes 31 dB of echo, echo delay 48 ms (devices report 40 ms)")
            .is_some()
    });
    h.get_by_label("echo cancellation").click();
    h.step();
    assert_eq!(
        answer_stats(&ends, &stats),
        expect(&[NodeCommand::SetAudio(AudioSettings {
            echo_cancellation: false,
            ..AudioSettings::default()
        })])
    );
    assert!(h.query_by_label("off").is_some());
}

#[test]
fn audio_settings_reach_the_node_and_stay_in_the_profile() {
    let Opened {
        dir,
        ops,
        ends,
        mut h,
    } = open_saved();
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
    step_with_stats(&mut h, &ends, &stats, "the input level", |h| {
        h.query_by_label_contains("-23 dBFS").is_some()
    });
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
    h.get_by_label("ducked channel: /squad").click();
    h.step();
    h.get_by_role_and_label(eframe::egui::accesskit::Role::Button, "/ops")
        .click_accesskit();
    h.step();
    assert!(h.query_by_label("ducked channel: /ops").is_some());
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
fn the_admin_window_edits_roles_acls_members_relays_and_presets() {
    let Opened {
        dir: _dir,
        ops,
        ends,
        mut h,
    } = open_saved();
    h.get_by_label("Org admin").click();
    h.step();
    edits(&ends);

    // Channels: a half-duplex policy and an ACL override for pilots on /ops.
    h.get_by_label("edit /ops").click();
    h.step();
    h.get_by_label("half-duplex (one talker at a time, by priority)")
        .click();
    h.step();
    let sent = edits(&ends);
    assert!(
        matches!(&sent[..], [OpBody::SetChannelPolicy { channel, policy }]
            if *channel == ops && policy.floor == FloorMode::HalfDuplex),
        "{sent:?}"
    );
    h.get_by_label("override pilot").click();
    h.step();
    assert_eq!(
        edits(&ends),
        vec![OpBody::SetChannelAcl {
            channel: ops,
            role: "pilot".into(),
            perms: Some(Permissions::NONE),
        }]
    );

    // Roles: pilots may whisper; a new role.
    h.get_by_label("Roles").click();
    h.step();
    h.get_by_label("whisper (pilot)").click();
    h.step();
    assert_eq!(
        edits(&ends),
        vec![OpBody::PutRole {
            name: "pilot".into(),
            role: Role {
                perms: Permissions::LISTEN
                    .union(Permissions::SPEAK)
                    .union(Permissions::WHISPER),
                priority: Priority::NORMAL,
            },
        }]
    );
    type_into(&mut h, "New role", "recruit");
    h.get_by_label("Add role").click();
    h.step();
    assert!(matches!(&edits(&ends)[..], [OpBody::PutRole { name, .. }] if name == "recruit"));

    // Members: a new member by peer id, with a role; a bad id is explained.
    h.get_by_label("Members").click();
    h.step();
    type_into(&mut h, "Peer id", "not-a-peer");
    h.get_by_label("Add member").click();
    h.step();
    assert!(edits(&ends).is_empty());
    assert!(h.query_by_label_contains("that is not a peer id").is_some());
    let goose = Identity::from_secret_bytes([9; 32]).public();
    h.get_by_label("Peer id").focus();
    h.step();
    h.event(eframe::egui::Event::Key {
        key: eframe::egui::Key::A,
        physical_key: None,
        pressed: true,
        repeat: false,
        modifiers: eframe::egui::Modifiers::COMMAND,
    });
    h.step();
    h.get_by_label("Peer id").type_text(&goose.to_string());
    type_into(&mut h, "Member name", "Goose");
    h.get_by_label("Add member").click();
    h.step();
    assert_eq!(
        edits(&ends),
        vec![OpBody::PutMember {
            peer: goose,
            name: "Goose".into(),
            roles: vec!["pilot".into()],
        }]
    );

    // Relays: register a rented relay at an address.
    h.get_by_label("Relays").click();
    h.step();
    let relay = Identity::from_secret_bytes([10; 32]).public();
    type_into(&mut h, "Relay peer id", &relay.to_string());
    type_into(&mut h, "Relay address", "/ip4/203.0.113.5/udp/4433/quic-v1");
    h.get_by_label("Add relay").click();
    h.step();
    let sent = edits(&ends);
    assert!(
        matches!(&sent[..], [OpBody::PutRelay { peer, info }]
            if *peer == relay && info.capacity == 200 && info.addrs.len() == 1),
        "{sent:?}"
    );

    // Presets: capture /ops as a preset.
    h.get_by_label("Presets").click();
    h.step();
    type_into(&mut h, "Preset name", "wing");
    h.get_by_label("from subtree").click();
    h.step();
    // The row's title is "/ops" too; the popup's entry is the last drawn.
    h.get_all_by_label("/ops").last().unwrap().click();
    h.step();
    h.get_by_label("Save as preset").click();
    h.step();
    let sent = edits(&ends);
    assert!(
        matches!(&sent[..], [OpBody::DefinePreset { name, preset }]
            if name == "wing" && preset.channels.len() == 1 && preset.channels[0].name == "ops"),
        "{sent:?}"
    );
}
