//! What a channel's floor does on its own clock: the holder going silent, acknowledgements
//! and releases repeated or timed out, the talk-time limit, the holder's and the arbiter's
//! heartbeats.

use super::super::shared::Shared;
use super::{ChannelFloor, Withdrawal};
use crate::floor::LocalFloor;
use std::time::Instant;

impl ChannelFloor {
    /// When the holder, unheard, loses the floor. Members apply it by rule; under an arbiter,
    /// the arbiter alone does.
    pub(super) fn silence_deadline(&self, sh: &Shared) -> Option<Instant> {
        let leader = self.leader?;
        if leader == sh.local || self.ruling().is_some_and(|a| a != sh.local) {
            return None;
        }
        // A new holder gets the whole timeout from when it came to lead, unless we have not
        // heard it for long already: then only a heartbeat's worth (chaos seed 90059: a
        // member whose arbiter's link dropped led by the claim of a talker that had crashed
        // three seconds before, and named it holder for 1.5 s more). A live holder is heard
        // within that, and if not, its next claim makes it holder again.
        let grace_from = self
            .leader_since
            .checked_sub(sh.config.silence_timeout - sh.config.heartbeat())
            .unwrap_or(self.leader_since);
        let since = match self.heard.get(&leader) {
            Some(heard) if *heard >= self.leader_since => *heard,
            Some(heard) => (*heard).max(grace_from),
            None => self.leader_since,
        };
        Some(since + sh.config.silence_timeout)
    }

    /// Whether our claim is out and repeated to whoever has not acknowledged it: a request
    /// the members' rule decides (an arbiter answers with rulings instead), or a release (one
    /// lost in a burst left members following us as holder, and the next talker silenced, for
    /// QUIC's doubling probe timeouts: chaos seed 817, 1 s).
    pub(super) fn awaits_acks(&self) -> bool {
        match self.state {
            LocalFloor::Pending => self.ruling().is_none(),
            LocalFloor::Releasing => true,
            _ => false,
        }
    }

    /// When [`Self::handle_timeout`] has something to do.
    pub(crate) fn poll_timeout(&self, sh: &Shared) -> Option<Instant> {
        let ack = self.awaits_acks().then(|| {
            let timeout = self.changed_at + sh.config.ack_timeout;
            self.next_resend.map_or(timeout, |at| at.min(timeout))
        });
        let talk = match (self.state, self.granted_at, self.mine.request) {
            (LocalFloor::Granted, Some(at), Some(request)) => {
                sh.config.max_talk(request.priority).map(|max| at + max)
            }
            _ => None,
        };
        let heartbeat = self
            .next_heartbeat
            .filter(|_| self.state == LocalFloor::Granted);
        let ruling = self.next_ruling.filter(|_| self.arbitration.is_some());
        let arbiter_silence = self
            .ruling()
            .filter(|a| *a != sh.local)
            .map(|_| self.arbiter_heard + sh.config.silence_timeout);
        [
            ack,
            talk,
            heartbeat,
            ruling,
            arbiter_silence,
            self.silence_deadline(sh),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub(crate) fn handle_timeout(&mut self, sh: &mut Shared, now: Instant) {
        if self.arbitration.is_some() && self.next_ruling.is_some_and(|at| now >= at) {
            self.send_ruling(sh, now);
        }
        if self.ruling().is_some_and(|a| a != sh.local)
            && now >= self.arbiter_heard + sh.config.silence_timeout
        {
            tracing::debug!(channel = %self.channel, "arbiter silent: the members' rule applies");
            self.arbiter_silent = true;
            if let Some(arbiter) = self.arbiter {
                sh.silent_arbiters.push_back(arbiter);
            }
            self.decision = None;
        }
        if self.awaits_acks() && self.next_resend.is_some_and(|at| now >= at) {
            self.resend_claim(sh, now);
        }
        if self.state == LocalFloor::Granted && self.next_heartbeat.is_some_and(|at| now >= at) {
            self.next_heartbeat = Some(now + sh.config.heartbeat());
            self.broadcast_claim(sh);
        }
        if let (LocalFloor::Granted, Some(at), Some(request)) =
            (self.state, self.granted_at, self.mine.request)
        {
            if sh
                .config
                .max_talk(request.priority)
                .is_some_and(|max| now >= at + max)
            {
                self.withdraw(sh, Withdrawal::TimeLimit, now);
            }
        }
        if self.silence_deadline(sh).is_some_and(|at| now >= at) {
            if let Some(leader) = self.leader {
                if let Some(claim) = self.claims.get(&leader) {
                    tracing::debug!(channel = %self.channel, "floor holder went silent");
                    self.vanished.insert(leader, claim.rev);
                }
            }
        }
        self.refresh(sh, now);
    }
}
