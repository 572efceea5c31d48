//! Which connection to a peer the node keeps when a second one comes up.
//!
//! Two cases look alike to the Swarm: a peer that restarted dials us while our connection to
//! its previous run has not timed out yet (the new one is the live one), and two dials that
//! crossed (each end dialed the other at about the same moment: rented relays linking to each
//! other do, every time). Keeping "the newest" in the second case closes a different connection
//! at each end, so both go and the link never comes up. Crossing dials are told apart by time,
//! and then both ends keep the connection the lower peer id dialed.

use callsign_mesh::member::LinkKind;
use libp2p::swarm::ConnectionId;
use libp2p::PeerId;
use std::time::{Duration, Instant};

/// A peer that dials us this long after our link to it came up restarted: the old link is to
/// its previous run. Shorter gaps are two dials crossing.
pub(super) const REDIAL_MEANS_RESTART: Duration = Duration::from_secs(3);

/// The connection the node holds to a peer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HeldConnection {
    pub id: ConnectionId,
    /// When it came up.
    pub since: Instant,
    pub dialed_by_us: bool,
}

impl HeldConnection {
    /// Whether a connection arriving `now` is to a new run of the peer rather than a dial
    /// crossing ours.
    pub(crate) fn outlived_by(&self, now: Instant) -> bool {
        now >= self.since + REDIAL_MEANS_RESTART
    }

    /// Whether a new connection to `peer` (dialed by us or not), up `now`, replaces this one.
    pub(crate) fn replaced_by(
        &self,
        local: &PeerId,
        peer: &PeerId,
        dialed_by_us: bool,
        now: Instant,
    ) -> bool {
        if self.outlived_by(now) || self.dialed_by_us == dialed_by_us {
            // A restart, or one side dialed twice: the newest is the one that side wants.
            return true;
        }
        // Crossing dials: the lower peer id's dial wins at both ends.
        dialed_by_us == (local < peer)
    }
}

/// Whether a new connection of `kind` to a peer we hold a `held` link to is a direct path
/// beside the circuit that upgrades it, rather than a peer that restarted.
///
/// Nobody dials a peer it is linked to, except to leave a relay circuit: a hole punch, or a
/// dial of an address the peer newly announced. A punch is a dial at both ends (the side that
/// waits for the other's packets dials with the listener role), so a plain `inbound`
/// connection beside a circuit is the peer dialing us anew: after a restart, most likely. Taken
/// for an upgrade, a restarted peer's session was never started again (chaos seed 170); taken
/// for a restart, an upgrade costs one session handshake.
pub(crate) fn upgrades_circuit(held: Option<LinkKind>, kind: LinkKind, inbound: bool) -> bool {
    kind == LinkKind::Direct && held == Some(LinkKind::Relayed) && !inbound
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crossing_dials_keep_the_same_connection_at_both_ends() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let t0 = Instant::now();
        let soon = t0 + Duration::from_millis(40);
        // Which end dialed the connection `local` kept: the held one, or the new one.
        let kept_dialer = |local: PeerId, peer: PeerId, held_dialer: PeerId, new_dialer: PeerId| {
            let held = HeldConnection {
                id: ConnectionId::new_unchecked(1),
                since: t0,
                dialed_by_us: held_dialer == local,
            };
            if held.replaced_by(&local, &peer, new_dialer == local, soon) {
                new_dialer
            } else {
                held_dialer
            }
        };
        // Each end may see either connection up first.
        for (a_first, b_first) in [(a, a), (a, b), (b, a), (b, b)] {
            let other = |first: PeerId| if first == a { b } else { a };
            let at_a = kept_dialer(a, b, a_first, other(a_first));
            let at_b = kept_dialer(b, a, b_first, other(b_first));
            assert_eq!(at_a, at_b, "both ends keep one connection");
            assert_eq!(at_a, a.min(b), "the lower peer id's dial");
        }
    }

    #[test]
    fn only_a_direct_dial_beside_a_circuit_upgrades_it() {
        use LinkKind::{Direct, Relayed};
        assert!(upgrades_circuit(Some(Relayed), Direct, false));
        // The peer dialed us: it came back (a restart), so the session starts over.
        assert!(!upgrades_circuit(Some(Relayed), Direct, true));
        assert!(!upgrades_circuit(Some(Direct), Direct, false));
        assert!(!upgrades_circuit(None, Direct, false));
        assert!(!upgrades_circuit(Some(Relayed), Relayed, true));
    }

    #[test]
    fn a_late_second_connection_is_a_restart_and_replaces_the_first() {
        let (local, peer) = (PeerId::random(), PeerId::random());
        let held = HeldConnection {
            id: ConnectionId::new_unchecked(1),
            since: Instant::now(),
            dialed_by_us: true,
        };
        let later = held.since + REDIAL_MEANS_RESTART;
        assert!(held.outlived_by(later));
        assert!(held.replaced_by(&local, &peer, false, later));
        assert!(held.replaced_by(&peer, &local, false, later));
        // One side dialing twice: its newest.
        assert!(held.replaced_by(&local, &peer, true, held.since));
    }
}
