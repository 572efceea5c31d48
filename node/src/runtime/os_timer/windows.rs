//! `timeBeginPeriod` / `timeEndPeriod` (winmm).

use windows_sys::Win32::Media::{timeBeginPeriod, timeEndPeriod, TIMERR_NOERROR};

/// A timer period asked for, given back on drop (each begin needs its end).
#[derive(Debug)]
pub(super) struct Period(u32);

impl Period {
    pub(super) fn begin(ms: u32) -> Option<Self> {
        // SAFETY: no pointers; any period is accepted or refused with an error code.
        (unsafe { timeBeginPeriod(ms) } == TIMERR_NOERROR).then_some(Self(ms))
    }
}

impl Drop for Period {
    fn drop(&mut self) {
        // SAFETY: matches the successful begin above.
        unsafe { timeEndPeriod(self.0) };
    }
}
