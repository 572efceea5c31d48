//! Sending on links: framing, voice and lossy control on the voice plane where the peer has it
//! (else in QUIC), a relay's copies, and datagram pings.

use super::route::{plane_sent, route, send_quic, CopySender, Route};
use super::{Links, ALWAYS_FITS, DATAGRAM_VERSION, HEADER, KIND_APP, KIND_CONTROL, KIND_PING};
use crate::link::forwarding::{ForwardLatency, PlaneForwarder};
use crate::link::socket::LinkSocket;
use crate::link::LinkError;
use bytes::{BufMut, Bytes, BytesMut};
use callsign_mesh::forward::{ForwardView, SharedForwarder};
use libp2p::PeerId;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// A datagram sealed for a peer's plane (with its destination and the socket it leaves by), or
/// the connection to send it in QUIC instead.
enum Sealed {
    Plane((Vec<u8>, SocketAddr, Arc<LinkSocket>)),
    Quic(quinn::Connection),
}

impl Links {
    /// A link datagram: header then body.
    pub(in crate::link) fn frame(kind: u8, body: &[u8]) -> Bytes {
        let mut datagram = BytesMut::with_capacity(HEADER + body.len());
        datagram.put_u8(DATAGRAM_VERSION);
        datagram.put_u8(kind);
        datagram.put_slice(body);
        datagram.freeze()
    }

    /// A link-layer datagram (ping, pong, announcement): always in QUIC.
    pub(super) fn send_kind(&self, peer: &PeerId, kind: u8, body: &[u8]) -> Result<(), LinkError> {
        self.send_quic(self.connection(peer)?, Self::frame(kind, body))
    }

    /// An application datagram framed once, for [`Links::send_framed`] to several peers (a
    /// relay's copies of one packet share this one buffer).
    pub fn frame_datagram(payload: &[u8]) -> Bytes {
        Self::frame(KIND_APP, payload)
    }

    /// Sends a datagram framed by [`Links::frame_datagram`] to `peer`.
    pub fn send_framed(&self, peer: &PeerId, frame: Bytes) -> Result<(), LinkError> {
        match self.seal_for_plane(peer, &frame, true)? {
            Sealed::Quic(connection) => self.send_quic(connection, frame),
            Sealed::Plane(sealed) => {
                self.send_sealed(sealed);
                Ok(())
            }
        }
    }

    /// Sends lossy control (an encoded control message the next one replaces: the member's
    /// `Output::Announce`) to `peer` on the voice plane. `Ok(false)`: it cannot go there (the
    /// plane is not up yet, or the message is larger than any path takes), and the caller
    /// sends it as control instead. Once handed to the kernel it may be lost, like voice.
    pub fn send_lossy_control(&self, peer: &PeerId, message: &[u8]) -> Result<bool, LinkError> {
        if message.len() + HEADER > ALWAYS_FITS {
            return Ok(false);
        }
        let frame = Self::frame(KIND_CONTROL, message);
        match self.seal_for_plane(peer, &frame, false)? {
            Sealed::Quic(_) => Ok(false),
            Sealed::Plane(sealed) => {
                self.send_sealed(sealed);
                Ok(true)
            }
        }
    }

    /// `frame` sealed on `peer`'s plane (the link marked as sent now, and as carrying voice if
    /// `voice`), under the registry's lock; or, where the peer has no plane yet, its
    /// connection for QUIC.
    fn seal_for_plane(
        &self,
        peer: &PeerId,
        frame: &[u8],
        voice: bool,
    ) -> Result<Sealed, LinkError> {
        let state = self.state();
        Ok(match route(&state, &self.counters, peer, frame)? {
            Route::Quic(connection) => Sealed::Quic(connection),
            Route::Plane(plane, to, socket) => {
                let mut sealed = Vec::with_capacity(frame.len() + crate::link::plane::OVERHEAD);
                plane.seal_into(frame, &mut sealed);
                let now_ms = Self::clock_ms(self.epoch);
                if voice {
                    plane.sent_voice_at(now_ms);
                } else {
                    plane.sent_at(now_ms);
                }
                Sealed::Plane((sealed, to, socket.clone()))
            }
        })
    }

    /// Sends what [`Links::seal_for_plane`] sealed, after the registry's lock.
    fn send_sealed(&self, (sealed, to, socket): (Vec<u8>, SocketAddr, Arc<LinkSocket>)) {
        let n = socket.send_many([(to, sealed.as_slice())]);
        plane_sent(&self.counters, self.plane.stats(), n);
    }

    /// Sends one framed datagram (from [`Links::frame_datagram`]) to each of `peers`: what a
    /// relay does with a packet. Copies on the plane are sealed per peer and handed to the
    /// kernel together; the rest go in QUIC. Returns how many were sent; a peer without a link
    /// is skipped.
    pub fn send_framed_to_many(&self, peers: &Arc<[PeerId]>, frame: &Bytes) -> usize {
        self.copies().send(peers, frame, self.plane.stats())
    }

    /// What sends a relay's copies, without keeping the registry alive.
    pub(super) fn copies(&self) -> CopySender {
        CopySender {
            epoch: self.epoch,
            state: Arc::downgrade(&self.state),
            counters: self.counters.clone(),
            batch: std::sync::Mutex::default(),
        }
    }

    /// Forwards enveloped voice that arrives on the plane where it is opened, through
    /// `forwarder` (shared with the member), with the views installed by
    /// [`Links::set_forward_view`]: a rented relay's fast path (`link::forwarding`).
    pub fn forward_on_plane(&self, forwarder: SharedForwarder, latency: Arc<ForwardLatency>) {
        self.plane
            .forward_with(PlaneForwarder::new(forwarder, self.copies(), latency));
    }

    /// The charter the plane's forwarding checks voice against from now on.
    pub fn set_forward_view(&self, view: Arc<ForwardView>) {
        self.plane.set_forward_view(view);
    }

    pub(super) fn send_quic(
        &self,
        connection: quinn::Connection,
        frame: Bytes,
    ) -> Result<(), LinkError> {
        send_quic(&self.counters, connection, frame)
    }

    /// Sends one unreliable datagram to `peer`.
    pub fn send_datagram(&self, peer: &PeerId, payload: &[u8]) -> Result<(), LinkError> {
        self.send_framed(peer, Self::frame(KIND_APP, payload))
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
}
