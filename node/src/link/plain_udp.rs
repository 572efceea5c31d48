//! A UDP socket for quinn with nothing but `send_to` and `recv_from`: the fallback where the
//! network stack refuses the socket options quinn's own socket sets up (ECN, packet info,
//! don't-fragment). Wine 8 is one (it refuses `IP_RECVECN`, and `IPV6_V6ONLY` asked of an
//! IPv4 socket); so may old or filtered stacks. Links then work without ECN marks (quinn's
//! congestion control falls back to loss) and without segmentation offload.

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Runtime, TokioRuntime, UdpPoller};
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// quinn's own socket for `socket` where the stack takes its options, else a [`PlainUdpSocket`]
/// (inside a tokio runtime).
pub(crate) fn quinn_or_plain(socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
    match TokioRuntime.wrap_udp_socket(socket.try_clone()?) {
        Ok(inner) => Ok(inner),
        Err(e) => {
            tracing::warn!(
                %e,
                "this network stack refuses quinn's socket options: plain UDP, without ECN"
            );
            Ok(PlainUdpSocket::new(socket)?)
        }
    }
}

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct PlainUdpSocket {
    io: Arc<tokio::net::UdpSocket>,
}

impl PlainUdpSocket {
    /// Takes `socket` over (inside a tokio runtime).
    pub(crate) fn new(socket: std::net::UdpSocket) -> io::Result<Arc<Self>> {
        socket.set_nonblocking(true)?;
        let io = Arc::new(tokio::net::UdpSocket::from_std(socket)?);
        Ok(Arc::new(Self { io }))
    }
}

#[derive(Debug)]
struct Writable(Arc<tokio::net::UdpSocket>);

impl UdpPoller for Writable {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        self.0.poll_send_ready(cx)
    }
}

impl AsyncUdpSocket for PlainUdpSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(Writable(self.io.clone()))
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        // One datagram per transmit: `max_transmit_segments` is 1, so quinn never batches.
        self.io
            .try_send_to(transmit.contents, transmit.destination)
            .map(|_| ())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let (Some(buf), Some(slot)) = (bufs.first_mut(), meta.first_mut()) else {
            return Poll::Ready(Ok(0));
        };
        loop {
            std::task::ready!(self.io.poll_recv_ready(cx))?;
            match self.io.try_recv_from(buf) {
                Ok((len, addr)) => {
                    *slot = RecvMeta {
                        addr,
                        len,
                        stride: len,
                        ecn: None,
                        dst_ip: None,
                    };
                    return Poll::Ready(Ok(1));
                }
                // Readiness was stale: wait for the next.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                // Windows reports an ICMP port-unreachable for an earlier send as a failed
                // receive; it says nothing about this socket (and a stranger can forge it).
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }
}
