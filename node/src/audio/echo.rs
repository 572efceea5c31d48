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

use super::SAMPLES_PER_MS;
use sonora::config::EchoCanceller as Aec3Config;
use sonora::{AudioProcessing, Config, StreamConfig};

/// AEC3 works on 10 ms frames.
pub const ECHO_FRAME: usize = 10 * SAMPLES_PER_MS;

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
    rendered: bool,
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
            rendered: false,
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
                // A format error cannot happen: the frame is always one 10 ms mono block.
                let _ = self
                    .apm
                    .process_render_f32(&[&self.render_in], &mut [&mut self.scratch]);
                self.rendered = true;
            }
        }
    }

    /// The delay between a sample entering the render side and its echo reaching the capture
    /// side, as far as the devices' buffers tell.
    pub fn set_device_delay_ms(&mut self, ms: u32) {
        self.device_delay_ms = ms;
        let _ = self.apm.set_stream_delay_ms(ms.min(500) as i32);
    }

    /// Cleans one 10 ms capture sub-frame (48 kHz mono, [-1, 1]) in place.
    pub fn process(&mut self, capture: &mut [f32; ECHO_FRAME]) {
        if !self.rendered {
            // Nothing has been played: there is no echo to remove.
            return;
        }
        if self
            .apm
            .process_capture_f32(&[&capture[..]], &mut [&mut self.scratch])
            .is_ok()
        {
            capture.copy_from_slice(&self.scratch);
        }
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
