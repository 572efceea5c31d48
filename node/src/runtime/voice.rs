//! The node's sending end: [`Transmitter`] (input — a sound card, a WAV file, synthetic speech
//! or silence — → capture chain → PTT or voice-activation gate → Opus), with the input meter.
//! Its receiving end is [`super::playout`].

use super::api::{AudioSettings, DEFAULT_VAD_THRESHOLD};
use super::config::AudioInput;
use crate::audio::capture::{CaptureChain, CaptureConfig, GateMode};
use crate::audio::codec::{EncoderConfig, VoiceEncoder, MAX_PACKET};
use crate::audio::dsp::rms;
use crate::audio::feed::{CaptureFeed, FeedCounters, StreamGuard};
use crate::audio::realtime::CallbackCounters;
use crate::audio::synth::SpeechLike;
use crate::audio::{AudioError, FrameDuration, SAMPLE_RATE};
use callsign_mesh::charter::ChannelId;
use callsign_mesh::voice::VoiceFlags;
use std::sync::Arc;
use std::time::Duration;

pub use callsign_mesh::member::Target;

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

    /// Passes over one block nobody will hear: a synthesiser moves on without computing it,
    /// anything else is read (a device's feed must be drained, a file's position kept).
    fn skip(&mut self, block: &mut [f32]) -> Result<(), AudioError> {
        match self {
            Self::Synthetic(s) => {
                s.skip(block.len());
                Ok(())
            }
            _ => self.fill(block),
        }
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
    /// The user wants echo cancellation; it runs while input and output are sound cards.
    echo_wanted: bool,
    output_is_device: bool,
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
            echo_wanted: true,
            output_is_device: false,
        })
    }

    /// Echo cancellation runs when wanted and both ends are sound cards.
    fn update_echo(&mut self) {
        let devices = self.output_is_device && matches!(self.source, Source::Device { .. });
        let on = self.echo_wanted && (devices || self.capture.config().echo_without_devices);
        self.capture.set_echo_cancellation(on);
    }

    /// Whether the node plays on a sound card (its sound may echo into the microphone).
    pub fn set_output_is_device(&mut self, on: bool) {
        self.output_is_device = on;
        self.update_echo();
    }

    /// What the node played this frame period (interleaved stereo), and how long until it
    /// leaves the loudspeaker plus how long the microphone's samples wait: the far end for
    /// the echo canceller.
    pub fn echo_reference(&mut self, played: &[f32], device_delay_ms: u32) {
        self.capture.set_echo_device_delay_ms(device_delay_ms);
        self.capture.render_reference(played);
    }

    pub fn echo_stats(&self) -> Option<crate::audio::echo::EchoStats> {
        self.capture.echo_stats()
    }

    /// Switches the input (a device is opened here; on error the old input stays).
    pub fn set_input(&mut self, input: AudioInput) -> Result<(), AudioError> {
        self.source = Source::open(input, self.encoder.config().frame, &self.device_counters)?;
        self.update_echo();
        Ok(())
    }

    /// Capture and encoder settings from the user's audio settings.
    pub fn apply(&mut self, settings: &AudioSettings) -> Result<(), AudioError> {
        self.encoder.set_bitrate(settings.bitrate)?;
        self.capture
            .set_noise_suppression(settings.noise_suppression);
        self.capture.set_agc(settings.agc);
        self.echo_wanted = settings.echo_cancellation;
        self.update_echo();
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

    /// The sound card capturing now (it changes when the default device does).
    pub fn input_device(&self) -> Option<String> {
        match &self.source {
            Source::Device { feed, .. } => Some(feed.device_name()),
            _ => None,
        }
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
        let idle = !self.capture.ptt() && !self.transmitting && self.vad_channels.is_empty();
        if idle && !self.capture.config().analyse_when_idle {
            self.source.skip(&mut self.block)?;
            self.level_db = SILENT_DB;
            self.speech = 0.0;
            return Ok(None);
        }
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
