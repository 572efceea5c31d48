//! Who listens where through the relay, and how much each channel carries: what the read-only
//! API (`/api/v1/occupancy`) shows, kept from the node's counters each time they are polled.

use std::collections::BTreeMap;
use std::time::Instant;

use callsign_mesh::charter::{ChannelId, CharterState};
use callsign_node::runtime::NodeStats;
use serde::Serialize;

/// One channel the relay forwards.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChannelOccupancy {
    /// The channel's id (16 hex digits).
    pub channel: String,
    /// Its path in the charter, when the relay's mirror names it.
    pub path: Option<String>,
    /// Members subscribed to it now.
    pub subscribers: usize,
    /// Packets accepted for it since the relay started.
    pub packets: u64,
    /// Packets accepted per second between the last two polls.
    pub packets_per_s: f64,
}

/// See the module documentation.
#[derive(Clone, Debug, Default)]
pub struct Occupancy {
    pub channels: Vec<ChannelOccupancy>,
    pub subscribers: usize,
    last: BTreeMap<ChannelId, u64>,
    last_at: Option<Instant>,
}

impl Occupancy {
    /// Takes a fresh snapshot of the node's counters, polled at `now`.
    pub fn update(&mut self, stats: &NodeStats, charter: Option<&CharterState>, now: Instant) {
        let Some(forwarding) = &stats.forwarding else {
            return;
        };
        let subscribers: BTreeMap<ChannelId, usize> = forwarding.channels.iter().copied().collect();
        let packets = &forwarding.counts.channel_packets;
        let elapsed = self
            .last_at
            .map(|at| now.saturating_duration_since(at).as_secs_f64())
            .filter(|s| *s > 0.0);
        let mut ids: Vec<ChannelId> = subscribers.keys().chain(packets.keys()).copied().collect();
        ids.sort();
        ids.dedup();
        self.channels = ids
            .into_iter()
            .map(|id| {
                let total = packets.get(&id).copied().unwrap_or(0);
                let before = self.last.get(&id).copied().unwrap_or(0);
                ChannelOccupancy {
                    channel: id.to_string(),
                    path: charter.and_then(|c| c.path(id)),
                    subscribers: subscribers.get(&id).copied().unwrap_or(0),
                    packets: total,
                    packets_per_s: elapsed.map_or(0.0, |s| total.saturating_sub(before) as f64 / s),
                }
            })
            .collect();
        self.subscribers = forwarding.subscribers;
        self.last = packets.clone();
        self.last_at = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use callsign_node::runtime::ForwardingStats;
    use std::time::Duration;

    fn stats(subscribers: &[(u64, usize)], packets: &[(u64, u64)]) -> NodeStats {
        let mut forwarding = ForwardingStats {
            subscribers: subscribers.iter().map(|(_, n)| n).sum(),
            channels: subscribers
                .iter()
                .map(|(c, n)| (ChannelId(*c), *n))
                .collect(),
            ..Default::default()
        };
        forwarding.counts.channel_packets =
            packets.iter().map(|(c, n)| (ChannelId(*c), *n)).collect();
        NodeStats {
            forwarding: Some(forwarding),
            ..Default::default()
        }
    }

    #[test]
    fn rates_come_from_the_packets_between_two_polls() {
        let mut occupancy = Occupancy::default();
        let t0 = Instant::now();
        occupancy.update(&stats(&[(1, 3)], &[(1, 100), (2, 7)]), None, t0);
        assert_eq!(occupancy.channels.len(), 2);
        assert_eq!(occupancy.channels[0].subscribers, 3);
        assert_eq!(
            occupancy.channels[0].packets_per_s, 0.0,
            "no rate from one poll"
        );
        assert_eq!(occupancy.channels[1].subscribers, 0);
        let t1 = t0 + Duration::from_secs(2);
        occupancy.update(&stats(&[(1, 2)], &[(1, 200), (2, 7)]), None, t1);
        assert_eq!(occupancy.channels[0].packets, 200);
        assert_eq!(occupancy.channels[0].packets_per_s, 50.0);
        assert_eq!(occupancy.channels[0].subscribers, 2);
        assert_eq!(occupancy.channels[1].packets_per_s, 0.0);
        assert_eq!(occupancy.subscribers, 2);
    }
}
