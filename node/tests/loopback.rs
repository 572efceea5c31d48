//! The whole voice path in virtual time: determinism, and what loss, jitter and FEC do.

mod common;

use callsign_node::audio::codec::EncoderConfig;
use callsign_node::audio::impairment::ImpairmentConfig;
use callsign_node::audio::loopback::{run_loopback, LoopbackConfig};
use common::*;
use std::time::Duration;

fn config(loss: f64, fec: bool, seed: u64) -> LoopbackConfig {
    LoopbackConfig {
        encoder: EncoderConfig {
            fec,
            ..EncoderConfig::default()
        },
        impairment: ImpairmentConfig {
            latency: Duration::from_millis(40),
            jitter: Duration::from_millis(8),
            loss,
            reorder: 0.02,
            ..ImpairmentConfig::default()
        },
        seed,
        ..LoopbackConfig::default()
    }
}

#[test]
fn same_seed_same_output_other_seed_other_output() {
    let speech = speech();
    let (a, ra) = run_loopback(&speech, &config(0.1, true, 4)).unwrap();
    let (b, rb) = run_loopback(&speech, &config(0.1, true, 4)).unwrap();
    let (c, _) = run_loopback(&speech, &config(0.1, true, 5)).unwrap();
    assert_eq!(ra, rb);
    assert!(a == b, "same seed must give identical samples");
    assert!(a != c);
}

#[test]
fn clean_path_keeps_the_speech() {
    let speech = speech();
    let (out, report) = run_loopback(&speech, &config(0.0, true, 1)).unwrap();
    assert_eq!(report.lost_in_network, 0);
    assert_eq!(report.receiver.decoded, report.frames);
    assert_eq!(out.len(), speech.len().div_ceil(960) * 960);
    let (corr, _) = best_alignment(&speech, &out, 2000);
    assert!(corr > 0.85, "correlation {corr}");
    // Playout delay: 40 ms network plus a jitter-buffer target between its bounds.
    assert!(
        (60.0..200.0).contains(&report.mean_playout_delay_ms),
        "{report:?}"
    );
}

#[test]
fn fec_turns_isolated_losses_into_recoveries() {
    let speech = speech();
    let (with_fec, fec) = run_loopback(&speech, &config(0.15, true, 2)).unwrap();
    let (without, plain) = run_loopback(&speech, &config(0.15, false, 2)).unwrap();
    assert_eq!(
        fec.lost_in_network, plain.lost_in_network,
        "same seed, same losses"
    );
    assert!(fec.lost_in_network > 30);
    assert!(
        fec.receiver.recovered_fec * 2 > fec.lost_in_network,
        "{fec:?}"
    );
    assert_eq!(plain.receiver.recovered_fec, 0);
    assert!(plain.receiver.concealed >= plain.lost_in_network);
    // And the recovered stream is closer to what the same encoder delivers over a clean path
    // (same seed and delays, so the outputs line up sample for sample).
    let (fec_clean, _) = run_loopback(&speech, &config(0.0, true, 2)).unwrap();
    let (plain_clean, _) = run_loopback(&speech, &config(0.0, false, 2)).unwrap();
    let fec_error = error_energy(&with_fec, &fec_clean);
    let plain_error = error_energy(&without, &plain_clean);
    assert!(
        fec_error * 1.5 < plain_error,
        "FEC error {fec_error:.1} vs PLC {plain_error:.1}"
    );
    // The receiver's measured loss reached the encoder.
    assert!(
        fec.final_expected_loss_pct >= 5,
        "{}",
        fec.final_expected_loss_pct
    );
}

#[test]
fn burst_loss_is_concealed_not_recovered() {
    let speech = speech();
    let mut cfg = config(0.0, true, 3);
    cfg.impairment.burst = Some((0.03, 0.25));
    let (_, report) = run_loopback(&speech, &cfg).unwrap();
    assert!(report.lost_in_network > 10);
    assert!(report.receiver.concealed > 0, "{report:?}");
}
