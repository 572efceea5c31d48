//! A virtual clock for driving the pipeline without real time: tests, `audio loopback` and the
//! simulator advance it explicitly, and every stage reads `now` from it.

use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
pub struct VirtualClock {
    origin: Instant,
    elapsed: Duration,
}

impl VirtualClock {
    /// `origin` is any instant; only differences from it matter, so results do not depend on it.
    pub fn new(origin: Instant) -> Self {
        Self {
            origin,
            elapsed: Duration::ZERO,
        }
    }

    pub fn now(&self) -> Instant {
        self.origin + self.elapsed
    }

    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    pub fn advance(&mut self, by: Duration) {
        self.elapsed += by;
    }

    /// The instant `at` after the origin.
    pub fn at(&self, at: Duration) -> Instant {
        self.origin + at
    }
}
