//! [`FloorControl`]: every half-duplex channel's floor for one member, fed by PTT, peers'
//! messages and timers; it says what to send, what happened, and where we may transmit.

use super::channel::{ChannelFloor, Withdrawal};
use super::message::{FloorMessage, FloorRequest};
use super::shared::Shared;
use super::{FloorConfig, FloorError, FloorEvent, LocalFloor};
use crate::charter::{ChannelId, CharterState, FloorMode, Permissions, Priority};
use callsign_keys::IdentityKey;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// How long after the floor holder's last played frame it still counts as on air: a talker
/// that also believes it holds the floor is heard only once the holder has gone quiet
/// ([`FloorControl::holder_heard`]). Several frame periods, so jitter does not let two
/// talkers interleave.
pub const HOLDER_AUDIBLE: Duration = Duration::from_millis(250);

/// See the module documentation.
#[derive(Debug)]
pub struct FloorControl {
    shared: Shared,
    channels: BTreeMap<ChannelId, ChannelFloor>,
}

impl FloorControl {
    /// Floor control for `local`; `unix_ms` is the Unix time at `now` (request stamps use it,
    /// so presses on different nodes order by real time when clocks agree).
    pub fn new(local: IdentityKey, config: FloorConfig, now: Instant, unix_ms: u64) -> Self {
        Self {
            shared: Shared::new(local, config, now, unix_ms),
            channels: BTreeMap::new(),
        }
    }

    /// Follows the charter: a floor for each half-duplex channel; a channel that stops being
    /// one (or goes away) releases what we held on it.
    ///
    /// A node that is no member (a rented relay, a newcomer not yet admitted) never requests,
    /// so it keeps a floor only where it is the arbiter: a relay that merely forwards a channel
    /// would otherwise apply the members' rule to the claims it happens to see and name a
    /// holder the arbiter never granted (chaos seed 189: the cascade's second relay named
    /// another holder than its arbiter and every member for a second).
    pub fn update_charter(&mut self, state: &CharterState, now: Instant) {
        let local = self.shared.local;
        self.shared.requesters = state
            .members
            .keys()
            .chain(&state.admins)
            .chain(std::iter::once(&state.org))
            .copied()
            .collect();
        let member = self.shared.requesters.contains(&local);
        let half_duplex: BTreeSet<ChannelId> = state
            .channels
            .iter()
            .filter(|(_, c)| c.policy.floor == FloorMode::HalfDuplex)
            .map(|(id, _)| *id)
            .filter(|id| member || super::arbiter_for(state, *id) == Some(local))
            .collect();
        let gone: Vec<ChannelId> = self
            .channels
            .keys()
            .filter(|c| !half_duplex.contains(c))
            .copied()
            .collect();
        for channel in gone {
            if let Some(mut floor) = self.channels.remove(&channel) {
                floor.withdraw(&mut self.shared, Withdrawal::Closed, now);
            }
        }
        for channel in half_duplex {
            if let std::collections::btree_map::Entry::Vacant(slot) = self.channels.entry(channel) {
                let floor = slot.insert(ChannelFloor::new(channel, now));
                // Peers that learned of the channel first are waiting for our claim.
                for peer in self.shared.participants.clone() {
                    floor.send_claim(&mut self.shared, peer);
                }
            }
        }
        // Someone whose role lost the priority loses what it held.
        let lost: Vec<ChannelId> = self
            .channels
            .iter()
            .filter(|(c, f)| {
                f.mine()
                    .request
                    .is_some_and(|r| !Self::allowed(state, &local, **c, &r))
            })
            .map(|(c, _)| *c)
            .collect();
        for channel in lost {
            if let Some(floor) = self.channels.get_mut(&channel) {
                floor.withdraw(&mut self.shared, Withdrawal::Closed, now);
            }
        }
    }

    /// Whether `channel` has floor control (is half-duplex).
    pub fn is_half_duplex(&self, channel: ChannelId) -> bool {
        self.channels.contains_key(&channel)
    }

    /// Who arbitrates `channel` (`None`: the members by rule, as in mesh mode).
    pub fn set_arbiter(&mut self, channel: ChannelId, arbiter: Option<IdentityKey>, now: Instant) {
        if let Some(floor) = self.channels.get_mut(&channel) {
            floor.set_arbiter(&mut self.shared, arbiter, now);
        }
    }

    /// The arbiter `channel` uses now.
    pub fn arbiter(&self, channel: ChannelId) -> Option<IdentityKey> {
        self.channels.get(&channel)?.arbiter()
    }

    /// A member linked.
    pub fn peer_up(&mut self, peer: IdentityKey) {
        self.shared.silent.remove(&peer);
        if peer == self.shared.local || !self.shared.participants.insert(peer) {
            return;
        }
        for floor in self.channels.values_mut() {
            floor.peer_up(&mut self.shared, peer);
        }
    }

    /// `peer` is linked but does not answer (its control requests go unacknowledged): presses
    /// do not wait for its acknowledgement until it sends a floor message again.
    pub fn mark_unresponsive(&mut self, peer: IdentityKey) {
        if self.shared.participants.contains(&peer) {
            self.shared.silent.insert(peer);
        }
    }

    /// A member's link went: its requests go.
    pub fn peer_down(&mut self, peer: &IdentityKey, now: Instant) {
        self.shared.participants.remove(peer);
        self.shared.silent.remove(peer);
        for floor in self.channels.values_mut() {
            floor.peer_down(&mut self.shared, peer, now);
        }
    }

    /// Members who left the org (by charter) stop taking part, as if their links went.
    pub fn retain_participants(&mut self, keep: impl Fn(&IdentityKey) -> bool, now: Instant) {
        let gone: Vec<IdentityKey> = self
            .shared
            .participants
            .iter()
            .filter(|k| !keep(k))
            .copied()
            .collect();
        for peer in gone {
            self.peer_down(&peer, now);
        }
    }

    fn allowed(
        state: &CharterState,
        peer: &IdentityKey,
        channel: ChannelId,
        r: &FloorRequest,
    ) -> bool {
        // Priority 4 only for emergencies, and never above the sender's role.
        let ceiling = if r.emergency {
            Priority::EMERGENCY
        } else {
            Priority::HIGH
        };
        state.may(peer, channel, Permissions::SPEAK)
            && r.priority != Priority::NONE
            && r.priority <= ceiling.min(state.priority(peer))
            && (r.emergency == (r.priority == Priority::EMERGENCY))
    }

    /// PTT pressed on `channel` (a half-duplex one): request the floor at our role's priority
    /// (capped at high: priority 4 is for emergencies), or, with `emergency`, raise one.
    pub fn press(
        &mut self,
        state: &CharterState,
        channel: ChannelId,
        emergency: bool,
        now: Instant,
    ) -> Result<(), FloorError> {
        let local = self.shared.local;
        let Some(floor) = self.channels.get_mut(&channel) else {
            return Err(FloorError::NotHalfDuplex(channel));
        };
        let role = state.priority(&local);
        let priority = if emergency {
            Priority::EMERGENCY
        } else {
            role.min(Priority::HIGH)
        };
        let request = FloorRequest {
            priority,
            stamp: 0,
            emergency,
        };
        if !Self::allowed(state, &local, channel, &request) {
            let reason = if emergency && role < Priority::EMERGENCY {
                FloorError::NoEmergency
            } else {
                FloorError::NotAllowed
            };
            self.shared.events.push_back(FloorEvent::Denied {
                channel,
                reason: reason.to_string(),
            });
            return Err(reason);
        }
        // Pressing again while holding or waiting keeps the place we have.
        if let Some(held) = floor.mine().request {
            if held.priority >= priority {
                return Ok(());
            }
        }
        let request = FloorRequest {
            stamp: self.shared.stamp(now),
            ..request
        };
        floor.request(&mut self.shared, request, now);
        Ok(())
    }

    /// PTT released: every request we hold goes.
    pub fn release(&mut self, now: Instant) {
        for floor in self.channels.values_mut() {
            floor.withdraw(&mut self.shared, Withdrawal::Released, now);
        }
    }

    /// Ends the emergency `raiser` raised on `channel`: our own, or anyone's if we are an admin.
    pub fn clear_emergency(
        &mut self,
        state: &CharterState,
        channel: ChannelId,
        raiser: IdentityKey,
        now: Instant,
    ) -> Result<(), FloorError> {
        let local = self.shared.local;
        let floor = self
            .channels
            .get_mut(&channel)
            .ok_or(FloorError::NotHalfDuplex(channel))?;
        let raised = floor
            .emergency_of(&self.shared, &raiser)
            .ok_or(FloorError::NoSuchEmergency)?;
        if raiser == local {
            floor.clear_own_emergency(&mut self.shared, local, now);
            return Ok(());
        }
        if !state.is_admin(&local) {
            return Err(FloorError::NotAdmin);
        }
        floor.clear_emergency(&mut self.shared, raiser, raised, local, now);
        for peer in self.shared.participants.clone() {
            self.shared.transmits.push_back((
                peer,
                FloorMessage::ClearEmergency {
                    channel,
                    raiser,
                    raised,
                },
            ));
        }
        Ok(())
    }

    /// Audio from `peer` on `channels` (keeps a talker's hold alive).
    pub fn audio_from(&mut self, peer: &IdentityKey, channels: &[ChannelId], now: Instant) {
        for channel in channels {
            if let Some(floor) = self.channels.get_mut(channel) {
                floor.audio_from(peer, now);
            }
        }
    }

    /// A floor message from member `from` (the link authenticated it). Claims beyond the
    /// sender's role, rulings from anyone but the arbiter and clears from non-admins are
    /// refused.
    pub fn handle_message(
        &mut self,
        state: &CharterState,
        from: IdentityKey,
        message: FloorMessage,
        now: Instant,
    ) -> Result<(), FloorError> {
        // Whoever speaks is waited for again.
        self.shared.silent.remove(&from);
        let channel = message.channel();
        let Some(floor) = self.channels.get_mut(&channel) else {
            // Our charter may be behind: once it names the channel we send our claim, and
            // the peer answers with its own.
            return Err(FloorError::NotHalfDuplex(channel));
        };
        match message {
            FloorMessage::Claim { claim, seen, .. } => {
                if let Some(request) = &claim.request {
                    if !Self::allowed(state, &from, channel, request) {
                        return Err(FloorError::Unauthorised);
                    }
                }
                if claim.emergency.is_some() && state.priority(&from) < Priority::EMERGENCY {
                    return Err(FloorError::Unauthorised);
                }
                floor.receive_claim(&mut self.shared, from, claim, seen, now);
            }
            FloorMessage::Decision { decision, .. } => {
                if floor.arbiter() != Some(from) {
                    return Err(FloorError::Unauthorised);
                }
                floor.receive_decision(&mut self.shared, decision, now);
            }
            FloorMessage::ClearEmergency { raiser, raised, .. } => {
                if from != raiser && !state.is_admin(&from) {
                    return Err(FloorError::Unauthorised);
                }
                floor.clear_emergency(&mut self.shared, raiser, raised, from, now);
            }
        }
        Ok(())
    }

    /// When [`Self::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.channels
            .values()
            .filter_map(|f| f.poll_timeout(&self.shared))
            .min()
    }

    /// Acknowledgement waits, talk-time limits and silent talkers.
    pub fn handle_timeout(&mut self, now: Instant) {
        for floor in self.channels.values_mut() {
            if floor.poll_timeout(&self.shared).is_some_and(|at| now >= at) {
                floor.handle_timeout(&mut self.shared, now);
            }
        }
    }

    /// The next message to send, and to whom.
    pub fn poll_transmit(&mut self) -> Option<(IdentityKey, FloorMessage)> {
        self.shared.transmits.pop_front()
    }

    /// The next thing that happened.
    pub fn poll_event(&mut self) -> Option<FloorEvent> {
        self.shared.events.pop_front()
    }

    /// Whether we hold the floor on `channel` (open channels: always).
    pub fn may_transmit(&self, channel: ChannelId) -> bool {
        self.channels
            .get(&channel)
            .is_none_or(|f| f.state() == LocalFloor::Granted)
    }

    /// Our state on a half-duplex channel.
    pub fn state(&self, channel: ChannelId) -> Option<LocalFloor> {
        Some(self.channels.get(&channel)?.state())
    }

    /// Who holds the floor on `channel`, as far as we know.
    pub fn holder(&self, channel: ChannelId) -> Option<IdentityKey> {
        self.channels.get(&channel)?.leader()
    }

    /// Whether audio from `peer` on `channel` is in turn: an open channel, or `peer` holds the
    /// floor, or (for the closing frame of a transmission, `closing`) held it last.
    pub fn may_be_heard(&self, peer: &IdentityKey, channel: ChannelId, closing: bool) -> bool {
        self.channels.get(&channel).is_none_or(|f| {
            f.leader().as_ref() == Some(peer) || (closing && f.previous().as_ref() == Some(peer))
        })
    }

    /// `peer` told us it is on air on `channel` (`on`), or off air (`crate::path`).
    pub fn set_on_air(&mut self, channel: ChannelId, peer: IdentityKey, on: bool, now: Instant) {
        if let Some(floor) = self.channels.get_mut(&channel) {
            floor.set_on_air(&mut self.shared, peer, on, now);
        }
    }

    /// Whether the holder of `channel`'s floor, someone else, is on air to us: its audio
    /// played within [`HOLDER_AUDIBLE`].
    pub fn holder_heard(&self, channel: ChannelId, now: Instant) -> bool {
        self.channels.get(&channel).is_some_and(|f| {
            f.leader() != Some(self.shared.local)
                && f.holder_audio_at()
                    .is_some_and(|at| now < at + HOLDER_AUDIBLE)
        })
    }

    /// An arbiter we are linked to that went silent: no ruling for the silence timeout
    /// (it repeats its ruling every heartbeat), so it is most likely gone.
    pub fn poll_silent_arbiter(&mut self) -> Option<IdentityKey> {
        self.shared.silent_arbiters.pop_front()
    }

    /// Members in emergency on `channel`.
    pub fn emergencies(&self, channel: ChannelId) -> Vec<IdentityKey> {
        let Some(floor) = self.channels.get(&channel) else {
            return Vec::new();
        };
        let own = floor.mine().emergency.map(|_| self.shared.local);
        own.into_iter()
            .chain(floor.emergencies().copied())
            .collect()
    }
}
