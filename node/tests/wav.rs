//! WAV source and sink: formats, rates, channel counts, and damaged files.

use callsign_node::audio::synth::Tone;
use callsign_node::audio::wav::{read_wav, WavSink};
use callsign_node::audio::AudioError;
use hound::{SampleFormat, WavSpec, WavWriter};

fn write(path: &std::path::Path, spec: WavSpec, seconds: f32) {
    let mut w = WavWriter::create(path, spec).unwrap();
    let frames = (spec.sample_rate as f32 * seconds) as usize;
    for i in 0..frames {
        let v = 0.5 * (i as f32 * 0.05).sin();
        for _ in 0..spec.channels {
            match (spec.sample_format, spec.bits_per_sample) {
                (SampleFormat::Float, _) => w.write_sample(v).unwrap(),
                (_, 16) => w.write_sample((v * 32_767.0) as i16).unwrap(),
                (_, bits) => w
                    .write_sample((v * ((1 << (bits - 1)) - 1) as f32) as i32)
                    .unwrap(),
            }
        }
    }
    w.finalize().unwrap();
}

#[test]
fn reads_common_formats_as_48k_mono() {
    let dir = tempfile::tempdir().unwrap();
    for (rate, channels, format, bits) in [
        (48_000, 1, SampleFormat::Int, 16),
        (44_100, 2, SampleFormat::Float, 32),
        (16_000, 1, SampleFormat::Int, 24),
        (8_000, 2, SampleFormat::Int, 16),
    ] {
        let path = dir.path().join(format!("{rate}-{channels}-{bits}.wav"));
        let spec = WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: bits,
            sample_format: format,
        };
        write(&path, spec, 0.5);
        let samples = read_wav(&path).unwrap();
        assert!(
            (23_900..=24_000).contains(&samples.len()),
            "{rate} Hz: {}",
            samples.len()
        );
        let peak = samples.iter().fold(0.0f32, |m, s| m.max(s.abs()));
        assert!(
            (0.4..0.6).contains(&peak),
            "{rate} Hz {channels} ch: peak {peak}"
        );
    }
}

#[test]
fn sink_round_trips_through_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tone.wav");
    let mut tone = vec![0.0; 48_000];
    Tone::new(440.0, 0.5).fill(&mut tone);
    let mut sink = WavSink::create(&path, 1).unwrap();
    sink.write(&tone).unwrap();
    sink.finish().unwrap();
    let back = read_wav(&path).unwrap();
    assert_eq!(back.len(), tone.len());
    assert!(tone.iter().zip(&back).all(|(a, b)| (a - b).abs() < 1e-3));
}

#[test]
fn damaged_files_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.wav");
    write(
        &good,
        WavSpec {
            channels: 1,
            sample_rate: 48_000,
            bits_per_sample: 16,
            sample_format: SampleFormat::Int,
        },
        0.1,
    );
    let bytes = std::fs::read(&good).unwrap();
    for (name, data) in [
        ("empty.wav", Vec::new()),
        ("header-only.wav", bytes[..20].to_vec()),
        ("not-wav.wav", b"this is not a wav file at all".to_vec()),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, &data).unwrap();
        let err = read_wav(&path).unwrap_err();
        assert!(
            matches!(err, AudioError::Wav { .. } | AudioError::WavFormat { .. }),
            "{name}: {err}"
        );
        assert!(err.to_string().contains(name), "{err}");
    }
    // Truncated sample data is refused rather than half-read.
    let path = dir.path().join("truncated.wav");
    std::fs::write(&path, &bytes[..bytes.len() - 101]).unwrap();
    assert!(read_wav(&path).is_err());
    assert!(read_wav(&dir.path().join("absent.wav")).is_err());
}
