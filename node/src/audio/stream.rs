//! One remote sender's receive path: jitter buffer plus decoder, with the combined stats.

use super::codec::{DecodeKind, VoiceDecoder};
use super::jitter::{IncomingFrame, JitterBuffer, JitterConfig, JitterStats, Playout, PushOutcome};
use super::AudioError;
use std::time::Instant;

/// Receive-side counters for one stream.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct StreamStats {
    #[serde(flatten)]
    pub jitter: JitterStats,
    pub decoded: u64,
    pub recovered_fec: u64,
    /// Missing frames rebuilt from a later packet's deep redundancy.
    pub recovered_dred: u64,
    pub concealed: u64,
    pub decode_errors: u64,
}

/// See the module documentation.
pub struct ReceiveStream {
    buffer: JitterBuffer,
    decoder: VoiceDecoder,
    decoded: u64,
    recovered_fec: u64,
    recovered_dred: u64,
    concealed: u64,
}

impl ReceiveStream {
    pub fn new(config: JitterConfig) -> Result<Self, AudioError> {
        Ok(Self::with_decoder(VoiceDecoder::new(config.frame)?, config))
    }

    /// A stream decoding with `decoder` (e.g. one at another complexity).
    pub fn with_decoder(decoder: VoiceDecoder, config: JitterConfig) -> Self {
        Self {
            decoder,
            buffer: JitterBuffer::new(config),
            decoded: 0,
            recovered_fec: 0,
            recovered_dred: 0,
            concealed: 0,
        }
    }

    pub fn push(
        &mut self,
        frame: IncomingFrame<'_>,
        now: Instant,
    ) -> Result<PushOutcome, AudioError> {
        let outcome = self.buffer.push(frame, now);
        if outcome == PushOutcome::Restarted {
            self.decoder.reset()?;
        }
        Ok(outcome)
    }

    /// New jitter-buffer delay bounds.
    pub fn set_jitter_bounds(
        &mut self,
        min_delay: std::time::Duration,
        max_delay: std::time::Duration,
    ) {
        self.buffer.set_bounds(min_delay, max_delay);
    }

    /// True while this sender's transmission is playing or about to.
    pub fn is_active(&self) -> bool {
        self.buffer.is_active()
    }

    /// Produces this frame period's audio into `out` (one frame). Returns `None`, with `out`
    /// silent, when the sender is not transmitting.
    pub fn pull(
        &mut self,
        now: Instant,
        out: &mut [f32],
    ) -> Result<Option<DecodeKind>, AudioError> {
        let kind = match self.buffer.pop(now) {
            Playout::Idle => {
                out.fill(0.0);
                return Ok(None);
            }
            Playout::Frame(packet) => self.decoder.decode(packet, out)?,
            Playout::Missing { ahead: Some(a) } => {
                self.decoder.recover(a.packet, a.frames, a.seq, out)?
            }
            Playout::Missing { ahead: None } => self.decoder.conceal(out)?,
        };
        match kind {
            DecodeKind::Normal => self.decoded += 1,
            DecodeKind::Fec => self.recovered_fec += 1,
            DecodeKind::Dred => self.recovered_dred += 1,
            DecodeKind::Concealed | DecodeKind::Silence => self.concealed += 1,
        }
        Ok(Some(kind))
    }

    /// Media timestamp of the last frame decoded normally (see `JitterBuffer::played_timestamp`).
    pub fn played_timestamp(&self) -> Option<u32> {
        self.buffer.played_timestamp()
    }

    pub fn stats(&self) -> StreamStats {
        StreamStats {
            jitter: self.buffer.stats(),
            decoded: self.decoded,
            recovered_fec: self.recovered_fec,
            recovered_dred: self.recovered_dred,
            concealed: self.concealed,
            decode_errors: self.decoder.malformed(),
        }
    }
}
