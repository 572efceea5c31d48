//! `QuicTransport`: a libp2p `Transport` on quinn with QUIC datagrams enabled.
//!
//! One transport owns one UDP socket and one quinn endpoint: listening and every dial share the
//! port, so a node behind NAT has one mapping for everything (and hole punching works). The
//! socket is real (tokio) or simulated (turmoil); nothing here reads the wall clock — quinn's
//! tokio runtime and our timeouts use tokio time, which turmoil drives.

use super::config::{remote_peer_id, LinkConfig};
use super::links::Links;
use super::muxer::QuicMuxer;
use super::socket::{canonical, LinkSocket, SharedSocket, SocketStats};
use super::{multiaddr_to_socket, socket_to_multiaddr, LinkError};
use futures::future::BoxFuture;
use futures::FutureExt;
use libp2p::core::transport::{DialOpts, ListenerId, TransportError, TransportEvent};
use libp2p::core::{Endpoint, Transport};
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::sync::oneshot;

/// What a dial or an accepted connection yields.
pub type QuicOutput = (PeerId, QuicMuxer);

/// How long a hole-punch dial keeps probing before giving up.
const HOLE_PUNCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The RNG for one hole punch's probes (their bytes and the pauses between them). With a seed
/// (simulation) it is derived from the seed, the remote and the punch's number, so a run
/// replays: entropy here made the probes' timing, and so which NAT opened when, differ from
/// run to run.
fn probe_rng(seed: Option<[u8; 32]>, remote: SocketAddr, punch: u64) -> rand::rngs::StdRng {
    let Some(mut seed) = seed else {
        return rand::rngs::StdRng::from_entropy();
    };
    let remote = remote.to_string();
    for (i, byte) in remote.bytes().chain(punch.to_le_bytes()).enumerate() {
        seed[i % 32] ^= byte.rotate_left(i as u32 / 32);
    }
    rand::rngs::StdRng::from_seed(seed)
}

type Waiters = Arc<Mutex<BTreeMap<SocketAddr, oneshot::Sender<quinn::Connecting>>>>;

struct Listener {
    id: ListenerId,
    addrs: Vec<Multiaddr>,
    announced: bool,
    accept: Option<BoxFuture<'static, Option<quinn::Incoming>>>,
}

/// Our dials still in their handshake, by the peer they expect. A dial that a NAT held up
/// (its Initials dropped until the peer's own dial opened the NAT to us) used to complete
/// seconds after the peer's connection to us came up, and replaced that live link: both ends
/// restarted their session, and the floor views it carried flapped (chaos seed 353). Once the
/// peer's connection is up, the dial is abandoned instead, unless its handshake is done in
/// that same moment: then the peer may hold it already (it finishes its side when our last
/// handshake packet arrives) and keep it by the Swarm's rule for crossing dials, closing its
/// own; abandoned too, both were gone (IPv6 dials that two stateful firewalls let through
/// together). Our own dial that gets through abandons our other dials to the peer the same
/// way, done or not: held up by a NAT and let through together once it opened, they replaced
/// each other one after another, restarting the session with every one (chaos seed 947: a
/// symmetric-NAT member's links churned for 80 ms and the floor views flapped; seed 102 when
/// finished ones were kept).
#[derive(Clone, Default)]
struct PendingDials(Arc<Mutex<BTreeMap<PeerId, Vec<oneshot::Sender<Superseded>>>>>);

/// What made a pending dial moot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Superseded {
    /// The peer's own connection to us came up.
    ByPeer,
    /// Another of our dials to the peer got through.
    ByOurs,
}

impl PendingDials {
    fn register(&self, peer: PeerId) -> oneshot::Receiver<Superseded> {
        let (tx, rx) = oneshot::channel();
        let mut dials = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let waiting = dials.entry(peer).or_default();
        waiting.retain(|tx| !tx.is_closed());
        waiting.push(tx);
        rx
    }

    fn superseded(&self, peer: &PeerId, by: Superseded) {
        let waiting = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(peer);
        for tx in waiting.into_iter().flatten() {
            let _ = tx.send(by);
        }
    }
}

/// The addresses we are dialing now. A second dial to an address with one in flight is
/// refused: both would reach the same listener from our one socket, the first to get through
/// abandons the other even when that one's handshake is done (`PendingDials`), and the peer,
/// holding both, cannot tell which we kept (two members lost their only IPv6 path that way,
/// when a hole punch's dial and a plain dial to the announced address went out together).
#[derive(Clone, Default)]
struct DialsInFlight(Arc<Mutex<BTreeSet<SocketAddr>>>);

/// Takes an address out of [`DialsInFlight`] when its dial ends, however it ends.
struct InFlight {
    dials: DialsInFlight,
    remote: SocketAddr,
}

impl DialsInFlight {
    fn start(&self, remote: SocketAddr) -> Option<InFlight> {
        let fresh = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(remote);
        fresh.then(|| InFlight {
            dials: self.clone(),
            remote,
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.dials
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.remote);
    }
}

/// See the module documentation.
pub struct QuicTransport {
    keypair: Keypair,
    config: LinkConfig,
    socket: Arc<LinkSocket>,
    endpoint: quinn::Endpoint,
    links: Links,
    listener: Option<Listener>,
    closed: VecDeque<ListenerId>,
    hole_punch: Waiters,
    dials: PendingDials,
    in_flight: DialsInFlight,
    /// Hole punches started, which with [`LinkConfig::rng_seed`] seeds each one's probes.
    punches: u64,
    waker: Option<Waker>,
    /// One TLS client config for every dial, as libp2p-quic does: making one generates a
    /// certificate (a P-256 key and two signatures), which was a large share of a big mesh's
    /// start. The dialed peer's identity is checked once the handshake is done.
    client: quinn::ClientConfig,
    /// `client` for dials to the org's rented relays ([`Links::set_rented_relay`]).
    client_to_relay: quinn::ClientConfig,
}

impl QuicTransport {
    /// Creates the endpoint on `socket`. Must run inside a tokio runtime (quinn spawns its
    /// endpoint driver).
    pub fn new(
        keypair: Keypair,
        config: LinkConfig,
        socket: Arc<LinkSocket>,
        links: Links,
    ) -> Result<Self, LinkError> {
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            config.endpoint(),
            None,
            Arc::new(SharedSocket(socket.clone())),
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(LinkError::Io)?;
        links.attach(&socket, &config);
        let client = config.client(&keypair)?;
        let client_to_relay = config.client_to_relay(&client)?;
        Ok(Self {
            client,
            client_to_relay,
            keypair,
            config,
            socket,
            endpoint,
            links,
            listener: None,
            closed: VecDeque::new(),
            hole_punch: Arc::default(),
            dials: PendingDials::default(),
            in_flight: DialsInFlight::default(),
            punches: 0,
            waker: None,
        })
    }

    /// Moves the endpoint to a new socket (the machine changed networks). Live connections
    /// migrate: peers see the new address and report `LinkEvent::Migrated`.
    pub fn rebind(&mut self, socket: Arc<LinkSocket>) -> Result<(), LinkError> {
        self.endpoint
            .rebind_abstract(Arc::new(SharedSocket(socket.clone())))
            .map_err(LinkError::Io)?;
        self.links.attach(&socket, &self.config);
        self.socket = socket;
        Ok(())
    }

    pub fn links(&self) -> &Links {
        &self.links
    }

    pub fn socket_stats(&self) -> Arc<SocketStats> {
        self.socket.stats()
    }

    pub fn local_addr(&self) -> Result<SocketAddr, LinkError> {
        self.endpoint.local_addr().map_err(LinkError::Io)
    }

    /// Addresses to announce for a socket bound to `local`: an unspecified IP is replaced by
    /// loopback and the address of the default route (real sockets only: a simulated host's
    /// address is known to the simulation, not to the machine's routing table).
    fn announce(&self, local: SocketAddr) -> Vec<Multiaddr> {
        if !local.ip().is_unspecified() || self.socket.is_simulated() {
            return vec![socket_to_multiaddr(local)];
        }
        let mut ips = vec![if local.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        }];
        if let Some(ip) = default_route_ip(local.is_ipv4()) {
            ips.push(ip);
        }
        if self.socket.is_dual_stack() {
            // One socket for both: the IPv4 side too, loopback and toward the internet.
            ips.insert(0, std::net::Ipv4Addr::LOCALHOST.into());
            if let Some(ip) = default_route_ip(true) {
                ips.push(ip);
            }
        }
        ips.into_iter()
            .map(|ip| socket_to_multiaddr(SocketAddr::new(ip, local.port())))
            .collect()
    }

    /// A connection the peer dialed, up to where the Swarm takes it.
    fn upgrade(
        connecting: quinn::Connecting,
        links: Links,
        dials: PendingDials,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<QuicOutput, LinkError>> {
        async move {
            let connection = tokio::time::timeout(timeout, connecting)
                .await
                .map_err(|_| LinkError::Handshake("handshake timed out".into()))?
                .map_err(LinkError::Connection)?;
            let peer = remote_peer_id(&connection)?;
            dials.superseded(&peer, Superseded::ByPeer);
            links.register(peer, connection.clone());
            Ok((peer, QuicMuxer::new(connection)))
        }
        .boxed()
    }

    fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

/// The local IP the OS would use to reach the internet. A connected UDP socket learns it
/// without sending anything.
fn default_route_ip(v4: bool) -> Option<std::net::IpAddr> {
    let (bind, target): (SocketAddr, SocketAddr) = if v4 {
        ("0.0.0.0:0".parse().ok()?, "192.0.2.1:9".parse().ok()?)
    } else {
        ("[::]:0".parse().ok()?, "[2001:db8::1]:9".parse().ok()?)
    };
    let socket = std::net::UdpSocket::bind(bind).ok()?;
    socket.connect(target).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

impl Transport for QuicTransport {
    type Output = QuicOutput;
    type Error = LinkError;
    type ListenerUpgrade = BoxFuture<'static, Result<QuicOutput, LinkError>>;
    type Dial = BoxFuture<'static, Result<QuicOutput, LinkError>>;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<LinkError>> {
        let (wanted, _) = multiaddr_to_socket(&addr)
            .ok_or(TransportError::MultiaddrNotSupported(addr.clone()))?;
        let local = self.local_addr().map_err(TransportError::Other)?;
        let port_matches = wanted.port() == 0 || wanted.port() == local.port();
        let ip_matches = wanted.ip().is_unspecified() || wanted.ip() == local.ip();
        // One socket for both families takes a listen on either unspecified address.
        let family_matches = wanted.is_ipv4() == local.is_ipv4()
            || (self.socket.is_dual_stack() && wanted.ip().is_unspecified());
        if !port_matches || !ip_matches || !family_matches {
            // One socket per node: listening elsewhere would need a second NAT mapping.
            return Err(TransportError::MultiaddrNotSupported(addr));
        }
        if self.listener.is_some() {
            return Err(TransportError::Other(LinkError::Config(
                "the QUIC transport already listens on its socket".into(),
            )));
        }
        let server = self
            .config
            .server(&self.keypair)
            .map_err(TransportError::Other)?;
        self.endpoint.set_server_config(Some(server));
        self.listener = Some(Listener {
            id,
            addrs: self.announce(local),
            announced: false,
            accept: None,
        });
        self.wake();
        Ok(())
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        match &self.listener {
            Some(l) if l.id == id => {
                self.endpoint.set_server_config(None);
                self.listener = None;
                self.closed.push_back(id);
                self.wake();
                true
            }
            _ => false,
        }
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<LinkError>> {
        let (remote, expected) = multiaddr_to_socket(&addr)
            .ok_or(TransportError::MultiaddrNotSupported(addr.clone()))?;
        if remote.port() == 0 || remote.ip().is_unspecified() {
            return Err(TransportError::MultiaddrNotSupported(addr));
        }
        let links = self.links.clone();
        let dials = self.dials.clone();
        let timeout = self.config.handshake_timeout;

        if opts.role == Endpoint::Listener {
            // Hole punch (`Output::Punch`, awaiting): the remote dials us; we open our NAT by sending probes to it
            // from our listening port, and hand over its connection when it arrives.
            let (tx, rx) = oneshot::channel();
            self.hole_punch
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(remote, tx);
            let socket = self.socket.clone();
            let waiters = self.hole_punch.clone();
            let mut rng = probe_rng(self.config.rng_seed, remote, self.punches);
            self.punches += 1;
            return Ok(async move {
                let probing = async {
                    loop {
                        let mut probe = [0u8; 64];
                        rng.fill(&mut probe[..]);
                        if let Err(e) = socket.send_raw(remote, &probe).await {
                            tracing::debug!(%remote, %e, "hole-punch probe not sent");
                        }
                        let pause = rng.gen_range(10..200);
                        tokio::time::sleep(Duration::from_millis(pause)).await;
                    }
                };
                let outcome = tokio::time::timeout(HOLE_PUNCH_TIMEOUT, async {
                    tokio::select! {
                        // Fixed order: tokio's default picks at random, which a seed cannot
                        // replay.
                        biased;
                        incoming = rx => incoming.ok(),
                        _ = probing => None,
                    }
                })
                .await;
                waiters
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&remote);
                let connecting = outcome.ok().flatten().ok_or_else(|| {
                    LinkError::Handshake(format!("hole punch to {remote} timed out"))
                })?;
                let (peer, muxer) = Self::upgrade(connecting, links, dials, timeout).await?;
                if expected.is_some_and(|e| e != peer) {
                    return Err(LinkError::PeerMismatch {
                        expected: Box::new(expected.unwrap_or(peer)),
                        actual: Box::new(peer),
                    });
                }
                Ok((peer, muxer))
            }
            .boxed());
        }

        let in_flight = self.in_flight.start(remote).ok_or_else(|| {
            TransportError::Other(LinkError::Handshake(format!(
                "a dial to {remote} is in flight already"
            )))
        })?;
        let client = match expected {
            Some(peer) if self.links.is_rented_relay(&peer) => &self.client_to_relay,
            _ => &self.client,
        };
        let connecting = self
            .endpoint
            .connect_with(client.clone(), remote, "l")
            .map_err(|e| TransportError::Other(LinkError::Connect(e)))?;
        let superseded = expected.map(|peer| self.dials.register(peer));
        let dials = self.dials.clone();
        Ok(async move {
            let _in_flight = in_flight;
            let handshake = tokio::time::timeout(timeout, connecting);
            tokio::pin!(handshake);
            let connection = match superseded {
                Some(superseded) => tokio::select! {
                    biased;
                    Ok(by) = superseded => {
                        // Done in the same moment as the peer's: keep it (`PendingDials`).
                        match (&mut handshake).now_or_never() {
                            Some(done) if by == Superseded::ByPeer => done,
                            _ => {
                                return Err(LinkError::Handshake(format!(
                                    "dial to {remote} abandoned: linked to the peer meanwhile"
                                )))
                            }
                        }
                    }
                    connection = &mut handshake => connection,
                },
                None => (&mut handshake).await,
            };
            let connection = connection
                .map_err(|_| LinkError::Handshake(format!("handshake with {remote} timed out")))?
                .map_err(LinkError::Connection)?;
            let peer = remote_peer_id(&connection)?;
            if let Some(expected) = expected.filter(|e| *e != peer) {
                connection.close(super::links::VARINT_NORMAL, b"wrong peer");
                return Err(LinkError::PeerMismatch {
                    expected: Box::new(expected),
                    actual: Box::new(peer),
                });
            }
            // Our other dials to the peer still in their handshake are moot now: each would
            // replace this link when it got through.
            dials.superseded(&peer, Superseded::ByOurs);
            links.register(peer, connection.clone());
            Ok((peer, QuicMuxer::new(connection)))
        }
        .boxed())
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        let this = &mut *self;
        if let Some(listener_id) = this.closed.pop_front() {
            return Poll::Ready(TransportEvent::ListenerClosed {
                listener_id,
                reason: Ok(()),
            });
        }
        if let Some(listener) = &mut this.listener {
            if !listener.announced {
                if let Some(addr) = listener.addrs.pop() {
                    return Poll::Ready(TransportEvent::NewAddress {
                        listener_id: listener.id,
                        listen_addr: addr,
                    });
                }
                listener.announced = true;
            }
            loop {
                let endpoint = this.endpoint.clone();
                let accept = listener
                    .accept
                    .get_or_insert_with(|| async move { endpoint.accept().await }.boxed());
                let Poll::Ready(incoming) = accept.poll_unpin(cx) else {
                    break;
                };
                listener.accept = None;
                let Some(incoming) = incoming else {
                    let listener_id = listener.id;
                    this.listener = None;
                    return Poll::Ready(TransportEvent::ListenerClosed {
                        listener_id,
                        reason: Ok(()),
                    });
                };
                let remote = canonical(incoming.remote_address());
                // Full: refused before any TLS work; the peer dials again (a member dials its
                // relays every 2 s) and finds room once idle links are parked.
                let open = this.endpoint.open_connections();
                if this.config.max_connections.is_some_and(|max| open >= max) {
                    tracing::debug!(%remote, open, "connection refused: at the limit");
                    incoming.refuse();
                    this.links.refused_connection();
                    continue;
                }
                // Authenticated before anyone hears of it: a stray Initial (a peer's
                // retransmission to a connection we already dropped, under that connection's
                // id) fails here, so neither a waiting hole punch nor the Swarm takes it for a
                // connection. Whether quinn drops such a packet at once or hands it over
                // depends on TLS randomness, so a simulated run replays only if it ends here.
                let connecting = match incoming.accept() {
                    Ok(connecting) => connecting,
                    Err(e) => {
                        tracing::debug!(%remote, %e, "not a connection attempt");
                        continue;
                    }
                };
                let waiter = this
                    .hole_punch
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&remote);
                let connecting = match waiter {
                    Some(tx) => match tx.send(connecting) {
                        Ok(()) => continue,
                        Err(connecting) => connecting,
                    },
                    None => connecting,
                };
                return Poll::Ready(TransportEvent::Incoming {
                    listener_id: listener.id,
                    upgrade: Self::upgrade(
                        connecting,
                        this.links.clone(),
                        this.dials.clone(),
                        this.config.handshake_timeout,
                    ),
                    local_addr: this.socket_local_multiaddr(),
                    send_back_addr: socket_to_multiaddr(remote),
                });
            }
        }
        this.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl QuicTransport {
    fn socket_local_multiaddr(&self) -> Multiaddr {
        self.local_addr()
            .map(socket_to_multiaddr)
            .unwrap_or_else(|_| Multiaddr::empty())
    }
}
