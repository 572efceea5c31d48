//! The state every channel's floor shares (split out so `channel` and `control` both use it
//! without depending on each other).

use super::message::FloorMessage;
use super::{FloorConfig, FloorEvent};
use callsign_keys::IdentityKey;
use std::collections::{BTreeSet, VecDeque};
use std::time::Instant;

/// What every channel's floor shares: who we are, who is linked, the clock, the outboxes.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) local: IdentityKey,
    pub(crate) config: FloorConfig,
    /// Linked members: who must acknowledge a request, who hears our claims.
    pub(crate) participants: BTreeSet<IdentityKey>,
    /// Participants that let a request's acknowledgement time out: not waited for again until
    /// they send us a floor message. A member that left or crashed keeps its link until QUIC's
    /// idle timeout (its goodbye may be lost); without this every press waited the full
    /// acknowledgement timeout on it (chaos seeds 8, 16, 20).
    pub(crate) silent: BTreeSet<IdentityKey>,
    /// Who may request a floor at all (the charter's members and admins): only their
    /// acknowledgements are waited for, since only their requests can cross ours. A rented
    /// relay hears claims (to arbitrate) but never requests.
    pub(crate) requesters: BTreeSet<IdentityKey>,
    epoch: Instant,
    epoch_unix_ms: u64,
    /// The hybrid logical clock (ms): never behind the Unix clock or any stamp seen.
    hlc: u64,
    pub(crate) transmits: VecDeque<(IdentityKey, FloorMessage)>,
    pub(crate) events: VecDeque<FloorEvent>,
    /// Arbiters that went silent on us (no ruling for the silence timeout).
    pub(crate) silent_arbiters: VecDeque<IdentityKey>,
}

impl Shared {
    pub(crate) fn new(local: IdentityKey, config: FloorConfig, now: Instant, unix_ms: u64) -> Self {
        Self {
            local,
            config,
            participants: BTreeSet::new(),
            silent: BTreeSet::new(),
            requesters: BTreeSet::new(),
            epoch: now,
            epoch_unix_ms: unix_ms,
            hlc: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            silent_arbiters: VecDeque::new(),
        }
    }

    /// A fresh stamp, later than every stamp seen.
    pub(crate) fn stamp(&mut self, now: Instant) -> u64 {
        self.hlc = self.unix_ms(now).max(self.hlc + 1);
        self.hlc
    }

    fn unix_ms(&self, now: Instant) -> u64 {
        self.epoch_unix_ms + now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// The stamp clock now, without taking a stamp: no earlier than any stamp seen.
    pub(crate) fn clock(&self, now: Instant) -> u64 {
        self.unix_ms(now).max(self.hlc)
    }

    pub(crate) fn observe(&mut self, stamp: u64) {
        self.hlc = self.hlc.max(stamp);
    }
}
