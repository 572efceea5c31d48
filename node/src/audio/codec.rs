//! Opus voice encoder and per-stream decoder (libopus 1.6, see [`super::libopus`]).
//!
//! The encoder protects the stream only as much as the path needs: on a clean path (no loss in
//! three reports in a row) it spends no bits on redundancy; while receivers report loss it
//! turns on in-band FEC (LBRR, the previous frame again at a lower rate) and DRED (deep
//! redundancy: a neural coding of up to a second of past speech in a few kb/s), and raises the
//! bitrate so the primary stream keeps its bits (libopus takes both kinds of redundancy out of
//! the bitrate it is given): by a tenth of the bitrate per point of loss plus a half, at most
//! 1.5 times the bitrate and at most [`MAX_REDUNDANCY_BPS`].
//!
//! Loss comes in bursts, and a once-a-second loss figure cannot tell a burst from scattered
//! losses, so two things keep DRED there for the burst that follows a quiet second: the loss
//! estimate follows a worse report at once but lets go of it slowly ([`LOSS_RELEASE`] per
//! report), and with DRED on the encoder is told at least [`DRED_LOSS_FLOOR_PCT`] (libopus
//! sizes DRED from the expected loss and codes none below about 11 %).
//!
//! The decoder fills a missing frame from what is there, best first: the next packet's LBRR
//! when that packet is the very next frame, else DRED from the nearest later packet, else
//! deep packet-loss concealment (the PLC model, decoder complexity ≥ 5); after a long
//! concealed gap the output fades to silence instead of droning on a concealed vowel.

use super::libopus::{self, Bandwidth, Dred};
use super::{AudioError, FrameDuration, SAMPLE_RATE};

/// Largest Opus packet the engine produces (a 60 ms frame at 64 kb/s is ~480 bytes, plus
/// DRED; libopus recommends 4000 as a safe upper bound, 1275 is the largest single frame).
pub const MAX_PACKET: usize = 1275;

/// The most the encoder adds to the configured bitrate for redundancy (a 24 kb/s channel with
/// DRED asks libopus for 60 kb/s whenever it protects; libopus's DRED estimate may overshoot
/// that by a few percent).
pub const MAX_REDUNDANCY_BPS: u32 = 36_000;

/// The most history DRED carries (1 s at 48 kHz).
const DRED_MAX_HISTORY: usize = SAMPLE_RATE as usize;

/// Loss-free reports in a row (about a second each) before the encoder stops protecting.
pub const CLEAN_REPORTS_TO_DROP: u32 = 3;

/// The loss assumed before any receiver has reported.
pub const UNKNOWN_PATH_LOSS_PCT: u8 = 5;

/// The expected loss libopus is told while DRED is on. libopus gives DRED 3 % of the bitrate
/// above 20 kb/s per point of expected loss and codes none unless that buys two 40 ms chunks:
/// at 60 kb/s that takes 11 %; 15 % buys four (160 ms, longer than all but 4 % of the bursts of
/// a path whose bursts average 60 ms). Measured on espeak speech in 60 ms Gilbert–Elliott
/// bursts averaging 10 % loss, eight loss seeds (with [`LOSS_RELEASE`]): mean PESQ 2.79 → 3.09
/// (one phrase) and 2.96 → 3.36 (another); scattered 5 % loss 4.01 → 3.85 and 3.90 → 4.07,
/// 15 % within 0.15 either way.
pub const DRED_LOSS_FLOOR_PCT: u8 = 15;

/// How much of the loss estimate one better report lets go of: a burst's second is remembered
/// for several seconds, since the next burst is likely to come soon.
pub const LOSS_RELEASE: f32 = 0.1;

/// Decoder complexity: 5 enables deep PLC, 6 LACE and 7 NoLACE speech enhancement (OSCE).
pub const DECODER_COMPLEXITY: u8 = 6;

/// Encoder settings. Defaults: 24 kb/s, 20 ms, loss protection on, DTX off, complexity 9.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EncoderConfig {
    pub bitrate: u32,
    pub frame: FrameDuration,
    /// Loss protection: in-band FEC and DRED, sized from the receivers' loss reports.
    pub fec: bool,
    pub dtx: bool,
    pub complexity: u8,
    /// The lowest expected-loss figure handed to the encoder while protection is on. 0 spends
    /// nothing on a clean path (the first losses are then concealed, not rebuilt).
    pub fec_min_loss_pct: u8,
    /// DRED on top of FEC when loss is reported.
    #[serde(default = "dred_default")]
    pub dred: bool,
    /// The most added to `bitrate` for redundancy when loss is reported.
    #[serde(default = "redundancy_bps_default")]
    pub redundancy_bps: u32,
}

fn dred_default() -> bool {
    true
}

fn redundancy_bps_default() -> u32 {
    MAX_REDUNDANCY_BPS
}

impl Default for EncoderConfig {
    fn default() -> Self {
        Self {
            bitrate: 24_000,
            frame: FrameDuration::Ms20,
            fec: true,
            dtx: false,
            complexity: 9,
            fec_min_loss_pct: 0,
            dred: true,
            redundancy_bps: MAX_REDUNDANCY_BPS,
        }
    }
}

impl EncoderConfig {
    /// Below 32 kb/s with protection on, audio is kept wideband (8 kHz, SILK-only): in hybrid
    /// super-/fullband mode the SILK layer gets too few bits and libopus silently drops LBRR
    /// at low expected loss, so FEC would be on in name only. Above that, fullband.
    pub fn max_bandwidth(&self) -> Bandwidth {
        if self.fec && self.bitrate < 32_000 {
            Bandwidth::Wideband
        } else {
            Bandwidth::Fullband
        }
    }

    /// The protection of the libopus 1.3 era, kept to measure against: LBRR always on (1 %
    /// expected loss at least), no DRED, no added bitrate.
    pub fn legacy(self) -> Self {
        Self {
            fec_min_loss_pct: if self.fec { 1 } else { 0 },
            dred: false,
            redundancy_bps: 0,
            ..self
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

    /// What the encoder spends on redundancy at `loss_pct` measured loss.
    pub fn protection(&self, loss_pct: u8) -> Protection {
        if !self.fec {
            return Protection {
                loss_pct: loss_pct.min(50),
                lbrr: false,
                dred_ms: 0,
                bitrate: self.bitrate,
            };
        }
        let measured = loss_pct.clamp(self.fec_min_loss_pct, 50);
        if measured == 0 {
            return Protection {
                loss_pct: 0,
                lbrr: false,
                dred_ms: 0,
                bitrate: self.bitrate,
            };
        }
        let loss_pct = if self.dred {
            measured.max(DRED_LOSS_FLOOR_PCT)
        } else {
            measured
        };
        // Deeper history as loss grows: bursts come with heavier loss, and DRED's cost grows
        // slowly with depth (it codes a latent every 40 ms, most bits in the newest).
        let dred_ms = if !self.dred {
            0
        } else if measured < 5 {
            200
        } else if measured < 15 {
            500
        } else {
            1000
        };
        // Measured on speech at 24 kb/s (scripts/pesq-table): a flat +50 % left PESQ at 15 %
        // loss and in 60 ms bursts near 2.8; the ramp lifts 15 % to 3.2–3.5 and bursts to
        // 2.8–3.6 (the loss report carries no burstiness, so the low end is generous).
        let scaled = u64::from(self.bitrate) * (u64::from(loss_pct) + 5) / 10;
        let extra = (scaled as u32)
            .min(self.bitrate * 3 / 2)
            .min(self.redundancy_bps);
        Protection {
            loss_pct,
            lbrr: true,
            dred_ms,
            bitrate: (self.bitrate + extra).min(64_000),
        }
    }
}

/// The redundancy settings for one loss level (see [`EncoderConfig::protection`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Protection {
    /// The expected loss handed to libopus (it sizes LBRR and DRED from it).
    pub loss_pct: u8,
    pub lbrr: bool,
    /// DRED history carried in each packet, ms (0: none).
    pub dred_ms: u32,
    /// The total bitrate, redundancy included.
    pub bitrate: u32,
}

/// Encodes 48 kHz mono frames to Opus packets (VOIP application).
pub struct VoiceEncoder {
    inner: libopus::Encoder,
    config: EncoderConfig,
    protection: Protection,
    /// Loss-free reports in a row; protection is dropped after [`CLEAN_REPORTS_TO_DROP`].
    clean_reports: u32,
    /// The loss protected for, %: the worst recent report, let go of slowly.
    loss_estimate: f32,
}

impl VoiceEncoder {
    pub fn new(config: EncoderConfig) -> Result<Self, AudioError> {
        config.validate()?;
        let mut inner = libopus::Encoder::new(SAMPLE_RATE)?;
        inner.set_dtx(config.dtx)?;
        inner.set_complexity(config.complexity)?;
        inner.set_max_bandwidth(config.max_bandwidth())?;
        // Until a receiver reports, the path is unknown, not clean: start protected, so the
        // first losses of a call are rebuilt rather than concealed.
        let protection = config.protection(UNKNOWN_PATH_LOSS_PCT);
        let mut encoder = Self {
            inner,
            protection,
            config,
            clean_reports: 0,
            loss_estimate: f32::from(UNKNOWN_PATH_LOSS_PCT),
        };
        encoder.apply(protection)?;
        Ok(encoder)
    }

    pub fn config(&self) -> &EncoderConfig {
        &self.config
    }

    fn apply(&mut self, protection: Protection) -> Result<(), AudioError> {
        self.inner.set_bitrate(protection.bitrate)?;
        self.inner.set_inband_fec(protection.lbrr)?;
        self.inner.set_packet_loss_perc(protection.loss_pct)?;
        self.inner
            .set_dred_duration((protection.dred_ms / 10).min(104) as u8)?;
        self.protection = protection;
        Ok(())
    }

    /// Feeds the loss the receivers measured back into the encoder, so it spends bits on
    /// redundancy when the path is bad and none when it is clean.
    pub fn set_expected_loss(&mut self, measured_pct: u8) -> Result<(), AudioError> {
        // One loss-free second says little on a path that lost 5 %: keep the protection until
        // the path has been clean for a few reports in a row.
        let measured = f32::from(measured_pct.min(50));
        self.clean_reports = if measured_pct == 0 {
            self.clean_reports.saturating_add(1)
        } else {
            0
        };
        self.loss_estimate = if measured_pct == 0
            && (!self.config.fec || self.clean_reports >= CLEAN_REPORTS_TO_DROP)
        {
            0.0
        } else {
            measured.max(self.loss_estimate * (1.0 - LOSS_RELEASE))
        };
        let protection = self.config.protection(self.expected_loss_pct());
        if protection != self.protection {
            self.apply(protection)?;
        }
        Ok(())
    }

    /// The loss the encoder protects for, %: the worst recent report, let go of slowly (0 once
    /// the path has been clean for [`CLEAN_REPORTS_TO_DROP`] reports).
    pub fn expected_loss_pct(&self) -> u8 {
        // Rounded up: a fading estimate reaches 0 only by a clean path's reports.
        self.loss_estimate.ceil() as u8
    }

    /// The redundancy in use now.
    pub fn protection(&self) -> Protection {
        self.protection
    }

    /// Changes the bitrate from the next frame on (6000–64000 b/s).
    pub fn set_bitrate(&mut self, bitrate: u32) -> Result<(), AudioError> {
        let config = EncoderConfig {
            bitrate,
            ..self.config.clone()
        };
        config.validate()?;
        let protection = config.protection(self.expected_loss_pct());
        self.config = config;
        self.apply(protection)
    }

    /// Samples of algorithmic delay the codec adds (decoder output lags the input by this).
    pub fn lookahead(&mut self) -> Result<usize, AudioError> {
        Ok(self.inner.lookahead()?)
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
    /// Rebuilt from a later packet's deep redundancy (DRED).
    Dred,
    /// Concealed by libopus PLC.
    Concealed,
    /// Silence: the gap is too long to conceal, or nothing has been received yet.
    Silence,
}

/// Decodes one remote stream. One per sender: Opus decoder state is per stream.
pub struct VoiceDecoder {
    inner: libopus::Decoder,
    dred: Dred,
    /// The sequence number of the packet `dred` last parsed.
    dred_parsed: Option<i64>,
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
        Self::with_complexity(frame, DECODER_COMPLEXITY)
    }

    /// A decoder at another complexity: 0–4 conceal with classic PLC, no enhancement.
    pub fn with_complexity(frame: FrameDuration, complexity: u8) -> Result<Self, AudioError> {
        let mut inner = libopus::Decoder::new(SAMPLE_RATE)?;
        inner.set_complexity(complexity)?;
        Ok(Self {
            inner,
            dred: Dred::new()?,
            dred_parsed: None,
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
        let matches_frame = self.inner.samples_in(packet).is_ok_and(|n| n == out.len());
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

    /// Rebuilds a missing frame from a later packet already received: `frames` after the
    /// missing one, with extended sequence number `seq`. The next packet's LBRR when it is
    /// the very next frame, else its DRED, else concealment.
    pub fn recover(
        &mut self,
        ahead: &[u8],
        frames: usize,
        seq: i64,
        out: &mut [f32],
    ) -> Result<DecodeKind, AudioError> {
        self.check_len(out)?;
        if !self.received_any || self.inner.samples_in(ahead).is_err() {
            return self.conceal(out);
        }
        if frames == 1 && libopus::has_lbrr(ahead) {
            if let Ok(n) = self.inner.decode_float(ahead, out, true) {
                if n == out.len() {
                    self.gap_samples = 0;
                    return Ok(DecodeKind::Fec);
                }
            }
        }
        let offset = frames * out.len();
        // Parsed once per packet for the whole gap, all the history it carries: asking for
        // just `offset` decodes too few latents to reach it.
        if self.dred_parsed != Some(seq) {
            self.dred_parsed = Some(seq);
            if self.dred.parse(ahead, DRED_MAX_HISTORY).is_err() {
                self.malformed += 1;
            }
        }
        if self.dred.covers() >= offset {
            if let Ok(n) = self.inner.decode_dred(&self.dred, offset, out) {
                if n == out.len() {
                    self.gap_samples = 0;
                    return Ok(DecodeKind::Dred);
                }
            }
        }
        self.conceal(out)
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
        self.inner.reset()?;
        self.dred_parsed = None;
        self.gap_samples = 0;
        self.received_any = false;
        Ok(())
    }
}
