//! Parked links over real loopback sockets (`Links::park`): a relay closes a member's QUIC
//! connection and both ends keep the voice plane, which carries datagrams both ways and keeps
//! the link alive; a new connection takes over from it; either end falling silent takes it
//! down at the other.

use callsign_node::link::muxer::QuicMuxer;
use callsign_node::link::{DatagramReceiver, Heartbeat, LinkConfig, LinkEvent, Links};
use libp2p::core::muxing::StreamMuxerExt;
use libp2p::PeerId;
use std::future::poll_fn;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;

mod common;
use common::link::{configured_node, connect, relay_node, serve};

/// A parked link with no word from its peer for this long is down (shortened from 30 s).
const SILENCE: Duration = Duration::from_millis(1500);

/// The next datagram within 2 s, as (from, payload).
async fn next(datagrams: &mut DatagramReceiver) -> (PeerId, Vec<u8>) {
    let d = tokio::time::timeout(Duration::from_secs(2), datagrams.recv())
        .await
        .expect("a datagram within 2 s")
        .unwrap();
    (d.peer, d.payload.to_vec())
}

/// Sends `payload` from `links` to `to` and checks it arrives at `at` from `from`.
async fn carries(
    links: &Links,
    to: PeerId,
    at: &mut DatagramReceiver,
    from: PeerId,
    payload: &[u8],
) {
    links.send_datagram(&to, payload).unwrap();
    assert_eq!(next(at).await, (from, payload.to_vec()));
}

/// One end of the link: its registry, its peer id and what it receives.
type End<'a> = (&'a Links, PeerId, &'a mut DatagramReceiver);

/// `payload` from the member to the relay and back the other way.
async fn both_ways(member: End<'_>, relay: End<'_>, payload: &[u8]) {
    carries(member.0, relay.1, relay.2, member.1, payload).await;
    carries(relay.0, member.1, member.2, relay.1, payload).await;
}

/// The first `Down` within `within`, if any (other events are skipped).
async fn down_within(
    events: &mut UnboundedReceiver<LinkEvent>,
    within: Duration,
) -> Option<PeerId> {
    tokio::time::timeout(within, async {
        loop {
            if let Some(LinkEvent::Down { peer, .. }) = events.recv().await {
                return peer;
            }
        }
    })
    .await
    .ok()
}

/// Whether `muxer`'s connection ends (within 2 s) with an error.
async fn closed(muxer: &mut QuicMuxer) -> bool {
    tokio::time::timeout(
        Duration::from_secs(2),
        poll_fn(|cx| muxer.poll_inbound_unpin(cx)),
    )
    .await
    .expect("QUIC closes within 2 s")
    .is_err()
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: not within 2 s");
}

#[tokio::test]
async fn a_parked_link_carries_voice_both_ways_and_lives_until_its_peer_falls_silent() {
    let relay = configured_node(LinkConfig {
        plane_heartbeat: Some(Heartbeat {
            every: Duration::from_millis(125),
            quiet: Duration::from_millis(250),
            active: Duration::from_secs(3),
        }),
        parked_silence: SILENCE,
        ..LinkConfig::default()
    });
    let mut member = configured_node(LinkConfig {
        parked_silence: SILENCE,
        ..LinkConfig::default()
    });
    let (relay_peer, member_peer) = (relay.peer, member.peer);
    let (relay_links, member_links) = (relay.links.clone(), member.links.clone());
    let (mut at_relay, mut at_member) = (relay.datagrams, member.datagrams);
    let mut relay_events = relay_links.events();
    let mut member_events = member_links.events();
    let (addr, mut accepted) = serve(relay.transport, relay_peer).await;
    let (_, mut member_muxer) = connect(&mut member.transport, &addr).await;
    let (_, mut relay_muxer) = accepted.recv().await.unwrap();

    // Nothing parks before the plane is up both ways.
    both_ways(
        (&member_links, member_peer, &mut at_member),
        (&relay_links, relay_peer, &mut at_relay),
        b"up",
    )
    .await;
    until("the member takes up the plane", || {
        member_links.counts().plane.received > 0
    })
    .await;
    assert!(relay_links.park(&member_peer));
    assert!(relay_links.is_parked(&member_peer));
    assert!(!relay_links.park(&member_peer), "parked twice");

    // QUIC closes at both ends; the member learns why.
    assert!(closed(&mut relay_muxer).await);
    assert!(closed(&mut member_muxer).await);
    until("the member sees the link parked", || {
        member_links.is_parked(&relay_peer)
    })
    .await;
    until("QUIC state goes at both ends", || {
        relay_links.quic_stats(&member_peer).is_none()
            && member_links.quic_stats(&relay_peer).is_none()
    })
    .await;
    assert!(relay_links.parked_address(&member_peer).is_some());
    assert_eq!(
        member_links.parked_address(&relay_peer),
        Some(addr_socket(&addr))
    );

    // Voice both ways on the parked plane, for three times the silence that would end it:
    // the relay's heartbeats keep it up at the member, the member's at the relay.
    for round in 0..6u8 {
        both_ways(
            (&member_links, member_peer, &mut at_member),
            (&relay_links, relay_peer, &mut at_relay),
            &[round],
        )
        .await;
        assert_eq!(
            down_within(&mut relay_events, Duration::from_millis(750)).await,
            None
        );
        assert_eq!(down_within(&mut member_events, Duration::ZERO).await, None);
    }
    assert_eq!(relay_links.counts().plane.unauthentic, 0);

    // A new connection takes over from the parked link, with no link event.
    let (_, _member_muxer) = connect(&mut member.transport, &addr).await;
    let (_, _relay_muxer) = accepted.recv().await.unwrap();
    until("the new connection replaces the parked link", || {
        !relay_links.is_parked(&member_peer) && !member_links.is_parked(&relay_peer)
    })
    .await;
    both_ways(
        (&member_links, member_peer, &mut at_member),
        (&relay_links, relay_peer, &mut at_relay),
        b"again",
    )
    .await;
    assert_eq!(down_within(&mut relay_events, Duration::ZERO).await, None);

    // Parked again, then the member goes without a word: the relay drops it once it has been
    // silent for `SILENCE`; the member's own end went at once.
    assert!(relay_links.park(&member_peer));
    until("the member sees the link parked again", || {
        member_links.is_parked(&relay_peer)
    })
    .await;
    member_links.close(&relay_peer);
    assert_eq!(
        down_within(&mut member_events, Duration::from_millis(100)).await,
        Some(relay_peer)
    );
    assert!(!member_links.is_connected(&relay_peer));
    let started = tokio::time::Instant::now();
    assert_eq!(
        down_within(&mut relay_events, SILENCE * 2).await,
        Some(member_peer)
    );
    assert!(started.elapsed() >= SILENCE / 2, "{:?}", started.elapsed());
    assert!(!relay_links.is_connected(&member_peer));
}

const PROMISE: Heartbeat = Heartbeat {
    every: Duration::from_millis(100),
    quiet: Duration::from_millis(200),
    active: Duration::from_secs(3),
};

fn promising() -> LinkConfig {
    LinkConfig {
        plane_heartbeat: Some(PROMISE),
        ..LinkConfig::default()
    }
}

#[tokio::test]
async fn a_member_drops_a_parked_link_to_a_relay_that_stopped_beating() {
    drops_when_the_beats_stop(configured_node(promising())).await;
}

/// As a rented relay's socket is read: the read thread takes the looks, and no task does.
#[tokio::test]
async fn a_relay_read_on_a_thread_of_its_own_beats_from_that_thread() {
    drops_when_the_beats_stop(relay_node(promising())).await;
}

/// A parked link to `relay` (promising [`PROMISE`]) lives on its beats and goes when they stop.
async fn drops_when_the_beats_stop(relay: common::link::Node) {
    let promise = PROMISE;
    let mut member = configured_node(LinkConfig::default());
    let (relay_peer, member_peer) = (relay.peer, member.peer);
    let (relay_links, member_links) = (relay.links.clone(), member.links.clone());
    let mut at_relay = relay.datagrams;
    let mut member_events = member_links.events();
    let (addr, mut accepted) = serve(relay.transport, relay_peer).await;
    let (_, _member_muxer) = connect(&mut member.transport, &addr).await;
    let (_, _relay_muxer) = accepted.recv().await.unwrap();
    carries(&member_links, relay_peer, &mut at_relay, member_peer, b"up").await;
    until("the member takes up the plane", || {
        member_links.counts().plane.heartbeats_heard > 0
    })
    .await;
    assert!(relay_links.park(&member_peer));
    until("the member sees the link parked", || {
        member_links.is_parked(&relay_peer)
    })
    .await;
    // Parked, the relay's beats keep the link up (the member's own silence limit is 30 s, so
    // only the promise can end it)...
    assert_eq!(
        down_within(&mut member_events, Duration::from_secs(1)).await,
        None
    );
    // ...until they stop: four quiet gaps later the member drops it.
    relay_links.close(&member_peer);
    let started = tokio::time::Instant::now();
    assert_eq!(
        down_within(&mut member_events, Duration::from_secs(2)).await,
        Some(relay_peer)
    );
    assert!(
        started.elapsed() >= promise.quiet * 2,
        "{:?}",
        started.elapsed()
    );
}

fn addr_socket(addr: &libp2p::Multiaddr) -> std::net::SocketAddr {
    callsign_mesh::member::quic_socket_addr(addr).expect("a QUIC address")
}
