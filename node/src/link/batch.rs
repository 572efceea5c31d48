//! Many datagrams to different destinations in one system call: what a relay does with every
//! packet it forwards. On Linux this is `sendmmsg(2)`, each message marked like the socket's
//! others ([`super::dscp`]); elsewhere one `send_to` per datagram (marked by qWAVE on Windows).

use super::dscp::TosMarker;
use std::io;
use std::net::{SocketAddr, UdpSocket};

/// Most messages handed to the kernel in one call (Linux's `UIO_MAXIOV`).
#[cfg(target_os = "linux")]
const MAX_BATCH: usize = 1024;

/// A socket that sends batches, and its family, looked up once rather than per batch.
#[derive(Debug)]
pub(crate) struct BatchSocket {
    socket: UdpSocket,
    ipv6: bool,
}

impl BatchSocket {
    pub(crate) fn new(socket: UdpSocket) -> io::Result<Self> {
        let ipv6 = socket.local_addr()?.is_ipv6();
        Ok(Self { socket, ipv6 })
    }

    /// The socket itself (a duplicate of the one quinn reads).
    pub(crate) fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// Sends each `(destination, datagram)` of `batch` (non-blocking), marked by `marker` if
    /// given. Returns how many the kernel took: when its buffer fills the rest are dropped, as
    /// a congested network would (voice is not retransmitted).
    pub(crate) fn send_many<'a>(
        &self,
        marker: Option<&TosMarker>,
        batch: impl IntoIterator<Item = (SocketAddr, &'a [u8])>,
    ) -> io::Result<usize> {
        send_many(&self.socket, self.ipv6, marker, batch.into_iter())
    }
}

#[cfg(target_os = "linux")]
thread_local! {
    /// The system call's arrays, kept for the next batch on this thread. Why: a relay sends a
    /// batch per packet it forwards (every 20 ms per talker), and allocating these afresh each
    /// time (kilobytes each, past malloc's small-size caches) cost it a twentieth of its CPU.
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

#[cfg(target_os = "linux")]
fn send_many<'a>(
    socket: &UdpSocket,
    ipv6_socket: bool,
    marker: Option<&TosMarker>,
    batch: impl Iterator<Item = (SocketAddr, &'a [u8])>,
) -> io::Result<usize> {
    // A socket marked by default marks these without a control message per datagram.
    let marker = marker.filter(|m| m.working() && !m.marks_by_default());
    SCRATCH.with(|scratch| {
        // Nothing below calls back in here; a fresh set all the same if something did.
        let mut fresh = Scratch::default();
        let mut borrowed = scratch.try_borrow_mut();
        let scratch = borrowed.as_deref_mut().unwrap_or(&mut fresh);
        let result = scratch.send(socket, ipv6_socket, marker, batch);
        // No pointer into this batch's buffers outlives the call.
        scratch.clear();
        result
    })
}

/// A destination as the kernel reads it: `sockaddr_in` or `sockaddr_in6`, in the space of the
/// larger (socket2's `SockAddr` takes 128 bytes, a hundred of which a relay wrote per copy).
#[cfg(target_os = "linux")]
#[derive(Clone, Copy)]
#[repr(C)]
union RawAddress {
    v4: libc::sockaddr_in,
    v6: libc::sockaddr_in6,
}

#[cfg(target_os = "linux")]
impl RawAddress {
    /// The address and its length.
    fn new(address: SocketAddr) -> (Self, libc::socklen_t) {
        match address {
            SocketAddr::V4(v4) => {
                // SAFETY: all-zero bytes are a valid sockaddr_in (plain integers).
                let mut raw: libc::sockaddr_in = unsafe { std::mem::zeroed() };
                raw.sin_family = libc::AF_INET as libc::sa_family_t;
                raw.sin_port = v4.port().to_be();
                raw.sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
                let len = std::mem::size_of::<libc::sockaddr_in>();
                (Self { v4: raw }, len as libc::socklen_t)
            }
            SocketAddr::V6(v6) => {
                // SAFETY: all-zero bytes are a valid sockaddr_in6 (plain integers).
                let mut raw: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
                raw.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                raw.sin6_port = v6.port().to_be();
                raw.sin6_flowinfo = v6.flowinfo().to_be();
                raw.sin6_addr.s6_addr = v6.ip().octets();
                raw.sin6_scope_id = v6.scope_id();
                let len = std::mem::size_of::<libc::sockaddr_in6>();
                (Self { v6: raw }, len as libc::socklen_t)
            }
        }
    }
}

/// The arrays one `sendmmsg` reads, reused from batch to batch ([`SCRATCH`]).
#[cfg(target_os = "linux")]
#[derive(Default)]
struct Scratch {
    addresses: Vec<(RawAddress, libc::socklen_t)>,
    iovecs: Vec<libc::iovec>,
    /// Each datagram's marking control message and its length, when marked per datagram.
    controls: Vec<([u8; 64], usize)>,
    headers: Vec<libc::mmsghdr>,
}

#[cfg(target_os = "linux")]
impl Scratch {
    fn clear(&mut self) {
        self.addresses.clear();
        self.iovecs.clear();
        self.controls.clear();
        self.headers.clear();
    }

    fn send<'a>(
        &mut self,
        socket: &UdpSocket,
        ipv6_socket: bool,
        marker: Option<&TosMarker>,
        mut batch: impl Iterator<Item = (SocketAddr, &'a [u8])>,
    ) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        let (mut sent, mut failed) = (0, None);
        loop {
            self.clear();
            for (destination, datagram) in batch.by_ref().take(MAX_BATCH) {
                let destination = match marker {
                    Some(marker) => {
                        let mut control = [0u8; 64];
                        let (destination, written) = marker.mark(destination, 0, &mut control);
                        let len = written.len();
                        self.controls.push((control, len));
                        destination
                    }
                    None => mapped(destination, ipv6_socket),
                };
                self.addresses.push(RawAddress::new(destination));
                self.iovecs.push(libc::iovec {
                    iov_base: datagram.as_ptr() as *mut libc::c_void,
                    iov_len: datagram.len(),
                });
            }
            let count = self.iovecs.len();
            if count == 0 {
                break;
            }
            // Only now, with every array at its final place, do the headers point into them.
            for i in 0..count {
                // SAFETY: an all-zero msghdr is a valid empty one; every pointer set below
                // points into `self`'s arrays, which do not move until the next `clear`.
                let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
                let (address, address_len) = &mut self.addresses[i];
                header.msg_name = (address as *mut RawAddress).cast();
                header.msg_namelen = *address_len;
                header.msg_iov = &mut self.iovecs[i];
                header.msg_iovlen = 1;
                if let Some((control, len)) = self.controls.get_mut(i) {
                    header.msg_control = control.as_mut_ptr().cast();
                    header.msg_controllen = *len as _;
                }
                self.headers.push(libc::mmsghdr {
                    msg_hdr: header,
                    msg_len: 0,
                });
            }
            let mut at = 0;
            while at < count {
                // SAFETY: `headers[at..]` are initialised headers whose buffers are alive
                // (above, and the datagrams the caller lent); the kernel writes only their
                // `msg_len`.
                let n = unsafe {
                    libc::sendmmsg(
                        socket.as_raw_fd(),
                        self.headers[at..].as_mut_ptr(),
                        (count - at) as libc::c_uint,
                        0,
                    )
                };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    match e.kind() {
                        io::ErrorKind::Interrupted => {}
                        io::ErrorKind::WouldBlock => return Ok(sent),
                        // The first message failed (an unreachable destination, say): skip it
                        // so it cannot stop the copies after it.
                        _ => {
                            tracing::trace!(%e, "sendmmsg skipped a datagram");
                            failed = Some(e);
                            at += 1;
                        }
                    }
                    continue;
                }
                at += n as usize;
                sent += n as usize;
            }
            if count < MAX_BATCH {
                break;
            }
        }
        match failed {
            Some(e) if sent == 0 => Err(e),
            _ => Ok(sent),
        }
    }
}

/// See the Linux version: one `send_to` per datagram here.
#[cfg(not(target_os = "linux"))]
fn send_many<'a>(
    socket: &UdpSocket,
    ipv6_socket: bool,
    marker: Option<&TosMarker>,
    batch: impl Iterator<Item = (SocketAddr, &'a [u8])>,
) -> io::Result<usize> {
    let mut sent = 0;
    for (destination, datagram) in batch {
        if let Some(marker) = marker {
            marker.reach(destination);
        }
        match socket.send_to(datagram, mapped(destination, ipv6_socket)) {
            Ok(_) => sent += 1,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(_) => {}
        }
    }
    Ok(sent)
}

/// An IPv4 destination as an IPv6 socket reaches it (`::ffff:a.b.c.d`).
fn mapped(destination: SocketAddr, ipv6_socket: bool) -> SocketAddr {
    match destination {
        SocketAddr::V4(v4) if ipv6_socket => {
            SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_call_reaches_every_destination_marked() {
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        sender.set_nonblocking(true).unwrap();
        let marker = TosMarker::new(&sender, super::super::dscp::DSCP_EF).unwrap();
        let receivers: Vec<UdpSocket> = (0..40)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let bodies: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 10 + usize::from(i)]).collect();
        let batch: Vec<(SocketAddr, &[u8])> = receivers
            .iter()
            .zip(&bodies)
            .map(|(r, b)| (r.local_addr().unwrap(), b.as_slice()))
            .collect();
        let batch_socket = BatchSocket::new(sender.try_clone().unwrap()).unwrap();
        assert_eq!(
            batch_socket
                .send_many(marker.as_ref(), batch.iter().copied())
                .unwrap(),
            40
        );
        for (r, b) in receivers.iter().zip(&bodies) {
            r.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .unwrap();
            let mut buf = [0u8; 100];
            let (n, from) = r.recv_from(&mut buf).unwrap();
            assert_eq!(
                (&buf[..n], from),
                (b.as_slice(), sender.local_addr().unwrap())
            );
        }
    }

    #[test]
    fn a_dual_stack_socket_reaches_ipv4_and_ipv6_destinations_in_turn() {
        // Machines without IPv6 loopback cannot run this.
        // Made as the node makes it: Windows opens IPv6 sockets IPv6-only unless told.
        let Ok(sender) = crate::link::socket::dual_stack(0) else {
            eprintln!("no IPv6 here: skipped");
            return;
        };
        let Ok(v6) = UdpSocket::bind("[::1]:0") else {
            eprintln!("no IPv6 loopback here: skipped");
            return;
        };
        sender.set_nonblocking(true).unwrap();
        let v4 = UdpSocket::bind("127.0.0.1:0").unwrap();
        let receivers = [&v4, &v6, &v4];
        let bodies: [&[u8]; 3] = [b"one", b"two", b"three"];
        let batch_socket = BatchSocket::new(sender.try_clone().unwrap()).unwrap();
        let batch = receivers
            .iter()
            .zip(bodies)
            .map(|(r, b)| (r.local_addr().unwrap(), b));
        // Twice: the second batch reuses the first one's arrays.
        for _ in 0..2 {
            assert_eq!(batch_socket.send_many(None, batch.clone()).unwrap(), 3);
            for (r, b) in receivers.iter().zip(bodies) {
                r.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                    .unwrap();
                let mut buf = [0u8; 16];
                let (n, from) = r.recv_from(&mut buf).unwrap();
                assert_eq!(&buf[..n], b);
                assert_eq!(from.port(), sender.local_addr().unwrap().port());
            }
        }
    }
}
