//! The UDP socket under the QUIC endpoint, behind quinn's `AsyncUdpSocket` so the same endpoint
//! code runs on real sockets (tokio) and on simulated ones (`turmoil`, virtual time).
//!
//! [`LinkSocket`] wraps either kind and adds what the node needs from the raw socket: counters
//! of datagrams that cannot be QUIC (counted here; quinn then drops them), and raw sends for
//! hole-punch probes from the listening port. A simulated socket (`link::simulated`) can carry
//! a [`PathModel`]: the simulator's network, applied per datagram in virtual time. The real
//! socket is `link::udp`'s on Unix.
//!
//! Reachability probes (`callsign_mesh::reachability`) are not QUIC: one arriving here is taken
//! out for the node ([`LinkSocket::take_probes`]; quinn drops it as garbage), and
//! [`LinkSocket::send_probe`] sends one from a fresh port, as a stranger to the target's NAT.
//!
//! Voice-plane datagrams (`link::plane`) are not QUIC either: one arriving here is opened by the
//! plane's receivers before quinn sees it (quinn then drops it), and
//! [`LinkSocket::send_many`] sends a batch of them from the endpoint's port.

#[cfg(target_os = "linux")]
use super::heartbeat::ThreadLooks;
use super::plane::{is_plane, PlaneReceivers};
use super::priority::{ReadPriority, ReadPriorityNow};
use super::simulated::TurmoilSocket;
pub use super::simulated::{PathModel, Transit};
use callsign_mesh::rate::{Rate, TokenBucket};
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// Nonces of reachability probes that arrived, for the node to match.
pub type ProbeNonces = mpsc::UnboundedReceiver<[u8; callsign_mesh::reachability::NONCE_LEN]>;

/// Smallest datagram that can hold a QUIC packet: a short header with a one-byte connection id
/// plus the header-protection sample (RFC 9001 §5.4.2 needs 4 + 16 bytes after the header).
const MIN_QUIC_DATAGRAM: usize = 21;

/// Counters for what arrives at the socket.
#[derive(Debug, Default)]
pub struct SocketStats {
    pub received: AtomicU64,
    pub sent: AtomicU64,
    /// Datagrams that cannot be QUIC (too short, or the fixed bit clear). quinn discards them;
    /// they are counted here so an operator can see someone spraying the port.
    pub garbage: AtomicU64,
    pub probes_sent: AtomicU64,
    /// QUIC Initial packets from a source address over its handshake rate
    /// ([`LinkSocket::limit_handshakes`]): quinn never saw them.
    pub handshakes_limited: AtomicU64,
    /// Datagrams holding QUIC that a socket read on its own thread
    /// ([`LinkSocket::bind_tokio_read_apart`]) dropped because quinn had fallen behind.
    pub quic_queue_full: AtomicU64,
    /// What the read thread runs at (a [`ReadPriorityNow`] as `u8`), if there is one.
    pub read_priority: std::sync::atomic::AtomicU8,
    /// Where the kernel counts what it dropped for a real socket before it was read.
    kernel: std::sync::OnceLock<super::kernel_drops::KernelDrops>,
}

impl SocketStats {
    pub fn snapshot(&self) -> SocketCounts {
        SocketCounts {
            received: self.received.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            garbage: self.garbage.load(Ordering::Relaxed),
            probes_sent: self.probes_sent.load(Ordering::Relaxed),
            handshakes_limited: self.handshakes_limited.load(Ordering::Relaxed),
            quic_queue_full: self.quic_queue_full.load(Ordering::Relaxed),
            read_priority: ReadPriorityNow::from_u8(self.read_priority.load(Ordering::Relaxed)),
            kernel_drops: self.kernel.get().and_then(|k| k.read()).unwrap_or(0),
        }
    }
}

/// A point-in-time copy of [`SocketStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SocketCounts {
    pub received: u64,
    pub sent: u64,
    pub garbage: u64,
    pub probes_sent: u64,
    pub handshakes_limited: u64,
    pub quic_queue_full: u64,
    pub read_priority: ReadPriorityNow,
    /// Datagrams the kernel dropped before the socket was read: its receive buffer was full
    /// (Linux; 0 elsewhere and for simulated sockets). Read off `/proc` at each snapshot.
    pub kernel_drops: u64,
}

pub(super) fn is_garbage(datagram: &[u8]) -> bool {
    // RFC 9000 §17: every QUIC v1 packet has the fixed bit (0x40) set.
    datagram.len() < MIN_QUIC_DATAGRAM || datagram[0] & 0x40 == 0
}

/// A QUIC v1 Initial packet: long header, fixed bit, type 0 (RFC 9000 §17.2.2). Clients open
/// handshakes with these; nothing else a peer sends an established link is one.
fn is_initial(datagram: &[u8]) -> bool {
    datagram.len() >= MIN_QUIC_DATAGRAM && datagram[0] & 0xf0 == 0xc0
}

/// Per source address, a bucket of QUIC Initial packets. The table is bounded: full buckets
/// (sources quiet long enough) are forgotten first, at most once a second so a flood of new
/// sources does not scan the table per packet, and past [`HandshakeLimiter::MAX_SOURCES`] of
/// busy ones every further source shares one bucket, so spoofed addresses cannot grow it.
struct HandshakeLimiter {
    rate: Rate,
    sources: Mutex<HandshakeSources>,
}

#[derive(Default)]
struct HandshakeSources {
    buckets: BTreeMap<IpAddr, TokenBucket>,
    /// Shared by sources that find the table full.
    overflow: Option<TokenBucket>,
    pruned: Option<std::time::Instant>,
}

impl HandshakeLimiter {
    const MAX_SOURCES: usize = 4096;

    fn new(rate: Rate) -> Self {
        Self {
            rate,
            sources: Mutex::default(),
        }
    }

    fn admit(&self, source: IpAddr) -> bool {
        let now = tokio::time::Instant::now().into_std();
        let rate = self.rate;
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        let s = &mut *sources;
        if let Some(bucket) = s.buckets.get_mut(&source) {
            return bucket.take(rate, now);
        }
        let prune_due = s.pruned.is_none_or(|at| {
            now.saturating_duration_since(at) >= std::time::Duration::from_secs(1)
        });
        if s.buckets.len() >= Self::MAX_SOURCES && prune_due {
            s.pruned = Some(now);
            s.buckets.retain(|_, bucket| !bucket.is_full(rate, now));
        }
        if s.buckets.len() < Self::MAX_SOURCES {
            let mut bucket = TokenBucket::new(rate, now);
            let admitted = bucket.take(rate, now);
            s.buckets.insert(source, bucket);
            return admitted;
        }
        s.overflow
            .get_or_insert_with(|| TokenBucket::new(rate, now))
            .take(rate, now)
    }
}

/// The endpoint's socket: real or simulated, with counters.
pub struct LinkSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    stats: Arc<SocketStats>,
    simulated: bool,
    probes: mpsc::UnboundedSender<[u8; callsign_mesh::reachability::NONCE_LEN]>,
    probe_nonces: Mutex<Option<ProbeNonces>>,
    /// For a simulated socket: the path model and this host's IP, which probes from fresh
    /// ports go through too.
    model: Option<(Arc<dyn PathModel>, std::net::IpAddr)>,
    /// DSCP marking of every datagram sent (real sockets; see `link::dscp`).
    marker: Option<super::dscp::TosMarker>,
    /// A duplicate of a real socket's descriptor, for batches of plane datagrams.
    raw: Option<super::batch::BatchSocket>,
    /// Read on a thread of its own, which takes out what is not QUIC before quinn polls
    /// ([`Self::bind_tokio_read_apart`]).
    read_apart: bool,
    /// Opens the voice-plane datagrams that arrive (`Links::attach`).
    plane: std::sync::OnceLock<Arc<PlaneReceivers>>,
    /// The heartbeat looks the read thread takes (`Links::attach`), where there is one.
    #[cfg(target_os = "linux")]
    looks: std::sync::OnceLock<ThreadLooks>,
    /// Holds each source address to a rate of QUIC Initial packets.
    handshakes: std::sync::OnceLock<HandshakeLimiter>,
}

impl fmt::Debug for LinkSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkSocket")
            .field("local_addr", &self.inner.local_addr().ok())
            .finish()
    }
}

impl LinkSocket {
    /// Binds a real UDP socket (inside a tokio runtime). `0.0.0.0` binds both families: one
    /// IPv6 socket that takes IPv4 too (`[::]`, not v6-only), so a node is reachable over IPv6,
    /// where there is no NAT, on the same port and endpoint; where the host has no IPv6 it is
    /// the IPv4 socket asked for. Addresses this socket hands up are canonical ([`canonical`]):
    /// an IPv4 peer is `a.b.c.d`, not `::ffff:a.b.c.d`.
    ///
    /// Datagrams leave marked Expedited Forwarding ([`super::dscp`]); see
    /// [`Self::bind_tokio_marked`] for another mark or none.
    pub fn bind_tokio(addr: SocketAddr) -> io::Result<Arc<Self>> {
        Self::bind_tokio_marked(addr, Some(super::dscp::DSCP_EF))
    }

    /// [`Self::bind_tokio`] with the DSCP to mark datagrams with (`None`: unmarked).
    pub fn bind_tokio_marked(addr: SocketAddr, dscp: Option<u8>) -> io::Result<Arc<Self>> {
        let (socket, marker, raw) = open_real(addr, dscp)?;
        #[cfg(unix)]
        let inner: Arc<dyn AsyncUdpSocket> = super::udp::ReadableUdpSocket::new(socket)?;
        #[cfg(not(unix))]
        let inner = super::plain_udp::quinn_or_plain(socket)?;
        Ok(Arc::new(Self::real(inner, marker, raw)))
    }

    /// [`Self::bind_tokio_marked`], read on a thread of its own (`link::read_thread`, Linux;
    /// elsewhere the same as `bind_tokio_marked`) at `priority`: for a relay, whose voice is
    /// then forwarded without waking the runtime.
    pub fn bind_tokio_read_apart(
        addr: SocketAddr,
        dscp: Option<u8>,
        priority: ReadPriority,
    ) -> io::Result<Arc<Self>> {
        #[cfg(target_os = "linux")]
        {
            let (socket, marker, raw) = open_real(addr, dscp)?;
            let (inner, thread) = super::read_thread::ThreadReadUdpSocket::new(socket, priority)?;
            let socket = Arc::new(Self {
                read_apart: true,
                ..Self::real(inner, marker, raw)
            });
            thread.spawn(Arc::downgrade(&socket))?;
            Ok(socket)
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = priority;
            Self::bind_tokio_marked(addr, dscp)
        }
    }

    /// The DSCP datagrams leave marked with, if any.
    pub fn dscp(&self) -> Option<u8> {
        self.marker.as_ref().map(|m| m.dscp())
    }

    /// Whether this is one socket for both families (see [`Self::bind_tokio`]).
    pub fn is_dual_stack(&self) -> bool {
        self.local_addr()
            .is_ok_and(|a| matches!(a, SocketAddr::V6(v6) if v6.ip().is_unspecified()))
            && !self.simulated
    }

    fn new(
        inner: Arc<dyn AsyncUdpSocket>,
        simulated: bool,
        model: Option<(Arc<dyn PathModel>, std::net::IpAddr)>,
    ) -> Self {
        let (probes, nonces) = mpsc::unbounded_channel();
        Self {
            inner,
            stats: Arc::default(),
            simulated,
            probes,
            probe_nonces: Mutex::new(Some(nonces)),
            model,
            marker: None,
            raw: None,
            read_apart: false,
            plane: std::sync::OnceLock::new(),
            #[cfg(target_os = "linux")]
            looks: std::sync::OnceLock::new(),
            handshakes: std::sync::OnceLock::new(),
        }
    }

    /// A real socket's `LinkSocket` around `inner`, marking with `marker` and sending plane
    /// batches on `raw`.
    fn real(
        inner: Arc<dyn AsyncUdpSocket>,
        marker: Option<super::dscp::TosMarker>,
        raw: super::batch::BatchSocket,
    ) -> Self {
        let socket = Self::new(inner, false, None);
        if let Some(kernel) = super::kernel_drops::KernelDrops::of(raw.socket()) {
            let _ = socket.stats.kernel.set(kernel);
        }
        Self {
            marker,
            raw: Some(raw),
            ..socket
        }
    }

    /// Binds a simulated socket on the current turmoil host.
    pub async fn bind_turmoil(addr: SocketAddr) -> io::Result<Arc<Self>> {
        Self::bind_turmoil_with(addr, None).await
    }

    /// Binds a simulated socket whose traffic goes through `model`. turmoil binds only the
    /// unspecified address, so the model is told the host's own IP (`turmoil::lookup(name)`),
    /// by which it keys paths.
    pub async fn bind_turmoil_with(
        addr: SocketAddr,
        model: Option<(Arc<dyn PathModel>, std::net::IpAddr)>,
    ) -> io::Result<Arc<Self>> {
        let inner = TurmoilSocket::bind(
            addr,
            model.as_ref().map(|(m, _)| m.clone()),
            model.as_ref().map(|(_, ip)| *ip),
        )
        .await?;
        Ok(Arc::new(Self::new(inner, true, model)))
    }

    /// True for a turmoil socket (its addresses exist only inside the simulation).
    pub fn is_simulated(&self) -> bool {
        self.simulated
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    pub fn stats(&self) -> Arc<SocketStats> {
        self.stats.clone()
    }

    /// The nonces of reachability probes that reach this socket. The first caller gets them.
    pub fn take_probes(&self) -> Option<ProbeNonces> {
        self.probe_nonces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Sends `datagram` to `destination` a few times (loss) from a fresh, unconnected port of
    /// the same kind (real, or simulated through the same path model), so that it reaches the
    /// destination only if its NAT lets in strangers. Returns at once; the sends run on a task.
    pub fn send_probe(&self, destination: SocketAddr, datagram: Vec<u8>) {
        const COPIES: u32 = 3;
        const SPACING: std::time::Duration = std::time::Duration::from_millis(150);
        let unspecified: SocketAddr = if destination.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let (simulated, model) = (self.simulated, self.model.clone());
        tokio::spawn(async move {
            let fresh = if simulated {
                Self::bind_turmoil_with(unspecified, model).await
            } else {
                Self::bind_tokio(unspecified)
            };
            let socket = match fresh {
                Ok(socket) => socket,
                Err(e) => {
                    tracing::debug!(%e, "probe socket");
                    return;
                }
            };
            for _ in 0..COPIES {
                if let Err(e) = socket.send_raw(destination, &datagram).await {
                    tracing::debug!(%destination, %e, "probe send");
                }
                tokio::time::sleep(SPACING).await;
            }
        });
    }

    /// Hands voice-plane datagrams that arrive to `receivers`. A socket serves one registry;
    /// a second call is ignored.
    pub(crate) fn attach_plane(&self, receivers: Arc<PlaneReceivers>) {
        let _ = self.plane.set(receivers);
    }

    /// Has this socket's read thread take the heartbeat's `looks`; false where it has no read
    /// thread, and the caller looks in a task. A socket serves one registry: once set, the
    /// first registry's looks stay.
    ///
    /// The thread first looks when it first wakes: a look has links to beat only once
    /// datagrams came in on this socket, and they wake it.
    #[cfg(target_os = "linux")]
    pub(crate) fn take_heartbeat_looks(&self, looks: ThreadLooks) -> bool {
        if !self.read_apart {
            return false;
        }
        let _ = self.looks.set(looks);
        true
    }

    /// Looks if a heartbeat look is due (the read thread); how long until the next one.
    #[cfg(target_os = "linux")]
    pub(super) fn heartbeat_look(&self) -> Option<std::time::Duration> {
        self.looks.get()?.look()
    }

    /// Holds every source address to `rate` QUIC Initial packets (a handshake takes one to
    /// three), before quinn spends anything on them: a stranger spraying handshakes costs a
    /// table lookup each. Set once; later calls are ignored.
    pub fn limit_handshakes(&self, rate: Rate) {
        let _ = self.handshakes.set(HandshakeLimiter::new(rate));
    }

    /// Sends each `(destination, datagram)` from the endpoint's port without waiting: on a real
    /// socket in one system call where the platform has one (`link::batch`), on a simulated
    /// one through its path model. Returns how many left; the rest met a full socket buffer.
    pub fn send_many<'a>(&self, batch: impl IntoIterator<Item = (SocketAddr, &'a [u8])>) -> usize {
        let sent = match &self.raw {
            Some(raw) => raw
                .send_many(self.marker.as_ref(), batch)
                .unwrap_or_else(|e| {
                    tracing::debug!(%e, "plane send");
                    0
                }),
            None => batch
                .into_iter()
                .filter(|(destination, contents)| {
                    let transmit = Transmit {
                        destination: *destination,
                        ecn: None,
                        contents,
                        segment_size: None,
                        src_ip: None,
                    };
                    self.inner.try_send(&transmit).is_ok()
                })
                .count(),
        };
        self.stats.sent.fetch_add(sent as u64, Ordering::Relaxed);
        sent
    }

    /// Sends one raw datagram from the endpoint's port (hole-punch probes), waiting for the
    /// socket to become writable if needed.
    pub async fn send_raw(&self, destination: SocketAddr, contents: &[u8]) -> io::Result<()> {
        // An IPv6 socket reaches an IPv4 host at its mapped address (quinn maps its own
        // sends; these raw ones are ours).
        let destination = match destination {
            SocketAddr::V4(v4) if self.local_addr().is_ok_and(|a| a.is_ipv6()) => {
                SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port())
            }
            other => other,
        };
        let transmit = Transmit {
            destination,
            ecn: None,
            contents,
            segment_size: None,
            src_ip: None,
        };
        let mut poller = self.inner.clone().create_io_poller();
        loop {
            match self.inner.try_send(&transmit) {
                Ok(()) => {
                    self.stats.probes_sent.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx)).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Batches of received datagrams without QUIC in them that [`SharedSocket::poll_recv`] takes in a
/// row before it hands one to quinn anyway.
const NOT_QUIC_IN_A_ROW: usize = 4;

impl LinkSocket {
    /// Counts the `count` datagrams received into `bufs` and takes out what is not QUIC:
    /// voice-plane datagrams are opened, probes handed to the node, handshakes over their
    /// source's rate refused (their first byte zeroed, so quinn drops them unread) and garbage
    /// counted. Whether any QUIC is left for quinn.
    pub(super) fn take_what_is_not_quic(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        meta: &[RecvMeta],
        count: usize,
    ) -> bool {
        let mut quic = false;
        for (buf, m) in bufs.iter_mut().zip(meta.iter()).take(count) {
            let stride = m.stride.max(1);
            let len = m.len.min(buf.len());
            for segment in buf[..len].chunks_mut(stride) {
                self.stats.received.fetch_add(1, Ordering::Relaxed);
                if let Some(limiter) = self.handshakes.get() {
                    if is_initial(segment) && !limiter.admit(canonical(m.addr).ip()) {
                        // With the fixed bit clear quinn drops it unread (as it does plane
                        // datagrams) and answers nothing.
                        segment[0] = 0;
                        self.stats
                            .handshakes_limited
                            .fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                }
                if !is_garbage(segment) {
                    quic = true;
                    continue;
                }
                if let Some(plane) = self.plane.get().filter(|_| is_plane(segment)) {
                    plane.receive(segment, canonical(m.addr));
                    continue;
                }
                match callsign_mesh::reachability::parse_probe(segment) {
                    // The node may have stopped listening; then nobody asked.
                    Some(nonce) => {
                        let _ = self.probes.send(nonce);
                    }
                    None => {
                        self.stats.garbage.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        quic
    }

    /// Records what the read thread runs at (`link::read_thread`).
    #[cfg(target_os = "linux")]
    pub(super) fn set_read_priority(&self, now: ReadPriorityNow) {
        let now = now.to_u8();
        self.stats.read_priority.store(now, Ordering::Relaxed);
    }

    /// Counts a datagram holding QUIC dropped before quinn saw it (`link::read_thread`).
    #[cfg(target_os = "linux")]
    pub(super) fn count_quic_queue_full(&self) {
        self.stats.quic_queue_full.fetch_add(1, Ordering::Relaxed);
    }
}

/// `addr` with an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, how a dual-stack socket sees an
/// IPv4 peer) written as the IPv4 address it is: peers, address books and probes compare
/// and dial the plain form.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// A real socket bound as [`LinkSocket::bind_tokio`] says, its DSCP marker and a duplicate
/// for batches of plane datagrams.
fn open_real(
    addr: SocketAddr,
    dscp: Option<u8>,
) -> io::Result<(
    std::net::UdpSocket,
    Option<super::dscp::TosMarker>,
    super::batch::BatchSocket,
)> {
    let socket = match addr {
        SocketAddr::V4(v4) if v4.ip().is_unspecified() => {
            dual_stack(v4.port()).or_else(|_| std::net::UdpSocket::bind(addr))?
        }
        _ => std::net::UdpSocket::bind(addr)?,
    };
    let marker = match dscp {
        Some(dscp) => super::dscp::TosMarker::new(&socket, dscp)?,
        None => None,
    };
    let raw = super::batch::BatchSocket::new(socket.try_clone()?)?;
    Ok((socket, marker, raw))
}

/// An IPv6 UDP socket on `port` that takes IPv4 too (IPv4 peers appear as `::ffff:a.b.c.d`).
/// Asked for explicitly: Linux makes IPv6 sockets dual-stack by default, Windows does not.
pub(crate) fn dual_stack(port: u16) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_only_v6(false)?;
    socket.bind(&SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)).into())?;
    Ok(socket.into())
}

/// Newtype so the `Arc<LinkSocket>` can be handed to quinn as its socket.
#[derive(Debug)]
pub(crate) struct SharedSocket(pub Arc<LinkSocket>);

impl AsyncUdpSocket for SharedSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.0.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let marked = match &self.0.marker {
            // A full socket buffer: quinn's own path says so too, and clears the readiness
            // its poller waits on.
            Some(marker) => marker.send(transmit).or_else(|e| match e.kind() {
                io::ErrorKind::WouldBlock => Ok(false),
                _ => Err(e),
            })?,
            None => false,
        };
        if !marked {
            self.0.inner.try_send(transmit)?;
        }
        self.0.stats.sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        // A batch with no QUIC in it (voice-plane datagrams, probes, refused handshakes,
        // garbage) is not handed to quinn, which would copy each datagram out and parse it only
        // to drop it: a relay's voice arrives one datagram a batch. A few such batches in a
        // row at most, so a flood still meets quinn's own limit on work per turn.
        if self.0.read_apart {
            // The thread took out what is not QUIC already (and counted it).
            return self.0.inner.poll_recv(cx, bufs, meta);
        }
        let mut batches = 0;
        loop {
            let count = std::task::ready!(self.0.inner.poll_recv(cx, bufs, meta))?;
            batches += 1;
            if self.0.take_what_is_not_quic(bufs, meta, count) || batches == NOT_QUIC_IN_A_ROW {
                return Poll::Ready(Ok(count));
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        // A marked socket sends each datagram on its own (`link::dscp`): no GSO batches.
        match &self.0.marker {
            Some(_) => 1,
            None => self.0.inner.max_transmit_segments(),
        }
    }

    fn max_receive_segments(&self) -> usize {
        self.0.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.0.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initials_are_told_from_other_quic_packets() {
        let mut packet = vec![0u8; 1200];
        for (first, initial) in [(0xc3, true), (0xd0, false), (0xe1, false), (0x43, false)] {
            packet[0] = first;
            assert_eq!(is_initial(&packet), initial, "{first:#x}");
        }
        assert!(!is_initial(&packet[..10]));
    }

    #[test]
    fn each_source_gets_its_own_handshake_bucket_and_the_table_stays_bounded() {
        let limiter = HandshakeLimiter::new(Rate::new(1, 3));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!((0..10).filter(|_| limiter.admit(a)).count(), 3);
        assert_eq!((0..10).filter(|_| limiter.admit(b)).count(), 3);
        // Thousands of spoofed sources, each busy: the table stops at its bound, and the rest
        // share one bucket (its burst, then nothing).
        let spoofed = (0..HandshakeLimiter::MAX_SOURCES as u32 * 2)
            .filter(|i| {
                let ip = IpAddr::from(std::net::Ipv6Addr::from(
                    0x2001_0db8_u128 << 96 | *i as u128,
                ));
                limiter.admit(ip) && limiter.admit(ip) && limiter.admit(ip)
            })
            .count();
        let sources = limiter.sources.lock().unwrap().buckets.len();
        assert_eq!(sources, HandshakeLimiter::MAX_SOURCES);
        assert!(spoofed <= HandshakeLimiter::MAX_SOURCES + 1, "{spoofed}");
        // A known source keeps its own (spent) bucket.
        assert!(!limiter.admit(a));
    }
}
