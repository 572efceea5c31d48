//! The audio settings: input and output device, the input meter, push-to-talk or voice
//! activation, noise suppression, gain control, bitrate, jitter-buffer bounds and ducking
//! rules. Every change goes to the node at once (checked first, so a bad value is explained
//! here rather than refused there) and is kept in the profile.

use super::Radio;
use crate::profile::{AudioProfile, DEFAULT_DEVICE, NO_DEVICE};
use callsign_mesh::charter::{ChannelId, Permissions};
use callsign_node::runtime::AudioInput;
use callsign_node::NodeCommand;
use eframe::egui;

/// The meter's scale: this many dBFS is an empty bar.
const METER_FLOOR_DB: f32 = -60.0;

/// The sound system's devices: (inputs, outputs), or why there are none.
pub type DeviceList = Result<(Vec<String>, Vec<String>), String>;

#[cfg(feature = "device-audio")]
fn list_devices() -> DeviceList {
    let (_, devices) = callsign_node::audio::device::list_devices().map_err(|e| e.to_string())?;
    let names = |input: bool| {
        devices
            .iter()
            .filter(|d| d.input == input)
            .map(|d| d.name.clone())
            .collect()
    };
    Ok((names(true), names(false)))
}

#[cfg(not(feature = "device-audio"))]
fn list_devices() -> DeviceList {
    Err("this build has no device audio (the `device-audio` feature)".into())
}

impl Radio {
    /// Sends the profile's devices and settings to the node (at start and after each change).
    pub(super) fn send_audio(&mut self, devices: bool) {
        let audio = self.profile.audio.clone();
        if devices {
            let input =
                AudioProfile::device(&audio.input).map_or(AudioInput::Silence, AudioInput::Device);
            self.bridge.command(NodeCommand::SetInput(input));
            self.bridge
                .command(NodeCommand::SetOutputDevice(AudioProfile::device(
                    &audio.output,
                )));
        }
        let settings = audio.settings(|path| self.channel_at(path));
        match settings.validate() {
            Ok(()) => {
                self.audio_error = None;
                self.bridge.command(NodeCommand::SetAudio(settings));
            }
            Err(e) => self.audio_error = Some(e.to_string()),
        }
        let activation: Vec<ChannelId> = audio
            .voice_activation
            .as_deref()
            .and_then(|path| self.channel_at(path))
            .into_iter()
            .collect();
        if activation != self.voice_activation {
            self.voice_activation = activation.clone();
            self.bridge
                .command(NodeCommand::VoiceActivation(activation));
        }
    }

    pub(super) fn channel_at(&self, path: &str) -> Option<ChannelId> {
        self.state
            .channels
            .keys()
            .copied()
            .find(|c| self.path(*c) == path)
    }

    pub(super) fn audio_ui(&mut self, ui: &mut egui::Ui) {
        let before = self.profile.audio.clone();
        let devices = self.devices.get_or_insert_with(list_devices).clone();
        let (inputs, outputs) = match &devices {
            Ok(lists) => lists.clone(),
            Err(e) => {
                ui.label(format!("Sound devices: {e}"));
                (Vec::new(), Vec::new())
            }
        };
        let audio = &mut self.profile.audio;
        device_choice(ui, "Input device", &mut audio.input, &inputs);
        device_choice(ui, "Output device", &mut audio.output, &outputs);
        if ui.button("Refresh devices").clicked() {
            self.devices = None;
        }

        let (level, speech) = self.stats.as_ref().map_or((METER_FLOOR_DB, 0.0), |s| {
            (s.audio.input_level_db, s.audio.speech_probability)
        });
        let fill = ((level - METER_FLOOR_DB) / -METER_FLOOR_DB).clamp(0.0, 1.0);
        ui.horizontal(|ui| {
            ui.label("Input level");
            ui.add(
                egui::ProgressBar::new(fill)
                    .desired_width(160.0)
                    .text(format!("{level:.0} dBFS")),
            );
            ui.label(format!("speech {:.0} %", speech * 100.0));
        });

        if let Some(stats) = &self.stats {
            let a = &stats.audio;
            if a.capture_feed.is_some() || a.playback_feed.is_some() {
                // The system's default moves these: the user sees where the sound goes now.
                let name = |d: &Option<String>| d.as_deref().unwrap_or("none").to_owned();
                ui.small(format!(
                    "sound card: input {}, output {}; {} input samples lost, {} output samples \
                     of silence filled in",
                    name(&a.input_device),
                    name(&a.output_device),
                    a.capture_overruns,
                    a.playback_underruns
                ));
            }
        }

        let audio = &mut self.profile.audio;
        let speakable: Vec<(ChannelId, String)> = self
            .state
            .channels
            .keys()
            .filter(|c| self.state.may(&self.me, **c, Permissions::SPEAK))
            .map(|c| (*c, self.state.path(*c).unwrap_or_default()))
            .collect();
        ui.horizontal_wrapped(|ui| {
            ui.label("Transmit:");
            ui.radio_value(&mut audio.voice_activation, None, "push-to-talk");
            for (_, path) in &speakable {
                ui.radio_value(
                    &mut audio.voice_activation,
                    Some(path.clone()),
                    format!("voice activation on {path}"),
                );
            }
        });
        ui.add(
            egui::Slider::new(&mut audio.vad_threshold, 0.05..=0.99)
                .text("voice activation threshold"),
        );
        ui.checkbox(&mut audio.noise_suppression, "noise suppression");
        ui.checkbox(&mut audio.agc, "automatic gain");
        ui.horizontal(|ui| {
            ui.checkbox(&mut audio.echo_cancellation, "echo cancellation");
            let echo = self.stats.as_ref().and_then(|s| s.audio.echo);
            ui.small(echo_text(audio.echo_cancellation, echo));
        });
        let mut kbps = audio.bitrate / 1000;
        if ui
            .add(egui::Slider::new(&mut kbps, 6..=64).text("bitrate kb/s"))
            .changed()
        {
            audio.bitrate = kbps * 1000;
        }
        ui.add(egui::Slider::new(&mut audio.jitter_min_ms, 0..=400).text("jitter buffer min ms"));
        ui.add(egui::Slider::new(&mut audio.jitter_max_ms, 20..=1000).text("jitter buffer max ms"));
        self.ducking_ui(ui);
        if let Some(e) = &self.audio_error {
            ui.colored_label(ui.visuals().error_fg_color, e.as_str());
        }

        let after = &self.profile.audio;
        if *after != before {
            let devices_changed = after.input != before.input || after.output != before.output;
            self.send_audio(devices_changed);
            self.profile_unsaved = true;
        }
    }

    fn ducking_ui(&mut self, ui: &mut egui::Ui) {
        ui.label("Ducking (a channel plays quieter while another has a talker):");
        let mut remove = None;
        for (i, rule) in self.profile.audio.ducking.iter().enumerate() {
            ui.horizontal(|ui| {
                ui.label(format!(
                    "while {} talks, {} −{:.0} dB",
                    rule.when, rule.duck, rule.db
                ));
                if ui.button(format!("remove rule {}", i + 1)).clicked() {
                    remove = Some(i);
                }
            });
        }
        if let Some(i) = remove {
            self.profile.audio.ducking.remove(i);
        }
        let paths: Vec<String> = self.channels().into_iter().map(|(_, p)| p).collect();
        let Some(first) = paths.first() else {
            return;
        };
        let form = &mut self.duck_form;
        if form.when.is_empty() {
            form.when = first.clone();
            form.duck = paths.get(1).unwrap_or(first).clone();
        }
        ui.horizontal(|ui| {
            ui.label("while");
            path_choice(ui, "talking channel", &mut form.when, &paths);
            ui.label("talks, duck");
            path_choice(ui, "ducked channel", &mut form.duck, &paths);
            ui.add(egui::Slider::new(&mut form.db, 3.0..=40.0).text("dB"));
            if ui.button("Add ducking rule").clicked() {
                if form.when == form.duck {
                    self.audio_error = Some("a channel cannot duck itself".into());
                } else {
                    self.profile.audio.ducking.push(form.clone());
                }
            }
        });
    }
}

fn device_choice(ui: &mut egui::Ui, label: &str, chosen: &mut String, devices: &[String]) {
    egui::ComboBox::from_label(label)
        .selected_text(chosen.as_str())
        .show_ui(ui, |ui| {
            ui.selectable_value(chosen, DEFAULT_DEVICE.to_string(), DEFAULT_DEVICE);
            ui.selectable_value(chosen, NO_DEVICE.to_string(), NO_DEVICE);
            for name in devices {
                ui.selectable_value(chosen, name.clone(), name.as_str());
            }
        });
}

/// A channel picker whose words stand before it (read left to right).
/// A channel picker; `label` names it for screen readers (the sentence around it says it).
fn path_choice(ui: &mut egui::Ui, label: &str, chosen: &mut String, paths: &[String]) {
    let combo = egui::ComboBox::from_id_salt(label)
        .selected_text(chosen.as_str())
        .show_ui(ui, |ui| {
            for path in paths {
                ui.selectable_value(chosen, path.clone(), path.as_str());
            }
        });
    let shown = chosen.clone();
    combo.response.widget_info(|| {
        egui::WidgetInfo::labeled(
            egui::WidgetType::ComboBox,
            true,
            format!("{label}: {shown}"),
        )
    });
}

/// What the echo canceller is doing, in words.
pub(crate) fn echo_text(
    wanted: bool,
    echo: Option<callsign_node::audio::echo::EchoStats>,
) -> String {
    match (wanted, echo) {
        (false, _) => "off".into(),
        (true, None) => "runs while input and output are sound cards".into(),
        (true, Some(e)) => {
            let erle = e.erle_db.map_or("measuring".into(), |db| {
                format!("removes {db:.0} dB of echo")
            });
            let delay = e
                .delay_ms
                .map_or(String::new(), |ms| format!(", echo delay {ms} ms"));
            format!("{erle}{delay} (devices report {} ms)", e.device_delay_ms)
        }
    }
}
