//! What a sound-card stream needs to move to another device while the node runs: which device
//! it should be on ([`pick_device`]), the state the device thread shares with the worker's feed
//! ([`DeviceStatus`]), and a way to get the real-time callback back from a stream that is
//! closed ([`Returning`]), so the rings, and everything queued on them, survive the move.
//!
//! A headset unplugged mid-operation, or the user choosing another default device in the
//! system's sound settings, must not leave the node deaf or mute until someone reopens the
//! audio settings (Discord and TeamSpeak follow the default; Mumble's users ask for it).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};

/// The device the stream should be on: the one the user chose while the system lists it,
/// otherwise the system's default (which is also the choice when the user chose none).
/// `None` when there is no device at all.
pub fn pick_device(
    wanted: Option<&str>,
    listed: &[String],
    default: Option<String>,
) -> Option<String> {
    match wanted {
        Some(w) if listed.iter().any(|l| l == w) => Some(w.to_owned()),
        _ => default,
    }
}

/// Shared by a device thread and the feed on the worker: the device's sample rate (the feed
/// resamples from or to it), which device is open, and how often it was reopened.
#[derive(Debug)]
pub struct DeviceStatus {
    rate: AtomicU32,
    reopened: AtomicU64,
    /// Read for stats and written when the device changes; never touched by the callback.
    name: Mutex<String>,
}

impl DeviceStatus {
    pub fn new(name: &str, rate: u32) -> Self {
        Self {
            rate: AtomicU32::new(rate),
            reopened: AtomicU64::new(0),
            name: Mutex::new(name.to_owned()),
        }
    }

    /// The sample rate of the device now open.
    pub fn rate(&self) -> u32 {
        self.rate.load(Ordering::Acquire)
    }

    /// Times the stream moved to another device or reopened a failed one.
    pub fn reopened(&self) -> u64 {
        self.reopened.load(Ordering::Relaxed)
    }

    /// The name of the device now open.
    pub fn name(&self) -> String {
        self.name.lock().map(|n| n.clone()).unwrap_or_default()
    }

    /// Records a stream reopened on `name` at `rate`. Called before the new stream starts, so
    /// the feed sees the rate before the device's first block.
    pub fn moved_to(&self, name: &str, rate: u32) {
        if let Ok(mut n) = self.name.lock() {
            name.clone_into(&mut n);
        }
        self.rate.store(rate, Ordering::Release);
        self.reopened.fetch_add(1, Ordering::Relaxed);
    }
}

/// Owns a device callback inside a stream and hands it back through a channel when the stream
/// drops it, whether the stream closed or failed to build. The return is a `try_send` on a
/// channel with room for it, so dropping allocates nothing.
pub struct Returning<C> {
    callback: Option<C>,
    back: mpsc::SyncSender<C>,
}

impl<C> Returning<C> {
    /// `back` must have room for one callback (`mpsc::sync_channel(1)`) and be drained before
    /// the callback is wrapped again.
    pub fn new(callback: C, back: mpsc::SyncSender<C>) -> Self {
        Self {
            callback: Some(callback),
            back,
        }
    }

    /// The callback (always there until the drop).
    pub fn get(&mut self) -> Option<&mut C> {
        self.callback.as_mut()
    }
}

impl<C> Drop for Returning<C> {
    fn drop(&mut self) {
        if let Some(callback) = self.callback.take() {
            // Fails only when the device thread is gone, and then nothing wants it.
            let _ = self.back.try_send(callback);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::realtime::{capture_ring, CallbackCounters};
    use std::sync::Arc;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_default_is_followed_when_no_device_was_chosen() {
        let listed = names(&["Speakers", "Headset"]);
        assert_eq!(
            pick_device(None, &listed, Some("Headset".into())).as_deref(),
            Some("Headset")
        );
        assert_eq!(pick_device(None, &listed, None), None);
    }

    #[test]
    fn a_chosen_device_is_kept_while_listed_and_the_default_stands_in_while_it_is_gone() {
        let default = || Some("Speakers".to_owned());
        let listed = names(&["Speakers", "Headset"]);
        assert_eq!(
            pick_device(Some("Headset"), &listed, default()).as_deref(),
            Some("Headset")
        );
        let unplugged = names(&["Speakers"]);
        assert_eq!(
            pick_device(Some("Headset"), &unplugged, default()).as_deref(),
            Some("Speakers")
        );
    }

    #[test]
    fn a_dropped_stream_hands_its_callback_back_with_the_queued_audio() {
        let (back_tx, back_rx) = mpsc::sync_channel(1);
        let (callback, mut reader) = capture_ring(1024, Arc::new(CallbackCounters::default()));
        let mut owned = Returning::new(callback, back_tx.clone());
        owned.get().unwrap().process(&[0.5; 8], 1);
        // What a stream does when it closes: drops its closure, and with it the callback.
        drop(owned);
        let mut callback = back_rx.try_recv().expect("the callback came back");
        callback.process(&[0.25; 4], 1);
        let mut out = [0.0; 16];
        assert_eq!(reader.read(&mut out), 12);
        assert_eq!(
            out[..12],
            [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25]
        );
    }

    #[test]
    fn a_moved_stream_reports_its_new_device_and_rate() {
        let status = DeviceStatus::new("Speakers", 48_000);
        status.moved_to("Headset", 44_100);
        assert_eq!(
            (status.name().as_str(), status.rate(), status.reopened()),
            ("Headset", 44_100, 1)
        );
    }
}
