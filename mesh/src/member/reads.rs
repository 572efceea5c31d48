//! What the runtime reads of the member: the charter, links, counters and the machines inside
//! (receiver, key schedule, floor, path check, forwarder).

use super::{LinkKind, Member, Role};
use crate::charter::{ChannelId, CharterState};
use crate::floor::FloorControl;
use crate::forward::{Forwarder, SharedForwarder};
use crate::topology::Route;
use crate::voice::{KeySchedule, VoiceReceiver};
use callsign_keys::IdentityKey;
use libp2p_identity::PeerId;
use std::collections::BTreeMap;
use std::sync::MutexGuard;

impl Member {
    /// The charter's state.
    pub fn state(&self) -> &CharterState {
        self.sync.charter().state()
    }

    /// Charter ops held.
    pub fn charter_ops(&self) -> usize {
        self.sync.charter().len()
    }

    /// Our own name, as we announce it.
    pub fn own_name(&self) -> &str {
        &self.display_name
    }

    /// Whether `peer` is one of the charter's rented relays (a member or not).
    pub fn is_charter_relay(&self, peer: &PeerId) -> bool {
        self.relays.contains_key(peer)
            || self
                .members
                .get(peer)
                .is_some_and(|key| self.state().relays.contains_key(key))
    }

    /// What we are to the org.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The name `peer` announces (empty if unknown).
    pub fn display_name(&self, peer: &IdentityKey) -> String {
        self.presence
            .get(peer)
            .map(|r| r.body.display_name.clone())
            .unwrap_or_default()
    }

    /// Linked peers and how, in peer order.
    pub fn links(&self) -> impl Iterator<Item = (&PeerId, LinkKind)> {
        self.links.iter().map(|(p, l)| (p, l.kind))
    }

    /// How `peer` is linked, if it is.
    pub fn link(&self, peer: &PeerId) -> Option<LinkKind> {
        self.links.get(peer).map(|l| l.kind)
    }

    /// The voice receiver (drop counts, keys held).
    pub fn receiver(&self) -> &VoiceReceiver {
        &self.receiver
    }

    /// The key schedule (rotations).
    pub fn schedule(&self) -> &KeySchedule {
        &self.schedule
    }

    /// Floor control (the floor of every half-duplex channel).
    pub fn floor(&self) -> &FloorControl {
        &self.floor
    }

    /// The forwarder, when we forward.
    pub fn forwarder(&self) -> Option<MutexGuard<'_, Forwarder>> {
        self.forwarder.as_ref().map(crate::forward::lock)
    }

    /// The forwarder as the link layer shares it, when we forward: a rented relay forwards
    /// what arrives on the voice plane there, with the [`Output::ForwardView`]s we publish.
    pub fn shared_forwarder(&self) -> Option<SharedForwarder> {
        self.forwarder.clone()
    }

    /// Subscriptions we refused as a relay.
    pub fn subscriptions_refused(&self) -> u64 {
        self.subscriptions_refused
    }

    /// Frames we sent each member, per channel (`None`: whispers).
    pub fn sent(&self) -> &BTreeMap<(IdentityKey, Option<ChannelId>), u64> {
        &self.sent
    }

    /// Channel frames we sent each member, once per frame (a simulcast reaching two of its
    /// channels counts once).
    pub fn sent_once(&self) -> &BTreeMap<IdentityKey, u64> {
        &self.sent_once
    }

    /// Transmissions refused at the sender.
    pub fn ptt_denied(&self) -> u64 {
        self.ptt_denied
    }

    /// The voice path's check: repairs by cause, talkers we cannot hear.
    pub fn path(&self) -> &crate::path::PathCheck {
        &self.path
    }

    /// Frames dropped on receipt because their sender did not hold the floor.
    pub fn floor_drops(&self) -> u64 {
        self.floor_drops
    }

    /// How each channel we listen or speak on travels.
    pub fn routes(&self) -> &BTreeMap<ChannelId, Route> {
        &self.routes
    }
}
