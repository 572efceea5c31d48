//! A drop-in for [futures-timer](https://docs.rs/futures-timer) 3 whose [`Delay`] sleeps on
//! tokio's clock.
//!
//! libp2p's swarm, relay, request-response and friends time out with `futures_timer::Delay`.
//! The upstream crate runs its own timer thread on the wall clock, so inside the simulator
//! (tokio time, paused and advanced by turmoil) those timeouts fired at virtual instants that
//! depended on how fast the machine ran the simulation, and a seed did not replay. The
//! workspace patches futures-timer with this crate: a `Delay` made inside a tokio runtime is a
//! `tokio::time::Sleep` on that runtime's clock (the wall clock in a real node, virtual time in a
//! simulated one). Outside any runtime it falls back to a thread of its own on the wall clock,
//! as upstream does.
//!
//! This crate owns only that timer. It must not grow an API beyond upstream's (`Delay::new`,
//! `Delay::reset`, `Future`), since libp2p compiles against upstream's.

mod thread;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// A future that completes once its duration has passed.
pub struct Delay {
    clock: Clock,
}

enum Clock {
    /// On the tokio runtime current when the delay was made.
    Tokio(Pin<Box<tokio::time::Sleep>>),
    /// No runtime at hand: a thread sleeps for us.
    Thread(thread::ThreadDelay),
}

impl Delay {
    /// A delay that fires `dur` from now.
    pub fn new(dur: Duration) -> Delay {
        let clock = match tokio::runtime::Handle::try_current() {
            Ok(_) => Clock::Tokio(Box::pin(tokio::time::sleep(dur))),
            Err(_) => Clock::Thread(thread::ThreadDelay::new(dur)),
        };
        Delay { clock }
    }

    /// Fires `dur` from now instead, whether or not the delay has fired already.
    pub fn reset(&mut self, dur: Duration) {
        match &mut self.clock {
            Clock::Tokio(sleep) => {
                let deadline = tokio::time::Instant::now() + dur;
                sleep.as_mut().reset(deadline);
            }
            Clock::Thread(delay) => delay.reset(dur),
        }
    }
}

impl Future for Delay {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.clock {
            Clock::Tokio(sleep) => sleep.as_mut().poll(cx),
            Clock::Thread(delay) => delay.poll(cx),
        }
    }
}

impl fmt::Debug for Delay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let clock = match &self.clock {
            Clock::Tokio(sleep) => format!("tokio, deadline {:?}", sleep.deadline()),
            Clock::Thread(_) => "thread".to_owned(),
        };
        f.debug_struct("Delay").field("clock", &clock).finish()
    }
}
