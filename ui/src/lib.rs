//! Callsign's desktop app (`callsign-gui`): the radio stack in egui.
//!
//! - [`profile`]: the user's profile on disk (versioned TOML), identity and org files.
//! - [`bridge`]: the app's only way to the node: [`NodeCommand`](callsign_node::NodeCommand)s
//!   out, [`NodeEvent`](callsign_node::NodeEvent)s in, the node on its own runtime threads.
//! - [`global_keys`]: push-to-talk keys that work while the game has focus.
//! - [`app`]: [`RadioApp`], the screens (first run, unlock, radio stack) and what events do
//!   to them; [`radio`] draws the radio stack.
//!
//! Must not: block the UI thread on the node or the network (commands are fire-and-forget,
//! events are drained each frame, snapshots are polled), hold protocol logic (the charter's
//! rules and ACLs are the mesh's; the node checks them again), or open audio devices (the node
//! owns them; the app only lists them for the settings).

pub mod app;
pub mod bridge;
pub mod global_keys;
pub mod log_file;
pub mod profile;
pub mod radio;

pub use app::RadioApp;

use eframe::egui;
use std::path::PathBuf;

/// Opens the app's window on the profile in `dir`, with a real node, until it is closed.
pub fn run_window(dir: PathBuf, inner_size: [f32; 2]) -> eframe::Result {
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("Callsign")
            .with_inner_size(inner_size)
            .with_position([0.0, 0.0]),
        ..Default::default()
    };
    eframe::run_native(
        "Callsign",
        options,
        Box::new(move |cc| {
            cc.egui_ctx.set_visuals(egui::Visuals::dark());
            Ok(Box::new(Window(
                RadioApp::new(dir, Box::new(NodeBridge::start)).with_global_keys(),
            )))
        }),
    )
}

struct Window(RadioApp);

impl eframe::App for Window {
    fn update(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        self.0.ui(ctx);
    }
}
pub use bridge::NodeBridge;
pub use profile::Profile;

/// Why the app could not do something.
#[derive(Debug, thiserror::Error)]
pub enum UiError {
    #[error("profile {path}: {message}")]
    Profile { path: String, message: String },
    #[error("key file: {0}")]
    Key(#[from] callsign_keys::KeyFileError),
    #[error("charter: {0}")]
    Charter(String),
    #[error("ticket: {0}")]
    Ticket(#[from] callsign_keys::TicketError),
    #[error("node: {0}")]
    Node(#[from] callsign_node::runtime::NodeError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}
