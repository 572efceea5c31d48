//! QUIC links over real loopback sockets: handshake with PeerId verification, a stream message,
//! 1000 datagrams, clean disconnect, and hostile input (garbage UDP, malformed and oversized
//! datagrams).

use callsign_node::link::{LinkConfig, LinkError, LinkEvent, LinkSocket, Links, QuicTransport};
use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::core::muxing::StreamMuxerExt;
use libp2p::core::transport::{DialOpts, ListenerId, PortUse, TransportEvent};
use libp2p::core::{Endpoint, Transport};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;
use std::future::poll_fn;
use std::pin::Pin;
use std::time::Duration;

mod common;
use common::link::{configured_node, connect, dial_opts, node, serve, serve_on};

#[tokio::test]
async fn connect_stream_1000_datagrams_and_disconnect() {
    let a = node();
    let mut b = node();
    let mut a_datagrams = a.datagrams;
    let a_links = a.links.clone();
    let mut a_events = a.links.events();
    let mut b_events = b.links.events();
    let (addr, mut accepted) = serve(a.transport, a.peer).await;

    let (peer, mut b_muxer) = b.transport.dial(addr, dial_opts()).unwrap().await.unwrap();
    assert_eq!(peer, a.peer);
    let (b_seen, mut a_muxer) = accepted.recv().await.unwrap();
    assert_eq!(b_seen, b.peer);
    assert!(matches!(a_events.recv().await, Some(LinkEvent::Up { peer, .. }) if peer == b.peer));
    assert!(matches!(b_events.recv().await, Some(LinkEvent::Up { peer, .. }) if peer == a.peer));

    // A control message over a stream.
    let mut out = poll_fn(|cx| b_muxer.poll_outbound_unpin(cx)).await.unwrap();
    out.write_all(b"charter heads please").await.unwrap();
    out.close().await.unwrap();
    let mut inbound = poll_fn(|cx| a_muxer.poll_inbound_unpin(cx)).await.unwrap();
    let mut message = Vec::new();
    inbound.read_to_end(&mut message).await.unwrap();
    assert_eq!(message, b"charter heads please");

    // Voice-sized datagrams, paced like a burst of a few talkers.
    let max = b.links.max_datagram_size(&a.peer).unwrap();
    assert!(max >= 1000, "max datagram {max}");
    for i in 0..1000u32 {
        let mut payload = vec![0u8; 120];
        payload[..4].copy_from_slice(&i.to_be_bytes());
        b.links.send_datagram(&a.peer, &payload).unwrap();
        if i % 20 == 19 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    while let Ok(Some(d)) =
        tokio::time::timeout(Duration::from_millis(500), a_datagrams.recv()).await
    {
        assert_eq!(d.peer, b.peer);
        seen.insert(u32::from_be_bytes(d.payload[..4].try_into().unwrap()));
    }
    assert!(
        seen.len() >= 990,
        "only {} of 1000 datagrams arrived",
        seen.len()
    );
    assert_eq!(a_links.counts().malformed, 0);
    // Announced during the handshake, the voice plane carried them (`link::plane`).
    let plane = a_links.counts().plane;
    assert!(plane.received >= 990, "{plane:?}");
    assert_eq!(
        plane.malformed + plane.unknown_link + plane.unauthentic + plane.replayed,
        0,
        "{plane:?}"
    );

    // Lossy control (a member's periodic announcement) rides the plane now that it is up and
    // arrives as control; one larger than any path takes is left to the caller to send as
    // control.
    assert!(b.links.send_lossy_control(&a.peer, b"presence").unwrap());
    let d = tokio::time::timeout(Duration::from_secs(2), a_datagrams.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (d.peer, &d.payload[..], d.control),
        (b.peer, &b"presence"[..], true)
    );
    assert!(!b.links.send_lossy_control(&a.peer, &[7u8; 1200]).unwrap());

    // Datagram RTT on loopback is well under 50 ms.
    let rtt = b
        .links
        .ping_datagram(&a.peer, Duration::from_secs(1))
        .await
        .unwrap()
        .unwrap();
    assert!(rtt < Duration::from_millis(50), "{rtt:?}");

    // Clean disconnect: both sides see the link go down.
    poll_fn(|cx| b_muxer.poll_close_unpin(cx)).await.unwrap();
    let down = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(LinkEvent::Down { peer, .. }) = a_events.recv().await {
                return peer;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(down, b.peer);
    assert!(!b.links.is_connected(&a.peer));
}

/// A dial to a peer marked as the org's rented relay keeps the link open with
/// `relay_keep_alive`; other dials ping at `keep_alive`. (Shortened here: 100 ms and 1 s.)
#[tokio::test]
async fn links_to_a_rented_relay_ping_at_the_relay_keep_alive() {
    // The relay's end pings only after 2 s without a packet, as a relay does, so the pings
    // counted are the dialers' own.
    let relay = configured_node(LinkConfig {
        keep_alive: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(3),
        ..LinkConfig::default()
    });
    let member = || {
        configured_node(LinkConfig {
            keep_alive: Duration::from_millis(100),
            relay_keep_alive: Duration::from_secs(1),
            relay_idle_timeout: Duration::from_secs(3),
            ..LinkConfig::default()
        })
    };
    // The first marks the relay as its org's rented relay, the second does not.
    let mut dialers = [member(), member()];
    let relay_peer = relay.peer;
    let (addr, mut accepted) = serve(relay.transport, relay_peer).await;
    dialers[0].links.set_rented_relay(relay_peer, true);
    assert!(dialers[0].links.is_rented_relay(&relay_peer));
    let mut muxers = Vec::new();
    for dialer in &mut dialers {
        let (peer, muxer) = connect(&mut dialer.transport, &addr).await;
        assert_eq!(peer, relay_peer);
        muxers.push((muxer, accepted.recv().await.unwrap()));
    }
    // Path MTU probes are pings too: counted from when they are over.
    let pings =
        |dialer: &common::link::Node| dialer.links.quic_stats(&relay_peer).unwrap().frame_tx.ping;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = dialers.each_ref().map(pings);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let [marked_pings, plain_pings] = [0, 1].map(|i| pings(&dialers[i]) - before[i]);
    assert!(
        plain_pings >= 8,
        "a plain link pinged {plain_pings} times in 2 s"
    );
    assert!(
        marked_pings <= 3,
        "a rented relay's link pinged {marked_pings} times in 2 s"
    );
    drop(muxers);
}

#[tokio::test]
async fn dialing_the_wrong_peer_id_fails_clearly() {
    let a = node();
    let mut b = node();
    let (addr, _accepted) = serve(a.transport, a.peer).await;
    let impostor = Keypair::generate_ed25519().public().to_peer_id();
    let mut wrong = Multiaddr::empty();
    for p in addr.iter() {
        wrong.push(match p {
            Protocol::P2p(_) => Protocol::P2p(impostor),
            other => other,
        });
    }
    let err = match b.transport.dial(wrong, dial_opts()).unwrap().await {
        Ok(_) => panic!("dial with a mismatched PeerId succeeded"),
        Err(e) => e,
    };
    let text = err.to_string();
    // The handshake completes (one TLS client config serves every dial), then the dialer
    // compares the proven identity with the one it dialed and hangs up.
    assert!(matches!(err, LinkError::PeerMismatch { .. }), "{text}");
    assert!(text.contains(&impostor.to_string()), "{text}");
    assert!(text.contains(&a.peer.to_string()), "{text}");
    assert!(b.links.peers().is_empty());
}

#[tokio::test]
async fn garbage_and_malformed_input_is_counted_and_dropped() {
    let a = node();
    let mut b = node();
    let a_links = a.links.clone();
    let stats = a.transport.socket_stats();
    let mut a_datagrams = a.datagrams;
    let (addr, _accepted) = serve(a.transport, a.peer).await;
    let (peer, _muxer) = connect(&mut b.transport, &addr).await;

    // Garbage UDP to the port: short packets, and packets with the QUIC fixed bit clear.
    let port = addr
        .iter()
        .find_map(|p| match p {
            Protocol::Udp(port) => Some(port),
            _ => None,
        })
        .unwrap();
    let spray = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..200u32 {
        let len = (i as usize * 7) % 1400 + 1;
        let mut junk: Vec<u8> = (0..len).map(|j| (i as usize * 31 + j * 17) as u8).collect();
        junk[0] &= 0xBF;
        spray.send_to(&junk, ("127.0.0.1", port)).unwrap();
    }
    // Let A drain its socket: a burst this size can fill the kernel buffer, and anything sent
    // meanwhile (including our datagrams) is lost, as on a real flooded port.
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Malformed link datagrams: empty, unknown version, unknown kind.
    for raw in [&b""[..], &[9u8, 0, 1][..], &[1u8, 77, 1, 2][..], &[1u8][..]] {
        b.links
            .send_raw_datagram(&peer, bytes::Bytes::copy_from_slice(raw))
            .unwrap();
    }
    // Oversized: refused at the sender with the limit in the error.
    let max = b.links.max_datagram_size(&peer).unwrap();
    let err = b
        .links
        .send_datagram(&peer, &vec![0u8; max + 1])
        .unwrap_err();
    assert!(matches!(err, LinkError::DatagramTooLarge { .. }), "{err}");
    assert_eq!(b.links.counts().oversized, 1);

    // The link still works afterwards.
    b.links.send_datagram(&peer, b"still here").unwrap();
    let d = tokio::time::timeout(Duration::from_secs(2), a_datagrams.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&d.payload[..], b"still here");
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Some of the burst may have been dropped by the kernel before reaching the socket.
    assert!(stats.snapshot().garbage >= 100, "{:?}", stats.snapshot());
    assert_eq!(a_links.counts().malformed, 4, "{:?}", a_links.counts());
}

/// The same two nodes inside a turmoil simulation with 30 ms one-way latency: the handshake
/// completes and datagrams flow; RTT is 60 ms of virtual time; the whole run takes a fraction of
/// a second of wall time.
#[test]
fn handshake_and_datagrams_in_a_turmoil_simulation() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    let wall = std::time::Instant::now();
    let mut sim = turmoil::Builder::new()
        .min_message_latency(Duration::from_millis(30))
        .max_message_latency(Duration::from_millis(30))
        .simulation_duration(Duration::from_secs(60))
        .rng_seed(7)
        .build();
    let a_key = Keypair::generate_ed25519();
    let a_peer = a_key.public().to_peer_id();
    let received = Arc::new(AtomicU64::new(0));
    let rtts: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let quic_rtt: Arc<Mutex<Option<Duration>>> = Arc::default();

    let a_received = received.clone();
    sim.host("a", move || {
        let key = a_key.clone();
        let received = a_received.clone();
        async move {
            let (links, mut datagrams) = Links::new(4096);
            let socket = LinkSocket::bind_turmoil("0.0.0.0:4433".parse().unwrap()).await?;
            let transport = QuicTransport::new(key.clone(), LinkConfig::default(), socket, links)?;
            let peer = key.public().to_peer_id();
            let (_addr, mut accepted) = serve_on(
                transport,
                peer,
                "/ip4/0.0.0.0/udp/4433/quic-v1".parse().unwrap(),
            )
            .await;
            tokio::spawn(async move { while accepted.recv().await.is_some() {} });
            while datagrams.recv().await.is_some() {
                received.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }
    });

    let (b_rtts, b_quic_rtt) = (rtts.clone(), quic_rtt.clone());
    sim.client("b", async move {
        let key = Keypair::generate_ed25519();
        let (links, _datagrams) = Links::new(16);
        let socket = LinkSocket::bind_turmoil("0.0.0.0:4433".parse().unwrap()).await?;
        let mut transport = QuicTransport::new(key, LinkConfig::default(), socket, links.clone())?;
        let addr: Multiaddr = format!(
            "/ip4/{}/udp/4433/quic-v1/p2p/{a_peer}",
            turmoil::lookup("a")
        )
        .parse()
        .unwrap();
        let (peer, _muxer) = transport.dial(addr, dial_opts()).unwrap().await?;
        assert_eq!(peer, a_peer);
        for i in 0..100u32 {
            links.send_datagram(&peer, &i.to_be_bytes())?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The first few went in QUIC while a's announcement of the voice plane was on its way.
        let plane = links.counts().plane;
        assert!((95..100).contains(&plane.sent), "{plane:?}");
        for _ in 0..10 {
            let rtt = links.ping_datagram(&peer, Duration::from_secs(1)).await?;
            b_rtts
                .lock()
                .unwrap()
                .push(rtt.expect("datagram ping answered"));
        }
        *b_quic_rtt.lock().unwrap() = links.rtt(&peer);
        Ok(())
    });
    sim.run().unwrap();

    assert_eq!(received.load(Ordering::Relaxed), 100);
    let rtts = rtts.lock().unwrap();
    assert_eq!(rtts.len(), 10);
    for rtt in rtts.iter() {
        assert!(
            (Duration::from_millis(55)..=Duration::from_millis(65)).contains(rtt),
            "datagram RTT {rtt:?} of virtual time"
        );
    }
    let quic_rtt = quic_rtt.lock().unwrap().unwrap();
    assert!(
        (Duration::from_millis(55)..=Duration::from_millis(65)).contains(&quic_rtt),
        "QUIC RTT estimate {quic_rtt:?}"
    );
    // Virtual time: the run simulates seconds of traffic but takes far less wall time. The
    // bound leaves a wide margin for slow debug builds on a busy machine; runs take ~15 ms.
    assert!(
        wall.elapsed() < Duration::from_secs(1),
        "wall time {:?}",
        wall.elapsed()
    );
    eprintln!(
        "turmoil run: wall time {:?}, datagram RTTs {:?}",
        wall.elapsed(),
        &rtts[..3]
    );
}

#[tokio::test]
async fn a_stream_carries_many_request_response_rounds() {
    let a = node();
    let mut b = node();
    let (addr, mut accepted) = serve(a.transport, a.peer).await;
    let (_, mut b_muxer) = b.transport.dial(addr, dial_opts()).unwrap().await.unwrap();
    let (_, mut a_muxer) = accepted.recv().await.unwrap();
    let mut out = poll_fn(|cx| b_muxer.poll_outbound_unpin(cx)).await.unwrap();
    out.write_all(&[0u8; 32]).await.unwrap();
    out.flush().await.unwrap();
    let mut inbound = poll_fn(|cx| a_muxer.poll_inbound_unpin(cx)).await.unwrap();
    let echo = tokio::spawn(async move {
        let mut buf = [0u8; 32];
        loop {
            if inbound.read_exact(&mut buf).await.is_err() {
                return;
            }
            inbound.write_all(&buf).await.unwrap();
            inbound.flush().await.unwrap();
        }
    });
    let mut buf = [0u8; 32];
    out.read_exact(&mut buf).await.unwrap();
    for round in 1..20u8 {
        out.write_all(&[round; 32]).await.unwrap();
        out.flush().await.unwrap();
        tokio::time::timeout(Duration::from_secs(2), out.read_exact(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("round {round} stalled"))
            .unwrap();
        assert_eq!(buf, [round; 32]);
    }
    drop(out);
    echo.abort();
}

/// Listens on loopback and returns the first announced address (without `/p2p/`).
async fn listen_local(transport: &mut QuicTransport) -> Multiaddr {
    transport
        .listen_on(
            ListenerId::next(),
            "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap(),
        )
        .unwrap();
    loop {
        if let TransportEvent::NewAddress { listen_addr, .. } =
            poll_fn(|cx| Pin::new(&mut *transport).poll(cx)).await
        {
            return listen_addr;
        }
    }
}

/// Polls a transport forever, completing incoming upgrades in the background.
async fn drive(mut transport: QuicTransport) {
    loop {
        if let TransportEvent::Incoming { upgrade, .. } =
            poll_fn(|cx| Pin::new(&mut transport).poll(cx)).await
        {
            tokio::spawn(upgrade);
        }
    }
}

/// The QUIC half of a hole punch (`Output::Punch`): one side "dials" in the listener role (probing the remote from its
/// listening port and waiting), the other dials normally; the listener-role dial resolves with
/// the incoming connection from that address.
#[tokio::test]
async fn a_listener_role_dial_probes_and_takes_the_incoming_connection() {
    let mut a = node();
    let mut b = node();
    let b_stats = b.transport.socket_stats();
    let a_addr = listen_local(&mut a.transport).await;
    let b_addr = listen_local(&mut b.transport).await;

    let punch = b
        .transport
        .dial(
            a_addr.with(Protocol::P2p(a.peer)),
            DialOpts {
                role: Endpoint::Listener,
                port_use: PortUse::Reuse,
            },
        )
        .unwrap();
    tokio::spawn(drive(b.transport));
    let punch = tokio::spawn(punch);
    // Let B's probes start before A's dial arrives, as when both learn of the punch at once.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let dial = a
        .transport
        .dial(b_addr.with(Protocol::P2p(b.peer)), dial_opts())
        .unwrap();
    tokio::spawn(drive(a.transport));

    let ((b_sees, _), (a_sees, _)) = tokio::time::timeout(Duration::from_secs(5), async {
        let punched = punch.await.unwrap().unwrap();
        let dialed = dial.await.unwrap();
        (punched, dialed)
    })
    .await
    .unwrap();
    assert_eq!(b_sees, a.peer);
    assert_eq!(a_sees, b.peer);
    assert!(b_stats.snapshot().probes_sent >= 1);
    assert!(b.links.is_connected(&a.peer) && a.links.is_connected(&b.peer));
}

/// A node that changes networks keeps its link: the peer sees the new address as a migration.
#[tokio::test]
async fn rebinding_the_socket_migrates_the_connection() {
    let a = node();
    let mut b = node();
    let mut a_events = a.links.events();
    let mut a_datagrams = a.datagrams;
    let (addr, _accepted) = serve(a.transport, a.peer).await;
    let (peer, _muxer) = b.transport.dial(addr, dial_opts()).unwrap().await.unwrap();
    assert!(matches!(a_events.recv().await, Some(LinkEvent::Up { .. })));
    b.links.send_datagram(&peer, b"before").unwrap();
    assert_eq!(&a_datagrams.recv().await.unwrap().payload[..], b"before");

    let new_socket = LinkSocket::bind_tokio("127.0.0.1:0".parse().unwrap()).unwrap();
    let new_addr = new_socket.local_addr().unwrap();
    b.transport.rebind(new_socket).unwrap();
    b.links.send_datagram(&peer, b"after").unwrap();
    let d = tokio::time::timeout(Duration::from_secs(5), a_datagrams.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&d.payload[..], b"after");
    let event = tokio::time::timeout(Duration::from_secs(5), a_events.recv())
        .await
        .unwrap();
    match event {
        Some(LinkEvent::Migrated { peer, to, .. }) => {
            assert_eq!(peer, b.peer);
            assert_eq!(to, new_addr);
        }
        other => panic!("expected a migration, got {other:?}"),
    }
}

/// A relay's copies of a packet go on each subscriber's newest connection, also after the
/// subscriber reconnected: the relay keeps its copy lists looked up (`route::CopyRoutes`) only
/// while the registry is unchanged.
#[tokio::test]
async fn a_relays_copies_follow_a_subscriber_that_reconnects() {
    let relay = node();
    let relay_links = relay.links.clone();
    let mut relay_events = relay.links.events();
    let (addr, mut accepted) = serve(relay.transport, relay.peer).await;
    let mut a = node();
    let mut b = node();
    let (_, _a_muxer) = a
        .transport
        .dial(addr.clone(), dial_opts())
        .unwrap()
        .await
        .unwrap();
    let (_, b_muxer) = b
        .transport
        .dial(addr.clone(), dial_opts())
        .unwrap()
        .await
        .unwrap();
    for _ in 0..2 {
        accepted.recv().await.unwrap();
    }
    let subscribers: std::sync::Arc<[libp2p::PeerId]> = [a.peer, b.peer].into();
    // Heard by both, several times (the first copies may travel in QUIC before the plane is
    // announced): returns what b heard.
    async fn copies_heard(
        relay: &Links,
        subscribers: &std::sync::Arc<[libp2p::PeerId]>,
        a: &mut callsign_node::link::DatagramReceiver,
        b: &mut callsign_node::link::DatagramReceiver,
        tag: u8,
    ) -> usize {
        let frame = Links::frame_datagram(&[tag; 40]);
        for _ in 0..20 {
            relay.send_framed_to_many(subscribers, &frame);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut heard = 0;
        while let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(300), b.recv()).await {
            heard += usize::from(d.payload[0] == tag);
        }
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(10), a.recv()).await {}
        heard
    }
    assert!(
        copies_heard(
            &relay_links,
            &subscribers,
            &mut a.datagrams,
            &mut b.datagrams,
            1
        )
        .await
            >= 15
    );

    // b hangs up and dials again: a new connection, with new plane keys.
    drop(b_muxer);
    b.links.close(&relay.peer);
    tokio::time::timeout(Duration::from_secs(5), async {
        while !matches!(relay_events.recv().await, Some(LinkEvent::Down { peer, .. }) if peer == b.peer) {}
    })
    .await
    .expect("the relay saw b go");
    let (_, _b_muxer) = b.transport.dial(addr, dial_opts()).unwrap().await.unwrap();
    accepted.recv().await.unwrap();
    let heard = copies_heard(
        &relay_links,
        &subscribers,
        &mut a.datagrams,
        &mut b.datagrams,
        2,
    )
    .await;
    assert!(
        heard >= 15,
        "b heard {heard} of 20 copies after reconnecting"
    );
    assert_eq!(b.links.counts().plane.unknown_link, 0);
}
