//! The audio engine: capture → encode → (network) → jitter buffer → decode → mix → playback.
//!
//! Internal format: 48 kHz mono `f32` in [-1, 1]; playback blocks are interleaved stereo.
//! Every stage is driven by media timestamps or a `now` passed in, so real devices and the
//! simulator's virtual clock run the same code.

pub mod capture;
pub mod clock;
pub mod codec;
pub mod device_follow;
pub mod dsp;
pub mod echo;
pub mod echo_filter;
pub mod echo_room;
pub mod echo_suppress;
pub mod feed;
pub mod impairment;
pub mod jitter;
pub mod libopus;
pub mod loopback;
pub mod mixer;
pub mod realtime;
pub mod resample;
pub mod stream;
pub mod synth;
pub mod wav;

#[cfg(feature = "device-audio")]
pub mod device;

use std::time::Duration;

/// A sound card, by name as the host lists it, or the system default.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Device {
    #[default]
    Default,
    Named(String),
}

impl Device {
    /// The name, `None` for the default.
    pub fn name(&self) -> Option<&str> {
        match self {
            Self::Default => None,
            Self::Named(n) => Some(n),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Default => f.write_str("the default device"),
            Self::Named(n) => f.write_str(n),
        }
    }
}

/// The engine's internal sample rate.
pub const SAMPLE_RATE: u32 = 48_000;

/// Samples per millisecond at [`SAMPLE_RATE`].
pub const SAMPLES_PER_MS: usize = (SAMPLE_RATE / 1000) as usize;

/// One Opus frame's duration. Opus also allows 2.5/5/80/100/120 ms, but voice over a lossy
/// network wants 10–60 ms: shorter wastes headers, longer loses too much per lost packet.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum FrameDuration {
    Ms10,
    #[default]
    Ms20,
    Ms40,
    Ms60,
}

impl FrameDuration {
    /// Every supported duration.
    pub const ALL: [FrameDuration; 4] = [Self::Ms10, Self::Ms20, Self::Ms40, Self::Ms60];

    /// From milliseconds; `None` for durations the engine does not use.
    pub fn from_ms(ms: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.millis() == ms)
    }

    pub const fn millis(self) -> u32 {
        match self {
            Self::Ms10 => 10,
            Self::Ms20 => 20,
            Self::Ms40 => 40,
            Self::Ms60 => 60,
        }
    }

    /// Samples per frame at [`SAMPLE_RATE`].
    pub const fn samples(self) -> usize {
        self.millis() as usize * SAMPLES_PER_MS
    }

    pub const fn duration(self) -> Duration {
        Duration::from_millis(self.millis() as u64)
    }
}

/// Errors from the audio engine.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error(transparent)]
    Opus(#[from] libopus::OpusError),
    #[error("bitrate {0} b/s is outside 6000..=64000")]
    Bitrate(u32),
    #[error("complexity {0} is outside 0..=10")]
    Complexity(u8),
    #[error("frame has {got} samples, expected {expected}")]
    FrameLength { expected: usize, got: usize },
    #[error("resampler: {0}")]
    Resampler(String),
    #[error("wav file {path}: {source}")]
    Wav {
        path: std::path::PathBuf,
        #[source]
        source: hound::Error,
    },
    #[error("wav file {path}: {reason}")]
    WavFormat {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("audio device: {0}")]
    Device(String),
    #[error("audio settings: {0}")]
    Settings(String),
}

/// Converts a gain in decibels to a linear factor.
pub fn db_to_gain(db: f32) -> f32 {
    10f32.powf(db / 20.0)
}
