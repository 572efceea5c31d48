//! The linear stage of echo cancellation: a partitioned-block frequency-domain adaptive
//! filter that models the whole loudspeaker-to-microphone path (320 ms at full band) and
//! subtracts its echo estimate from the capture, ahead of the residual suppressor
//! ([`super::echo_suppress`]).
//!
//! Why it spans the room: a filter shorter than the echo's tail, or one that cancels only
//! the lower band (AEC3's), leaves the suppressor so much echo that it must duck the near end
//! whenever the far end talks. Once this filter has converged, the echo it leaves is 20–30 dB
//! down (measured in the synthetic room) and the suppressor has little to hide.
//!
//! The design follows the multidelay block filter of Soo and Pang, with the robustness of
//! Speex's MDF (Valin, "On adjusting the learning rate in frequency domain echo cancellation
//! with double-talk", 2007):
//! - two filters: the background adapts, the foreground cancels; the background is copied to
//!   the foreground only when it has cancelled measurably better, and is reset from it when it
//!   has measurably diverged (double talk);
//! - the step size per frequency bin is the residual-echo-to-error ratio, from an estimate of
//!   how much echo the filter still leaks, so it falls by itself while the near end talks;
//! - partitions get a share of each step in proportion to their weight (proportionate
//!   adaptation), so the direct path and early reflections are learnt first;
//! - the gradient constraint is applied to two partitions per block in turn, not to all.
//!
//! Everything is allocated in [`EchoPathFilter::new`]; a block does no allocation or I/O.

use super::echo::{energy, ErleMeter, ECHO_FRAME};
use realfft::num_complex::Complex32;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};
use std::sync::Arc;

/// Samples per block: one 10 ms capture sub-frame.
const BLOCK: usize = ECHO_FRAME;
const FFT: usize = 2 * BLOCK;
const BINS: usize = BLOCK + 1;

/// Blocks the filter spans: 320 ms, the device delay plus a room's tail.
pub const PARTITIONS: usize = 32;

/// Partitions whose gradient constraint is applied per block.
const CONSTRAINED_PER_BLOCK: usize = 2;

/// Blocks between updates of the partitions' shares of a step: weights move slowly.
const PROPORTION_EVERY: usize = 4;

/// How strongly the leak estimate starts out believing that all the echo leaks, against the
/// evidence gathered since, whatever the signals' level. Speex starts its correlations at
/// 1 in absolute units instead, a prior that a loud echo outgrew in a second (ERLE 20 dB
/// after 2 s with the echo as loud as the far end) and a quiet one held for long (the near
/// end suppressed in double talk). 2 measured best over the echo bench's rooms and levels.
const LEAK_PRIOR: f64 = 2.0;

/// A far-end block whose energy per sample is below this (−70 dBFS) is not adapted on.
const QUIET_FAR: f32 = 1e-7;

/// See the module documentation.
pub struct EchoPathFilter {
    fft: BlockFft,
    time: Vec<f32>,
    spectrum: Vec<Complex32>,
    error_spectrum: Vec<Complex32>,
    /// Power per bin of the background's echo estimate for this block.
    echo_bins: [f32; BINS],
    /// Far-end block spectra, `PARTITIONS × BINS`; partition `p` of the filter meets the one
    /// `p` blocks old, at `(newest + p) % PARTITIONS`.
    far: Spectra,
    newest: usize,
    far_previous: [f32; BLOCK],
    background: Spectra,
    foreground: Spectra,
    /// Smoothed far-end power per bin.
    far_power: Vec<f32>,
    /// Smoothed error and echo-estimate power per bin (leak estimation).
    error_power: Vec<f32>,
    echo_power: Vec<f32>,
    step: Vec<f32>,
    proportion: [f32; PARTITIONS],
    echo_background: [f32; BLOCK],
    error_background: [f32; BLOCK],
    /// Correlation of error and echo-estimate power fluctuations, and the latter's variance,
    /// gathered from nothing; the prior is apart, in `prior`.
    pey: f64,
    pyy: f64,
    /// The weight the evidence has not yet replaced of the prior belief that all the echo
    /// leaks: 1 at the start, fading at the pace the correlations gather evidence.
    prior: f64,
    /// The share of the echo the filter still leaks, 0–1.
    leak: f64,
    /// Enough far end has been seen to trust the leak estimate.
    adapted: bool,
    adapt_sum: f64,
    /// Foreground/background comparison, smoothed over a few blocks at two speeds.
    difference: [f64; 2],
    variance: [f64; 2],
    constrain_next: usize,
    /// The echo estimate subtracted from the last block.
    echo: [f32; BLOCK],
    /// The foreground's largest tap: the partition the scan looks at next, the largest so
    /// far in this scan (sample, magnitude), and the last whole scan's, in samples.
    delay_scan: usize,
    delay_best: (usize, f32),
    delay: Option<usize>,
    /// Blocks adapted on.
    blocks: usize,
    /// Over far-end-active blocks, this stage alone.
    erle: ErleMeter,
}

impl Default for EchoPathFilter {
    fn default() -> Self {
        Self::new()
    }
}

impl EchoPathFilter {
    pub fn new() -> Self {
        let zero = Complex32::new(0.0, 0.0);
        Self {
            fft: BlockFft::new(),
            time: vec![0.0; FFT],
            spectrum: vec![zero; BINS],
            error_spectrum: vec![zero; BINS],
            echo_bins: [0.0; BINS],
            far: Spectra::new(),
            newest: 0,
            far_previous: [0.0; BLOCK],
            background: Spectra::new(),
            foreground: Spectra::new(),
            far_power: vec![0.0; BINS],
            error_power: vec![0.0; BINS],
            echo_power: vec![0.0; BINS],
            step: vec![0.0; BINS],
            proportion: [1.0 / PARTITIONS as f32; PARTITIONS],
            echo_background: [0.0; BLOCK],
            error_background: [0.0; BLOCK],
            pey: 0.0,
            pyy: 0.0,
            prior: 1.0,
            leak: 1.0,
            adapted: false,
            adapt_sum: 0.0,
            difference: [0.0; 2],
            variance: [0.0; 2],
            constrain_next: 0,
            erle: ErleMeter::default(),
            echo: [0.0; BLOCK],
            delay_scan: 0,
            delay_best: (0, 0.0),
            delay: None,
            blocks: 0,
        }
    }

    /// Echo return loss enhancement of this stage over the last few seconds of far end, dB.
    pub fn erle_db(&self) -> Option<f64> {
        self.erle.db().filter(|_| self.adapted)
    }

    /// The echo estimate subtracted from the last block.
    pub fn echo(&self) -> &[f32; BLOCK] {
        &self.echo
    }

    /// The share of the echo's power the filter is estimated still to leak, 0–1.
    pub fn leak(&self) -> f32 {
        self.leak as f32
    }

    /// The echo path's delay: where the foreground's impulse response peaks, in samples.
    pub fn delay_samples(&self) -> Option<usize> {
        self.delay
    }

    /// The loudspeaker has been silent for longer than the filter spans: its far-end history
    /// is silence, whatever came before.
    pub fn forget_far(&mut self) {
        self.far.clear();
        self.far_previous = [0.0; BLOCK];
    }

    /// Removes the echo of `far` (the loudspeaker's block that goes with this capture block)
    /// from `capture`, in place, and learns from the block.
    pub fn process(&mut self, far: &[f32; BLOCK], capture: &mut [f32; BLOCK]) {
        self.push_far(far);
        let far_energy = energy(far);

        let mut echo_foreground = [0.0f32; BLOCK];
        self.estimate(Weights::Foreground, &mut echo_foreground);
        let mut echo_background = [0.0f32; BLOCK];
        self.estimate(Weights::Background, &mut echo_background);
        self.echo_background = echo_background;

        let (mut sff, mut see, mut dbf) = (0.0f64, 0.0f64, 1e-12f64);
        for i in 0..BLOCK {
            let ef = capture[i] - echo_foreground[i];
            let eb = capture[i] - echo_background[i];
            self.error_background[i] = eb;
            sff += f64::from(ef) * f64::from(ef);
            see += f64::from(eb) * f64::from(eb);
            dbf += f64::from(ef - eb) * f64::from(ef - eb);
        }
        let mut output_echo = &echo_foreground;
        match self.compare(sff, see, dbf) {
            Verdict::BackgroundBetter => {
                self.foreground.copy_from(&self.background);
                output_echo = &echo_background;
            }
            Verdict::BackgroundDiverged => {
                self.background.copy_from(&self.foreground);
                self.echo_background = echo_foreground;
                // Rare (double talk), so the foreground's bins are worked out again here
                // rather than kept for every block.
                self.echo_spectrum(Weights::Foreground);
                self.store_echo_bins();
                for i in 0..BLOCK {
                    self.error_background[i] = capture[i] - echo_foreground[i];
                }
                see = sff;
            }
            Verdict::Keep => {}
        }

        self.echo = *output_echo;
        let mic = energy(capture);
        for (sample, echo) in capture.iter_mut().zip(output_echo) {
            *sample -= echo;
        }
        if far_energy > f64::from(QUIET_FAR) * BLOCK as f64 {
            self.erle.add(mic, energy(capture));
            self.adapt(far_energy, see);
        }
        if self.adapted {
            self.scan_for_delay();
        }
    }

    /// Looks at one more partition of the foreground's impulse response for its largest tap
    /// (one inverse transform a block, rather than all 32 at once); after the last, that tap
    /// is the echo path's delay.
    fn scan_for_delay(&mut self) {
        let p = self.delay_scan;
        self.foreground.get(p, &mut self.spectrum);
        self.inverse_into_time();
        for (i, tap) in self.time[..BLOCK].iter().enumerate() {
            if tap.abs() > self.delay_best.1 {
                self.delay_best = (p * BLOCK + i, tap.abs());
            }
        }
        self.delay_scan = (p + 1) % PARTITIONS;
        if self.delay_scan == 0 {
            self.delay = Some(self.delay_best.0);
            self.delay_best = (0, 0.0);
        }
    }

    fn push_far(&mut self, far: &[f32; BLOCK]) {
        self.time[..BLOCK].copy_from_slice(&self.far_previous);
        self.time[BLOCK..].copy_from_slice(far);
        self.far_previous = *far;
        self.newest = (self.newest + PARTITIONS - 1) % PARTITIONS;
        // Lengths come from the plan, so this cannot fail.
        self.fft.forward(&mut self.time, &mut self.spectrum);
        self.far.set(self.newest, &self.spectrum);
    }

    /// The echo estimate of one set of weights for the newest block, in the time domain; the
    /// background's power per bin is kept for adaptation.
    fn estimate(&mut self, which: Weights, out: &mut [f32; BLOCK]) {
        self.echo_spectrum(which);
        if which == Weights::Background {
            self.store_echo_bins();
        }
        self.inverse_into_time();
        let scale = 1.0 / FFT as f32;
        for (o, t) in out.iter_mut().zip(&self.time[BLOCK..]) {
            *o = t * scale;
        }
    }

    /// Into `spectrum`: the echo estimate of one set of weights for the newest block.
    fn echo_spectrum(&mut self, which: Weights) {
        let weights = match which {
            Weights::Foreground => &self.foreground,
            Weights::Background => &self.background,
        };
        let (mut acc_re, mut acc_im) = ([0.0f32; BINS], [0.0f32; BINS]);
        for p in 0..PARTITIONS {
            let (xr, xi) = self.far.partition((self.newest + p) % PARTITIONS);
            let (wr, wi) = weights.partition(p);
            // Slices of a known length: no bounds checks in the loop, so it vectorises.
            let (xr, xi, wr, wi) = (&xr[..BINS], &xi[..BINS], &wr[..BINS], &wi[..BINS]);
            for k in 0..BINS {
                acc_re[k] += xr[k] * wr[k] - xi[k] * wi[k];
                acc_im[k] += xr[k] * wi[k] + xi[k] * wr[k];
            }
        }
        for ((c, re), im) in self.spectrum.iter_mut().zip(acc_re).zip(acc_im) {
            *c = Complex32::new(re, im);
        }
    }

    /// `spectrum`'s power per bin as the background's echo estimate.
    fn store_echo_bins(&mut self) {
        for (bin, y) in self.echo_bins.iter_mut().zip(&self.spectrum) {
            *bin = y.norm_sqr() / FFT as f32;
        }
    }

    /// Inverse FFT of `spectrum` into `time` (unscaled).
    fn inverse_into_time(&mut self) {
        self.fft.inverse(&mut self.spectrum, &mut self.time);
    }

    /// Speex's test: is the background's lower error more than chance, over one block or a
    /// few?
    fn compare(&mut self, sff: f64, see: f64, dbf: f64) -> Verdict {
        let diff = sff - see;
        self.difference[0] = 0.6 * self.difference[0] + 0.4 * diff;
        self.difference[1] = 0.85 * self.difference[1] + 0.15 * diff;
        self.variance[0] = 0.36 * self.variance[0] + 0.16 * sff * dbf;
        self.variance[1] = 0.7225 * self.variance[1] + 0.0225 * sff * dbf;
        let signed_square = |x: f64| x * x.abs();
        let [d1, d2] = self.difference;
        let [v1, v2] = self.variance;
        let verdict = if signed_square(diff) > sff * dbf
            || signed_square(d1) > 0.5 * v1
            || signed_square(d2) > 0.25 * v2
        {
            Verdict::BackgroundBetter
        } else if -signed_square(diff) > 4.0 * sff * dbf
            || -signed_square(d1) > 4.0 * v1
            || -signed_square(d2) > 4.0 * v2
        {
            Verdict::BackgroundDiverged
        } else {
            Verdict::Keep
        };
        if verdict != Verdict::Keep {
            self.difference = [0.0; 2];
            self.variance = [0.0; 2];
        }
        verdict
    }

    /// One step of the background towards this block's error.
    fn adapt(&mut self, far_energy: f64, see: f64) {
        // The error's spectrum: its block, zero-padded in front (overlap-save).
        let echo_bins = self.echo_bins;
        self.time[..BLOCK].fill(0.0);
        self.time[BLOCK..].copy_from_slice(&self.error_background);
        self.fft.forward(&mut self.time, &mut self.error_spectrum);
        let newest = self.newest;
        let (far_re, far_im) = self.far.partition(newest);
        let smoothing = 0.35 / PARTITIONS as f32;
        let spectral_average = BLOCK as f32 / super::SAMPLE_RATE as f32;
        let (mut pey, mut pyy) = (0.0f64, 0.0f64);
        for k in 0..BINS {
            let far_bin = (far_re[k] * far_re[k] + far_im[k] * far_im[k]) / FFT as f32;
            self.far_power[k] = (1.0 - smoothing) * self.far_power[k] + smoothing * far_bin;
            let error_bin = self.error_spectrum[k].norm_sqr() / FFT as f32;
            self.error_power[k] += spectral_average * (error_bin - self.error_power[k]);
            self.echo_power[k] += spectral_average * (echo_bins[k] - self.echo_power[k]);
            let de = f64::from(error_bin - self.error_power[k]);
            let dy = f64::from(echo_bins[k] - self.echo_power[k]);
            pey += de * dy;
            pyy += dy * dy;
        }
        let syy = energy(&self.echo_background);
        let sey: f64 = self
            .echo_background
            .iter()
            .zip(&self.error_background)
            .map(|(y, e)| f64::from(*y) * f64::from(*e))
            .sum();
        let rate = f64::from(super::SAMPLE_RATE);
        let beta = (2.0 * BLOCK as f64 / rate * syy / (see + 1e-12)).min(0.5 * BLOCK as f64 / rate);
        self.pey = (1.0 - beta) * self.pey + beta * pey;
        self.pyy = (1.0 - beta) * self.pyy + beta * pyy;
        self.prior *= 1.0 - beta;
        let evidence = if self.pyy > 1e-30 {
            self.pey.max(0.0) / self.pyy
        } else {
            1.0
        };
        let prior = LEAK_PRIOR * self.prior / (1.0 - self.prior).max(1e-12);
        self.leak = ((evidence + prior) / (1.0 + prior)).min(1.0);
        let rer = ((1e-4 * far_energy + 3.0 * self.leak * syy) / (see + 1e-12))
            .max(sey * sey / (1.0 + see * syy))
            .min(0.5) as f32;

        if !self.adapted && self.adapt_sum > PARTITIONS as f64 && self.leak > 0.03 {
            self.adapted = true;
        }
        if self.adapted {
            let leak = self.leak as f32;
            let bins = self
                .error_spectrum
                .iter()
                .zip(&echo_bins)
                .zip(&self.far_power);
            for (step, ((error, echo), far)) in self.step.iter_mut().zip(bins) {
                let error_bin = error.norm_sqr() / FFT as f32 + 1e-9;
                let residual = (leak * echo).min(0.5 * error_bin);
                let residual = 0.7 * residual + 0.3 * rer * error_bin;
                *step = residual / (error_bin * (far + 1e-7));
            }
        } else {
            // Until the leak can be told, a fixed share of the far end's weight.
            let rate = (0.25 * far_energy).min(0.25 * see) / (see + 1e-12);
            self.adapt_sum += rate;
            for k in 0..BINS {
                self.step[k] = rate as f32 / (self.far_power[k] + 1e-7);
            }
        }

        if self.blocks % PROPORTION_EVERY == 0 {
            self.update_proportion();
        }
        self.blocks += 1;
        let scale = 1.0 / FFT as f32;
        for k in 0..BINS {
            self.error_spectrum[k] *= self.step[k] * scale;
        }
        let (mut er, mut ei) = ([0.0f32; BINS], [0.0f32; BINS]);
        for ((r, i), e) in er.iter_mut().zip(&mut ei).zip(&self.error_spectrum) {
            (*r, *i) = (e.re, e.im);
        }
        for p in 0..PARTITIONS {
            let share = self.proportion[p];
            let (xr, xi) = self.far.partition((newest + p) % PARTITIONS);
            let (wr, wi) = self.background.partition_mut(p);
            let (xr, xi) = (&xr[..BINS], &xi[..BINS]);
            let (wr, wi) = (&mut wr[..BINS], &mut wi[..BINS]);
            for k in 0..BINS {
                // w += share · conj(x) · e
                wr[k] += share * (xr[k] * er[k] + xi[k] * ei[k]);
                wi[k] += share * (xr[k] * ei[k] - xi[k] * er[k]);
            }
        }
        for _ in 0..CONSTRAINED_PER_BLOCK {
            self.constrain(self.constrain_next);
            self.constrain_next = (self.constrain_next + 1) % PARTITIONS;
        }
    }

    /// Each partition's share of a step: its weight's magnitude, plus a tenth of the largest
    /// so that no partition stops learning.
    fn update_proportion(&mut self) {
        let mut magnitude = [0.0f32; PARTITIONS];
        for (p, m) in magnitude.iter_mut().enumerate() {
            let (re, im) = self.background.partition(p);
            *m = power(re, im).sqrt() + 1e-9;
        }
        let floor = 0.1 * magnitude.iter().fold(0.0f32, |a, b| a.max(*b));
        let total: f32 = magnitude.iter().map(|m| m + floor).sum();
        for (share, m) in self.proportion.iter_mut().zip(magnitude) {
            *share = 0.99 * (m + floor) / total;
        }
    }

    /// Zeroes the second half of partition `p`'s impulse response: overlap-save's linear
    /// (not circular) convolution.
    fn constrain(&mut self, p: usize) {
        self.background.get(p, &mut self.spectrum);
        self.inverse_into_time();
        let scale = 1.0 / FFT as f32;
        for t in &mut self.time[..BLOCK] {
            *t *= scale;
        }
        self.time[BLOCK..].fill(0.0);
        self.fft.forward(&mut self.time, &mut self.spectrum);
        self.background.set(p, &self.spectrum);
    }
}

/// A real FFT of `FFT` points both ways with its scratch, planned once: no allocation after
/// [`BlockFft::new`]. Shared by both stages of the canceller.
pub(super) struct BlockFft {
    forward: Arc<dyn RealToComplex<f32>>,
    inverse: Arc<dyn ComplexToReal<f32>>,
    scratch: Vec<Complex32>,
}

impl BlockFft {
    pub(super) fn new() -> Self {
        let mut planner = RealFftPlanner::<f32>::new();
        let forward = planner.plan_fft_forward(FFT);
        let inverse = planner.plan_fft_inverse(FFT);
        let scratch_len = forward.get_scratch_len().max(inverse.get_scratch_len());
        Self {
            forward,
            inverse,
            scratch: vec![Complex32::new(0.0, 0.0); scratch_len],
        }
    }

    /// `time` (`FFT` samples, used as scratch) to `spectrum` (`FFT / 2 + 1` bins).
    pub(super) fn forward(&mut self, time: &mut [f32], spectrum: &mut [Complex32]) {
        // Lengths come from the plan, so this cannot fail.
        let _ = self
            .forward
            .process_with_scratch(time, spectrum, &mut self.scratch);
    }

    /// Back to the time domain, unscaled (`FFT` times the signal).
    pub(super) fn inverse(&mut self, spectrum: &mut [Complex32], time: &mut [f32]) {
        // A real signal's spectrum has real DC and Nyquist bins; rounding may leave dust,
        // which the inverse refuses.
        spectrum[0].im = 0.0;
        spectrum[BINS - 1].im = 0.0;
        let _ = self
            .inverse
            .process_with_scratch(spectrum, time, &mut self.scratch);
    }
}

/// Σ|c|² over a spectrum held as real and imaginary parts, in eight lanes so that it
/// vectorises (a single float sum cannot be reordered by the compiler).
fn power(re: &[f32], im: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (re_chunks, im_chunks) = (re.chunks_exact(8), im.chunks_exact(8));
    let rest: f32 = (re_chunks.remainder().iter())
        .zip(im_chunks.remainder())
        .map(|(r, i)| r * r + i * i)
        .sum();
    for (r, i) in re_chunks.zip(im_chunks) {
        for lane in 0..8 {
            lanes[lane] += r[lane] * r[lane] + i[lane] * i[lane];
        }
    }
    lanes.iter().sum::<f32>() + rest
}

/// `PARTITIONS` spectra of `BINS` bins, real and imaginary parts apart so that the per-bin
/// loops over them vectorise.
struct Spectra {
    re: Vec<f32>,
    im: Vec<f32>,
}

impl Spectra {
    fn new() -> Self {
        Self {
            re: vec![0.0; PARTITIONS * BINS],
            im: vec![0.0; PARTITIONS * BINS],
        }
    }

    fn partition(&self, p: usize) -> (&[f32], &[f32]) {
        let range = p * BINS..(p + 1) * BINS;
        (&self.re[range.clone()], &self.im[range])
    }

    fn partition_mut(&mut self, p: usize) -> (&mut [f32], &mut [f32]) {
        let range = p * BINS..(p + 1) * BINS;
        (&mut self.re[range.clone()], &mut self.im[range])
    }

    fn set(&mut self, p: usize, spectrum: &[Complex32]) {
        let (re, im) = self.partition_mut(p);
        for ((r, i), c) in re.iter_mut().zip(im).zip(spectrum) {
            (*r, *i) = (c.re, c.im);
        }
    }

    fn get(&self, p: usize, spectrum: &mut [Complex32]) {
        let (re, im) = self.partition(p);
        for ((c, r), i) in spectrum.iter_mut().zip(re).zip(im) {
            *c = Complex32::new(*r, *i);
        }
    }

    fn copy_from(&mut self, other: &Spectra) {
        self.re.copy_from_slice(&other.re);
        self.im.copy_from_slice(&other.im);
    }

    fn clear(&mut self) {
        self.re.fill(0.0);
        self.im.fill(0.0);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Weights {
    Foreground,
    Background,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Verdict {
    BackgroundBetter,
    BackgroundDiverged,
    Keep,
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// White noise through a pure delay and gain: returns the filter, and the echo left over
    /// the last second against the echo.
    fn learn(delay: usize, seconds: usize) -> (EchoPathFilter, f64) {
        learn_with_gain(delay, seconds, 0.5)
    }

    fn learn_with_gain(delay: usize, seconds: usize, gain: f32) -> (EchoPathFilter, f64) {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let total = seconds * 100 * BLOCK;
        let far: Vec<f32> = (0..total).map(|_| rng.gen_range(-0.3..0.3)).collect();
        let mut filter = EchoPathFilter::new();
        let (mut echo_e, mut left_e) = (0.0, 0.0);
        for k in 0..total / BLOCK {
            let block: [f32; BLOCK] = far[k * BLOCK..(k + 1) * BLOCK].try_into().unwrap();
            let mut mic = [0.0f32; BLOCK];
            for (i, m) in mic.iter_mut().enumerate() {
                let n = k * BLOCK + i;
                *m = if n >= delay {
                    gain * far[n - delay]
                } else {
                    0.0
                };
            }
            let e = energy(&mic);
            filter.process(&block, &mut mic);
            if k >= total / BLOCK - 100 {
                echo_e += e;
                left_e += energy(&mic);
            }
        }
        (filter, 10.0 * (echo_e / left_e.max(1e-30)).log10())
    }

    /// How much echo the filter believes it leaks must not depend on how loud the echo is:
    /// an absolute prior let a loud echo through early and held back a quiet near end.
    #[test]
    fn the_leak_estimate_does_not_depend_on_the_echo_level() {
        let (quiet, _) = learn_with_gain(700, 1, 0.03);
        let (loud, _) = learn_with_gain(700, 1, 1.0);
        let (quiet, loud) = (quiet.leak(), loud.leak());
        assert!(quiet > 0.01 && loud > 0.01, "leaks {quiet} and {loud}");
        assert!(
            (0.7..1.4).contains(&(quiet / loud)),
            "30 dB apart, the leaks are {quiet} and {loud}"
        );
    }

    #[test]
    fn a_delayed_echo_is_learnt_and_its_delay_found() {
        for delay in [0, 700, 2400, 9000] {
            let (filter, erle) = learn(delay, 6);
            assert!(erle > 30.0, "delay {delay}: ERLE {erle:.1} dB");
            assert_eq!(filter.delay_samples(), Some(delay), "delay {delay}");
        }
    }
}
