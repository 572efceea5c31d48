//! Parked links: a link whose QUIC connection closed with [`VARINT_PARKED`] keeps its voice
//! plane (keys, destination, replay window) under the same connection id, and carries voice,
//! lossy control and heartbeats as before. Ordered control needs a new QUIC connection, which
//! then replaces the parked link.
//!
//! Why: a relay's QUIC connection to each member costs it about 40 KiB (quinn's connection
//! state and channels, libp2p's connection task), and a member that only listens needs none
//! of it between its control exchanges. A relay parks a member's link once their control has
//! been quiet for a while (`NodeConfig::park_idle_links`), and keeps on forwarding to it.
//!
//! Liveness without QUIC: a peer that promised heartbeats (a relay) is watched as before
//! ([`Watchdog`]); one that did not (a member) sends a heartbeat on the plane every third of
//! `LinkConfig::parked_silence`, and is down once silent that long.

use super::{Connection, Links, KIND_HEARTBEAT};
use crate::link::heartbeat::Watchdog;
use crate::link::plane::{PlaneLink, SealedBatch};
use libp2p::PeerId;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Application close code of a QUIC connection closed to park its link.
pub(crate) const VARINT_PARKED: quinn::VarInt = quinn::VarInt::from_u32(2);

/// How long a parked link's plane still opens what arrives after a new connection took over:
/// the peer sealed the datagrams in flight (a path's delay of voice) under its keys.
const RETIRED_RECEIVES_FOR: Duration = Duration::from_secs(2);

/// Whether `connection` was closed by its peer to park the link.
fn closed_to_park(connection: &quinn::Connection) -> bool {
    matches!(
        connection.close_reason(),
        Some(quinn::ConnectionError::ApplicationClosed(close)) if close.error_code == VARINT_PARKED
    )
}

impl Connection {
    /// Parked, or its QUIC connection closing to park it.
    pub(super) fn parked(&self) -> bool {
        self.quic
            .as_ref()
            .is_none_or(|quic| self.parking || closed_to_park(quic))
    }
}

impl Links {
    /// Parks the link to `peer`: closes its QUIC connection and keeps its voice plane. Only a
    /// link whose plane is up can be parked; returns whether this one was.
    pub fn park(&self, peer: &PeerId) -> bool {
        let connection = {
            let mut state = self.state();
            let Some(newest) = state.peers.get_mut(peer).and_then(|c| c.last_mut()) else {
                return false;
            };
            let ready = newest.plane.as_ref().is_some_and(|p| p.is_ready());
            let Some(quic) = newest.quic.clone().filter(|_| ready && !newest.parking) else {
                return false;
            };
            newest.parking = true;
            quic
        };
        connection.close(VARINT_PARKED, b"parked");
        true
    }

    /// Whether the link to `peer` is parked, or its QUIC connection is closing to park it.
    pub fn is_parked(&self, peer: &PeerId) -> bool {
        self.newest(peer, |c| Some(c.parked())).unwrap_or(false)
    }

    /// Where the peer of a parked link is (its plane's destination): a new QUIC connection for
    /// ordered control is dialed there.
    pub fn parked_address(&self, peer: &PeerId) -> Option<SocketAddr> {
        self.newest(peer, |c| match c.quic {
            None => Some(c.plane.as_ref()?.last_destination()),
            Some(_) => None,
        })
    }

    /// A new connection took over from the parked connections `ids` (already out of the
    /// registry): their planes open what is still on the way for [`RETIRED_RECEIVES_FOR`].
    pub(super) fn retire(&self, ids: Vec<usize>) {
        let plane = self.plane.clone();
        tokio::spawn(async move {
            tokio::time::sleep(RETIRED_RECEIVES_FOR).await;
            for id in ids {
                plane.remove(id);
            }
        });
    }

    /// The id of `peer`'s parked link, if its newest is one.
    pub(super) fn parked_id(&self, peer: &PeerId) -> Option<usize> {
        self.newest(peer, |c| c.quic.is_none().then_some(c.id))
    }

    /// Connection `id` of `peer` has closed: keeps it parked if it was closed to park (by
    /// either end), is the peer's newest and has its plane up. Its QUIC handle goes.
    pub(super) fn keep_parked(&self, peer: PeerId, id: usize, quic: &quinn::Connection) -> bool {
        let mut state = self.state();
        let Some(newest) = state.peers.get_mut(&peer).and_then(|c| c.last_mut()) else {
            return false;
        };
        let ready = newest.plane.as_ref().is_some_and(|p| p.is_ready());
        if newest.id != id || !ready || !(newest.parking || closed_to_park(quic)) {
            return false;
        }
        newest.quic = None;
        newest.parking = false;
        state.changed();
        self.counters.parked.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Watches parked connection `id` of `peer` until a new connection replaces it, it is
    /// closed, or its peer falls silent (then it goes, and the link is down if it was the
    /// last). Sends this end's heartbeats on it where this end has no heartbeat task.
    pub(super) async fn watch_parked(self, peer: PeerId, id: usize, plane: Arc<PlaneLink>) {
        let (silence, beats) = {
            let state = self.state();
            (state.parked_silence, state.heartbeat.is_none())
        };
        let keep_alive_ms = (silence / 3).as_millis() as u64;
        let look = silence / 6;
        let mut watchdog = Watchdog::new(Some(plane.clone()), self.epoch);
        let mut heard_ms = Self::clock_ms(self.epoch);
        let beat = Self::frame(KIND_HEARTBEAT, &[]);
        let reason = loop {
            let promised = plane.peer_heartbeat().is_some();
            if promised {
                watchdog.tick().await;
            } else {
                tokio::time::sleep_until(self.epoch + next_tick(self.epoch, look)).await;
            }
            if self.parked_id(&peer) != Some(id) {
                return;
            }
            let now_ms = Self::clock_ms(self.epoch);
            if promised {
                if watchdog.silent(None) {
                    break "parked link: no heartbeat";
                }
            } else {
                if plane.take_heard() {
                    heard_ms = now_ms;
                }
                if now_ms.saturating_sub(heard_ms) >= silence.as_millis() as u64 {
                    break "parked link: silent";
                }
            }
            if beats && plane.quiet_for(now_ms, keep_alive_ms) {
                let socket = self.state().socket.clone();
                if let Some(socket) = socket {
                    let mut batch = SealedBatch::with_capacity(1, beat.len());
                    batch.push(&plane, &beat, plane.last_destination());
                    plane.sent_at(now_ms);
                    let n = batch.send(&socket);
                    self.plane
                        .stats()
                        .heartbeats_sent
                        .fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        };
        tracing::debug!(%peer, reason, "parked link down");
        self.remove(peer, id, reason.to_string());
    }
}

/// The next multiple of `every` since `epoch` after now. Every parked link's watch looks on
/// this one grid, so a relay's hundreds of them wake it together once a look instead of each
/// on its own timer (100 parked links looking every 5 s woke it 20 times a second).
fn next_tick(epoch: tokio::time::Instant, every: Duration) -> Duration {
    let every_ms = every.as_millis().clamp(1, u128::from(u64::MAX)) as u64;
    let now_ms = Links::clock_ms(epoch);
    Duration::from_millis((now_ms / every_ms + 1).saturating_mul(every_ms))
}
