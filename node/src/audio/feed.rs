//! The audio worker's side of a sound card: [`CaptureFeed`] turns the capture ring's
//! device-rate samples into the node's 48 kHz frame blocks, and [`PlaybackFeed`] turns the
//! mixer's 48 kHz stereo blocks into the playback ring's device-rate frames.
//!
//! The sound card's clock and the node's frame timer drift apart, and either may stall for a
//! moment. Neither side lets latency grow: capture pads a short block with silence and drops
//! the oldest samples beyond a small backlog; playback keeps a cushion of a few frames in the
//! ring and drops what would push it past the bound. Both count what they padded or dropped.
//! These run on the worker, not in the device callback, so they may use their (preallocated)
//! buffers freely.

use super::device_follow::DeviceStatus;
use super::realtime::{CaptureReader, PlaybackWriter};
use super::resample::StreamResampler;
use super::{AudioError, FrameDuration, SAMPLE_RATE};
use std::sync::{mpsc, Arc};

/// Keeps a device stream's thread alive; dropping it stops the device.
pub struct StreamGuard {
    _stop: mpsc::Sender<()>,
}

impl StreamGuard {
    /// A guard whose drop tells `stop`'s receiver (the device thread) to close the stream.
    pub fn new(stop: mpsc::Sender<()>) -> Self {
        Self { _stop: stop }
    }
}

impl std::fmt::Debug for StreamGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamGuard")
    }
}

/// Counters for what the feeds did to keep latency bounded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FeedCounters {
    /// Capture samples (48 kHz) the frame timer wanted but the device had not delivered.
    pub capture_padded: u64,
    /// Capture samples (48 kHz) dropped because the device ran ahead of the frame timer.
    pub capture_dropped: u64,
    /// Playback frames (device rate) dropped because the ring was past its bound.
    pub playback_dropped: u64,
    /// Times the stream moved to another device (the default changed, the chosen one was
    /// unplugged or came back) or reopened a failed one.
    pub reopened: u64,
}

/// A resampler between the device's rate and the engine's, `None` when they are equal.
fn resampler(from: u32, to: u32) -> Result<Option<StreamResampler>, AudioError> {
    (from != to)
        .then(|| StreamResampler::new(from, to))
        .transpose()
}

/// Reads from the capture ring on the worker. See the module documentation.
pub struct CaptureFeed {
    reader: CaptureReader,
    device: Arc<DeviceStatus>,
    /// The device rate `resampler` converts from.
    device_rate: u32,
    resampler: Option<StreamResampler>,
    raw: Vec<f32>,
    ready: Vec<f32>,
    backlog: usize,
    counters: FeedCounters,
}

/// How many frames of captured audio may wait before the oldest are dropped.
const CAPTURE_BACKLOG_FRAMES: usize = 2;
/// Playback frames kept queued ahead of the device, and the most allowed.
const PLAYBACK_CUSHION_FRAMES: usize = 2;
const PLAYBACK_MAX_FRAMES: usize = 5;

impl CaptureFeed {
    /// `reader` holds mono samples at the rate of `device`; blocks come out at 48 kHz, `frame`
    /// long.
    pub fn new(
        reader: CaptureReader,
        device: Arc<DeviceStatus>,
        frame: FrameDuration,
    ) -> Result<Self, AudioError> {
        let device_rate = device.rate();
        let backlog = CAPTURE_BACKLOG_FRAMES * frame.samples();
        Ok(Self {
            reader,
            device,
            device_rate,
            resampler: resampler(device_rate, SAMPLE_RATE)?,
            raw: vec![0.0; 4096],
            ready: Vec::with_capacity(backlog + 2 * frame.samples()),
            backlog,
            counters: FeedCounters::default(),
        })
    }

    /// Fills `out` with the oldest captured audio, silence where there is none yet.
    pub fn fill(&mut self, out: &mut [f32]) -> Result<(), AudioError> {
        let rate = self.device.rate();
        if rate != self.device_rate {
            // Another device: what the old one left in the ring plays at the new rate, a
            // moment's wrong pitch, rather than a resampler that stays wrong.
            self.resampler = resampler(rate, SAMPLE_RATE)?;
            self.device_rate = rate;
        }
        // What is queued now, not what arrives meanwhile: a device running far ahead (or one
        // not paced by a clock at all) must not keep the worker here.
        let mut budget = self.reader.available();
        while budget > 0 {
            let take = budget.min(self.raw.len());
            let n = self.reader.read(&mut self.raw[..take]);
            if n == 0 {
                break;
            }
            budget -= n;
            match &mut self.resampler {
                Some(r) => r.process(&self.raw[..n], &mut self.ready)?,
                None => self.ready.extend_from_slice(&self.raw[..n]),
            }
        }
        let excess = self.ready.len().saturating_sub(out.len() + self.backlog);
        if excess > 0 {
            self.ready.drain(..excess);
            self.counters.capture_dropped += excess as u64;
        }
        let n = self.ready.len().min(out.len());
        out[..n].copy_from_slice(&self.ready[..n]);
        out[n..].fill(0.0);
        self.counters.capture_padded += (out.len() - n) as u64;
        self.ready.drain(..n);
        Ok(())
    }

    pub fn counters(&self) -> FeedCounters {
        FeedCounters {
            reopened: self.device.reopened(),
            ..self.counters
        }
    }

    /// The device this feed reads from now.
    pub fn device_name(&self) -> String {
        self.device.name()
    }
}

/// Writes to the playback ring on the worker. See the module documentation.
pub struct PlaybackFeed {
    writer: PlaybackWriter,
    device: Arc<DeviceStatus>,
    /// Left and right resamplers when the device does not run at 48 kHz.
    resamplers: Option<(StreamResampler, StreamResampler)>,
    mono: [Vec<f32>; 2],
    converted: [Vec<f32>; 2],
    interleaved: Vec<f32>,
    cushion: usize,
    max_queued: usize,
    started: bool,
    counters: FeedCounters,
    device_rate: u32,
    frame: FrameDuration,
}

impl PlaybackFeed {
    /// How long a block written now waits before the device takes it, ms.
    pub fn queued_ms(&self) -> u32 {
        (self.writer.queued_frames() as u64 * 1000 / u64::from(self.device_rate.max(1))) as u32
    }

    /// `writer` feeds the device `device`; blocks come in as 48 kHz stereo, `frame` long.
    /// The ring must hold at least five frames at the device rate.
    pub fn new(
        writer: PlaybackWriter,
        device: Arc<DeviceStatus>,
        frame: FrameDuration,
    ) -> Result<Self, AudioError> {
        let mut feed = Self {
            writer,
            resamplers: None,
            mono: [Vec::new(), Vec::new()],
            converted: [Vec::new(), Vec::new()],
            interleaved: Vec::new(),
            cushion: 0,
            max_queued: 0,
            started: false,
            counters: FeedCounters::default(),
            device_rate: 0,
            frame,
            device,
        };
        feed.follow_device()?;
        Ok(feed)
    }

    /// Sizes the resamplers and the queue for the device's rate when it changed (another
    /// device). The new device starts with a fresh cushion.
    fn follow_device(&mut self) -> Result<(), AudioError> {
        let rate = self.device.rate();
        if rate == self.device_rate {
            return Ok(());
        }
        self.resamplers = match (resampler(SAMPLE_RATE, rate)?, resampler(SAMPLE_RATE, rate)?) {
            (Some(left), Some(right)) => Some((left, right)),
            _ => None,
        };
        let device_frame = self.frame.samples() * rate as usize / SAMPLE_RATE as usize;
        self.cushion = PLAYBACK_CUSHION_FRAMES * device_frame;
        self.max_queued = PLAYBACK_MAX_FRAMES * device_frame;
        self.started = false;
        self.device_rate = rate;
        Ok(())
    }

    /// Queues one interleaved stereo block at 48 kHz.
    pub fn write(&mut self, stereo: &[f32]) -> Result<(), AudioError> {
        self.follow_device()?;
        if !self.started {
            // A cushion of silence, so a late timer tick does not starve the device at once.
            self.started = true;
            let silence = vec![0.0; 2 * self.cushion];
            self.writer.write(&silence);
        }
        let block: &[f32] = match &mut self.resamplers {
            None => stereo,
            Some((left, right)) => {
                for (side, buffer) in self.mono.iter_mut().enumerate() {
                    buffer.clear();
                    buffer.extend(stereo.iter().skip(side).step_by(2));
                }
                for c in &mut self.converted {
                    c.clear();
                }
                left.process(&self.mono[0], &mut self.converted[0])?;
                right.process(&self.mono[1], &mut self.converted[1])?;
                self.interleaved.clear();
                for (l, r) in self.converted[0].iter().zip(&self.converted[1]) {
                    self.interleaved.push(*l);
                    self.interleaved.push(*r);
                }
                &self.interleaved
            }
        };
        let frames = block.len() / 2;
        let room = self.max_queued.saturating_sub(self.writer.queued_frames());
        let take = frames.min(room);
        let written = self.writer.write(&block[..2 * take]) / 2;
        self.counters.playback_dropped += (frames - written) as u64;
        Ok(())
    }

    pub fn counters(&self) -> FeedCounters {
        FeedCounters {
            reopened: self.device.reopened(),
            ..self.counters
        }
    }

    /// The device this feed plays to now.
    pub fn device_name(&self) -> String {
        self.device.name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::realtime::{capture_ring, playback_ring, CallbackCounters};

    fn card(rate: u32) -> Arc<DeviceStatus> {
        Arc::new(DeviceStatus::new("card", rate))
    }

    fn sine(rate: u32, hz: f32, len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| 0.5 * (2.0 * std::f32::consts::PI * hz * i as f32 / rate as f32).sin())
            .collect()
    }

    /// Zero crossings per second of a block, a frequency estimate.
    fn crossings_hz(samples: &[f32], rate: u32) -> f32 {
        let n = samples
            .windows(2)
            .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
            .count();
        n as f32 / 2.0 / (samples.len() as f32 / rate as f32)
    }

    #[test]
    fn capture_at_44k1_comes_out_as_48k_frames_of_the_same_pitch() {
        let counters = Arc::new(CallbackCounters::default());
        let (mut callback, reader) = capture_ring(44_100, counters);
        let mut feed = CaptureFeed::new(reader, card(44_100), FrameDuration::Ms20).unwrap();
        let input = sine(44_100, 440.0, 44_100);
        let mut heard = Vec::new();
        let mut block = vec![0.0; FrameDuration::Ms20.samples()];
        // The device delivers stereo 441-frame blocks (10 ms), one frame period per two.
        for chunk in input.chunks(882) {
            let stereo: Vec<f32> = chunk.iter().flat_map(|s| [*s, *s]).collect();
            for half in stereo.chunks(882) {
                callback.process(half, 2);
            }
            feed.fill(&mut block).unwrap();
            heard.extend_from_slice(&block);
        }
        // Skip the resampler's start-up; the rest is a 440 Hz tone at 48 kHz.
        let steady = &heard[9600..];
        let hz = crossings_hz(steady, SAMPLE_RATE);
        assert!((hz - 440.0).abs() < 5.0, "{hz} Hz");
        assert!(feed.counters().capture_dropped == 0);
    }

    #[test]
    fn capture_never_builds_up_more_than_the_backlog() {
        let counters = Arc::new(CallbackCounters::default());
        let (mut callback, reader) = capture_ring(48_000, counters);
        let mut feed = CaptureFeed::new(reader, card(48_000), FrameDuration::Ms20).unwrap();
        // The device delivers 200 ms at once (the worker stalled), then the worker ticks.
        callback.process(&vec![0.25; 9600], 1);
        let mut block = vec![0.0; 960];
        feed.fill(&mut block).unwrap();
        assert_eq!(feed.counters().capture_dropped, 9600 - 3 * 960);
        feed.fill(&mut block).unwrap();
        feed.fill(&mut block).unwrap();
        feed.fill(&mut block).unwrap();
        assert!(block.iter().all(|s| *s == 0.0), "the backlog is played out");
        assert_eq!(feed.counters().capture_padded, 960);
    }

    #[test]
    fn playback_keeps_a_bounded_queue_at_the_device_rate() {
        let counters = Arc::new(CallbackCounters::default());
        let (writer, mut callback) = playback_ring(44_100, counters.clone());
        let mut feed = PlaybackFeed::new(writer, card(44_100), FrameDuration::Ms20).unwrap();
        let tone = sine(SAMPLE_RATE, 440.0, 70 * 960);
        let stereo: Vec<f32> = tone.iter().flat_map(|s| [*s, -*s]).collect();
        let mut blocks = stereo.chunks(2 * 960);
        let mut out = vec![0.0; 2 * 882];
        let mut played = Vec::new();
        for block in blocks.by_ref().take(50) {
            feed.write(block).unwrap();
            callback.process(&mut out, 2);
            played.extend(out.iter().step_by(2).copied());
        }
        assert_eq!(feed.counters().playback_dropped, 0);
        let hz = crossings_hz(&played[played.len() / 2..], 44_100);
        assert!((hz - 440.0).abs() < 5.0, "{hz} Hz");
        // The worker runs ahead (the device stalled): the queue stops at its bound.
        for block in blocks {
            feed.write(block).unwrap();
        }
        assert!(feed.counters().playback_dropped > 0);
        let mut drained = 0;
        let mut block = vec![0.0; 2 * 441];
        while counters
            .playback_underruns
            .load(std::sync::atomic::Ordering::Relaxed)
            == 0
        {
            callback.process(&mut block, 2);
            drained += 441;
            assert!(drained < 44_100, "the queue never empties");
        }
        assert!(
            drained <= PLAYBACK_MAX_FRAMES * 882 + 882,
            "{drained} frames queued"
        );
    }

    #[test]
    fn capture_follows_the_device_to_another_rate() {
        let counters = Arc::new(CallbackCounters::default());
        let device = card(48_000);
        let (mut callback, reader) = capture_ring(48_000, counters);
        let mut feed = CaptureFeed::new(reader, device.clone(), FrameDuration::Ms20).unwrap();
        let mut block = vec![0.0; FrameDuration::Ms20.samples()];
        for chunk in sine(48_000, 440.0, 9600).chunks(960) {
            callback.process(chunk, 1);
            feed.fill(&mut block).unwrap();
        }
        // The headset is unplugged; the speakers' microphone runs at 44.1 kHz.
        device.moved_to("speakers", 44_100);
        let mut heard = Vec::new();
        for chunk in sine(44_100, 440.0, 44_100).chunks(882) {
            callback.process(chunk, 1);
            feed.fill(&mut block).unwrap();
            heard.extend_from_slice(&block);
        }
        let hz = crossings_hz(&heard[9600..], SAMPLE_RATE);
        assert!((hz - 440.0).abs() < 5.0, "{hz} Hz");
        assert_eq!(feed.counters().reopened, 1);
        assert_eq!(feed.device_name(), "speakers");
    }
}
