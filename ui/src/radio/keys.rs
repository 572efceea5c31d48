//! Keying: channel keys in the window, the same keys system-wide (`crate::global_keys`), PTT
//! buttons held by pointer or keyboard, and the one transmission they share (a second key while
//! one is held does nothing).

use super::{Keyed, Radio, SIMULCAST_KEY};
use callsign_mesh::charter::{ChannelId, Permissions};
use callsign_node::NodeCommand;
use eframe::egui;

impl Radio {
    /// Grab the push-to-talk keys system-wide from the first frame on.
    pub fn want_global_keys(&mut self) {
        self.global_wanted = true;
    }

    /// (Re)binds the global keys to the current hotkeys and simulcast group.
    pub(super) fn rebind_global(&mut self) {
        let Some(global) = &mut self.global else {
            return;
        };
        let mut keys: Vec<(egui::Key, Vec<ChannelId>)> = self
            .hotkeys
            .iter()
            .filter(|(c, _)| self.state.may(&self.me, **c, Permissions::SPEAK))
            .map(|(c, k)| (*k, vec![*c]))
            .collect();
        if !self.simulcast.is_empty() {
            keys.push((SIMULCAST_KEY, self.simulcast.iter().copied().collect()));
        }
        let overlay_key = egui::Key::from_name(&self.profile.overlay.key);
        let failed = global.bind(&keys, overlay_key);
        self.global_status = if failed.is_empty() {
            format!(
                "keys work system-wide through {}, also while the game has focus",
                global.backend()
            )
        } else {
            format!(
                "system-wide keys on ({}), but {} could not be grabbed (another program holds \
                 them)",
                global.backend(),
                failed.join(", ")
            )
        };
    }

    pub(super) fn key_down(&mut self, keyed: Keyed) {
        if self.keyed.is_some() {
            return;
        }
        let command = match &keyed {
            Keyed::Channel(c) => NodeCommand::PttDown(vec![*c]),
            Keyed::Simulcast => NodeCommand::PttDown(self.simulcast.iter().copied().collect()),
            Keyed::Whisper(peer) => NodeCommand::WhisperDown(*peer),
        };
        self.bridge.command(command);
        self.keyed = Some(keyed);
    }

    pub(super) fn key_up(&mut self, keyed: &Keyed) {
        if self.keyed.as_ref() == Some(keyed) {
            self.bridge.command(NodeCommand::PttUp);
            self.keyed = None;
        }
    }

    pub(super) fn hotkeys_ui(&mut self, ctx: &egui::Context) {
        let keys: Vec<(ChannelId, egui::Key)> =
            self.hotkeys.iter().map(|(c, k)| (*c, *k)).collect();
        // System-wide keys deliver the overlay toggle themselves.
        if self.global.is_none() {
            if let Some(key) = self.overlay_key() {
                if ctx.input(|i| i.key_pressed(key)) {
                    self.profile.overlay.shown ^= true;
                    self.profile_unsaved = true;
                }
            }
        }
        let (pressed, released): (Vec<Keyed>, Vec<Keyed>) = ctx.input(|i| {
            let mut pressed = Vec::new();
            let mut released = Vec::new();
            for (channel, key) in &keys {
                if i.key_pressed(*key) {
                    pressed.push(Keyed::Channel(*channel));
                }
                if i.key_released(*key) {
                    released.push(Keyed::Channel(*channel));
                }
            }
            if i.key_pressed(SIMULCAST_KEY) {
                pressed.push(Keyed::Simulcast);
            }
            if i.key_released(SIMULCAST_KEY) {
                released.push(Keyed::Simulcast);
            }
            (pressed, released)
        });
        for keyed in pressed {
            self.key_down(keyed);
        }
        for keyed in released {
            self.key_up(&keyed);
        }
    }

    /// Push-to-talk on a button: down while the primary button is held on it, or while Space
    /// or Enter is held with the button focused (keyboard users reach it with Tab).
    pub(super) fn ptt_button(&mut self, ui: &egui::Ui, button: &egui::Response, keyed: Keyed) {
        let (pressed, released) =
            ui.input(|i| (i.pointer.primary_pressed(), i.pointer.primary_released()));
        let keys = [egui::Key::Space, egui::Key::Enter];
        let (key_pressed, key_released) = ui.input(|i| {
            (
                keys.iter().any(|k| i.key_pressed(*k)),
                keys.iter().any(|k| i.key_released(*k)),
            )
        });
        if (pressed && button.contains_pointer()) || (key_pressed && button.has_focus()) {
            self.key_down(keyed.clone());
        }
        if released || (key_released && button.has_focus()) {
            self.key_up(&keyed);
        }
    }
}
