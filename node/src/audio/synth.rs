//! Synthetic sources for headless nodes, tests and the simulator: a tone, and a speech-like
//! signal (a voiced pulse train through moving vowel formants, in syllables and pauses) that
//! exercises the codec, VAD and jitter buffer much as real speech does. Deterministic per seed.

use super::SAMPLE_RATE;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::f32::consts::TAU;

/// A sine tone.
#[derive(Clone, Debug)]
pub struct Tone {
    pub frequency: f32,
    pub amplitude: f32,
    phase: f32,
}

impl Tone {
    pub fn new(frequency: f32, amplitude: f32) -> Self {
        Self {
            frequency,
            amplitude,
            phase: 0.0,
        }
    }

    pub fn fill(&mut self, out: &mut [f32]) {
        let step = TAU * self.frequency / SAMPLE_RATE as f32;
        for s in out {
            *s = self.amplitude * self.phase.sin();
            self.phase = (self.phase + step) % TAU;
        }
    }
}

/// Two-pole resonator (one formant).
#[derive(Clone, Copy, Debug, Default)]
struct Resonator {
    y1: f32,
    y2: f32,
}

/// A two-pole resonator's coefficients: `a` the input gain, `c` and `r2` the feedback.
#[derive(Clone, Copy, Debug, Default)]
struct Coefficients {
    a: f32,
    c: f32,
    r2: f32,
}

impl Coefficients {
    fn new(frequency: f32, bandwidth: f32) -> Self {
        let r = (-std::f32::consts::PI * bandwidth / SAMPLE_RATE as f32).exp();
        Self {
            a: 1.0 - r,
            c: 2.0 * r * (TAU * frequency / SAMPLE_RATE as f32).cos(),
            r2: r * r,
        }
    }
}

impl Resonator {
    fn process(&mut self, x: f32, k: Coefficients) -> f32 {
        let y = k.a * x + k.c * self.y1 - k.r2 * self.y2;
        self.y2 = self.y1;
        self.y1 = y;
        y
    }
}

/// Samples between updates of the gliding formants' coefficients (1 ms): the glide is slow,
/// and a cosine and an exponential per sample and formant made the synthesiser dearer than the
/// codec in a simulation of dozens of members.
const COEFFICIENT_PERIOD: usize = 48;

/// First three formants (Hz) of a few vowels.
const VOWELS: [[f32; 3]; 5] = [
    [730.0, 1090.0, 2440.0],
    [270.0, 2290.0, 3010.0],
    [530.0, 1840.0, 2480.0],
    [570.0, 840.0, 2410.0],
    [300.0, 870.0, 2240.0],
];

/// A speech-like signal: syllables of 120–320 ms separated by 40–200 ms pauses, with pauses
/// between phrases, pitch 90–220 Hz with intonation, three formants per vowel.
#[derive(Clone, Debug)]
pub struct SpeechLike {
    rng: ChaCha8Rng,
    amplitude: f32,
    pitch_phase: f32,
    pitch: f32,
    formants: [f32; 3],
    target: [f32; 3],
    resonators: [Resonator; 3],
    coefficients: [Coefficients; 3],
    /// Samples until the coefficients follow the formants again.
    coefficients_in: usize,
    /// The syllable's loudness, updated with the coefficients.
    envelope: f32,
    /// Samples left in the current syllable (`voiced`) or pause.
    left: usize,
    length: usize,
    voiced: bool,
}

impl SpeechLike {
    pub fn new(seed: u64, amplitude: f32) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            amplitude,
            pitch_phase: 0.0,
            pitch: 140.0,
            formants: VOWELS[0],
            target: VOWELS[0],
            resonators: [Resonator::default(); 3],
            coefficients: [Coefficients::default(); 3],
            coefficients_in: 0,
            envelope: 0.0,
            left: 0,
            length: 1,
            voiced: false,
        }
    }

    fn next_segment(&mut self) {
        self.voiced = !self.voiced;
        let ms = if self.voiced {
            self.target = VOWELS[self.rng.gen_range(0..VOWELS.len())];
            self.pitch = self.rng.gen_range(90.0..220.0);
            self.rng.gen_range(120..320)
        } else if self.rng.gen_bool(0.2) {
            self.rng.gen_range(300..700)
        } else {
            self.rng.gen_range(40..200)
        };
        self.length = ms * SAMPLE_RATE as usize / 1000;
        self.left = self.length;
        // The envelope starts the segment afresh.
        self.coefficients_in = 0;
    }

    /// Moves `samples` on without computing them: syllables and pauses advance as they would,
    /// and the resonators start the next computed sample from rest.
    pub fn skip(&mut self, mut samples: usize) {
        while samples > 0 {
            if self.left == 0 {
                self.next_segment();
            }
            let step = samples.min(self.left);
            self.left -= step;
            samples -= step;
        }
        self.formants = self.target;
        self.resonators = [Resonator::default(); 3];
        self.coefficients_in = 0;
    }

    pub fn fill(&mut self, out: &mut [f32]) {
        for s in out {
            if self.left == 0 {
                self.next_segment();
            }
            self.left -= 1;
            let progress = 1.0 - self.left as f32 / self.length as f32;
            // Formants glide toward the vowel target; the pitch falls a little over a syllable.
            for (f, t) in self.formants.iter_mut().zip(self.target) {
                *f += (t - *f) * 0.002;
            }
            let pitch = self.pitch * (1.0 - 0.15 * progress);
            self.pitch_phase += pitch / SAMPLE_RATE as f32;
            let excitation = if self.voiced {
                let pulse = if self.pitch_phase >= 1.0 { 1.0 } else { 0.0 };
                pulse + self.rng.gen_range(-0.02..0.02)
            } else {
                self.rng.gen_range(-0.002..0.002)
            };
            if self.pitch_phase >= 1.0 {
                // The pitch is far below the sample rate: at most one period per sample.
                self.pitch_phase -= 1.0;
            }
            if self.coefficients_in == 0 {
                self.coefficients_in = COEFFICIENT_PERIOD;
                for (i, k) in self.coefficients.iter_mut().enumerate() {
                    *k = Coefficients::new(self.formants[i], 80.0 + 40.0 * i as f32);
                }
                self.envelope = if self.voiced {
                    // sin(π) rounds to a tiny negative: clamp before the root or it is NaN.
                    (progress * std::f32::consts::PI).sin().max(0.0).sqrt()
                } else {
                    1.0
                };
            }
            self.coefficients_in -= 1;
            let mut y = 0.0;
            for (i, resonator) in self.resonators.iter_mut().enumerate() {
                y += resonator.process(excitation, self.coefficients[i]) / (1.0 + i as f32);
            }
            *s = (self.amplitude * 6.0 * y * self.envelope).clamp(-1.0, 1.0);
        }
    }
}
