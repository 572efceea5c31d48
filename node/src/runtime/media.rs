//! The voice path of the driver: a frame tick encodes and fans out our frame (ACL and floor
//! checked at the sender), and an incoming datagram is opened, checked (keys, replay, ACL, floor)
//! and handed to playout.

use super::api::{NodeEvent, StreamChannel};
use super::control::ControlMessage;
use super::driver::{now, Driver};
use super::voice::{Encoded, Target};
use super::NodeError;
use crate::audio::SAMPLE_RATE;
use crate::link::{IncomingDatagram, LinkError};
use callsign_keys::IdentityKey;
use callsign_mesh::charter::ChannelId;
use callsign_mesh::charter::Permissions;
use callsign_mesh::forward::open_envelope;
use callsign_mesh::topology::Route;
use callsign_mesh::voice::{
    channel_deliveries, speakable, whisper_delivery, SenderShortId, VoiceFlags, VoiceHeader,
};
use libp2p::PeerId;
use rand::Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

impl Driver {
    pub(super) fn audio_tick(&mut self, scheduled: Instant) -> Result<(), NodeError> {
        let timestamp = media_timestamp(self.epoch, scheduled);
        let was_transmitting = self.transmitter.is_transmitting();
        if let Some(encoded) = self.transmitter.tick()? {
            let Encoded {
                target,
                flags,
                sequence,
                payload,
            } = encoded;
            let payload = payload.to_vec();
            if flags.contains(VoiceFlags::START) {
                let (channels, whisper) = match &target {
                    Target::Channels(channels) => (channels.clone(), None),
                    Target::Whisper(peer) => (Vec::new(), Some(*peer)),
                };
                self.emit(NodeEvent::Transmitting { channels, whisper });
            }
            self.send_frame(target, flags, sequence, timestamp, &payload, scheduled);
        }
        if was_transmitting && !self.transmitter.is_transmitting() {
            self.emit(NodeEvent::TransmitStopped);
        }
        let changes = self.playout.tick(now())?;
        for peer in changes.stopped {
            self.emit(NodeEvent::TalkerStopped { peer });
        }
        self.ticks += 1;
        let per_second =
            (Duration::from_secs(1).as_micros() / self.frame.as_micros().max(1)) as u64;
        if self.ticks % per_second.max(1) == 0 {
            for (sender, pct) in self.playout.loss_reports() {
                if let Some(control) = self.peers.get_mut(&sender.peer_id()) {
                    control.queue(ControlMessage::LossReport(pct));
                }
            }
        }
        Ok(())
    }

    pub(super) fn send_frame(
        &mut self,
        target: Target,
        flags: VoiceFlags,
        sequence: u16,
        timestamp: u32,
        payload: &[u8],
        now: Instant,
    ) {
        let state = self.sync.charter().state();
        let (channels, deliveries, flags) = match &target {
            Target::Channels(channels) => {
                // The charter may have changed since PTT was pressed, and the floor with it:
                // check again.
                let (mut allowed, _) = speakable(state, &self.local, channels);
                // The closing frame still goes where the transmission went (the floor may
                // already be released or lost).
                let closing = flags.contains(VoiceFlags::END);
                allowed.retain(|c| closing || self.floor.may_transmit(*c));
                let deliveries = channel_deliveries(
                    state,
                    &self.presence,
                    &self.schedule,
                    &self.local,
                    &allowed,
                    now,
                );
                (allowed, deliveries, flags)
            }
            Target::Whisper(peer) => {
                match whisper_delivery(state, &self.schedule, &self.local, peer, now) {
                    Ok((channel, delivery)) => (
                        vec![channel],
                        vec![delivery],
                        flags.union(VoiceFlags::WHISPER),
                    ),
                    Err(_) => (Vec::new(), Vec::new(), flags),
                }
            }
        };
        if channels.is_empty() {
            return;
        }
        let header = VoiceHeader {
            flags,
            channels: channels.clone(),
            sender: SenderShortId::of(&self.local),
            sequence,
            timestamp,
            key_id: 0,
        };
        // Seal once per key; every listener given that key gets the same bytes.
        let mut sealed: BTreeMap<u16, Vec<u8>> = BTreeMap::new();
        // (channel, relay) pairs that get a forwarded copy.
        let mut via: BTreeSet<(ChannelId, IdentityKey)> = BTreeSet::new();
        for delivery in deliveries {
            let key_id = delivery.key.id();
            if let std::collections::btree_map::Entry::Vacant(slot) = sealed.entry(key_id) {
                let header = VoiceHeader {
                    key_id,
                    ..header.clone()
                };
                match delivery.key.seal(&header, payload) {
                    Ok(bytes) => {
                        slot.insert(bytes);
                    }
                    Err(e) => {
                        self.emit(NodeEvent::Warning(format!("seal: {e}")));
                        continue;
                    }
                }
            }
            let Some(packet) = sealed.get(&key_id) else {
                continue;
            };
            let peer = delivery.peer.peer_id();
            let lost = self.send_loss > 0.0 && self.loss_rng.gen_bool(self.send_loss.min(1.0));
            // A listener hearing us only on relay-routed channels gets its copy from the relay;
            // one we reach only through a relay circuit gets it forwarded by that relay, as
            // datagrams, rather than on the circuit's stream.
            let direct = match &target {
                Target::Whisper(_) => true,
                Target::Channels(_) => {
                    let record = self.presence.get(&delivery.peer);
                    let mesh: Vec<ChannelId> = channels
                        .iter()
                        .filter(|c| {
                            record.is_some_and(|r| r.body.listening.binary_search(c).is_ok())
                                && self.goes_direct(**c, now)
                        })
                        .copied()
                        .collect();
                    match self.circuit_forwarder(&peer) {
                        Some(relay) if !mesh.is_empty() => {
                            via.extend(mesh.iter().map(|c| (*c, relay)));
                            false
                        }
                        _ => !mesh.is_empty(),
                    }
                }
            };
            if direct && !lost {
                match self.network.links.send_datagram(&peer, packet) {
                    Ok(()) => {}
                    // Linked over TCP only: the frame rides a control stream instead.
                    Err(LinkError::NotConnected(_)) if self.network.swarm.is_connected(&peer) => {
                        let message = ControlMessage::Voice(packet.clone()).encode();
                        self.network
                            .swarm
                            .behaviour_mut()
                            .control
                            .send_request(&peer, message);
                    }
                    Err(_) => continue,
                }
            }
            if self.tap {
                self.emit(NodeEvent::VoiceSent {
                    peer,
                    packet: packet.clone(),
                });
            }
            let heard_on: Vec<StreamChannel> = match &target {
                Target::Whisper(_) => vec![StreamChannel::Whisper],
                Target::Channels(_) => {
                    let record = self.presence.get(&delivery.peer);
                    channels
                        .iter()
                        .filter(|c| {
                            record.is_some_and(|r| r.body.listening.binary_search(c).is_ok())
                                && state.may(&delivery.peer, **c, Permissions::LISTEN)
                        })
                        .map(|c| StreamChannel::Channel(*c))
                        .collect()
                }
            };
            for channel in heard_on {
                *self.sent.entry((delivery.peer, channel)).or_default() += 1;
            }
        }
        if matches!(target, Target::Channels(_)) {
            for channel in &channels {
                if let Some(Route::Relay(relay)) = self.routes.get(channel) {
                    via.insert((*channel, *relay));
                }
            }
            self.send_via_relays(&header, &via, payload, now);
        }
    }

    pub(super) fn datagram(&mut self, datagram: IncomingDatagram, now: Instant) {
        if let Some(packet) = open_envelope(&datagram.payload) {
            self.forward(&datagram, packet, now);
        } else if self.serves_as_relay() {
            tracing::debug!(peer = %datagram.peer, "bare voice to a relay dropped");
        } else {
            self.receive_voice(datagram.peer, &datagram.payload, now);
        }
    }

    /// A voice packet for us: opened, checked (keys, replay, ACL, floor) and played.
    pub(super) fn receive_voice(&mut self, from: PeerId, packet: &[u8], now: Instant) {
        let state = self.sync.charter().state();
        match self.receiver.receive(state, &self.listening, packet) {
            Ok(frame) if !self.in_turn(&frame) => {
                self.floor_drops += 1;
                tracing::debug!(peer = %from, "voice out of turn dropped");
            }
            Ok(frame) => {
                self.floor.audio_from(&frame.sender, &frame.channels, now);
                match self.playout.receive(&frame, now) {
                    Ok(true) => {
                        let name = self
                            .presence
                            .get(&frame.sender)
                            .map(|r| r.body.display_name.clone())
                            .unwrap_or_default();
                        self.emit(NodeEvent::TalkerStarted {
                            peer: frame.sender,
                            name,
                            channels: frame.channels.clone(),
                            whisper: frame.whisper,
                        });
                    }
                    Ok(false) => {}
                    Err(e) => self.emit(NodeEvent::Warning(format!("playout: {e}"))),
                }
            }
            Err(reason) => {
                tracing::debug!(peer = %from, ?reason, "voice datagram dropped");
            }
        }
    }
}

/// 48 kHz samples from `epoch` to `at` (wrapping, as the header field does).
fn media_timestamp(epoch: Instant, at: Instant) -> u32 {
    let elapsed = at.saturating_duration_since(epoch);
    (elapsed.as_nanos() * u128::from(SAMPLE_RATE) / 1_000_000_000) as u32
}
