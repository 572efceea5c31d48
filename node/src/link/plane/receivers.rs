//! The receiving side of the plane: every live link's key and counter window by link id,
//! shared by the `Links` registry (which adds and removes links) and the socket (which opens
//! what arrives).

use super::HEADER_LEN;
use super::{lock, nonce, parse_header, CounterWindow, PlaneDrop, PlaneKeysReceive, PlaneLink};
use crate::link::forwarding::PlaneForwarder;
use crate::link::links::{
    IncomingDatagram, Links, DATAGRAM_VERSION, FRAME_HEADER, KIND_APP, KIND_CONTROL, KIND_HEARTBEAT,
};
use bytes::Bytes;
use callsign_mesh::forward::ForwardView;
use callsign_mesh::rate::{Rate, TokenBucket};
use libp2p::PeerId;
use ring::aead::{Aad, LessSafeKey};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use tokio::sync::mpsc;

/// A link's receiving half.
struct PlaneReceiver {
    peer: PeerId,
    /// The registry's id of the connection the keys came from (`Links::register`).
    connection: usize,
    key: LessSafeKey,
    window: CounterWindow,
    link: Arc<PlaneLink>,
    /// With [`PlaneReceivers::limit`]: what this link may send, spent before the AEAD opens.
    bucket: Option<TokenBucket>,
}

/// Counters of what the plane did, across links.
#[derive(Debug, Default)]
pub struct PlaneStats {
    pub sent: AtomicU64,
    pub received: AtomicU64,
    pub malformed: AtomicU64,
    pub unknown_link: AtomicU64,
    pub unauthentic: AtomicU64,
    pub replayed: AtomicU64,
    /// Over the link's rate ([`PlaneReceivers::limit`]): dropped unopened.
    pub rate_limited: AtomicU64,
    /// Opened, but the node was not reading fast enough.
    pub queue_full: AtomicU64,
    /// Of `received`: enveloped voice a rented relay handled where it was opened
    /// (`link::forwarding`: forwarded, or refused and counted by the forwarder), without the
    /// node's task.
    pub forwarded: AtomicU64,
    /// Heartbeats sent to idle links and heard from the peer.
    pub heartbeats_sent: AtomicU64,
    pub heartbeats_heard: AtomicU64,
}

impl PlaneStats {
    pub fn snapshot(&self) -> PlaneCounts {
        PlaneCounts {
            sent: self.sent.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            malformed: self.malformed.load(Ordering::Relaxed),
            unknown_link: self.unknown_link.load(Ordering::Relaxed),
            unauthentic: self.unauthentic.load(Ordering::Relaxed),
            replayed: self.replayed.load(Ordering::Relaxed),
            rate_limited: self.rate_limited.load(Ordering::Relaxed),
            queue_full: self.queue_full.load(Ordering::Relaxed),
            forwarded: self.forwarded.load(Ordering::Relaxed),
            heartbeats_sent: self.heartbeats_sent.load(Ordering::Relaxed),
            heartbeats_heard: self.heartbeats_heard.load(Ordering::Relaxed),
        }
    }
}

/// A copy of [`PlaneStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PlaneCounts {
    pub sent: u64,
    pub received: u64,
    pub malformed: u64,
    pub unknown_link: u64,
    pub unauthentic: u64,
    pub replayed: u64,
    pub rate_limited: u64,
    pub queue_full: u64,
    pub forwarded: u64,
    pub heartbeats_sent: u64,
    pub heartbeats_heard: u64,
}

/// Every live link's receiving half, keyed by link id; shared by the `Links` registry (which
/// adds and removes links) and the socket (which opens what arrives).
///
/// What opens goes straight to the node's datagram queue, as QUIC datagrams do; only
/// application datagrams travel on the plane (pings and announcements stay on QUIC).
pub struct PlaneReceivers {
    links: Mutex<BTreeMap<u32, PlaneReceiver>>,
    stats: PlaneStats,
    incoming: mpsc::Sender<IncomingDatagram>,
    rate: OnceLock<Rate>,
    /// A rented relay's fast path: enveloped voice is forwarded here, not queued.
    forwarding: OnceLock<PlaneForwarder>,
    /// The `Links` clock's start, for when each link last carried voice.
    epoch: tokio::time::Instant,
}

impl PlaneReceivers {
    pub(crate) fn new(
        incoming: mpsc::Sender<IncomingDatagram>,
        epoch: tokio::time::Instant,
    ) -> Self {
        Self {
            epoch,
            links: Mutex::default(),
            stats: PlaneStats::default(),
            incoming,
            rate: OnceLock::new(),
            forwarding: OnceLock::new(),
        }
    }

    /// Forwards enveloped voice with `forwarder` from now on. Set once; later calls are
    /// ignored.
    pub(crate) fn forward_with(&self, forwarder: PlaneForwarder) {
        let _ = self.forwarding.set(forwarder);
    }

    /// The charter [`PlaneReceivers::forward_with`]'s forwarder checks against from now on.
    pub(crate) fn set_forward_view(&self, view: Arc<ForwardView>) {
        if let Some(forwarding) = self.forwarding.get() {
            forwarding.set_view(view);
        }
    }

    /// Holds every link to `rate` datagrams (voice and heartbeats), checked before anything is
    /// decrypted, so a member flooding a relay costs it a lookup per datagram, not an AEAD.
    /// Set once; later calls are ignored.
    pub(crate) fn limit(&self, rate: Rate) {
        let _ = self.rate.set(rate);
    }

    fn links(&self) -> MutexGuard<'_, BTreeMap<u32, PlaneReceiver>> {
        lock(&self.links)
    }

    /// Starts taking datagrams for a connection's keys. False if another live link has the same
    /// id (a 1 in 2³² chance): that link then stays on QUIC datagrams.
    pub(crate) fn add(&self, peer: PeerId, connection: usize, keys: PlaneKeysReceive) -> bool {
        let mut links = self.links();
        let id = keys.id();
        if links.contains_key(&id) {
            return false;
        }
        let (key, link) = keys.into_parts();
        links.insert(
            id,
            PlaneReceiver {
                peer,
                connection,
                key,
                window: CounterWindow::default(),
                link,
                bucket: None,
            },
        );
        true
    }

    /// Stops taking datagrams for a closed connection.
    pub(crate) fn remove(&self, connection: usize) {
        self.links().retain(|_, r| r.connection != connection);
    }

    pub fn stats(&self) -> &PlaneStats {
        &self.stats
    }

    pub fn counts(&self) -> PlaneCounts {
        self.stats.snapshot()
    }

    /// Opens a datagram that arrived from `from` and hands it to the node. Never panics on
    /// what arrives; every drop is counted by reason.
    pub(crate) fn receive(&self, datagram: &[u8], from: SocketAddr) {
        let counter = match self.open(datagram, from) {
            Ok(None) => &self.stats.heartbeats_heard,
            Ok(Some(opened)) => self.deliver(opened),
            Err(PlaneDrop::Malformed) => &self.stats.malformed,
            Err(PlaneDrop::UnknownLink) => &self.stats.unknown_link,
            Err(PlaneDrop::Unauthentic) => &self.stats.unauthentic,
            Err(PlaneDrop::Replayed) => &self.stats.replayed,
            Err(PlaneDrop::RateLimited) => &self.stats.rate_limited,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Forwards an opened datagram here if it is a rented relay's enveloped voice, else queues
    /// it for the node; returns the counter it counts under.
    fn deliver(&self, opened: IncomingDatagram) -> &AtomicU64 {
        let here = !opened.control
            && self.forwarding.get().is_some_and(|f| {
                f.forward(
                    &opened.peer,
                    &opened.payload,
                    opened.received_at,
                    &self.stats,
                )
            });
        if here {
            self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
            return &self.stats.received;
        }
        match self.incoming.try_send(opened) {
            Ok(()) => &self.stats.received,
            Err(_) => &self.stats.queue_full,
        }
    }

    /// The application datagram inside, or `None` for a heartbeat.
    fn open(
        &self,
        datagram: &[u8],
        from: SocketAddr,
    ) -> Result<Option<IncomingDatagram>, PlaneDrop> {
        let (id, counter) = parse_header(datagram)?;
        let mut links = self.links();
        let link = links.get_mut(&id).ok_or(PlaneDrop::UnknownLink)?;
        let clock = tokio::time::Instant::now();
        let now = clock.into_std();
        if let Some(rate) = self.rate.get() {
            // Whoever knows the link id spends its tokens: only the two ends and the path
            // between them, which could as well drop the datagrams.
            let bucket = link
                .bucket
                .get_or_insert_with(|| TokenBucket::new(*rate, now));
            if !bucket.take(*rate, now) {
                return Err(PlaneDrop::RateLimited);
            }
        }
        if !link.window.check(counter) {
            return Err(PlaneDrop::Replayed);
        }
        let (header, sealed) = datagram.split_at(HEADER_LEN);
        let mut body = sealed.to_vec();
        let plain = link
            .key
            .open_in_place(nonce(counter), Aad::from(header), &mut body)
            .map_err(|_| PlaneDrop::Unauthentic)?;
        // Authentic, so the peer has the plane: answer on it, and where it now is.
        let len = plain.len();
        link.window.accept(counter);
        link.link.heard_from(from);
        if len < FRAME_HEADER || body[0] != DATAGRAM_VERSION {
            return Err(PlaneDrop::Malformed);
        }
        let control = match body[1] {
            KIND_APP => {
                link.link.voice_at(Links::clock_ms_at(self.epoch, clock));
                false
            }
            KIND_CONTROL if len > FRAME_HEADER => true,
            KIND_HEARTBEAT if len == FRAME_HEADER => return Ok(None),
            _ => return Err(PlaneDrop::Malformed),
        };
        body.truncate(len);
        let payload = Bytes::from(body).slice(FRAME_HEADER..);
        Ok(Some(IncomingDatagram {
            peer: link.peer,
            payload,
            received_at: now,
            control,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::plane::{PlaneKeys, EXPORT_LEN, OVERHEAD};
    use std::time::Duration;

    const FROM: SocketAddr = SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)),
        4000,
    );

    /// Both ends of one link: (client link, client receivers), (server link, server receivers).
    struct Ends {
        client: Arc<PlaneLink>,
        server: Arc<PlaneLink>,
        at_client: PlaneReceivers,
        at_server: PlaneReceivers,
        to_client: mpsc::Receiver<IncomingDatagram>,
        to_server: mpsc::Receiver<IncomingDatagram>,
    }

    fn ends(peer: PeerId) -> Ends {
        let okm: [u8; EXPORT_LEN] = std::array::from_fn(|i| (i * 7 + 1) as u8);
        let side = |client: bool| {
            let (link, receive) =
                PlaneLink::new(PlaneKeys::from_exported(&okm, client).unwrap(), FROM);
            let (tx, rx) = mpsc::channel(16);
            let receivers = PlaneReceivers::new(tx, tokio::time::Instant::now());
            assert!(receivers.add(peer, 1, receive));
            (link, receivers, rx)
        };
        let (client, at_client, to_client) = side(true);
        let (server, at_server, to_server) = side(false);
        Ends {
            client,
            server,
            at_client,
            at_server,
            to_client,
            to_server,
        }
    }

    fn sealed(link: &PlaneLink, frame: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        link.seal_into(frame, &mut out);
        out
    }

    #[test]
    fn a_sealed_datagram_opens_once_and_only_at_the_other_end() {
        let peer = PeerId::random();
        let mut e = ends(peer);
        let datagram = sealed(&e.client, b"\x01\x00voice");
        assert_eq!(datagram.len(), 7 + OVERHEAD);
        assert!(!e.server.is_ready());
        e.at_server.receive(&datagram, FROM);
        let got = e.to_server.try_recv().unwrap();
        assert_eq!((got.peer, &got.payload[..]), (peer, &b"voice"[..]));
        assert!(e.server.is_ready(), "a peer that uses the plane has it");
        // The same bytes again are a replay.
        e.at_server.receive(&datagram, FROM);
        assert!(e.to_server.try_recv().is_err());
        assert_eq!(e.at_server.counts().replayed, 1);
        // Keys differ per direction: the client's receivers do not take its own datagram.
        e.at_client.receive(&datagram, FROM);
        assert!(e.to_client.try_recv().is_err());
        assert_eq!(e.at_client.counts().unknown_link, 1);
        // The other direction works too.
        e.at_client
            .receive(&sealed(&e.server, b"\x01\x00back"), FROM);
        assert_eq!(&e.to_client.try_recv().unwrap().payload[..], b"back");
    }

    #[test]
    fn a_link_over_its_rate_is_dropped_before_it_is_opened() {
        let mut e = ends(PeerId::random());
        e.at_server.limit(Rate::new(10, 5));
        for _ in 0..20 {
            e.at_server
                .receive(&sealed(&e.client, b"\x01\x00flood"), FROM);
        }
        let mut delivered = 0;
        while e.to_server.try_recv().is_ok() {
            delivered += 1;
        }
        // The burst, and at most one more if the loop took over 100 ms.
        assert!((5..=6).contains(&delivered), "{delivered}");
        let counts = e.at_server.counts();
        assert_eq!(counts.rate_limited, 20 - delivered);
        // Refused datagrams were never opened: nothing counted them unauthentic or replayed.
        assert_eq!(counts.unauthentic + counts.replayed, 0);
        // The other direction has its own bucket (none here).
        for _ in 0..10 {
            e.at_client
                .receive(&sealed(&e.server, b"\x01\x00back"), FROM);
        }
        assert_eq!(e.at_client.counts().received, 10);
    }

    #[test]
    fn every_flipped_bit_is_refused_and_counted() {
        let mut e = ends(PeerId::random());
        let datagram = sealed(&e.client, b"\x01\x00abc");
        for bit in 0..datagram.len() * 8 {
            let mut bad = datagram.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            e.at_server.receive(&bad, FROM);
        }
        assert!(e.to_server.try_recv().is_err());
        let c = e.at_server.counts();
        assert_eq!(c.received, 0);
        assert_eq!(
            c.malformed + c.unknown_link + c.unauthentic + c.replayed,
            datagram.len() as u64 * 8
        );
        assert!(c.unauthentic > 0 && c.unknown_link > 0 && c.malformed > 0);
        // Short and empty inputs are malformed, not a panic.
        for n in 0..OVERHEAD {
            e.at_server.receive(&datagram[..n], FROM);
        }
        assert_eq!(
            e.at_server.counts().malformed,
            c.malformed + OVERHEAD as u64
        );
        // The genuine datagram still opens: forgeries did not move the window.
        e.at_server.receive(&datagram, FROM);
        assert!(e.to_server.try_recv().is_ok());
    }

    #[test]
    fn an_authentic_datagram_is_voice_lossy_control_a_heartbeat_or_malformed() {
        let mut e = ends(PeerId::random());
        for frame in [
            &b""[..],
            b"\x01",
            b"\x02\x00v",
            b"\x01\x01ping",
            b"\x01\x04x",
            b"\x01\x05",
        ] {
            e.at_server.receive(&sealed(&e.client, frame), FROM);
        }
        assert!(e.to_server.try_recv().is_err());
        assert_eq!(e.at_server.counts().malformed, 6);
        // Voice and lossy control (a control message) are told apart.
        e.at_server
            .receive(&sealed(&e.client, b"\x01\x00voice"), FROM);
        e.at_server
            .receive(&sealed(&e.client, b"\x01\x05control"), FROM);
        let voice = e.to_server.try_recv().unwrap();
        let control = e.to_server.try_recv().unwrap();
        assert_eq!((&voice.payload[..], voice.control), (&b"voice"[..], false));
        assert_eq!(
            (&control.payload[..], control.control),
            (&b"control"[..], true)
        );
        // An empty heartbeat is liveness only.
        assert!(e.server.take_heard());
        e.at_server.receive(&sealed(&e.client, b"\x01\x04"), FROM);
        assert!(e.to_server.try_recv().is_err());
        assert_eq!(e.at_server.counts().heartbeats_heard, 1);
        assert!(e.server.take_heard() && !e.server.take_heard());
        assert!(e.client.quiet_for(0, 125));
        e.client.sent_at(1000);
        assert!(!e.client.quiet_for(1100, 125) && e.client.quiet_for(1125, 125));
    }

    #[test]
    fn the_destination_follows_migrations_and_authentic_roaming() {
        let e = ends(PeerId::random());
        let moved: SocketAddr = "198.51.100.7:5000".parse().unwrap();
        assert_eq!(e.server.destination(FROM), FROM);
        // A plane datagram from a new address moves it (only once authenticated).
        let mut forged = sealed(&e.client, b"\x01\x00x");
        let last = forged.len() - 1;
        forged[last] ^= 1;
        e.at_server.receive(&forged, moved);
        assert_eq!(e.server.destination(FROM), FROM);
        e.at_server.receive(&sealed(&e.client, b"\x01\x00x"), moved);
        assert_eq!(e.server.destination(FROM), moved);
        // QUIC migrating the connection later moves it again.
        let migrated: SocketAddr = "203.0.113.9:6000".parse().unwrap();
        assert_eq!(e.server.destination(migrated), migrated);
    }

    #[test]
    fn announcements_are_spaced() {
        let e = ends(PeerId::random());
        let t0 = tokio::time::Instant::now();
        let every = Duration::from_secs(1);
        assert!(e.client.should_announce(t0, every));
        assert!(!e.client.should_announce(t0 + every / 2, every));
        assert!(e.client.should_announce(t0 + every, every));
    }
}
