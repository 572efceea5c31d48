//! Acoustic echo cancellation on the capture chain, our own, in two stages: a long linear
//! filter that learns the loudspeaker-to-microphone path and subtracts its echo estimate
//! ([`super::echo_filter`]), then a suppressor for what it is estimated still to leak
//! ([`super::echo_suppress`]). Our own high-pass, noise suppression and AGC stay where they
//! are, around it.
//!
//! Why not WebRTC's AEC3 (through `sonora`), which this replaced: its linear filter is short
//! and full-band only below 8 kHz, so its suppressor ducked the near end by 10–20 dB whenever
//! the far end talked; in double talk the near end scored PESQ 1.15 against 3.88 alone. A
//! linear stage that spans the room and a suppressor sized by what it leaks in each bin keep the
//! near end whole once the filter has converged.
//!
//! The far end (what the loudspeaker plays: the mixer's output, downmixed to mono) goes in
//! through [`EchoCanceller::render`] and is queued in 10 ms frames; each 10 ms capture
//! sub-frame is cleaned in place by [`EchoCanceller::process`], matched with the oldest queued
//! render frame. Both must be called from one thread in real-time order: the node's driver
//! does, since it runs playout and capture in the same frame tick. The linear stage finds the
//! echo path's delay itself, up to its span less the room's tail; the device delay is kept
//! for the stats.
//!
//! While the loudspeaker has been silent for longer than any echo lasts
//! ([`DORMANT_AFTER_MS`]), the canceller sleeps: there is no echo to remove or learn from.
//! Asleep, it delays the capture by as much as it does awake ([`PROCESSING_DELAY`]), so the
//! capture's latency never jumps (a jump would repeat or drop a few milliseconds mid-sentence).

use super::echo_filter::EchoPathFilter;
use super::echo_suppress::{EchoSuppressor, SUPPRESSOR_DELAY};
use super::SAMPLES_PER_MS;

/// The canceller works on 10 ms frames.
pub const ECHO_FRAME: usize = 10 * SAMPLES_PER_MS;

/// Loudspeaker silence after which the canceller sleeps: past the linear stage's span (a
/// delay plus a room's echo tail).
pub const DORMANT_AFTER_MS: usize = 600;

/// What the canceller delays the capture by, in samples (10 ms: the suppressor's overlap-add);
/// pinned by `node/tests/echo.rs`.
pub const PROCESSING_DELAY: usize = SUPPRESSOR_DELAY;

/// Render frames held for the linear stage until their capture sub-frame comes (80 ms).
const RENDER_QUEUE: usize = 8;

/// A render frame whose peak is below this is silence (−80 dBFS).
const SILENT_PEAK: f32 = 1e-4;

/// What the canceller reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EchoStats {
    /// Echo return loss enhancement, both stages, over the last few seconds of far end, dB
    /// (how much echo it removes; lower while the near end talks over the far end).
    pub erle_db: Option<f64>,
    /// The same for the linear stage alone, dB.
    #[serde(default)]
    pub linear_erle_db: Option<f64>,
    /// The echo path delay the linear stage found, ms.
    pub delay_ms: Option<i32>,
    /// The device delay handed over as a hint, ms.
    pub device_delay_ms: u32,
    /// Times the echo path moved (the linear stage added echo) and it started over.
    #[serde(default)]
    pub path_restarts: u32,
}

/// See the module documentation.
pub struct EchoCanceller {
    linear: Box<EchoPathFilter>,
    suppressor: Box<EchoSuppressor>,
    /// Render frames not yet matched with a capture sub-frame, oldest at `render_head`.
    render_queue: [[f32; ECHO_FRAME]; RENDER_QUEUE],
    render_head: usize,
    render_len: usize,
    render_in: [f32; ECHO_FRAME],
    render_fill: usize,
    device_delay_ms: u32,
    /// Nothing played yet, or asleep.
    asleep: bool,
    /// 10 ms render frames in a row that were silent.
    silent_frames: usize,
    /// Over far-end-active sub-frames, both stages. The output is one sub-frame late, which a
    /// few seconds' sums do not notice.
    erle: ErleMeter,
}

impl Default for EchoCanceller {
    fn default() -> Self {
        Self::new()
    }
}

impl EchoCanceller {
    pub fn new() -> Self {
        Self {
            linear: Box::new(EchoPathFilter::new()),
            suppressor: Box::new(EchoSuppressor::new()),
            render_queue: [[0.0; ECHO_FRAME]; RENDER_QUEUE],
            render_head: 0,
            render_len: 0,
            render_in: [0.0; ECHO_FRAME],
            render_fill: 0,
            device_delay_ms: 0,
            asleep: true,
            silent_frames: 0,
            erle: ErleMeter::default(),
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
            // A NaN or infinity from a driver would poison the filter's weights for good.
            self.render_in[self.render_fill] = if sample.is_finite() { sample } else { 0.0 };
            self.render_fill += 1;
            if self.render_fill == ECHO_FRAME {
                self.render_fill = 0;
                let silent = self.render_in.iter().all(|s| s.abs() < SILENT_PEAK);
                self.silent_frames = if silent { self.silent_frames + 1 } else { 0 };
                self.queue_render();
                if self.dormant() {
                    self.asleep = true;
                } else if self.asleep {
                    // Waking: whatever the loudspeaker played before is past the filter's
                    // span, so its history is silence.
                    self.asleep = false;
                    self.linear.forget_far();
                }
            }
        }
    }

    /// Keeps the frame just completed for the capture sub-frame it goes with. A render side
    /// that runs ahead by more than the queue loses its oldest frame: the linear stage then
    /// sees a shorter path, which it learns like any other.
    fn queue_render(&mut self) {
        if self.render_len == RENDER_QUEUE {
            self.render_head = (self.render_head + 1) % RENDER_QUEUE;
            self.render_len -= 1;
        }
        let slot = (self.render_head + self.render_len) % RENDER_QUEUE;
        self.render_queue[slot] = self.render_in;
        self.render_len += 1;
    }

    /// The render frame that goes with the next capture sub-frame; silence if the render side
    /// is behind.
    fn next_render(&mut self) -> [f32; ECHO_FRAME] {
        if self.render_len == 0 {
            return [0.0; ECHO_FRAME];
        }
        let frame = self.render_queue[self.render_head];
        self.render_head = (self.render_head + 1) % RENDER_QUEUE;
        self.render_len -= 1;
        frame
    }

    /// The delay between a sample entering the render side and its echo reaching the capture
    /// side, as far as the devices' buffers tell (shown in the stats).
    pub fn set_device_delay_ms(&mut self, ms: u32) {
        self.device_delay_ms = ms;
    }

    /// The loudspeaker has been silent past any echo: nothing is processed.
    pub fn dormant(&self) -> bool {
        self.silent_frames * ECHO_FRAME >= DORMANT_AFTER_MS * SAMPLES_PER_MS
    }

    /// Cleans one 10 ms capture sub-frame (48 kHz mono, [-1, 1]) in place; it comes out
    /// [`PROCESSING_DELAY`] late.
    pub fn process(&mut self, capture: &mut [f32; ECHO_FRAME]) {
        let far = self.next_render();
        for sample in capture.iter_mut().filter(|s| !s.is_finite()) {
            *sample = 0.0;
        }
        if self.asleep {
            // Nothing has been played, or not for a while: there is no echo to remove. The
            // capture passes, delayed as the suppressor would delay it.
            self.suppressor.pass(capture);
            return;
        }
        let far_active = far.iter().any(|s| s.abs() >= SILENT_PEAK);
        let input_energy = energy(capture);
        let restarts = self.linear.restarts();
        self.linear.process(&far, capture);
        if self.linear.restarts() != restarts {
            self.suppressor.forget_leaks();
        }
        self.suppressor.process(capture, self.linear.echo());
        if far_active {
            self.erle.add(input_energy, energy(capture));
        }
    }

    pub fn stats(&self) -> EchoStats {
        EchoStats {
            erle_db: self.linear.erle_db().and(self.erle.db()),
            linear_erle_db: self.linear.erle_db(),
            delay_ms: self
                .linear
                .delay_samples()
                .map(|d| (d / SAMPLES_PER_MS) as i32),
            device_delay_ms: self.device_delay_ms,
            path_restarts: self.linear.restarts(),
        }
    }
}

/// Σx², in f64: a block's energy, summed without float rounding piling up.
pub(super) fn energy(block: &[f32]) -> f64 {
    block.iter().map(|s| f64::from(*s) * f64::from(*s)).sum()
}

/// Echo return loss enhancement over the last few seconds: what went in against what came
/// out, both decaying, so the figure follows the room.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct ErleMeter {
    input: f64,
    output: f64,
}

impl ErleMeter {
    /// One block's energy before and after cancellation.
    pub(super) fn add(&mut self, input: f64, output: f64) {
        self.input = 0.995 * self.input + input;
        self.output = 0.995 * self.output + output;
    }

    /// dB; none before anything came out.
    pub(super) fn db(&self) -> Option<f64> {
        (self.output > 0.0).then(|| 10.0 * (self.input / self.output).log10())
    }
}
