//! Hole punching between two members linked only through a relay circuit: a coordinated
//! simultaneous dial over the QUIC endpoint, timed over the circuit.
//!
//! A port-restricted NAT lets a packet in only from an address its host sent to first. Two
//! members behind such NATs therefore reach each other directly only if each sends to the
//! other's public address at about the same time: each one's first packets open its own NAT
//! for the other's. The circuit both hold carries the timing (the DCUtR scheme, run on the
//! member's control channel and clock, so a simulated run replays):
//!
//! 1. The *initiator* (the lower peer id, or whoever notices first that its network changed)
//!    sends [`PunchMessage::Offer`] with its candidate public addresses.
//! 2. The responder answers [`PunchMessage::Answer`] with its own.
//! 3. The initiator, having measured the round trip, sends [`PunchMessage::Sync`] and, half a
//!    round trip later (when the sync arrives), dials the responder's addresses
//!    ([`PunchRole::Dial`]).
//! 4. The responder, on the sync, "dials" in the listener role ([`PunchRole::Await`]): it
//!    sends probes to the initiator's addresses from its QUIC port, opening its NAT, and takes
//!    the initiator's incoming connection.
//!
//! An attempt that brings no direct link within [`PunchConfig::attempt_timeout`] failed; the
//! initiator tries again after a backoff (doubling, capped), and at once when either side's
//! candidate addresses change (a new network, a new mapping). Symmetric NATs give every
//! destination its own port, so an address learned from a third member is the wrong one:
//! those pairs keep the circuit, retried at the capped pace.
//!
//! Sans-IO: every entry point takes `now`; state lives in ordered maps. The member owns
//! sending (control messages over the circuit) and the node owns dialing.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Version byte of [`PunchMessage`] bodies.
pub const PUNCH_VERSION: u8 = 1;

/// Most candidate addresses one message carries (the address book keeps 8).
pub const MAX_PUNCH_ADDRS: usize = 8;

/// One hole punching message, sent over the pair's circuit. Versioned (docs/protocol.md,
/// "Hole punching").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PunchMessage {
    /// "Let us punch; reach me at these addresses."
    Offer {
        /// Names this attempt in the answer and the sync.
        attempt: u64,
        /// The initiator's candidate public addresses.
        addrs: Vec<SocketAddr>,
    },
    /// "Agreed; reach me at these."
    Answer {
        /// The offer's attempt.
        attempt: u64,
        /// The responder's candidate public addresses.
        addrs: Vec<SocketAddr>,
    },
    /// "Go": the initiator dials half a round trip after sending this.
    Sync {
        /// The offer's attempt.
        attempt: u64,
    },
}

/// Why a punch message was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PunchDecodeError {
    /// The version byte is not one we know.
    #[error("unknown hole punch message version {0}")]
    Version(u8),
    /// The body does not parse, or names too many or unusable addresses.
    #[error("malformed hole punch message: {0}")]
    Malformed(String),
}

impl PunchMessage {
    /// Versioned encoding.
    pub fn encode(&self) -> Vec<u8> {
        crate::wire::encode(PUNCH_VERSION, self)
    }

    /// Parses an encoded message; refuses more than [`MAX_PUNCH_ADDRS`] addresses and
    /// addresses nobody can send to (port 0, unspecified, multicast). Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, PunchDecodeError> {
        let message: Self =
            crate::wire::decode(PUNCH_VERSION, 1024, bytes).map_err(|e| match e {
                crate::wire::WireError::Version(v) => PunchDecodeError::Version(v),
                e => PunchDecodeError::Malformed(e.to_string()),
            })?;
        if let PunchMessage::Offer { addrs, .. } | PunchMessage::Answer { addrs, .. } = &message {
            if addrs.len() > MAX_PUNCH_ADDRS {
                return Err(PunchDecodeError::Malformed(format!(
                    "{} addresses",
                    addrs.len()
                )));
            }
            if let Some(bad) = addrs.iter().find(|a| !sendable(a)) {
                return Err(PunchDecodeError::Malformed(format!("address {bad}")));
            }
        }
        Ok(message)
    }
}

fn sendable(addr: &SocketAddr) -> bool {
    addr.port() != 0 && !addr.ip().is_unspecified() && !addr.ip().is_multicast()
}

/// Which half of the simultaneous dial we play.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PunchRole {
    /// Dial the peer's addresses (QUIC client).
    Dial,
    /// Send probes to the peer's addresses from our QUIC port and take its incoming
    /// connection (QUIC server; libp2p's "dial as listener").
    Await,
}

/// What [`HolePunches`] wants done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PunchAction<P> {
    /// Send this message to the peer over the circuit.
    Send(P, PunchMessage),
    /// Start our half of the simultaneous dial.
    Dial {
        /// Whom.
        peer: P,
        /// Its candidate addresses.
        addrs: Vec<SocketAddr>,
        /// How.
        role: PunchRole,
    },
}

/// Timing of [`HolePunches`].
#[derive(Clone, Debug)]
pub struct PunchConfig {
    /// From the circuit coming up to the first offer: the address book learns our candidates
    /// from the first direct links in about this long.
    pub first_after: Duration,
    /// An attempt that brought no direct link in this long failed (the node's dials time out
    /// sooner: 10 s handshake, 10 s of probes).
    pub attempt_timeout: Duration,
    /// The pause after the first failure; it doubles with each further one.
    pub backoff: Duration,
    /// The longest pause between attempts.
    pub max_backoff: Duration,
    /// A network change brings the next attempt forward, but no closer than this to the
    /// previous one.
    pub min_spacing: Duration,
}

impl Default for PunchConfig {
    fn default() -> Self {
        Self {
            first_after: Duration::from_millis(500),
            attempt_timeout: Duration::from_secs(15),
            backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(300),
            min_spacing: Duration::from_secs(2),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Stage {
    /// Offer at this instant (we initiate), or wait for the peer's offer (`None`).
    Idle { offer_at: Option<Instant> },
    /// Our offer is out.
    Offered { attempt: u64, sent_at: Instant },
    /// Answered, sync sent: dial at `dial_at`.
    Synced {
        attempt: u64,
        dial_at: Instant,
        addrs: Vec<SocketAddr>,
    },
    /// We answered the peer's offer; its sync will start our half.
    Answered {
        attempt: u64,
        addrs: Vec<SocketAddr>,
        until: Instant,
    },
    /// Our half of the dial is under way.
    Punching { until: Instant },
}

#[derive(Clone, Debug)]
struct Pair {
    stage: Stage,
    /// Failed attempts since the circuit came up.
    failures: u32,
    /// When the last attempt started (offer sent or received).
    last_attempt: Option<Instant>,
    /// Our addresses changed during the attempt under way: if it fails, try again soon.
    changed: bool,
}

/// The hole punches of one member, for peers named by `P`.
#[derive(Debug)]
pub struct HolePunches<P> {
    config: PunchConfig,
    local: P,
    next_attempt: u64,
    pairs: BTreeMap<P, Pair>,
    actions: VecDeque<PunchAction<P>>,
    /// Attempts that ended without a direct link.
    failed: u64,
}

impl<P: Ord + Clone> HolePunches<P> {
    /// No punches yet; `local` names us (the lower id of a pair initiates).
    pub fn new(config: PunchConfig, local: P) -> Self {
        Self {
            config,
            local,
            next_attempt: 0,
            pairs: BTreeMap::new(),
            actions: VecDeque::new(),
            failed: 0,
        }
    }

    /// `peer` is linked to us only through a circuit: punch (we initiate if ours is the lower
    /// id; the peer does otherwise).
    pub fn relayed(&mut self, peer: P, now: Instant) {
        let offer_at = (self.local < peer).then(|| now + self.config.first_after);
        self.pairs.insert(
            peer,
            Pair {
                stage: Stage::Idle { offer_at },
                failures: 0,
                last_attempt: None,
                changed: false,
            },
        );
    }

    /// `peer` is linked directly now (punched or dialed), or not at all: nothing to punch.
    pub fn forget(&mut self, peer: &P) {
        self.pairs.remove(peer);
    }

    /// Our candidate addresses changed (a new observation, a mapping, a new network): every
    /// idle pair tries again soon, whoever initiated before.
    pub fn network_changed(&mut self, now: Instant) {
        let spacing = self.config.min_spacing;
        for pair in self.pairs.values_mut() {
            match &mut pair.stage {
                Stage::Idle { offer_at } => {
                    let soonest = pair.last_attempt.map_or(now, |at| (at + spacing).max(now));
                    *offer_at = Some(offer_at.map_or(soonest, |at| at.min(soonest)));
                }
                _ => pair.changed = true,
            }
        }
    }

    /// Attempts that ended without a direct link, since start.
    pub fn failed(&self) -> u64 {
        self.failed
    }

    /// A message from `peer`; `ours` are our candidate addresses now.
    pub fn handle_message(
        &mut self,
        peer: P,
        message: PunchMessage,
        ours: &[SocketAddr],
        now: Instant,
    ) {
        let local_lower = self.local < peer;
        let until = now + self.config.attempt_timeout;
        let Some(pair) = self.pairs.get_mut(&peer) else {
            // Not relayed to us (linked directly already, or not at all): nothing to punch.
            return;
        };
        match message {
            PunchMessage::Offer { attempt, addrs } => {
                // Crossing offers: the lower id's goes ahead, the other side answers it.
                let busy = match pair.stage {
                    Stage::Offered { .. } => local_lower,
                    Stage::Idle { .. } => false,
                    _ => true,
                };
                if busy {
                    return;
                }
                pair.last_attempt = Some(now);
                self.actions.push_back(PunchAction::Send(
                    peer.clone(),
                    PunchMessage::Answer {
                        attempt,
                        addrs: ours.iter().take(MAX_PUNCH_ADDRS).copied().collect(),
                    },
                ));
                pair.stage = if addrs.is_empty() || ours.is_empty() {
                    // Nothing to aim at, or nothing for the peer to aim at: the attempt fails
                    // now (at the initiator too, on our empty answer).
                    Stage::Punching { until: now }
                } else {
                    Stage::Answered {
                        attempt,
                        addrs,
                        until,
                    }
                };
            }
            PunchMessage::Answer { attempt, addrs } => {
                let Stage::Offered {
                    attempt: ours_attempt,
                    sent_at,
                } = pair.stage
                else {
                    return;
                };
                if attempt != ours_attempt {
                    return;
                }
                if addrs.is_empty() {
                    pair.stage = Stage::Punching { until: now };
                    return;
                }
                let rtt = now.saturating_duration_since(sent_at);
                self.actions
                    .push_back(PunchAction::Send(peer, PunchMessage::Sync { attempt }));
                pair.stage = Stage::Synced {
                    attempt,
                    dial_at: now + rtt / 2,
                    addrs,
                };
            }
            PunchMessage::Sync { attempt } => {
                let Stage::Answered {
                    attempt: answered,
                    addrs,
                    ..
                } = &pair.stage
                else {
                    return;
                };
                if attempt != *answered {
                    return;
                }
                self.actions.push_back(PunchAction::Dial {
                    peer,
                    addrs: addrs.clone(),
                    role: PunchRole::Await,
                });
                pair.stage = Stage::Punching { until };
            }
        }
    }

    /// Sends due offers, dials synced pairs, and fails attempts that ran out of time; `ours`
    /// are our candidate addresses now (without any, an offer waits for a network change).
    pub fn handle_timeout(&mut self, ours: &[SocketAddr], now: Instant) {
        let Self {
            config,
            local,
            next_attempt,
            pairs,
            actions,
            failed,
            ..
        } = self;
        for (peer, pair) in pairs.iter_mut() {
            match &pair.stage {
                Stage::Idle { offer_at: Some(at) } if *at <= now => {
                    if ours.is_empty() {
                        pair.stage = Stage::Idle { offer_at: None };
                        continue;
                    }
                    *next_attempt += 1;
                    pair.last_attempt = Some(now);
                    actions.push_back(PunchAction::Send(
                        peer.clone(),
                        PunchMessage::Offer {
                            attempt: *next_attempt,
                            addrs: ours.iter().take(MAX_PUNCH_ADDRS).copied().collect(),
                        },
                    ));
                    pair.stage = Stage::Offered {
                        attempt: *next_attempt,
                        sent_at: now,
                    };
                }
                Stage::Synced { dial_at, addrs, .. } if *dial_at <= now => {
                    actions.push_back(PunchAction::Dial {
                        peer: peer.clone(),
                        addrs: addrs.clone(),
                        role: PunchRole::Dial,
                    });
                    pair.stage = Stage::Punching {
                        until: now + config.attempt_timeout,
                    };
                }
                _ => {
                    let Some(until) = pair.deadline(config) else {
                        continue;
                    };
                    if until > now {
                        continue;
                    }
                    *failed += 1;
                    pair.failures += 1;
                    let pause = config
                        .backoff
                        .saturating_mul(1 << (pair.failures - 1).min(16))
                        .min(config.max_backoff);
                    // The lower id offers again after the pause; either side offers as soon as
                    // it may if its addresses changed meanwhile (the other side does not know).
                    let offer_at = if std::mem::take(&mut pair.changed) {
                        pair.last_attempt
                            .map_or(now, |at| (at + config.min_spacing).max(now))
                            .into()
                    } else {
                        (*local < *peer).then_some(now + pause)
                    };
                    pair.stage = Stage::Idle { offer_at };
                }
            }
        }
    }

    /// The next instant [`Self::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pairs
            .values()
            .filter_map(|pair| match &pair.stage {
                Stage::Idle { offer_at } => *offer_at,
                Stage::Synced { dial_at, .. } => Some(*dial_at),
                _ => pair.deadline(&self.config),
            })
            .min()
    }

    /// What to do next.
    pub fn poll_action(&mut self) -> Option<PunchAction<P>> {
        self.actions.pop_front()
    }
}

impl Pair {
    /// When the attempt under way has failed if no direct link came.
    fn deadline(&self, config: &PunchConfig) -> Option<Instant> {
        match &self.stage {
            Stage::Idle { .. } | Stage::Synced { .. } => None,
            Stage::Offered { sent_at, .. } => Some(*sent_at + config.attempt_timeout),
            Stage::Answered { until, .. } | Stage::Punching { until } => Some(*until),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Runs both sides' actions through a circuit with a one-way delay of `half_rtt`, until
    /// both have dialed; returns when each dialed and how.
    fn run_pair(
        a: &mut HolePunches<u8>,
        b: &mut HolePunches<u8>,
        a_addrs: &[SocketAddr],
        b_addrs: &[SocketAddr],
        half_rtt: Duration,
        start: Instant,
    ) -> Vec<(u8, Instant, PunchRole, Vec<SocketAddr>)> {
        let mut in_flight: Vec<(Instant, u8, PunchMessage)> = Vec::new();
        let mut dials = Vec::new();
        let mut now = start;
        let end = start + Duration::from_secs(5);
        while now < end && dials.len() < 2 {
            for (who, side, ours) in [(0u8, &mut *a, a_addrs), (1u8, &mut *b, b_addrs)] {
                let mut delivered = Vec::new();
                in_flight.retain(|(at, to, m)| {
                    let due = *at <= now && *to == who;
                    if due {
                        delivered.push(m.clone());
                    }
                    !due
                });
                for m in delivered {
                    side.handle_message(1 - who, m, ours, now);
                }
                side.handle_timeout(ours, now);
                while let Some(action) = side.poll_action() {
                    match action {
                        PunchAction::Send(to, m) => in_flight.push((now + half_rtt, to, m)),
                        PunchAction::Dial { addrs, role, .. } => {
                            dials.push((who, now, role, addrs))
                        }
                    }
                }
            }
            now += Duration::from_millis(1);
        }
        dials
    }

    #[test]
    fn both_halves_dial_at_the_same_instant_each_at_the_others_addresses() {
        let start = Instant::now();
        let (a_addrs, b_addrs) = ([addr("198.51.100.7:4000")], [addr("203.0.113.9:5000")]);
        let mut a = HolePunches::new(PunchConfig::default(), 0u8);
        let mut b = HolePunches::new(PunchConfig::default(), 1u8);
        a.relayed(1, start);
        b.relayed(0, start);
        let half = Duration::from_millis(40);
        let dials = run_pair(&mut a, &mut b, &a_addrs, &b_addrs, half, start);
        assert_eq!(dials.len(), 2, "{dials:?}");
        let initiator = dials.iter().find(|d| d.0 == 0).unwrap();
        let responder = dials.iter().find(|d| d.0 == 1).unwrap();
        assert_eq!(initiator.2, PunchRole::Dial);
        assert_eq!(initiator.3, b_addrs);
        assert_eq!(responder.2, PunchRole::Await);
        assert_eq!(responder.3, a_addrs);
        // Offer after 500 ms, answer back 80 ms later, sync arrives 40 ms after that: both at
        // 620 ms.
        let at = |d: &(u8, Instant, PunchRole, Vec<SocketAddr>)| d.1 - start;
        assert_eq!(at(initiator), Duration::from_millis(620));
        assert_eq!(at(responder), at(initiator));
    }

    #[test]
    fn failed_attempts_back_off_and_a_network_change_brings_the_next_forward() {
        let config = PunchConfig::default();
        let start = Instant::now();
        let ours = [addr("198.51.100.7:4000")];
        let mut a = HolePunches::new(config.clone(), 0u8);
        a.relayed(1, start);
        a.handle_timeout(&ours, start + config.first_after);
        assert!(matches!(
            a.poll_action(),
            Some(PunchAction::Send(1, PunchMessage::Offer { .. }))
        ));
        // No answer: the attempt fails, and the next waits for the backoff.
        let failed_at = start + config.first_after + config.attempt_timeout;
        a.handle_timeout(&ours, failed_at);
        assert_eq!(a.failed(), 1);
        assert_eq!(a.poll_timeout(), Some(failed_at + config.backoff));
        // A second failure doubles it.
        a.handle_timeout(&ours, failed_at + config.backoff);
        assert!(a.poll_action().is_some());
        let second = failed_at + config.backoff + config.attempt_timeout;
        a.handle_timeout(&ours, second);
        assert_eq!(a.poll_timeout(), Some(second + config.backoff * 2));
        // A new address: try again now (the last attempt was long enough ago).
        let later = second + Duration::from_secs(3);
        a.network_changed(later);
        assert_eq!(a.poll_timeout(), Some(later));
    }

    #[test]
    fn the_higher_id_waits_for_an_offer_unless_its_network_changes() {
        let start = Instant::now();
        let mut b = HolePunches::new(PunchConfig::default(), 1u8);
        b.relayed(0, start);
        assert_eq!(b.poll_timeout(), None);
        b.network_changed(start + Duration::from_secs(1));
        assert_eq!(b.poll_timeout(), Some(start + Duration::from_secs(1)));
    }

    #[test]
    fn crossing_offers_go_ahead_with_the_lower_ids() {
        let start = Instant::now();
        let ours = [addr("198.51.100.7:4000")];
        let theirs = vec![addr("203.0.113.9:5000")];
        for local in [0u8, 2u8] {
            let mut side = HolePunches::new(PunchConfig::default(), local);
            side.relayed(1, start);
            side.network_changed(start);
            side.handle_timeout(&ours, start);
            assert!(side.poll_action().is_some(), "our offer");
            side.handle_message(
                1,
                PunchMessage::Offer {
                    attempt: 9,
                    addrs: theirs.clone(),
                },
                &ours,
                start,
            );
            let answered = matches!(
                side.poll_action(),
                Some(PunchAction::Send(
                    1,
                    PunchMessage::Answer { attempt: 9, .. }
                ))
            );
            assert_eq!(answered, local > 1, "local {local}");
        }
    }

    #[test]
    fn no_candidates_no_offer_and_an_empty_answer_fails_the_attempt() {
        let start = Instant::now();
        let mut a = HolePunches::new(PunchConfig::default(), 0u8);
        a.relayed(1, start);
        a.handle_timeout(&[], start + Duration::from_secs(1));
        assert_eq!(a.poll_action(), None);
        assert_eq!(a.poll_timeout(), None, "waits for a network change");
        let ours = [addr("198.51.100.7:4000")];
        a.network_changed(start + Duration::from_secs(2));
        a.handle_timeout(&ours, start + Duration::from_secs(2));
        let Some(PunchAction::Send(_, PunchMessage::Offer { attempt, .. })) = a.poll_action()
        else {
            panic!("no offer")
        };
        a.handle_message(
            1,
            PunchMessage::Answer {
                attempt,
                addrs: vec![],
            },
            &ours,
            start + Duration::from_secs(2),
        );
        assert_eq!(a.poll_action(), None, "no sync, no dial");
    }

    #[test]
    fn messages_round_trip_and_bad_ones_are_refused() {
        let offer = PunchMessage::Offer {
            attempt: 3,
            addrs: vec![addr("198.51.100.7:4000"), addr("[2001:db8::1]:9")],
        };
        assert_eq!(PunchMessage::decode(&offer.encode()), Ok(offer));
        let too_many = PunchMessage::Answer {
            attempt: 1,
            addrs: vec![addr("198.51.100.7:4000"); MAX_PUNCH_ADDRS + 1],
        };
        assert!(PunchMessage::decode(&too_many.encode()).is_err());
        let unsendable = PunchMessage::Offer {
            attempt: 1,
            addrs: vec![addr("0.0.0.0:4000")],
        };
        assert!(PunchMessage::decode(&unsendable.encode()).is_err());
        let mut wrong_version = PunchMessage::Sync { attempt: 1 }.encode();
        wrong_version[0] = 9;
        assert_eq!(
            PunchMessage::decode(&wrong_version),
            Err(PunchDecodeError::Version(9))
        );
        assert!(PunchMessage::decode(&[]).is_err());
        assert!(PunchMessage::decode(&[PUNCH_VERSION, 0xff, 0xff]).is_err());
    }
}
