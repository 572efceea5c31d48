//! Adaptive jitter buffer for one sender's voice frames.
//!
//! Packets are pushed as they arrive (with `now`); the playout side pulls one frame per frame
//! period with [`JitterBuffer::pop`]. The buffer reorders, drops duplicates and frames that come
//! after their playout slot, and holds each talk spurt back by a target delay computed from the
//! measured jitter: the 95th percentile of relative transit time over recent packets, between
//! the configured minimum and maximum. The target only changes at a talk-spurt boundary, so a
//! spurt is never cut; when the buffer runs dry mid-spurt the playout point is stretched (the
//! decoder conceals) rather than skipping frames that may still arrive.
//!
//! Sequence numbers are 16-bit and wrap. A sender restart flushes the buffer: a jump of more
//! than [`MAX_SEQ_JUMP`] frames, or a sequence number that disagrees with the timestamp (lower
//! but captured later, or higher but captured more than 10 s earlier), since a new run of the
//! sender counts afresh.

use super::codec::MAX_PACKET;
use super::{FrameDuration, SAMPLE_RATE};
use std::time::{Duration, Instant};

/// A sequence jump larger than this (in frames, either way) means the sender restarted.
pub const MAX_SEQ_JUMP: i64 = 1000;

/// Slots in the reorder window. 64 frames of 20 ms is 1.28 s, well past any sane max delay.
const SLOTS: usize = 64;

/// Packets of transit history the delay estimate looks at.
const HISTORY: usize = 128;

/// How far past a missing frame to look for a packet whose redundancy may cover it: DRED
/// reaches back at most ~1 s, and the window holds 64 frames.
const AHEAD_FRAMES: usize = 50;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct JitterConfig {
    pub frame: FrameDuration,
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// Delay used until enough packets have been seen to measure jitter.
    pub initial_delay: Duration,
    /// Quantile of relative transit that should arrive in time (0.95 = 5 % of frames may be late
    /// before the next spurt widens the delay).
    pub quantile: f64,
    /// A spurt with no packet for this long is over (its end marker was lost).
    pub spurt_timeout: Duration,
}

impl Default for JitterConfig {
    fn default() -> Self {
        Self {
            frame: FrameDuration::Ms20,
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(400),
            initial_delay: Duration::from_millis(60),
            quantile: 0.95,
            spurt_timeout: Duration::from_millis(300),
        }
    }
}

/// One received voice frame, as the jitter buffer sees it.
#[derive(Clone, Copy, Debug)]
pub struct IncomingFrame<'a> {
    pub seq: u16,
    /// Capture time of the frame's first sample, in 48 kHz samples (wraps).
    pub timestamp: u32,
    /// Last frame of a transmission (PTT released).
    pub end: bool,
    /// The sender's encoder had in-band FEC on, so this packet carries the previous frame.
    pub fec: bool,
    pub payload: &'a [u8],
}

/// What `push` did with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushOutcome {
    Buffered,
    /// A new sender session: the buffer was flushed; the decoder must be reset too.
    Restarted,
    Duplicate,
    /// Arrived after its playout slot had passed.
    Late,
    /// Empty or larger than any Opus packet.
    Malformed,
}

/// What the playout side should do for this frame period.
#[derive(Debug, PartialEq, Eq)]
pub enum Playout<'a> {
    /// No transmission in progress: play nothing.
    Idle,
    /// Decode this packet.
    Frame(&'a [u8]),
    /// The frame is missing. `ahead` is the nearest later packet already here from a sender
    /// that protects its stream (its LBRR or DRED may rebuild this frame); `None` means
    /// conceal.
    Missing { ahead: Option<Ahead<'a>> },
}

/// The nearest later packet, for rebuilding a missing frame from its redundancy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ahead<'a> {
    pub packet: &'a [u8],
    /// How many frames after the missing one it is (1: the very next frame).
    pub frames: usize,
    /// Its extended sequence number, so a decoder can parse it once for a whole gap.
    pub seq: i64,
}

/// Counters and the current delay.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct JitterStats {
    pub received: u64,
    pub played: u64,
    pub duplicates: u64,
    pub late: u64,
    /// Frames that never arrived in time for their slot.
    pub lost: u64,
    /// Frame periods stretched because the buffer ran dry mid-spurt.
    pub stretched: u64,
    pub malformed: u64,
    pub restarts: u64,
    pub target_delay_ms: f64,
    /// Mean time a played frame spent in the buffer.
    pub mean_buffer_delay_ms: f64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Idle,
    /// A spurt has begun; playout starts at the scheduled time of `next`.
    Waiting,
    /// Playing; `dry_since` is when the buffer ran dry.
    Playing {
        dry_since: Option<Instant>,
    },
}

struct Slot {
    seq: Option<i64>,
    timestamp: u32,
    end: bool,
    fec: bool,
    arrival: Option<Instant>,
    payload: Vec<u8>,
}

/// See the module documentation.
pub struct JitterBuffer {
    config: JitterConfig,
    slots: Vec<Slot>,
    buffered: usize,
    mode: Mode,
    /// Extended sequence number of the highest frame seen, if any this session.
    highest: Option<i64>,
    highest_timestamp: u32,
    next: i64,
    /// Everything at or below this was played or given up on.
    played_through: Option<i64>,
    played_timestamp: Option<u32>,
    origin: Option<(Instant, u32)>,
    /// The sender's latest frame said it protects its stream (LBRR or DRED in later packets).
    protected: bool,
    transit: [f64; HISTORY],
    transit_len: usize,
    transit_pos: usize,
    scratch: [f64; HISTORY],
    target: Duration,
    buffer_delay_total: Duration,
    stats: JitterStats,
}

impl JitterBuffer {
    pub fn new(config: JitterConfig) -> Self {
        let target = config
            .initial_delay
            .clamp(config.min_delay, config.max_delay.max(config.min_delay));
        let slots = (0..SLOTS)
            .map(|_| Slot {
                seq: None,
                timestamp: 0,
                end: false,
                fec: false,
                arrival: None,
                payload: Vec::with_capacity(MAX_PACKET),
            })
            .collect();
        Self {
            config,
            slots,
            buffered: 0,
            mode: Mode::Idle,
            highest: None,
            highest_timestamp: 0,
            next: 0,
            played_through: None,
            played_timestamp: None,
            origin: None,
            protected: false,
            transit: [0.0; HISTORY],
            transit_len: 0,
            transit_pos: 0,
            scratch: [0.0; HISTORY],
            target,
            buffer_delay_total: Duration::ZERO,
            stats: JitterStats {
                target_delay_ms: target.as_secs_f64() * 1e3,
                ..JitterStats::default()
            },
        }
    }

    pub fn config(&self) -> &JitterConfig {
        &self.config
    }

    /// New delay bounds; the target moves inside them from the next spurt on.
    pub fn set_bounds(&mut self, min_delay: Duration, max_delay: Duration) {
        self.config.min_delay = min_delay;
        self.config.max_delay = max_delay;
    }

    pub fn stats(&self) -> JitterStats {
        let mut stats = self.stats.clone();
        stats.target_delay_ms = self.target.as_secs_f64() * 1e3;
        if stats.played > 0 {
            stats.mean_buffer_delay_ms =
                self.buffer_delay_total.as_secs_f64() * 1e3 / stats.played as f64;
        }
        stats
    }

    /// True while a transmission is being played or about to be.
    pub fn is_active(&self) -> bool {
        self.mode != Mode::Idle
    }

    /// Media timestamp of the last frame `pop` returned as [`Playout::Frame`]: with the
    /// sender's capture clock it gives mouth-to-ear latency.
    pub fn played_timestamp(&self) -> Option<u32> {
        self.played_timestamp
    }

    /// Frames waiting in the buffer.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    fn slot_index(seq: i64) -> usize {
        seq.rem_euclid(SLOTS as i64) as usize
    }

    fn extend(&self, seq: u16) -> i64 {
        match self.highest {
            None => i64::from(seq),
            Some(h) => h + i64::from(seq.wrapping_sub(h as u16) as i16),
        }
    }

    /// Empties the reorder window and stops playout.
    fn clear_window(&mut self) {
        for slot in &mut self.slots {
            slot.seq = None;
        }
        self.buffered = 0;
        self.mode = Mode::Idle;
    }

    /// Forgets the sender session: buffered frames, sequence state and jitter history.
    fn flush(&mut self) {
        self.clear_window();
        self.highest = None;
        self.played_through = None;
        self.origin = None;
        self.transit_len = 0;
        self.transit_pos = 0;
    }

    pub fn push(&mut self, frame: IncomingFrame<'_>, now: Instant) -> PushOutcome {
        if frame.payload.is_empty() || frame.payload.len() > MAX_PACKET {
            self.stats.malformed += 1;
            return PushOutcome::Malformed;
        }
        let mut outcome = PushOutcome::Buffered;
        let mut seq = self.extend(frame.seq);
        if let Some(highest) = self.highest {
            let moved = frame.timestamp.wrapping_sub(self.highest_timestamp) as i32;
            let backwards_in_time = moved < -(10 * SAMPLE_RATE as i32);
            // Sequence and time disagree: a frame no newer than the newest by its number but
            // captured after it, or newer by number but from long before. Only a new run of
            // the sender does that (its counter starts afresh, well below or above ours): seen
            // after a crash and restart, whose first frames were all dropped as late.
            let restarted = if seq > highest {
                backwards_in_time
            } else {
                moved > 0 || backwards_in_time
            };
            if (seq - highest).abs() > MAX_SEQ_JUMP || restarted {
                self.flush();
                self.stats.restarts += 1;
                outcome = PushOutcome::Restarted;
                seq = i64::from(frame.seq);
            }
        }
        self.record_transit(frame.timestamp, now);
        if self.played_through.is_some_and(|p| seq <= p) {
            self.stats.late += 1;
            return PushOutcome::Late;
        }
        let index = Self::slot_index(seq);
        if self.slots[index].seq == Some(seq) {
            self.stats.duplicates += 1;
            return PushOutcome::Duplicate;
        }
        // Far ahead of the playout point: the window cannot hold it, so resynchronise on it.
        let base = match self.mode {
            Mode::Idle => seq,
            _ => self.next,
        };
        if seq - base >= SLOTS as i64 || self.slots[index].seq.is_some() {
            self.clear_window();
            self.played_through = Some(seq - 1);
        }
        let slot = &mut self.slots[index];
        slot.seq = Some(seq);
        slot.timestamp = frame.timestamp;
        slot.end = frame.end;
        slot.fec = frame.fec;
        self.protected = frame.fec;
        slot.arrival = Some(now);
        slot.payload.clear();
        slot.payload.extend_from_slice(frame.payload);
        self.buffered += 1;
        self.stats.received += 1;
        if self.highest.is_none_or(|h| seq > h) {
            self.highest = Some(seq);
            self.highest_timestamp = frame.timestamp;
        }
        match self.mode {
            Mode::Idle => {
                self.mode = Mode::Waiting;
                self.next = seq;
                self.target = self.measured_target();
            }
            Mode::Waiting if seq < self.next => self.next = seq,
            _ => {}
        }
        outcome
    }

    /// Seconds between arrival and capture, relative to the session's first packet. Only
    /// differences matter, so the sender's and receiver's clocks need not agree.
    fn relative_transit(&self, timestamp: u32, at: Instant) -> Option<f64> {
        let (origin, origin_ts) = self.origin?;
        let media = f64::from(timestamp.wrapping_sub(origin_ts)) / f64::from(SAMPLE_RATE);
        Some(at.saturating_duration_since(origin).as_secs_f64() - media)
    }

    fn record_transit(&mut self, timestamp: u32, now: Instant) {
        if self.origin.is_none() {
            self.origin = Some((now, timestamp));
        }
        if let Some(transit) = self.relative_transit(timestamp, now) {
            self.transit[self.transit_pos] = transit;
            self.transit_pos = (self.transit_pos + 1) % HISTORY;
            self.transit_len = (self.transit_len + 1).min(HISTORY);
        }
    }

    fn min_transit(&self) -> f64 {
        self.transit[..self.transit_len]
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min)
    }

    fn measured_target(&mut self) -> Duration {
        let (min, max) = (
            self.config.min_delay,
            self.config.max_delay.max(self.config.min_delay),
        );
        if self.transit_len < 8 {
            return self.config.initial_delay.clamp(min, max);
        }
        let floor = self.min_transit();
        let n = self.transit_len;
        for (dst, src) in self.scratch[..n].iter_mut().zip(&self.transit[..n]) {
            *dst = *src - floor;
        }
        let rank = ((n - 1) as f64 * self.config.quantile.clamp(0.0, 1.0)).round() as usize;
        let (_, quantile, _) = self.scratch[..n].select_nth_unstable_by(rank, f64::total_cmp);
        // A frame on top while the sender protects its stream: a lost frame is rebuilt from
        // the next packet, which must be here by then (else playout stretches, and the spurt
        // plays a frame later from there on). On a clean path, where the sender has dropped
        // its redundancy, half a frame is enough for the clocks (the playout pull and the
        // sender's capture tick drift and wake late by a millisecond or two): the pull's phase
        // already adds 0 to 20 ms after the scheduled time, and a whole frame more was a third
        // of the mouth-to-ear latency on a LAN.
        let frame = self.config.frame.duration().as_secs_f64();
        let margin = if self.protected { frame } else { frame / 2.0 };
        let secs = *quantile + margin;
        Duration::from_secs_f64(secs.max(0.0)).clamp(min, max)
    }

    /// Pulls the next frame period's worth. Call once per frame period.
    pub fn pop(&mut self, now: Instant) -> Playout<'_> {
        if self.mode == Mode::Idle && self.buffered > 0 {
            // The next spurt's first frames arrived before the last one finished playing.
            if let Some(first) = self.slots.iter().filter_map(|s| s.seq).min() {
                self.next = first;
                self.target = self.measured_target();
                self.mode = Mode::Waiting;
            }
        }
        if self.mode == Mode::Waiting {
            if !self.start_due(now) {
                return Playout::Idle;
            }
            self.mode = Mode::Playing { dry_since: None };
        }
        let Mode::Playing { dry_since } = self.mode else {
            return Playout::Idle;
        };
        let index = Self::slot_index(self.next);
        if self.slots[index].seq == Some(self.next) {
            self.slots[index].seq = None;
            self.buffered -= 1;
            self.played_through = Some(self.next);
            self.next += 1;
            self.stats.played += 1;
            let slot = &self.slots[index];
            self.played_timestamp = Some(slot.timestamp);
            if let Some(arrival) = slot.arrival {
                self.buffer_delay_total += now.saturating_duration_since(arrival);
            }
            self.mode = if slot.end {
                Mode::Idle
            } else {
                Mode::Playing { dry_since: None }
            };
            return Playout::Frame(&slot.payload);
        }
        if self.buffered > 0 {
            // Something later is here, so this frame is lost, not merely slow.
            self.stats.lost += 1;
            self.played_through = Some(self.next);
            self.next += 1;
            self.mode = Mode::Playing { dry_since: None };
            let missing = self.next - 1;
            let ahead = (1..=AHEAD_FRAMES).find_map(|frames| {
                let seq = missing + frames as i64;
                let slot = &self.slots[Self::slot_index(seq)];
                (slot.seq == Some(seq)).then_some((slot, frames, seq))
            });
            let ahead = ahead
                .filter(|(slot, _, _)| slot.fec)
                .map(|(slot, frames, seq)| Ahead {
                    packet: &slot.payload,
                    frames,
                    seq,
                });
            return Playout::Missing { ahead };
        }
        let dry_since = dry_since.unwrap_or(now);
        if now.saturating_duration_since(dry_since) >= self.config.spurt_timeout {
            // The end marker was lost; the frames we waited for count as lost from here on.
            self.mode = Mode::Idle;
            return Playout::Idle;
        }
        self.stats.stretched += 1;
        self.mode = Mode::Playing {
            dry_since: Some(dry_since),
        };
        Playout::Missing { ahead: None }
    }

    fn start_due(&self, now: Instant) -> bool {
        let slot = &self.slots[Self::slot_index(self.next)];
        let (Some((origin, origin_ts)), Some(_)) = (self.origin, slot.seq) else {
            return true;
        };
        let media = f64::from(slot.timestamp.wrapping_sub(origin_ts)) / f64::from(SAMPLE_RATE);
        let due = self.min_transit() + media + self.target.as_secs_f64();
        now.saturating_duration_since(origin).as_secs_f64() >= due
    }
}
