//! `callsign-gui`: the desktop app. The profile lives in the platform config directory
//! (`CALLSIGN_GUI_DIR` overrides).

use callsign_ui::{NodeBridge, Profile, RadioApp};
use eframe::egui;

fn main() -> eframe::Result {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let Some(dir) = Profile::default_dir() else {
        eprintln!("error: no config directory; set CALLSIGN_GUI_DIR");
        std::process::exit(1);
    };
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("Callsign")
            .with_inner_size([980.0, 560.0]),
        ..Default::default()
    };
    eframe::run_native(
        "Callsign",
        options,
        Box::new(move |cc| {
            cc.egui_ctx.set_visuals(egui::Visuals::dark());
            Ok(Box::new(App(RadioApp::new(
                dir,
                Box::new(NodeBridge::start),
            ))))
        }),
    )
}

struct App(RadioApp);

impl eframe::App for App {
    fn update(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        self.0.ui(ctx);
    }
}
