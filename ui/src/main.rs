//! `callsign-gui`: the desktop app. The profile lives in the platform config directory
//! (`CALLSIGN_GUI_DIR` overrides); the log in a file ([`callsign_ui::log_file`]).

// A GUI-subsystem program on Windows: no console window opens beside the app.
#![cfg_attr(windows, windows_subsystem = "windows")]

use callsign_ui::{log_file, Profile};
use std::sync::Mutex;

fn main() -> eframe::Result {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let log = log_file::default_path().and_then(|path| match log_file::open(&path) {
        Ok(file) => Some(file),
        Err(e) => {
            eprintln!("cannot open the log file {}: {e}", path.display());
            None
        }
    });
    match log {
        Some(file) => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(Mutex::new(file))
            .init(),
        None => tracing_subscriber::fmt().with_env_filter(filter).init(),
    }
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        os = std::env::consts::OS,
        "callsign-gui starting"
    );
    let Some(dir) = Profile::default_dir() else {
        tracing::error!("no config directory; set CALLSIGN_GUI_DIR");
        eprintln!("error: no config directory; set CALLSIGN_GUI_DIR");
        std::process::exit(1);
    };
    let result = callsign_ui::run_window(dir, [1200.0, 560.0]);
    if let Err(e) = &result {
        tracing::error!(%e, "the window closed with an error");
    }
    result
}
