//! Small signal-processing blocks shared by the capture chain and the mixer. All of them work
//! in place on preallocated buffers and never allocate.

use std::f32::consts::PI;

/// A second-order IIR section (RBJ cookbook), direct form I.
#[derive(Clone, Debug)]
pub struct Biquad {
    b: [f32; 3],
    a: [f32; 2],
    x: [f32; 2],
    y: [f32; 2],
}

impl Biquad {
    /// Butterworth (Q = 1/√2) high-pass at `cutoff_hz`: removes rumble, desk thumps and DC that
    /// would otherwise eat the codec's bits.
    pub fn high_pass(cutoff_hz: f32, sample_rate: f32) -> Self {
        let w0 = 2.0 * PI * cutoff_hz / sample_rate;
        let alpha = w0.sin() / (2.0 * std::f32::consts::FRAC_1_SQRT_2);
        let cos = w0.cos();
        let a0 = 1.0 + alpha;
        Self {
            b: [
                (1.0 + cos) / 2.0 / a0,
                -(1.0 + cos) / a0,
                (1.0 + cos) / 2.0 / a0,
            ],
            a: [-2.0 * cos / a0, (1.0 - alpha) / a0],
            x: [0.0; 2],
            y: [0.0; 2],
        }
    }

    pub fn process(&mut self, samples: &mut [f32]) {
        for s in samples {
            let x0 = *s;
            let y0 = self.b[0] * x0 + self.b[1] * self.x[0] + self.b[2] * self.x[1]
                - self.a[0] * self.y[0]
                - self.a[1] * self.y[1];
            self.x = [x0, self.x[0]];
            self.y = [y0, self.y[0]];
            *s = y0;
        }
    }
}

/// Level above which the limiter starts to bend the signal.
pub const LIMITER_KNEE: f32 = 0.8;

/// Soft limiter: identity below the knee, then a tanh curve that approaches but never reaches
/// full scale. Unlike clipping it adds no harsh edges when many talkers sum.
#[inline]
pub fn soft_limit(x: f32) -> f32 {
    let magnitude = x.abs();
    if magnitude <= LIMITER_KNEE {
        return x;
    }
    let headroom = 1.0 - LIMITER_KNEE;
    let bent = LIMITER_KNEE + headroom * ((magnitude - LIMITER_KNEE) / headroom).tanh();
    // tanh rounds to exactly 1.0 in f32 for large inputs; keep strictly inside full scale.
    bent.min(0.999_9).copysign(x)
}

/// Constant-power pan law: `pan` in [-1 (left), 1 (right)] → (left gain, right gain).
#[inline]
pub fn pan_gains(pan: f32) -> (f32, f32) {
    let angle = (pan.clamp(-1.0, 1.0) + 1.0) * PI / 4.0;
    (angle.cos(), angle.sin())
}

/// Root mean square of a block.
pub fn rms(samples: &[f32]) -> f32 {
    if samples.is_empty() {
        return 0.0;
    }
    // Eight independent sums: a single running sum is a serial dependency chain the compiler
    // may not reorder, and this runs for every stream in every mixer block.
    let mut lanes = [0.0f32; 8];
    let chunks = samples.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|s| s * s).sum();
    for chunk in chunks {
        for (lane, s) in lanes.iter_mut().zip(chunk) {
            *lane += s * s;
        }
    }
    ((lanes.iter().sum::<f32>() + tail) / samples.len() as f32).sqrt()
}

/// A slow automatic gain control: moves the gain toward `target_rms` during speech only, within
/// ±`max_gain_db`, at most `step_db` per frame so it never pumps audibly.
#[derive(Clone, Debug)]
pub struct Agc {
    pub target_rms: f32,
    pub max_gain_db: f32,
    pub step_db: f32,
    gain_db: f32,
}

impl Default for Agc {
    fn default() -> Self {
        Self {
            target_rms: 0.1,
            max_gain_db: 18.0,
            step_db: 0.5,
            gain_db: 0.0,
        }
    }
}

impl Agc {
    pub fn gain_db(&self) -> f32 {
        self.gain_db
    }

    /// Applies the current gain; adapts it only when `speech` is true (noise must not be boosted).
    pub fn process(&mut self, frame: &mut [f32], speech: bool) {
        if speech {
            let level = rms(frame) * super::db_to_gain(self.gain_db);
            if level > 1e-4 {
                let wanted = 20.0 * (self.target_rms / level).log10();
                self.gain_db += wanted.clamp(-self.step_db, self.step_db);
                self.gain_db = self.gain_db.clamp(-self.max_gain_db, self.max_gain_db);
            }
        }
        let gain = super::db_to_gain(self.gain_db);
        for s in frame {
            *s = soft_limit(*s * gain);
        }
    }
}
