//! Sample-rate conversion to and from the engine's 48 kHz (rubato's FFT resampler).

use super::AudioError;
use rubato::{FftFixedIn, Resampler as _};

/// A streaming mono resampler with preallocated buffers: push any number of samples, get the
/// converted ones appended to a caller buffer. Input is processed in fixed 10 ms chunks.
pub struct StreamResampler {
    inner: FftFixedIn<f32>,
    pending: Vec<f32>,
    chunk: usize,
    out: Vec<Vec<f32>>,
}

impl StreamResampler {
    pub fn new(from_hz: u32, to_hz: u32) -> Result<Self, AudioError> {
        let chunk = (from_hz as usize / 100).max(1);
        let inner = FftFixedIn::new(from_hz as usize, to_hz as usize, chunk, 1, 1)
            .map_err(|e| AudioError::Resampler(e.to_string()))?;
        let out = vec![vec![0.0; inner.output_frames_max()]];
        Ok(Self {
            inner,
            pending: Vec::with_capacity(chunk * 2),
            chunk,
            out,
        })
    }

    /// Samples of delay the resampler adds at the output rate.
    pub fn delay(&self) -> usize {
        rubato::Resampler::output_delay(&self.inner)
    }

    /// Converts `input`, appending whole output chunks to `output`.
    pub fn process(&mut self, mut input: &[f32], output: &mut Vec<f32>) -> Result<(), AudioError> {
        while !input.is_empty() {
            let take = (self.chunk - self.pending.len()).min(input.len());
            self.pending.extend_from_slice(&input[..take]);
            input = &input[take..];
            if self.pending.len() == self.chunk {
                let (_, produced) = self
                    .inner
                    .process_into_buffer(&[&self.pending[..]], &mut self.out, None)
                    .map_err(|e| AudioError::Resampler(e.to_string()))?;
                output.extend_from_slice(&self.out[0][..produced]);
                self.pending.clear();
            }
        }
        Ok(())
    }
}

/// Converts a whole signal, compensating the resampler's delay so the output lines up with the
/// input and has the expected length.
pub fn resample(input: &[f32], from_hz: u32, to_hz: u32) -> Result<Vec<f32>, AudioError> {
    if from_hz == to_hz {
        return Ok(input.to_vec());
    }
    let mut resampler = StreamResampler::new(from_hz, to_hz)?;
    let expected = (input.len() as u64 * u64::from(to_hz) / u64::from(from_hz)) as usize;
    let delay = resampler.delay();
    let mut output = Vec::with_capacity(expected + delay + resampler.chunk * 2);
    resampler.process(input, &mut output)?;
    // Flush with silence until the delayed tail is out.
    let silence = vec![0.0; resampler.chunk];
    while output.len() < expected + delay {
        resampler.process(&silence, &mut output)?;
    }
    output.drain(..delay);
    output.truncate(expected);
    Ok(output)
}
