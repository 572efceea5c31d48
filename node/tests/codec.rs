//! Opus round trip, FEC and DRED recovery versus concealment, loss-adaptive protection, and
//! hostile packets.

mod common;

use callsign_node::audio::codec::{
    DecodeKind, EncoderConfig, VoiceDecoder, VoiceEncoder, DRED_LOSS_FLOOR_PCT, MAX_PACKET,
    MAX_REDUNDANCY_BPS, UNKNOWN_PATH_LOSS_PCT,
};
use callsign_node::audio::libopus::{self, Dred};
use callsign_node::audio::{AudioError, FrameDuration};
use common::*;
use proptest::prelude::*;

fn encode_all(signal: &[f32], config: EncoderConfig) -> Vec<Vec<u8>> {
    encode_at_loss(signal, config, UNKNOWN_PATH_LOSS_PCT)
}

/// Encodes with the receivers reporting `loss_pct` from the start.
fn encode_at_loss(signal: &[f32], config: EncoderConfig, loss_pct: u8) -> Vec<Vec<u8>> {
    let frame = config.frame.samples();
    let mut encoder = VoiceEncoder::new(config).unwrap();
    for _ in 0..3 {
        encoder.set_expected_loss(loss_pct).unwrap();
    }
    let mut out = [0u8; MAX_PACKET];
    signal
        .chunks_exact(frame)
        .map(|pcm| {
            let n = encoder.encode(pcm, &mut out).unwrap();
            out[..n].to_vec()
        })
        .collect()
}

fn decode_all(packets: &[Vec<u8>], frame: FrameDuration) -> Vec<f32> {
    let mut decoder = VoiceDecoder::new(frame).unwrap();
    let mut out = vec![0.0; frame.samples()];
    let mut signal = Vec::new();
    for p in packets {
        assert_eq!(decoder.decode(p, &mut out).unwrap(), DecodeKind::Normal);
        signal.extend_from_slice(&out);
    }
    signal
}

#[test]
fn round_trip_keeps_speech_at_every_frame_size() {
    let speech = speech();
    for frame in FrameDuration::ALL {
        let config = EncoderConfig {
            frame,
            ..EncoderConfig::default()
        };
        let decoded = decode_all(&encode_all(&speech, config), frame);
        let (corr, lag) = best_alignment(&speech, &decoded, 2000);
        assert!(corr > 0.85, "{frame:?}: correlation {corr:.3} at lag {lag}");
        // Opus' algorithmic delay is 6.5 ms at 48 kHz (312 samples).
        assert!((200..600).contains(&lag), "{frame:?}: lag {lag}");
    }
}

#[test]
fn fec_recovers_a_lost_frame_better_than_concealment() {
    let speech = speech();
    let frame = FrameDuration::Ms20;
    let n = frame.samples();
    let packets = encode_all(
        &speech,
        EncoderConfig {
            fec: true,
            ..EncoderConfig::default()
        },
    );
    let clean = decode_all(&packets, frame);

    // Drop one frame at a time in loud (voiced) places; compare the frame each strategy
    // produces with what the clean decode produced there.
    let mut fec_error = 0.0;
    let mut plc_error = 0.0;
    let mut trials = 0;
    for lost in (10..packets.len() - 1).step_by(7) {
        let reference = &clean[lost * n..(lost + 1) * n];
        if energy(reference) < 1.0 {
            continue;
        }
        for use_fec in [true, false] {
            let mut decoder = VoiceDecoder::new(frame).unwrap();
            let mut out = vec![0.0; n];
            for p in &packets[..lost] {
                decoder.decode(p, &mut out).unwrap();
            }
            let kind = if use_fec {
                decoder
                    .recover(&packets[lost + 1], 1, lost as i64 + 1, &mut out)
                    .unwrap()
            } else {
                decoder.conceal(&mut out).unwrap()
            };
            let error = error_energy(reference, &out);
            if use_fec {
                assert_eq!(kind, DecodeKind::Fec);
                fec_error += error;
            } else {
                assert_eq!(kind, DecodeKind::Concealed);
                plc_error += error;
            }
        }
        trials += 1;
    }
    assert!(trials > 20, "only {trials} voiced frames");
    assert!(
        fec_error * 2.0 < plc_error,
        "FEC error {fec_error:.2} is not well below PLC error {plc_error:.2}"
    );
}

#[test]
fn clean_path_packets_carry_no_redundancy_and_lossy_ones_carry_both_kinds() {
    let speech = speech();
    let clean = encode_at_loss(&speech, EncoderConfig::default(), 0);
    let lossy = encode_at_loss(&speech, EncoderConfig::default(), 20);
    let mut dred = Dred::new().unwrap();
    let mut count = |packets: &[Vec<u8>]| {
        let lbrr = packets.iter().filter(|p| libopus::has_lbrr(p)).count();
        let with_dred = packets
            .iter()
            .filter(|p| dred.parse(p, 48_000).unwrap() > 0)
            .count();
        let bytes: usize = packets.iter().map(Vec::len).sum();
        (lbrr, with_dred, bytes * 8 * 50 / packets.len() / 1000)
    };
    let (lbrr, with_dred, kbps) = count(&clean);
    assert_eq!((lbrr, with_dred), (0, 0), "clean path");
    assert!(kbps <= 24, "clean path {kbps} kb/s");
    let (lbrr, with_dred, kbps) = count(&lossy);
    let n = lossy.len();
    assert!(lbrr > n / 2, "LBRR in {lbrr} of {n}");
    assert!(with_dred > n / 2, "DRED in {with_dred} of {n}");
    // VBR meets its target on average; over a short clip it may overshoot by a few percent.
    let most = 24 + MAX_REDUNDANCY_BPS as usize / 1000;
    assert!(kbps * 100 <= most * 105, "{kbps} kb/s, most {most}");
}

#[test]
fn dred_rebuilds_a_burst_that_concealment_fades_out() {
    let speech = speech();
    let frame = FrameDuration::Ms20;
    let n = frame.samples();
    let packets = encode_at_loss(&speech, EncoderConfig::default(), 20);
    let clean = decode_all(&packets, frame);
    // Lose 6 frames (120 ms, past the 100 ms concealment fade) in voiced places. At 24 kb/s
    // plus redundancy libopus affords DRED for the last 135-175 ms of each packet.
    let gap = 6;
    let (mut dred_energy, mut plc_energy, mut reference_energy, mut trials) = (0.0, 0.0, 0.0, 0);
    for start in (20..packets.len() - gap - 1).step_by(37) {
        let reference = &clean[start * n..(start + gap) * n];
        if energy(reference) < 1.0 {
            continue;
        }
        let after = start + gap;
        for rebuild in [true, false] {
            let mut decoder = VoiceDecoder::new(frame).unwrap();
            let mut out = vec![0.0; n];
            for p in &packets[..start] {
                decoder.decode(p, &mut out).unwrap();
            }
            let mut heard = Vec::new();
            for k in 0..gap {
                let kind = if rebuild {
                    decoder
                        .recover(&packets[after], after - (start + k), after as i64, &mut out)
                        .unwrap()
                } else {
                    decoder.conceal(&mut out).unwrap()
                };
                if rebuild && k + 1 < gap {
                    assert_eq!(kind, DecodeKind::Dred, "frame {k} of the gap at {start}");
                }
                heard.extend_from_slice(&out);
            }
            if rebuild {
                dred_energy += energy(&heard[(gap - 2) * n..]);
            } else {
                plc_energy += energy(&heard[(gap - 2) * n..]);
            }
        }
        reference_energy += energy(&reference[(gap - 2) * n..]);
        trials += 1;
    }
    assert!(trials > 5, "only {trials} voiced gaps");
    // The gap's last 40 ms: rebuilt speech is there at about its level, concealment has
    // faded out.
    assert!(
        dred_energy > reference_energy * 0.25 && dred_energy < reference_energy * 4.0,
        "rebuilt {dred_energy:.2} vs reference {reference_energy:.2}"
    );
    assert!(
        plc_energy < dred_energy * 0.3,
        "concealed {plc_energy:.2} vs rebuilt {dred_energy:.2}"
    );
}

#[test]
fn long_gap_fades_to_silence() {
    let speech = speech();
    let frame = FrameDuration::Ms20;
    let packets = encode_all(&speech, EncoderConfig::default());
    let mut decoder = VoiceDecoder::new(frame).unwrap();
    let mut out = vec![0.0; frame.samples()];
    for p in &packets[..60] {
        decoder.decode(p, &mut out).unwrap();
    }
    let mut kinds = Vec::new();
    for _ in 0..10 {
        kinds.push(decoder.conceal(&mut out).unwrap());
    }
    assert_eq!(kinds[0], DecodeKind::Concealed);
    assert_eq!(kinds[9], DecodeKind::Silence);
    assert!(out.iter().all(|s| *s == 0.0));
    // A real packet after the gap decodes normally again.
    assert_eq!(
        decoder.decode(&packets[70], &mut out).unwrap(),
        DecodeKind::Normal
    );
}

#[test]
fn encoder_rejects_bad_settings_and_frames() {
    for bitrate in [0, 5_999, 64_001] {
        let config = EncoderConfig {
            bitrate,
            ..EncoderConfig::default()
        };
        assert!(matches!(
            VoiceEncoder::new(config),
            Err(AudioError::Bitrate(_))
        ));
    }
    let config = EncoderConfig {
        complexity: 11,
        ..EncoderConfig::default()
    };
    assert!(matches!(
        VoiceEncoder::new(config),
        Err(AudioError::Complexity(11))
    ));
    let mut encoder = VoiceEncoder::new(EncoderConfig::default()).unwrap();
    let mut out = [0u8; MAX_PACKET];
    assert!(matches!(
        encoder.encode(&[0.0; 100], &mut out),
        Err(AudioError::FrameLength { .. })
    ));
}

#[test]
fn protection_follows_the_reported_loss_and_is_nothing_on_a_clean_path() {
    let mut encoder = VoiceEncoder::new(EncoderConfig::default()).unwrap();
    // Nobody has reported yet: protected.
    assert_eq!(encoder.expected_loss_pct(), UNKNOWN_PATH_LOSS_PCT);
    assert!(encoder.protection().lbrr);
    // One or two clean reports keep it; the third drops it.
    encoder.set_expected_loss(0).unwrap();
    encoder.set_expected_loss(0).unwrap();
    assert!(encoder.protection().lbrr);
    encoder.set_expected_loss(0).unwrap();
    let clean = encoder.protection();
    assert_eq!(clean.loss_pct, 0);
    assert!(!clean.lbrr);
    assert_eq!(clean.dred_ms, 0);
    assert_eq!(clean.bitrate, 24_000);
    encoder.set_expected_loss(30).unwrap();
    let lossy = encoder.protection();
    assert_eq!(lossy.loss_pct, 30);
    assert!(lossy.lbrr);
    assert_eq!(lossy.dred_ms, 1000);
    assert_eq!(lossy.bitrate, 24_000 + MAX_REDUNDANCY_BPS);
    encoder.set_expected_loss(90).unwrap();
    assert_eq!(encoder.expected_loss_pct(), 50);
    // With DRED on, libopus is told enough loss to code DRED at all, whatever was measured.
    let config = EncoderConfig::default();
    assert_eq!(config.protection(1).loss_pct, DRED_LOSS_FLOOR_PCT);
    assert_eq!(config.protection(1).bitrate, 24_000 + MAX_REDUNDANCY_BPS);
    assert_eq!(config.protection(1).dred_ms, 200);
    assert_eq!(config.protection(30).loss_pct, 30);
    // Without DRED the overhead grows with the loss, within its stated maximum.
    let lbrr_only = EncoderConfig {
        dred: false,
        ..EncoderConfig::default()
    };
    assert_eq!(lbrr_only.protection(1).bitrate, 38_400);
    assert_eq!(lbrr_only.protection(5).bitrate, 48_000);
    assert_eq!(
        lbrr_only.protection(15).bitrate,
        24_000 + MAX_REDUNDANCY_BPS
    );
    let wide = EncoderConfig {
        bitrate: 48_000,
        ..EncoderConfig::default()
    };
    assert_eq!(wide.protection(15).bitrate, 64_000);
    // The legacy path keeps its 1 % floor and adds nothing.
    let legacy = EncoderConfig::default().legacy();
    assert_eq!(legacy.protection(0).loss_pct, 1);
    assert_eq!(legacy.protection(30).bitrate, 24_000);
    assert_eq!(legacy.protection(30).dred_ms, 0);
    let mut plain = VoiceEncoder::new(EncoderConfig {
        fec: false,
        ..EncoderConfig::default()
    })
    .unwrap();
    plain.set_expected_loss(0).unwrap();
    assert_eq!(plain.expected_loss_pct(), 0);
}

#[test]
fn a_lossy_second_is_remembered_through_the_quiet_seconds_after_it() {
    let mut encoder = VoiceEncoder::new(EncoderConfig::default()).unwrap();
    encoder.set_expected_loss(20).unwrap();
    // Bursty paths lose little in the seconds between bursts: protection stays up for them.
    for _ in 0..5 {
        encoder.set_expected_loss(2).unwrap();
    }
    let held = encoder.expected_loss_pct();
    assert!((10..20).contains(&held), "held {held} %");
    assert_eq!(encoder.protection().dred_ms, 500);
    // A worse report is followed at once.
    encoder.set_expected_loss(30).unwrap();
    assert_eq!(encoder.expected_loss_pct(), 30);
    // And a clean path drops it all after three clean reports, not slowly.
    for _ in 0..3 {
        encoder.set_expected_loss(0).unwrap();
    }
    assert_eq!(encoder.expected_loss_pct(), 0);
    assert_eq!(encoder.protection().bitrate, 24_000);
}

#[test]
fn a_packet_of_another_frame_size_is_counted_and_concealed() {
    let speech = speech();
    let packets40 = encode_all(
        &speech,
        EncoderConfig {
            frame: FrameDuration::Ms40,
            ..EncoderConfig::default()
        },
    );
    let mut decoder = VoiceDecoder::new(FrameDuration::Ms20).unwrap();
    let mut out = vec![0.0; FrameDuration::Ms20.samples()];
    let kind = decoder.decode(&packets40[5], &mut out).unwrap();
    assert_ne!(kind, DecodeKind::Normal);
    assert_eq!(decoder.malformed(), 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_packets_never_panic(packets in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..400), 1..8)) {
        let mut decoder = VoiceDecoder::new(FrameDuration::Ms20).unwrap();
        let mut out = vec![0.0; FrameDuration::Ms20.samples()];
        for (i, p) in packets.iter().enumerate() {
            let kind = if i % 2 == 0 { decoder.decode(p, &mut out) } else { decoder.recover(p, 1 + i % 3, i as i64, &mut out) };
            prop_assert!(kind.is_ok());
            prop_assert!(out.iter().all(|s| s.is_finite()));
        }
    }
}

#[test]
fn dtx_shrinks_silence() {
    let silence = vec![0.0f32; 960 * 50];
    let packets = encode_all(
        &silence,
        EncoderConfig {
            dtx: true,
            ..EncoderConfig::default()
        },
    );
    let tail: usize = packets[25..].iter().map(Vec::len).sum();
    assert!(tail <= 25 * 3, "{tail} bytes for 25 silent DTX frames");
}
