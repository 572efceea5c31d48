//! Sound-card backend (cpal; cargo feature `device-audio`).
//!
//! The cpal callbacks only call [`CaptureCallback::process`] and [`PlaybackCallback::process`],
//! which are allocation- and lock-free; everything else happens on the audio worker.

use super::feed::{CaptureFeed, PlaybackFeed, StreamGuard};
use super::realtime::{
    capture_ring, playback_ring, CallbackCounters, CaptureCallback, PlaybackCallback,
};
use super::{AudioError, Device, FrameDuration};
use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use std::sync::{mpsc, Arc};

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

/// A running device stream; dropping it stops the device.
pub struct DeviceStream {
    _stream: cpal::Stream,
    pub sample_rate: u32,
    pub channels: u16,
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

fn started(
    stream: cpal::Stream,
    config: &cpal::SupportedStreamConfig,
) -> Result<DeviceStream, AudioError> {
    stream
        .play()
        .map_err(|e| AudioError::Device(e.to_string()))?;
    Ok(DeviceStream {
        _stream: stream,
        sample_rate: config.sample_rate().0,
        channels: config.channels(),
    })
}

/// Opens an input device (default when `name` is `None`) feeding `callback`.
pub fn open_input(
    name: Option<&str>,
    mut callback: CaptureCallback,
) -> Result<DeviceStream, AudioError> {
    let device = find_device(true, name)?;
    let config = f32_config(&device, true)?;
    let channels = usize::from(config.channels());
    let stream = device
        .build_input_stream(
            &config.config(),
            move |data: &[f32], _| callback.process(data, channels),
            |err| tracing::warn!(%err, "input stream error"),
            None,
        )
        .map_err(|e| AudioError::Device(e.to_string()))?;
    started(stream, &config)
}

/// Opens an output device (default when `name` is `None`) played from `callback`.
pub fn open_output(
    name: Option<&str>,
    mut callback: PlaybackCallback,
) -> Result<DeviceStream, AudioError> {
    let device = find_device(false, name)?;
    let config = f32_config(&device, false)?;
    let channels = usize::from(config.channels());
    let stream = device
        .build_output_stream(
            &config.config(),
            move |data: &mut [f32], _| callback.process(data, channels),
            |err| tracing::warn!(%err, "output stream error"),
            None,
        )
        .map_err(|e| AudioError::Device(e.to_string()))?;
    started(stream, &config)
}

/// Ring capacity for both directions: half a second at 192 kHz. The feeds keep what is queued
/// far below this; it only has to cover any device rate.
const RING_CAPACITY: usize = 96_000;

/// Runs `open` on a thread of its own that keeps the stream until the guard drops (cpal streams
/// are not `Send` on every platform, and the node's worker is a tokio task). Returns the
/// device's sample rate.
fn on_device_thread(
    open: impl FnOnce() -> Result<DeviceStream, AudioError> + Send + 'static,
) -> Result<(u32, StreamGuard), AudioError> {
    let (reply_tx, reply_rx) = mpsc::sync_channel(1);
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("callsign-audio-device".into())
        .spawn(move || match open() {
            Ok(stream) => {
                let _ = reply_tx.send(Ok(stream.sample_rate));
                // Returns when the guard (the sender) drops; the stream stops with this thread.
                let _ = stop_rx.recv();
                drop(stream);
            }
            Err(e) => {
                let _ = reply_tx.send(Err(e));
            }
        })
        .map_err(|e| AudioError::Device(format!("cannot start the device thread: {e}")))?;
    let rate = reply_rx
        .recv_timeout(std::time::Duration::from_secs(5))
        .map_err(|_| {
            AudioError::Device("the sound system did not open the device in 5 s".into())
        })??;
    Ok((rate, StreamGuard::new(stop_tx)))
}

/// Opens an input device for the node: the device thread fills the capture ring, the returned
/// feed reads it on the worker.
pub fn start_capture(
    device: &Device,
    frame: FrameDuration,
    counters: Arc<CallbackCounters>,
) -> Result<(CaptureFeed, StreamGuard), AudioError> {
    let (callback, reader) = capture_ring(RING_CAPACITY, counters);
    let name = device.name().map(str::to_owned);
    let (rate, guard) = on_device_thread(move || open_input(name.as_deref(), callback))?;
    Ok((CaptureFeed::new(reader, rate, frame)?, guard))
}

/// Opens an output device for the node: the returned feed fills the playback ring, the device
/// thread plays it.
pub fn start_playback(
    device: &Device,
    frame: FrameDuration,
    counters: Arc<CallbackCounters>,
) -> Result<(PlaybackFeed, StreamGuard), AudioError> {
    let (writer, callback) = playback_ring(RING_CAPACITY, counters);
    let name = device.name().map(str::to_owned);
    let (rate, guard) = on_device_thread(move || open_output(name.as_deref(), callback))?;
    Ok((PlaybackFeed::new(writer, rate, frame)?, guard))
}
