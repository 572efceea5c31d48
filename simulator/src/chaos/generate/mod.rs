//! A random scenario from a seed: an org of 3 to 30 members (sometimes with rented relays),
//! mixed NATs and a lossy network, a fault phase (partitions, loss spikes, crashes and
//! restarts, relay crashes, late joins, clean leaves, charter edits, removals, PTT storms,
//! emergencies), then everything heals, the mesh settles, and a probe phase in which talkers
//! take turns so that delivery can be checked stream by stream.

use crate::scenario::{
    Action, Burst, ChannelSpec, EventSpec, FloorSpec, LinkModel, NatKind, NodeSpec, Scenario,
    SCENARIO_VERSION,
};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet};

mod faults;
use faults::fault;

/// Seconds from the heal to the start of the measured window.
pub const SETTLE_S: f64 = 10.0;
/// Each probe transmission, and the quiet gap after it.
pub const PROBE_S: f64 = 2.5;
const PROBE_GAP_S: f64 = 1.5;

/// The shape of what [`generate`] made, for the checks.
#[derive(Clone, Debug)]
pub struct Plan {
    /// When every fault is healed.
    pub heal_s: f64,
    /// Probe transmissions: talker, channel (`None`: a whisper to the named listener), start.
    pub probes: Vec<Probe>,
    /// Members removed from the charter (gone for good).
    pub removed: BTreeSet<String>,
}

/// One probe transmission.
#[derive(Clone, Debug)]
pub struct Probe {
    pub talker: String,
    pub target: ProbeTarget,
    pub at_s: f64,
}

#[derive(Clone, Debug)]
pub enum ProbeTarget {
    Channel(String),
    /// One press on several open channels (a relay-routed one and a mesh one where the org
    /// has both): each listener must play each frame once.
    Simulcast(Vec<String>),
    Whisper(String),
}

/// Faults that leave a node gone, so nothing is scheduled for it afterwards.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Gone {
    /// Crashed: restarted at the heal.
    Crashed,
    /// Left or removed: never back.
    ForGood,
}

struct Builder {
    rng: ChaCha8Rng,
    nodes: Vec<NodeSpec>,
    channels: Vec<ChannelSpec>,
    events: Vec<EventSpec>,
    /// Nodes absent from the time given on (until the heal, for crashes).
    gone: BTreeMap<String, (f64, Gone)>,
    /// Crashes with an early restart: node, from, until.
    downs: Vec<(String, f64, f64)>,
    /// Nodes that join late, at the time given.
    joins: BTreeMap<String, f64>,
    removed: BTreeSet<String>,
    /// Members whose role an admin changes (and changes back): never removed, or the change
    /// back would put them in the charter again.
    role_changed: BTreeSet<String>,
}

impl Builder {
    fn push(&mut self, at_s: f64, action: Action) {
        self.events.push(EventSpec {
            at_s: (at_s * 1000.0).round() / 1000.0,
            action,
        });
    }

    /// Members (not rented relays) present at `at_s`.
    fn present(&self, at_s: f64) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.member)
            .map(|n| n.name.clone())
            .filter(|n| self.joins.get(n).is_none_or(|j| *j <= at_s))
            .filter(|n| self.gone.get(n).is_none_or(|(t, _)| *t > at_s))
            .filter(|n| {
                !self
                    .downs
                    .iter()
                    .any(|(d, from, until)| d == n && *from <= at_s && at_s <= *until)
            })
            .collect()
    }

    fn pick(&mut self, from: &[String]) -> Option<String> {
        from.choose(&mut self.rng).cloned()
    }

    fn channels_spoken_by(&self, node: &str) -> Vec<String> {
        let role = self
            .nodes
            .iter()
            .find(|n| n.name == node)
            .map_or("", |n| n.role.as_str());
        self.channels
            .iter()
            .filter(|c| c.speak.iter().any(|r| r == role))
            .map(|c| c.name.clone())
            .collect()
    }

    fn half_duplex(&self) -> Vec<String> {
        self.channels
            .iter()
            .filter(|c| c.floor == FloorSpec::HalfDuplex)
            .map(|c| c.name.clone())
            .collect()
    }

    /// Of `among`, the nodes with `role`.
    fn with_role(&self, among: &[String], role: &str) -> Vec<String> {
        among
            .iter()
            .filter(|n| self.nodes.iter().any(|s| s.name == **n && s.role == role))
            .cloned()
            .collect()
    }

    /// Rented relays not crashed (or crashed for good) yet.
    fn rented_relays_up(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.rented_relay && !self.gone.contains_key(&n.name))
            .map(|n| n.name.clone())
            .collect()
    }

    fn is_admin(&self, node: &str) -> bool {
        self.nodes.iter().any(|n| n.name == node && n.admin)
    }
}

fn link_model(rng: &mut ChaCha8Rng) -> LinkModel {
    let latency_ms = rng.gen_range(2.0..60.0_f64).round();
    LinkModel {
        latency_ms,
        jitter_ms: if rng.gen_bool(0.5) {
            rng.gen_range(0.0..latency_ms / 4.0).round()
        } else {
            0.0
        },
        loss: if rng.gen_bool(0.5) {
            (rng.gen_range(0.0..0.03_f64) * 1000.0).round() / 1000.0
        } else {
            0.0
        },
        burst: rng.gen_bool(0.25).then(|| Burst {
            p: rng.gen_range(1..=4) as f64 / 100.0,
            r: rng.gen_range(3..=6) as f64 / 10.0,
            bad_loss: rng.gen_range(5..=10) as f64 / 10.0,
        }),
        reorder: if rng.gen_bool(0.3) { 0.02 } else { 0.0 },
        duplicate: if rng.gen_bool(0.2) { 0.01 } else { 0.0 },
        ..LinkModel::default()
    }
}

/// The scenario for `seed`, and what the checks need to know of it.
pub fn generate(seed: u64) -> (Scenario, Plan) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let members = if rng.gen_bool(0.25) {
        rng.gen_range(13..=30)
    } else {
        rng.gen_range(3..=12)
    };
    let mut nodes: Vec<NodeSpec> = (0..members)
        .map(|i| {
            let nat = if i == 0 {
                NatKind::None
            } else {
                *[
                    NatKind::None,
                    NatKind::None,
                    NatKind::FullCone,
                    NatKind::Restricted,
                    NatKind::PortRestricted,
                    NatKind::PortRestricted,
                    NatKind::Symmetric,
                ]
                .choose(&mut rng)
                .unwrap_or(&NatKind::None)
            };
            NodeSpec {
                name: format!("m{i:02}"),
                role: if i == 0 || rng.gen_bool(0.3) {
                    "officer".into()
                } else {
                    "pilot".into()
                },
                listen: None,
                monitor: Vec::new(),
                admin: i == 0 || (i == 1 && rng.gen_bool(0.5)),
                nat,
                upnp: false,
                relay: false,
                uplink_kbps: 0.0,
                rented_relay: false,
                member: true,
                capacity: None,
                position: None,
            }
        })
        .collect();
    // Two symmetric NATs never link directly: a reachable member serves circuits.
    if nodes.iter().any(|n| n.nat == NatKind::Symmetric) {
        nodes[0].relay = true;
    }
    let rented = if members >= 5 && rng.gen_bool(0.35) {
        rng.gen_range(1..=2)
    } else {
        0
    };
    let relay_names: Vec<String> = (0..rented).map(|i| format!("r{i}")).collect();
    for name in &relay_names {
        nodes.push(NodeSpec {
            name: name.clone(),
            role: "relay".into(),
            listen: None,
            monitor: Vec::new(),
            admin: false,
            nat: NatKind::None,
            upnp: false,
            relay: false,
            uplink_kbps: 0.0,
            rented_relay: true,
            member: false,
            capacity: None,
            position: None,
        });
    }
    let channels: Vec<ChannelSpec> = (0..rng.gen_range(1..=3))
        .map(|i| {
            let pilots_speak = i == 0 || rng.gen_bool(0.6);
            ChannelSpec {
                name: format!("c{i}"),
                speak: if pilots_speak {
                    vec!["officer".into(), "pilot".into()]
                } else {
                    vec!["officer".into()]
                },
                listen: if pilots_speak {
                    vec![]
                } else {
                    vec!["pilot".into()]
                },
                floor: if rng.gen_bool(0.4) {
                    FloorSpec::HalfDuplex
                } else {
                    FloorSpec::Open
                },
                relays: if !relay_names.is_empty() && rng.gen_bool(0.6) {
                    relay_names.clone()
                } else {
                    vec![]
                },
                links: Vec::new(),
                monitor: Vec::new(),
                spatial: None,
            }
        })
        .collect();
    let base = link_model(&mut rng);
    let mut b = Builder {
        rng,
        nodes,
        channels,
        events: Vec::new(),
        gone: BTreeMap::new(),
        downs: Vec::new(),
        joins: BTreeMap::new(),
        removed: BTreeSet::new(),
        role_changed: BTreeSet::new(),
    };
    let heal_s = b.rng.gen_range(8.0..20.0_f64).round();
    // Late joiners first: nothing may name them before they join.
    let candidates: Vec<String> = b.present(0.0)[1..].to_vec();
    for name in candidates {
        if b.rng.gen_bool(0.1) {
            let at = b.rng.gen_range(1.0..heal_s);
            b.joins.insert(name.clone(), at);
            b.push(at, Action::Join { node: name });
        }
    }
    for _ in 0..b.rng.gen_range(2..=7) {
        let at = b.rng.gen_range(2.0..heal_s - 0.5);
        fault(&mut b, at, heal_s, &base);
    }
    // The heal: the network is whole and clean again, crashed nodes come back.
    b.push(heal_s, Action::Heal);
    b.push(
        heal_s,
        Action::Link {
            a: None,
            b: None,
            model: base.clone(),
        },
    );
    let crashed: Vec<String> = b
        .gone
        .iter()
        .filter(|(_, (_, g))| *g == Gone::Crashed)
        .map(|(n, _)| n.clone())
        .collect();
    for name in crashed {
        b.gone.remove(&name);
        b.push(heal_s, Action::Restart { node: name });
    }
    let measure_from_s = heal_s + SETTLE_S;
    let mut probes = Vec::new();
    let mut at = measure_from_s + 0.5;
    let mut talkers = b.present(at);
    talkers.shuffle(&mut b.rng);
    for talker in talkers.into_iter().take(4) {
        let spoken = b.channels_spoken_by(&talker);
        let listeners: Vec<String> = b.present(at).into_iter().filter(|n| *n != talker).collect();
        let open: Vec<String> = spoken
            .iter()
            .filter(|c| {
                b.channels
                    .iter()
                    .any(|s| s.name == **c && s.floor == FloorSpec::Open)
            })
            .cloned()
            .collect();
        let target = if b.rng.gen_bool(0.2) || spoken.is_empty() {
            match b.pick(&listeners) {
                Some(to) => ProbeTarget::Whisper(to),
                None => continue,
            }
        } else if open.len() >= 2 && b.rng.gen_bool(0.4) {
            // Relay-routed channels first, so a pair mixes routes where the org has both.
            let mut pair = open;
            pair.sort_by_key(|c| {
                b.channels
                    .iter()
                    .find(|s| s.name == *c)
                    .is_none_or(|s| s.relays.is_empty())
            });
            let mesh = pair.iter().rposition(|_| true).unwrap_or(0);
            ProbeTarget::Simulcast(vec![pair[0].clone(), pair[mesh].clone()])
        } else {
            match b.pick(&spoken) {
                Some(c) => ProbeTarget::Channel(c),
                None => continue,
            }
        };
        let action = match &target {
            ProbeTarget::Channel(c) => Action::Ptt {
                node: talker.clone(),
                channels: vec![c.clone()],
                duration_s: PROBE_S,
            },
            ProbeTarget::Simulcast(channels) => Action::Ptt {
                node: talker.clone(),
                channels: channels.clone(),
                duration_s: PROBE_S,
            },
            ProbeTarget::Whisper(to) => Action::Whisper {
                node: talker.clone(),
                to: to.clone(),
                duration_s: PROBE_S,
            },
        };
        b.push(at, action);
        probes.push(Probe {
            talker,
            target,
            at_s: at,
        });
        at += PROBE_S + PROBE_GAP_S;
    }
    let duration_s = at + 1.0;
    b.events.sort_by(|x, y| {
        x.at_s
            .partial_cmp(&y.at_s)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let scenario = Scenario {
        version: SCENARIO_VERSION,
        name: format!("chaos-{seed}"),
        seed,
        duration_s,
        link: base,
        pairs: Vec::new(),
        channels: b.channels,
        conferences: Vec::new(),
        nodes: b.nodes,
        priorities: [("officer".to_string(), 3), ("pilot".to_string(), 2)]
            .into_iter()
            .collect(),
        events: b.events,
        measure_from_s: Some(measure_from_s),
    };
    let plan = Plan {
        heal_s,
        probes,
        removed: b.removed,
    };
    (scenario, plan)
}
