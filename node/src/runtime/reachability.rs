//! The driver's side of reachability (`callsign_mesh::reachability`): tell each linked peer
//! where its link comes from, probe addresses for peers who ask, feed probes that reach our
//! socket to the address book, and act on what it confirms: announce the address, offer relay
//! circuits (a rendezvous for members nobody can reach), stop reserving circuits elsewhere.

use super::control::ControlMessage;
use super::driver::Driver;
use super::NodeEvent;
use callsign_mesh::reachability::{
    may_probe, probe_datagram, Observation, ProbeRequest, ReachabilityEvent, NONCE_LEN,
};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A peer may ask us for at most one probe per this long (each costs three datagrams).
const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// The UDP address of a direct QUIC or TCP address (`/ip4/../udp/../quic-v1`), if it is one.
pub(super) fn socket_addr(addr: &Multiaddr) -> Option<SocketAddr> {
    let mut ip = None;
    for protocol in addr.iter() {
        match protocol {
            Protocol::Ip4(v4) => ip = Some(std::net::IpAddr::V4(v4)),
            Protocol::Ip6(v6) => ip = Some(std::net::IpAddr::V6(v6)),
            Protocol::Udp(port) => return ip.map(|ip| SocketAddr::new(ip, port)),
            Protocol::P2pCircuit | Protocol::Tcp(_) => return None,
            _ => {}
        }
    }
    None
}

/// `/ip4/../udp/../quic-v1` for a UDP address.
pub(super) fn quic_multiaddr(addr: SocketAddr) -> Multiaddr {
    Multiaddr::empty()
        .with(addr.ip().into())
        .with(Protocol::Udp(addr.port()))
        .with(Protocol::QuicV1)
}

impl Driver {
    /// A control link to `peer` came up: tell it where we see it (not through a circuit: there
    /// we see the relay), and count it as a prober (a circuit peer too: it probes from its own
    /// fresh port, which is all a probe needs).
    pub(super) fn reachability_link_up(&mut self, peer: PeerId, now: Instant) {
        if let Some(remote) = self.remote_addrs.get(&peer).copied() {
            self.send_now(
                &peer,
                ControlMessage::Observed(Observation { addr: remote }.encode()),
            );
        }
        self.reachability.link_up(peer, now);
    }

    pub(super) fn reachability_link_down(&mut self, peer: &PeerId, now: Instant) {
        self.reachability.link_down(peer, now);
        self.probed_for.remove(peer);
    }

    /// `peer` says where it sees us.
    pub(super) fn observed(&mut self, peer: PeerId, body: &[u8], now: Instant) {
        match Observation::decode(body) {
            // Only over a direct link does the peer see our address (a circuit shows the relay).
            Ok(seen) if self.remote_addrs.contains_key(&peer) => {
                self.reachability.observed(peer, seen.addr, now)
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(%peer, %e, "bad observation"),
        }
    }

    /// `peer` asks us to probe its candidate address.
    pub(super) fn probe_request(&mut self, peer: PeerId, body: &[u8], now: Instant) {
        let request = match ProbeRequest::decode(body) {
            Ok(request) => request,
            Err(e) => {
                tracing::debug!(%peer, %e, "bad probe request");
                return;
            }
        };
        // Over a direct link we can check the target is the requester's own IP; over a circuit
        // we cannot, and the rate limit below bounds what a member could aim at others.
        let seen_from = self.remote_addrs.get(&peer);
        if seen_from.is_some_and(|seen_from| !may_probe(&request.addr, seen_from)) {
            tracing::info!(%peer, addr = %request.addr, ?seen_from,
                "probe refused: not the address the peer's link comes from");
            return;
        }
        if self
            .probed_for
            .get(&peer)
            .is_some_and(|at| now.saturating_duration_since(*at) < PROBE_INTERVAL)
        {
            tracing::debug!(%peer, "probe request refused: too soon");
            return;
        }
        self.probed_for.insert(peer, now);
        self.network
            .socket
            .send_probe(request.addr, probe_datagram(&request.nonce).to_vec());
    }

    pub(super) fn probe_arrived(&mut self, nonce: [u8; NONCE_LEN], now: Instant) {
        self.reachability.probe_received(&nonce, now);
    }

    /// Sends the probe requests the book wants and acts on what it learned.
    pub(super) fn flush_reachability(&mut self, now: Instant) {
        while let Some((peer, request)) = self.reachability.poll_request() {
            self.send_now(&peer, ControlMessage::Probe(request.encode()));
        }
        let mut changed = false;
        while let Some(event) = self.reachability.poll_event() {
            match event {
                ReachabilityEvent::Confirmed(addr) => {
                    tracing::info!(%addr, "reachable: a probe from a stranger's port got in");
                    // Relay reservations we grant name our confirmed addresses.
                    self.network
                        .swarm
                        .add_external_address(quic_multiaddr(addr));
                    self.emit(NodeEvent::Reachability {
                        addr: quic_multiaddr(addr),
                        reachable: true,
                    });
                    changed = true;
                }
                ReachabilityEvent::Lost(addr) => {
                    tracing::info!(%addr, "no longer reachable there");
                    self.network
                        .swarm
                        .remove_external_address(&quic_multiaddr(addr));
                    self.emit(NodeEvent::Reachability {
                        addr: quic_multiaddr(addr),
                        reachable: false,
                    });
                    changed = true;
                }
                ReachabilityEvent::Unreachable(addr) => {
                    tracing::info!(%addr,
                        "not reachable unasked (the NAT filters strangers); circuits and hole punching it is");
                }
            }
        }
        if changed {
            self.announce_presence(now);
        }
    }

    /// Whether members that cannot be reached directly may use us as a rendezvous: the
    /// configuration vouches for us (a relay), or a probe confirmed an address.
    pub(super) fn is_rendezvous(&self) -> bool {
        self.vouched || self.reachability.is_reachable()
    }

    /// Sends one control message on its own request, outside the peer's ordered outbox (it
    /// needs no order, and an older node that cannot decode it then drops only it).
    fn send_now(&mut self, peer: &PeerId, message: ControlMessage) {
        self.network
            .swarm
            .behaviour_mut()
            .control
            .send_request(peer, message.encode());
    }
}
