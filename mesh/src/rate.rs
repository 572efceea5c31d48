//! Token buckets: a sustained rate with a burst allowance, counted in thousandths of a token so
//! that a few milliseconds of refill are not rounded away. Sans-IO: every call takes `now`.
//!
//! Used wherever something is spent per packet from one source: a sender's voice packets at a
//! relay (`forward`), an org's packets at a shared relay, and in the node a link's voice-plane
//! datagrams and a source address's handshakes, each checked before the work it protects.

use std::time::{Duration, Instant};

/// A sustained rate and the burst above it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Tokens added per second.
    pub per_second: u32,
    /// Tokens the bucket holds at most (a full bucket allows this many at once).
    pub burst: u32,
}

impl Rate {
    /// `per_second` with a burst of `burst`.
    pub const fn new(per_second: u32, burst: u32) -> Self {
        Self { per_second, burst }
    }
}

/// One source's bucket; starts full.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    milli_tokens: u64,
    refilled: Instant,
}

impl TokenBucket {
    /// A full bucket for `rate` at `now`.
    pub fn new(rate: Rate, now: Instant) -> Self {
        Self {
            milli_tokens: u64::from(rate.burst) * 1000,
            refilled: now,
        }
    }

    /// Takes one token if there is one; false means over the rate.
    pub fn take(&mut self, rate: Rate, now: Instant) -> bool {
        self.refill(rate, now);
        if self.milli_tokens < 1000 {
            return false;
        }
        self.milli_tokens -= 1000;
        true
    }

    /// Whether the bucket has refilled to its burst by `now` (it then says nothing a new bucket
    /// would not, so a table of buckets may forget it).
    pub fn is_full(&mut self, rate: Rate, now: Instant) -> bool {
        self.refill(rate, now);
        self.milli_tokens >= u64::from(rate.burst) * 1000
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        // Capped so a bucket idle for years cannot overflow; a minute refills any sane burst.
        let elapsed = now
            .saturating_duration_since(self.refilled)
            .min(Duration::from_secs(60));
        self.refilled = self.refilled.max(now);
        self.milli_tokens = (self.milli_tokens
            + elapsed.as_millis() as u64 * u64::from(rate.per_second))
        .min(u64::from(rate.burst) * 1000);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let rate = Rate::new(100, 10);
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(rate, t0);
        assert_eq!((0..50).filter(|_| bucket.take(rate, t0)).count(), 10);
        // 100 per second: one per 10 ms, and 5 ms earns half a token, not a rounded one.
        assert!(!bucket.take(rate, t0 + Duration::from_millis(5)));
        assert!(bucket.take(rate, t0 + Duration::from_millis(10)));
        // A second's refill stops at the burst.
        let later = t0 + Duration::from_secs(1);
        assert!(bucket.is_full(rate, later));
        assert_eq!((0..50).filter(|_| bucket.take(rate, later)).count(), 10);
        assert!(!bucket.is_full(rate, later));
    }

    #[test]
    fn time_going_backwards_adds_nothing() {
        let rate = Rate::new(1000, 1);
        let t0 = Instant::now() + Duration::from_secs(5);
        let mut bucket = TokenBucket::new(rate, t0);
        assert!(bucket.take(rate, t0));
        assert!(!bucket.take(rate, t0 - Duration::from_secs(1)));
    }
}
