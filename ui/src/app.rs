//! [`RadioApp`]: which screen shows (first run, unlock, the radio stack), creating the identity
//! and org on first run, and starting the node through a [`NodeStarter`].

use crate::bridge::NodeBridge;
use crate::profile::Profile;
use crate::radio::Radio;
use crate::UiError;
use callsign_api::{ApiConfig, ApiToken};
use callsign_keys::{KdfParams, KeyFile, NodeKeys, Ticket};
use callsign_mesh::admission::JoinRequest;
use callsign_mesh::charter::log::OpLog;
use callsign_mesh::charter::{Charter, Permissions};
use callsign_node::NodeConfig;
use eframe::egui;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Starts the node for a profile: [`NodeBridge::start`] in the app; tests may pass their own.
pub type NodeStarter =
    Box<dyn FnMut(NodeConfig, OpLog, Option<ApiConfig>) -> Result<NodeBridge, UiError>>;

/// The first-run form.
#[derive(Default)]
pub struct FirstRun {
    pub name: String,
    pub passphrase: String,
    pub org_name: String,
    pub ticket: String,
    pub error: Option<String>,
}

enum Screen {
    FirstRun(FirstRun),
    Unlock {
        profile: Box<Profile>,
        passphrase: String,
        error: Option<String>,
    },
    Radio(Box<Radio>),
    Failed(String),
}

/// The app: see the module documentation.
pub struct RadioApp {
    dir: PathBuf,
    starter: NodeStarter,
    screen: Screen,
    global_keys: bool,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl RadioApp {
    /// The app for the profile in `dir` (first run if there is none).
    pub fn new(dir: PathBuf, starter: NodeStarter) -> Self {
        let screen = match Profile::load(&dir) {
            Ok(None) => Screen::FirstRun(FirstRun::default()),
            Ok(Some(profile)) => Screen::Unlock {
                profile: Box::new(profile),
                passphrase: String::new(),
                error: None,
            },
            Err(e) => Screen::Failed(e.to_string()),
        };
        let mut app = Self {
            dir,
            starter,
            screen,
            global_keys: false,
        };
        // An unencrypted key needs no passphrase: straight to the radio stack.
        if let Screen::Unlock { profile, .. } = &app.screen {
            let profile = profile.clone();
            if let Ok(file) = KeyFile::load(&app.dir.join(&profile.key)) {
                if !file.is_encrypted() {
                    app.open(profile, "");
                }
            }
        }
        app
    }

    /// Also grab the push-to-talk keys system-wide (see [`crate::global_keys`]).
    pub fn with_global_keys(mut self) -> Self {
        self.global_keys = true;
        if let Screen::Radio(radio) = &mut self.screen {
            radio.want_global_keys();
        }
        self
    }

    /// The radio stack, once the node runs.
    pub fn radio(&mut self) -> Option<&mut Radio> {
        match &mut self.screen {
            Screen::Radio(radio) => Some(radio),
            _ => None,
        }
    }

    /// Draws one frame (and drains the node's events).
    pub fn ui(&mut self, ctx: &egui::Context) {
        let mut next = None;
        match &mut self.screen {
            Screen::FirstRun(form) => {
                if let Some(action) = first_run_ui(ctx, form) {
                    next = Some(action);
                }
            }
            Screen::Unlock {
                profile,
                passphrase,
                error,
            } => {
                egui::CentralPanel::default().show(ctx, |ui| {
                    ui.heading("Unlock your identity");
                    ui.label(format!("Profile: {}", profile.name));
                    let label = ui.label("Passphrase");
                    let field = ui
                        .add(egui::TextEdit::singleline(passphrase).password(true))
                        .labelled_by(label.id);
                    field.request_focus();
                    if ui.button("Unlock").clicked()
                        || (field.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter)))
                    {
                        next = Some(Next::Unlock(profile.clone(), passphrase.clone()));
                    }
                    if let Some(e) = error {
                        ui.colored_label(ui.visuals().error_fg_color, e.as_str());
                    }
                });
            }
            Screen::Radio(radio) => radio.ui(ctx),
            Screen::Failed(reason) => {
                egui::CentralPanel::default().show(ctx, |ui| {
                    ui.heading("Callsign could not start");
                    ui.label(reason.as_str());
                });
            }
        }
        match next {
            Some(Next::Create) => self.create(),
            Some(Next::Unlock(profile, passphrase)) => self.open(profile, &passphrase),
            None => {}
        }
    }

    /// First run: a new identity, then a new org or an invite ticket's org.
    fn create(&mut self) {
        let Screen::FirstRun(form) = &mut self.screen else {
            return;
        };
        let result = create_profile(&self.dir, form);
        match result {
            Ok(profile) => {
                let passphrase = std::mem::take(&mut form.passphrase);
                self.open(Box::new(profile), &passphrase);
            }
            Err(e) => form.error = Some(e.to_string()),
        }
    }

    /// Unlocks the key and starts the node.
    fn open(&mut self, profile: Box<Profile>, passphrase: &str) {
        match start(&self.dir, &profile, passphrase, &mut self.starter) {
            Ok(mut radio) => {
                if self.global_keys {
                    radio.want_global_keys();
                }
                self.screen = Screen::Radio(Box::new(radio));
            }
            Err(e) => {
                let error = Some(e.to_string());
                self.screen =
                    match std::mem::replace(&mut self.screen, Screen::Failed(String::new())) {
                        Screen::FirstRun(mut form) => {
                            form.error = error;
                            Screen::FirstRun(form)
                        }
                        _ => Screen::Unlock {
                            profile,
                            passphrase: String::new(),
                            error,
                        },
                    };
            }
        }
    }
}

enum Next {
    Create,
    Unlock(Box<Profile>, String),
}

fn first_run_ui(ctx: &egui::Context, form: &mut FirstRun) -> Option<Next> {
    let mut next = None;
    egui::CentralPanel::default().show(ctx, |ui| {
        ui.heading("Welcome to Callsign");
        let field = |ui: &mut egui::Ui, label: &str, value: &mut String, secret: bool| {
            let label = ui.label(label);
            ui.add(egui::TextEdit::singleline(value).password(secret))
                .labelled_by(label.id);
        };
        field(ui, "Callsign", &mut form.name, false);
        field(ui, "Passphrase (optional)", &mut form.passphrase, true);
        ui.separator();
        ui.label("Found a new org…");
        field(ui, "Org name", &mut form.org_name, false);
        ui.label(
            "…or join one with an invite ticket (an admin of the org admits you once online):",
        );
        field(ui, "Invite ticket", &mut form.ticket, false);
        if ui.button("Start").clicked() {
            next = Some(Next::Create);
        }
        if let Some(e) = &form.error {
            ui.colored_label(ui.visuals().error_fg_color, e.as_str());
        }
    });
    next
}

/// Writes the identity key, the charter log and the profile for the first-run form.
fn create_profile(dir: &Path, form: &FirstRun) -> Result<Profile, UiError> {
    let name = form.name.trim();
    if name.is_empty() {
        return Err(UiError::Charter("choose a callsign".into()));
    }
    let (org_name, ticket) = (form.org_name.trim(), form.ticket.trim());
    if org_name.is_empty() == ticket.is_empty() {
        return Err(UiError::Charter(
            "name a new org, or paste an invite ticket (one of the two)".into(),
        ));
    }
    let ticket = (!ticket.is_empty())
        .then(|| Ticket::decode(ticket))
        .transpose()?;
    std::fs::create_dir_all(dir)?;
    let keys = NodeKeys::generate(&mut rand::rngs::OsRng);
    let passphrase =
        (!form.passphrase.is_empty()).then(|| (form.passphrase.as_bytes(), KdfParams::default()));
    let file = KeyFile::seal(&keys, passphrase, &mut rand::rngs::OsRng)?;
    let (org, ops, bootstrap) = match &ticket {
        Some(ticket) => (
            ticket.org,
            Vec::new(),
            ticket.bootstrap.iter().map(|a| a.to_string()).collect(),
        ),
        None => {
            let (charter, op) = Charter::create(&keys.identity, org_name, unix_ms())
                .map_err(|e| UiError::Charter(e.to_string()))?;
            (charter.org(), vec![op.encode()], Vec::new())
        }
    };
    let mut profile = Profile::new(name, &org, bootstrap);
    profile.invite = ticket
        .as_ref()
        .filter(|t| t.grant.is_some())
        .map(|_| form.ticket.trim().to_string());
    file.save(&dir.join(&profile.key), false)?;
    let log_path = Profile::charter_log(dir, &org);
    if let Some(parent) = log_path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut log = OpLog::create(&log_path, org).map_err(|e| UiError::Charter(e.to_string()))?;
    log.append(ops.iter().map(Vec::as_slice))
        .map_err(|e| UiError::Charter(e.to_string()))?;
    profile.save(dir)?;
    Ok(profile)
}

/// The local control API's settings: a fresh token each start, in `api.token` beside the
/// profile (mode 0600; a token that cannot be written leaves the API without one anyone
/// holds, so it refuses everyone, which the settings show).
fn api_config(
    dir: &Path,
    addr: std::net::SocketAddr,
    identity: &callsign_keys::Identity,
    profile: &Profile,
    state: &callsign_mesh::charter::CharterState,
    listening: &[callsign_mesh::charter::ChannelId],
) -> ApiConfig {
    let token = ApiToken::generate();
    if let Err(e) = token.write_to(&dir.join(API_TOKEN_FILE)) {
        tracing::warn!("local API token: {e}");
    }
    let channel = |path: &str| state.find(path);
    ApiConfig {
        addr,
        allow_remote: false,
        token,
        identity: identity.clone(),
        name: profile.name.clone(),
        // Filled in by the bridge once the node listens.
        address: String::new(),
        listening: listening.to_vec(),
        audio: profile.audio.settings(channel),
    }
}

/// The local control API's token file, beside the profile.
pub const API_TOKEN_FILE: &str = "api.token";

/// Unlocks the key, loads the charter and starts the node.
fn start(
    dir: &Path,
    profile: &Profile,
    passphrase: &str,
    starter: &mut NodeStarter,
) -> Result<Radio, UiError> {
    let file = KeyFile::load(&dir.join(&profile.key))?;
    let keys = file.unlock((!passphrase.is_empty()).then_some(passphrase.as_bytes()))?;
    let org = profile.org_key().map_err(UiError::Charter)?;
    let loaded = OpLog::open(&Profile::charter_log(dir, &org))
        .map_err(|e| UiError::Charter(e.to_string()))?;
    let mut charter = Charter::new(org);
    charter.ingest(loaded.ops);
    let state = charter.state().clone();
    let identity = keys.identity.clone();
    let me = keys.identity.public();
    let mut config = NodeConfig::new(keys, charter, &profile.name);
    config.listen = profile.listen;
    // Another program holds our port (or a second copy of the app runs): any port will do.
    if std::net::UdpSocket::bind(config.listen).is_err() {
        tracing::warn!(listen = %config.listen, "port taken; listening on another");
        config.listen.set_port(0);
    }
    config.bootstrap = profile
        .bootstrap
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect();
    config.listening = state
        .channels
        .keys()
        .copied()
        .filter(|c| state.may(&me, *c, Permissions::LISTEN))
        .collect();
    config.recordings = Some(dir.join("recordings"));
    config.seed = rand::random();
    // The router forwards our port if it speaks UPnP, PCP or NAT-PMP: others reach us without a port forward.
    config.port_mapping = true;
    // Not a member yet: the ticket's grant asks the admins to admit us.
    if !state.members.contains_key(&me) {
        let grant = profile
            .invite
            .as_deref()
            .and_then(|t| Ticket::decode(t).ok())
            .and_then(|t| t.grant);
        config.join = grant.map(|g| JoinRequest::sign(&identity, g, &profile.name));
    }
    let api = profile
        .api
        .map(|addr| api_config(dir, addr, &identity, profile, &state, &config.listening));
    let bridge = starter(config, loaded.log, api)?;
    Ok(Radio::new(
        bridge,
        identity,
        state,
        profile.clone(),
        dir.to_path_buf(),
    ))
}
