//! WAV file source and sink (hound). Sources are converted to the engine's 48 kHz mono;
//! sinks write 16-bit PCM at 48 kHz, mono or stereo.

use super::resample::resample;
use super::{AudioError, SAMPLE_RATE};
use hound::{SampleFormat, WavReader, WavSpec, WavWriter};
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

/// Longest input accepted (an hour at 48 kHz), so a corrupt header cannot ask for gigabytes.
const MAX_SAMPLES: u64 = 3600 * SAMPLE_RATE as u64 * 8;

/// Reads a WAV file of any common PCM/float format, downmixes to mono, resamples to 48 kHz.
pub fn read_wav(path: &Path) -> Result<Vec<f32>, AudioError> {
    let wav_err = |source| AudioError::Wav {
        path: path.to_owned(),
        source,
    };
    let format_err = |reason: String| AudioError::WavFormat {
        path: path.to_owned(),
        reason,
    };
    let reader = WavReader::open(path).map_err(wav_err)?;
    let spec = reader.spec();
    if spec.channels == 0 || spec.sample_rate == 0 {
        return Err(format_err("zero channels or sample rate".into()));
    }
    if u64::from(reader.len()) > MAX_SAMPLES {
        return Err(format_err(format!("{} samples is too long", reader.len())));
    }
    let interleaved: Vec<f32> = match (spec.sample_format, spec.bits_per_sample) {
        (SampleFormat::Float, 32) => reader
            .into_samples::<f32>()
            .collect::<Result<_, _>>()
            .map_err(wav_err)?,
        (SampleFormat::Int, bits @ 1..=32) => {
            let scale = 1.0 / (1u64 << (bits - 1)) as f32;
            reader
                .into_samples::<i32>()
                .map(|s| s.map(|v| v as f32 * scale))
                .collect::<Result<_, _>>()
                .map_err(wav_err)?
        }
        (format, bits) => {
            return Err(format_err(format!(
                "unsupported sample format {format:?} with {bits} bits"
            )))
        }
    };
    let channels = usize::from(spec.channels);
    let mono: Vec<f32> = interleaved
        .chunks_exact(channels)
        .map(|frame| frame.iter().sum::<f32>() / channels as f32)
        .collect();
    resample(&mono, spec.sample_rate, SAMPLE_RATE)
}

/// Writes 48 kHz 16-bit PCM.
pub struct WavSink {
    writer: WavWriter<BufWriter<File>>,
    path: PathBuf,
}

impl WavSink {
    pub fn create(path: &Path, channels: u16) -> Result<Self, AudioError> {
        let spec = WavSpec {
            channels,
            sample_rate: SAMPLE_RATE,
            bits_per_sample: 16,
            sample_format: SampleFormat::Int,
        };
        let writer = WavWriter::create(path, spec).map_err(|source| AudioError::Wav {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            writer,
            path: path.to_owned(),
        })
    }

    /// Appends samples (interleaved when stereo), clamped to full scale.
    pub fn write(&mut self, samples: &[f32]) -> Result<(), AudioError> {
        for s in samples {
            let v = (s.clamp(-1.0, 1.0) * 32_767.0).round() as i16;
            self.writer
                .write_sample(v)
                .map_err(|source| AudioError::Wav {
                    path: self.path.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Writes the header's final lengths and flushes.
    pub fn finish(self) -> Result<(), AudioError> {
        let path = self.path;
        self.writer
            .finalize()
            .map_err(|source| AudioError::Wav { path, source })
    }
}
