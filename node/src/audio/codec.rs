//! Opus voice encoder and per-stream decoder.
//!
//! The decoder side implements the loss policy: a missing frame whose successor has arrived is
//! rebuilt from the successor's in-band FEC (LBRR); otherwise libopus conceals it (PLC); after a
//! long gap the output fades to silence instead of droning on a concealed vowel.

use super::{AudioError, FrameDuration, SAMPLE_RATE};
use opus::{Application, Bitrate, Channels};

/// Largest Opus packet the engine produces (a 60 ms frame at 64 kb/s is ~480 bytes; libopus
/// recommends 4000 as a safe upper bound).
pub const MAX_PACKET: usize = 1275;

/// Encoder settings. Defaults: 24 kb/s, 20 ms, FEC on, DTX off, complexity 9.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EncoderConfig {
    pub bitrate: u32,
    pub frame: FrameDuration,
    pub fec: bool,
    pub dtx: bool,
    pub complexity: u8,
    /// The lowest expected-loss figure handed to the encoder while FEC is on. At 0 % libopus
    /// emits no LBRR at all, so the first losses of a call would be unrecoverable.
    pub fec_min_loss_pct: u8,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        Self {
            bitrate: 24_000,
            frame: FrameDuration::Ms20,
            fec: true,
            dtx: false,
            complexity: 9,
            fec_min_loss_pct: 1,
        }
    }
}

impl EncoderConfig {
    /// Below 32 kb/s with FEC on, audio is kept wideband (8 kHz, SILK-only): in hybrid
    /// super-/fullband mode the SILK layer gets too few bits and libopus silently drops LBRR
    /// at low expected loss, so FEC would be on in name only. Above that, fullband.
    pub fn max_bandwidth(&self) -> opus::Bandwidth {
        if self.fec && self.bitrate < 32_000 {
            opus::Bandwidth::Wideband
        } else {
            opus::Bandwidth::Fullband
        }
    }

    pub fn validate(&self) -> Result<(), AudioError> {
        if !(6_000..=64_000).contains(&self.bitrate) {
            return Err(AudioError::Bitrate(self.bitrate));
        }
        if self.complexity > 10 {
            return Err(AudioError::Complexity(self.complexity));
        }
        Ok(())
    }
}

/// Encodes 48 kHz mono frames to Opus packets (VOIP application).
pub struct VoiceEncoder {
    inner: opus::Encoder,
    config: EncoderConfig,
    expected_loss_pct: u8,
}

impl VoiceEncoder {
    pub fn new(config: EncoderConfig) -> Result<Self, AudioError> {
        config.validate()?;
        let mut inner = opus::Encoder::new(SAMPLE_RATE, Channels::Mono, Application::Voip)?;
        inner.set_bitrate(Bitrate::Bits(config.bitrate as i32))?;
        inner.set_inband_fec(config.fec)?;
        inner.set_dtx(config.dtx)?;
        inner.set_complexity(i32::from(config.complexity))?;
        inner.set_max_bandwidth(config.max_bandwidth())?;
        let mut encoder = Self {
            inner,
            config,
            expected_loss_pct: 0,
        };
        encoder.set_expected_loss(0)?;
        Ok(encoder)
    }

    pub fn config(&self) -> &EncoderConfig {
        &self.config
    }

    /// Feeds the loss the receivers measured back into the encoder, so it spends more bits on
    /// redundancy when the path is bad and none when it is clean.
    pub fn set_expected_loss(&mut self, measured_pct: u8) -> Result<(), AudioError> {
        let pct = if self.config.fec {
            measured_pct.clamp(self.config.fec_min_loss_pct, 50)
        } else {
            measured_pct.min(50)
        };
        self.inner.set_packet_loss_perc(i32::from(pct))?;
        self.expected_loss_pct = pct;
        Ok(())
    }

    pub fn expected_loss_pct(&self) -> u8 {
        self.expected_loss_pct
    }

    /// Changes the bitrate from the next frame on (6000–64000 b/s).
    pub fn set_bitrate(&mut self, bitrate: u32) -> Result<(), AudioError> {
        EncoderConfig {
            bitrate,
            ..self.config.clone()
        }
        .validate()?;
        self.inner.set_bitrate(Bitrate::Bits(bitrate as i32))?;
        self.config.bitrate = bitrate;
        Ok(())
    }

    /// Samples of algorithmic delay the codec adds (decoder output lags the input by this).
    pub fn lookahead(&mut self) -> Result<usize, AudioError> {
        Ok(usize::try_from(self.inner.get_lookahead()?).unwrap_or(0))
    }

    /// Encodes one frame into `out`, returning the packet length. With DTX on, a silent frame
    /// may encode to 1–2 bytes; callers may skip sending those.
    pub fn encode(&mut self, frame: &[f32], out: &mut [u8]) -> Result<usize, AudioError> {
        let expected = self.config.frame.samples();
        if frame.len() != expected {
            return Err(AudioError::FrameLength {
                expected,
                got: frame.len(),
            });
        }
        Ok(self.inner.encode_float(frame, out)?)
    }
}

/// How a frame of decoder output came about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeKind {
    /// Decoded from its own packet.
    Normal,
    /// Rebuilt from the next packet's in-band FEC.
    Fec,
    /// Concealed by libopus PLC.
    Concealed,
    /// Silence: the gap is too long to conceal, or nothing has been received yet.
    Silence,
}

/// Decodes one remote stream. One per sender: Opus decoder state is per stream.
pub struct VoiceDecoder {
    inner: opus::Decoder,
    frame: FrameDuration,
    /// Consecutive samples produced without a real packet.
    gap_samples: usize,
    fade_after_samples: usize,
    malformed: u64,
    received_any: bool,
}

impl VoiceDecoder {
    /// Concealment longer than this fades to silence (PLC on a long gap sounds robotic).
    pub const DEFAULT_FADE_AFTER_MS: usize = 100;

    pub fn new(frame: FrameDuration) -> Result<Self, AudioError> {
        Ok(Self {
            inner: opus::Decoder::new(SAMPLE_RATE, Channels::Mono)?,
            frame,
            gap_samples: 0,
            fade_after_samples: Self::DEFAULT_FADE_AFTER_MS * super::SAMPLES_PER_MS,
            malformed: 0,
            received_any: false,
        })
    }

    pub fn frame(&self) -> FrameDuration {
        self.frame
    }

    /// Packets that libopus refused (counted, then concealed).
    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    fn check_len(&self, out: &[f32]) -> Result<(), AudioError> {
        let expected = self.frame.samples();
        if out.len() != expected {
            return Err(AudioError::FrameLength {
                expected,
                got: out.len(),
            });
        }
        Ok(())
    }

    /// Decodes `packet` into `out` (exactly one frame). A packet libopus rejects, or one that
    /// holds a different duration than this stream's frame, is counted and concealed.
    pub fn decode(&mut self, packet: &[u8], out: &mut [f32]) -> Result<DecodeKind, AudioError> {
        self.check_len(out)?;
        let matches_frame = self
            .inner
            .get_nb_samples(packet)
            .is_ok_and(|n| n == out.len());
        if matches_frame {
            if let Ok(n) = self.inner.decode_float(packet, out, false) {
                if n == out.len() {
                    self.gap_samples = 0;
                    self.received_any = true;
                    return Ok(DecodeKind::Normal);
                }
            }
        }
        self.malformed += 1;
        self.conceal(out)
    }

    /// Rebuilds the missing frame before `next_packet` from its in-band FEC. Without LBRR data
    /// in `next_packet`, libopus falls back to concealment, which is still the right output.
    pub fn recover(
        &mut self,
        next_packet: &[u8],
        out: &mut [f32],
    ) -> Result<DecodeKind, AudioError> {
        self.check_len(out)?;
        if !self.received_any || self.inner.get_nb_samples(next_packet).is_err() {
            return self.conceal(out);
        }
        match self.inner.decode_float(next_packet, out, true) {
            Ok(n) if n == out.len() => {
                self.gap_samples = 0;
                Ok(DecodeKind::Fec)
            }
            _ => {
                self.malformed += 1;
                self.conceal(out)
            }
        }
    }

    /// Produces a frame for a packet that never arrived.
    pub fn conceal(&mut self, out: &mut [f32]) -> Result<DecodeKind, AudioError> {
        self.check_len(out)?;
        if !self.received_any || self.gap_samples >= self.fade_after_samples {
            out.fill(0.0);
            self.gap_samples = self.gap_samples.saturating_add(out.len());
            return Ok(DecodeKind::Silence);
        }
        let concealed = matches!(self.inner.decode_float(&[], out, false), Ok(n) if n == out.len());
        if !concealed {
            out.fill(0.0);
        }
        // Fade linearly across the frame that crosses the limit, so the gap ends without a click.
        let len = out.len();
        let start = self.gap_samples;
        for (i, sample) in out.iter_mut().enumerate() {
            let pos = start + i;
            let gain = if pos >= self.fade_after_samples {
                0.0
            } else {
                let remaining = (self.fade_after_samples - pos) as f32;
                (remaining / len as f32).min(1.0)
            };
            *sample *= gain;
        }
        self.gap_samples = self.gap_samples.saturating_add(len);
        Ok(DecodeKind::Concealed)
    }

    /// Starts a new stream (the sender restarted): forget codec state and the gap.
    pub fn reset(&mut self) -> Result<(), AudioError> {
        self.inner.reset_state()?;
        self.gap_samples = 0;
        self.received_any = false;
        Ok(())
    }
}
