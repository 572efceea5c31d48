//! Control messages between members (docs/protocol.md, "Control messages") and the per-peer
//! state that carries them: an ordered outbox (one request in flight, the next sent when the
//! previous is acknowledged; whatever queued meanwhile goes as one [`ControlMessage::Batch`], so
//! a burst of messages costs one round trip, not one each) and the pairwise E2EE session
//! ([`crate::pairing`]).
//!
//! The outbox is generic over the id the transport gives a sent request (libp2p's
//! `OutboundRequestId` in the node), so acknowledgements and failures are matched to the one
//! request in flight.

use crate::pairing::Pairing;
use callsign_keys::IdentityKey;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::Instant;

/// Version byte of control messages.
pub const CONTROL_VERSION: u8 = 1;

/// One control message. Each body is the owning module's own versioned encoding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlMessage {
    /// A charter sync message (`charter::sync::SyncMessage::encode`).
    Sync(Vec<u8>),
    /// A signed presence record (`presence::PresenceRecord::encode`).
    Presence(Vec<u8>),
    /// A Noise handshake message of the pair session.
    Handshake(Vec<u8>),
    /// A sender key grant sealed by the pair session.
    Grant(Vec<u8>),
    /// "Over the last second the network lost this percentage of your frames to me": the
    /// sender tunes its FEC to the worst listener.
    LossReport(u8),
    /// A voice packet, when the peer is linked over the TCP fallback (no datagrams). Sent
    /// outside the ordered outbox: the jitter buffer reorders.
    Voice(Vec<u8>),
    /// Several messages in outbox order, handled in that order (never nested, never empty).
    Batch(Vec<ControlMessage>),
    /// A floor message (`floor::FloorMessage::encode`). Sent outside the ordered outbox.
    Floor(Vec<u8>),
    /// A member's signed subscription to a relay (`forward::Subscription::encode`).
    Subscribe(Vec<u8>),
    /// A newcomer's request to be admitted (`admission::JoinRequest::encode`).
    Join(Vec<u8>),
    /// An admin's answer to a join request it refused: why.
    JoinRefused(String),
    /// Where we see the peer's link come from (`reachability::Observation::encode`): a
    /// candidate public address for it. Sent outside the ordered outbox.
    Observed(Vec<u8>),
    /// "Send this nonce to me from a fresh port" (`reachability::ProbeRequest::encode`). Sent
    /// outside the ordered outbox.
    Probe(Vec<u8>),
    /// "My link to this rented relay comes from this address" (a multiaddr's bytes), so
    /// members that lost the relay dial it where it is now (`member::relay_dial`).
    RelayAddress {
        /// The relay (a charter `PutRelay` key).
        relay: IdentityKey,
        /// The multiaddr's bytes.
        addr: Vec<u8>,
    },
    /// A hole punching message (`punch::PunchMessage::encode`), between members linked only
    /// through a circuit. Sent outside the ordered outbox.
    Punch(Vec<u8>),
    /// A path message (`path::PathMessage::encode`): a talker on or off air, a listener asking
    /// for a repair. Sent outside the ordered outbox.
    Path(Vec<u8>),
}

/// The largest control message (the request codec's limit).
pub const MAX_CONTROL_BYTES: usize = 2 * 1024 * 1024;

/// A batch stops growing past this many body bytes (the codec allows 2 MiB per request).
const BATCH_BYTES: usize = 256 * 1024;

/// Why a control message was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ControlDecodeError {
    /// Empty, or over [`MAX_CONTROL_BYTES`].
    #[error("control message of {0} bytes")]
    Size(usize),
    /// A version this build does not read.
    #[error("unknown control message version {0}")]
    Version(u8),
    /// The body does not parse, or breaks a batch rule.
    #[error("malformed control message: {0}")]
    Malformed(String),
}

crate::wire::wire_error_into!(ControlDecodeError);

impl ControlMessage {
    /// The wire form: `CONTROL_VERSION | postcard(self)`.
    pub fn encode(&self) -> Vec<u8> {
        crate::wire::encode(CONTROL_VERSION, self)
    }

    /// Parses the wire form; refuses empty and nested batches. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, ControlDecodeError> {
        let message: Self = crate::wire::decode(CONTROL_VERSION, MAX_CONTROL_BYTES, bytes)?;
        if let ControlMessage::Batch(messages) = &message {
            if messages.is_empty() {
                return Err(ControlDecodeError::Malformed("empty batch".into()));
            }
            if messages
                .iter()
                .any(|m| matches!(m, ControlMessage::Batch(_)))
            {
                return Err(ControlDecodeError::Malformed("nested batch".into()));
            }
        }
        Ok(message)
    }

    /// Body bytes, near enough to size a batch.
    fn body_len(&self) -> usize {
        match self {
            ControlMessage::Sync(b)
            | ControlMessage::Presence(b)
            | ControlMessage::Handshake(b)
            | ControlMessage::Grant(b)
            | ControlMessage::Voice(b)
            | ControlMessage::Floor(b)
            | ControlMessage::Subscribe(b)
            | ControlMessage::Join(b)
            | ControlMessage::Observed(b)
            | ControlMessage::Probe(b)
            | ControlMessage::Punch(b)
            | ControlMessage::Path(b) => b.len(),
            ControlMessage::JoinRefused(reason) => reason.len(),
            ControlMessage::LossReport(_) => 1,
            ControlMessage::Batch(m) => m.iter().map(Self::body_len).sum(),
            ControlMessage::RelayAddress { addr, .. } => 32 + addr.len(),
        }
    }
}

/// Control state for one linked member; `R` names a sent request.
pub struct PeerControl<R> {
    outbox: VecDeque<ControlMessage>,
    /// The request in flight and when it was sent.
    in_flight: Option<(R, Instant)>,
    /// The pair session and its restart rules (none on a relay link).
    pub pairing: Option<Pairing>,
}

impl<R> Default for PeerControl<R> {
    fn default() -> Self {
        Self {
            outbox: VecDeque::new(),
            in_flight: None,
            pairing: None,
        }
    }
}

impl<R: Copy + PartialEq> PeerControl<R> {
    /// Queues `message` behind everything already queued.
    pub fn queue(&mut self, message: ControlMessage) {
        self.outbox.push_back(message);
    }

    /// The next request to send, if none is in flight: everything queued (up to
    /// [`BATCH_BYTES`]), as one message or a batch.
    pub fn next_to_send(&mut self) -> Option<Vec<u8>> {
        if self.in_flight.is_some() {
            return None;
        }
        let mut batch = vec![self.outbox.pop_front()?];
        let mut bytes = batch[0].body_len();
        while let Some(next) = self.outbox.front() {
            bytes += next.body_len();
            if bytes > BATCH_BYTES {
                break;
            }
            batch.extend(self.outbox.pop_front());
        }
        Some(match batch.len() {
            1 => batch.remove(0).encode(),
            _ => ControlMessage::Batch(batch).encode(),
        })
    }

    /// The request [`Self::next_to_send`] gave went out as `id`.
    pub fn sent(&mut self, id: R, now: Instant) {
        self.in_flight = Some((id, now));
    }

    /// The in-flight message was acknowledged (true) or belongs to someone else (false).
    pub fn acknowledged(&mut self, id: R) -> bool {
        if self.is_in_flight(id) {
            self.in_flight = None;
            true
        } else {
            false
        }
    }

    /// Whether `id` is the request in flight.
    pub fn is_in_flight(&self, id: R) -> bool {
        self.in_flight.is_some_and(|(r, _)| r == id)
    }

    /// The request in flight and when it was sent: the owner gives it up after its timeout
    /// (on its own clock, so a simulated run needs no wall-clock timer for it).
    pub fn in_flight(&self) -> Option<(R, Instant)> {
        self.in_flight
    }

    /// Whether the pair session is up.
    pub fn is_established(&self) -> bool {
        self.pairing.as_ref().is_some_and(Pairing::is_established)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_queued_while_one_is_in_flight_go_as_one_batch_in_order() {
        let mut control = PeerControl::<u32>::default();
        control.queue(ControlMessage::Presence(vec![1]));
        let first = control.next_to_send().unwrap();
        assert_eq!(
            ControlMessage::decode(&first),
            Ok(ControlMessage::Presence(vec![1]))
        );
        let id = 7;
        control.sent(id, std::time::Instant::now());
        control.queue(ControlMessage::Handshake(vec![2]));
        control.queue(ControlMessage::Grant(vec![3]));
        control.queue(ControlMessage::LossReport(4));
        assert_eq!(control.next_to_send(), None, "one request in flight");
        assert!(control.acknowledged(id));
        let batch = ControlMessage::decode(&control.next_to_send().unwrap()).unwrap();
        assert_eq!(
            batch,
            ControlMessage::Batch(vec![
                ControlMessage::Handshake(vec![2]),
                ControlMessage::Grant(vec![3]),
                ControlMessage::LossReport(4),
            ])
        );
        assert_eq!(control.next_to_send(), None, "outbox drained");
    }

    #[test]
    fn a_batch_stops_at_its_byte_budget() {
        let mut control = PeerControl::<u32>::default();
        for i in 0..3u8 {
            control.queue(ControlMessage::Sync(vec![i; BATCH_BYTES / 2]));
        }
        let first = ControlMessage::decode(&control.next_to_send().unwrap()).unwrap();
        assert!(matches!(&first, ControlMessage::Batch(m) if m.len() == 2));
        let rest = ControlMessage::decode(&control.next_to_send().unwrap()).unwrap();
        assert!(matches!(rest, ControlMessage::Sync(b) if b[0] == 2));
    }

    #[test]
    fn floor_messages_keep_their_place_in_the_enum() {
        // Variant 7: peers of this version read it; the tag must never move.
        let bytes = ControlMessage::Floor(vec![9, 8]).encode();
        assert_eq!(bytes, vec![CONTROL_VERSION, 7, 2, 9, 8]);
        assert_eq!(
            ControlMessage::decode(&bytes),
            Ok(ControlMessage::Floor(vec![9, 8]))
        );
    }

    #[test]
    fn empty_and_nested_batches_are_refused() {
        let empty = ControlMessage::Batch(Vec::new()).encode();
        assert!(matches!(
            ControlMessage::decode(&empty),
            Err(ControlDecodeError::Malformed(_))
        ));
        let nested = ControlMessage::Batch(vec![ControlMessage::Batch(vec![
            ControlMessage::LossReport(1),
        ])])
        .encode();
        assert!(matches!(
            ControlMessage::decode(&nested),
            Err(ControlDecodeError::Malformed(_))
        ));
    }
}
