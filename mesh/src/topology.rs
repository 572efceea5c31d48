//! The topology rule: does a channel fan out over the mesh, or through which relay?
//!
//! Every member must reach the same answer without a coordinator, so [`plan`] is a pure
//! function of inputs all members share: the charter (threshold, rented relays and their
//! capacity), what presence advertises (volunteers' reachability and spare uplink, each
//! member's RTT to each relay, from which the caller takes the median, and which relay serves
//! the channel now, the *incumbent*). Hysteresis is measured against that shared incumbent,
//! never against a member's own history, so a member that just joined agrees with the rest.
//!
//! The rule:
//! - Mesh while the channel's listeners are at most the threshold and the weakest sender's
//!   uplink carries one stream per listener; a channel on a relay goes back to the mesh only
//!   once it is one listener below the threshold (no flapping at the edge).
//! - Otherwise a relay with room for every listener: the rented relays first (lowest median
//!   RTT, then most spare room), else a public volunteer (most spare room, then lowest RTT);
//!   ties by key. The incumbent stays unless a challenger of the same class is better by
//!   [`TopologyConfig::hysteresis_pct`]; a rented relay always displaces a volunteer.
//! - No relay fits: the mesh, best effort.

use callsign_keys::IdentityKey;
use std::cmp::Reverse;

/// Tunables (the same on every member: they are protocol constants, not preferences).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopologyConfig {
    /// A challenger must beat the incumbent's score by this many percent to replace it.
    pub hysteresis_pct: u32,
    /// One listener's stream, in kbit/s, for the sender's uplink check (Opus at 24 kbit/s
    /// plus packet overhead).
    pub stream_kbps: u32,
    /// The RTT assumed for a relay nobody has measured.
    pub unknown_rtt_ms: u32,
}

impl Default for TopologyConfig {
    fn default() -> Self {
        Self {
            hysteresis_pct: 20,
            stream_kbps: 40,
            unknown_rtt_ms: 1000,
        }
    }
}

/// A relay that could serve the channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayCandidate {
    /// Its identity.
    pub peer: IdentityKey,
    /// Rented by the org (in the charter) rather than a volunteering member.
    pub rented: bool,
    /// Reachable without hole punching; volunteers must be.
    pub public: bool,
    /// Median RTT from the channel's members to it, if any member measured it.
    pub median_rtt_ms: Option<u32>,
    /// Listeners it could serve for this channel: its capacity (rented) or spare uplink over
    /// one stream (volunteer), minus what it carries for channels before this one in id order
    /// (the incumbent's load for this channel does not count against it).
    pub spare_listeners: u32,
}

/// What the channel needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelLoad {
    /// The charter's mesh threshold for the channel.
    pub threshold: u32,
    /// Members listening to it.
    pub listeners: u32,
    /// The smallest uplink budget among members who may speak on it, kbit/s (`None`: no
    /// limit advertised).
    pub weakest_uplink_kbps: Option<u32>,
}

/// How a channel's audio travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Every sender sends one copy to each listener.
    Mesh,
    /// Senders send once to this relay, which forwards to the listeners.
    Relay(IdentityKey),
}

/// The route for a channel with `load`, given the `candidates` and the relay serving it now.
/// Candidate order does not matter.
pub fn plan(
    config: &TopologyConfig,
    load: &ChannelLoad,
    candidates: &[RelayCandidate],
    incumbent: Option<&IdentityKey>,
) -> Route {
    let mesh_limit = if incumbent.is_some() {
        load.threshold.saturating_sub(1)
    } else {
        load.threshold
    };
    let uplink_ok = load.weakest_uplink_kbps.is_none_or(|kbps| {
        u64::from(kbps) >= u64::from(load.listeners) * u64::from(config.stream_kbps)
    });
    if load.listeners <= mesh_limit && uplink_ok {
        return Route::Mesh;
    }
    let fits = |c: &&RelayCandidate| c.spare_listeners >= load.listeners && (c.rented || c.public);
    let rtt = |c: &RelayCandidate| c.median_rtt_ms.unwrap_or(config.unknown_rtt_ms);
    let best_rented = candidates
        .iter()
        .filter(fits)
        .filter(|c| c.rented)
        .min_by_key(|c| (rtt(c), Reverse(c.spare_listeners), c.peer));
    let best_volunteer = candidates
        .iter()
        .filter(fits)
        .filter(|c| !c.rented)
        .min_by_key(|c| (Reverse(c.spare_listeners), rtt(c), c.peer));
    let current = incumbent.and_then(|k| candidates.iter().filter(fits).find(|c| c.peer == *k));
    let h = u64::from(100 + config.hysteresis_pct);
    let chosen = match (best_rented, best_volunteer, current) {
        // A rented incumbent stays unless a rented challenger is clearly closer.
        (Some(best), _, Some(cur)) if cur.rented => {
            if u64::from(rtt(best)) * h < u64::from(rtt(cur)) * 100 {
                best
            } else {
                cur
            }
        }
        (Some(best), _, _) => best,
        // A volunteer incumbent stays unless another has clearly more room.
        (None, Some(best), Some(cur)) => {
            if u64::from(best.spare_listeners) * 100 > u64::from(cur.spare_listeners) * h {
                best
            } else {
                cur
            }
        }
        (None, Some(best), None) => best,
        (None, None, _) => return Route::Mesh,
    };
    Route::Relay(chosen.peer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use callsign_keys::Identity;
    use proptest::prelude::*;
    use rand::SeedableRng;

    fn key(seed: u64) -> IdentityKey {
        Identity::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(seed)).public()
    }

    fn relay(seed: u64, rented: bool, rtt: Option<u32>, spare: u32) -> RelayCandidate {
        RelayCandidate {
            peer: key(seed),
            rented,
            public: true,
            median_rtt_ms: rtt,
            spare_listeners: spare,
        }
    }

    fn load(listeners: u32) -> ChannelLoad {
        ChannelLoad {
            threshold: 6,
            listeners,
            weakest_uplink_kbps: None,
        }
    }

    #[test]
    fn mesh_up_to_the_threshold_and_back_only_below_it() {
        let c = TopologyConfig::default();
        let relays = [relay(1, true, Some(30), 100)];
        assert_eq!(plan(&c, &load(6), &relays, None), Route::Mesh);
        assert_eq!(plan(&c, &load(7), &relays, None), Route::Relay(key(1)));
        // On the relay, six listeners keep it; five go back to the mesh.
        assert_eq!(
            plan(&c, &load(6), &relays, Some(&key(1))),
            Route::Relay(key(1))
        );
        assert_eq!(plan(&c, &load(5), &relays, Some(&key(1))), Route::Mesh);
    }

    #[test]
    fn a_weak_uplink_needs_a_relay_below_the_threshold() {
        let c = TopologyConfig::default();
        let relays = [relay(1, true, Some(30), 100)];
        let weak = ChannelLoad {
            weakest_uplink_kbps: Some(100),
            ..load(3)
        };
        assert_eq!(plan(&c, &weak, &relays, None), Route::Relay(key(1)));
        let strong = ChannelLoad {
            weakest_uplink_kbps: Some(1000),
            ..load(3)
        };
        assert_eq!(plan(&c, &strong, &relays, None), Route::Mesh);
    }

    #[test]
    fn rented_first_by_rtt_then_volunteers_by_room() {
        let c = TopologyConfig::default();
        let near_full = relay(1, true, Some(10), 5);
        let far = relay(2, true, Some(80), 500);
        let near = relay(3, true, Some(20), 50);
        let volunteer = relay(4, false, Some(5), 1000);
        let all = [
            near_full.clone(),
            far.clone(),
            near.clone(),
            volunteer.clone(),
        ];
        // The nearest rented relay with room for 12 listeners.
        assert_eq!(plan(&c, &load(12), &all, None), Route::Relay(key(3)));
        // Volunteers only when no rented relay fits; a private volunteer never.
        let mut private = relay(5, false, Some(1), 5000);
        private.public = false;
        let volunteers = [volunteer.clone(), relay(6, false, Some(1), 200), private];
        assert_eq!(plan(&c, &load(12), &volunteers, None), Route::Relay(key(4)));
        // Nothing fits: the mesh, best effort.
        assert_eq!(plan(&c, &load(12), &[near_full], None), Route::Mesh);
        // A rented relay displaces a volunteer incumbent at once.
        assert_eq!(
            plan(&c, &load(12), &[volunteer, far], Some(&key(4))),
            Route::Relay(key(2))
        );
    }

    #[test]
    fn the_incumbent_stays_unless_clearly_beaten() {
        let c = TopologyConfig::default();
        let incumbent = relay(1, true, Some(50), 100);
        let slightly = relay(2, true, Some(45), 100);
        let clearly = relay(3, true, Some(30), 100);
        let both = [incumbent.clone(), slightly.clone()];
        assert_eq!(
            plan(&c, &load(12), &both, Some(&key(1))),
            Route::Relay(key(1))
        );
        let all = [incumbent, slightly, clearly];
        assert_eq!(
            plan(&c, &load(12), &all, Some(&key(1))),
            Route::Relay(key(3))
        );
        // An incumbent that is gone (not a candidate) is simply replaced.
        assert_eq!(
            plan(&c, &load(12), &all[1..], Some(&key(1))),
            Route::Relay(key(3))
        );
    }

    proptest! {
        /// Every member lists candidates in its own order; all reach the same route.
        #[test]
        fn order_does_not_matter(
            specs in proptest::collection::vec((any::<bool>(), any::<bool>(), proptest::option::of(1u32..300), 0u32..40), 0..8),
            listeners in 0u32..30,
            incumbent in proptest::option::of(0usize..8),
            rotate in 0usize..8,
        ) {
            let c = TopologyConfig::default();
            let candidates: Vec<RelayCandidate> = specs
                .iter()
                .enumerate()
                .map(|(i, (rented, public, rtt, spare))| RelayCandidate {
                    peer: key(i as u64),
                    rented: *rented,
                    public: *public,
                    median_rtt_ms: *rtt,
                    spare_listeners: *spare,
                })
                .collect();
            let incumbent = incumbent.map(|i| key(i as u64));
            let route = plan(&c, &load(listeners), &candidates, incumbent.as_ref());
            let mut shuffled = candidates.clone();
            if !shuffled.is_empty() {
                let n = rotate % shuffled.len();
                shuffled.rotate_left(n);
            }
            shuffled.reverse();
            prop_assert_eq!(plan(&c, &load(listeners), &shuffled, incumbent.as_ref()), route);
            if let Route::Relay(k) = route {
                let chosen = candidates.iter().find(|c| c.peer == k).unwrap();
                prop_assert!(chosen.rented || chosen.public);
            }
        }
    }
}
