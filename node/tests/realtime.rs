//! Proves the real-time paths do not allocate: the device callbacks (capture downmix into the
//! ring, playback out of it), the worker's per-frame mixer, jitter-buffer and decoder steps
//! once warm, and the echo canceller the worker runs on every capture frame.
//! A counting global allocator counts allocations made by this thread while a probe is armed.

use callsign_mesh::charter::ChannelId;
use callsign_node::audio::codec::{EncoderConfig, VoiceDecoder, VoiceEncoder, MAX_PACKET};
use callsign_node::audio::echo::{EchoCanceller, ECHO_FRAME};
use callsign_node::audio::jitter::{IncomingFrame, JitterBuffer, JitterConfig};
use callsign_node::audio::mixer::{ChannelMix, DuckRule, MixInput, Mixer};
use callsign_node::audio::realtime::{capture_ring, playback_ring, CallbackCounters};
use callsign_node::audio::synth::SpeechLike;
use callsign_node::audio::FrameDuration;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct CountingAllocator;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ARMED.with(Cell::get) {
            ALLOCATIONS.with(|c| c.set(c.get() + 1));
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if ARMED.with(Cell::get) {
            ALLOCATIONS.with(|c| c.set(c.get() + 1));
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Allocations `f` makes on this thread.
fn allocations(f: impl FnOnce()) -> u64 {
    ALLOCATIONS.with(|c| c.set(0));
    ARMED.with(|a| a.set(true));
    f();
    ARMED.with(|a| a.set(false));
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn the_probe_sees_allocations() {
    // Guards against a probe that can never fail.
    assert!(allocations(|| drop(std::hint::black_box(vec![1u8; 64]))) >= 1);
}

#[test]
fn device_callbacks_do_not_allocate() {
    let counters = Arc::new(CallbackCounters::default());
    let (mut capture, mut reader) = capture_ring(48_000, counters.clone());
    let (mut writer, mut playback) = playback_ring(48_000, counters.clone());
    let stereo_in: Vec<f32> = (0..2 * 512).map(|i| (i as f32 * 0.01).sin()).collect();
    let mut device_out = vec![0.0f32; 2 * 512];
    let mut worker_buf = vec![0.0f32; 4096];

    let count = allocations(|| {
        for _ in 0..500 {
            // Capture callback: interleaved stereo from the device.
            capture.process(&stereo_in, 2);
            // Playback callback, including underruns (the ring is drained below).
            playback.process(&mut device_out, 2);
            playback.process(&mut device_out[..512], 1);
        }
    });
    assert_eq!(count, 0, "device callbacks allocated {count} times");
    // The callbacks did their work: samples crossed the rings and overruns were counted.
    assert!(reader.read(&mut worker_buf) > 0);
    assert!(counters.capture_overruns.load(Ordering::Relaxed) > 0);
    assert!(counters.playback_underruns.load(Ordering::Relaxed) > 0);
    assert!(writer.write(&[0.5; 64]) == 64);
    playback.process(&mut device_out[..64], 2);
    assert_eq!(device_out[0], 0.5);
}

#[test]
fn warm_mixer_jitter_buffer_and_decoder_do_not_allocate() {
    let mut mixer = Mixer::new();
    for c in 0..4 {
        mixer.set_channel(ChannelId(c), ChannelMix::default());
    }
    mixer.set_duck_rules(vec![DuckRule {
        when_active: ChannelId(0),
        ducked: ChannelId(1),
        db: 10.0,
    }]);
    let streams: Vec<Vec<f32>> = (0..16).map(|i| vec![0.05 * (i % 5) as f32; 960]).collect();
    let inputs: Vec<MixInput> = streams
        .iter()
        .enumerate()
        .map(|(i, s)| MixInput {
            channel: ChannelId(i as u64 % 4),
            source: i as u64,
            samples: s,
        })
        .collect();
    let mut out = vec![0.0; 1920];

    let mut buffer = JitterBuffer::new(JitterConfig::default());
    let frame = FrameDuration::Ms20;
    let mut encoder = VoiceEncoder::new(EncoderConfig::default()).unwrap();
    let mut decoder = VoiceDecoder::new(frame).unwrap();
    let mut packet = [0u8; MAX_PACKET];
    let mut pcm = vec![0.0f32; frame.samples()];
    SpeechLike::new(3, 0.5).fill(&mut pcm);
    let len = encoder.encode(&pcm, &mut packet).unwrap();
    let t0 = Instant::now();
    let payload = [7u8; 80];
    let count = allocations(|| {
        for k in 0..1000u32 {
            mixer.mix(&inputs, &mut out).unwrap();
            let seq = (k % 65_536) as u16;
            let now = t0 + Duration::from_millis(20 * u64::from(k));
            let frame = IncomingFrame {
                seq,
                timestamp: k * 960,
                end: false,
                fec: true,
                payload: &payload,
            };
            buffer.push(frame, now);
            let _ = buffer.pop(now + Duration::from_millis(10));
            match k % 3 {
                0 => decoder.decode(&packet[..len], &mut pcm).unwrap(),
                // Rebuilds from one to three frames back (LBRR, then DRED).
                1 => decoder
                    .recover(
                        &packet[..len],
                        1 + (k as usize / 3) % 3,
                        i64::from(k),
                        &mut pcm,
                    )
                    .unwrap(),
                _ => decoder.conceal(&mut pcm).unwrap(),
            };
        }
    });
    assert_eq!(
        count, 0,
        "mixer/jitter buffer/decoder allocated {count} times"
    );
    assert!(buffer.stats().played > 900);
}

#[test]
fn the_echo_canceller_does_not_allocate_awake_asleep_or_starting_over() {
    let mut far = vec![0.0f32; 48_000 * 8];
    SpeechLike::new(5, 0.5).fill(&mut far);
    // Two seconds of silence (it sleeps), and the echo path changes at 5 s (it starts over).
    far[48_000 * 2..48_000 * 4].fill(0.0);
    let echo = |i: usize, far: &[f32]| {
        let (delay, gain) = if i < 48_000 * 5 {
            (2400, 0.5)
        } else {
            (3000, -0.7)
        };
        i.checked_sub(delay).map_or(0.0, |j| gain * far[j])
    };
    let mut canceller = EchoCanceller::new();
    let mut block = [0.0f32; ECHO_FRAME];
    let count = allocations(|| {
        for start in (0..far.len()).step_by(ECHO_FRAME) {
            canceller.render(&far[start..start + ECHO_FRAME]);
            for (i, s) in block.iter_mut().enumerate() {
                *s = echo(start + i, &far);
            }
            canceller.process(&mut block);
        }
    });
    assert_eq!(count, 0, "the echo canceller allocated {count} times");
    assert!(
        canceller.stats().erle_db.is_some_and(|db| db > 10.0),
        "{:?}",
        canceller.stats()
    );
}
