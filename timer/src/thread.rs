//! The fallback clock: a thread per delay, for the rare delay made outside a tokio runtime.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;

pub(crate) struct ThreadDelay {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    waker: AtomicWaker,
}

struct State {
    deadline: Instant,
    fired: bool,
    /// The `Delay` is gone: the thread may stop.
    dropped: bool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent whatever panicked while holding it: three plain fields.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ThreadDelay {
    pub(crate) fn new(dur: Duration) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                deadline: Instant::now() + dur,
                fired: false,
                dropped: false,
            }),
            changed: Condvar::new(),
            waker: AtomicWaker::new(),
        });
        let timer = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("futures-timer".into())
            .spawn(move || run(&timer));
        if spawned.is_err() {
            // No thread to wait with: fire at once rather than never.
            shared.state().fired = true;
        }
        Self { shared }
    }

    pub(crate) fn reset(&mut self, dur: Duration) {
        let mut state = self.shared.state();
        state.deadline = Instant::now() + dur;
        state.fired = false;
        drop(state);
        self.shared.changed.notify_one();
    }

    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.shared.waker.register(cx.waker());
        if self.shared.state().fired {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for ThreadDelay {
    fn drop(&mut self) {
        self.shared.state().dropped = true;
        self.shared.changed.notify_one();
    }
}

/// Sleeps until the deadline (which `reset` may move either way), fires, then waits for a reset
/// or the end of the `Delay`.
fn run(shared: &Shared) {
    let mut state = shared.state();
    loop {
        if state.dropped {
            return;
        }
        let now = Instant::now();
        if !state.fired && now >= state.deadline {
            state.fired = true;
            drop(state);
            shared.waker.wake();
            state = shared.state();
            continue;
        }
        state = if state.fired {
            shared
                .changed
                .wait(state)
                .unwrap_or_else(|e| e.into_inner())
        } else {
            let wait = state.deadline - now;
            let waited = shared.changed.wait_timeout(state, wait);
            waited.unwrap_or_else(|e| e.into_inner()).0
        };
    }
}
