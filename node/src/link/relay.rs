//! A member relay: libp2p's relay v2 server, sized for an org, open to members only, with
//! [`CircuitAdmission`] in front of it.
//!
//! libp2p-relay 0.21 handles at most 10 circuit handshakes at once on each connection and drops
//! the eleventh without answering it: the relay's STOP stream to the destination is discarded
//! and the source waits for a reply until a 60 s wall-clock timeout. In an org that happens
//! whenever more than ten members dial one member behind a symmetric NAT at the same moment
//! (a join, a heal), and in simulation the wall-clock end of the wait made runs unrepeatable.
//! [`MemberRelay`] therefore admits a handshake only while no destination could be asked for
//! more than [`MAX_HANDSHAKES`] at once, and refuses the rest at once
//! (`RESOURCE_LIMIT_EXCEEDED`); the member dials again later. A destination that stops
//! answering (a member that left while a partition hid its goodbye, whose connection lingers
//! until QUIC's idle timeout) must not shut the relay for everyone: its connection is closed
//! once it sits on handshakes unanswered ([`STOP_UNANSWERED`]).

use libp2p::relay;
use libp2p::swarm::{
    CloseConnection, ConnectionId, FromSwarm, NetworkBehaviour, NotifyHandler, THandler,
    THandlerInEvent, ToSwarm,
};
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

/// Circuit handshakes one destination may be asked for at once: libp2p-relay's limit per
/// connection, so no destination's handshakes overflow it.
pub const MAX_HANDSHAKES: usize = 10;

/// An admitted handshake is handed to its destination within the same turn of the relay; one
/// not handed on by now was answered at once (no reservation) and weighs on nothing.
const UNASKED_FOR: Duration = Duration::from_secs(2);

/// A destination connection with half the handshakes it may hold, the oldest unanswered this
/// long (an answer takes a round trip; this is many, lost packets and all), is not answering:
/// the relay closes it.
const STOP_UNANSWERED: Duration = Duration::from_secs(5);

/// An admitted handshake whose outcome never arrived is forgotten after this (libp2p-relay's
/// own timeout for the destination's answer).
const HANDSHAKE_SLOT_EXPIRY: Duration = Duration::from_secs(60);

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

/// The circuit handshakes this relay has admitted and not yet seen finish, oldest first, each
/// with its source and, once the relay asked the destination, the destination's connection.
/// Time is tokio's (virtual in simulation), so admission replays exactly.
#[derive(Clone, Debug, Default)]
pub struct CircuitAdmission(Arc<Mutex<VecDeque<Handshake>>>);

#[derive(Clone, Copy, Debug)]
struct Handshake {
    src: PeerId,
    at: Instant,
    /// The destination's connection the relay sent the STOP request on.
    dst: Option<ConnectionId>,
}

impl CircuitAdmission {
    fn slots(&self) -> std::sync::MutexGuard<'_, VecDeque<Handshake>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a handshake from `src` if no destination could then be asked for more than
    /// [`MAX_HANDSHAKES`] at once: those not yet handed on could all go to the busiest one.
    pub fn admit(&self, src: PeerId, now: Instant) -> bool {
        let mut slots = self.slots();
        slots.retain(|h| now.saturating_duration_since(h.at) < HANDSHAKE_SLOT_EXPIRY);
        let unasked = slots
            .iter()
            .filter(|h| h.dst.is_none() && now.saturating_duration_since(h.at) < UNASKED_FOR)
            .count();
        let mut per_destination: BTreeMap<ConnectionId, usize> = BTreeMap::new();
        for dst in slots.iter().filter_map(|h| h.dst) {
            *per_destination.entry(dst).or_default() += 1;
        }
        let busiest = per_destination.values().copied().max().unwrap_or(0);
        if unasked + busiest >= MAX_HANDSHAKES {
            return false;
        }
        slots.push_back(Handshake {
            src,
            at: now,
            dst: None,
        });
        true
    }

    /// The relay asked the destination, on `dst`, for `src`'s oldest handshake.
    pub fn asked(&self, src: &PeerId, dst: ConnectionId) {
        let mut slots = self.slots();
        if let Some(h) = slots.iter_mut().find(|h| h.src == *src && h.dst.is_none()) {
            h.dst = Some(dst);
        }
    }

    /// One of `src`'s handshakes finished: one the destination was asked for (`asked`: it
    /// answered or failed), or one answered at once (no reservation).
    pub fn finished(&self, src: &PeerId, asked: bool) {
        let mut slots = self.slots();
        let found = slots
            .iter()
            .position(|h| h.src == *src && h.dst.is_some() == asked)
            .or_else(|| slots.iter().position(|h| h.src == *src));
        if let Some(i) = found {
            slots.remove(i);
        }
    }

    /// `src` has no connection left: its handshakes are gone with it.
    pub fn gone(&self, src: &PeerId) {
        self.slots().retain(|h| h.src != *src);
    }

    /// `connection` closed: libp2p-relay drops the handshakes waiting on it as their
    /// destination without an outcome, so their slots are free now, not at expiry.
    pub fn closed(&self, connection: ConnectionId) {
        self.slots().retain(|h| h.dst != Some(connection));
    }

    /// A destination connection that is not answering (see [`STOP_UNANSWERED`]), if any.
    pub fn unanswering(&self, now: Instant) -> Option<ConnectionId> {
        let slots = self.slots();
        let mut per_destination: BTreeMap<ConnectionId, (usize, Instant)> = BTreeMap::new();
        for h in slots.iter() {
            if let Some(dst) = h.dst {
                let entry = per_destination.entry(dst).or_insert((0, h.at));
                entry.0 += 1;
                entry.1 = entry.1.min(h.at);
            }
        }
        per_destination
            .into_iter()
            .find(|(_, (count, oldest))| {
                *count >= MAX_HANDSHAKES / 2
                    && now.saturating_duration_since(*oldest) >= STOP_UNANSWERED
            })
            .map(|(dst, _)| dst)
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
    /// Whose each open connection is: a request the relay sends on a connection that is not
    /// the source's is the STOP request to the destination ([`CircuitAdmission::asked`]).
    connections: BTreeMap<ConnectionId, PeerId>,
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
            connections: BTreeMap::new(),
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
                self.admission.finished(&src_peer_id, true);
                self.count(&[src_peer_id, dst_peer_id], true);
            }
            relay::Event::CircuitClosed {
                src_peer_id,
                dst_peer_id,
                ..
            } => self.count(&[src_peer_id, dst_peer_id], false),
            relay::Event::CircuitReqAcceptFailed { src_peer_id, .. }
            | relay::Event::CircuitReqOutboundConnectFailed { src_peer_id, .. } => {
                self.admission.finished(&src_peer_id, true)
            }
            relay::Event::CircuitReqDenied {
                src_peer_id,
                status: relay::StatusCode::NoReservation,
                ..
            } => self.admission.finished(&src_peer_id, false),
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
        match &event {
            FromSwarm::ConnectionEstablished(established) => {
                self.connections
                    .insert(established.connection_id, established.peer_id);
            }
            FromSwarm::ConnectionClosed(closed) => {
                self.connections.remove(&closed.connection_id);
                self.admission.closed(closed.connection_id);
                if closed.remaining_established == 0 {
                    self.admission.gone(&closed.peer_id);
                    self.relaying.remove(&closed.peer_id);
                }
            }
            _ => {}
        }
        self.inner.on_swarm_event(event);
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<relay::Event, THandlerInEvent<Self>>> {
        if let Some(connection) = self.admission.unanswering(Instant::now()) {
            if let Some(peer_id) = self.connections.get(&connection) {
                tracing::debug!(%peer_id, ?connection, "a circuit destination stopped answering: closing its connection");
                // Its slots go when the close is reported ([`CircuitAdmission::closed`]).
                self.admission.closed(connection);
                return Poll::Ready(ToSwarm::CloseConnection {
                    peer_id: *peer_id,
                    connection: CloseConnection::One(connection),
                });
            }
            self.admission.closed(connection);
        }
        let polled = self.inner.poll(cx);
        match &polled {
            Poll::Ready(ToSwarm::GenerateEvent(event)) => self.observe(event),
            // libp2p-relay names the circuit's source as the peer of the STOP request it sends
            // on the destination's connection; every other request goes to the peer's own.
            Poll::Ready(ToSwarm::NotifyHandler {
                peer_id,
                handler: NotifyHandler::One(connection),
                ..
            }) if self
                .connections
                .get(connection)
                .is_some_and(|owner| owner != peer_id) =>
            {
                self.admission.asked(peer_id, *connection);
            }
            _ => {}
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection(n: usize) -> ConnectionId {
        ConnectionId::new_unchecked(n)
    }

    #[test]
    fn admission_holds_a_handshake_slot_until_its_outcome_or_its_source_goes() {
        let admission = CircuitAdmission::default();
        let start = Instant::now();
        let peers: Vec<PeerId> = (0..=MAX_HANDSHAKES).map(|_| PeerId::random()).collect();
        for peer in &peers[..MAX_HANDSHAKES] {
            assert!(admission.admit(*peer, start));
        }
        let last = peers[MAX_HANDSHAKES];
        assert!(
            !admission.admit(last, start),
            "any destination could be asked for all ten"
        );
        admission.finished(&peers[0], false);
        assert!(admission.admit(last, start), "an outcome frees a slot");
        assert!(!admission.admit(peers[0], start));
        admission.gone(&peers[1]);
        assert!(
            admission.admit(peers[0], start),
            "a source that left frees its slot"
        );
        assert_eq!(admission.in_flight(), MAX_HANDSHAKES);
        // A stranger's outcome frees nothing.
        admission.finished(&PeerId::random(), true);
        assert_eq!(admission.in_flight(), MAX_HANDSHAKES);
    }

    #[test]
    fn handshakes_weigh_by_the_busiest_destination_not_by_their_sum() {
        let admission = CircuitAdmission::default();
        let start = Instant::now();
        let sources: Vec<PeerId> = (0..MAX_HANDSHAKES).map(|_| PeerId::random()).collect();
        for (i, src) in sources.iter().enumerate() {
            assert!(admission.admit(*src, start));
            admission.asked(src, connection(i % 2));
        }
        // Five wait on each of two destinations: five more may come (all could go to one).
        let more = (0..MAX_HANDSHAKES)
            .filter(|_| admission.admit(PeerId::random(), start))
            .count();
        assert_eq!(more, MAX_HANDSHAKES / 2);
        // Those were answered at once (no reservation): past UNASKED_FOR they weigh nothing.
        assert!(admission.admit(PeerId::random(), start + UNASKED_FOR));
        // An answer from a destination frees its source's asked handshake, not another.
        admission.finished(&sources[0], true);
        admission.finished(&sources[2], true);
        assert_eq!(
            admission.in_flight(),
            2 * MAX_HANDSHAKES - MAX_HANDSHAKES / 2 - 1
        );
    }

    #[test]
    fn a_handshake_waiting_on_a_destination_that_goes_frees_its_slot() {
        let admission = CircuitAdmission::default();
        let start = Instant::now();
        let sources: Vec<PeerId> = (0..MAX_HANDSHAKES).map(|_| PeerId::random()).collect();
        for src in &sources {
            assert!(admission.admit(*src, start));
        }
        let (restarting, staying) = (connection(1), connection(2));
        for src in &sources[..4] {
            admission.asked(src, restarting);
        }
        admission.asked(&sources[4], staying);
        admission.closed(restarting);
        assert_eq!(admission.in_flight(), MAX_HANDSHAKES - 4);
        admission.closed(staying);
        assert_eq!(admission.in_flight(), MAX_HANDSHAKES - 5);
        // The sources still waiting were never sent on: their slots stay.
        admission.closed(connection(3));
        assert_eq!(admission.in_flight(), MAX_HANDSHAKES - 5);
    }

    #[test]
    fn a_destination_sitting_on_handshakes_is_found_unanswering() {
        let admission = CircuitAdmission::default();
        let start = Instant::now();
        for i in 0..MAX_HANDSHAKES {
            let src = PeerId::random();
            assert!(admission.admit(src, start));
            // One destination gone quiet takes half; another answers slowly.
            admission.asked(&src, connection(if i < MAX_HANDSHAKES / 2 { 7 } else { i }));
        }
        assert_eq!(admission.unanswering(start + Duration::from_secs(1)), None);
        assert_eq!(
            admission.unanswering(start + STOP_UNANSWERED),
            Some(connection(7))
        );
        admission.closed(connection(7));
        assert_eq!(admission.unanswering(start + STOP_UNANSWERED), None);
    }

    #[test]
    fn a_handshake_whose_outcome_never_comes_expires() {
        let admission = CircuitAdmission::default();
        let start = Instant::now();
        for _ in 0..MAX_HANDSHAKES {
            let src = PeerId::random();
            assert!(admission.admit(src, start));
            admission.asked(&src, connection(1));
        }
        let later = start + HANDSHAKE_SLOT_EXPIRY - Duration::from_millis(1);
        assert!(!admission.admit(PeerId::random(), later));
        assert!(admission.admit(PeerId::random(), start + HANDSHAKE_SLOT_EXPIRY));
        assert_eq!(admission.in_flight(), 1);
    }
}
