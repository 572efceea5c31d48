//! [`VoiceWindow`]: quinn's CUBIC congestion controller with a floor under its window, so a
//! lossy path still carries voice and the control messages queued behind it.
//!
//! Voice is inelastic: a talker sends 50 packets a second whatever the window says, and a
//! frame that waits is a frame too late to play. Loss-based congestion control reads random
//! loss (Wi-Fi, mobile, a long lossy path) as congestion; at a few percent of loss on a
//! 350 ms round trip CUBIC sits at its minimum of two packets per round trip, about six
//! packets a second, below a single voice stream. Datagrams then queue in the connection, and
//! because quinn fills each packet with datagrams before stream data, control messages (floor
//! rulings, presence, charter sync) starve behind them: chaos seed 490 had a member miss a
//! relay's floor rulings for two seconds and follow a stale holder. Mumble and WebRTC audio
//! send voice without loss-based backoff for the same reason.
//!
//! The floor is a rate, [`LinkConfig::min_send_rate`](super::LinkConfig::min_send_rate), times
//! the smoothed round trip: the window never drops below what that rate needs on this path.
//! Above the floor CUBIC rules as usual, so bulk sends (a charter bundle) still back off on a
//! congested path, down to the floor.

use quinn::congestion::{Controller, ControllerFactory, ControllerMetrics, CubicConfig};
use quinn_proto::RttEstimator;
use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Builds a [`VoiceWindow`] per connection.
#[derive(Debug)]
pub(crate) struct VoiceWindowConfig {
    cubic: Arc<CubicConfig>,
    /// Bytes per second the window always allows.
    min_rate: u64,
}

impl VoiceWindowConfig {
    pub(crate) fn new(min_rate: u64) -> Self {
        Self {
            cubic: Arc::new(CubicConfig::default()),
            min_rate,
        }
    }
}

impl ControllerFactory for VoiceWindowConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(VoiceWindow::new(
            self.cubic.clone().build(now, current_mtu),
            self.min_rate,
        ))
    }
}

/// See the module documentation.
pub(crate) struct VoiceWindow {
    cubic: Box<dyn Controller>,
    min_rate: u64,
    /// The smoothed round trip, once one was measured.
    rtt: Option<Duration>,
}

impl VoiceWindow {
    fn new(cubic: Box<dyn Controller>, min_rate: u64) -> Self {
        Self {
            cubic,
            min_rate,
            rtt: None,
        }
    }

    fn note_rtt(&mut self, smoothed: Duration) {
        self.rtt = Some(smoothed);
    }

    fn floor(&self) -> u64 {
        self.rtt.map_or(0, |rtt| {
            (u128::from(self.min_rate) * rtt.as_micros() / 1_000_000) as u64
        })
    }
}

impl Controller for VoiceWindow {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.cubic.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.note_rtt(rtt.get());
        self.cubic.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.cubic
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.cubic
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.cubic.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        self.cubic.window().max(self.floor())
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut metrics = self.cubic.metrics();
        metrics.congestion_window = self.window();
        metrics
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(Self {
            cubic: self.cubic.clone_box(),
            min_rate: self.min_rate,
            rtt: self.rtt,
        })
    }

    fn initial_window(&self) -> u64 {
        self.cubic.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cubic(now: Instant) -> Box<dyn Controller> {
        Arc::new(CubicConfig::default()).build(now, 1200)
    }

    #[test]
    fn losses_shrink_the_window_no_further_than_the_floor_rate_needs() {
        let now = Instant::now();
        let mut window = VoiceWindow::new(cubic(now), 125_000);
        let mut alone = cubic(now);
        // No round trip measured yet: no floor.
        assert_eq!(window.window(), alone.window());
        window.note_rtt(Duration::from_millis(350));
        // A loss every round trip, as on a lossy path.
        for i in 0..20u32 {
            let at = now + Duration::from_millis(350) * (i + 1);
            window.on_congestion_event(at, at, false, 1200);
            alone.on_congestion_event(at, at, false, 1200);
        }
        assert!(alone.window() < 4_000, "cubic alone: {}", alone.window());
        // 1 Mbit/s over 350 ms: 43,750 bytes.
        assert_eq!(window.window(), 43_750);
        assert_eq!(window.metrics().congestion_window, 43_750);
        assert_eq!(window.clone_box().window(), 43_750);
    }

    #[test]
    fn above_the_floor_cubic_rules() {
        let now = Instant::now();
        let mut window = VoiceWindow::new(cubic(now), 1_000);
        window.note_rtt(Duration::from_millis(20));
        assert_eq!(window.window(), cubic(now).window());
    }
}
