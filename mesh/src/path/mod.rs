//! The voice path checks and repairs itself, end to end (docs/protocol.md, "Path messages").
//!
//! A talker tells every linked member that hears its channels when it goes on air there and
//! when it stops ([`PathMessage::Talking`]). A listener that has been told a talker is on air
//! on a channel it hears, yet opens none of its frames within [`PathConfig::bound`] plus the
//! round trip to it, climbs a ladder of repairs, one rung per bound, until frames come:
//!
//! 1. [`Rung::Resubscribe`]: subscribe again at the channel's relay (closing the link to a
//!    relay that stopped answering), re-plan routes, and ask the talker for direct
//!    copies ([`Rung::DirectCopy`], for [`DIRECT_COPY_FOR`]) beside whatever path it uses.
//! 2. [`Rung::Key`]: ask the talker to grant its current key again.
//! 3. [`Rung::Mesh`]: take the channel off its relay ([`MESH_FALLBACK_FOR`]), so every talker
//!    sends it direct, and ask for direct copies again; the talker is reported unreachable
//!    until a frame comes. Held while the frames do not come.
//!
//! The rungs need not know what broke the path — a subscription a restarted relay forgot, a
//! grant lost with a session, routes two members plan differently, a relay that forwards
//! nothing — each restores one part of it, cheapest first, and the next is climbed only while
//! the frames still do not come. The talker carries out the rungs addressed to it.
//!
//! Sans-IO and deterministic: every entry point takes `now`; state is in `BTreeMap`s.

mod message;

pub use message::{
    PathDecodeError, PathMessage, Rung, MAX_PATH_BYTES, MAX_PATH_CHANNELS, PATH_VERSION,
};

use crate::charter::ChannelId;
use callsign_keys::IdentityKey;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// How long a talker sends direct copies to a listener that asked for them (renewed while the
/// listener keeps asking).
pub const DIRECT_COPY_FOR: Duration = Duration::from_secs(10);
/// How long a listener keeps a channel off its relay after the ladder's last rung.
pub const MESH_FALLBACK_FOR: Duration = Duration::from_secs(30);
/// How often a talker on air repeats its announcement (a listener that restarted, or whose
/// link came back, learns it within this).
pub const TALKING_REPEAT: Duration = Duration::from_secs(2);
/// A listener forgets a talker's announcement not repeated for this long (the talker stopped
/// without a closing frame, or crashed while its link lingers).
pub const TALKING_EXPIRES: Duration = Duration::from_secs(5);

/// Repairs counted by cause: climbed as a listener, and served as a talker.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RepairCounts {
    /// Subscriptions sent again ([`Rung::Resubscribe`]).
    pub resubscribe: u64,
    /// Key grants asked for ([`Rung::Key`]).
    pub key: u64,
    /// Direct copies asked for (with [`Rung::Resubscribe`] and [`Rung::Mesh`]).
    pub direct_copy: u64,
    /// Channels taken off their relay ([`Rung::Mesh`]).
    pub mesh: u64,
    /// Links to a relay closed because it answered nothing while a path through it was deaf,
    /// or its floor rulings stopped (it is dialed again where it is now).
    pub closed_links: u64,
    /// Member links that carried nothing for `member::LINK_QUIET`, beside which a fresh
    /// connection was dialed (repeated while they stay quiet).
    pub quiet_links: u64,
    /// Paths that came back after at least one rung (frames opened again).
    pub recovered: u64,
    /// As a talker: keys granted again because a listener asked.
    pub served_key: u64,
    /// As a talker: listeners sent direct copies because they asked.
    pub served_direct_copy: u64,
}

impl RepairCounts {
    /// Adds `other`'s counts to these (totals over nodes or runs).
    pub fn add(&mut self, other: &RepairCounts) {
        self.resubscribe += other.resubscribe;
        self.key += other.key;
        self.direct_copy += other.direct_copy;
        self.mesh += other.mesh;
        self.recovered += other.recovered;
        self.closed_links += other.closed_links;
        self.quiet_links += other.quiet_links;
        self.served_key += other.served_key;
        self.served_direct_copy += other.served_direct_copy;
    }

    /// Every repair climbed as a listener.
    pub fn climbed(&self) -> u64 {
        self.resubscribe + self.key + self.direct_copy + self.mesh
    }
}

/// Tunables.
#[derive(Clone, Debug)]
pub struct PathConfig {
    /// How long a listener waits, beyond the round trip to the talker, for a frame of a talker
    /// on air before it climbs a rung (and between rungs).
    pub bound: Duration,
}

impl Default for PathConfig {
    fn default() -> Self {
        Self {
            bound: Duration::from_millis(300),
        }
    }
}

/// One rung the member must carry out now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repair {
    /// The talker we are deaf to.
    pub talker: IdentityKey,
    /// The channels it is on air on that we hear.
    pub channels: Vec<ChannelId>,
    /// What to do.
    pub rung: Rung,
}

/// What a listener expects of one talker.
#[derive(Clone, Debug)]
struct Expectation {
    /// The channels it announced that we hear.
    channels: Vec<ChannelId>,
    /// The last rung climbed since a frame last came (`None`: none).
    rung: Option<Rung>,
    /// The rung to climb first: the one that last repaired one of these channels.
    first: Rung,
    /// When to look again.
    due: Instant,
    /// When the talker last announced it (it answers every repair request with its
    /// announcement, so a live talker has always answered the last rung).
    refreshed: Instant,
    /// When the last rung was climbed.
    climbed_at: Option<Instant>,
}

/// Both ends of the check: as a listener, what each talker on air owes us; as a talker, the
/// channels we announced and the listeners we send direct copies to. See the module docs.
#[derive(Debug, Default)]
pub struct PathCheck {
    config: PathConfig,
    expected: BTreeMap<IdentityKey, Expectation>,
    /// When a frame of each talker was last opened.
    opened: BTreeMap<IdentityKey, Instant>,
    /// Talkers the whole ladder has not reached (until a frame comes or they go off air).
    unreachable: BTreeSet<IdentityKey>,
    /// Channels taken off their relay, until when.
    mesh_until: BTreeMap<ChannelId, Instant>,
    /// The rung that last repaired each channel's path, and until when a new talker there
    /// starts the ladder at it (the fault that broke one talker's path, a relay forwarding
    /// nothing to us, say, breaks the next talker's too).
    learned: BTreeMap<ChannelId, (Rung, Instant)>,
    /// Talkers we asked for direct copies, the channels, and until when they come.
    asked_direct: BTreeMap<IdentityKey, (Vec<ChannelId>, Instant)>,
    /// As a talker: the channels we last announced, and when.
    announced: Vec<ChannelId>,
    announced_at: Option<Instant>,
    /// As a talker: what we announced before that.
    before: Vec<ChannelId>,
    /// As a talker: listeners asking for direct copies, until when.
    direct_to: BTreeMap<IdentityKey, Instant>,
    counts: RepairCounts,
}

impl PathCheck {
    /// A check with `config`.
    pub fn new(config: PathConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    /// How long a listener waits beyond the round trip before each rung.
    pub fn bound(&self) -> Duration {
        self.config.bound
    }

    /// Repairs so far, by cause.
    pub fn counts(&self) -> &RepairCounts {
        &self.counts
    }

    /// Talkers on air that the whole ladder has not reached.
    pub fn unreachable(&self) -> impl Iterator<Item = &IdentityKey> {
        self.unreachable.iter()
    }

    // ---- listener side ----

    /// `talker` announced it is on air on `heard` (the announced channels we hear; empty: off
    /// air, or none of ours). `rtt` is our round trip to it.
    pub fn talking(
        &mut self,
        talker: IdentityKey,
        heard: Vec<ChannelId>,
        rtt: Duration,
        now: Instant,
    ) {
        if heard.is_empty() {
            self.off_air(&talker);
            return;
        }
        let due = now + self.config.bound + rtt;
        match self.expected.get_mut(&talker) {
            // A repeat: the clock keeps running.
            Some(e) if e.channels == heard => e.refreshed = now,
            Some(e) => {
                e.channels = heard;
                e.due = e.due.min(due);
                e.refreshed = now;
            }
            None => {
                let first = heard
                    .iter()
                    .filter_map(|c| self.learned.get(c))
                    .filter(|(_, until)| *until > now)
                    .map(|(rung, _)| *rung)
                    .max();
                self.expected.insert(
                    talker,
                    Expectation {
                        // A learned rung is climbed at once, before any frame is missed.
                        due: if first.is_some() { now } else { due },
                        channels: heard,
                        rung: None,
                        first: first.unwrap_or(Rung::Resubscribe),
                        refreshed: now,
                        climbed_at: None,
                    },
                );
            }
        }
    }

    /// `talker` is off air (it said so, or its link went).
    pub fn off_air(&mut self, talker: &IdentityKey) {
        self.expected.remove(talker);
        self.unreachable.remove(talker);
    }

    /// Whether `talker` told us it is on air on `channel`.
    pub fn on_air(&self, talker: &IdentityKey, channel: ChannelId) -> bool {
        self.expected
            .get(talker)
            .is_some_and(|e| e.channels.contains(&channel))
    }

    /// A frame of `talker` opened (its path works, whatever the gates after it decide).
    pub fn opened(&mut self, talker: &IdentityKey, now: Instant) {
        self.opened.insert(*talker, now);
        if let Some(e) = self.expected.get_mut(talker) {
            if let Some(rung) = e.rung.take() {
                self.counts.recovered += 1;
                // The first rung is cheap to wait for; a deeper fault is met at once next time.
                // (The top rung's fallback is held per channel in `mesh_until`.)
                if rung >= Rung::Key {
                    for channel in &e.channels {
                        self.learned
                            .insert(*channel, (Rung::Key, now + MESH_FALLBACK_FOR));
                    }
                }
            }
        }
        self.unreachable.remove(talker);
    }

    /// Talkers we asked for direct copies that may still come, with the channels: a talker
    /// we reach only through a circuit sends them through its relay, which forwards them to
    /// us only where we subscribe there.
    pub fn direct_asked(&self, now: Instant) -> impl Iterator<Item = (&IdentityKey, &[ChannelId])> {
        self.asked_direct
            .iter()
            .filter(move |(_, (_, until))| *until > now)
            .map(|(talker, (channels, _))| (talker, channels.as_slice()))
    }

    /// Whether `channel` is taken off its relay now.
    pub fn mesh_fallback(&self, channel: ChannelId, now: Instant) -> bool {
        self.mesh_until.get(&channel).is_some_and(|t| *t > now)
    }

    /// A link to a relay was closed as gone (see [`RepairCounts::closed_links`]).
    pub fn count_closed_link(&mut self) {
        self.counts.closed_links += 1;
    }

    /// A quiet link got a fresh connection dialed beside it (see
    /// [`RepairCounts::quiet_links`]).
    pub fn count_quiet_link(&mut self) {
        self.counts.quiet_links += 1;
    }

    // ---- talker side ----

    /// The channels our frame carries now (empty: the closing frame went). Returns the
    /// announcement to send, if it changed or is due again.
    pub fn transmitting(&mut self, channels: &[ChannelId], now: Instant) -> Option<Vec<ChannelId>> {
        let due = self
            .announced_at
            .is_none_or(|at| now >= at + TALKING_REPEAT);
        if channels == self.announced.as_slice() && (channels.is_empty() || !due) {
            return None;
        }
        self.before = std::mem::replace(&mut self.announced, channels.to_vec());
        self.announced_at = Some(now);
        Some(self.announced.clone())
    }

    /// What we announced before the last change [`Self::transmitting`] reported (its
    /// listeners must hear that we left those channels).
    pub fn announced_before(&self) -> &[ChannelId] {
        &self.before
    }

    /// The channels we are on air on (what a newly linked member is told).
    pub fn announced(&self) -> &[ChannelId] {
        &self.announced
    }

    /// A listener asked for a rung of ours: counts it, and for direct copies, starts them.
    pub fn serve(&mut self, listener: IdentityKey, rung: Rung, now: Instant) {
        match rung {
            Rung::Key => self.counts.served_key += 1,
            Rung::DirectCopy => {
                self.counts.served_direct_copy += 1;
                self.direct_to.insert(listener, now + DIRECT_COPY_FOR);
            }
            Rung::Resubscribe | Rung::Mesh => {}
        }
    }

    /// Whether `listener` gets direct copies of our frames now.
    pub fn direct_copy_to(&self, listener: &IdentityKey, now: Instant) -> bool {
        self.direct_to.get(listener).is_some_and(|t| *t > now)
    }

    // ---- timers ----

    /// When [`Self::handle_timeout`] has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.expected
            .values()
            .map(|e| e.due.min(e.refreshed + TALKING_EXPIRES))
            .min()
    }

    /// Climbs a rung for every talker on air whose frames did not come in time; `rtt` gives
    /// the round trip to a talker.
    pub fn handle_timeout(
        &mut self,
        now: Instant,
        rtt: impl Fn(&IdentityKey) -> Duration,
    ) -> Vec<Repair> {
        self.direct_to.retain(|_, t| *t > now);
        self.mesh_until.retain(|_, t| *t > now);
        self.learned.retain(|_, (_, t)| *t > now);
        self.asked_direct.retain(|_, (_, t)| *t > now);
        let expired: Vec<IdentityKey> = self
            .expected
            .iter()
            .filter(|(_, e)| now >= e.refreshed + TALKING_EXPIRES)
            .map(|(t, _)| *t)
            .collect();
        for talker in &expired {
            self.off_air(talker);
        }
        let mut repairs = Vec::new();
        for (talker, e) in &mut self.expected {
            if e.due > now {
                continue;
            }
            let wait = self.config.bound + rtt(talker);
            let heard = self.opened.get(talker).is_some_and(|at| *at + wait > now);
            if heard {
                e.due = self.opened[talker] + wait;
                continue;
            }
            let rung = match e.rung {
                None => e.first,
                climbed => Rung::after(climbed),
            };
            // A talker that did not answer the last rung's request (with its announcement) is
            // likely gone, not unreachable: crashed while on air, its link not yet timed out.
            // Its announcement expires; nothing more is climbed for it meanwhile.
            if rung > Rung::Resubscribe && e.climbed_at.is_some_and(|at| e.refreshed <= at) {
                e.due = now + wait;
                continue;
            }
            e.climbed_at = Some(now);
            e.rung = Some(rung);
            e.due = now + wait;
            match rung {
                Rung::Resubscribe | Rung::DirectCopy => {
                    self.counts.resubscribe += 1;
                    self.counts.direct_copy += 1;
                }
                Rung::Key => self.counts.key += 1,
                Rung::Mesh => {
                    self.counts.mesh += 1;
                    self.counts.direct_copy += 1;
                    self.unreachable.insert(*talker);
                    for channel in &e.channels {
                        self.mesh_until.insert(*channel, now + MESH_FALLBACK_FOR);
                    }
                }
            }
            if rung != Rung::Key {
                self.asked_direct
                    .insert(*talker, (e.channels.clone(), now + DIRECT_COPY_FOR));
            }
            repairs.push(Repair {
                talker: *talker,
                channels: e.channels.clone(),
                rung,
            });
        }
        repairs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use callsign_keys::Identity;
    use rand::SeedableRng;

    fn key(seed: u64) -> IdentityKey {
        Identity::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(seed)).public()
    }

    const RTT: Duration = Duration::from_millis(40);

    #[test]
    fn a_deaf_listener_climbs_one_rung_per_bound_and_stops_when_frames_come() {
        let t0 = Instant::now();
        let talker = key(1);
        let c = ChannelId(3);
        let mut check = PathCheck::new(PathConfig::default());
        check.talking(talker, vec![c], RTT, t0);
        let bound = Duration::from_millis(340);
        assert_eq!(check.poll_timeout(), Some(t0 + bound));
        assert!(check.handle_timeout(t0 + bound / 2, |_| RTT).is_empty());
        let mut rungs = Vec::new();
        let mut at = t0;
        for _ in 0..5 {
            at = check.poll_timeout().unwrap();
            rungs.extend(
                check
                    .handle_timeout(at, |_| RTT)
                    .into_iter()
                    .map(|r| r.rung),
            );
            // The talker answers each request with its announcement.
            check.talking(talker, vec![c], RTT, at + RTT);
        }
        assert_eq!(
            rungs,
            [
                Rung::Resubscribe,
                Rung::Key,
                Rung::Mesh,
                Rung::Mesh,
                Rung::Mesh
            ]
        );
        assert!(check.mesh_fallback(c, at));
        assert_eq!(check.unreachable().collect::<Vec<_>>(), vec![&talker]);
        // A frame: the path is whole, nothing more is climbed while frames keep coming.
        check.opened(&talker, at);
        assert_eq!(check.counts().recovered, 1);
        assert_eq!(check.unreachable().count(), 0);
        let next = check.poll_timeout().unwrap();
        check.opened(&talker, next - Duration::from_millis(20));
        assert!(check.handle_timeout(next, |_| RTT).is_empty());
        let c = check.counts();
        assert_eq!((c.resubscribe, c.key, c.direct_copy, c.mesh), (1, 1, 4, 3));
    }

    #[test]
    fn a_listener_that_hears_the_talker_climbs_nothing() {
        let t0 = Instant::now();
        let talker = key(1);
        let mut check = PathCheck::new(PathConfig::default());
        check.talking(talker, vec![ChannelId(1)], RTT, t0);
        for i in 1..100u64 {
            let now = t0 + Duration::from_millis(20 * i);
            check.opened(&talker, now);
            assert!(check.handle_timeout(now, |_| RTT).is_empty());
        }
        check.talking(talker, Vec::new(), RTT, t0 + Duration::from_secs(3));
        assert_eq!(check.poll_timeout(), None);
        assert_eq!(check.counts(), &RepairCounts::default());
    }

    #[test]
    fn the_talker_announces_changes_and_repeats_while_on_air() {
        let t0 = Instant::now();
        let mut check = PathCheck::default();
        let (a, b) = (ChannelId(1), ChannelId(2));
        assert_eq!(check.transmitting(&[a], t0), Some(vec![a]));
        assert_eq!(
            check.transmitting(&[a], t0 + Duration::from_millis(20)),
            None
        );
        assert_eq!(
            check.transmitting(&[a, b], t0 + Duration::from_millis(40)),
            Some(vec![a, b])
        );
        let later = t0 + Duration::from_millis(40) + TALKING_REPEAT;
        assert_eq!(
            check.transmitting(&[a, b], later - Duration::from_millis(1)),
            None
        );
        assert_eq!(check.transmitting(&[a, b], later), Some(vec![a, b]));
        assert_eq!(
            check.transmitting(&[], t0 + TALKING_REPEAT * 2),
            Some(vec![])
        );
        assert_eq!(check.transmitting(&[], t0 + TALKING_REPEAT * 4), None);
        let listener = key(2);
        check.serve(listener, Rung::DirectCopy, t0);
        assert!(check.direct_copy_to(&listener, t0 + DIRECT_COPY_FOR / 2));
        assert!(!check.direct_copy_to(&listener, t0 + DIRECT_COPY_FOR));
    }
}
