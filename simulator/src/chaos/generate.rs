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

/// One fault at `at` (healed by `heal_s` at the latest).
fn fault(b: &mut Builder, at: f64, heal_s: f64, base: &LinkModel) {
    let present = b.present(at);
    let until = |b: &mut Builder| b.rng.gen_range(at + 0.5..=heal_s);
    match b.rng.gen_range(0..14) {
        0 if present.len() >= 2 => {
            let mut all: Vec<String> = b.nodes.iter().map(|n| n.name.clone()).collect();
            all.shuffle(&mut b.rng);
            let cut = b.rng.gen_range(1..all.len());
            let groups = vec![all[..cut].to_vec(), all[cut..].to_vec()];
            b.push(at, Action::Partition { groups });
            let end = until(b);
            b.push(end, Action::Heal);
        }
        1 => {
            let model = LinkModel {
                loss: b.rng.gen_range(0.05..0.25),
                latency_ms: base.latency_ms + b.rng.gen_range(0.0..150.0_f64).round(),
                ..base.clone()
            };
            b.push(
                at,
                Action::Link {
                    a: None,
                    b: None,
                    model,
                },
            );
        }
        2 => {
            // A member crashes; it comes back at the heal or earlier.
            if let Some(node) = b.pick(&present[1.min(present.len())..]) {
                b.push(at, Action::Crash { node: node.clone() });
                if b.rng.gen_bool(0.5) {
                    let back = until(b);
                    b.push(back, Action::Restart { node: node.clone() });
                    b.downs.push((node, at, back));
                } else {
                    // Faults are drawn in no time order: a removal drawn earlier but later in
                    // time keeps the member gone for good (it must not be restarted at the heal
                    // and then be picked for a probe).
                    let gone = b.gone.entry(node).or_insert((at, Gone::Crashed));
                    gone.0 = gone.0.min(at);
                }
            }
        }
        3 => {
            // A rented relay crashes and restarts (on a new port).
            let relays = b.rented_relays_up();
            if let Some(relay) = b.pick(&relays) {
                b.push(
                    at,
                    Action::Crash {
                        node: relay.clone(),
                    },
                );
                b.gone.insert(relay, (at, Gone::Crashed));
            }
        }
        4 if present.len() > 3 => {
            // A clean leave, for good.
            let candidates: Vec<String> = present[1..]
                .iter()
                .filter(|n| !b.is_admin(n))
                .cloned()
                .collect();
            if let Some(node) = b.pick(&candidates) {
                b.push(at, Action::Leave { node: node.clone() });
                b.gone.insert(node, (at, Gone::ForGood));
            }
        }
        5 => {
            let admins: Vec<String> = present.iter().filter(|n| b.is_admin(n)).cloned().collect();
            if let Some(admin) = b.pick(&admins) {
                let name = format!("x{}", b.events.len());
                b.push(at, Action::AddChannel { node: admin, name });
            }
        }
        6 if present.len() > 3 => {
            // An admin removes a member, possibly during a partition: the member must learn it.
            let admins: Vec<String> = present.iter().filter(|n| b.is_admin(n)).cloned().collect();
            let targets: Vec<String> = b
                .nodes
                .iter()
                .filter(|n| n.member && !n.admin && !n.relay && !b.removed.contains(&n.name))
                .filter(|n| !b.role_changed.contains(&n.name))
                .filter(|n| b.joins.get(&n.name).is_none_or(|j| *j < at))
                .map(|n| n.name.clone())
                .collect();
            if let (Some(admin), Some(member)) = (b.pick(&admins), b.pick(&targets)) {
                b.push(
                    at,
                    Action::RemoveMember {
                        node: admin,
                        member: member.clone(),
                    },
                );
                b.removed.insert(member.clone());
                let since = b.gone.get(&member).map_or(at, |(t, _)| t.min(at));
                b.gone.insert(member, (since, Gone::ForGood));
            }
        }
        7 => {
            // A PTT storm: several presses at once on random channels.
            for _ in 0..b.rng.gen_range(2..=5) {
                let Some(node) = b.pick(&present) else { break };
                let spoken = b.channels_spoken_by(&node);
                let Some(channel) = b.pick(&spoken) else {
                    continue;
                };
                let start = at + b.rng.gen_range(0.0..0.5);
                let duration_s = b.rng.gen_range(0.3..2.5_f64);
                let duration_s = duration_s.min(heal_s - start).max(0.1);
                b.push(
                    start,
                    Action::Ptt {
                        node,
                        channels: vec![channel],
                        duration_s,
                    },
                );
            }
        }
        9 if present.len() >= 2 => {
            // A partition that leaves one side without any relay (rented or volunteer).
            let relays: Vec<String> = b
                .nodes
                .iter()
                .filter(|n| n.rented_relay || n.relay)
                .map(|n| n.name.clone())
                .collect();
            let mut members: Vec<String> = b
                .nodes
                .iter()
                .filter(|n| !n.rented_relay && !n.relay)
                .map(|n| n.name.clone())
                .collect();
            if relays.is_empty() || members.len() < 2 {
                return;
            }
            members.shuffle(&mut b.rng);
            let cut = b.rng.gen_range(1..members.len());
            let with_relays: Vec<String> =
                relays.into_iter().chain(members[cut..].to_vec()).collect();
            let groups = vec![with_relays, members[..cut].to_vec()];
            b.push(at, Action::Partition { groups });
            let end = until(b);
            b.push(end, Action::Heal);
        }
        10 => {
            // The root admin (never crashed, removed or late) changes a member's role and
            // back, both inside the fault phase (the probes speak as the scenario's roles say).
            let admin = "m00".to_string();
            let targets: Vec<String> = present
                .iter()
                .filter(|n| !b.is_admin(n) && !b.removed.contains(*n))
                .cloned()
                .collect();
            if let Some(member) = b.pick(&targets) {
                b.role_changed.insert(member.clone());
                let Some(role) = b
                    .nodes
                    .iter()
                    .find(|n| n.name == member)
                    .map(|n| n.role.clone())
                else {
                    return;
                };
                let other = if role == "officer" {
                    "pilot"
                } else {
                    "officer"
                };
                let back = until(b);
                b.push(
                    at,
                    Action::SetRole {
                        node: admin.clone(),
                        member: member.clone(),
                        role: other.into(),
                    },
                );
                b.push(
                    back,
                    Action::SetRole {
                        node: admin,
                        member,
                        role,
                    },
                );
            }
        }
        11 => {
            // An emergency by a role that may not raise one: refused everywhere.
            let half = b.half_duplex();
            let pilots = b.with_role(&present, "pilot");
            if let (Some(channel), Some(node)) = (b.pick(&half), b.pick(&pilots)) {
                let duration_s = b.rng.gen_range(0.5..2.0_f64).min(heal_s - at).max(0.1);
                b.push(
                    at,
                    Action::Emergency {
                        node,
                        channel,
                        duration_s,
                    },
                );
            }
        }
        12 => {
            // A rented relay crashes before the heal and comes back only after it (on a new
            // port), while members re-plan without it.
            let relays = b.rented_relays_up();
            if let Some(relay) = b.pick(&relays) {
                b.push(
                    at,
                    Action::Crash {
                        node: relay.clone(),
                    },
                );
                b.push(
                    heal_s + 2.0,
                    Action::Restart {
                        node: relay.clone(),
                    },
                );
                // Not restarted at the heal, and not crashed again.
                b.gone.insert(relay, (at, Gone::ForGood));
            }
        }
        13 => {
            // A member crashes while it holds a half-duplex floor, and restarts later.
            let half = b.half_duplex();
            let Some(channel) = b.pick(&half) else {
                return;
            };
            let talkers: Vec<String> = present[1.min(present.len())..]
                .iter()
                .filter(|n| b.channels_spoken_by(n).contains(&channel))
                .cloned()
                .collect();
            if let Some(node) = b.pick(&talkers) {
                b.push(
                    at,
                    Action::Ptt {
                        node: node.clone(),
                        channels: vec![channel],
                        duration_s: 2.0_f64.min(heal_s - at).max(0.1),
                    },
                );
                let crash = at + 0.7;
                if crash + 0.5 < heal_s {
                    b.push(crash, Action::Crash { node: node.clone() });
                    let back = b.rng.gen_range(crash + 0.5..=heal_s);
                    b.push(back, Action::Restart { node: node.clone() });
                    b.downs.push((node, crash, back));
                }
            }
        }
        _ => {
            // An officer's emergency on a half-duplex channel, cleared by an admin.
            let half = b.half_duplex();
            let officers = b.with_role(&present, "officer");
            if let (Some(channel), Some(node)) = (b.pick(&half), b.pick(&officers)) {
                let duration_s = b.rng.gen_range(0.5..2.0_f64).min(heal_s - at).max(0.1);
                b.push(
                    at,
                    Action::Emergency {
                        node: node.clone(),
                        channel: channel.clone(),
                        duration_s,
                    },
                );
                let admins: Vec<String> =
                    present.iter().filter(|n| b.is_admin(n)).cloned().collect();
                if let Some(admin) = b.pick(&admins) {
                    let clear = (at + duration_s + 0.5).min(heal_s);
                    b.push(
                        clear,
                        Action::ClearEmergency {
                            node: admin,
                            channel,
                            raiser: node,
                        },
                    );
                }
            }
        }
    }
}
