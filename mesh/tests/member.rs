//! The member's whole protocol on a simulated network of sans-IO [`Member`]s, in virtual time:
//! every control message and datagram goes through its wire form and arrives after a fixed
//! one-way latency; ordered control requests are acknowledged after another; dials to a known
//! peer link the pair. No sockets, no sleeps: each test takes milliseconds of CPU.

use callsign_keys::{Identity, IdentityKey, NodeKeys};
use callsign_mesh::charter::{
    ChannelId, ChannelPolicy, Charter, OpBody, Permissions, Priority, RelayInfo, Role,
};
use callsign_mesh::forward::{envelope, ForwarderConfig};
use callsign_mesh::member::{
    Command, Event, Frame, Input, LinkKind, LinkUp, Member, MemberConfig, Output,
    Role as MemberRole, Target,
};
use callsign_mesh::topology::Route;
use callsign_mesh::voice::{KeyScheduleConfig, ReceivedFrame, VoiceFlags};
use libp2p_identity::PeerId;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const ROOT: usize = 0;

enum Delivery {
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

struct Net {
    members: Vec<Member>,
    peers: Vec<PeerId>,
    keys: Vec<IdentityKey>,
    now: Instant,
    latency: Duration,
    /// (arrival, sequence) → (to, what).
    queue: BTreeMap<(Instant, u64), (usize, Delivery)>,
    seq: u64,
    links: BTreeSet<(usize, usize)>,
    /// Ordered requests whose delivery fails instead (to test restarts), by sender.
    fail_next_ordered: BTreeSet<usize>,
    played: Vec<Vec<ReceivedFrame>>,
    events: Vec<Vec<Event>>,
    transmit: Vec<Option<Target>>,
    forwarded: Vec<u64>,
}

struct Org {
    charter: Charter,
    ids: Vec<Identity>,
    keys: Vec<NodeKeys>,
    channel: ChannelId,
}

/// `n` members (0 is the root admin) who may all speak and listen on `/ops`; with `relay`, one
/// more node, a rented relay the charter lists, and `/ops` moves to it above `threshold`.
fn org(n: usize, relay: bool, threshold: u8) -> Org {
    let mut rng = StdRng::seed_from_u64(7);
    let keys: Vec<NodeKeys> = (0..n + usize::from(relay))
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
    if relay {
        let relay = ids[n].public();
        c.edit(
            root,
            OpBody::PutRelay {
                peer: relay,
                info: RelayInfo {
                    addrs: vec![format!("/ip4/192.0.2.{n}/udp/4433/quic-v1")
                        .parse::<multiaddr::Multiaddr>()
                        .unwrap()
                        .to_vec()],
                    capacity: 100,
                },
            },
            0,
        )
        .unwrap();
        c.edit(
            root,
            OpBody::SetChannelPolicy {
                channel,
                policy: ChannelPolicy {
                    mesh_threshold: threshold,
                    ..ChannelPolicy::default()
                },
            },
            0,
        )
        .unwrap();
    }
    Org {
        charter: c,
        ids,
        keys,
        channel,
    }
}

impl Net {
    fn new(org: &Org, relays: usize) -> Self {
        let start = Instant::now();
        let count = org.keys.len();
        let members: Vec<Member> = org
            .keys
            .iter()
            .enumerate()
            .map(|(i, keys)| {
                let relay = i >= count - relays;
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
                        join: None,
                        bootstrap: Vec::new(),
                        announce: None,
                        send_loss: 0.0,
                        tap_voice: false,
                        seed: i as u64,
                    },
                    start,
                )
            })
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
            fail_next_ordered: BTreeSet::new(),
            played: vec![Vec::new(); n],
            events: vec![Vec::new(); n],
            transmit: vec![None; n],
            forwarded: vec![0; n],
        };
        for i in 0..n {
            net.drain(i);
        }
        net
    }

    fn index(&self, peer: &PeerId) -> Option<usize> {
        self.peers.iter().position(|p| p == peer)
    }

    fn addr(i: usize) -> SocketAddr {
        SocketAddr::from(([198, 51, 100, i as u8 + 1], 4433))
    }

    /// Links `a` and `b` (both see a direct QUIC link come up).
    fn link(&mut self, a: usize, b: usize) {
        let key = (a.min(b), a.max(b));
        if !self.links.insert(key) {
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
                rtt: Some(self.latency * 2),
            };
            self.input(me, Input::LinkUp(up));
        }
    }

    fn unlink(&mut self, a: usize, b: usize) {
        if !self.links.remove(&(a.min(b), a.max(b))) {
            return;
        }
        let (pa, pb) = (self.peers[a], self.peers[b]);
        self.input(a, Input::LinkDown(pb));
        self.input(b, Input::LinkDown(pa));
    }

    fn linked(&self, a: usize, b: usize) -> bool {
        self.links.contains(&(a.min(b), a.max(b)))
    }

    fn mesh(&mut self, nodes: &[usize]) {
        for (i, a) in nodes.iter().enumerate() {
            for b in &nodes[i + 1..] {
                self.link(*a, *b);
            }
        }
    }

    fn input(&mut self, i: usize, input: Input) {
        self.members[i].handle_input(self.now, input);
        self.drain(i);
    }

    fn send(&mut self, from: usize, to: usize, what: Delivery) {
        if !self.linked(from, to) {
            return;
        }
        self.seq += 1;
        self.queue
            .insert((self.now + self.latency, self.seq), (to, what));
    }

    fn drain(&mut self, i: usize) {
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
                Output::Datagram { peer, bytes } => {
                    if let Some(to) = self.index(&peer) {
                        self.send(i, to, Delivery::Datagram { from: i, bytes });
                    }
                }
                Output::Forward {
                    packet,
                    plain,
                    enveloped,
                    ..
                } => {
                    for peer in plain {
                        if let Some(to) = self.index(&peer) {
                            self.forwarded[i] += 1;
                            let bytes = packet.clone();
                            self.send(i, to, Delivery::Datagram { from: i, bytes });
                        }
                    }
                    for peer in enveloped {
                        if let Some(to) = self.index(&peer) {
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
                Output::Play(frame) => self.played[i].push(frame),
                Output::Transmit(target) => self.transmit[i] = target,
                Output::Event(event) => self.events[i].push(event),
                _ => {}
            }
        }
    }

    /// Runs the network until `at` (virtual): deliveries and timers in time order.
    fn run_until(&mut self, at: Instant) {
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
                            bytes,
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

    fn run_for(&mut self, span: Duration) {
        self.run_until(self.now + span);
    }

    /// `speaker` holds PTT on `channel` and sends `frames` 20 ms frames.
    fn talk(&mut self, speaker: usize, channel: ChannelId, frames: u16) {
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

    fn heard(&self, listener: usize, speaker: usize) -> usize {
        self.played[listener]
            .iter()
            .filter(|f| f.sender == self.keys[speaker])
            .count()
    }

    fn sessions(&self, i: usize) -> BTreeSet<IdentityKey> {
        self.events[i]
            .iter()
            .filter_map(|e| match e {
                Event::SessionUp { peer } => Some(*peer),
                _ => None,
            })
            .collect()
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn linked_members_pair_up_and_hear_each_other() {
    let org = org(3, false, 6);
    let mut net = Net::new(&org, 0);
    net.mesh(&[0, 1, 2]);
    net.run_for(secs(1));
    for i in 0..3 {
        assert_eq!(
            net.sessions(i).len(),
            2,
            "member {i} paired with both others"
        );
    }
    net.talk(1, org.channel, 50);
    net.run_for(secs(1));
    assert_eq!(net.heard(0, 1), 50);
    assert_eq!(net.heard(2, 1), 50);
    assert_eq!(net.heard(1, 1), 0, "nobody hears itself");
}

#[test]
fn a_charter_edit_reaches_members_not_linked_to_its_author_by_gossip() {
    let org = org(3, false, 6);
    let mut net = Net::new(&org, 0);
    // A line: 0 — 1 — 2.
    net.link(0, 1);
    net.link(1, 2);
    net.run_for(secs(1));
    let body = OpBody::AddChannel {
        parent: None,
        name: "logistics".into(),
    };
    net.input(ROOT, Input::Command(Command::EditCharter(body)));
    net.run_for(secs(1));
    let hash = net.members[0].state().state_hash();
    for i in 1..3 {
        assert_eq!(net.members[i].state().state_hash(), hash, "member {i}");
        assert!(net.members[i].state().find("/logistics").is_some());
    }
    assert!(net.events[2]
        .iter()
        .any(|e| matches!(e, Event::CharterChanged { ops: 1 })));
}

#[test]
fn members_heard_of_through_presence_are_dialed_by_the_lower_peer_id() {
    let org = org(3, false, 6);
    let mut net = Net::new(&org, 0);
    net.link(0, 1);
    net.link(1, 2);
    // Presence carries addresses: members announce their listeners.
    for i in 0..3 {
        let listening = vec![format!("/ip4/198.51.100.{}/udp/4433/quic-v1", i + 1)
            .parse()
            .unwrap()];
        net.input(
            i,
            Input::Addresses {
                listening,
                external: Vec::new(),
            },
        );
    }
    net.run_for(secs(3));
    assert!(net.linked(0, 2), "0 and 2 found each other through 1");
    net.run_for(secs(1));
    assert_eq!(net.sessions(0).len(), 2);
    assert_eq!(net.sessions(2).len(), 2);
}

#[test]
fn a_lost_ordered_request_restarts_the_session_and_voice_resumes() {
    let org = org(2, false, 6);
    let mut net = Net::new(&org, 0);
    net.link(0, 1);
    net.run_for(secs(1));
    assert_eq!(net.sessions(0).len(), 1);
    // The next ordered request 0 sends is lost: 0 starts its control with 1 over.
    net.fail_next_ordered.insert(0);
    net.input(0, Input::Command(Command::Unlisten(org.channel)));
    net.input(0, Input::Command(Command::Listen(org.channel)));
    net.run_for(secs(2));
    let ups = net.events[0]
        .iter()
        .filter(|e| matches!(e, Event::SessionUp { .. }))
        .count();
    assert_eq!(ups, 2, "the session came up again");
    net.talk(1, org.channel, 25);
    net.run_for(secs(1));
    assert_eq!(net.heard(0, 1), 25);
}

#[test]
fn a_restarted_peer_gets_a_new_session_and_old_keys_are_dropped() {
    let org = org(2, false, 6);
    let mut net = Net::new(&org, 0);
    net.link(0, 1);
    net.run_for(secs(1));
    net.talk(0, org.channel, 10);
    net.run_for(secs(1));
    assert_eq!(net.heard(1, 0), 10);
    // Member 0 restarts: a fresh machine with the same keys, and 1 sees a second connection.
    let mut fresh = Net::new(&org, 0);
    net.members[0] = fresh.members.remove(0);
    net.input(
        1,
        Input::LinkUp(LinkUp {
            peer: net.peers[0],
            kind: LinkKind::Direct,
            remote: Some(Net::addr(0)),
            circuit: None,
            dialed: None,
            restarted: true,
            rtt: None,
        }),
    );
    let up = LinkUp {
        peer: net.peers[1],
        kind: LinkKind::Direct,
        remote: Some(Net::addr(1)),
        circuit: None,
        dialed: None,
        restarted: false,
        rtt: None,
    };
    net.input(0, Input::LinkUp(up));
    net.run_for(secs(2));
    net.played[1].clear();
    net.talk(0, org.channel, 10);
    net.run_for(secs(1));
    assert_eq!(
        net.heard(1, 0),
        10,
        "the restarted sender's new key reached 1"
    );
}

#[test]
fn a_busy_channel_moves_to_the_rented_relay_which_forwards_what_it_cannot_open() {
    // Four members and a relay; the channel goes to the relay above 2 listeners.
    let org = org(4, true, 2);
    let relay = 4;
    let mut net = Net::new(&org, 1);
    net.mesh(&[0, 1, 2, 3]);
    net.run_for(secs(1));
    // Members dial the relay the charter lists.
    for i in 0..4 {
        assert!(net.linked(i, relay), "member {i} linked to the relay");
    }
    net.run_for(secs(3));
    for i in 0..4 {
        assert_eq!(
            net.members[i].routes().get(&org.channel),
            Some(&Route::Relay(net.keys[relay])),
            "member {i} routes /ops through the relay"
        );
    }
    net.talk(2, org.channel, 50);
    net.run_for(secs(1));
    for listener in [0, 1, 3] {
        let heard = net.heard(listener, 2);
        assert!(heard >= 50, "member {listener} heard {heard} of 50");
    }
    assert!(
        net.forwarded[relay] >= 100,
        "the relay forwarded the frames"
    );
    assert_eq!(net.members[relay].role(), MemberRole::Relay);
    assert_eq!(net.members[relay].receiver().keys_held(), 0, "no audio key");
    assert!(net.played[relay].is_empty());
}

#[test]
fn when_the_relay_goes_the_channel_falls_back_to_the_mesh() {
    let org = org(4, true, 2);
    let relay = 4;
    let mut net = Net::new(&org, 1);
    net.mesh(&[0, 1, 2, 3]);
    net.run_for(secs(4));
    assert_eq!(
        net.members[0].routes().get(&org.channel),
        Some(&Route::Relay(net.keys[relay]))
    );
    for i in 0..4 {
        net.unlink(i, relay);
    }
    // The relay is unreachable now: redials go nowhere.
    net.peers[relay] = PeerId::random();
    net.run_for(Duration::from_millis(500));
    assert_eq!(
        net.members[0].routes().get(&org.channel),
        Some(&Route::Mesh)
    );
    net.talk(1, org.channel, 25);
    net.run_for(secs(1));
    for listener in [0, 2, 3] {
        assert_eq!(net.heard(listener, 1), 25, "member {listener}");
    }
}

#[test]
fn a_removed_member_loses_the_audio_and_its_control() {
    let org = org(3, false, 6);
    let mut net = Net::new(&org, 0);
    net.mesh(&[0, 1, 2]);
    net.run_for(secs(1));
    let removed = org.ids[2].public();
    net.input(
        ROOT,
        Input::Command(Command::EditCharter(OpBody::RemoveMember { peer: removed })),
    );
    net.run_for(secs(1));
    net.played[2].clear();
    net.talk(1, org.channel, 25);
    net.run_for(secs(1));
    assert_eq!(net.heard(0, 1), 25);
    assert_eq!(net.heard(2, 1), 0, "the removed member hears nothing");
}

#[test]
fn ptt_where_the_charter_refuses_is_denied_at_the_sender() {
    let org = org(2, false, 6);
    let mut net = Net::new(&org, 0);
    net.link(0, 1);
    net.run_for(secs(1));
    let unknown = ChannelId(999);
    net.input(1, Input::Command(Command::PttDown(vec![unknown])));
    assert!(net.events[1]
        .iter()
        .any(|e| matches!(e, Event::PttDenied { .. })));
    assert_eq!(net.transmit[1], None);
}

#[test]
fn garbage_from_the_network_is_dropped_without_harm() {
    let org = org(2, false, 6);
    let mut net = Net::new(&org, 0);
    net.link(0, 1);
    net.run_for(secs(1));
    let peer = net.peers[1];
    for bytes in [vec![], vec![1], vec![1, 200, 3], vec![0xff; 300]] {
        net.input(0, Input::Control(peer, bytes.clone()));
        let input = Input::Datagram {
            peer,
            bytes,
            received_at: net.now,
        };
        net.input(0, input);
    }
    net.talk(1, org.channel, 10);
    net.run_for(secs(1));
    assert_eq!(net.heard(0, 1), 10, "the link still works");
}
