//! Sound-card backend (cpal; cargo feature `device-audio`).
//!
//! The cpal callbacks only call [`CaptureCallback::process`] and [`PlaybackCallback::process`],
//! which are allocation- and lock-free; everything else happens on the audio worker.

use super::realtime::{CaptureCallback, PlaybackCallback};
use super::AudioError;
use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};

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
