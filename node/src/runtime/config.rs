//! What a node starts with.

use crate::audio::capture::CaptureConfig;
use crate::audio::codec::EncoderConfig;
use crate::audio::jitter::JitterConfig;
use crate::audio::Device;
use crate::link::{Heartbeat, LinkConfig, LinkSocket};
use callsign_keys::NodeKeys;
use callsign_mesh::charter::{ChannelId, Charter};
use callsign_mesh::floor::FloorConfig;
use callsign_mesh::forward::ForwarderConfig;
use callsign_mesh::topology::TopologyConfig;
use callsign_mesh::voice::KeyScheduleConfig;
use libp2p::Multiaddr;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the node's microphone audio comes from.
#[derive(Clone, Debug)]
pub enum AudioInput {
    /// Digital silence (a listener, or a bot that only receives).
    Silence,
    /// The seeded speech-like synthesiser (`audio::synth::SpeechLike`).
    Synthetic { seed: u64 },
    /// 48 kHz mono samples (from a WAV file), played in a loop.
    Samples(Vec<f32>),
    /// A sound card (needs the `device-audio` feature).
    Device(Device),
}

/// Everything [`super::Node::start`] needs.
pub struct NodeConfig {
    pub keys: NodeKeys,
    /// The org's charter replica; the node keeps it in sync with its peers.
    pub charter: Charter,
    /// The name others see in presence.
    pub display_name: String,
    /// The UDP address of the node's QUIC endpoint (`127.0.0.1:0` picks a port).
    pub listen: SocketAddr,
    /// The DSCP voice datagrams leave marked with (`link::dscp`; `None`: unmarked)
    /// [default: 46, Expedited Forwarding].
    pub dscp: Option<u8>,
    /// A socket already bound (the simulator's turmoil socket); `listen` is then ignored.
    pub socket: Option<Arc<LinkSocket>>,
    /// Also listen on TCP (+ Noise + Yamux) for networks that block UDP. Off in simulation.
    pub tcp_fallback: bool,
    /// Unix time in milliseconds at start (presence timestamps); `None` reads the system clock.
    pub unix_time_ms: Option<u64>,
    /// Peers to dial at start (`/ip4/../udp/../quic-v1/p2p/..`).
    pub bootstrap: Vec<Multiaddr>,
    /// The direct addresses presence tells other members to dial, instead of the listening
    /// addresses and the confirmed external ones: a port forwarded on a router (the public
    /// address), or none at all (reachable only through relay circuits, which are announced
    /// either way). `None`: announce what the node listens on.
    pub announce: Option<Vec<Multiaddr>>,
    /// Channels to listen to at start (those the charter does not allow are skipped).
    pub listening: Vec<ChannelId>,
    pub link: LinkConfig,
    pub encoder: EncoderConfig,
    pub jitter: JitterConfig,
    pub capture: CaptureConfig,
    pub input: AudioInput,
    /// Where recordings go (`NodeCommand::Record`); `None`: this node does not record.
    pub recordings: Option<PathBuf>,
    /// Write what the node plays (stereo mix) to this WAV file.
    pub output: Option<PathBuf>,
    /// Also play the mix on this sound card (needs the `device-audio` feature).
    pub output_device: Option<Device>,
    /// Media timestamps count 48 kHz samples from this instant. Nodes that share it (one
    /// process, or the simulator) measure mouth-to-ear latency exactly; without it, timestamps
    /// count from the node's start and no latency is reported.
    pub media_epoch: Option<Instant>,
    pub keys_schedule: KeyScheduleConfig,
    /// How often presence is re-announced; records live three times as long.
    pub presence_interval: Duration,
    /// Seeds every RNG in the node (charter sync jitter, sender keys).
    pub seed: u64,
    /// Local-network discovery (real sockets only).
    pub mdns: bool,
    /// Ask the home router to forward a public port to the QUIC port (UPnP IGD; real
    /// sockets only, and not for a loopback or public socket): the mapped address is
    /// announced once a probe confirms it.
    pub port_mapping: bool,
    /// A public address the router already forwards to the QUIC port, known before start
    /// (the simulator's UPnP router, whose protocol cannot run on simulated sockets): the
    /// member is told at start, as the port mapper would tell it.
    pub mapped_port: Option<std::net::SocketAddr>,
    /// Drop this fraction of outgoing voice datagrams (seeded): loss for demos and tests on
    /// perfect loopback links.
    pub send_loss: f64,
    /// Serve relay v2 circuits to members who cannot link directly (set on publicly reachable
    /// nodes; advertised in presence). Circuits carry only libp2p-encrypted streams whose voice
    /// is end-to-end encrypted: the relay reads neither.
    pub relay_circuits: bool,
    /// Emit [`super::NodeEvent::VoiceSent`] for every voice datagram sent (tests, simulator).
    pub tap_voice: bool,
    /// Floor control on half-duplex channels: acknowledgement wait, silence and talk limits.
    pub floor: FloorConfig,
    /// Forward voice for members who subscribe (a rented relay, which is no member and never
    /// holds a key, or a volunteering member that also serves circuits). `None`: never forward.
    pub forwarding: Option<ForwarderConfig>,
    /// Park the link to a member (close its QUIC connection, keep the voice plane:
    /// `link::Links::park`) once ordered control with it has been quiet this long. A rented
    /// relay's QUIC connection to a listening member is most of what the member costs it.
    /// `None`: never park.
    pub park_idle_links: Option<Duration>,
    /// The topology rule's constants (the same on every member).
    pub topology: TopologyConfig,
    /// The upload this member may spend on voice, kbit/s, advertised so that channels it
    /// speaks on move to a relay before one stream per listener would exceed it.
    pub uplink_kbps: Option<u32>,
    /// Not a member yet: ask every peer we link to to admit us with this invite, and take the
    /// charter from them, until an admin's `AdmitMember` op names us.
    pub join: Option<callsign_mesh::admission::JoinRequest>,
}

impl NodeConfig {
    /// Defaults around the required parts: silence in, no output, 20 ms frames.
    pub fn new(keys: NodeKeys, charter: Charter, display_name: impl Into<String>) -> Self {
        Self {
            keys,
            charter,
            display_name: display_name.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            dscp: Some(crate::link::dscp::DSCP_EF),
            socket: None,
            tcp_fallback: true,
            unix_time_ms: None,
            bootstrap: Vec::new(),
            announce: None,
            listening: Vec::new(),
            link: LinkConfig::default(),
            encoder: EncoderConfig::default(),
            jitter: JitterConfig {
                // Until a sender's first eight packets have measured the path, a spurt plays
                // this far behind; the target adapts from the next spurt on. One frame: until
                // its listeners report, a sender protects its stream, and a lost frame is
                // rebuilt in place only if the next packet is here by then. The pull's phase
                // adds 0 to 20 ms more, which absorbs some jitter while a squad's first words
                // stay snappy; the audio engine's stand-alone default (60 ms) is internet-safe.
                initial_delay: Duration::from_millis(20),
                ..JitterConfig::default()
            },
            capture: CaptureConfig::default(),
            input: AudioInput::Silence,
            recordings: None,
            output: None,
            output_device: None,
            media_epoch: None,
            keys_schedule: KeyScheduleConfig::default(),
            presence_interval: Duration::from_secs(10),
            seed: 0,
            mdns: false,
            port_mapping: false,
            mapped_port: None,
            send_loss: 0.0,
            relay_circuits: false,
            tap_voice: false,
            floor: FloorConfig::default(),
            forwarding: None,
            park_idle_links: None,
            topology: TopologyConfig::default(),
            uplink_kbps: None,
            join: None,
        }
    }
}

/// How often a relay's links hear from it at least: voice, or a voice-plane heartbeat
/// (`link::heartbeat`). Every 125 ms on a link with voice either way in the last 3 s, so
/// members close a relay link silent for four of these (half a second) and fail over; every
/// 500 ms on a quiet link (found dead within 2 s, or half a second after the next word).
pub const RELAY_HEARTBEAT: Heartbeat = Heartbeat {
    every: Duration::from_millis(125),
    quiet: Duration::from_millis(500),
    active: Duration::from_secs(3),
};

/// QUIC streams a member may have open to a relay at once (members allow 256).
pub const RELAY_MAX_STREAMS: u32 = 32;

/// A relay's QUIC idle timeout, with keep-alive pings after three quarters of it without a
/// packet. Quick failure detection is the heartbeat's job; this only bounds how long a relay
/// keeps a member that vanished (QUIC uses the smaller of the two ends' timeouts), as long as
/// Mumble's server keeps a silent client. Members dialing it ping every 20 s
/// (`LinkConfig::relay_keep_alive`), which keeps the link up with the relay only acknowledging:
/// a relay pinging every link every 2 s cost it as much as a talker's voice, and members'
/// pings every 5 s cost it 4 % of its CPU while it forwarded a talker to 100 of them.
pub const RELAY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a rented relay waits after the last ordered control with a member before it parks
/// their link (`NodeConfig::park_idle_links`). Control comes in bursts (joining, a
/// subscription, a floor request); a burst's next message reopens QUIC, which costs a
/// handshake and a restart of the control session.
pub const RELAY_PARK_AFTER: Duration = Duration::from_secs(10);

impl NodeConfig {
    /// Makes the node forward voice for subscribing members, with a relay's short link idle
    /// timeout.
    pub fn serve_as_relay(&mut self, forwarder: ForwarderConfig) {
        self.forwarding = Some(forwarder);
        self.link.idle_timeout = RELAY_IDLE_TIMEOUT;
        self.link.keep_alive = RELAY_IDLE_TIMEOUT * 3 / 4;
        self.link.plane_heartbeat = Some(RELAY_HEARTBEAT);
        // A member's control traffic to a relay is a few messages at a time.
        self.link.max_streams = RELAY_MAX_STREAMS;
        self.park_idle_links = Some(RELAY_PARK_AFTER);
    }
}
