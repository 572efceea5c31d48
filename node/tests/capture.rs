//! Capture chain: resampling from device rates, high-pass, noise suppression, VAD and gates.

mod common;

use callsign_node::audio::capture::{CaptureChain, CaptureConfig, GateMode};
use callsign_node::audio::resample::resample;
use callsign_node::audio::synth::Tone;
use callsign_node::audio::FrameDuration;
use common::*;
use rand::{Rng, SeedableRng};
use std::time::Duration;

struct Collected {
    samples: Vec<f32>,
    transmit: Vec<bool>,
    speech: Vec<f32>,
}

fn run(chain: &mut CaptureChain, input: &[f32], block: usize) -> Collected {
    let mut c = Collected {
        samples: Vec::new(),
        transmit: Vec::new(),
        speech: Vec::new(),
    };
    for chunk in input.chunks(block) {
        chain
            .push(chunk, |f| {
                assert_eq!(f.samples.len(), chain_frame());
                c.samples.extend_from_slice(f.samples);
                c.transmit.push(f.transmit);
                c.speech.push(f.speech_probability);
            })
            .unwrap();
    }
    c
}

fn chain_frame() -> usize {
    FrameDuration::Ms20.samples()
}

fn voice_activation() -> GateMode {
    GateMode::VoiceActivation {
        threshold: 0.6,
        hangover: Duration::from_millis(200),
    }
}

#[test]
fn a_44k1_device_yields_48k_frames_at_the_same_pitch() {
    let mut chain = CaptureChain::new(CaptureConfig {
        device_rate: 44_100,
        noise_suppression: false,
        high_pass_hz: None,
        ..CaptureConfig::default()
    })
    .unwrap();
    // One second of 1 kHz at 44.1 kHz, fed in odd-sized device blocks.
    let input: Vec<f32> = (0..44_100)
        .map(|i| 0.5 * (std::f32::consts::TAU * 1000.0 * i as f32 / 44_100.0).sin())
        .collect();
    let out = run(&mut chain, &input, 441 + 7);
    assert!(
        (45..=50).contains(&out.transmit.len()),
        "{} frames",
        out.transmit.len()
    );
    // Count rising zero crossings over the steady middle: 1000 Hz at 48 kHz is 1 per 48 samples.
    let middle = &out.samples[4800..43_200];
    let crossings = middle
        .windows(2)
        .filter(|w| w[0] < 0.0 && w[1] >= 0.0)
        .count();
    assert!(
        (795..=805).contains(&crossings),
        "{crossings} crossings in 0.8 s"
    );
}

#[test]
fn push_to_talk_gates_on_the_key() {
    let mut chain = CaptureChain::new(CaptureConfig::default()).unwrap();
    let speech = speech();
    let first = run(&mut chain, &speech[..48_000], 480);
    assert!(first.transmit.iter().all(|t| !t));
    chain.set_ptt(true);
    let second = run(&mut chain, &speech[48_000..96_000], 480);
    assert!(second.transmit.iter().all(|t| *t));
}

#[test]
fn voice_activation_opens_on_speech_and_stays_shut_on_noise() {
    let mut chain = CaptureChain::new(CaptureConfig {
        gate: voice_activation(),
        ..CaptureConfig::default()
    })
    .unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let noise: Vec<f32> = (0..96_000).map(|_| rng.gen_range(-0.01..0.01)).collect();
    let quiet = run(&mut chain, &noise, 960);
    let open_on_noise = quiet.transmit.iter().filter(|t| **t).count();
    assert!(
        open_on_noise <= 2,
        "gate opened {open_on_noise} times on noise"
    );

    let speech = speech();
    let talk = run(&mut chain, &speech, 960);
    let open = talk.transmit.iter().filter(|t| **t).count();
    assert!(
        open * 2 > talk.transmit.len(),
        "gate open on only {open}/{} speech frames",
        talk.transmit.len()
    );
    assert!(talk.speech.iter().cloned().fold(0.0, f32::max) > 0.9);
}

#[test]
fn high_pass_removes_dc_and_rumble() {
    let mut chain = CaptureChain::new(CaptureConfig {
        noise_suppression: false,
        ..CaptureConfig::default()
    })
    .unwrap();
    let mut rumble = vec![0.0; 48_000];
    Tone::new(20.0, 0.3).fill(&mut rumble);
    let input: Vec<f32> = rumble.iter().map(|s| s + 0.2).collect();
    let out = run(&mut chain, &input, 960);
    let tail = &out.samples[24_000..];
    let mean = tail.iter().sum::<f32>() / tail.len() as f32;
    assert!(mean.abs() < 0.005, "DC left: {mean}");
    assert!(energy(tail) < energy(&input[24_000..]) * 0.05);
}

#[test]
fn noise_suppression_lowers_steady_noise() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let noise: Vec<f32> = (0..96_000).map(|_| rng.gen_range(-0.05..0.05)).collect();
    let mut plain = CaptureChain::new(CaptureConfig {
        noise_suppression: false,
        ..CaptureConfig::default()
    })
    .unwrap();
    let mut suppressed = CaptureChain::new(CaptureConfig::default()).unwrap();
    // What is sent is denoised: the key is down.
    plain.set_ptt(true);
    suppressed.set_ptt(true);
    let a = run(&mut plain, &noise, 960);
    let b = run(&mut suppressed, &noise, 960);
    assert!(energy(&b.samples[48_000..]) * 10.0 < energy(&a.samples[48_000..]));
}

#[test]
fn offline_resampling_keeps_length_and_alignment() {
    let speech = speech();
    let down = resample(&speech, 48_000, 16_000).unwrap();
    assert_eq!(down.len(), speech.len() / 3);
    let up = resample(&down, 16_000, 48_000).unwrap();
    let (corr, lag) = best_alignment(&speech, &up, 50);
    assert!(corr > 0.95 && lag < 5, "corr {corr} lag {lag}");
}

#[test]
fn agc_brings_quiet_speech_up_toward_its_target() {
    let quiet: Vec<f32> = speech().iter().map(|s| s * 0.1).collect();
    let mut plain = CaptureChain::new(CaptureConfig {
        noise_suppression: false,
        ..CaptureConfig::default()
    })
    .unwrap();
    let mut agc = CaptureChain::new(CaptureConfig {
        noise_suppression: false,
        agc: true,
        ..CaptureConfig::default()
    })
    .unwrap();
    // The AGC follows the VAD, which runs while the key is down.
    plain.set_ptt(true);
    agc.set_ptt(true);
    let a = run(&mut plain, &quiet, 960);
    let b = run(&mut agc, &quiet, 960);
    let tail = a.samples.len() / 2;
    assert!(energy(&b.samples[tail..]) > 4.0 * energy(&a.samples[tail..]));
    assert!(b.samples.iter().all(|s| s.abs() < 1.0));
}

#[test]
fn a_non_finite_sample_does_not_silence_the_chain_and_synthetic_speech_stays_finite() {
    // Thirty seconds of the synthesiser: every sample finite (syllable ends once gave NaN).
    let mut voice = callsign_node::audio::synth::SpeechLike::new(1000, 0.3);
    let mut speech = vec![0.0f32; 48_000 * 30];
    voice.fill(&mut speech);
    assert!(speech.iter().all(|s| s.is_finite()));

    for device_rate in [48_000, 44_100] {
        let mut chain = CaptureChain::new(CaptureConfig {
            device_rate,
            ..CaptureConfig::default()
        })
        .unwrap();
        chain.set_ptt(true);
        let mut input = resample(&speech[..48_000 * 2], 48_000, device_rate).unwrap();
        input[1000] = f32::NAN;
        input[2000] = f32::INFINITY;
        let out = run(&mut chain, &input, 480);
        assert!(out.samples.iter().all(|s| s.is_finite()));
        let tail = &out.samples[out.samples.len() / 2..];
        let peak = tail.iter().fold(0.0f32, |m, s| m.max(s.abs()));
        assert!(
            peak > 0.05,
            "{device_rate} Hz: silent after a NaN (peak {peak})"
        );
    }
}

#[test]
fn an_idle_transmitter_without_analysis_skips_the_chain_until_the_key_goes_down() {
    use callsign_node::audio::codec::EncoderConfig;
    use callsign_node::runtime::voice::{Target, Transmitter, SILENT_DB};
    use callsign_node::runtime::AudioInput;
    let transmitter = |analyse_when_idle| {
        Transmitter::new(
            AudioInput::Synthetic { seed: 3 },
            CaptureConfig {
                analyse_when_idle,
                ..CaptureConfig::default()
            },
            EncoderConfig::default(),
        )
        .unwrap()
    };
    let (mut metered, mut skipping) = (transmitter(true), transmitter(false));
    let mut loudest = [SILENT_DB; 2];
    for _ in 0..50 {
        for (i, t) in [&mut metered, &mut skipping].into_iter().enumerate() {
            assert!(
                t.tick().unwrap().is_none(),
                "nothing is sent with the key up"
            );
            loudest[i] = loudest[i].max(t.level().0);
        }
    }
    assert!(
        loudest[0] > -40.0,
        "the metered input shows speech: {loudest:?}"
    );
    assert_eq!(loudest[1], SILENT_DB, "the skipping one computed nothing");

    skipping.press(Target::Channels(vec![callsign_mesh::charter::ChannelId(1)]));
    let mut sent = 0;
    let mut level = SILENT_DB;
    for _ in 0..50 {
        sent += usize::from(skipping.tick().unwrap().is_some());
        level = level.max(skipping.level().0);
    }
    assert_eq!(sent, 50, "every frame with the key down is encoded");
    assert!(level > -40.0, "and carries speech: {level} dBFS");
    skipping.release();
    let end = skipping.tick().unwrap().expect("the closing frame");
    assert!(end.flags.contains(callsign_mesh::voice::VoiceFlags::END));
    assert!(skipping.tick().unwrap().is_none());
}

#[test]
fn the_denoiser_rests_while_the_key_is_up_and_a_press_starts_without_stale_audio() {
    let mut chain = CaptureChain::new(CaptureConfig::default()).unwrap();
    let speech = speech();
    chain.set_ptt(true);
    let talking = run(&mut chain, &speech[..48_000], 960);
    assert!(energy(&talking.samples) > 0.0);
    // Key up while the talker goes on, then falls silent: after the frame with the end marker
    // nothing is sent, and the denoiser rests (no speech probability).
    chain.set_ptt(false);
    let mut input = speech[48_000..72_000].to_vec();
    input.resize(48_000, 0.0);
    let idle = run(&mut chain, &input, 960);
    assert!(!idle.transmit[1..].iter().any(|t| *t));
    assert!(idle.speech[1..].iter().all(|p| *p == 0.0));
    // A press over silence sends silence: nothing of the speech before the rest is left in
    // the denoiser's window.
    chain.set_ptt(true);
    let pressed = run(&mut chain, &[0.0; 9_600], 960);
    assert!(pressed.transmit.iter().all(|t| *t));
    let peak = pressed.samples.iter().fold(0.0f32, |m, s| m.max(s.abs()));
    assert!(peak < 1e-3, "stale audio after the press: peak {peak}");
}
