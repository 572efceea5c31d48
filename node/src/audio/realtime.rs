//! The device-callback side of the engine: lock-free SPSC rings between the sound card's
//! real-time thread and the audio worker.
//!
//! Rules for everything here: no allocation, no locks, no I/O, no unbounded loops. Buffers are
//! sized when the rings are built; counters are atomics. `tests/realtime.rs` runs these
//! callbacks under a counting allocator to prove it.

use ringbuf::traits::{Consumer, Observer, Producer, Split};
use ringbuf::{HeapCons, HeapProd, HeapRb};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Frames a callback handles per block (stack scratch, no allocation).
const SCRATCH: usize = 256;

/// Counters the callbacks update and the worker reads.
#[derive(Debug, Default)]
pub struct CallbackCounters {
    /// Capture samples dropped because the worker fell behind.
    pub capture_overruns: AtomicU64,
    /// Playback samples filled with silence because the worker fell behind.
    pub playback_underruns: AtomicU64,
}

/// Runs inside the input device callback: downmixes to mono and queues for the worker.
pub struct CaptureCallback {
    producer: HeapProd<f32>,
    counters: Arc<CallbackCounters>,
}

/// The worker's end of the capture ring.
pub struct CaptureReader {
    consumer: HeapCons<f32>,
}

/// Builds the capture ring holding `capacity` mono samples at the device rate.
pub fn capture_ring(
    capacity: usize,
    counters: Arc<CallbackCounters>,
) -> (CaptureCallback, CaptureReader) {
    let (producer, consumer) = HeapRb::<f32>::new(capacity).split();
    (
        CaptureCallback { producer, counters },
        CaptureReader { consumer },
    )
}

impl CaptureCallback {
    /// `input` is interleaved with `channels` channels.
    pub fn process(&mut self, input: &[f32], channels: usize) {
        let channels = channels.max(1);
        let mut scratch = [0.0f32; SCRATCH];
        for block in input.chunks(SCRATCH * channels) {
            let frames = block.len() / channels;
            for (dst, frame) in scratch.iter_mut().zip(block.chunks_exact(channels)) {
                *dst = frame.iter().sum::<f32>() / channels as f32;
            }
            let pushed = self.producer.push_slice(&scratch[..frames]);
            if pushed < frames {
                self.counters
                    .capture_overruns
                    .fetch_add((frames - pushed) as u64, Ordering::Relaxed);
            }
        }
    }
}

impl CaptureReader {
    /// Moves queued samples into `out`, returning how many.
    pub fn read(&mut self, out: &mut [f32]) -> usize {
        self.consumer.pop_slice(out)
    }

    pub fn available(&self) -> usize {
        self.consumer.occupied_len()
    }
}

/// Runs inside the output device callback: plays the worker's stereo blocks.
pub struct PlaybackCallback {
    consumer: HeapCons<f32>,
    counters: Arc<CallbackCounters>,
}

/// The worker's end of the playback ring (interleaved stereo).
pub struct PlaybackWriter {
    producer: HeapProd<f32>,
}

/// Builds the playback ring holding `capacity_frames` stereo frames.
pub fn playback_ring(
    capacity_frames: usize,
    counters: Arc<CallbackCounters>,
) -> (PlaybackWriter, PlaybackCallback) {
    let (producer, consumer) = HeapRb::<f32>::new(capacity_frames * 2).split();
    (
        PlaybackWriter { producer },
        PlaybackCallback { consumer, counters },
    )
}

impl PlaybackWriter {
    /// Queues interleaved stereo samples; returns how many fit. Only whole frames are queued,
    /// so the callback never sees left and right swap.
    pub fn write(&mut self, stereo: &[f32]) -> usize {
        let whole = stereo.len().min(self.producer.vacant_len()) & !1;
        self.producer.push_slice(&stereo[..whole])
    }

    /// Stereo frames queued that the device has yet to play.
    pub fn queued_frames(&self) -> usize {
        self.producer.occupied_len() / 2
    }

    /// Stereo frames of free space.
    pub fn free_frames(&self) -> usize {
        self.producer.vacant_len() / 2
    }
}

impl PlaybackCallback {
    /// Fills `out` (interleaved, `channels` channels) from the ring; silence on underrun.
    pub fn process(&mut self, out: &mut [f32], channels: usize) {
        let channels = channels.max(1);
        let mut missing = 0u64;
        let mut scratch = [0.0f32; 2 * SCRATCH];
        for block in out.chunks_mut(SCRATCH * channels) {
            let frames = block.len() / channels;
            // One ring access per block, not per frame. The writer queues whole frames only.
            let got = self.consumer.pop_slice(&mut scratch[..2 * frames]) / 2;
            scratch[2 * got..2 * frames].fill(0.0);
            missing += (frames - got) as u64;
            for (frame, pair) in block
                .chunks_exact_mut(channels)
                .zip(scratch.chunks_exact(2))
            {
                match frame {
                    [mono] => *mono = (pair[0] + pair[1]) * 0.5,
                    [left, right, rest @ ..] => {
                        *left = pair[0];
                        *right = pair[1];
                        rest.fill(0.0);
                    }
                    [] => {}
                }
            }
        }
        if missing > 0 {
            self.counters
                .playback_underruns
                .fetch_add(missing, Ordering::Relaxed);
        }
    }
}
