//! The simulated network between nodes: per-path latency, jitter, loss (uniform and
//! Gilbert–Elliott), reordering, duplication, bandwidth with a queue, partitions and NATs that
//! translate addresses, all drawn from one seeded RNG in virtual time, so a run replays exactly.
//!
//! turmoil itself is set to zero latency; every delay comes from here, applied by the
//! simulated socket ([`callsign_node::link::PathModel`]).
//!
//! Addresses: every host sits on a private address of its own (turmoil's, 192.168.0.0/16),
//! which nobody else can reach, behind a router with a public address from the documentation
//! ranges ([`public_ip`]). A host without NAT has a one-to-one router (every port forwarded, as
//! a cloud VM's); the others have a home router ([`crate::nat`]) that maps and filters as its
//! [`NatKind`] says.

use crate::nat::Router;
use crate::scenario::{LinkModel, NatKind};
use callsign_node::link::{PathModel, Transit};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

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
    /// Sent to an address nobody owns (another network's private address, say).
    pub unroutable: u64,
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
    /// Each host's router, by the host's private address.
    routers: BTreeMap<IpAddr, Router>,
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
                routers: BTreeMap::new(),
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

    /// Puts `node` behind a router of `kind` (a fresh one: mappings are lost, as when a
    /// router restarts). Hosts never set have a one-to-one router.
    pub fn set_nat(&self, node: IpAddr, kind: NatKind) {
        self.state()
            .routers
            .insert(node, Router::new(public_ip(node), kind));
    }

    /// Has `node`'s router forward `port` to it for good, as a UPnP IGD router does when
    /// asked; returns the public address (the same port number if free, else another).
    pub fn map_port(&self, node: IpAddr, port: u16) -> SocketAddr {
        let mut state = self.state();
        router(&mut state.routers, node).forward(SocketAddr::new(node, port), now())
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
    fn transmit(&self, from: SocketAddr, to: SocketAddr, datagram: &[u8]) -> Option<Transit> {
        let len = datagram.len();
        let now = now();
        let mut guard = self.state();
        let s = &mut *guard;
        s.counts.sent += 1;
        let Some(host) = private_ip(to.ip()) else {
            s.counts.unroutable += 1;
            return None;
        };
        let seen_from = router(&mut s.routers, from.ip()).outbound(from, to, now);
        let Some(deliver_to) = router(&mut s.routers, host).inbound(host, to.port(), now) else {
            // No mapping holds that port: the router drops it.
            s.counts.nat_filtered += 1;
            return None;
        };
        let transit = |delays| {
            Some(Transit {
                deliver_to,
                seen_from,
                delays,
            })
        };
        let to = deliver_to;
        if s.isolated.contains(&from.ip()) || s.isolated.contains(&to.ip()) {
            s.counts.partitioned += 1;
            return None;
        }
        if let Some(groups) = &s.groups {
            // Nodes not named in the partition form their own group each.
            let group = |ip: &IpAddr| groups.get(ip).copied();
            if group(&from.ip()) != group(&to.ip()) || group(&from.ip()).is_none() {
                s.counts.partitioned += 1;
                return None;
            }
        }
        let key = (from.ip(), to.ip());
        let model = s.pairs.get(&key).unwrap_or(&s.default).clone();
        // QUIC long-header packets (the TLS handshake: random key material whose encoding
        // varies in length from run to run) cross with the base latency only, and take no dice;
        // see docs/scenarios.md.
        if datagram.first().is_some_and(|b| b & 0x80 != 0) {
            return transit(vec![Duration::from_secs_f64(
                model.latency_ms.max(0.0) / 1e3,
            )]);
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
            return None;
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
                return None;
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
                return None;
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
        transit(copies)
    }

    fn admit(&self, local: SocketAddr, seen_from: SocketAddr, addressed_to: SocketAddr) -> bool {
        let now = now();
        let mut guard = self.state();
        let s = &mut *guard;
        let admitted =
            router(&mut s.routers, local.ip()).admits(local, seen_from, addressed_to.port(), now);
        if !admitted {
            s.counts.nat_filtered += 1;
        }
        admitted
    }
}

/// `host`'s router (a one-to-one one until the scenario says otherwise).
fn router(routers: &mut BTreeMap<IpAddr, Router>, host: IpAddr) -> &mut Router {
    routers
        .entry(host)
        .or_insert_with(|| Router::new(public_ip(host), NatKind::None))
}

/// The public address of the router in front of the host at `private` (turmoil's
/// 192.168.a.b, the host's index a·256 + b): 198.51.100.0/24, then 203.0.113.0/24, then
/// 192.0.2.0/24 (762 hosts), then the benchmarking range 198.18.0.0/15.
pub fn public_ip(private: IpAddr) -> IpAddr {
    let IpAddr::V4(v4) = private else {
        return private;
    };
    let [_, _, a, b] = v4.octets();
    let index = u32::from(a) * 256 + u32::from(b);
    let in_range =
        |base: [u8; 3], n: u32| IpAddr::V4(Ipv4Addr::new(base[0], base[1], base[2], n as u8));
    match index {
        1..=254 => in_range([198, 51, 100], index),
        255..=508 => in_range([203, 0, 113], index - 254),
        509..=762 => in_range([192, 0, 2], index - 508),
        _ => IpAddr::V4(Ipv4Addr::from(
            u32::from(Ipv4Addr::new(198, 18, 0, 0)) + index,
        )),
    }
}

/// The private address of the host behind the router at `public`, if it is one of ours.
fn private_ip(public: IpAddr) -> Option<IpAddr> {
    let IpAddr::V4(v4) = public else {
        return None;
    };
    let [p, q, r, n] = v4.octets();
    let index = match [p, q, r] {
        [198, 51, 100] if (1..=254).contains(&n) => u32::from(n),
        [203, 0, 113] if (1..=254).contains(&n) => u32::from(n) + 254,
        [192, 0, 2] if (1..=254).contains(&n) => u32::from(n) + 508,
        _ if (p, q & 0xfe) == (198, 18) => u32::from(v4) - u32::from(Ipv4Addr::new(198, 18, 0, 0)),
        _ => return None,
    };
    let private = IpAddr::V4(Ipv4Addr::new(
        192,
        168,
        (index / 256) as u8,
        (index % 256) as u8,
    ));
    (public_ip(private) == public).then_some(private)
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

    /// Where others send to reach `addr`: its router's public address.
    fn public(addr: SocketAddr) -> SocketAddr {
        SocketAddr::new(public_ip(addr.ip()), addr.port())
    }

    fn delays(net: &SimNetwork, from: u8, to: u8, datagram: &[u8]) -> Vec<Duration> {
        net.transmit(addr(from), public(addr(to)), datagram)
            .map(|t| t.delays)
            .unwrap_or_default()
    }

    #[test]
    fn a_capped_uplink_is_shared_by_every_path_and_drops_past_its_queue() {
        // Outside a simulation the clock stands at zero: every datagram is sent at once.
        let net = SimNetwork::new(1, LinkModel::default());
        net.set_uplink(addr(1).ip(), 80.0); // 10 bytes per ms
        let base = Duration::from_secs_f64(LinkModel::default().latency_ms / 1e3);
        let datagram = [0x40u8; 1000]; // short header: takes the dice; 100 ms to serialise
        let first = delays(&net, 1, 2, &datagram);
        let second = delays(&net, 1, 3, &datagram);
        assert_eq!(first, vec![base + Duration::from_millis(100)]);
        assert_eq!(
            second,
            vec![base + Duration::from_millis(200)],
            "queued behind the first"
        );
        // 200 ms queued: the next waits longer than the queue allows.
        delays(&net, 1, 2, &datagram);
        assert!(delays(&net, 1, 2, &datagram).is_empty());
        assert_eq!(net.counts().queue_drops, 1);
        // Other senders are not held up.
        assert_eq!(delays(&net, 2, 1, &datagram), vec![base]);
    }

    #[test]
    fn addresses_are_translated_and_private_ones_lead_nowhere() {
        let net = SimNetwork::new(1, LinkModel::default());
        net.set_nat(addr(2).ip(), NatKind::PortRestricted);
        let datagram = [0x40u8; 100];
        // Public host 1 to NATed host 2, before 2 sent anything: no mapping, dropped.
        assert!(net.transmit(addr(1), public(addr(2)), &datagram).is_none());
        // 2 sends to 1: 1 sees 2's router, with the port preserved.
        let out = net.transmit(addr(2), public(addr(1)), &datagram).unwrap();
        assert_eq!(out.seen_from, public(addr(2)));
        assert_eq!(out.deliver_to, addr(1));
        // Now 1's answer finds the mapping and passes the filter.
        let back = net.transmit(addr(1), public(addr(2)), &datagram).unwrap();
        assert_eq!(back.deliver_to, addr(2));
        assert!(net.admit(addr(2), back.seen_from, public(addr(2))));
        // A stranger (host 3) reaches the mapping but not through the filter.
        let stranger = net.transmit(addr(3), public(addr(2)), &datagram).unwrap();
        assert!(!net.admit(addr(2), stranger.seen_from, public(addr(2))));
        // A private address is nobody's on the internet.
        assert!(net.transmit(addr(1), addr(2), &datagram).is_none());
        assert_eq!(net.counts().unroutable, 1);
    }

    #[test]
    fn public_and_private_addresses_correspond_one_to_one() {
        for index in [1u32, 254, 255, 508, 509, 762, 763, 5000] {
            let private = IpAddr::V4(Ipv4Addr::new(
                192,
                168,
                (index / 256) as u8,
                (index % 256) as u8,
            ));
            let public = public_ip(private);
            assert!(
                callsign_mesh::reachability::is_beyond_local_network(&SocketAddr::new(public, 1)),
                "{public}"
            );
            assert_eq!(private_ip(public), Some(private), "{index}: {public}");
        }
    }
}
