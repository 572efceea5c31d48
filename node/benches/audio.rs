//! Audio engine benchmarks: Opus encode/decode per 20 ms frame (and as a real-time factor),
//! the decoder with speech enhancement and deep PLC against the classic one (complexity 0),
//! DRED recovery, the echo canceller per 20 ms,
//! mixing 16 streams (and placing them, for positional channels), and the jitter buffer's cost
//! per packet. Each figure is printed next to a
//! baseline measured in the same run, so the ratio means something on a noisy machine.
//!
//! Run: `cargo bench -p callsign-node --bench audio`. Prints numbers; asserts nothing.

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::{Duration, Instant};

use callsign_mesh::charter::ChannelId;
use callsign_mesh::spatial::{
    ContextId, Falloff, Placement, Point, Position, Spatial, SpatialMode,
};
use callsign_node::audio::codec::{EncoderConfig, VoiceDecoder, VoiceEncoder, MAX_PACKET};
use callsign_node::audio::jitter::{IncomingFrame, JitterBuffer, JitterConfig};
use callsign_node::audio::mixer::{ChannelMix, DuckRule, MixInput, Mixer, SourceMix};
use callsign_node::audio::synth::SpeechLike;
use callsign_node::audio::FrameDuration;

const FRAME: FrameDuration = FrameDuration::Ms20;

/// Best of five runs of `iterations` calls, per call.
fn measure(iterations: u32, mut f: impl FnMut()) -> Duration {
    (0..5)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iterations {
                f();
            }
            start.elapsed() / iterations
        })
        .min()
        .unwrap()
}

/// Frame `j` of a stream where three frames in four are lost: decoded or concealed.
fn three_of_four_concealed(
    decoder: &mut VoiceDecoder,
    packets: &[Vec<u8>],
    j: usize,
    pcm: &mut [f32],
) {
    if j % 4 == 0 {
        black_box(decoder.decode(&packets[j % packets.len()], pcm).unwrap());
    } else {
        black_box(decoder.conceal(pcm).unwrap());
    }
}

fn main() {
    let n = FRAME.samples();
    let mut speech = vec![0.0f32; n * 500];
    SpeechLike::new(1, 0.5).fill(&mut speech);
    let frames: Vec<&[f32]> = speech.chunks_exact(n).collect();

    // Encode: 24 kb/s on a clean path (no redundancy), then protected at 20 % loss (LBRR and
    // DRED, +12 kb/s).
    let mut encoder = VoiceEncoder::new(EncoderConfig::default()).unwrap();
    for _ in 0..callsign_node::audio::codec::CLEAN_REPORTS_TO_DROP {
        encoder.set_expected_loss(0).unwrap();
    }
    let mut packet = [0u8; MAX_PACKET];
    let mut i = 0;
    let encode_clean = measure(500, || {
        black_box(
            encoder
                .encode(frames[i % frames.len()], &mut packet)
                .unwrap(),
        );
        i += 1;
    });
    encoder.set_expected_loss(20).unwrap();
    let mut packets = Vec::new();
    for f in &frames {
        let len = encoder.encode(f, &mut packet).unwrap();
        packets.push(packet[..len].to_vec());
    }
    let encode = measure(500, || {
        black_box(
            encoder
                .encode(frames[i % frames.len()], &mut packet)
                .unwrap(),
        );
        i += 1;
    });
    let mut decoder = VoiceDecoder::new(FRAME).unwrap();
    let mut pcm = vec![0.0f32; n];
    let mut j = 0;
    let decode = measure(500, || {
        black_box(
            decoder
                .decode(&packets[j % packets.len()], &mut pcm)
                .unwrap(),
        );
        j += 1;
    });
    let fec = measure(500, || {
        let k = j % packets.len();
        black_box(decoder.recover(&packets[k], 1, k as i64, &mut pcm).unwrap());
        j += 1;
    });
    // DRED: a frame three back, parsing each packet once (as a burst would).
    let dred = measure(500, || {
        let k = j % packets.len();
        black_box(decoder.recover(&packets[k], 3, k as i64, &mut pcm).unwrap());
        j += 1;
    });
    let plc = measure(500, || {
        three_of_four_concealed(&mut decoder, &packets, j, &mut pcm);
        j += 1;
    });
    let mut classic = VoiceDecoder::with_complexity(FRAME, 0).unwrap();
    let classic_decode = measure(500, || {
        black_box(
            classic
                .decode(&packets[j % packets.len()], &mut pcm)
                .unwrap(),
        );
        j += 1;
    });
    let classic_plc = measure(500, || {
        three_of_four_concealed(&mut classic, &packets, j, &mut pcm);
        j += 1;
    });
    // Echo cancellation: 20 ms of far end in, two 10 ms capture blocks cleaned.
    let mut canceller = callsign_node::audio::echo::EchoCanceller::new();
    let stereo: Vec<f32> = frames[0].iter().flat_map(|s| [*s, *s]).collect();
    let mut block = [0.0f32; callsign_node::audio::echo::ECHO_FRAME];
    let echo = measure(500, || {
        canceller.render_stereo(&stereo);
        for half in frames[j % frames.len()].chunks_exact(block.len()) {
            block.copy_from_slice(half);
            canceller.process(&mut block);
        }
        j += 1;
    });
    let frame_time = FRAME.duration().as_secs_f64();
    let rtf = |d: Duration| frame_time / d.as_secs_f64();
    println!("opus 24 kb/s, 20 ms frames (real-time factor = frame time / cost):");
    println!(
        "  encode     {:>8.1} µs/frame   {:>7.0}x real time (clean path)",
        us(encode_clean),
        rtf(encode_clean)
    );
    println!(
        "  encode     {:>8.1} µs/frame   {:>7.0}x real time (20 % loss: LBRR + DRED)",
        us(encode),
        rtf(encode)
    );
    println!(
        "  decode     {:>8.1} µs/frame   {:>7.0}x real time",
        us(decode),
        rtf(decode)
    );
    println!(
        "  fec decode {:>8.1} µs/frame   {:>7.0}x real time",
        us(fec),
        rtf(fec)
    );
    println!(
        "  dred decode {:>7.1} µs/frame   {:>7.0}x real time (3 frames back)",
        us(dred),
        rtf(dred)
    );
    println!(
        "  decoder complexity {} (deep PLC, OSCE) vs 0 (classic), same run:\n    \
         decode {:.1} vs {:.1} µs/frame ({:.2}x); 3 of 4 concealed {:.1} vs {:.1} µs/frame ({:.2}x)",
        callsign_node::audio::codec::DECODER_COMPLEXITY,
        us(decode),
        us(classic_decode),
        decode.as_secs_f64() / classic_decode.as_secs_f64(),
        us(plc),
        us(classic_plc),
        plc.as_secs_f64() / classic_plc.as_secs_f64(),
    );
    println!(
        "  echo canceller {:>5.1} µs per 20 ms   {:.2} % of a core",
        us(echo),
        100.0 * echo.as_secs_f64() / frame_time
    );

    // Mixer: 16 streams over 4 channels with a duck rule, against a bare summing loop.
    let mut mixer = Mixer::new();
    for c in 0..4 {
        mixer.set_channel(
            ChannelId(c),
            ChannelMix {
                pan: -0.5 + 0.3 * c as f32,
                ..ChannelMix::default()
            },
        );
    }
    mixer.set_duck_rules(vec![DuckRule {
        when_active: ChannelId(0),
        ducked: ChannelId(1),
        db: 12.0,
    }]);
    let inputs: Vec<MixInput> = (0..16)
        .map(|s| MixInput {
            channel: ChannelId(s % 4),
            source: s,
            samples: frames[s as usize],
        })
        .collect();
    let mut out = vec![0.0f32; 2 * n];
    let mix = measure(2000, || {
        mixer.mix(black_box(&inputs), &mut out).unwrap();
    });
    let bare = measure(2000, || {
        out.fill(0.0);
        for input in black_box(&inputs) {
            for (pair, s) in out.chunks_exact_mut(2).zip(input.samples) {
                pair[0] += s;
                pair[1] += s;
            }
        }
        black_box(&out);
    });
    println!("mixer, 16 streams into one 20 ms stereo block:");
    println!(
        "  mixer      {:>8.1} µs/block   bare sum {:.1} µs   ratio {:.2}   {:.0}x real time",
        us(mix),
        us(bare),
        mix.as_secs_f64() / bare.as_secs_f64(),
        rtf(mix)
    );

    // Positional mixing: 16 talkers placed every block (direction, distance, rear cue, as a
    // frame with a position arrives) against the same 16 unplaced.
    let spatial = Spatial {
        mode: SpatialMode::Positional,
        range_cm: 5000,
        full_cm: 200,
        falloff: Falloff::Inverse,
    };
    let world = ContextId::of("bench");
    let listener = Position::facing_forward(world, [0.0, 0.0, 0.0]);
    let mut step = 0f32;
    let mut placed_mixer = Mixer::new();
    let placed = measure(2000, || {
        step += 0.01;
        for s in 0..16u64 {
            let angle = step + s as f32;
            let talker = Point {
                context: world,
                at: [10.0 * angle.sin(), 0.0, 10.0 * angle.cos()],
            };
            if let Placement::Placed { gain, pan } =
                spatial.place(Some(&listener), Some(black_box(&talker)))
            {
                placed_mixer.set_source(
                    s,
                    SourceMix {
                        gain,
                        pan: Some(pan),
                    },
                );
            }
        }
        placed_mixer.mix(black_box(&inputs), &mut out).unwrap();
    });
    let mut plain_mixer = Mixer::new();
    let unplaced = measure(2000, || {
        plain_mixer.mix(black_box(&inputs), &mut out).unwrap();
    });
    let per_talker = (placed.as_secs_f64() - unplaced.as_secs_f64()).max(0.0) / 16.0;
    println!("positional mixing, 16 talkers placed every 20 ms block:");
    println!(
        "  placed     {:>8.1} µs/block   unplaced {:.1} µs   ratio {:.2}   {:.3} µs per \
         positioned talker ({:.4} % of a core)",
        us(placed),
        us(unplaced),
        placed.as_secs_f64() / unplaced.as_secs_f64(),
        per_talker * 1e6,
        per_talker / 0.020 * 100.0
    );

    // Jitter buffer: push + pop per packet with 2 % reordering, against a VecDeque of copies.
    let config = JitterConfig::default();
    let mut buffer = JitterBuffer::new(config);
    let t0 = Instant::now();
    let mut k = 0u32;
    let per_packet = measure(20_000, || {
        // Swap every 50th pair so the reorder path runs too.
        let seq = if k % 50 == 10 {
            k + 1
        } else if k % 50 == 11 {
            k - 1
        } else {
            k
        };
        let p = &packets[(seq as usize) % packets.len()];
        let now = t0 + Duration::from_millis(20 * u64::from(k));
        buffer.push(
            IncomingFrame {
                seq: seq as u16,
                timestamp: seq.wrapping_mul(960),
                end: false,
                fec: true,
                payload: p,
            },
            now,
        );
        black_box(buffer.pop(now + Duration::from_millis(10)));
        k += 1;
    });
    let mut queue: VecDeque<Vec<u8>> = VecDeque::with_capacity(64);
    let mut m = 0usize;
    let baseline = measure(20_000, || {
        let p = &packets[m % packets.len()];
        queue.push_back(p.clone());
        black_box(queue.pop_front());
        m += 1;
    });
    println!("jitter buffer (push + pop):");
    println!(
        "  jitter     {:>8.0} ns/packet  VecDeque<Vec<u8>> {:.0} ns   ratio {:.2}",
        baseline_ns(per_packet),
        baseline_ns(baseline),
        per_packet.as_secs_f64() / baseline.as_secs_f64()
    );
    let stats = buffer.stats();
    println!(
        "  (played {} lost {} late {})",
        stats.played, stats.lost, stats.late
    );
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn baseline_ns(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}
