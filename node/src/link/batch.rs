//! Many datagrams to different destinations in one system call: what a relay does with every
//! packet it forwards. On Linux this is `sendmmsg(2)`, each message marked like the socket's
//! others ([`super::dscp`]); elsewhere one `send_to` per datagram.

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

    /// Sends each `(destination, datagram)` of `batch` (non-blocking), marked by `marker` if
    /// given. Returns how many the kernel took: when its buffer fills the rest are dropped, as
    /// a congested network would (voice is not retransmitted).
    pub(crate) fn send_many(
        &self,
        marker: Option<&TosMarker>,
        batch: &[(SocketAddr, &[u8])],
    ) -> io::Result<usize> {
        send_many(&self.socket, self.ipv6, marker, batch)
    }
}

#[cfg(target_os = "linux")]
fn send_many(
    socket: &UdpSocket,
    ipv6_socket: bool,
    marker: Option<&TosMarker>,
    batch: &[(SocketAddr, &[u8])],
) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    // A socket marked by default marks these without a control message per datagram.
    let marker = marker.filter(|m| m.working() && !m.marks_by_default());
    let (mut sent, mut failed) = (0, None);
    for chunk in batch.chunks(MAX_BATCH) {
        let mut controls = vec![[0u8; 64]; if marker.is_some() { chunk.len() } else { 0 }];
        let mut control_lens = Vec::with_capacity(controls.len());
        let mut addresses = Vec::with_capacity(chunk.len());
        for (i, (destination, _)) in chunk.iter().enumerate() {
            let destination = match marker {
                Some(marker) => {
                    let (destination, control) = marker.mark(*destination, 0, &mut controls[i]);
                    control_lens.push(control.len());
                    destination
                }
                None => mapped(*destination, ipv6_socket),
            };
            addresses.push(socket2::SockAddr::from(destination));
        }
        let mut iovecs: Vec<libc::iovec> = chunk
            .iter()
            .map(|(_, datagram)| libc::iovec {
                iov_base: datagram.as_ptr() as *mut libc::c_void,
                iov_len: datagram.len(),
            })
            .collect();
        let mut messages: Vec<libc::mmsghdr> = Vec::with_capacity(chunk.len());
        for i in 0..chunk.len() {
            // SAFETY: an all-zero msghdr is a valid empty one; every pointer set below points
            // into `addresses`, `iovecs` or `controls`, which outlive the call.
            let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
            header.msg_name = addresses[i].as_ptr() as *mut libc::c_void;
            header.msg_namelen = addresses[i].len();
            header.msg_iov = &mut iovecs[i];
            header.msg_iovlen = 1;
            if let Some(len) = control_lens.get(i) {
                header.msg_control = controls[i].as_mut_ptr() as *mut libc::c_void;
                header.msg_controllen = *len as _;
            }
            messages.push(libc::mmsghdr {
                msg_hdr: header,
                msg_len: 0,
            });
        }
        let mut at = 0;
        while at < messages.len() {
            // SAFETY: `messages[at..]` are initialised headers whose buffers are alive (above);
            // the kernel writes only their `msg_len`.
            let n = unsafe {
                libc::sendmmsg(
                    socket.as_raw_fd(),
                    messages[at..].as_mut_ptr(),
                    (messages.len() - at) as libc::c_uint,
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => {}
                    io::ErrorKind::WouldBlock => return Ok(sent),
                    // The first message failed (an unreachable destination, say): skip it so
                    // it cannot stop the copies after it.
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
    }
    match failed {
        Some(e) if sent == 0 => Err(e),
        _ => Ok(sent),
    }
}

/// See the Linux version: one `send_to` per datagram here.
#[cfg(not(target_os = "linux"))]
fn send_many(
    socket: &UdpSocket,
    ipv6_socket: bool,
    _marker: Option<&TosMarker>,
    batch: &[(SocketAddr, &[u8])],
) -> io::Result<usize> {
    let mut sent = 0;
    for (destination, datagram) in batch {
        match socket.send_to(datagram, mapped(*destination, ipv6_socket)) {
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
        assert_eq!(batch_socket.send_many(marker.as_ref(), &batch).unwrap(), 40);
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
}
