//! The voice plane: link datagrams sealed once with a per-link key and sent as plain UDP on the
//! QUIC endpoint's own socket, beside the QUIC connection they belong to.
//!
//! Why: a relay forwarding one packet to a hundred subscribers paid, per copy, quinn's whole
//! per-packet path (packet building, sent-packet tracking, ACKs coming back, loss timers) and
//! one system call. Voice needs none of that: it is never retransmitted and its rate is set by
//! the codec. So once both ends of a QUIC connection have the plane, datagrams go as
//! `header | AEAD(link datagram)`: one AES-256-GCM per copy, no acknowledgement, and a relay
//! hands all copies of a packet to the kernel in one `sendmmsg` ([`super::batch`]).
//!
//! What is kept from QUIC:
//! - **Keys and identity.** Both directions' keys and link ids come from the connection's TLS
//!   exporter (RFC 8446 §7.5, label [`EXPORTER_LABEL`]), the way SRTP is keyed from DTLS. Only
//!   the two ends of that TLS session know them, so a datagram that opens came from the peer
//!   the connection authenticated.
//! - **Replay protection.** Each direction numbers its datagrams; the counter is the AEAD nonce
//!   and the receiver keeps a window of the ones it has taken ([`CounterWindow`]).
//! - **Liveness and addresses.** The QUIC connection stays up (keep-alives, control streams);
//!   when it closes, its plane keys go with it. A peer's plane address follows the source of
//!   its latest authenticated datagram (as WireGuard roams) and the connection's migrations.
//!
//! Wire format (docs/protocol.md, "Voice plane"), all integers big-endian:
//! `0x11 | link id (4) | counter (8) | ciphertext | tag (16)`, the first 13 bytes authenticated
//! as associated data. The first byte has QUIC's fixed bit (0x40) clear, so it cannot be a QUIC
//! packet (the endpoint does not allow greasing that bit); the socket takes these out before
//! quinn sees them. The plaintext is a link datagram exactly as it would travel in a QUIC
//! DATAGRAM frame (`links`: version, kind, body).
//!
//! A peer uses the plane only after it has heard the other end announce it (link datagram kind
//! `PLANE_READY` over QUIC), so an endpoint without it is never sent one.
//!
//! **Heartbeats.** A relay must be seen to die fast (members fail over), which QUIC alone did
//! with a short idle timeout and keep-alive pings every 125 ms on every link: two packets
//! through quinn per link and period even while voice flowed beside it. Instead, a relay's
//! announcement carries a heartbeat promise (`link::heartbeat`: fast on links with recent
//! voice, slower on quiet ones); it sends an empty plane datagram (kind `HEARTBEAT`) on each
//! link it sent nothing on for that long, and the member closes a link that stays silent for
//! [`SILENT_BEATS`] promised gaps. Voice itself is the heartbeat while it flows, and nothing
//! is acknowledged.

mod receivers;
mod window;

pub use receivers::{PlaneCounts, PlaneReceivers, PlaneStats};
pub use window::CounterWindow;

use crate::link::heartbeat::Heartbeat;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// First byte of a voice-plane datagram (version 1). Bit 0x40 is clear: not QUIC.
pub const PLANE_V1: u8 = 0x11;
/// The TLS exporter label both ends derive the plane's keys with.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-callsign-voice-plane-v1";
/// Marker, link id, counter.
pub const HEADER_LEN: usize = 1 + 4 + 8;
/// AES-256-GCM tag.
pub const TAG_LEN: usize = 16;
/// Bytes the plane adds to a link datagram.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// Promised heartbeat gaps without a word from the peer after which its link is closed.
pub const SILENT_BEATS: u32 = 4;

const KEY_LEN: usize = 32;
/// Exported bytes: a key and a link id per direction.
pub(crate) const EXPORT_LEN: usize = 2 * (KEY_LEN + 4);

/// Why a datagram that looked like the plane's was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlaneDrop {
    /// Shorter than a header and a tag, or another version.
    Malformed,
    /// No live link has this id.
    UnknownLink,
    /// The tag did not verify: forged, corrupted, or keyed for another link.
    Unauthentic,
    /// Already taken, or older than the window.
    Replayed,
    /// Over the link's rate: dropped before it was opened.
    RateLimited,
}

/// The plane's keys for one QUIC connection, both directions.
pub struct PlaneKeys {
    send: PlaneSender,
    receive_key: LessSafeKey,
    receive_id: u32,
}

impl PlaneKeys {
    /// Derives both directions from the connection's TLS exporter: the client's send key is the
    /// server's receive key and the other way round. `None` if the exporter refuses (the
    /// handshake is not complete).
    pub fn derive(connection: &quinn::Connection) -> Option<Self> {
        let mut okm = [0u8; EXPORT_LEN];
        connection
            .export_keying_material(&mut okm, EXPORTER_LABEL, b"")
            .ok()?;
        Self::from_exported(&okm, connection.side().is_client())
    }

    /// The keys from exported bytes: the client-to-server half first.
    pub(crate) fn from_exported(okm: &[u8; EXPORT_LEN], client: bool) -> Option<Self> {
        let (to_server, to_client) = okm.split_at(KEY_LEN + 4);
        let (send, receive) = if client {
            (to_server, to_client)
        } else {
            (to_client, to_server)
        };
        let key = |half: &[u8]| {
            UnboundKey::new(&AES_256_GCM, &half[..KEY_LEN])
                .ok()
                .map(LessSafeKey::new)
        };
        let id = |half: &[u8]| u32::from_be_bytes([half[32], half[33], half[34], half[35]]);
        Some(Self {
            send: PlaneSender {
                key: key(send)?,
                id: id(send),
                next: AtomicU64::new(0),
            },
            receive_key: key(receive)?,
            receive_id: id(receive),
        })
    }
}

/// One link's sending half and where the peer is.
///
/// Laid out in this order (`repr(C)`): what every copy a relay sends reads (ready, the
/// destination, the send time) shares the first cache lines, and the key follows them.
#[repr(C)]
pub struct PlaneLink {
    /// The peer announced the plane (or used it): datagrams to it may go on the plane.
    ready: AtomicBool,
    /// Something authentic arrived since the watchdog last looked.
    heard: AtomicBool,
    /// When a datagram last left on this link, ms on the `Links` clock (`u64::MAX`: never).
    last_sent_ms: AtomicU64,
    /// When voice (an application datagram) last went either way on the plane, ms on the
    /// `Links` clock (`u64::MAX`: never): the heartbeat is fast only after voice.
    last_voice_ms: AtomicU64,
    /// How many times `address.current` has changed: a relay's copy lists keep each link's
    /// destination and look here, not in the lock, whether it still holds
    /// ([`PlaneLink::cached_destination`]).
    address_changes: AtomicU32,
    /// Where plane datagrams go: the connection's address, or the source of the peer's latest
    /// authenticated plane datagram if that came later.
    address: Mutex<Addresses>,
    send: PlaneSender,
    /// The heartbeat the peer promised, if any.
    peer_heartbeat: Mutex<Option<Heartbeat>>,
    /// The peer's announcement arrived (with a promise or without).
    peer_announced: AtomicBool,
    /// When this end last announced the plane to the peer (tokio time).
    announced: Mutex<Option<tokio::time::Instant>>,
    /// Woken when an authenticated datagram comes from a new address.
    moved: tokio::sync::Notify,
}

struct Addresses {
    /// The connection's remote address when last looked at.
    quic: SocketAddr,
    /// Where to send.
    current: SocketAddr,
}

impl PlaneLink {
    pub(crate) fn new(keys: PlaneKeys, remote: SocketAddr) -> (Arc<Self>, PlaneKeysReceive) {
        let link = Arc::new(Self {
            send: keys.send,
            address: Mutex::new(Addresses {
                quic: remote,
                current: remote,
            }),
            ready: AtomicBool::new(false),
            announced: Mutex::new(None),
            moved: tokio::sync::Notify::new(),
            last_sent_ms: AtomicU64::new(u64::MAX),
            last_voice_ms: AtomicU64::new(u64::MAX),
            address_changes: AtomicU32::new(0),
            heard: AtomicBool::new(false),
            peer_heartbeat: Mutex::new(None),
            peer_announced: AtomicBool::new(false),
        });
        let receive = PlaneKeysReceive {
            key: keys.receive_key,
            id: keys.receive_id,
            link: link.clone(),
        };
        (link, receive)
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub(crate) fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// The peer's announcement arrived.
    pub(crate) fn set_peer_announced(&self) {
        self.peer_announced.store(true, Ordering::Relaxed);
    }

    /// Whether the peer's announcement has arrived (its datagrams may come before it: a lost
    /// announcement leaves this end using the plane without knowing the peer's promise).
    pub(crate) fn peer_announced(&self) -> bool {
        self.peer_announced.load(Ordering::Relaxed)
    }

    /// What the peer promised (its announcement).
    pub(crate) fn set_peer_heartbeat(&self, promise: Heartbeat) {
        *lock(&self.peer_heartbeat) = Some(promise);
    }

    /// The heartbeat the peer promised, if any.
    pub(crate) fn peer_heartbeat(&self) -> Option<Heartbeat> {
        *lock(&self.peer_heartbeat)
    }

    /// A datagram left at `now_ms`.
    pub(crate) fn sent_at(&self, now_ms: u64) {
        self.last_sent_ms.store(now_ms, Ordering::Relaxed);
    }

    /// Voice left at `now_ms`: a datagram ([`PlaneLink::sent_at`]) that keeps the heartbeat
    /// fast.
    pub(crate) fn sent_voice_at(&self, now_ms: u64) {
        self.sent_at(now_ms);
        self.voice_at(now_ms);
    }

    /// Voice arrived at `now_ms`.
    pub(crate) fn voice_at(&self, now_ms: u64) {
        self.last_voice_ms.store(now_ms, Ordering::Relaxed);
    }

    /// When voice last went either way (`u64::MAX`: never).
    pub(crate) fn last_voice_ms(&self) -> u64 {
        self.last_voice_ms.load(Ordering::Relaxed)
    }

    /// When a datagram last left (`u64::MAX`: never), ms on the `Links` clock.
    pub(crate) fn last_sent_ms(&self) -> u64 {
        self.last_sent_ms.load(Ordering::Relaxed)
    }

    /// Whether nothing left for `quiet_ms` up to `now_ms`.
    pub(crate) fn quiet_for(&self, now_ms: u64, quiet_ms: u64) -> bool {
        match self.last_sent_ms.load(Ordering::Relaxed) {
            u64::MAX => true,
            at => now_ms.saturating_sub(at) >= quiet_ms,
        }
    }

    /// Whether anything authentic arrived since the last call.
    pub(crate) fn take_heard(&self) -> bool {
        self.heard.swap(false, Ordering::Relaxed)
    }

    /// Whether to announce the plane to the peer now: not more than once per `every`.
    pub(crate) fn should_announce(&self, now: tokio::time::Instant, every: Duration) -> bool {
        let mut last = lock(&self.announced);
        if last.is_some_and(|at| now.saturating_duration_since(at) < every) {
            return false;
        }
        *last = Some(now);
        true
    }

    /// The plane was announced to the peer at `now` (the first time, as the link registers).
    pub(crate) fn announced_at(&self, now: tokio::time::Instant) {
        *lock(&self.announced) = Some(now);
    }

    /// Where to send, given the connection's remote address now: a QUIC migration since the
    /// last look wins, as does a later authenticated plane datagram from elsewhere.
    pub(crate) fn destination(&self, quic_now: SocketAddr) -> SocketAddr {
        let mut a = lock(&self.address);
        if a.quic != quic_now {
            a.quic = quic_now;
            if a.current != quic_now {
                a.current = quic_now;
                self.address_changes.fetch_add(1, Ordering::Release);
            }
        }
        a.current
    }

    /// [`PlaneLink::last_destination`] through `cache`, what an earlier call found: the lock
    /// is taken only if the destination changed since. Why: a relay sends a copy per
    /// subscriber per packet, and taking each link's lock (two atomic writes to a line the
    /// processor had to fetch) was most of its per-copy work besides the sealing.
    pub(crate) fn cached_destination(&self, cache: &mut Option<(u32, SocketAddr)>) -> SocketAddr {
        let changes = self.address_changes.load(Ordering::Acquire);
        match cache {
            Some((seen, address)) if *seen == changes => *address,
            _ => {
                // A change between the load and the lock is seen at the next call.
                let address = self.last_destination();
                *cache = Some((changes, address));
                address
            }
        }
    }

    /// Where to send, as of the last [`PlaneLink::destination`] or authenticated datagram.
    pub(crate) fn last_destination(&self) -> SocketAddr {
        lock(&self.address).current
    }

    /// An authentic datagram came from `from`: the peer has the plane, is alive, and is there.
    fn heard_from(&self, from: SocketAddr) {
        self.set_ready();
        self.heard.store(true, Ordering::Relaxed);
        let mut a = lock(&self.address);
        if a.current != from {
            a.current = from;
            self.address_changes.fetch_add(1, Ordering::Release);
            self.moved.notify_one();
        }
    }

    /// Waits until the peer's authenticated datagrams come from a new address; returns it.
    pub(crate) async fn moved(&self) -> SocketAddr {
        self.moved.notified().await;
        lock(&self.address).current
    }

    /// Asks the processor to start loading this link's state (the key among it) into the
    /// cache, so a relay sealing copies for many links in a row does not wait for each link's
    /// state in turn. A hint: it changes no result.
    pub(crate) fn prefetch(&self) {
        self.prefetch_first(std::mem::size_of::<Self>());
    }

    /// [`PlaneLink::prefetch`] of the first cache line only: readiness and the send and voice
    /// times, which is all a heartbeat's look reads of a link it does not beat.
    pub(crate) fn prefetch_times(&self) {
        self.prefetch_first(1);
    }

    /// Prefetches the cache lines holding `self`'s first `bytes` bytes.
    fn prefetch_first(&self, bytes: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let start = (self as *const Self).cast::<i8>();
            for offset in (0..bytes.min(std::mem::size_of::<Self>())).step_by(64) {
                // SAFETY: a prefetch never faults and reads nothing into the program; the
                // address is inside `self` all the same.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(start.add(offset)) };
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = bytes;
    }

    /// Appends `frame` sealed as one plane datagram to `out`.
    pub(crate) fn seal_into(&self, frame: &[u8], out: &mut Vec<u8>) {
        self.send.seal_into(frame, out)
    }
}

/// The receiving half of [`PlaneKeys`], for [`PlaneReceivers::add`].
pub(crate) struct PlaneKeysReceive {
    key: LessSafeKey,
    id: u32,
    link: Arc<PlaneLink>,
}

impl PlaneKeysReceive {
    /// The link id datagrams for these keys carry.
    pub(crate) fn id(&self) -> u32 {
        self.id
    }

    pub(crate) fn into_parts(self) -> (LessSafeKey, Arc<PlaneLink>) {
        (self.key, self.link)
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One direction's sending half: the peer's link id, the next counter, the key (in this order,
/// beside [`PlaneLink`]'s hot fields).
#[repr(C)]
struct PlaneSender {
    id: u32,
    next: AtomicU64,
    key: LessSafeKey,
}

impl PlaneSender {
    fn seal_into(&self, frame: &[u8], out: &mut Vec<u8>) {
        let counter = self.next.fetch_add(1, Ordering::Relaxed);
        let start = out.len();
        out.push(PLANE_V1);
        out.extend_from_slice(&self.id.to_be_bytes());
        out.extend_from_slice(&counter.to_be_bytes());
        out.extend_from_slice(frame);
        let (header, body) = out[start..].split_at_mut(HEADER_LEN);
        // Sealing fails only for inputs beyond AES-GCM's limits (64 GiB), not a datagram.
        if let Ok(tag) =
            self.key
                .seal_in_place_separate_tag(nonce(counter), Aad::from(&header[..]), body)
        {
            out.extend_from_slice(tag.as_ref());
        } else {
            out.truncate(start);
        }
    }
}

pub(crate) fn nonce(counter: u64) -> Nonce {
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

/// Whether a datagram that is not QUIC is the plane's.
pub fn is_plane(datagram: &[u8]) -> bool {
    datagram.first() == Some(&PLANE_V1)
}

/// Link id and counter of a plane datagram.
pub fn parse_header(datagram: &[u8]) -> Result<(u32, u64), PlaneDrop> {
    if datagram.len() < OVERHEAD || datagram[0] != PLANE_V1 {
        return Err(PlaneDrop::Malformed);
    }
    let id = u32::from_be_bytes([datagram[1], datagram[2], datagram[3], datagram[4]]);
    let mut counter = [0u8; 8];
    counter.copy_from_slice(&datagram[5..HEADER_LEN]);
    Ok((id, u64::from_be_bytes(counter)))
}

/// Plane datagrams sealed one after another into one buffer, each with its destination, for
/// one [`LinkSocket::send_many`](crate::link::LinkSocket::send_many).
#[derive(Default)]
pub(crate) struct SealedBatch {
    bytes: Vec<u8>,
    /// Destination and end offset in `bytes` of each datagram.
    ends: Vec<(SocketAddr, usize)>,
}

impl SealedBatch {
    pub(crate) fn with_capacity(datagrams: usize, frame_len: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(datagrams * (frame_len + OVERHEAD)),
            ends: Vec::with_capacity(datagrams),
        }
    }

    /// Seals `frame` for `link`, to go to `to`.
    pub(crate) fn push(&mut self, link: &PlaneLink, frame: &[u8], to: SocketAddr) {
        link.seal_into(frame, &mut self.bytes);
        self.ends.push((to, self.bytes.len()));
    }

    /// Makes room for `datagrams` more sealed frames of `frame_len` bytes.
    pub(crate) fn reserve(&mut self, datagrams: usize, frame_len: usize) {
        self.bytes.reserve(datagrams * (frame_len + OVERHEAD));
        self.ends.reserve(datagrams);
    }

    /// Empties it, keeping its buffers for the next packet's copies.
    pub(crate) fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }

    /// Each datagram and where it goes, in the order pushed.
    fn datagrams(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        let starts = std::iter::once(0).chain(self.ends.iter().map(|&(_, end)| end));
        self.ends
            .iter()
            .zip(starts)
            .map(|(&(to, end), start)| (to, &self.bytes[start..end]))
    }

    /// Sends them all; returns how many left.
    pub(crate) fn send(&self, socket: &crate::link::LinkSocket) -> usize {
        if self.ends.is_empty() {
            return 0;
        }
        socket.send_many(self.datagrams())
    }
}
