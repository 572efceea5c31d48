//! A real UDP socket as quinn's socket, registered with tokio for reading only.
//!
//! quinn's own tokio socket registers for reading and writing, edge-triggered. The kernel then
//! reports the socket writable each time it frees a datagram the socket sent (over loopback at
//! once), so a relay that sends a hundred copies of a packet queues that readiness a hundred
//! times and wakes once more per packet to learn nothing. Nobody waits for writability here
//! unless a send met a full socket buffer, which is rare for UDP: only then does a waiting
//! poller register a duplicate of the descriptor for writing, until the socket drains.

use quinn::udp::{RecvMeta, Transmit, UdpSocketState};
use quinn::{AsyncUdpSocket, UdpPoller};
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct ReadableUdpSocket {
    /// A duplicate of the socket's descriptor, registered for reading.
    io: AsyncFd<std::net::UdpSocket>,
    sender: Arc<UdpSender>,
}

impl ReadableUdpSocket {
    /// Takes `socket` over (inside a tokio runtime).
    pub(crate) fn new(socket: std::net::UdpSocket) -> io::Result<Arc<Self>> {
        let reader = socket.try_clone()?;
        let sender = UdpSender::new(socket)?;
        // SAFETY: a std `UdpSocket` owns its descriptor and never changes or closes it
        // while alive.
        let io = unsafe { AsyncFd::register_with_interest(reader, Interest::READABLE)? };
        Ok(Arc::new(Self { io, sender }))
    }
}

impl AsyncUdpSocket for ReadableUdpSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.sender.clone().poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.sender.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.io.poll_read_ready(cx))?;
            let room = bufs.len().min(meta.len()).min(quinn::udp::BATCH_SIZE);
            // A would-block clears the readiness and we wait for the next edge.
            if let Ok(result) =
                guard.try_io(|io| self.sender.state.recv(io.get_ref().into(), bufs, meta))
            {
                // Fewer datagrams than there was room for: the queue was empty, and whatever
                // arrives after will signal anew, so the next poll need not ask the kernel to
                // learn that (one system call per wake-up fewer).
                if matches!(result, Ok(count) if count < room) {
                    guard.clear_ready();
                }
                return Poll::Ready(result);
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sender.local_addr()
    }

    fn may_fragment(&self) -> bool {
        self.sender.may_fragment()
    }

    fn max_transmit_segments(&self) -> usize {
        self.sender.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.sender.state.gro_segments()
    }
}

/// The sending half of a real socket: sends never wait for writability, and a poller waits
/// for it only after a send met a full buffer.
#[derive(Debug)]
pub(crate) struct UdpSender {
    socket: std::net::UdpSocket,
    state: UdpSocketState,
    /// A send met a full socket buffer and no poller has seen it drain since.
    blocked: AtomicBool,
}

impl UdpSender {
    /// Takes `socket` over, non-blocking; nothing is registered with tokio until a send meets
    /// a full buffer.
    pub(crate) fn new(socket: std::net::UdpSocket) -> io::Result<Arc<Self>> {
        socket.set_nonblocking(true)?;
        let state = UdpSocketState::new((&socket).into())?;
        Ok(Arc::new(Self {
            socket,
            state,
            blocked: AtomicBool::new(false),
        }))
    }

    /// quinn's poller for this sender (inside a tokio runtime).
    pub(crate) fn poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(WritablePoller {
            socket: self,
            waiting: None,
        })
    }

    pub(crate) fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let sent = self.state.send((&self.socket).into(), transmit);
        if let Err(e) = &sent {
            if e.kind() == io::ErrorKind::WouldBlock {
                self.blocked.store(true, Ordering::Release);
            }
        }
        sent
    }

    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    pub(crate) fn may_fragment(&self) -> bool {
        self.state.may_fragment()
    }

    pub(crate) fn max_transmit_segments(&self) -> usize {
        self.state.max_gso_segments()
    }
}

/// Writable unless a send met a full buffer; then waits on a duplicate descriptor registered
/// for writing, dropped (and deregistered) as soon as the socket drains.
struct WritablePoller {
    socket: Arc<UdpSender>,
    waiting: Option<AsyncFd<OwnedFd>>,
}

impl UdpPoller for WritablePoller {
    fn poll_writable(mut self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        if !self.socket.blocked.load(Ordering::Acquire) {
            self.waiting = None;
            return Poll::Ready(Ok(()));
        }
        let waiting = match self.waiting.take() {
            Some(waiting) => waiting,
            // Registering reports the socket's state now, so a buffer that drained between
            // the failed send and here is seen at once.
            None => {
                let duplicate = self.socket.socket.as_fd().try_clone_to_owned()?;
                // SAFETY: as in `ReadableUdpSocket::new`, for an `OwnedFd`.
                unsafe { AsyncFd::register_with_interest(duplicate, Interest::WRITABLE)? }
            }
        };
        let polled = waiting.poll_write_ready(cx).map(|ready| ready.map(drop));
        match polled {
            Poll::Pending => {
                self.waiting = Some(waiting);
                Poll::Pending
            }
            Poll::Ready(ready) => {
                if ready.is_ok() {
                    self.socket.blocked.store(false, Ordering::Release);
                }
                Poll::Ready(ready)
            }
        }
    }
}

impl std::fmt::Debug for WritablePoller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WritablePoller")
            .field("waiting", &self.waiting.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::time::Duration;

    fn pair() -> (Arc<ReadableUdpSocket>, std::net::UdpSocket, SocketAddr) {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let address = socket.local_addr().expect("address");
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        (
            ReadableUdpSocket::new(socket).expect("register"),
            sender,
            address,
        )
    }

    /// Receives what is queued now, as quinn's endpoint does.
    async fn receive(socket: &ReadableUdpSocket) -> Vec<Vec<u8>> {
        let mut storage = vec![[0u8; 64]; quinn::udp::BATCH_SIZE];
        let mut bufs: Vec<IoSliceMut> = storage.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        let mut meta = vec![RecvMeta::default(); bufs.len()];
        let count = poll_fn(|cx| socket.poll_recv(cx, &mut bufs, &mut meta))
            .await
            .expect("receive");
        (0..count)
            .map(|i| bufs[i][..meta[i].len].to_vec())
            .collect()
    }

    #[tokio::test]
    async fn datagrams_after_a_read_that_emptied_the_queue_wake_the_reader_again() {
        let (socket, sender, address) = pair();
        sender.send_to(b"one", address).expect("send");
        assert_eq!(receive(&socket).await, vec![b"one".to_vec()]);
        // That read took fewer than it had room for and cleared the readiness without asking
        // the kernel again; what comes next must still be seen.
        for word in [&b"two"[..], b"three", b"four"] {
            sender.send_to(word, address).expect("send");
        }
        let mut heard = Vec::new();
        while heard.len() < 3 {
            let got = tokio::time::timeout(Duration::from_secs(5), receive(&socket))
                .await
                .expect("the later datagrams wake the reader");
            heard.extend(got);
        }
        assert_eq!(
            heard,
            vec![b"two".to_vec(), b"three".to_vec(), b"four".to_vec()]
        );
    }

    #[tokio::test]
    async fn a_poller_after_a_full_buffer_waits_for_writability_then_lets_sends_through() {
        let (socket, _, _) = pair();
        let mut poller = socket.clone().create_io_poller();
        let writable = |poller: &mut Pin<Box<dyn UdpPoller>>| {
            let waker = futures::task::noop_waker();
            poller
                .as_mut()
                .poll_writable(&mut Context::from_waker(&waker))
        };
        assert!(matches!(writable(&mut poller), Poll::Ready(Ok(()))));
        // As after a send that met a full buffer: the poller registers for writing and, the
        // socket being writable (registering reports its state), lets the next send try.
        socket.sender.blocked.store(true, Ordering::Release);
        let ready = tokio::time::timeout(
            Duration::from_secs(5),
            poll_fn(|cx| poller.as_mut().poll_writable(cx)),
        )
        .await
        .expect("a writable socket is reported writable");
        assert!(ready.is_ok());
        assert!(!socket.sender.blocked.load(Ordering::Acquire));
        assert!(matches!(writable(&mut poller), Poll::Ready(Ok(()))));
    }
}
