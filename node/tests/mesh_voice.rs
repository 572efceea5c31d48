//! Voice over the mesh with real nodes on loopback QUIC: simulcast, whisper, forged and
//! replayed packets, and key rotation when a member is removed.

use callsign_keys::NodeKeys;
use callsign_mesh::charter::{Charter, OpBody};
mod common;

use callsign_node::runtime::demo_org::DemoOrg;
use callsign_node::runtime::{AudioInput, LinkKind, StreamChannel};
use callsign_node::{Node, NodeCommand, NodeConfig, NodeEvent, NodeStats};
use rand::SeedableRng;
use std::time::{Duration, Instant};

use common::squad::{config, linked_pair, squad, WAIT};

async fn talk(node: &Node, command: NodeCommand, millis: u64) {
    node.command(command).unwrap();
    tokio::time::sleep(Duration::from_millis(millis)).await;
    node.command(NodeCommand::PttUp).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
}

fn played(stats: &NodeStats, from: &NodeKeys, channel: StreamChannel) -> u64 {
    stats
        .received
        .iter()
        .filter(|s| s.from == from.identity.public() && s.channel == channel)
        .map(|s| s.frames_played)
        .sum()
}

fn sent(stats: &NodeStats, to: &NodeKeys, channel: StreamChannel) -> u64 {
    stats
        .sent
        .iter()
        .filter(|s| s.to == to.identity.public() && s.channel == channel)
        .map(|s| s.frames_sent)
        .sum()
}

#[tokio::test]
async fn simulcast_arrives_once_and_whisper_reaches_only_its_target() {
    let mut s = squad(3).await;
    let (officer, pilot, recruit) = (
        s.org.members[0].keys.clone(),
        s.org.members[1].keys.clone(),
        s.org.members[2].keys.clone(),
    );
    let (command, flight) = (
        StreamChannel::Channel(s.org.command),
        StreamChannel::Channel(s.org.flight),
    );
    // The officer simulcasts on command and flight for a second.
    talk(
        &s.nodes[0],
        NodeCommand::PttDown(vec![s.org.command, s.org.flight]),
        1000,
    )
    .await;
    let officer_stats = s.nodes[0].stats().await.unwrap();
    let pilot_stats = s.nodes[1].stats().await.unwrap();
    let recruit_stats = s.nodes[2].stats().await.unwrap();
    let frames = officer_stats.frames_encoded;
    assert!(frames >= 45, "officer encoded {frames} frames");
    // The pilot listens to both: one copy per frame, heard on both channels, no replays.
    assert_eq!(sent(&officer_stats, &pilot, command), frames);
    assert_eq!(sent(&officer_stats, &pilot, flight), frames);
    let pilot_heard = played(&pilot_stats, &officer, command);
    assert!(pilot_heard * 100 >= frames * 98, "{pilot_heard}/{frames}");
    assert_eq!(played(&pilot_stats, &officer, flight), pilot_heard);
    assert_eq!(
        pilot_stats.drops.replay, 0,
        "a simulcast copy arrived twice"
    );
    // The recruit hears it on flight only and never gets command.
    assert_eq!(sent(&officer_stats, &recruit, command), 0);
    assert_eq!(played(&recruit_stats, &officer, command), 0);
    assert!(played(&recruit_stats, &officer, flight) * 100 >= frames * 98);
    assert_eq!(recruit_stats.drops.acl + recruit_stats.drops.auth, 0);

    // The recruit asks to speak on command: refused at the sender.
    s.nodes[2]
        .command(NodeCommand::PttDown(vec![s.org.command]))
        .unwrap();
    let denied = s.nodes[2]
        .wait_for(WAIT, |e| matches!(e, NodeEvent::PttDenied { .. }))
        .await;
    assert!(denied.is_some());

    // The pilot whispers to the officer.
    talk(
        &s.nodes[1],
        NodeCommand::WhisperDown(officer.identity.public()),
        600,
    )
    .await;
    let pilot_stats = s.nodes[1].stats().await.unwrap();
    let officer_stats = s.nodes[0].stats().await.unwrap();
    let recruit_stats = s.nodes[2].stats().await.unwrap();
    let whispered = sent(&pilot_stats, &officer, StreamChannel::Whisper);
    assert!(whispered >= 25, "{whispered}");
    assert!(played(&officer_stats, &pilot, StreamChannel::Whisper) * 100 >= whispered * 98);
    assert_eq!(sent(&pilot_stats, &recruit, StreamChannel::Whisper), 0);
    assert!(recruit_stats
        .received
        .iter()
        .all(|r| r.from != pilot.identity.public()));
    for node in s.nodes {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn forged_and_replayed_packets_are_dropped() {
    let mut s = squad(2).await;
    // An outsider with its own org links to the officer and injects voice packets.
    let outsider_keys = NodeKeys::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(5));
    let (outsider_charter, _) = Charter::create(&outsider_keys.identity, "Other", 0).unwrap();
    let mut outsider_config = NodeConfig::new(outsider_keys, outsider_charter, "outsider");
    outsider_config.bootstrap = vec![s.nodes[0].address().clone()];
    let mut outsider = Node::start(outsider_config).await.unwrap();
    outsider
        .wait_for(WAIT, |e| matches!(e, NodeEvent::LinkUp { .. }))
        .await
        .expect("outsider links");

    // The pilot talks; we keep a copy of what it sent the officer.
    s.nodes[1]
        .command(NodeCommand::PttDown(vec![s.org.flight]))
        .unwrap();
    let mut captured = Vec::new();
    while captured.len() < 10 {
        match s.nodes[1]
            .wait_for(WAIT, |e| matches!(e, NodeEvent::VoiceSent { .. }))
            .await
        {
            Some(NodeEvent::VoiceSent { packet, .. }) => captured.push(packet),
            _ => panic!("no voice sent"),
        }
    }
    s.nodes[1].command(NodeCommand::PttUp).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = s.nodes[0].stats().await.unwrap();

    // Replay: the pilot's own link re-sends captured packets.
    for packet in &captured {
        s.nodes[1]
            .command(NodeCommand::InjectDatagram {
                peer: s.nodes[0].peer_id(),
                bytes: packet.clone(),
            })
            .unwrap();
    }
    // Forgery: the outsider sends a copy moved to an unplayed sequence number (the header is
    // sealed as associated data, so it no longer authenticates), a truncated packet and
    // garbage.
    let mut forged = captured[3].clone();
    let seq_at = 3 + 8 * usize::from(forged[2]) + 4;
    forged[seq_at] ^= 0x40;
    for bytes in [forged, captured[0][..10].to_vec(), vec![0xff; 40]] {
        outsider
            .command(NodeCommand::InjectDatagram {
                peer: s.nodes[0].peer_id(),
                bytes,
            })
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = s.nodes[0].stats().await.unwrap();
    assert_eq!(
        after.drops.replay - before.drops.replay,
        captured.len() as u64
    );
    assert_eq!(after.drops.auth - before.drops.auth, 1, "the forged packet");
    assert!(after.drops.malformed - before.drops.malformed >= 2);
    let pilot = s.org.members[1].keys.identity.public();
    let played = |st: &NodeStats| {
        st.received
            .iter()
            .filter(|r| r.from == pilot)
            .map(|r| r.frames_played)
            .sum::<u64>()
    };
    assert_eq!(played(&after), played(&before), "nothing extra played");
    outsider.shutdown().await.unwrap();
    for node in s.nodes {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn removing_a_member_rotates_keys_it_cannot_use() {
    let mut s = squad(3).await;
    let pilot = s.org.members[1].keys.identity.public();
    // The root (officer) removes the pilot; the charter reaches the others by sync.
    s.nodes[0]
        .command(NodeCommand::EditCharter(OpBody::RemoveMember {
            peer: pilot,
        }))
        .unwrap();
    s.nodes[2]
        .wait_for(WAIT, |e| matches!(e, NodeEvent::CharterChanged { .. }))
        .await
        .expect("recruit learns of the removal");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let officer_stats = s.nodes[0].stats().await.unwrap();
    assert!(officer_stats.key_rotations > 0);

    // The officer talks on flight; the recruit hears it, and we hand the removed pilot a copy.
    s.nodes[0]
        .command(NodeCommand::PttDown(vec![s.org.flight]))
        .unwrap();
    let Some(NodeEvent::VoiceSent { packet, .. }) = s.nodes[0]
        .wait_for(WAIT, |e| matches!(e, NodeEvent::VoiceSent { .. }))
        .await
    else {
        panic!("no voice sent");
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.nodes[0].command(NodeCommand::PttUp).unwrap();
    let pilot_before = s.nodes[1].stats().await.unwrap();
    s.nodes[2]
        .command(NodeCommand::InjectDatagram {
            peer: s.nodes[1].peer_id(),
            bytes: packet,
        })
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pilot_after = s.nodes[1].stats().await.unwrap();
    // It holds no key with that id: not even authentication could be tried.
    assert_eq!(
        pilot_after.drops.unknown_sender - pilot_before.drops.unknown_sender,
        1
    );
    assert_eq!(pilot_after.drops.acl, pilot_before.drops.acl);
    let officer = s.org.members[0].keys.identity.public();
    let recruit_stats = s.nodes[2].stats().await.unwrap();
    assert!(recruit_stats
        .received
        .iter()
        .any(|r| r.from == officer && r.frames_played > 10));
    for node in s.nodes {
        node.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn listeners_report_loss_and_the_sender_strengthens_fec() {
    let org = DemoOrg::new(2, 11).unwrap();
    let (talker, listener) = linked_pair(&org, 300, |i, c| {
        if i == 0 {
            c.send_loss = 0.2
        }
    })
    .await;
    assert_eq!(
        talker.stats().await.unwrap().expected_loss_pct,
        callsign_node::audio::codec::UNKNOWN_PATH_LOSS_PCT,
        "protected until a listener reports"
    );
    talk(&talker, NodeCommand::PttDown(vec![org.flight]), 2500).await;
    let pct = talker.stats().await.unwrap().expected_loss_pct;
    assert!((8..=35).contains(&pct), "sender tuned FEC for {pct}% loss");
    listener.shutdown().await.unwrap();
    talker.shutdown().await.unwrap();
}

#[tokio::test]
async fn on_a_clean_path_the_sender_drops_its_redundancy() {
    let org = DemoOrg::new(2, 11).unwrap();
    let (talker, listener) = linked_pair(&org, 300, |_, _| {}).await;
    talk(&talker, NodeCommand::PttDown(vec![org.flight]), 4500).await;
    assert_eq!(talker.stats().await.unwrap().expected_loss_pct, 0);
    listener.shutdown().await.unwrap();
    talker.shutdown().await.unwrap();
}

#[tokio::test]
async fn voice_activation_transmits_while_speech_is_heard() {
    let org = DemoOrg::new(2, 11).unwrap();
    let speech = callsign_node::audio::wav::read_wav(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/speech-16k.wav"),
    )
    .unwrap();
    let (mut talker, mut listener) = linked_pair(&org, 400, |i, c| {
        if i == 0 {
            c.input = AudioInput::Samples(speech.clone())
        }
    })
    .await;
    talker
        .command(NodeCommand::VoiceActivation(vec![org.flight]))
        .unwrap();
    let started = talker
        .wait_for(WAIT, |e| matches!(e, NodeEvent::Transmitting { .. }))
        .await;
    assert!(
        matches!(&started, Some(NodeEvent::Transmitting { channels, whisper: None }) if *channels == [org.flight]),
        "{started:?}"
    );
    let heard = listener
        .wait_for(WAIT, |e| matches!(e, NodeEvent::TalkerStarted { .. }))
        .await;
    assert!(
        matches!(&heard, Some(NodeEvent::TalkerStarted { peer, .. }) if *peer == talker.identity()),
        "{heard:?}"
    );
    // Voice activation off: the talker falls silent and stays so.
    talker
        .command(NodeCommand::VoiceActivation(Vec::new()))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before = talker.stats().await.unwrap().frames_encoded;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(talker.stats().await.unwrap().frames_encoded, before);
    listener.shutdown().await.unwrap();
    talker.shutdown().await.unwrap();
}

#[tokio::test]
async fn over_the_tcp_fallback_voice_rides_the_control_stream() {
    let org = DemoOrg::new(2, 11).unwrap();
    let epoch = Instant::now();
    let mut talker = Node::start(config(&org, 0, epoch, 500)).await.unwrap();
    let mut listener_config = config(&org, 1, epoch, 500);
    listener_config.bootstrap = vec![talker.tcp_address().expect("tcp listener").clone()];
    let mut listener = Node::start(listener_config).await.unwrap();
    let link = listener
        .wait_for(WAIT, |e| matches!(e, NodeEvent::LinkUp { .. }))
        .await;
    assert!(
        matches!(
            link,
            Some(NodeEvent::LinkUp {
                kind: LinkKind::TcpFallback,
                ..
            })
        ),
        "{link:?}"
    );
    for node in [&mut talker, &mut listener] {
        node.wait_for(WAIT, |e| matches!(e, NodeEvent::SessionUp { .. }))
            .await
            .expect("session");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    talk(&talker, NodeCommand::PttDown(vec![org.flight]), 1000).await;
    let talker_stats = talker.stats().await.unwrap();
    let heard = listener.stats().await.unwrap();
    let sent = sent(
        &talker_stats,
        &org.members[1].keys,
        StreamChannel::Channel(org.flight),
    );
    let played = played(
        &heard,
        &org.members[0].keys,
        StreamChannel::Channel(org.flight),
    );
    assert!(sent >= 45 && played * 100 >= sent * 98, "{played}/{sent}");
    listener.shutdown().await.unwrap();
    talker.shutdown().await.unwrap();
}

#[tokio::test]
async fn members_find_each_other_through_one_bootstrap_node() {
    let org = DemoOrg::new(3, 11).unwrap();
    let epoch = Instant::now();
    let hub = Node::start(config(&org, 0, epoch, 600)).await.unwrap();
    let mut spokes = Vec::new();
    for i in [1, 2] {
        let mut c = config(&org, i, epoch, 600);
        c.bootstrap = vec![hub.address().clone()];
        spokes.push(Node::start(c).await.unwrap());
    }
    // Each spoke hears of the other through the hub's presence gossip and links to it.
    for spoke in &mut spokes {
        for _ in 0..2 {
            spoke
                .wait_for(WAIT, |e| matches!(e, NodeEvent::SessionUp { .. }))
                .await
                .expect("a session with the hub and with the other spoke");
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    talk(&spokes[0], NodeCommand::PttDown(vec![org.flight]), 600).await;
    let heard = spokes[1].stats().await.unwrap();
    assert!(
        played(
            &heard,
            &org.members[1].keys,
            StreamChannel::Channel(org.flight)
        ) >= 25
    );
    for node in spokes {
        node.shutdown().await.unwrap();
    }
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_linked_stranger_added_to_the_charter_joins_and_hears() {
    let mut org = DemoOrg::new(2, 11).unwrap();
    let newcomer = org.members[1].keys.identity.public();
    org.charter
        .edit(&org.root, OpBody::RemoveMember { peer: newcomer }, 1)
        .unwrap();
    let epoch = Instant::now();
    let mut admin = Node::start(config(&org, 0, epoch, 700)).await.unwrap();
    let mut c = config(&org, 1, epoch, 700);
    c.listening = vec![org.flight];
    c.bootstrap = vec![admin.address().clone()];
    let mut joiner = Node::start(c).await.unwrap();
    joiner
        .wait_for(WAIT, |e| matches!(e, NodeEvent::LinkUp { .. }))
        .await
        .expect("link");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(joiner
        .try_event()
        .into_iter()
        .all(|e| !matches!(e, NodeEvent::SessionUp { .. })));
    admin
        .command(NodeCommand::EditCharter(OpBody::PutMember {
            peer: newcomer,
            name: "late".into(),
            roles: vec!["pilot".into()],
        }))
        .unwrap();
    joiner
        .wait_for(WAIT, |e| matches!(e, NodeEvent::SessionUp { .. }))
        .await
        .expect("the new member's session comes up once the charter names it");
    admin
        .wait_for(WAIT, |e| matches!(e, NodeEvent::Presence { .. }))
        .await
        .expect("its presence");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // It started before it was a member, so it listens to what it asked for once allowed.
    joiner.command(NodeCommand::Listen(org.flight)).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    talk(&admin, NodeCommand::PttDown(vec![org.flight]), 600).await;
    let heard = joiner.stats().await.unwrap();
    assert!(
        played(
            &heard,
            &org.members[0].keys,
            StreamChannel::Channel(org.flight)
        ) >= 25
    );
    joiner.shutdown().await.unwrap();
    admin.shutdown().await.unwrap();
}
