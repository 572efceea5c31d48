//! Control messages between members (docs/protocol.md, "Control messages") and the per-peer
//! state that carries them: an ordered outbox (one message in flight, the next sent when the
//! previous is acknowledged) and the pairwise E2EE session.

use callsign_mesh::e2ee::PairSession;
use libp2p::request_response::OutboundRequestId;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

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
}

/// Why a control message was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ControlDecodeError {
    #[error("empty control message")]
    Empty,
    #[error("unknown control message version {0}")]
    Version(u8),
    #[error("malformed control message: {0}")]
    Malformed(String),
}

impl ControlMessage {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![CONTROL_VERSION];
        // Serialising owned byte vectors into a Vec cannot fail.
        out.extend(postcard::to_stdvec(self).unwrap_or_default());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, ControlDecodeError> {
        match bytes.split_first() {
            None => Err(ControlDecodeError::Empty),
            Some((&CONTROL_VERSION, body)) => {
                let (message, rest) = postcard::take_from_bytes(body)
                    .map_err(|e| ControlDecodeError::Malformed(e.to_string()))?;
                if !rest.is_empty() {
                    return Err(ControlDecodeError::Malformed("trailing bytes".into()));
                }
                Ok(message)
            }
            Some((v, _)) => Err(ControlDecodeError::Version(*v)),
        }
    }
}

/// Control state for one linked member.
#[derive(Default)]
pub struct PeerControl {
    outbox: VecDeque<Vec<u8>>,
    in_flight: Option<OutboundRequestId>,
    pub session: Option<PairSession>,
}

impl PeerControl {
    pub fn queue(&mut self, message: &ControlMessage) {
        self.outbox.push_back(message.encode());
    }

    /// The next message to send, if none is in flight.
    pub fn next_to_send(&mut self) -> Option<Vec<u8>> {
        if self.in_flight.is_some() {
            return None;
        }
        self.outbox.pop_front()
    }

    pub fn sent(&mut self, id: OutboundRequestId) {
        self.in_flight = Some(id);
    }

    /// The in-flight message was acknowledged (true) or belongs to someone else (false).
    pub fn acknowledged(&mut self, id: OutboundRequestId) -> bool {
        if self.in_flight == Some(id) {
            self.in_flight = None;
            true
        } else {
            false
        }
    }

    pub fn is_in_flight(&self, id: OutboundRequestId) -> bool {
        self.in_flight == Some(id)
    }

    pub fn is_established(&self) -> bool {
        self.session
            .as_ref()
            .is_some_and(PairSession::is_established)
    }
}
