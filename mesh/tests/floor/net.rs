//! The floor tests' network: sans-IO `FloorControl`s exchanging wire-form messages after a
//! fixed one-way latency (plus any extra per directed pair), in virtual time.

use callsign_keys::{Identity, IdentityKey};
use callsign_mesh::charter::{
    ChannelId, ChannelPolicy, Charter, CharterState, FloorMode, OpBody, Permissions, Priority,
    RelayInfo, Role,
};
use callsign_mesh::floor::{
    arbiter_for, FloorConfig, FloorControl, FloorError, FloorEvent, FloorMessage, LocalFloor,
};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

pub const A: usize = 0; // member, priority 2
pub const B: usize = 1; // member, priority 2
pub const C: usize = 2; // lead, priority 3
pub const D: usize = 3; // chief, priority 4 (emergency)
pub const ROOT: usize = 4; // admin
pub const RELAY: usize = 5; // rented relay: a member without channel rights

pub struct Net {
    pub state: CharterState,
    pub channel: ChannelId,
    pub keys: Vec<IdentityKey>,
    pub nodes: Vec<FloorControl>,
    pub latency: Duration,
    /// Extra one-way latency from one node to another.
    pub slow: BTreeMap<(usize, usize), Duration>,
    pub start: Instant,
    pub now: Instant,
    /// (arrival, sequence) → (from, to, wire bytes).
    pub in_flight: BTreeMap<(Instant, u64), (usize, usize, Vec<u8>)>,
    pub sent: u64,
    pub cut: BTreeSet<usize>,
    /// How many of the next messages from one node to another are lost.
    pub lose: BTreeMap<(usize, usize), u32>,
    pub events: Vec<Vec<(Duration, FloorEvent)>>,
}

fn role(perms: Permissions, level: u8) -> Role {
    Role {
        perms,
        priority: Priority::new(level).unwrap(),
    }
}

impl Net {
    pub fn new(latency_ms: u64, config: FloorConfig) -> Self {
        let ids: Vec<Identity> = (0..6)
            .map(|i| Identity::generate(&mut StdRng::seed_from_u64(100 + i)))
            .collect();
        let (mut c, _) = Charter::create(&ids[ROOT], "Net", 0).unwrap();
        let all = Permissions::LISTEN.union(Permissions::SPEAK);
        for (name, role) in [
            ("member", role(all, 2)),
            ("lead", role(all, 3)),
            ("chief", role(all, 4)),
            ("relay", role(Permissions::NONE, 0)),
        ] {
            c.edit(
                &ids[ROOT],
                OpBody::PutRole {
                    name: name.into(),
                    role,
                },
                0,
            )
            .unwrap();
        }
        c.edit(
            &ids[ROOT],
            OpBody::AddChannel {
                parent: None,
                name: "net".into(),
            },
            0,
        )
        .unwrap();
        let channel = c.state().find("/net").unwrap();
        c.edit(
            &ids[ROOT],
            OpBody::SetChannelPolicy {
                channel,
                policy: ChannelPolicy {
                    floor: FloorMode::HalfDuplex,
                    ..ChannelPolicy::default()
                },
            },
            0,
        )
        .unwrap();
        for (i, role) in ["member", "member", "lead", "chief", "member", "relay"]
            .iter()
            .enumerate()
        {
            c.edit(
                &ids[ROOT],
                OpBody::PutMember {
                    peer: ids[i].public(),
                    name: format!("n{i}"),
                    roles: vec![(*role).into()],
                },
                0,
            )
            .unwrap();
        }
        c.edit(
            &ids[ROOT],
            OpBody::PutRelay {
                peer: ids[RELAY].public(),
                info: RelayInfo {
                    addrs: Vec::new(),
                    capacity: 100,
                },
            },
            0,
        )
        .unwrap();
        let state = c.state().clone();
        let start = Instant::now();
        let keys: Vec<IdentityKey> = ids.iter().map(Identity::public).collect();
        let mut nodes: Vec<FloorControl> = keys
            .iter()
            .map(|k| {
                let mut f = FloorControl::new(*k, config.clone(), start, 1_700_000_000_000);
                f.update_charter(&state, start);
                f
            })
            .collect();
        for (i, node) in nodes.iter_mut().enumerate() {
            for (j, k) in keys.iter().enumerate() {
                if i != j {
                    node.peer_up(*k);
                }
            }
        }
        let mut net = Self {
            state,
            channel,
            keys,
            nodes,
            latency: Duration::from_millis(latency_ms),
            slow: BTreeMap::new(),
            start,
            now: start,
            in_flight: BTreeMap::new(),
            sent: 0,
            cut: BTreeSet::new(),
            lose: BTreeMap::new(),
            events: vec![Vec::new(); 6],
        };
        net.run_for(Duration::from_millis(latency_ms * 4));
        net
    }

    /// Default config; with `arbiter`, the rented relay arbitrates (settled before return).
    pub fn in_mode(latency_ms: u64, arbiter: bool) -> Self {
        let mut net = Self::new(latency_ms, FloorConfig::default());
        if arbiter {
            net.set_arbiter(RELAY);
            net.run_for(Duration::from_millis(latency_ms * 5));
        }
        net
    }

    pub fn index(&self, key: &IdentityKey) -> usize {
        self.keys.iter().position(|k| k == key).unwrap()
    }

    pub fn collect(&mut self) {
        for i in 0..self.nodes.len() {
            while let Some((to, message)) = self.nodes[i].poll_transmit() {
                let to = self.index(&to);
                if self.cut.contains(&i) || self.cut.contains(&to) {
                    continue;
                }
                if let Some(n) = self.lose.get_mut(&(i, to)).filter(|n| **n > 0) {
                    *n -= 1;
                    continue;
                }
                self.sent += 1;
                let extra = self.slow.get(&(i, to)).copied().unwrap_or_default();
                self.in_flight.insert(
                    (self.now + self.latency + extra, self.sent),
                    (i, to, message.encode()),
                );
            }
            while let Some(event) = self.nodes[i].poll_event() {
                self.events[i].push((self.now - self.start, event));
            }
        }
    }

    pub fn run_until(&mut self, until: Instant) {
        loop {
            self.collect();
            let message = self.in_flight.keys().next().map(|(t, _)| *t);
            let timer = self
                .nodes
                .iter()
                .filter_map(FloorControl::poll_timeout)
                .min();
            let Some(next) = message.into_iter().chain(timer).min() else {
                break;
            };
            if next > until {
                break;
            }
            self.now = self.now.max(next);
            while let Some(entry) = self.in_flight.first_entry() {
                if entry.key().0 > self.now {
                    break;
                }
                let (from, to, bytes) = entry.remove();
                let message = FloorMessage::decode(&bytes).unwrap();
                let from = self.keys[from];
                let _ = self.nodes[to].handle_message(&self.state, from, message, self.now);
            }
            for node in &mut self.nodes {
                node.handle_timeout(self.now);
            }
        }
        self.now = self.now.max(until);
    }

    pub fn run_for(&mut self, d: Duration) {
        self.run_until(self.now + d);
    }

    pub fn press(&mut self, i: usize) -> Result<(), FloorError> {
        let r = self.nodes[i].press(&self.state, self.channel, false, self.now);
        self.collect();
        r
    }

    pub fn emergency(&mut self, i: usize) -> Result<(), FloorError> {
        let r = self.nodes[i].press(&self.state, self.channel, true, self.now);
        self.collect();
        r
    }

    pub fn release(&mut self, i: usize) {
        self.nodes[i].release(self.now);
        self.collect();
    }

    /// `i`'s links all drop (it crashed): everyone notices.
    pub fn drop_node(&mut self, i: usize) {
        self.cut.insert(i);
        self.in_flight
            .retain(|_, (from, to, _)| *from != i && *to != i);
        for j in 0..self.nodes.len() {
            if j != i {
                let key = self.keys[i];
                self.nodes[j].peer_down(&key, self.now);
            }
        }
        self.collect();
    }

    pub fn set_arbiter(&mut self, arbiter: usize) {
        let key = self.keys[arbiter];
        assert_eq!(arbiter_for(&self.state, self.channel), Some(key));
        for node in &mut self.nodes {
            node.set_arbiter(self.channel, Some(key), self.now);
        }
        self.collect();
    }

    pub fn state(&self, i: usize) -> LocalFloor {
        self.nodes[i].state(self.channel).unwrap()
    }

    /// Every live node agrees `holder` holds the floor, and only it may transmit.
    pub fn assert_one_talker(&self, holder: usize) {
        for (i, node) in self.nodes.iter().enumerate() {
            if self.cut.contains(&i) {
                continue;
            }
            assert_eq!(
                node.holder(self.channel),
                Some(self.keys[holder]),
                "node {i}'s holder"
            );
            assert_eq!(node.may_transmit(self.channel), i == holder, "node {i}");
        }
    }

    pub fn granted_at(&self, i: usize) -> Option<Duration> {
        self.events[i]
            .iter()
            .rev()
            .find(|(_, e)| matches!(e, FloorEvent::Granted { .. }))
            .map(|(t, _)| *t)
    }
}
