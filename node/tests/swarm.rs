//! The node's libp2p Swarm: QUIC first, and the TCP + Noise + Yamux fallback for a node that is
//! reachable only over TCP.

use callsign_node::link::swarm::{build_swarm, NodeBehaviourEvent, NodeNetwork, SwarmConfig};
use callsign_node::link::LinkSocket;
use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{ping, Multiaddr, PeerId};
use std::time::Duration;

fn network() -> (NodeNetwork, PeerId) {
    let keypair = Keypair::generate_ed25519();
    let peer = keypair.public().to_peer_id();
    let socket = LinkSocket::bind_tokio("127.0.0.1:0".parse().unwrap()).unwrap();
    let config = SwarmConfig {
        mdns: false,
        ping_interval: Duration::from_millis(100),
        ..SwarmConfig::default()
    };
    (build_swarm(keypair, config, socket).unwrap(), peer)
}

async fn listen(net: &mut NodeNetwork, addr: &str) -> Multiaddr {
    net.swarm.listen_on(addr.parse().unwrap()).unwrap();
    loop {
        if let SwarmEvent::NewListenAddr { address, .. } = net.swarm.select_next_some().await {
            return address;
        }
    }
}

/// Runs both swarms until B has a ping RTT to A over a connection; returns B's view of the
/// connection's remote address and the RTT.
async fn connect_and_ping(
    a: &mut NodeNetwork,
    b: &mut NodeNetwork,
    a_peer: PeerId,
    addr: Multiaddr,
) -> (Multiaddr, Duration) {
    b.swarm.dial(addr.with(Protocol::P2p(a_peer))).unwrap();
    let mut remote = None;
    // Several rounds: a stream must keep working after the first exchanges.
    let mut pings = 0;
    let deadline = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = a.swarm.select_next_some() => {}
            event = b.swarm.select_next_some() => match event {
                SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } if peer_id == a_peer => {
                    remote = Some(endpoint.get_remote_address().clone());
                }
                SwarmEvent::Behaviour(NodeBehaviourEvent::Ping(ping::Event { peer, result: Ok(rtt), .. })) if peer == a_peer => {
                    pings += 1;
                    if pings == 5 {
                        return (remote.take().expect("connected before ping"), rtt);
                    }
                }
                SwarmEvent::OutgoingConnectionError { error, .. } => panic!("dial failed: {error}"),
                _ => {}
            },
            _ = &mut deadline => panic!("no connection and ping within 10 s"),
        }
    }
}

#[tokio::test]
async fn quic_is_used_when_the_peer_listens_on_udp() {
    let (mut a, a_peer) = network();
    let (mut b, _) = network();
    let addr = listen(&mut a, "/ip4/127.0.0.1/udp/0/quic-v1").await;
    let (remote, rtt) = connect_and_ping(&mut a, &mut b, a_peer, addr).await;
    assert!(remote.iter().any(|p| p == Protocol::QuicV1), "{remote}");
    assert!(rtt < Duration::from_millis(500));
    // The QUIC connection is in the link registry, so datagrams work too.
    assert!(b.links.is_connected(&a_peer));
    // quinn drives the connection in its own tasks, so datagrams flow without polling the swarm.
    let rtt = b
        .links
        .ping_datagram(&a_peer, Duration::from_secs(2))
        .await
        .unwrap();
    assert!(
        rtt.is_some(),
        "datagram ping over the swarm's QUIC connection"
    );
}

#[tokio::test]
async fn a_node_reachable_only_over_tcp_connects_through_the_fallback() {
    let (mut a, a_peer) = network();
    let (mut b, _) = network();
    let addr = listen(&mut a, "/ip4/127.0.0.1/tcp/0").await;
    let (remote, rtt) = connect_and_ping(&mut a, &mut b, a_peer, addr).await;
    assert!(
        remote.iter().any(|p| matches!(p, Protocol::Tcp(_))),
        "{remote}"
    );
    assert!(rtt < Duration::from_millis(500));
    // No QUIC link: datagrams are unavailable and say so.
    assert!(!b.links.is_connected(&a_peer));
    assert!(b.links.send_datagram(&a_peer, b"x").is_err());
}
