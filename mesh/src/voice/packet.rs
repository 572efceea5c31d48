//! The voice packet, version 1 (docs/protocol.md, "Voice packet").
//!
//! ```text
//! version u8 | flags u8 | channel count u8 | channel ids u64 BE × count | sender u32 BE |
//! sequence u16 BE | timestamp u32 BE | key id u16 BE | sealed payload (ciphertext ‖ 16-byte tag)
//! ```
//!
//! The payload is sealed with ChaCha20-Poly1305 under the sender key named by the key id; the
//! nonce is `sender ‖ timestamp ‖ sequence ‖ key id` (12 bytes), unique per packet for one key
//! because a sender never repeats a (timestamp, sequence) pair under a key; the associated data
//! is the whole header.

use crate::charter::ChannelId;
use callsign_keys::IdentityKey;
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Version byte of voice packets this code writes and reads.
pub const VOICE_VERSION: u8 = 1;
/// Most channels one packet may carry (simulcast).
pub const MAX_CHANNELS: usize = 8;
/// Largest sealed payload accepted (a 60 ms Opus frame at 64 kb/s is under 500 bytes).
pub const MAX_PAYLOAD: usize = 1275;
const TAG_LEN: usize = 16;
const FIXED_HEADER: usize = 3 + 4 + 2 + 4 + 2;

/// A sender's 32-bit handle in packet headers (from its identity; the charter maps it back).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SenderShortId(pub u32);

impl SenderShortId {
    /// A member's short id: the first four bytes of SHA-256 of its identity key. Collisions are
    /// possible in huge orgs; receivers then try each sender holding that short id.
    pub fn of(identity: &IdentityKey) -> Self {
        let digest = Sha256::digest(identity.to_bytes());
        Self(u32::from_be_bytes([
            digest[0], digest[1], digest[2], digest[3],
        ]))
    }
}

/// Transmission flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VoiceFlags(u8);

impl VoiceFlags {
    /// First packet of a transmission (PTT pressed).
    pub const START: Self = Self(1);
    /// Last packet of a transmission (PTT released).
    pub const END: Self = Self(2);
    /// The Opus payload carries in-band FEC for the previous frame.
    pub const FEC: Self = Self(4);
    /// A whisper: addressed to chosen peers, not to channel listeners.
    pub const WHISPER: Self = Self(8);
    /// The sealed payload ends with the talker's [`crate::spatial::Point`] (20 bytes, see
    /// `spatial::POINT_LEN`): positional and proximity channels place the voice by it.
    pub const POSITIONED: Self = Self(16);
    const KNOWN: u8 = 31;

    /// No flags.
    pub const fn empty() -> Self {
        Self(0)
    }

    /// Both sets of flags.
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// Whether every flag in `other` is set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The raw byte.
    pub const fn bits(self) -> u8 {
        self.0
    }
}

/// The clear part of a voice packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VoiceHeader {
    /// Transmission flags.
    pub flags: VoiceFlags,
    /// Channels this frame is transmitted on (one, or several for simulcast).
    pub channels: Vec<ChannelId>,
    /// Who sent it.
    pub sender: SenderShortId,
    /// Per-sender frame counter (wraps).
    pub sequence: u16,
    /// Capture time of the frame's first sample, in 48 kHz samples (wraps).
    pub timestamp: u32,
    /// Which of the sender's keys sealed the payload.
    pub key_id: u16,
}

/// Why a packet was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VoicePacketError {
    /// Shorter than its header says.
    #[error("voice packet truncated")]
    Truncated,
    /// A version this code does not speak.
    #[error("unknown voice packet version {0}")]
    UnknownVersion(u8),
    /// Flag bits this version does not define.
    #[error("unknown voice flags {0:#04x}")]
    UnknownFlags(u8),
    /// Zero channels, or more than [`MAX_CHANNELS`].
    #[error("voice packet names {0} channels (1 to 8 allowed)")]
    ChannelCount(usize),
    /// The payload is larger than any Opus frame.
    #[error("voice payload of {0} bytes is too large")]
    PayloadTooLarge(usize),
    /// The payload does not open under the sender key: forged, corrupted, or another key.
    #[error("voice packet failed authentication")]
    Authentication,
}

impl VoiceHeader {
    fn encoded_len(&self) -> usize {
        FIXED_HEADER + 8 * self.channels.len()
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.push(VOICE_VERSION);
        out.push(self.flags.bits());
        out.push(self.channels.len() as u8);
        for channel in &self.channels {
            out.extend_from_slice(&channel.0.to_be_bytes());
        }
        out.extend_from_slice(&self.sender.0.to_be_bytes());
        out.extend_from_slice(&self.sequence.to_be_bytes());
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(&self.key_id.to_be_bytes());
    }

    /// Parses the clear header without opening the payload (what relays do). Returns the header
    /// and its length in bytes.
    pub fn parse(packet: &[u8]) -> Result<(Self, usize), VoicePacketError> {
        let byte = |i: usize| packet.get(i).copied().ok_or(VoicePacketError::Truncated);
        let version = byte(0)?;
        if version != VOICE_VERSION {
            return Err(VoicePacketError::UnknownVersion(version));
        }
        let flags = byte(1)?;
        if flags & !VoiceFlags::KNOWN != 0 {
            return Err(VoicePacketError::UnknownFlags(flags));
        }
        let count = usize::from(byte(2)?);
        if count == 0 || count > MAX_CHANNELS {
            return Err(VoicePacketError::ChannelCount(count));
        }
        let len = FIXED_HEADER + 8 * count;
        let header = packet.get(..len).ok_or(VoicePacketError::Truncated)?;
        let mut at = 3;
        let mut take = |n: usize| {
            let field = &header[at..at + n];
            at += n;
            field
        };
        let channels = (0..count)
            .map(|_| ChannelId(u64::from_be_bytes(take(8).try_into().unwrap_or_default())))
            .collect();
        let sender = SenderShortId(u32::from_be_bytes(take(4).try_into().unwrap_or_default()));
        let sequence = u16::from_be_bytes(take(2).try_into().unwrap_or_default());
        let timestamp = u32::from_be_bytes(take(4).try_into().unwrap_or_default());
        let key_id = u16::from_be_bytes(take(2).try_into().unwrap_or_default());
        Ok((
            Self {
                flags: VoiceFlags(flags),
                channels,
                sender,
                sequence,
                timestamp,
                key_id,
            },
            len,
        ))
    }

    fn nonce(&self) -> Nonce {
        let mut nonce = [0u8; 12];
        nonce[..4].copy_from_slice(&self.sender.0.to_be_bytes());
        nonce[4..8].copy_from_slice(&self.timestamp.to_be_bytes());
        nonce[8..10].copy_from_slice(&self.sequence.to_be_bytes());
        nonce[10..].copy_from_slice(&self.key_id.to_be_bytes());
        nonce.into()
    }
}

/// One sender key: seals this sender's frames; every listener allowed on the channel holds a
/// copy. Rotated on membership or role change and periodically (a new `id`).
#[derive(Clone)]
pub struct SenderKey {
    id: u16,
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for SenderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SenderKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl SenderKey {
    /// A key from its id and 32 secret bytes.
    pub fn new(id: u16, key: [u8; 32]) -> Self {
        Self {
            id,
            key: Zeroizing::new(key),
        }
    }

    /// A fresh random key.
    pub fn generate<R: rand::RngCore + rand::CryptoRng>(id: u16, rng: &mut R) -> Self {
        let mut key = [0u8; 32];
        rng.fill_bytes(&mut key);
        Self::new(id, key)
    }

    /// The key's id, carried in every packet it seals.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// The secret bytes, for handing the key to a listener inside a pairwise session.
    pub fn secret(&self) -> &[u8; 32] {
        &self.key
    }

    /// Builds a packet: `header` (its `key_id` is set to this key's) then the sealed `payload`.
    pub fn seal(&self, header: &VoiceHeader, payload: &[u8]) -> Result<Vec<u8>, VoicePacketError> {
        if header.channels.is_empty() || header.channels.len() > MAX_CHANNELS {
            return Err(VoicePacketError::ChannelCount(header.channels.len()));
        }
        if payload.len() > MAX_PAYLOAD {
            return Err(VoicePacketError::PayloadTooLarge(payload.len()));
        }
        let header = VoiceHeader {
            key_id: self.id,
            ..header.clone()
        };
        let mut packet = Vec::with_capacity(header.encoded_len() + payload.len() + TAG_LEN);
        header.write(&mut packet);
        let header_len = packet.len();
        packet.extend_from_slice(payload);
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&self.key[..]));
        let (aad, body) = packet.split_at_mut(header_len);
        let tag = cipher
            .encrypt_in_place_detached(&header.nonce(), aad, body)
            .map_err(|_| VoicePacketError::PayloadTooLarge(payload.len()))?;
        packet.extend_from_slice(&tag);
        Ok(packet)
    }

    /// Opens a packet sealed with this key: checks the header, then authenticates and decrypts
    /// the payload. Any change to header or payload fails with `Authentication`.
    pub fn open(&self, packet: &[u8]) -> Result<(VoiceHeader, Vec<u8>), VoicePacketError> {
        let (header, header_len) = VoiceHeader::parse(packet)?;
        if header.key_id != self.id {
            return Err(VoicePacketError::Authentication);
        }
        let sealed = &packet[header_len..];
        if sealed.len() < TAG_LEN {
            return Err(VoicePacketError::Truncated);
        }
        let (ciphertext, tag) = sealed.split_at(sealed.len() - TAG_LEN);
        if ciphertext.len() > MAX_PAYLOAD {
            return Err(VoicePacketError::PayloadTooLarge(ciphertext.len()));
        }
        let mut payload = ciphertext.to_vec();
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&self.key[..]));
        cipher
            .decrypt_in_place_detached(
                &header.nonce(),
                &packet[..header_len],
                &mut payload,
                Tag::from_slice(tag),
            )
            .map_err(|_| VoicePacketError::Authentication)?;
        Ok((header, payload))
    }
}
