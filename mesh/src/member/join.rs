//! Joining with an invite ticket, both ends.
//!
//! The newcomer (not in its own charter yet) sends its [`JoinRequest`] to every peer it links
//! to, and takes charter sync from them although they are strangers to its empty charter (the
//! ops are signed from the org root down, so sync needs no trust in the sender). An admin that
//! receives a request checks it ([`crate::admission::admit`]) and signs the
//! `AdmitMember` op; once that op reaches the newcomer, both sides treat the link as a member's
//! and the usual control plane (presence, E2EE session, keys) starts. Other peers ignore
//! requests: only admins admit.

use super::{Event, Member, Output, Role};
use crate::admission::{admit, AdmitError, JoinRequest};
use crate::charter::sync::SyncMessage;
use crate::charter::{OpBody, OpHash};
use crate::control::{ControlMessage, PeerControl};
use libp2p_identity::PeerId;
use std::time::Instant;

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

    /// A newcomer asks to be admitted: an admin checks the invite and admits it.
    fn join_request(&mut self, peer: PeerId, body: &[u8], now: Instant) {
        if !self.state().is_admin(&self.local) {
            return;
        }
        let unix_secs = self.unix_ms(now) / 1000;
        let result = JoinRequest::decode(body).and_then(|request| {
            if request.joiner.peer_id() != peer {
                return Err(AdmitError::BadSignature);
            }
            admit(self.state(), &request, unix_secs)
        });
        match result {
            Ok(op) => {
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
