//! The residual echo suppressor after the linear stage ([`super::echo_filter`]): a gain per
//! frequency bin that removes what the linear filter is estimated still to leak.
//!
//! The residual's estimate is the linear filter's echo estimate scaled by its leak (how much
//! of the echo's power it still lets through), held with a decay for the reverberant tail. A
//! bin's gain is one minus a multiple of its residual-to-signal ratio, floored. So while the
//! filter is young and leaks much, the echo is suppressed hard; once it has converged, the
//! residual is small and a talking near end keeps its bins whole. That is what a suppressor
//! fed by a short filter (AEC3's) cannot do: it must duck the near end whenever the far end
//! talks.
//!
//! Analysis and synthesis are 20 ms square-root Hann windows at a 10 ms hop (weighted
//! overlap-add), so the output is the input 10 ms late ([`SUPPRESSOR_DELAY`]), exactly when
//! every gain is one. Allocated in [`EchoSuppressor::new`]; a block does no allocation or I/O.

use super::echo::ECHO_FRAME;
use super::echo_filter::BlockFft;
use realfft::num_complex::Complex32;

const BLOCK: usize = ECHO_FRAME;
const FFT: usize = 2 * BLOCK;
const BINS: usize = BLOCK + 1;

/// How late the suppressor's output is, in samples: one block.
pub const SUPPRESSOR_DELAY: usize = BLOCK;

/// The residual's estimate is over-subtracted by this much: it is an estimate, and echo
/// heard through is worse than a little near end lost. Measured over the echo bench's rooms
/// with the Kalman linear stage: 4 (right for Speex's MDF, which leaked more) cost the near
/// end 0.2–0.4 PESQ in double talk; 1.2 let convergence to 20 dB take up to 2.0 s.
const OVER_SUBTRACTION: f32 = 1.5;

/// The lowest gain, −30 dB.
const FLOOR: f32 = 0.0316;

/// How much of last block's residual estimate carries into this one: a reverberant tail
/// decays about 7 dB per 10 ms block at an RT60 of 100 ms; 0.8 holds it a little longer.
const RESIDUAL_HOLD: f32 = 0.8;

/// See the module documentation.
pub struct EchoSuppressor {
    fft: BlockFft,
    window: Vec<f32>,
    time: Vec<f32>,
    signal: Vec<Complex32>,
    echo: Vec<Complex32>,
    residual: Vec<f32>,
    previous_signal: [f32; BLOCK],
    previous_echo: [f32; BLOCK],
    /// The second half of the last synthesized frame, to be added to the next.
    overlap: [f32; BLOCK],
}

impl Default for EchoSuppressor {
    fn default() -> Self {
        Self::new()
    }
}

impl EchoSuppressor {
    pub fn new() -> Self {
        let zero = Complex32::new(0.0, 0.0);
        // Periodic square-root Hann: its square sums to one at a half-window hop.
        let window = (0..FFT)
            .map(|n| {
                let phase = 2.0 * std::f32::consts::PI * n as f32 / FFT as f32;
                (0.5 - 0.5 * phase.cos()).sqrt()
            })
            .collect();
        Self {
            fft: BlockFft::new(),
            window,
            time: vec![0.0; FFT],
            signal: vec![zero; BINS],
            echo: vec![zero; BINS],
            residual: vec![0.0; BINS],
            previous_signal: [0.0; BLOCK],
            previous_echo: [0.0; BLOCK],
            overlap: [0.0; BLOCK],
        }
    }

    /// Suppresses `leak` of `echo` in `block`, in place; the block comes out
    /// [`SUPPRESSOR_DELAY`] late.
    pub fn process(&mut self, block: &mut [f32; BLOCK], echo: &[f32; BLOCK], leak: f32) {
        self.analyse(echo, Target::Echo);
        self.analyse(block, Target::Signal);
        for k in 0..BINS {
            let residual = leak * self.echo[k].norm_sqr();
            self.residual[k] = residual.max(RESIDUAL_HOLD * self.residual[k]);
            let power = self.signal[k].norm_sqr() + 1e-12;
            let gain = (1.0 - OVER_SUBTRACTION * self.residual[k] / power).max(FLOOR);
            self.signal[k] *= gain / FFT as f32;
        }
        self.fft.inverse(&mut self.signal, &mut self.time);
        for (t, w) in self.time.iter_mut().zip(&self.window) {
            *t *= w;
        }
        for ((out, overlap), t) in block.iter_mut().zip(&self.overlap).zip(&self.time) {
            *out = overlap + t;
        }
        self.overlap.copy_from_slice(&self.time[BLOCK..]);
    }

    /// What [`Self::process`] does when there is no echo (every gain one), without the
    /// transforms: the block comes out exactly one block late, and the state follows so that
    /// the next [`Self::process`] carries on seamlessly.
    pub fn pass(&mut self, block: &mut [f32; BLOCK]) {
        for r in &mut self.residual {
            *r *= RESIDUAL_HOLD;
        }
        let current = *block;
        *block = self.previous_signal;
        for ((o, w), c) in self
            .overlap
            .iter_mut()
            .zip(&self.window[BLOCK..])
            .zip(current)
        {
            *o = w * w * c;
        }
        self.previous_signal = current;
        self.previous_echo = [0.0; BLOCK];
    }

    /// The windowed spectrum of the last two blocks of the signal or the echo.
    fn analyse(&mut self, current: &[f32; BLOCK], target: Target) {
        let previous = match target {
            Target::Signal => &mut self.previous_signal,
            Target::Echo => &mut self.previous_echo,
        };
        for i in 0..BLOCK {
            self.time[i] = previous[i] * self.window[i];
            self.time[BLOCK + i] = current[i] * self.window[BLOCK + i];
        }
        *previous = *current;
        let out = match target {
            Target::Signal => &mut self.signal,
            Target::Echo => &mut self.echo,
        };
        self.fft.forward(&mut self.time, out);
    }
}
#[derive(Clone, Copy)]
enum Target {
    Signal,
    Echo,
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn blocks(seed: u64, count: usize) -> Vec<[f32; BLOCK]> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..count)
            .map(|_| std::array::from_fn(|_| rng.gen_range(-0.5..0.5)))
            .collect()
    }

    #[test]
    fn without_echo_the_signal_comes_out_one_block_late_whether_processed_or_passed() {
        let input = blocks(1, 12);
        let mut suppressor = EchoSuppressor::new();
        let silence = [0.0; BLOCK];
        for (k, block) in input.iter().enumerate() {
            let mut out = *block;
            // Alternate, so each path must leave the state the other expects.
            if k % 3 == 1 {
                suppressor.pass(&mut out);
            } else {
                suppressor.process(&mut out, &silence, 0.5);
            }
            let expected = if k == 0 { [0.0; BLOCK] } else { input[k - 1] };
            for (o, e) in out.iter().zip(&expected) {
                assert!((o - e).abs() < 1e-4, "block {k}: {o} against {e}");
            }
        }
    }

    #[test]
    fn an_echo_estimated_to_leak_whole_is_suppressed_and_a_small_leak_leaves_the_signal() {
        let echo = blocks(2, 50);
        let measure = |leak: f32| {
            let mut suppressor = EchoSuppressor::new();
            let (mut input, mut output) = (0.0f64, 0.0f64);
            for (k, e) in echo.iter().enumerate() {
                let mut out = *e;
                suppressor.process(&mut out, e, leak);
                if k >= 10 {
                    input += e.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>();
                    output += out.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>();
                }
            }
            10.0 * (input / output).log10()
        };
        let whole = measure(1.0);
        assert!(whole > 25.0, "suppressed by {whole:.1} dB");
        let small = measure(0.001);
        assert!(small.abs() < 0.5, "a 30 dB leak took {small:.2} dB");
    }
}
