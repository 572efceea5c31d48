//! Presence: our own signed record (addresses we may announce, what we listen to, our relays
//! and routes), others' records gossiped onward, and what a record sets off: a dial to a member
//! we are not linked to, a direct dial beside a circuit, a circuit reservation at a reachable
//! member.

use super::{DialCondition, Event, LinkKind, Member, Output, Role};
use crate::control::ControlMessage;
use crate::presence::{PresenceBody, PresenceRecord, PresenceUpdate, RelayCapability};
use libp2p_identity::PeerId;
use multiaddr::{Multiaddr, Protocol};
use std::time::{Duration, Instant};

/// Uplink a circuit-serving member advertises: about 25 Opus voice streams. A guess until the
/// topology planner measures and budgets it.
const RELAY_SPARE_UPLINK_KBPS: u32 = 1000;

/// How long the higher peer id waits for the lower one's dial before dialing back.
pub(super) const DIAL_BACK_AFTER: Duration = Duration::from_millis(1500);
/// Circuit dials retried after a refusal before waiting for the next presence round.
const CIRCUIT_RETRIES: u32 = 5;

/// `attempt` × 250 ms plus up to 500 ms picked by the pair (SipHash with fixed keys: the
/// same in every run), so the dialers a relay refused do not all return at once.
fn circuit_retry_pause(local: &PeerId, peer: &PeerId, attempt: u32) -> Duration {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    (local, peer, attempt).hash(&mut hasher);
    Duration::from_millis(250 * u64::from(attempt) + hasher.finish() % 500)
}

/// A relay circuit address (`…/p2p-circuit…`).
pub(crate) fn is_circuit(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

impl Member {
    pub(super) fn presence_message(&mut self, from: PeerId, body: &[u8], now: Instant) {
        if self.presence.holds(body) {
            return;
        }
        let now_ms = self.unix_ms(now);
        let members = &self.members;
        let is_member = |p: &callsign_keys::IdentityKey| members.contains_key(&p.peer_id());
        // The signature is checked only for a record that would be taken: each one arrives
        // once from every neighbour, and older copies after newer ones.
        let checked = match PresenceRecord::decode_unverified(body) {
            Ok(r) if !self.presence.judge(&r.body, now_ms, is_member).is_news() => return,
            Ok(r) => r.verify().map(|()| r),
            Err(e) => Err(e),
        };
        let record = match checked {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(%from, %e, "bad presence record");
                return;
            }
        };
        let previous_addrs: Option<Vec<Vec<u8>>> = self
            .presence
            .get(&record.body.peer)
            .map(|held| held.body.addrs.clone());
        let addrs_changed = previous_addrs.as_ref() != Some(&record.body.addrs);
        let update = self.presence.insert(record.clone(), now_ms, is_member);
        if !update.is_news() {
            return;
        }
        self.replan_soon();
        let subject = record.body.peer;
        if subject == self.local {
            return;
        }
        self.emit(Event::Presence {
            peer: subject,
            name: record.body.display_name.clone(),
            listening: record.shown_listening(),
            recording: record.body.recording.clone(),
        });
        if self.dialed_a_mapping(&subject.peer_id()) {
            self.relabel(subject.peer_id(), LinkKind::Mapped);
        }
        // Gossip onward, and link to members we heard of but are not linked to (the lower id
        // dials, so a pair makes one connection). A relay passes on only news (a member came,
        // or can be reached elsewhere): it links everyone, and members re-announce often.
        let relay = self.role == Role::Relay;
        if relay && update == PresenceUpdate::Updated && !addrs_changed {
            return;
        }
        let encoded = ControlMessage::Presence(record.encode());
        for (peer, control) in &mut self.peers {
            if *peer != from && *peer != subject.peer_id() && !record.linked_to(peer) {
                control.queue(encoded.clone());
            }
        }
        let subject_peer = subject.peer_id();
        let (direct, circuits) = dial_candidates(&record);
        if record.body.relay.public {
            if let Some(relay) = direct.first() {
                self.reserve_circuit(subject_peer, relay.clone());
            }
        }
        if relay {
            return;
        }
        // Linked only through a circuit and the peer now announces a direct address (a probe
        // confirmed it): dial it, whichever of us is lower; a punch may not have managed (or
        // the peer's NAT maps a port per destination, so its observed address was wrong).
        let held = self.links.get(&subject_peer);
        let link = held.map(|l| l.kind);
        // Our direct link goes to an address the peer announced while we were linked and no
        // longer does: it restarted elsewhere (a new port after a crash), and the link is to
        // its previous run, not yet timed out. Any record since the restart tells, not only
        // the first: a restarted peer's first record often names no public address yet (its
        // probe is still out), and the next one is news only by the address it adds (chaos
        // seed 120083: a member kept its link to the old run for 18 s and heard nothing).
        let remote = held
            .and_then(|l| l.remote)
            .map(|r| super::reach::quic_multiaddr(r).to_vec());
        // Set from the record held when the link came up, and from each record since.
        let announced = held.is_some_and(|l| l.announced);
        // A peer that still says it is linked to us has not moved: it stopped announcing that
        // address (say its NAT turned out to filter strangers), and a fresh dial would only
        // replace a live link and restart the session.
        let moved = announced
            && remote
                .as_ref()
                .is_some_and(|r| !record.body.addrs.contains(r))
            && !record.linked_to(&self.local_peer);
        if let (Some(link), Some(r)) = (self.links.get_mut(&subject_peer), &remote) {
            link.announced |= record.body.addrs.contains(r);
        }
        if moved {
            // The stale link goes first: kept, it would win over a circuit (the only way in
            // while the peer's NAT knows nothing of us), and it would keep our circuit
            // reservation at a relay that is gone. Then dial where the peer is now, which
            // also opens our NAT to it, so its own dial back gets in.
            tracing::debug!(peer = %subject_peer, "peer moved: closing the stale link, dialing where it is now");
            self.outputs.push_back(Output::CloseLink(subject_peer));
            let candidates: Vec<Multiaddr> = direct.iter().chain(&circuits).cloned().collect();
            if !candidates.is_empty() {
                self.outputs.push_back(Output::Dial {
                    peer: Some(subject_peer),
                    addrs: candidates,
                    condition: DialCondition::Always,
                });
            }
            return;
        }
        if link == Some(LinkKind::Relayed) && addrs_changed && !direct.is_empty() {
            tracing::debug!(peer = %subject_peer, "circuit-only peer announces a direct address: dialing it");
            self.outputs.push_back(Output::Dial {
                peer: Some(subject_peer),
                addrs: direct.clone(),
                condition: DialCondition::Always,
            });
        }
        if link.is_none() {
            self.link_to_member(subject_peer, direct, circuits, now);
        }
    }

    /// A member's record names no link to us: links to it. The direct address and any relay
    /// circuits at once: the first to connect wins (direct, unless a NAT is in the way), the
    /// others are abandoned.
    fn link_to_member(
        &mut self,
        subject_peer: PeerId,
        mut candidates: Vec<Multiaddr>,
        circuits: Vec<Multiaddr>,
        now: Instant,
    ) {
        candidates.extend(circuits);
        if candidates.is_empty() {
            return;
        }
        if self.local_peer < subject_peer {
            self.outputs.push_back(Output::Dial {
                peer: Some(subject_peer),
                addrs: candidates,
                condition: DialCondition::Disconnected,
            });
        } else {
            // The lower peer id dials; if its NAT-blocked dial has not linked us by then
            // (say it restarted on a new port our NAT has never sent to), we dial back,
            // which opens our NAT to it. To where it says it is now: a member that just
            // started announces its confirmed address a moment after its first record,
            // and a dial back to the first one's addresses went nowhere, leaving the pair
            // apart until the next presence round (chaos seed 363: 10 s).
            let at = self
                .dial_backs
                .get(&subject_peer)
                .map_or(now + DIAL_BACK_AFTER, |(at, _)| *at);
            self.dial_backs.insert(subject_peer, (at, candidates));
        }
    }

    /// Our link to `peer` went down. A member still online (its record is current) is linked
    /// again at once, as when its record first came, rather than at its next presence round:
    /// two members whose crossing dials both closed (each kept the connection the other had
    /// just abandoned) were left apart for seconds.
    pub(super) fn relink(&mut self, peer: PeerId, now: Instant) {
        if self.role == Role::Relay {
            return;
        }
        let Some((direct, circuits)) = self.dial_candidates_of(&peer) else {
            return;
        };
        self.link_to_member(peer, direct, circuits, now);
    }

    /// Where a member's current presence record says it can be dialed: its direct addresses
    /// and its circuits. `None` for a peer that is no member or has no record.
    fn dial_candidates_of(&self, peer: &PeerId) -> Option<(Vec<Multiaddr>, Vec<Multiaddr>)> {
        let identity = self.members.get(peer)?;
        Some(dial_candidates(self.presence.get(identity)?))
    }

    /// Our link to `peer` has carried nothing for [`LINK_QUIET`](super::LINK_QUIET), two of
    /// QUIC's keep-alives: the path failed (a partition, a NAT that forgot us) and QUIC, after
    /// backing its retransmissions off through the outage, may not try again before its idle
    /// timeout kills the link, many seconds after the network came back (chaos seed 130975:
    /// a member relay's link, silent through a 12 s partition, died 8 s after the heal, and a
    /// talker behind it went unheard). A fresh connection, dialed where the member is now,
    /// replaces it as soon as the network allows; the quiet one goes then. A rented relay's
    /// link is quiet only when the relay never promised its heartbeats (which the link layer
    /// watches otherwise): it crashed right after the link came up (seed 140119: a member kept
    /// such a link for 14 s, routed a channel through it and heard nothing). That link is
    /// closed, and the relay dialed again where it is now (`relay_dial`).
    pub(super) fn link_quiet(&mut self, peer: PeerId) {
        if self.role != Role::Member || !self.links.contains_key(&peer) {
            return;
        }
        if self.is_charter_relay(&peer) {
            tracing::debug!(%peer, "relay link quiet and never promised heartbeats: closing it");
            self.path.count_quiet_link();
            self.outputs.push_back(Output::CloseLink(peer));
            return;
        }
        let Some((direct, circuits)) = self.dial_candidates_of(&peer) else {
            return;
        };
        let addrs: Vec<Multiaddr> = direct.into_iter().chain(circuits).collect();
        if addrs.is_empty() {
            return;
        }
        tracing::debug!(%peer, "link quiet: dialing a fresh connection beside it");
        self.path.count_quiet_link();
        self.outputs.push_back(Output::Dial {
            peer: Some(peer),
            addrs,
            condition: DialCondition::Always,
        });
    }

    /// A dial to `peer` failed; its circuit addresses are worth another try. Everyone who
    /// heard the same news dialed at the same moment, and a member relay refuses handshakes
    /// beyond its limit rather than queueing them, so try again after a pause spread per pair
    /// (and growing), a few times; presence (every
    /// [`MemberConfig::presence_interval`](super::MemberConfig)) is the slow fallback.
    pub(super) fn dial_failed(&mut self, peer: PeerId, mut addrs: Vec<Multiaddr>, now: Instant) {
        self.circuit_dials.ended(&peer);
        addrs.retain(is_circuit);
        if addrs.is_empty() || self.links.contains_key(&peer) || !self.members.contains_key(&peer) {
            return;
        }
        let attempts = self.circuit_retries.entry(peer).or_insert(0);
        if *attempts >= CIRCUIT_RETRIES {
            return;
        }
        *attempts += 1;
        let pause = circuit_retry_pause(&self.local_peer, &peer, *attempts);
        self.dial_backs.entry(peer).or_insert((now + pause, addrs));
    }

    /// Dials back the members heard of that have not linked to us within [`DIAL_BACK_AFTER`].
    pub(super) fn dial_back(&mut self, now: Instant) {
        let due: Vec<PeerId> = self
            .dial_backs
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(p, _)| *p)
            .collect();
        for peer in due {
            let Some((_, mut addrs)) = self.dial_backs.remove(&peer) else {
                continue;
            };
            match self.links.get(&peer).map(|l| l.kind) {
                None => self.outputs.push_back(Output::Dial {
                    peer: Some(peer),
                    addrs,
                    condition: DialCondition::Disconnected,
                }),
                // The peer's dial reached us only through a circuit (our NAT dropped its
                // direct one): our direct dial may get through where its did not (its NAT
                // lets in whom it has not sent to, ours does not), and a direct link beside
                // the circuit replaces it. Left on the circuit, the pair fell apart when the
                // relay crashed (chaos seed 91: two members out of touch for 8 s).
                Some(LinkKind::Relayed) => {
                    addrs.retain(|a| !is_circuit(a));
                    if !addrs.is_empty() {
                        self.outputs.push_back(Output::Dial {
                            peer: Some(peer),
                            addrs,
                            condition: DialCondition::Always,
                        });
                    }
                }
                Some(_) => {}
            }
        }
    }

    /// Reserves a relay v2 circuit at `relay` (reachable at `addr`) unless we hold one or serve
    /// circuits ourselves: members whose NAT keeps them from reaching us directly can still
    /// link through it (end-to-end encrypted). A relay that refuses closes the reservation
    /// ([`super::Input::ReservationClosed`]), and the next relay we hear of gets asked.
    pub(super) fn reserve_circuit(&mut self, relay: PeerId, addr: Multiaddr) {
        if self.is_rendezvous() || self.reservation {
            return;
        }
        let circuit = addr
            .with_p2p(relay)
            .unwrap_or_else(|a| a)
            .with(Protocol::P2pCircuit);
        self.reservation = true;
        self.outputs.push_back(Output::ReserveCircuit(circuit));
    }

    pub(super) fn own_presence(&mut self, now: Instant) -> Option<PresenceRecord> {
        // Addresses a probe confirmed and other confirmed external ones, then listeners (or
        // what the user announces instead), and our circuits. A listener on a private network
        // still helps members on the same one; an unspecified IP (0.0.0.0) helps nobody.
        let confirmed: Vec<Multiaddr> = self
            .reachability
            .confirmed()
            .map(super::reach::quic_multiaddr)
            .collect();
        let announced: Vec<&Multiaddr> = match &self.announce {
            Some(announce) => announce
                .iter()
                .chain(self.listen_addrs.iter().filter(|a| is_circuit(a)))
                .collect(),
            None => confirmed
                .iter()
                .chain(&self.external_addrs)
                .chain(&self.listen_addrs)
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
        let mappings: Vec<Vec<u8>> = self
            .reachability
            .mappings()
            .map(|a| super::reach::quic_multiaddr(a).to_vec())
            .collect();
        let mapped = (0u8..)
            .zip(&addrs)
            .filter(|(_, a)| mappings.contains(a))
            .map(|(i, _)| i)
            .collect();
        let body = PresenceBody {
            org: self.sync.charter().org(),
            peer: self.local,
            seq: self.presence_seq,
            issued_at_ms: self.unix_ms(now),
            ttl_ms: (self.presence_interval.as_millis() as u32).saturating_mul(3),
            display_name: self.display_name.clone(),
            listening: self.listening.clone(),
            monitoring: self.monitoring.clone(),
            recording: self.recording.clone(),
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
            linked: self.peers.keys().map(crate::presence::link_tag).collect(),
            mapped,
            position: self.presence_position(now),
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
                self.warn(format!("presence: {e}"));
                None
            }
        }
    }

    pub(super) fn announce_presence(&mut self, now: Instant) {
        if self.role == Role::Relay {
            // No member: nobody would accept our record.
            return;
        }
        self.presence_seq += 1;
        let Some(record) = self.own_presence(now) else {
            return;
        };
        let message = ControlMessage::Presence(record.encode());
        let peers: Vec<PeerId> = self.peers.keys().copied().collect();
        for peer in peers {
            self.announce(peer, message.clone());
        }
    }
}

/// Where to dial a member from its presence record: its direct addresses (every QUIC address:
/// a confirmed public one, a LAN one for members on the same network; TCP only when it offers
/// no QUIC, since voice needs datagrams) and its relay circuits.
fn dial_candidates(record: &PresenceRecord) -> (Vec<Multiaddr>, Vec<Multiaddr>) {
    let (circuits, others): (Vec<Multiaddr>, Vec<Multiaddr>) = record
        .body
        .addrs
        .iter()
        .filter_map(|a| Multiaddr::try_from(a.clone()).ok())
        .partition(is_circuit);
    let (quic, tcp): (Vec<Multiaddr>, Vec<Multiaddr>) = others
        .into_iter()
        .partition(|a| a.iter().any(|p| matches!(p, Protocol::QuicV1)));
    let direct = if quic.is_empty() {
        tcp.into_iter().take(1).collect()
    } else {
        quic
    };
    (direct, circuits)
}
