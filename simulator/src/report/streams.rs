//! Streams as the report counts them: per (talker, listener, channel) from the senders' and
//! receivers' counters, once per (talker, listener) over channels, and a window's share.

use super::{LatencyReport, StreamReport};
use callsign_keys::IdentityKey;
use callsign_mesh::charter::ChannelId;
use callsign_node::runtime::{NodeStats, StreamChannel};
use std::collections::BTreeMap;

/// Names streams' peers and channels.
pub(super) struct Namer<'a> {
    pub(super) channels: BTreeMap<ChannelId, String>,
    pub(super) names: &'a BTreeMap<IdentityKey, String>,
    pub(super) keys: Vec<IdentityKey>,
}

impl Namer<'_> {
    pub(super) fn channel(&self, c: &StreamChannel) -> String {
        match c {
            StreamChannel::Channel(id) => self
                .channels
                .get(id)
                .cloned()
                .unwrap_or_else(|| id.to_string()),
            StreamChannel::Whisper => "whisper".into(),
        }
    }

    pub(super) fn name(&self, k: &IdentityKey) -> String {
        self.names.get(k).cloned().unwrap_or_else(|| k.to_string())
    }
}

/// Every sender → listener stream, with what the listener made of it.
pub(super) fn stream_reports(
    namer: &Namer,
    stats: &BTreeMap<usize, NodeStats>,
) -> Vec<StreamReport> {
    let mut streams = Vec::new();
    for (index, sender) in stats {
        let from = namer.keys[*index];
        for sent in &sender.sent {
            let heard = namer
                .keys
                .iter()
                .position(|k| *k == sent.to)
                .and_then(|i| stats.get(&i))
                .and_then(|s| {
                    s.received
                        .iter()
                        .find(|r| r.from == from && r.channel == sent.channel)
                });
            streams.push(StreamReport {
                from: namer.name(&from),
                to: namer.name(&sent.to),
                channel: namer.channel(&sent.channel),
                frames_sent: sent.frames_sent,
                frames_played: heard.map_or(0, |h| h.frames_played),
                frames_concealed: heard.map_or(0, |h| h.frames_concealed),
                frames_lost: heard.map_or(0, |h| h.frames_lost),
                mouth_to_ear_ms: heard
                    .and_then(|h| h.mouth_to_ear_ms)
                    .map(|l| LatencyReport {
                        p50: l.p50,
                        p95: l.p95,
                        p99: l.p99,
                    }),
                placed: heard.and_then(|h| h.placed),
            });
        }
    }
    streams
}

/// Channel: what [`Report::talkers`] rows name as their channel.
pub const ANY_CHANNEL: &str = "*";

/// Per (talker, listener), channel frames sent and played, each once.
pub(super) fn talker_reports(
    namer: &Namer,
    stats: &BTreeMap<usize, NodeStats>,
) -> Vec<StreamReport> {
    let mut out = Vec::new();
    for (index, sender) in stats {
        let from = namer.keys[*index];
        for sent in &sender.sent_once {
            let heard = namer
                .keys
                .iter()
                .position(|k| *k == sent.peer)
                .and_then(|i| stats.get(&i))
                .and_then(|s| s.heard_once.iter().find(|h| h.peer == from));
            out.push(StreamReport {
                from: namer.name(&from),
                to: namer.name(&sent.peer),
                channel: ANY_CHANNEL.into(),
                frames_sent: sent.frames,
                frames_played: heard.map_or(0, |h| h.frames),
                frames_concealed: heard.map_or(0, |h| h.concealed),
                frames_lost: 0,
                mouth_to_ear_ms: None,
                placed: None,
            });
        }
    }
    out
}

/// The streams' counts minus what they had counted at the window's start. A listener that
/// first heard a stream inside the window has no earlier counts.
pub(super) fn settled_streams(end: &[StreamReport], before: &[StreamReport]) -> Vec<StreamReport> {
    end.iter()
        .map(|s| {
            let b = before
                .iter()
                .find(|b| b.from == s.from && b.to == s.to && b.channel == s.channel);
            let minus = |f: fn(&StreamReport) -> u64| f(s).saturating_sub(b.map_or(0, f));
            StreamReport {
                frames_sent: minus(|s| s.frames_sent),
                frames_played: minus(|s| s.frames_played),
                frames_concealed: minus(|s| s.frames_concealed),
                frames_lost: minus(|s| s.frames_lost),
                mouth_to_ear_ms: None,
                ..s.clone()
            }
        })
        .filter(|s| s.frames_sent > 0 || s.frames_played > 0)
        .collect()
}
