//! The control protocol: [`ControlBehaviour`], a libp2p behaviour on request-response with
//! [`ControlCodec`] (one length-prefixed message per request, an empty acknowledgement as the
//! response). It acknowledges every request it receives and reports typed [`ControlEvent`]s:
//! a message arrived, or a tracked request was acknowledged or lost.
//!
//! Control traffic (charter sync, presence, E2EE handshakes and key grants) must arrive whole
//! and in order; the member sends the next ordered message to a peer only after the previous
//! one was acknowledged, which gives that over request-response. What the bytes mean is the
//! member's business (`callsign_mesh::control`, docs/protocol.md, "Control messages").

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::request_response::{self, Message, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::{FromSwarm, NetworkBehaviour, THandler, THandlerInEvent, ToSwarm};
use libp2p::{PeerId, StreamProtocol};
use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::task::{Context, Poll};
use std::time::Duration;

/// The control protocol's name.
pub const CONTROL_PROTOCOL: StreamProtocol = StreamProtocol::new("/callsign/control/1.0.0");
/// Largest control message (a charter bundle fits well within it).
pub const MAX_CONTROL_MESSAGE: usize = 2 * 1024 * 1024;

/// See the module documentation.
#[derive(Clone, Copy, Debug, Default)]
pub struct ControlCodec;

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_CONTROL_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("control message of {len} bytes exceeds {MAX_CONTROL_MESSAGE}"),
        ));
    }
    let mut body = vec![0u8; len];
    io.read_exact(&mut body).await?;
    Ok(body)
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, body: &[u8]) -> io::Result<()> {
    if body.len() > MAX_CONTROL_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("control message of {} bytes is too large", body.len()),
        ));
    }
    io.write_all(&(body.len() as u32).to_be_bytes()).await?;
    io.write_all(body).await?;
    // The request-response handler closes the stream itself.
    io.flush().await
}

#[async_trait::async_trait]
impl libp2p::request_response::Codec for ControlCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &request).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &response).await
    }
}

type Inner = request_response::Behaviour<ControlCodec>;

/// What the control protocol reports.
#[derive(Debug)]
pub enum ControlEvent {
    /// A control message from `peer` (already acknowledged).
    Message { peer: PeerId, bytes: Vec<u8> },
    /// The peer acknowledged the tracked request `token`.
    Acked { peer: PeerId, token: u64 },
    /// The tracked request `token` was lost (timeout, closed connection, refused stream).
    Failed {
        peer: PeerId,
        token: u64,
        error: String,
    },
}

/// See the module documentation.
pub struct ControlBehaviour {
    inner: Inner,
    /// Tracked requests in flight, with the sender's token.
    tracked: BTreeMap<OutboundRequestId, (PeerId, u64)>,
    events: VecDeque<ControlEvent>,
    /// Losses to a closed connection, held until the run of them ends and then reported in
    /// request order: request-response reports them from a `HashSet`, whose order changes
    /// from process to process, and a simulated run must replay.
    closed: BTreeMap<OutboundRequestId, ControlEvent>,
}

impl ControlBehaviour {
    /// A control behaviour whose requests time out after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self {
            inner: Inner::with_codec(
                ControlCodec,
                [(CONTROL_PROTOCOL, ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(timeout),
            ),
            tracked: BTreeMap::new(),
            events: VecDeque::new(),
            closed: BTreeMap::new(),
        }
    }

    /// Sends one message to `peer`; with a `token`, its acknowledgement or loss is reported
    /// ([`ControlEvent::Acked`], [`ControlEvent::Failed`]).
    pub fn send(&mut self, peer: &PeerId, bytes: Vec<u8>, token: Option<u64>) {
        self.send_dialing(peer, bytes, token, Vec::new());
    }

    /// [`ControlBehaviour::send`], dialing `addresses` if the peer has no connection (a parked
    /// link's peer: `Links::parked_address`).
    pub fn send_dialing(
        &mut self,
        peer: &PeerId,
        bytes: Vec<u8>,
        token: Option<u64>,
        addresses: Vec<libp2p::Multiaddr>,
    ) {
        let id = self
            .inner
            .send_request_with_addresses(peer, bytes, addresses);
        if let Some(token) = token {
            self.tracked.insert(id, (*peer, token));
        }
    }

    /// Whether a tracked request to `peer` awaits its acknowledgement.
    pub fn awaits_ack(&self, peer: &PeerId) -> bool {
        self.tracked.values().any(|(p, _)| p == peer)
    }

    fn handle(&mut self, event: request_response::Event<Vec<u8>, Vec<u8>>) {
        if let request_response::Event::OutboundFailure {
            request_id,
            error: error @ request_response::OutboundFailure::ConnectionClosed,
            ..
        } = &event
        {
            if let Some((peer, token)) = self.tracked.remove(request_id) {
                let error = error.to_string();
                self.closed
                    .insert(*request_id, ControlEvent::Failed { peer, token, error });
            }
            return;
        }
        self.flush_closed();
        match event {
            request_response::Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                // Receipt is all the response says; a requester that left needs none.
                let _ = self.inner.send_response(channel, Vec::new());
                self.events.push_back(ControlEvent::Message {
                    peer,
                    bytes: request,
                });
            }
            request_response::Event::Message {
                message: Message::Response { request_id, .. },
                ..
            } => {
                if let Some((peer, token)) = self.tracked.remove(&request_id) {
                    self.events.push_back(ControlEvent::Acked { peer, token });
                }
            }
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some((peer, token)) = self.tracked.remove(&request_id) {
                    self.events.push_back(ControlEvent::Failed {
                        peer,
                        token,
                        error: error.to_string(),
                    });
                }
            }
            request_response::Event::InboundFailure { .. }
            | request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn flush_closed(&mut self) {
        let closed = std::mem::take(&mut self.closed);
        self.events.extend(closed.into_values());
    }
}

impl NetworkBehaviour for ControlBehaviour {
    type ConnectionHandler = THandler<Inner>;
    type ToSwarm = ControlEvent;

    delegate_connection_hooks!();

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.inner.on_swarm_event(event);
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<ControlEvent, THandlerInEvent<Self>>> {
        loop {
            if let Some(event) = self.events.pop_front() {
                return Poll::Ready(ToSwarm::GenerateEvent(event));
            }
            match self.inner.poll(cx) {
                Poll::Ready(ToSwarm::GenerateEvent(event)) => self.handle(event),
                Poll::Ready(action) => {
                    self.flush_closed();
                    return Poll::Ready(
                        action.map_out(|_| unreachable!("the arm above takes every event")),
                    );
                }
                Poll::Pending if self.closed.is_empty() => return Poll::Pending,
                Poll::Pending => self.flush_closed(),
            }
        }
    }
}
