//! The voice path: an encoded frame is checked (ACL and floor at the sender), sealed once per
//! key and fanned out (direct copies, relay copies, forwarded copies over circuits); an
//! incoming datagram is forwarded (enveloped, when we relay) or opened and checked (keys,
//! replay, ACL, floor) and handed to playout.

use super::{Event, Frame, Member, Output, Role, Target};
use crate::charter::{ChannelId, FloorMode, Permissions};
use crate::control::ControlMessage;
use crate::forward::open_envelope;
use crate::topology::Route;
use crate::voice::{
    channel_deliveries, speakable, whisper_delivery, SenderShortId, VoiceFlags, VoiceHeader,
    MAX_CHANNELS,
};
use callsign_keys::IdentityKey;
use libp2p_identity::PeerId;
use rand::Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

impl Member {
    pub(super) fn send_frame(&mut self, frame: Frame, now: Instant) {
        let Frame {
            target,
            flags,
            sequence,
            timestamp,
            payload,
        } = frame;
        let state = self.sync.charter().state();
        let (channels, mut deliveries, flags) = match &target {
            Target::Channels(channels) => {
                // The charter may have changed since PTT was pressed, and the floor with it:
                // check again.
                let (mut allowed, _) = speakable(state, &self.local, channels);
                // The closing frame still goes where the transmission went (the floor may
                // already be released or lost).
                let closing = flags.contains(VoiceFlags::END);
                allowed.retain(|c| {
                    (closing || self.floor.may_transmit(*c)) && !self.monitoring.contains(c)
                });
                // Links carry the frame on to more channels, each hop only where we may speak
                // too. Half-duplex channels are not entered by a link: their floor is theirs.
                let allowed = state.reach(&allowed, MAX_CHANNELS, |c| {
                    state.may(&self.local, c, Permissions::SPEAK)
                        && state
                            .channels
                            .get(&c)
                            .is_some_and(|ch| ch.policy.floor == FloorMode::Open)
                        && !self.monitoring.contains(&c)
                });
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
        let to_channels = matches!(target, Target::Channels(_));
        if channels.is_empty() {
            if to_channels {
                self.note_on_air(&[], now);
            }
            return;
        }
        let (payload, flags) = match &target {
            Target::Channels(_) => self.positioned(&channels, payload, flags),
            Target::Whisper(_) => (payload, flags),
        };
        self.skip_out_of_reach(&channels, &mut deliveries);
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
        let mut warnings = Vec::new();
        let mut sends = Vec::new();
        let mut taps = Vec::new();
        // Consecutive listeners given the same packet: one output, framed once by the runtime,
        // sent in listener order.
        let mut run: Option<(u16, Vec<PeerId>)> = None;
        let end_run = |run: &mut Option<(u16, Vec<PeerId>)>,
                       sends: &mut Vec<Output>,
                       sealed: &BTreeMap<u16, Vec<u8>>| {
            if let Some((key_id, peers)) = run.take() {
                if let Some(bytes) = sealed.get(&key_id) {
                    sends.push(Output::Datagram {
                        peers,
                        bytes: bytes.clone(),
                    });
                }
            }
        };
        for delivery in deliveries {
            let key_id = delivery.key.id();
            if let std::collections::btree_map::Entry::Vacant(slot) = sealed.entry(key_id) {
                let header = VoiceHeader {
                    key_id,
                    ..header.clone()
                };
                match delivery.key.seal(&header, &payload) {
                    Ok(bytes) => {
                        slot.insert(bytes);
                    }
                    Err(e) => {
                        warnings.push(format!("seal: {e}"));
                        continue;
                    }
                }
            }
            let Some(packet) = sealed.get(&key_id) else {
                continue;
            };
            let peer = delivery.peer.peer_id();
            let lost = self.send_loss > 0.0 && self.loss_rng.gen_bool(self.send_loss.min(1.0));
            let record = self.presence.get(&delivery.peer);
            // A listener hearing us only on relay-routed channels gets its copy from the relay;
            // one we reach only through a relay circuit gets it forwarded by that relay, as
            // datagrams, rather than on the circuit's stream.
            let direct = match &target {
                Target::Whisper(_) => true,
                Target::Channels(_) => {
                    let mesh: Vec<ChannelId> = channels
                        .iter()
                        .filter(|c| {
                            record.is_some_and(|r| {
                                r.body.listening.binary_search(c).is_ok()
                                    && self.goes_direct(**c, r, now)
                            })
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
                let Some(link) = self.links.get(&peer) else {
                    // Not linked: nothing goes, nothing is counted.
                    continue;
                };
                if link.kind.is_direct_quic() {
                    match &mut run {
                        Some((run_key, peers)) if *run_key == key_id => peers.push(peer),
                        _ => {
                            end_run(&mut run, &mut sends, &sealed);
                            run = Some((key_id, vec![peer]));
                        }
                    }
                } else {
                    // No datagrams on this link (TCP, or a circuit whose relay does not
                    // forward): the frame rides a control request instead.
                    end_run(&mut run, &mut sends, &sealed);
                    sends.push(Output::Control {
                        peer,
                        bytes: ControlMessage::Voice(packet.clone()).encode(),
                        ordered: None,
                    });
                }
            }
            if self.tap {
                taps.push(Output::Event(Event::VoiceSent {
                    peer,
                    packet: packet.clone(),
                }));
            }
            let heard_on: Vec<Option<ChannelId>> = match &target {
                Target::Whisper(_) => vec![None],
                Target::Channels(_) => channels
                    .iter()
                    .filter(|c| record.is_some_and(|r| r.hears(state, **c)))
                    .map(|c| Some(*c))
                    .collect(),
            };
            if matches!(target, Target::Channels(_)) && !heard_on.is_empty() {
                *self.sent_once.entry(delivery.peer).or_default() += 1;
            }
            for channel in heard_on {
                *self.sent.entry((delivery.peer, channel)).or_default() += 1;
            }
        }
        end_run(&mut run, &mut sends, &sealed);
        self.outputs.extend(sends);
        self.outputs.extend(taps);
        for warning in warnings {
            self.warn(warning);
        }
        if matches!(target, Target::Channels(_)) {
            for channel in &channels {
                if let Some(Route::Relay(relay)) = self.routes.get(channel) {
                    via.insert((*channel, *relay));
                }
            }
            self.send_via_relays(&header, &via, &payload, now);
        }
        if to_channels {
            let on_air = if flags.contains(VoiceFlags::END) {
                &[][..]
            } else {
                &channels[..]
            };
            self.note_on_air(on_air, now);
        }
    }

    pub(super) fn datagram(
        &mut self,
        peer: PeerId,
        bytes: &[u8],
        received_at: Instant,
        now: Instant,
    ) {
        if let Some(packet) = open_envelope(bytes) {
            self.forward(peer, packet, received_at, now);
        } else if self.role == Role::Relay {
            tracing::debug!(%peer, "bare voice to a relay dropped");
        } else {
            self.receive_voice(peer, bytes, now);
        }
    }

    /// A voice packet for us: opened, checked (keys, replay, ACL, floor) and played.
    pub(super) fn receive_voice(&mut self, from: PeerId, packet: &[u8], now: Instant) {
        let state = self.sync.charter().state();
        let received = self.receiver.receive(state, &self.listening, packet);
        if let Ok(frame) = &received {
            // The path works, whatever the floor and proximity gates decide next.
            self.path.opened(&frame.sender, now);
        }
        match received {
            Ok(frame) if !self.in_turn(&frame, now) => {
                self.floor_drops += 1;
                tracing::debug!(peer = %from, "voice out of turn dropped");
            }
            Ok(frame) => match self.within_reach(frame) {
                Some(frame) => {
                    self.floor.audio_from(&frame.sender, &frame.channels, now);
                    self.outputs.push_back(Output::Play(frame));
                }
                None => self
                    .receiver
                    .count_drop(crate::voice::DropReason::OutOfRange),
            },
            Err(reason) => {
                tracing::debug!(peer = %from, ?reason, "voice datagram dropped");
            }
        }
    }
}
