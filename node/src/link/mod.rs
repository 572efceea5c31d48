//! Links: QUIC connections between nodes, with datagrams for voice and streams for control.
//!
//! - [`socket`]: the UDP socket under quinn, real (tokio) or simulated (turmoil), with counters.
//! - [`transport`]: [`QuicTransport`], a libp2p `Transport` on one quinn endpoint.
//! - [`muxer`]: a QUIC connection as a libp2p `StreamMuxer`.
//! - [`links`]: the [`Links`] registry: per-peer datagrams, datagram ping, link events.
//! - [`relay`]: [`relay::MemberRelay`], the relay v2 server a reachable member runs for the org.
//! - [`control`]: the control protocol's stream codec (ordered, acknowledged messages).
//! - [`swarm`]: the node's libp2p `Swarm` on QUIC with TCP + Noise + Yamux fallback.

pub mod config;
pub mod control;
pub mod links;
pub mod muxer;
pub mod relay;
pub mod socket;
pub mod swarm;
pub mod transport;

pub use config::LinkConfig;
pub use links::{DatagramReceiver, IncomingDatagram, LinkCounts, LinkEvent, Links};
pub use socket::{LinkSocket, PathModel};
pub use transport::QuicTransport;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use std::net::SocketAddr;

/// Errors from links.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("link configuration: {0}")]
    Config(String),
    #[error("cannot start connection: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("handshake: {0}")]
    Handshake(String),
    #[error("dialed {expected} but the remote proved to be {actual}")]
    PeerMismatch {
        expected: Box<PeerId>,
        actual: Box<PeerId>,
    },
    #[error("not connected to {0}")]
    NotConnected(PeerId),
    #[error("datagram of {size} bytes exceeds the path's {max}")]
    DatagramTooLarge { size: usize, max: usize },
    #[error("datagram: {0}")]
    Datagram(String),
}

/// `/ip4|ip6/ADDR/udp/PORT/quic-v1[/p2p/PEER]` → socket address and the expected peer.
pub fn multiaddr_to_socket(addr: &Multiaddr) -> Option<(SocketAddr, Option<PeerId>)> {
    let mut iter = addr.iter();
    let ip: std::net::IpAddr = match iter.next()? {
        Protocol::Ip4(ip) => ip.into(),
        Protocol::Ip6(ip) => ip.into(),
        _ => return None,
    };
    let Protocol::Udp(port) = iter.next()? else {
        return None;
    };
    let Protocol::QuicV1 = iter.next()? else {
        return None;
    };
    let peer = match iter.next() {
        None => None,
        Some(Protocol::P2p(peer)) => Some(peer),
        Some(_) => return None,
    };
    if iter.next().is_some() {
        return None;
    }
    Some((SocketAddr::new(ip, port), peer))
}

/// The QUIC multiaddr of a socket address.
pub fn socket_to_multiaddr(addr: SocketAddr) -> Multiaddr {
    Multiaddr::empty()
        .with(addr.ip().into())
        .with(Protocol::Udp(addr.port()))
        .with(Protocol::QuicV1)
}
