//! One member's whole protocol as one sans-IO machine, in the shape of str0m's `Rtc`: the
//! runtime feeds [`Member::handle_input`] with `now` and one [`Input`] (a link came or went, a
//! control message or voice datagram arrived, the user pressed PTT, the capture side encoded a
//! frame, a timer fired) and drains [`Member::poll_output`] ([`Output`]: control messages and
//! datagrams to send, dials, circuit reservations, probes, ops to persist, frames to play,
//! what the transmitter should key, events for the app) and [`Member::poll_timeout`].
//!
//! It owns charter sync, presence, pairwise E2EE sessions and the per-peer control sessions
//! (ordered outbox, acknowledgements, restart rules), the key schedule, the voice receiver,
//! floor control, routes and subscriptions, reachability and the relay role. It never reads a
//! clock, opens a socket or iterates a `HashMap`; randomness comes from seeds in
//! [`MemberConfig`].
//!
//! - `links`: link up and down, control sessions, the control message dispatch.
//! - `presence`: our record, others' records, the dials and circuit reservations they set off.
//! - `session`: pair session steps.
//! - `join`: joining with an invite, both ends.
//! - `floor`: PTT through floor control.
//! - `routes`: mesh or relay per channel, subscriptions at relays.
//! - `relay`: the relay role (forwarding for subscribers, cascading).
//! - `media`: frames out, datagrams in.
//! - `reach`: address observations and probes.

mod event;
mod floor;
mod join;
mod links;
mod media;
mod presence;
mod reach;
mod relay;
mod routes;
mod session;

pub use event::{Event, LinkKind, Target};
pub use routes::{REPLAN_INTERVAL, SWITCH_OVERLAP};

use crate::admission::JoinRequest;
use crate::charter::sync::{CharterSync, SyncConfig, SyncEvent};
use crate::charter::{ChannelId, Charter, CharterState, OpBody, Permissions};
use crate::control::{ControlMessage, PeerControl};
use crate::floor::{FloorConfig, FloorControl};
use crate::forward::{Forwarder, ForwarderConfig};
use crate::presence::PresenceTable;
use crate::reachability::{AddressBook, ReachabilityConfig};
use crate::topology::{Route, TopologyConfig};
use crate::voice::{
    speakable, whisper_delivery, KeySchedule, KeyScheduleConfig, VoiceFlags, VoiceReceiver,
};
use callsign_keys::{IdentityKey, NodeKeys};
use libp2p_identity::PeerId;
use multiaddr::Multiaddr;
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// What a member starts with.
pub struct MemberConfig {
    /// Our identity and Noise keys.
    pub keys: NodeKeys,
    /// The charter as we hold it.
    pub charter: Charter,
    /// The name presence announces.
    pub display_name: String,
    /// Channels to listen to from the start (those the charter refuses are dropped).
    pub listening: Vec<ChannelId>,
    /// Unix time (ms) at `start`: presence and floor stamps, invite expiry.
    pub unix_at_start_ms: u64,
    /// How often we announce presence and look after links.
    pub presence_interval: Duration,
    /// Sender key rotation.
    pub keys_schedule: KeyScheduleConfig,
    /// Floor control on half-duplex channels.
    pub floor: FloorConfig,
    /// Mesh or relay per channel.
    pub topology: TopologyConfig,
    /// The upload we may spend on voice, kbit/s (0: not said).
    pub uplink_kbps: u32,
    /// Forward voice for subscribers (a relay, or a member volunteering).
    pub forwarding: Option<ForwarderConfig>,
    /// The configuration vouches that we are publicly reachable (a relay).
    pub vouched: bool,
    /// A join request from an invite, until the charter names us.
    pub join: Option<JoinRequest>,
    /// Dialed at start, and again while we have no link at all.
    pub bootstrap: Vec<Multiaddr>,
    /// The addresses presence announces instead of what we learn (`Some(vec![])`: none).
    pub announce: Option<Vec<Multiaddr>>,
    /// Drop this fraction of our outgoing voice copies (tests and the simulator).
    pub send_loss: f64,
    /// Report every voice datagram we send ([`Event::VoiceSent`]).
    pub tap_voice: bool,
    /// Seeds every random choice.
    pub seed: u64,
}

/// What happened, for [`Member::handle_input`].
#[derive(Debug)]
pub enum Input {
    /// A link to `peer` is up (a new one, or one that replaces the held one).
    LinkUp(LinkUp),
    /// Our last link to `peer` closed.
    LinkDown(PeerId),
    /// The link layer's round-trip estimates for linked peers.
    Rtts(Vec<(PeerId, Duration)>),
    /// A control message from `peer` (the runtime has already acknowledged it).
    Control(PeerId, Vec<u8>),
    /// The peer acknowledged our ordered control request `request`.
    ControlAcked(PeerId, u64),
    /// Our ordered control request `request` to the peer was lost.
    ControlFailed(PeerId, u64),
    /// A voice datagram from `peer`, as it arrived at the link layer at `received_at`.
    Datagram {
        /// The link it came on.
        peer: PeerId,
        /// Its bytes.
        bytes: Vec<u8>,
        /// When the link layer took it (forwarding latency is measured from here).
        received_at: Instant,
    },
    /// The user (or the app) asks for something.
    Command(Command),
    /// The capture side encoded a frame for `target`.
    Frame(Frame),
    /// Each sender's loss on its way to us over the last second (percent).
    LossReports(Vec<(IdentityKey, u8)>),
    /// A probe's nonce reached our socket.
    ProbeArrived([u8; crate::reachability::NONCE_LEN]),
    /// Our listen addresses, and the external addresses the link layer confirmed.
    Addresses {
        /// Where we listen (circuit reservations included).
        listening: Vec<Multiaddr>,
        /// Confirmed by the link layer (autonat, identify).
        external: Vec<Multiaddr>,
    },
    /// A relay accepted our circuit reservation.
    ReservationAccepted,
    /// Our circuit reservation was refused or lost.
    ReservationClosed,
    /// A deadline from [`Member::poll_timeout`] passed.
    Timeout,
}

/// A link that came up.
#[derive(Clone, Debug)]
pub struct LinkUp {
    /// Who.
    pub peer: PeerId,
    /// How.
    pub kind: LinkKind,
    /// Where a direct link comes from (UDP or TCP); `None` through a circuit.
    pub remote: Option<SocketAddr>,
    /// The relay a circuit runs through.
    pub circuit: Option<PeerId>,
    /// The address we dialed, when we dialed.
    pub dialed: Option<Multiaddr>,
    /// A second connection to a peer we were linked to: it restarted.
    pub restarted: bool,
    /// The link layer's round-trip estimate, if it has one yet.
    pub rtt: Option<Duration>,
}

/// What the user asks of the protocol.
#[derive(Clone, Debug)]
pub enum Command {
    /// Hear a channel (if the charter allows it).
    Listen(ChannelId),
    /// Stop hearing a channel.
    Unlisten(ChannelId),
    /// Transmit on these channels (simulcast); half-duplex ones ask for the floor.
    PttDown(Vec<ChannelId>),
    /// Raise an emergency on a half-duplex channel.
    Emergency(ChannelId),
    /// End `raiser`'s emergency on `channel`.
    ClearEmergency {
        /// Where.
        channel: ChannelId,
        /// Whose.
        raiser: IdentityKey,
    },
    /// Stop transmitting.
    PttUp,
    /// Whisper to one member.
    WhisperDown(IdentityKey),
    /// Transmit on open channels while the voice detector hears speech (empty: off).
    VoiceActivation(Vec<ChannelId>),
    /// Sign and apply a charter edit.
    EditCharter(OpBody),
    /// Subscribe at a relay whatever the routes say (diagnostics).
    Subscribe {
        /// The relay.
        relay: IdentityKey,
        /// The channels.
        channels: Vec<ChannelId>,
    },
}

/// An encoded frame from the capture side.
#[derive(Clone, Debug)]
pub struct Frame {
    /// Where it goes.
    pub target: Target,
    /// Start, end, and the like.
    pub flags: VoiceFlags,
    /// The sender's frame counter.
    pub sequence: u16,
    /// 48 kHz media timestamp.
    pub timestamp: u32,
    /// The Opus payload.
    pub payload: Vec<u8>,
}

/// How a dial treats a peer we are linked to or dialing (libp2p's `PeerCondition`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DialCondition {
    /// Dial even when linked (a better path).
    Always,
    /// Only when not linked.
    Disconnected,
    /// Only when neither linked nor dialing.
    DisconnectedAndNotDialing,
}

/// What the member wants done, from [`Member::poll_output`].
#[derive(Debug)]
pub enum Output {
    /// A control request to `peer`. `ordered`: the outbox's one request in flight, to be
    /// answered with [`Input::ControlAcked`] or [`Input::ControlFailed`].
    Control {
        /// To whom.
        peer: PeerId,
        /// An encoded [`ControlMessage`].
        bytes: Vec<u8>,
        /// The outbox request number, for ordered messages.
        ordered: Option<u64>,
    },
    /// A voice datagram (already sealed, maybe enveloped).
    Datagram {
        /// To whom.
        peer: PeerId,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// As a relay: the same packet to every peer in `plain`, enveloped to those in
    /// `enveloped` (fellow relays).
    Forward {
        /// The sealed voice packet.
        packet: Vec<u8>,
        /// Subscribers.
        plain: Vec<PeerId>,
        /// Fellow relays.
        enveloped: Vec<PeerId>,
        /// When the packet arrived (forwarding latency).
        received_at: Instant,
    },
    /// Dial a peer (or, without one, an address).
    Dial {
        /// Whom.
        peer: Option<PeerId>,
        /// Where.
        addrs: Vec<Multiaddr>,
        /// When a held link makes the dial moot.
        condition: DialCondition,
    },
    /// Reserve a relay circuit at this address (`…/p2p/<relay>/p2p-circuit`).
    ReserveCircuit(Multiaddr),
    /// Send `datagram` to `to` from a freshly bound port (a reachability probe).
    Probe {
        /// The candidate address.
        to: SocketAddr,
        /// The probe datagram.
        datagram: Vec<u8>,
    },
    /// Add (or remove) an external address the link layer vouches for (relay reservations
    /// name them).
    ExternalAddress {
        /// The address.
        addr: Multiaddr,
        /// Add or remove.
        add: bool,
    },
    /// Who may use the relay circuits we serve (the org's members).
    CircuitMembers(Vec<PeerId>),
    /// Append these encoded ops to the charter log.
    Persist(Vec<Vec<u8>>),
    /// A frame that passed every check, to play.
    Play(crate::voice::ReceivedFrame),
    /// Key the transmitter on this target (or release it).
    Transmit(Option<Target>),
    /// Transmit on these channels while the voice detector hears speech.
    VoiceActivation(Vec<ChannelId>),
    /// Tune the encoder's FEC for this loss (the worst listener's report).
    ExpectedLoss(u8),
    /// For the app.
    Event(Event),
}

/// What a link's peer is to us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LinkRole {
    /// A fellow member: the whole control plane, E2EE session included.
    Member(IdentityKey),
    /// A rented relay (we are a member), or a member (we are a relay): charter sync, floor,
    /// subscriptions, presence; no E2EE session, no keys.
    Relay(IdentityKey),
}

impl LinkRole {
    fn identity(self) -> IdentityKey {
        match self {
            Self::Member(k) | Self::Relay(k) => k,
        }
    }
}

/// What we are to the org, from the charter and our configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// In the charter (or, without an invite, acting as if): the whole protocol.
    Member,
    /// Holding an invite the charter does not reflect yet: only the join request and sync.
    Joining,
    /// A rented relay: forwards for members, holds no keys, no presence of its own.
    Relay,
}

/// A link as the member sees it.
#[derive(Clone, Debug)]
struct Link {
    kind: LinkKind,
    /// Where a direct link comes from: what we tell the peer, and the only IP we probe for it.
    remote: Option<SocketAddr>,
    /// The relay a circuit runs through.
    circuit: Option<PeerId>,
    rtt: Option<Duration>,
}

/// One member's protocol. See the module docs.
pub struct Member {
    keys: NodeKeys,
    local: IdentityKey,
    local_peer: PeerId,
    role: Role,
    sync: CharterSync<PeerId>,
    presence: PresenceTable,
    presence_seq: u64,
    presence_interval: Duration,
    next_presence: Instant,
    display_name: String,
    listening: Vec<ChannelId>,
    receiver: VoiceReceiver,
    schedule: KeySchedule,
    keys_dirty: bool,
    /// Control state of each peer we hold a control link to.
    peers: BTreeMap<PeerId, PeerControl<u64>>,
    next_request: u64,
    links: BTreeMap<PeerId, Link>,
    members: BTreeMap<PeerId, IdentityKey>,
    /// The charter's rented relays that are not members, by peer id.
    relays: BTreeMap<PeerId, IdentityKey>,
    /// Awaiting or holding a circuit reservation at a member relay.
    reservation: bool,
    listen_addrs: Vec<Multiaddr>,
    external_addrs: Vec<Multiaddr>,
    start: Instant,
    unix_at_start_ms: u64,
    tap: bool,
    send_loss: f64,
    loss_rng: ChaCha8Rng,
    sent: BTreeMap<(IdentityKey, Option<ChannelId>), u64>,
    ptt_denied: u64,
    /// Loss each listener last reported for our frames.
    listener_loss: BTreeMap<PeerId, u8>,
    floor: FloorControl,
    /// Channels PTT is held on (simulcast), after the charter check.
    ptt_channels: Vec<ChannelId>,
    /// Those we transmit on now: open ones, and half-duplex ones whose floor we hold.
    tx_channels: Vec<ChannelId>,
    floor_drops: u64,
    topology: TopologyConfig,
    uplink_kbps: u32,
    routes: BTreeMap<ChannelId, Route>,
    replan_due: Option<Instant>,
    replanned: Instant,
    route_switched: BTreeMap<ChannelId, Instant>,
    subscribed: BTreeMap<IdentityKey, Vec<ChannelId>>,
    subscription_seq: u64,
    forwarder: Option<Forwarder>,
    subscriptions_refused: u64,
    join: Option<JoinRequest>,
    bootstrap: Vec<Multiaddr>,
    announce: Option<Vec<Multiaddr>>,
    reachability: AddressBook<PeerId>,
    probed_for: BTreeMap<PeerId, Instant>,
    vouched: bool,
    /// The attempt number our next pair session starts at (see `crate::pairing`).
    next_pairing: u64,
    outputs: VecDeque<Output>,
}

impl Member {
    /// A member at `now`; its first outputs (relay dials, bootstrap dials) are ready at once.
    pub fn new(config: MemberConfig, now: Instant) -> Self {
        let local = config.keys.identity.public();
        let state = config.charter.state().clone();
        let mut listening: Vec<_> = config
            .listening
            .iter()
            .copied()
            .filter(|c| state.may(&local, *c, Permissions::LISTEN))
            .collect();
        listening.sort();
        listening.dedup();
        let org = config.charter.org();
        let unix = config.unix_at_start_ms;
        let mut member = Self {
            local,
            local_peer: local.peer_id(),
            role: Role::Member,
            sync: CharterSync::new(config.charter, SyncConfig::default(), config.seed),
            presence: PresenceTable::new(org),
            // Milliseconds at start: a restarted node's records outrank its previous self's.
            presence_seq: unix,
            presence_interval: config.presence_interval,
            next_presence: now + config.presence_interval,
            display_name: config.display_name,
            listening,
            receiver: VoiceReceiver::new(local),
            schedule: KeySchedule::new(local, config.keys_schedule, config.seed ^ 0x6b65_7973),
            keys_dirty: true,
            peers: BTreeMap::new(),
            next_request: 0,
            links: BTreeMap::new(),
            members: BTreeMap::new(),
            relays: BTreeMap::new(),
            reservation: false,
            listen_addrs: Vec::new(),
            external_addrs: Vec::new(),
            start: now,
            unix_at_start_ms: unix,
            tap: config.tap_voice,
            send_loss: config.send_loss,
            loss_rng: rand::SeedableRng::seed_from_u64(config.seed ^ 0x6c6f_7373),
            sent: BTreeMap::new(),
            ptt_denied: 0,
            listener_loss: BTreeMap::new(),
            floor: FloorControl::new(local, config.floor, now, unix),
            ptt_channels: Vec::new(),
            tx_channels: Vec::new(),
            floor_drops: 0,
            topology: config.topology,
            uplink_kbps: config.uplink_kbps,
            routes: BTreeMap::new(),
            replan_due: None,
            replanned: now,
            route_switched: BTreeMap::new(),
            subscribed: BTreeMap::new(),
            subscription_seq: unix,
            // A member serving circuits volunteers as a relay, so it forwards too.
            forwarder: config
                .forwarding
                .or_else(|| config.vouched.then(Default::default))
                .map(|c| Forwarder::new(org, c)),
            subscriptions_refused: 0,
            join: config.join,
            bootstrap: config.bootstrap,
            announce: config.announce,
            reachability: AddressBook::new(ReachabilityConfig::default(), config.seed),
            probed_for: BTreeMap::new(),
            vouched: config.vouched,
            // Above any attempt of a previous run of ours (see `crate::pairing`).
            next_pairing: unix << 16,
            keys: config.keys,
            outputs: VecDeque::new(),
        };
        member.set_members();
        let state = member.state().clone();
        member.floor.update_charter(&state, now);
        member.update_arbiters(now);
        member.dial_relays();
        member.replan(now);
        member.flush(now);
        member
    }

    /// Handles one input at `now`, then queues what it makes us send.
    pub fn handle_input(&mut self, now: Instant, input: Input) {
        match input {
            Input::LinkUp(up) => self.link_up(up, now),
            Input::LinkDown(peer) => self.link_down(peer, now),
            Input::Rtts(rtts) => {
                for (peer, rtt) in rtts {
                    if let Some(link) = self.links.get_mut(&peer) {
                        link.rtt = Some(rtt);
                    }
                }
            }
            Input::Control(peer, bytes) => self.control_message(peer, &bytes, now),
            Input::ControlAcked(peer, request) => {
                if let Some(control) = self.peers.get_mut(&peer) {
                    control.acknowledged(request);
                }
            }
            Input::ControlFailed(peer, request) => self.control_failed(peer, request, now),
            Input::Datagram {
                peer,
                bytes,
                received_at,
            } => self.datagram(peer, &bytes, received_at, now),
            Input::Command(command) => self.command(command, now),
            Input::Frame(frame) => self.send_frame(frame, now),
            Input::LossReports(reports) => {
                for (sender, pct) in reports {
                    if let Some(control) = self.peers.get_mut(&sender.peer_id()) {
                        control.queue(ControlMessage::LossReport(pct));
                    }
                }
            }
            Input::ProbeArrived(nonce) => self.reachability.probe_received(&nonce, now),
            Input::Addresses {
                listening,
                external,
            } => {
                let circuit_new = listening
                    .iter()
                    .any(|a| presence::is_circuit(a) && !self.listen_addrs.contains(a));
                self.listen_addrs = listening;
                self.external_addrs = external;
                if circuit_new {
                    // Reachable through a relay now: tell everyone where.
                    self.announce_presence(now);
                }
            }
            Input::ReservationAccepted => self.announce_presence(now),
            Input::ReservationClosed => self.reservation = false,
            Input::Timeout => self.timers(now),
        }
        self.flush(now);
    }

    /// The next thing to do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Input::Timeout`] is next due.
    pub fn poll_timeout(&self) -> Instant {
        [
            self.sync.poll_timeout(),
            self.schedule.poll_timeout(),
            self.floor.poll_timeout(),
            self.reachability.poll_timeout(),
            self.peers
                .values()
                .filter_map(|c| c.pairing.as_ref()?.poll_timeout())
                .min(),
            Some(self.next_presence),
            self.replan_due,
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(self.next_presence)
    }

    // ---- what the runtime reads ----

    /// Our identity.
    pub fn identity(&self) -> IdentityKey {
        self.local
    }

    /// The charter's state.
    pub fn state(&self) -> &CharterState {
        self.sync.charter().state()
    }

    /// Charter ops held.
    pub fn charter_ops(&self) -> usize {
        self.sync.charter().len()
    }

    /// What we are to the org.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The name `peer` announces (empty if unknown).
    pub fn display_name(&self, peer: &IdentityKey) -> String {
        self.presence
            .get(peer)
            .map(|r| r.body.display_name.clone())
            .unwrap_or_default()
    }

    /// Linked peers and how, in peer order.
    pub fn links(&self) -> impl Iterator<Item = (&PeerId, LinkKind)> {
        self.links.iter().map(|(p, l)| (p, l.kind))
    }

    /// How `peer` is linked, if it is.
    pub fn link(&self, peer: &PeerId) -> Option<LinkKind> {
        self.links.get(peer).map(|l| l.kind)
    }

    /// The voice receiver (drop counts, keys held).
    pub fn receiver(&self) -> &VoiceReceiver {
        &self.receiver
    }

    /// The key schedule (rotations).
    pub fn schedule(&self) -> &KeySchedule {
        &self.schedule
    }

    /// Floor control (the floor of every half-duplex channel).
    pub fn floor(&self) -> &FloorControl {
        &self.floor
    }

    /// The forwarder, when we forward.
    pub fn forwarder(&self) -> Option<&Forwarder> {
        self.forwarder.as_ref()
    }

    /// Subscriptions we refused as a relay.
    pub fn subscriptions_refused(&self) -> u64 {
        self.subscriptions_refused
    }

    /// Frames we sent each member, per channel (`None`: whispers).
    pub fn sent(&self) -> &BTreeMap<(IdentityKey, Option<ChannelId>), u64> {
        &self.sent
    }

    /// Transmissions refused at the sender.
    pub fn ptt_denied(&self) -> u64 {
        self.ptt_denied
    }

    /// Frames dropped on receipt because their sender did not hold the floor.
    pub fn floor_drops(&self) -> u64 {
        self.floor_drops
    }

    /// How each channel we listen or speak on travels.
    pub fn routes(&self) -> &BTreeMap<ChannelId, Route> {
        &self.routes
    }

    /// The bootstrap addresses (dialed by the runtime at start).
    pub fn bootstrap(&self) -> &[Multiaddr] {
        &self.bootstrap
    }

    // ---- internals shared by the submodules ----

    fn emit(&mut self, event: Event) {
        self.outputs.push_back(Output::Event(event));
    }

    fn warn(&mut self, warning: String) {
        self.emit(Event::Warning(warning));
    }

    fn unix_ms(&self, now: Instant) -> u64 {
        self.unix_at_start_ms + now.saturating_duration_since(self.start).as_millis() as u64
    }

    /// Sends one control message on its own request, outside the peer's ordered outbox (it
    /// needs no order, and an older node that cannot decode it then drops only it).
    fn send_now(&mut self, peer: PeerId, message: ControlMessage) {
        self.outputs.push_back(Output::Control {
            peer,
            bytes: message.encode(),
            ordered: None,
        });
    }

    fn set_members(&mut self) {
        let state = self.sync.charter().state();
        let mut all: BTreeSet<IdentityKey> = state.members.keys().copied().collect();
        all.insert(state.org);
        all.extend(state.admins.iter().copied());
        self.members = all.into_iter().map(|k| (k.peer_id(), k)).collect();
        self.relays = state
            .relays
            .keys()
            .map(|k| (k.peer_id(), *k))
            .filter(|(p, _)| !self.members.contains_key(p))
            .collect();
        let member = self.members.contains_key(&self.local_peer);
        self.role = if member {
            Role::Member
        } else if self.join.is_some() {
            Role::Joining
        } else if self.forwarder.is_some() {
            Role::Relay
        } else {
            Role::Member
        };
        let circuit_members = self.members.keys().copied().collect();
        self.outputs
            .push_back(Output::CircuitMembers(circuit_members));
    }

    fn link_role(&self, peer: &PeerId) -> Option<LinkRole> {
        if let Some(member) = self.members.get(peer) {
            return Some(if self.role == Role::Relay {
                LinkRole::Relay(*member)
            } else {
                LinkRole::Member(*member)
            });
        }
        // Members link to relays, and relays to each other (cascading).
        self.relays.get(peer).map(|k| LinkRole::Relay(*k))
    }

    fn timers(&mut self, now: Instant) {
        self.sync.handle_timeout(now);
        self.floor.handle_timeout(now);
        self.reachability.handle_timeout(now);
        self.pairing_timeouts(now);
        self.keys_dirty = true;
        if now >= self.next_presence {
            self.next_presence = now + self.presence_interval;
            self.announce_presence(now);
            let gone = {
                let members = &self.members;
                self.presence
                    .expire(self.unix_ms(now), |p| members.contains_key(&p.peer_id()))
            };
            for peer in gone {
                self.emit(Event::PresenceGone { peer });
            }
            self.dial_relays();
            self.redial_bootstrap();
            self.replan(now);
        }
    }

    /// Alone (every peer was offline when we started, or all links dropped): try the
    /// bootstrap addresses again, so a member or newcomer finds the org once someone is up.
    fn redial_bootstrap(&mut self) {
        if !self.links.is_empty() {
            return;
        }
        for addr in self.bootstrap.clone() {
            self.outputs.push_back(Output::Dial {
                peer: None,
                addrs: vec![addr],
                condition: DialCondition::Always,
            });
        }
    }

    fn command(&mut self, command: Command, now: Instant) {
        match command {
            Command::Listen(channel) => {
                if self.state().may(&self.local, channel, Permissions::LISTEN) {
                    if let Err(at) = self.listening.binary_search(&channel) {
                        self.listening.insert(at, channel);
                        self.replan(now);
                        self.announce_presence(now);
                    }
                } else {
                    self.warn(format!("the charter does not let us listen on {channel}"));
                }
            }
            Command::Unlisten(channel) => {
                if let Ok(at) = self.listening.binary_search(&channel) {
                    self.listening.remove(at);
                    self.replan(now);
                    self.announce_presence(now);
                }
            }
            Command::PttDown(channels) => {
                let allowed = self.speakable_or_refuse(&channels);
                self.ptt_down(allowed, false, now);
            }
            Command::Emergency(channel) => self.ptt_down(vec![channel], true, now),
            Command::ClearEmergency { channel, raiser } => {
                self.clear_emergency(channel, raiser, now)
            }
            Command::WhisperDown(peer) => {
                match whisper_delivery(self.state(), &self.schedule, &self.local, &peer, now) {
                    Ok(_) => {
                        // A whisper replaces any channel transmission and its floor requests.
                        self.ptt_up(now);
                        self.outputs
                            .push_back(Output::Transmit(Some(Target::Whisper(peer))));
                    }
                    Err(e) => {
                        self.ptt_denied += 1;
                        self.emit(Event::PttDenied {
                            channels: Vec::new(),
                            reason: format!("whisper: {e}"),
                        });
                    }
                }
            }
            Command::PttUp => self.ptt_up(now),
            Command::VoiceActivation(channels) => {
                let allowed = self.speakable_or_refuse(&channels);
                let allowed = self.open_only(allowed);
                self.outputs.push_back(Output::VoiceActivation(allowed));
            }
            Command::EditCharter(body) => {
                let unix = self.unix_ms(now);
                let identity = self.keys.identity.clone();
                match self.sync.edit(&identity, body, unix) {
                    Ok(op) => {
                        self.outputs.push_back(Output::Persist(vec![op.encode()]));
                        self.charter_changed(1, now);
                    }
                    Err(e) => self.warn(format!("charter edit refused: {e}")),
                }
            }
            Command::Subscribe { relay, channels } => {
                if !self.subscribe_at(relay, channels) {
                    self.warn(format!("no link to relay {relay}"));
                }
            }
        }
    }

    /// The requested channels the charter lets us speak on; the rest are refused (counted and
    /// reported).
    fn speakable_or_refuse(&mut self, channels: &[ChannelId]) -> Vec<ChannelId> {
        let (allowed, denied) = speakable(self.state(), &self.local, channels);
        if !denied.is_empty() {
            self.ptt_denied += 1;
            self.emit(Event::PttDenied {
                channels: denied,
                reason: "the charter does not let us speak there".into(),
            });
        }
        allowed
    }

    fn charter_changed(&mut self, ops: usize, now: Instant) {
        self.set_members();
        if self.finish_join() {
            // Everything we had was learnt as a stranger: announce ourselves as a member.
            self.listening = self.state().channels.keys().copied().collect();
        }
        let state = self.state().clone();
        self.listening
            .retain(|c| state.may(&self.local, *c, Permissions::LISTEN));
        self.floor.update_charter(&state, now);
        self.keys_dirty = true;
        // Links to peers that are no longer members (or relays) lose their control state.
        let joining = self.role == Role::Joining;
        let gone: Vec<PeerId> = self
            .peers
            .keys()
            .filter(|p| !joining && self.link_role(p).is_none())
            .copied()
            .collect();
        for peer in gone {
            self.peers.remove(&peer);
            self.sync.handle_link_down(&peer);
        }
        let members: BTreeSet<IdentityKey> = self.members.values().copied().collect();
        self.floor.retain_participants(|k| members.contains(k), now);
        self.update_arbiters(now);
        // Peers linked before the charter named them start their control now.
        let joined: Vec<PeerId> = self
            .links
            .keys()
            .filter(|p| self.link_role(p).is_some() && !self.peers.contains_key(p))
            .copied()
            .collect();
        for peer in joined {
            // If the peer was to start the E2EE session, its first message reached us while
            // it was a stranger and was ignored: as responder we ask it to start again.
            self.peer_up(peer, now, true);
        }
        self.dial_relays();
        self.replan(now);
        self.emit(Event::CharterChanged { ops });
    }

    /// Queues what the state machines want sent.
    fn flush(&mut self, now: Instant) {
        if self.replan_due.is_some_and(|due| due <= now) {
            self.replan(now);
        }
        while let Some((peer, message)) = self.sync.poll_transmit() {
            if let Some(control) = self.peers.get_mut(&peer) {
                control.queue(ControlMessage::Sync(message.encode()));
            }
        }
        let mut added = 0;
        while let Some(event) = self.sync.poll_event() {
            match event {
                SyncEvent::Added { ops, .. } => {
                    added += ops.len();
                    self.outputs.push_back(Output::Persist(ops));
                }
                SyncEvent::Rejected { reason, .. } => {
                    self.warn(format!("charter op rejected: {reason}"));
                }
            }
        }
        if added > 0 {
            self.charter_changed(added, now);
        }
        if self.keys_dirty {
            self.keys_dirty = false;
            let sessions: BTreeSet<IdentityKey> = self
                .peers
                .iter()
                .filter(|(_, c)| c.is_established())
                .filter_map(|(p, _)| self.members.get(p).copied())
                .collect();
            let state = self.sync.charter().state().clone();
            self.schedule.update(&state, &sessions, now);
        }
        while let Some(grant) = self.schedule.poll_grant() {
            let peer = grant.peer.peer_id();
            let Some(control) = self.peers.get_mut(&peer) else {
                continue;
            };
            let Some(session) = control.pairing.as_mut().and_then(|p| p.session()) else {
                continue;
            };
            match session.grant(&self.keys, &grant.key, grant.channels) {
                Ok(sealed) => control.queue(ControlMessage::Grant(sealed)),
                Err(e) => tracing::warn!(%peer, %e, "sealing a grant failed"),
            }
        }
        self.flush_reachability(now);
        // Floor messages last: the charter changes above may have started floors.
        self.flush_floor();
        for (peer, control) in &mut self.peers {
            if let Some(bytes) = control.next_to_send() {
                self.next_request += 1;
                control.sent(self.next_request);
                self.outputs.push_back(Output::Control {
                    peer: *peer,
                    bytes,
                    ordered: Some(self.next_request),
                });
            }
        }
    }
}
