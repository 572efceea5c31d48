//! Links: QUIC connections between nodes, with datagrams for voice and streams for control.
//!
//! - [`socket`]: the UDP socket under quinn, real (tokio) or simulated (turmoil), with counters.
//! - `simulated`: the turmoil socket and the simulator's [`PathModel`] applied to it.
//! - [`transport`]: [`QuicTransport`], a libp2p `Transport` on one quinn endpoint.
//! - [`muxer`]: a QUIC connection as a libp2p `StreamMuxer`.
//! - `window`: `VoiceWindow`, congestion control with a floor under it for voice.
//! - [`links`]: the [`Links`] registry: per-peer datagrams, datagram ping, link events.
//! - [`plane`]: the voice plane, datagrams sealed per link and sent beside QUIC.
//! - [`forwarding`]: a rented relay's fast path, forwarding voice where the plane opens it.
//! - `udp`: the real socket as quinn's, registered with tokio for reading only (Unix).
//! - `plain_udp`: elsewhere, the fallback where the stack refuses quinn's socket options.
//! - `read_thread`: a relay's socket, read on a thread of its own ([`priority`]: at what
//!   priority).
//! - `batch`: many datagrams to many destinations in one system call.
//! - `kernel_drops`: what the kernel dropped for a real socket before it was read.
//! - `heartbeat`: a relay's heartbeats on the plane, and the member's watchdog on them.
//! - [`portmap`]: [`portmap::PortMapper`], a UPnP IGD port mapping on the home router.
//! - [`relay`]: [`relay::MemberRelay`], the relay v2 server a reachable member runs for the org.
//! - [`control`]: the control protocol's stream codec (ordered, acknowledged messages).
//! - [`swarm`]: the node's libp2p `Swarm` on QUIC with TCP + Noise + Yamux fallback.

/// The connection hooks of a `NetworkBehaviour` that wraps another in its `inner` field and
/// only watches its events ([`control::ControlBehaviour`], [`relay::MemberRelay`]): every
/// connection decision is the inner behaviour's.
macro_rules! delegate_connection_hooks {
    () => {
        fn handle_pending_inbound_connection(
            &mut self,
            connection_id: libp2p::swarm::ConnectionId,
            local_addr: &libp2p::Multiaddr,
            remote_addr: &libp2p::Multiaddr,
        ) -> Result<(), libp2p::swarm::ConnectionDenied> {
            self.inner
                .handle_pending_inbound_connection(connection_id, local_addr, remote_addr)
        }

        fn handle_established_inbound_connection(
            &mut self,
            connection_id: libp2p::swarm::ConnectionId,
            peer: libp2p::PeerId,
            local_addr: &libp2p::Multiaddr,
            remote_addr: &libp2p::Multiaddr,
        ) -> Result<libp2p::swarm::THandler<Self>, libp2p::swarm::ConnectionDenied> {
            self.inner.handle_established_inbound_connection(
                connection_id,
                peer,
                local_addr,
                remote_addr,
            )
        }

        fn handle_pending_outbound_connection(
            &mut self,
            connection_id: libp2p::swarm::ConnectionId,
            maybe_peer: Option<libp2p::PeerId>,
            addresses: &[libp2p::Multiaddr],
            effective_role: libp2p::core::Endpoint,
        ) -> Result<Vec<libp2p::Multiaddr>, libp2p::swarm::ConnectionDenied> {
            self.inner.handle_pending_outbound_connection(
                connection_id,
                maybe_peer,
                addresses,
                effective_role,
            )
        }

        fn handle_established_outbound_connection(
            &mut self,
            connection_id: libp2p::swarm::ConnectionId,
            peer: libp2p::PeerId,
            addr: &libp2p::Multiaddr,
            role_override: libp2p::core::Endpoint,
            port_use: libp2p::core::transport::PortUse,
        ) -> Result<libp2p::swarm::THandler<Self>, libp2p::swarm::ConnectionDenied> {
            self.inner.handle_established_outbound_connection(
                connection_id,
                peer,
                addr,
                role_override,
                port_use,
            )
        }

        fn on_connection_handler_event(
            &mut self,
            peer: libp2p::PeerId,
            connection_id: libp2p::swarm::ConnectionId,
            event: libp2p::swarm::THandlerOutEvent<Self>,
        ) {
            self.inner
                .on_connection_handler_event(peer, connection_id, event);
        }
    };
}

mod batch;
pub mod boxed;
pub mod config;
pub mod control;
pub mod dscp;
pub mod forwarding;
mod heartbeat;
mod kernel_drops;
pub mod links;
pub mod muxer;
#[cfg(not(unix))]
mod plain_udp;
pub mod plane;
pub mod portmap;
pub mod priority;
#[cfg(windows)]
mod qwave;
#[cfg(target_os = "linux")]
mod read_thread;
pub mod relay;
mod seeded;
mod simulated;
pub mod socket;
pub mod swarm;
pub mod transport;
#[cfg(unix)]
mod udp;
mod window;

pub use config::LinkConfig;
pub use heartbeat::Heartbeat;
pub use links::{DatagramReceiver, IncomingDatagram, LinkCounts, LinkEvent, Links};
pub use priority::{ReadPriority, ReadPriorityNow};
pub use socket::{LinkSocket, PathModel, SocketCounts, Transit};
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
