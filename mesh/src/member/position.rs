//! Our place in the game (positional and proximity audio, see [`crate::spatial`]): voice on
//! positioned channels carries it sealed, presence carries it rounded (only where the charter
//! has proximity channels, whose senders need it), and frames on proximity channels play only
//! from talkers within reach.

use super::Member;
use crate::charter::{ChannelId, CharterState};
use crate::presence::PresenceRecord;
use crate::spatial::{Point, Position, SpatialMode, PRESENCE_STEP_M};
use crate::voice::{Delivery, ReceivedFrame, VoiceFlags};
use std::time::{Duration, Instant};

/// Least time between two presence records announcing a move.
pub(super) const POSITION_ANNOUNCE_GAP: Duration = Duration::from_millis(500);

impl Member {
    /// Sets (or clears) where we are. Presence says so again when we changed context or moved
    /// [`PRESENCE_STEP_M`], at most every [`POSITION_ANNOUNCE_GAP`].
    pub(super) fn set_position(&mut self, position: Option<Position>, now: Instant) {
        if let Some(Err(e)) = position.as_ref().map(Position::check) {
            self.warn(format!("position refused: {e}"));
            return;
        }
        self.position = position;
        if !has_proximity(self.state()) {
            return;
        }
        let announced = self.announced_point.map(|(p, _)| p);
        let moved = match (announced, position.map(|p| p.point())) {
            (None, None) => false,
            (Some(a), Some(b)) => a.distance(&b).is_none_or(|d| d >= PRESENCE_STEP_M),
            _ => true,
        };
        if !moved {
            return;
        }
        let earliest = self
            .announced_at
            .map_or(now, |at| at + POSITION_ANNOUNCE_GAP);
        if now >= earliest {
            self.announce_presence(now);
        } else {
            self.position_due = Some(earliest);
        }
    }

    /// What our presence record says of our position (and remembers saying it).
    pub(super) fn presence_position(
        &mut self,
        now: Instant,
    ) -> Option<(crate::spatial::ContextId, [i32; 3])> {
        self.position_due = None;
        self.announced_at = Some(now);
        let point = self
            .position
            .filter(|_| has_proximity(self.sync.charter().state()))
            .map(|p| p.point());
        self.announced_point = point.map(|p| (p, now));
        point.map(|p| p.to_decimetres())
    }

    /// The charter changed: presence says where we are as soon as a proximity channel needs
    /// it, and stops saying it when none does.
    pub(super) fn position_charter_changed(&mut self, now: Instant) {
        let needed = has_proximity(self.state()) && self.position.is_some();
        if needed != self.announced_point.is_some() {
            self.position_due = Some(
                self.announced_at
                    .map_or(now, |at| (at + POSITION_ANNOUNCE_GAP).max(now)),
            );
        }
    }

    /// A move announcement held back by the rate limit, when due.
    pub(super) fn position_timer(&mut self, now: Instant) {
        if self.position_due.is_some_and(|at| now >= at) {
            // Cleared here too: a node that announces nothing (a relay) must not stay due.
            self.position_due = None;
            self.announce_presence(now);
        }
    }

    /// The payload and flags a frame goes out with: our point appended when one of its
    /// channels is positioned.
    pub(super) fn positioned(
        &self,
        channels: &[ChannelId],
        mut payload: Vec<u8>,
        flags: VoiceFlags,
    ) -> (Vec<u8>, VoiceFlags) {
        let state = self.state();
        match self.position {
            Some(position) if channels.iter().any(|c| state.spatial.contains_key(c)) => {
                payload.extend_from_slice(&position.point().to_bytes());
                (payload, flags.union(VoiceFlags::POSITIONED))
            }
            _ => (payload, flags),
        }
    }

    /// Drops the deliveries to listeners that hear us only on proximity channels and are,
    /// by their presence, clearly out of reach (their receivers would drop the frame).
    pub(super) fn skip_out_of_reach(&self, channels: &[ChannelId], deliveries: &mut Vec<Delivery>) {
        let state = self.state();
        if !channels.iter().any(|c| is_proximity(state, *c)) {
            return;
        }
        let here = self.position.map(|p| p.point());
        deliveries.retain(|delivery| {
            let Some(record) = self.presence.get(&delivery.peer) else {
                return true;
            };
            let there = record_point(record);
            channels
                .iter()
                .filter(|c| record.hears(state, **c))
                .any(|c| match state.spatial.get(c) {
                    Some(s) if s.mode == SpatialMode::Proximity => here
                        .zip(there)
                        .and_then(|(a, b)| a.distance(&b))
                        .is_some_and(|d| d <= s.sender_reach_m()),
                    _ => true,
                })
        });
    }

    /// Keeps of a received frame the channels where its talker is heard: all but proximity
    /// channels, and those where the talker is within reach. `None`: nowhere.
    pub(super) fn within_reach(&mut self, mut frame: ReceivedFrame) -> Option<ReceivedFrame> {
        let state = self.sync.charter().state();
        // Every played frame passes here: most name no proximity channel.
        if frame.whisper || !frame.channels.iter().any(|c| is_proximity(state, *c)) {
            return Some(frame);
        }
        let here = self.position.map(|p| p.point());
        let distance = here.zip(frame.position).and_then(|(a, b)| a.distance(&b));
        let gate = &mut self.proximity;
        frame.channels.retain(|c| match state.spatial.get(c) {
            Some(s) if s.mode == SpatialMode::Proximity => {
                gate.admit(frame.sender, *c, s, distance)
            }
            _ => true,
        });
        if frame.channels.is_empty() {
            None
        } else {
            Some(frame)
        }
    }

    /// Where we are (as last set).
    pub fn position(&self) -> Option<Position> {
        self.position
    }
}

fn has_proximity(state: &CharterState) -> bool {
    state
        .spatial
        .values()
        .any(|s| s.mode == SpatialMode::Proximity)
}

fn is_proximity(state: &CharterState, channel: ChannelId) -> bool {
    state
        .spatial
        .get(&channel)
        .is_some_and(|s| s.mode == SpatialMode::Proximity)
}

/// Where a presence record says its member is.
pub fn record_point(record: &PresenceRecord) -> Option<Point> {
    record
        .body
        .position
        .map(|(context, at)| Point::from_decimetres(context, at))
}
