//! The in-game overlay: a small always-on-top, transparent, click-through window showing what
//! we transmit on, who talks where and the floor of half-duplex channels. Toggled by a key
//! (system-wide where global keys work, see `global_keys`), placed by the user in the settings.
//!
//! It is an ordinary top-level window (egui viewport), so it shows over games in windowed and
//! borderless-windowed mode on X11, Windows and macOS. A game in exclusive full screen owns
//! the display and nothing else draws over it: Mumble's and Discord's hooks inject into the
//! game's renderer for that, which we do not.

use super::Radio;
use eframe::egui;

/// What the overlay shows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OverlayView {
    /// Channels we transmit on (paths).
    pub transmitting: Vec<String>,
    /// (who, channel path) for everyone talking now.
    pub talkers: Vec<(String, String)>,
    /// (channel path, floor state) for half-duplex channels with a holder or a queue.
    pub floors: Vec<(String, String)>,
}

/// The title the overlay window (and, embedded, its egui window) carries.
pub const OVERLAY_TITLE: &str = "Callsign overlay";

/// Draws the overlay's contents.
pub fn overlay_contents(ui: &mut egui::Ui, view: &OverlayView) {
    let strong = |text: String, colour: egui::Color32| {
        egui::RichText::new(text).strong().color(colour).size(15.0)
    };
    if view.transmitting.is_empty() && view.talkers.is_empty() && view.floors.is_empty() {
        ui.label(egui::RichText::new("Callsign: quiet").color(egui::Color32::LIGHT_GRAY));
    }
    for channel in &view.transmitting {
        ui.label(strong(
            format!("TX {channel}"),
            egui::Color32::from_rgb(255, 80, 80),
        ));
    }
    for (who, channel) in &view.talkers {
        ui.label(strong(
            format!("▶ {who} on {channel}"),
            egui::Color32::from_rgb(120, 230, 120),
        ));
    }
    for (channel, floor) in &view.floors {
        ui.label(
            egui::RichText::new(format!("{channel}: {floor}")).color(egui::Color32::LIGHT_GRAY),
        );
    }
}

impl Radio {
    /// What the overlay shows now.
    pub fn overlay_view(&self) -> OverlayView {
        let mut talkers: Vec<(String, String)> = self
            .talkers
            .iter()
            .flat_map(|(channel, who)| {
                let path = self.path(*channel);
                who.values().map(move |name| (name.clone(), path.clone()))
            })
            .collect();
        talkers.sort();
        OverlayView {
            transmitting: self.transmitting.iter().map(|c| self.path(*c)).collect(),
            talkers,
            floors: self
                .floor
                .iter()
                .map(|(c, text)| (self.path(*c), text.clone()))
                .collect(),
        }
    }

    /// Shows the overlay window when it is on. Where the platform cannot open another window
    /// (tests, some backends) egui shows it as a window inside this one.
    pub(super) fn overlay_ui(&mut self, ctx: &egui::Context) {
        if let Some(global) = &self.global {
            if global.take_overlay_toggle() {
                self.profile.overlay.shown ^= true;
                self.profile_unsaved = true;
            }
        }
        let overlay = &self.profile.overlay;
        if !overlay.shown {
            return;
        }
        let view = self.overlay_view();
        let builder = egui::ViewportBuilder::default()
            .with_title(OVERLAY_TITLE)
            .with_position(overlay.at)
            .with_inner_size([280.0, 120.0])
            .with_decorations(false)
            .with_transparent(true)
            .with_always_on_top()
            // Opening it must not take the keyboard from the game.
            .with_active(false)
            .with_mouse_passthrough(true)
            .with_taskbar(false)
            .with_resizable(false);
        ctx.show_viewport_immediate(
            egui::ViewportId::from_hash_of("callsign-overlay"),
            builder,
            |ctx, class| {
                if class == egui::ViewportClass::Embedded {
                    egui::Window::new(OVERLAY_TITLE)
                        .resizable(false)
                        .show(ctx, |ui| overlay_contents(ui, &view));
                } else {
                    let frame = egui::Frame::NONE
                        .fill(egui::Color32::from_black_alpha(170))
                        .inner_margin(8.0)
                        .corner_radius(6.0);
                    egui::CentralPanel::default()
                        .frame(frame)
                        .show(ctx, |ui| overlay_contents(ui, &view));
                }
            },
        );
    }

    /// The overlay's settings: on or off, where, and its key.
    pub(super) fn overlay_settings_ui(&mut self, ui: &mut egui::Ui) {
        let overlay = &mut self.profile.overlay;
        let mut changed = ui.checkbox(&mut overlay.shown, "In-game overlay").changed();
        ui.horizontal(|ui| {
            ui.label("at");
            changed |= ui
                .add(egui::DragValue::new(&mut overlay.at[0]).prefix("x "))
                .changed();
            changed |= ui
                .add(egui::DragValue::new(&mut overlay.at[1]).prefix("y "))
                .changed();
            ui.label(format!("toggle key: {}", overlay.key));
        });
        ui.small(
            "Shows over windowed and borderless games (X11, Windows, macOS); a game in \
             exclusive full screen hides it.",
        );
        if changed {
            self.profile_unsaved = true;
        }
    }

    /// The overlay's toggle key, when it names one.
    pub(super) fn overlay_key(&self) -> Option<egui::Key> {
        egui::Key::from_name(&self.profile.overlay.key)
    }
}
