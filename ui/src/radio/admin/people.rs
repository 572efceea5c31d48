//! The admin window's roles page (permissions, floor priority) and members page (roles, admin,
//! remove, add by peer id).

use super::{flag_boxes, role_combo, short, PRIORITIES};
use crate::radio::{labelled, titled_table, toggled, Radio};
use callsign_keys::IdentityKey;
use callsign_mesh::charter::{OpBody, Permissions, Priority, Role};
use eframe::egui;

impl Radio {
    pub(super) fn roles_tab(&mut self, ui: &mut egui::Ui) {
        let roles: Vec<(String, Role)> = self
            .state
            .roles
            .iter()
            .map(|(n, r)| (n.clone(), r.clone()))
            .collect();
        let mut edits = Vec::new();
        let titles = ["Role", "Permissions", "Floor priority", ""];
        titled_table(ui, "roles", &titles, |ui| {
            for (name, role) in roles {
                let mut edited = role.clone();
                ui.strong(name.as_str());
                ui.horizontal(|ui| edited.perms = flag_boxes(ui, role.perms, &name));
                let mut level = role.priority.level();
                let combo = egui::ComboBox::from_id_salt(("priority", &name))
                    .selected_text(PRIORITIES[usize::from(level.min(4))])
                    .show_ui(ui, |ui| {
                        for (i, text) in PRIORITIES.iter().enumerate() {
                            ui.selectable_value(&mut level, i as u8, *text);
                        }
                    });
                combo.response.widget_info(|| {
                    labelled(egui::WidgetType::ComboBox, format!("{name} priority"))
                });
                edited.priority = Priority::new(level).unwrap_or(role.priority);
                let remove = ui.button("Remove");
                remove.widget_info(|| {
                    labelled(egui::WidgetType::Button, format!("Remove role {name}"))
                });
                if remove.clicked() {
                    edits.push(OpBody::RemoveRole { name: name.clone() });
                }
                ui.end_row();
                if edited != role {
                    edits.push(OpBody::PutRole { name, role: edited });
                }
            }
        });
        for op in edits {
            self.edit(op);
        }
        ui.horizontal_wrapped(|ui| {
            let label = ui.label("New role");
            ui.add(egui::TextEdit::singleline(&mut self.admin.new_role))
                .labelled_by(label.id);
            if ui.button("Add role").clicked() && !self.admin.new_role.trim().is_empty() {
                let name = std::mem::take(&mut self.admin.new_role).trim().to_string();
                self.edit(OpBody::PutRole {
                    name,
                    role: Role {
                        perms: Permissions::LISTEN,
                        priority: Priority::NORMAL,
                    },
                });
            }
        });
    }

    pub(super) fn members_tab(&mut self, ui: &mut egui::Ui) {
        let roles: Vec<String> = self.state.roles.keys().cloned().collect();
        let members: Vec<(IdentityKey, callsign_mesh::charter::Member)> = self
            .state
            .members
            .iter()
            .map(|(k, m)| (*k, m.clone()))
            .collect();
        let mut edits = Vec::new();
        titled_table(
            ui,
            "members",
            &["Member", "Id", "Roles", "Admin", ""],
            |ui| {
                for (peer, member) in members {
                    let name = member.name.as_str();
                    ui.strong(name);
                    ui.small(short(&peer)).on_hover_text(peer.to_string());
                    let mut edited = member.roles.clone();
                    ui.horizontal(|ui| {
                        for role in &roles {
                            let mut has = edited.contains(role);
                            let toggle = ui.checkbox(&mut has, role.as_str());
                            toggle.widget_info(|| toggled(has, format!("{name} is {role}")));
                            if toggle.changed() {
                                edited.retain(|r| r != role);
                                if has {
                                    edited.push(role.clone());
                                    edited.sort();
                                }
                            }
                        }
                    });
                    if edited != member.roles {
                        edits.push(OpBody::PutMember {
                            peer,
                            name: member.name.clone(),
                            roles: edited,
                        });
                    }
                    let admin = self.state.is_admin(&peer);
                    let mut wants = admin;
                    if peer == self.state.org {
                        ui.label("founder");
                    } else {
                        let toggle = ui.add(egui::Checkbox::without_text(&mut wants));
                        toggle.widget_info(|| toggled(wants, format!("{name} is admin")));
                    }
                    if wants != admin {
                        edits.push(if wants {
                            OpBody::GrantAdmin { peer }
                        } else {
                            OpBody::RevokeAdmin { peer }
                        });
                    }
                    if peer != self.me {
                        let remove = ui.button("Remove");
                        remove.widget_info(|| {
                            labelled(egui::WidgetType::Button, format!("Remove {name}"))
                        });
                        if remove.clicked() {
                            edits.push(OpBody::RemoveMember { peer });
                        }
                    } else {
                        ui.label("");
                    }
                    ui.end_row();
                }
            },
        );
        for op in edits {
            self.edit(op);
        }
        ui.separator();
        ui.label("Add a member by peer id (they send it from \"Copy my peer id\"):");
        ui.horizontal_wrapped(|ui| {
            let label = ui.label("Peer id");
            ui.add(egui::TextEdit::singleline(&mut self.admin.member_id))
                .labelled_by(label.id);
            let label = ui.label("Member name");
            ui.add(egui::TextEdit::singleline(&mut self.admin.member_name))
                .labelled_by(label.id);
        });
        if !roles.contains(&self.admin.member_role) {
            self.admin.member_role = roles.first().cloned().unwrap_or_default();
        }
        ui.horizontal_wrapped(|ui| {
            role_combo(ui, "member role", &mut self.admin.member_role, &roles);
            if ui.button("Add member").clicked() {
                match self.admin.member_id.trim().parse::<IdentityKey>() {
                    Ok(peer) => {
                        let roles = (!self.admin.member_role.is_empty())
                            .then(|| self.admin.member_role.clone())
                            .into_iter()
                            .collect();
                        let name = std::mem::take(&mut self.admin.member_name)
                            .trim()
                            .to_string();
                        self.admin.member_id.clear();
                        self.edit(OpBody::PutMember { peer, name, roles });
                    }
                    Err(_) => self.admin.error = Some("that is not a peer id (12D3KooW…)".into()),
                }
            }
        });
    }
}
