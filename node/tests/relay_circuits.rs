//! A member serving relay v2 circuits (real loopback QUIC): members may reserve a circuit on
//! it, anyone else is refused before a circuit exists.

use callsign_node::link::swarm::{build_swarm, NodeNetwork, SwarmConfig};
use callsign_node::link::LinkSocket;
use callsign_node::runtime::demo_org::DemoOrg;
use callsign_node::{Node, NodeConfig};
use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::Multiaddr;
use std::time::Duration;

fn bare_swarm(keypair: Keypair) -> NodeNetwork {
    let socket = LinkSocket::bind_tokio("127.0.0.1:0".parse().unwrap()).unwrap();
    let config = SwarmConfig {
        mdns: false,
        ..SwarmConfig::default()
    };
    build_swarm(keypair, config, socket).unwrap()
}

/// Asks `relay` for a reservation; true if it was granted (a circuit listen address came up),
/// false if it was refused (the listener closed).
async fn reserve(net: &mut NodeNetwork, relay: &Multiaddr) -> bool {
    let circuit = relay.clone().with(Protocol::P2pCircuit);
    let listener = net.swarm.listen_on(circuit).unwrap();
    let deadline = tokio::time::sleep(Duration::from_secs(15));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            event = net.swarm.select_next_some() => match event {
                SwarmEvent::NewListenAddr { listener_id, address } if listener_id == listener => {
                    assert!(address.iter().any(|p| matches!(p, Protocol::P2pCircuit)));
                    return true;
                }
                SwarmEvent::ListenerClosed { listener_id, .. } if listener_id == listener => {
                    return false;
                }
                _ => {}
            },
            _ = &mut deadline => panic!("the relay neither granted nor refused a reservation"),
        }
    }
}

#[tokio::test]
async fn members_reserve_circuits_and_strangers_are_refused() {
    let org = DemoOrg::new(2, 11).unwrap();
    let mut config = NodeConfig::new(
        org.members[0].keys.clone(),
        org.charter.clone(),
        &org.members[0].name,
    );
    config.relay_circuits = true;
    let relay = Node::start(config).await.unwrap();

    let stranger = DemoOrg::new(1, 99).unwrap();
    let mut outsider = bare_swarm(stranger.members[0].keys.identity.to_libp2p());
    assert!(
        !reserve(&mut outsider, relay.address()).await,
        "a non-member got a reservation"
    );

    let mut member = bare_swarm(org.members[1].keys.identity.to_libp2p());
    assert!(
        reserve(&mut member, relay.address()).await,
        "a member was refused"
    );
    relay.shutdown().await.unwrap();
}

/// Two members who first reach each other only through a circuit on a third: their hole punch,
/// timed over the circuit, opens a direct QUIC path (or, on a machine slow enough that it has
/// not managed within the member's dial-back time, the hidden member's own direct dial back
/// does), both sides report a direct link, and voice flows on it. `hidden` announces no direct address
/// (as if behind a NAT), so `seen`, the lower peer id and so the one that dials, can only use
/// the circuit; on loopback no NAT drops the punch itself.
#[tokio::test]
async fn a_circuit_link_is_upgraded_to_a_direct_path_and_carries_voice() {
    use callsign_node::runtime::{AudioInput, LinkKind};
    use callsign_node::{NodeCommand, NodeEvent};
    const WAIT: Duration = Duration::from_secs(20);
    let direct = |kind: LinkKind| matches!(kind, LinkKind::HolePunched | LinkKind::Direct);

    let org = DemoOrg::new(3, 12).unwrap();
    let config = |i: usize| {
        let member = &org.members[i];
        let mut config = NodeConfig::new(member.keys.clone(), org.charter.clone(), &member.name);
        config.listening = org.channels_for(i);
        config.input = AudioInput::Synthetic { seed: i as u64 };
        config
    };
    let mut relay_config = config(0);
    relay_config.relay_circuits = true;
    let relay = Node::start(relay_config).await.unwrap();
    let id = |i: usize| org.members[i].keys.identity.public().peer_id();
    let (seen, hidden) = if id(1) < id(2) { (1, 2) } else { (2, 1) };

    let mut hidden_config = config(hidden);
    hidden_config.announce = Some(Vec::new());
    hidden_config.bootstrap = vec![relay.address().clone()];
    let mut hidden = Node::start(hidden_config).await.unwrap();
    let mut seen_config = config(seen);
    seen_config.bootstrap = vec![relay.address().clone()];
    let mut seen = Node::start(seen_config).await.unwrap();

    let (seen_id, hidden_id) = (seen.peer_id(), hidden.peer_id());
    let mut kinds = Vec::new();
    let punched = seen
        .wait_for(WAIT, |e| match e {
            NodeEvent::LinkUp { peer, kind, .. } if *peer == hidden_id => {
                kinds.push(*kind);
                direct(*kind)
            }
            _ => false,
        })
        .await;
    assert!(punched.is_some(), "links to the hidden member: {kinds:?}");
    assert_eq!(
        kinds.first(),
        Some(&LinkKind::Relayed),
        "first through the circuit"
    );
    hidden
        .wait_for(WAIT, |e| {
            matches!(e, NodeEvent::LinkUp { peer, kind, .. } if *peer == seen_id && direct(*kind))
        })
        .await
        .expect("the hidden member reports the direct link too");
    let stats = seen.stats().await.unwrap();
    let link = stats.peers.iter().find(|p| p.peer == hidden_id.to_string());
    assert!(link.is_some_and(|l| direct(l.kind)), "{link:?}");

    // Voice rides the punched link.
    hidden
        .command(NodeCommand::PttDown(vec![org.flight]))
        .unwrap();
    let heard = seen
        .wait_for(
            WAIT,
            |e| matches!(e, NodeEvent::TalkerStarted { peer, .. } if peer.peer_id() == hidden_id),
        )
        .await;
    assert!(heard.is_some(), "the hidden member was never heard");
    hidden.command(NodeCommand::PttUp).unwrap();
    for node in [seen, hidden, relay] {
        node.shutdown().await.unwrap();
    }
}
