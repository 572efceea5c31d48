//! Our circuit dials, paced per relay.
//!
//! libp2p's relay client runs at most 10 circuit handshakes at once on one relay connection
//! and fails the 11th at once. A member behind a symmetric NAT that hears of thirty members in
//! one presence round would dial them all through its relay together, lose two thirds of the
//! dials to that limit and spend its retries (`presence::dial_failed`) on a limit of its own
//! making. So at most [`MAX_IN_FLIGHT`] circuit dials run through one relay; the rest wait, in
//! order, for a dial through that relay to end: the peer linked (by that dial or any other),
//! the dial failed, or [`DIAL_TIMEOUT`] passed without news.

use super::presence::is_circuit;
use super::{DialCondition, Member, Output};
use libp2p_identity::PeerId;
use multiaddr::{Multiaddr, Protocol};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// Circuit dials through one relay at once: libp2p's per-connection limit (10) less a margin
/// for a reservation renewal and a dial someone else's presence set off.
pub(super) const MAX_IN_FLIGHT: usize = 8;
/// A dial we heard nothing of for this long no longer holds its place (the Swarm's
/// connection timeout bounds every dial at about this).
pub(super) const DIAL_TIMEOUT: Duration = Duration::from_secs(20);

/// A waiting dial: whom, where, on what condition.
type Dial = (PeerId, Vec<Multiaddr>, DialCondition);

/// The circuit dials in flight and waiting, by relay.
#[derive(Debug, Default)]
pub(crate) struct CircuitDials {
    /// Relay → dialed peer → when the dial went out.
    in_flight: BTreeMap<PeerId, BTreeMap<PeerId, Instant>>,
    /// Relay → dials waiting for a place, oldest first.
    waiting: BTreeMap<PeerId, VecDeque<Dial>>,
}

impl CircuitDials {
    /// Whether a dial to `peer` through `relay` may go out now; if not, it waits. A dial to a
    /// peer already in flight there goes (it adds no handshake we are not already counting).
    pub(crate) fn admit(&mut self, relay: PeerId, dial: Dial, now: Instant) -> Option<Dial> {
        let in_flight = self.in_flight.entry(relay).or_default();
        let queue = self.waiting.entry(relay).or_default();
        if in_flight.contains_key(&dial.0) {
            return Some(dial);
        }
        if in_flight.len() < MAX_IN_FLIGHT && queue.is_empty() {
            in_flight.insert(dial.0, now);
            return Some(dial);
        }
        if !queue.iter().any(|(p, _, _)| *p == dial.0) {
            queue.push_back(dial);
        }
        None
    }

    /// The dial to `peer` ended (linked, or failed), through whichever relay it went.
    pub(crate) fn ended(&mut self, peer: &PeerId) {
        for in_flight in self.in_flight.values_mut() {
            in_flight.remove(peer);
        }
    }

    /// Frees the places of dials that timed out or whose peer is `linked`, and returns the
    /// waiting dials that take them (dropping waiting dials made moot by a link).
    pub(crate) fn release(&mut self, now: Instant, linked: impl Fn(&PeerId) -> bool) -> Vec<Dial> {
        let mut out = Vec::new();
        for in_flight in self.in_flight.values_mut() {
            in_flight.retain(|peer, since| now < *since + DIAL_TIMEOUT && !linked(peer));
        }
        for (relay, queue) in &mut self.waiting {
            let in_flight = self.in_flight.entry(*relay).or_default();
            queue.retain(|(peer, _, condition)| {
                !(linked(peer) && *condition == DialCondition::Disconnected)
            });
            while in_flight.len() < MAX_IN_FLIGHT {
                let Some(dial) = queue.pop_front() else { break };
                in_flight.insert(dial.0, now);
                out.push(dial);
            }
        }
        self.waiting.retain(|_, queue| !queue.is_empty());
        self.in_flight.retain(|_, in_flight| !in_flight.is_empty());
        out
    }

    /// When a place frees itself by timing out, if anyone waits for one.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.waiting
            .keys()
            .filter_map(|relay| self.in_flight.get(relay)?.values().min())
            .map(|since| *since + DIAL_TIMEOUT)
            .min()
    }

    /// Dials waiting for a place, across relays.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.waiting.values().map(VecDeque::len).sum()
    }
}

/// The relay of the first circuit address: `…/p2p/<relay>/p2p-circuit[/p2p/<peer>]`.
fn circuit_relay(addrs: &[Multiaddr]) -> Option<PeerId> {
    let addr = addrs.iter().find(|a| is_circuit(a))?;
    let mut relay = None;
    for protocol in addr.iter() {
        match protocol {
            Protocol::P2p(peer) => relay = Some(peer),
            Protocol::P2pCircuit => return relay,
            _ => {}
        }
    }
    None
}

impl Member {
    /// Holds back the circuit dials among the outputs that would exceed a relay's place
    /// count, and lets waiting ones go as places free up. Runs at the end of every flush.
    pub(super) fn pace_circuit_dials(&mut self, now: Instant) {
        let links = &self.links;
        let released = self.circuit_dials.release(now, |p| links.contains_key(p));
        for (peer, addrs, condition) in released {
            self.outputs.push_back(Output::Dial {
                peer: Some(peer),
                addrs,
                condition,
            });
        }
        let outputs = std::mem::take(&mut self.outputs);
        for output in outputs {
            let Output::Dial {
                peer: Some(peer),
                addrs,
                condition,
            } = output
            else {
                self.outputs.push_back(output);
                continue;
            };
            let admitted = match circuit_relay(&addrs) {
                Some(relay) => self
                    .circuit_dials
                    .admit(relay, (peer, addrs, condition), now),
                None => Some((peer, addrs, condition)),
            };
            if let Some((peer, addrs, condition)) = admitted {
                self.outputs.push_back(Output::Dial {
                    peer: Some(peer),
                    addrs,
                    condition,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8) -> PeerId {
        let key = libp2p_identity::Keypair::ed25519_from_bytes([n; 32]).unwrap();
        key.public().to_peer_id()
    }

    fn circuit(relay: PeerId, to: PeerId) -> Multiaddr {
        format!("/ip4/192.0.2.1/udp/4000/quic-v1/p2p/{relay}/p2p-circuit/p2p/{to}")
            .parse()
            .unwrap()
    }

    fn dial(relay: PeerId, to: PeerId) -> Dial {
        (to, vec![circuit(relay, to)], DialCondition::Disconnected)
    }

    #[test]
    fn the_relay_of_a_circuit_address_is_the_peer_before_p2p_circuit() {
        let (relay, to) = (peer(1), peer(2));
        let direct: Multiaddr = format!("/ip4/192.0.2.9/udp/4000/quic-v1/p2p/{to}")
            .parse()
            .unwrap();
        assert_eq!(
            circuit_relay(&[direct.clone(), circuit(relay, to)]),
            Some(relay)
        );
        assert_eq!(circuit_relay(&[direct]), None);
    }

    #[test]
    fn dials_beyond_the_limit_wait_for_one_to_end_in_order() {
        let now = Instant::now();
        let relay = peer(1);
        let mut dials = CircuitDials::default();
        let targets: Vec<PeerId> = (10..30).map(peer).collect();
        let admitted = targets
            .iter()
            .filter(|t| dials.admit(relay, dial(relay, **t), now).is_some())
            .count();
        assert_eq!(admitted, MAX_IN_FLIGHT);
        assert_eq!(dials.waiting(), targets.len() - MAX_IN_FLIGHT);
        // The same dial again goes (in flight) or stays put (waiting): no double count.
        assert!(dials.admit(relay, dial(relay, targets[0]), now).is_some());
        assert!(dials.admit(relay, dial(relay, targets[9]), now).is_none());
        assert_eq!(dials.waiting(), targets.len() - MAX_IN_FLIGHT);
        // Another relay has places of its own.
        assert!(dials.admit(peer(2), dial(peer(2), peer(40)), now).is_some());

        dials.ended(&targets[0]);
        dials.ended(&targets[1]);
        let next: Vec<PeerId> = dials
            .release(now, |_| false)
            .into_iter()
            .map(|d| d.0)
            .collect();
        assert_eq!(next, targets[MAX_IN_FLIGHT..MAX_IN_FLIGHT + 2]);
        assert!(dials.release(now, |_| false).is_empty());
    }

    #[test]
    fn a_link_frees_a_place_and_makes_a_waiting_dial_moot() {
        let now = Instant::now();
        let relay = peer(1);
        let mut dials = CircuitDials::default();
        for n in 10..(10 + MAX_IN_FLIGHT as u8 + 2) {
            dials.admit(relay, dial(relay, peer(n)), now);
        }
        // Peer 10 (in flight) and the first waiting one linked some other way.
        let first_waiting = peer(10 + MAX_IN_FLIGHT as u8);
        let linked = |p: &PeerId| *p == peer(10) || *p == first_waiting;
        let next: Vec<PeerId> = dials
            .release(now, linked)
            .into_iter()
            .map(|d| d.0)
            .collect();
        assert_eq!(next, vec![peer(11 + MAX_IN_FLIGHT as u8)]);
        assert_eq!(dials.waiting(), 0);
    }

    #[test]
    fn a_dial_nobody_reports_on_gives_up_its_place_after_the_timeout() {
        let now = Instant::now();
        let relay = peer(1);
        let mut dials = CircuitDials::default();
        assert_eq!(dials.poll_timeout(), None);
        for n in 10..(11 + MAX_IN_FLIGHT as u8) {
            dials.admit(relay, dial(relay, peer(n)), now);
        }
        assert_eq!(dials.poll_timeout(), Some(now + DIAL_TIMEOUT));
        assert!(dials.release(now + DIAL_TIMEOUT / 2, |_| false).is_empty());
        let next = dials.release(now + DIAL_TIMEOUT, |_| false);
        assert_eq!(next.len(), 1);
        assert_eq!(dials.poll_timeout(), None);
    }
}
