//! A member relay: libp2p's relay v2 server, sized for an org, open to members only, with
//! [`CircuitAdmission`] in front of it.
//!
//! libp2p-relay 0.21 handles at most 10 circuit handshakes at once on each connection and drops
//! the eleventh without answering it: the relay's STOP stream to the destination is discarded
//! and the source waits for a reply until a 60 s wall-clock timeout. In an org that happens
//! whenever more than ten members dial one member behind a symmetric NAT at the same moment
//! (a join, a heal), and in simulation the wall-clock end of the wait made runs unrepeatable.
//! [`MemberRelay`] therefore admits at most [`MAX_HANDSHAKES`] handshakes at a time across the
//! relay and refuses the rest at once (`RESOURCE_LIMIT_EXCEEDED`); the member dials again later.

use libp2p::relay;
use libp2p::swarm::{FromSwarm, NetworkBehaviour, THandler, THandlerInEvent, ToSwarm};
use libp2p::{Multiaddr, PeerId};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

/// Circuits through one member relay, and per member (as source or destination): room for an
/// org of a few hundred where every member is behind a symmetric NAT.
const RELAY_MAX_CIRCUITS: usize = 4096;
const RELAY_MAX_CIRCUITS_PER_PEER: usize = 256;
const RELAY_MAX_RESERVATIONS: usize = 1024;

/// Circuit handshakes in flight at once, across the relay: below libp2p-relay's 10 per
/// connection, so no destination's handshakes overflow it.
pub const MAX_HANDSHAKES: usize = 10;

/// An admitted handshake whose outcome never arrived (libp2p-relay forgets a handshake silently
/// when its destination's connection closes) frees its slot after this.
const HANDSHAKE_SLOT_EXPIRY: Duration = Duration::from_secs(30);

/// Who may reserve and open circuits on this node's relay: the org's members, kept current by
/// the node as its charter changes. Anyone else is refused before a circuit exists.
#[derive(Clone, Debug, Default)]
pub struct RelayAllowList(Arc<Mutex<BTreeSet<PeerId>>>);

impl RelayAllowList {
    pub fn set(&self, members: impl IntoIterator<Item = PeerId>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = members.into_iter().collect();
    }

    pub fn allows(&self, peer: &PeerId) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(peer)
    }
}

/// The circuit handshakes this relay has admitted and not yet seen finish, oldest first.
/// Time is tokio's (virtual in simulation), so admission replays exactly.
#[derive(Clone, Debug, Default)]
pub struct CircuitAdmission(Arc<Mutex<VecDeque<(PeerId, Instant)>>>);

impl CircuitAdmission {
    fn slots(&self) -> std::sync::MutexGuard<'_, VecDeque<(PeerId, Instant)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a handshake from `src` if a slot is free.
    pub fn admit(&self, src: PeerId, now: Instant) -> bool {
        let mut slots = self.slots();
        slots.retain(|(_, at)| now.saturating_duration_since(*at) < HANDSHAKE_SLOT_EXPIRY);
        if slots.len() >= MAX_HANDSHAKES {
            return false;
        }
        slots.push_back((src, now));
        true
    }

    /// One of `src`'s handshakes finished (accepted, denied or failed).
    pub fn finished(&self, src: &PeerId) {
        let mut slots = self.slots();
        if let Some(i) = slots.iter().position(|(p, _)| p == src) {
            slots.remove(i);
        }
    }

    /// `src` has no connection left: its handshakes are gone with it.
    pub fn gone(&self, src: &PeerId) {
        self.slots().retain(|(p, _)| p != src);
    }

    pub fn in_flight(&self) -> usize {
        self.slots().len()
    }
}

/// libp2p's relay server behind the members-only allow-list and [`CircuitAdmission`].
pub struct MemberRelay {
    inner: relay::Behaviour,
    admission: CircuitAdmission,
    /// Each peer's reservation (1) and circuits (1 per end) here: its connection to us carries
    /// them, so a relay never parks it (`Links::park`).
    relaying: BTreeMap<PeerId, usize>,
}

impl MemberRelay {
    /// `timed`: real sockets (per-peer and per-IP rate limits on the wall clock); in simulation
    /// there are none, only the allow-list and admission.
    pub fn new(local: PeerId, allow: RelayAllowList, timed: bool) -> Self {
        let admission = CircuitAdmission::default();
        Self {
            inner: relay::Behaviour::new(local, relay_config(allow, admission.clone(), timed)),
            admission,
            relaying: BTreeMap::new(),
        }
    }

    /// Whether `peer` holds a reservation here or is an end of a circuit through us.
    pub fn relays_for(&self, peer: &PeerId) -> bool {
        self.relaying.contains_key(peer)
    }

    /// One more (`up`) or one fewer reservation or circuit end for each of `peers`.
    fn count(&mut self, peers: &[PeerId], up: bool) {
        for peer in peers {
            let n = self.relaying.entry(*peer).or_default();
            match up {
                true => *n += 1,
                false => *n = n.saturating_sub(1),
            }
            if *n == 0 {
                self.relaying.remove(peer);
            }
        }
    }

    /// Counts reservations and circuits ([`MemberRelay::relays_for`]), and frees the slot of a
    /// handshake that ended. Each admitted handshake ends in exactly one of: accepted, accept
    /// failed, the destination refused or unreachable (reported as `OutboundConnectFailed`,
    /// then again as a denial to the source, which is skipped here), or no reservation for the
    /// destination. Refusals at the limits were never admitted.
    fn observe(&mut self, event: &relay::Event) {
        #[allow(deprecated)]
        match *event {
            relay::Event::ReservationReqAccepted {
                src_peer_id,
                renewed: false,
            } => self.count(&[src_peer_id], true),
            relay::Event::ReservationClosed { src_peer_id }
            | relay::Event::ReservationTimedOut { src_peer_id } => {
                self.count(&[src_peer_id], false)
            }
            relay::Event::CircuitReqAccepted {
                src_peer_id,
                dst_peer_id,
            } => {
                self.admission.finished(&src_peer_id);
                self.count(&[src_peer_id, dst_peer_id], true);
            }
            relay::Event::CircuitClosed {
                src_peer_id,
                dst_peer_id,
                ..
            } => self.count(&[src_peer_id, dst_peer_id], false),
            relay::Event::CircuitReqAcceptFailed { src_peer_id, .. }
            | relay::Event::CircuitReqOutboundConnectFailed { src_peer_id, .. }
            | relay::Event::CircuitReqDenied {
                src_peer_id,
                status: relay::StatusCode::NoReservation,
                ..
            } => self.admission.finished(&src_peer_id),
            _ => {}
        }
    }
}

/// A member relay's limits. libp2p's defaults suit a public relay for strangers (16 circuits,
/// 4 per peer): a squad member behind a symmetric NAT needs one circuit per other member, so
/// the caps are sized for an org instead, and only members get past the allow-list anyway.
/// The default rate limiters read the wall clock, so in simulation (`timed` false) there are
/// none; on real sockets generous per-peer and per-IP buckets stop a member's runaway redials.
fn relay_config(allow: RelayAllowList, admission: CircuitAdmission, timed: bool) -> relay::Config {
    let reserve = allow.clone();
    let mut config = relay::Config {
        max_reservations: RELAY_MAX_RESERVATIONS,
        max_circuits: RELAY_MAX_CIRCUITS,
        max_circuits_per_peer: RELAY_MAX_CIRCUITS_PER_PEER,
        // Voice runs for hours: no byte cap, a day per circuit (the client re-dials).
        max_circuit_bytes: 0,
        max_circuit_duration: Duration::from_secs(24 * 3600),
        reservation_duration: Duration::from_secs(24 * 3600),
        reservation_rate_limiters: Vec::new(),
        circuit_src_rate_limiters: Vec::new(),
        ..relay::Config::default()
    };
    if timed {
        // Checked at compile time: a zero limit does not build.
        config = config
            .reservation_rate_per_peer(const { nz(16) }, Duration::from_secs(10))
            .reservation_rate_per_ip(const { nz(64) }, Duration::from_secs(2))
            .circuit_src_per_peer(
                const { nz(RELAY_MAX_CIRCUITS_PER_PEER as u32) },
                Duration::from_secs(1),
            )
            .circuit_src_per_ip(const { nz(1024) }, Duration::from_millis(250));
    }
    config
        .reservation_rate_limiters
        .push(Box::new(move |peer, _: &Multiaddr, _| {
            reserve.allows(&peer)
        }));
    // Last: libp2p asks the limiters in order and stops at the first refusal, so a request
    // reaching admission has passed every other limit and is about to be handled.
    config
        .circuit_src_rate_limiters
        .push(Box::new(move |peer, _: &Multiaddr, _| {
            allow.allows(&peer) && admission.admit(peer, Instant::now())
        }));
    config
}

const fn nz(n: u32) -> NonZeroU32 {
    match NonZeroU32::new(n) {
        Some(n) => n,
        None => panic!("a relay rate limit must be positive"),
    }
}

impl NetworkBehaviour for MemberRelay {
    type ConnectionHandler = THandler<relay::Behaviour>;
    type ToSwarm = relay::Event;

    delegate_connection_hooks!();

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::ConnectionClosed(closed) = &event {
            if closed.remaining_established == 0 {
                self.admission.gone(&closed.peer_id);
                self.relaying.remove(&closed.peer_id);
            }
        }
        self.inner.on_swarm_event(event);
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<relay::Event, THandlerInEvent<Self>>> {
        let polled = self.inner.poll(cx);
        if let Poll::Ready(ToSwarm::GenerateEvent(event)) = &polled {
            self.observe(event);
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_holds_a_handshake_slot_until_its_outcome_or_its_source_goes() {
        let admission = CircuitAdmission::default();
        let start = Instant::now();
        let peers: Vec<PeerId> = (0..=MAX_HANDSHAKES).map(|_| PeerId::random()).collect();
        for peer in &peers[..MAX_HANDSHAKES] {
            assert!(admission.admit(*peer, start));
        }
        let last = peers[MAX_HANDSHAKES];
        assert!(!admission.admit(last, start), "every slot is taken");
        admission.finished(&peers[0]);
        assert!(admission.admit(last, start), "an outcome frees a slot");
        assert!(!admission.admit(peers[0], start));
        admission.gone(&peers[1]);
        assert!(
            admission.admit(peers[0], start),
            "a source that left frees its slot"
        );
        assert_eq!(admission.in_flight(), MAX_HANDSHAKES);
        // A stranger's outcome frees nothing.
        admission.finished(&PeerId::random());
        assert_eq!(admission.in_flight(), MAX_HANDSHAKES);
    }

    #[test]
    fn a_handshake_whose_outcome_never_comes_expires() {
        let admission = CircuitAdmission::default();
        let start = Instant::now();
        for _ in 0..MAX_HANDSHAKES {
            assert!(admission.admit(PeerId::random(), start));
        }
        let later = start + HANDSHAKE_SLOT_EXPIRY - Duration::from_millis(1);
        assert!(!admission.admit(PeerId::random(), later));
        assert!(admission.admit(PeerId::random(), start + HANDSHAKE_SLOT_EXPIRY));
        assert_eq!(admission.in_flight(), 1);
    }
}
