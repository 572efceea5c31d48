//! Mesh fan-out: who gets a frame, under which key. ACLs are checked here at the sender (a
//! member never transmits where the charter does not let it speak) and again by every receiver.
//!
//! A frame goes once to each present member who may and does listen to at least one of its
//! channels and holds our key for that channel, sealed with the key of the first such channel in
//! the frame's order. A member of several simulcast channels therefore gets one copy.

use super::keyschedule::KeySchedule;
use super::packet::SenderKey;
use crate::charter::{ChannelId, CharterState, Permissions};
use crate::presence::PresenceTable;
use callsign_keys::IdentityKey;
use std::time::Instant;

/// One copy of a frame: to whom, sealed with which key.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The listener.
    pub peer: IdentityKey,
    /// The key to seal its copy with.
    pub key: SenderKey,
}

/// Splits requested transmit channels into those the charter lets `local` speak on and those it
/// refuses, each in request order without repeats.
pub fn speakable(
    charter: &CharterState,
    local: &IdentityKey,
    requested: &[ChannelId],
) -> (Vec<ChannelId>, Vec<ChannelId>) {
    let mut allowed = Vec::new();
    let mut denied = Vec::new();
    for channel in requested {
        if allowed.contains(channel) || denied.contains(channel) {
            continue;
        }
        if charter.channels.contains_key(channel)
            && charter.may(local, *channel, Permissions::SPEAK)
        {
            allowed.push(*channel);
        } else {
            denied.push(*channel);
        }
    }
    (allowed, denied)
}

/// The copies of one frame on `channels` (already checked with [`speakable`]), in peer order.
pub fn channel_deliveries(
    charter: &CharterState,
    presence: &PresenceTable,
    keys: &KeySchedule,
    local: &IdentityKey,
    channels: &[ChannelId],
    now: Instant,
) -> Vec<Delivery> {
    let mut out = Vec::new();
    for record in presence.present() {
        let peer = record.body.peer;
        if peer == *local {
            continue;
        }
        let chosen = channels
            .iter()
            .find(|c| record.hears(charter, **c) && keys.is_granted(**c, &peer));
        if let Some(key) = chosen.and_then(|c| keys.channel_key(*c, now)) {
            out.push(Delivery {
                peer,
                key: key.clone(),
            });
        }
    }
    out
}

/// Why a whisper cannot be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WhisperError {
    /// No channel where we may whisper and the target may listen.
    #[error("no channel lets us whisper to that member")]
    NotAllowed,
    /// The target holds no whisper key from us yet (no session).
    #[error("no end-to-end session with that member yet")]
    NoSession,
}

/// The channel a whisper to `target` is carried under (the first, in id order, where we may
/// whisper and the target may listen) and its key.
pub fn whisper_delivery(
    charter: &CharterState,
    keys: &KeySchedule,
    local: &IdentityKey,
    target: &IdentityKey,
    now: Instant,
) -> Result<(ChannelId, Delivery), WhisperError> {
    let channel = charter
        .channels
        .keys()
        .copied()
        .find(|c| {
            charter.may(local, *c, Permissions::WHISPER)
                && charter.may(target, *c, Permissions::LISTEN)
        })
        .ok_or(WhisperError::NotAllowed)?;
    let key = keys
        .whisper_key(target, now)
        .ok_or(WhisperError::NoSession)?;
    Ok((
        channel,
        Delivery {
            peer: *target,
            key: key.clone(),
        },
    ))
}
