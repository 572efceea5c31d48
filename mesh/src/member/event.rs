//! The member's vocabulary towards the app: events, link kinds, transmit targets.

use crate::charter::ChannelId;
use crate::floor::FloorEvent;
use crate::topology::Route;
use callsign_keys::IdentityKey;
use libp2p_identity::PeerId;
use multiaddr::Multiaddr;
use serde::Serialize;
use std::net::SocketAddr;

/// How a peer is linked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinkKind {
    /// QUIC straight to the peer.
    Direct,
    /// QUIC straight to the peer, in through a port its home router forwards on request
    /// (UPnP IGD, PCP or NAT-PMP): the side behind that router sees it once the peer says
    /// where it reached it (`Observed`), the dialer from the peer's presence.
    Mapped,
    /// QUIC straight to the peer, punched through NATs by a simultaneous dial timed over the
    /// relay circuit that linked the pair first (`crate::punch`; the circuit then closes).
    HolePunched,
    /// Through a libp2p relay circuit.
    Relayed,
    /// TCP + Noise + Yamux (UDP blocked); voice cannot use datagrams.
    TcpFallback,
}

impl LinkKind {
    /// QUIC straight to the peer: datagrams for voice and no relay in the path.
    pub fn is_direct_quic(self) -> bool {
        matches!(
            self,
            LinkKind::Direct | LinkKind::Mapped | LinkKind::HolePunched
        )
    }

    /// Whether a new link of this kind would be worse for voice than one of kind `held`: a
    /// relayed link never replaces any other, and TCP never replaces QUIC.
    pub fn worse_than(self, held: LinkKind) -> bool {
        match self {
            LinkKind::Relayed => held != LinkKind::Relayed,
            LinkKind::TcpFallback => held.is_direct_quic(),
            LinkKind::Direct | LinkKind::Mapped | LinkKind::HolePunched => false,
        }
    }
}

/// What the transmitter sends to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// These channels (simulcast).
    Channels(Vec<ChannelId>),
    /// One member.
    Whisper(IdentityKey),
}

/// The port our home router forwards to our QUIC port, as the runtime reports it (UPnP IGD).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortMapping {
    /// The router forwards this public address to us. Announced once a probe gets in.
    Mapped {
        /// The public address.
        external: SocketAddr,
        /// How it was asked for (`UPnP IGD`).
        protocol: String,
    },
    /// A mapping we held is gone: removed at shutdown, or renewing it failed.
    Lost {
        /// The address that was mapped.
        external: SocketAddr,
        /// Why.
        reason: String,
    },
    /// No router mapped a port (none answered, it refused, or it answered nonsense); members
    /// reach us through hole punching or circuits instead.
    Unavailable {
        /// Why, for the user.
        reason: String,
    },
}

/// Something that happened, for the app.
#[derive(Clone, Debug)]
pub enum Event {
    /// What became of the port mapping on our router.
    PortMapping(PortMapping),
    /// A probe from a stranger's port reached us at `addr` (`reachable`), so presence
    /// announces it and we serve relay circuits to members; or a re-probe failed (not).
    Reachability {
        /// The address.
        addr: Multiaddr,
        /// Confirmed or lost.
        reachable: bool,
    },
    /// A link came up.
    LinkUp {
        /// To whom.
        peer: PeerId,
        /// How.
        kind: LinkKind,
        /// The link layer's remote address.
        remote: Multiaddr,
    },
    /// Our last link to a peer closed.
    LinkDown {
        /// To whom.
        peer: PeerId,
    },
    /// A member announced itself (or changed what it listens to).
    Presence {
        /// Who.
        peer: IdentityKey,
        /// Its display name.
        name: String,
        /// What it shows itself listening to (channels it monitors are left out).
        listening: Vec<ChannelId>,
        /// What it records, of what it listens to.
        recording: Vec<ChannelId>,
    },
    /// We started or stopped recording a channel (asked to, or the charter forbade it).
    Recording {
        /// Which.
        channel: ChannelId,
        /// Recording now.
        on: bool,
    },
    /// A request to record was refused.
    RecordingRefused {
        /// Which.
        channel: ChannelId,
        /// Why.
        reason: String,
    },
    /// A member's presence expired.
    PresenceGone {
        /// Who.
        peer: IdentityKey,
    },
    /// An end-to-end session with a member is up: keys flow both ways.
    SessionUp {
        /// With whom.
        peer: IdentityKey,
    },
    /// Someone's voice started playing.
    TalkerStarted {
        /// Who.
        peer: IdentityKey,
        /// Its display name.
        name: String,
        /// Where we hear it.
        channels: Vec<ChannelId>,
        /// A whisper to us.
        whisper: bool,
    },
    /// Someone's voice stopped.
    TalkerStopped {
        /// Who.
        peer: IdentityKey,
    },
    /// A channel we listen or speak on changed how it travels (mesh or a relay).
    RouteChanged {
        /// Which.
        channel: ChannelId,
        /// How now.
        route: Route,
    },
    /// A newcomer was admitted with an invite (`peer` is us when it was our own request).
    Admitted {
        /// Who.
        peer: IdentityKey,
        /// Its name.
        name: String,
        /// Its roles.
        role: String,
    },
    /// An admin removed us from the org (we learnt it from the charter, perhaps from a member
    /// that no longer answers us otherwise). The member goes quiet: the application should
    /// stop the node.
    Removed {
        /// The admin who removed us.
        by: IdentityKey,
    },
    /// Our join request was refused by an admin (an expired or used invite, say).
    JoinRefused {
        /// Why.
        reason: String,
    },
    /// A talker on air to a channel we hear sent us no frame in time: we climbed this rung of
    /// the repair ladder (`crate::path`). [`crate::path::Rung::Mesh`]: the whole ladder did
    /// not reach it; it stays unreachable until a frame comes.
    PathRepair {
        /// The talker we are deaf to.
        talker: IdentityKey,
        /// Its channels we hear.
        channels: Vec<ChannelId>,
        /// What we did.
        rung: crate::path::Rung,
    },
    /// As a relay: a subscription was refused.
    SubscriptionRefused {
        /// From whom.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// A transmission began (its first frame went out, after PTT or voice activation): on
    /// these channels, or a whisper.
    Transmitting {
        /// Where.
        channels: Vec<ChannelId>,
        /// To whom, for a whisper.
        whisper: Option<IdentityKey>,
    },
    /// Our transmission ended.
    TransmitStopped,
    /// A transmission was refused at the sender: the charter does not allow it.
    PttDenied {
        /// Where.
        channels: Vec<ChannelId>,
        /// Why.
        reason: String,
    },
    /// Floor control on a half-duplex channel: granted, denied, queued, pre-empted, released,
    /// the holder (talker id, before audio), emergencies.
    Floor(FloorEvent),
    /// The charter changed (a local edit or ops from a peer).
    CharterChanged {
        /// How many ops arrived.
        ops: usize,
    },
    /// A voice datagram went out (only with `tap_voice`).
    VoiceSent {
        /// To whom.
        peer: PeerId,
        /// The sealed packet.
        packet: Vec<u8>,
    },
    /// Something went wrong that the user should hear of.
    Warning(String),
}
