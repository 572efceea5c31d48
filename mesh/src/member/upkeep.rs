//! What runs between inputs: timers (presence, expiry, redials), the reaction to a charter
//! change, and the flush every input ends with (sync, keys, grants, probes, floor, outboxes).

use super::{DialCondition, Event, Member, Output, Role, CONTROL_TIMEOUT};
use crate::charter::sync::SyncEvent;
use crate::control::ControlMessage;
use callsign_keys::IdentityKey;
use libp2p_identity::PeerId;
use std::collections::BTreeSet;
use std::time::Instant;

impl Member {
    pub(super) fn timers(&mut self, now: Instant) {
        // An ordered request unanswered for `CONTROL_TIMEOUT` is lost: the link layer may
        // still be retransmitting into a dead path. The member's clock decides, so a
        // simulated run needs no wall-clock timer for it.
        let overdue: Vec<(PeerId, u64)> = self
            .peers
            .iter()
            .filter_map(|(p, c)| c.in_flight().map(|(r, at)| (*p, r, at)))
            .filter(|(_, _, at)| now >= *at + CONTROL_TIMEOUT)
            .map(|(p, r, _)| (p, r))
            .collect();
        for (peer, request) in overdue {
            self.control_failed(peer, request, now);
        }
        self.dial_back(now);
        self.control_restart_timeouts(now);
        self.sync.handle_timeout(now);
        self.floor.handle_timeout(now);
        self.path_timeouts(now);
        self.leave_timeouts(now);
        self.reachability.handle_timeout(now);
        self.punch_timeouts(now);
        self.position_timer(now);
        self.pairing_timeouts(now);
        self.keys_dirty = true;
        if now >= self.next_relay_dial {
            self.next_relay_dial = now + super::relay_dial::RELAY_REDIAL;
            self.dial_relays();
        }
        if now >= self.next_presence {
            self.next_presence = now + self.presence_interval;
            self.announce_presence(now);
            let gone = {
                let members = &self.members;
                self.presence
                    .expire(self.unix_ms(now), |p| members.contains_key(&p.peer_id()))
            };
            for peer in gone {
                self.emit(Event::PresenceGone { peer });
            }
            self.redial_bootstrap();
            self.replan(now);
        }
    }

    /// Alone (every peer was offline when we started, or all links dropped): try the
    /// bootstrap addresses again, so a member or newcomer finds the org once someone is up.
    pub(super) fn redial_bootstrap(&mut self) {
        if !self.links.is_empty() {
            return;
        }
        for addr in self.bootstrap.clone() {
            self.outputs.push_back(Output::Dial {
                peer: None,
                addrs: vec![addr],
                condition: DialCondition::Always,
            });
        }
    }

    pub(super) fn charter_changed(&mut self, ops: usize, now: Instant) {
        self.set_members();
        self.recheck_waiting_joins(now);
        if self.finish_join() {
            // Everything we had was learnt as a stranger: announce ourselves as a member.
            self.listening = self.state().channels.keys().copied().collect();
            self.wanted = self.listening.clone();
        }
        let state = self.state().clone();
        self.retain_hearing(&state);
        self.position_charter_changed(now);
        self.floor.update_charter(&state, now);
        self.keys_dirty = true;
        // Links to peers that are no longer members (or relays) lose their control state.
        let joining = self.role == Role::Joining;
        let gone: Vec<PeerId> = self
            .peers
            .keys()
            .filter(|p| !joining && self.link_role(p).is_none())
            .copied()
            .collect();
        for peer in gone {
            self.peers.remove(&peer);
            self.sync.handle_link_down(&peer);
        }
        // Members and the charter's relays (a relay arbitrates floors): an edit that leaves
        // them in the charter must not drop them from the floor, or members stop sending
        // their claims to the arbiter whose ruling they wait for.
        let participants: BTreeSet<IdentityKey> = self
            .members
            .values()
            .chain(self.relays.values())
            .copied()
            .collect();
        self.floor
            .retain_participants(|k| participants.contains(k), now);
        self.update_arbiters(now);
        // Peers linked before the charter named them start their control now.
        let joined: Vec<PeerId> = self
            .links
            .keys()
            .filter(|p| self.link_role(p).is_some() && !self.peers.contains_key(p))
            .copied()
            .collect();
        for peer in joined {
            // If the peer was to start the E2EE session, its first message reached us while
            // it was a stranger and was ignored: as responder we ask it to start again.
            self.peer_up(peer, now, true);
        }
        self.dial_relays();
        self.replan(now);
        self.emit(Event::CharterChanged { ops });
    }

    /// Queues what the state machines want sent.
    pub(super) fn flush(&mut self, now: Instant) {
        if self.replan_due.is_some_and(|due| due <= now) {
            self.replan(now);
        }
        while let Some((peer, message, periodic)) = self.sync.poll_transmission() {
            let message = ControlMessage::Sync(message.encode());
            if periodic {
                self.announce(peer, message);
            } else if let Some(control) = self.peers.get_mut(&peer) {
                control.queue(message);
            }
        }
        let mut added = 0;
        while let Some(event) = self.sync.poll_event() {
            match event {
                SyncEvent::Added { ops, .. } => {
                    added += ops.len();
                    self.outputs.push_back(Output::Persist(ops));
                }
                SyncEvent::Rejected { reason, .. } => {
                    self.warn(format!("charter op rejected: {reason}"));
                }
            }
        }
        if added > 0 {
            self.charter_changed(added, now);
        }
        if self.keys_dirty {
            self.keys_dirty = false;
            let sessions: BTreeSet<IdentityKey> = self
                .peers
                .iter()
                .filter(|(_, c)| c.is_established())
                .filter_map(|(p, _)| self.members.get(p).copied())
                .collect();
            let state = self.sync.charter().state().clone();
            self.schedule.update(&state, &sessions, now);
        }
        while let Some(grant) = self.schedule.poll_grant() {
            let peer = grant.peer.peer_id();
            let Some(control) = self.peers.get_mut(&peer) else {
                tracing::debug!(%peer, "key grant unsent: no control link");
                continue;
            };
            let Some(session) = control.pairing.as_mut().and_then(|p| p.session()) else {
                tracing::debug!(%peer, "key grant unsent: no session");
                continue;
            };
            match session.grant(&self.keys, &grant.key, grant.channels) {
                Ok(sealed) => {
                    tracing::debug!(%peer, "key grant sent");
                    control.queue(ControlMessage::Grant(sealed))
                }
                Err(e) => tracing::warn!(%peer, %e, "sealing a grant failed"),
            }
        }
        self.flush_reachability(now);
        self.flush_punches();
        // Floor messages last: the charter changes above may have started floors.
        self.flush_floor();
        for (peer, control) in &mut self.peers {
            if let Some(bytes) = control.next_to_send() {
                self.next_request += 1;
                control.sent(self.next_request, now);
                self.outputs.push_back(Output::Control {
                    peer: *peer,
                    bytes,
                    ordered: Some(self.next_request),
                });
            }
        }
        self.pace_circuit_dials(now);
        self.publish_forward_view();
    }
}
