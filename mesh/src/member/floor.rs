//! PTT through floor control: a press on a half-duplex channel asks
//! [`FloorControl`](crate::floor::FloorControl) for the floor, and the transmitter
//! sends there only while we hold it; open channels in the same press (simulcast) go out at
//! once. Floor messages ride control requests outside the ordered outbox: a press must not
//! wait behind a charter sync, and each claim carries a revision, so order does not matter.

use super::{Event, Member, Output, Target};
use crate::charter::ChannelId;
use crate::control::ControlMessage;
use crate::floor::{arbiter_for, FloorMessage};
use crate::voice::{ReceivedFrame, VoiceFlags};
use callsign_keys::IdentityKey;
use std::time::{Duration, Instant};

/// How long an unanswered control request makes a member one a press does not wait for.
/// Control requests go out at least with every presence announcement, and a live peer answers
/// within a round trip.
const UNRESPONSIVE_AFTER: Duration = Duration::from_secs(2);

impl Member {
    /// PTT pressed on `channels` (already checked against the charter), or an emergency raised
    /// on one.
    pub(super) fn ptt_down(&mut self, channels: Vec<ChannelId>, emergency: bool, now: Instant) {
        self.note_unresponsive_peers(now);
        let state = self.sync.charter().state();
        let mut held = Vec::new();
        for channel in channels {
            if emergency || self.floor.is_half_duplex(channel) {
                // A refusal is reported as a floor event.
                if self.floor.press(state, channel, emergency, now).is_err() {
                    self.ptt_denied += 1;
                    continue;
                }
            }
            held.push(channel);
        }
        if held.is_empty() {
            return;
        }
        self.ptt_channels = held;
        self.tx_channels.clear();
        self.retarget();
    }

    /// Members whose ordered control request has gone unanswered for
    /// [`UNRESPONSIVE_AFTER`] are not waited for by a press: a member that left or crashed
    /// keeps its link until QUIC's idle timeout when its goodbye is lost, and every press
    /// waited the floor's full acknowledgement timeout on it (chaos seeds 8, 20). It is waited
    /// for again once it sends a floor message.
    pub(super) fn note_unresponsive_peers(&mut self, now: Instant) {
        let quiet: Vec<IdentityKey> = self
            .peers
            .iter()
            .filter(|(_, c)| {
                c.in_flight()
                    .is_some_and(|(_, sent)| now >= sent + UNRESPONSIVE_AFTER)
            })
            .filter_map(|(p, _)| self.members.get(p).copied())
            .collect();
        for peer in quiet {
            self.floor.mark_unresponsive(peer);
        }
    }

    pub(super) fn ptt_up(&mut self, now: Instant) {
        self.ptt_channels.clear();
        self.tx_channels.clear();
        self.outputs.push_back(Output::Transmit(None));
        self.note_on_air(&[], now);
        self.floor.release(now);
    }

    pub(super) fn clear_emergency(
        &mut self,
        channel: ChannelId,
        raiser: IdentityKey,
        now: Instant,
    ) {
        let state = self.sync.charter().state();
        if let Err(e) = self.floor.clear_emergency(state, channel, raiser, now) {
            self.emit(Event::Warning(format!("clear emergency: {e}")));
        }
    }

    /// Voice activation cannot ask for a floor: it keeps the open channels.
    pub(super) fn open_only(&mut self, channels: Vec<ChannelId>) -> Vec<ChannelId> {
        let (open, half): (Vec<ChannelId>, Vec<ChannelId>) = channels
            .into_iter()
            .partition(|c| !self.floor.is_half_duplex(*c));
        if !half.is_empty() {
            self.ptt_denied += 1;
            self.emit(Event::PttDenied {
                channels: half,
                reason: "half-duplex channels need push-to-talk".into(),
            });
        }
        open
    }

    /// Points the transmitter at the held channels we may speak on now.
    fn retarget(&mut self) {
        if self.ptt_channels.is_empty() {
            return;
        }
        let now_on: Vec<ChannelId> = self
            .ptt_channels
            .iter()
            .copied()
            .filter(|c| self.floor.may_transmit(*c))
            .collect();
        if now_on == self.tx_channels {
            return;
        }
        let target = (!now_on.is_empty()).then(|| Target::Channels(now_on.clone()));
        self.outputs.push_back(Output::Transmit(target));
        self.tx_channels = now_on;
    }

    /// Whether a received frame may play: a whisper, or a channel it is in turn on. In turn
    /// is the holder in our view of the floor; or a talker that told us it is on air there
    /// (it transmits on a half-duplex channel only while it holds the floor in its own view)
    /// while the holder in ours is not heard. Views differ while a fault lasts — an arbiter
    /// some members hear and others do not, an arbiter restarted with no memory, a member
    /// that granted itself while cut off — and a stale view must never silence the one talker
    /// on air; two talkers on air at once still play only the holder (docs/protocol.md,
    /// "Floor messages").
    pub(super) fn in_turn(&self, frame: &ReceivedFrame, now: Instant) -> bool {
        let closing = frame.header.flags.contains(VoiceFlags::END);
        frame.whisper
            || frame.channels.iter().any(|c| {
                self.floor.may_be_heard(&frame.sender, *c, closing)
                    || (self.path.on_air(&frame.sender, *c) && !self.floor.holder_heard(*c, now))
            })
    }

    pub(super) fn floor_message(&mut self, from: IdentityKey, body: &[u8], now: Instant) {
        let message = match FloorMessage::decode(body) {
            Ok(message) => message,
            Err(e) => {
                tracing::debug!(%e, "bad floor message");
                return;
            }
        };
        let state = self.sync.charter().state();
        if let Err(e) = self.floor.handle_message(state, from, message, now) {
            tracing::debug!(%e, "floor message refused");
        }
    }

    /// Each half-duplex channel's arbiter: the charter's rented relay for it while we are
    /// linked to it (or are it); otherwise the members arbitrate by rule. Called when the
    /// charter or the set of linked members changes.
    pub(super) fn update_arbiters(&mut self, now: Instant) {
        let state = self.sync.charter().state();
        let choices: Vec<(ChannelId, Option<IdentityKey>)> = state
            .channels
            .keys()
            .filter(|c| self.floor.is_half_duplex(**c))
            .map(|c| {
                let arbiter = arbiter_for(state, *c).filter(|relay| {
                    *relay == self.local || self.peers.contains_key(&relay.peer_id())
                });
                (*c, arbiter)
            })
            .collect();
        for (channel, arbiter) in choices {
            self.floor.set_arbiter(channel, arbiter, now);
        }
    }

    /// Sends what floor control wants sent, reports what happened, and follows the floor with
    /// the transmitter.
    pub(super) fn flush_floor(&mut self) {
        while let Some((to, message)) = self.floor.poll_transmit() {
            let peer = to.peer_id();
            if self.peers.contains_key(&peer) {
                self.send_now(peer, ControlMessage::Floor(message.encode()));
            }
        }
        // An arbiter silent for two seconds while linked is gone, whatever the link layer
        // believes (a relay whose heartbeat promise never reached us keeps its link until
        // QUIC's idle timeout): the link is closed and the relay dialed where it is now.
        while let Some(arbiter) = self.floor.poll_silent_arbiter() {
            let peer = arbiter.peer_id();
            if self.relays.contains_key(&peer) && self.links.contains_key(&peer) {
                tracing::debug!(%peer, "arbiter silent: closing its link");
                self.path.count_closed_link();
                self.outputs.push_back(Output::CloseLink(peer));
            }
        }
        // Every change to where we may transmit comes with an event (granted, pre-empted,
        // revoked, released), so the transmitter follows only when there were some.
        let mut changed = false;
        while let Some(event) = self.floor.poll_event() {
            changed = true;
            self.emit(Event::Floor(event));
        }
        if changed {
            self.retarget();
        }
    }
}
