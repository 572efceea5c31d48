//! Helpers shared by the node tests: speech fixtures, squads of nodes, link endpoints.
#![allow(dead_code)]

pub mod link;
pub mod squad;

use callsign_node::audio::wav::read_wav;
use std::path::Path;

/// Real speech (espeak-ng, 16 kHz) converted to the engine's 48 kHz.
pub fn speech() -> Vec<f32> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/speech-16k.wav");
    read_wav(&path).expect("speech fixture")
}

/// Normalised cross-correlation of `a` against `b` shifted by `lag` samples.
pub fn correlation_at(a: &[f32], b: &[f32], lag: usize) -> f64 {
    let n = a.len().min(b.len().saturating_sub(lag));
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for i in 0..n {
        let (x, y) = (f64::from(a[i]), f64::from(b[i + lag]));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 {
        return 0.0;
    }
    ab / (aa.sqrt() * bb.sqrt())
}

/// Best correlation over lags `0..max_lag` and the lag it occurs at, measured on two seconds
/// of the reference from its first second (speech throughout; keeps debug-build tests quick).
pub fn best_alignment(reference: &[f32], degraded: &[f32], max_lag: usize) -> (f64, usize) {
    let start = 48_000.min(reference.len() / 4);
    let end = (start + 96_000).min(reference.len());
    let (reference, degraded) = (
        &reference[start..end],
        &degraded[start.min(degraded.len())..],
    );
    (0..max_lag)
        .map(|lag| (correlation_at(reference, degraded, lag), lag))
        .fold((f64::MIN, 0), |best, c| if c.0 > best.0 { c } else { best })
}

/// Energy of the difference between two equal-length signals.
pub fn error_energy(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum()
}

pub fn energy(a: &[f32]) -> f64 {
    a.iter().map(|x| f64::from(*x).powi(2)).sum()
}
