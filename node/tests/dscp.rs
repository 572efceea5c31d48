//! Voice QoS on real loopback sockets: the QUIC datagrams a link socket sends (the voice
//! frames, and the packets carrying them) leave marked DSCP Expedited Forwarding. A relay in
//! the middle reads each datagram's TOS byte with `IP_RECVTOS`, as a router would see it.

#![cfg(target_os = "linux")]

mod common;
use common::link::{dial_opts, marked_node, serve};

use callsign_node::link::dscp::{received_tos, DSCP_EF};
use libp2p::core::Transport;
use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;
use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A UDP socket on loopback that reports the TOS byte of what it receives.
fn tos_socket() -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket2::SockRef::from(&socket).set_recv_tos(true).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    socket
}

fn recv_with_tos(socket: &UdpSocket, buf: &mut [u8]) -> Option<(usize, SocketAddr, Option<u8>)> {
    use std::mem::MaybeUninit;
    let mut data = [MaybeUninit::<u8>::uninit(); 2048];
    let mut control = [MaybeUninit::<u8>::uninit(); 128];
    let mut from = socket2::SockAddr::from(SocketAddr::from(([0, 0, 0, 0], 0)));
    let (len, control_len) = {
        let mut buffers = [socket2::MaybeUninitSlice::new(&mut data)];
        let mut message = socket2::MsgHdrMut::new()
            .with_addr(&mut from)
            .with_buffers(&mut buffers)
            .with_control(&mut control);
        let len = socket2::SockRef::from(socket)
            .recvmsg(&mut message, 0)
            .ok()?;
        (len, message.control_len())
    };
    // SAFETY: recvmsg wrote `len` bytes of data and `control_len` bytes of control.
    let assume = |b: &MaybeUninit<u8>| unsafe { b.assume_init() };
    for (out, b) in buf.iter_mut().zip(&data[..len]) {
        *out = assume(b);
    }
    let control: Vec<u8> = control[..control_len].iter().map(assume).collect();
    Some((len, from.as_socket()?, received_tos(&control)))
}

/// Forwards between a dialer (whoever first sends to `front`) and `server`, through `back`,
/// counting TOS values of what each side sent.
fn relay(front: UdpSocket, back: UdpSocket, server: SocketAddr, seen: Arc<Mutex<Tally>>) {
    std::thread::spawn(move || {
        let mut client: Option<SocketAddr> = None;
        let mut buf = vec![0u8; 2048];
        loop {
            if let Some((len, from, tos)) = recv_with_tos(&front, &mut buf) {
                client = Some(from);
                seen.lock().unwrap().count("client", tos);
                let _ = back.send_to(&buf[..len], server);
            }
            if let Some((len, _, tos)) = recv_with_tos(&back, &mut buf) {
                seen.lock().unwrap().count("server", tos);
                if let Some(c) = client {
                    let _ = front.send_to(&buf[..len], c);
                }
            }
            if seen.lock().unwrap().stop {
                return;
            }
        }
    });
}

#[derive(Default)]
struct Tally {
    /// (side, TOS) → datagrams.
    tos: BTreeMap<(&'static str, Option<u8>), u64>,
    stop: bool,
}

impl Tally {
    fn count(&mut self, side: &'static str, tos: Option<u8>) {
        *self.tos.entry((side, tos)).or_default() += 1;
    }
}

/// A link between two nodes through the TOS-reading relay; 50 voice-sized datagrams each way.
/// Returns the TOS values seen, by side, and how many datagrams the server got.
async fn voice_through_relay(
    dscp: Option<u8>,
) -> (BTreeMap<(&'static str, Option<u8>), u64>, usize) {
    let server = marked_node(dscp);
    let mut client = marked_node(dscp);
    let (server_peer, server_links, mut server_datagrams) =
        (server.peer, server.links.clone(), server.datagrams);
    let (listen, _accepted) = serve(server.transport, server.peer).await;
    let server_addr = match listen.iter().collect::<Vec<_>>()[..] {
        [Protocol::Ip4(ip), Protocol::Udp(port), ..] => SocketAddr::from((ip, port)),
        _ => panic!("{listen}"),
    };
    let (front, back) = (tos_socket(), tos_socket());
    let via: Multiaddr = format!(
        "/ip4/127.0.0.1/udp/{}/quic-v1",
        front.local_addr().unwrap().port()
    )
    .parse::<Multiaddr>()
    .unwrap()
    .with(Protocol::P2p(server_peer));
    let tally = Arc::new(Mutex::new(Tally::default()));
    relay(front, back, server_addr, tally.clone());
    let (_, _connection) = client
        .transport
        .dial(via, dial_opts())
        .unwrap()
        .await
        .unwrap();
    // Settle the handshake, then count only voice-time traffic.
    tokio::time::sleep(Duration::from_millis(200)).await;
    tally.lock().unwrap().tos.clear();
    for i in 0..50u32 {
        let mut frame = vec![0u8; 90];
        frame[..4].copy_from_slice(&i.to_be_bytes());
        client.links.send_datagram(&server_peer, &frame).unwrap();
        let _ = server_links.send_datagram(&client.peer, &frame);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut got = 0;
    while let Ok(Some(_)) =
        tokio::time::timeout(Duration::from_millis(200), server_datagrams.recv()).await
    {
        got += 1;
    }
    let mut tally = tally.lock().unwrap();
    tally.stop = true;
    (tally.tos.clone(), got)
}

#[tokio::test]
async fn voice_datagrams_leave_marked_expedited_forwarding() {
    let (seen, got) = voice_through_relay(Some(DSCP_EF)).await;
    eprintln!("marked: {seen:?}, {got} datagrams delivered");
    assert!(got >= 45, "{got} of 50 voice datagrams arrived");
    for side in ["client", "server"] {
        let total: u64 = seen
            .iter()
            .filter(|((s, _), _)| *s == side)
            .map(|(_, n)| n)
            .sum();
        let ef: u64 = seen
            .iter()
            .filter(|((s, tos), _)| *s == side && tos.is_some_and(|t| t >> 2 == DSCP_EF))
            .map(|(_, n)| n)
            .sum();
        assert!(total >= 45, "{side}: {seen:?}");
        assert_eq!(
            ef, total,
            "{side}: every datagram EF (TOS 0xb8 | ECN): {seen:?}"
        );
    }
    // Unmarked sockets, for contrast: the relay sees DSCP 0.
    let (seen, _) = voice_through_relay(None).await;
    eprintln!("unmarked: {seen:?}");
    assert!(
        seen.keys().all(|(_, tos)| tos.is_some_and(|t| t >> 2 == 0)),
        "{seen:?}"
    );
}
