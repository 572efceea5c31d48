//! Starting and restarting a pair session ([`crate::e2ee::PairSession`]) over a link that may
//! be replaced, restarted or lose a message at any time.
//!
//! Either side can lose its session state (a link restart, a control message lost with its
//! connection, a process restart) while the other keeps going. Without care the two end up
//! waiting for each other: a fresh responder waits for a first message the initiator already
//! sent to its predecessor, or an initiator applies a reply meant for an older attempt. So
//! every handshake message names its *attempt*: the initiator numbers each start, higher than
//! any before (its base is taken from the clock at process start), and
//!
//! - the responder takes a message with a higher attempt as a new start (forgetting any
//!   session), ignores lower ones, and after losing state or failing a message asks the
//!   initiator to start again (an empty message);
//! - the initiator ignores replies to other attempts, starts again when asked, and starts
//!   again on its own when an attempt is not done after [`PairingConfig::retry_after`].
//!
//! When both sides restart at once, the initiator's new start and the responder's request
//! cross: the responder answers the new start, the initiator starts once more on the request
//! and ignores the answer to the superseded attempt, and the next round completes. A responder
//! never answers a start with a request to start again, so this cannot repeat forever.
//!
//! Wire form of a handshake body: attempt (u64, big-endian) ‖ Noise message (empty: "start
//! again"). The lower peer id initiates, so two crossing starts cannot happen.
//!
//! Sans-IO: bytes in, bytes out, `now` passed in.

use crate::e2ee::{PairSession, SessionError};
use callsign_keys::{IdentityKey, NodeKeys};
use std::time::{Duration, Instant};

/// Timing of [`Pairing`].
#[derive(Clone, Debug)]
pub struct PairingConfig {
    /// An initiator's attempt not established after this starts over.
    pub retry_after: Duration,
}

impl Default for PairingConfig {
    fn default() -> Self {
        Self {
            retry_after: Duration::from_secs(3),
        }
    }
}

/// What handling a message produced.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PairingStep {
    /// Send these handshake bodies to the peer, in order.
    pub send: Vec<Vec<u8>>,
    /// The session has just been established (new keys: the peer's old grants are void).
    pub established: bool,
    /// A message was refused (logged by the caller); the step already asks for a new start.
    pub error: Option<SessionError>,
}

#[derive(Debug)]
enum Role {
    Initiator { next: u64, started: Instant },
    Responder,
}

/// One side of the pair session with a peer, and its restart rules.
#[derive(Debug)]
pub struct Pairing {
    peer: IdentityKey,
    config: PairingConfig,
    role: Role,
    /// The attempt the session belongs to (responder: the newest it has seen).
    attempt: Option<u64>,
    session: Option<PairSession>,
}

/// A Noise XX first message: the initiator's ephemeral key, no payload.
const FIRST_MESSAGE_LEN: usize = 32;

fn frame(attempt: u64, noise: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + noise.len());
    out.extend_from_slice(&attempt.to_be_bytes());
    out.extend_from_slice(noise);
    out
}

impl Pairing {
    /// The initiating side: returns the first message (attempt `first_attempt`).
    pub fn initiate(
        keys: &NodeKeys,
        peer: IdentityKey,
        first_attempt: u64,
        config: PairingConfig,
        now: Instant,
    ) -> (Self, PairingStep) {
        let mut pairing = Self {
            peer,
            config,
            role: Role::Initiator {
                next: first_attempt,
                started: now,
            },
            attempt: None,
            session: None,
        };
        let step = pairing.start(keys, now);
        (pairing, step)
    }

    /// The responding side. `restarted`: we had a session on this link and lost it, so the
    /// initiator is asked to start again.
    pub fn respond(
        peer: IdentityKey,
        config: PairingConfig,
        restarted: bool,
    ) -> (Self, PairingStep) {
        let pairing = Self {
            peer,
            config,
            role: Role::Responder,
            attempt: None,
            session: None,
        };
        let mut step = PairingStep::default();
        if restarted {
            step.send.push(frame(0, &[]));
        }
        (pairing, step)
    }

    /// The established session (grants), if any.
    pub fn session(&mut self) -> Option<&mut PairSession> {
        self.session.as_mut().filter(|s| s.is_established())
    }

    /// True once the handshake completed.
    pub fn is_established(&self) -> bool {
        self.session
            .as_ref()
            .is_some_and(PairSession::is_established)
    }

    fn start(&mut self, keys: &NodeKeys, now: Instant) -> PairingStep {
        let mut step = PairingStep::default();
        let Role::Initiator { next, started } = &mut self.role else {
            return step;
        };
        let attempt = *next;
        *next += 1;
        *started = now;
        self.attempt = Some(attempt);
        match PairSession::initiate(keys, self.peer) {
            Ok((session, first)) => {
                self.session = Some(session);
                step.send.push(frame(attempt, &first));
            }
            Err(e) => {
                self.session = None;
                step.error = Some(e);
            }
        }
        step
    }

    /// A handshake body from the peer.
    pub fn handle(&mut self, keys: &NodeKeys, body: &[u8], now: Instant) -> PairingStep {
        let Some((attempt, noise)) = body
            .split_first_chunk::<8>()
            .map(|(a, rest)| (u64::from_be_bytes(*a), rest))
        else {
            return PairingStep {
                error: Some(SessionError::Noise("handshake body too short".into())),
                ..PairingStep::default()
            };
        };
        match self.role {
            Role::Initiator { .. } => {
                if noise.is_empty() {
                    // The request names the newest attempt the responder saw: start above it
                    // (our clock may have gone back since a previous run).
                    if let Role::Initiator { next, .. } = &mut self.role {
                        *next = (*next).max(attempt.saturating_add(1));
                    }
                    return self.start(keys, now);
                }
                if Some(attempt) != self.attempt {
                    // A reply to an attempt we gave up on.
                    return PairingStep::default();
                }
                self.advance(noise, attempt)
            }
            Role::Responder => {
                if noise.is_empty() {
                    return PairingStep::default();
                }
                match self.attempt {
                    Some(current) if attempt < current => {
                        // Older than what we hold: an initiator whose attempts restarted lower
                        // (or a leftover, which costs one more start). Tell it where we are.
                        if noise.len() == FIRST_MESSAGE_LEN {
                            return PairingStep {
                                send: vec![frame(current, &[])],
                                ..PairingStep::default()
                            };
                        }
                        return PairingStep::default();
                    }
                    Some(current) if attempt == current => {}
                    _ => return self.new_start(keys, noise, attempt),
                }
                self.advance(noise, attempt)
            }
        }
    }

    /// A responder's first message of a new attempt: adopted only if it is one (a malformed
    /// message must not make us ignore the initiator's real attempts).
    fn new_start(&mut self, keys: &NodeKeys, noise: &[u8], attempt: u64) -> PairingStep {
        let mut step = PairingStep::default();
        let started = PairSession::respond(keys, self.peer).and_then(|mut session| {
            let reply = session.handle_handshake(noise)?;
            Ok((session, reply))
        });
        match started {
            Ok((session, reply)) => {
                self.attempt = Some(attempt);
                self.session = Some(session);
                step.send.extend(reply.map(|r| frame(attempt, &r)));
            }
            Err(e) => {
                step.error = Some(e);
                step.send.push(frame(attempt, &[]));
            }
        }
        step
    }

    fn advance(&mut self, noise: &[u8], attempt: u64) -> PairingStep {
        let mut step = PairingStep::default();
        let Some(session) = self.session.as_mut() else {
            return step;
        };
        if session.is_established() {
            // A repeat of this attempt's handshake: the session stands.
            return step;
        }
        match session.handle_handshake(noise) {
            Ok(reply) => {
                if let Some(reply) = reply {
                    step.send.push(frame(attempt, &reply));
                }
                step.established = session.is_established();
            }
            Err(e) => {
                self.session = None;
                step.error = Some(e);
                if matches!(self.role, Role::Responder) {
                    // The initiator may believe it is done: ask it to start over.
                    step.send.push(frame(attempt, &[]));
                }
                // An initiator retries on its timer (not at once: a peer that keeps refusing
                // would otherwise keep us spinning).
            }
        }
        step
    }

    /// When [`Self::handle_timeout`] has work: an initiator's unfinished attempt expiring.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.role {
            Role::Initiator { started, .. } if !self.is_established() => {
                Some(started + self.config.retry_after)
            }
            _ => None,
        }
    }

    /// Starts a new attempt if the current one is overdue.
    pub fn handle_timeout(&mut self, keys: &NodeKeys, now: Instant) -> PairingStep {
        match self.poll_timeout() {
            Some(due) if due <= now => self.start(keys, now),
            _ => PairingStep::default(),
        }
    }
}
