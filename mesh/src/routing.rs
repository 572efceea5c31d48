//! One member's routes: for each channel it listens or speaks on, the [`topology::plan`]
//! inputs gathered from what every member shares (the charter and presence), and the answer.
//!
//! - Listeners: members present (and ourselves) who listen to the channel and may; the
//!   smallest upload budget advertised by a member who may speak there.
//! - Candidates: the charter's rented relays (capacity from the charter) and present members
//!   who volunteer (public, spare uplink), each with the median RTT the channel's listeners
//!   advertise to it and its room left after the channels before this one (in id order)
//!   that it already serves.
//! - Incumbent: the relay most of the channel's listeners say they use for it (ties: lowest
//!   key), so hysteresis is measured against the same thing everywhere.
//!
//! A channel whose policy prefers several of the charter's relays cascades: once the rule puts
//! it on one of them, each member takes the one it measured nearest (its own RTTs, from its own
//! presence record), and the relays forward to each other.
//!
//! The one local input is `linked`: a relay we have no link to is no candidate for us. A relay
//! that crashes is dropped by each member as its link times out, so the members agree again
//! within one link timeout.
//!
//! [`topology::plan`]: crate::topology::plan

use crate::charter::{ChannelId, CharterState, Permissions};
use crate::presence::PresenceTable;
use crate::topology::{plan, ChannelLoad, RelayCandidate, Route, TopologyConfig};
use callsign_keys::IdentityKey;
use std::collections::{BTreeMap, BTreeSet};

/// What a member knows when it routes its channels.
#[derive(Clone, Copy, Debug)]
pub struct RoutingView<'a> {
    /// The charter.
    pub state: &'a CharterState,
    /// Present members (their listening channels, relay offers, relay RTTs and routes).
    pub presence: &'a PresenceTable,
    /// Ourselves.
    pub local: &'a IdentityKey,
    /// The channels we listen to, sorted.
    pub listening: &'a [ChannelId],
    /// Relays we hold a link to.
    pub linked: &'a BTreeSet<IdentityKey>,
    /// The routes we use now (and advertise).
    pub current: &'a BTreeMap<ChannelId, Route>,
}

impl RoutingView<'_> {
    /// Channels we listen to or may speak on, sorted.
    pub fn channels(&self) -> Vec<ChannelId> {
        self.state
            .channels
            .keys()
            .copied()
            .filter(|c| {
                self.listening.binary_search(c).is_ok()
                    || self.state.may(self.local, *c, Permissions::SPEAK)
            })
            .collect()
    }

    fn listeners(&self, channel: ChannelId) -> BTreeSet<IdentityKey> {
        let mut out: BTreeSet<IdentityKey> = self
            .presence
            .hearers(self.state, channel)
            .filter(|p| **p != *self.local)
            .copied()
            .collect();
        if self.listening.binary_search(&channel).is_ok() {
            out.insert(*self.local);
        }
        out
    }

    /// The relay each member uses for `channel`, ours from `current`.
    fn advertised(&self, channel: ChannelId) -> BTreeMap<IdentityKey, IdentityKey> {
        let mut out: BTreeMap<IdentityKey, IdentityKey> = self
            .presence
            .present()
            .filter(|r| r.body.peer != *self.local)
            .filter_map(|r| {
                let at = r.body.routes.binary_search_by_key(&channel, |(c, _)| *c);
                at.ok().map(|i| (r.body.peer, r.body.routes[i].1))
            })
            .collect();
        if let Some(Route::Relay(relay)) = self.current.get(&channel) {
            out.insert(*self.local, *relay);
        }
        out
    }

    /// Listeners routed through `relay` on channels before `channel` (in id order). Earlier
    /// channels claim a relay's room first and a later one never displaces them: counting
    /// every other channel, channels competing for one volunteer all saw it free, all moved
    /// onto it, all saw it full and all left together, every replan (chaos seed 4). This way
    /// the first channel's answer depends on no other, the second's only on the first's, and
    /// the routes settle within one replan per channel.
    fn load_elsewhere(&self, relay: &IdentityKey, channel: ChannelId) -> u32 {
        let others = self
            .presence
            .present()
            .filter(|r| r.body.peer != *self.local)
            .flat_map(|r| r.body.routes.iter())
            .filter(|(c, r)| *c < channel && r == relay)
            .count();
        let ours = self
            .current
            .iter()
            .filter(|(c, r)| **c < channel && **r == Route::Relay(*relay))
            .count();
        (others + ours) as u32
    }

    fn median_rtt(&self, relay: &IdentityKey, listeners: &BTreeSet<IdentityKey>) -> Option<u32> {
        let mut rtts: Vec<u32> = listeners
            .iter()
            .filter_map(|l| self.presence.get(l))
            .filter_map(|r| {
                let at = r.body.relay_rtt_ms.binary_search_by_key(relay, |(k, _)| *k);
                at.ok().map(|i| r.body.relay_rtt_ms[i].1)
            })
            .collect();
        rtts.sort_unstable();
        rtts.get(rtts.len().saturating_sub(1) / 2).copied()
    }

    /// The route for one channel.
    pub fn route(&self, config: &TopologyConfig, channel: ChannelId) -> Route {
        let Some(info) = self.state.channels.get(&channel) else {
            return Route::Mesh;
        };
        let listeners = self.listeners(channel);
        let weakest_uplink_kbps = self
            .presence
            .present()
            .filter(|r| r.body.uplink_kbps > 0)
            .filter(|r| self.state.may(&r.body.peer, channel, Permissions::SPEAK))
            .map(|r| r.body.uplink_kbps)
            .min();
        let load = ChannelLoad {
            threshold: u32::from(info.policy.mesh_threshold),
            listeners: listeners.len() as u32,
            weakest_uplink_kbps,
        };
        let usable = |k: &IdentityKey| self.linked.contains(k) || k == self.local;
        let mut candidates: Vec<RelayCandidate> = self
            .state
            .relays
            .iter()
            .filter(|(k, _)| usable(k))
            .map(|(k, relay)| RelayCandidate {
                peer: *k,
                rented: true,
                public: true,
                median_rtt_ms: self.median_rtt(k, &listeners),
                spare_listeners: relay
                    .capacity
                    .saturating_sub(self.load_elsewhere(k, channel)),
            })
            .collect();
        candidates.extend(
            self.presence
                .present()
                .filter(|r| r.body.relay.public && r.body.relay.spare_uplink_kbps > 0)
                .filter(|r| !self.state.relays.contains_key(&r.body.peer))
                .filter(|r| usable(&r.body.peer))
                .map(|r| RelayCandidate {
                    peer: r.body.peer,
                    rented: false,
                    public: true,
                    median_rtt_ms: self.median_rtt(&r.body.peer, &listeners),
                    spare_listeners: (r.body.relay.spare_uplink_kbps / config.stream_kbps.max(1))
                        .saturating_sub(self.load_elsewhere(&r.body.peer, channel)),
                }),
        );
        let mut votes: BTreeMap<IdentityKey, usize> = BTreeMap::new();
        for (member, relay) in self.advertised(channel) {
            if listeners.contains(&member) {
                *votes.entry(relay).or_default() += 1;
            }
        }
        // Most votes; among equals the lowest key (the map iterates in key order).
        let incumbent = votes
            .iter()
            .fold(None::<(&IdentityKey, usize)>, |best, (k, n)| match best {
                Some((_, m)) if m >= *n => best,
                _ => Some((k, *n)),
            })
            .map(|(k, _)| *k);
        match plan(config, &load, &candidates, incumbent.as_ref()) {
            // A channel that prefers several relays cascades over them: each member uses its
            // nearest, and the relays pass packets to each other.
            Route::Relay(chosen) if info.policy.preferred_relays.contains(&chosen) => {
                let own = self.presence.get(self.local);
                let rtt = |k: &IdentityKey| {
                    own.and_then(|r| {
                        let at = r.body.relay_rtt_ms.binary_search_by_key(k, |(k, _)| *k);
                        at.ok().map(|i| r.body.relay_rtt_ms[i].1)
                    })
                    .unwrap_or(config.unknown_rtt_ms)
                };
                let nearest = info
                    .policy
                    .preferred_relays
                    .iter()
                    .filter(|k| self.state.relays.contains_key(k) && usable(k))
                    .min_by_key(|k| (rtt(k), **k))
                    .copied()
                    .unwrap_or(chosen);
                Route::Relay(nearest)
            }
            route => route,
        }
    }

    /// Routes for [`RoutingView::channels`].
    pub fn routes(&self, config: &TopologyConfig) -> BTreeMap<ChannelId, Route> {
        self.channels()
            .into_iter()
            .map(|c| (c, self.route(config, c)))
            .collect()
    }
}
