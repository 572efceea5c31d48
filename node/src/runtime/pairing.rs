//! The driver's side of pair sessions (`callsign_mesh::pairing`): handshake messages in and
//! out, overdue attempts, and what a newly established session sets off.

use super::control::ControlMessage;
use super::driver::Driver;
use super::NodeEvent;
use callsign_keys::IdentityKey;
use callsign_mesh::pairing::{Pairing, PairingStep};
use libp2p::PeerId;
use std::time::Instant;

impl Driver {
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
            self.emit(NodeEvent::Warning(format!("session with {peer}: {e}")));
        }
        if step.established {
            // A new session means the peer (re)started: whatever keys it granted before are
            // void, and it re-grants its current ones on this session. (A restarted sender
            // reuses key ids, which a held key would shadow.)
            self.receiver.remove_sender(&identity);
            self.keys_dirty = true;
            self.emit(NodeEvent::SessionUp { peer: identity });
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
