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
//! - `io`: [`Input`], [`Output`], [`MemberConfig`].
//! - `upkeep`: timers, the reaction to a charter change, the flush after every input.
//! - `commands`: the user's commands.
//! - `links`: link up and down, control sessions, the control message dispatch.
//! - `presence`: our record, others' records, the dials and circuit reservations they set off.
//! - `circuit_dials`: circuit dials paced per relay.
//! - `session`: pair session steps.
//! - `join`: joining with an invite, both ends.
//! - `floor`: PTT through floor control.
//! - `routes`: mesh or relay per channel, subscriptions at relays.
//! - `relay`: the relay role (forwarding for subscribers, cascading).
//! - `media`: frames out, datagrams in.
//! - `reads`: what the runtime reads of the member (charter, links, counters, sub-machines).
//! - `path`: the voice path's check and repair (on-air announcements, the repair ladder).
//! - `reach`: address observations and probes.

mod circuit_dials;
mod commands;
mod event;
mod floor;
mod hearing;
mod position;
pub use position::record_point;
mod io;
mod join;
mod links;
mod media;
mod path;
mod presence;
mod punch;
mod reach;
mod reads;
mod relay;
mod relay_dial;
mod routes;
mod session;
mod upkeep;

pub use event::{Event, LinkKind, PortMapping, Target};
pub use io::{Command, DialCondition, Frame, Input, LinkUp, MemberConfig, Output};
pub use reach::{quic_multiaddr, quic_socket_addr};
pub use routes::{LEAVE_OVERLAP, REPLAN_INTERVAL, SWITCH_OVERLAP};

use crate::admission::JoinRequest;
use crate::charter::sync::{CharterSync, SyncConfig};
use crate::charter::{ChannelId, Permissions};
use crate::control::{ControlMessage, PeerControl};
use crate::floor::FloorControl;
use crate::forward::{Forwarder, SharedForwarder};
use crate::presence::PresenceTable;
use crate::punch::{HolePunches, PunchConfig};
use crate::reachability::{AddressBook, ReachabilityConfig};
use crate::topology::{Route, TopologyConfig};
use crate::voice::{KeySchedule, VoiceReceiver};
use callsign_keys::{IdentityKey, NodeKeys};
use libp2p_identity::PeerId;
use multiaddr::Multiaddr;
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often a rented relay announces its charter heads to each peer (members: 15 s).
pub const RELAY_SYNC_ANNOUNCE: Duration = Duration::from_secs(60);

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
    /// Removed from the charter while we were a member: nothing more goes out.
    Removed,
}

/// A link as the member sees it.
#[derive(Clone, Debug)]
struct Link {
    kind: LinkKind,
    /// Where a direct link comes from: what we tell the peer, and the only IP we probe for it.
    remote: Option<SocketAddr>,
    /// The relay a circuit runs through.
    circuit: Option<PeerId>,
    /// We dialed it (else the peer did).
    dialed: bool,
    rtt: Option<Duration>,
    /// The peer's presence has named `remote` as its address while the link was up: if it
    /// stops naming it, the peer moved and the link is to its previous run.
    announced: bool,
}

/// How long an ordered control request may go unanswered before the member gives it up and
/// starts the peer's control over (the link layer's own timeout is only a backstop).
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// A member link that has received nothing for this long has lost its path: more than two of
/// QUIC's keep-alive periods (`LinkConfig::keep_alive`, 5 s), so one lost keep-alive on a
/// lossy link does not count ([`Input::LinkQuiet`]).
pub const LINK_QUIET: Duration = Duration::from_secs(11);
/// While a link stays quiet, how often a fresh connection is dialed beside it.
pub const LINK_QUIET_REPEAT: Duration = Duration::from_secs(3);

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
    /// The channels the user asked to hear, sorted: `listening` is those the charter lets us
    /// hear now, so a role taken away and given back brings them back (chaos seed 90116).
    wanted: Vec<ChannelId>,
    /// Of `listening`, the channels we monitor (silently, never transmitting).
    monitoring: Vec<ChannelId>,
    /// Of `listening`, the channels we record (announced in presence).
    recording: Vec<ChannelId>,
    /// Where we are in the game (positional and proximity channels).
    position: Option<crate::spatial::Position>,
    /// The point our presence last announced, and when.
    announced_point: Option<(crate::spatial::Point, Instant)>,
    /// When our presence was last signed.
    announced_at: Option<Instant>,
    /// A move announcement held back by the rate limit.
    position_due: Option<Instant>,
    /// Which talkers are within reach on proximity channels.
    proximity: crate::spatial::ProximityGate,
    receiver: VoiceReceiver,
    schedule: KeySchedule,
    keys_dirty: bool,
    /// Control state of each peer we hold a control link to.
    peers: BTreeMap<PeerId, PeerControl<u64>>,
    /// Members we held control with at some point in this run: a link that comes back to one
    /// of them is a restart for the pair session, however it looked to us (see `peer_up`).
    controlled_before: BTreeSet<PeerId>,
    next_request: u64,
    links: BTreeMap<PeerId, Link>,
    members: BTreeMap<PeerId, IdentityKey>,
    /// The charter's rented relays that are not members, by peer id.
    relays: BTreeMap<PeerId, IdentityKey>,
    /// Where members saw each relay's links come from, newest first (`relay_dial`).
    relay_addrs: BTreeMap<IdentityKey, Vec<Multiaddr>>,
    next_relay_dial: Instant,
    /// The addresses of our last dial to each charter relay (`relay_dial`).
    relay_dialed_at: BTreeMap<IdentityKey, Vec<Multiaddr>>,
    /// Where our own last link to each charter relay came from, as we told our peers.
    relay_told: BTreeMap<IdentityKey, Multiaddr>,
    /// Members heard of but not linked, to dial at the given time unless they dial us first.
    dial_backs: BTreeMap<PeerId, (Instant, Vec<Multiaddr>)>,
    /// When each peer's control last started over after a lost request, and when the next
    /// start is due if a loss came sooner than [`links::CONTROL_RESTART_GAP`] after it.
    control_restarts: BTreeMap<PeerId, (Instant, Option<Instant>)>,
    /// Circuit dials retried since the last link to each peer (`presence::dial_failed`).
    circuit_retries: BTreeMap<PeerId, u32>,
    circuit_dials: circuit_dials::CircuitDials,
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
    /// Channel frames sent each member, once per frame however many of its channels it
    /// reached (a simulcast).
    sent_once: BTreeMap<IdentityKey, u64>,
    ptt_denied: u64,
    /// Loss each listener last reported for our frames.
    listener_loss: BTreeMap<PeerId, u8>,
    floor: FloorControl,
    /// Channels PTT is held on (simulcast), after the charter check.
    ptt_channels: Vec<ChannelId>,
    /// Those we transmit on now: open ones, and half-duplex ones whose floor we hold.
    tx_channels: Vec<ChannelId>,
    floor_drops: u64,
    /// The voice path's check and repair, both ends.
    path: crate::path::PathCheck,
    topology: TopologyConfig,
    uplink_kbps: u32,
    routes: BTreeMap<ChannelId, Route>,
    replan_due: Option<Instant>,
    replanned: Instant,
    route_switched: BTreeMap<ChannelId, Instant>,
    /// The relay each channel just left, subscribed there until the instant (make before
    /// break: [`routes::LEAVE_OVERLAP`]).
    route_leaving: BTreeMap<ChannelId, (IdentityKey, Instant)>,
    subscribed: BTreeMap<IdentityKey, Vec<ChannelId>>,
    subscription_seq: u64,
    forwarder: Option<SharedForwarder>,
    /// The charter generation of the last [`Output::ForwardView`] (a rented relay's).
    forward_view: Option<u64>,
    subscriptions_refused: u64,
    join: Option<JoinRequest>,
    /// Checked join requests of strangers linked to us, passed on to admins (`join`).
    waiting_joins: BTreeMap<PeerId, Vec<u8>>,
    bootstrap: Vec<Multiaddr>,
    announce: Option<Vec<Multiaddr>>,
    reachability: AddressBook<PeerId>,
    probed_for: BTreeMap<PeerId, Instant>,
    /// Simultaneous dials to members reached only through a circuit.
    punches: HolePunches<PeerId>,
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
        let mut wanted = config.listening.clone();
        wanted.sort();
        wanted.dedup();
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
            relay_addrs: BTreeMap::new(),
            next_relay_dial: now,
            relay_dialed_at: BTreeMap::new(),
            relay_told: BTreeMap::new(),
            dial_backs: BTreeMap::new(),
            control_restarts: BTreeMap::new(),
            circuit_retries: BTreeMap::new(),
            circuit_dials: Default::default(),
            display_name: config.display_name,
            listening,
            wanted,
            monitoring: Vec::new(),
            recording: Vec::new(),
            position: None,
            announced_point: None,
            announced_at: None,
            position_due: None,
            proximity: Default::default(),
            receiver: VoiceReceiver::new(local),
            schedule: KeySchedule::new(local, config.keys_schedule, config.seed ^ 0x6b65_7973),
            keys_dirty: true,
            peers: BTreeMap::new(),
            controlled_before: BTreeSet::new(),
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
            sent_once: BTreeMap::new(),
            ptt_denied: 0,
            listener_loss: BTreeMap::new(),
            floor: FloorControl::new(local, config.floor, now, unix),
            ptt_channels: Vec::new(),
            tx_channels: Vec::new(),
            floor_drops: 0,
            path: crate::path::PathCheck::new(Default::default()),
            topology: config.topology,
            uplink_kbps: config.uplink_kbps,
            routes: BTreeMap::new(),
            replan_due: None,
            replanned: now,
            route_switched: BTreeMap::new(),
            route_leaving: BTreeMap::new(),
            subscribed: BTreeMap::new(),
            subscription_seq: unix,
            // A member serving circuits volunteers as a relay, so it forwards too.
            forwarder: config
                .forwarding
                .or_else(|| config.vouched.then(Default::default))
                .map(|c| Arc::new(Mutex::new(Forwarder::new(org, c)))),
            forward_view: None,
            subscriptions_refused: 0,
            join: config.join,
            waiting_joins: BTreeMap::new(),
            bootstrap: config.bootstrap,
            announce: config.announce,
            reachability: AddressBook::new(ReachabilityConfig::default(), config.seed),
            probed_for: BTreeMap::new(),
            punches: HolePunches::new(PunchConfig::default(), local.peer_id()),
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

    /// An admin removed us from the charter (see [`Event::Removed`]): the member ignores all
    /// input from now on.
    pub fn is_removed(&self) -> bool {
        self.role == Role::Removed
    }

    /// Handles one input at `now`, then queues what it makes us send.
    pub fn handle_input(&mut self, now: Instant, input: Input<'_>) {
        if self.role == Role::Removed {
            return;
        }
        match input {
            Input::LinkUp(up) => self.link_up(up, now),
            Input::LinkDown(peer) => self.link_down(peer, now),
            Input::DialFailed { peer, addrs } => self.dial_failed(peer, addrs, now),
            Input::Rtts(rtts) => {
                for (peer, rtt) in rtts {
                    if let Some(link) = self.links.get_mut(&peer) {
                        link.rtt = Some(rtt);
                    }
                }
            }
            Input::LinkQuiet(peer) => self.link_quiet(peer),
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
            } => self.datagram(peer, bytes, received_at, now),
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
            Input::PortMapping(mapping) => self.port_mapping(mapping, now),
            Input::Addresses {
                listening,
                external,
            } => {
                let circuit_new = listening
                    .iter()
                    .any(|a| presence::is_circuit(a) && !self.listen_addrs.contains(a));
                let bound = listening.iter().filter_map(quic_socket_addr);
                self.reachability.set_bound(bound, now);
                self.listen_addrs = listening;
                self.external_addrs = external;
                if circuit_new {
                    // Reachable through a relay now: tell everyone where.
                    self.announce_presence(now);
                }
            }
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
        if self.role == Role::Removed {
            // Nothing is due ever again.
            return self.next_presence.max(self.start) + Duration::from_secs(365 * 24 * 3600);
        }
        [
            self.sync.poll_timeout(),
            self.schedule.poll_timeout(),
            self.floor.poll_timeout(),
            self.path.poll_timeout(),
            self.reachability.poll_timeout(),
            self.punches.poll_timeout(),
            self.peers
                .values()
                .filter_map(|c| c.pairing.as_ref()?.poll_timeout())
                .min(),
            Some(self.next_presence),
            self.position_due,
            self.replan_due,
            self.route_leaving.values().map(|(_, until)| *until).min(),
            self.relay_missing().then_some(self.next_relay_dial),
            self.dial_backs.values().map(|(at, _)| *at).min(),
            self.control_restarts
                .values()
                .filter_map(|(_, due)| *due)
                .min(),
            self.circuit_dials.poll_timeout(),
            self.peers
                .values()
                .filter_map(|c| c.in_flight())
                .map(|(_, at)| at + CONTROL_TIMEOUT)
                .min(),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(self.next_presence)
    }

    // ---- internals shared by the submodules ----

    fn emit(&mut self, event: Event) {
        self.outputs.push_back(Output::Event(event));
    }

    fn warn(&mut self, warning: String) {
        self.emit(Event::Warning(warning));
    }

    /// Unix milliseconds at `now`, by the clock the member started with.
    pub fn unix_ms(&self, now: Instant) -> u64 {
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

    /// Sends a periodic `message` to `peer`: as an [`Output::Announce`] on a relay link, whose
    /// members are many and whose upkeep the relay pays for, else in the outbox like all
    /// control between members (where the order of presence and key grants matters).
    fn announce(&mut self, peer: PeerId, message: ControlMessage) {
        if matches!(self.link_role(&peer), Some(LinkRole::Relay(_))) {
            self.outputs.push_back(Output::Announce {
                peer,
                bytes: message.encode(),
            });
        } else if let Some(control) = self.peers.get_mut(&peer) {
            control.queue(message);
        }
    }

    fn set_members(&mut self) {
        let was_member = self.role == Role::Member && self.members.contains_key(&self.local_peer);
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
        // Only a member that loses its place is removed: one that starts outside the charter
        // (an admin may add it yet) is not.
        if was_member && !member && self.join.is_none() {
            let local = self.local;
            let by = self
                .sync
                .charter()
                .removals(|k| *k == local)
                .last()
                .map(|o| o.op.author);
            if let Some(by) = by {
                self.role = Role::Removed;
                self.emit(Event::Removed { by });
                return;
            }
        }
        self.role = if member {
            Role::Member
        } else if self.join.is_some() {
            Role::Joining
        } else if self.forwarder.is_some() {
            Role::Relay
        } else {
            Role::Member
        };
        // Every member announces its heads to the relay, and heads are answered with the
        // difference both ways, so a rented relay's own announcements only back that up: at a
        // thousand members, every 15 s was 67 control exchanges a second.
        let announce = match self.role {
            Role::Relay => RELAY_SYNC_ANNOUNCE,
            _ => SyncConfig::default().announce_interval,
        };
        self.sync.set_announce_interval(announce);
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
}
