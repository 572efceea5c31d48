//! Which links have gone quiet: QUIC received nothing on them for
//! [`LINK_QUIET`](callsign_mesh::member::LINK_QUIET), told to the member (which dials a fresh
//! connection beside each) once, then every
//! [`LINK_QUIET_REPEAT`](callsign_mesh::member::LINK_QUIET_REPEAT) while they stay quiet.

use callsign_mesh::member::{LINK_QUIET, LINK_QUIET_REPEAT};
use libp2p::PeerId;
use std::collections::BTreeMap;
use std::time::Instant;

#[derive(Clone, Copy, Debug)]
struct Heard {
    /// The connection's received-datagram count when last looked at.
    count: u64,
    /// When that count last moved.
    moved: Instant,
    /// When the member was last told the link is quiet.
    told: Option<Instant>,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct QuietLinks {
    heard: BTreeMap<PeerId, Heard>,
}

impl QuietLinks {
    /// Takes the links' received-datagram counts at `now` (a peer missing has no QUIC link)
    /// and returns the quiet peers to tell the member about now.
    pub fn look(&mut self, counts: &BTreeMap<PeerId, u64>, now: Instant) -> Vec<PeerId> {
        self.heard.retain(|peer, _| counts.contains_key(peer));
        let mut quiet = Vec::new();
        for (peer, count) in counts {
            let heard = self.heard.entry(*peer).or_insert(Heard {
                count: *count,
                moved: now,
                told: None,
            });
            // A new connection starts counting afresh: any change is news.
            if heard.count != *count {
                *heard = Heard {
                    count: *count,
                    moved: now,
                    told: None,
                };
                continue;
            }
            let due = heard
                .told
                .is_none_or(|told| now.saturating_duration_since(told) >= LINK_QUIET_REPEAT);
            if now.saturating_duration_since(heard.moved) >= LINK_QUIET && due {
                heard.told = Some(now);
                quiet.push(*peer);
            }
        }
        quiet
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_link_that_receives_nothing_is_told_quiet_then_again_at_the_repeat() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let t0 = Instant::now();
        let mut links = QuietLinks::default();
        let mut counts = BTreeMap::from([(a, 10), (b, 10)]);
        assert!(links.look(&counts, t0).is_empty());
        let mut quiet_at = None;
        let mut told = Vec::new();
        for tenth in 1..=160u64 {
            let now = t0 + Duration::from_millis(100 * tenth);
            // `b` hears a keep-alive every 5 s; `a` nothing.
            if tenth % 50 == 0 {
                *counts.get_mut(&b).unwrap() += 1;
            }
            for peer in links.look(&counts, now) {
                assert_eq!(peer, a, "a link with keep-alives is never quiet");
                quiet_at.get_or_insert(now);
                told.push(now);
            }
        }
        assert_eq!(quiet_at, Some(t0 + LINK_QUIET));
        assert_eq!(told[1] - told[0], LINK_QUIET_REPEAT);
        // It hears again: not quiet any more, and the clock starts over.
        counts.remove(&b);
        *counts.get_mut(&a).unwrap() += 1;
        let later = t0 + Duration::from_secs(17);
        assert!(links.look(&counts, later).is_empty());
        assert!(links
            .look(&counts, later + LINK_QUIET - Duration::from_millis(1))
            .is_empty());
        assert_eq!(links.look(&counts, later + LINK_QUIET), vec![a]);
        // A link that goes is forgotten.
        counts.remove(&a);
        assert!(links.look(&counts, later + 2 * LINK_QUIET).is_empty());
    }
}
