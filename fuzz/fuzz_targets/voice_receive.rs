#![no_main]
//! A remote stream's receive path (jitter buffer + Opus decoder) fed arbitrary packets in
//! arbitrary order and timing must never panic and must always produce finite audio.
//!
//! Input layout, repeated: op byte (even = push, odd = pull), 2-byte seq, 4-byte timestamp,
//! 1-byte time step in ms, 1-byte length, then that many payload bytes.

use callsign_node::audio::jitter::{IncomingFrame, JitterConfig};
use callsign_node::audio::stream::ReceiveStream;
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let mut stream = ReceiveStream::new(JitterConfig::default()).unwrap();
    let mut out = vec![0.0f32; 960];
    let mut now = Instant::now();
    let mut rest = data;
    while rest.len() >= 9 {
        let (head, tail) = rest.split_at(9);
        let seq = u16::from_le_bytes([head[1], head[2]]);
        let timestamp = u32::from_le_bytes([head[3], head[4], head[5], head[6]]);
        now += Duration::from_millis(u64::from(head[7]));
        let len = usize::from(head[8]).min(tail.len());
        let (payload, tail) = tail.split_at(len);
        rest = tail;
        if head[0] % 2 == 0 {
            let frame = IncomingFrame {
                seq,
                timestamp,
                end: head[0] & 2 != 0,
                fec: head[0] & 4 != 0,
                payload,
            };
            stream.push(frame, now).unwrap();
        } else {
            stream.pull(now, &mut out).unwrap();
            assert!(out.iter().all(|s| s.is_finite()));
        }
    }
});
