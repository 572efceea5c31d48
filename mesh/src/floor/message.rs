//! Floor messages on the wire (docs/protocol.md, "Floor messages"): version byte `1`, then the
//! postcard encoding of [`FloorMessage`]. They travel inside authenticated member links, so the
//! link names the sender; nothing in them speaks for a third party except an arbiter's
//! [`Decision`], which receivers accept only from the channel's arbiter.

use crate::charter::{ChannelId, Priority};
use crate::wire::WireError;
use callsign_keys::IdentityKey;
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;

/// Version byte of floor messages.
pub const FLOOR_VERSION: u8 = 1;
/// Largest encoded message accepted.
pub const MAX_FLOOR_BYTES: usize = 16 * 1024;
/// Most queue entries a decision may carry.
pub const MAX_DECISION_QUEUE: usize = 256;

/// A request for the floor: what every member orders the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FloorRequest {
    /// The requester's floor priority for this request (checked against its role).
    pub priority: Priority,
    /// Hybrid logical time of the press in ms: the requester's Unix clock, but always later than
    /// any request it had seen, so a press made knowing of another orders after it.
    pub stamp: u64,
    /// An emergency request (priority 4).
    pub emergency: bool,
}

impl FloorRequest {
    /// The total order of requests: higher priority first, then the earlier stamp, then the
    /// lower peer key. Smaller sorts first (wins).
    pub fn rank(&self, peer: &IdentityKey) -> (Reverse<Priority>, u64, IdentityKey) {
        (Reverse(self.priority), self.stamp, *peer)
    }
}

/// What one member says about itself on one channel. Replaced whole by a higher `rev`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// Increases with every change the member makes (press, release, emergency).
    pub rev: u32,
    /// Its live request, if it wants or holds the floor.
    pub request: Option<FloorRequest>,
    /// The emergency it raised and has not cleared: the `rev` that raised it.
    pub emergency: Option<u32>,
}

/// One request in an arbiter's decision: the requester and the request's stamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Slot {
    /// The requester.
    pub peer: IdentityKey,
    /// Its request's stamp (which request of that peer this is).
    pub stamp: u64,
}

/// An arbiter's ruling on a channel: who holds the floor and who waits, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Increases with every ruling (the arbiter's hybrid clock, so a restarted arbiter's
    /// rulings still supersede its old ones).
    pub rev: u64,
    /// The talker.
    pub holder: Option<Slot>,
    /// Waiting requests, next first.
    pub queue: Vec<Slot>,
}

/// One floor message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FloorMessage {
    /// The sender's claim on a channel, and the newest `rev` of the receiver's claim the sender
    /// has seen (`None`: none yet). A claim with a new `rev` is answered with the receiver's
    /// own claim: that answer is the acknowledgement requesters wait for in mesh mode.
    Claim {
        /// The channel.
        channel: ChannelId,
        /// The sender's claim.
        claim: Claim,
        /// The receiver's claim revision the sender has seen.
        seen: Option<u32>,
    },
    /// The arbiter's ruling (relay mode).
    Decision {
        /// The channel.
        channel: ChannelId,
        /// The ruling.
        decision: Decision,
    },
    /// An admin clears another member's emergency (`raised` names which one).
    ClearEmergency {
        /// The channel.
        channel: ChannelId,
        /// Who raised it.
        raiser: IdentityKey,
        /// The raiser's claim `rev` that raised it.
        raised: u32,
    },
}

/// Why a floor message was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FloorDecodeError {
    /// Nothing at all.
    #[error("empty floor message")]
    Empty,
    /// Larger than [`MAX_FLOOR_BYTES`].
    #[error("floor message of {0} bytes is too large")]
    TooLarge(usize),
    /// A version this build does not know.
    #[error("unknown floor message version {0}")]
    Version(u8),
    /// Does not decode, has trailing bytes, or breaks a limit.
    #[error("malformed floor message: {0}")]
    Malformed(String),
}

impl FloorMessage {
    /// The channel the message is about.
    pub fn channel(&self) -> ChannelId {
        match self {
            Self::Claim { channel, .. }
            | Self::Decision { channel, .. }
            | Self::ClearEmergency { channel, .. } => *channel,
        }
    }

    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        crate::wire::encode(FLOOR_VERSION, self)
    }

    /// Parses the wire form; never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, FloorDecodeError> {
        let message: Self =
            crate::wire::decode(FLOOR_VERSION, MAX_FLOOR_BYTES, bytes).map_err(|e| match e {
                WireError::Size(0) => FloorDecodeError::Empty,
                WireError::Size(n) => FloorDecodeError::TooLarge(n),
                WireError::Version(v) => FloorDecodeError::Version(v),
                WireError::Malformed(m) => FloorDecodeError::Malformed(m),
            })?;
        if let Self::Decision { decision, .. } = &message {
            if decision.queue.len() > MAX_DECISION_QUEUE {
                return Err(FloorDecodeError::Malformed(
                    "decision queue too long".into(),
                ));
            }
        }
        if let Self::Claim {
            claim: Claim {
                request: Some(request),
                ..
            },
            ..
        } = &message
        {
            if request.priority.level() > Priority::EMERGENCY.level() {
                return Err(FloorDecodeError::Malformed("priority above 4".into()));
            }
        }
        Ok(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use callsign_keys::Identity;
    use rand::SeedableRng;

    fn key(seed: u64) -> IdentityKey {
        Identity::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(seed)).public()
    }

    #[test]
    fn round_trips_and_refuses_bad_input() {
        let messages = [
            FloorMessage::Claim {
                channel: ChannelId(7),
                claim: Claim {
                    rev: 3,
                    request: Some(FloorRequest {
                        priority: Priority::HIGH,
                        stamp: 1_700_000_000_123,
                        emergency: false,
                    }),
                    emergency: Some(2),
                },
                seen: Some(9),
            },
            FloorMessage::Decision {
                channel: ChannelId(7),
                decision: Decision {
                    rev: 5,
                    holder: Some(Slot {
                        peer: key(1),
                        stamp: 10,
                    }),
                    queue: vec![Slot {
                        peer: key(2),
                        stamp: 11,
                    }],
                },
            },
            FloorMessage::ClearEmergency {
                channel: ChannelId(1),
                raiser: key(3),
                raised: 4,
            },
        ];
        for message in &messages {
            let bytes = message.encode();
            assert_eq!(&FloorMessage::decode(&bytes).unwrap(), message);
            let mut trailing = bytes.clone();
            trailing.push(0);
            assert!(matches!(
                FloorMessage::decode(&trailing),
                Err(FloorDecodeError::Malformed(_))
            ));
            for cut in 0..bytes.len() {
                assert!(FloorMessage::decode(&bytes[..cut]).is_err());
            }
            let mut versioned = bytes.clone();
            versioned[0] = 2;
            assert_eq!(
                FloorMessage::decode(&versioned),
                Err(FloorDecodeError::Version(2))
            );
        }
        let big = vec![1u8; MAX_FLOOR_BYTES + 1];
        assert!(matches!(
            FloorMessage::decode(&big),
            Err(FloorDecodeError::TooLarge(_))
        ));
    }

    #[test]
    fn requests_rank_by_priority_then_time_then_peer() {
        let (a, b) = (key(1), key(2));
        let (low, high) = (a.min(b), a.max(b));
        let req = |priority, stamp| FloorRequest {
            priority,
            stamp,
            emergency: false,
        };
        assert!(req(Priority::HIGH, 9).rank(&high) < req(Priority::NORMAL, 1).rank(&low));
        assert!(req(Priority::NORMAL, 1).rank(&high) < req(Priority::NORMAL, 2).rank(&low));
        assert!(req(Priority::NORMAL, 1).rank(&low) < req(Priority::NORMAL, 1).rank(&high));
    }
}
