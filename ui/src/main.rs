//! `callsign-gui`: the desktop app. The profile lives in the platform config directory
//! (`CALLSIGN_GUI_DIR` overrides).

use callsign_ui::Profile;

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
    callsign_ui::run_window(dir, [1200.0, 560.0])
}
