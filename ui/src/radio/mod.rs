//! The radio stack: the state the app keeps of its node (talkers, links, routes, floors, the
//! charter) and the frame that draws it. `stack` draws the channel rows, `panels` the roster
//! and key settings, `audio` the audio settings, `admin` the org admin window, and `keys`
//! turns keys and buttons into transmissions. Node events update it; widgets send commands.

use crate::bridge::NodeBridge;
use crate::global_keys::GlobalKeys;
use crate::profile::{DuckingRule, Profile};
use callsign_keys::{Identity, IdentityKey, PeerId};
use callsign_mesh::charter::{ChannelId, CharterState, Permissions, RecordingPolicy};
use callsign_mesh::topology::Route;
use callsign_node::runtime::{describe_floor, LinkKind, PortMapping};
use callsign_node::{NodeCommand, NodeEvent, NodeStats};
use eframe::egui;
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

mod admin;
mod audio;
mod keys;
pub mod overlay;
mod panels;
mod stack;

/// Default hotkeys, in channel order, for channels the profile binds no key to.
const DEFAULT_KEYS: [egui::Key; 8] = [
    egui::Key::F1,
    egui::Key::F2,
    egui::Key::F3,
    egui::Key::F4,
    egui::Key::F5,
    egui::Key::F6,
    egui::Key::F7,
    egui::Key::F8,
];
/// The simulcast group's key.
pub const SIMULCAST_KEY: egui::Key = egui::Key::F12;
const LOG_LINES: usize = 50;
/// How often the node's counters (roster links, the input meter) are refreshed.
const STATS_EVERY: Duration = Duration::from_millis(250);
/// A talker's name, in the rows and the roster.
const TALKER_COLOR: egui::Color32 = egui::Color32::from_rgb(110, 220, 110);
/// How long an invite ticket is good for.
const INVITE_VALID: Duration = Duration::from_secs(7 * 24 * 3600);

/// What the user is transmitting on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Keyed {
    Channel(ChannelId),
    Simulcast,
    Whisper(IdentityKey),
}

/// A member in the roster.
#[derive(Clone, Debug, Default)]
pub struct RosterEntry {
    pub name: String,
    pub listening: Vec<ChannelId>,
    pub recording: Vec<ChannelId>,
}

/// See the module documentation.
pub struct Radio {
    bridge: NodeBridge,
    identity: Identity,
    me: IdentityKey,
    my_name: String,
    profile: Profile,
    dir: PathBuf,
    stats: Option<NodeStats>,
    stats_reply: Option<oneshot::Receiver<NodeStats>>,
    stats_asked: Option<Instant>,
    pan: BTreeMap<ChannelId, f32>,
    /// The channel whose hotkey the next key press sets.
    binding: Option<ChannelId>,
    state: CharterState,
    charter_reply: Option<oneshot::Receiver<CharterState>>,
    listening: BTreeSet<ChannelId>,
    muted: BTreeSet<ChannelId>,
    /// Channels the node records (from its events).
    recording: BTreeSet<ChannelId>,
    volume: BTreeMap<ChannelId, f32>,
    simulcast: BTreeSet<ChannelId>,
    hotkeys: BTreeMap<ChannelId, egui::Key>,
    talkers: BTreeMap<ChannelId, BTreeMap<IdentityKey, String>>,
    transmitting: Vec<ChannelId>,
    keyed: Option<Keyed>,
    floor: BTreeMap<ChannelId, String>,
    routes: BTreeMap<ChannelId, Route>,
    roster: BTreeMap<IdentityKey, RosterEntry>,
    links: BTreeMap<PeerId, LinkKind>,
    /// Our public addresses a probe from a stranger's port reached (we are a rendezvous).
    reachable: BTreeSet<String>,
    /// What became of the port mapping on our router (none reported yet: `None`).
    port_mapping: Option<PortMapping>,
    admin: admin::AdminForm,
    log: VecDeque<String>,
    /// The sound system's devices, listed when the audio settings first show.
    devices: Option<audio::DeviceList>,
    audio_error: Option<String>,
    /// The channels voice activation transmits on (empty: push-to-talk).
    voice_activation: Vec<ChannelId>,
    duck_form: DuckingRule,
    /// Keys grabbed system-wide: wanted (the window, not tests), running, and how it went.
    global_wanted: bool,
    global: Option<GlobalKeys>,
    global_status: String,
    /// Why an admin refused our invite.
    join_refused: Option<String>,
    /// Settings changed since the profile was written (written once a drag ends).
    profile_unsaved: bool,
}

impl Radio {
    pub fn new(
        bridge: NodeBridge,
        identity: Identity,
        state: CharterState,
        profile: Profile,
        dir: PathBuf,
    ) -> Self {
        let me = identity.public();
        let mut radio = Self {
            bridge,
            identity,
            me,
            my_name: profile.name.clone(),
            profile,
            dir,
            stats: None,
            stats_reply: None,
            stats_asked: None,
            pan: BTreeMap::new(),
            binding: None,
            state,
            charter_reply: None,
            listening: BTreeSet::new(),
            muted: BTreeSet::new(),
            recording: BTreeSet::new(),
            volume: BTreeMap::new(),
            simulcast: BTreeSet::new(),
            hotkeys: BTreeMap::new(),
            talkers: BTreeMap::new(),
            transmitting: Vec::new(),
            keyed: None,
            floor: BTreeMap::new(),
            routes: BTreeMap::new(),
            roster: BTreeMap::new(),
            links: BTreeMap::new(),
            reachable: BTreeSet::new(),
            port_mapping: None,
            admin: admin::AdminForm::default(),
            log: VecDeque::new(),
            devices: None,
            audio_error: None,
            voice_activation: Vec::new(),
            duck_form: DuckingRule {
                when: String::new(),
                duck: String::new(),
                db: 12.0,
            },
            global_wanted: false,
            global: None,
            global_status: "keys work while this window has focus".into(),
            join_refused: None,
            profile_unsaved: false,
        };
        radio.channels_changed(&BTreeSet::new());
        radio.send_audio(true);
        radio
    }

    /// Channels we may hear (listen, or monitor), in tree order (by path).
    pub fn channels(&self) -> Vec<(ChannelId, String)> {
        let mut out: Vec<(ChannelId, String)> = self
            .state
            .channels
            .keys()
            .filter(|c| self.state.may_hear(&self.me, **c))
            .map(|c| (*c, self.path(*c)))
            .collect();
        out.sort_by(|a, b| a.1.cmp(&b.1));
        out
    }

    fn path(&self, channel: ChannelId) -> String {
        self.state
            .path(channel)
            .unwrap_or_else(|| channel.to_string())
    }

    fn name(&self, peer: &IdentityKey) -> String {
        self.roster
            .get(peer)
            .map(|r| r.name.clone())
            .or_else(|| self.state.members.get(peer).map(|m| m.name.clone()))
            .unwrap_or_else(|| peer.to_string())
    }

    /// A new charter snapshot: channels appear or go, hotkeys follow.
    fn set_state(&mut self, state: CharterState) {
        let known: BTreeSet<ChannelId> = self.state.channels.keys().copied().collect();
        self.state = state;
        self.channels_changed(&known);
        self.rebind_global();
        // Ducking rules and voice activation name channels by path.
        self.send_audio(false);
    }

    fn channels_changed(&mut self, known: &BTreeSet<ChannelId>) {
        let profile = &self.profile;
        let channels = self.channels();
        for (channel, path) in &channels {
            if !known.contains(channel) && !self.monitor_only(*channel) {
                // New channels start heard, as the node starts listening to all it may
                // (never monitored: that is the user's choice).
                self.listening.insert(*channel);
            }
            let bound = profile
                .hotkeys
                .get(path)
                .and_then(|k| egui::Key::from_name(k));
            if let Some(key) = bound {
                self.hotkeys.insert(*channel, key);
            }
        }
        for (channel, _) in channels {
            if !self.hotkeys.contains_key(&channel) {
                let used: BTreeSet<egui::Key> = self.hotkeys.values().copied().collect();
                if let Some(key) = DEFAULT_KEYS.iter().find(|k| !used.contains(k)) {
                    self.hotkeys.insert(channel, *key);
                }
            }
        }
    }

    fn say(&mut self, line: String) {
        self.log.push_back(line);
        while self.log.len() > LOG_LINES {
            self.log.pop_front();
        }
    }

    /// What an event from the node changes.
    pub fn handle_event(&mut self, event: NodeEvent) {
        match event {
            NodeEvent::TalkerStarted {
                peer,
                name,
                channels,
                whisper,
            } => {
                let name = if name.is_empty() {
                    self.name(&peer)
                } else {
                    name
                };
                if whisper {
                    self.say(format!("{name} whispers to you"));
                }
                for channel in channels {
                    self.talkers
                        .entry(channel)
                        .or_default()
                        .insert(peer, name.clone());
                }
            }
            NodeEvent::TalkerStopped { peer } => {
                for talkers in self.talkers.values_mut() {
                    talkers.remove(&peer);
                }
            }
            NodeEvent::Transmitting { channels, .. } => self.transmitting = channels,
            NodeEvent::TransmitStopped => self.transmitting.clear(),
            NodeEvent::Recording { channel, on } => set_member(&mut self.recording, channel, on),
            NodeEvent::Presence {
                peer,
                name,
                listening,
                recording,
            } => {
                // The charter's recording notice: say so when someone starts recording a
                // channel we hear (the roster shows it as long as it lasts).
                let before = self
                    .roster
                    .get(&peer)
                    .map(|e| e.recording.clone())
                    .unwrap_or_default();
                for channel in recording.iter().filter(|c| !before.contains(c)) {
                    if self.listening.contains(channel)
                        && self.state.recording_policy(*channel) == RecordingPolicy::Notice
                    {
                        let path = self.path(*channel);
                        self.say(format!("● {name} is recording {path}"));
                    }
                }
                self.roster.insert(
                    peer,
                    RosterEntry {
                        name,
                        listening,
                        recording,
                    },
                );
            }
            NodeEvent::PresenceGone { peer } => {
                self.roster.remove(&peer);
            }
            NodeEvent::LinkUp { peer, kind, .. } => {
                self.links.insert(peer, kind);
            }
            NodeEvent::LinkDown { peer } => {
                self.links.remove(&peer);
            }
            NodeEvent::Reachability { addr, reachable } => {
                if reachable {
                    self.say(format!(
                        "reachable from the internet at {addr}: members behind NATs link through you"
                    ));
                    self.reachable.insert(addr.to_string());
                } else {
                    self.say(format!("no longer reachable at {addr}"));
                    self.reachable.remove(&addr.to_string());
                }
            }
            NodeEvent::PortMapping(mapping) => {
                let line = match &mapping {
                    PortMapping::Mapped { external, protocol } => {
                        format!("your router forwards {external} to you ({protocol})")
                    }
                    PortMapping::Lost { external, reason } => {
                        format!("port mapping {external} gone: {reason}")
                    }
                    PortMapping::Unavailable { reason } => {
                        format!("no port mapping on your router: {reason}")
                    }
                };
                self.say(line);
                self.port_mapping = Some(mapping);
            }
            NodeEvent::CharterChanged { .. } => self.request_charter(),
            NodeEvent::RouteChanged { channel, route } => {
                self.routes.insert(channel, route);
            }
            NodeEvent::Floor(event) => {
                let channel = Cell::new(None);
                let text = describe_floor(
                    &event,
                    |k| self.name(k),
                    |c| {
                        channel.set(Some(*c));
                        self.path(*c)
                    },
                );
                if let Some(channel) = channel.get() {
                    self.floor.insert(channel, text);
                }
            }
            NodeEvent::PttDenied { reason, .. } => self.say(format!("not sent: {reason}")),
            NodeEvent::Admitted { peer, role, .. } if peer == self.me => {
                self.say(format!("admitted to {} as {role}", self.state.name));
                self.join_refused = None;
                if self.profile.invite.take().is_some() {
                    if let Err(e) = self.profile.save(&self.dir) {
                        self.say(format!("saving the profile: {e}"));
                    }
                }
            }
            NodeEvent::Admitted { name, role, .. } => {
                self.say(format!("{name} joined as {role}"));
            }
            NodeEvent::JoinRefused { reason } => self.join_refused = Some(reason),
            NodeEvent::Removed { by } => {
                let by = self
                    .state
                    .members
                    .get(&by)
                    .map_or_else(|| by.to_string(), |m| m.name.clone());
                self.say(format!(
                    "removed from {} by {by}; the node has stopped",
                    self.state.name
                ));
            }
            NodeEvent::Warning(w) => self.say(w),
            _ => {}
        }
    }

    fn request_charter(&mut self) {
        let (tx, rx) = oneshot::channel();
        self.bridge.command(NodeCommand::Charter(tx));
        self.charter_reply = Some(rx);
    }

    /// A channel the charter lets us monitor but not listen to: we hear it unseen.
    fn monitor_only(&self, channel: ChannelId) -> bool {
        !self.state.may(&self.me, channel, Permissions::LISTEN)
    }

    fn set_listening(&mut self, channel: ChannelId, on: bool) {
        let command = if on {
            self.listening.insert(channel);
            if self.monitor_only(channel) {
                NodeCommand::Monitor(channel)
            } else {
                NodeCommand::Listen(channel)
            }
        } else {
            self.listening.remove(&channel);
            NodeCommand::Unlisten(channel)
        };
        self.bridge.command(command);
    }

    /// One frame: events in, hotkeys, then the panels.
    pub fn ui(&mut self, ctx: &egui::Context) {
        while let Some(event) = self.bridge.try_event() {
            self.handle_event(event);
        }
        if let Some(reply) = &mut self.charter_reply {
            if let Ok(state) = reply.try_recv() {
                self.charter_reply = None;
                self.set_state(state);
            }
        }
        self.poll_stats();
        if std::mem::take(&mut self.global_wanted) {
            match GlobalKeys::start(self.bridge.commands(), Some(ctx.clone())) {
                Ok(global) => {
                    self.global = Some(global);
                    self.rebind_global();
                }
                Err(reason) => self.global_status = reason,
            }
        }
        self.overlay_ui(ctx);
        if self.binding.is_some() {
            self.bind_ui(ctx);
        } else if !ctx.wants_keyboard_input() {
            // Not while a text field has focus: a letter bound to a channel types there.
            self.hotkeys_ui(ctx);
        }
        egui::TopBottomPanel::top("identity").show(ctx, |ui| {
            ui.horizontal(|ui| {
                ui.heading(self.state.name.as_str());
                ui.label(format!("— {}", self.my_name));
                if ui.button("Copy my peer id").clicked() {
                    ctx.copy_text(self.me.to_string());
                }
                if self.state.is_admin(&self.me) && ui.button("Org admin").clicked() {
                    self.admin.open = !self.admin.open;
                }
            });
        });
        egui::SidePanel::right("roster")
            .default_width(200.0)
            .show(ctx, |ui| {
                egui::ScrollArea::vertical().show(ui, |ui| self.roster_ui(ui));
            });
        egui::TopBottomPanel::bottom("log").show(ctx, |ui| {
            for line in self.log.iter().rev().take(3) {
                ui.small(line.as_str());
            }
        });
        egui::CentralPanel::default().show(ctx, |ui| {
            egui::ScrollArea::vertical().show(ui, |ui| {
                self.joining_ui(ui);
                self.stack_ui(ui);
                ui.separator();
                ui.collapsing("Settings", |ui| self.settings_ui(ui));
                ui.collapsing("Audio", |ui| self.audio_ui(ui));
            });
        });
        if self.admin.open {
            self.admin_window(ctx);
        }
        if self.profile_unsaved && !ctx.input(|i| i.pointer.any_down()) {
            self.profile_unsaved = false;
            if let Err(e) = self.profile.save(&self.dir) {
                self.say(format!("saving the profile: {e}"));
            }
        }
        // The node's events arrive between frames.
        ctx.request_repaint_after(std::time::Duration::from_millis(50));
    }

    /// Until an admin admits us: what we wait for, or why we were refused.
    fn joining_ui(&mut self, ui: &mut egui::Ui) {
        if self.state.members.contains_key(&self.me) || self.profile.invite.is_none() {
            return;
        }
        match &self.join_refused {
            Some(reason) => ui.colored_label(
                ui.visuals().error_fg_color,
                format!("Your invite was refused: {reason}. Ask an admin for a new one."),
            ),
            None => ui.label(
                "Waiting to be admitted: an admin of the org must be online (the ticket names \
                 where to find one).",
            ),
        };
        ui.separator();
    }

    fn rtt_ms(&self, peer: &IdentityKey) -> Option<u128> {
        let id = peer.peer_id().to_string();
        let stats = self.stats.as_ref()?;
        let link = stats.peers.iter().find(|p| p.peer == id)?;
        link.rtt.map(|r| r.as_millis())
    }
}

/// A striped table under small column titles (the rows' controls then show short text).
fn titled_table(ui: &mut egui::Ui, id: &str, titles: &[&str], rows: impl FnOnce(&mut egui::Ui)) {
    egui::Grid::new(id)
        .striped(true)
        .spacing([10.0, 6.0])
        .show(ui, |ui| {
            for title in titles {
                ui.label(egui::RichText::new(*title).small().weak());
            }
            ui.end_row();
            rows(ui);
        });
}

/// Puts `item` in `set` or takes it out.
fn set_member<T: Ord>(set: &mut BTreeSet<T>, item: T, member: bool) {
    if member {
        set.insert(item);
    } else {
        set.remove(&item);
    }
}

/// What a screen reader (and a test) calls a widget whose visible text is shorter.
fn labelled(typ: egui::WidgetType, label: String) -> egui::WidgetInfo {
    egui::WidgetInfo::labeled(typ, true, label)
}

/// [`labelled`] for a tick box.
fn toggled(on: bool, label: String) -> egui::WidgetInfo {
    egui::WidgetInfo::selected(egui::WidgetType::Checkbox, true, on, label)
}
