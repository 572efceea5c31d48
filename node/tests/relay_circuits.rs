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
