//! The arbiter's ruling when a relay serves a half-duplex channel: requests are served in the
//! order they reach the arbiter (so crossing presses need no extra round trip), a higher
//! priority takes the floor from a lower one, and equal or lower priorities queue behind.

use super::message::{Decision, FloorRequest, Slot};
use crate::charter::Priority;
use callsign_keys::IdentityKey;
use std::collections::BTreeSet;

/// The arbiter's state for one channel.
#[derive(Debug, Default)]
pub(crate) struct Arbitration {
    holder: Option<(Slot, Priority)>,
    /// Next first.
    queue: Vec<(Slot, Priority)>,
    /// Holders that lost the floor to a higher priority and have not yet withdrawn their
    /// request: not queued again.
    revoked: BTreeSet<Slot>,
}

impl Arbitration {
    /// Brings the ruling up to date with the live requests; true if it changed. New requests
    /// (several only when the arbiter starts with a backlog) enter in rank order.
    pub(crate) fn update(&mut self, live: &[(IdentityKey, FloorRequest)]) -> bool {
        let is_live = |slot: &Slot| {
            live.iter()
                .any(|(p, r)| *p == slot.peer && r.stamp == slot.stamp)
        };
        let before = (self.holder, self.queue.clone());
        if self.holder.is_some_and(|(slot, _)| !is_live(&slot)) {
            self.holder = None;
        }
        self.queue.retain(|(slot, _)| is_live(slot));
        self.revoked.retain(is_live);
        let mut fresh: Vec<&(IdentityKey, FloorRequest)> = live
            .iter()
            .filter(|(peer, request)| {
                let slot = Slot {
                    peer: *peer,
                    stamp: request.stamp,
                };
                self.holder.map(|(s, _)| s) != Some(slot)
                    && !self.queue.iter().any(|(s, _)| *s == slot)
                    && !self.revoked.contains(&slot)
            })
            .collect();
        fresh.sort_by_key(|(peer, request)| request.rank(peer));
        for (peer, request) in fresh {
            let entry = (
                Slot {
                    peer: *peer,
                    stamp: request.stamp,
                },
                request.priority,
            );
            match self.holder {
                None => self.holder = Some(entry),
                Some((old, held)) if request.priority > held => {
                    self.revoked.insert(old);
                    self.holder = Some(entry);
                }
                Some(_) => {
                    let at = self
                        .queue
                        .iter()
                        .position(|(_, p)| *p < request.priority)
                        .unwrap_or(self.queue.len());
                    self.queue.insert(at, entry);
                }
            }
        }
        if self.holder.is_none() && !self.queue.is_empty() {
            self.holder = Some(self.queue.remove(0));
        }
        before != (self.holder, self.queue.clone())
    }

    /// The ruling as sent, stamped `rev`.
    pub(crate) fn decision(&self, rev: u64) -> Decision {
        Decision {
            rev,
            holder: self.holder.map(|(slot, _)| slot),
            queue: self.queue.iter().map(|(slot, _)| *slot).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use callsign_keys::Identity;
    use rand::SeedableRng;

    fn key(seed: u64) -> IdentityKey {
        Identity::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(seed)).public()
    }

    fn req(level: u8, stamp: u64) -> FloorRequest {
        FloorRequest {
            priority: Priority::new(level).unwrap(),
            stamp,
            emergency: level == 4,
        }
    }

    fn holder(a: &Arbitration) -> Option<IdentityKey> {
        a.holder.map(|(s, _)| s.peer)
    }

    #[test]
    fn first_come_then_priority_then_queue_order() {
        let (a, b, c, d) = (key(1), key(2), key(3), key(4));
        let mut arb = Arbitration::default();
        // b arrives first though a pressed earlier: the arbiter serves arrival order.
        let mut live = vec![(b, req(2, 20))];
        assert!(arb.update(&live));
        live.push((a, req(2, 10)));
        assert!(arb.update(&live));
        assert_eq!(holder(&arb), Some(b));
        assert!(!arb.update(&live), "no change, no new ruling");
        // c at priority 3 pre-empts b; b is not queued again while its request lingers.
        live.push((c, req(3, 30)));
        arb.update(&live);
        assert_eq!(holder(&arb), Some(c));
        assert_eq!(arb.decision(1).queue, vec![Slot { peer: a, stamp: 10 }]);
        // An emergency pre-empts c; another priority 3 queues ahead of a.
        live.push((d, req(4, 40)));
        arb.update(&live);
        assert_eq!(holder(&arb), Some(d));
        live.retain(|(p, _)| *p != b && *p != c);
        live.push((c, req(3, 50)));
        arb.update(&live);
        let queue: Vec<_> = arb.decision(2).queue.iter().map(|s| s.peer).collect();
        assert_eq!(queue, vec![c, a]);
        // The emergency ends: the queue's head takes over.
        live.retain(|(p, _)| *p != d);
        arb.update(&live);
        assert_eq!(holder(&arb), Some(c));
        live.clear();
        arb.update(&live);
        assert_eq!(
            arb.decision(3),
            Decision {
                rev: 3,
                ..Decision::default()
            }
        );
    }
}
