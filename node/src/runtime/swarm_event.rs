//! The driver taking the Swarm's events: connections kept, replaced or refused (one per peer,
//! `super::connections`), links up and down for the member, dial failures, listen addresses,
//! and control messages from the behaviours.

use super::api::NodeEvent;
use super::connections::{upgrades_circuit, HeldConnection};
use super::driver::Driver;
use crate::link::swarm::{answer_echo, NodeBehaviourEvent};
use callsign_mesh::member::{Input, LinkKind, LinkUp};
use libp2p::core::{ConnectedPoint, Endpoint};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{DialError, SwarmEvent};
use libp2p::PeerId;
use std::time::Instant;

impl Driver {
    pub(super) fn swarm_event(&mut self, event: SwarmEvent<NodeBehaviourEvent>, now: Instant) {
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                let held = self.member.link(&peer_id);
                let inbound = matches!(endpoint, ConnectedPoint::Listener { .. });
                let transport_kind = link_kind(&endpoint);
                let beside_circuit = upgrades_circuit(held, transport_kind, inbound);
                // Only our punch's own dial is reported as one: a direct dial beside a circuit
                // (a newly confirmed address) is a plain direct path.
                let kind = if self.punch_dials.remove(&connection_id) {
                    LinkKind::HolePunched
                } else {
                    transport_kind
                };
                // A relayed link never replaces a direct one, and TCP never replaces QUIC
                // (both sides may have dialed, on every address the other announced): voice
                // wants datagrams and no relay in the path. Unless the peer dialed us well
                // after our link came up: nobody dials a peer it is linked to, so it restarted
                // (a crash: our link to its previous run has not timed out yet) and our NAT
                // lets only its circuit in.
                let worse = held.is_some_and(|held| kind.worse_than(held));
                // Who opened the QUIC connection: a hole punch's waiting side "dials" in the
                // listener role and takes the peer's connection, which the peer counts as its
                // own dial. Both ends must agree for the crossing-dials rule to keep the same
                // connection (counted as ours here, a punch took the peer's dial for a second
                // one of ours, and the two ends each closed the one the other kept).
                let dialed_by_us = matches!(
                    endpoint,
                    ConnectedPoint::Dialer {
                        role_override: Endpoint::Dialer,
                        ..
                    }
                );
                let previous = (num_established.get() > 1)
                    .then(|| self.connections.get(&peer_id).copied())
                    .flatten();
                let redialed = !dialed_by_us && previous.is_some_and(|p| p.outlived_by(now));
                if worse && previous.is_some() && !redialed {
                    self.network.swarm.close_connection(connection_id);
                    return;
                }
                // A parked link's peer (both ends parked it) dialed or was dialed for ordered
                // control: the control session starts over on the new connection.
                let unparked = self.parking.unpark(&peer_id);
                if unparked {
                    tracing::debug!(%peer_id, dialed_by_us, "parked link back on a new connection");
                }
                // One connection per peer: an older one is most likely to a previous run of it
                // (restarted, its connection not yet timed out), and request-response would keep
                // sending control messages into it; a better kind (a hole punch beside a
                // circuit) replaces a worse one; or our dials crossed (`connections`).
                let better = held.is_some_and(|held| held.worse_than(kind));
                if let Some(previous) = previous {
                    let local = *self.network.swarm.local_peer_id();
                    let replace =
                        better || previous.replaced_by(&local, &peer_id, dialed_by_us, now);
                    tracing::debug!(%peer_id, ?previous, new = ?connection_id, dialed_by_us, replace,
                        "a second connection to a peer");
                    if !replace {
                        self.network.swarm.close_connection(connection_id);
                        return;
                    }
                    self.network.swarm.close_connection(previous.id);
                }
                self.connections.insert(
                    peer_id,
                    HeldConnection {
                        id: connection_id,
                        since: now,
                        dialed_by_us,
                    },
                );
                let remote = match &endpoint {
                    ConnectedPoint::Listener { send_back_addr, .. } => send_back_addr,
                    ConnectedPoint::Dialer { address, .. } => address,
                };
                let up = LinkUp {
                    peer: peer_id,
                    kind,
                    remote: callsign_mesh::member::quic_socket_addr(remote),
                    circuit: circuit_relay(&endpoint),
                    dialed: match &endpoint {
                        ConnectedPoint::Dialer { address, .. } => Some(address.clone()),
                        ConnectedPoint::Listener { .. } => None,
                    },
                    // A replaced connection may have taken control messages with it.
                    restarted: (previous.is_some() || unparked) && !beside_circuit,
                    resumed: unparked && !beside_circuit,
                    beside_circuit,
                    rtt: self.network.links.rtt(&peer_id),
                };
                self.member.handle_input(now, Input::LinkUp(up));
                // The member's word on the kind: a dial to a port the peer's router forwards
                // is `Mapped`.
                self.emit(NodeEvent::LinkUp {
                    peer: peer_id,
                    kind: self.member.link(&peer_id).unwrap_or(kind),
                    remote: endpoint.get_remote_address().clone(),
                });
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.connections.remove(&peer_id);
                let parked = self.network.links.is_parked(&peer_id);
                self.parking.closed(peer_id, parked);
                if parked {
                    tracing::debug!(peer = %peer_id, "link parked");
                } else {
                    self.link_down(peer_id, now);
                }
            }
            SwarmEvent::ListenerClosed { listener_id, .. } => {
                if self.reservation == Some(listener_id) {
                    // A refused or lost reservation: the next relay we hear of gets asked.
                    self.reservation = None;
                    self.member.handle_input(now, Input::ReservationClosed);
                }
                self.addresses_changed(now);
            }
            SwarmEvent::NewListenAddr { .. }
            | SwarmEvent::ExpiredListenAddr { .. }
            | SwarmEvent::ExternalAddrConfirmed { .. }
            | SwarmEvent::ExternalAddrExpired { .. } => self.addresses_changed(now),
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id: Some(peer),
                error: DialError::Transport(attempts),
            } => {
                self.punch_dials.remove(&connection_id);
                tracing::debug!(%peer, ?attempts, "dial failed");
                let addrs = attempts.into_iter().map(|(addr, _)| addr).collect();
                self.member
                    .handle_input(now, Input::DialFailed { peer, addrs });
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                tracing::debug!(?peer_id, %error, "dial failed");
                self.punch_dials.remove(&connection_id);
            }
            SwarmEvent::Behaviour(event) => {
                let mut event = Some(event);
                answer_echo(&mut self.network.swarm, &mut event);
                if let Some(NodeBehaviourEvent::Control(event)) = event {
                    self.control_event(event, now);
                }
            }
            _ => {}
        }
    }
}

fn link_kind(endpoint: &ConnectedPoint) -> LinkKind {
    // An inbound circuit's remote address is just `/p2p/<peer>`; its local one names the relay.
    if endpoint.is_relayed() {
        LinkKind::Relayed
    } else if endpoint
        .get_remote_address()
        .iter()
        .any(|p| matches!(p, Protocol::Tcp(_)))
    {
        LinkKind::TcpFallback
    } else {
        LinkKind::Direct
    }
}

/// The relay a circuit runs through: the peer named just before `/p2p-circuit` (an outbound
/// circuit's remote address, an inbound one's local address).
fn circuit_relay(endpoint: &ConnectedPoint) -> Option<PeerId> {
    let addr = match endpoint {
        ConnectedPoint::Dialer { address, .. } => address,
        ConnectedPoint::Listener { local_addr, .. } => local_addr,
    };
    let mut last = None;
    for protocol in addr.iter() {
        match protocol {
            Protocol::P2p(peer) => last = Some(peer),
            Protocol::P2pCircuit => return last,
            _ => {}
        }
    }
    None
}
