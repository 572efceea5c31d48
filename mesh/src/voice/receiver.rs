//! The receive side of voice: from a packet off the wire to a frame worth playing, or a counted
//! drop. Order matters: parse (malformed) → sender and key known (unknown sender) → replay
//! window check (replay) → authenticate (auth) → ACL on the charter (acl) → channels we listen
//! to (not listening) → record the sequence. A forged packet therefore never moves the replay
//! window, and a simulcast or multi-path copy of a frame is played once.
//!
//! Keys come in two kinds (see `keyschedule`): a channel key opens only frames that name its
//! channel; a whisper key (granted to us alone) opens only frames flagged as whispers, which
//! play whether or not we listen to the channel they are carried under.

use super::packet::{SenderKey, SenderShortId, VoiceFlags, VoiceHeader, VoicePacketError};
use super::replay::ReplayWindow;
use crate::charter::{ChannelId, CharterState, Permissions};
use crate::e2ee::SenderKeyGrant;
use crate::spatial::{Point, POINT_LEN};
use callsign_keys::IdentityKey;
use std::collections::BTreeMap;

/// Why a packet was not played.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DropReason {
    /// Not a voice packet this version understands.
    Malformed,
    /// No key from this sender (no grant yet, or a key id we never got).
    UnknownSender,
    /// Seen before (replay, or a second copy of a simulcast or multi-path frame).
    Replay,
    /// Did not authenticate under the sender's key.
    Auth,
    /// The charter does not let the sender speak (or us listen) on any of its channels.
    Acl,
    /// Valid, but for channels we do not listen to.
    NotListening,
    /// Only for proximity channels where the talker is out of our reach (or unplaced).
    OutOfRange,
}

/// Drops by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DropCounts {
    /// See [`DropReason::Malformed`].
    pub malformed: u64,
    /// See [`DropReason::UnknownSender`].
    pub unknown_sender: u64,
    /// See [`DropReason::Replay`].
    pub replay: u64,
    /// See [`DropReason::Auth`].
    pub auth: u64,
    /// See [`DropReason::Acl`].
    pub acl: u64,
    /// See [`DropReason::NotListening`].
    pub not_listening: u64,
    /// See [`DropReason::OutOfRange`].
    #[serde(default)]
    pub out_of_range: u64,
}

impl DropCounts {
    /// Adds `other`'s counts to these (totals over nodes or runs).
    pub fn add(&mut self, other: &DropCounts) {
        self.malformed += other.malformed;
        self.unknown_sender += other.unknown_sender;
        self.replay += other.replay;
        self.auth += other.auth;
        self.acl += other.acl;
        self.not_listening += other.not_listening;
        self.out_of_range += other.out_of_range;
    }

    pub(crate) fn count(&mut self, reason: DropReason) {
        let counter = match reason {
            DropReason::Malformed => &mut self.malformed,
            DropReason::UnknownSender => &mut self.unknown_sender,
            DropReason::Replay => &mut self.replay,
            DropReason::Auth => &mut self.auth,
            DropReason::Acl => &mut self.acl,
            DropReason::NotListening => &mut self.not_listening,
            DropReason::OutOfRange => &mut self.out_of_range,
        };
        *counter += 1;
    }
}

/// A frame that passed every check.
#[derive(Clone, Debug, PartialEq)]
pub struct ReceivedFrame {
    /// Who spoke.
    pub sender: IdentityKey,
    /// The clear header.
    pub header: VoiceHeader,
    /// The channels of the header this node listens to and the sender may speak on (for a
    /// whisper: the channel it is carried under).
    pub channels: Vec<ChannelId>,
    /// A whisper addressed to this node.
    pub whisper: bool,
    /// The Opus frame.
    pub payload: Vec<u8>,
    /// Where the talker was ([`VoiceFlags::POSITIONED`]).
    pub position: Option<Point>,
}

struct KeyState {
    key: SenderKey,
    /// The channels the key is for; empty for a whisper key.
    channels: Vec<ChannelId>,
    replay: ReplayWindow,
}

/// Keys kept per sender and purpose (one channel, or whisper) for rotation overlap.
const KEYS_PER_SLOT: usize = 2;

/// See the module documentation.
pub struct VoiceReceiver {
    local: IdentityKey,
    /// Per short id, each sender holding it and its keys by id.
    senders: BTreeMap<SenderShortId, BTreeMap<IdentityKey, BTreeMap<u16, KeyState>>>,
    drops: DropCounts,
}

impl VoiceReceiver {
    /// A receiver for the node `local`.
    pub fn new(local: IdentityKey) -> Self {
        Self {
            local,
            senders: BTreeMap::new(),
            drops: DropCounts::default(),
        }
    }

    /// Installs a sender key from a verified grant (see `e2ee::PairSession::accept_grant`).
    /// Per purpose (a channel, or whisper) the two newest keys are kept, so packets in flight
    /// across a rotation play. A key id already held is left alone, replay window included, so
    /// a repeated grant cannot reopen the window.
    pub fn add_grant(&mut self, grant: &SenderKeyGrant) {
        let keys = self
            .senders
            .entry(SenderShortId::of(&grant.sender))
            .or_default()
            .entry(grant.sender)
            .or_default();
        if keys.contains_key(&grant.key_id) {
            return;
        }
        let mut channels = grant.channels.clone();
        channels.sort();
        channels.dedup();
        keys.insert(
            grant.key_id,
            KeyState {
                key: grant.sender_key(),
                channels: channels.clone(),
                replay: ReplayWindow::new(),
            },
        );
        // Key ids increase with rotation (wrapping); drop the oldest of this slot beyond the
        // overlap.
        let newest = grant.key_id;
        loop {
            let slot: Vec<u16> = keys
                .iter()
                .filter(|(_, k)| k.channels == channels)
                .map(|(id, _)| *id)
                .collect();
            if slot.len() <= KEYS_PER_SLOT {
                break;
            }
            let oldest = slot
                .into_iter()
                .max_by_key(|id| newest.wrapping_sub(*id))
                .unwrap_or(newest);
            keys.remove(&oldest);
        }
    }

    /// Forgets a sender (left the org, or its session ended).
    pub fn remove_sender(&mut self, sender: &IdentityKey) {
        if let Some(holders) = self.senders.get_mut(&SenderShortId::of(sender)) {
            holders.remove(sender);
        }
    }

    /// Sender keys held (others' audio this node can open).
    pub fn keys_held(&self) -> usize {
        self.senders
            .values()
            .flat_map(|holders| holders.values())
            .map(BTreeMap::len)
            .sum()
    }

    /// Drops so far, by reason.
    pub fn drops(&self) -> &DropCounts {
        &self.drops
    }

    /// Counts a drop decided after [`receive`](Self::receive) (proximity reach).
    pub fn count_drop(&mut self, reason: DropReason) {
        self.drops.count(reason);
    }

    /// Runs a packet through every check. `listening` is the set of channels this node listens
    /// to, sorted.
    pub fn receive(
        &mut self,
        charter: &CharterState,
        listening: &[ChannelId],
        packet: &[u8],
    ) -> Result<ReceivedFrame, DropReason> {
        let result = self.check(charter, listening, packet);
        if let Err(reason) = result {
            self.drops.count(reason);
        }
        result
    }

    fn check(
        &mut self,
        charter: &CharterState,
        listening: &[ChannelId],
        packet: &[u8],
    ) -> Result<ReceivedFrame, DropReason> {
        let (header, _) = VoiceHeader::parse(packet).map_err(|_| DropReason::Malformed)?;
        let holders = self
            .senders
            .get_mut(&header.sender)
            .ok_or(DropReason::UnknownSender)?;
        let mut outcome = Err(DropReason::UnknownSender);
        for (sender, keys) in holders.iter_mut() {
            let Some(state) = keys.get_mut(&header.key_id) else {
                continue;
            };
            if !state.replay.check(header.sequence) {
                outcome = Err(DropReason::Replay);
                continue;
            }
            match state.key.open(packet) {
                Ok((header, mut payload)) => {
                    let sender = *sender;
                    // Authentic: record it so copies and replays are refused from now on.
                    state.replay.accept(header.sequence);
                    let whisper = header.flags.contains(VoiceFlags::WHISPER);
                    let key_fits = if whisper {
                        state.channels.is_empty()
                    } else {
                        header
                            .channels
                            .iter()
                            .any(|c| state.channels.binary_search(c).is_ok())
                    };
                    if !key_fits {
                        return Err(DropReason::Acl);
                    }
                    let needed = if whisper {
                        Permissions::WHISPER
                    } else {
                        Permissions::SPEAK
                    };
                    // A linked channel is checked like a keyed one: the sender must speak
                    // there, we must hear there (listen, or monitor).
                    let allowed: Vec<ChannelId> = header
                        .channels
                        .iter()
                        .copied()
                        .filter(|c| charter.channels.contains_key(c))
                        .filter(|c| charter.may(&sender, *c, needed))
                        .filter(|c| whisper || charter.may_hear(&self.local, *c))
                        .collect();
                    if allowed.is_empty() {
                        return Err(DropReason::Acl);
                    }
                    let channels: Vec<ChannelId> = if whisper {
                        allowed
                    } else {
                        allowed
                            .into_iter()
                            .filter(|c| listening.binary_search(c).is_ok())
                            .collect()
                    };
                    if channels.is_empty() {
                        return Err(DropReason::NotListening);
                    }
                    let position = if header.flags.contains(VoiceFlags::POSITIONED) {
                        let at = payload
                            .len()
                            .checked_sub(POINT_LEN)
                            .ok_or(DropReason::Malformed)?;
                        let point =
                            Point::from_bytes(&payload[at..]).ok_or(DropReason::Malformed)?;
                        payload.truncate(at);
                        Some(point)
                    } else {
                        None
                    };
                    return Ok(ReceivedFrame {
                        sender,
                        header,
                        channels,
                        whisper,
                        payload,
                        position,
                    });
                }
                Err(VoicePacketError::Authentication) => outcome = Err(DropReason::Auth),
                Err(_) => outcome = Err(DropReason::Malformed),
            }
        }
        outcome
    }
}
