//! Voice QoS: every datagram of a real link socket leaves marked with a DSCP (Expedited
//! Forwarding by default, RFC 3246 / RFC 8837 for real-time audio), keeping quinn's ECN bits.
//!
//! quinn's own send path sets the whole TOS / traffic-class byte per datagram from its ECN
//! codepoint, which would wipe a DSCP set on the socket, so marked sockets send through
//! [`TosMarker`] instead: one `sendmsg` per datagram with an `IP_TOS` (IPv4, and IPv4-mapped
//! on a dual-stack socket) or `IPV6_TCLASS` control message of `dscp << 2 | ecn`. Where the
//! kernel refuses the control message the marker turns itself off and quinn's path takes over
//! (unmarked). The socket's own TOS is set to the mark as well, so the voice plane's datagrams,
//! which carry no ECN bits, leave marked without a control message each (a relay's copies:
//! one fewer thing for the kernel to parse per copy). That is Linux. Windows ignores `IP_TOS`
//! from applications: there the marker puts each destination in a qWAVE voice flow
//! ([`super::qwave`]) and Windows marks the datagrams. Elsewhere sockets are not marked.
//!
//! What routers do with the mark: home routers with WMM put EF in the voice queue on Wi-Fi,
//! which is most of the gain on a busy home network; many ISPs bleach or ignore it at their
//! edge, which costs nothing.

use quinn::udp::Transmit;
use std::io;
#[cfg(target_os = "linux")]
use std::net::SocketAddr;
use std::net::UdpSocket;
use std::sync::atomic::AtomicBool;
#[cfg(target_os = "linux")]
use std::sync::atomic::Ordering;

/// Whether this platform always marks datagrams itself; elsewhere [`TosMarker::new`] answers
/// `None` and sockets asked to mark send unmarked, except on Windows where qWAVE runs
/// (docs/windows.md).
pub const MARKS: bool = cfg!(target_os = "linux");

/// Expedited Forwarding: the DSCP for interactive voice.
pub const DSCP_EF: u8 = 46;

/// Sends datagrams with a DSCP mark (see the module documentation). Never made off Linux.
#[derive(Debug)]
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub struct TosMarker {
    socket: UdpSocket,
    dscp: u8,
    ipv6_socket: bool,
    working: AtomicBool,
    /// The socket's own TOS / traffic class is the mark, so a datagram without ECN bits needs
    /// no control message: the kernel parses none per datagram.
    by_default: bool,
    /// Windows marks what this flow's destinations are sent.
    #[cfg(windows)]
    flow: super::qwave::QosFlow,
}

impl TosMarker {
    /// A marker sending on a duplicate of `socket`'s descriptor (non-blocking as the original)
    /// with `dscp` (0–63). `None` where this platform cannot mark.
    pub fn new(socket: &UdpSocket, dscp: u8) -> io::Result<Option<Self>> {
        if !(MARKS || cfg!(windows)) || dscp > 63 {
            return Ok(None);
        }
        #[cfg(windows)]
        let Some(flow) = super::qwave::QosFlow::new(socket, dscp) else {
            return Ok(None);
        };
        let ipv6_socket = socket.local_addr()?.is_ipv6();
        let by_default = mark_socket(socket, dscp << 2, ipv6_socket);
        Ok(Some(Self {
            socket: socket.try_clone()?,
            dscp,
            ipv6_socket,
            working: AtomicBool::new(true),
            by_default,
            #[cfg(windows)]
            flow,
        }))
    }

    /// Readies the mark for a datagram to `destination` (on Windows, adds it to the voice
    /// flow the first time); the sender then sends it its own way. Linux marks each datagram
    /// as it sends it instead.
    #[cfg(not(target_os = "linux"))]
    pub(super) fn reach(&self, destination: std::net::SocketAddr) {
        #[cfg(windows)]
        self.flow.reach(destination);
        #[cfg(not(windows))]
        let _ = destination;
    }

    /// Whether datagrams without ECN bits leave marked with no control message (the socket's
    /// own TOS is the mark).
    #[cfg(target_os = "linux")]
    pub(super) fn marks_by_default(&self) -> bool {
        self.by_default
    }

    /// The DSCP marked.
    pub fn dscp(&self) -> u8 {
        self.dscp
    }

    /// Readies the mark for `transmit` and answers `Ok(false)`: the caller sends it its own
    /// way (on Windows, qWAVE marks it; elsewhere it leaves unmarked).
    #[cfg(not(target_os = "linux"))]
    pub fn send(&self, transmit: &Transmit) -> io::Result<bool> {
        self.reach(transmit.destination);
        Ok(false)
    }

    /// Sends `transmit` marked. `Ok(false)`: the marker is off (the kernel refused it); the
    /// caller sends the transmit its own way.
    #[cfg(target_os = "linux")]
    pub fn send(&self, transmit: &Transmit) -> io::Result<bool> {
        if !self.working.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let mut control = [0u8; 64];
        let (destination, control) = self.mark(
            transmit.destination,
            transmit.ecn.map_or(0, |e| e as u8),
            &mut control,
        );
        let address = socket2::SockAddr::from(destination);
        let socket = socket2::SockRef::from(&self.socket);
        let segment = transmit
            .segment_size
            .unwrap_or(transmit.contents.len())
            .max(1);
        for (i, chunk) in transmit.contents.chunks(segment).enumerate() {
            let buffers = [io::IoSlice::new(chunk)];
            let message = socket2::MsgHdr::new()
                .with_addr(&address)
                .with_buffers(&buffers)
                .with_control(control);
            match socket.sendmsg(&message, 0) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && i == 0 => return Err(e),
                // Later segments of a batch: quinn treats the batch as sent, as its own
                // path does when the socket buffer fills mid-batch.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if i == 0 && e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::warn!("the kernel refuses DSCP marking; voice goes unmarked");
                    self.working.store(false, Ordering::Relaxed);
                    return Ok(false);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

impl TosMarker {
    /// Whether marking still works (the kernel has not refused it).
    #[cfg(target_os = "linux")]
    pub(super) fn working(&self) -> bool {
        self.working.load(Ordering::Relaxed)
    }

    /// The address to send to from this socket (IPv4 mapped on an IPv6 socket) and the control
    /// message that marks a datagram to it with the DSCP and `ecn`, written into `buf`.
    #[cfg(target_os = "linux")]
    pub(super) fn mark<'b>(
        &self,
        destination: SocketAddr,
        ecn: u8,
        buf: &'b mut [u8; 64],
    ) -> (SocketAddr, &'b [u8]) {
        let (destination, ipv4) = match destination {
            SocketAddr::V4(v4) if self.ipv6_socket => (
                SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
                true,
            ),
            SocketAddr::V4(_) => (destination, true),
            SocketAddr::V6(v6) => (destination, v6.ip().to_ipv4_mapped().is_some()),
        };
        let tos = i32::from(self.dscp << 2 | ecn);
        let (level, kind) = if ipv4 {
            (libc::IPPROTO_IP, libc::IP_TOS)
        } else {
            (libc::IPPROTO_IPV6, libc::IPV6_TCLASS)
        };
        (destination, encode_cmsg(buf, level, kind, tos))
    }
}

/// Sets `socket`'s own TOS (and, on an IPv6 socket, its traffic class; IPv4-mapped
/// destinations take the TOS) to `tos`. Whether the kernel took every option.
#[cfg(target_os = "linux")]
fn mark_socket(socket: &UdpSocket, tos: u8, ipv6_socket: bool) -> bool {
    use std::os::fd::AsRawFd;
    let set = |level: i32, name: i32| {
        let value = i32::from(tos);
        // SAFETY: `value` is a live int of the size passed; the descriptor is `socket`'s.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                level,
                name,
                (&value as *const i32).cast(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            ) == 0
        }
    };
    let v4 = set(libc::IPPROTO_IP, libc::IP_TOS);
    v4 && (!ipv6_socket || set(libc::IPPROTO_IPV6, libc::IPV6_TCLASS))
}

#[cfg(not(target_os = "linux"))]
fn mark_socket(_socket: &UdpSocket, _tos: u8, _ipv6_socket: bool) -> bool {
    false
}

#[cfg(target_os = "linux")]
/// Writes one control message carrying an `int` into `buf` (the layout of `struct cmsghdr`:
/// length, level, type, then the data aligned to the word size) and returns its bytes.
fn encode_cmsg(buf: &mut [u8; 64], level: i32, kind: i32, value: i32) -> &[u8] {
    let word = std::mem::size_of::<usize>();
    let header = std::mem::size_of::<libc::cmsghdr>();
    let len = header + 4;
    let space = header + 4usize.next_multiple_of(word);
    buf[..word].copy_from_slice(&len.to_ne_bytes());
    buf[word..word + 4].copy_from_slice(&level.to_ne_bytes());
    buf[word + 4..word + 8].copy_from_slice(&kind.to_ne_bytes());
    buf[header..header + 4].copy_from_slice(&value.to_ne_bytes());
    &buf[..space]
}

#[cfg(target_os = "linux")]
/// Reads the first `IP_TOS` / `IPV6_TCLASS` value from received control messages (what
/// `IP_RECVTOS` / `IPV6_RECVTCLASS` deliver): for tests and diagnostics.
pub fn received_tos(control: &[u8]) -> Option<u8> {
    let word = std::mem::size_of::<usize>();
    let header = std::mem::size_of::<libc::cmsghdr>();
    let mut at = 0;
    while at + header <= control.len() {
        let len = usize::from_ne_bytes(control[at..at + word].try_into().ok()?);
        let level = i32::from_ne_bytes(control[at + word..at + word + 4].try_into().ok()?);
        let kind = i32::from_ne_bytes(control[at + word + 4..at + word + 8].try_into().ok()?);
        if len < header || at + len > control.len() {
            return None;
        }
        let data = &control[at + header..at + len];
        let tos = (level == libc::IPPROTO_IP && kind == libc::IP_TOS)
            || (level == libc::IPPROTO_IPV6 && kind == libc::IPV6_TCLASS);
        if tos && !data.is_empty() {
            // IP_TOS arrives as one byte, IPV6_TCLASS as an int.
            return Some(if data.len() >= 4 {
                i32::from_ne_bytes(data[..4].try_into().ok()?) as u8
            } else {
                data[0]
            });
        }
        at += len.next_multiple_of(word);
    }
    None
}
