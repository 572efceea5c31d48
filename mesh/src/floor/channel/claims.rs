//! Our claim going out, and who acknowledged it: the answer to a peer, the repeats while a
//! request or a release waits, and who is not waited for once the acknowledgement timeout runs out.

use super::super::message::FloorMessage;
use super::super::shared::Shared;
use super::ChannelFloor;
use callsign_keys::IdentityKey;
use std::time::Instant;

impl ChannelFloor {
    fn message_to(&self, peer: &IdentityKey) -> FloorMessage {
        FloorMessage::Claim {
            channel: self.channel,
            claim: self.mine,
            seen: self.claims.get(peer).map(|c| c.rev),
        }
    }

    /// Our claim to one peer (a new link, or an answer).
    pub(crate) fn send_claim(&self, sh: &mut Shared, peer: IdentityKey) {
        let message = self.message_to(&peer);
        sh.transmits.push_back((peer, message));
    }

    pub(super) fn broadcast_claim(&self, sh: &mut Shared) {
        for peer in sh.participants.clone() {
            self.send_claim(sh, peer);
        }
    }

    pub(super) fn all_acked(&self, sh: &Shared, rev: u32) -> bool {
        sh.participants
            .iter()
            .filter(|p| !sh.silent.contains(*p) && sh.requesters.contains(*p))
            .all(|p| self.acked(p, rev))
    }

    fn acked(&self, peer: &IdentityKey, rev: u32) -> bool {
        self.seen_by.get(peer).is_some_and(|seen| *seen >= rev)
    }

    /// The acknowledgement timeout ran out on `rev`: whoever has not acknowledged it is not
    /// waited for again until it speaks ([`Shared::silent`]).
    pub(super) fn mark_silent(&self, sh: &mut Shared, rev: u32) {
        let quiet: Vec<IdentityKey> = sh
            .participants
            .iter()
            .filter(|p| sh.requesters.contains(*p) && !self.acked(p, rev))
            .copied()
            .collect();
        sh.silent.extend(quiet);
    }

    /// Repeats our pending claim to whoever has not acknowledged it. A claim or its answer lost
    /// on a lossy path would otherwise wait for QUIC's retransmission (a probe timeout, doubling
    /// with each loss), and the acknowledgement timeout could run out first: two crossing
    /// requests would then both be granted. Each repeat travels on a stream of its own, so its
    /// fate is independent; a peer that is also waiting repeats its own claim, which carries
    /// its acknowledgement of ours.
    /// A release is repeated the same way until everyone has it.
    pub(super) fn resend_claim(&mut self, sh: &mut Shared, now: Instant) {
        let rev = self.release_rev.unwrap_or(self.request_rev);
        let unacked: Vec<IdentityKey> = sh
            .participants
            .iter()
            .filter(|p| !sh.silent.contains(*p) && !self.acked(p, rev))
            .copied()
            .collect();
        for peer in unacked {
            self.send_claim(sh, peer);
        }
        self.next_resend = Some(now + sh.config.claim_resend());
    }
}
