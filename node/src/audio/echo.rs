//! Acoustic echo cancellation on the capture chain: WebRTC's AEC3 through `sonora` (a pure
//! Rust port of the WebRTC audio processing module), echo canceller only; our own high-pass,
//! noise suppression and AGC stay where they are, after it.
//!
//! The far end (what the loudspeaker plays: the mixer's output, downmixed to mono) goes in
//! through [`EchoCanceller::render`]; each 10 ms capture sub-frame is cleaned in place by
//! [`EchoCanceller::process`]. Both must be called from one thread in real-time order: the
//! node's driver does, since it runs playout and capture in the same frame tick. The device
//! delay (playback queue plus capture buffer) is handed over as a hint; AEC3 estimates and
//! tracks the real echo path delay itself.
//!
//! While the loudspeaker has been silent for longer than any echo lasts
//! ([`DORMANT_AFTER_MS`]), the canceller sleeps: there is no echo to remove or learn from, so
//! neither side is fed, and both pick up together with the next sound played. Asleep, it
//! delays the capture by as much as it does awake ([`PROCESSING_DELAY`]), so the capture's
//! latency never jumps (a jump would repeat or drop a few milliseconds mid-sentence).

use super::SAMPLES_PER_MS;
use sonora::config::{EchoCanceller as Aec3Config, MaxProcessingRate, Pipeline};
use sonora::{AudioProcessing, Config, StreamConfig};

/// AEC3 works on 10 ms frames.
pub const ECHO_FRAME: usize = 10 * SAMPLES_PER_MS;

/// Loudspeaker silence after which the canceller sleeps: past the longest delay AEC3 tracks
/// plus a room's echo tail.
pub const DORMANT_AFTER_MS: usize = 600;

/// What AEC3 at 48 kHz delays the capture by, in samples (9 ms: its three-band split and
/// block framing); pinned by `node/tests/echo.rs`.
pub const PROCESSING_DELAY: usize = 432;

/// A render frame whose peak is below this is silence (−80 dBFS).
const SILENT_PEAK: f32 = 1e-4;

/// What the canceller reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EchoStats {
    /// Echo return loss enhancement AEC3 measures, dB (how much echo it removes).
    pub erle_db: Option<f64>,
    /// The echo path delay AEC3 estimates, ms.
    pub delay_ms: Option<i32>,
    /// The device delay handed over as a hint, ms.
    pub device_delay_ms: u32,
}

/// See the module documentation.
pub struct EchoCanceller {
    apm: AudioProcessing,
    render_in: [f32; ECHO_FRAME],
    render_fill: usize,
    scratch: [f32; ECHO_FRAME],
    device_delay_ms: u32,
    /// AEC3 is not being fed: nothing played yet, or asleep.
    asleep: bool,
    /// Just woken: the next capture sub-frame first refills AEC3 with the one before it.
    refill: bool,
    /// 10 ms render frames in a row that were silent.
    silent_frames: usize,
    /// The previous capture sub-frame as it came in.
    last_capture: [f32; ECHO_FRAME],
}

impl Default for EchoCanceller {
    fn default() -> Self {
        Self::new()
    }
}

impl EchoCanceller {
    pub fn new() -> Self {
        let config = Config {
            echo_canceller: Some(Aec3Config {
                // The capture chain has its own high-pass in front.
                enforce_high_pass_filtering: false,
                ..Aec3Config::default()
            }),
            // At the capture rate: the default 32 kHz resamples both sides there and back
            // and cuts the band at 16 kHz.
            pipeline: Pipeline {
                maximum_internal_processing_rate: MaxProcessingRate::Rate48kHz,
                ..Pipeline::default()
            },
            ..Config::default()
        };
        let stream = StreamConfig::new(super::SAMPLE_RATE, 1);
        Self {
            apm: AudioProcessing::builder()
                .config(config)
                .capture_config(stream)
                .render_config(stream)
                .build(),
            render_in: [0.0; ECHO_FRAME],
            render_fill: 0,
            scratch: [0.0; ECHO_FRAME],
            device_delay_ms: 0,
            asleep: true,
            refill: false,
            silent_frames: 0,
            last_capture: [0.0; ECHO_FRAME],
        }
    }

    /// The far end, 48 kHz mono, in any block size.
    pub fn render(&mut self, far: &[f32]) {
        self.feed_render(far.iter().copied());
    }

    /// The far end from an interleaved stereo block (the mixer's output).
    pub fn render_stereo(&mut self, stereo: &[f32]) {
        self.feed_render(stereo.chunks_exact(2).map(|p| (p[0] + p[1]) * 0.5));
    }

    fn feed_render(&mut self, samples: impl Iterator<Item = f32>) {
        for sample in samples {
            self.render_in[self.render_fill] = sample;
            self.render_fill += 1;
            if self.render_fill == ECHO_FRAME {
                self.render_fill = 0;
                let silent = self.render_in.iter().all(|s| s.abs() < SILENT_PEAK);
                self.silent_frames = if silent { self.silent_frames + 1 } else { 0 };
                if self.dormant() {
                    self.asleep = true;
                    continue;
                }
                if self.asleep {
                    // Waking: the capture side is fed the sub-frame before the next one again
                    // (see `process`), so the render side gets the silence that went before,
                    // and the two stay in step.
                    self.asleep = false;
                    self.refill = true;
                    let silence = [0.0; ECHO_FRAME];
                    let _ = self
                        .apm
                        .process_render_f32(&[&silence], &mut [&mut self.scratch]);
                }
                // A format error cannot happen: the frame is always one 10 ms mono block.
                let _ = self
                    .apm
                    .process_render_f32(&[&self.render_in], &mut [&mut self.scratch]);
            }
        }
    }

    /// The delay between a sample entering the render side and its echo reaching the capture
    /// side, as far as the devices' buffers tell.
    pub fn set_device_delay_ms(&mut self, ms: u32) {
        self.device_delay_ms = ms;
        let _ = self.apm.set_stream_delay_ms(ms.min(500) as i32);
    }

    /// The loudspeaker has been silent past any echo: nothing is processed.
    pub fn dormant(&self) -> bool {
        self.silent_frames * ECHO_FRAME >= DORMANT_AFTER_MS * SAMPLES_PER_MS
    }

    /// Cleans one 10 ms capture sub-frame (48 kHz mono, [-1, 1]) in place.
    pub fn process(&mut self, capture: &mut [f32; ECHO_FRAME]) {
        let input = *capture;
        if self.asleep {
            // Nothing has been played, or not for a while: there is no echo to remove. The
            // capture passes, delayed as AEC3 would delay it.
            let keep = ECHO_FRAME - PROCESSING_DELAY;
            capture.copy_within(..keep, PROCESSING_DELAY);
            capture[..PROCESSING_DELAY].copy_from_slice(&self.last_capture[keep..]);
        } else {
            if self.refill {
                // AEC3's band split still holds audio from before it slept: refill it with the
                // sub-frame before this one, so its output carries on from the delayed one.
                let _ = self
                    .apm
                    .process_capture_f32(&[&self.last_capture[..]], &mut [&mut self.scratch]);
                self.refill = false;
            }
            if self
                .apm
                .process_capture_f32(&[&capture[..]], &mut [&mut self.scratch])
                .is_ok()
            {
                capture.copy_from_slice(&self.scratch);
            }
        }
        self.last_capture = input;
    }

    pub fn stats(&self) -> EchoStats {
        let stats = self.apm.statistics();
        EchoStats {
            erle_db: stats.echo_return_loss_enhancement,
            delay_ms: stats.delay_ms,
            device_delay_ms: self.device_delay_ms,
        }
    }
}
