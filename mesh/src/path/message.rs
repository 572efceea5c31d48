//! Path messages on the wire (docs/protocol.md, "Path messages"): version byte `1`, then the
//! postcard encoding of [`PathMessage`]; and the rungs of the repair ladder they name.

use crate::charter::ChannelId;
use serde::{Deserialize, Serialize};

/// Version byte of path messages.
pub const PATH_VERSION: u8 = 1;
/// Largest encoded path message accepted.
pub const MAX_PATH_BYTES: usize = 4 * 1024;
/// Most channels one path message names.
pub const MAX_PATH_CHANNELS: usize = 64;
/// One path message, sent on the control link between two members.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PathMessage {
    /// Talker → listener: "I am on air on these channels now" (empty: off air).
    Talking {
        /// The channels the talker's frames carry, sorted.
        channels: Vec<ChannelId>,
    },
    /// Listener → talker: "I hear none of your frames on these channels; do this." The talker
    /// answers with [`PathMessage::Talking`] (where it is on air now).
    Repair {
        /// The channels the listener expects the talker on.
        channels: Vec<ChannelId>,
        /// [`Rung::Key`] or [`Rung::DirectCopy`] (the others are the listener's own).
        rung: Rung,
    },
}

/// Why a path message was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathDecodeError {
    /// Empty, or over [`MAX_PATH_BYTES`].
    #[error("path message of {0} bytes")]
    Size(usize),
    /// A version this build does not read.
    #[error("unknown path message version {0}")]
    Version(u8),
    /// The body does not parse, or names too many channels.
    #[error("malformed path message: {0}")]
    Malformed(String),
}

crate::wire::wire_error_into!(PathDecodeError);

impl PathMessage {
    /// The wire form: `PATH_VERSION | postcard(self)`.
    pub fn encode(&self) -> Vec<u8> {
        crate::wire::encode(PATH_VERSION, self)
    }

    /// Parses the wire form. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, PathDecodeError> {
        let message: Self = crate::wire::decode(PATH_VERSION, MAX_PATH_BYTES, bytes)?;
        let channels = match &message {
            PathMessage::Talking { channels } | PathMessage::Repair { channels, .. } => channels,
        };
        if channels.len() > MAX_PATH_CHANNELS {
            return Err(PathDecodeError::Malformed("too many channels".into()));
        }
        Ok(message)
    }
}

/// One rung of the repair ladder, in the order a listener climbs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Rung {
    /// Subscribe again at the channel's relay and re-plan routes (the listener alone).
    Resubscribe,
    /// The talker grants its current key again.
    Key,
    /// The talker sends this listener direct copies for [`DIRECT_COPY_FOR`].
    DirectCopy,
    /// The listener takes the channel off its relay for [`MESH_FALLBACK_FOR`].
    Mesh,
}

impl Rung {
    /// The listener's ladder: [`Rung::DirectCopy`] is asked for with the first and the last
    /// rung, never climbed alone.
    pub(super) fn after(rung: Option<Rung>) -> Rung {
        match rung {
            None => Rung::Resubscribe,
            Some(Rung::Resubscribe | Rung::DirectCopy) => Rung::Key,
            // The top rung is held: direct copies expire, so keep asking while deaf.
            Some(Rung::Key | Rung::Mesh) => Rung::Mesh,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_messages_round_trip_and_refuse_bad_input() {
        let m = PathMessage::Repair {
            channels: vec![ChannelId(7)],
            rung: Rung::DirectCopy,
        };
        assert_eq!(PathMessage::decode(&m.encode()), Ok(m));
        assert!(matches!(
            PathMessage::decode(&[]),
            Err(PathDecodeError::Size(0))
        ));
        assert!(matches!(
            PathMessage::decode(&[9, 0]),
            Err(PathDecodeError::Version(9))
        ));
        let many = PathMessage::Talking {
            channels: (0..100).map(ChannelId).collect(),
        };
        assert!(matches!(
            PathMessage::decode(&many.encode()),
            Err(PathDecodeError::Malformed(_))
        ));
        for len in 0..40 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 1) as u8).collect();
            let _ = PathMessage::decode(&junk);
        }
    }
}
