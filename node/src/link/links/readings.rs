//! What the registry reports of its links: counters, round trips, datagram sizes, and the
//! received-datagram counts that show a link has gone quiet.

use super::{LinkCounts, Links, ALWAYS_FITS, HEADER};
use libp2p::PeerId;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

impl Links {
    /// QUIC's statistics for the link to `peer` (its newest connection), for tests.
    #[doc(hidden)]
    pub fn quic_stats(&self, peer: &PeerId) -> Option<quinn::ConnectionStats> {
        self.connection(peer).ok().map(|c| c.stats())
    }

    pub fn is_connected(&self, peer: &PeerId) -> bool {
        self.state().peers.contains_key(peer)
    }

    pub fn counts(&self) -> LinkCounts {
        let c = &self.counters;
        let plane = self.plane.counts();
        LinkCounts {
            sent: c.sent.load(Ordering::Relaxed),
            received: c.received.load(Ordering::Relaxed) + plane.received,
            malformed: c.malformed.load(Ordering::Relaxed),
            oversized: c.oversized.load(Ordering::Relaxed),
            queue_full: c.queue_full.load(Ordering::Relaxed) + plane.queue_full,
            refused: c.refused.load(Ordering::Relaxed),
            parked: c.parked.load(Ordering::Relaxed),
            unparked: c.unparked.load(Ordering::Relaxed),
            plane,
        }
    }

    /// Largest payload `send_datagram` accepts for this peer right now (path MTU minus headers;
    /// on a parked link, what any path takes).
    pub fn max_datagram_size(&self, peer: &PeerId) -> Option<usize> {
        let max = self.newest(peer, |c| match c.parked() {
            true => Some(ALWAYS_FITS),
            false => c.quic.as_ref()?.max_datagram_size(),
        })?;
        Some(max.saturating_sub(HEADER))
    }

    /// Smoothed round-trip time QUIC measures for this peer.
    pub fn rtt(&self, peer: &PeerId) -> Option<Duration> {
        self.connection(peer).ok().map(|c| c.rtt())
    }

    /// [`Links::rtt`] of every peer, looked up under one lock (a relay's stats ask once a
    /// second for each of its members).
    pub fn rtts(&self) -> BTreeMap<PeerId, Duration> {
        self.state()
            .peers
            .iter()
            .filter_map(|(peer, connections)| {
                Some((*peer, connections.last()?.quic.as_ref()?.rtt()))
            })
            .collect()
    }

    /// UDP datagrams QUIC has received on each peer's newest connection, where the peer
    /// promised no heartbeats (those the heartbeat watchdog follows) and the link is not
    /// parked: a count that stops moving is a link that lost its path.
    pub fn received_datagrams(&self) -> BTreeMap<PeerId, u64> {
        self.state()
            .peers
            .iter()
            .filter_map(|(peer, connections)| {
                let newest = connections.last()?;
                if newest
                    .plane
                    .as_ref()
                    .is_some_and(|p| p.peer_heartbeat().is_some())
                {
                    return None;
                }
                Some((*peer, newest.quic.as_ref()?.stats().udp_rx.datagrams))
            })
            .collect()
    }

    /// The transport refused a handshake at its connection limit.
    pub(crate) fn refused_connection(&self) {
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// [`LinkCounts::refused`] alone.
    pub fn refused_connections(&self) -> u64 {
        self.counters.refused.load(Ordering::Relaxed)
    }
}
