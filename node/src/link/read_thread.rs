//! A real UDP socket read on a thread of its own, for relays (Linux).
//!
//! A relay forwards each voice packet the moment it arrives. Read through tokio, every packet
//! first wakes the runtime: its I/O driver, the scheduler, the endpoint's task, the timer
//! wheel, all cold again 20 ms later. Here a thread waits on the socket alone (`poll`), reads
//! what came with one `recvmmsg`, and hands it to [`LinkSocket::take_what_is_not_quic`] right
//! there: voice-plane datagrams are opened and forwarded on this thread, probes and refused
//! handshakes are taken out as before, and only datagrams that hold QUIC are queued for
//! quinn, whose endpoint task is woken for them alone.
//!
//! The thread also keeps a relay's heartbeat clock (`heartbeat::ThreadLooks`): it waits for
//! the next look as it waits for datagrams, so the looks never wake the runtime either.
//!
//! The thread runs at real-time priority while it is not busy, if the process may
//! ([`super::priority`]).
//!
//! Sends are as on `link::udp`'s socket ([`UdpSender`]): quinn's path and the plane's batches
//! go straight to the kernel. The thread ends when the socket is dropped (an eventfd wakes it)
//! or when its [`LinkSocket`] is gone.

use super::priority::{ReadPriority, ThreadPriority};
use super::socket::{is_garbage, LinkSocket};
use super::udp::UdpSender;
use futures::task::AtomicWaker;
use quinn::udp::{RecvMeta, Transmit, UdpSocketState, BATCH_SIZE};
use quinn::{AsyncUdpSocket, UdpPoller};
use std::collections::VecDeque;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

/// Datagrams holding QUIC that wait for quinn at most; more are dropped (and counted), as a
/// full socket buffer would drop them.
const QUEUE_LIMIT: usize = 1024;

/// The largest datagram read whole: quinn's own receive buffers hold no more (its default
/// `max_udp_payload_size`, Ethernet's MTU less IP and UDP headers), nor does the plane send more.
const DATAGRAM_ROOM: usize = 1472;

/// Datagrams holding QUIC, read by the thread, waiting for quinn.
#[derive(Default)]
struct QuicQueue {
    datagrams: Mutex<VecDeque<(Vec<u8>, RecvMeta)>>,
    /// quinn's endpoint task, when it found the queue empty.
    waker: AtomicWaker,
}

/// See the module documentation.
pub(crate) struct ThreadReadUdpSocket {
    /// The socket's send path; never registered with tokio for reading.
    sender: Arc<UdpSender>,
    queue: Arc<QuicQueue>,
    /// Written when this socket is dropped, so the thread stops.
    stop: OwnedFd,
}

impl std::fmt::Debug for ThreadReadUdpSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadReadUdpSocket")
            .field("local_addr", &self.sender.local_addr().ok())
            .finish()
    }
}

impl ThreadReadUdpSocket {
    /// Takes `socket` over (inside a tokio runtime, for the send path's writability waits).
    /// Nothing reads it until [`ReadThread::spawn`].
    pub(crate) fn new(
        socket: std::net::UdpSocket,
        priority: ReadPriority,
    ) -> io::Result<(Arc<Self>, ReadThread)> {
        let reader = socket.try_clone()?;
        let sender = UdpSender::new(socket)?;
        // SAFETY: eventfd takes no pointers; a non-negative result is a descriptor we own.
        let stop = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if stop < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `stop` was just created and nothing else owns it.
        let stop = unsafe { OwnedFd::from_raw_fd(stop) };
        let queue = Arc::new(QuicQueue::default());
        let thread = ReadThread {
            state: UdpSocketState::new((&reader).into())?,
            socket: reader,
            stop: stop.try_clone()?,
            queue: queue.clone(),
            priority,
        };
        let socket = Arc::new(Self {
            sender,
            queue,
            stop,
        });
        Ok((socket, thread))
    }
}

impl Drop for ThreadReadUdpSocket {
    fn drop(&mut self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to a descriptor we own. Nothing to do if
        // it fails: the thread then stops when it finds its `LinkSocket` gone.
        unsafe { libc::write(self.stop.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }
}

impl AsyncUdpSocket for ThreadReadUdpSocket {
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
        let mut queue = self
            .queue
            .datagrams
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if queue.is_empty() {
            // Registered while the queue is locked: the thread's next push comes after and
            // wakes this waker.
            self.queue.waker.register(cx.waker());
            return Poll::Pending;
        }
        let mut count = 0;
        for (buf, m) in bufs.iter_mut().zip(meta.iter_mut()) {
            let Some((datagram, received)) = queue.pop_front() else {
                break;
            };
            // As the kernel would into a smaller buffer: the rest is cut off.
            let len = datagram.len().min(buf.len());
            buf[..len].copy_from_slice(&datagram[..len]);
            *m = RecvMeta { len, ..received };
            count += 1;
        }
        Poll::Ready(Ok(count))
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
        // The thread reads without coalescing (see `ReadThread::run`): one datagram a buffer.
        1
    }
}

/// The reading half of a [`ThreadReadUdpSocket`], before its thread starts.
pub(crate) struct ReadThread {
    socket: std::net::UdpSocket,
    state: UdpSocketState,
    stop: OwnedFd,
    queue: Arc<QuicQueue>,
    priority: ReadPriority,
}

impl ReadThread {
    /// Starts reading for `link`, the [`LinkSocket`] the socket is part of.
    pub(crate) fn spawn(self, link: Weak<LinkSocket>) -> io::Result<()> {
        std::thread::Builder::new()
            .name("callsign-udp-read".into())
            .spawn(move || self.run(link))
            .map(drop)
    }

    fn run(self, link: Weak<LinkSocket>) {
        // One datagram a buffer: a coalesced batch would not fit quinn's buffers, which are
        // sized for what `max_receive_segments` says.
        disable_gro(&self.socket);
        let (mut priority, now) = ThreadPriority::start(self.priority);
        match link.upgrade() {
            Some(link) => link.set_read_priority(now),
            None => return,
        }
        let mut storage = vec![0u8; DATAGRAM_ROOM * BATCH_SIZE];
        let mut bufs: Vec<IoSliceMut> = storage
            .chunks_mut(DATAGRAM_ROOM)
            .map(IoSliceMut::new)
            .collect();
        let mut meta = [RecvMeta::default(); BATCH_SIZE];
        // Until the next heartbeat look (`LinkSocket::take_heartbeat_looks`), if any.
        let mut look_in = None;
        loop {
            if !self.wait(earliest(priority.wait_limit(), look_in)) {
                return;
            }
            let Some(link) = link.upgrade() else {
                return;
            };
            // Read until the kernel's queue is empty: the next wait reports only what is new.
            loop {
                let count = match self.state.recv((&self.socket).into(), &mut bufs, &mut meta) {
                    Ok(count) => count,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        // ICMP errors surface here on some kernels; the next read goes on.
                        tracing::debug!(%e, "socket read");
                        break;
                    }
                };
                if link.take_what_is_not_quic(&mut bufs, &meta, count) {
                    self.queue_quic(&link, &bufs, &meta[..count]);
                }
                if count < bufs.len() {
                    break;
                }
            }
            if let Some(now) = priority.after_wake() {
                link.set_read_priority(now);
            }
            look_in = link.heartbeat_look();
        }
    }

    /// Waits until the socket is readable or `limit` has passed (`None`: no limit); false once
    /// told to stop.
    fn wait(&self, limit: Option<std::time::Duration>) -> bool {
        // Rounded up: a wait that ends early would find the look not yet due and wait again
        // for nothing, over and over within the last millisecond.
        let timeout = limit.map_or(-1, |l| {
            l.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32
        });
        let mut fds = [
            libc::pollfd {
                fd: self.socket.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.stop.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        loop {
            // SAFETY: `fds` is a live array of two pollfds for the duration of the call.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if ready < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return false;
            }
            // A descriptor that is not open (never expected: the thread owns it) would
            // report itself ready forever.
            return fds[1].revents == 0 && fds[0].revents & libc::POLLNVAL == 0;
        }
    }

    /// Copies the buffers that hold a QUIC packet into quinn's queue and wakes quinn.
    fn queue_quic(&self, link: &LinkSocket, bufs: &[IoSliceMut], meta: &[RecvMeta]) {
        let mut queued = false;
        {
            let mut queue = self
                .queue
                .datagrams
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for (buf, m) in bufs.iter().zip(meta) {
                let datagram = &buf[..m.len.min(buf.len())];
                if is_garbage(datagram) {
                    continue;
                }
                if queue.len() >= QUEUE_LIMIT {
                    link.count_quic_queue_full();
                    continue;
                }
                queue.push_back((datagram.to_vec(), *m));
                queued = true;
            }
        }
        if queued {
            self.queue.waker.wake();
        }
    }
}

/// The sooner of two waits (`None`: no limit).
fn earliest(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Turns UDP generic receive offload off on `socket` (quinn's socket setup turns it on).
fn disable_gro(socket: &std::net::UdpSocket) {
    let off: libc::c_int = 0;
    // SAFETY: setsockopt with a pointer to a live c_int and its size.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_GRO,
            (&off as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

#[cfg(test)]
mod tests {
    use super::super::priority::ReadPriorityNow;
    use super::super::socket::SharedSocket;
    use super::*;
    use std::future::poll_fn;

    /// A datagram quinn would parse: the fixed bit set, and long enough.
    fn quic_looking(tag: u8) -> Vec<u8> {
        let mut datagram = vec![tag; 40];
        datagram[0] = 0x40 | (tag & 0x3f);
        datagram
    }

    /// A socket on loopback read on its thread at `priority`.
    fn bind(priority: ReadPriority) -> Arc<LinkSocket> {
        let address = "127.0.0.1:0".parse().unwrap();
        LinkSocket::bind_tokio_read_apart(address, None, priority).expect("bind")
    }

    async fn receive(socket: &SharedSocket) -> Vec<Vec<u8>> {
        let mut storage = vec![[0u8; 1500]; BATCH_SIZE];
        let mut bufs: Vec<IoSliceMut> = storage.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        let mut meta = vec![RecvMeta::default(); bufs.len()];
        let count = tokio::time::timeout(
            Duration::from_secs(5),
            poll_fn(|cx| socket.poll_recv(cx, &mut bufs, &mut meta)),
        )
        .await
        .expect("the thread hands quinn what holds QUIC")
        .expect("receive");
        (0..count)
            .map(|i| bufs[i][..meta[i].len].to_vec())
            .collect()
    }

    #[tokio::test]
    async fn quic_reaches_quinn_and_what_is_not_quic_is_taken_out_on_the_thread() {
        let link = bind(ReadPriority::Normal);
        let address = link.local_addr().expect("address");
        let shared = SharedSocket(link.clone());
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        peer.send_to(&[0u8; 30], address).expect("send garbage");
        peer.send_to(&quic_looking(1), address).expect("send");
        peer.send_to(&quic_looking(2), address).expect("send");
        let mut heard = Vec::new();
        while heard.len() < 2 {
            heard.extend(receive(&shared).await);
        }
        assert_eq!(heard, vec![quic_looking(1), quic_looking(2)]);
        let counts = link.stats().snapshot();
        assert_eq!(counts.received, 3);
        assert_eq!(counts.garbage, 1);
        assert_eq!(counts.quic_queue_full, 0);
    }

    #[tokio::test]
    async fn the_thread_says_what_priority_it_reads_at() {
        let link = bind(ReadPriority::Realtime);
        let expected = match super::super::priority::tests::realtime_permitted() {
            true => ReadPriorityNow::Realtime,
            false => ReadPriorityNow::NotPermitted,
        };
        // The thread sets it as it starts.
        for _ in 0..250 {
            if link.stats().snapshot().read_priority != ReadPriorityNow::Normal {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(link.stats().snapshot().read_priority, expected);
    }

    #[tokio::test]
    async fn the_thread_ends_and_lets_the_port_go_when_the_socket_is_dropped() {
        let link = bind(ReadPriority::Normal);
        let address = link.local_addr().expect("address");
        drop(link);
        // The thread holds a duplicate of the descriptor until it ends.
        let mut rebound = None;
        for _ in 0..100 {
            match std::net::UdpSocket::bind(address) {
                Ok(socket) => {
                    rebound = Some(socket);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        assert!(
            rebound.is_some(),
            "the port is still held after the socket was dropped"
        );
    }
}
