//! The member's inputs and outputs, and what it starts with.

use super::{Event, LinkKind, Target};
use crate::admission::JoinRequest;
use crate::charter::{ChannelId, Charter, OpBody};
use crate::floor::FloorConfig;
use crate::forward::ForwarderConfig;
use crate::topology::TopologyConfig;
use crate::voice::{KeyScheduleConfig, VoiceFlags};
use callsign_keys::{IdentityKey, NodeKeys};
use libp2p_identity::PeerId;
use multiaddr::Multiaddr;
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

/// What happened, for [`Member::handle_input`](super::Member::handle_input).
#[derive(Debug)]
pub enum Input<'a> {
    /// A link to `peer` is up (a new one, or one that replaces the held one).
    LinkUp(LinkUp),
    /// Our last link to `peer` closed.
    LinkDown(PeerId),
    /// A dial to `peer` failed on every address tried (a member relay refuses circuit
    /// handshakes beyond its limit at once; see the node's `MemberRelay`).
    DialFailed {
        /// The peer dialed.
        peer: PeerId,
        /// The addresses that were tried.
        addrs: Vec<Multiaddr>,
    },
    /// The link layer's round-trip estimates for linked peers.
    Rtts(Vec<(PeerId, Duration)>),
    /// The link to this peer has received nothing for [`LINK_QUIET`](super::LINK_QUIET) (the
    /// runtime says so again every [`LINK_QUIET_REPEAT`](super::LINK_QUIET_REPEAT) while it
    /// stays quiet).
    LinkQuiet(PeerId),
    /// A control message from `peer` (the runtime has already acknowledged it).
    Control(PeerId, Vec<u8>),
    /// The peer acknowledged our ordered control request `request`.
    ControlAcked(PeerId, u64),
    /// Our ordered control request `request` to the peer was lost.
    ControlFailed(PeerId, u64),
    /// A voice datagram from `peer`, as it arrived at the link layer at `received_at`
    /// (borrowed: the member copies only what it keeps or forwards).
    Datagram {
        /// The link it came on.
        peer: PeerId,
        /// Its bytes.
        bytes: &'a [u8],
        /// When the link layer took it (forwarding latency is measured from here).
        received_at: Instant,
    },
    /// The user (or the app) asks for something.
    Command(Command),
    /// The capture side encoded a frame for `target`.
    Frame(Frame),
    /// Each sender's loss on its way to us over the last second (percent).
    LossReports(Vec<(IdentityKey, u8)>),
    /// What our router did with the runtime's request to forward a public port to us.
    PortMapping(super::PortMapping),
    /// A probe's nonce reached our socket.
    ProbeArrived([u8; crate::reachability::NONCE_LEN]),
    /// Our listen addresses, and the external addresses the link layer confirmed.
    Addresses {
        /// Where we listen (circuit reservations included).
        listening: Vec<Multiaddr>,
        /// Confirmed by the link layer (autonat, identify).
        external: Vec<Multiaddr>,
    },
    /// Our circuit reservation was refused or lost.
    ReservationClosed,
    /// A deadline from [`Member::poll_timeout`](super::Member::poll_timeout) passed.
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
    /// With `restarted`: the link had been parked (its QUIC connection closed, its voice kept)
    /// and came back on a new connection for ordered control. The control session starts
    /// over, but what the peer asked of us and still wants stays: its subscription here and
    /// its floor requests. Dropped and sent again, they cost a member that keys up after a
    /// quiet spell a gap in what it hears and the floor it holds.
    pub resumed: bool,
    /// A direct path that came up beside the circuit we held (a hole punch, or our dial of an
    /// address the peer newly announced): the peer did not restart, and its control carries on.
    pub beside_circuit: bool,
    /// The link layer's round-trip estimate, if it has one yet.
    pub rtt: Option<Duration>,
}

/// What the user asks of the protocol.
#[derive(Clone, Debug)]
pub enum Command {
    /// Hear a channel (if the charter allows it).
    Listen(ChannelId),
    /// Hear a channel silently: out of its roster, never transmitting there (the charter's
    /// monitor permission).
    Monitor(ChannelId),
    /// Stop hearing (or monitoring) a channel; stops recording it too.
    Unlisten(ChannelId),
    /// Start or stop recording a channel we listen to (if its recording policy allows).
    Record {
        /// Which.
        channel: ChannelId,
        /// Start (true) or stop.
        on: bool,
    },
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
    /// Set (or clear) where we are in the game: positional channels place our voice by it,
    /// proximity channels reach only members near it.
    SetPosition(Option<crate::spatial::Position>),
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

/// What the member wants done, from [`Member::poll_output`](super::Member::poll_output).
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
    /// A periodic control message that a newer one replaces (our presence, our charter heads)
    /// on a link to or from a rented relay: it may travel unacknowledged (the link's voice
    /// plane) and be lost, since the next one follows within the period. Where the runtime
    /// cannot send it so, it sends it as unordered [`Output::Control`].
    Announce {
        /// To whom.
        peer: PeerId,
        /// An encoded [`ControlMessage`].
        bytes: Vec<u8>,
    },
    /// One voice datagram (already sealed, maybe enveloped) to each of `peers`, in order.
    Datagram {
        /// To whom.
        peers: Vec<PeerId>,
        /// The bytes, the same for all.
        bytes: Vec<u8>,
    },
    /// As a relay: the same packet to every peer in `plain`, enveloped to those in
    /// `enveloped` (fellow relays).
    Forward {
        /// The sealed voice packet.
        packet: Vec<u8>,
        /// Subscribers (the forwarder's list, shared: the next packet's is the same one).
        plain: std::sync::Arc<[PeerId]>,
        /// Fellow relays.
        enveloped: std::sync::Arc<[PeerId]>,
        /// When the packet arrived (forwarding latency).
        received_at: Instant,
    },
    /// As a rented relay: the charter to check voice against where it arrives, for the
    /// forwarder shared with the link layer ([`crate::forward::SharedForwarder`]). Replaces the last one.
    ForwardView(std::sync::Arc<crate::forward::ForwardView>),
    /// Dial a peer (or, without one, an address).
    Dial {
        /// Whom.
        peer: Option<PeerId>,
        /// Where.
        addrs: Vec<Multiaddr>,
        /// When a held link makes the dial moot.
        condition: DialCondition,
    },
    /// Our half of a hole punch to `peer`, linked through a circuit ([`crate::punch`]): dial
    /// its addresses, or await its dial while probing them from our QUIC port. A direct link
    /// that results replaces the circuit.
    Punch {
        /// Whom.
        peer: PeerId,
        /// Its candidate addresses (QUIC).
        addrs: Vec<Multiaddr>,
        /// Which half.
        role: crate::punch::PunchRole,
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
    /// Close the link to this peer: it answers nothing while the voice path through it is
    /// deaf (`crate::path`), a connection to a peer that is gone. [`Input::LinkDown`] follows,
    /// and the peer is dialed again where it is now.
    CloseLink(PeerId),
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
