//! Mixer: full scale is never exceeded, volume/pan/mute apply, ducking follows activity.

use callsign_mesh::charter::ChannelId;
use callsign_node::audio::mixer::{ChannelMix, DuckRule, MixInput, Mixer, SourceMix};
use callsign_node::audio::synth::Tone;
use proptest::prelude::*;

const N: usize = 960;
const COMMAND: ChannelId = ChannelId(1);
const FLIGHT: ChannelId = ChannelId(2);

fn tone(freq: f32, amplitude: f32) -> Vec<f32> {
    let mut out = vec![0.0; N];
    Tone::new(freq, amplitude).fill(&mut out);
    out
}

fn peak(stereo: &[f32], side: usize) -> f32 {
    stereo
        .iter()
        .skip(side)
        .step_by(2)
        .fold(0.0, |m, s| m.max(s.abs()))
}

#[test]
fn sixteen_loud_streams_stay_below_full_scale() {
    let mut mixer = Mixer::new();
    let streams: Vec<Vec<f32>> = (0..16)
        .map(|i| tone(200.0 + 10.0 * i as f32, 1.0))
        .collect();
    let inputs: Vec<MixInput> = streams
        .iter()
        .enumerate()
        .map(|(i, s)| MixInput {
            channel: ChannelId(i as u64 % 3),
            source: i as u64,
            samples: s,
        })
        .collect();
    let mut out = vec![0.0; 2 * N];
    mixer.mix(&inputs, &mut out).unwrap();
    assert!(out.iter().all(|s| s.abs() < 1.0));
    assert!(peak(&out, 0) > 0.9, "the limiter is soft, not a mute");
}

#[test]
fn quiet_signals_pass_unchanged_through_the_limiter() {
    let mut mixer = Mixer::new();
    let s = tone(440.0, 0.3);
    let mut out = vec![0.0; 2 * N];
    mixer
        .mix(
            &[MixInput {
                channel: COMMAND,
                source: 1,
                samples: &s,
            }],
            &mut out,
        )
        .unwrap();
    let (l, r) = (out[200], out[201]);
    let centre = std::f32::consts::FRAC_1_SQRT_2;
    assert!((l - s[100] * centre).abs() < 1e-6 && (r - s[100] * centre).abs() < 1e-6);
}

#[test]
fn volume_pan_and_mute_apply_per_channel() {
    let mut mixer = Mixer::new();
    mixer.set_channel(
        COMMAND,
        ChannelMix {
            volume: 0.5,
            pan: -1.0,
            ..ChannelMix::default()
        },
    );
    mixer.set_channel(
        FLIGHT,
        ChannelMix {
            muted: true,
            ..ChannelMix::default()
        },
    );
    let a = tone(300.0, 0.4);
    let b = tone(500.0, 0.4);
    let mut out = vec![0.0; 2 * N];
    mixer
        .mix(
            &[
                MixInput {
                    channel: COMMAND,
                    source: 1,
                    samples: &a,
                },
                MixInput {
                    channel: FLIGHT,
                    source: 2,
                    samples: &b,
                },
            ],
            &mut out,
        )
        .unwrap();
    assert!((peak(&out, 0) - 0.2).abs() < 0.01, "left {}", peak(&out, 0));
    assert!(
        peak(&out, 1) < 1e-6,
        "hard-left pan leaves the right silent"
    );
}

#[test]
fn source_pan_overrides_channel_pan_for_positional_audio() {
    let mut mixer = Mixer::new();
    mixer.set_source(
        9,
        SourceMix {
            gain: 0.5,
            pan: Some(1.0),
        },
    );
    let a = tone(300.0, 0.4);
    let mut out = vec![0.0; 2 * N];
    mixer
        .mix(
            &[MixInput {
                channel: COMMAND,
                source: 9,
                samples: &a,
            }],
            &mut out,
        )
        .unwrap();
    assert!(peak(&out, 0) < 1e-6);
    assert!((peak(&out, 1) - 0.2).abs() < 0.01);
}

#[test]
fn command_ducks_flight_while_active_and_releases_after() {
    let mut mixer = Mixer::new();
    mixer.set_channel(COMMAND, ChannelMix::default());
    mixer.set_channel(FLIGHT, ChannelMix::default());
    mixer.set_duck_rules(vec![DuckRule {
        when_active: COMMAND,
        ducked: FLIGHT,
        db: 12.0,
    }]);
    let flight = tone(500.0, 0.3);
    let mut out = vec![0.0; 2 * N];
    let mut command = vec![0.0; N];
    Tone::new(200.0, 0.3).fill(&mut command);
    for _ in 0..20 {
        mixer
            .mix(
                &[
                    MixInput {
                        channel: COMMAND,
                        source: 1,
                        samples: &command,
                    },
                    MixInput {
                        channel: FLIGHT,
                        source: 2,
                        samples: &flight,
                    },
                ],
                &mut out,
            )
            .unwrap();
    }
    let ducked = mixer.duck_gain(FLIGHT);
    assert!((ducked - 0.251).abs() < 0.01, "12 dB duck, got {ducked}");
    assert_eq!(mixer.duck_gain(COMMAND), 1.0);
    // Command goes quiet: Flight comes back up.
    for _ in 0..80 {
        mixer
            .mix(
                &[MixInput {
                    channel: FLIGHT,
                    source: 2,
                    samples: &flight,
                }],
                &mut out,
            )
            .unwrap();
    }
    assert!(mixer.duck_gain(FLIGHT) > 0.99);
}

#[test]
fn mismatched_block_sizes_are_an_error() {
    let mut mixer = Mixer::new();
    let short = vec![0.0; 10];
    let mut out = vec![0.0; 2 * N];
    assert!(mixer
        .mix(
            &[MixInput {
                channel: COMMAND,
                source: 1,
                samples: &short
            }],
            &mut out
        )
        .is_err());
}

#[test]
fn listen_only_channels_refuse_transmit() {
    let mut mixer = Mixer::new();
    mixer.set_channel(
        COMMAND,
        ChannelMix {
            listen_only: true,
            ..ChannelMix::default()
        },
    );
    assert!(!mixer.may_transmit(COMMAND));
    assert!(mixer.may_transmit(FLIGHT));
}

proptest! {
    #[test]
    fn never_exceeds_full_scale(
        amplitudes in prop::collection::vec(-8.0f32..8.0, 1..16),
        volumes in prop::collection::vec(0.0f32..3.0, 3),
        pans in prop::collection::vec(-2.0f32..2.0, 3),
    ) {
        let mut mixer = Mixer::new();
        for (i, (v, p)) in volumes.iter().zip(&pans).enumerate() {
            mixer.set_channel(ChannelId(i as u64), ChannelMix { volume: *v, pan: *p, ..ChannelMix::default() });
        }
        let streams: Vec<Vec<f32>> = amplitudes.iter().map(|a| vec![*a; N]).collect();
        let inputs: Vec<MixInput> = streams.iter().enumerate()
            .map(|(i, s)| MixInput { channel: ChannelId(i as u64 % 4), source: i as u64, samples: s })
            .collect();
        let mut out = vec![0.0; 2 * N];
        mixer.mix(&inputs, &mut out).unwrap();
        prop_assert!(out.iter().all(|s| s.is_finite() && s.abs() < 1.0));
    }
}
