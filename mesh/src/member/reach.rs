//! Reachability within the member ([`crate::reachability`]): tell each linked peer where its
//! link comes from, probe addresses for peers who ask, and act on what the address book
//! confirms: announce the address, offer relay circuits (a rendezvous for members nobody can
//! reach), stop reserving circuits elsewhere.

use super::{Event, LinkKind, Member, Output, PortMapping};
use crate::control::ControlMessage;
use crate::reachability::{
    may_probe, probe_datagram, AddressBook, Observation, ProbeRequest, ReachabilityEvent,
};
use libp2p_identity::PeerId;
use multiaddr::{Multiaddr, Protocol};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A peer may ask us for at most one probe per this long (each costs three datagrams).
const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// `/ip4/../udp/../quic-v1` for a UDP address.
pub fn quic_multiaddr(addr: SocketAddr) -> Multiaddr {
    Multiaddr::empty()
        .with(addr.ip().into())
        .with(Protocol::Udp(addr.port()))
        .with(Protocol::QuicV1)
}

/// The UDP address of a direct QUIC address (`/ip4|ip6/…/udp/…/quic-v1`, optionally
/// `/p2p/…`); `None` for anything else, a circuit through a relay at that address included.
pub fn quic_socket_addr(addr: &Multiaddr) -> Option<SocketAddr> {
    let mut parts = addr.iter();
    let ip: std::net::IpAddr = match parts.next()? {
        Protocol::Ip4(v4) => v4.into(),
        Protocol::Ip6(v6) => v6.into(),
        _ => return None,
    };
    let (Protocol::Udp(port), Protocol::QuicV1) = (parts.next()?, parts.next()?) else {
        return None;
    };
    match (parts.next(), parts.next()) {
        (None, _) | (Some(Protocol::P2p(_)), None) => Some(SocketAddr::new(ip, port)),
        _ => None,
    }
}

impl Member {
    /// A control link to `peer` came up: tell it where we see it (not through a circuit: there
    /// we see the relay), and count it as a prober (a circuit peer too: it probes from its own
    /// fresh port, which is all a probe needs).
    pub(super) fn reachability_link_up(&mut self, peer: PeerId, now: Instant) {
        if let Some(remote) = self.links.get(&peer).and_then(|l| l.remote) {
            self.send_now(
                peer,
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
            Ok(seen) if self.links.get(&peer).is_some_and(|l| l.remote.is_some()) => {
                let known = |book: &AddressBook<PeerId>| book.candidates().any(|a| a == seen.addr);
                let new = !known(&self.reachability);
                self.reachability.observed(peer, seen.addr, now);
                self.through_our_mapping(peer, seen.addr);
                if new && known(&self.reachability) {
                    // Somewhere new to aim a punch at (a new network, a NAT that rebooted).
                    self.punches.network_changed(now);
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(%peer, %e, "bad observation"),
        }
    }

    /// A peer that dialed us says it reached us at `addr`: if that is a port our router
    /// forwards to us, the link came in through it, and it is `Mapped`.
    fn through_our_mapping(&mut self, peer: PeerId, addr: SocketAddr) {
        let Some(link) = self.links.get(&peer) else {
            return;
        };
        if link.kind != LinkKind::Direct
            || link.dialed
            || !self.reachability.mappings().any(|m| m == addr)
        {
            return;
        }
        self.relabel(peer, LinkKind::Mapped);
    }

    /// Our router mapped a port to us, or the mapping went: a mapped address is a candidate
    /// like an observed one, announced only once a probe from a stranger's port gets in.
    pub(super) fn port_mapping(&mut self, mapping: PortMapping, now: Instant) {
        match &mapping {
            PortMapping::Mapped { external, protocol } => {
                tracing::info!(%external, %protocol, "port mapped on our router; probing it");
                self.reachability.mapped(*external, now);
                self.punches.network_changed(now);
            }
            PortMapping::Lost { external, reason } => {
                tracing::info!(%external, %reason, "port mapping lost");
                self.reachability.unmapped(external, now);
            }
            PortMapping::Unavailable { reason } => {
                tracing::info!(%reason, "no port mapping; hole punching and circuits it is");
            }
        }
        self.emit(Event::PortMapping(mapping));
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
        let seen_from = self.links.get(&peer).and_then(|l| l.remote.as_ref());
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
        self.outputs.push_back(Output::Probe {
            to: request.addr,
            datagram: probe_datagram(&request.nonce).to_vec(),
        });
    }

    /// Sends the probe requests the book wants and acts on what it learned.
    pub(super) fn flush_reachability(&mut self, now: Instant) {
        while let Some((peer, request)) = self.reachability.poll_request() {
            self.send_now(peer, ControlMessage::Probe(request.encode()));
        }
        let mut changed = false;
        while let Some(event) = self.reachability.poll_event() {
            match event {
                ReachabilityEvent::Confirmed(addr) | ReachabilityEvent::Lost(addr) => {
                    let reachable = matches!(event, ReachabilityEvent::Confirmed(_));
                    if reachable {
                        tracing::info!(%addr, "reachable: a probe from a stranger's port got in");
                    } else {
                        tracing::info!(%addr, "no longer reachable there");
                    }
                    // Relay reservations we grant name our confirmed addresses.
                    let addr = quic_multiaddr(addr);
                    self.outputs.push_back(Output::ExternalAddress {
                        addr: addr.clone(),
                        add: reachable,
                    });
                    self.emit(Event::Reachability { addr, reachable });
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
}
