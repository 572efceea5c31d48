//! One half-duplex channel's floor as this member sees it: every member's claim, the arbiter's
//! ruling when there is one, and what follows for us (idle, pending, granted, queued,
//! releasing) and for the channel (who holds the floor, who raised an emergency).

use super::arbiter::Arbitration;
use super::message::{Claim, Decision, FloorMessage, FloorRequest, Slot};
use super::shared::Shared;
use super::{FloorEvent, LocalFloor};
use crate::charter::ChannelId;
use callsign_keys::IdentityKey;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

mod claims;
mod timers;

/// Why we give up our request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Withdrawal {
    /// PTT released.
    Released,
    /// A higher priority took the floor.
    Preempted(IdentityKey),
    /// The talk time for our priority ran out.
    TimeLimit,
    /// The channel stopped being half-duplex (or went away).
    Closed,
}

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct ChannelFloor {
    channel: ChannelId,
    mine: Claim,
    /// `mine.rev` when the live request was made: what acknowledgements must reach.
    request_rev: u32,
    /// `mine.rev` of our last release, until every participant has seen it.
    release_rev: Option<u32>,
    /// When `mine` last changed (pending and releasing time out from here).
    changed_at: Instant,
    granted_at: Option<Instant>,
    /// The stamp clock when we were last granted the floor (see `refresh`).
    granted_stamp: u64,
    claims: BTreeMap<IdentityKey, Claim>,
    /// Claims at or below this rev are ignored: their talker went silent while holding the floor.
    vanished: BTreeMap<IdentityKey, u32>,
    /// The newest rev of `mine` each peer has acknowledged.
    seen_by: BTreeMap<IdentityKey, u32>,
    /// Emergencies raised and not cleared: raiser → the rev that raised it. Kept when the
    /// raiser's link drops: only the raiser or an admin ends an emergency.
    emergencies: BTreeMap<IdentityKey, u32>,
    /// Emergencies an admin cleared: raiser → the newest cleared rev.
    cleared: BTreeMap<IdentityKey, u32>,
    arbiter: Option<IdentityKey>,
    /// When the arbiter was last heard (it repeats its ruling every heartbeat).
    arbiter_heard: Instant,
    /// The arbiter has not been heard for the silence timeout: the members' rule applies until
    /// it is heard again.
    arbiter_silent: bool,
    /// As arbiter: when to repeat the ruling.
    next_ruling: Option<Instant>,
    decision: Option<Decision>,
    /// Set while we are the arbiter.
    arbitration: Option<Arbitration>,
    /// Members that told us they are on air here (`crate::path`): they hold the floor in
    /// their own view. Where the arbiter's ruling names nobody, the best-ranked of them with a
    /// live claim holds it in ours too (docs/protocol.md: one rule under faults).
    on_air: BTreeSet<IdentityKey>,
    state: LocalFloor,
    leader: Option<IdentityKey>,
    /// The holder before `leader`: its closing frame may still be on the way.
    previous: Option<IdentityKey>,
    leader_since: Instant,
    /// When each peer was last heard here: audio, or a claim (a holder repeats its claim every
    /// [`FloorConfig::heartbeat`](super::FloorConfig::heartbeat) so that members who hear no
    /// audio, such as an arbiter, can tell it is alive). A claim held for long unheard is
    /// stale by the time it comes to lead, say when the ruling that outranked it goes.
    heard: BTreeMap<IdentityKey, Instant>,
    /// When the holder's audio was last played (claims do not count).
    audio_at: Option<Instant>,
    next_heartbeat: Option<Instant>,
    /// While we lead but wait for acknowledgements: when to repeat our claim to those that
    /// have not acknowledged it ([`FloorConfig::claim_resend`](super::FloorConfig::claim_resend)).
    next_resend: Option<Instant>,
}

impl ChannelFloor {
    pub(crate) fn new(channel: ChannelId, now: Instant) -> Self {
        Self {
            channel,
            mine: Claim::default(),
            request_rev: 0,
            release_rev: None,
            changed_at: now,
            granted_at: None,
            granted_stamp: 0,
            claims: BTreeMap::new(),
            vanished: BTreeMap::new(),
            seen_by: BTreeMap::new(),
            emergencies: BTreeMap::new(),
            cleared: BTreeMap::new(),
            arbiter: None,
            arbiter_heard: now,
            arbiter_silent: false,
            next_ruling: None,
            decision: None,
            arbitration: None,
            on_air: BTreeSet::new(),
            state: LocalFloor::Idle,
            leader: None,
            previous: None,
            heard: BTreeMap::new(),
            leader_since: now,
            audio_at: None,
            next_heartbeat: None,
            next_resend: None,
        }
    }

    pub(crate) fn state(&self) -> LocalFloor {
        self.state
    }

    pub(crate) fn leader(&self) -> Option<IdentityKey> {
        self.leader
    }

    pub(crate) fn previous(&self) -> Option<IdentityKey> {
        self.previous
    }

    pub(crate) fn emergencies(&self) -> impl Iterator<Item = &IdentityKey> {
        self.emergencies.keys()
    }

    pub(crate) fn mine(&self) -> &Claim {
        &self.mine
    }

    pub(crate) fn arbiter(&self) -> Option<IdentityKey> {
        self.arbiter
    }

    /// The arbiter whose rulings we follow now: none while it is silent.
    fn ruling(&self) -> Option<IdentityKey> {
        self.arbiter.filter(|_| !self.arbiter_silent)
    }

    fn send_ruling(&mut self, sh: &mut Shared, now: Instant) {
        let Some(decision) = &self.decision else {
            return;
        };
        for peer in sh.participants.clone() {
            let message = FloorMessage::Decision {
                channel: self.channel,
                decision: decision.clone(),
            };
            sh.transmits.push_back((peer, message));
        }
        self.next_ruling = Some(now + sh.config.heartbeat());
    }

    /// A new link: it learns our claim and, if we arbitrate, our ruling.
    pub(crate) fn peer_up(&mut self, sh: &mut Shared, peer: IdentityKey) {
        self.send_claim(sh, peer);
        if self.arbitration.is_some() {
            if let Some(decision) = &self.decision {
                let message = FloorMessage::Decision {
                    channel: self.channel,
                    decision: decision.clone(),
                };
                sh.transmits.push_back((peer, message));
            }
        }
    }

    /// A lost link: the peer's request goes (its emergency stays).
    pub(crate) fn peer_down(&mut self, sh: &mut Shared, peer: &IdentityKey, now: Instant) {
        self.claims.remove(peer);
        self.on_air.remove(peer);
        self.seen_by.remove(peer);
        self.vanished.remove(peer);
        self.heard.remove(peer);
        self.refresh(sh, now);
    }

    /// We press (already checked against the charter).
    pub(crate) fn request(&mut self, sh: &mut Shared, request: FloorRequest, now: Instant) {
        self.mine.rev += 1;
        self.request_rev = self.mine.rev;
        self.mine.request = Some(request);
        if request.emergency && self.mine.emergency.is_none() {
            self.mine.emergency = Some(self.mine.rev);
            sh.events.push_back(FloorEvent::EmergencyRaised {
                channel: self.channel,
                by: sh.local,
            });
        }
        self.changed_at = now;
        self.granted_at = None;
        self.release_rev = None;
        // A fresh request starts from no state: whatever we held before is gone.
        self.state = LocalFloor::Idle;
        self.broadcast_claim(sh);
        self.refresh(sh, now);
    }

    /// We give up our request, telling why.
    pub(crate) fn withdraw(&mut self, sh: &mut Shared, why: Withdrawal, now: Instant) {
        if self.mine.request.is_none() {
            return;
        }
        self.mine.rev += 1;
        self.mine.request = None;
        self.release_rev = Some(self.mine.rev);
        self.changed_at = now;
        self.granted_at = None;
        self.state = LocalFloor::Releasing;
        self.next_resend = Some(now + sh.config.claim_resend());
        let channel = self.channel;
        sh.events.push_back(match why {
            Withdrawal::Released | Withdrawal::Closed => FloorEvent::Released { channel },
            Withdrawal::Preempted(by) => FloorEvent::Preempted { channel, by },
            Withdrawal::TimeLimit => FloorEvent::Revoked { channel },
        });
        self.broadcast_claim(sh);
        if why != Withdrawal::Closed {
            self.refresh(sh, now);
        }
    }

    /// We clear the emergency we raised.
    pub(crate) fn clear_own_emergency(&mut self, sh: &mut Shared, by: IdentityKey, now: Instant) {
        if self.mine.emergency.take().is_none() {
            return;
        }
        self.mine.rev += 1;
        self.changed_at = now;
        sh.events.push_back(FloorEvent::EmergencyCleared {
            channel: self.channel,
            raiser: sh.local,
            by,
        });
        self.broadcast_claim(sh);
        self.refresh(sh, now);
    }

    /// An admin (checked by the caller) clears `raiser`'s emergency raised at `raised`.
    pub(crate) fn clear_emergency(
        &mut self,
        sh: &mut Shared,
        raiser: IdentityKey,
        raised: u32,
        by: IdentityKey,
        now: Instant,
    ) {
        if raiser == sh.local {
            if self.mine.emergency == Some(raised) {
                self.clear_own_emergency(sh, by, now);
            }
            return;
        }
        let cleared = self.cleared.entry(raiser).or_default();
        *cleared = (*cleared).max(raised);
        if self.emergencies.get(&raiser).is_some_and(|e| *e <= raised) {
            self.emergencies.remove(&raiser);
            sh.events.push_back(FloorEvent::EmergencyCleared {
                channel: self.channel,
                raiser,
                by,
            });
        }
    }

    /// The emergency `raiser` holds, if any (for an admin's clear).
    pub(crate) fn emergency_of(&self, sh: &Shared, raiser: &IdentityKey) -> Option<u32> {
        if *raiser == sh.local {
            self.mine.emergency
        } else {
            self.emergencies.get(raiser).copied()
        }
    }

    /// A peer's claim (already checked against the charter).
    pub(crate) fn receive_claim(
        &mut self,
        sh: &mut Shared,
        from: IdentityKey,
        claim: Claim,
        seen: Option<u32>,
        now: Instant,
    ) {
        if let Some(seen) = seen {
            let acked = self.seen_by.entry(from).or_default();
            *acked = (*acked).max(seen);
        }
        self.heard_from(&from, now);
        // A holder we took for silent speaks again (its heartbeat claim, after a partition
        // or a burst longer than the silence timeout): it holds the floor in its own view, so
        // by the one rule it holds it in ours.
        self.vanished.remove(&from);
        let newer = self.claims.get(&from).is_none_or(|c| claim.rev > c.rev);
        if newer {
            if let Some(request) = claim.request {
                sh.observe(request.stamp);
            }
            self.claims.insert(from, claim);
            self.send_claim(sh, from);
            match claim.emergency {
                Some(raised)
                    if self.cleared.get(&from).is_none_or(|c| *c < raised)
                        && self.emergencies.get(&from) != Some(&raised) =>
                {
                    self.emergencies.insert(from, raised);
                    sh.events.push_back(FloorEvent::EmergencyRaised {
                        channel: self.channel,
                        by: from,
                    });
                }
                None if self.emergencies.remove(&from).is_some() => {
                    sh.events.push_back(FloorEvent::EmergencyCleared {
                        channel: self.channel,
                        raiser: from,
                        by: from,
                    });
                }
                _ => {}
            }
        }
        self.refresh(sh, now);
    }

    /// A ruling from the channel's arbiter (checked by the caller).
    pub(crate) fn receive_decision(&mut self, sh: &mut Shared, decision: Decision, now: Instant) {
        self.arbiter_heard = now;
        if std::mem::take(&mut self.arbiter_silent) {
            tracing::debug!(channel = %self.channel, "arbiter heard again");
        }
        if self
            .decision
            .as_ref()
            .is_some_and(|d| d.rev >= decision.rev)
        {
            return;
        }
        sh.observe(decision.rev);
        self.decision = Some(decision);
        self.refresh(sh, now);
    }

    /// Who arbitrates (`None`: the members, by rule). Changing arbiter starts from no ruling.
    pub(crate) fn set_arbiter(
        &mut self,
        sh: &mut Shared,
        arbiter: Option<IdentityKey>,
        now: Instant,
    ) {
        if self.arbiter == arbiter {
            return;
        }
        self.arbiter = arbiter;
        self.arbiter_heard = now;
        self.arbiter_silent = false;
        self.decision = None;
        self.next_ruling = None;
        self.arbitration = (arbiter == Some(sh.local)).then(Arbitration::default);
        if self.arbitration.is_some() {
            // Rule at once, even on an idle floor: the ruling is also our heartbeat.
            self.decision = Some(Decision {
                rev: sh.stamp(now),
                ..Decision::default()
            });
            self.send_ruling(sh, now);
        }
        self.refresh(sh, now);
    }

    /// Audio or a claim from `peer`: a holder is alive.
    pub(crate) fn heard_from(&mut self, peer: &IdentityKey, now: Instant) {
        self.heard.insert(*peer, now);
    }

    /// `peer` told us it is on air here (`on`), or off air.
    pub(crate) fn set_on_air(
        &mut self,
        sh: &mut Shared,
        peer: IdentityKey,
        on: bool,
        now: Instant,
    ) {
        let changed = if on {
            self.on_air.insert(peer)
        } else {
            self.on_air.remove(&peer)
        };
        if changed {
            self.refresh(sh, now);
        }
    }

    /// Audio from `peer` played.
    pub(crate) fn audio_from(&mut self, peer: &IdentityKey, now: Instant) {
        self.heard_from(peer, now);
        if self.leader.as_ref() == Some(peer) {
            self.audio_at = Some(now);
        }
    }

    /// When the holder's audio was last played, if it has been since it took the floor.
    pub(crate) fn holder_audio_at(&self) -> Option<Instant> {
        self.audio_at
    }

    fn live(&self, local: IdentityKey) -> Vec<(IdentityKey, FloorRequest)> {
        let theirs = self.claims.iter().filter_map(|(peer, claim)| {
            let vanished = self.vanished.get(peer).is_some_and(|v| claim.rev <= *v);
            let request = claim.request.filter(|_| !vanished)?;
            Some((*peer, request))
        });
        self.mine
            .request
            .map(|r| (local, r))
            .into_iter()
            .chain(theirs)
            .collect()
    }

    /// Recomputes the ruling (as arbiter), the holder and our own state, emitting what changed.
    pub(crate) fn refresh(&mut self, sh: &mut Shared, now: Instant) {
        let live = self.live(sh.local);
        if let Some(arbitration) = &mut self.arbitration {
            if arbitration.update(&live) {
                self.decision = Some(arbitration.decision(sh.stamp(now)));
                self.send_ruling(sh, now);
            }
        }
        let mine = self.mine.request.map(|r| Slot {
            peer: sh.local,
            stamp: r.stamp,
        });
        let leader = if self.ruling().is_some() {
            // Our own slot counts only for the request we hold now.
            let ruled = self
                .decision
                .as_ref()
                .and_then(|d| d.holder)
                .filter(|slot| slot.peer != sh.local || Some(*slot) == mine)
                .map(|slot| slot.peer);
            // A ruling that names nobody has not heard the claim of whoever is on air: one
            // cut off from the arbiter that granted itself by the members' rule, or one the
            // arbiter granted before it restarted (us, perhaps). The best-ranked of them holds
            // the floor here as in their own views.
            ruled.or_else(|| {
                live.iter()
                    .filter(|(peer, _)| {
                        self.on_air.contains(peer)
                            || (*peer == sh.local && self.state == LocalFloor::Granted)
                    })
                    .min_by_key(|(peer, request)| request.rank(peer))
                    .map(|(peer, _)| *peer)
            })
        } else {
            live.iter()
                .min_by_key(|(peer, request)| request.rank(peer))
                .map(|(peer, _)| *peer)
        };
        if leader != self.leader {
            self.previous = self.leader.or(self.previous);
            self.leader = leader;
            self.leader_since = now;
            self.audio_at = None;
            sh.events.push_back(FloorEvent::Holder {
                channel: self.channel,
                holder: leader,
            });
        }
        // A grant made before the new holder pressed is lost to a pre-emption, which ends our
        // request. A grant made after (by the clock of stamps) was made on a view that missed
        // its claim still in flight, say because the old holder's release overtook it: we
        // never held the floor, so we go back to the queue.
        let stale_grant = leader.is_some_and(|holder| {
            live.iter()
                .any(|(peer, r)| *peer == holder && r.stamp < self.granted_stamp)
        });
        let next = match (self.mine.request, mine) {
            (Some(request), Some(slot)) => {
                if leader == Some(sh.local) {
                    let all_acked = self.all_acked(sh, self.request_rev);
                    let timed_out = now >= self.changed_at + sh.config.ack_timeout;
                    let acked = self.ruling().is_some() || all_acked || timed_out;
                    if self.state == LocalFloor::Pending && timed_out && !all_acked {
                        self.mark_silent(sh, self.request_rev);
                    }
                    if self.state == LocalFloor::Granted || acked {
                        LocalFloor::Granted
                    } else {
                        LocalFloor::Pending
                    }
                } else if self.state == LocalFloor::Granted && !stale_grant {
                    match leader {
                        Some(by) => {
                            self.withdraw(sh, Withdrawal::Preempted(by), now);
                            return;
                        }
                        // An arbiter that lost its ruling rebuilds it from our claim.
                        None => LocalFloor::Granted,
                    }
                } else if self.ruling().is_some() {
                    self.decision
                        .as_ref()
                        .and_then(|d| d.queue.iter().position(|s| *s == slot))
                        .map_or(LocalFloor::Pending, |i| LocalFloor::Queued(i + 1))
                } else {
                    let ahead = live
                        .iter()
                        .filter(|(peer, r)| r.rank(peer) < request.rank(&sh.local))
                        .count();
                    LocalFloor::Queued(ahead.max(1))
                }
            }
            _ => match self.release_rev {
                Some(rev)
                    if !self.all_acked(sh, rev)
                        && now < self.changed_at + sh.config.ack_timeout =>
                {
                    LocalFloor::Releasing
                }
                _ => {
                    self.release_rev = None;
                    LocalFloor::Idle
                }
            },
        };
        if next != self.state {
            match next {
                LocalFloor::Granted => {
                    self.granted_at = Some(now);
                    self.granted_stamp = sh.clock(now);
                    // Granted from the queue: members have not heard from us since our
                    // claim and give a holder unheard for long only a heartbeat to speak
                    // (`silence_deadline`), so say we hold it at once.
                    let waited = now >= self.changed_at + sh.config.heartbeat();
                    self.next_heartbeat = Some(if waited {
                        now
                    } else {
                        now + sh.config.heartbeat()
                    });
                    sh.events.push_back(FloorEvent::Granted {
                        channel: self.channel,
                    });
                }
                LocalFloor::Queued(position) => sh.events.push_back(FloorEvent::Queued {
                    channel: self.channel,
                    position,
                }),
                LocalFloor::Pending => self.next_resend = Some(now + sh.config.claim_resend()),
                _ => {}
            }
            self.state = next;
        }
    }
}
