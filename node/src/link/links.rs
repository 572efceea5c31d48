//! The `Links` registry: per connected peer, unreliable datagrams for voice (and datagram ping),
//! plus link events. The transport registers every connection it establishes; the rest of the
//! node sends with [`Links::send_datagram`] and receives from [`DatagramReceiver`].
//!
//! Datagram layout (docs/protocol.md, "Link datagrams"): `version (1) | kind | body`. Kinds:
//! 0 application payload, 1 ping, 2 pong (the body echoed). Anything else is counted as
//! malformed and dropped.

use super::socket::canonical;
use super::LinkError;
use bytes::{BufMut, Bytes, BytesMut};
use libp2p::PeerId;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Version byte of every link datagram.
pub const DATAGRAM_VERSION: u8 = 1;
const KIND_APP: u8 = 0;
const KIND_PING: u8 = 1;
const KIND_PONG: u8 = 2;
const HEADER: usize = 2;

/// A datagram from a peer, header removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IncomingDatagram {
    pub peer: PeerId,
    pub payload: Bytes,
    /// When the link layer handed it over (tokio time): a relay's forwarding latency starts here.
    pub received_at: std::time::Instant,
}

/// Something that happened to a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    Up {
        peer: PeerId,
        remote: SocketAddr,
    },
    Down {
        peer: PeerId,
        reason: String,
    },
    /// The peer's address changed under a live connection (QUIC migration or NAT rebinding).
    Migrated {
        peer: PeerId,
        from: SocketAddr,
        to: SocketAddr,
    },
}

/// Datagram counters across all links.
#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    received: AtomicU64,
    malformed: AtomicU64,
    oversized: AtomicU64,
    queue_full: AtomicU64,
}

/// A copy of the datagram counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LinkCounts {
    pub sent: u64,
    pub received: u64,
    /// Wrong version, unknown kind or too short: dropped.
    pub malformed: u64,
    /// Refused on send: larger than the path allows.
    pub oversized: u64,
    /// Dropped because the application was not reading.
    pub queue_full: u64,
}

#[derive(Default)]
struct State {
    /// Each peer's open connections, oldest first; datagrams go on the newest. A peer briefly
    /// has two when dials cross or it restarted, and the node closes one of them (not always
    /// the older one: `runtime::connections`), so the registry falls back to the one left.
    peers: BTreeMap<PeerId, Vec<quinn::Connection>>,
    pings: BTreeMap<u64, oneshot::Sender<()>>,
    next_ping: u64,
    events: Vec<mpsc::UnboundedSender<LinkEvent>>,
}

/// See the module documentation. Cheap to clone; all clones share the registry.
#[derive(Clone)]
pub struct Links {
    state: Arc<Mutex<State>>,
    counters: Arc<Counters>,
    incoming: mpsc::Sender<IncomingDatagram>,
}

/// The stream of datagrams from all peers.
pub struct DatagramReceiver {
    rx: mpsc::Receiver<IncomingDatagram>,
}

impl DatagramReceiver {
    pub async fn recv(&mut self) -> Option<IncomingDatagram> {
        self.rx.recv().await
    }

    pub fn try_recv(&mut self) -> Option<IncomingDatagram> {
        self.rx.try_recv().ok()
    }
}

impl Links {
    pub fn new(queue: usize) -> (Self, DatagramReceiver) {
        let (incoming, rx) = mpsc::channel(queue.max(1));
        let links = Self {
            state: Arc::default(),
            counters: Arc::default(),
            incoming,
        };
        (links, DatagramReceiver { rx })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves plain data behind; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Subscribes to link events from now on.
    pub fn events(&self) -> mpsc::UnboundedReceiver<LinkEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.state().events.push(tx);
        rx
    }

    fn emit(&self, event: LinkEvent) {
        self.state()
            .events
            .retain(|tx| tx.send(event.clone()).is_ok());
    }

    pub fn peers(&self) -> Vec<PeerId> {
        self.state().peers.keys().copied().collect()
    }

    pub fn is_connected(&self, peer: &PeerId) -> bool {
        self.state().peers.contains_key(peer)
    }

    pub fn counts(&self) -> LinkCounts {
        let c = &self.counters;
        LinkCounts {
            sent: c.sent.load(Ordering::Relaxed),
            received: c.received.load(Ordering::Relaxed),
            malformed: c.malformed.load(Ordering::Relaxed),
            oversized: c.oversized.load(Ordering::Relaxed),
            queue_full: c.queue_full.load(Ordering::Relaxed),
        }
    }

    fn connection(&self, peer: &PeerId) -> Result<quinn::Connection, LinkError> {
        self.state()
            .peers
            .get(peer)
            .and_then(|connections| connections.last())
            .cloned()
            .ok_or(LinkError::NotConnected(*peer))
    }

    /// Largest payload `send_datagram` accepts for this peer right now (path MTU minus headers).
    pub fn max_datagram_size(&self, peer: &PeerId) -> Option<usize> {
        let connection = self.connection(peer).ok()?;
        connection
            .max_datagram_size()
            .map(|n| n.saturating_sub(HEADER))
    }

    /// Smoothed round-trip time QUIC measures for this peer.
    pub fn rtt(&self, peer: &PeerId) -> Option<Duration> {
        self.connection(peer).ok().map(|c| c.rtt())
    }

    /// A link datagram: header then body.
    fn frame(kind: u8, body: &[u8]) -> Bytes {
        let mut datagram = BytesMut::with_capacity(HEADER + body.len());
        datagram.put_u8(DATAGRAM_VERSION);
        datagram.put_u8(kind);
        datagram.put_slice(body);
        datagram.freeze()
    }

    fn send_kind(&self, peer: &PeerId, kind: u8, body: &[u8]) -> Result<(), LinkError> {
        self.send_framed(peer, Self::frame(kind, body))
    }

    /// An application datagram framed once, for [`Links::send_framed`] to several peers (a
    /// relay's copies of one packet share this one buffer).
    pub fn frame_datagram(payload: &[u8]) -> Bytes {
        Self::frame(KIND_APP, payload)
    }

    /// Sends a datagram framed by [`Links::frame_datagram`] to `peer`.
    pub fn send_framed(&self, peer: &PeerId, frame: Bytes) -> Result<(), LinkError> {
        let connection = self.connection(peer)?;
        let size = frame.len().saturating_sub(HEADER);
        match connection.send_datagram(frame) {
            Ok(()) => {
                self.counters.sent.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(quinn::SendDatagramError::TooLarge) => {
                self.counters.oversized.fetch_add(1, Ordering::Relaxed);
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

    /// Sends one unreliable datagram to `peer`.
    pub fn send_datagram(&self, peer: &PeerId, payload: &[u8]) -> Result<(), LinkError> {
        self.send_kind(peer, KIND_APP, payload)
    }

    /// Like [`Links::send_datagram`], but waits for room in the send buffer instead of dropping
    /// the oldest queued datagram. For bulk senders and benchmarks; live voice wants the
    /// dropping variant.
    pub async fn send_datagram_wait(&self, peer: &PeerId, payload: &[u8]) -> Result<(), LinkError> {
        let connection = self.connection(peer)?;
        connection
            .send_datagram_wait(Self::frame(KIND_APP, payload))
            .await
            .map_err(|e| LinkError::Datagram(e.to_string()))?;
        self.counters.sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Round trip of one datagram ping (the peer's link layer echoes it); `None` on timeout.
    /// Time is tokio's, so it is virtual under the simulator.
    pub async fn ping_datagram(
        &self,
        peer: &PeerId,
        timeout: Duration,
    ) -> Result<Option<Duration>, LinkError> {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut state = self.state();
            state.next_ping += 1;
            let id = state.next_ping;
            state.pings.insert(id, tx);
            id
        };
        let start = tokio::time::Instant::now();
        let sent = self.send_kind(peer, KIND_PING, &id.to_be_bytes());
        let result = match sent {
            Ok(()) => tokio::time::timeout(timeout, rx).await,
            Err(e) => {
                self.state().pings.remove(&id);
                return Err(e);
            }
        };
        self.state().pings.remove(&id);
        Ok(match result {
            Ok(Ok(())) => Some(start.elapsed()),
            _ => None,
        })
    }

    /// Adds an established connection and starts reading its datagrams.
    pub(crate) fn register(&self, peer: PeerId, connection: quinn::Connection) {
        let remote = canonical(connection.remote_address());
        let id = connection.stable_id();
        let first = {
            let mut state = self.state();
            let connections = state.peers.entry(peer).or_default();
            connections.push(connection.clone());
            connections.len() == 1
        };
        if first {
            self.emit(LinkEvent::Up { peer, remote });
        }
        let links = self.clone();
        tokio::spawn(async move { links.drive(peer, id, connection).await });
    }

    async fn drive(self, peer: PeerId, id: usize, connection: quinn::Connection) {
        // The remote address is tracked here, so the registry is locked only when it changes,
        // not for every voice datagram.
        let mut remote = canonical(connection.remote_address());
        let reason = loop {
            match connection.read_datagram().await {
                Ok(datagram) => {
                    let now = canonical(connection.remote_address());
                    if now != remote {
                        let from = std::mem::replace(&mut remote, now);
                        self.emit(LinkEvent::Migrated {
                            peer,
                            from,
                            to: now,
                        });
                    }
                    self.on_datagram(peer, datagram);
                }
                Err(e) => break e.to_string(),
            }
        };
        let last = {
            let mut state = self.state();
            let connections = state.peers.entry(peer).or_default();
            connections.retain(|c| c.stable_id() != id);
            let empty = connections.is_empty();
            if empty {
                state.peers.remove(&peer);
            }
            empty
        };
        if last {
            self.emit(LinkEvent::Down { peer, reason });
        }
    }

    fn on_datagram(&self, peer: PeerId, datagram: Bytes) {
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        if datagram.len() < HEADER || datagram[0] != DATAGRAM_VERSION {
            self.counters.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let body = datagram.slice(HEADER..);
        match datagram[1] {
            KIND_APP => {
                let incoming = IncomingDatagram {
                    peer,
                    payload: body,
                    received_at: tokio::time::Instant::now().into_std(),
                };
                if self.incoming.try_send(incoming).is_err() {
                    self.counters.queue_full.fetch_add(1, Ordering::Relaxed);
                }
            }
            KIND_PING if body.len() == 8 => {
                // Best effort: a pong that does not fit or cannot be sent is just a lost ping.
                let _ = self.send_kind(&peer, KIND_PONG, &body);
            }
            KIND_PONG if body.len() == 8 => {
                let mut id = [0u8; 8];
                id.copy_from_slice(&body);
                if let Some(tx) = self.state().pings.remove(&u64::from_be_bytes(id)) {
                    let _ = tx.send(());
                }
            }
            _ => {
                self.counters.malformed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Sends a raw QUIC datagram with no link header (tests use it to inject malformed input).
    #[doc(hidden)]
    pub fn send_raw_datagram(&self, peer: &PeerId, datagram: Bytes) -> Result<(), LinkError> {
        self.connection(peer)?
            .send_datagram(datagram)
            .map_err(|e| LinkError::Datagram(e.to_string()))
    }

    /// Closes the link to `peer` (both directions).
    pub fn close(&self, peer: &PeerId) {
        if let Ok(connection) = self.connection(peer) {
            connection.close(VARINT_NORMAL, b"closed");
        }
    }
}

/// Application close code for a normal hang-up.
pub(crate) const VARINT_NORMAL: quinn::VarInt = quinn::VarInt::from_u32(0);
