//! Joining with an invite ticket, both ends.
//!
//! The newcomer (not in its own charter yet) sends its [`JoinRequest`] to every peer it links
//! to, and takes charter sync from them although they are strangers to its empty charter (the
//! ops are signed from the org root down, so sync needs no trust in the sender). An admin that
//! receives a request checks it ([`crate::admission::admit`]) and signs the
//! `AdmitMember` op; once that op reaches the newcomer, both sides treat the link as a member's
//! and the usual control plane (presence, E2EE session, keys) starts. Only admins admit; any
//! other member or relay checks the request and passes it on to the admins it is linked to,
//! so a ticket naming any reachable member (or the org's rented relay) is enough to join when
//! the inviter's own router lets no stranger in. The admission op comes back by charter
//! gossip, and the member the newcomer reached then syncs it the charter.

use super::reach::{quic_multiaddr, quic_socket_addr};
use super::{Event, Member, Output, Role};
use crate::admission::{admit, AdmitError, JoinRequest};
use crate::charter::sync::SyncMessage;
use crate::charter::{OpBody, OpHash};
use crate::control::{ControlMessage, PeerControl};
use crate::reachability::is_beyond_local_network;
use libp2p_identity::PeerId;
use multiaddr::Multiaddr;
use std::time::Instant;

/// At most this many newcomers' requests wait at a member for an admin to link.
const MAX_WAITING_JOINS: usize = 64;

impl Member {
    /// A link while we join: ask the peer to admit us, and sync.
    pub(super) fn join_link_up(&mut self, peer: PeerId, now: Instant) {
        let Some(request) = &self.join else {
            return;
        };
        let mut control = PeerControl::default();
        control.queue(ControlMessage::Join(request.encode()));
        self.peers.insert(peer, control);
        self.sync.handle_link_up(peer, now);
    }

    /// A control message from a peer that is no member (of our charter), or any message while
    /// we join.
    pub(super) fn stranger_control(&mut self, peer: PeerId, message: ControlMessage, now: Instant) {
        match message {
            ControlMessage::Join(body) => self.join_request(peer, &body, now),
            ControlMessage::Sync(body) if self.role == Role::Joining => {
                self.sync_message(peer, &body, now)
            }
            ControlMessage::Sync(body) => self.removal_notice(peer, &body),
            // Reachability: an admin (or the member passing our request on) starts it as soon
            // as it counts us a member, which is before its op reaches us. Dropped, we would
            // have no address to aim a hole punch at (`Observed`), and the admin's own address
            // would wait minutes for its next probe (`Probe`: it asked us to check it, and a
            // lone newcomer is the only one who can; the nonce goes only to its own IP).
            ControlMessage::Observed(body) if self.role == Role::Joining => {
                self.observed(peer, &body, now)
            }
            ControlMessage::Probe(body) if self.role == Role::Joining => {
                self.probe_request(peer, &body, now)
            }
            ControlMessage::JoinRefused(reason) if self.role == Role::Joining => {
                let reason: String = reason.chars().take(200).collect();
                tracing::warn!(%peer, %reason, "join refused");
                self.emit(Event::JoinRefused { reason });
            }
            _ => tracing::debug!(%peer, "control message from a stranger ignored"),
        }
    }

    /// A removed member still syncs with us as if we were peers (it missed its removal, say
    /// in a partition): answer with the ops that removed it and what they rest on, and nothing
    /// else of the charter, so it learns it was removed and stops.
    fn removal_notice(&mut self, peer: PeerId, body: &[u8]) {
        let have = match SyncMessage::decode(body) {
            Ok(SyncMessage::Heads { heads, .. }) => heads,
            Ok(SyncMessage::Want { have, .. }) => have,
            _ => return,
        };
        let removals: Vec<OpHash> = self
            .sync
            .charter()
            .removals(|k| k.peer_id() == peer)
            .iter()
            .map(|o| o.hash)
            .collect();
        if removals.is_empty() {
            return;
        }
        for message in self.sync.difference(&removals, &have) {
            self.send_now(peer, ControlMessage::Sync(message.encode()));
        }
    }

    /// A newcomer asks to be admitted. Every member checks the invite against its charter
    /// (refusing a bad one with a reason); an admin then admits it, any other member (or
    /// relay) passes it on to the admins it is linked to. A newcomer whose ticket reached only
    /// a member (the inviter's router filters strangers, say) gets in all the same.
    fn join_request(&mut self, peer: PeerId, body: &[u8], now: Instant) {
        match self.check_join(body, Some(peer), now) {
            Ok(op) if self.state().is_admin(&self.local) => self.admit_with(op, now),
            Ok(_) => self.pass_on_join(peer, body.to_vec()),
            // Requests repeat on every link until the op arrives there: no answer needed.
            Err(AdmitError::AlreadyMember) => {}
            Err(e) => {
                tracing::info!(%peer, %e, "join request refused");
                self.emit(Event::Warning(format!(
                    "join request from {peer} refused: {e}"
                )));
                self.send_now(peer, ControlMessage::JoinRefused(e.to_string()));
            }
        }
    }

    /// A join request a member or relay passed on (or a member's own, late): admins admit
    /// it. The newcomer's signature in it proves the newcomer asked; who carried it does not
    /// matter, so it is checked like a direct one except for the link it came over.
    pub(super) fn passed_on_join(&mut self, from: PeerId, body: &[u8], now: Instant) {
        if !self.state().is_admin(&self.local) {
            return;
        }
        match self.check_join(body, None, now) {
            Ok(op) => self.admit_with(op, now),
            Err(AdmitError::AlreadyMember) => {}
            Err(e) => {
                tracing::info!(%from, %e, "join request passed on refused");
                self.emit(Event::Warning(format!(
                    "join request passed on by {from} refused: {e}"
                )));
            }
        }
    }

    /// Keeps a stranger's checked request while its link lasts and sends it to every linked
    /// admin; an admin whose control starts later gets it then ([`Self::pass_on_joins_to`]).
    fn pass_on_join(&mut self, newcomer: PeerId, body: Vec<u8>) {
        if !self.waiting_joins.contains_key(&newcomer)
            && self.waiting_joins.len() >= MAX_WAITING_JOINS
        {
            tracing::info!(%newcomer, "too many newcomers waiting: join request dropped");
            return;
        }
        let admins: Vec<PeerId> = self
            .peers
            .keys()
            .filter(|p| self.is_admin_peer(p))
            .copied()
            .collect();
        tracing::info!(%newcomer, admins = admins.len(), "passing a join request on to the admins");
        for admin in admins {
            self.send_now(admin, ControlMessage::Join(body.clone()));
        }
        self.waiting_joins.insert(newcomer, body);
    }

    /// After a charter change: newcomers it admitted stop waiting, and those it refuses now
    /// (another newcomer used the same ticket first, say) hear why.
    pub(super) fn recheck_waiting_joins(&mut self, now: Instant) {
        if self.waiting_joins.is_empty() {
            return;
        }
        let waiting = std::mem::take(&mut self.waiting_joins);
        for (newcomer, body) in waiting {
            match self.check_join(&body, None, now) {
                Ok(_) => {
                    self.waiting_joins.insert(newcomer, body);
                }
                Err(AdmitError::AlreadyMember) => {}
                Err(e) => {
                    tracing::info!(%newcomer, %e, "waiting join request refused");
                    self.send_now(newcomer, ControlMessage::JoinRefused(e.to_string()));
                }
            }
        }
    }

    /// An admin's control just started: it gets the requests of newcomers still waiting here.
    pub(super) fn pass_on_joins_to(&mut self, peer: PeerId) {
        if self.waiting_joins.is_empty() || !self.is_admin_peer(&peer) {
            return;
        }
        let bodies: Vec<Vec<u8>> = self.waiting_joins.values().cloned().collect();
        for body in bodies {
            self.send_now(peer, ControlMessage::Join(body));
        }
    }

    /// Checks a join request against our charter now; `sender`, when it came straight from
    /// the newcomer, must be the joiner itself.
    fn check_join(
        &self,
        body: &[u8],
        sender: Option<PeerId>,
        now: Instant,
    ) -> Result<OpBody, AdmitError> {
        let request = JoinRequest::decode(body)?;
        if sender.is_some_and(|peer| request.joiner.peer_id() != peer) {
            return Err(AdmitError::BadSignature);
        }
        admit(self.state(), &request, self.unix_ms(now) / 1000)
    }

    fn is_admin_peer(&self, peer: &PeerId) -> bool {
        self.members
            .get(peer)
            .is_some_and(|key| self.state().is_admin(key))
    }

    /// Signs the op that admits a newcomer.
    fn admit_with(&mut self, op: OpBody, now: Instant) {
        let OpBody::AdmitMember {
            peer: joiner,
            name,
            role,
            ..
        } = op.clone()
        else {
            return;
        };
        let unix = self.unix_ms(now);
        let identity = self.keys.identity.clone();
        match self.sync.edit(&identity, op, unix) {
            Ok(op) => {
                self.outputs.push_back(Output::Persist(vec![op.encode()]));
                tracing::info!(%joiner, %name, %role, "admitted with an invite");
                self.emit(Event::Admitted {
                    peer: joiner,
                    name,
                    role,
                });
                self.charter_changed(1, now);
            }
            Err(e) => self.emit(Event::Warning(format!("admission: {e}"))),
        }
    }

    /// After a charter change: if it admitted us, links made while joining start over as
    /// members' links. Returns whether it did.
    pub(super) fn finish_join(&mut self) -> bool {
        if self.join.is_none() || !self.members.contains_key(&self.local_peer) {
            return false;
        }
        self.join = None;
        let links: Vec<PeerId> = self.peers.keys().copied().collect();
        for peer in links {
            self.peers.remove(&peer);
            self.sync.handle_link_down(&peer);
        }
        if let Some(me) = self.state().members.get(&self.local).cloned() {
            self.emit(Event::Admitted {
                peer: self.local,
                name: me.name,
                role: me.roles.join(","),
            });
        }
        true
    }
}

impl Member {
    /// Where a newcomer holding an invite can reach the org now, for a ticket's bootstrap
    /// list, best first, each naming its peer (`/p2p/…`), at most `max`: our own confirmed or
    /// announced addresses and our router's mapping (we admit at once if we are an admin),
    /// then the charter's rented relays where members last saw them, then the public
    /// addresses of members, those that serve as rendezvous first. Any of them
    /// passes the request on to an admin, so the ticket works when our own router filters
    /// strangers, as long as one of them is up.
    pub fn invite_addresses(&self, max: usize) -> Vec<Multiaddr> {
        /// Addresses per peer: its first few are its best, more only lengthen the ticket.
        const PER_PEER: usize = 2;
        let mut out: Vec<Multiaddr> = Vec::new();
        let mut add = |addrs: Vec<Multiaddr>, peer: PeerId| {
            for addr in addrs.into_iter().take(PER_PEER) {
                let addr = addr.with_p2p(peer).unwrap_or_else(|a| a);
                if !out.contains(&addr) {
                    out.push(addr);
                }
            }
        };
        let own: Vec<Multiaddr> = match &self.announce {
            Some(announced) => announced.clone(),
            None => self
                .reachability
                .confirmed()
                .filter(is_beyond_local_network)
                .chain(self.reachability.mappings())
                .map(quic_multiaddr)
                .collect(),
        };
        add(own, self.local_peer);
        let state = self.sync.charter().state();
        for (relay, info) in &state.relays {
            if *relay == self.local {
                continue;
            }
            add(
                super::relay_dial::relay_addrs_of(&self.relay_addrs, relay, info),
                relay.peer_id(),
            );
        }
        // Rendezvous members first (a probe confirmed their address), then any other
        // member's address beyond a local network: a public member linked to one other has
        // nobody to confirm it yet, and it passes the request on all the same.
        for rendezvous in [true, false] {
            for record in self.presence.present() {
                let peer = record.body.peer;
                if peer == self.local
                    || record.body.relay.public != rendezvous
                    || state.relays.contains_key(&peer)
                {
                    continue;
                }
                let public: Vec<Multiaddr> = record
                    .body
                    .addrs
                    .iter()
                    .filter_map(|a| Multiaddr::try_from(a.clone()).ok())
                    .filter(|a| quic_socket_addr(a).is_some_and(|s| is_beyond_local_network(&s)))
                    .collect();
                add(public, peer.peer_id());
            }
        }
        out.truncate(max);
        out
    }
}
