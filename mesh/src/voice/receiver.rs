//! The receive side of voice: from a packet off the wire to a frame worth playing, or a counted
//! drop. Order matters: parse (malformed) → sender and key known (unknown sender) → replay
//! window check (replay) → authenticate (auth) → ACL on the charter (acl) → channels we listen
//! to (not listening) → record the sequence. A forged packet therefore never moves the replay
//! window, and a simulcast or multi-path copy of a frame is played once.

use super::packet::{SenderKey, SenderShortId, VoiceHeader, VoicePacketError};
use super::replay::ReplayWindow;
use crate::charter::{ChannelId, CharterState, Permissions};
use crate::e2ee::SenderKeyGrant;
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
}

impl DropCounts {
    fn count(&mut self, reason: DropReason) {
        let counter = match reason {
            DropReason::Malformed => &mut self.malformed,
            DropReason::UnknownSender => &mut self.unknown_sender,
            DropReason::Replay => &mut self.replay,
            DropReason::Auth => &mut self.auth,
            DropReason::Acl => &mut self.acl,
            DropReason::NotListening => &mut self.not_listening,
        };
        *counter += 1;
    }
}

/// A frame that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedFrame {
    /// Who spoke.
    pub sender: IdentityKey,
    /// The clear header.
    pub header: VoiceHeader,
    /// The channels of the header this node listens to and the sender may speak on.
    pub channels: Vec<ChannelId>,
    /// The Opus frame.
    pub payload: Vec<u8>,
}

struct KeyState {
    key: SenderKey,
    replay: ReplayWindow,
}

/// Keys a sender kept for rotation overlap: the newest two.
const KEYS_PER_SENDER: usize = 2;

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
    /// The two newest keys per sender are kept, so packets in flight across a rotation play.
    pub fn add_grant(&mut self, grant: &SenderKeyGrant) {
        let keys = self
            .senders
            .entry(SenderShortId::of(&grant.sender))
            .or_default()
            .entry(grant.sender)
            .or_default();
        keys.insert(
            grant.key_id,
            KeyState {
                key: grant.sender_key(),
                replay: ReplayWindow::new(),
            },
        );
        // Key ids increase with rotation (wrapping); drop the oldest beyond the overlap.
        while keys.len() > KEYS_PER_SENDER {
            let newest = grant.key_id;
            let oldest = keys
                .keys()
                .copied()
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

    /// Drops so far, by reason.
    pub fn drops(&self) -> &DropCounts {
        &self.drops
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
                Ok((header, payload)) => {
                    let sender = *sender;
                    let speakable: Vec<ChannelId> = header
                        .channels
                        .iter()
                        .copied()
                        .filter(|c| charter.may(&sender, *c, Permissions::SPEAK))
                        .filter(|c| charter.may(&self.local, *c, Permissions::LISTEN))
                        .collect();
                    // Authentic: record it so copies and replays are refused from now on.
                    state.replay.accept(header.sequence);
                    if speakable.is_empty() {
                        return Err(DropReason::Acl);
                    }
                    let channels: Vec<ChannelId> = speakable
                        .into_iter()
                        .filter(|c| listening.binary_search(c).is_ok())
                        .collect();
                    if channels.is_empty() {
                        return Err(DropReason::NotListening);
                    }
                    return Ok(ReceivedFrame {
                        sender,
                        header,
                        channels,
                        payload,
                    });
                }
                Err(VoicePacketError::Authentication) => outcome = Err(DropReason::Auth),
                Err(_) => outcome = Err(DropReason::Malformed),
            }
        }
        outcome
    }
}
