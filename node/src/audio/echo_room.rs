//! `audio echo`: the echo canceller measured in a synthetic room, in virtual time.
//!
//! The room is a loudspeaker-to-microphone impulse response: a direct path after `delay_ms`,
//! then a seeded exponentially decaying diffuse tail (`rt60_ms`), scaled so the echo comes
//! back `erl_db` below the far end, plus a microphone noise floor. Three phases:
//!
//! 1. far end only (`far_only_s`): ERLE is measured here after `settle_s` (convergence);
//! 2. double talk: the far end goes on and the near end speaks over it;
//! 3. the same near-end speech again with a silent loudspeaker (the reference run).
//!
//! The report gives ERLE (echo energy at the microphone over what is left after the canceller,
//! far-end-active 10 ms blocks only), when it first reached 20 dB, and the lag between the
//! near-end speech going in and coming out (the canceller's added latency). The near-end
//! output of phases 2 and 3 is returned for PESQ scoring against the near-end input.

use super::echo::{energy, EchoCanceller, ECHO_FRAME};
use super::SAMPLE_RATE;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RoomConfig {
    /// Loudspeaker to microphone, direct path.
    pub delay_ms: f64,
    /// Reverberation time of the diffuse tail.
    pub rt60_ms: f64,
    /// Echo return loss: how far below the far end the echo arrives, dB.
    pub erl_db: f64,
    /// Microphone noise floor, dBFS.
    pub noise_dbfs: f64,
    pub far_only_s: f64,
    /// ERLE is measured from this far into phase 1.
    pub settle_s: f64,
    /// The delay the devices would report, ms (the canceller finds its own).
    pub device_delay_ms: u32,
    pub seed: u64,
    /// This far into phase 1 the echo path jumps to another room's (the next seed's, 10 ms
    /// longer): the laptop was moved. Re-convergence is measured from here.
    pub moved_at_s: Option<f64>,
}

impl Default for RoomConfig {
    fn default() -> Self {
        Self {
            delay_ms: 50.0,
            rt60_ms: 200.0,
            erl_db: 6.0,
            noise_dbfs: -70.0,
            far_only_s: 10.0,
            settle_s: 2.0,
            device_delay_ms: 40,
            seed: 1,
            moved_at_s: None,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct EchoReport {
    /// Far-end-only ERLE after `settle_s`, dB.
    pub erle_db: f64,
    /// First time a 500 ms window of phase 1 reached 20 dB ERLE, s.
    pub converged_s: Option<f64>,
    /// ERLE over the whole of phase 1, dB.
    pub erle_whole_db: f64,
    /// What the canceller reported at the end: its ERLE and the echo path delay it found.
    pub canceller_erle_db: Option<f64>,
    pub delay_ms: Option<i32>,
    /// What its linear stage reported at the end.
    pub linear_erle_db: Option<f64>,
    /// Lag of the near-end output behind its input, ms (added capture latency).
    pub added_latency_ms: f64,
    /// The echo at the microphone relative to the near-end speech in double talk, dB.
    pub echo_to_near_db: f64,
    /// With a moved path: how long after the move a 500 ms window reached 20 dB ERLE again,
    /// s, and ERLE from `settle_s` after the move to the end of phase 1, dB.
    pub reconverged_s: Option<f64>,
    pub moved_erle_db: Option<f64>,
    /// Times the canceller found its path moved and started over.
    pub path_restarts: u32,
}

/// The room's impulse response at 48 kHz.
pub fn impulse_response(config: &RoomConfig) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let rate = f64::from(SAMPLE_RATE);
    let delay = (config.delay_ms / 1e3 * rate).round() as usize;
    let tail = (config.rt60_ms / 1e3 * rate) as usize;
    let mut ir = vec![0.0f64; delay + tail + 1];
    ir[delay] = 1.0;
    // -60 dB over rt60: amplitude decays by 10^(-3 t / rt60).
    let decay = 10f64.powf(-3.0 / tail.max(1) as f64);
    let mut amplitude = 0.3;
    for sample in &mut ir[delay + 1..] {
        *sample = amplitude * (rng.gen::<f64>() * 2.0 - 1.0);
        amplitude *= decay;
    }
    let energy: f64 = ir.iter().map(|s| s * s).sum();
    let gain = 10f64.powf(-config.erl_db / 20.0) / energy.sqrt();
    ir.iter().map(|s| (s * gain) as f32).collect()
}

/// `signal` through `ir`, by FFT (the tail is thousands of taps).
fn convolve(signal: &[f32], ir: &[f32]) -> Vec<f32> {
    let n = (signal.len() + ir.len()).next_power_of_two();
    let mut planner = realfft::RealFftPlanner::<f64>::new();
    let forward = planner.plan_fft_forward(n);
    let inverse = planner.plan_fft_inverse(n);
    let spectrum = |x: &[f32]| {
        let mut input: Vec<f64> = x.iter().map(|s| f64::from(*s)).collect();
        input.resize(n, 0.0);
        let mut out = forward.make_output_vec();
        // Lengths come from the plan, so this cannot fail.
        let _ = forward.process(&mut input, &mut out);
        out
    };
    let (a, b) = (spectrum(signal), spectrum(ir));
    let mut product: Vec<_> = a.iter().zip(&b).map(|(x, y)| x * y).collect();
    let mut out = inverse.make_output_vec();
    let _ = inverse.process(&mut product, &mut out);
    out.truncate(signal.len());
    out.iter().map(|s| (s / n as f64) as f32).collect()
}

/// The near end's output of phases 2 and 3.
pub struct EchoOutput {
    /// What the microphone picked up in phase 2 (near end plus echo): the no-canceller case.
    pub microphone: Vec<f32>,
    pub double_talk: Vec<f32>,
    pub near_alone: Vec<f32>,
}

/// Runs the three phases. `far` and `near` are 48 kHz mono speech; `far` is looped to cover
/// phases 1 and 2.
pub fn run_echo_room(far: &[f32], near: &[f32], config: &RoomConfig) -> (EchoOutput, EchoReport) {
    let rate = SAMPLE_RATE as usize;
    let phase1 = (config.far_only_s * rate as f64) as usize / ECHO_FRAME * ECHO_FRAME;
    let near_len = near.len().div_ceil(ECHO_FRAME) * ECHO_FRAME;
    let total = phase1 + near_len;
    let loudspeaker: Vec<f32> = (0..total)
        .map(|i| {
            if far.is_empty() {
                0.0
            } else {
                far[i % far.len()]
            }
        })
        .collect();
    let mut echo = convolve(&loudspeaker, &impulse_response(config));
    let moved_at = config
        .moved_at_s
        .map(|s| ((s * rate as f64) as usize / ECHO_FRAME * ECHO_FRAME).min(phase1));
    if let Some(at) = moved_at {
        let moved = RoomConfig {
            seed: config.seed + 1,
            delay_ms: config.delay_ms + 10.0,
            ..config.clone()
        };
        echo[at..].copy_from_slice(&convolve(&loudspeaker, &impulse_response(&moved))[at..]);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed ^ 0x6563686f);
    let noise_amp = 10f64.powf(config.noise_dbfs / 20.0) as f32 * 3f32.sqrt();
    let mut noise = move || noise_amp * (rng.gen::<f32>() * 2.0 - 1.0);
    let mut near_padded = near.to_vec();
    near_padded.resize(near_len, 0.0);

    let mut report = EchoReport {
        echo_to_near_db: 10.0 * (energy(&echo[phase1..]) / energy(&near_padded).max(1e-12)).log10(),
        ..EchoReport::default()
    };
    // Phases 1 and 2.
    let mut canceller = EchoCanceller::new();
    canceller.set_device_delay_ms(config.device_delay_ms);
    let mut out = vec![0.0f32; total];
    let mut microphone = vec![0.0f32; total];
    let mut block = [0.0f32; ECHO_FRAME];
    for start in (0..total).step_by(ECHO_FRAME) {
        canceller.render(&loudspeaker[start..start + ECHO_FRAME]);
        for (i, s) in block.iter_mut().enumerate() {
            let near_sample = if start + i >= phase1 {
                near_padded[start + i - phase1]
            } else {
                0.0
            };
            *s = echo[start + i] + near_sample + noise();
        }
        microphone[start..start + ECHO_FRAME].copy_from_slice(&block);
        canceller.process(&mut block);
        out[start..start + ECHO_FRAME].copy_from_slice(&block);
    }
    let stats = canceller.stats();
    report.canceller_erle_db = stats.erle_db;
    report.delay_ms = stats.delay_ms;
    report.path_restarts = stats.path_restarts;
    report.linear_erle_db = stats.linear_erle_db;

    // ERLE over far-end-active blocks of phase 1, before and after any move.
    let settle = (config.settle_s * rate as f64) as usize;
    let meter = ErleWindows {
        loudspeaker: &loudspeaker,
        echo: &echo,
        out: &out,
        far_floor: energy(&loudspeaker[..phase1]) / phase1 as f64 * ECHO_FRAME as f64 * 0.01,
    };
    let before = meter.measure(0..moved_at.unwrap_or(phase1), settle);
    report.erle_db = before.settled_db;
    report.erle_whole_db = before.whole_db;
    report.converged_s = before.converged_s;
    if let Some(at) = moved_at {
        let after = meter.measure(at..phase1, settle);
        report.moved_erle_db = Some(after.settled_db);
        report.reconverged_s = after.converged_s;
    }

    // Phase 3: the same canceller state carries on with the loudspeaker silent.
    let mut near_alone = vec![0.0f32; near_len];
    let silence = [0.0f32; ECHO_FRAME];
    for start in (0..near_len).step_by(ECHO_FRAME) {
        canceller.render(&silence);
        for (i, s) in block.iter_mut().enumerate() {
            *s = near_padded[start + i] + noise();
        }
        canceller.process(&mut block);
        near_alone[start..start + ECHO_FRAME].copy_from_slice(&block);
    }
    report.added_latency_ms = lag_ms(&near_padded, &near_alone);
    let output = EchoOutput {
        microphone: microphone[phase1..phase1 + near.len()].to_vec(),
        double_talk: out[phase1..phase1 + near.len()].to_vec(),
        near_alone: near_alone[..near.len()].to_vec(),
    };
    (output, report)
}

/// ERLE in 10 ms blocks where the far end is active.
struct ErleWindows<'a> {
    loudspeaker: &'a [f32],
    echo: &'a [f32],
    out: &'a [f32],
    /// A block with less far-end energy than this is not counted.
    far_floor: f64,
}

struct ErleMeasured {
    /// From `settle` samples into the span to its end, dB.
    settled_db: f64,
    /// Over the whole span, dB.
    whole_db: f64,
    /// When a 500 ms window first reached 20 dB, s from the span's start.
    converged_s: Option<f64>,
}

impl ErleWindows<'_> {
    fn measure(&self, span: std::ops::Range<usize>, settle: usize) -> ErleMeasured {
        let rate = SAMPLE_RATE as usize;
        let (mut mic_e, mut out_e, mut mic_all, mut out_all) = (0.0, 0.0, 0.0, 0.0);
        let window = rate / 2 / ECHO_FRAME;
        let mut recent: std::collections::VecDeque<(f64, f64)> = Default::default();
        let mut converged_s = None;
        for start in span.clone().step_by(ECHO_FRAME) {
            let range = start..start + ECHO_FRAME;
            if energy(&self.loudspeaker[range.clone()]) < self.far_floor {
                continue;
            }
            let (m, o) = (energy(&self.echo[range.clone()]), energy(&self.out[range]));
            mic_all += m;
            out_all += o;
            if start >= span.start + settle {
                mic_e += m;
                out_e += o;
            }
            recent.push_back((m, o));
            if recent.len() > window {
                recent.pop_front();
            }
            if converged_s.is_none() && recent.len() == window {
                let (wm, wo) = recent
                    .iter()
                    .fold((0.0, 0.0), |(a, b), (m, o)| (a + m, b + o));
                if 10.0 * (wm / wo.max(1e-12)).log10() >= 20.0 {
                    converged_s = Some((start - span.start) as f64 / rate as f64);
                }
            }
        }
        ErleMeasured {
            settled_db: 10.0 * (mic_e / out_e.max(1e-12)).log10(),
            whole_db: 10.0 * (mic_all / out_all.max(1e-12)).log10(),
            converged_s,
        }
    }
}

/// The lag (0–20 ms) at which `output` best matches `input`.
fn lag_ms(input: &[f32], output: &[f32]) -> f64 {
    lag_samples(input, output) as f64 / super::SAMPLES_PER_MS as f64
}

/// The lag in samples (0–20 ms) at which `output` best matches `input`: where their
/// correlation peaks.
pub fn lag_samples(input: &[f32], output: &[f32]) -> usize {
    let max_lag = 20 * super::SAMPLES_PER_MS;
    let n = input.len().min(output.len()).saturating_sub(max_lag);
    (0..=max_lag)
        .map(|lag| {
            let c: f64 = (0..n)
                .step_by(4)
                .map(|i| f64::from(input[i]) * f64::from(output[i + lag]))
                .sum();
            (lag, c)
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map_or(0, |(lag, _)| lag)
}
