//! The org admin window (admins only): the channel tree (add, rename, move, remove, floor and
//! mesh policy, per-role ACLs), roles, members, rented relays, operation presets and invite
//! tickets. Every edit is a signed charter op the node applies and gossips; the node refuses
//! what the charter's rules forbid, and its warning shows in the log.
//!
//! Pages: `channels` (the tree and its policies), `people` (roles and members), `org` (rented
//! relays, presets and invites).

mod channels;
mod org;
mod people;

use super::toggled;
use super::Radio;
use callsign_keys::IdentityKey;
use callsign_mesh::charter::{ChannelId, OpBody, Permissions};
use eframe::egui;

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
    /// Where else the org can be reached now (the node's answer), also put in the ticket.
    pub org_addrs: Vec<callsign_keys::Multiaddr>,
    /// The node's answer on its way, and when it was asked.
    pub org_addrs_reply: Option<tokio::sync::oneshot::Receiver<Vec<callsign_keys::Multiaddr>>>,
    pub org_addrs_asked: Option<std::time::Instant>,
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
}

/// Tick boxes for each permission flag; returns the ticked set.
fn flag_boxes(ui: &mut egui::Ui, perms: Permissions, whose: &str) -> Permissions {
    let mut out = Permissions::NONE;
    for (flag, name) in FLAGS {
        let mut on = perms.contains(flag);
        // The row says whose; the accessible label says it too, for screen readers.
        let toggle = ui.checkbox(&mut on, name);
        toggle.widget_info(|| toggled(on, format!("{name} ({whose})")));
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
