//! The driver as a relay: members' signed subscriptions in, enveloped voice out to the
//! subscribers through the mesh's [`Forwarder`](callsign_mesh::forward::Forwarder), which reads
//! clear headers only. A rented relay is no member: it holds no key and opens no packet.

use super::api::{ForwardingStats, NodeEvent};
use super::driver::Driver;
use crate::link::{IncomingDatagram, Links};
use callsign_keys::IdentityKey;
use callsign_mesh::charter::ChannelId;
use callsign_mesh::forward::{envelope, is_relay, ForwardDrop, Subscription, SubscriptionError};
use callsign_mesh::topology::Route;
use callsign_mesh::voice::VoiceHeader;
use libp2p::PeerId;
use std::collections::BTreeMap;
use std::time::Instant;

/// Forwarding-latency buckets: powers of two microseconds, 1 µs to 32 ms and above.
pub(super) const LATENCY_BUCKETS: usize = 16;

/// What a link's peer is to us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LinkRole {
    /// A fellow member: the whole control plane, E2EE session included.
    Member(IdentityKey),
    /// A rented relay (we are a member), or a member (we are a relay): charter sync, floor,
    /// subscriptions, presence; no E2EE session, no keys.
    Relay(IdentityKey),
}

impl LinkRole {
    pub(super) fn identity(self) -> IdentityKey {
        match self {
            Self::Member(k) | Self::Relay(k) => k,
        }
    }
}

impl Driver {
    /// A rented relay: we forward and the charter does not list us as a member.
    pub(super) fn serves_as_relay(&self) -> bool {
        self.forwarder.is_some() && !self.members.contains_key(&self.local_peer)
    }

    pub(super) fn link_role(&self, peer: &PeerId) -> Option<LinkRole> {
        if let Some(member) = self.members.get(peer) {
            return Some(if self.serves_as_relay() {
                LinkRole::Relay(*member)
            } else {
                LinkRole::Member(*member)
            });
        }
        // Members link to relays, and relays to each other (cascading).
        self.relays.get(peer).map(|k| LinkRole::Relay(*k))
    }

    /// A subscription from `peer` (checked: signature, signer is the link's peer, the charter
    /// lets it listen on every channel it names).
    pub(super) fn subscription(&mut self, peer: PeerId, body: &[u8]) {
        let Some(forwarder) = self.forwarder.as_mut() else {
            return;
        };
        let state = self.sync.charter().state();
        let result = Subscription::decode(body).and_then(|s| {
            if s.body.subscriber.peer_id() == peer {
                forwarder.subscribe(state, s)
            } else {
                Err(SubscriptionError::NotSender)
            }
        });
        match result {
            Ok(()) => self.cascade(),
            Err(e) => {
                self.subscriptions_refused += 1;
                tracing::debug!(%peer, %e, "subscription refused");
                self.emit(NodeEvent::SubscriptionRefused {
                    peer,
                    reason: e.to_string(),
                });
            }
        }
    }

    /// As a rented relay: subscribes at each linked fellow relay for the channels our members
    /// subscribed to that prefer both of us (the charter's channel policy), so packets sent
    /// through either reach the members of both.
    pub(super) fn cascade(&mut self) {
        if !self.serves_as_relay() {
            return;
        }
        let Some(forwarder) = &self.forwarder else {
            return;
        };
        let state = self.sync.charter().state();
        let mut desired: BTreeMap<IdentityKey, Vec<ChannelId>> = BTreeMap::new();
        for (subscriber, channels) in forwarder.subscriptions() {
            if is_relay(state, subscriber) {
                continue;
            }
            for channel in channels {
                let Some(info) = state.channels.get(channel) else {
                    continue;
                };
                let prefers = &info.policy.preferred_relays;
                if !prefers.contains(&self.local) {
                    continue;
                }
                for relay in prefers {
                    if *relay != self.local && self.peers.contains_key(&relay.peer_id()) {
                        desired.entry(*relay).or_default().push(*channel);
                    }
                }
            }
        }
        for channels in desired.values_mut() {
            channels.sort();
            channels.dedup();
        }
        self.subscribe_where(desired);
    }

    /// Forwards an enveloped `packet` that came in `datagram`; a member relay also plays it.
    pub(super) fn forward(&mut self, datagram: &IncomingDatagram, packet: &[u8], now: Instant) {
        let Some(forwarder) = self.forwarder.as_mut() else {
            tracing::debug!(peer = %datagram.peer, "enveloped voice, but we do not forward");
            return;
        };
        let from = self
            .members
            .get(&datagram.peer)
            .or(self.relays.get(&datagram.peer));
        let Some(from) = from.copied() else {
            forwarder.refuse_stranger(packet);
            return;
        };
        let state = self.sync.charter().state();
        let to = forwarder.forward(state, &from, packet, now);
        self.send_copies(to, packet, datagram.received_at);
        // A member relay plays what it forwards on channels routed through it; on mesh
        // channels (a circuit's forwarded copies) the sender sent it a direct copy too.
        let through_us = VoiceHeader::parse(packet).is_ok_and(|(header, _)| {
            header
                .channels
                .iter()
                .any(|c| self.routes.get(c) == Some(&Route::Relay(self.local)))
        });
        if through_us && !self.serves_as_relay() {
            self.receive_voice(datagram.peer, packet, now);
        }
    }

    /// Our own frame, when we are the channel's relay (a volunteering member).
    pub(super) fn forward_own(&mut self, packet: &[u8], now: Instant) {
        let Some(forwarder) = self.forwarder.as_mut() else {
            return;
        };
        let to = forwarder.forward(self.sync.charter().state(), &self.local, packet, now);
        self.send_copies(to, packet, now);
    }

    fn send_copies(
        &mut self,
        to: Result<Vec<IdentityKey>, ForwardDrop>,
        packet: &[u8],
        received_at: Instant,
    ) {
        let to = match to {
            Ok(to) => to,
            Err(reason) => {
                tracing::trace!(?reason, "not forwarded");
                return;
            }
        };
        // Framed once: every copy shares the buffer.
        let plain = Links::frame_datagram(packet);
        let mut enveloped = None;
        for subscriber in to {
            if subscriber == self.local {
                continue;
            }
            // A fellow relay forwards on what it gets: it gets it enveloped.
            let frame = if is_relay(self.sync.charter().state(), &subscriber) {
                enveloped
                    .get_or_insert_with(|| Links::frame_datagram(&envelope(packet)))
                    .clone()
            } else {
                plain.clone()
            };
            // A subscriber whose link just went is simply skipped.
            let _ = self.network.links.send_framed(&subscriber.peer_id(), frame);
        }
        let spent = super::driver::now().saturating_duration_since(received_at);
        let us = spent.as_micros().min(u128::from(u64::MAX)) as u64;
        let bucket = (64 - us.leading_zeros() as usize).min(LATENCY_BUCKETS - 1);
        self.forward_latency[bucket] += 1;
        self.forward_latency_sum_us += us;
    }

    pub(super) fn forwarding_stats(&self) -> Option<ForwardingStats> {
        let forwarder = self.forwarder.as_ref()?;
        let mut channels: BTreeMap<_, usize> = BTreeMap::new();
        for (_, subscribed) in forwarder.subscriptions() {
            for c in subscribed {
                *channels.entry(*c).or_default() += 1;
            }
        }
        Some(ForwardingStats {
            counts: forwarder.counts().clone(),
            subscribers: forwarder.subscriptions().count(),
            channels: channels.into_iter().collect(),
            subscriptions_refused: self.subscriptions_refused,
            latency_us: self.forward_latency.to_vec(),
            latency_sum_us: self.forward_latency_sum_us,
        })
    }
}
