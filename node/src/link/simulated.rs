//! Simulated sockets: a turmoil UDP socket as quinn's socket, and the [`PathModel`] the
//! simulator's network (latency, jitter, loss, reordering, duplication, bandwidth, NAT
//! filtering, partitions) applies to it per datagram in virtual time. [`LinkSocket`] wraps
//! these as it wraps real ones.
//!
//! [`LinkSocket`]: super::socket::LinkSocket

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// The simulated network between sockets. Every datagram a simulated socket sends asks
/// [`PathModel::transmit`] where it goes and when its copies arrive; every datagram it receives
/// asks [`PathModel::admit`]. Implementations must be deterministic for a seed: the simulator
/// replays runs.
///
/// A model may translate addresses, as NATs do: a datagram then reaches a host other than the
/// address it was sent to names (the host behind the router that owns that address), and the
/// receiver sees it come from the sender's router rather than the sender. The simulated socket
/// carries both translated addresses with the datagram ([`Transit`]).
pub trait PathModel: Send + Sync + 'static {
    /// What becomes of `datagram` sent from `from` (the host's own address) to `to`; `None`
    /// drops it.
    fn transmit(&self, from: SocketAddr, to: SocketAddr, datagram: &[u8]) -> Option<Transit>;
    /// Whether a datagram that comes from `seen_from` and was sent to `addressed_to` may reach
    /// the socket at `local` (NAT filtering, on arrival).
    fn admit(&self, local: SocketAddr, seen_from: SocketAddr, addressed_to: SocketAddr) -> bool;
}

/// Where a simulated datagram goes: see [`PathModel::transmit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transit {
    /// The host and port it reaches (behind any NAT).
    pub deliver_to: SocketAddr,
    /// The source its receiver sees (the sender's NAT mapping, or the sender).
    pub seen_from: SocketAddr,
    /// Delays after which copies arrive: empty drops it, two entries duplicate it.
    pub delays: Vec<std::time::Duration>,
}

/// The envelope a simulated datagram travels in between two modelled sockets: the source its
/// receiver sees and the address it was sent to, each as 16 address bytes (IPv4 mapped) and a
/// port. Only simulated sockets ever read or write it.
const ENVELOPE: usize = 2 * 18;

fn put_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        std::net::IpAddr::V6(v6) => v6,
    };
    out.extend_from_slice(&ip.octets());
    out.extend_from_slice(&addr.port().to_be_bytes());
}

fn get_addr(bytes: &[u8]) -> SocketAddr {
    let mut ip = [0u8; 16];
    ip.copy_from_slice(&bytes[..16]);
    let ip = std::net::Ipv6Addr::from(ip);
    let ip = ip
        .to_ipv4_mapped()
        .map_or(std::net::IpAddr::V6(ip), std::net::IpAddr::V4);
    SocketAddr::new(ip, u16::from_be_bytes([bytes[16], bytes[17]]))
}

fn envelope(seen_from: SocketAddr, addressed_to: SocketAddr, datagram: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ENVELOPE + datagram.len());
    put_addr(&mut out, seen_from);
    put_addr(&mut out, addressed_to);
    out.extend_from_slice(datagram);
    out
}

type ReadableFuture = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

/// A turmoil UDP socket as quinn's socket. turmoil sockets are readiness-based (`readable`,
/// `try_recv_from`), so the pending readiness future is kept between polls.
pub(super) struct TurmoilSocket {
    socket: Arc<turmoil::net::UdpSocket>,
    readable: Mutex<Option<ReadableFuture>>,
    model: Option<Arc<dyn PathModel>>,
    /// This host's address as peers see it.
    local: SocketAddr,
}

impl fmt::Debug for TurmoilSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurmoilSocket").finish_non_exhaustive()
    }
}

/// Simulated sockets never block on send (turmoil queues or drops), so writability is immediate.
#[derive(Debug)]
struct AlwaysWritable;

impl UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncUdpSocket for TurmoilSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let segment = transmit
            .segment_size
            .unwrap_or(transmit.contents.len())
            .max(1);
        for chunk in transmit.contents.chunks(segment) {
            let Some(model) = &self.model else {
                self.socket.try_send_to(chunk, transmit.destination)?;
                continue;
            };
            let Some(transit) = model.transmit(self.local, transmit.destination, chunk) else {
                continue;
            };
            let bytes = envelope(transit.seen_from, transmit.destination, chunk);
            for delay in transit.delays {
                let to = transit.deliver_to;
                if delay.is_zero() {
                    // A full simulated queue drops the datagram, as a network would.
                    let _ = self.socket.try_send_to(&bytes, to);
                    continue;
                }
                let (socket, bytes) = (self.socket.clone(), bytes.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = socket.try_send_to(&bytes, to);
                });
            }
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let (Some(buf), Some(m)) = (bufs.first_mut(), meta.first_mut()) else {
            return Poll::Ready(Ok(0));
        };
        let mut pending = self.readable.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match self.socket.try_recv_from(buf) {
                Ok((len, addr)) => {
                    let (len, addr) = match &self.model {
                        None => (len, addr),
                        Some(model) => {
                            // Sent by a modelled socket: unwrap the envelope. Anything shorter
                            // is not from the modelled network.
                            if len < ENVELOPE {
                                continue;
                            }
                            let seen_from = get_addr(&buf[..18]);
                            let addressed_to = get_addr(&buf[18..ENVELOPE]);
                            if !model.admit(self.local, seen_from, addressed_to) {
                                // Filtered (a NAT without a mapping for this sender).
                                continue;
                            }
                            buf.copy_within(ENVELOPE..len, 0);
                            (len - ENVELOPE, seen_from)
                        }
                    };
                    *pending = None;
                    *m = RecvMeta {
                        addr,
                        len,
                        stride: len,
                        ..RecvMeta::default()
                    };
                    return Poll::Ready(Ok(1));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            let future = pending.get_or_insert_with(|| {
                let socket = self.socket.clone();
                Box::pin(async move { socket.readable().await })
            });
            match future.as_mut().poll(cx) {
                Poll::Ready(Ok(())) => *pending = None,
                Poll::Ready(Err(e)) => {
                    *pending = None;
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        // turmoil binds 0.0.0.0; the host's own IP is what others dial, and what presence
        // and relay reservations must carry.
        Ok(self.local)
    }

    fn may_fragment(&self) -> bool {
        false
    }
}

impl TurmoilSocket {
    /// Binds on the current turmoil host; `local` is this host's address as peers see it.
    pub(super) async fn bind(
        addr: SocketAddr,
        model: Option<Arc<dyn PathModel>>,
        local_ip: Option<std::net::IpAddr>,
    ) -> io::Result<Arc<Self>> {
        let socket = turmoil::net::UdpSocket::bind(addr).await?;
        let local = match local_ip {
            Some(ip) => SocketAddr::new(ip, socket.local_addr()?.port()),
            None => socket.local_addr()?,
        };
        Ok(Arc::new(Self {
            socket: Arc::new(socket),
            readable: Mutex::new(None),
            model,
            local,
        }))
    }
}
