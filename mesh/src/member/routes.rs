//! Routes, member side: which channels travel through which relay ([`RoutingView`] decides),
//! our subscriptions at those relays, links to the charter's rented relays, and the copies a
//! frame sends to relays.
//!
//! On a relay route a sender seals one packet per channel (each channel has its own key, and a
//! relay forwards a packet to every subscriber of its channels) and sends it once, enveloped, to
//! the relay. For [`SWITCH_OVERLAP`] after a channel moves to a relay the sender also keeps
//! the direct copies going, so listeners whose subscription is still in flight miss nothing
//! (receivers drop the duplicate by sequence number). The listener does the same on its side:
//! for [`LEAVE_OVERLAP`] after a channel leaves a relay it stays subscribed there, so a new
//! route that does not deliver at first (a subscription still in flight, a relay that lost
//! it) costs no audio; one that stays silent is the path check's (`crate::path`) to repair.

use super::{Event, Member, Output, Role};
use crate::charter::{ChannelId, Permissions};
use crate::control::ControlMessage;
use crate::forward::{envelope, Subscription, SubscriptionBody};
use crate::presence::PresenceRecord;
use crate::routing::RoutingView;
use crate::topology::Route;
use crate::voice::VoiceHeader;
use callsign_keys::IdentityKey;
use libp2p_identity::PeerId;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// How long a sender keeps sending direct copies after a channel moved to a relay.
pub const SWITCH_OVERLAP: Duration = Duration::from_millis(500);

/// How long a listener stays subscribed at the relay a channel just left: a subscription's
/// round trip at the new one with room to spare. Should the new one stay silent, the path
/// check finds it out once the old one stops.
pub const LEAVE_OVERLAP: Duration = Duration::from_secs(2);

/// Presence news is folded into the routes at most this often: in a large org records arrive
/// by the hundred per second, and the answer rarely changes. Link changes re-plan at once.
pub const REPLAN_INTERVAL: Duration = Duration::from_millis(200);

impl Member {
    /// Relays we hold a control link to: the charter's rented ones and volunteering members.
    pub(super) fn linked_relays(&self) -> BTreeSet<IdentityKey> {
        let state = self.sync.charter().state();
        let volunteers = self
            .presence
            .present()
            .filter(|r| r.body.relay.public)
            .map(|r| r.body.peer);
        state
            .relays
            .keys()
            .copied()
            .chain(volunteers)
            .filter(|k| self.peers.contains_key(&k.peer_id()))
            .collect()
    }

    /// RTT to each linked relay, for our presence record.
    pub(super) fn relay_rtts(&self) -> Vec<(IdentityKey, u32)> {
        self.linked_relays()
            .into_iter()
            .filter_map(|k| {
                let rtt = self.links.get(&k.peer_id())?.rtt?;
                Some((k, rtt.as_millis().min(u128::from(u32::MAX)) as u32))
            })
            .collect()
    }

    /// Channels we listen to through a relay, for our presence record.
    pub(super) fn advertised_routes(&self) -> Vec<(ChannelId, IdentityKey)> {
        self.routes
            .iter()
            .filter(|(c, _)| self.listening.binary_search(c).is_ok())
            .filter_map(|(c, r)| match r {
                Route::Relay(k) => Some((*c, *k)),
                Route::Mesh => None,
            })
            .collect()
    }

    /// Recomputes every channel's route; announces and re-subscribes on a change. Called when
    /// presence, links, the charter or our listening change, and on the presence timer.
    pub(super) fn replan(&mut self, now: Instant) {
        self.replan_due = None;
        self.replanned = now;
        if self.role == Role::Relay {
            return;
        }
        let linked = self.linked_relays();
        let routes = RoutingView {
            state: self.sync.charter().state(),
            presence: &self.presence,
            local: &self.local,
            listening: &self.listening,
            linked: &linked,
            current: &self.routes,
        }
        .routes(&self.topology);
        // Channels a deaf listener took off their relay (`crate::path`, the ladder's top rung).
        let routes: BTreeMap<ChannelId, Route> = routes
            .into_iter()
            .map(|(c, r)| match r {
                Route::Relay(_) if self.path.mesh_fallback(c, now) => (c, Route::Mesh),
                r => (c, r),
            })
            .collect();
        if routes != self.routes {
            for (channel, route) in &routes {
                if self.routes.get(channel) == Some(route) {
                    continue;
                }
                if matches!(route, Route::Relay(_)) {
                    self.route_switched.insert(*channel, now + SWITCH_OVERLAP);
                }
                if let Some(Route::Relay(left)) = self.routes.get(channel) {
                    self.route_leaving
                        .insert(*channel, (*left, now + LEAVE_OVERLAP));
                }
                self.emit(Event::RouteChanged {
                    channel: *channel,
                    route: *route,
                });
            }
            self.routes = routes;
            self.announce_presence(now);
        }
        self.route_switched.retain(|_, until| *until > now);
        self.update_subscriptions(now);
    }

    /// A channel's overlap at the relay it left ended: unsubscribe there.
    pub(super) fn leave_timeouts(&mut self, now: Instant) {
        let before = self.route_leaving.len();
        self.route_leaving.retain(|_, (_, until)| *until > now);
        if self.route_leaving.len() != before {
            self.update_subscriptions(now);
        }
    }

    /// Presence changed: re-plan within [`REPLAN_INTERVAL`] of the last plan.
    pub(super) fn replan_soon(&mut self) {
        if self.replan_due.is_none() && self.role != Role::Relay {
            self.replan_due = Some(self.replanned + REPLAN_INTERVAL);
        }
    }

    /// Tells each relay the channels we listen to through it, when that changed: the channels
    /// routed through it, and the mesh channels on which a speaker reaches us only through a
    /// circuit on it (its voice then comes forwarded, as datagrams).
    pub(super) fn update_subscriptions(&mut self, now: Instant) {
        let mut desired: BTreeMap<IdentityKey, Vec<ChannelId>> = BTreeMap::new();
        let state = self.sync.charter().state();
        for channel in &self.listening {
            // Make before break: the relay the channel just left keeps sending a while.
            if let Some((left, until)) = self.route_leaving.get(channel) {
                if *until > now && *left != self.local {
                    desired.entry(*left).or_default().push(*channel);
                }
            }
            match self.routes.get(channel) {
                Some(Route::Relay(relay)) if *relay != self.local => {
                    desired.entry(*relay).or_default().push(*channel);
                }
                Some(Route::Relay(_)) => {}
                _ => {
                    for speaker in self.presence.present().map(|r| r.body.peer) {
                        if speaker == self.local
                            || !state.may(&speaker, *channel, Permissions::SPEAK)
                        {
                            continue;
                        }
                        if let Some(relay) = self.circuit_forwarder(&speaker.peer_id()) {
                            desired.entry(relay).or_default().push(*channel);
                        }
                    }
                }
            }
        }
        // Direct copies we asked a talker for come through the relay of its circuit to us,
        // which forwards them only where we subscribe (`crate::path`).
        let asked: Vec<(IdentityKey, Vec<ChannelId>)> = self
            .path
            .direct_asked(now)
            .map(|(t, c)| (*t, c.to_vec()))
            .collect();
        for (talker, channels) in asked {
            if let Some(relay) = self.circuit_forwarder(&talker.peer_id()) {
                desired.entry(relay).or_default().extend(channels);
            }
        }
        for channels in desired.values_mut() {
            channels.sort();
            channels.dedup();
        }
        self.subscribe_where(desired);
    }

    /// Sends each relay in `desired` (or held before) a subscription where its channels
    /// changed.
    pub(super) fn subscribe_where(&mut self, mut desired: BTreeMap<IdentityKey, Vec<ChannelId>>) {
        let relays: BTreeSet<IdentityKey> = desired
            .keys()
            .chain(self.subscribed.keys())
            .copied()
            .collect();
        for relay in relays {
            let want = desired.remove(&relay).unwrap_or_default();
            if self.subscribed.get(&relay) == Some(&want) {
                continue;
            }
            if !self.subscribe_at(relay, want.clone()) {
                self.subscribed.remove(&relay);
                continue;
            }
            if want.is_empty() {
                self.subscribed.remove(&relay);
            } else {
                self.subscribed.insert(relay, want);
            }
        }
    }

    /// Sends `relay` a signed subscription to `channels` (empty: unsubscribe). False when we
    /// hold no control link to it.
    pub(super) fn subscribe_at(&mut self, relay: IdentityKey, channels: Vec<ChannelId>) -> bool {
        let Some(control) = self.peers.get_mut(&relay.peer_id()) else {
            return false;
        };
        self.subscription_seq += 1;
        let body = SubscriptionBody {
            org: self.sync.charter().org(),
            subscriber: self.local,
            seq: self.subscription_seq,
            channels,
        };
        match Subscription::sign(&self.keys.identity, body) {
            Ok(s) => control.queue(ControlMessage::Subscribe(s.encode())),
            Err(e) => tracing::warn!(%e, "signing a subscription"),
        }
        true
    }

    /// Whether `channel` goes direct to this listener: the channel is on the mesh or just moved
    /// to a relay, or the listener gets nothing from our relay because it routes the channel
    /// otherwise. Routes are planned by each member from what it has heard; a member that
    /// missed a presence record, or lost its link to the relay, may plan the mesh (or another
    /// relay) while we send to one, and without this it would hear nothing until the views
    /// agree again. A split costs the sender a few direct copies, never the listener its
    /// audio.
    pub(super) fn goes_direct(
        &self,
        channel: ChannelId,
        listener: &PresenceRecord,
        now: Instant,
    ) -> bool {
        let Some(Route::Relay(ours)) = self.routes.get(&channel) else {
            return true;
        };
        // A listener deaf to us asked for direct copies (`crate::path`).
        if self.path.direct_copy_to(&listener.body.peer, now) {
            return true;
        }
        if self.route_switched.get(&channel).is_some_and(|t| *t > now) {
            return true;
        }
        let theirs = listener
            .body
            .routes
            .binary_search_by_key(&channel, |(c, _)| *c)
            .ok()
            .map(|i| listener.body.routes[i].1);
        let cascade = |k: &IdentityKey| {
            self.sync
                .charter()
                .state()
                .channels
                .get(&channel)
                .is_some_and(|info| info.policy.preferred_relays.contains(k))
        };
        match theirs {
            Some(theirs) => theirs != *ours && !(cascade(&theirs) && cascade(ours)),
            None => true,
        }
    }

    /// The forwarding relay behind our circuit to `peer`, if we hold a control link to it and
    /// it forwards voice: a rented relay, or a member volunteering uplink. A member that only
    /// offers circuits (a rendezvous) forwards none: voice then rides the circuit's stream.
    pub(super) fn circuit_forwarder(&self, peer: &PeerId) -> Option<IdentityKey> {
        let relay = self.links.get(peer)?.circuit.as_ref()?;
        if !self.peers.contains_key(relay) {
            return None;
        }
        if let Some(rented) = self.relays.get(relay) {
            return Some(*rented);
        }
        let member = self.members.get(relay)?;
        self.presence
            .get(member)
            .is_some_and(|r| r.body.relay.spare_uplink_kbps > 0)
            .then_some(*member)
    }

    /// Sends a frame's relay copies: for each (channel, relay) in `via`, one packet sealed with
    /// that channel's key, enveloped, to that relay. Our own forwarder takes it when we are the
    /// relay.
    pub(super) fn send_via_relays(
        &mut self,
        header: &VoiceHeader,
        via: &BTreeSet<(ChannelId, IdentityKey)>,
        payload: &[u8],
        now: Instant,
    ) {
        for (channel, relay) in via {
            let (channel, relay) = (channel, *relay);
            let Some(key) = self.schedule.channel_key(*channel, now).cloned() else {
                continue;
            };
            let header = VoiceHeader {
                channels: vec![*channel],
                key_id: key.id(),
                ..header.clone()
            };
            let packet = match key.seal(&header, payload) {
                Ok(packet) => packet,
                Err(e) => {
                    self.emit(Event::Warning(format!("seal: {e}")));
                    continue;
                }
            };
            if relay == self.local {
                self.forward_own(&packet, now);
            } else {
                self.outputs.push_back(Output::Datagram {
                    peers: vec![relay.peer_id()],
                    bytes: envelope(&packet),
                });
            }
        }
    }
}
