//! The sender side of E2EE: which voice keys this node holds, when they rotate, and who must be
//! granted each one.
//!
//! One key per channel the local member may speak on, granted to every member the charter lets
//! listen there (so a listener of `flight` never holds the key of `command`), and one whisper
//! key per member, granted to that member only. A channel key rotates when the channel's
//! audience changes (a member added or removed, a role changed) and every
//! [`KeyScheduleConfig::rotation_interval`]; a removed member is never granted the new key, so it
//! can no longer decrypt once the new key is in use. A new key is used for sealing only after
//! [`KeyScheduleConfig::activation_delay`], long enough for its grants to reach the listeners,
//! so a rotation does not drop frames; the receiver keeps the previous key for frames in flight.
//!
//! Sans-IO: [`KeySchedule::update`] takes the charter, the peers with an established pair session
//! and `now`; grants to send come out of [`KeySchedule::poll_grant`].

use super::packet::SenderKey;
use crate::charter::{ChannelId, CharterState, Permissions};
use callsign_keys::IdentityKey;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

/// Key ids with this bit set are whisper keys; the rest are channel keys.
pub const WHISPER_KEY_BIT: u16 = 0x8000;

/// Rotation settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyScheduleConfig {
    /// Every key is replaced at least this often.
    pub rotation_interval: Duration,
    /// A new key seals frames only this long after it was made (its grants are in flight).
    pub activation_delay: Duration,
}

impl Default for KeyScheduleConfig {
    fn default() -> Self {
        Self {
            rotation_interval: Duration::from_secs(15 * 60),
            activation_delay: Duration::from_millis(250),
        }
    }
}

/// A grant the driver must deliver over the pair session with `peer`.
#[derive(Clone, Debug)]
pub struct PendingGrant {
    /// The listener.
    pub peer: IdentityKey,
    /// The key.
    pub key: SenderKey,
    /// The channels it is for; empty for a whisper key.
    pub channels: Vec<ChannelId>,
}

#[derive(Clone, Debug)]
struct Slot {
    /// Newest last; at most two (the previous one keeps sealing until the new one activates).
    keys: Vec<(SenderKey, Instant)>,
    created: Instant,
    /// Who the charter let listen when the newest key was made.
    audience: BTreeSet<IdentityKey>,
    /// Who has been handed the newest key.
    granted: BTreeSet<IdentityKey>,
}

impl Slot {
    fn sealing_key(&self, now: Instant) -> Option<&SenderKey> {
        self.keys
            .iter()
            .rev()
            .find(|(_, active_at)| *active_at <= now)
            .or(self.keys.first())
            .map(|(k, _)| k)
    }

    fn newest(&self) -> Option<&SenderKey> {
        self.keys.last().map(|(k, _)| k)
    }
}

/// See the module documentation.
pub struct KeySchedule {
    local: IdentityKey,
    config: KeyScheduleConfig,
    channels: BTreeMap<ChannelId, Slot>,
    whispers: BTreeMap<IdentityKey, Slot>,
    next_id: u16,
    rotations: u64,
    rng: ChaCha20Rng,
    grants: VecDeque<PendingGrant>,
}

impl KeySchedule {
    /// A schedule for the member `local`; keys come from an RNG seeded with `seed`.
    pub fn new(local: IdentityKey, config: KeyScheduleConfig, seed: u64) -> Self {
        Self {
            local,
            config,
            channels: BTreeMap::new(),
            whispers: BTreeMap::new(),
            next_id: 0,
            rotations: 0,
            rng: ChaCha20Rng::seed_from_u64(seed),
            grants: VecDeque::new(),
        }
    }

    /// How many times a key was replaced (not counting first keys).
    pub fn rotations(&self) -> u64 {
        self.rotations
    }

    fn fresh_key(&mut self, whisper: bool) -> SenderKey {
        let id = self.next_id & !WHISPER_KEY_BIT;
        self.next_id = self.next_id.wrapping_add(1);
        let id = if whisper { id | WHISPER_KEY_BIT } else { id };
        SenderKey::generate(id, &mut self.rng)
    }

    /// Brings keys in line with the charter and the set of peers with an established session:
    /// makes missing keys, rotates keys whose audience changed or whose time is up, and queues
    /// grants for every session peer that should hold a key and does not yet.
    pub fn update(
        &mut self,
        charter: &CharterState,
        sessions: &BTreeSet<IdentityKey>,
        now: Instant,
    ) {
        let speakable: BTreeSet<ChannelId> = charter
            .channels
            .keys()
            .copied()
            .filter(|c| charter.may(&self.local, *c, Permissions::SPEAK))
            .collect();
        self.channels.retain(|c, _| speakable.contains(c));
        for channel in speakable {
            let audience: BTreeSet<IdentityKey> = charter
                .listeners(channel)
                .into_iter()
                .filter(|p| *p != self.local)
                .collect();
            let slot = self.channels.remove(&channel);
            let mut slot = self.refresh(slot, audience, false, now);
            self.queue_grants(&mut slot, sessions, vec![channel]);
            self.channels.insert(channel, slot);
        }
        let whisperable = charter
            .channels
            .keys()
            .any(|c| charter.may(&self.local, *c, Permissions::WHISPER));
        let mut members: BTreeSet<IdentityKey> = charter.members.keys().copied().collect();
        members.insert(charter.org);
        members.extend(charter.admins.iter().copied());
        members.remove(&self.local);
        if !whisperable {
            members.clear();
        }
        self.whispers.retain(|p, _| members.contains(p));
        for peer in members {
            let slot = self.whispers.remove(&peer);
            let audience = BTreeSet::from([peer]);
            let mut slot = self.refresh(slot, audience, true, now);
            self.queue_grants(&mut slot, sessions, Vec::new());
            self.whispers.insert(peer, slot);
        }
    }

    fn refresh(
        &mut self,
        slot: Option<Slot>,
        audience: BTreeSet<IdentityKey>,
        whisper: bool,
        now: Instant,
    ) -> Slot {
        match slot {
            Some(slot)
                if slot.audience == audience
                    && now.saturating_duration_since(slot.created)
                        < self.config.rotation_interval =>
            {
                slot
            }
            Some(mut slot) => {
                self.rotations += 1;
                let key = self.fresh_key(whisper);
                // The previous key seals until the new one activates; older ones are gone.
                let previous = slot.keys.pop();
                slot.keys.clear();
                slot.keys.extend(previous.map(|(k, _)| (k, now)));
                slot.keys.push((key, now + self.config.activation_delay));
                slot.created = now;
                slot.audience = audience;
                slot.granted.clear();
                slot
            }
            None => {
                let key = self.fresh_key(whisper);
                Slot {
                    // Nothing to fall back on: the first key seals at once.
                    keys: vec![(key, now)],
                    created: now,
                    audience,
                    granted: BTreeSet::new(),
                }
            }
        }
    }

    fn queue_grants(
        &mut self,
        slot: &mut Slot,
        sessions: &BTreeSet<IdentityKey>,
        channels: Vec<ChannelId>,
    ) {
        let Some(key) = slot.newest().cloned() else {
            return;
        };
        // A peer whose session ended must be granted again on its next session.
        slot.granted.retain(|p| sessions.contains(p));
        for peer in slot.audience.intersection(sessions) {
            if slot.granted.insert(*peer) {
                self.grants.push_back(PendingGrant {
                    peer: *peer,
                    key: key.clone(),
                    channels: channels.clone(),
                });
            }
        }
    }

    /// A new pair session with `peer` (it restarted, or its session was started over): the
    /// keys it was granted went with the old session, so the next [`Self::update`] grants them
    /// again. Without this, a session restarted by one side only would leave the other side
    /// believing its grants still held.
    pub fn session_restarted(&mut self, peer: &IdentityKey) {
        for slot in self.channels.values_mut().chain(self.whispers.values_mut()) {
            slot.granted.remove(peer);
        }
    }

    /// The next grant to deliver.
    pub fn poll_grant(&mut self) -> Option<PendingGrant> {
        self.grants.pop_front()
    }

    /// When the next periodic rotation falls due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.channels
            .values()
            .chain(self.whispers.values())
            .map(|s| s.created + self.config.rotation_interval)
            .min()
    }

    /// The key that seals frames on `channel` now, if the local member may speak there.
    pub fn channel_key(&self, channel: ChannelId, now: Instant) -> Option<&SenderKey> {
        self.channels.get(&channel)?.sealing_key(now)
    }

    /// The key that seals whispers to `peer` now.
    pub fn whisper_key(&self, peer: &IdentityKey, now: Instant) -> Option<&SenderKey> {
        self.whispers.get(peer)?.sealing_key(now)
    }

    /// Whether `peer` has been handed the newest key of `channel`.
    pub fn is_granted(&self, channel: ChannelId, peer: &IdentityKey) -> bool {
        self.channels
            .get(&channel)
            .is_some_and(|s| s.granted.contains(peer))
    }
}
