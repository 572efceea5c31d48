//! A simulated network of sans-IO [`Member`]s in virtual time: every control message and
//! datagram goes through its wire form and arrives after a fixed one-way latency; ordered
//! control requests are acknowledged after another; dials to a known peer link the pair.

use callsign_keys::{Identity, IdentityKey, NodeKeys};
use callsign_mesh::admission::JoinRequest;
use callsign_mesh::charter::{
    ChannelId, ChannelPolicy, Charter, OpBody, Permissions, Priority, RelayInfo, Role,
};
use callsign_mesh::control::ControlMessage;
use callsign_mesh::forward::{envelope, ForwarderConfig};
use callsign_mesh::member::{
    Command, Event, Frame, Input, LinkKind, LinkUp, Member, MemberConfig, Output, Target,
};
use callsign_mesh::voice::{KeyScheduleConfig, ReceivedFrame, VoiceFlags};
use libp2p_identity::PeerId;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub const ROOT: usize = 0;

pub enum Delivery {
    Control {
        from: usize,
        bytes: Vec<u8>,
        ordered: Option<u64>,
    },
    Ack {
        from: usize,
        number: u64,
    },
    Failed {
        to: usize,
        number: u64,
    },
    Datagram {
        from: usize,
        bytes: Vec<u8>,
    },
}

pub struct Net {
    pub members: Vec<Member>,
    pub peers: Vec<PeerId>,
    pub keys: Vec<IdentityKey>,
    pub now: Instant,
    pub latency: Duration,
    /// (arrival, sequence) → (to, what).
    pub queue: BTreeMap<(Instant, u64), (usize, Delivery)>,
    pub seq: u64,
    pub links: BTreeSet<(usize, usize)>,
    /// (from, to): datagrams between them vanish while control still flows (a relay that
    /// forwards nothing to one member, a path that carries only streams).
    pub blackholed: BTreeSet<(usize, usize)>,
    /// Pairs (lower index first) that cannot link: dials between them go nowhere.
    pub cut: BTreeSet<(usize, usize)>,
    /// Ordered requests whose delivery fails instead (to test restarts), by sender.
    pub fail_next_ordered: BTreeSet<usize>,
    pub played: Vec<Vec<ReceivedFrame>>,
    pub events: Vec<Vec<Event>>,
    pub transmit: Vec<Option<Target>>,
    pub forwarded: Vec<u64>,
    /// Every `Output::Announce`: (from, to, the message).
    pub announced: Vec<(usize, usize, ControlMessage)>,
}

pub struct Org {
    pub charter: Charter,
    pub ids: Vec<Identity>,
    pub keys: Vec<NodeKeys>,
    pub channel: ChannelId,
}

/// `n` members (0 is the root admin) who may all speak and listen on `/ops`; with `relay`, one
/// more node, a rented relay the charter lists, and `/ops` moves to it above `threshold`.
pub fn org(n: usize, relay: bool, threshold: u8) -> Org {
    org_with_relays(n, usize::from(relay), threshold)
}

/// `n` members and `relays` rented relays (the last nodes), all preferred for `/ops`, which
/// moves to a relay above `threshold` listeners.
pub fn org_with_relays(n: usize, relays: usize, threshold: u8) -> Org {
    let mut rng = StdRng::seed_from_u64(7);
    let keys: Vec<NodeKeys> = (0..n + relays)
        .map(|_| NodeKeys::generate(&mut rng))
        .collect();
    let ids: Vec<Identity> = keys.iter().map(|k| k.identity.clone()).collect();
    let root = &ids[ROOT];
    let (mut c, _) = Charter::create(root, "Net", 0).unwrap();
    let all = Permissions::LISTEN
        .union(Permissions::SPEAK)
        .union(Permissions::WHISPER);
    c.edit(
        root,
        OpBody::PutRole {
            name: "member".into(),
            role: Role {
                perms: all,
                priority: Priority::NORMAL,
            },
        },
        0,
    )
    .unwrap();
    c.edit(
        root,
        OpBody::AddChannel {
            parent: None,
            name: "ops".into(),
        },
        0,
    )
    .unwrap();
    let channel = c.state().find("/ops").unwrap();
    for (i, id) in ids.iter().enumerate().take(n).skip(1) {
        c.edit(
            root,
            OpBody::PutMember {
                peer: id.public(),
                name: format!("m{i}"),
                roles: vec!["member".into()],
            },
            0,
        )
        .unwrap();
    }
    let rented: Vec<IdentityKey> = ids[n..].iter().map(Identity::public).collect();
    for (i, relay) in rented.iter().enumerate() {
        let addr = format!("/ip4/192.0.2.{}/udp/4433/quic-v1", n + i);
        let info = RelayInfo {
            addrs: vec![addr.parse::<multiaddr::Multiaddr>().unwrap().to_vec()],
            capacity: 100,
        };
        let body = OpBody::PutRelay { peer: *relay, info };
        c.edit(root, body, 0).unwrap();
    }
    if !rented.is_empty() {
        let policy = ChannelPolicy {
            mesh_threshold: threshold,
            preferred_relays: if rented.len() > 1 {
                rented.clone()
            } else {
                Vec::new()
            },
            ..ChannelPolicy::default()
        };
        c.edit(root, OpBody::SetChannelPolicy { channel, policy }, 0)
            .unwrap();
    }
    Org {
        charter: c,
        ids,
        keys,
        channel,
    }
}

/// Member `i` of `org` with `keys` (a rented relay with `relay`; joining with `join`).
fn member(
    org: &Org,
    keys: &NodeKeys,
    i: usize,
    relay: bool,
    join: Option<JoinRequest>,
    start: Instant,
) -> Member {
    Member::new(
        MemberConfig {
            keys: keys.clone(),
            charter: org.charter.clone(),
            display_name: format!("m{i}"),
            listening: if relay { Vec::new() } else { vec![org.channel] },
            unix_at_start_ms: 1_700_000_000_000,
            presence_interval: Duration::from_secs(2),
            keys_schedule: KeyScheduleConfig::default(),
            floor: Default::default(),
            topology: Default::default(),
            uplink_kbps: 0,
            forwarding: relay.then(ForwarderConfig::default),
            vouched: relay,
            join,
            bootstrap: Vec::new(),
            announce: None,
            send_loss: 0.0,
            tap_voice: false,
            seed: i as u64,
        },
        start,
    )
}

impl Net {
    /// A newcomer who is not in the charter, joining with `join`: its index.
    pub fn add(&mut self, org: &Org, keys: &NodeKeys, join: JoinRequest) -> usize {
        let i = self.members.len();
        let newcomer = member(org, keys, i, false, Some(join), self.now);
        self.members.push(newcomer);
        self.peers.push(keys.identity.public().peer_id());
        self.keys.push(keys.identity.public());
        self.played.push(Vec::new());
        self.events.push(Vec::new());
        self.transmit.push(None);
        self.forwarded.push(0);
        self.drain(i);
        i
    }

    pub fn new(org: &Org, relays: usize) -> Self {
        let start = Instant::now();
        let count = org.keys.len();
        let members: Vec<Member> = org
            .keys
            .iter()
            .enumerate()
            .map(|(i, keys)| member(org, keys, i, i >= count - relays, None, start))
            .collect();
        let n = members.len();
        let mut net = Self {
            peers: org.ids.iter().map(|i| i.public().peer_id()).collect(),
            keys: org.ids.iter().map(Identity::public).collect(),
            members,
            now: start,
            latency: Duration::from_millis(20),
            queue: BTreeMap::new(),
            seq: 0,
            links: BTreeSet::new(),
            blackholed: BTreeSet::new(),
            cut: BTreeSet::new(),
            fail_next_ordered: BTreeSet::new(),
            played: vec![Vec::new(); n],
            events: vec![Vec::new(); n],
            transmit: vec![None; n],
            forwarded: vec![0; n],
            announced: Vec::new(),
        };
        for i in 0..n {
            net.drain(i);
        }
        net
    }

    pub fn index(&self, peer: &PeerId) -> Option<usize> {
        self.peers.iter().position(|p| p == peer)
    }

    pub fn addr(i: usize) -> SocketAddr {
        SocketAddr::from(([198, 51, 100, i as u8 + 1], 4433))
    }

    /// Links `a` and `b` (both see a direct QUIC link come up).
    pub fn link(&mut self, a: usize, b: usize) {
        let key = (a.min(b), a.max(b));
        if self.cut.contains(&key) || !self.links.insert(key) {
            return;
        }
        for (me, other) in [(a, b), (b, a)] {
            let up = LinkUp {
                peer: self.peers[other],
                kind: LinkKind::Direct,
                remote: Some(Self::addr(other)),
                circuit: None,
                dialed: None,
                restarted: false,
                resumed: false,
                beside_circuit: false,
                rtt: Some(self.latency * 2),
            };
            self.input(me, Input::LinkUp(up));
        }
    }

    pub fn unlink(&mut self, a: usize, b: usize) {
        if !self.links.remove(&(a.min(b), a.max(b))) {
            return;
        }
        let (pa, pb) = (self.peers[a], self.peers[b]);
        self.input(a, Input::LinkDown(pb));
        self.input(b, Input::LinkDown(pa));
    }

    pub fn linked(&self, a: usize, b: usize) -> bool {
        self.links.contains(&(a.min(b), a.max(b)))
    }

    pub fn mesh(&mut self, nodes: &[usize]) {
        for (i, a) in nodes.iter().enumerate() {
            for b in &nodes[i + 1..] {
                self.link(*a, *b);
            }
        }
    }

    pub fn input(&mut self, i: usize, input: Input) {
        self.members[i].handle_input(self.now, input);
        self.drain(i);
    }

    pub fn send(&mut self, from: usize, to: usize, what: Delivery) {
        if !self.linked(from, to)
            || (matches!(what, Delivery::Datagram { .. }) && self.blackholed.contains(&(from, to)))
        {
            return;
        }
        self.seq += 1;
        self.queue
            .insert((self.now + self.latency, self.seq), (to, what));
    }

    pub fn drain(&mut self, i: usize) {
        while let Some(output) = self.members[i].poll_output() {
            match output {
                Output::Control {
                    peer,
                    bytes,
                    ordered,
                } => {
                    let Some(to) = self.index(&peer) else {
                        continue;
                    };
                    if ordered.is_some() && self.fail_next_ordered.remove(&i) {
                        let number = ordered.unwrap_or_default();
                        self.seq += 1;
                        let at = self.now + self.latency;
                        // A lost request: the sender hears of it after a round trip.
                        self.queue.insert(
                            (at + self.latency, self.seq),
                            (i, Delivery::Failed { to, number }),
                        );
                        continue;
                    }
                    self.send(
                        i,
                        to,
                        Delivery::Control {
                            from: i,
                            bytes,
                            ordered,
                        },
                    );
                }
                // Delivered as the unordered control it is where the runtime has no plane.
                Output::Announce { peer, bytes } => {
                    if let Some(to) = self.index(&peer) {
                        let message = ControlMessage::decode(&bytes).expect("announced");
                        self.announced.push((i, to, message));
                        let control = Delivery::Control {
                            from: i,
                            bytes,
                            ordered: None,
                        };
                        self.send(i, to, control);
                    }
                }
                Output::Datagram { peers, bytes } => {
                    for peer in peers {
                        if let Some(to) = self.index(&peer) {
                            let bytes = bytes.clone();
                            self.send(i, to, Delivery::Datagram { from: i, bytes });
                        }
                    }
                }
                Output::Forward {
                    packet,
                    plain,
                    enveloped,
                    ..
                } => {
                    for peer in plain.iter() {
                        if let Some(to) = self.index(peer) {
                            self.forwarded[i] += 1;
                            let bytes = packet.clone();
                            self.send(i, to, Delivery::Datagram { from: i, bytes });
                        }
                    }
                    for peer in enveloped.iter() {
                        if let Some(to) = self.index(peer) {
                            let bytes = envelope(&packet);
                            self.send(i, to, Delivery::Datagram { from: i, bytes });
                        }
                    }
                }
                Output::Dial {
                    peer: Some(peer), ..
                } => {
                    if let Some(to) = self.index(&peer) {
                        self.link(i, to);
                    }
                }
                Output::CloseLink(peer) => {
                    if let Some(to) = self.index(&peer) {
                        self.unlink(i, to);
                    }
                }
                Output::Play(frame) => self.played[i].push(frame),
                Output::Transmit(target) => self.transmit[i] = target,
                Output::Event(event) => self.events[i].push(event),
                _ => {}
            }
        }
    }

    /// Runs the network until `at` (virtual): deliveries and timers in time order.
    pub fn run_until(&mut self, at: Instant) {
        loop {
            let delivery = self.queue.keys().next().map(|(t, _)| *t);
            let (timer, node) = (0..self.members.len())
                .map(|i| (self.members[i].poll_timeout(), i))
                .min()
                .expect("members");
            let next = delivery.map_or(timer, |d| d.min(timer));
            if next > at {
                break;
            }
            self.now = self.now.max(next);
            if delivery == Some(next) {
                let key = *self.queue.keys().next().expect("delivery");
                let (to, what) = self.queue.remove(&key).expect("delivery");
                match what {
                    Delivery::Control {
                        from,
                        bytes,
                        ordered,
                    } => {
                        let peer = self.peers[from];
                        self.input(to, Input::Control(peer, bytes));
                        if let Some(number) = ordered {
                            self.send(to, from, Delivery::Ack { from: to, number });
                        }
                    }
                    Delivery::Failed { to: peer, number } => {
                        let peer = self.peers[peer];
                        self.input(to, Input::ControlFailed(peer, number));
                    }
                    Delivery::Ack { from, number } => {
                        let peer = self.peers[from];
                        self.input(to, Input::ControlAcked(peer, number));
                    }
                    Delivery::Datagram { from, bytes } => {
                        let input = Input::Datagram {
                            peer: self.peers[from],
                            bytes: &bytes,
                            received_at: self.now,
                        };
                        self.input(to, input);
                    }
                }
            } else {
                self.input(node, Input::Timeout);
            }
        }
        self.now = at;
    }

    pub fn run_for(&mut self, span: Duration) {
        self.run_until(self.now + span);
    }

    /// `speaker` holds PTT on `channel` and sends `frames` 20 ms frames.
    pub fn talk(&mut self, speaker: usize, channel: ChannelId, frames: u16) {
        self.input(speaker, Input::Command(Command::PttDown(vec![channel])));
        for sequence in 0..frames {
            let Some(target) = self.transmit[speaker].clone() else {
                self.run_for(Duration::from_millis(20));
                continue;
            };
            let mut flags = VoiceFlags::default();
            if sequence == 0 {
                flags = flags.union(VoiceFlags::START);
            }
            let frame = Frame {
                target,
                flags,
                sequence,
                timestamp: u32::from(sequence) * 960,
                payload: vec![sequence as u8; 40],
            };
            self.input(speaker, Input::Frame(frame));
            self.run_for(Duration::from_millis(20));
        }
        self.input(speaker, Input::Command(Command::PttUp));
    }

    pub fn heard(&self, listener: usize, speaker: usize) -> usize {
        self.played[listener]
            .iter()
            .filter(|f| f.sender == self.keys[speaker])
            .count()
    }

    pub fn sessions(&self, i: usize) -> BTreeSet<IdentityKey> {
        self.events[i]
            .iter()
            .filter_map(|e| match e {
                Event::SessionUp { peer } => Some(*peer),
                _ => None,
            })
            .collect()
    }
}
