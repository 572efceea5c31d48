//! QUIC link endpoints on real loopback sockets, for the link tests.

use callsign_node::link::dscp::DSCP_EF;
use callsign_node::link::muxer::QuicMuxer;
use callsign_node::link::{
    DatagramReceiver, LinkConfig, LinkSocket, Links, QuicTransport, ReadPriority,
};
use libp2p::core::transport::{DialOpts, ListenerId, PortUse, TransportEvent};
use libp2p::core::{Endpoint, Transport};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use std::future::poll_fn;
use std::pin::Pin;
use tokio::sync::mpsc;

pub struct Node {
    pub peer: PeerId,
    pub links: Links,
    pub datagrams: DatagramReceiver,
    pub transport: QuicTransport,
}

/// A link endpoint on loopback whose datagrams leave marked as a node's do (EF).
pub fn node() -> Node {
    marked_node(Some(DSCP_EF))
}

/// A link endpoint on loopback marking its datagrams with `dscp` (`None`: unmarked).
pub fn marked_node(dscp: Option<u8>) -> Node {
    endpoint(LinkConfig::default(), dscp)
}

/// A link endpoint on loopback with `config`.
pub fn configured_node(config: LinkConfig) -> Node {
    endpoint(config, Some(DSCP_EF))
}

/// A link endpoint with `config` on a loopback socket read on a thread of its own, as a rented
/// relay's is (`LinkSocket::bind_tokio_read_apart`).
pub fn relay_node(config: LinkConfig) -> Node {
    let address = "127.0.0.1:0".parse().unwrap();
    let socket =
        LinkSocket::bind_tokio_read_apart(address, Some(DSCP_EF), ReadPriority::Normal).unwrap();
    endpoint_on(config, socket)
}

fn endpoint(config: LinkConfig, dscp: Option<u8>) -> Node {
    let socket = LinkSocket::bind_tokio_marked("127.0.0.1:0".parse().unwrap(), dscp).unwrap();
    // Linux always marks; Windows marks where qWAVE runs (not under Wine); the rest never.
    let marks = callsign_node::link::dscp::MARKS || (cfg!(windows) && socket.dscp().is_some());
    assert_eq!(socket.dscp(), dscp.filter(|_| marks));
    endpoint_on(config, socket)
}

fn endpoint_on(config: LinkConfig, socket: std::sync::Arc<LinkSocket>) -> Node {
    let keypair = Keypair::generate_ed25519();
    let (links, datagrams) = Links::new(4096);
    let transport = QuicTransport::new(keypair.clone(), config, socket, links.clone()).unwrap();
    Node {
        peer: keypair.public().to_peer_id(),
        links,
        datagrams,
        transport,
    }
}

/// Starts listening and drives the transport in a task; accepted connections arrive on the
/// returned channel. Returns the listen address with `/p2p/`.
pub async fn serve(
    transport: QuicTransport,
    peer: PeerId,
) -> (Multiaddr, mpsc::UnboundedReceiver<(PeerId, QuicMuxer)>) {
    serve_on(
        transport,
        peer,
        "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap(),
    )
    .await
}

pub async fn serve_on(
    mut transport: QuicTransport,
    peer: PeerId,
    listen: Multiaddr,
) -> (Multiaddr, mpsc::UnboundedReceiver<(PeerId, QuicMuxer)>) {
    transport.listen_on(ListenerId::next(), listen).unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut addr_tx = Some(addr_tx);
        loop {
            match poll_fn(|cx| Pin::new(&mut transport).poll(cx)).await {
                TransportEvent::NewAddress { listen_addr, .. } => {
                    if let Some(a) = addr_tx.take() {
                        let _ = a.send(listen_addr);
                    }
                }
                TransportEvent::Incoming { upgrade, .. } => {
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        if let Ok(out) = upgrade.await {
                            let _ = tx.send(out);
                        }
                    });
                }
                _ => {}
            }
        }
    });
    let addr = addr_rx.await.unwrap();
    (addr.with(Protocol::P2p(peer)), rx)
}

/// Dials `addr` from `transport` and waits for the link.
pub async fn connect(transport: &mut QuicTransport, addr: &Multiaddr) -> (PeerId, QuicMuxer) {
    transport
        .dial(addr.clone(), dial_opts())
        .unwrap()
        .await
        .unwrap()
}

pub fn dial_opts() -> DialOpts {
    DialOpts {
        role: Endpoint::Dialer,
        port_use: PortUse::Reuse,
    }
}
