//! A rented relay's forwarding outside the member: what the link layer needs to forward a
//! packet where it arrives, without a hop to the task that runs the [`Member`](crate::member::Member).
//!
//! The relay's [`Forwarder`] is shared ([`SharedForwarder`]) between the member, which feeds it
//! subscriptions and the packets that arrive as QUIC datagrams, and the link layer, which
//! forwards the packets that arrive on the voice plane. Both go through the one forwarder, so a
//! sender has one rate, one replay window and one set of counters whichever way its packets
//! come. The member publishes a [`ForwardView`] (the charter it checks against, and who each
//! peer is) whenever the charter changes; the link layer forwards with the latest one.

use super::{ForwardDrop, Forwarder, Recipient};
use crate::charter::CharterState;
use callsign_keys::IdentityKey;
use libp2p_identity::PeerId;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// A relay's forwarder, shared by the member and the link layer's fast path.
pub type SharedForwarder = Arc<Mutex<Forwarder>>;

/// Locks a shared forwarder; a panic elsewhere while it was held leaves plain data behind.
pub fn lock(forwarder: &SharedForwarder) -> MutexGuard<'_, Forwarder> {
    forwarder.lock().unwrap_or_else(|e| e.into_inner())
}

/// The copies a forwarded packet makes (shared: a talker's next packet makes the same).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Copies {
    /// Subscribers: the packet as it came.
    pub plain: Arc<[PeerId]>,
    /// Fellow relays (cascading): the packet enveloped, so they forward it on.
    pub enveloped: Arc<[PeerId]>,
}

impl Copies {
    /// Splits the forwarder's recipients, leaving out `local` (a member relay's own copy).
    pub fn split(to: &[Recipient], local: &IdentityKey) -> Self {
        let mut plain = Vec::with_capacity(to.len());
        let mut enveloped = Vec::new();
        for recipient in to {
            if recipient.key == *local {
                continue;
            }
            if recipient.relay {
                enveloped.push(recipient.peer);
            } else {
                plain.push(recipient.peer);
            }
        }
        Self {
            plain: plain.into(),
            enveloped: enveloped.into(),
        }
    }
}

/// What the fast path checks packets against: the charter at one generation and who each
/// member and fellow relay is by peer id.
#[derive(Clone, Debug)]
pub struct ForwardView {
    state: Arc<CharterState>,
    generation: u64,
    senders: BTreeMap<PeerId, IdentityKey>,
    local: IdentityKey,
}

impl ForwardView {
    /// A view of `state` at `generation` (its op count) for the relay `local`: `senders` names
    /// the org's members and relays by peer id.
    pub fn new(
        state: CharterState,
        generation: u64,
        senders: BTreeMap<PeerId, IdentityKey>,
        local: IdentityKey,
    ) -> Self {
        Self {
            state: Arc::new(state),
            generation,
            senders,
            local,
        }
    }

    /// The charter generation this view holds.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Who gets `packet` (enveloped voice, envelope removed) that `peer` sent over an
    /// authenticated link, received at `now`: the same checks and counts as the member's path.
    pub fn forward(
        &self,
        forwarder: &mut Forwarder,
        peer: &PeerId,
        packet: &[u8],
        now: Instant,
    ) -> Result<Copies, ForwardDrop> {
        forwarder.forward_copies(
            &self.state,
            self.generation,
            self.senders.get(peer),
            packet,
            now,
            &self.local,
        )
    }
}
