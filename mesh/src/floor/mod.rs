//! Floor control for half-duplex channels, MCPTT style: one talker at a time, a higher
//! priority pre-empts a lower one, an emergency (priority 4) is never pre-empted, equal
//! priorities queue in request order, and a talker who runs out of talk time, loses its link or
//! goes silent loses the floor.
//!
//! Two ways to arbitrate, both driven by the same [`FloorControl`]:
//!
//! - **Mesh** (no arbiter): every member applies the same rule to the same requests. Each
//!   member tells every linked member its [`Claim`] (its live request, if any); a request ranks
//!   by (priority, hybrid-clock stamp, peer key) ([`FloorRequest::rank`]) and the best live
//!   request leads everywhere. A requester that leads transmits only once every linked member
//!   has acknowledged its claim (one round trip), so a crossing request made before a member saw
//!   ours reaches us first and the two presses end with one talker on every node. A press made
//!   after seeing a request stamps later, so it can only win by priority.
//! - **Arbiter** (a relay serves the channel): the arbiter rules in arrival order and sends a
//!   [`Decision`] to everyone; members follow it. Grant time is one round trip to the arbiter.
//!
//! Sans-IO: entry points take `now`; [`FloorControl::poll_transmit`] and
//! [`FloorControl::poll_event`] say what to send and what happened. Wire form in
//! [`message`] (docs/protocol.md, "Floor messages").

mod arbiter;
mod channel;
mod control;
pub mod message;
mod shared;

pub use control::{FloorControl, HOLDER_AUDIBLE};
pub use message::{Claim, Decision, FloorDecodeError, FloorMessage, FloorRequest, Slot};

use crate::charter::{ChannelId, CharterState, Priority};
use callsign_keys::IdentityKey;
use std::time::Duration;

/// Tunables.
#[derive(Clone, Debug)]
pub struct FloorConfig {
    /// A mesh-mode request leads but waits for acknowledgements at most this long (a member
    /// that does not answer is taken to be gone); a release is "releasing" at most this long.
    pub ack_timeout: Duration,
    /// A holder heard from neither by audio nor by its claim (repeated every quarter of this)
    /// for this long loses the floor: it crashed or its path died before its link timed out.
    pub silence_timeout: Duration,
    /// Longest hold per priority level (index 0 to 4); `None`: no limit.
    pub max_talk: [Option<Duration>; 5],
}

impl Default for FloorConfig {
    fn default() -> Self {
        let minute = Some(Duration::from_secs(60));
        Self {
            ack_timeout: Duration::from_millis(750),
            silence_timeout: Duration::from_secs(2),
            max_talk: [None, minute, minute, Some(Duration::from_secs(120)), None],
        }
    }
}

impl FloorConfig {
    /// How often a holder repeats its claim.
    pub fn heartbeat(&self) -> Duration {
        self.silence_timeout / 4
    }

    /// How often a request waiting for acknowledgements repeats its claim to the silent ones:
    /// three more tries before [`Self::ack_timeout`] runs out.
    pub fn claim_resend(&self) -> Duration {
        self.ack_timeout / 4
    }

    /// The talk-time limit for `priority`.
    pub fn max_talk(&self, priority: Priority) -> Option<Duration> {
        self.max_talk
            .get(usize::from(priority.level()))
            .copied()
            .flatten()
    }
}

/// Our own state on one half-duplex channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalFloor {
    /// No request.
    Idle,
    /// We lead but wait for acknowledgements (mesh) or the arbiter's ruling.
    Pending,
    /// We hold the floor: transmit.
    Granted,
    /// Someone else holds it; we are this far back in the queue (1: next).
    Queued(usize),
    /// We released; not every member has acknowledged yet.
    Releasing,
}

/// Something that happened on a half-duplex channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FloorEvent {
    /// We hold the floor.
    Granted {
        /// The channel.
        channel: ChannelId,
    },
    /// Our press was refused (role, permission).
    Denied {
        /// The channel.
        channel: ChannelId,
        /// Why.
        reason: String,
    },
    /// We wait behind others.
    Queued {
        /// The channel.
        channel: ChannelId,
        /// 1: next.
        position: usize,
    },
    /// A higher priority took the floor from us.
    Preempted {
        /// The channel.
        channel: ChannelId,
        /// Who took it.
        by: IdentityKey,
    },
    /// Our talk time ran out.
    Revoked {
        /// The channel.
        channel: ChannelId,
    },
    /// We released the floor (or our request).
    Released {
        /// The channel.
        channel: ChannelId,
    },
    /// Who holds the floor changed (talker id: known before the first audio arrives).
    Holder {
        /// The channel.
        channel: ChannelId,
        /// The new holder, `None` when the floor is free.
        holder: Option<IdentityKey>,
    },
    /// A member raised an emergency: the channel is in emergency until it is cleared.
    EmergencyRaised {
        /// The channel.
        channel: ChannelId,
        /// The raiser.
        by: IdentityKey,
    },
    /// An emergency was cleared, by its raiser or an admin.
    EmergencyCleared {
        /// The channel.
        channel: ChannelId,
        /// Who raised it.
        raiser: IdentityKey,
        /// Who cleared it.
        by: IdentityKey,
    },
}

/// Why a floor operation or message was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FloorError {
    /// The channel is open (or unknown): no floor control.
    #[error("channel {0} is not half-duplex")]
    NotHalfDuplex(ChannelId),
    /// The role has no floor priority or no speak permission there.
    #[error("the charter gives no floor on this channel")]
    NotAllowed,
    /// Emergency needs priority 4.
    #[error("only a role with emergency priority may raise an emergency")]
    NoEmergency,
    /// Clearing someone else's emergency needs an admin.
    #[error("only the raiser or an admin may clear an emergency")]
    NotAdmin,
    /// No such emergency to clear.
    #[error("no emergency to clear")]
    NoSuchEmergency,
    /// A peer claimed beyond its role, or a ruling came from someone not the arbiter.
    #[error("floor message beyond the sender's rights")]
    Unauthorised,
}

/// The arbiter a channel uses when one of the charter's rented relays is up: the first of the
/// channel's preferred relays that the charter rents, else the first rented relay. Every
/// member computes the same answer from the same charter.
pub fn arbiter_for(state: &CharterState, channel: ChannelId) -> Option<IdentityKey> {
    let preferred = state
        .channels
        .get(&channel)?
        .policy
        .preferred_relays
        .iter()
        .find(|r| state.relays.contains_key(r));
    preferred.or_else(|| state.relays.keys().next()).copied()
}
