//! Voice packets: the wire format of one Opus frame, sealed end-to-end with the sender's key;
//! the sender's key schedule and fan-out; the receiver's checks and replay window.
//!
//! Relays and forwarders read the clear header (channels, sender, sequence) to route and
//! de-duplicate; only holders of the sender key can open the payload, and any change to the
//! header breaks the seal because the header is the AEAD's associated data.

pub mod fanout;
pub mod keyschedule;
pub mod packet;
pub mod receiver;
pub mod replay;

pub use fanout::{channel_deliveries, speakable, whisper_delivery, Delivery, WhisperError};
pub use keyschedule::{KeySchedule, KeyScheduleConfig, PendingGrant, WHISPER_KEY_BIT};
pub use packet::{
    SenderKey, SenderShortId, VoiceFlags, VoiceHeader, VoicePacketError, MAX_CHANNELS,
    VOICE_VERSION,
};
pub use receiver::{DropCounts, DropReason, ReceivedFrame, VoiceReceiver};
pub use replay::ReplayWindow;
