//! The Node API's vocabulary: commands in, events and stats out.

use super::config::AudioInput;
use crate::audio::feed::FeedCounters;
use crate::audio::mixer::DuckRule;
use crate::audio::{AudioError, Device};
use callsign_keys::IdentityKey;
use callsign_mesh::charter::{ChannelId, OpBody};
use callsign_mesh::forward::ForwardCounts;
use callsign_mesh::topology::Route;
use callsign_mesh::voice::DropCounts;
use libp2p::{Multiaddr, PeerId};
use serde::Serialize;
use std::time::Duration;
use tokio::sync::oneshot;

/// What the node reports: the member's events, and the audio worker's (talkers, our
/// transmissions).
pub use callsign_mesh::member::{Event as NodeEvent, LinkKind, PortMapping};

/// What the UI, CLI, relay or simulator asks a node to do.
#[derive(Debug)]
pub enum NodeCommand {
    /// Connect to a peer.
    Dial(Multiaddr),
    /// Hear a channel (if the charter allows it).
    Listen(ChannelId),
    Unlisten(ChannelId),
    /// Hear a channel silently (the charter's monitor permission): out of its roster, never
    /// transmitting there.
    Monitor(ChannelId),
    /// Start or stop recording a channel we hear, to the node's recordings folder (if its
    /// charter policy allows; everyone listening sees it).
    Record {
        channel: ChannelId,
        on: bool,
    },
    /// Where we are in the game (`None`: nowhere): positional channels place our voice and
    /// others' by it, proximity channels reach only members near it.
    SetPosition(Option<callsign_mesh::spatial::Position>),
    /// Keep listening (presence, talker events) but play nothing from the channel.
    Mute(ChannelId, bool),
    /// Linear gain, 0.0–2.0.
    SetVolume(ChannelId, f32),
    /// -1.0 (left) to 1.0 (right).
    SetPan(ChannelId, f32),
    /// Start transmitting on these channels (several = simulcast). Channels the charter does not
    /// let us speak on are refused ([`NodeEvent::PttDenied`]). On half-duplex channels this
    /// requests the floor: audio goes there once it is granted ([`NodeEvent::Floor`]).
    PttDown(Vec<ChannelId>),
    /// Raise an emergency on a half-duplex channel (roles with priority 4): take the floor
    /// over anyone and alert every listener; transmit until [`NodeCommand::PttUp`]. The channel
    /// stays in emergency until [`NodeCommand::ClearEmergency`].
    Emergency(ChannelId),
    /// End the emergency `raiser` raised on `channel` (our own, or anyone's as an admin).
    ClearEmergency {
        channel: ChannelId,
        raiser: IdentityKey,
    },
    /// Stop transmitting (channel PTT or whisper).
    PttUp,
    /// Start whispering to one member.
    WhisperDown(IdentityKey),
    /// Transmit on `channels` while the voice activity detector hears speech (instead of PTT);
    /// an empty list turns voice activation off.
    VoiceActivation(Vec<ChannelId>),
    /// Sign and apply a charter edit with our identity; it reaches peers by sync.
    EditCharter(OpBody),
    /// [`NodeCommand::EditCharter`] that answers: applied, or why the charter refuses it.
    TryEditCharter(
        OpBody,
        oneshot::Sender<Result<(), callsign_mesh::charter::EditError>>,
    ),
    /// Send raw bytes as a voice datagram to a peer: fault injection for tests and the
    /// simulator (forged, replayed or malformed packets).
    InjectDatagram {
        peer: PeerId,
        bytes: Vec<u8>,
    },
    /// Asks a relay to forward these channels to us whatever our routes say (diagnostics; the
    /// relay refuses what the charter does not allow).
    Subscribe {
        relay: IdentityKey,
        channels: Vec<ChannelId>,
    },
    /// Change the user's audio settings (capture, codec, jitter buffer, ducking); invalid
    /// settings are refused with a [`NodeEvent::Warning`].
    SetAudio(AudioSettings),
    /// Switch the microphone (a device that will not open leaves the old input, with a warning).
    SetInput(AudioInput),
    /// Play on this sound card, or on none.
    SetOutputDevice(Option<Device>),
    /// A snapshot of the charter's state (for UIs: the channel tree, roles, members).
    Charter(oneshot::Sender<callsign_mesh::charter::CharterState>),
    /// Where a newcomer with an invite can reach the org now, best first (see
    /// `callsign_mesh::member::Member::invite_addresses`): for an invite ticket.
    InviteAddresses(oneshot::Sender<Vec<Multiaddr>>),
    Stats(oneshot::Sender<NodeStats>),
    Shutdown,
}

/// What a user tunes while the node runs. The defaults match [`super::NodeConfig::new`].
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct AudioSettings {
    /// nnnoiseless on the microphone.
    pub noise_suppression: bool,
    /// Automatic gain control on the microphone.
    pub agc: bool,
    /// Opus bitrate, bits per second (6000–64000).
    pub bitrate: u32,
    /// Voice activation opens at this speech probability (0.05–0.99).
    pub vad_threshold: f32,
    /// The jitter buffer's delay stays within these bounds (0–1000 ms, min ≤ max).
    pub jitter_min: Duration,
    pub jitter_max: Duration,
    /// Channels that play quieter while another has a talker.
    pub ducking: Vec<DuckRule>,
    /// Echo cancellation on the microphone. It runs only while both input and output are
    /// sound cards (a WAV file or a bot has no echo).
    #[serde(default = "echo_cancellation_default")]
    pub echo_cancellation: bool,
}

fn echo_cancellation_default() -> bool {
    true
}

/// Voice activation's default threshold (speech probability).
pub const DEFAULT_VAD_THRESHOLD: f32 = 0.6;

impl Default for AudioSettings {
    fn default() -> Self {
        let jitter = crate::audio::jitter::JitterConfig::default();
        Self {
            noise_suppression: true,
            agc: false,
            bitrate: crate::audio::codec::EncoderConfig::default().bitrate,
            vad_threshold: DEFAULT_VAD_THRESHOLD,
            jitter_min: jitter.min_delay,
            jitter_max: jitter.max_delay,
            ducking: Vec::new(),
            echo_cancellation: true,
        }
    }
}

impl AudioSettings {
    /// Why these settings cannot be applied.
    pub fn validate(&self) -> Result<(), AudioError> {
        let bad = |why: String| Err(AudioError::Settings(why));
        if !(6_000..=64_000).contains(&self.bitrate) {
            return Err(AudioError::Bitrate(self.bitrate));
        }
        if !(0.05..=0.99).contains(&self.vad_threshold) {
            return bad(format!(
                "voice activation threshold {} is outside 0.05–0.99",
                self.vad_threshold
            ));
        }
        if self.jitter_min > self.jitter_max || self.jitter_max > Duration::from_secs(1) {
            return bad(format!(
                "jitter buffer bounds {}–{} ms: need min ≤ max ≤ 1000 ms",
                self.jitter_min.as_millis(),
                self.jitter_max.as_millis()
            ));
        }
        for rule in &self.ducking {
            if !(0.0..=60.0).contains(&rule.db) || rule.when_active == rule.ducked {
                return bad(format!(
                    "ducking by {} dB: need 0–60 dB between two different channels",
                    rule.db
                ));
            }
        }
        Ok(())
    }
}

/// The audio side of the node: the input meter and the sound cards' health.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AudioStats {
    /// The microphone's level over the last frame, dBFS (after noise suppression).
    pub input_level_db: f32,
    /// The voice activity detector's speech probability over the last frame, 0–1.
    pub speech_probability: f32,
    /// Input samples the sound card's callback dropped because the node fell behind.
    pub capture_overruns: u64,
    /// Output samples the sound card's callback filled with silence.
    pub playback_underruns: u64,
    /// What the device feeds padded or dropped (`None` without a sound card).
    pub capture_feed: Option<FeedCounters>,
    pub playback_feed: Option<FeedCounters>,
    /// The sound cards open now, by name: the system's default moves them.
    pub input_device: Option<String>,
    pub output_device: Option<String>,
    /// The echo canceller's ERLE and delay, while it runs.
    pub echo: Option<crate::audio::echo::EchoStats>,
}

/// A channel a stream is heard on, or a whisper.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StreamChannel {
    Channel(ChannelId),
    Whisper,
}

/// One talker's channel frames to or from one member, each counted once however many of the
/// listener's channels it reached: a simulcast frame plays once, so per-channel counts read as
/// loss on its second channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TalkerFrames {
    /// The listener (sent) or the talker (heard).
    #[serde(skip)]
    pub peer: IdentityKey,
    /// Frames sent, or played.
    pub frames: u64,
    /// Heard: frames concealed (0 when sent).
    pub concealed: u64,
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct LatencyMs {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

/// One heard stream: a sender on a channel.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReceivedStream {
    pub from: IdentityKey,
    #[serde(skip)]
    pub channel: StreamChannel,
    /// Frames decoded from their own packet or recovered by FEC or DRED.
    pub frames_played: u64,
    /// Frame periods filled by concealment inside transmissions.
    pub frames_concealed: u64,
    /// Frames the network lost (some then recovered by FEC), over the sender's whole stream.
    pub frames_lost: u64,
    pub frames_fec: u64,
    /// Missing frames rebuilt from a later packet's deep redundancy (DRED).
    #[serde(default)]
    pub frames_dred: u64,
    /// Capture (end of the frame's block at the sender) to playout, when both nodes share a
    /// media epoch.
    pub mouth_to_ear_ms: Option<LatencyMs>,
    pub jitter_delay_ms: f64,
    /// How the talker was placed on a positional or proximity channel (`None`: never placed).
    pub placed: Option<PlacedRange>,
}

/// The gains and pan a placed stream played at.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct PlacedRange {
    /// Quietest and loudest gain, dB (-inf for silence is reported as -120).
    pub min_gain_db: f32,
    pub max_gain_db: f32,
    /// The last gain and pan (-1 left, +1 right).
    pub last_gain_db: f32,
    pub last_pan: f32,
}

impl PlacedRange {
    /// Widens the range by one placement.
    pub fn add(range: Option<Self>, gain: f32, pan: f32) -> Self {
        let db = if gain > 1e-6 {
            20.0 * gain.log10()
        } else {
            -120.0
        };
        let (min, max) = range.map_or((db, db), |r| (r.min_gain_db.min(db), r.max_gain_db.max(db)));
        Self {
            min_gain_db: min,
            max_gain_db: max,
            last_gain_db: db,
            last_pan: pan,
        }
    }
}

/// Frames this node sent to one peer on one channel.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SentStream {
    pub to: IdentityKey,
    #[serde(skip)]
    pub channel: StreamChannel,
    pub frames_sent: u64,
}

/// A linked peer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PeerStats {
    pub peer: String,
    pub kind: LinkKind,
    pub rtt: Option<Duration>,
}

/// One half-duplex channel's floor as this node sees it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FloorStats {
    #[serde(skip)]
    pub channel: ChannelId,
    /// Who holds the floor.
    #[serde(skip)]
    pub holder: Option<IdentityKey>,
    /// Ours: `idle`, `pending`, `granted`, `queued N`, `releasing`.
    pub state: String,
    /// Members whose emergency on the channel is not cleared.
    #[serde(skip)]
    pub emergencies: Vec<IdentityKey>,
    /// Who arbitrates (`None`: the members by rule).
    #[serde(skip)]
    pub arbiter: Option<IdentityKey>,
}

/// A snapshot of the node.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct NodeStats {
    pub received: Vec<ReceivedStream>,
    pub sent: Vec<SentStream>,
    /// Channel frames per talker heard, each once (`TalkerFrames`).
    pub heard_once: Vec<TalkerFrames>,
    /// Channel frames per listener sent to, each once.
    pub sent_once: Vec<TalkerFrames>,
    /// Receive-side drops by reason.
    pub drops: DropCounts,
    /// Transmissions refused at the sender by the charter.
    pub ptt_denied: u64,
    pub key_rotations: u64,
    pub peers: Vec<PeerStats>,
    /// Frames this node encoded and sent (any number of copies each).
    pub frames_encoded: u64,
    /// The loss the encoder protects for (the worst listener's report, let go of slowly).
    pub expected_loss_pct: u8,
    /// The charter's state hash (hex): equal on every node once they have converged.
    pub charter_hash: String,
    /// Charter ops held.
    pub charter_ops: usize,
    /// Frames dropped on receipt because their sender did not hold the floor.
    pub floor_drops: u64,
    /// Every half-duplex channel's floor.
    pub floor: Vec<FloorStats>,
    /// The voice path's repairs by cause (`callsign_mesh::path`).
    pub repairs: callsign_mesh::path::RepairCounts,
    /// Talkers on air whose frames the whole repair ladder has not brought to us.
    #[serde(skip)]
    pub unreachable: Vec<IdentityKey>,
    /// How each channel we listen or speak on travels.
    #[serde(skip)]
    pub routes: Vec<(ChannelId, Route)>,
    /// Voice keys we hold that open others' audio (a relay must hold none).
    pub audio_keys_held: usize,
    /// What we forwarded, when we serve as a relay.
    pub forwarding: Option<ForwardingStats>,
    /// The input meter and sound-card health.
    pub audio: AudioStats,
}

/// A relay's forwarding counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ForwardingStats {
    /// Packets and bytes in and out, drops by reason.
    #[serde(skip)]
    pub counts: ForwardCounts,
    /// Members subscribed now.
    pub subscribers: usize,
    /// Subscriptions per channel now.
    #[serde(skip)]
    pub channels: Vec<(ChannelId, usize)>,
    /// Subscriptions refused (bad signature, not the link's peer, no listen right, stale).
    pub subscriptions_refused: u64,
    /// Time from a packet's arrival at the link layer to its last copy being handed to the
    /// links, microseconds, bucketed by powers of two (`latency_us[i]` counts packets under
    /// `2^i` µs; the last bucket takes the rest).
    pub latency_us: Vec<u64>,
    /// Sum of those times, microseconds.
    pub latency_sum_us: u64,
    /// The links' datagram counters, with the voice plane's drops by reason (over a link's
    /// rate, unauthentic, replayed, unknown link).
    pub links: crate::link::LinkCounts,
    /// What reached the socket, with handshakes refused over a source's rate.
    pub socket: crate::link::SocketCounts,
}
