//! Pair sessions ([`crate::pairing`]) within the member: handshake messages in and out,
//! overdue attempts, and what a newly established session sets off.

use super::{Event, Member};
use crate::control::ControlMessage;
use crate::pairing::{Pairing, PairingStep};
use callsign_keys::IdentityKey;
use libp2p_identity::PeerId;
use std::time::Instant;

impl Member {
    pub(super) fn handshake(
        &mut self,
        peer: PeerId,
        identity: IdentityKey,
        body: &[u8],
        now: Instant,
    ) {
        let Some(pairing) = self.peers.get_mut(&peer).and_then(|c| c.pairing.as_mut()) else {
            return;
        };
        let step = pairing.handle(&self.keys, body, now);
        self.pairing_step(peer, identity, step, now);
    }

    /// Starts overdue pair session attempts again.
    pub(super) fn pairing_timeouts(&mut self, now: Instant) {
        let due: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, c)| {
                c.pairing
                    .as_ref()
                    .and_then(Pairing::poll_timeout)
                    .is_some_and(|at| at <= now)
            })
            .map(|(p, _)| *p)
            .collect();
        for peer in due {
            let Some(identity) = self.members.get(&peer).copied() else {
                continue;
            };
            let Some(pairing) = self.peers.get_mut(&peer).and_then(|c| c.pairing.as_mut()) else {
                continue;
            };
            tracing::debug!(%peer, "pair session attempt overdue; starting again");
            let step = pairing.handle_timeout(&self.keys, now);
            self.pairing_step(peer, identity, step, now);
        }
    }

    fn pairing_step(
        &mut self,
        peer: PeerId,
        identity: IdentityKey,
        step: PairingStep,
        now: Instant,
    ) {
        if let Some(control) = self.peers.get_mut(&peer) {
            for body in step.send {
                control.queue(ControlMessage::Handshake(body));
            }
        }
        if let Some(e) = step.error {
            self.emit(Event::Warning(format!("session with {peer}: {e}")));
        }
        if step.established {
            tracing::debug!(%peer, "pair session up");
            // A new session means the peer (re)started: whatever keys it granted before are
            // void, and it re-grants its current ones on this session. (A restarted sender
            // reuses key ids, which a held key would shadow.)
            self.receiver.remove_sender(&identity);
            self.schedule.session_restarted(&identity);
            self.keys_dirty = true;
            self.emit(Event::SessionUp { peer: identity });
            // A peer that starts the session again also dropped our control state, and as a
            // relay our subscription with it, even when our link never went down (chaos seed
            // 259: a volunteer relay restarted control after a partition and forwarded nothing
            // to a member that still counted itself subscribed). Subscribe again.
            if self.subscribed.remove(&identity).is_some() {
                self.update_subscriptions(now);
            }
            // Our presence may have reached the peer while it did not count us as a member
            // yet; once the session is up it surely does.
            if let Some(record) = self.own_presence(now) {
                if let Some(control) = self.peers.get_mut(&peer) {
                    control.queue(ControlMessage::Presence(record.encode()));
                }
            }
        }
    }
}
