//! The admin window's channel page: add, rename, move and remove channels, floor and mesh
//! policy, preferred relays and per-role ACL overrides.

use super::{flag_boxes, short};
use crate::radio::Radio;
use callsign_keys::IdentityKey;
use callsign_mesh::charter::{ChannelId, ChannelPolicy, FloorMode, OpBody, Permissions};
use eframe::egui;

impl Radio {
    pub(super) fn channels_tab(&mut self, ui: &mut egui::Ui) {
        ui.horizontal_wrapped(|ui| {
            let label = ui.label("New channel");
            ui.add(egui::TextEdit::singleline(&mut self.admin.new_channel))
                .labelled_by(label.id);
            let mut parent = self.admin.parent;
            self.channel_combo(ui, "under", &mut parent, "(top level)");
            self.admin.parent = parent;
            if ui.button("Add channel").clicked() && !self.admin.new_channel.trim().is_empty() {
                let name = std::mem::take(&mut self.admin.new_channel)
                    .trim()
                    .to_string();
                self.edit(OpBody::AddChannel { parent, name });
            }
        });
        ui.separator();
        for (channel, path) in self.all_channels() {
            let selected = self.admin.selected == Some(channel);
            if ui
                .selectable_label(selected, format!("edit {path}"))
                .clicked()
            {
                self.admin.selected = Some(channel);
                self.admin.rename = self
                    .state
                    .channels
                    .get(&channel)
                    .map(|c| c.name.clone())
                    .unwrap_or_default();
            }
        }
        if let Some(channel) = self.admin.selected {
            if self.state.channels.contains_key(&channel) {
                ui.separator();
                self.channel_editor(ui, channel);
            }
        }
    }

    fn channel_editor(&mut self, ui: &mut egui::Ui, channel: ChannelId) {
        let Some(current) = self.state.channels.get(&channel).cloned() else {
            return;
        };
        let path = self.path(channel);
        ui.strong(path.as_str());
        ui.horizontal_wrapped(|ui| {
            let label = ui.label("Name");
            ui.add(egui::TextEdit::singleline(&mut self.admin.rename))
                .labelled_by(label.id);
            if ui.button("Rename").clicked() {
                let name = self.admin.rename.trim().to_string();
                self.edit(OpBody::RenameChannel { channel, name });
            }
        });
        ui.horizontal_wrapped(|ui| {
            let mut parent = current.parent;
            self.channel_combo(ui, "parent", &mut parent, "(top level)");
            if parent != current.parent {
                self.edit(OpBody::MoveChannel { channel, parent });
            }
            if ui.button(format!("Remove {path}")).clicked() {
                self.edit(OpBody::RemoveChannel { channel });
                self.admin.selected = None;
            }
        });
        let mut policy = current.policy.clone();
        let mut half = policy.floor == FloorMode::HalfDuplex;
        ui.checkbox(&mut half, "half-duplex (one talker at a time, by priority)");
        policy.floor = if half {
            FloorMode::HalfDuplex
        } else {
            FloorMode::Open
        };
        // Each edit is a signed op gossiped to everyone: a dragged slider sends its final value.
        let mut threshold = match self.admin.threshold {
            Some((c, t)) if c == channel => t,
            _ => policy.mesh_threshold,
        };
        let slider = ui.add(
            egui::Slider::new(&mut threshold, 1..=32)
                .text("mesh up to this many listeners, then a relay"),
        );
        if slider.dragged() {
            self.admin.threshold = Some((channel, threshold));
        } else if slider.changed() || slider.drag_stopped() {
            policy.mesh_threshold = threshold;
            self.admin.threshold = None;
        }
        let relays: Vec<IdentityKey> = self.state.relays.keys().copied().collect();
        for relay in relays {
            let mut preferred = policy.preferred_relays.contains(&relay);
            if ui
                .checkbox(&mut preferred, format!("prefer relay {}", short(&relay)))
                .changed()
            {
                policy.preferred_relays.retain(|r| *r != relay);
                if preferred {
                    policy.preferred_relays.push(relay);
                }
            }
        }
        if policy != current.policy {
            self.send_policy(channel, policy);
        }
        ui.label("Role overrides on this channel (unticked \"override\": inherited):");
        let roles: Vec<String> = self.state.roles.keys().cloned().collect();
        for role in roles {
            let now = current.acl.get(&role).copied();
            let mut wanted = now;
            ui.horizontal_wrapped(|ui| {
                let mut overriding = wanted.is_some();
                ui.checkbox(&mut overriding, format!("override {role}"));
                if overriding != wanted.is_some() {
                    wanted = overriding.then_some(Permissions::NONE);
                }
                if let Some(perms) = &mut wanted {
                    *perms = flag_boxes(ui, *perms, &format!("{role} on {path}"));
                }
            });
            if wanted != now {
                self.edit(OpBody::SetChannelAcl {
                    channel,
                    role,
                    perms: wanted,
                });
            }
        }
    }

    fn send_policy(&mut self, channel: ChannelId, policy: ChannelPolicy) {
        self.edit(OpBody::SetChannelPolicy { channel, policy });
    }
}
