//! How a link datagram goes to a peer (on the plane of its newest connection, or in QUIC), and
//! a relay's copies of one packet to many peers.

use super::{Connection, Counters, Links, State, ALWAYS_FITS, HEADER};
use crate::link::plane::{PlaneLink, PlaneStats, SealedBatch};
use crate::link::socket::{canonical, LinkSocket};
use crate::link::{heartbeat, LinkError};
use bytes::Bytes;
use libp2p::PeerId;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, TryLockError};

/// How a datagram to a peer goes.
pub(super) enum Route<'a> {
    Quic(quinn::Connection),
    /// The link, where to, and the socket to send from (borrowed from the registry's state).
    Plane(&'a PlaneLink, SocketAddr, &'a Arc<LinkSocket>),
}

/// How an application datagram to `peer` goes: on the plane of its newest connection if the
/// peer has announced one, else in QUIC.
pub(super) fn route<'a>(
    state: &'a State,
    counters: &Counters,
    peer: &PeerId,
    frame: &[u8],
) -> Result<Route<'a>, LinkError> {
    let newest = state
        .peers
        .get(peer)
        .and_then(|connections| connections.last())
        .ok_or(LinkError::NotConnected(*peer))?;
    route_connection(state, counters, newest, frame, None)
}

/// [`route`] on the peer's newest connection; `cache` keeps its plane destination between
/// calls where the caller can ([`PlaneLink::cached_destination`]).
fn route_connection<'a>(
    state: &'a State,
    counters: &Counters,
    newest: &'a Connection,
    frame: &[u8],
    cache: Option<&mut Option<(u32, SocketAddr)>>,
) -> Result<Route<'a>, LinkError> {
    Ok(match (&newest.plane, &state.socket, &newest.quic) {
        (Some(plane), Some(socket), quic) if plane.is_ready() => {
            if frame.len() > ALWAYS_FITS {
                check_size(counters, quic.as_ref(), frame)?;
            }
            // A relay's heartbeat task follows every connection's address once an interval;
            // other nodes send little, and look each time. A parked link has only the plane's.
            let to = match (state.heartbeat, quic, cache) {
                (None, Some(quic), _) => plane.destination(canonical(quic.remote_address())),
                (_, _, Some(cache)) => plane.cached_destination(cache),
                (_, _, None) => plane.last_destination(),
            };
            Route::Plane(plane, to, socket)
        }
        (_, _, Some(quic)) => Route::Quic(quic.clone()),
        // Parking keeps only a ready plane, and the socket stays: not reached.
        (_, _, None) => return Err(LinkError::Datagram("parked link without a plane".into())),
    })
}

/// A frame too large for the path to `peer` (its MTU less QUIC's overhead, which is more than
/// the plane's, so either way fits).
fn check_size(
    counters: &Counters,
    connection: Option<&quinn::Connection>,
    frame: &[u8],
) -> Result<(), LinkError> {
    // A parked link has no QUIC path MTU to go by: only what any path takes.
    let max = connection.map_or(ALWAYS_FITS, |c| c.max_datagram_size().unwrap_or(0));
    if frame.len() > max {
        counters.oversized.fetch_add(1, Ordering::Relaxed);
        return Err(LinkError::DatagramTooLarge {
            size: frame.len().saturating_sub(HEADER),
            max: max.saturating_sub(HEADER),
        });
    }
    Ok(())
}

pub(super) fn plane_sent(counters: &Counters, plane: &PlaneStats, n: usize) {
    counters.sent.fetch_add(n as u64, Ordering::Relaxed);
    plane.sent.fetch_add(n as u64, Ordering::Relaxed);
}

pub(super) fn send_quic(
    counters: &Counters,
    connection: quinn::Connection,
    frame: Bytes,
) -> Result<(), LinkError> {
    let size = frame.len().saturating_sub(HEADER);
    match connection.send_datagram(frame) {
        Ok(()) => {
            counters.sent.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Err(quinn::SendDatagramError::TooLarge) => {
            counters.oversized.fetch_add(1, Ordering::Relaxed);
            Err(LinkError::DatagramTooLarge {
                size,
                max: connection
                    .max_datagram_size()
                    .map_or(0, |n| n.saturating_sub(HEADER)),
            })
        }
        Err(e) => Err(LinkError::Datagram(e.to_string())),
    }
}

/// Sends a relay's copies of one packet through the registry, holding it weakly: the plane's
/// fast path keeps one, and the registry's socket keeps the plane.
pub(crate) struct CopySender {
    pub(super) epoch: tokio::time::Instant,
    pub(super) state: std::sync::Weak<Mutex<State>>,
    pub(super) counters: Arc<Counters>,
    /// The last packet's copies, emptied and filled again for the next: a relay's copies of a
    /// packet take kilobytes, and allocating them afresh each time cost more than the rest of
    /// its own work per packet but the sealing.
    pub(super) batch: Mutex<SealedBatch>,
}

impl CopySender {
    /// Sends one framed datagram (from [`Links::frame_datagram`]) to each of `peers`: copies on
    /// the plane are sealed per peer and handed to the kernel together, the rest go in QUIC.
    /// Returns how many were sent; a peer without a link is skipped.
    pub(crate) fn send(&self, peers: &Arc<[PeerId]>, frame: &Bytes, plane: &PlaneStats) -> usize {
        let Some(state) = self.state.upgrade() else {
            return 0;
        };
        let mut quic = Vec::new();
        let mut beats = None;
        let now_ms = Links::clock_ms(self.epoch);
        // Another thread sending copies at the same moment fills a batch of its own.
        let mut reused = match self.batch.try_lock() {
            Ok(batch) => Some(batch),
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        };
        let mut fresh = SealedBatch::default();
        let batch = reused.as_deref_mut().unwrap_or(&mut fresh);
        batch.clear();
        let socket = {
            let mut guard = state.lock().unwrap_or_else(|e| e.into_inner());
            let state = &mut *guard;
            let route = state.copy_routes.resolve(peers, &state.peers);
            // Taken out for the loop, which reads the rest of the registry, and put back.
            let mut destinations =
                std::mem::take(&mut state.copy_routes.entries[route].destinations);
            let state = &*state;
            let newest = &state.copy_routes.entries[route].connections;
            // First every link's state is asked for, then used: between a relay's packets
            // (20 ms) the kernel's work evicts it, and the processor overlaps the misses only
            // if nothing waits on one before the next is asked for (a readiness test here was
            // once most of this loop's time).
            for link in newest.iter().filter_map(|c| c.plane.as_deref()) {
                link.prefetch();
            }
            batch.reserve(newest.len(), frame.len());
            for (connection, cache) in newest.iter().zip(destinations.iter_mut()) {
                match route_connection(state, &self.counters, connection, frame, Some(cache)) {
                    Ok(Route::Plane(link, to, _)) => {
                        batch.push(link, frame, to);
                        link.sent_voice_at(now_ms);
                    }
                    Ok(Route::Quic(connection)) => quic.push(connection),
                    Err(_) => {}
                }
            }
            let socket = state.socket.clone();
            guard.copy_routes.entries[route].destinations = destinations;
            // A heartbeat look due soon rides along, so the timer need not wake the relay.
            if let Some(promise) = guard.heartbeat.filter(|p| guard.looks.due_soon(p, now_ms)) {
                let mut batch = SealedBatch::default();
                heartbeat::look(&mut guard, &promise, now_ms, &heartbeat::beat(), &mut batch);
                heartbeat::looked_without_task(&guard);
                beats = Some(batch);
            }
            socket
        };
        let mut sent = quic
            .into_iter()
            .filter(|c| send_quic(&self.counters, c.clone(), frame.clone()).is_ok())
            .count();
        if let Some(socket) = socket {
            let n = batch.send(&socket);
            plane_sent(&self.counters, plane, n);
            sent += n;
            if let Some(beats) = beats {
                let n = beats.send(&socket);
                plane.heartbeats_sent.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
        sent
    }
}

/// How many copy lists a relay keeps looked up: one per talker and channel set it forwards for
/// at once, about.
const COPY_ROUTES: usize = 8;

/// The newest connection of each peer in a relay's recent copy lists.
///
/// Why: a forwarded packet goes to the same subscribers as the talker's packet before, and
/// looking each of them up in the registry's map again (a comparison of peer ids per level)
/// was a tenth of the relay's own work per copy. The lists are dropped whenever a connection
/// comes or goes (so none keeps a closed one); readiness, size and destination are still read
/// per send.
#[derive(Default)]
pub(super) struct CopyRoutes {
    /// Most recently used last.
    pub(super) entries: Vec<CopyRoute>,
}

pub(super) struct CopyRoute {
    /// The list as the forwarder shares it: the same list is most often the same allocation,
    /// which this one keeps alive, so a pointer comparison finds it.
    peers: Arc<[PeerId]>,
    /// Each peer's newest connection, in `peers` order; peers without one are left out.
    pub(super) connections: Vec<Connection>,
    /// Each connection's plane destination when last sent to ([`PlaneLink::cached_destination`]).
    pub(super) destinations: Vec<Option<(u32, SocketAddr)>>,
}

impl CopyRoutes {
    /// The index in `entries` of `peers` looked up in `registry`.
    pub(super) fn resolve(
        &mut self,
        peers: &Arc<[PeerId]>,
        registry: &BTreeMap<PeerId, Vec<Connection>>,
    ) -> usize {
        let same = |e: &CopyRoute| Arc::ptr_eq(&e.peers, peers) || e.peers == *peers;
        if let Some(at) = self.entries.iter().position(same) {
            let entry = self.entries.remove(at);
            self.entries.push(entry);
        } else {
            if self.entries.len() == COPY_ROUTES {
                self.entries.remove(0);
            }
            let connections: Vec<Connection> = peers
                .iter()
                .filter_map(|peer| registry.get(peer)?.last().cloned())
                .collect();
            self.entries.push(CopyRoute {
                peers: peers.clone(),
                destinations: vec![None; connections.len()],
                connections,
            });
        }
        self.entries.len() - 1
    }

    /// Forgets every list: the registry changed.
    pub(super) fn clear(&mut self) {
        self.entries.clear();
    }
}
