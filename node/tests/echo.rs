//! Echo cancellation: AEC3 in the synthetic room (ERLE, convergence, delay, added latency),
//! and in the capture chain, where it must run before noise suppression and only when on.

mod common;

use callsign_node::audio::capture::{CaptureChain, CaptureConfig};
use callsign_node::audio::echo_room::{impulse_response, run_echo_room, RoomConfig};
use callsign_node::audio::synth::SpeechLike;
use common::*;

#[test]
fn the_canceller_removes_the_room_echo_quickly_without_adding_latency() {
    let far = speech();
    let mut near = vec![0.0f32; 48_000 * 2];
    SpeechLike::new(9, 0.4).fill(&mut near);
    let config = RoomConfig {
        delay_ms: 60.0,
        far_only_s: 5.0,
        ..RoomConfig::default()
    };
    let (output, report) = run_echo_room(&far, &near, &config);
    assert!(report.erle_db >= 25.0, "{report:?}");
    assert!(report.converged_s.is_some_and(|s| s <= 2.0), "{report:?}");
    assert!(report.added_latency_ms <= 10.0, "{report:?}");
    let delay = report.aec3_delay_ms.expect("AEC3 estimates the delay");
    assert!((delay - 60).abs() <= 6, "{report:?}");
    // The near end alone comes through at about its level.
    let ratio = energy(&output.near_alone) / energy(&near);
    assert!(
        (0.5..2.0).contains(&ratio),
        "near end kept {ratio:.2} of its energy"
    );
}

#[test]
fn the_room_response_has_the_asked_delay_and_echo_return_loss() {
    let config = RoomConfig::default();
    let ir = impulse_response(&config);
    let first = ir.iter().position(|h| h.abs() > 0.0).unwrap();
    assert_eq!(first, 50 * 48);
    let erl = -10.0 * energy(&ir).log10();
    assert!((erl - config.erl_db).abs() < 0.01, "ERL {erl:.2} dB");
}

/// Far-end speech echoing 40 ms later at −6 dB into a capture chain; returns the chain's output
/// energy over the last two seconds against the echo's there.
fn chain_echo_left(echo_cancellation: bool) -> f64 {
    let far = speech();
    let mut chain = CaptureChain::new(CaptureConfig {
        noise_suppression: false,
        ..CaptureConfig::default()
    })
    .unwrap();
    chain.set_echo_cancellation(echo_cancellation);
    let block = 960;
    let delay = 40 * 48;
    let (mut echo_energy, mut out_energy) = (0.0, 0.0);
    let blocks = far.len() / block;
    for k in 0..blocks {
        let stereo: Vec<f32> = far[k * block..(k + 1) * block]
            .iter()
            .flat_map(|s| [*s, *s])
            .collect();
        chain.render_reference(&stereo);
        let mic: Vec<f32> = (k * block..(k + 1) * block)
            .map(|i| {
                if i >= delay {
                    0.5 * far[i - delay]
                } else {
                    0.0
                }
            })
            .collect();
        let measure = k + 100 >= blocks;
        chain
            .push(&mic, |frame| {
                if measure {
                    out_energy += energy(frame.samples);
                }
            })
            .unwrap();
        if measure {
            echo_energy += energy(&mic);
        }
    }
    assert!(echo_energy > 0.0);
    10.0 * (echo_energy / out_energy.max(1e-12)).log10()
}

#[test]
fn the_capture_chain_cancels_echo_only_when_asked() {
    let on = chain_echo_left(true);
    let off = chain_echo_left(false);
    assert!(on >= 20.0, "with cancellation the echo drops {on:.1} dB");
    assert!(off.abs() < 3.0, "without it the echo passes: {off:.1} dB");
}
