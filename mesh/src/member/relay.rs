//! The relay role: members' signed subscriptions in, enveloped voice out to the subscribers
//! through the [`Forwarder`](crate::forward::Forwarder), which reads clear headers only. A
//! rented relay ([`Role::Relay`]) is no member: it holds no key and opens no packet; a member
//! that volunteers forwards too, and plays what is routed through it.

use super::{Event, Member, Output, Role};
use crate::charter::ChannelId;
use crate::forward::{
    is_relay, lock, Copies, ForwardDrop, ForwardView, Subscription, SubscriptionError,
};
use crate::topology::Route;
use crate::voice::VoiceHeader;
use callsign_keys::IdentityKey;
use libp2p_identity::PeerId;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

impl Member {
    /// A subscription from `peer` (checked: signature, signer is the link's peer, the charter
    /// lets it listen on every channel it names).
    pub(super) fn subscription(&mut self, peer: PeerId, body: &[u8]) {
        let Some(forwarder) = &self.forwarder else {
            return;
        };
        let state = self.sync.charter().state();
        let result = Subscription::decode(body).and_then(|s| {
            if s.body.subscriber.peer_id() == peer {
                lock(forwarder).subscribe(state, s)
            } else {
                Err(SubscriptionError::NotSender)
            }
        });
        match result {
            Ok(()) => self.cascade(),
            Err(e) => {
                self.subscriptions_refused += 1;
                tracing::debug!(%peer, %e, "subscription refused");
                self.emit(Event::SubscriptionRefused {
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
        if self.role != Role::Relay {
            return;
        }
        let Some(forwarder) = &self.forwarder else {
            return;
        };
        let state = self.sync.charter().state();
        let mut desired: BTreeMap<IdentityKey, Vec<ChannelId>> = BTreeMap::new();
        for (subscriber, channels) in lock(forwarder).subscriptions() {
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

    /// Forwards an enveloped `packet` that came from `peer`; a member relay also plays it.
    pub(super) fn forward(
        &mut self,
        peer: PeerId,
        packet: &[u8],
        received_at: Instant,
        now: Instant,
    ) {
        let Some(forwarder) = &self.forwarder else {
            tracing::debug!(%peer, "enveloped voice, but we do not forward");
            return;
        };
        let from = self.members.get(&peer).or(self.relays.get(&peer));
        let charter = self.sync.charter();
        let copies = lock(forwarder).forward_copies(
            charter.state(),
            charter.len() as u64,
            from,
            packet,
            now,
            &self.local,
        );
        self.send_copies(copies, packet, received_at);
        // A member relay plays what it forwards on channels routed through it; on mesh
        // channels (a circuit's forwarded copies) the sender sent it a direct copy too.
        let through_us = VoiceHeader::parse(packet).is_ok_and(|(header, _)| {
            header
                .channels
                .iter()
                .any(|c| self.routes.get(c) == Some(&Route::Relay(self.local)))
        });
        if through_us && self.role != Role::Relay {
            self.receive_voice(peer, packet, now);
        }
    }

    /// Our own frame, when we are the channel's relay (a volunteering member).
    pub(super) fn forward_own(&mut self, packet: &[u8], now: Instant) {
        let Some(forwarder) = &self.forwarder else {
            return;
        };
        let charter = self.sync.charter();
        let copies = lock(forwarder).forward_copies(
            charter.state(),
            charter.len() as u64,
            Some(&self.local),
            packet,
            now,
            &self.local,
        );
        self.send_copies(copies, packet, now);
    }

    fn send_copies(
        &mut self,
        copies: Result<Copies, ForwardDrop>,
        packet: &[u8],
        received_at: Instant,
    ) {
        // A fellow relay forwards on what it gets: it gets it enveloped.
        let Copies { plain, enveloped } = match copies {
            Ok(copies) => copies,
            Err(reason) => {
                tracing::trace!(?reason, "not forwarded");
                return;
            }
        };
        self.outputs.push_back(Output::Forward {
            packet: packet.to_vec(),
            plain,
            enveloped,
            received_at,
        });
    }

    /// As a rented relay: publishes the charter the link layer's fast path checks voice
    /// against, once per charter generation.
    pub(super) fn publish_forward_view(&mut self) {
        if self.role != Role::Relay || self.forwarder.is_none() {
            return;
        }
        let charter = self.sync.charter();
        let generation = charter.len() as u64;
        if self.forward_view == Some(generation) {
            return;
        }
        self.forward_view = Some(generation);
        let senders = self
            .members
            .iter()
            .chain(&self.relays)
            .map(|(p, k)| (*p, *k))
            .collect();
        let view = ForwardView::new(charter.state().clone(), generation, senders, self.local);
        self.outputs.push_back(Output::ForwardView(Arc::new(view)));
    }
}
