//! A seeded network impairment model for one direction of a voice stream: base latency,
//! Gaussian jitter, uniform loss, Gilbert–Elliott burst loss, and reordering.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Duration;

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ImpairmentConfig {
    /// One-way latency before jitter.
    pub latency: Duration,
    /// Standard deviation of the Gaussian added to the latency (never below zero in total).
    pub jitter: Duration,
    /// Probability that a packet is lost, independently (in the Gilbert–Elliott good state).
    pub loss: f64,
    /// Gilbert–Elliott burst loss: probability of moving good → bad and bad → good per packet.
    /// Every packet is lost in the bad state; mean burst length is 1 / r.
    pub burst: Option<(f64, f64)>,
    /// Probability that a packet is held back by one to two extra frame periods, so it arrives
    /// after later ones.
    pub reorder: f64,
}

/// The model's state. The same seed and config give the same fate to every packet.
pub struct Impairment {
    config: ImpairmentConfig,
    rng: ChaCha8Rng,
    bad_state: bool,
}

impl Impairment {
    pub fn new(config: ImpairmentConfig, seed: u64) -> Self {
        Self {
            config,
            rng: ChaCha8Rng::seed_from_u64(seed),
            bad_state: false,
        }
    }

    /// The fate of the next packet: `None` if lost, else its one-way delay. `frame` is the
    /// packet spacing, used to size reordering.
    pub fn transit(&mut self, frame: Duration) -> Option<Duration> {
        // Draw every random number every time, so changing one knob does not reshuffle the rest.
        let uniform_loss = self.rng.gen_bool(self.config.loss.clamp(0.0, 1.0));
        let burst_roll: f64 = self.rng.gen();
        let reorder = self.rng.gen_bool(self.config.reorder.clamp(0.0, 1.0));
        let reorder_extra: f64 = self.rng.gen_range(1.0..2.0);
        let gaussian = self.gaussian();

        if let Some((p, r)) = self.config.burst {
            let flip = if self.bad_state { r } else { p };
            if burst_roll < flip {
                self.bad_state = !self.bad_state;
            }
        }
        if self.bad_state || uniform_loss {
            return None;
        }
        let mut delay =
            self.config.latency.as_secs_f64() + self.config.jitter.as_secs_f64() * gaussian;
        if reorder {
            delay += frame.as_secs_f64() * reorder_extra;
        }
        Some(Duration::from_secs_f64(delay.max(0.0)))
    }

    /// A standard normal draw (Box–Muller).
    fn gaussian(&mut self) -> f64 {
        let u1: f64 = self.rng.gen_range(f64::EPSILON..1.0);
        let u2: f64 = self.rng.gen();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}
