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

/// Lists the default host's devices. An error explains why there is no sound system at all.
pub fn list_devices() -> Result<(String, Vec<DeviceInfo>), AudioError> {
    let host = cpal::default_host();
    let host_name = host.id().name().to_owned();
    let default_in = host.default_input_device().and_then(|d| d.name().ok());
    let default_out = host.default_output_device().and_then(|d| d.name().ok());
    let mut devices = Vec::new();
    let inputs = host
        .input_devices()
        .map_err(|e| AudioError::Device(format!("cannot list {host_name} input devices: {e}")))?;
    for device in inputs {
        let name = device.name().unwrap_or_else(|_| "(unnamed)".into());
        let config = device.default_input_config().ok();
        devices.push(DeviceInfo {
            is_default: default_in.as_deref() == Some(name.as_str()),
            name,
            input: true,
            sample_rate: config.as_ref().map(|c| c.sample_rate().0),
            channels: config.as_ref().map(|c| c.channels()),
        });
    }
    let outputs = host
        .output_devices()
        .map_err(|e| AudioError::Device(format!("cannot list {host_name} output devices: {e}")))?;
    for device in outputs {
        let name = device.name().unwrap_or_else(|_| "(unnamed)".into());
        let config = device.default_output_config().ok();
        devices.push(DeviceInfo {
            is_default: default_out.as_deref() == Some(name.as_str()),
            name,
            input: false,
            sample_rate: config.as_ref().map(|c| c.sample_rate().0),
            channels: config.as_ref().map(|c| c.channels()),
        });
    }
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

/// Opens an input device (default when `name` is `None`) feeding `callback`.
pub fn open_input(
    name: Option<&str>,
    mut callback: CaptureCallback,
) -> Result<DeviceStream, AudioError> {
    let device = find_device(true, name)?;
    let config = device
        .default_input_config()
        .map_err(|e| AudioError::Device(e.to_string()))?;
    if config.sample_format() != cpal::SampleFormat::F32 {
        return Err(AudioError::Device(format!(
            "input sample format {:?} is not supported (need f32)",
            config.sample_format()
        )));
    }
    let channels = config.channels();
    let stream = device
        .build_input_stream(
            &config.config(),
            move |data: &[f32], _| callback.process(data, usize::from(channels)),
            |err| tracing::warn!(%err, "input stream error"),
            None,
        )
        .map_err(|e| AudioError::Device(e.to_string()))?;
    stream
        .play()
        .map_err(|e| AudioError::Device(e.to_string()))?;
    Ok(DeviceStream {
        _stream: stream,
        sample_rate: config.sample_rate().0,
        channels,
    })
}

/// Opens an output device (default when `name` is `None`) played from `callback`.
pub fn open_output(
    name: Option<&str>,
    mut callback: PlaybackCallback,
) -> Result<DeviceStream, AudioError> {
    let device = find_device(false, name)?;
    let config = device
        .default_output_config()
        .map_err(|e| AudioError::Device(e.to_string()))?;
    if config.sample_format() != cpal::SampleFormat::F32 {
        return Err(AudioError::Device(format!(
            "output sample format {:?} is not supported (need f32)",
            config.sample_format()
        )));
    }
    let channels = config.channels();
    let stream = device
        .build_output_stream(
            &config.config(),
            move |data: &mut [f32], _| callback.process(data, usize::from(channels)),
            |err| tracing::warn!(%err, "output stream error"),
            None,
        )
        .map_err(|e| AudioError::Device(e.to_string()))?;
    stream
        .play()
        .map_err(|e| AudioError::Device(e.to_string()))?;
    Ok(DeviceStream {
        _stream: stream,
        sample_rate: config.sample_rate().0,
        channels,
    })
}
