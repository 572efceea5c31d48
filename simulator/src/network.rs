//! The simulated network between nodes: per-path latency, jitter, loss (uniform and
//! Gilbert–Elliott), reordering, duplication, bandwidth with a queue, partitions and NAT
//! filtering, all drawn from one seeded RNG in virtual time, so a run replays exactly.
//!
//! turmoil itself is set to zero latency; every delay comes from here, applied by the
//! simulated socket ([`callsign_node::link::PathModel`]).

use crate::scenario::{LinkModel, NatKind};
use callsign_node::link::PathModel;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

/// How long a NAT keeps a mapping without outbound traffic (RFC 4787 asks for ≥ 2 min; many
/// home routers use 30 s for UDP).
pub const NAT_MAPPING_TIMEOUT: Duration = Duration::from_secs(30);

/// How much traffic a capped uplink queues before it drops.
const UPLINK_QUEUE: Duration = Duration::from_millis(200);

/// Datagram counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct NetworkCounts {
    pub sent: u64,
    pub lost: u64,
    pub partitioned: u64,
    pub queue_drops: u64,
    pub duplicated: u64,
    pub nat_filtered: u64,
}

struct State {
    seed: u64,
    default: LinkModel,
    pairs: BTreeMap<(IpAddr, IpAddr), LinkModel>,
    /// While partitioned: each node's group; nodes in different groups cannot talk.
    groups: Option<BTreeMap<IpAddr, usize>>,
    /// Crashed nodes: nothing in or out.
    isolated: BTreeSet<IpAddr>,
    /// Gilbert–Elliott state per path: the last 20 ms slot evaluated and whether it was bad.
    burst_bad: BTreeMap<(IpAddr, IpAddr), (u64, bool)>,
    queue_free_at: BTreeMap<(IpAddr, IpAddr), Duration>,
    /// Per node with a capped uplink: its rate in kbit/s and when its queue drains.
    uplinks: BTreeMap<IpAddr, (f64, Duration)>,
    nat: BTreeMap<IpAddr, NatKind>,
    /// Per NATed node: destinations it sent to, and when last.
    mappings: BTreeMap<IpAddr, BTreeMap<SocketAddr, Duration>>,
    /// (from, to) pairs where a datagram from `from` reached `to`: `to` then knows the
    /// external port `from`'s NAT chose for it.
    delivered: BTreeSet<(SocketAddr, SocketAddr)>,
    counts: NetworkCounts,
}

/// See the module documentation.
pub struct SimNetwork {
    state: Mutex<State>,
}

fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

impl SimNetwork {
    pub fn new(seed: u64, default: LinkModel) -> Self {
        Self {
            state: Mutex::new(State {
                seed,
                default,
                pairs: BTreeMap::new(),
                groups: None,
                isolated: BTreeSet::new(),
                burst_bad: BTreeMap::new(),
                queue_free_at: BTreeMap::new(),
                uplinks: BTreeMap::new(),
                nat: BTreeMap::new(),
                mappings: BTreeMap::new(),
                delivered: BTreeSet::new(),
                counts: NetworkCounts::default(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves consistent maps; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_default(&self, model: LinkModel) {
        self.state().default = model;
    }

    /// Both directions between `a` and `b`.
    pub fn set_pair(&self, a: IpAddr, b: IpAddr, model: LinkModel) {
        let mut state = self.state();
        state.pairs.insert((a, b), model.clone());
        state.pairs.insert((b, a), model);
    }

    /// Caps everything `node` sends at `kbps` (0 or less: no cap).
    pub fn set_uplink(&self, node: IpAddr, kbps: f64) {
        let mut state = self.state();
        if kbps > 0.0 {
            state.uplinks.insert(node, (kbps, Duration::ZERO));
        } else {
            state.uplinks.remove(&node);
        }
    }

    pub fn set_nat(&self, node: IpAddr, kind: NatKind) {
        self.state().nat.insert(node, kind);
    }

    pub fn partition(&self, groups: &[Vec<IpAddr>]) {
        let map = groups
            .iter()
            .enumerate()
            .flat_map(|(i, g)| g.iter().map(move |ip| (*ip, i)))
            .collect();
        self.state().groups = Some(map);
    }

    /// Cuts a node off completely (a crash), or reconnects it.
    pub fn isolate(&self, node: IpAddr, isolated: bool) {
        let mut state = self.state();
        if isolated {
            state.isolated.insert(node);
        } else {
            state.isolated.remove(&node);
        }
    }

    pub fn heal(&self) {
        self.state().groups = None;
    }

    pub fn counts(&self) -> NetworkCounts {
        self.state().counts
    }
}

impl PathModel for SimNetwork {
    fn transmit(&self, from: SocketAddr, to: SocketAddr, datagram: &[u8]) -> Vec<Duration> {
        let len = datagram.len();
        let now = now();
        let mut guard = self.state();
        let s = &mut *guard;
        s.counts.sent += 1;
        if s.nat.get(&from.ip()).is_some_and(|k| *k != NatKind::None) {
            s.mappings.entry(from.ip()).or_default().insert(to, now);
        }
        if s.isolated.contains(&from.ip()) || s.isolated.contains(&to.ip()) {
            s.counts.partitioned += 1;
            return Vec::new();
        }
        if let Some(groups) = &s.groups {
            // Nodes not named in the partition form their own group each.
            let group = |ip: &IpAddr| groups.get(ip).copied();
            if group(&from.ip()) != group(&to.ip()) || group(&from.ip()).is_none() {
                s.counts.partitioned += 1;
                return Vec::new();
            }
        }
        let key = (from.ip(), to.ip());
        let model = s.pairs.get(&key).unwrap_or(&s.default).clone();
        // QUIC long-header packets (the TLS handshake: random key material whose encoding
        // varies in length from run to run) cross with the base latency only, and take no dice;
        // see docs/scenarios.md.
        if datagram.first().is_some_and(|b| b & 0x80 != 0) {
            return vec![Duration::from_secs_f64(model.latency_ms.max(0.0) / 1e3)];
        }
        // Dice come from (seed, path, virtual instant) alone: every datagram a path carries in
        // one tick shares its fate. Which datagrams a node sends within one instant, and how
        // QUIC coalesces them, varies from run to run (libp2p's polling order, ACK sizes), so
        // dice keyed by a datagram's index or size would land on different datagrams.
        let dice = dice_seed(s.seed, key, now.as_nanos() as u64, Dice::Datagram);
        let mut rng = ChaCha8Rng::seed_from_u64(dice);
        // Loss: the Gilbert–Elliott chain steps once per 20 ms slot of virtual time (a voice
        // frame period), on dice of its own, so it does not depend on how much else is sent.
        let mut loss = model.loss;
        if let Some(burst) = model.burst {
            let slot = (now.as_millis() / 20) as u64;
            let seed = s.seed;
            let (last, bad) = s.burst_bad.entry(key).or_insert((slot, false));
            // Paths idle for long start afresh rather than replaying every slot.
            if slot.saturating_sub(*last) > 1000 {
                *last = slot.saturating_sub(1000);
            }
            while *last < slot {
                *last += 1;
                let mut step =
                    ChaCha8Rng::seed_from_u64(dice_seed(seed, key, *last, Dice::BurstSlot));
                *bad = if *bad {
                    !step.gen_bool(burst.r)
                } else {
                    step.gen_bool(burst.p)
                };
            }
            if *bad {
                loss = burst.bad_loss;
            }
        }
        if loss > 0.0 && rng.gen_bool(loss.min(1.0)) {
            s.counts.lost += 1;
            return Vec::new();
        }
        let mut delay_ms = model.latency_ms;
        if model.jitter_ms > 0.0 {
            if let Ok(normal) = Normal::new(0.0, model.jitter_ms) {
                delay_ms += normal.sample(&mut rng);
            }
        }
        if model.reorder > 0.0 && rng.gen_bool(model.reorder) {
            delay_ms += model.reorder_ms;
        }
        let mut delay = Duration::from_secs_f64(delay_ms.max(0.0) / 1e3);
        // The sender's own uplink first (shared by all its paths), then the path's bandwidth.
        if let Some((kbps, free_at)) = s.uplinks.get_mut(&from.ip()) {
            let start = (*free_at).max(now);
            if start - now > UPLINK_QUEUE {
                s.counts.queue_drops += 1;
                return Vec::new();
            }
            *free_at = start + Duration::from_secs_f64(len as f64 * 8.0 / (*kbps * 1e3));
            delay += *free_at - now;
        }
        if model.bandwidth_kbps > 0.0 {
            let serialise =
                Duration::from_secs_f64(len as f64 * 8.0 / (model.bandwidth_kbps * 1e3));
            let free_at = s.queue_free_at.get(&key).copied().unwrap_or(now).max(now);
            if free_at - now > Duration::from_secs_f64(model.queue_ms / 1e3) {
                s.counts.queue_drops += 1;
                return Vec::new();
            }
            let done = free_at + serialise;
            s.queue_free_at.insert(key, done);
            delay += done - now;
        }
        let mut copies = vec![delay];
        if model.duplicate > 0.0 && rng.gen_bool(model.duplicate) {
            s.counts.duplicated += 1;
            copies.push(delay + Duration::from_millis(1));
        }
        copies
    }

    fn admit(&self, local: SocketAddr, from: SocketAddr) -> bool {
        let now = now();
        let mut guard = self.state();
        let s = &mut *guard;
        let kind = s.nat.get(&local.ip()).copied().unwrap_or_default();
        let live = |t: &Duration| now.saturating_sub(*t) < NAT_MAPPING_TIMEOUT;
        let sent_to = |dest: &SocketAddr| {
            s.mappings
                .get(&local.ip())
                .and_then(|m| m.get(dest))
                .is_some_and(live)
        };
        let admitted = match kind {
            NatKind::None => true,
            NatKind::FullCone => s
                .mappings
                .get(&local.ip())
                .is_some_and(|m| m.values().any(live)),
            NatKind::Restricted => s
                .mappings
                .get(&local.ip())
                .is_some_and(|m| m.iter().any(|(dest, t)| dest.ip() == from.ip() && live(t))),
            NatKind::PortRestricted => sent_to(&from),
            // A symmetric NAT gives each destination its own external port. `from` can reach
            // us only at the port our NAT opened for it, which it learns by hearing from us:
            // so we must have sent to it and one of those datagrams must have arrived. Two
            // symmetric NATs therefore never link directly (neither hears the other first).
            NatKind::Symmetric => sent_to(&from) && s.delivered.contains(&(local, from)),
        };
        if admitted {
            s.delivered.insert((from, local));
        } else {
            s.counts.nat_filtered += 1;
        }
        admitted
    }
}

/// What a die decides: the two kinds never share a seed.
#[derive(Clone, Copy)]
enum Dice {
    /// A tick's datagrams on a path (time in ns).
    Datagram,
    /// One Gilbert–Elliott step (time in 20 ms slots).
    BurstSlot,
}

fn dice_seed(seed: u64, (from, to): (IpAddr, IpAddr), time: u64, kind: Dice) -> u64 {
    // SplitMix64's finaliser over every input: well mixed, and cheap enough to run once per
    // datagram (a SHA-256 over formatted addresses was a few percent of a large run).
    fn mix(state: u64, value: u64) -> u64 {
        let mut z = (state ^ value).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn bits(ip: IpAddr) -> u128 {
        match ip {
            IpAddr::V4(v4) => u128::from(v4.to_bits()),
            IpAddr::V6(v6) => v6.to_bits() | 1 << 127,
        }
    }
    let (from, to) = (bits(from), bits(to));
    [
        (from >> 64) as u64,
        from as u64,
        (to >> 64) as u64,
        to as u64,
        time,
        kind as u64,
    ]
    .into_iter()
    .fold(seed, mix)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([192, 168, 0, last], 4433))
    }

    #[test]
    fn a_capped_uplink_is_shared_by_every_path_and_drops_past_its_queue() {
        // Outside a simulation the clock stands at zero: every datagram is sent at once.
        let net = SimNetwork::new(1, LinkModel::default());
        net.set_uplink(addr(1).ip(), 80.0); // 10 bytes per ms
        let base = Duration::from_secs_f64(LinkModel::default().latency_ms / 1e3);
        let datagram = [0x40u8; 1000]; // short header: takes the dice; 100 ms to serialise
        let first = net.transmit(addr(1), addr(2), &datagram);
        let second = net.transmit(addr(1), addr(3), &datagram);
        assert_eq!(first, vec![base + Duration::from_millis(100)]);
        assert_eq!(
            second,
            vec![base + Duration::from_millis(200)],
            "queued behind the first"
        );
        // 200 ms queued: the next waits longer than the queue allows.
        net.transmit(addr(1), addr(2), &datagram);
        assert!(net.transmit(addr(1), addr(2), &datagram).is_empty());
        assert_eq!(net.counts().queue_drops, 1);
        // Other senders are not held up.
        assert_eq!(net.transmit(addr(2), addr(1), &datagram), vec![base]);
    }
}
