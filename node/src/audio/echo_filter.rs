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
//! The design:
//! - the weights adapt as a frequency-domain Kalman filter (Enzner and Vary, "Frequency-domain
//!   adaptive Kalman filter for acoustic echo control in hands-free telephones", 2006, in the
//!   partitioned and diagonalised form of Kuech et al., 2014): each weight carries its
//!   uncertainty, and its step is that uncertainty's share of the error it explains against
//!   the near end's power in the bin. So a weight learns fast while it is unknown and slows
//!   as it is learnt, in each bin apart: a bin the far end has not yet excited stays ready to
//!   learn. On speech, with no suppressor, it reached 20 dB almost twice as fast as Speex's
//!   MDF, whose single step follows one leak estimate for all bins (`scripts/echo-bench`);
//! - every few blocks each bin's uncertainty is shared out again over the partitions in
//!   proportion to their weights' power (with a floor): a room's echo sits in a few of them,
//!   after its delay, so the learning goes there, as the proportionate steps of IPNLMS and
//!   Speex's MDF do. This raised ERLE after 2 s by 2–8 dB and kept more of the near end in
//!   double talk in every room of the bench;
//! - the near end's power per bin is the error's less the echo still expected in it: the
//!   larger of what the weights' uncertainty predicts and what the leak estimate measures, so
//!   a filter that is worse than it believes is still corrected;
//! - two filters: the background adapts, the foreground cancels; the background is copied to
//!   the foreground only when it has cancelled measurably better, and is reset from it when it
//!   has measurably diverged (double talk), as in Speex's MDF;
//! - the leak estimate (Valin, "On adjusting the learning rate in frequency domain echo
//!   cancellation with double-talk", 2007) is the one named there: the correlation of the
//!   error's and the echo estimate's power fluctuations;
//! - when the filter adds echo rather than removes it for a while, the path has moved and
//!   it starts over ([`DIVERGED_BLOCKS`]);
//! - the first uncertainty suits an echo below the far end; after [`GAIN_BLOCKS`] it is
//!   raised for a louder path, measured meanwhile;
//! - the gradient constraint is applied to four partitions per block in turn, not to all:
//!   with two, an echo whose peak sat at a partition's edge was learnt to only 26 dB on white
//!   noise (66 with four, 68 with all 32, at eight times the cost).
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
const CONSTRAINED_PER_BLOCK: usize = 4;

/// Bins the delay scan looks at: up to 8 kHz, where any far-end speech has power. A narrower
/// band blurs the peak into the early reflections (4 kHz put it 2 ms late).
const DELAY_BAND_BINS: usize = BINS * 8000 / 24000;

/// Each weight's uncertainty (its expected squared error) before anything is learnt: a path
/// 10 dB below unity gain in every partition, more than a room puts in any one of them, so
/// the first steps are as long as the error allows.
const INITIAL_UNCERTAINTY: f32 = 0.1;

/// Far-end blocks over which the echo path's gain is first measured (the capture's energy
/// over the far end's), after which the uncertainty is raised to match a loud path:
/// [`INITIAL_UNCERTAINTY`] suits an echo below the far end. With the echo 6 dB above the far
/// end, ERLE after 2 s was 13.9 dB and the double-talk gap 2.51; raised, 39.8 dB and 0.58.
const GAIN_BLOCKS: usize = 30;

/// How much of a weight's power its uncertainty grows by each block: the echo path may move.
/// 1e-4 let the filter wander more in double talk (near-end PESQ 0.05–0.1 lower).
const PATH_DRIFT: f32 = 1e-5;

/// Blocks between redistributions of the uncertainty over the partitions.
const RESHAPE_EVERY: usize = 4;

/// Each partition keeps at least this share of the strongest partition's weight in the
/// redistribution, so that none stops learning and a moved path is still found.
const RESHAPE_FLOOR: f32 = 0.2;

/// The share of the weights' predicted error that shows in the error spectrum: the error is
/// the valid half of the block (so one half), discounted by half again, which learnt faster
/// and deeper on speech than the model's own half (`scripts/echo-bench`).
const VISIBLE_SHARE: f32 = 0.25;

/// The near end is never taken for less than this share of the error: a step never trusts
/// the model so far that it jumps the whole error.
const NEAR_FLOOR: f32 = 0.01;

/// How the error's power per bin is smoothed (it rises at once, so double talk slows the
/// steps from its first block).
const ERROR_SMOOTHING: f32 = 0.5;

/// How strongly the leak estimate starts out believing that all the echo leaks, against the
/// evidence gathered since, whatever the signals' level. Speex starts its correlations at
/// 1 in absolute units instead, a prior that a loud echo outgrew in a second (ERLE 20 dB
/// after 2 s with the echo as loud as the far end) and a quiet one held for long (the near
/// end suppressed in double talk). 2 measured best over the echo bench's rooms and levels.
const LEAK_PRIOR: f64 = 2.0;

/// How long the filter may add echo rather than remove it before it starts over, in
/// far-end blocks: its output's energy above its input's, smoothed. A near end talking over
/// a right filter cannot do that (it is in both); a moved loudspeaker or microphone does
/// (the old path's estimate is subtracted from the new path's echo), and a Kalman filter
/// that has learnt its path takes the new echo for a near end and would never relearn.
const DIVERGED_BLOCKS: usize = 15;

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
    /// `|far|²` of each of `far`'s bins, laid out alike: the Kalman step reads it twice.
    far_power: Vec<f32>,
    newest: usize,
    far_previous: [f32; BLOCK],
    background: Spectra,
    foreground: Spectra,
    /// Smoothed error and echo-estimate power per bin (leak estimation).
    error_power: Vec<f32>,
    echo_power: Vec<f32>,
    /// Each background weight's uncertainty, `PARTITIONS × BINS` like the weights.
    uncertainty: Vec<f32>,
    echo_background: [f32; BLOCK],
    error_background: [f32; BLOCK],
    constrain_next: usize,
    /// The echo estimate subtracted from the last block.
    echo: [f32; BLOCK],
    /// Times it started over.
    restarts: u32,
    learnt: Learnt,
    /// Over far-end-active blocks, this stage alone.
    erle: ErleMeter,
}

/// What the filter has learnt about the echo path and its own progress, beside its weights
/// and their uncertainty: all of it goes when it starts over.
struct Learnt {
    /// The background's error power per bin, smoothed (it rises at once).
    error_smooth: [f32; BINS],
    /// Correlation of error and echo-estimate power fluctuations, and the latter's variance,
    /// gathered from nothing; the prior is apart, in `prior`.
    pey: f64,
    pyy: f64,
    /// The weight the evidence has not yet replaced of the prior belief that all the echo
    /// leaks: 1 at the start, fading at the pace the correlations gather evidence.
    prior: f64,
    /// The share of the echo the filter still leaks, 0–1.
    leak: f64,
    /// Foreground/background comparison, smoothed over a few blocks at two speeds.
    difference: [f64; 2],
    variance: [f64; 2],
    /// The foreground's largest tap: the partition the scan looks at next, the largest so
    /// far in this scan (sample, magnitude), and the last whole scan's, in samples.
    delay_scan: usize,
    delay_best: (usize, f32),
    delay: Option<usize>,
    /// Blocks adapted on.
    blocks: usize,
    /// The foreground's output and input energy over far-end blocks, smoothed, and the
    /// far-end blocks in a row in which the output was the larger.
    output_energy: f64,
    input_energy: f64,
    diverged_for: usize,
    /// The capture's and the far end's energy over the first [`GAIN_BLOCKS`] far-end blocks.
    gain_input: f64,
    gain_far: f64,
}

impl Learnt {
    const START: Self = Self {
        error_smooth: [0.0; BINS],
        pey: 0.0,
        pyy: 0.0,
        prior: 1.0,
        leak: 1.0,
        difference: [0.0; 2],
        variance: [0.0; 2],
        delay_scan: 0,
        delay_best: (0, 0.0),
        delay: None,
        blocks: 0,
        output_energy: 0.0,
        input_energy: 0.0,
        diverged_for: 0,
        gain_input: 0.0,
        gain_far: 0.0,
    };
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
            far_power: vec![0.0; PARTITIONS * BINS],
            newest: 0,
            far_previous: [0.0; BLOCK],
            background: Spectra::new(),
            foreground: Spectra::new(),
            error_power: vec![0.0; BINS],
            echo_power: vec![0.0; BINS],
            uncertainty: vec![INITIAL_UNCERTAINTY; PARTITIONS * BINS],
            echo_background: [0.0; BLOCK],
            error_background: [0.0; BLOCK],
            constrain_next: 0,
            erle: ErleMeter::default(),
            echo: [0.0; BLOCK],
            restarts: 0,
            learnt: Learnt::START,
        }
    }

    /// How many times the filter has found its path moved and started over.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// Forgets the echo path and everything learnt about it (not the far end's history): the
    /// filter learns again as it did from the start. In place: no allocation.
    fn start_over(&mut self) {
        self.background.clear();
        self.foreground.clear();
        self.uncertainty.fill(INITIAL_UNCERTAINTY);
        self.error_power.fill(0.0);
        self.echo_power.fill(0.0);
        self.learnt = Learnt::START;
        self.erle = ErleMeter::default();
        self.restarts += 1;
    }

    /// Echo return loss enhancement of this stage over the last few seconds of far end, dB.
    pub fn erle_db(&self) -> Option<f64> {
        self.erle.db().filter(|_| self.adapted())
    }

    /// Enough far end has been seen (the filter's span) to trust the leak estimate.
    fn adapted(&self) -> bool {
        self.learnt.blocks >= PARTITIONS
    }

    /// The echo estimate subtracted from the last block.
    pub fn echo(&self) -> &[f32; BLOCK] {
        &self.echo
    }

    /// The echo path's delay: where the foreground's impulse response peaks, in samples.
    pub fn delay_samples(&self) -> Option<usize> {
        self.learnt.delay
    }

    /// The loudspeaker has been silent for longer than the filter spans: its far-end history
    /// is silence, whatever came before.
    pub fn forget_far(&mut self) {
        self.far.clear();
        self.far_power.fill(0.0);
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
            let output = energy(capture);
            self.erle.add(mic, output);
            if self.has_diverged(mic, output) {
                self.start_over();
                return;
            }
            self.measure_gain(mic, far_energy);
            self.adapt(see);
        }
        if self.adapted() {
            self.scan_for_delay();
        }
    }

    /// Over the first [`GAIN_BLOCKS`] far-end blocks, measures the path's gain; then raises
    /// the uncertainty to what a path that loud needs, if it is more than it holds.
    fn measure_gain(&mut self, input: f64, far: f64) {
        if self.learnt.blocks >= GAIN_BLOCKS {
            return;
        }
        self.learnt.gain_input += input;
        self.learnt.gain_far += far;
        if self.learnt.blocks + 1 == GAIN_BLOCKS && self.learnt.gain_far > 0.0 {
            // Twice what was measured: the first blocks hold only the start of the echo (its
            // delay, a tail still building up).
            let gain = 2.0 * (self.learnt.gain_input / self.learnt.gain_far) as f32;
            if gain > 1.0 {
                let floor = INITIAL_UNCERTAINTY * gain.min(100.0);
                for u in &mut self.uncertainty {
                    *u = u.max(floor);
                }
            }
        }
    }

    /// Has the filter added more echo than it removed for [`DIVERGED_BLOCKS`] far-end blocks
    /// in a row? The energies are smoothed over about 100 ms, so a single block's burst does
    /// not count, and the output must exceed the input by 1 dB.
    fn has_diverged(&mut self, input: f64, output: f64) -> bool {
        self.learnt.input_energy = 0.9 * self.learnt.input_energy + input;
        self.learnt.output_energy = 0.9 * self.learnt.output_energy + output;
        if self.learnt.output_energy > 1.25 * self.learnt.input_energy + 1e-9 {
            self.learnt.diverged_for += 1;
        } else {
            self.learnt.diverged_for = 0;
        }
        self.learnt.diverged_for >= DIVERGED_BLOCKS
    }

    /// Looks at one more partition of the foreground's impulse response for its largest tap
    /// (one inverse transform a block, rather than all 32 at once); after the last, that tap
    /// is the echo path's delay.
    fn scan_for_delay(&mut self) {
        let p = self.learnt.delay_scan;
        self.foreground.get(p, &mut self.spectrum);
        // Only the speech band: above it the far end may have excited nothing, and weights
        // never excited hold what the gradient constraint leaves, which in the time domain
        // gathers into large taps at partitions' edges (measured: larger than the echo's own).
        self.spectrum[DELAY_BAND_BINS..].fill(Complex32::new(0.0, 0.0));
        self.inverse_into_time();
        for (i, tap) in self.time[..BLOCK].iter().enumerate() {
            if tap.abs() > self.learnt.delay_best.1 {
                self.learnt.delay_best = (p * BLOCK + i, tap.abs());
            }
        }
        self.learnt.delay_scan = (p + 1) % PARTITIONS;
        if self.learnt.delay_scan == 0 {
            self.learnt.delay = Some(self.learnt.delay_best.0);
            self.learnt.delay_best = (0, 0.0);
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
        let power = &mut self.far_power[self.newest * BINS..(self.newest + 1) * BINS];
        for (power, x) in power.iter_mut().zip(&self.spectrum) {
            *power = x.re * x.re + x.im * x.im;
        }
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
        self.learnt.difference[0] = 0.6 * self.learnt.difference[0] + 0.4 * diff;
        self.learnt.difference[1] = 0.85 * self.learnt.difference[1] + 0.15 * diff;
        self.learnt.variance[0] = 0.36 * self.learnt.variance[0] + 0.16 * sff * dbf;
        self.learnt.variance[1] = 0.7225 * self.learnt.variance[1] + 0.0225 * sff * dbf;
        let signed_square = |x: f64| x * x.abs();
        let [d1, d2] = self.learnt.difference;
        let [v1, v2] = self.learnt.variance;
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
            self.learnt.difference = [0.0; 2];
            self.learnt.variance = [0.0; 2];
        }
        verdict
    }

    /// One step of the background towards this block's error.
    fn adapt(&mut self, see: f64) {
        // The error's spectrum: its block, zero-padded in front (overlap-save).
        self.time[..BLOCK].fill(0.0);
        self.time[BLOCK..].copy_from_slice(&self.error_background);
        self.fft.forward(&mut self.time, &mut self.error_spectrum);
        self.estimate_leak(see);
        self.learnt.blocks += 1;
        self.kalman_step();
        if self.learnt.blocks % RESHAPE_EVERY == 0 {
            self.reshape_uncertainty();
        }
        for _ in 0..CONSTRAINED_PER_BLOCK {
            self.constrain(self.constrain_next);
            self.constrain_next = (self.constrain_next + 1) % PARTITIONS;
        }
    }

    /// How much of the echo's power the background still leaks: the correlation of the
    /// error's and the echo estimate's power fluctuations (Valin), weighed against the prior.
    fn estimate_leak(&mut self, see: f64) {
        let spectral_average = BLOCK as f32 / super::SAMPLE_RATE as f32;
        let (mut pey, mut pyy) = (0.0f64, 0.0f64);
        for k in 0..BINS {
            let error_bin = self.error_spectrum[k].norm_sqr() / FFT as f32;
            let echo_bin = self.echo_bins[k];
            self.error_power[k] += spectral_average * (error_bin - self.error_power[k]);
            self.echo_power[k] += spectral_average * (echo_bin - self.echo_power[k]);
            let de = f64::from(error_bin - self.error_power[k]);
            let dy = f64::from(echo_bin - self.echo_power[k]);
            pey += de * dy;
            pyy += dy * dy;
        }
        let syy = energy(&self.echo_background);
        let rate = f64::from(super::SAMPLE_RATE);
        let beta = (2.0 * BLOCK as f64 / rate * syy / (see + 1e-12)).min(0.5 * BLOCK as f64 / rate);
        self.learnt.pey = (1.0 - beta) * self.learnt.pey + beta * pey;
        self.learnt.pyy = (1.0 - beta) * self.learnt.pyy + beta * pyy;
        self.learnt.prior *= 1.0 - beta;
        let evidence = if self.learnt.pyy > 1e-30 {
            self.learnt.pey.max(0.0) / self.learnt.pyy
        } else {
            1.0
        };
        let prior = LEAK_PRIOR * self.learnt.prior / (1.0 - self.learnt.prior).max(1e-12);
        self.learnt.leak = ((evidence + prior) / (1.0 + prior)).min(1.0);
    }

    /// The Kalman update of the background's weights and their uncertainty (see the module
    /// documentation). All in the units of the unscaled transforms, so it does not depend on
    /// the signals' level.
    fn kalman_step(&mut self) {
        let newest = self.newest;
        // The echo the weights' uncertainty predicts is still in the error, per bin.
        let mut predicted = [0.0f32; BINS];
        for p in 0..PARTITIONS {
            let older = (newest + p) % PARTITIONS;
            let x2 = &self.far_power[older * BINS..(older + 1) * BINS];
            let u = &self.uncertainty[p * BINS..(p + 1) * BINS];
            for ((predicted, x2), u) in predicted.iter_mut().zip(x2).zip(u) {
                *predicted += x2 * u;
            }
        }
        // The error over the gain's denominator, and that denominator's inverse.
        let (mut er, mut ei, mut inverse) = ([0.0f32; BINS], [0.0f32; BINS], [0.0f32; BINS]);
        let leak = self.learnt.leak as f32;
        for k in 0..BINS {
            let error = self.error_spectrum[k];
            let power = error.norm_sqr();
            let smooth = (ERROR_SMOOTHING * self.learnt.error_smooth[k]
                + (1.0 - ERROR_SMOOTHING) * power)
                .max(power);
            self.learnt.error_smooth[k] = smooth;
            let measured = 0.5 * leak * self.echo_bins[k] * FFT as f32;
            let echo_left = (VISIBLE_SHARE * predicted[k]).max(measured);
            let near = (smooth - echo_left).max(NEAR_FLOOR * smooth) + 1e-6;
            let d = 1.0 / (predicted[k] + near / VISIBLE_SHARE);
            inverse[k] = d;
            er[k] = error.re * d;
            ei[k] = error.im * d;
        }
        for p in 0..PARTITIONS {
            let older = (newest + p) % PARTITIONS;
            let (xr, xi) = self.far.partition(older);
            let x2 = &self.far_power[older * BINS..(older + 1) * BINS];
            let (wr, wi) = self.background.partition_mut(p);
            let u = &mut self.uncertainty[p * BINS..(p + 1) * BINS];
            let (xr, xi, x2) = (&xr[..BINS], &xi[..BINS], &x2[..BINS]);
            let (wr, wi, u) = (&mut wr[..BINS], &mut wi[..BINS], &mut u[..BINS]);
            for k in 0..BINS {
                // w += u · conj(x) · e / d; u shrinks by what this block taught it.
                let g = u[k];
                wr[k] += g * (xr[k] * er[k] + xi[k] * ei[k]);
                wi[k] += g * (xr[k] * ei[k] - xi[k] * er[k]);
                u[k] = g * (1.0 - VISIBLE_SHARE * g * x2[k] * inverse[k])
                    + PATH_DRIFT * (wr[k] * wr[k] + wi[k] * wi[k]);
            }
        }
    }

    /// Shares each bin's uncertainty out over the partitions again, in proportion to their
    /// weights' power (see the module documentation); the total per bin is kept.
    fn reshape_uncertainty(&mut self) {
        let mut shares = [0.0f32; PARTITIONS];
        for (p, share) in shares.iter_mut().enumerate() {
            let (re, im) = self.background.partition(p);
            *share = power(re, im);
        }
        let strongest = shares.iter().fold(0.0f32, |a, b| a.max(*b));
        if strongest <= 0.0 {
            return;
        }
        for share in &mut shares {
            *share += RESHAPE_FLOOR * strongest;
        }
        let sum: f32 = shares.iter().sum();
        let mut total = [0.0f32; BINS];
        for u in self.uncertainty.chunks_exact(BINS) {
            for (t, u) in total.iter_mut().zip(u) {
                *t += u;
            }
        }
        for (u, share) in self.uncertainty.chunks_exact_mut(BINS).zip(shares) {
            let share = share / sum;
            for (u, t) in u.iter_mut().zip(&total) {
                *u = t * share;
            }
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
        let (quiet, loud) = (quiet.learnt.leak, loud.learnt.leak);
        assert!(quiet > 0.01 && loud > 0.01, "leaks {quiet} and {loud}");
        assert!(
            (0.7..1.4).contains(&(quiet / loud)),
            "30 dB apart, the leaks are {quiet} and {loud}"
        );
    }

    #[test]
    fn a_delayed_echo_is_learnt_and_its_delay_found() {
        // 2399 and 2400 sit on either side of a partition's edge, where per-bin steps smear a
        // tap around the circular convolution until the gradient constraint comes by.
        for delay in [0, 700, 2399, 2400, 9000] {
            let (filter, erle) = learn(delay, 6);
            assert!(erle > 30.0, "delay {delay}: ERLE {erle:.1} dB");
            assert_eq!(filter.delay_samples(), Some(delay), "delay {delay}");
        }
    }
}
