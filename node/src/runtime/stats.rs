//! The node's snapshot ([`NodeStats`]): the member's counters, the links' RTTs, the audio
//! worker's health, put together on request. Also floor events in words, for logs.

use super::api::{
    AudioStats, FloorStats, ForwardingStats, NodeStats, PeerStats, SentStream, StreamChannel,
    TalkerFrames,
};
use super::driver::Driver;
use callsign_keys::IdentityKey;
use callsign_mesh::charter::ChannelId;
use callsign_mesh::floor::{FloorEvent, LocalFloor};
use std::collections::BTreeMap;

impl Driver {
    pub(super) fn stats(&mut self) -> NodeStats {
        // Names of the peers still linked carry over; the rest are dropped.
        let mut known = std::mem::take(&mut self.peer_names);
        for (peer, _) in self.member.links() {
            let name = known.remove(peer).unwrap_or_else(|| peer.to_string());
            self.peer_names.insert(*peer, name);
        }
        let member = &self.member;
        let rtts = self.network.links.rtts();
        let mut peers: Vec<PeerStats> = member
            .links()
            .map(|(peer, kind)| PeerStats {
                peer: self.peer_names.get(peer).cloned().unwrap_or_default(),
                kind,
                rtt: rtts.get(peer).copied(),
            })
            .collect();
        peers.sort_by(|a, b| a.peer.cmp(&b.peer));
        let mut sent: Vec<SentStream> = member
            .sent()
            .iter()
            .map(|((to, channel), frames)| SentStream {
                to: *to,
                channel: channel.map_or(StreamChannel::Whisper, StreamChannel::Channel),
                frames_sent: *frames,
            })
            .collect();
        sent.sort_by_key(|s| (s.to, s.channel));
        NodeStats {
            received: self.playout.report(),
            sent,
            heard_once: self.playout.channel_frames(),
            sent_once: member
                .sent_once()
                .iter()
                .map(|(peer, frames)| TalkerFrames {
                    peer: *peer,
                    frames: *frames,
                    concealed: 0,
                })
                .collect(),
            drops: member.receiver().drops().clone(),
            ptt_denied: member.ptt_denied(),
            key_rotations: member.schedule().rotations(),
            peers,
            frames_encoded: self.transmitter.encoded(),
            expected_loss_pct: self.transmitter.expected_loss_pct(),
            charter_hash: member
                .state()
                .state_hash()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            charter_ops: member.charter_ops(),
            floor_drops: member.floor_drops(),
            floor: self.floor_stats(),
            repairs: member.path().counts().clone(),
            unreachable: member.path().unreachable().copied().collect(),
            routes: member.routes().iter().map(|(c, r)| (*c, *r)).collect(),
            audio_keys_held: member.receiver().keys_held(),
            forwarding: self.forwarding_stats(),
            audio: self.audio_stats(),
        }
    }

    fn floor_stats(&self) -> Vec<FloorStats> {
        let floor = self.member.floor();
        self.member
            .state()
            .channels
            .keys()
            .filter_map(|channel| {
                let state = match floor.state(*channel)? {
                    LocalFloor::Idle => "idle".to_string(),
                    LocalFloor::Pending => "pending".to_string(),
                    LocalFloor::Granted => "granted".to_string(),
                    LocalFloor::Queued(n) => format!("queued {n}"),
                    LocalFloor::Releasing => "releasing".to_string(),
                };
                Some(FloorStats {
                    channel: *channel,
                    holder: floor.holder(*channel),
                    state,
                    emergencies: floor.emergencies(*channel),
                    arbiter: floor.arbiter(*channel),
                })
            })
            .collect()
    }

    fn forwarding_stats(&self) -> Option<ForwardingStats> {
        let forwarder = self.member.forwarder()?;
        let (latency_us, latency_sum_us) = self.forward_latency.snapshot();
        let mut channels: BTreeMap<_, usize> = BTreeMap::new();
        for (_, subscribed) in forwarder.subscriptions() {
            for c in subscribed {
                *channels.entry(*c).or_default() += 1;
            }
        }
        Some(ForwardingStats {
            counts: forwarder.counts().clone(),
            subscribers: forwarder.subscriptions().count(),
            channels: channels.into_iter().collect(),
            subscriptions_refused: self.member.subscriptions_refused(),
            latency_us,
            latency_sum_us,
            links: self.network.links.counts(),
            socket: self.network.socket_stats.snapshot(),
        })
    }

    fn audio_stats(&self) -> AudioStats {
        let (input_level_db, speech_probability) = self.transmitter.level();
        let (capture_overruns, capture_feed) = self.transmitter.device_health();
        let (playback_underruns, playback_feed) = self.playout.device_health();
        AudioStats {
            input_level_db,
            speech_probability,
            capture_overruns,
            playback_underruns,
            capture_feed,
            playback_feed,
            input_device: self.transmitter.input_device(),
            output_device: self.playout.output_device(),
            echo: self.transmitter.echo_stats(),
        }
    }
}

/// A floor event in words (logs); `name` and `channel` say how to show members and channels.
pub fn describe_floor(
    event: &FloorEvent,
    name: impl Fn(&IdentityKey) -> String,
    channel: impl Fn(&ChannelId) -> String,
) -> String {
    match event {
        FloorEvent::Granted { channel: c } => format!("floor granted on {}", channel(c)),
        FloorEvent::Denied { channel: c, reason } => {
            format!("floor denied on {}: {reason}", channel(c))
        }
        FloorEvent::Queued {
            channel: c,
            position,
        } => format!("floor queued on {} at {position}", channel(c)),
        FloorEvent::Preempted { channel: c, by } => {
            format!("floor pre-empted on {} by {}", channel(c), name(by))
        }
        FloorEvent::Revoked { channel: c } => {
            format!("floor revoked on {}: talk time over", channel(c))
        }
        FloorEvent::Released { channel: c } => format!("floor released on {}", channel(c)),
        FloorEvent::Holder { channel: c, holder } => match holder {
            Some(h) => format!("{} holds the floor on {}", name(h), channel(c)),
            None => format!("the floor on {} is free", channel(c)),
        },
        FloorEvent::EmergencyRaised { channel: c, by } => {
            format!("EMERGENCY on {} raised by {}", channel(c), name(by))
        }
        FloorEvent::EmergencyCleared {
            channel: c,
            raiser,
            by,
        } => format!(
            "emergency of {} on {} cleared by {}",
            name(raiser),
            channel(c),
            name(by)
        ),
    }
}
