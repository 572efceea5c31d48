//! The node's two audio ends: [`Transmitter`] (input → capture chain → PTT or voice-activation
//! gate → Opus) and [`Playout`] (one jitter buffer and decoder per remote sender → mixer →
//! output), with the per-stream counters and latency histograms the stats report.

use super::api::{AudioSettings, DEFAULT_VAD_THRESHOLD};
use super::api::{LatencyMs, ReceivedStream, StreamChannel};
use super::config::AudioInput;
use crate::audio::capture::{CaptureChain, CaptureConfig, GateMode};
use crate::audio::codec::{DecodeKind, EncoderConfig, VoiceEncoder, MAX_PACKET};
use crate::audio::dsp::rms;
use crate::audio::feed::{CaptureFeed, FeedCounters, PlaybackFeed, StreamGuard};
use crate::audio::jitter::{IncomingFrame, JitterConfig};
use crate::audio::mixer::{MixInput, Mixer};
use crate::audio::realtime::CallbackCounters;
use crate::audio::stream::ReceiveStream;
use crate::audio::synth::SpeechLike;
use crate::audio::wav::WavSink;
use crate::audio::{AudioError, SAMPLE_RATE};
use crate::audio::{Device, FrameDuration};
use callsign_keys::IdentityKey;
use callsign_mesh::charter::ChannelId;
use callsign_mesh::voice::{ReceivedFrame, VoiceFlags};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where a transmission goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Channels(Vec<ChannelId>),
    Whisper(IdentityKey),
}

/// One encoded frame ready to seal.
pub struct Encoded<'a> {
    pub target: Target,
    pub flags: VoiceFlags,
    pub sequence: u16,
    pub payload: &'a [u8],
}

enum Source {
    Silence,
    Synthetic(Box<SpeechLike>),
    Samples {
        data: Vec<f32>,
        at: usize,
    },
    /// A sound card; the guard keeps its stream open.
    #[cfg_attr(not(feature = "device-audio"), allow(dead_code))]
    Device {
        feed: Box<CaptureFeed>,
        _guard: StreamGuard,
    },
}

impl Source {
    fn open(
        input: AudioInput,
        frame: FrameDuration,
        counters: &Arc<CallbackCounters>,
    ) -> Result<Self, AudioError> {
        Ok(match input {
            AudioInput::Silence => Source::Silence,
            AudioInput::Synthetic { seed } => {
                Source::Synthetic(Box::new(SpeechLike::new(seed, 0.3)))
            }
            AudioInput::Samples(data) => Source::Samples { data, at: 0 },
            #[cfg(feature = "device-audio")]
            AudioInput::Device(device) => {
                let (feed, guard) =
                    crate::audio::device::start_capture(&device, frame, counters.clone())?;
                Source::Device {
                    feed: Box::new(feed),
                    _guard: guard,
                }
            }
            #[cfg(not(feature = "device-audio"))]
            AudioInput::Device(_) => {
                let _ = (frame, counters);
                return Err(AudioError::Device(
                    "this build has no device audio (the `device-audio` feature)".into(),
                ));
            }
        })
    }

    fn fill(&mut self, out: &mut [f32]) -> Result<(), AudioError> {
        match self {
            Self::Device { feed, .. } => return feed.fill(out),
            Self::Silence => out.fill(0.0),
            Self::Synthetic(s) => s.fill(out),
            Self::Samples { data, at } if !data.is_empty() => {
                for s in out.iter_mut() {
                    *s = data[*at];
                    *at = (*at + 1) % data.len();
                }
            }
            Self::Samples { .. } => out.fill(0.0),
        }
        Ok(())
    }
}

/// See the module documentation.
pub struct Transmitter {
    source: Source,
    capture: CaptureChain,
    encoder: VoiceEncoder,
    block: Vec<f32>,
    packet: Vec<u8>,
    sequence: u16,
    target: Option<Target>,
    /// Voice activation's channels (empty: PTT mode).
    vad_channels: Vec<ChannelId>,
    transmitting: bool,
    encoded: u64,
    vad_threshold: f32,
    /// The last captured frame's level (dBFS) and speech probability, gate open or not.
    level_db: f32,
    speech: f32,
    device_counters: Arc<CallbackCounters>,
}

/// The quietest level the input meter reports.
pub const SILENT_DB: f32 = -90.0;

impl Transmitter {
    pub fn new(
        input: AudioInput,
        capture: CaptureConfig,
        encoder: EncoderConfig,
    ) -> Result<Self, AudioError> {
        let frame = encoder.frame;
        let device_counters = Arc::new(CallbackCounters::default());
        Ok(Self {
            source: Source::open(input, frame, &device_counters)?,
            capture: CaptureChain::new(CaptureConfig {
                device_rate: SAMPLE_RATE,
                frame,
                ..capture
            })?,
            encoder: VoiceEncoder::new(encoder)?,
            block: vec![0.0; frame.samples()],
            packet: vec![0; MAX_PACKET],
            sequence: 0,
            target: None,
            vad_channels: Vec::new(),
            transmitting: false,
            encoded: 0,
            vad_threshold: DEFAULT_VAD_THRESHOLD,
            level_db: SILENT_DB,
            speech: 0.0,
            device_counters,
        })
    }

    /// Switches the input (a device is opened here; on error the old input stays).
    pub fn set_input(&mut self, input: AudioInput) -> Result<(), AudioError> {
        self.source = Source::open(input, self.encoder.config().frame, &self.device_counters)?;
        Ok(())
    }

    /// Capture and encoder settings from the user's audio settings.
    pub fn apply(&mut self, settings: &AudioSettings) -> Result<(), AudioError> {
        self.encoder.set_bitrate(settings.bitrate)?;
        self.capture
            .set_noise_suppression(settings.noise_suppression);
        self.capture.set_agc(settings.agc);
        self.vad_threshold = settings.vad_threshold;
        if !self.vad_channels.is_empty() {
            self.capture.set_gate(self.vad_gate());
        }
        Ok(())
    }

    fn vad_gate(&self) -> GateMode {
        GateMode::VoiceActivation {
            threshold: self.vad_threshold,
            hangover: Duration::from_millis(400),
        }
    }

    /// The input meter: the last frame's level in dBFS and its speech probability.
    pub fn level(&self) -> (f32, f32) {
        (self.level_db, self.speech)
    }

    /// Samples the sound card's callback dropped (the worker fell behind), and what the feed
    /// padded or dropped to keep latency bounded.
    pub fn device_health(&self) -> (u64, Option<FeedCounters>) {
        let overruns = self
            .device_counters
            .capture_overruns
            .load(std::sync::atomic::Ordering::Relaxed);
        let feed = match &self.source {
            Source::Device { feed, .. } => Some(feed.counters()),
            _ => None,
        };
        (overruns, feed)
    }

    /// Frames encoded so far.
    pub fn encoded(&self) -> u64 {
        self.encoded
    }

    pub fn is_transmitting(&self) -> bool {
        self.transmitting
    }

    /// PTT pressed toward `target` (already checked against the charter).
    pub fn press(&mut self, target: Target) {
        self.target = Some(target);
        self.capture.set_ptt(true);
    }

    pub fn release(&mut self) {
        self.capture.set_ptt(false);
    }

    /// Voice activation on `channels`, or PTT again when empty.
    pub fn set_voice_activation(&mut self, channels: Vec<ChannelId>) {
        if channels.is_empty() {
            self.capture.set_gate(GateMode::PushToTalk);
        } else {
            self.capture.set_gate(self.vad_gate());
            self.target = Some(Target::Channels(channels.clone()));
        }
        self.vad_channels = channels;
    }

    /// Feedback from receivers: their measured loss.
    pub fn set_expected_loss(&mut self, pct: u8) -> Result<(), AudioError> {
        self.encoder.set_expected_loss(pct)
    }

    /// The loss the encoder's FEC is tuned for.
    pub fn expected_loss_pct(&self) -> u8 {
        self.encoder.expected_loss_pct()
    }

    /// Captures one frame period and, while the gate is open (plus one closing frame carrying
    /// the end marker), encodes it.
    pub fn tick(&mut self) -> Result<Option<Encoded<'_>>, AudioError> {
        self.source.fill(&mut self.block)?;
        let Self {
            capture,
            encoder,
            block,
            packet,
            transmitting,
            level_db,
            speech,
            ..
        } = self;
        let mut result: Result<Option<(usize, VoiceFlags)>, AudioError> = Ok(None);
        let was = *transmitting;
        capture.push(block, |frame| {
            *level_db = (20.0 * rms(frame.samples).max(1e-9).log10()).max(SILENT_DB);
            *speech = frame.speech_probability;
            if !frame.transmit && !was {
                return;
            }
            let mut flags = VoiceFlags::empty();
            if frame.transmit && !was {
                flags = flags.union(VoiceFlags::START);
            }
            if !frame.transmit {
                flags = flags.union(VoiceFlags::END);
            }
            if encoder.config().fec {
                flags = flags.union(VoiceFlags::FEC);
            }
            result = encoder
                .encode(frame.samples, packet)
                .map(|n| Some((n, flags)));
        })?;
        let Some((len, flags)) = result? else {
            return Ok(None);
        };
        let Some(target) = self.target.clone() else {
            return Ok(None);
        };
        self.transmitting = !flags.contains(VoiceFlags::END);
        if !self.transmitting && self.vad_channels.is_empty() {
            self.target = None;
        }
        let sequence = self.sequence;
        self.sequence = self.sequence.wrapping_add(1);
        self.encoded += 1;
        Ok(Some(Encoded {
            target,
            flags,
            sequence,
            payload: &self.packet[..len],
        }))
    }
}

/// Capture-to-playout latency in 1 ms buckets up to 2 s (bounded memory however long a node
/// runs).
#[derive(Clone, Debug)]
struct LatencyHistogram {
    buckets: Vec<u32>,
    count: u64,
}

impl LatencyHistogram {
    const BUCKETS: usize = 2000;

    fn new() -> Self {
        Self {
            buckets: vec![0; Self::BUCKETS],
            count: 0,
        }
    }

    fn record(&mut self, latency: Duration) {
        let ms = (latency.as_millis() as usize).min(Self::BUCKETS - 1);
        self.buckets[ms] += 1;
        self.count += 1;
    }

    fn quantile(&self, q: f64) -> f64 {
        let rank = ((self.count as f64 - 1.0) * q).round() as u64;
        let mut seen = 0u64;
        for (ms, n) in self.buckets.iter().enumerate() {
            seen += u64::from(*n);
            if seen > rank {
                return ms as f64;
            }
        }
        (Self::BUCKETS - 1) as f64
    }

    fn summary(&self) -> Option<LatencyMs> {
        (self.count > 0).then(|| LatencyMs {
            p50: self.quantile(0.5),
            p95: self.quantile(0.95),
            p99: self.quantile(0.99),
        })
    }
}

#[derive(Clone, Debug)]
struct Counters {
    played: u64,
    concealed: u64,
    fec: u64,
    latency: LatencyHistogram,
}

struct RemoteStream {
    stream: ReceiveStream,
    source: u64,
    channels: Vec<ChannelId>,
    whisper: bool,
    active: bool,
    pcm: Vec<f32>,
    counters: BTreeMap<StreamChannel, Counters>,
    /// (lost, played) at the last loss report.
    reported: (u64, u64),
}

impl RemoteStream {
    fn heard_on(&self) -> Vec<StreamChannel> {
        if self.whisper {
            vec![StreamChannel::Whisper]
        } else {
            self.channels
                .iter()
                .map(|c| StreamChannel::Channel(*c))
                .collect()
        }
    }
}

/// What a playout tick noticed.
#[derive(Debug, Default)]
pub struct PlayoutChanges {
    pub stopped: Vec<IdentityKey>,
}

/// Mixer channel whispers play on (no real channel has this id).
pub const WHISPER_MIX_CHANNEL: ChannelId = ChannelId(u64::MAX);

/// See the module documentation.
pub struct Playout {
    streams: BTreeMap<IdentityKey, RemoteStream>,
    pub mixer: Mixer,
    jitter: JitterConfig,
    frame_len: usize,
    out: Vec<f32>,
    sink: Option<WavSink>,
    /// A sound card the mix also plays on; the guard keeps its stream open.
    device: Option<(PlaybackFeed, StreamGuard)>,
    device_counters: Arc<CallbackCounters>,
    next_source: u64,
    /// Shared media epoch (see `NodeConfig::media_epoch`); without one, no latency is measured.
    epoch: Option<Instant>,
}

impl Playout {
    pub fn new(
        jitter: JitterConfig,
        output: Option<&Path>,
        output_device: Option<&Device>,
        epoch: Option<Instant>,
    ) -> Result<Self, AudioError> {
        let frame_len = jitter.frame.samples();
        let device_counters = Arc::new(CallbackCounters::default());
        let device = output_device
            .map(|d| open_playback(d, jitter.frame, &device_counters))
            .transpose()?;
        Ok(Self {
            device,
            device_counters,
            streams: BTreeMap::new(),
            mixer: Mixer::new(),
            jitter,
            frame_len,
            out: vec![0.0; 2 * frame_len],
            sink: output.map(|p| WavSink::create(p, 2)).transpose()?,
            next_source: 0,
            epoch,
        })
    }

    /// Buffers a frame that passed every check. Returns true when it starts a transmission.
    pub fn receive(&mut self, frame: &ReceivedFrame, now: Instant) -> Result<bool, AudioError> {
        if !self.streams.contains_key(&frame.sender) {
            let stream = RemoteStream {
                stream: ReceiveStream::new(self.jitter.clone())?,
                source: self.next_source,
                channels: Vec::new(),
                whisper: false,
                active: false,
                pcm: vec![0.0; self.frame_len],
                counters: BTreeMap::new(),
                reported: (0, 0),
            };
            self.next_source += 1;
            self.streams.insert(frame.sender, stream);
        }
        let Some(remote) = self.streams.get_mut(&frame.sender) else {
            return Ok(false);
        };
        remote.channels.clone_from(&frame.channels);
        remote.whisper = frame.whisper;
        let flags = frame.header.flags;
        remote.stream.push(
            IncomingFrame {
                seq: frame.header.sequence,
                timestamp: frame.header.timestamp,
                end: flags.contains(VoiceFlags::END),
                fec: flags.contains(VoiceFlags::FEC),
                payload: &frame.payload,
            },
            now,
        )?;
        let started = !remote.active;
        remote.active = true;
        Ok(started)
    }

    /// Plays one frame period: pulls every stream, mixes, writes the output.
    pub fn tick(&mut self, now: Instant) -> Result<PlayoutChanges, AudioError> {
        let mut changes = PlayoutChanges::default();
        for (sender, remote) in &mut self.streams {
            let kind = remote.stream.pull(now, &mut remote.pcm)?;
            let heard_on = remote.heard_on();
            match kind {
                None => {
                    if remote.active && !remote.stream.is_active() {
                        remote.active = false;
                        changes.stopped.push(*sender);
                    }
                    continue;
                }
                Some(kind) => {
                    let latency = (kind == DecodeKind::Normal)
                        .then(|| remote.stream.played_timestamp())
                        .flatten()
                        .zip(self.epoch)
                        .and_then(|(ts, epoch)| {
                            let captured = epoch
                                + Duration::from_secs_f64(f64::from(ts) / f64::from(SAMPLE_RATE));
                            now.checked_duration_since(captured)
                        });
                    for channel in heard_on {
                        let counters = remote.counters.entry(channel).or_insert(Counters {
                            played: 0,
                            concealed: 0,
                            fec: 0,
                            latency: LatencyHistogram::new(),
                        });
                        match kind {
                            DecodeKind::Normal => counters.played += 1,
                            DecodeKind::Fec => {
                                counters.played += 1;
                                counters.fec += 1;
                            }
                            DecodeKind::Concealed | DecodeKind::Silence => counters.concealed += 1,
                        }
                        if let Some(latency) = latency {
                            counters.latency.record(latency);
                        }
                    }
                }
            }
        }
        let inputs: Vec<MixInput<'_>> = self
            .streams
            .values()
            .filter(|r| r.active)
            .map(|r| MixInput {
                channel: if r.whisper {
                    WHISPER_MIX_CHANNEL
                } else {
                    r.channels.first().copied().unwrap_or(WHISPER_MIX_CHANNEL)
                },
                source: r.source,
                samples: &r.pcm,
            })
            .collect();
        self.mixer.mix(&inputs, &mut self.out)?;
        if let Some(sink) = &mut self.sink {
            sink.write(&self.out)?;
        }
        if let Some((feed, _)) = &mut self.device {
            feed.write(&self.out)?;
        }
        Ok(changes)
    }

    /// Plays on this sound card from now on (`None`: on none). On error the old one stays.
    pub fn set_output_device(&mut self, device: Option<&Device>) -> Result<(), AudioError> {
        self.device = device
            .map(|d| open_playback(d, self.jitter.frame, &self.device_counters))
            .transpose()?;
        Ok(())
    }

    /// Jitter-buffer bounds and ducking rules from the user's audio settings.
    pub fn apply(&mut self, settings: &AudioSettings) {
        self.jitter.min_delay = settings.jitter_min;
        self.jitter.max_delay = settings.jitter_max;
        for remote in self.streams.values_mut() {
            remote
                .stream
                .set_jitter_bounds(settings.jitter_min, settings.jitter_max);
        }
        self.mixer.set_duck_rules(settings.ducking.clone());
    }

    /// Samples the sound card's callback had to fill with silence, and what the feed dropped.
    pub fn device_health(&self) -> (u64, Option<FeedCounters>) {
        let underruns = self
            .device_counters
            .playback_underruns
            .load(std::sync::atomic::Ordering::Relaxed);
        (underruns, self.device.as_ref().map(|(f, _)| f.counters()))
    }

    /// Per-stream counters.
    pub fn report(&self) -> Vec<ReceivedStream> {
        let mut out = Vec::new();
        for (sender, remote) in &self.streams {
            let jitter = remote.stream.stats().jitter;
            for (channel, c) in &remote.counters {
                out.push(ReceivedStream {
                    from: *sender,
                    channel: *channel,
                    frames_played: c.played,
                    frames_concealed: c.concealed,
                    frames_lost: jitter.lost,
                    frames_fec: c.fec,
                    mouth_to_ear_ms: c.latency.summary(),
                    jitter_delay_ms: jitter.mean_buffer_delay_ms,
                });
            }
        }
        out
    }

    /// Per sender heard since the last call (at least ten frame periods), the percentage of
    /// frames the network lost: the feedback that sets the sender's FEC strength.
    pub fn loss_reports(&mut self) -> Vec<(IdentityKey, u8)> {
        let mut out = Vec::new();
        for (sender, remote) in &mut self.streams {
            let stats = remote.stream.stats().jitter;
            let lost = stats.lost - remote.reported.0.min(stats.lost);
            let played = stats.played - remote.reported.1.min(stats.played);
            if lost + played < 10 {
                continue;
            }
            remote.reported = (stats.lost, stats.played);
            out.push((*sender, (lost * 100 / (lost + played)).min(100) as u8));
        }
        out
    }

    /// Forgets a sender (left the org).
    pub fn remove(&mut self, sender: &IdentityKey) {
        self.streams.remove(sender);
    }

    /// Closes the output file.
    pub fn finish(&mut self) -> Result<(), AudioError> {
        match self.sink.take() {
            Some(sink) => sink.finish(),
            None => Ok(()),
        }
    }
}

#[cfg(feature = "device-audio")]
fn open_playback(
    device: &Device,
    frame: FrameDuration,
    counters: &Arc<CallbackCounters>,
) -> Result<(PlaybackFeed, StreamGuard), AudioError> {
    crate::audio::device::start_playback(device, frame, counters.clone())
}

#[cfg(not(feature = "device-audio"))]
fn open_playback(
    _device: &Device,
    _frame: FrameDuration,
    _counters: &Arc<CallbackCounters>,
) -> Result<(PlaybackFeed, StreamGuard), AudioError> {
    Err(AudioError::Device(
        "this build has no device audio (the `device-audio` feature)".into(),
    ))
}
