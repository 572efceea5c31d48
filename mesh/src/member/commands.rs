//! The user's commands: listen, PTT (through the floor), whisper, voice activation, charter
//! edits, diagnostic subscriptions.

use super::{Command, Event, Member, Output, Target};
use crate::charter::{ChannelId, EditError, OpBody, Permissions};
use crate::voice::{speakable, whisper_delivery};
use std::time::Instant;

impl Member {
    pub(super) fn command(&mut self, command: Command, now: Instant) {
        match command {
            Command::Listen(channel) => {
                if self.state().may(&self.local, channel, Permissions::LISTEN) {
                    // Listening where we monitored makes us seen there.
                    let was_monitoring = self.monitoring.contains(&channel);
                    self.monitoring.retain(|c| *c != channel);
                    insert_sorted(&mut self.wanted, channel);
                    if self.listening.binary_search(&channel).is_err() || was_monitoring {
                        insert_sorted(&mut self.listening, channel);
                        self.replan(now);
                        self.announce_presence(now);
                    }
                } else {
                    self.warn(format!("the charter does not let us listen on {channel}"));
                }
            }
            Command::Monitor(channel) => {
                if self.state().may(&self.local, channel, Permissions::MONITOR) {
                    // A monitor never transmits where it listens unseen.
                    if self.ptt_channels.contains(&channel) {
                        self.ptt_up(now);
                    }
                    insert_sorted(&mut self.listening, channel);
                    insert_sorted(&mut self.wanted, channel);
                    insert_sorted(&mut self.monitoring, channel);
                    self.replan(now);
                    self.announce_presence(now);
                } else {
                    self.warn(format!("the charter does not let us monitor {channel}"));
                }
            }
            Command::Unlisten(channel) => {
                self.wanted.retain(|c| *c != channel);
                if let Ok(at) = self.listening.binary_search(&channel) {
                    self.listening.remove(at);
                    self.monitoring.retain(|c| *c != channel);
                    self.stop_recording(channel, "no longer listening");
                    self.replan(now);
                    self.announce_presence(now);
                }
            }
            Command::Record { channel, on } => self.record(channel, on, now),
            Command::PttDown(channels) => {
                let allowed = self.speakable_or_refuse(&channels);
                self.ptt_down(allowed, false, now);
            }
            Command::Emergency(channel) => self.ptt_down(vec![channel], true, now),
            Command::ClearEmergency { channel, raiser } => {
                self.clear_emergency(channel, raiser, now)
            }
            Command::WhisperDown(peer) => {
                match whisper_delivery(self.state(), &self.schedule, &self.local, &peer, now) {
                    Ok(_) => {
                        // A whisper replaces any channel transmission and its floor requests.
                        self.ptt_up(now);
                        self.outputs
                            .push_back(Output::Transmit(Some(Target::Whisper(peer))));
                    }
                    Err(e) => {
                        self.ptt_denied += 1;
                        self.emit(Event::PttDenied {
                            channels: Vec::new(),
                            reason: format!("whisper: {e}"),
                        });
                    }
                }
            }
            Command::PttUp => self.ptt_up(now),
            Command::VoiceActivation(channels) => {
                let allowed = self.speakable_or_refuse(&channels);
                let allowed = self.open_only(allowed);
                self.outputs.push_back(Output::VoiceActivation(allowed));
            }
            Command::EditCharter(body) => {
                if let Err(e) = self.edit_charter(now, body) {
                    self.warn(format!("charter edit refused: {e}"));
                }
            }
            Command::SetPosition(position) => self.set_position(position, now),
            Command::Subscribe { relay, channels } => {
                if !self.subscribe_at(relay, channels) {
                    self.warn(format!("no link to relay {relay}"));
                }
            }
        }
    }

    /// Signs a charter edit with our identity and applies it (persisted, then synced to
    /// peers), or says why the charter refuses it and changes nothing: what
    /// [`Command::EditCharter`] does, for callers that must answer whoever asked (the local
    /// API's admin edits).
    pub fn edit_charter(&mut self, now: Instant, body: OpBody) -> Result<(), EditError> {
        let unix = self.unix_ms(now);
        let identity = self.keys.identity.clone();
        let op = self.sync.edit(&identity, body, unix)?;
        self.outputs.push_back(Output::Persist(vec![op.encode()]));
        self.charter_changed(1, now);
        // Called outside `handle_input` too (the API's edits): push the op to peers now, not
        // at the next input (seven seconds later on a quiet org).
        self.flush(now);
        Ok(())
    }

    /// The requested channels the charter lets us speak on; the rest are refused (counted and
    /// reported).
    fn speakable_or_refuse(&mut self, channels: &[ChannelId]) -> Vec<ChannelId> {
        let (mut allowed, denied) = speakable(self.state(), &self.local, channels);
        let monitored: Vec<ChannelId> = allowed
            .iter()
            .copied()
            .filter(|c| self.monitoring.contains(c))
            .collect();
        if !monitored.is_empty() {
            allowed.retain(|c| !monitored.contains(c));
            self.ptt_denied += 1;
            self.emit(Event::PttDenied {
                channels: monitored,
                reason: "we only monitor there".into(),
            });
        }
        if !denied.is_empty() {
            self.ptt_denied += 1;
            self.emit(Event::PttDenied {
                channels: denied,
                reason: "the charter does not let us speak there".into(),
            });
        }
        allowed
    }
}

fn insert_sorted(set: &mut Vec<ChannelId>, channel: ChannelId) {
    if let Err(at) = set.binary_search(&channel) {
        set.insert(at, channel);
    }
}
