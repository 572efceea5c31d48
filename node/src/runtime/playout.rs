//! The node's receiving end: [`Playout`] keeps one jitter buffer and decoder per remote sender,
//! mixes them, and writes the mix to a WAV file and/or a sound card, with the per-stream
//! counters and latency histograms the stats report.

use super::api::{
    AudioSettings, LatencyMs, PlacedRange, ReceivedStream, StreamChannel, TalkerFrames,
};
use crate::audio::codec::DecodeKind;
use crate::audio::feed::{FeedCounters, PlaybackFeed, StreamGuard};
use crate::audio::jitter::{IncomingFrame, JitterConfig};
use crate::audio::mixer::{MixInput, Mixer, SourceMix};
use crate::audio::realtime::CallbackCounters;
use crate::audio::stream::ReceiveStream;
use crate::audio::wav::WavSink;
use crate::audio::{AudioError, Device, FrameDuration, SAMPLE_RATE};
use callsign_keys::IdentityKey;
use callsign_mesh::charter::ChannelId;
use callsign_mesh::spatial::Placement;
use callsign_mesh::voice::{ReceivedFrame, VoiceFlags};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    dred: u64,
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
    /// Channel frames played and concealed, each once however many of our channels it
    /// reached (a simulcast frame plays once).
    channel_frames: (u64, u64),
    /// (lost, played) at the last loss report.
    reported: (u64, u64),
    /// Gains and pan it was placed at (positional channels).
    placed: Option<PlacedRange>,
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

    /// Buffers a frame that passed every check, placed as `placement` says. Returns true when
    /// it starts a transmission.
    pub fn receive(
        &mut self,
        frame: &ReceivedFrame,
        placement: Placement,
        now: Instant,
    ) -> Result<bool, AudioError> {
        if !self.streams.contains_key(&frame.sender) {
            let stream = RemoteStream {
                stream: ReceiveStream::new(self.jitter.clone())?,
                source: self.next_source,
                channels: Vec::new(),
                whisper: false,
                active: false,
                pcm: vec![0.0; self.frame_len],
                counters: BTreeMap::new(),
                channel_frames: (0, 0),
                reported: (0, 0),
                placed: None,
            };
            self.next_source += 1;
            self.streams.insert(frame.sender, stream);
        }
        let Some(remote) = self.streams.get_mut(&frame.sender) else {
            return Ok(false);
        };
        remote.channels.clone_from(&frame.channels);
        remote.whisper = frame.whisper;
        match placement {
            Placement::Unplaced => self.mixer.clear_source(remote.source),
            Placement::Silent => self.mixer.set_source(
                remote.source,
                SourceMix {
                    gain: 0.0,
                    pan: None,
                },
            ),
            Placement::Placed { gain, pan } => {
                self.mixer.set_source(
                    remote.source,
                    SourceMix {
                        gain,
                        pan: Some(pan),
                    },
                );
                remote.placed = Some(PlacedRange::add(remote.placed, gain, pan));
            }
        }
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
                    if !remote.whisper {
                        match kind {
                            DecodeKind::Concealed | DecodeKind::Silence => {
                                remote.channel_frames.1 += 1
                            }
                            _ => remote.channel_frames.0 += 1,
                        }
                    }
                    for channel in heard_on {
                        let counters = remote.counters.entry(channel).or_insert(Counters {
                            played: 0,
                            concealed: 0,
                            fec: 0,
                            dred: 0,
                            latency: LatencyHistogram::new(),
                        });
                        match kind {
                            DecodeKind::Normal => counters.played += 1,
                            DecodeKind::Fec => {
                                counters.played += 1;
                                counters.fec += 1;
                            }
                            DecodeKind::Dred => {
                                counters.played += 1;
                                counters.dred += 1;
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

    /// Whether a sound card plays what we mix.
    pub fn has_device(&self) -> bool {
        self.device.is_some()
    }

    /// The block the last tick mixed (interleaved stereo) and how long until the device plays
    /// it, ms.
    pub fn last_block(&self) -> (&[f32], u32) {
        let queued = self.device.as_ref().map_or(0, |(feed, _)| feed.queued_ms());
        (&self.out, queued)
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

    /// The sound card playing now (it changes when the default device does).
    pub fn output_device(&self) -> Option<String> {
        self.device.as_ref().map(|(f, _)| f.device_name())
    }

    /// Per talker: channel frames played and concealed, each once (see `RemoteStream`).
    pub fn channel_frames(&self) -> Vec<TalkerFrames> {
        self.streams
            .iter()
            .filter(|(_, r)| r.channel_frames != (0, 0))
            .map(|(sender, r)| TalkerFrames {
                peer: *sender,
                frames: r.channel_frames.0,
                concealed: r.channel_frames.1,
            })
            .collect()
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
                    frames_dred: c.dred,
                    mouth_to_ear_ms: c.latency.summary(),
                    jitter_delay_ms: jitter.mean_buffer_delay_ms,
                    placed: remote.placed,
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
