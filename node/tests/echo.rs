//! Echo cancellation: the canceller in the synthetic room (ERLE, convergence, delay, added latency),
//! and in the capture chain, where it must run before noise suppression and only when on.

mod common;

use callsign_node::audio::capture::{CaptureChain, CaptureConfig};
use callsign_node::audio::echo::{EchoCanceller, DORMANT_AFTER_MS, ECHO_FRAME, PROCESSING_DELAY};
use callsign_node::audio::echo_room::{impulse_response, lag_samples, run_echo_room, RoomConfig};
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
    // Double talk is not a moved path.
    assert_eq!(report.path_restarts, 0, "{report:?}");
    let delay = report.delay_ms.expect("the canceller finds the delay");
    assert!((delay - 60).abs() <= 1, "{report:?}");
    // In double talk the near end comes through nearly whole: what differs from it (echo
    // left, near end lost) is far below it. A suppressor that ducks the near end while the far
    // end talks does not get near this. (−18.4 dB with each bin's own leak, −17.3 with one
    // leak for all bins, −13.6 with Speex's MDF as the linear stage.)
    let delay = PROCESSING_DELAY;
    let n = near.len() - delay;
    let error: f64 = (0..n)
        .map(|i| f64::from(output.double_talk[i + delay] - near[i]).powi(2))
        .sum();
    let distortion_db = 10.0 * (error / energy(&near[..n])).log10();
    assert!(distortion_db < -16.0, "double talk: {distortion_db:.1} dB");
    // The near end alone comes through at about its level.
    let ratio = energy(&output.near_alone) / energy(&near);
    assert!(
        (0.5..2.0).contains(&ratio),
        "near end kept {ratio:.2} of its energy"
    );
}

#[test]
fn an_echo_louder_than_the_far_end_is_learnt_as_quickly() {
    // A loudspeaker turned up next to the microphone: the echo 6 dB above the far end. The
    // filter's first uncertainty suits a quieter path; it is raised once the path's gain is
    // measured (before: ERLE 13.9 dB after 2 s, 20 dB only after 4.9 s).
    let config = RoomConfig {
        erl_db: -6.0,
        far_only_s: 4.0,
        ..RoomConfig::default()
    };
    let (_, report) = run_echo_room(&speech(), &[0.0; 4800], &config);
    assert!(report.erle_db >= 25.0, "{report:?}");
    assert!(report.converged_s.is_some_and(|s| s <= 2.0), "{report:?}");
    assert_eq!(report.path_restarts, 0, "{report:?}");
}

#[test]
fn a_moved_echo_path_is_learnt_again() {
    let far = speech();
    let near = vec![0.0f32; 48_000];
    let config = RoomConfig {
        far_only_s: 9.0,
        moved_at_s: Some(4.0),
        ..RoomConfig::default()
    };
    let (_, report) = run_echo_room(&far, &near, &config);
    // The old path's estimate adds echo at first; the filter notices within about 250 ms
    // and learns the new path as it learnt the first (20 dB again after 1.4 s, 23.7 dB from
    // 2 s on). Before, the Kalman filter that had learnt its path took the new echo for a
    // near end and never relearnt: ERLE 1 dB.
    assert_eq!(report.path_restarts, 1, "{report:?}");
    assert!(report.reconverged_s.is_some_and(|s| s <= 2.0), "{report:?}");
    assert!(
        report.moved_erle_db.is_some_and(|db| db >= 20.0),
        "{report:?}"
    );
    let delay = report.delay_ms.expect("the canceller finds the new delay");
    assert!((delay - 60).abs() <= 1, "{report:?}");
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

#[test]
fn the_canceller_sleeps_through_silence_and_wakes_converged() {
    let far = speech();
    let delay = 40 * 48;
    let mut canceller = EchoCanceller::new();
    // Returns the echo's energy and what was left of it over `seconds` of far-end speech.
    let talk = |canceller: &mut EchoCanceller, seconds: usize| {
        let mut history = vec![0.0f32; delay];
        let (mut echo_e, mut left_e) = (0.0, 0.0);
        for k in 0..seconds * 100 {
            let start = (k * ECHO_FRAME) % (far.len() - ECHO_FRAME);
            let played = &far[start..start + ECHO_FRAME];
            canceller.render(played);
            history.extend_from_slice(played);
            let mut mic = [0.0f32; ECHO_FRAME];
            for (m, s) in mic.iter_mut().zip(&history[..ECHO_FRAME]) {
                *m = 0.5 * s;
            }
            history.drain(..ECHO_FRAME);
            echo_e += energy(&mic);
            canceller.process(&mut mic);
            left_e += energy(&mic);
        }
        10.0 * (echo_e / left_e.max(1e-12)).log10()
    };
    talk(&mut canceller, 4);
    // The loudspeaker goes quiet: after the echo tail the canceller sleeps, and the
    // microphone passes untouched.
    let silence = [0.0f32; ECHO_FRAME];
    let mut near = [0.0f32; ECHO_FRAME];
    SpeechLike::new(3, 0.3).fill(&mut near);
    for _ in 0..(DORMANT_AFTER_MS / 10 + 100) {
        canceller.render(&silence);
        let mut mic = near;
        let was_dormant = canceller.dormant();
        canceller.process(&mut mic);
        if was_dormant {
            // Passed untouched, only delayed (by one whole sub-frame).
            assert_eq!(PROCESSING_DELAY, ECHO_FRAME);
            assert_eq!(mic, near);
        }
    }
    assert!(canceller.dormant());
    // Sound again: it wakes with what it learnt and cancels at once.
    let erle = talk(&mut canceller, 1);
    assert!(!canceller.dormant());
    assert!(
        erle >= 20.0,
        "{erle:.1} dB in the first second after waking"
    );
}

#[test]
fn asleep_or_awake_the_canceller_delays_the_capture_alike() {
    let far = speech();
    let mut near = vec![0.0f32; 48_000 * 5];
    SpeechLike::new(5, 0.3).fill(&mut near);
    let mut canceller = EchoCanceller::new();
    let mut out = Vec::with_capacity(near.len());
    // Awake for 2 s, asleep from about 2.6 s, awake again from 4 s.
    for (k, chunk) in near.chunks_exact(ECHO_FRAME).enumerate() {
        let t = k * ECHO_FRAME;
        let playing = !(96_000..192_000).contains(&t);
        let played: Vec<f32> = (t..t + ECHO_FRAME)
            .map(|i| if playing { far[i % far.len()] } else { 0.0 })
            .collect();
        canceller.render(&played);
        let mut mic: [f32; ECHO_FRAME] = chunk.try_into().unwrap();
        canceller.process(&mut mic);
        out.extend_from_slice(&mic);
    }
    // Awake, asleep and awake again: the same delay throughout (awake, the suppressor's gains
    // may move the best whole-sample lag by one).
    for (from, to) in [(48_000, 96_000), (144_000, 168_000), (200_000, 230_000)] {
        let l = lag_samples(&near[from..to], &out[from..to + 960]);
        assert!(
            l.abs_diff(PROCESSING_DELAY) <= 1,
            "window {from}..{to}: lag {l}"
        );
    }
}

#[test]
fn samples_that_are_not_numbers_are_heard_as_silence_and_do_not_poison_the_canceller() {
    let far = speech();
    let mut canceller = EchoCanceller::new();
    let mut history = vec![0.0f32; 40 * 48];
    for k in 0..300 {
        let start = (k * ECHO_FRAME) % (far.len() - ECHO_FRAME);
        let mut played = far[start..start + ECHO_FRAME].to_vec();
        if k == 100 {
            played[7] = f32::NAN;
        }
        canceller.render(&played);
        history.extend_from_slice(&far[start..start + ECHO_FRAME]);
        let mut mic = [0.0f32; ECHO_FRAME];
        for (m, s) in mic.iter_mut().zip(&history[..ECHO_FRAME]) {
            *m = 0.5 * s;
        }
        history.drain(..ECHO_FRAME);
        if k == 150 {
            mic[3] = f32::INFINITY;
        }
        canceller.process(&mut mic);
        assert!(mic.iter().all(|s| s.is_finite()), "block {k}");
    }
    assert!(canceller
        .stats()
        .erle_db
        .is_some_and(|db| db.is_finite() && db > 10.0));
}
