//! The capture chain: device-rate samples in, gated 48 kHz frames ready for the encoder out.
//!
//! resample (rubato) → high-pass → echo cancellation (when on: see [`super::echo`]) →
//! noise suppression + VAD (nnnoiseless, 10 ms sub-frames) → optional AGC → gate
//! (push-to-talk, or voice activation with a hangover so word endings are not clipped).
//!
//! With push-to-talk up the denoiser rests (nothing is sent, nothing needs its speech
//! probability): the input level is read before it.

use super::dsp::{Agc, Biquad};
use super::echo::{EchoCanceller, EchoStats};
use super::resample::StreamResampler;
use super::{AudioError, FrameDuration, SAMPLE_RATE};
use nnnoiseless::DenoiseState;
use std::time::Duration;

/// nnnoiseless works on 10 ms at 48 kHz and expects 16-bit-scaled samples.
const DENOISE_FRAME: usize = DenoiseState::FRAME_SIZE;
const I16_SCALE: f32 = 32_767.0;

/// Sub-frames a resting denoiser is fed again when it wakes: its pitch history spans 36 ms.
const PRIME_SUB_FRAMES: usize = 4;

/// When the capture chain opens the gate.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum GateMode {
    /// Transmit while PTT is held.
    PushToTalk,
    /// Transmit while the VAD's speech probability is above `threshold`, and for `hangover`
    /// after it drops.
    VoiceActivation { threshold: f32, hangover: Duration },
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CaptureConfig {
    pub device_rate: u32,
    pub frame: FrameDuration,
    /// `None` disables the high-pass filter.
    pub high_pass_hz: Option<f32>,
    pub noise_suppression: bool,
    pub agc: bool,
    pub gate: GateMode,
    /// Run the chain while push-to-talk is up, for the input level and speech meters. Off, an
    /// idle transmitter only drains its input (the meters read silence): the simulator runs
    /// dozens of members in one process, and their idle denoisers and synthesisers were a
    /// third of its CPU.
    #[serde(default = "analyse_when_idle_default")]
    pub analyse_when_idle: bool,
    /// Run the echo canceller (when the user wants it) even if input or output is not a sound
    /// card: `callsign demo --echo-cancellation` measures its cost on synthetic voices.
    #[serde(default)]
    pub echo_without_devices: bool,
}

fn analyse_when_idle_default() -> bool {
    true
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            device_rate: SAMPLE_RATE,
            frame: FrameDuration::Ms20,
            high_pass_hz: Some(80.0),
            noise_suppression: true,
            agc: false,
            gate: GateMode::PushToTalk,
            analyse_when_idle: true,
            echo_without_devices: false,
        }
    }
}

/// One processed frame.
#[derive(Debug)]
pub struct CapturedFrame<'a> {
    pub samples: &'a [f32],
    /// Highest VAD speech probability over the frame, 0–1.
    pub speech_probability: f32,
    /// The gate is open: encode and send this frame.
    pub transmit: bool,
}

/// See the module documentation.
pub struct CaptureChain {
    config: CaptureConfig,
    resampler: Option<StreamResampler>,
    resampled: Vec<f32>,
    /// Input with non-finite samples replaced, reused between pushes.
    sanitized: Vec<f32>,
    high_pass: Option<Biquad>,
    denoise: Box<DenoiseState<'static>>,
    sub_in: [f32; DENOISE_FRAME],
    sub_out: [f32; DENOISE_FRAME],
    /// The last sub-frames the resting denoiser skipped (oldest first), and whether it rested.
    rest_history: Box<[[f32; DENOISE_FRAME]; PRIME_SUB_FRAMES]>,
    denoise_rested: bool,
    frame: Vec<f32>,
    frame_speech: f32,
    agc: Agc,
    ptt: bool,
    hangover_left: usize,
    /// The last frame was sent: the frame after it still is (it carries the end marker).
    last_transmit: bool,
    echo: Option<Box<EchoCanceller>>,
}

impl CaptureChain {
    pub fn new(config: CaptureConfig) -> Result<Self, AudioError> {
        let resampler = if config.device_rate == SAMPLE_RATE {
            None
        } else {
            Some(StreamResampler::new(config.device_rate, SAMPLE_RATE)?)
        };
        let high_pass = config
            .high_pass_hz
            .map(|hz| Biquad::high_pass(hz, SAMPLE_RATE as f32));
        Ok(Self {
            resampler,
            resampled: Vec::with_capacity(SAMPLE_RATE as usize / 10),
            sanitized: Vec::new(),
            high_pass,
            denoise: DenoiseState::new(),
            sub_in: [0.0; DENOISE_FRAME],
            sub_out: [0.0; DENOISE_FRAME],
            rest_history: Box::new([[0.0; DENOISE_FRAME]; PRIME_SUB_FRAMES]),
            denoise_rested: false,
            frame: Vec::with_capacity(config.frame.samples()),
            frame_speech: 0.0,
            agc: Agc::default(),
            ptt: false,
            hangover_left: 0,
            last_transmit: false,
            echo: None,
            config,
        })
    }

    pub fn config(&self) -> &CaptureConfig {
        &self.config
    }

    pub fn set_ptt(&mut self, pressed: bool) {
        self.ptt = pressed;
    }

    /// Push-to-talk is held.
    pub fn ptt(&self) -> bool {
        self.ptt
    }

    pub fn set_noise_suppression(&mut self, on: bool) {
        self.config.noise_suppression = on;
    }

    pub fn set_agc(&mut self, on: bool) {
        self.config.agc = on;
    }

    /// Turns echo cancellation on (a fresh canceller) or off.
    pub fn set_echo_cancellation(&mut self, on: bool) {
        if on != self.echo.is_some() {
            self.echo = on.then(|| Box::new(EchoCanceller::new()));
        }
    }

    /// The far end, as played (interleaved stereo at 48 kHz), for the echo canceller.
    pub fn render_reference(&mut self, stereo: &[f32]) {
        if let Some(echo) = &mut self.echo {
            echo.render_stereo(stereo);
        }
    }

    /// The devices' delay, as a hint for the echo canceller.
    pub fn set_echo_device_delay_ms(&mut self, ms: u32) {
        if let Some(echo) = &mut self.echo {
            echo.set_device_delay_ms(ms);
        }
    }

    /// The echo canceller's figures, while it is on.
    pub fn echo_stats(&self) -> Option<EchoStats> {
        self.echo.as_ref().map(|e| e.stats())
    }

    pub fn set_gate(&mut self, gate: GateMode) {
        self.config.gate = gate;
        self.hangover_left = 0;
    }

    /// Feeds device-rate mono samples; `on_frame` runs for every completed 48 kHz frame.
    pub fn push(
        &mut self,
        device_samples: &[f32],
        mut on_frame: impl FnMut(CapturedFrame<'_>),
    ) -> Result<(), AudioError> {
        let mut start = 0;
        // One NaN or infinity would poison the filters' state for good (and the FFT resampler
        // refuses it): treat it as silence.
        let input = if device_samples.iter().all(|s| s.is_finite()) {
            device_samples
        } else {
            self.sanitized.clear();
            self.sanitized.extend(
                device_samples
                    .iter()
                    .map(|s| if s.is_finite() { *s } else { 0.0 }),
            );
            &self.sanitized[..]
        };
        match &mut self.resampler {
            Some(resampler) => resampler.process(input, &mut self.resampled)?,
            None => self.resampled.extend_from_slice(input),
        }
        while self.resampled.len() - start >= DENOISE_FRAME {
            self.sub_in
                .copy_from_slice(&self.resampled[start..start + DENOISE_FRAME]);
            start += DENOISE_FRAME;
            self.process_sub_frame(&mut on_frame);
        }
        self.resampled.drain(..start);
        Ok(())
    }

    fn process_sub_frame(&mut self, on_frame: &mut impl FnMut(CapturedFrame<'_>)) {
        if let Some(filter) = &mut self.high_pass {
            filter.process(&mut self.sub_in);
        }
        if let Some(echo) = &mut self.echo {
            echo.process(&mut self.sub_in);
        }
        for s in &mut self.sub_in {
            *s *= I16_SCALE;
        }
        // With push-to-talk up nothing is sent and no speech probability gates anything, so
        // the denoiser (RNNoise: most of an idle member's CPU) rests; the level meter reads
        // the signal before it.
        let rests =
            matches!(self.config.gate, GateMode::PushToTalk) && !self.ptt && !self.last_transmit;
        let speech = if rests {
            self.rest_history.rotate_left(1);
            self.rest_history[PRIME_SUB_FRAMES - 1].copy_from_slice(&self.sub_in);
            0.0
        } else {
            if self.denoise_rested {
                // Its window and pitch history still hold audio from before the rest: refill
                // them with what came just before this sub-frame, so nothing stale leaks out.
                for sub in self.rest_history.iter() {
                    self.denoise.process_frame(&mut self.sub_out, sub);
                }
            }
            self.denoise.process_frame(&mut self.sub_out, &self.sub_in)
        };
        self.denoise_rested = rests;
        let processed = if self.config.noise_suppression && !rests {
            &self.sub_out
        } else {
            &self.sub_in
        };
        self.frame
            .extend(processed.iter().map(|s| (s / I16_SCALE).clamp(-1.0, 1.0)));
        self.frame_speech = self.frame_speech.max(speech);
        if self.frame.len() < self.config.frame.samples() {
            return;
        }
        let speech = std::mem::take(&mut self.frame_speech);
        let transmit = match self.config.gate {
            GateMode::PushToTalk => self.ptt,
            GateMode::VoiceActivation {
                threshold,
                hangover,
            } => {
                if speech >= threshold {
                    self.hangover_left = (hangover.as_millis() as usize)
                        .div_ceil(self.config.frame.millis() as usize);
                    true
                } else if self.hangover_left > 0 {
                    self.hangover_left -= 1;
                    true
                } else {
                    false
                }
            }
        };
        if self.config.agc {
            self.agc.process(&mut self.frame, speech >= 0.5);
        }
        self.last_transmit = transmit;
        on_frame(CapturedFrame {
            samples: &self.frame,
            speech_probability: speech,
            transmit,
        });
        self.frame.clear();
    }
}
