//! Jitter buffer behaviour: reordering, duplicates, late frames, loss, sender restarts,
//! sequence wrap, delay adaptation; and no panic on any push/pop sequence.

use callsign_node::audio::jitter::{
    IncomingFrame, JitterBuffer, JitterConfig, Playout, PushOutcome,
};
use callsign_node::audio::FrameDuration;
use proptest::prelude::*;
use std::time::{Duration, Instant};

const FRAME: Duration = Duration::from_millis(20);
const TS_STEP: u32 = 960;

fn config() -> JitterConfig {
    JitterConfig {
        frame: FrameDuration::Ms20,
        min_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(400),
        initial_delay: Duration::from_millis(40),
        ..JitterConfig::default()
    }
}

/// Payload that names its frame, so playout order can be checked.
fn payload(seq: u16) -> [u8; 2] {
    seq.to_be_bytes()
}

fn frame(seq: u16, ts: u32, end: bool, payload: &[u8]) -> IncomingFrame<'_> {
    IncomingFrame {
        seq,
        timestamp: ts,
        end,
        fec: true,
        payload,
    }
}

#[derive(Debug, PartialEq)]
enum Out {
    Idle,
    Frame(u16),
    Fec(u16),
    Conceal,
}

fn pop(buffer: &mut JitterBuffer, now: Instant) -> Out {
    match buffer.pop(now) {
        Playout::Idle => Out::Idle,
        Playout::Frame(p) => Out::Frame(u16::from_be_bytes([p[0], p[1]])),
        Playout::Missing { ahead: Some(a) } if a.frames == 1 => {
            Out::Fec(u16::from_be_bytes([a.packet[0], a.packet[1]]))
        }
        Playout::Missing { .. } => Out::Conceal,
    }
}

/// Delivers frames `(seq, arrival offset)` and pops every frame period from t0 + 10 ms,
/// returning the non-idle playout sequence.
fn run(
    buffer: &mut JitterBuffer,
    t0: Instant,
    first_seq: u16,
    arrivals: &[(u16, Duration)],
    periods: usize,
) -> Vec<Out> {
    let mut arrivals = arrivals.to_vec();
    arrivals.sort_by_key(|a| a.1);
    let mut next = 0;
    let mut played = Vec::new();
    for k in 0..periods {
        let now = t0 + FRAME * k as u32 + Duration::from_millis(10);
        while next < arrivals.len() && t0 + arrivals[next].1 <= now {
            let (seq, at) = arrivals[next];
            let ts = u32::from(seq.wrapping_sub(first_seq)).wrapping_mul(TS_STEP);
            let p = payload(seq);
            buffer.push(frame(seq, ts, false, &p), t0 + at);
            next += 1;
        }
        let out = pop(buffer, now);
        if out != Out::Idle {
            played.push(out);
        }
    }
    played
}

fn on_time(
    seqs: impl IntoIterator<Item = u16>,
    first: u16,
    latency: Duration,
) -> Vec<(u16, Duration)> {
    seqs.into_iter()
        .map(|s| (s, FRAME * u32::from(s.wrapping_sub(first)) + latency))
        .collect()
}

#[test]
fn reorders_frames_within_the_delay() {
    let mut buffer = JitterBuffer::new(config());
    let t0 = Instant::now();
    let mut arrivals = on_time(0..20, 0, Duration::from_millis(5));
    // 3 arrives after 4, 10 after 12.
    arrivals[3].1 += Duration::from_millis(25);
    arrivals[10].1 += Duration::from_millis(45);
    let played = run(&mut buffer, t0, 0, &arrivals, 40);
    let expected: Vec<Out> = (0..20).map(Out::Frame).collect();
    assert_eq!(played[..20], expected[..]);
    let stats = buffer.stats();
    assert_eq!((stats.late, stats.lost, stats.played), (0, 0, 20));
}

#[test]
fn drops_duplicates_and_counts_them() {
    let mut buffer = JitterBuffer::new(config());
    let t0 = Instant::now();
    let p = payload(0);
    assert_eq!(
        buffer.push(frame(0, 0, false, &p), t0),
        PushOutcome::Buffered
    );
    assert_eq!(
        buffer.push(frame(0, 0, false, &p), t0),
        PushOutcome::Duplicate
    );
    let mut arrivals = on_time(0..10, 0, Duration::from_millis(5));
    arrivals.extend(on_time(0..10, 0, Duration::from_millis(6)));
    let played = run(&mut buffer, t0, 0, &arrivals, 30);
    let expected: Vec<Out> = (0..10).map(Out::Frame).collect();
    assert_eq!(played[..10], expected[..]);
    // Copies that came after their original was played are late, not played twice.
    let stats = buffer.stats();
    assert_eq!(stats.played, 10);
    assert!(stats.duplicates + stats.late >= 10, "{stats:?}");
}

#[test]
fn a_frame_after_its_slot_is_late_and_its_gap_is_recovered_from_the_next() {
    let mut buffer = JitterBuffer::new(config());
    let t0 = Instant::now();
    let mut arrivals = on_time(0..20, 0, Duration::from_millis(5));
    arrivals[8].1 += Duration::from_millis(300);
    let played = run(&mut buffer, t0, 0, &arrivals, 40);
    assert_eq!(played[8], Out::Fec(9), "{played:?}");
    assert_eq!(played[9], Out::Frame(9));
    let stats = buffer.stats();
    assert_eq!((stats.late, stats.lost), (1, 1), "{stats:?}");
}

#[test]
fn two_lost_frames_conceal_then_recover() {
    let mut buffer = JitterBuffer::new(config());
    let t0 = Instant::now();
    let arrivals: Vec<_> = on_time(0..20, 0, Duration::from_millis(5))
        .into_iter()
        .filter(|(s, _)| *s != 5 && *s != 6)
        .collect();
    let played = run(&mut buffer, t0, 0, &arrivals, 40);
    // 5 is missing and 6 is not here to carry it: conceal; 6 is missing and 7 is here: FEC.
    assert_eq!(played[5..8], [Out::Conceal, Out::Fec(7), Out::Frame(7)]);
    assert_eq!(buffer.stats().lost, 2);
}

#[test]
fn a_sender_restart_resets_the_sequence() {
    let mut buffer = JitterBuffer::new(config());
    let t0 = Instant::now();
    let played = run(
        &mut buffer,
        t0,
        40_000,
        &on_time(40_000..40_010, 40_000, Duration::from_millis(5)),
        20,
    );
    let expected: Vec<Out> = (40_000..40_010).map(Out::Frame).collect();
    assert_eq!(played[..10], expected[..]);
    // The end marker never came: the dry buffer conceals until the spurt times out.
    assert!(
        played[10..].iter().all(|o| *o == Out::Conceal),
        "{played:?}"
    );
    // The sender restarts: a fresh random sequence number, timestamps from zero.
    let t1 = t0 + Duration::from_secs(5);
    let p = payload(7);
    assert_eq!(
        buffer.push(frame(7, 0, false, &p), t1),
        PushOutcome::Restarted
    );
    let played = run(
        &mut buffer,
        t1,
        7,
        &on_time(8..15, 7, Duration::from_millis(5)),
        20,
    );
    let expected: Vec<Out> = (7..15).map(Out::Frame).collect();
    assert_eq!(played[..8], expected[..], "{played:?}");
    assert_eq!(buffer.stats().restarts, 1);
}

/// A sender that crashed and came back counts from the start again, but its clock runs on:
/// its first frames must play, not be dropped as late (chaos seed 184 lost 21 of 126).
#[test]
fn a_restarted_sender_counting_from_below_plays_at_once() {
    let mut buffer = JitterBuffer::new(config());
    let t0 = Instant::now();
    let first = on_time(0..21, 0, Duration::from_millis(5));
    let played = run(&mut buffer, t0, 0, &first, 30);
    assert_eq!(
        played.iter().filter(|o| matches!(o, Out::Frame(_))).count(),
        21
    );
    // 20 s later, the new run's frames 0.. with timestamps 20 s on.
    let t1 = t0 + Duration::from_secs(20);
    let ts = 20 * 48_000;
    let p = payload(0);
    assert_eq!(
        buffer.push(frame(0, ts, false, &p), t1),
        PushOutcome::Restarted
    );
    // The rest arrive on time; play 40 periods.
    let mut frames = Vec::new();
    let mut next = 1u16;
    for k in 0..40u32 {
        let now = t1 + FRAME * k + Duration::from_millis(10);
        while next < 30 && t1 + FRAME * u32::from(next) + Duration::from_millis(5) <= now {
            let p = payload(next);
            let ts = ts + u32::from(next) * TS_STEP;
            buffer.push(frame(next, ts, false, &p), now);
            next += 1;
        }
        if let out @ Out::Frame(_) = pop(&mut buffer, now) {
            frames.push(out);
        }
    }
    let expected: Vec<Out> = (0..30).map(Out::Frame).collect();
    assert_eq!(frames, expected);
    assert_eq!(buffer.stats().late, 0);
}

#[test]
fn sequence_numbers_wrap() {
    let mut buffer = JitterBuffer::new(config());
    let t0 = Instant::now();
    let seqs: Vec<u16> = (0..20u16).map(|i| 65_530u16.wrapping_add(i)).collect();
    let played = run(
        &mut buffer,
        t0,
        65_530,
        &on_time(seqs.clone(), 65_530, Duration::from_millis(5)),
        40,
    );
    let expected: Vec<Out> = seqs.into_iter().map(Out::Frame).collect();
    assert_eq!(played[..20], expected[..]);
    assert_eq!(buffer.stats().restarts, 0);
}

#[test]
fn the_end_marker_ends_the_spurt_and_the_next_spurt_plays() {
    let mut buffer = JitterBuffer::new(config());
    let t0 = Instant::now();
    for seq in 0..5u16 {
        let p = payload(seq);
        buffer.push(
            frame(seq, u32::from(seq) * TS_STEP, seq == 4, &p),
            t0 + FRAME * u32::from(seq),
        );
    }
    let mut outs = Vec::new();
    for k in 0..12u32 {
        outs.push(pop(&mut buffer, t0 + FRAME * k + Duration::from_millis(10)));
    }
    let frames: Vec<_> = outs.iter().filter(|o| **o != Out::Idle).collect();
    assert_eq!(
        frames,
        (0..5)
            .map(Out::Frame)
            .collect::<Vec<_>>()
            .iter()
            .collect::<Vec<_>>()
    );
    assert!(!buffer.is_active(), "no concealment after an explicit end");
}

#[test]
fn delay_grows_with_jitter_and_stays_within_bounds() {
    fn settle(extra: impl Fn(u16) -> Duration, pop_after: Duration) -> f64 {
        settle_with(config(), true, extra, pop_after)
    }

    // Calm path: the target stays near the minimum.
    let calm_target = settle(|_| Duration::ZERO, Duration::from_millis(1));
    assert!(calm_target <= 25.0, "calm target {calm_target}");

    // Jittery path: arrivals spread by up to 120 ms.
    let jitter_ms = [0u64, 90, 20, 120, 5, 60, 110, 0, 40, 100];
    let rough_target = settle(
        |i| Duration::from_millis(jitter_ms[usize::from(i) % 10]),
        Duration::ZERO,
    );
    assert!(
        (120.0..=400.0).contains(&rough_target),
        "rough target {rough_target}"
    );
}

#[test]
fn the_delay_is_the_measured_jitter_plus_a_frame_or_half_of_one() {
    // A sender that protects its stream: a frame on top, so the packet that rebuilds a lost
    // frame is here in time. One that does not (a clean path): half a frame, since the pull's
    // phase already adds up to a frame after the scheduled time.
    for (fec, calm_range, jittery_range) in [
        (true, 20.0..=21.0, 27.0..=29.0),
        (false, 10.0..=11.0, 17.0..=19.0),
    ] {
        let calm = settle_with(
            JitterConfig::default(),
            fec,
            |_| Duration::ZERO,
            Duration::from_millis(1),
        );
        assert!(calm_range.contains(&calm), "fec {fec}: calm target {calm}");
        // Up to 8 ms of jitter: about 8 ms more.
        let jittery = settle_with(
            JitterConfig::default(),
            fec,
            |i| Duration::from_millis(u64::from(i % 9)),
            Duration::ZERO,
        );
        assert!(
            jittery_range.contains(&jittery),
            "fec {fec}: jittery target {jittery}"
        );
    }
}

#[test]
fn on_a_calm_protected_path_a_lost_frame_is_rebuilt_in_place_at_any_pull_phase() {
    // A stretch would make the rest of the spurt play a frame later.
    for phase_ms in 0..20u64 {
        let mut buffer = JitterBuffer::new(JitterConfig::default());
        let t0 = Instant::now();
        let latency = Duration::from_millis(5);
        // Two spurts 200 ms apart: the first measures the path, the second loses frame 40.
        let mut arrivals = on_time(0..20u16, 0, latency);
        arrivals.extend(on_time(30..60u16, 0, latency));
        arrivals.retain(|(seq, _)| *seq != 40);
        let mut next = 0;
        let mut played = Vec::new();
        for k in 0..120u32 {
            let now = t0 + FRAME * k + Duration::from_millis(phase_ms);
            // Unlike `run`, each spurt ends with its end marker.
            while next < arrivals.len() && t0 + arrivals[next].1 <= now {
                let (seq, at) = arrivals[next];
                let p = payload(seq);
                let ts = u32::from(seq) * TS_STEP;
                buffer.push(frame(seq, ts, seq == 19 || seq == 59, &p), t0 + at);
                next += 1;
            }
            let out = pop(&mut buffer, now);
            if out != Out::Idle {
                played.push(out);
            }
        }
        assert!(
            played.contains(&Out::Fec(41)) && !played.contains(&Out::Conceal),
            "phase {phase_ms} ms: {played:?}"
        );
    }
}

/// Three 50-frame spurts a second apart, marked protected or not by `fec`; frame `i` of a spurt
/// arrives `extra(i)` late and is popped `pop_after` after arriving. Returns the target delay
/// the buffer settled on.
fn settle_with(
    config: JitterConfig,
    fec: bool,
    extra: impl Fn(u16) -> Duration,
    pop_after: Duration,
) -> f64 {
    let mut buffer = JitterBuffer::new(config);
    let t0 = Instant::now();
    for spurt in 0..3u16 {
        let base = spurt * 60;
        let start = FRAME * u32::from(base) + Duration::from_secs(u64::from(spurt));
        for i in 0..50u16 {
            let seq = base + i;
            let p = payload(seq);
            let ts = (u32::from(seq) * TS_STEP).wrapping_add(u32::from(spurt) * 48_000);
            let at = t0 + start + FRAME * u32::from(i) + extra(i);
            let frame = IncomingFrame {
                fec,
                ..frame(seq, ts, i == 49, &p)
            };
            buffer.push(frame, at);
            buffer.pop(at + pop_after);
        }
    }
    buffer.stats().target_delay_ms
}

#[test]
fn oversized_and_empty_payloads_are_refused() {
    let mut buffer = JitterBuffer::new(config());
    let t0 = Instant::now();
    let big = vec![0u8; 5000];
    assert_eq!(
        buffer.push(frame(0, 0, false, &big), t0),
        PushOutcome::Malformed
    );
    assert_eq!(
        buffer.push(frame(0, 0, false, &[]), t0),
        PushOutcome::Malformed
    );
    assert_eq!(buffer.stats().malformed, 2);
    assert_eq!(buffer.buffered(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any interleaving of pushes (arbitrary seq, timestamp, flags, sizes) and pops keeps the
    /// buffer's own accounting consistent and never panics.
    #[test]
    fn arbitrary_traffic_never_panics(
        ops in prop::collection::vec((any::<bool>(), any::<u16>(), any::<u32>(), any::<bool>(), 0usize..1400, 0u64..100), 1..300)
    ) {
        let mut buffer = JitterBuffer::new(config());
        let mut now = Instant::now();
        let body = vec![1u8; 1400];
        for (is_push, seq, ts, end, len, dt) in ops {
            now += Duration::from_millis(dt);
            if is_push {
                buffer.push(IncomingFrame { seq, timestamp: ts, end, fec: true, payload: &body[..len] }, now);
            } else {
                let _ = buffer.pop(now);
            }
            prop_assert!(buffer.buffered() <= 64);
        }
        let stats = buffer.stats();
        prop_assert!(stats.played <= stats.received);
        prop_assert!(stats.target_delay_ms >= 20.0 && stats.target_delay_ms <= 400.0);
    }
}
