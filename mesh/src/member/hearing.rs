//! What we hear and how: listening, monitoring (hearing silently) and recording, kept true to
//! the charter as it changes.

use super::{Event, Member};
use crate::charter::{ChannelId, CharterState, Permissions, RecordingPolicy};
use std::time::Instant;

impl Member {
    /// Drops channels the charter no longer lets us hear (listen, or monitor where we
    /// monitor), and recordings it no longer allows; takes back the channels we asked for that
    /// it lets us hear again (a role given back).
    pub(super) fn retain_hearing(&mut self, state: &CharterState) {
        let local = self.local;
        for channel in self.wanted.clone() {
            if state.may(&local, channel, Permissions::LISTEN) {
                if let Err(at) = self.listening.binary_search(&channel) {
                    self.listening.insert(at, channel);
                }
            }
        }
        let monitoring = self.monitoring.clone();
        self.listening.retain(|c| {
            let needed = if monitoring.contains(c) {
                Permissions::MONITOR
            } else {
                Permissions::LISTEN
            };
            state.may(&local, *c, needed)
        });
        let listening = self.listening.clone();
        self.monitoring.retain(|c| listening.contains(c));
        let recording = self.recording.clone();
        for channel in recording {
            if !listening.contains(&channel) {
                self.stop_recording(channel, "the charter no longer lets us hear it");
            } else if state.recording_policy(channel) == RecordingPolicy::Forbidden {
                self.stop_recording(channel, "the charter forbids recording it now");
            }
        }
    }

    /// Starts or stops recording `channel`. Starting needs the channel heard and its policy
    /// not forbidding it; the presence record tells everyone listening.
    pub(super) fn record(&mut self, channel: ChannelId, on: bool, now: Instant) {
        if !on {
            self.stop_recording(channel, "asked to stop");
            self.announce_presence(now);
            return;
        }
        let refusal = if self.listening.binary_search(&channel).is_err() {
            Some("we do not listen there")
        } else if self.state().recording_policy(channel) == RecordingPolicy::Forbidden {
            Some("the charter forbids recording it")
        } else {
            None
        };
        if let Some(reason) = refusal {
            self.emit(Event::RecordingRefused {
                channel,
                reason: reason.into(),
            });
            return;
        }
        if let Err(at) = self.recording.binary_search(&channel) {
            self.recording.insert(at, channel);
            self.emit(Event::Recording { channel, on: true });
            self.announce_presence(now);
        }
    }

    pub(super) fn stop_recording(&mut self, channel: ChannelId, why: &str) {
        if let Ok(at) = self.recording.binary_search(&channel) {
            self.recording.remove(at);
            tracing::info!(%channel, why, "recording stopped");
            self.emit(Event::Recording { channel, on: false });
        }
    }
}
