//! `audio loopback`: one talker's audio through the whole voice path in virtual time —
//! encoder → impairment → jitter buffer → decoder — producing what a listener would hear.
//!
//! The receiver reports its measured loss back to the encoder once a second (as RTCP-style
//! feedback would), so FEC strength follows the path. Output is deterministic for a seed.

use super::clock::VirtualClock;
use super::codec::{EncoderConfig, VoiceDecoder, VoiceEncoder, MAX_PACKET};
use super::impairment::{Impairment, ImpairmentConfig};
use super::jitter::{IncomingFrame, JitterConfig};
use super::stream::{ReceiveStream, StreamStats};
use super::{AudioError, SAMPLE_RATE};
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoopbackConfig {
    pub encoder: EncoderConfig,
    pub jitter: JitterConfig,
    pub impairment: ImpairmentConfig,
    pub seed: u64,
    /// Run the libopus 1.3-era path instead (see [`EncoderConfig::legacy`]; the decoder at
    /// complexity 0: classic PLC, no DRED, no enhancement), to measure against.
    pub legacy: bool,
}

/// What happened to the stream.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct LoopbackReport {
    pub frames: u64,
    pub bytes_sent: u64,
    pub lost_in_network: u64,
    pub mean_network_delay_ms: f64,
    /// Mean capture-to-playout delay of played frames (network plus jitter buffer).
    pub mean_playout_delay_ms: f64,
    pub final_expected_loss_pct: u8,
    /// Mean sent bitrate, redundancy included, kb/s.
    pub mean_kbps: f64,
    #[serde(flatten)]
    pub receiver: StreamStats,
}

struct InFlight {
    arrival: Duration,
    seq: u16,
    timestamp: u32,
    end: bool,
    fec: bool,
    payload: Vec<u8>,
}

/// Runs `input` (48 kHz mono) through the path. Returns the listener's audio, starting at the
/// first frame period in which anything played, and the report.
pub fn run_loopback(
    input: &[f32],
    config: &LoopbackConfig,
) -> Result<(Vec<f32>, LoopbackReport), AudioError> {
    let frame = config.encoder.frame;
    let frame_len = frame.samples();
    let frame_time = frame.duration();
    let encoder_config = if config.legacy {
        config.encoder.clone().legacy()
    } else {
        config.encoder.clone()
    };
    let mut encoder = VoiceEncoder::new(encoder_config)?;
    let jitter = JitterConfig {
        frame,
        ..config.jitter.clone()
    };
    let decoder = if config.legacy {
        VoiceDecoder::with_complexity(frame, 0)?
    } else {
        VoiceDecoder::new(frame)?
    };
    let mut stream = ReceiveStream::with_decoder(decoder, jitter);
    let mut impairment = Impairment::new(config.impairment.clone(), config.seed);
    let mut report = LoopbackReport::default();

    // Sender: the whole input is one transmission.
    let frames = input.len().div_ceil(frame_len).max(1);
    let mut in_flight = Vec::with_capacity(frames);
    let mut pcm = vec![0.0f32; frame_len];
    let mut packet = [0u8; MAX_PACKET];
    let mut network_delay_total = Duration::ZERO;
    // Feedback: the receiver's loss over the last second, as the sender would hear it.
    let feedback_every = (1000 / frame.millis()) as usize;
    let (mut window_sent, mut window_lost) = (0u64, 0u64);
    for k in 0..frames {
        let start = k * frame_len;
        let end = (start + frame_len).min(input.len());
        pcm.fill(0.0);
        pcm[..end - start].copy_from_slice(&input[start..end]);
        let len = encoder.encode(&pcm, &mut packet)?;
        report.frames += 1;
        report.bytes_sent += len as u64;
        window_sent += 1;
        let sent_at = frame_time * k as u32;
        match impairment.transit(frame_time) {
            None => {
                report.lost_in_network += 1;
                window_lost += 1;
            }
            Some(delay) => {
                network_delay_total += delay;
                in_flight.push(InFlight {
                    arrival: sent_at + delay,
                    seq: k as u16,
                    timestamp: (k * frame_len) as u32,
                    end: k + 1 == frames,
                    fec: config.encoder.fec,
                    payload: packet[..len].to_vec(),
                });
            }
        }
        if (k + 1) % feedback_every == 0 {
            let pct = (window_lost * 100 / window_sent.max(1)) as u8;
            encoder.set_expected_loss(pct)?;
            (window_sent, window_lost) = (0, 0);
        }
    }
    report.final_expected_loss_pct = encoder.expected_loss_pct();
    report.mean_kbps =
        report.bytes_sent as f64 * 8.0 / (frames as f64 * frame_time.as_secs_f64()) / 1e3;
    let delivered = in_flight.len() as u64;
    if delivered > 0 {
        report.mean_network_delay_ms = network_delay_total.as_secs_f64() * 1e3 / delivered as f64;
    }
    // Stable: equal arrival times keep send order.
    in_flight.sort_by_key(|p| p.arrival);

    // Receiver: pull one frame per period, half a period out of phase with the sender so
    // arrival and playout never tie.
    let mut clock = VirtualClock::new(Instant::now());
    let mut output = Vec::with_capacity(input.len() + SAMPLE_RATE as usize);
    let mut out_frame = vec![0.0f32; frame_len];
    let mut next_arrival = 0;
    let mut started = false;
    let last_arrival = in_flight.last().map_or(Duration::ZERO, |p| p.arrival);
    clock.advance(frame_time / 2);
    let horizon = last_arrival + jitter_horizon(&config.jitter);
    while clock.elapsed() <= horizon {
        while next_arrival < in_flight.len() && in_flight[next_arrival].arrival <= clock.elapsed() {
            let p = &in_flight[next_arrival];
            stream.push(
                IncomingFrame {
                    seq: p.seq,
                    timestamp: p.timestamp,
                    end: p.end,
                    fec: p.fec,
                    payload: &p.payload,
                },
                clock.at(p.arrival),
            )?;
            next_arrival += 1;
        }
        let played = stream.pull(clock.now(), &mut out_frame)?;
        started |= played.is_some();
        if started {
            output.extend_from_slice(&out_frame);
        }
        clock.advance(frame_time);
    }
    report.receiver = stream.stats();
    report.mean_playout_delay_ms =
        report.mean_network_delay_ms + report.receiver.jitter.mean_buffer_delay_ms;
    // The listener hears as much audio as was sent (trailing idle periods are not audio).
    output.truncate(frames * frame_len);
    Ok((output, report))
}

/// How long after the last arrival playout can still be going.
fn jitter_horizon(config: &JitterConfig) -> Duration {
    config.max_delay + config.spurt_timeout + Duration::from_millis(200)
}
