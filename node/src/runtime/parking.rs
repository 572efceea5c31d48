//! The driver's side of parked links (`link::Links::park`): which idle links a rented relay
//! parks, and which peers' links are parked, so that the QUIC connection closing under them is
//! no link going down and the next one to such a peer is a link coming back.
//!
//! A parked link is still up for the member: voice, lossy control and heartbeats ride its
//! plane. It goes down when `Links` says so (its peer fell silent). Ordered control to a parked
//! peer dials it at the plane's address; the new connection resumes the link at both ends
//! (`LinkUp::resumed`: the control session starts over, what the peer asked for stays), which
//! both ends can tell, as both parked the link.

use super::connections::HeldConnection;
use libp2p::PeerId;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// How often a relay looks for links to park.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// How long control must have been quiet on a link parked while the transport refuses
/// handshakes at its connection limit (`LinkConfig::max_connections`): members are waiting
/// for room (a relay that restarted has all of them dialing at once), and a link that went
/// quiet a moment ago is likely done (a member joins in a burst of control, then listens).
const PRESSED_AFTER: Duration = Duration::from_secs(1);
/// How often a pressed relay looks.
const PRESSED_LOOK_EVERY: Duration = Duration::from_millis(250);
/// A relay is pressed from a refused handshake until this long after the last one.
const PRESSED_FOR: Duration = Duration::from_secs(5);

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct Parking {
    /// `NodeConfig::park_idle_links`.
    after: Option<Duration>,
    /// Peers whose link is parked (this end's swarm holds no connection to them).
    parked: BTreeSet<PeerId>,
    /// When ordered control last went either way with each peer.
    control_at: BTreeMap<PeerId, Instant>,
    looked_at: Option<Instant>,
    /// Handshakes refused at the connection limit, when last looked.
    refused: u64,
    /// Until when links are parked at [`PRESSED_AFTER`].
    pressed_until: Option<Instant>,
}

impl Parking {
    pub(crate) fn new(after: Option<Duration>) -> Self {
        Self {
            after,
            parked: BTreeSet::new(),
            control_at: BTreeMap::new(),
            looked_at: None,
            refused: 0,
            pressed_until: None,
        }
    }

    /// How long after a look at `now` the next is due: [`PRESSED_LOOK_EVERY`] while pressed,
    /// else [`LOOK_EVERY`] (a relay that starts refusing handshakes is found pressed at its
    /// next look). The driver sleeps that long, not a fixed short tick: each wake-up of an
    /// idle relay is a cost of its own.
    pub(crate) fn look_every(&self, now: Instant) -> Duration {
        match self.pressed_until.is_some_and(|until| now < until) {
            true => PRESSED_LOOK_EVERY,
            false => LOOK_EVERY,
        }
    }

    /// Whether this node parks idle links at all.
    pub(crate) fn enabled(&self) -> bool {
        self.after.is_some()
    }

    /// Ordered control went to or came from `peer`.
    pub(crate) fn control(&mut self, peer: PeerId, now: Instant) {
        if self.after.is_some() {
            self.control_at.insert(peer, now);
        }
    }

    /// The last connection to `peer` closed: parked if `Links` keeps its plane.
    pub(crate) fn closed(&mut self, peer: PeerId, parked: bool) {
        self.control_at.remove(&peer);
        if parked {
            self.parked.insert(peer);
        } else {
            self.parked.remove(&peer);
        }
    }

    /// `peer`'s link is parked no more: a connection to it came up (it took over), or `Links`
    /// dropped the link (it is down). Whether it was parked.
    pub(crate) fn unpark(&mut self, peer: &PeerId) -> bool {
        self.parked.remove(peer)
    }

    /// Whether `peer`'s link is parked.
    pub(crate) fn is_parked(&self, peer: &PeerId) -> bool {
        self.parked.contains(peer)
    }

    /// Once a [`LOOK_EVERY`]: the held connections up and without ordered control for the
    /// configured time, among those `may_park` allows. While pressed (`refused`, the count of
    /// handshakes refused at the connection limit, grew within [`PRESSED_FOR`]): every
    /// [`PRESSED_LOOK_EVERY`], those quiet for [`PRESSED_AFTER`].
    pub(crate) fn idle(
        &mut self,
        now: Instant,
        refused: u64,
        connections: &BTreeMap<PeerId, HeldConnection>,
        mut may_park: impl FnMut(&PeerId) -> bool,
    ) -> Vec<PeerId> {
        let Some(after) = self.after else {
            return Vec::new();
        };
        if refused > std::mem::replace(&mut self.refused, refused) {
            self.pressed_until = Some(now + PRESSED_FOR);
        }
        let pressed = self.pressed_until.is_some_and(|until| now < until);
        let (after, every) = match pressed {
            true => (after.min(PRESSED_AFTER), PRESSED_LOOK_EVERY),
            false => (after, LOOK_EVERY),
        };
        if self
            .looked_at
            .is_some_and(|at| now.saturating_duration_since(at) < every)
        {
            return Vec::new();
        }
        self.looked_at = Some(now);
        let quiet = |at: Instant| now.saturating_duration_since(at) >= after;
        connections
            .iter()
            .filter(|(peer, held)| {
                quiet(held.since) && self.control_at.get(peer).is_none_or(|at| quiet(*at))
            })
            .map(|(peer, _)| *peer)
            .filter(|peer| may_park(peer))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::swarm::ConnectionId;

    fn held(since: Instant) -> HeldConnection {
        HeldConnection {
            id: ConnectionId::new_unchecked(1),
            since,
            dialed_by_us: false,
        }
    }

    #[test]
    fn links_idle_for_the_set_time_are_parked_and_control_postpones_it() {
        let t0 = Instant::now();
        let after = Duration::from_secs(10);
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let connections = BTreeMap::from([(a, held(t0)), (b, held(t0)), (c, held(t0))]);
        let mut parking = Parking::new(Some(after));
        parking.control(b, t0 + Duration::from_secs(5));
        // Too soon for anyone.
        assert!(parking
            .idle(t0 + Duration::from_secs(9), 0, &connections, |_| true)
            .is_empty());
        // Looked at less than a second ago: no look.
        let soon = t0 + Duration::from_millis(9_500);
        assert!(parking.idle(soon, 0, &connections, |_| true).is_empty());
        assert_eq!(
            parking.idle(t0 + after, 0, &connections, |p| *p != c),
            vec![a]
        );
        let later = t0 + Duration::from_secs(16);
        let mut idle = parking.idle(later, 0, &connections, |p| *p != c);
        idle.sort();
        let mut want = vec![a, b];
        want.sort();
        assert_eq!(idle, want);
        // A handshake refused: links quiet for a second go too, looked at more often, until
        // none has been refused for a while.
        let mut pressed = Parking::new(Some(after));
        assert_eq!(pressed.look_every(t0), LOOK_EVERY);
        let idle = pressed.idle(t0 + PRESSED_AFTER, 1, &connections, |p| *p != a);
        assert_eq!(idle.len(), 2, "{idle:?}");
        assert_eq!(pressed.look_every(t0 + PRESSED_AFTER), PRESSED_LOOK_EVERY);
        let soon = t0 + PRESSED_AFTER + PRESSED_LOOK_EVERY;
        assert_eq!(pressed.idle(soon, 1, &connections, |_| true).len(), 3);
        let calm = t0 + PRESSED_AFTER + PRESSED_FOR;
        assert!(pressed.idle(calm, 1, &connections, |_| true).is_empty());
        assert_eq!(pressed.look_every(calm), LOOK_EVERY);
        // Never, without the setting.
        let mut never = Parking::new(None);
        assert!(never.idle(later, 0, &connections, |_| true).is_empty());
    }

    #[test]
    fn a_parked_link_comes_back_with_a_connection_and_goes_when_dropped() {
        let peer = PeerId::random();
        let mut parking = Parking::new(Some(Duration::from_secs(10)));
        parking.closed(peer, true);
        assert!(parking.is_parked(&peer));
        assert!(parking.unpark(&peer));
        assert!(!parking.unpark(&peer));
        parking.closed(peer, true);
        assert!(parking.unpark(&peer));
        assert!(!parking.unpark(&peer));
        parking.closed(peer, false);
        assert!(!parking.is_parked(&peer));
    }
}
