//! The channel rows: a titled table with one row per channel we may hear (TX light, talkers
//! with their link quality, listen, mute, record, volume, pan, push-to-talk with its key, simulcast
//! membership, floor state, route), and the simulcast group's button.

use super::{
    labelled, set_member, titled_table, toggled, Keyed, Radio, SIMULCAST_KEY, TALKER_COLOR,
};
use callsign_keys::IdentityKey;
use callsign_mesh::charter::{ChannelId, FloorMode, Permissions, RecordingPolicy};
use callsign_mesh::topology::Route;
use callsign_node::NodeCommand;
use eframe::egui;

/// The radio stack's column titles, in row order.
const STACK_COLUMNS: [&str; 12] = [
    "",
    "Channel",
    "Talking",
    "Listen",
    "Mute",
    "Rec",
    "Volume",
    "Pan",
    "Talk",
    "Simulcast",
    "Floor",
    "Route",
];
const TX_COLOR: egui::Color32 = egui::Color32::from_rgb(200, 40, 40);

impl Radio {
    pub(super) fn stack_ui(&mut self, ui: &mut egui::Ui) {
        ui.heading("Channels");
        let channels = self.channels();
        if channels.is_empty() {
            ui.label("No channels yet.");
        } else {
            egui::ScrollArea::horizontal().show(ui, |ui| {
                titled_table(ui, "stack", &STACK_COLUMNS, |ui| {
                    for (channel, path) in channels {
                        self.row_ui(ui, channel, &path);
                        ui.end_row();
                    }
                });
            });
        }
        if !self.simulcast.is_empty() {
            ui.separator();
            ui.horizontal(|ui| {
                let button = ui.add(egui::Button::new("PTT simulcast").sense(egui::Sense::click()));
                self.ptt_button(ui, &button, Keyed::Simulcast);
                let paths: Vec<String> = self.simulcast.iter().map(|c| self.path(*c)).collect();
                ui.label(format!(
                    "{} keys {}",
                    SIMULCAST_KEY.name(),
                    paths.join(" + ")
                ));
            });
        }
    }

    /// One channel's row. What shows is short (the columns have titles); each control's
    /// accessible label names its channel ("listen /flight"), for screen readers and tests.
    fn row_ui(&mut self, ui: &mut egui::Ui, channel: ChannelId, path: &str) {
        let on_air = self.transmitting.contains(&channel);
        tx_light(ui, on_air, path);
        ui.label(egui::RichText::new(path).strong());
        let talking = self.talkers_text(channel);
        if talking.is_empty() {
            ui.label("");
        } else {
            let text = talking.join(", ");
            ui.label(egui::RichText::new(&text).color(TALKER_COLOR))
                .widget_info(|| labelled(egui::WidgetType::Label, format!("{path}: {text}")));
        }
        let mut listening = self.listening.contains(&channel);
        let monitor = self.monitor_only(channel);
        let mut toggle = ui.add(egui::Checkbox::without_text(&mut listening));
        if monitor {
            toggle = toggle.on_hover_text("monitor: hear it without showing in its roster");
        }
        let verb = if monitor { "monitor" } else { "listen" };
        toggle.widget_info(|| toggled(listening, format!("{verb} {path}")));
        if toggle.changed() {
            self.set_listening(channel, listening);
        }
        let mut muted = self.muted.contains(&channel);
        let toggle = ui.add(egui::Checkbox::without_text(&mut muted));
        toggle.widget_info(|| toggled(muted, format!("mute {path}")));
        if toggle.changed() {
            set_member(&mut self.muted, channel, muted);
            self.bridge.command(NodeCommand::Mute(channel, muted));
        }
        // Recording: what the node says it records; everyone listening sees it in the roster.
        let mut recording = self.recording.contains(&channel);
        let forbidden = self.state.recording_policy(channel) == RecordingPolicy::Forbidden;
        let toggle = ui
            .add_enabled(
                !forbidden || recording,
                egui::Checkbox::without_text(&mut recording),
            )
            .on_hover_text(if forbidden {
                "the charter forbids recording this channel"
            } else {
                "record what you hear here (Ogg Opus; everyone listening sees it)"
            });
        toggle.widget_info(|| toggled(recording, format!("record {path}")));
        if toggle.changed() {
            self.bridge.command(NodeCommand::Record {
                channel,
                on: recording,
            });
        }
        ui.spacing_mut().slider_width = 80.0;
        let volume = self.volume.entry(channel).or_insert(1.0);
        let slider = ui
            .add(egui::Slider::new(volume, 0.0..=2.0).show_value(false))
            .on_hover_text(format!("{:.0} %", *volume * 100.0));
        let v = *volume;
        slider
            .widget_info(|| egui::WidgetInfo::slider(true, f64::from(v), format!("volume {path}")));
        if slider.changed() {
            self.bridge.command(NodeCommand::SetVolume(channel, v));
        }
        ui.spacing_mut().slider_width = 50.0;
        let pan = self.pan.entry(channel).or_insert(0.0);
        let slider = ui
            .add(egui::Slider::new(pan, -1.0..=1.0).show_value(false))
            .on_hover_text(describe_pan(*pan));
        let p = *pan;
        slider.widget_info(|| egui::WidgetInfo::slider(true, f64::from(p), format!("pan {path}")));
        if slider.changed() {
            self.bridge.command(NodeCommand::SetPan(channel, p));
        }
        if self.state.may(&self.me, channel, Permissions::SPEAK) {
            let text = match self.hotkeys.get(&channel) {
                Some(key) => format!("PTT {}", key.name()),
                None => "PTT".to_string(),
            };
            let mut button = egui::Button::new(text);
            if on_air {
                button = button.fill(TX_COLOR);
            }
            let button = ui.add(button).on_hover_text("hold to talk");
            button.widget_info(|| labelled(egui::WidgetType::Button, format!("PTT {path}")));
            self.ptt_button(ui, &button, Keyed::Channel(channel));
            let mut grouped = self.simulcast.contains(&channel);
            let toggle = ui
                .add(egui::Checkbox::without_text(&mut grouped))
                .on_hover_text(format!(
                    "in the simulcast group ({} talks on all of its channels)",
                    SIMULCAST_KEY.name()
                ));
            toggle.widget_info(|| toggled(grouped, format!("simulcast {path}")));
            if toggle.changed() {
                set_member(&mut self.simulcast, channel, grouped);
                self.rebind_global();
            }
        } else {
            ui.label(egui::RichText::new("listen only").weak());
            ui.label("");
        }
        let half_duplex = self
            .state
            .channels
            .get(&channel)
            .is_some_and(|c| c.policy.floor == FloorMode::HalfDuplex);
        let floor = match self.floor.get(&channel) {
            Some(news) => news.as_str(),
            // No news yet: nobody has pressed since we started.
            None if half_duplex => "half-duplex, free",
            None => "",
        };
        ui.label(floor);
        let route = match self.routes.get(&channel) {
            Some(Route::Relay(relay)) => format!("via {}", self.relay_name(relay)),
            Some(Route::Mesh) => "mesh".into(),
            None => String::new(),
        };
        ui.label(route);
    }

    /// Who talks on `channel`, each with their link's quality (round trip, and what the
    /// network loses of them).
    fn talkers_text(&self, channel: ChannelId) -> Vec<String> {
        let Some(talkers) = self.talkers.get(&channel) else {
            return Vec::new();
        };
        talkers
            .iter()
            .map(|(peer, name)| {
                let rtt = self.rtt_ms(peer).map(|ms| format!("{ms} ms"));
                let loss = self
                    .reception(peer)
                    .filter(|(loss, _)| *loss >= 1.0)
                    .map(|(loss, _)| format!("{loss:.0} % lost"));
                let quality: Vec<String> = rtt.into_iter().chain(loss).collect();
                if quality.is_empty() {
                    name.clone()
                } else {
                    format!("{name} ({})", quality.join(", "))
                }
            })
            .collect()
    }

    /// A relay by the charter's name for it (a rented relay's address, or a member's name).
    fn relay_name(&self, relay: &IdentityKey) -> String {
        if self.state.members.contains_key(relay) || self.roster.contains_key(relay) {
            return self.name(relay);
        }
        let host = self
            .state
            .relays
            .get(relay)
            .and_then(|r| r.addrs.first())
            .and_then(|a| multiaddr::Multiaddr::try_from(a.clone()).ok())
            .and_then(|a| {
                a.iter().find_map(|p| match p {
                    multiaddr::Protocol::Ip4(ip) => Some(ip.to_string()),
                    multiaddr::Protocol::Ip6(ip) => Some(ip.to_string()),
                    multiaddr::Protocol::Dns(h)
                    | multiaddr::Protocol::Dns4(h)
                    | multiaddr::Protocol::Dns6(h) => Some(h.to_string()),
                    _ => None,
                })
            });
        match host {
            Some(host) => format!("relay {host}"),
            None => {
                let id = relay.peer_id().to_string();
                format!("relay …{}", &id[id.len().saturating_sub(6)..])
            }
        }
    }
}

/// The on-air light: red while we transmit on the channel, a dim ring otherwise.
fn tx_light(ui: &mut egui::Ui, on_air: bool, path: &str) {
    let size = ui.spacing().interact_size.y * 0.6;
    let (rect, response) = ui.allocate_exact_size(egui::vec2(size, size), egui::Sense::hover());
    let painter = ui.painter();
    if on_air {
        painter.circle_filled(rect.center(), size / 2.0, TX_COLOR);
        response.widget_info(|| labelled(egui::WidgetType::Label, format!("TX {path}")));
    } else {
        let stroke = egui::Stroke::new(1.0, ui.visuals().weak_text_color());
        painter.circle_stroke(rect.center(), size / 2.0 - 1.0, stroke);
    }
}

fn describe_pan(pan: f32) -> String {
    match (pan * 100.0).round() as i32 {
        0 => "centre".into(),
        p if p < 0 => format!("left {}", -p),
        p => format!("right {p}"),
    }
}
