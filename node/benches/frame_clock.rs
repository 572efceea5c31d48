//! How late the 20 ms frame tick fires, on this machine's OS timer and on a modelled coarse
//! one: Windows wakes sleepers on its system timer, every 15.625 ms unless a process asks
//! for 1 ms (`runtime::os_timer`, which the node does while audio runs). Frames that leave
//! late and in bursts cost the listeners' jitter buffers latency.
//!
//! - measured: a real tokio interval (the driver's tick: 20 ms, `MissedTickBehavior::Burst`)
//!   on this machine for 10 s;
//! - modelled: the same tick where each sleep is asked for in whole milliseconds (as tokio
//!   asks the OS) and the OS wakes at the first timer interrupt at or after it, for a timer
//!   period of 15.625 ms (Windows' default) and of 1 ms (after `timeBeginPeriod(1)`), over
//!   100,000 ticks from seeded random phases.
//!
//! Run: `cargo bench -p callsign-node --bench frame_clock`. Prints numbers; asserts nothing.

use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};

const FRAME_MS: f64 = 20.0;

fn percentiles(mut late_ms: Vec<f64>) -> (f64, f64) {
    late_ms.sort_by(f64::total_cmp);
    let at = |p: f64| late_ms[((late_ms.len() - 1) as f64 * p).round() as usize];
    (at(0.5), at(0.99))
}

/// Lateness of `ticks` frame ticks when sleeps wake on a timer of period `period_ms`.
fn modelled(period_ms: f64, ticks: usize, rng: &mut rand_chacha::ChaCha8Rng) -> Vec<f64> {
    let mut late = Vec::with_capacity(ticks);
    // The first tick's phase against the timer's interrupts.
    let start = rng.gen_range(0.0..period_ms);
    let mut now = start;
    for k in 1..=ticks {
        let due = start + k as f64 * FRAME_MS;
        if now < due {
            // tokio asks for whole milliseconds, rounded up; the OS wakes on its next tick.
            let asked = now + (due - now).ceil();
            now = (asked / period_ms).ceil() * period_ms;
        }
        // Burst: a late tick fires at once, and the schedule does not slip.
        late.push(now - due);
    }
    late
}

fn measured(seconds: u64) -> Vec<f64> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let frame = Duration::from_millis(FRAME_MS as u64);
        let first = tokio::time::Instant::now() + frame;
        let mut tick = tokio::time::interval_at(first, frame);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let ticks = (seconds * 1000 / FRAME_MS as u64) as u32;
        let mut late = Vec::with_capacity(ticks as usize);
        for k in 0..ticks {
            tick.tick().await;
            let due = first.into_std() + frame * k;
            late.push(Instant::now().saturating_duration_since(due).as_secs_f64() * 1e3);
        }
        late
    })
}

fn main() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(20);
    let (real_p50, real_p99) = percentiles(measured(10));
    println!(
        "frame tick lateness, this machine ({}), measured: p50 {real_p50:.2} ms, p99 {real_p99:.2} ms",
        std::env::consts::OS
    );
    let mut before = Vec::new();
    let mut after = Vec::new();
    for _ in 0..100 {
        before.extend(modelled(15.625, 1000, &mut rng));
        after.extend(modelled(1.0, 1000, &mut rng));
    }
    let (b50, b99) = percentiles(before);
    let (a50, a99) = percentiles(after);
    println!("frame tick lateness, modelled 15.625 ms timer (Windows default): p50 {b50:.2} ms, p99 {b99:.2} ms");
    println!("frame tick lateness, modelled 1 ms timer (timeBeginPeriod(1), the node's): p50 {a50:.2} ms, p99 {a99:.2} ms");
    println!("p99 ratio, coarse / fine: {:.1}", b99 / a99.max(1e-9));
}
