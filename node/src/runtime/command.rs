//! The driver carrying out the Node API's commands: most become a `Member` command; dials,
//! mixing, recording and device changes are the runtime's own.

use super::api::{NodeCommand, NodeEvent};
use super::driver::Driver;
use crate::audio::mixer::ChannelMix;
use callsign_mesh::charter::ChannelId;
use callsign_mesh::member::{Command, Input};
use std::time::Instant;

impl Driver {
    pub(super) fn command(&mut self, command: NodeCommand, now: Instant) {
        let to_member = match command {
            NodeCommand::Dial(addr) => {
                if let Err(e) = self.network.swarm.dial(addr.clone()) {
                    self.emit(NodeEvent::Warning(format!("dial {addr}: {e}")));
                }
                return;
            }
            NodeCommand::Listen(channel) => Command::Listen(channel),
            NodeCommand::Unlisten(channel) => Command::Unlisten(channel),
            NodeCommand::Monitor(channel) => Command::Monitor(channel),
            NodeCommand::Record { channel, on } => {
                if on && !self.recorder.can_record() {
                    return self.emit(NodeEvent::RecordingRefused {
                        channel,
                        reason: "this node has no recordings folder".into(),
                    });
                }
                Command::Record { channel, on }
            }
            NodeCommand::PttDown(channels) => Command::PttDown(channels),
            NodeCommand::Emergency(channel) => Command::Emergency(channel),
            NodeCommand::ClearEmergency { channel, raiser } => {
                Command::ClearEmergency { channel, raiser }
            }
            NodeCommand::PttUp => Command::PttUp,
            NodeCommand::WhisperDown(peer) => Command::WhisperDown(peer),
            NodeCommand::VoiceActivation(channels) => Command::VoiceActivation(channels),
            NodeCommand::EditCharter(body) => Command::EditCharter(body),
            NodeCommand::Subscribe { relay, channels } => Command::Subscribe { relay, channels },
            NodeCommand::SetPosition(position) => Command::SetPosition(position),
            NodeCommand::Mute(channel, muted) => {
                return self.update_mix(channel, |m| m.muted = muted);
            }
            NodeCommand::SetVolume(channel, volume) => {
                return self.update_mix(channel, |m| m.volume = volume.clamp(0.0, 2.0));
            }
            NodeCommand::SetPan(channel, pan) => {
                return self.update_mix(channel, |m| m.pan = pan.clamp(-1.0, 1.0));
            }
            NodeCommand::InjectDatagram { peer, bytes } => {
                if let Err(e) = self.network.links.send_datagram(&peer, &bytes) {
                    self.emit(NodeEvent::Warning(format!("inject to {peer}: {e}")));
                }
                return;
            }
            NodeCommand::SetAudio(settings) => {
                let applied = settings
                    .validate()
                    .and_then(|()| self.transmitter.apply(&settings));
                match applied {
                    Ok(()) => self.playout.apply(&settings),
                    Err(e) => self.emit(NodeEvent::Warning(format!("audio settings refused: {e}"))),
                }
                return;
            }
            NodeCommand::SetInput(input) => {
                if let Err(e) = self.transmitter.set_input(input) {
                    self.emit(NodeEvent::Warning(format!("input unchanged: {e}")));
                }
                return;
            }
            NodeCommand::SetOutputDevice(device) => {
                if let Err(e) = self.playout.set_output_device(device.as_ref()) {
                    self.emit(NodeEvent::Warning(format!("output unchanged: {e}")));
                }
                self.transmitter
                    .set_output_is_device(self.playout.has_device());
                return;
            }
            NodeCommand::TryEditCharter(body, reply) => {
                let result = self.member.edit_charter(now, body);
                let _ = reply.send(result);
                return;
            }
            NodeCommand::Charter(reply) => {
                let _ = reply.send(self.member.state().clone());
                return;
            }
            NodeCommand::InviteAddresses(reply) => {
                let _ = reply.send(
                    self.member
                        .invite_addresses(callsign_keys::MAX_BOOTSTRAP_ADDRS / 2),
                );
                return;
            }
            NodeCommand::Stats(reply) => {
                let _ = reply.send(self.stats());
                return;
            }
            NodeCommand::Shutdown => return,
        };
        self.member.handle_input(now, Input::Command(to_member));
    }

    fn update_mix(&mut self, channel: ChannelId, change: impl FnOnce(&mut ChannelMix)) {
        let mut mix = self.playout.mixer.channel(channel);
        change(&mut mix);
        self.playout.mixer.set_channel(channel, mix);
    }
}
