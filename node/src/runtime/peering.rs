//! The driver's control plane, per linked member: link up and down, the ordered control
//! channel (charter sync, presence, E2EE handshakes, key grants, loss reports, TCP-fallback
//! voice), and our own presence.

use super::api::{LinkKind, NodeEvent};
use super::control::{ControlMessage, PeerControl};
use super::driver::{link_kind, Driver};
use super::forwarding::LinkRole;
use crate::link::swarm::{answer_echo, NodeBehaviourEvent};
use crate::link::{IncomingDatagram, LinkEvent};
use callsign_mesh::charter::sync::SyncMessage;
use callsign_mesh::pairing::{Pairing, PairingConfig};
use callsign_mesh::presence::{PresenceBody, PresenceRecord, PresenceUpdate, RelayCapability};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, Message};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId};
use std::time::Instant;

/// Uplink a circuit-serving member advertises: about 25 Opus voice streams. A guess until the
/// topology planner (issue 8) measures and budgets it.
const RELAY_SPARE_UPLINK_KBPS: u32 = 1000;

impl Driver {
    pub(super) fn link_event(&mut self, event: LinkEvent) {
        if let LinkEvent::Migrated { peer, to, .. } = event {
            tracing::debug!(%peer, %to, "link migrated");
        }
    }

    pub(super) fn swarm_event(&mut self, event: SwarmEvent<NodeBehaviourEvent>, now: Instant) {
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                let held = self.link_kinds.get(&peer_id).copied();
                let mut kind = link_kind(&endpoint);
                // Nobody dials a peer it is linked to, except dcutr over a relay circuit: a
                // direct QUIC link arriving beside a circuit is its hole punch (whichever side's
                // dial got through first).
                if kind == LinkKind::Direct && held == Some(LinkKind::Relayed) {
                    kind = LinkKind::HolePunched;
                }
                // A relayed link never replaces a direct one, and TCP never replaces QUIC
                // (both sides may have dialed, on every address the other announced): voice
                // wants datagrams and no relay in the path.
                let worse = held.is_some_and(|held| kind.worse_than(held));
                if worse && num_established.get() > 1 {
                    self.network.swarm.close_connection(connection_id);
                    return;
                }
                // Newest connection wins: an older one to the same peer is most likely to a
                // previous run of it (restarted, its connection not yet timed out), and
                // request-response would keep sending control messages into it.
                if let Some(previous) = self.connections.insert(peer_id, connection_id) {
                    if num_established.get() > 1 {
                        self.network.swarm.close_connection(previous);
                    }
                }
                self.link_kinds.insert(peer_id, kind);
                // Where a direct link comes from: what we tell the peer it looks like, and the
                // only address we probe for it.
                let remote = match &endpoint {
                    libp2p::core::ConnectedPoint::Listener { send_back_addr, .. } => send_back_addr,
                    libp2p::core::ConnectedPoint::Dialer { address, .. } => address,
                };
                match super::reachability::socket_addr(remote) {
                    Some(remote) if kind != LinkKind::Relayed => {
                        self.remote_addrs.insert(peer_id, remote);
                    }
                    _ => {
                        self.remote_addrs.remove(&peer_id);
                    }
                }
                match super::driver::circuit_relay(&endpoint) {
                    Some(relay) if kind == LinkKind::Relayed => {
                        self.circuits.insert(peer_id, relay);
                    }
                    _ => {
                        self.circuits.remove(&peer_id);
                    }
                }
                if matches!(self.link_role(&peer_id), Some(LinkRole::Relay(_))) {
                    if let libp2p::core::ConnectedPoint::Dialer { address, .. } = &endpoint {
                        self.reserve_circuit(peer_id, address.clone());
                    }
                }
                self.emit(NodeEvent::LinkUp {
                    peer: peer_id,
                    kind,
                    remote: endpoint.get_remote_address().clone(),
                });
                if kind == LinkKind::HolePunched {
                    // The punched path replaces the circuit; the peer did not restart, so its
                    // control and session carry on (over whichever connection is left).
                    self.reachability_link_up(peer_id, now);
                    return;
                }
                // A second connection usually means the peer restarted and its old connection
                // has not timed out yet: its control and E2EE state is gone, so ours for it
                // must start over too.
                let restarted = num_established.get() > 1;
                if restarted {
                    self.peer_down(&peer_id);
                }
                self.peer_up(peer_id, now, restarted);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.connections.remove(&peer_id);
                self.link_kinds.remove(&peer_id);
                self.remote_addrs.remove(&peer_id);
                self.circuits.remove(&peer_id);
                self.peer_down(&peer_id);
                self.emit(NodeEvent::LinkDown { peer: peer_id });
            }
            SwarmEvent::NewListenAddr { address, .. } if is_circuit(&address) => {
                // Reachable through a relay now: tell everyone where.
                tracing::debug!(%address, "relay reservation accepted");
                self.announce_presence(now);
            }
            // A refused or lost reservation: the next relay we hear of gets asked.
            SwarmEvent::ListenerClosed { listener_id, .. }
                if self.reservation == Some(listener_id) =>
            {
                self.reservation = None;
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

    /// Starts control with a linked peer. `restarted`: we had control with it before and lost
    /// it, so if it starts the E2EE session it is asked to start again.
    pub(super) fn peer_up(&mut self, peer: PeerId, now: Instant, restarted: bool) {
        // While we join, every link (the root's too, which even an empty charter knows) only
        // carries our request and charter sync: nobody treats us as a member yet.
        if self.joining() {
            self.join_link_up(peer, now);
            return;
        }
        let identity = match self.link_role(&peer) {
            Some(LinkRole::Member(identity)) => identity,
            Some(LinkRole::Relay(identity)) => {
                // A relay link: charter sync and floor, no E2EE session, no keys.
                self.peers.insert(peer, PeerControl::default());
                self.sync.handle_link_up(peer, now);
                // The floor is between members and their arbiter, not between relays.
                if self.members.contains_key(&peer) || !self.serves_as_relay() {
                    self.floor.peer_up(identity);
                    self.update_arbiters(now);
                }
                // A relay that comes back has forgotten our subscription.
                self.subscribed.remove(&identity);
                self.reachability_link_up(peer, now);
                self.replan(now);
                self.cascade();
                return;
            }
            // Not of our org: no control, no keys. Its datagrams are dropped by the voice
            // receiver (or, at a relay, counted as a stranger's). Its control messages go to
            // `stranger_control`: a join request, for admins.
            None => return,
        };
        let mut control = PeerControl::default();
        if let Some(ours) = self.own_presence(now) {
            control.queue(ControlMessage::Presence(ours.encode()));
        }
        // Share what we know of others (signed by them), so peers find each other.
        for record in self.presence.present() {
            if record.body.peer != identity && record.body.peer != self.local {
                control.queue(ControlMessage::Presence(record.encode()));
            }
        }
        // The lower peer id starts the E2EE session, so two crossing starts cannot happen.
        let (pairing, step) = if self.local_peer < peer {
            let first = self.next_pairing;
            // Room for the retries of this pairing before the next one's attempts.
            self.next_pairing += 1 << 12;
            Pairing::initiate(&self.keys, identity, first, PairingConfig::default(), now)
        } else {
            Pairing::respond(identity, PairingConfig::default(), restarted)
        };
        control.pairing = Some(pairing);
        for body in step.send {
            control.queue(ControlMessage::Handshake(body));
        }
        if let Some(e) = step.error {
            self.emit(NodeEvent::Warning(format!("session start: {e}")));
        }
        self.peers.insert(peer, control);
        self.reachability_link_up(peer, now);
        self.sync.handle_link_up(peer, now);
        self.floor.peer_up(identity);
        self.update_arbiters(now);
        self.replan(now);
    }

    pub(super) fn peer_down(&mut self, peer: &PeerId) {
        if self.peers.remove(peer).is_some() {
            let now = super::driver::now();
            self.reachability_link_down(peer, now);
            if let Some(identity) = self.link_role(peer).map(LinkRole::identity) {
                self.floor.peer_down(&identity, now);
                self.update_arbiters(now);
                if let Some(forwarder) = &mut self.forwarder {
                    forwarder.remove(&identity);
                }
                self.subscribed.remove(&identity);
                self.replan(now);
                self.cascade();
            }
        }
        self.listener_loss.remove(peer);
        self.sync.handle_link_down(peer);
        self.keys_dirty = true;
    }

    pub(super) fn control_event(
        &mut self,
        event: request_response::Event<Vec<u8>, Vec<u8>>,
        now: Instant,
    ) {
        match event {
            request_response::Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                let _ = self
                    .network
                    .swarm
                    .behaviour_mut()
                    .control
                    .send_response(channel, Vec::new());
                self.control_message(peer, &request, now);
            }
            request_response::Event::Message {
                peer,
                message: Message::Response { request_id, .. },
                ..
            } => {
                if let Some(control) = self.peers.get_mut(&peer) {
                    control.acknowledged(request_id);
                }
            }
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                let in_flight = self
                    .peers
                    .get(&peer)
                    .is_some_and(|c| c.is_in_flight(request_id));
                if in_flight {
                    // The ordered channel broke: start the peer's control over.
                    tracing::debug!(%peer, %error, "control message lost; restarting session");
                    self.peer_down(&peer);
                    if self.network.swarm.is_connected(&peer) {
                        self.peer_up(peer, now, true);
                    }
                }
            }
            _ => {}
        }
    }

    pub(super) fn control_message(&mut self, peer: PeerId, bytes: &[u8], now: Instant) {
        match ControlMessage::decode(bytes) {
            Ok(ControlMessage::Batch(messages)) => {
                for message in messages {
                    self.handle_control(peer, message, now);
                }
            }
            Ok(message) => self.handle_control(peer, message, now),
            Err(e) => tracing::debug!(%peer, %e, "bad control message"),
        }
    }

    fn handle_control(&mut self, peer: PeerId, message: ControlMessage, now: Instant) {
        if let ControlMessage::Subscribe(body) = &message {
            // Checked by the relay against the charter: refusals are counted, strangers' too.
            self.subscription(peer, body);
            return;
        }
        if self.joining() {
            self.stranger_control(peer, message, now);
            return;
        }
        // Membership is checked per message: one in a batch may remove the sender.
        let identity = match self.link_role(&peer) {
            Some(LinkRole::Member(identity)) => identity,
            Some(LinkRole::Relay(identity)) => {
                match message {
                    ControlMessage::Sync(body) => match SyncMessage::decode(&body) {
                        Ok(msg) => self.sync.handle_message(peer, msg, now),
                        Err(e) => tracing::debug!(%peer, %e, "bad sync message"),
                    },
                    ControlMessage::Floor(body) => self.floor_message(identity, &body, now),
                    ControlMessage::Presence(body) => self.presence_message(peer, &body, now),
                    ControlMessage::Observed(body) => self.observed(peer, &body, now),
                    ControlMessage::Probe(body) => self.probe_request(peer, &body, now),
                    // Keys, handshakes and voice are for members only.
                    _ => tracing::debug!(%peer, "control message refused on a relay link"),
                }
                return;
            }
            None => {
                self.stranger_control(peer, message, now);
                return;
            }
        };
        match message {
            ControlMessage::Sync(body) => match SyncMessage::decode(&body) {
                Ok(msg) => self.sync.handle_message(peer, msg, now),
                Err(e) => tracing::debug!(%peer, %e, "bad sync message"),
            },
            ControlMessage::Presence(body) => self.presence_message(peer, &body, now),
            ControlMessage::Handshake(body) => self.handshake(peer, identity, &body, now),
            ControlMessage::Voice(packet) => self.datagram(
                IncomingDatagram {
                    peer,
                    payload: packet.into(),
                    received_at: now,
                },
                now,
            ),
            ControlMessage::LossReport(pct) => {
                self.listener_loss.insert(peer, pct.min(100));
                let worst = self.listener_loss.values().copied().max().unwrap_or(0);
                if let Err(e) = self.transmitter.set_expected_loss(worst) {
                    tracing::warn!(%e, "setting expected loss");
                }
            }
            ControlMessage::Grant(body) => {
                let Some(session) = self
                    .peers
                    .get_mut(&peer)
                    .and_then(|c| c.pairing.as_mut())
                    .and_then(|p| p.session())
                else {
                    return;
                };
                match session.accept_grant(&body) {
                    Ok(grant) => self.receiver.add_grant(&grant),
                    Err(e) => self.emit(NodeEvent::Warning(format!("grant from {peer}: {e}"))),
                }
            }
            ControlMessage::Floor(body) => self.floor_message(identity, &body, now),
            ControlMessage::Observed(body) => self.observed(peer, &body, now),
            ControlMessage::Probe(body) => self.probe_request(peer, &body, now),
            // `decode` refuses nested batches; subscriptions were handled above; a member's
            // join request arrived after its admission (nothing left to do).
            ControlMessage::Batch(_)
            | ControlMessage::Subscribe(_)
            | ControlMessage::Join(_)
            | ControlMessage::JoinRefused(_) => {}
        }
    }

    pub(super) fn presence_message(&mut self, from: PeerId, body: &[u8], now: Instant) {
        let record = match PresenceRecord::decode(body) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(%from, %e, "bad presence record");
                return;
            }
        };
        let addrs_changed = self
            .presence
            .get(&record.body.peer)
            .is_none_or(|held| held.body.addrs != record.body.addrs);
        let members = &self.members;
        let update = self
            .presence
            .insert(record.clone(), self.unix_ms(now), |p| {
                members.contains_key(&p.peer_id())
            });
        if !matches!(update, PresenceUpdate::Joined | PresenceUpdate::Updated) {
            return;
        }
        self.replan_soon();
        let subject = record.body.peer;
        if subject == self.local {
            return;
        }
        self.emit(NodeEvent::Presence {
            peer: subject,
            name: record.body.display_name.clone(),
            listening: record.body.listening.clone(),
        });
        // Gossip onward, and link to members we heard of but are not linked to (the lower id
        // dials, so a pair makes one connection). A relay passes on only news (a member came,
        // or can be reached elsewhere): it links everyone, and members re-announce often.
        if self.serves_as_relay() && update == PresenceUpdate::Updated && !addrs_changed {
            return;
        }
        let encoded = ControlMessage::Presence(record.encode());
        for (peer, control) in &mut self.peers {
            if *peer != from && *peer != subject.peer_id() {
                control.queue(encoded.clone());
            }
        }
        let subject_peer = subject.peer_id();
        let addrs: Vec<Multiaddr> = record
            .body
            .addrs
            .iter()
            .filter_map(|a| Multiaddr::try_from(a.clone()).ok())
            .collect();
        // Every QUIC address (a confirmed public one, a LAN one for members on the same
        // network), TCP only when the peer offers no QUIC: voice needs datagrams.
        let (quic, tcp): (Vec<Multiaddr>, Vec<Multiaddr>) = addrs
            .iter()
            .filter(|a| !is_circuit(a))
            .cloned()
            .partition(|a| a.iter().any(|p| matches!(p, Protocol::QuicV1)));
        let direct = if quic.is_empty() {
            tcp.into_iter().take(1).collect()
        } else {
            quic
        };
        if record.body.relay.public {
            if let Some(relay) = direct.first() {
                self.reserve_circuit(subject_peer, relay.clone());
            }
        }
        if self.serves_as_relay() {
            return;
        }
        // Linked only through a circuit and the peer now announces a direct address (a probe
        // confirmed it): dial it, whichever of us is lower; dcutr may not have managed (it
        // dials only one side's observed address).
        let relayed = self.link_kinds.get(&subject_peer) == Some(&LinkKind::Relayed);
        if relayed && addrs_changed && !direct.is_empty() {
            let opts = DialOpts::peer_id(subject_peer)
                .addresses(direct.clone())
                .condition(PeerCondition::Always)
                .build();
            let _ = self.network.swarm.dial(opts);
        }
        if !self.network.swarm.is_connected(&subject_peer) && self.local_peer < subject_peer {
            // The direct address and any relay circuits at once: the first to connect wins
            // (direct, unless a NAT is in the way), the others are abandoned.
            let mut candidates = direct;
            candidates.extend(addrs.into_iter().filter(is_circuit));
            if !candidates.is_empty() {
                let opts = DialOpts::peer_id(subject_peer)
                    .addresses(candidates)
                    .condition(PeerCondition::Disconnected)
                    .build();
                let _ = self.network.swarm.dial(opts);
            }
        }
    }

    /// Reserves a relay v2 circuit at `relay` (reachable at `addr`) unless we hold one or serve
    /// circuits ourselves: members whose NAT keeps them from reaching us directly can still link
    /// through it (end-to-end encrypted). A relay that refuses closes the listener, and the next
    /// relay we hear of gets asked.
    fn reserve_circuit(&mut self, relay: PeerId, addr: Multiaddr) {
        if self.is_rendezvous() || self.reservation.is_some() {
            return;
        }
        let circuit = addr
            .with_p2p(relay)
            .unwrap_or_else(|a| a)
            .with(Protocol::P2pCircuit);
        match self.network.swarm.listen_on(circuit) {
            Ok(id) => self.reservation = Some(id),
            Err(e) => tracing::debug!(%e, "relay reservation"),
        }
    }

    pub(super) fn own_presence(&mut self, now: Instant) -> Option<PresenceRecord> {
        // Addresses a probe confirmed and other confirmed external ones, then listeners (or
        // what the user announces instead), and our circuits. A listener on a private network
        // still helps members on the same one; an unspecified IP (0.0.0.0) helps nobody.
        let swarm = &self.network.swarm;
        let confirmed: Vec<Multiaddr> = self
            .reachability
            .confirmed()
            .map(super::reachability::quic_multiaddr)
            .collect();
        let announced: Vec<&Multiaddr> = match &self.announce {
            Some(announce) => announce
                .iter()
                .chain(swarm.listeners().filter(|a| is_circuit(a)))
                .collect(),
            None => confirmed
                .iter()
                .chain(swarm.external_addresses())
                .chain(swarm.listeners())
                .collect(),
        };
        let mut addrs: Vec<Vec<u8>> = announced
            .into_iter()
            .filter(|a| {
                !a.iter().any(|p| match p {
                    Protocol::Ip4(ip) => ip.is_unspecified(),
                    Protocol::Ip6(ip) => ip.is_unspecified(),
                    _ => false,
                })
            })
            .map(|a| a.to_vec())
            .collect();
        addrs.sort();
        addrs.dedup();
        addrs.truncate(16);
        let body = PresenceBody {
            org: self.sync.charter().org(),
            peer: self.local,
            seq: self.presence_seq,
            issued_at_ms: self.unix_ms(now),
            ttl_ms: (self.presence_interval.as_millis() as u32).saturating_mul(3),
            display_name: self.display_name.clone(),
            listening: self.listening.clone(),
            relay: RelayCapability {
                public: self.is_rendezvous(),
                // Only a configured relay volunteers to forward voice; a member that is merely
                // reachable offers circuits (rendezvous), not its uplink.
                spare_uplink_kbps: if self.vouched {
                    RELAY_SPARE_UPLINK_KBPS
                } else {
                    0
                },
            },
            addrs,
            relay_rtt_ms: self.relay_rtts(),
            routes: self.advertised_routes(),
            uplink_kbps: self.uplink_kbps,
        };
        match PresenceRecord::sign(&self.keys.identity, body) {
            Ok(record) => {
                // Our own record too: the routing rule reads everyone's, ours included.
                let members = &self.members;
                self.presence
                    .insert(record.clone(), self.unix_ms(now), |p| {
                        members.contains_key(&p.peer_id())
                    });
                Some(record)
            }
            Err(e) => {
                self.emit(NodeEvent::Warning(format!("presence: {e}")));
                None
            }
        }
    }

    pub(super) fn announce_presence(&mut self, now: Instant) {
        if self.serves_as_relay() {
            // No member: nobody would accept our record.
            return;
        }
        self.presence_seq += 1;
        let Some(record) = self.own_presence(now) else {
            return;
        };
        let message = ControlMessage::Presence(record.encode());
        for control in self.peers.values_mut() {
            control.queue(message.clone());
        }
    }
}

/// A relay circuit address (`…/p2p-circuit…`).
fn is_circuit(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}
