//! The priority a relay's read thread (`link::read_thread`) forwards voice at.
//!
//! Why real-time: at normal priority the thread shares its core with whatever else runs there.
//! A process it wakes (on loopback, the very members it sends to; on a VPS, a game server
//! beside the relay) can take the core in the middle of a packet's fan-out. The copies then
//! wait, and the thread comes back to caches the other work has emptied. At the lowest
//! real-time priority (`SCHED_RR` 1) nothing at normal priority interrupts it. Measured with
//! `callsign-relay bench` on a 2-core VM, 15 rounds each within an hour: at 100 subscribers the
//! relay spent 1.11–1.32 µs of CPU per copy, against 1.17–2.23 µs at normal priority (a slow
//! phase of the machine later raised it to 1.5–3.0 µs, and the plain forwarder's with it); at
//! 500 subscribers and 3 speakers its CPU was alike, and the latency it added at the median
//! 142–226 µs against 376–723 µs.
//!
//! Why it gives the priority back: a real-time thread that never sleeps starves the rest of the
//! machine (the kernel keeps only 5 % of each second for everyone else), including the org's
//! own runtime and the other orgs. A flood at the relay's port could do that. So the thread
//! watches its own CPU time ([`BusyWatch`]): after a tenth of a second in which it ran more
//! than half the time it returns to normal priority, and it takes real-time again after a
//! second that stays below a quarter.
//!
//! Real-time needs `CAP_SYS_NICE` or an `RLIMIT_RTPRIO` of 1 or more (systemd's
//! `LimitRTPRIO=1`). Without either the thread runs at normal priority and says so once.

// The watch and the constants below serve the read thread, which is Linux only; they are pure
// and their tests run everywhere.
#![cfg_attr(not(target_os = "linux"), allow(dead_code))]

use std::time::{Duration, Instant};

/// The priority a read thread asks for (in a relay's configuration: `voice_priority`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadPriority {
    /// The scheduler's normal class.
    Normal,
    /// `SCHED_RR` at priority 1 while the thread is not busy (see the module documentation),
    /// if the process may; normal otherwise.
    #[default]
    Realtime,
}

/// What the thread runs at now, for `/metrics` (`SocketCounts::read_priority`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadPriorityNow {
    /// Normal priority, as asked (or no read thread).
    #[default]
    Normal,
    /// Real-time.
    Realtime,
    /// Normal for now: the thread was busy (see [`BusyWatch`]).
    LoweredWhileBusy,
    /// Normal: the process may not use real-time priority.
    NotPermitted,
}

impl ReadPriorityNow {
    pub(crate) fn to_u8(self) -> u8 {
        match self {
            Self::Normal => 0,
            Self::Realtime => 1,
            Self::LoweredWhileBusy => 2,
            Self::NotPermitted => 3,
        }
    }

    pub(crate) fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::Realtime,
            2 => Self::LoweredWhileBusy,
            3 => Self::NotPermitted,
            _ => Self::Normal,
        }
    }
}

/// How long a stretch [`BusyWatch`] judges at once while real-time: short, as a thread that
/// runs flat out starves others for that long.
const BUSY_WINDOW: Duration = Duration::from_millis(100);
/// How long a stretch it judges while lowered: a flood that pauses briefly should not get the
/// priority back at once.
const CALM_WINDOW: Duration = Duration::from_secs(1);
/// The share of a window above which the thread lowers itself.
const BUSY_SHARE: f64 = 0.5;
/// The share of a window below which a lowered thread takes real-time again.
const CALM_SHARE: f64 = 0.25;

/// What [`BusyWatch::observe`] asks the thread to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PriorityChange {
    Lower,
    Raise,
}

/// Decides, from the thread's own CPU time, when a real-time thread should lower itself and
/// when it may take real-time again. Pure: the caller reads the clocks.
#[derive(Debug)]
pub(crate) struct BusyWatch {
    realtime: bool,
    /// Wall time and the thread's CPU time at the start of the current window.
    since: (Instant, Duration),
}

impl BusyWatch {
    pub(crate) fn new(realtime: bool, now: Instant, cpu: Duration) -> Self {
        Self {
            realtime,
            since: (now, cpu),
        }
    }

    /// Called after each wake-up's work with the wall clock and a way to read the thread's CPU
    /// time (a system call, so read only once a window has passed).
    pub(crate) fn observe(
        &mut self,
        now: Instant,
        cpu: impl FnOnce() -> Duration,
    ) -> Option<PriorityChange> {
        let (start, cpu_at_start) = self.since;
        let window = if self.realtime {
            BUSY_WINDOW
        } else {
            CALM_WINDOW
        };
        let elapsed = now.saturating_duration_since(start);
        if elapsed < window {
            return None;
        }
        let cpu = cpu();
        self.since = (now, cpu);
        let share = cpu.saturating_sub(cpu_at_start).as_secs_f64() / elapsed.as_secs_f64();
        match self.realtime {
            true if share > BUSY_SHARE => {
                self.realtime = false;
                Some(PriorityChange::Lower)
            }
            false if share < CALM_SHARE => {
                self.realtime = true;
                Some(PriorityChange::Raise)
            }
            _ => None,
        }
    }
}

/// A read thread's priority as it runs: asked for at its start, lowered and raised again by
/// its [`BusyWatch`].
#[cfg(target_os = "linux")]
#[derive(Debug)]
pub(crate) struct ThreadPriority {
    /// None when the thread stays at normal priority (asked, or not permitted).
    watch: Option<BusyWatch>,
    lowered: u64,
}

#[cfg(target_os = "linux")]
impl ThreadPriority {
    /// Sets the calling thread's priority as `asked` allows; returns what it runs at.
    pub(crate) fn start(asked: ReadPriority) -> (Self, ReadPriorityNow) {
        let with = |watch| Self { watch, lowered: 0 };
        if asked == ReadPriority::Normal {
            return (with(None), ReadPriorityNow::Normal);
        }
        match set_realtime(true) {
            Ok(()) => {
                let watch = BusyWatch::new(true, Instant::now(), thread_cpu_time());
                (with(Some(watch)), ReadPriorityNow::Realtime)
            }
            Err(e) => {
                tracing::warn!(
                    %e,
                    "voice is read at normal priority: real-time needs CAP_SYS_NICE or \
                     an RLIMIT_RTPRIO of 1 (systemd: LimitRTPRIO=1)"
                );
                (with(None), ReadPriorityNow::NotPermitted)
            }
        }
    }

    /// How long the thread may sleep before it calls [`Self::after_wake`] even with nothing to
    /// read: while lowered, a calm window, so it takes real-time back when a flood ends rather
    /// than at the next packet.
    pub(crate) fn wait_limit(&self) -> Option<Duration> {
        self.watch
            .as_ref()
            .filter(|w| !w.realtime)
            .map(|_| CALM_WINDOW)
    }

    /// Called after each wake-up's work; returns what the thread runs at if that changed.
    pub(crate) fn after_wake(&mut self) -> Option<ReadPriorityNow> {
        let change = self
            .watch
            .as_mut()?
            .observe(Instant::now(), thread_cpu_time)?;
        match change {
            PriorityChange::Lower => {
                if set_realtime(false).is_err() {
                    // Lowering one's own priority is always allowed. Should it fail all the
                    // same, the thread is still real-time, and is judged so next window.
                    if let Some(watch) = self.watch.as_mut() {
                        watch.realtime = true;
                    }
                    return None;
                }
                self.lowered += 1;
                if self.lowered == 1 {
                    tracing::warn!("the voice read thread is busy: at normal priority until calm");
                } else {
                    tracing::debug!(times = self.lowered, "voice read thread busy again");
                }
                Some(ReadPriorityNow::LoweredWhileBusy)
            }
            PriorityChange::Raise => match set_realtime(true) {
                Ok(()) => Some(ReadPriorityNow::Realtime),
                Err(e) => {
                    tracing::warn!(%e, "voice read thread: real-time refused, staying normal");
                    self.watch = None;
                    Some(ReadPriorityNow::NotPermitted)
                }
            },
        }
    }
}

/// The calling thread's CPU time.
#[cfg(target_os = "linux")]
pub(crate) fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec to a live local.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Puts the calling thread in `SCHED_RR` at priority 1 (`true`) or back in the normal class.
#[cfg(target_os = "linux")]
pub(crate) fn set_realtime(realtime: bool) -> std::io::Result<()> {
    let (policy, priority) = match realtime {
        true => (libc::SCHED_RR, 1),
        false => (libc::SCHED_OTHER, 0),
    };
    // Threads this one might start do not inherit real-time. Kept when lowering too: clearing
    // it takes CAP_SYS_NICE, which a relay under `LimitRTPRIO` does not have.
    let policy = policy | libc::SCHED_RESET_ON_FORK;
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: pid 0 is the calling thread; `param` is a live sched_param.
    if unsafe { libc::sched_setscheduler(0, policy, &param) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_busy_tenth_of_a_second_lowers_and_a_calm_second_raises_again() {
        let t0 = Instant::now();
        let mut watch = BusyWatch::new(true, t0, ms(0));
        // Too early to judge, however busy.
        assert_eq!(watch.observe(t0 + ms(50), || ms(50)), None);
        // 40 % of the window: stays.
        assert_eq!(watch.observe(t0 + ms(100), || ms(40)), None);
        // 60 %: lowers.
        assert_eq!(
            watch.observe(t0 + ms(200), || ms(100)),
            Some(PriorityChange::Lower)
        );
        // Lowered, a calm tenth of a second is not enough.
        assert_eq!(watch.observe(t0 + ms(300), || ms(100)), None);
        // A second at 30 %: stays lowered.
        assert_eq!(watch.observe(t0 + ms(1200), || ms(400)), None);
        // A second at 10 %: raises.
        assert_eq!(
            watch.observe(t0 + ms(2200), || ms(500)),
            Some(PriorityChange::Raise)
        );
        // Real-time again, judged by the short window once more.
        assert_eq!(
            watch.observe(t0 + ms(2300), || ms(580)),
            Some(PriorityChange::Lower)
        );
    }

    #[test]
    fn a_long_quiet_wait_counts_as_calm() {
        let t0 = Instant::now();
        let mut watch = BusyWatch::new(true, t0, ms(0));
        // The first packet after an idle minute: busy only while it ran.
        assert_eq!(watch.observe(t0 + ms(60_000), || ms(1)), None);
        assert_eq!(watch.observe(t0 + ms(60_100), || ms(2)), None);
    }

    #[test]
    fn clocks_that_go_backwards_change_nothing() {
        let t0 = Instant::now() + ms(1000);
        let mut watch = BusyWatch::new(true, t0, ms(500));
        assert_eq!(watch.observe(t0 - ms(10), || ms(400)), None);
        assert_eq!(watch.observe(t0 + ms(100), || ms(400)), None);
    }

    /// Whether this process may put a thread in real-time (tried on a thread of its own).
    #[cfg(target_os = "linux")]
    pub(crate) fn realtime_permitted() -> bool {
        std::thread::spawn(|| set_realtime(true).is_ok())
            .join()
            .unwrap_or(false)
    }

    #[cfg(target_os = "linux")]
    fn policy() -> i32 {
        // SAFETY: pid 0 is the calling thread; no pointers.
        unsafe { libc::sched_getscheduler(0) & !libc::SCHED_RESET_ON_FORK }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_thread_that_runs_flat_out_gives_real_time_back_and_takes_it_again_when_idle() {
        let permitted = realtime_permitted();
        let (policy_at_start, lowered, raised) = std::thread::spawn(|| {
            let (mut priority, now) = ThreadPriority::start(ReadPriority::Realtime);
            let at_start = (now, policy());
            // Busy for longer than a window, as under a flood.
            let started = Instant::now();
            while started.elapsed() < BUSY_WINDOW + ms(20) {
                std::hint::black_box(thread_cpu_time());
            }
            let limit_at_start = priority.wait_limit();
            let lowered = (priority.after_wake(), policy());
            // Lowered, the thread wakes by itself after a calm window to look again.
            let limit_lowered = priority.wait_limit();
            std::thread::sleep(CALM_WINDOW + ms(50));
            let raised = (priority.after_wake(), policy());
            let limits = (limit_at_start, limit_lowered, priority.wait_limit());
            ((at_start, limits), lowered, raised)
        })
        .join()
        .expect("thread");
        let (policy_at_start, limits) = policy_at_start;
        if permitted {
            assert_eq!(limits, (None, Some(CALM_WINDOW), None));
            let rr = libc::SCHED_RR;
            assert_eq!(policy_at_start, (ReadPriorityNow::Realtime, rr));
            let normal = libc::SCHED_OTHER;
            assert_eq!(lowered, (Some(ReadPriorityNow::LoweredWhileBusy), normal));
            assert_eq!(raised, (Some(ReadPriorityNow::Realtime), rr));
        } else {
            assert_eq!(limits, (None, None, None));
            let normal = libc::SCHED_OTHER;
            assert_eq!(policy_at_start, (ReadPriorityNow::NotPermitted, normal));
            assert_eq!(lowered, (None, normal));
            assert_eq!(raised, (None, normal));
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn normal_is_left_alone() {
        let (now, change, policy) = std::thread::spawn(|| {
            let (mut priority, now) = ThreadPriority::start(ReadPriority::Normal);
            (now, priority.after_wake(), policy())
        })
        .join()
        .expect("thread");
        assert_eq!(
            (now, change, policy),
            (ReadPriorityNow::Normal, None, libc::SCHED_OTHER)
        );
    }
}
