//! Links and control sessions: a link up starts the peer's control (presence, the E2EE pair
//! session, sync, floor), a link down or a lost ordered request ends it, and every control
//! message is dispatched by what the peer is to us (member, relay, stranger).

use super::{Event, Link, LinkKind, LinkRole, LinkUp, Member, Role};
use crate::charter::sync::SyncMessage;
use crate::control::{ControlMessage, PeerControl};
use crate::pairing::{Pairing, PairingConfig};
use libp2p_identity::PeerId;
use multiaddr::Multiaddr;
use std::time::{Duration, Instant};

/// A peer's control starts over after a lost request at most this often.
pub(super) const CONTROL_RESTART_GAP: Duration = Duration::from_millis(500);

impl Member {
    pub(super) fn link_up(&mut self, up: LinkUp, now: Instant) {
        let LinkUp {
            peer,
            kind,
            remote,
            circuit,
            dialed,
            restarted,
            resumed,
            beside_circuit,
            rtt,
        } = up;
        let rtt = rtt.or_else(|| self.links.get(&peer).and_then(|l| l.rtt));
        let remote = remote.filter(|_| kind != LinkKind::Relayed);
        let announced = remote.is_some_and(|r| self.announces(&peer, r));
        self.circuit_retries.remove(&peer);
        self.circuit_dials.ended(&peer);
        self.links.insert(
            peer,
            Link {
                kind,
                remote,
                circuit: circuit.filter(|_| kind == LinkKind::Relayed),
                dialed: dialed.is_some(),
                rtt,
                announced,
            },
        );
        // Said with the link's own event (the node reads our kind for it).
        if self.dialed_a_mapping(&peer) {
            if let Some(link) = self.links.get_mut(&peer) {
                link.kind = LinkKind::Mapped;
            }
        }
        self.punch_link_up(peer, kind, now);
        if let Some(LinkRole::Relay(relay)) = self.link_role(&peer) {
            if let Some(address) = dialed {
                self.reserve_circuit(peer, address);
            }
            // `relay_seen_at` keeps only the charter's relays (not a member serving circuits).
            if let Some(remote) = self.links.get(&peer).and_then(|l| l.remote) {
                self.relay_seen_at(relay, &super::reach::quic_multiaddr(remote));
            }
        }
        if beside_circuit {
            // The direct path replaces the circuit; the peer did not restart, so its control
            // and session carry on (over whichever connection is left).
            self.reachability_link_up(peer, now);
            return;
        }
        // A second connection usually means the peer restarted and its old connection has
        // not timed out yet: its control and E2EE state is gone, so ours for it must start
        // over too.
        if restarted {
            self.session_down(&peer, now, resumed);
        }
        self.peer_up(peer, now, restarted);
    }

    /// Whether the presence we hold for `peer` names `addr` as one of its addresses.
    fn announces(&self, peer: &PeerId, addr: std::net::SocketAddr) -> bool {
        let addr = super::reach::quic_multiaddr(addr).to_vec();
        self.members
            .get(peer)
            .and_then(|identity| self.presence.get(identity))
            .is_some_and(|record| record.body.addrs.contains(&addr))
    }

    /// Whether our link to `peer` is a direct one we dialed to a port the peer's router
    /// forwards to it (its presence says which), so `Mapped` where it says `Direct`.
    pub(super) fn dialed_a_mapping(&self, peer: &PeerId) -> bool {
        let Some(Link {
            kind: LinkKind::Direct,
            dialed: true,
            remote: Some(remote),
            ..
        }) = self.links.get(peer)
        else {
            return false;
        };
        self.members
            .get(peer)
            .and_then(|identity| self.presence.get(identity))
            .is_some_and(|record| {
                record
                    .body
                    .mapped_addrs()
                    .filter_map(|a| Multiaddr::try_from(a.to_vec()).ok())
                    .any(|a| super::reach::quic_socket_addr(&a) == Some(*remote))
            })
    }

    /// Calls the link to `peer` `kind` from now on, and tells the app.
    pub(super) fn relabel(&mut self, peer: PeerId, kind: LinkKind) {
        let Some(link) = self.links.get_mut(&peer) else {
            return;
        };
        link.kind = kind;
        let remote = link
            .remote
            .map(super::reach::quic_multiaddr)
            .unwrap_or_else(Multiaddr::empty);
        self.emit(Event::LinkUp { peer, kind, remote });
    }

    pub(super) fn link_down(&mut self, peer: PeerId, now: Instant) {
        self.links.remove(&peer);
        self.control_restarts.remove(&peer);
        self.punches.forget(&peer);
        self.waiting_joins.remove(&peer);
        self.peer_down(&peer, now);
        self.relink(peer, now);
    }

    /// Starts control with a linked peer. `restarted`: we had control with it before and lost
    /// it, so if it starts the E2EE session it is asked to start again.
    pub(super) fn peer_up(&mut self, peer: PeerId, now: Instant, restarted: bool) {
        // While we join, every link (the root's too, which even an empty charter knows) only
        // carries our request and charter sync: nobody treats us as a member yet.
        if self.role == Role::Joining {
            self.join_link_up(peer, now);
            return;
        }
        let identity = match self.link_role(&peer) {
            Some(LinkRole::Member(identity)) => identity,
            Some(LinkRole::Relay(identity)) => {
                // A relay link: charter sync and floor, no E2EE session, no keys.
                let mut control = PeerControl::default();
                for hint in self.relay_hints_for(&identity) {
                    control.queue(hint);
                }
                self.peers.insert(peer, control);
                self.pass_on_joins_to(peer);
                self.sync.handle_link_up(peer, now);
                // The floor is between members and their arbiter, not between relays.
                if self.members.contains_key(&peer) || self.role != Role::Relay {
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
        for hint in self.relay_hints_for(&identity) {
            control.queue(hint);
        }
        if let Some(ours) = self.own_presence(now) {
            control.queue(ControlMessage::Presence(ours.encode()));
        }
        // Share what we know of others (signed by them), so peers find each other.
        for record in self.presence.present() {
            if record.body.peer != identity && record.body.peer != self.local {
                control.queue(ControlMessage::Presence(record.encode()));
            }
        }
        // A link back to a member we had control with is a restart for the pair session even
        // when, to us, the old link went down before the new one came up. The other side may
        // have seen the two overlap (its direct dial replacing a circuit, which keeps its
        // session): as initiator it would never start again, and we, a fresh responder, would
        // wait for it forever, holding no session and so granting it no keys (chaos seed 454:
        // a member heard nothing after the direct link replaced the circuit).
        let restarted = restarted || !self.controlled_before.insert(peer);
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
            self.warn(format!("session start: {e}"));
        }
        self.peers.insert(peer, control);
        self.pass_on_joins_to(peer);
        // A member volunteering as relay forgot our subscription with the link, like a relay.
        self.subscribed.remove(&identity);
        self.reachability_link_up(peer, now);
        self.sync.handle_link_up(peer, now);
        self.floor.peer_up(identity);
        self.update_arbiters(now);
        self.replan(now);
        self.tell_on_air(peer);
    }

    pub(super) fn peer_down(&mut self, peer: &PeerId, now: Instant) {
        self.session_down(peer, now, false);
    }

    /// Ends the control session with `peer`; `resumed`: it starts again at once on a link that
    /// was parked and never went, so the peer's subscription here and floor requests stay,
    /// and routes are planned again only once it is back (planned without it in between, a
    /// channel would move to another relay and stay there by the incumbent's margin).
    fn session_down(&mut self, peer: &PeerId, now: Instant, resumed: bool) {
        if self.peers.remove(peer).is_some() {
            if !resumed {
                self.reachability_link_down(peer, now);
            }
            if let Some(identity) = self.link_role(peer).map(LinkRole::identity) {
                // Ours at the peer is sent again when the session is back.
                self.subscribed.remove(&identity);
                if !resumed {
                    self.path.off_air(&identity);
                    self.floor.peer_down(&identity, now);
                    self.update_arbiters(now);
                    if let Some(forwarder) = &self.forwarder {
                        crate::forward::lock(forwarder).remove(&identity);
                    }
                    self.replan(now);
                    self.cascade();
                }
            }
        }
        self.listener_loss.remove(peer);
        self.sync.handle_link_down(peer);
        self.keys_dirty = true;
    }

    /// The ordered channel to `peer` broke: start its control over if the link is still up,
    /// at most once per [`CONTROL_RESTART_GAP`]. A request can fail the moment it is sent
    /// (a parked link whose peer's address no longer answers a dial): started over at once,
    /// each start's requests failed again in the same instant, and the member looped without
    /// time passing (chaos seed 120156 hung the simulator).
    pub(super) fn control_failed(&mut self, peer: PeerId, request: u64, now: Instant) {
        let in_flight = self
            .peers
            .get(&peer)
            .is_some_and(|c| c.is_in_flight(request));
        if !in_flight {
            return;
        }
        tracing::debug!(%peer, "control message lost; restarting session");
        self.peer_down(&peer, now);
        if !self.links.contains_key(&peer) {
            return;
        }
        match self.control_restarts.get_mut(&peer) {
            Some((last, due)) if now < *last + CONTROL_RESTART_GAP => {
                due.get_or_insert(*last + CONTROL_RESTART_GAP);
            }
            _ => {
                self.control_restarts.insert(peer, (now, None));
                self.peer_up(peer, now, true);
            }
        }
    }

    /// Starts over the control that [`Self::control_failed`] held back, where it is due and
    /// the link still up.
    pub(super) fn control_restart_timeouts(&mut self, now: Instant) {
        let due: Vec<PeerId> = self
            .control_restarts
            .iter()
            .filter(|(_, (_, due))| due.is_some_and(|at| at <= now))
            .map(|(peer, _)| *peer)
            .collect();
        for peer in due {
            self.control_restarts.insert(peer, (now, None));
            if self.links.contains_key(&peer) && !self.peers.contains_key(&peer) {
                self.peer_up(peer, now, true);
            }
        }
        self.control_restarts
            .retain(|_, (last, due)| due.is_some() || now < *last + CONTROL_RESTART_GAP);
    }

    pub(super) fn control_message(&mut self, peer: PeerId, bytes: &[u8], now: Instant) {
        self.reachability.heard_from(&peer, now);
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
        if self.role == Role::Joining {
            self.stranger_control(peer, message, now);
            return;
        }
        // Membership is checked per message: one in a batch may remove the sender.
        let identity = match self.link_role(&peer) {
            Some(LinkRole::Member(identity)) => identity,
            Some(LinkRole::Relay(identity)) => {
                match message {
                    ControlMessage::Sync(body) => self.sync_message(peer, &body, now),
                    ControlMessage::Floor(body) => self.floor_message(identity, &body, now),
                    ControlMessage::Presence(body) => self.presence_message(peer, &body, now),
                    ControlMessage::Observed(body) => self.observed(peer, &body, now),
                    ControlMessage::Probe(body) => self.probe_request(peer, &body, now),
                    // Where a fellow relay (or one's members) saw another relay: a restarted
                    // relay is found again by relays as by members.
                    ControlMessage::RelayAddress { relay, addr } => {
                        self.relay_address_heard(relay, &addr, now)
                    }
                    // A newcomer's request a relay passes on.
                    ControlMessage::Join(body) => self.passed_on_join(peer, &body, now),
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
            ControlMessage::Sync(body) => self.sync_message(peer, &body, now),
            ControlMessage::Presence(body) => self.presence_message(peer, &body, now),
            ControlMessage::Handshake(body) => self.handshake(peer, identity, &body, now),
            ControlMessage::Voice(packet) => self.datagram(peer, &packet, now, now),
            ControlMessage::LossReport(pct) => {
                self.listener_loss.insert(peer, pct.min(100));
                let worst = self.listener_loss.values().copied().max().unwrap_or(0);
                self.outputs.push_back(super::Output::ExpectedLoss(worst));
            }
            ControlMessage::Grant(body) => {
                let Some(session) = self
                    .peers
                    .get_mut(&peer)
                    .and_then(|c| c.pairing.as_mut())
                    .and_then(|p| p.session())
                else {
                    tracing::debug!(%peer, "key grant before our session is up: dropped");
                    return;
                };
                match session.accept_grant(&body) {
                    Ok(grant) => {
                        tracing::debug!(%peer, "key grant accepted");
                        self.receiver.add_grant(&grant)
                    }
                    Err(e) => self.emit(Event::Warning(format!("grant from {peer}: {e}"))),
                }
            }
            ControlMessage::Floor(body) => self.floor_message(identity, &body, now),
            ControlMessage::Observed(body) => self.observed(peer, &body, now),
            ControlMessage::Probe(body) => self.probe_request(peer, &body, now),
            ControlMessage::Punch(body) => self.punch_message(peer, &body, now),
            ControlMessage::Path(body) => self.path_message(peer, identity, &body, now),
            ControlMessage::RelayAddress { relay, addr } => {
                self.relay_address_heard(relay, &addr, now)
            }
            // A newcomer's request a member passes on (or the member's own, arriving after
            // its admission).
            ControlMessage::Join(body) => self.passed_on_join(peer, &body, now),
            // `decode` refuses nested batches; subscriptions were handled above.
            ControlMessage::Batch(_)
            | ControlMessage::Subscribe(_)
            | ControlMessage::JoinRefused(_) => {}
        }
    }

    pub(super) fn sync_message(&mut self, peer: PeerId, body: &[u8], now: Instant) {
        match SyncMessage::decode(body) {
            Ok(msg) => self.sync.handle_message(peer, msg, now),
            Err(e) => tracing::debug!(%peer, %e, "bad sync message"),
        }
    }
}
