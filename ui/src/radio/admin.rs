//! The org admin window (admins only): the channel tree (add, rename, move, remove, floor and
//! mesh policy, per-role ACLs), roles, members, rented relays, operation presets and invite
//! tickets. Every edit is a signed charter op the node applies and gossips; the node refuses
//! what the charter's rules forbid, and its warning shows in the log.

use super::{Radio, INVITE_VALID};
use callsign_keys::Multiaddr;
use callsign_keys::{IdentityKey, InviteGrant, Ticket};
use callsign_mesh::charter::{
    ChannelId, ChannelPolicy, FloorMode, OpBody, Permissions, Priority, RelayInfo, Role,
};
use eframe::egui;
use multiaddr::Protocol;
use rand::RngCore;
use std::time::{SystemTime, UNIX_EPOCH};

/// The window's pages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AdminTab {
    #[default]
    Channels,
    Roles,
    Members,
    Relays,
    Presets,
    Invites,
}

const TABS: [(AdminTab, &str); 6] = [
    (AdminTab::Channels, "Channels"),
    (AdminTab::Roles, "Roles"),
    (AdminTab::Members, "Members"),
    (AdminTab::Relays, "Relays"),
    (AdminTab::Presets, "Presets"),
    (AdminTab::Invites, "Invites"),
];

/// Floor priorities 0–4 by name.
const PRIORITIES: [&str; 5] = ["none", "low", "normal", "high", "emergency"];

/// Permission flags as the ACL editor shows them.
const FLAGS: [(Permissions, &str); 4] = [
    (Permissions::LISTEN, "listen"),
    (Permissions::SPEAK, "speak"),
    (Permissions::WHISPER, "whisper"),
    (Permissions::MANAGE, "manage"),
];

/// What the admin is typing.
#[derive(Debug, Default)]
pub struct AdminForm {
    pub open: bool,
    pub tab: AdminTab,
    pub new_channel: String,
    pub parent: Option<ChannelId>,
    pub selected: Option<ChannelId>,
    pub rename: String,
    pub new_role: String,
    pub member_id: String,
    pub member_name: String,
    pub member_role: String,
    pub relay_id: String,
    pub relay_addr: String,
    pub relay_capacity: u32,
    pub preset_name: String,
    pub preset_from: Option<ChannelId>,
    pub invite_role: String,
    pub invite: Option<String>,
    /// The address the ticket names.
    pub invite_addr: String,
    /// A channel's mesh threshold while its slider is dragged.
    pub threshold: Option<(ChannelId, u8)>,
    /// Why the last form could not be sent.
    pub error: Option<String>,
}

impl Radio {
    fn edit(&mut self, body: OpBody) {
        self.admin.error = None;
        self.bridge
            .command(callsign_node::NodeCommand::EditCharter(body));
    }

    pub(super) fn admin_window(&mut self, ctx: &egui::Context) {
        let mut open = self.admin.open;
        egui::Window::new("Org admin")
            .open(&mut open)
            .default_width(560.0)
            .max_width(640.0)
            // Beside the channel rows rather than over them.
            .default_pos(egui::pos2(420.0, 170.0))
            .show(ctx, |ui| {
                ui.horizontal_wrapped(|ui| {
                    for (tab, name) in TABS {
                        ui.selectable_value(&mut self.admin.tab, tab, name);
                    }
                });
                ui.separator();
                egui::ScrollArea::vertical().show(ui, |ui| match self.admin.tab {
                    AdminTab::Channels => self.channels_tab(ui),
                    AdminTab::Roles => self.roles_tab(ui),
                    AdminTab::Members => self.members_tab(ui),
                    AdminTab::Relays => self.relays_tab(ui),
                    AdminTab::Presets => self.presets_tab(ui),
                    AdminTab::Invites => self.invites_tab(ui),
                });
                if let Some(e) = &self.admin.error {
                    ui.colored_label(ui.visuals().error_fg_color, e.as_str());
                }
            });
        self.admin.open = open;
    }

    fn channel_combo(
        &self,
        ui: &mut egui::Ui,
        label: &str,
        chosen: &mut Option<ChannelId>,
        none: &str,
    ) {
        let text = chosen.map_or(none.to_string(), |c| self.path(c));
        egui::ComboBox::from_label(label)
            .selected_text(text)
            .show_ui(ui, |ui| {
                ui.selectable_value(chosen, None, none);
                for (c, path) in self.all_channels() {
                    ui.selectable_value(chosen, Some(c), path);
                }
            });
    }

    /// Every channel, in tree order (admins see those they cannot hear too).
    fn all_channels(&self) -> Vec<(ChannelId, String)> {
        let mut out: Vec<(ChannelId, String)> = self
            .state
            .channels
            .keys()
            .map(|c| (*c, self.path(*c)))
            .collect();
        out.sort_by(|a, b| a.1.cmp(&b.1));
        out
    }

    fn channels_tab(&mut self, ui: &mut egui::Ui) {
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

    fn roles_tab(&mut self, ui: &mut egui::Ui) {
        let roles: Vec<(String, Role)> = self
            .state
            .roles
            .iter()
            .map(|(n, r)| (n.clone(), r.clone()))
            .collect();
        let mut edits = Vec::new();
        egui::Grid::new("roles")
            .striped(true)
            .spacing([12.0, 6.0])
            .show(ui, |ui| {
                for title in ["Role", "Permissions", "Floor priority", ""] {
                    ui.label(egui::RichText::new(title).small().weak());
                }
                ui.end_row();
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
                        super::labelled(egui::WidgetType::ComboBox, format!("{name} priority"))
                    });
                    edited.priority = Priority::new(level).unwrap_or(role.priority);
                    let remove = ui.button("Remove");
                    remove.widget_info(|| {
                        super::labelled(egui::WidgetType::Button, format!("Remove role {name}"))
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

    fn members_tab(&mut self, ui: &mut egui::Ui) {
        let roles: Vec<String> = self.state.roles.keys().cloned().collect();
        let members: Vec<(IdentityKey, callsign_mesh::charter::Member)> = self
            .state
            .members
            .iter()
            .map(|(k, m)| (*k, m.clone()))
            .collect();
        let mut edits = Vec::new();
        egui::Grid::new("members")
            .striped(true)
            .spacing([12.0, 6.0])
            .show(ui, |ui| {
                for title in ["Member", "Id", "Roles", "Admin", ""] {
                    ui.label(egui::RichText::new(title).small().weak());
                }
                ui.end_row();
                for (peer, member) in members {
                    let name = member.name.as_str();
                    ui.strong(name);
                    ui.small(short(&peer)).on_hover_text(peer.to_string());
                    let mut edited = member.roles.clone();
                    ui.horizontal(|ui| {
                        for role in &roles {
                            let mut has = edited.contains(role);
                            let toggle = ui.checkbox(&mut has, role.as_str());
                            toggle.widget_info(|| super::toggled(has, format!("{name} is {role}")));
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
                        toggle.widget_info(|| super::toggled(wants, format!("{name} is admin")));
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
                            super::labelled(egui::WidgetType::Button, format!("Remove {name}"))
                        });
                        if remove.clicked() {
                            edits.push(OpBody::RemoveMember { peer });
                        }
                    } else {
                        ui.label("");
                    }
                    ui.end_row();
                }
            });
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

    fn relays_tab(&mut self, ui: &mut egui::Ui) {
        let relays: Vec<(IdentityKey, RelayInfo)> = self
            .state
            .relays
            .iter()
            .map(|(k, r)| (*k, r.clone()))
            .collect();
        if relays.is_empty() {
            ui.label("No rented relays: big channels use volunteers.");
        }
        for (peer, info) in relays {
            let addrs: Vec<String> = info
                .addrs
                .iter()
                .filter_map(|a| Multiaddr::try_from(a.clone()).ok())
                .map(|a| a.to_string())
                .collect();
            ui.horizontal_wrapped(|ui| {
                ui.label(format!(
                    "{} — {} subscribers — {}",
                    short(&peer),
                    info.capacity,
                    addrs.join(", ")
                ));
                if ui
                    .button(format!("Remove relay {}", short(&peer)))
                    .clicked()
                {
                    self.edit(OpBody::RemoveRelay { peer });
                }
            });
        }
        ui.separator();
        ui.label("Register a relay (`callsign-relay key` prints its peer id):");
        ui.horizontal_wrapped(|ui| {
            let label = ui.label("Relay peer id");
            ui.add(egui::TextEdit::singleline(&mut self.admin.relay_id))
                .labelled_by(label.id);
        });
        ui.horizontal_wrapped(|ui| {
            let label = ui.label("Relay address");
            ui.add(
                egui::TextEdit::singleline(&mut self.admin.relay_addr)
                    .hint_text("/ip4/203.0.113.5/udp/4433/quic-v1"),
            )
            .labelled_by(label.id);
            if self.admin.relay_capacity == 0 {
                self.admin.relay_capacity = 200;
            }
            ui.add(egui::Slider::new(&mut self.admin.relay_capacity, 1..=2000).text("capacity"));
        });
        if ui.button("Add relay").clicked() {
            let peer = self.admin.relay_id.trim().parse::<IdentityKey>();
            let addr = self.admin.relay_addr.trim().parse::<Multiaddr>();
            match (peer, addr) {
                (Ok(peer), Ok(addr)) => {
                    self.admin.relay_id.clear();
                    self.admin.relay_addr.clear();
                    let capacity = self.admin.relay_capacity;
                    self.edit(OpBody::PutRelay {
                        peer,
                        info: RelayInfo {
                            addrs: vec![addr.to_vec()],
                            capacity,
                        },
                    });
                }
                (Err(_), _) => {
                    self.admin.error = Some("the relay's peer id is not a peer id".into())
                }
                (_, Err(e)) => self.admin.error = Some(format!("the relay's address: {e}")),
            }
        }
    }

    fn presets_tab(&mut self, ui: &mut egui::Ui) {
        let presets: Vec<(String, usize)> = self
            .state
            .presets
            .iter()
            .map(|(n, p)| (n.clone(), p.channels.len()))
            .collect();
        if presets.is_empty() {
            ui.label("No presets yet: capture a channel subtree as one below.");
        }
        let mut parent = self.admin.parent;
        if !presets.is_empty() {
            self.channel_combo(ui, "stamp out under", &mut parent, "(top level)");
        }
        self.admin.parent = parent;
        for (name, channels) in presets {
            ui.horizontal_wrapped(|ui| {
                ui.label(format!("{name} ({channels} channels)"));
                if ui.button(format!("Apply preset {name}")).clicked() {
                    self.edit(OpBody::ApplyPreset {
                        name: name.clone(),
                        parent,
                    });
                }
                if ui.button(format!("Remove preset {name}")).clicked() {
                    self.edit(OpBody::RemovePreset { name: name.clone() });
                }
            });
        }
        ui.separator();
        ui.horizontal_wrapped(|ui| {
            let label = ui.label("Preset name");
            ui.add(egui::TextEdit::singleline(&mut self.admin.preset_name))
                .labelled_by(label.id);
            let mut from = self.admin.preset_from;
            self.channel_combo(ui, "from subtree", &mut from, "(choose)");
            self.admin.preset_from = from;
            if ui.button("Save as preset").clicked() {
                let name = self.admin.preset_name.trim().to_string();
                match from.and_then(|c| self.state.preset_of(c)) {
                    Some(preset) if !name.is_empty() => {
                        self.admin.preset_name.clear();
                        self.edit(OpBody::DefinePreset { name, preset });
                    }
                    _ => {
                        self.admin.error =
                            Some("name the preset and choose the subtree it copies".into())
                    }
                }
            }
        });
    }

    fn invites_tab(&mut self, ui: &mut egui::Ui) {
        let roles: Vec<String> = self.state.roles.keys().cloned().collect();
        if roles.is_empty() {
            ui.label("Add a role first: an invite grants one.");
            return;
        }
        if !roles.contains(&self.admin.invite_role) {
            self.admin.invite_role = roles[0].clone();
        }
        if self.admin.invite_addr.is_empty() {
            self.admin.invite_addr = self.reachable_address().unwrap_or_default();
        }
        ui.horizontal_wrapped(|ui| {
            let label = ui.label("Address in the ticket");
            ui.add(
                egui::TextEdit::singleline(&mut self.admin.invite_addr)
                    .desired_width(420.0)
                    .hint_text("/ip4/203.0.113.5/udp/47123/quic-v1/p2p/12D3KooW…"),
            )
            .labelled_by(label.id);
        });
        ui.small(
            "Where the newcomer dials you: this machine's address on its network; put your \
             public address here if you forwarded the port.",
        );
        ui.horizontal_wrapped(|ui| {
            role_combo(ui, "role", &mut self.admin.invite_role, &roles);
            if ui.button("Copy invite ticket").clicked() {
                match self.invite_ticket() {
                    Ok(ticket) => {
                        ui.ctx().copy_text(ticket.clone());
                        self.admin.invite = Some(ticket);
                    }
                    Err(e) => self.admin.error = Some(format!("invite: {e}")),
                }
            }
        });
        if let Some(ticket) = &self.admin.invite {
            ui.label(format!("ticket: {ticket}"));
            ui.small(format!(
                "valid for {} days; copied to the clipboard",
                INVITE_VALID.as_secs() / 86_400
            ));
        }
    }

    /// Our node's address with the unspecified IP it listens on (`0.0.0.0`) replaced by the
    /// address this machine uses toward the internet (no packet is sent to find it).
    fn reachable_address(&self) -> Option<String> {
        let address: Multiaddr = self.bridge.address.as_deref()?.parse().ok()?;
        let outward = std::net::UdpSocket::bind("0.0.0.0:0")
            .and_then(|s| s.connect("192.0.2.1:9").map(|()| s))
            .and_then(|s| s.local_addr())
            .ok()
            .map(|a| a.ip());
        let replaced: Multiaddr = address
            .iter()
            .map(|p| match (p, outward) {
                (Protocol::Ip4(ip), Some(std::net::IpAddr::V4(out))) if ip.is_unspecified() => {
                    Protocol::Ip4(out)
                }
                (p, _) => p,
            })
            .collect();
        Some(replaced.to_string())
    }

    /// A signed invite for the chosen role, with our address to dial.
    fn invite_ticket(&self) -> Result<String, callsign_keys::TicketError> {
        let mut nonce = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let grant = InviteGrant::issue(
            &self.identity,
            self.state.org,
            self.admin.invite_role.clone(),
            now + INVITE_VALID.as_secs(),
            nonce,
        )?;
        let bootstrap = match self.admin.invite_addr.trim() {
            "" => Vec::new(),
            text => vec![text
                .parse()
                .map_err(|e| callsign_keys::TicketError::Malformed(format!("address: {e}")))?],
        };
        Ticket {
            org: self.state.org,
            bootstrap,
            grant: Some(grant),
        }
        .encode()
    }
}

/// Tick boxes for each permission flag; returns the ticked set.
fn flag_boxes(ui: &mut egui::Ui, perms: Permissions, whose: &str) -> Permissions {
    let mut out = Permissions::NONE;
    for (flag, name) in FLAGS {
        let mut on = perms.contains(flag);
        // The row says whose; the accessible label says it too, for screen readers.
        let toggle = ui.checkbox(&mut on, name);
        toggle.widget_info(|| super::toggled(on, format!("{name} ({whose})")));
        if on {
            out = out.union(flag);
        }
    }
    out
}

fn role_combo(ui: &mut egui::Ui, label: &str, chosen: &mut String, roles: &[String]) {
    egui::ComboBox::from_label(label)
        .selected_text(chosen.as_str())
        .show_ui(ui, |ui| {
            for role in roles {
                ui.selectable_value(chosen, role.clone(), role.as_str());
            }
        });
}

/// The end of a peer id, enough to tell members apart.
fn short(peer: &IdentityKey) -> String {
    let text = peer.to_string();
    format!("…{}", &text[text.len().saturating_sub(8)..])
}
