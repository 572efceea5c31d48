//! Sound-card backend (cpal; cargo feature `device-audio`).
//!
//! The cpal callbacks only call [`CaptureCallback::process`] and [`PlaybackCallback::process`],
//! which are allocation- and lock-free; everything else happens on the audio worker or on the
//! stream's device thread, which also moves the stream to another device when the system's
//! default changes or the chosen device is unplugged (see [`super::device_follow`]).

use super::device_follow::{pick_device, DeviceStatus, Returning};
use super::feed::{CaptureFeed, PlaybackFeed, StreamGuard};
use super::realtime::{
    capture_ring, playback_ring, CallbackCounters, CaptureCallback, PlaybackCallback,
};
use super::{AudioError, Device, FrameDuration};
use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// One input or output device.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeviceInfo {
    pub name: String,
    pub input: bool,
    pub is_default: bool,
    pub sample_rate: Option<u32>,
    pub channels: Option<u16>,
}

fn describe(device: &cpal::Device, input: bool, default: Option<&str>) -> DeviceInfo {
    let name = device.name().unwrap_or_else(|_| "(unnamed)".into());
    let config = if input {
        device.default_input_config()
    } else {
        device.default_output_config()
    }
    .ok();
    DeviceInfo {
        is_default: default == Some(name.as_str()),
        name,
        input,
        sample_rate: config.as_ref().map(|c| c.sample_rate().0),
        channels: config.as_ref().map(|c| c.channels()),
    }
}

/// Lists the default host's devices. An error explains why there is no sound system at all.
pub fn list_devices() -> Result<(String, Vec<DeviceInfo>), AudioError> {
    let host = cpal::default_host();
    let host_name = host.id().name().to_owned();
    let default_in = host.default_input_device().and_then(|d| d.name().ok());
    let default_out = host.default_output_device().and_then(|d| d.name().ok());
    let listing =
        |e: cpal::DevicesError| AudioError::Device(format!("cannot list {host_name} devices: {e}"));
    let mut devices: Vec<DeviceInfo> = host
        .input_devices()
        .map_err(listing)?
        .map(|d| describe(&d, true, default_in.as_deref()))
        .collect();
    devices.extend(
        host.output_devices()
            .map_err(listing)?
            .map(|d| describe(&d, false, default_out.as_deref())),
    );
    Ok((host_name, devices))
}

fn find_device(input: bool, name: Option<&str>) -> Result<cpal::Device, AudioError> {
    let host = cpal::default_host();
    let kind = if input { "input" } else { "output" };
    let found = match name {
        None if input => host.default_input_device(),
        None => host.default_output_device(),
        Some(wanted) => {
            let mut devices = if input {
                host.input_devices()
            } else {
                host.output_devices()
            }
            .map_err(|e| AudioError::Device(e.to_string()))?;
            devices.find(|d| d.name().is_ok_and(|n| n == wanted))
        }
    };
    found.ok_or_else(|| {
        AudioError::Device(match name {
            Some(n) => format!("no {kind} device named {n:?} (see `callsign audio devices`)"),
            None => format!("no default {kind} device (no sound card or sound server?)"),
        })
    })
}

/// The device's default configuration, which must be f32 (every desktop backend offers it).
fn f32_config(
    device: &cpal::Device,
    input: bool,
) -> Result<cpal::SupportedStreamConfig, AudioError> {
    let config = if input {
        device.default_input_config()
    } else {
        device.default_output_config()
    }
    .map_err(|e| AudioError::Device(e.to_string()))?;
    if config.sample_format() != cpal::SampleFormat::F32 {
        return Err(AudioError::Device(format!(
            "{} sample format {:?} is not supported (need f32)",
            if input { "input" } else { "output" },
            config.sample_format()
        )));
    }
    Ok(config)
}

/// A stream built and not yet started, with the device's sample rate. `failed` is set by
/// cpal's error callback (a device unplugged, the sound server gone).
struct BuiltStream {
    stream: cpal::Stream,
    rate: u32,
}

/// Builds a stream on `device` for one direction's callback.
type Build<C> = fn(&cpal::Device, Returning<C>, Arc<AtomicBool>) -> Result<BuiltStream, AudioError>;

fn stream_error(failed: Arc<AtomicBool>, kind: &'static str) -> impl FnMut(cpal::StreamError) {
    move |err| {
        failed.store(true, Ordering::Relaxed);
        tracing::warn!(%err, "{kind} stream error");
    }
}

fn build_input(
    device: &cpal::Device,
    mut callback: Returning<CaptureCallback>,
    failed: Arc<AtomicBool>,
) -> Result<BuiltStream, AudioError> {
    let config = f32_config(device, true)?;
    let channels = usize::from(config.channels());
    let stream = device
        .build_input_stream(
            &config.config(),
            move |data: &[f32], _| {
                if let Some(c) = callback.get() {
                    c.process(data, channels);
                }
            },
            stream_error(failed, "input"),
            None,
        )
        .map_err(|e| AudioError::Device(e.to_string()))?;
    Ok(BuiltStream {
        stream,
        rate: config.sample_rate().0,
    })
}

fn build_output(
    device: &cpal::Device,
    mut callback: Returning<PlaybackCallback>,
    failed: Arc<AtomicBool>,
) -> Result<BuiltStream, AudioError> {
    let config = f32_config(device, false)?;
    let channels = usize::from(config.channels());
    let stream = device
        .build_output_stream(
            &config.config(),
            move |data: &mut [f32], _| match callback.get() {
                Some(c) => c.process(data, channels),
                None => data.fill(0.0),
            },
            stream_error(failed, "output"),
            None,
        )
        .map_err(|e| AudioError::Device(e.to_string()))?;
    Ok(BuiltStream {
        stream,
        rate: config.sample_rate().0,
    })
}

/// Ring capacity for both directions: half a second at 192 kHz. The feeds keep what is queued
/// far below this; it only has to cover any device rate.
const RING_CAPACITY: usize = 96_000;

/// How often the device thread asks the system which device the stream should be on. A user
/// who unplugs a headset hears the speakers within this; the question is cheap.
const DEVICE_POLL: Duration = Duration::from_secs(1);

/// While the chosen device is open and well, every this many polls whether it is still listed.
const CHOSEN_LIST_EVERY: u32 = 5;

/// How long a closed stream may take to hand its callback back (cpal joins its audio thread
/// when the stream drops, so this is only reached by a sound system that hangs).
const CALLBACK_RETURN: Duration = Duration::from_secs(2);

/// The device the stream should be on now (see [`pick_device`]), as a cpal device.
fn wanted_device(input: bool, wanted: Option<&str>) -> Option<(String, cpal::Device)> {
    let host = cpal::default_host();
    let default = if input {
        host.default_input_device()
    } else {
        host.default_output_device()
    };
    let default_name = default.as_ref().and_then(|d| d.name().ok());
    let listed: Vec<(String, cpal::Device)> = match wanted {
        // Listing every device is only needed to see whether the chosen one is still there.
        Some(_) => if input {
            host.input_devices()
        } else {
            host.output_devices()
        }
        .map(|devices| devices.filter_map(|d| Some((d.name().ok()?, d))).collect())
        .unwrap_or_default(),
        None => Vec::new(),
    };
    let names: Vec<String> = listed.iter().map(|(n, _)| n.clone()).collect();
    let name = pick_device(wanted, &names, default_name.clone())?;
    let device = match listed.into_iter().find(|(n, _)| *n == name) {
        Some((_, d)) => d,
        None => default?,
    };
    Some((name, device))
}

/// One direction's stream as the device thread keeps it.
struct DeviceThread<C> {
    kind: &'static str,
    input: bool,
    wanted: Option<String>,
    build: Build<C>,
    /// Made when the first stream opens.
    status: Option<Arc<DeviceStatus>>,
    back_tx: mpsc::SyncSender<C>,
    back_rx: mpsc::Receiver<C>,
    /// The open stream, its device's name and its failure flag.
    open: Option<(cpal::Stream, String, Arc<AtomicBool>)>,
    /// The callback while no stream holds it (the last open failed).
    spare: Option<C>,
    /// The last reopening failure logged, so a device that stays broken is logged once.
    last_error: Option<String>,
    /// Polls so far.
    polls: u32,
}

impl<C: Send + 'static> DeviceThread<C> {
    /// Builds and starts a stream on `device`; the callback comes back to `spare` on failure.
    fn start(
        &mut self,
        name: String,
        device: &cpal::Device,
        callback: C,
    ) -> Result<u32, AudioError> {
        let failed = Arc::new(AtomicBool::new(false));
        let wrapped = Returning::new(callback, self.back_tx.clone());
        let started = (self.build)(device, wrapped, failed.clone()).and_then(|built| {
            // The feed must see the new rate before the first block at that rate.
            match &self.status {
                Some(status) => status.moved_to(&name, built.rate),
                None => self.status = Some(Arc::new(DeviceStatus::new(&name, built.rate))),
            }
            built
                .stream
                .play()
                .map_err(|e| AudioError::Device(e.to_string()))?;
            Ok((built.stream, built.rate))
        });
        match started {
            Ok((stream, rate)) => {
                self.open = Some((stream, name, failed));
                Ok(rate)
            }
            Err(e) => {
                // The stream (and the closure holding the callback) is gone by now.
                self.spare = self.back_rx.recv_timeout(CALLBACK_RETURN).ok();
                Err(e)
            }
        }
    }

    /// Moves the stream to the device it should be on, if that changed or the stream failed.
    /// Returns false when the callback is lost and the thread can only end.
    fn follow(&mut self) -> bool {
        let failed = match &self.open {
            Some((_, _, failed)) => failed.load(Ordering::Relaxed),
            None => true,
        };
        self.polls = self.polls.wrapping_add(1);
        let on_chosen =
            self.wanted.is_some() && self.open.as_ref().map(|(_, n, _)| n) == self.wanted.as_ref();
        // Listing the devices opens each of them on some systems (ALSA): while the chosen one
        // is open and well, its own error says it is gone, and the list is only a backstop.
        if on_chosen && !failed && self.polls % CHOSEN_LIST_EVERY != 0 {
            return true;
        }
        let Some((name, device)) = wanted_device(self.input, self.wanted.as_deref()) else {
            return true;
        };
        let current = self.open.as_ref().map(|(_, n, _)| n.as_str());
        if !failed && current == Some(name.as_str()) {
            return true;
        }
        let callback = match self.open.take() {
            Some((stream, old, _)) => {
                tracing::info!(from = %old, to = %name, failed, "{}: moving to another device", self.kind);
                drop(stream);
                match self.back_rx.recv_timeout(CALLBACK_RETURN) {
                    Ok(c) => c,
                    Err(_) => {
                        tracing::error!("{}: the sound system kept the stream's callback; the device stays closed", self.kind);
                        return false;
                    }
                }
            }
            None => match self.spare.take() {
                Some(c) => c,
                None => return false,
            },
        };
        match self.start(name.clone(), &device, callback) {
            Ok(rate) => {
                tracing::info!(device = %name, rate, "{}: device open", self.kind);
                self.last_error = None;
            }
            Err(e) => {
                let e = e.to_string();
                if self.last_error.as_ref() != Some(&e) {
                    tracing::warn!(device = %name, error = %e, "{}: cannot open the device; trying again", self.kind);
                    self.last_error = Some(e);
                }
            }
        }
        self.spare.is_some() || self.open.is_some()
    }
}

/// Opens `device` for one direction on a thread of its own that keeps the stream until the
/// guard drops (cpal streams are not `Send` on every platform, and the node's worker is a tokio
/// task), following the system's default device when `device` is the default, and standing in
/// the default for a chosen device while it is unplugged. Returns what the feed shares with the
/// thread.
fn on_device_thread<C: Send + 'static>(
    input: bool,
    device: &Device,
    callback: C,
    build: Build<C>,
) -> Result<(Arc<DeviceStatus>, StreamGuard), AudioError> {
    let kind = if input { "audio input" } else { "audio output" };
    let wanted = device.name().map(str::to_owned);
    let (reply_tx, reply_rx) = mpsc::sync_channel(1);
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("callsign-audio-device".into())
        .spawn(move || {
            // At start the chosen device must be there: a wrong name is an error the user sees.
            let first = find_device(input, wanted.as_deref()).and_then(|d| {
                let name = d.name().map_err(|e| AudioError::Device(e.to_string()))?;
                Ok((name, d))
            });
            let (name, first) = match first {
                Ok(found) => found,
                Err(e) => {
                    let _ = reply_tx.send(Err(e));
                    return;
                }
            };
            let (back_tx, back_rx) = mpsc::sync_channel(1);
            let mut thread = DeviceThread {
                kind,
                input,
                wanted,
                build,
                status: None,
                back_tx,
                back_rx,
                open: None,
                spare: None,
                last_error: None,
                polls: 0,
            };
            match thread.start(name.clone(), &first, callback) {
                Ok(rate) => {
                    tracing::info!(device = %name, rate, following = thread.wanted.is_none(), "{kind}: device open");
                    let _ = reply_tx.send(Ok(thread.status.clone()));
                }
                Err(e) => {
                    let _ = reply_tx.send(Err(e));
                    return;
                }
            }
            // Until the guard (the sender) drops, which ends the stream with this thread.
            while let Err(mpsc::RecvTimeoutError::Timeout) = stop_rx.recv_timeout(DEVICE_POLL) {
                if !thread.follow() {
                    break;
                }
            }
        })
        .map_err(|e| AudioError::Device(format!("cannot start the device thread: {e}")))?;
    let status = reply_rx
        .recv_timeout(Duration::from_secs(5))
        .map_err(|_| AudioError::Device("the sound system did not open the device in 5 s".into()))??
        .ok_or_else(|| AudioError::Device("the device thread opened no stream".into()))?;
    Ok((status, StreamGuard::new(stop_tx)))
}

/// Opens an input device for the node: the device thread fills the capture ring, the returned
/// feed reads it on the worker.
pub fn start_capture(
    device: &Device,
    frame: FrameDuration,
    counters: Arc<CallbackCounters>,
) -> Result<(CaptureFeed, StreamGuard), AudioError> {
    let (callback, reader) = capture_ring(RING_CAPACITY, counters);
    let (status, guard) = on_device_thread(true, device, callback, build_input)?;
    Ok((CaptureFeed::new(reader, status, frame)?, guard))
}

/// Opens an output device for the node: the returned feed fills the playback ring, the device
/// thread plays it.
pub fn start_playback(
    device: &Device,
    frame: FrameDuration,
    counters: Arc<CallbackCounters>,
) -> Result<(PlaybackFeed, StreamGuard), AudioError> {
    let (writer, callback) = playback_ring(RING_CAPACITY, counters);
    let (status, guard) = on_device_thread(false, device, callback, build_output)?;
    Ok((PlaybackFeed::new(writer, status, frame)?, guard))
}
