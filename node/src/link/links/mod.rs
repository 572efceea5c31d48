//! The `Links` registry: per connected peer, unreliable datagrams for voice (and datagram ping),
//! plus link events. The transport registers every connection it establishes; the rest of the
//! node sends with [`Links::send_datagram`] and receives from [`DatagramReceiver`].
//!
//! Datagram layout (docs/protocol.md, "Link datagrams"): `version (1) | kind | body`. Kinds:
//! 0 application payload, 1 ping, 2 pong (the body echoed), 3 voice plane ready (empty, or the
//! sender's heartbeat interval in ms as a u16), 4 heartbeat (empty), 5 lossy control (an
//! encoded control message that may be lost; on the voice plane only). Anything else is
//! counted as malformed and dropped.
//!
//! Application datagrams go on the voice plane (`link::plane`) once the peer has announced it:
//! sealed per link and sent beside the QUIC connection, in one system call for many peers
//! ([`Links::send_framed_to_many`]). Pings, pongs and announcements stay in QUIC. Lossy control
//! goes on the plane only ([`Links::send_lossy_control`]); until the plane is up its sender
//! sends it as control.

mod parked;
mod readings;
mod route;
mod send;

#[cfg(target_os = "linux")]
use super::heartbeat::ThreadLooks;
use super::heartbeat::{announcement, parse_announcement, Watchdog};
use super::plane::{PlaneCounts, PlaneKeys, PlaneLink, PlaneReceivers};
use super::socket::{canonical, LinkSocket};
use super::LinkError;
use bytes::Bytes;
use libp2p::PeerId;
pub(crate) use route::CopySender;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Version byte of every link datagram.
pub const DATAGRAM_VERSION: u8 = 1;
pub(crate) const KIND_APP: u8 = 0;
const KIND_PING: u8 = 1;
const KIND_PONG: u8 = 2;
/// The sender has the voice plane (keys installed): the peer may send on it.
pub(super) const KIND_PLANE_READY: u8 = 3;
/// Liveness only: a link that promised heartbeats had nothing else to send.
pub(crate) const KIND_HEARTBEAT: u8 = 4;
/// A periodic control message that the next one replaces (`mesh::member::Output::Announce`):
/// on the voice plane only, never acknowledged, handed to the node as control from the link's
/// peer.
pub(crate) const KIND_CONTROL: u8 = 5;
/// Version and kind.
pub(crate) const FRAME_HEADER: usize = 2;
const HEADER: usize = FRAME_HEADER;
/// A frame at most this long fits any path: QUIC needs 1,200-byte datagrams to work at all.
const ALWAYS_FITS: usize = 1100;
/// How often a link announces the plane again to a peer still sending in QUIC.
pub(super) const ANNOUNCE_EVERY: Duration = Duration::from_secs(1);

/// A datagram from a peer, header removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IncomingDatagram {
    pub peer: PeerId,
    pub payload: Bytes,
    /// When the link layer handed it over (tokio time): a relay's forwarding latency starts here.
    pub received_at: std::time::Instant,
    /// Lossy control (kind 5): `payload` is a control message, not voice.
    pub control: bool,
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
    refused: AtomicU64,
    parked: AtomicU64,
    unparked: AtomicU64,
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
    /// QUIC handshakes refused at `LinkConfig::max_connections`.
    pub refused: u64,
    /// Links parked (`Links::park`, by either end), and parked links a new connection took
    /// over.
    pub parked: u64,
    pub unparked: u64,
    /// The voice plane's share of the above, and its drops by reason.
    pub plane: PlaneCounts,
}

#[derive(Default)]
pub(super) struct State {
    /// Each peer's open connections, oldest first; datagrams go on the newest. A peer briefly
    /// has two when dials cross or it restarted, and the node closes one of them (not always
    /// the older one: `runtime::connections`), so the registry falls back to the one left.
    pub(super) peers: BTreeMap<PeerId, Vec<Connection>>,
    /// A relay's recent copy lists, looked up in `peers` ([`route::CopyRoutes`]); cleared
    /// whenever `peers` changes.
    copy_routes: route::CopyRoutes,
    /// Every connection with a plane, in `peers` order, for the heartbeat's looks; dropped
    /// whenever `peers` changes.
    planes: Option<Vec<(Option<quinn::Connection>, Arc<PlaneLink>)>>,
    pings: BTreeMap<u64, oneshot::Sender<()>>,
    next_ping: u64,
    events: Vec<mpsc::UnboundedSender<LinkEvent>>,
    /// The endpoint's socket, which plane datagrams leave by.
    pub(super) socket: Option<Arc<LinkSocket>>,
    /// The heartbeat this end promises its peers (`LinkConfig::plane_heartbeat`), and whether
    /// its task runs.
    pub(super) heartbeat: Option<super::Heartbeat>,
    heartbeat_running: bool,
    /// When the heartbeat looks next (`heartbeat::Looks`).
    pub(super) looks: super::heartbeat::Looks,
    /// Peers that are the org's rented relays: dialed with `LinkConfig::relay_keep_alive`.
    rented_relays: std::collections::BTreeSet<PeerId>,
    /// How long a parked link lives without a word from its peer (`LinkConfig::parked_silence`).
    pub(super) parked_silence: Duration,
    /// The last connection id given out. Ours, not quinn's `stable_id` (the address of the
    /// connection's state, which a later connection may be allocated at while a parked link
    /// still holds the id).
    last_id: usize,
}

impl State {
    /// `peers` changed: what was looked up in it goes.
    fn changed(&mut self) {
        self.copy_routes.clear();
        self.planes = None;
    }

    /// Every connection with a plane, side by side (a relay's heartbeat looks at each of them
    /// several times a second; walking the map instead missed the cache twice per link).
    pub(super) fn planes(&mut self) -> &[(Option<quinn::Connection>, Arc<PlaneLink>)] {
        let peers = &self.peers;
        self.planes.get_or_insert_with(|| {
            peers
                .values()
                .flatten()
                .filter_map(|c| Some((c.quic.clone(), c.plane.clone()?)))
                .collect()
        })
    }
}

/// One QUIC connection and its voice plane, if both ends have one.
#[derive(Clone)]
pub(super) struct Connection {
    /// `None` once parked (`links::parked`): QUIC closed and the plane lives on.
    pub(super) quic: Option<quinn::Connection>,
    /// The registry's id for the connection ([`State::last_id`]), which also keys its plane's
    /// receive side.
    pub(super) id: usize,
    pub(super) plane: Option<Arc<PlaneLink>>,
    /// This end is closing QUIC to park the link ([`Links::park`]).
    pub(super) parking: bool,
}

/// See the module documentation. Cheap to clone; all clones share the registry.
#[derive(Clone)]
pub struct Links {
    /// Zero of the clock plane send times are kept on (tokio time).
    epoch: tokio::time::Instant,
    state: Arc<Mutex<State>>,
    counters: Arc<Counters>,
    incoming: mpsc::Sender<IncomingDatagram>,
    plane: Arc<PlaneReceivers>,
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
        let epoch = tokio::time::Instant::now();
        let links = Self {
            epoch,
            state: Arc::default(),
            counters: Arc::default(),
            plane: Arc::new(PlaneReceivers::new(incoming.clone(), epoch)),
            incoming,
        };
        (links, DatagramReceiver { rx })
    }

    /// Sends plane datagrams from `socket` and opens the ones that reach it. The transport
    /// calls this for its socket, and again when it moves to another.
    pub(crate) fn attach(&self, socket: &Arc<LinkSocket>, config: &super::LinkConfig) {
        let heartbeat = config.plane_heartbeat;
        socket.attach_plane(self.plane.clone());
        if let Some(rate) = config.plane_rate {
            self.plane.limit(rate);
        }
        if let Some(rate) = config.handshake_rate {
            socket.limit_handshakes(rate);
        }
        let promised = {
            let mut state = self.state();
            state.socket = Some(socket.clone());
            state.heartbeat = heartbeat.filter(|h| !h.every.is_zero());
            state.parked_silence = config.parked_silence;
            state.heartbeat.is_some()
        };
        let start = promised && !self.looks_on_read_thread(socket) && {
            let mut state = self.state();
            !std::mem::replace(&mut state.heartbeat_running, true)
        };
        if start {
            tokio::spawn(super::heartbeat::send_heartbeats(
                self.epoch,
                Arc::downgrade(&self.state),
                self.plane.clone(),
            ));
        }
    }

    /// Hands the heartbeat's looks to `socket`'s read thread, if it has one: it looks there,
    /// and the task is for the other sockets.
    #[cfg(target_os = "linux")]
    fn looks_on_read_thread(&self, socket: &LinkSocket) -> bool {
        let looks = ThreadLooks::new(self.epoch, Arc::downgrade(&self.state), self.plane.clone());
        socket.take_heartbeat_looks(looks)
    }

    /// Read threads are Linux only (`link::read_thread`): elsewhere the task looks.
    #[cfg(not(target_os = "linux"))]
    fn looks_on_read_thread(&self, _socket: &LinkSocket) -> bool {
        false
    }

    /// Milliseconds since [`Links::epoch`].
    pub(super) fn clock_ms(epoch: tokio::time::Instant) -> u64 {
        Self::clock_ms_at(epoch, tokio::time::Instant::now())
    }

    /// [`Links::clock_ms`] at `at`, for a caller that has just read the clock.
    pub(super) fn clock_ms_at(epoch: tokio::time::Instant, at: tokio::time::Instant) -> u64 {
        at.saturating_duration_since(epoch)
            .as_millis()
            .min(u128::from(u64::MAX - 1)) as u64
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

    /// Says whether `peer` is one of the org's rented relays, which this node's dials to it
    /// then treat as such (`LinkConfig::relay_keep_alive`).
    pub fn set_rented_relay(&self, peer: PeerId, rented: bool) {
        let mut state = self.state();
        if rented {
            state.rented_relays.insert(peer);
        } else {
            state.rented_relays.remove(&peer);
        }
    }

    pub fn is_rented_relay(&self, peer: &PeerId) -> bool {
        self.state().rented_relays.contains(peer)
    }

    /// `read` of `peer`'s newest connection, under the registry's lock.
    fn newest<R>(&self, peer: &PeerId, read: impl FnOnce(&Connection) -> Option<R>) -> Option<R> {
        read(self.state().peers.get(peer)?.last()?)
    }

    /// The QUIC connection of `peer`'s newest link; none while that link is parked.
    fn connection(&self, peer: &PeerId) -> Result<quinn::Connection, LinkError> {
        self.newest(peer, |c| c.quic.clone())
            .ok_or(LinkError::NotConnected(*peer))
    }

    /// Adds an established connection and starts reading its datagrams.
    pub(crate) fn register(&self, peer: PeerId, connection: quinn::Connection) {
        let remote = canonical(connection.remote_address());
        let id = {
            let mut state = self.state();
            state.last_id += 1;
            state.last_id
        };
        // Receive keys go in before the announcement leaves, so the peer's first plane
        // datagram finds them.
        let plane = PlaneKeys::derive(&connection).and_then(|keys| {
            let (link, receive) = PlaneLink::new(keys, remote);
            self.plane.add(peer, id, receive).then_some(link)
        });
        let (first, unparked) = {
            let mut state = self.state();
            if let Some(plane) = &plane {
                plane.announced_at(tokio::time::Instant::now());
                let _ = connection.send_datagram(announcement(state.heartbeat));
            }
            state.changed();
            let connections = state.peers.entry(peer).or_default();
            let first = connections.is_empty();
            // A new connection to a parked peer takes over: the parked plane's keys go.
            let unparked: Vec<usize> = connections
                .iter()
                .filter(|c| c.quic.is_none())
                .map(|c| c.id)
                .collect();
            connections.retain(|c| c.quic.is_some());
            connections.push(Connection {
                quic: Some(connection.clone()),
                id,
                plane,
                parking: false,
            });
            (first, unparked)
        };
        if !unparked.is_empty() {
            self.counters.unparked.fetch_add(1, Ordering::Relaxed);
            self.retire(unparked);
        }
        if first {
            self.emit(LinkEvent::Up { peer, remote });
        }
        let links = self.clone();
        tokio::spawn(async move { links.drive(peer, id, connection).await });
    }

    /// The plane of connection `id` to `peer`, if it has one.
    fn plane_of(&self, peer: &PeerId, id: usize) -> Option<Arc<PlaneLink>> {
        self.state()
            .peers
            .get(peer)?
            .iter()
            .find(|c| c.id == id)?
            .plane
            .clone()
    }

    async fn drive(self, peer: PeerId, id: usize, connection: quinn::Connection) {
        // The remote address is tracked here, so the registry is locked only when it changes,
        // not for every voice datagram. It changes under QUIC (seen when a QUIC datagram
        // arrives) or on the plane (the peer's authenticated datagrams come from elsewhere).
        let mut remote = canonical(connection.remote_address());
        let plane = self.plane_of(&peer, id);
        let moved = async |plane: &Option<Arc<PlaneLink>>| match plane {
            Some(plane) => plane.moved().await,
            None => std::future::pending().await,
        };
        let mut watchdog = Watchdog::new(plane.clone(), self.epoch);
        let reason = loop {
            // `biased`: a fixed order, so a simulated run replays exactly.
            let (now, datagram) = tokio::select! {
                biased;
                datagram = connection.read_datagram() => match datagram {
                    Ok(datagram) => (canonical(connection.remote_address()), Some(datagram)),
                    Err(e) => break e.to_string(),
                },
                to = moved(&plane) => (to, None),
                () = watchdog.tick() => {
                    if watchdog.silent(Some(&connection)) {
                        connection.close(VARINT_SILENT, b"no heartbeat");
                    } else if watchdog.missed_announcement() {
                        // A heartbeat in QUIC makes the peer announce its plane again.
                        let _ = connection.send_datagram(super::heartbeat::beat());
                    }
                    continue;
                }
            };
            if now != remote {
                let from = std::mem::replace(&mut remote, now);
                self.emit(LinkEvent::Migrated {
                    peer,
                    from,
                    to: now,
                });
            }
            if let Some(datagram) = datagram {
                self.on_datagram(peer, id, &connection, datagram);
            }
        };
        if let Some(plane) = plane.filter(|_| self.keep_parked(peer, id, &connection)) {
            tracing::debug!(%peer, "link parked");
            tokio::spawn(self.watch_parked(peer, id, plane));
            return;
        }
        self.remove(peer, id, reason);
    }

    /// Removes connection `id` of `peer` and its plane; the link is down if it was the last.
    fn remove(&self, peer: PeerId, id: usize, reason: String) {
        self.plane.remove(id);
        let last = {
            let mut state = self.state();
            state.changed();
            let connections = state.peers.entry(peer).or_default();
            connections.retain(|c| c.id != id);
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

    fn on_datagram(
        &self,
        peer: PeerId,
        id: usize,
        connection: &quinn::Connection,
        datagram: Bytes,
    ) {
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        if datagram.len() < HEADER || datagram[0] != DATAGRAM_VERSION {
            self.counters.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let body = datagram.slice(HEADER..);
        match datagram[1] {
            KIND_APP => {
                self.announce_again(&peer, id, connection);
                let incoming = IncomingDatagram {
                    peer,
                    payload: body,
                    received_at: tokio::time::Instant::now().into_std(),
                    control: false,
                };
                if self.incoming.try_send(incoming).is_err() {
                    self.counters.queue_full.fetch_add(1, Ordering::Relaxed);
                }
            }
            KIND_PING if body.len() == 8 => {
                // Best effort: a pong that does not fit or cannot be sent is just a lost ping.
                let _ = self.send_kind(&peer, KIND_PONG, &body);
            }
            KIND_PLANE_READY => match parse_announcement(&body) {
                Ok(promise) => {
                    if let Some(plane) = self.plane_of(&peer, id) {
                        plane.set_ready();
                        plane.set_peer_announced();
                        if let Some(promise) = promise {
                            plane.set_peer_heartbeat(promise);
                        }
                    }
                }
                Err(()) => {
                    self.counters.malformed.fetch_add(1, Ordering::Relaxed);
                }
            },
            KIND_HEARTBEAT if body.is_empty() => self.announce_again(&peer, id, connection),
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

    /// The peer still sends in QUIC although this end has the plane: it may have missed the
    /// announcement, so repeat it (at most every [`ANNOUNCE_EVERY`]).
    fn announce_again(&self, peer: &PeerId, id: usize, connection: &quinn::Connection) {
        if let Some(plane) = self.plane_of(peer, id) {
            if plane.should_announce(tokio::time::Instant::now(), ANNOUNCE_EVERY) {
                let heartbeat = self.state().heartbeat;
                let _ = connection.send_datagram(announcement(heartbeat));
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

    /// Closes the link to `peer` (both directions). A parked link goes at once; its peer
    /// notices the silence.
    pub fn close(&self, peer: &PeerId) {
        if let Ok(connection) = self.connection(peer) {
            connection.close(VARINT_NORMAL, b"closed");
        } else if let Some(id) = self.parked_id(peer) {
            self.remove(*peer, id, "closed".into());
        }
    }
}

/// Application close code for a normal hang-up.
pub(crate) const VARINT_NORMAL: quinn::VarInt = quinn::VarInt::from_u32(0);
/// Application close code for a peer that promised heartbeats and went silent.
const VARINT_SILENT: quinn::VarInt = quinn::VarInt::from_u32(1);
