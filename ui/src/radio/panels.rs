//! The radio stack's side panels: the roster (link kind, round-trip time, loss, buffer,
//! whisper) and the settings (channel keys).

use super::{Keyed, Radio, RosterEntry, SIMULCAST_KEY, STATS_EVERY};
use callsign_keys::IdentityKey;
use callsign_node::runtime::LinkKind;
use callsign_node::NodeCommand;
use eframe::egui;
use std::time::Instant;
use tokio::sync::oneshot;

/// The local API's port unless the user picks another.
const DEFAULT_API_PORT: u16 = 7070;

impl Radio {
    pub(super) fn roster_ui(&mut self, ui: &mut egui::Ui) {
        ui.heading("Roster");
        let entries: Vec<(IdentityKey, RosterEntry)> = self
            .roster
            .iter()
            .filter(|(k, _)| **k != self.me)
            .map(|(k, e)| (*k, e.clone()))
            .collect();
        if entries.is_empty() {
            ui.label("Nobody else online.");
        }
        for (peer, entry) in entries {
            let link = match self.links.get(&peer.peer_id()) {
                Some(LinkKind::Direct) => "direct",
                Some(LinkKind::Mapped) => "direct (mapped port)",
                Some(LinkKind::HolePunched) => "hole-punched",
                Some(LinkKind::Relayed) => "relayed",
                Some(LinkKind::TcpFallback) => "TCP fallback",
                None => "no link",
            };
            let rtt = self
                .rtt_ms(&peer)
                .map_or(String::new(), |ms| format!(", {ms} ms"));
            let heard = self
                .reception(&peer)
                .map_or(String::new(), |(loss, buffer)| {
                    format!(", loss {loss:.0} %, buffer {buffer:.0} ms")
                });
            let talking = self.talkers.values().any(|t| t.contains_key(&peer));
            ui.horizontal(|ui| {
                let button = ui.button("whisper").on_hover_text("hold to whisper");
                let name = entry.name.clone();
                button.widget_info(|| {
                    egui::WidgetInfo::labeled(
                        egui::WidgetType::Button,
                        true,
                        format!("whisper {name}"),
                    )
                });
                self.ptt_button(ui, &button, Keyed::Whisper(peer));
                let mut text = egui::RichText::new(&entry.name).strong();
                if talking {
                    text = text.color(super::TALKER_COLOR);
                }
                let summary = format!("{} ({link}{rtt}{heard})", entry.name);
                ui.label(text).widget_info(|| {
                    egui::WidgetInfo::labeled(egui::WidgetType::Label, true, summary.clone())
                });
            });
            // Details on a line of their own, so the panel stays narrow beside the stack.
            ui.label(egui::RichText::new(format!("{link}{rtt}{heard}")).small());
            let on: Vec<String> = entry.listening.iter().map(|c| self.path(*c)).collect();
            ui.label(
                egui::RichText::new(format!("on {}", on.join(", ")))
                    .small()
                    .weak(),
            );
            if !entry.recording.is_empty() {
                // Everyone listening sees who records: the charter's recording notice.
                let rec: Vec<String> = entry.recording.iter().map(|c| self.path(*c)).collect();
                ui.label(
                    egui::RichText::new(format!("● recording {}", rec.join(", ")))
                        .small()
                        .color(egui::Color32::from_rgb(220, 60, 60)),
                );
            }
        }
    }

    /// How we hear `peer`: the share of its frames the network lost, and the jitter buffer's
    /// mean delay, over its streams so far.
    pub(super) fn reception(&self, peer: &IdentityKey) -> Option<(f64, f64)> {
        let stats = self.stats.as_ref()?;
        let streams: Vec<_> = stats.received.iter().filter(|r| r.from == *peer).collect();
        let first = streams.first()?;
        // A stream heard on several channels repeats the sender's loss figures; count it once.
        let lost = first.frames_lost as f64;
        let played: u64 = streams.iter().map(|r| r.frames_played).max().unwrap_or(0);
        let total = lost + played as f64;
        let loss = if total > 0.0 {
            100.0 * lost / total
        } else {
            0.0
        };
        Some((loss, first.jitter_delay_ms))
    }

    /// Asks the node for its counters every `STATS_EVERY`; takes the answer when it is there.
    pub(super) fn poll_stats(&mut self) {
        if let Some(reply) = &mut self.stats_reply {
            match reply.try_recv() {
                Ok(stats) => {
                    self.stats = Some(stats);
                    self.stats_reply = None;
                }
                Err(oneshot::error::TryRecvError::Closed) => self.stats_reply = None,
                Err(oneshot::error::TryRecvError::Empty) => return,
            }
        }
        if self.stats_asked.is_none_or(|t| t.elapsed() >= STATS_EVERY) {
            let (tx, rx) = oneshot::channel();
            self.bridge.command(NodeCommand::Stats(tx));
            self.stats_reply = Some(rx);
            self.stats_asked = Some(Instant::now());
        }
    }

    /// Settings: each channel's hotkey (click, then press the key), checked for conflicts and
    /// kept in the profile.
    pub(super) fn settings_ui(&mut self, ui: &mut egui::Ui) {
        ui.label(format!("Push-to-talk keys: {}.", self.global_status));
        if let Some(assigned) = self.global.as_ref().and_then(|g| g.assigned()) {
            ui.label(format!("The desktop assigned: {assigned}."));
        }
        self.overlay_settings_ui(ui);
        for (channel, path) in self.channels() {
            let key = self
                .hotkeys
                .get(&channel)
                .map_or("none".to_string(), |k| k.name().to_string());
            let text = if self.binding == Some(channel) {
                format!("press a key for {path}")
            } else {
                format!("key for {path}: {key}")
            };
            if ui.button(text).clicked() {
                self.binding = Some(channel);
            }
        }
        ui.label(format!("Simulcast group: {}", SIMULCAST_KEY.name()));
        ui.separator();
        self.api_ui(ui);
        ui.separator();
        // Where a player finds what to attach to a problem report.
        match crate::log_file::path() {
            Some(path) => ui.label(format!("Log file: {}", path.display())),
            None => ui.label("Log: not written to a file in this run"),
        };
    }

    /// The local control API (docs/api.md), off by default: on, it serves on loopback from the
    /// next start, behind a fresh token in `api.token` beside the profile.
    fn api_ui(&mut self, ui: &mut egui::Ui) {
        let before = self.profile.api;
        let mut on = before.is_some();
        ui.checkbox(
            &mut on,
            "Local API for bots, dashboards and overlays (this machine only)",
        );
        self.profile.api = on.then(|| {
            let mut port = before.map_or(DEFAULT_API_PORT, |a| a.port());
            ui.horizontal(|ui| {
                ui.label("API port");
                ui.add(egui::DragValue::new(&mut port).range(1024..=65535));
            });
            std::net::SocketAddr::from(([127, 0, 0, 1], port))
        });
        if self.profile.api != before {
            if let Err(e) = self.profile.save(&self.dir) {
                self.say(format!("saving the profile: {e}"));
            }
        }
        let running = match &self.bridge.api {
            None => "off".to_string(),
            Some(Ok(addr)) => format!(
                "on at http://{addr}, token in {}",
                self.dir.join(crate::app::API_TOKEN_FILE).display()
            ),
            Some(Err(e)) => format!("not started: {e}"),
        };
        ui.label(format!("Local API: {running}"));
        let serving = self
            .bridge
            .api
            .as_ref()
            .and_then(|a| a.as_ref().ok().copied());
        if self.profile.api != serving && !matches!(&self.bridge.api, Some(Err(_))) {
            ui.label("The change applies at the next start.");
        }
    }

    /// While binding: the next key pressed becomes the channel's, unless another holds it.
    pub(super) fn bind_ui(&mut self, ctx: &egui::Context) {
        let Some(channel) = self.binding else {
            return;
        };
        let pressed = ctx.input(|i| {
            i.events.iter().find_map(|e| match e {
                egui::Event::Key {
                    key, pressed: true, ..
                } => Some(*key),
                _ => None,
            })
        });
        let Some(key) = pressed else {
            return;
        };
        self.binding = None;
        if key == egui::Key::Escape {
            return;
        }
        let taken = if key == SIMULCAST_KEY {
            Some("the simulcast group".to_string())
        } else {
            self.hotkeys
                .iter()
                .find(|(c, k)| **k == key && **c != channel)
                .map(|(c, _)| self.path(*c))
        };
        if let Some(owner) = taken {
            self.say(format!("{} is already {owner}'s key", key.name()));
            return;
        }
        self.hotkeys.insert(channel, key);
        self.rebind_global();
        self.profile
            .hotkeys
            .insert(self.path(channel), key.name().to_string());
        if let Err(e) = self.profile.save(&self.dir) {
            self.say(format!("saving the profile: {e}"));
        }
    }
}
