//! The OS timer the 20 ms frame tick wakes on must be fine-grained, or frames leave in clumps.
//!
//! The driver's frame tick is a tokio interval; tokio sleeps by asking the OS to wake it after
//! a whole number of milliseconds, and the OS rounds that up to its timer's period. Linux and
//! macOS wake within tens of microseconds (high-resolution timers). Windows wakes on its
//! system timer, every 15.625 ms unless some process asks for better, so a tick due at 20 ms
//! fires at 31.25 ms and the next two in a burst: a frame's send time jitters by up to 15.6 ms,
//! which the listeners' jitter buffers must absorb as latency (`cargo bench -p callsign-node
//! --bench frame_clock` models it: p99 lateness 16.1 ms against 1.0 ms). So while a node runs
//! audio it holds a [`FineTimer`]: on Windows `timeBeginPeriod(1)` (since Windows 10 2004 it
//! affects only this process), given back when the node stops; elsewhere nothing to do.

#[cfg(windows)]
#[allow(unsafe_code)]
mod windows;

/// Held while the frame tick runs (see the module documentation).
#[derive(Debug)]
pub(crate) struct FineTimer {
    #[cfg(windows)]
    _period: Option<windows::Period>,
}

impl FineTimer {
    /// Asks the OS for a 1 ms timer where it needs asking, and logs what the tick runs on.
    pub(crate) fn acquire() -> Self {
        #[cfg(windows)]
        {
            let period = windows::Period::begin(1);
            match &period {
                Some(_) => tracing::info!("frame clock: Windows timer period set to 1 ms"),
                None => tracing::warn!(
                    "frame clock: Windows refused a 1 ms timer period; frames may leave up \
                     to 15.6 ms late"
                ),
            }
            Self { _period: period }
        }
        #[cfg(not(windows))]
        {
            tracing::debug!("frame clock: the OS's high-resolution timers, nothing to ask");
            Self {}
        }
    }
}
