//! The admin window's pages for the org's infrastructure and growth: rented relays, operation
//! presets and signed invite tickets.

use super::{role_combo, short};
use crate::radio::{Radio, INVITE_VALID};
use callsign_keys::{IdentityKey, InviteGrant, Multiaddr, Ticket};
use callsign_mesh::charter::{OpBody, RelayInfo};
use callsign_node::runtime::PortMapping;
use callsign_node::NodeCommand;
use eframe::egui;
use multiaddr::Protocol;
use rand::RngCore;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

/// How often the invite page asks the node where the org can be reached.
const ORG_ADDRS_EVERY: Duration = Duration::from_secs(3);

impl Radio {
    pub(super) fn relays_tab(&mut self, ui: &mut egui::Ui) {
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

    pub(super) fn presets_tab(&mut self, ui: &mut egui::Ui) {
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

    pub(super) fn invites_tab(&mut self, ui: &mut egui::Ui) {
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
        self.poll_org_addrs();
        ui.horizontal_wrapped(|ui| {
            let label = ui.label("Address in the ticket");
            ui.add(
                egui::TextEdit::singleline(&mut self.admin.invite_addr)
                    .desired_width(420.0)
                    .hint_text("/ip4/203.0.113.5/udp/47123/quic-v1/p2p/12D3KooW…"),
            )
            .labelled_by(label.id);
        });
        let mapped = matches!(self.port_mapping, Some(PortMapping::Mapped { .. }));
        ui.small(if self.reachable.is_empty() && mapped {
            "Where the newcomer dials you: the public address your router maps to you (UPnP, PCP or NAT-PMP)."
        } else if self.reachable.is_empty() {
            "Where the newcomer dials you: this machine's address on its network; put your \
             public address here if you forwarded the port."
        } else {
            "Where the newcomer dials you: your public address (members confirmed it reaches \
             you)."
        });
        let others = self.other_org_addrs();
        if others.is_empty() {
            ui.small(
                "Nobody else in the org can be reached now: if your router lets no stranger in, \
                 the newcomer needs a member with a public address, a mapped port or a rented \
                 relay online.",
            );
        } else {
            ui.small(format!(
                "Also in the ticket, where the org can be reached now (any of them passes the \
                 request on to an admin): {}",
                others
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        ui.small(match &self.port_mapping {
            None => "Port mapping on your router: not tried yet.".to_string(),
            Some(PortMapping::Mapped { external, protocol }) => {
                format!("Port mapping on your router: {external} ({protocol}).")
            }
            Some(PortMapping::Lost { external, reason }) => {
                format!("Port mapping on your router: {external} lost ({reason}).")
            }
            Some(PortMapping::Unavailable { reason }) => {
                format!("Port mapping on your router: none ({reason}).")
            }
        });
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

    /// Asks the node where the org can be reached every few seconds while the invite page
    /// shows; takes the answer when it is there.
    fn poll_org_addrs(&mut self) {
        if let Some(reply) = &mut self.admin.org_addrs_reply {
            match reply.try_recv() {
                Ok(addrs) => {
                    self.admin.org_addrs = addrs;
                    self.admin.org_addrs_reply = None;
                }
                Err(oneshot::error::TryRecvError::Closed) => self.admin.org_addrs_reply = None,
                Err(oneshot::error::TryRecvError::Empty) => return,
            }
        }
        if self
            .admin
            .org_addrs_asked
            .is_none_or(|t| t.elapsed() >= ORG_ADDRS_EVERY)
        {
            let (tx, rx) = oneshot::channel();
            self.bridge.command(NodeCommand::InviteAddresses(tx));
            self.admin.org_addrs_reply = Some(rx);
            self.admin.org_addrs_asked = Some(Instant::now());
        }
    }

    /// The node's invite addresses other than the one typed in (which goes first).
    fn other_org_addrs(&self) -> Vec<Multiaddr> {
        let typed: Option<Multiaddr> = self.admin.invite_addr.trim().parse().ok();
        self.admin
            .org_addrs
            .iter()
            .filter(|a| Some(*a) != typed.as_ref())
            .cloned()
            .collect()
    }

    /// A public address of ours that a probe confirmed, else the one our router maps to us
    /// (nobody may have linked yet to confirm it: a newcomer is often the first), else our
    /// node's address with the unspecified IP it listens on (`0.0.0.0`) replaced by the
    /// address this machine uses toward the internet (no packet is sent to find it).
    fn reachable_address(&self) -> Option<String> {
        let mapped = match &self.port_mapping {
            Some(PortMapping::Mapped { external, .. }) => {
                Some(callsign_mesh::member::quic_multiaddr(*external).to_string())
            }
            _ => None,
        };
        if let Some(public) = self.reachable.iter().next().or(mapped.as_ref()) {
            let public: Multiaddr = public.parse().ok()?;
            return Some(
                public
                    .with_p2p(self.me.peer_id())
                    .unwrap_or_else(|a| a)
                    .to_string(),
            );
        }
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
        let mut bootstrap: Vec<Multiaddr> = match self.admin.invite_addr.trim() {
            "" => Vec::new(),
            text => vec![text
                .parse()
                .map_err(|e| callsign_keys::TicketError::Malformed(format!("address: {e}")))?],
        };
        bootstrap.extend(self.other_org_addrs());
        bootstrap.truncate(callsign_keys::MAX_BOOTSTRAP_ADDRS);
        Ticket {
            org: self.state.org,
            bootstrap,
            grant: Some(grant),
        }
        .encode()
    }
}
