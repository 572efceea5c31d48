//! Floor control with real nodes on loopback QUIC: PTT on the demo org's half-duplex `/net`
//! asks for the floor, a higher priority pre-empts, a lower one queues, a role without emergency
//! priority cannot raise one, and listeners know the talker before its audio.

mod common;

use callsign_mesh::floor::FloorEvent;
use callsign_node::runtime::FloorStats;
use callsign_node::{Node, NodeCommand, NodeEvent};
use common::squad::{squad, WAIT};
use std::time::Duration;

async fn floor_event(node: &mut Node, want: impl Fn(&FloorEvent) -> bool) -> FloorEvent {
    match node
        .wait_for(WAIT, |e| matches!(e, NodeEvent::Floor(f) if want(f)))
        .await
    {
        Some(NodeEvent::Floor(event)) => event,
        other => panic!("no such floor event: {other:?}"),
    }
}

async fn net_floor(node: &Node, net: callsign_mesh::charter::ChannelId) -> FloorStats {
    let stats = node.stats().await.unwrap();
    stats.floor.into_iter().find(|f| f.channel == net).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ptt_on_a_half_duplex_channel_follows_the_floor() {
    // 0: officer (priority 3, root admin), 1: pilot (2), 2: recruit (1).
    let mut s = squad(3).await;
    let net = s.org.net;
    let keys: Vec<_> = s
        .org
        .members
        .iter()
        .map(|m| m.keys.identity.public())
        .collect();

    // The pilot presses: granted; the others learn who holds the floor before any audio.
    s.nodes[1].command(NodeCommand::PttDown(vec![net])).unwrap();
    floor_event(&mut s.nodes[1], |e| matches!(e, FloorEvent::Granted { .. })).await;
    for i in [0, 2] {
        let holder = floor_event(&mut s.nodes[i], |e| matches!(e, FloorEvent::Holder { .. })).await;
        assert_eq!(
            holder,
            FloorEvent::Holder {
                channel: net,
                holder: Some(keys[1])
            }
        );
        match s.nodes[i]
            .wait_for(WAIT, |e| matches!(e, NodeEvent::TalkerStarted { .. }))
            .await
        {
            Some(NodeEvent::TalkerStarted { peer, channels, .. }) => {
                assert_eq!((peer, channels), (keys[1], vec![net]));
            }
            other => panic!("{other:?}"),
        }
    }

    // The recruit (priority 1) queues behind it.
    s.nodes[2].command(NodeCommand::PttDown(vec![net])).unwrap();
    let queued = floor_event(&mut s.nodes[2], |e| matches!(e, FloorEvent::Queued { .. })).await;
    assert_eq!(
        queued,
        FloorEvent::Queued {
            channel: net,
            position: 1
        }
    );

    // The pilot's role cannot raise an emergency.
    s.nodes[1].command(NodeCommand::Emergency(net)).unwrap();
    floor_event(&mut s.nodes[1], |e| matches!(e, FloorEvent::Denied { .. })).await;

    // The officer (priority 3) pre-empts the pilot, who is told by whom.
    s.nodes[0].command(NodeCommand::PttDown(vec![net])).unwrap();
    floor_event(&mut s.nodes[0], |e| matches!(e, FloorEvent::Granted { .. })).await;
    let preempted = floor_event(&mut s.nodes[1], |e| {
        matches!(e, FloorEvent::Preempted { .. })
    })
    .await;
    assert_eq!(
        preempted,
        FloorEvent::Preempted {
            channel: net,
            by: keys[0]
        }
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (i, node) in s.nodes.iter().enumerate() {
        let floor = net_floor(node, net).await;
        assert_eq!(floor.holder, Some(keys[0]), "node {i}");
        assert_eq!(
            floor.arbiter, None,
            "no rented relay: the members arbitrate"
        );
    }
    assert_eq!(net_floor(&s.nodes[0], net).await.state, "granted");
    assert_eq!(net_floor(&s.nodes[2], net).await.state, "queued 1");

    // The officer lets go: the recruit, still pressing, takes over without pressing again.
    s.nodes[0].command(NodeCommand::PttUp).unwrap();
    floor_event(&mut s.nodes[2], |e| matches!(e, FloorEvent::Granted { .. })).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.nodes[2].command(NodeCommand::PttUp).unwrap();
    s.nodes[1].command(NodeCommand::PttUp).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut stats = Vec::new();
    for node in s.nodes {
        stats.push(node.shutdown().await.unwrap());
    }
    // Everyone heard the officer and the recruit on the net; the only frames dropped as out of
    // turn are the pilot's sent before it processed its pre-emption (on loopback a frame or
    // two; a loaded machine may delay the pilot's driver, so allow half a second's worth).
    for (i, st) in stats.iter().enumerate() {
        for talker in [0, 2] {
            if talker == i {
                continue;
            }
            let heard = st
                .received
                .iter()
                .find(|r| r.from == keys[talker])
                .map_or(0, |r| r.frames_played);
            assert!(heard >= 10, "node {i} heard {heard} frames from {talker}");
        }
        assert!(st.floor_drops <= 25, "node {i}: {}", st.floor_drops);
    }
}
